//! The fleet web view at `/ui`: server-rendered HTML pages and one small hand-written script,
//! embedded in the binary (no CDN, no build step).
//!
//! Routes (merged into the REST router after its auth layer: each handler authenticates the
//! request itself with the same [`crate::auth::Auth`] and decides with the same
//! [`crate::policy`], so a project-scoped user may open the pages that the REST API's
//! route guard would keep for system readers):
//! - `GET /ui` — the fleet: a virtualised table fetched page by page from `/ui/api/nodes`,
//!   filtered server side (provision state, owner, conductor group, failed only,
//!   maintenance), with each deploying node's progress and live updates from
//!   `/ui/api/events`.
//! - `GET /ui/nodes/{ident}` — one node: states, last error, steps, history, inventory (read
//!   from the REST API) and the actions the caller may take.
//! - `GET /ui/static/{app.js,app.css}` — the assets.
//! - `GET /ui/api/session[?node=]` — who the caller is and, computed with the policy, which
//!   actions it may take (on that node).
//! - `GET /ui/api/nodes` — one page of the fleet as compact rows.
//! - `GET /ui/api/events` — Server-Sent Events: the `WatchNode` stream of the gRPC API
//!   (the same bus subscription, the same visibility and redaction rules).
//!
//! The page never acts with rights of its own: every action is a call of the REST API
//! (`/v1/…`) with the user's own credentials (a browser's HTTP basic credentials, the
//! identity a front proxy adds, or an `X-Auth-Token` the user gave), decided by the REST
//! API's policy. The session endpoint only tells the page which buttons to show.

mod assets;
mod data;
mod events;
mod html;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::{Auth, Identity};
use crate::error::{ApiError, error_body};
use crate::service::ApiState;

/// The web view's routes, for [`crate::router`].
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(html::fleet_page))
        .route("/ui/nodes/{ident}", get(html::node_page))
        .route("/ui/static/{file}", get(assets::serve))
        .route("/ui/api/session", get(data::session))
        .route("/ui/api/nodes", get(data::nodes))
        .route("/ui/api/events", get(events::stream))
}

/// The caller's identity, authenticated from the request headers as the REST API does it.
async fn identify(state: &ApiState, headers: &HeaderMap) -> Result<Identity, Response> {
    state.auth.authenticate(headers).await.map_err(|_| unauthorized(&state.auth))
}

/// A 401 with Ironic's error body. Only in `http_basic` mode does it ask the browser for
/// credentials: in `keystone` mode the page offers a token field instead of a useless
/// password prompt.
fn unauthorized(auth: &Auth) -> Response {
    if matches!(auth, Auth::HttpBasic(_)) {
        return ApiError::Unauthorized.into_response();
    }
    json_error(StatusCode::UNAUTHORIZED, "Authentication required")
}

/// An error answer in Ironic's double-encoded body, which the page shows as it is.
fn json_error(status: StatusCode, message: &str) -> Response {
    let mut resp = (status, error_body(status, message)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Headers every web-view answer carries: no sniffing, no caching of data (the JSON
/// endpoints answer per identity), no framing, no referrer.
fn harden(resp: &mut Response, cache: &'static str) {
    let h = resp.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
}
