//! The HTTP boot server: `boot.ipxe`, per-MAC iPXE scripts rendered from the database, the
//! image cache, the dnsmasq options file, static files (kernels, ramdisks, iPXE binaries)
//! with Range support, and Prometheus' `/metrics` ([`crate::metrics`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use deploy::ids::MacAddress;
use futures::StreamExt as _;
use store::DataStore;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};
use tracing::warn;

use crate::config::{PxeConfig, UnknownMac};
use crate::files;
use crate::image_cache::{CacheError, ImageCache};
use crate::render::{self, Format};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// Configuration.
    pub cfg: Arc<PxeConfig>,
    /// The database.
    pub store: DataStore,
    /// The image cache.
    pub images: ImageCache,
    /// One permit per download in progress (`pxe.http_max_downloads`), held until the body
    /// has been sent or the client went away.
    pub downloads: Arc<Semaphore>,
    /// Virtual-media boot ISOs.
    pub vmedia: crate::vmedia::VmediaIsos,
}

/// The HTTP router.
pub fn router(state: HttpState) -> Router {
    let statics = ServeDir::new(&state.cfg.http_root).fallback(
        // iPXE binaries come from Debian's package unless the root holds its own copy.
        ServeDir::new(&state.cfg.ipxe_dir),
    );
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/discovery.ipxe", get(discovery_ipxe))
        .route("/ipxe/{mac}", get(mac_script))
        .route("/pxelinux.cfg/{mac}", get(mac_script))
        .route("/images/{key}", get(image))
        .route("/dnsmasq.conf", get(dnsmasq))
        .route("/token/{node}", get(deploy_token))
        .route("/vmedia/{node}/{file}", get(vmedia_iso))
        .route("/http-boot/{file}", get(http_boot_iso))
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::metrics::handler))
        // Static files; ServeDir refuses `..` and answers Range and HEAD.
        .fallback_service(statics)
        .layer(axum::middleware::from_fn_with_state(state.clone(), limit_downloads))
        // Outside the download limit, so refused downloads are counted too.
        .layer(axum::middleware::from_fn(crate::metrics::layer))
        // One span per request, with method and path.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Middleware: every request but `/healthz` and `/metrics` takes a download permit and holds
/// it until its body is done (sent or dropped); with none free the answer is 503 with
/// `Retry-After`, which iPXE and HTTP clients retry, instead of an unbounded number of open
/// files and streams.
async fn limit_downloads(State(st): State<HttpState>, req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/metrics") {
        return next.run(req).await;
    }
    let Ok(permit) = st.downloads.clone().try_acquire_owned() else {
        warn!(path = %req.uri().path(), "http server busy; download refused");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "server busy, try again\n",
        )
            .into_response();
    };
    let (parts, body) = next.run(req).await.into_parts();
    // The stream owns the permit: it is released when the body ends or is dropped.
    let stream = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn boot_ipxe(State(st): State<HttpState>) -> Response {
    text(render::boot_ipxe(&st.cfg))
}

async fn discovery_ipxe(State(st): State<HttpState>) -> Response {
    if st.cfg.unknown_mac != UnknownMac::Discovery {
        return StatusCode::NOT_FOUND.into_response();
    }
    let action = render::decide_unknown(&st.cfg, &render::new_request_id());
    text(render::render(Format::Ipxe, &action, &st.cfg))
}

/// `/ipxe/<mac>` and Ironic's `/pxelinux.cfg/<mac-with-hyphens>` (with or without `01-`).
async fn mac_script(State(st): State<HttpState>, Path(raw): Path<String>) -> Response {
    let raw = raw.strip_prefix("01-").unwrap_or(&raw);
    let Ok(mac) = raw.parse::<MacAddress>() else {
        return (StatusCode::NOT_FOUND, "not a MAC address\n").into_response();
    };
    let node = match files::node_for_mac(&st.store, mac).await {
        Ok(n) => n,
        Err(error) => {
            warn!(%error, %mac, "database lookup for iPXE script failed");
            return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response();
        }
    };
    // Unknown MAC: 404 lets boot.ipxe try the next NIC and then apply the unknown-MAC policy.
    let Some(node) = node else {
        return (StatusCode::NOT_FOUND, "unknown MAC\n").into_response();
    };
    let action = render::decide(&node, mac, &st.cfg, &render::new_request_id());
    text(render::render(Format::Ipxe, &action, &st.cfg))
}

async fn image(State(st): State<HttpState>, Path(key): Path<String>, req: Request) -> Response {
    match st.images.get(&key).await {
        Ok(path) => match ServeFile::new(path).oneshot(req).await {
            Ok(r) => r.into_response(),
            Err(never) => match never {},
        },
        Err(error) => {
            let status = match &error {
                CacheError::Unknown => StatusCode::NOT_FOUND,
                CacheError::NoChecksum { .. } => StatusCode::CONFLICT,
                CacheError::Origin(_) | CacheError::Mismatch { .. } => StatusCode::BAD_GATEWAY,
                CacheError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
                CacheError::Db(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            warn!(%error, %key, "image not served");
            let body = match &error {
                CacheError::Io(_) | CacheError::Db(_) => "image cache unavailable".to_owned(),
                other => other.to_string(),
            };
            (status, format!("{body}\n")).into_response()
        }
    }
}

/// `GET /token/<node uuid>`: the iSCSI deploy's token file ([`files::deploy_token`]), the
/// HTTP twin of TFTP's `token-<node uuid>`.
async fn deploy_token(State(st): State<HttpState>, Path(node): Path<String>) -> Response {
    match files::deploy_token(&st.store, &format!("token-{node}")).await {
        Ok(Some(t)) => ([(header::CACHE_CONTROL, "no-store")], t).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(error) => {
            warn!(%error, "database lookup for a deploy token failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// `GET`/`HEAD /vmedia/<node>/<token>.iso`: the node's virtual-media boot ISO while its
/// session lives ([`crate::vmedia`]), with Range support as BMCs read it.
async fn vmedia_iso(
    State(st): State<HttpState>,
    Path((node, file)): Path<(String, String)>,
    req: Request,
) -> Response {
    let built = st.vmedia.get(&node, &file).await;
    serve_iso(built, req, "application/x-iso9660-image").await
}

/// `GET`/`HEAD /http-boot/<mac>.iso`: the ramdisk ISO a `boot_interface: http` node's
/// firmware boots by UEFI HTTP boot ([`crate::vmedia::VmediaIsos::get_http_boot`]), typed
/// as UEFI's HTTP boot expects a CD image.
async fn http_boot_iso(
    State(st): State<HttpState>,
    Path(file): Path<String>,
    req: Request,
) -> Response {
    let built = st.vmedia.get_http_boot(&file).await;
    serve_iso(built, req, "application/vnd.efi-iso").await
}

async fn serve_iso(
    built: Result<std::path::PathBuf, crate::vmedia::VmediaError>,
    req: Request,
    content_type: &'static str,
) -> Response {
    use crate::vmedia::VmediaError;
    match built {
        Ok(path) => match ServeFile::new(path).oneshot(req).await {
            Ok(r) => {
                let mut r = r.into_response();
                let h = r.headers_mut();
                h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
                h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
                r
            }
            Err(never) => match never {},
        },
        Err(VmediaError::NotFound) => StatusCode::NOT_FOUND.into_response(),
        Err(error) => {
            warn!(%error, "boot ISO not served");
            let status = match &error {
                VmediaError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                VmediaError::Source { .. } => StatusCode::BAD_GATEWAY,
                VmediaError::Db(_) => StatusCode::SERVICE_UNAVAILABLE,
                VmediaError::Io(_) | VmediaError::NotFound => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, format!("{error}\n")).into_response()
        }
    }
}

async fn dnsmasq(State(st): State<HttpState>) -> Response {
    text(crate::dnsmasq::render(&st.cfg, &crate::dnsmasq::DnsmasqOptions::default()))
}

async fn healthz(State(st): State<HttpState>) -> Response {
    match st.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response(),
    }
}
