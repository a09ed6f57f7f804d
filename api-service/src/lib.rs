//! The Ironic-compatible REST API v1 (axum) and the native gRPC API (tonic).
//!
//! The service is stateless: every request reads the database, writes are conditional on the
//! node's generation, and asynchronous work is announced on the bus for the conductor. Any
//! number of replicas can run against one database and bus.
//!
//! Modules: [`version`] (microversions), [`error`] (the one HTTP/gRPC error mapping),
//! [`render`] (version-gated, secret-masked JSON), [`patch`] (JSON Patch with Ironic's
//! rules), [`service`] (the operations both transports share), `rest` (axum handlers),
//! [`grpc`] (tonic), [`auth`] and [`policy`] (who may do what, both transports), [`metrics`], [`config`].

pub mod auth;
pub mod config;
pub mod drivers;
pub mod endpoints;
pub mod error;
#[cfg(test)]
mod fuzz_tests;
pub mod grpc;
pub mod limits;
pub mod metrics;
mod openapi;
pub mod outbox;
pub mod patch;
pub mod policy;
pub mod render;
pub mod resources;
mod rest;
pub mod ring;
pub mod serve;
pub mod service;
pub mod version;
mod web;

use std::sync::Arc;

use bus::DynBus;
use common::shutdown::{Shutdown, joined};
use store::DataStore;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use config::{ApiConfig, CheckedConfig, ConfigCheckError};
pub use rest::router;
pub use service::{ApiState, Settings};

/// Why the API service stopped with an error.
#[derive(Debug, Error)]
pub enum ApiServiceError {
    /// The configuration is unusable.
    #[error("invalid configuration")]
    Config(#[from] ConfigCheckError),
    /// The REST server failed.
    #[error("REST server failed")]
    Rest(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
}

/// Refuse `noauth` on non-loopback listeners unless allowed, and say loudly when the API
/// is open or trusts identity headers on an address others can reach.
fn check_listeners(
    checked: &CheckedConfig,
    addrs: [(&'static str, Option<std::net::SocketAddr>); 2],
) -> Result<(), ConfigCheckError> {
    for (key, addr) in addrs {
        let Some(addr) = addr else { continue };
        match &checked.auth {
            auth::Auth::NoAuth if !checked.noauth_allow_remote => {
                config::check_noauth_listen(key, addr)?;
            }
            auth::Auth::NoAuth if !addr.ip().is_loopback() => tracing::warn!(
                %addr,
                "AUTHENTICATION IS OFF (api.auth_strategy = noauth) on a non-loopback address: \
                 anyone who reaches this port can enroll, deploy and delete machines"
            ),
            auth::Auth::TrustedHeaders if !addr.ip().is_loopback() => tracing::warn!(
                %addr,
                "keystone mode trusts the X-Roles/X-Project-Id headers: only a proxy that \
                 validates tokens and strips client-sent identity headers may reach this port"
            ),
            _ => {}
        }
    }
    Ok(())
}

/// Serve REST on `rest` and gRPC on `grpc` (both already bound) until `shutdown` is
/// cancelled or either server fails; ready ([`Shutdown::ready`]) once both serve. On shutdown
/// in-flight requests get the drain timeout ([`Shutdown::drain`]) to finish.
///
/// The database must be migrated already (`main` and `ferric up` do it).
///
/// # Errors
/// [`ApiServiceError`] for a bad configuration or a server failure.
pub async fn run(
    cfg: ApiConfig,
    rest: TcpListener,
    grpc: TcpListener,
    store: DataStore,
    bus: DynBus,
    shutdown: Shutdown,
) -> Result<(), ApiServiceError> {
    let checked = cfg.check()?;
    let rest_addr = rest.local_addr().ok();
    let grpc_addr = grpc.local_addr().ok();
    // The listeners are bound by the caller: check the addresses they really have.
    check_listeners(&checked, [("api.rest_listen", rest_addr), ("api.grpc_listen", grpc_addr)])?;
    let token = shutdown.token().clone();
    let mut state = ApiState::new(store, bus, checked.settings, checked.auth);
    state.shutdown = token.clone();
    let backend = state.store.backend_name();
    let app = router(state.clone());
    let relay = shutdown.spawn(state.outbox.clone().relay(
        state.store.clone(),
        state.bus.clone(),
        token.clone(),
    ));
    let timeouts = serve::HttpTimeouts { header_read: state.settings.header_read_timeout };
    // With TLS both listeners serve the one reloading certificate.
    let tls = match &checked.tls {
        Some(t) => {
            let rest_cfg = common::tls::server_config(t.cert.clone(), common::tls::ALPN_H2_HTTP1)
                .map_err(|e| ApiServiceError::Config(ConfigCheckError::Tls(e)))?;
            let grpc_cfg = common::tls::server_config(t.cert.clone(), common::tls::ALPN_H2)
                .map_err(|e| ApiServiceError::Config(ConfigCheckError::Tls(e)))?;
            let _watcher =
                shutdown.spawn(t.cert.clone().watch(t.reload_interval, token.child_token()));
            Some((TlsAcceptor::from(rest_cfg), TlsAcceptor::from(grpc_cfg)))
        }
        None => None,
    };
    let (rest_tls, grpc_tls) = tls.unzip();
    let (rest_token, stop) = (token.clone(), token.clone());
    // Either server stopping stops the other too rather than limp along half-up.
    let rest_task = shutdown.spawn(async move {
        let r = serve::serve_rest(rest, app, timeouts, rest_tls, rest_token)
            .await
            .map_err(ApiServiceError::Rest);
        stop.cancel();
        r
    });
    let grpc_svc = proto::api::node_service_server::NodeServiceServer::from_arc(Arc::new(
        grpc::GrpcApi::new(state, token.clone()),
    ));
    let (grpc_token, stop) = (token.clone(), token);
    let handshake_timeout = timeouts.header_read;
    let grpc_task = shutdown.spawn(async move {
        let router = tonic::transport::Server::builder()
            // Dead or stalled peers are found and their streams closed.
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
            .add_service(grpc_svc);
        let served = match grpc_tls {
            Some(acceptor) => {
                let incoming = common::tls::tls_incoming(
                    grpc,
                    acceptor,
                    handshake_timeout,
                    grpc_token.clone(),
                );
                router.serve_with_incoming_shutdown(incoming, grpc_token.cancelled_owned()).await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(grpc),
                        grpc_token.cancelled_owned(),
                    )
                    .await
            }
        };
        let r = served.map_err(ApiServiceError::Grpc);
        stop.cancel();
        r
    });
    shutdown.ready();
    let tls = checked.tls.is_some();
    tracing::info!(rest = ?rest_addr, grpc = ?grpc_addr, backend, tls, "api-service ready");

    shutdown.cancelled().await;
    if shutdown.drain().await.is_err() {
        rest_task.abort();
        grpc_task.abort();
    }
    let _ = joined(relay).await;
    let rest_res = joined(rest_task).await.unwrap_or(Ok(()));
    let grpc_res = joined(grpc_task).await.unwrap_or(Ok(()));
    tracing::info!("api-service stopped");
    rest_res.and(grpc_res)
}
