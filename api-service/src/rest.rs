//! The REST router: Ironic's v1 API plus `/healthz`, `/metrics` and `/v1/openapi.json`.
//!
//! Layers, outermost first: request id + span, metrics, microversion negotiation (stamps the
//! version headers on every response, errors included), auth. Extractors map every axum
//! rejection into [`ApiError`] so malformed input gets Ironic's error body too.

pub(crate) mod agent;
pub(crate) mod bmc;
pub(crate) mod inspection;
pub(crate) mod iscsi;
pub(crate) mod misc;
pub(crate) mod node_bmc;
pub(crate) mod node_extras;
pub(crate) mod nodes;
pub(crate) mod ports;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use tower_http::normalize_path::NormalizePathLayer;
use tracing::Instrument;

use crate::error::ApiError;
use crate::service::{ApiState, Ctx, new_request_id};
use crate::version::{self, Version};

/// General body limit (Ironic: 1 MiB).
const BODY_LIMIT: usize = 1024 * 1024;
/// Body limit of `/states/provision`, which may carry a config drive (Ironic: 64 MiB).
const PROVISION_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// JSON body extractor whose rejections become Ironic error bodies.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Clients (and curl) do not always send a Content-Type: treat the body as JSON anyway.
        let (mut parts, body) = req.into_parts();
        if !parts.headers.contains_key(header::CONTENT_TYPE) {
            parts
                .headers
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let req = Request::from_parts(parts, body);
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request(format!("Invalid request body: {}", r.body_text()))
            }
        })?;
        if crate::limits::json_too_deep(&bytes, crate::limits::MAX_JSON_DEPTH) {
            return Err(ApiError::bad_request(format!(
                "The request body nests JSON deeper than {} levels.",
                crate::limits::MAX_JSON_DEPTH
            )));
        }
        let axum::Json(v) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(ApiJson(v))
    }
}

/// Query extractor whose rejections become Ironic error bodies.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// Path extractor whose rejections become Ironic error bodies.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}

/// The request id assigned by [`request_id_layer`].
#[derive(Debug, Clone)]
struct RequestId(String);

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let version = Version::from_request_parts(parts, state).await?;
        let request_id =
            parts.extensions.get::<RequestId>().map_or_else(new_request_id, |r| r.0.clone());
        // The auth layer records the identity on every request it lets through.
        let identity = parts
            .extensions
            .get::<crate::auth::Identity>()
            .cloned()
            .unwrap_or_else(crate::auth::Identity::anonymous);
        Ok(Ctx { version, request_id, identity })
    }
}

/// The base URL for links: the configured public URL, else `http://<Host>`.
#[derive(Debug, Clone)]
pub struct Base(pub String);

impl FromRequestParts<ApiState> for Base {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(u) = &state.settings.public_url {
            return Ok(Base(u.trim_end_matches('/').to_owned()));
        }
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or("localhost");
        Ok(Base(format!("http://{host}")))
    }
}

/// Assign `req-<uuid>`, open the request span and echo the id in the response headers.
async fn request_id_layer(mut req: Request, next: Next) -> Response {
    let id = new_request_id();
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    // Continue the caller's W3C trace, so the events published for this request (and the
    // conductor work they trigger) join it.
    let carried: std::collections::BTreeMap<String, String> = ["traceparent", "tracestate"]
        .iter()
        .filter_map(|k| Some(((*k).to_owned(), req.headers().get(*k)?.to_str().ok()?.to_owned())))
        .collect();
    if !carried.is_empty() {
        bus::trace::set_parent_from(&span, &carried);
    }
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("openstack-request-id", v.clone());
        resp.headers_mut().insert("x-openstack-request-id", v);
    }
    resp
}

async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The full REST router over `state`.
pub fn router(state: ApiState) -> Router {
    let provision = Router::new()
        .route("/v1/nodes/{ident}/states/provision", put(nodes::set_provision))
        .layer(DefaultBodyLimit::max(PROVISION_BODY_LIMIT));
    let v1 = Router::new()
        .route("/", get(misc::root))
        .route("/v1", get(misc::v1))
        .route("/v1/", get(misc::v1))
        .route("/v1/nodes", get(nodes::list).post(nodes::create))
        .route("/v1/nodes/detail", get(nodes::list_detail))
        .route("/v1/nodes/{ident}", get(nodes::show).patch(nodes::patch).delete(nodes::delete))
        .route("/v1/nodes/{ident}/states", get(nodes::states))
        .route("/v1/nodes/{ident}/states/power", put(nodes::set_power))
        .route(
            "/v1/nodes/{ident}/maintenance",
            put(nodes::maintenance_on).delete(nodes::maintenance_off),
        )
        .route("/v1/nodes/{ident}/validate", get(nodes::validate))
        .route("/v1/nodes/{ident}/ports", get(ports::list_for_node))
        .route("/v1/nodes/{ident}/history", get(nodes::history))
        .route("/v1/ports", get(ports::list).post(ports::create))
        .route("/v1/ports/detail", get(ports::list_detail))
        .route("/v1/ports/{ident}", get(ports::show).patch(ports::patch).delete(ports::delete))
        .route("/v1/drivers", get(misc::drivers))
        .route("/v1/drivers/{name}", get(misc::driver))
        .route("/v1/drivers/{name}/properties", get(misc::driver_properties))
        .route("/v1/conductors", get(misc::conductors))
        .route("/v1/conductors/{hostname}", get(misc::conductor))
        .merge(
            Router::new()
                .route("/v1/lookup", get(agent::lookup))
                .route("/v1/heartbeat/{ident}", post(agent::heartbeat))
                .route("/v1/continue_inspection", post(inspection::continue_inspection))
                .route(
                    "/v1/nodes/{ident}/vendor_passthru/pass_deploy_info",
                    post(iscsi::pass_deploy_info),
                )
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    crate::limits::ramdisk_rate_limit,
                )),
        )
        .route("/v1/openapi.json", get(misc::openapi))
        .route("/healthz", get(misc::healthz))
        .route("/metrics", get(misc::metrics))
        .merge(node_extras::router())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .merge(provision)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let routed = v1
        .layer(middleware::from_fn_with_state(state.clone(), crate::auth::layer))
        .merge(crate::web::router()) // the web view at /ui authenticates each request itself
        .layer(middleware::from_fn(version::layer))
        .layer(middleware::from_fn_with_state(state.clone(), crate::metrics::layer))
        .layer(middleware::from_fn(request_id_layer))
        // A body must keep arriving: a client dripping it byte by byte is cut off.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(state.settings.body_read_timeout))
        .with_state(state);
    // Ironic serves `/v1/nodes/` as `/v1/nodes` (python-ironicclient sends filtered lists
    // that way): the trailing slash goes before routing.
    Router::new()
        .fallback_service(tower::Layer::layer(&NormalizePathLayer::trim_trailing_slash(), routed))
}

/// A 200 JSON body serialized into a buffer of `capacity` bytes reserved up front: a page
/// of a thousand detailed nodes (about 3 MB) is then written without the buffer doubling
/// and copying itself a dozen times on the way.
///
/// # Errors
/// `Internal` when the value cannot be serialized (a map with non-string keys).
pub fn json_sized<T: serde::Serialize>(value: &T, capacity: usize) -> Result<Response, ApiError> {
    let mut body = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut body, value).map_err(|e| {
        ApiError::from(deploy::PublicError::internal(format!("rendering a page: {e}")))
    })?;
    let mut resp = body.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// An empty 202 with a `Location` header: the openstack client insists on no body and no
/// Content-Type for 202.
pub fn accepted(location: &str) -> Response {
    let mut resp = axum::http::StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
