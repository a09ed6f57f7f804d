//! The Ironic-compatible REST API v1 (axum) and the native gRPC API (tonic).
//!
//! The service is stateless: every request reads the database, writes are conditional on the
//! node's generation, and asynchronous work is announced on the bus for the conductor. Any
//! number of replicas can run against one database and bus.
//!
//! Modules: [`version`] (microversions), [`error`] (the one HTTP/gRPC error mapping),
//! [`render`] (version-gated, secret-masked JSON), [`patch`] (JSON Patch with Ironic's
//! rules), [`service`] (the operations both transports share), `rest` (axum handlers),
//! [`grpc`] (tonic), [`auth`], [`metrics`], [`config`].

pub mod auth;
pub mod config;
pub mod drivers;
pub mod error;
pub mod grpc;
pub mod metrics;
mod openapi;
pub mod patch;
pub mod render;
mod rest;
pub mod service;
pub mod version;

use std::sync::Arc;

use bus::DynBus;
use store::DataStore;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error("database unavailable")]
    Store(#[source] deploy::PublicError),
    /// The bus could not be connected.
    #[error("event bus unavailable")]
    Bus(#[source] bus::BusError),
}

/// Everything `main` does after loading the config: check it, bind both listeners, open and
/// migrate the database, connect the bus, and serve until `token` is cancelled.
///
/// # Errors
/// [`ApiServiceError`]; `Config` means exit code 2.
pub async fn start(cfg: ApiConfig, token: CancellationToken) -> Result<(), ApiServiceError> {
    let checked = cfg.check()?;
    let bind = |addr| async move {
        TcpListener::bind(addr).await.map_err(|source| ApiServiceError::Bind { addr, source })
    };
    let rest = bind(checked.rest_listen).await?;
    let grpc = bind(checked.grpc_listen).await?;
    let store = DataStore::connect(&cfg.database.url).await.map_err(ApiServiceError::Store)?;
    store.migrate().await.map_err(ApiServiceError::Store)?;
    let bus = bus::connect_with_exchange(Some(&cfg.bus.url), &cfg.bus.exchange)
        .await
        .map_err(ApiServiceError::Bus)?;
    let state = ApiState::new(store, bus, checked.settings, checked.auth);
    serve(state, rest, grpc, token).await
}

/// Serve REST on `rest` and gRPC on `grpc` until `token` is cancelled.
///
/// # Errors
/// [`ApiServiceError`] for a bad configuration or a server failure.
pub async fn run(
    cfg: ApiConfig,
    rest: TcpListener,
    grpc: TcpListener,
    store: DataStore,
    bus: DynBus,
    token: CancellationToken,
) -> Result<(), ApiServiceError> {
    let checked = cfg.check()?;
    let state = ApiState::new(store, bus, checked.settings, checked.auth);
    serve(state, rest, grpc, token).await
}

/// Serve an already-built state (tests and `ferric up` share one state).
///
/// # Errors
/// [`ApiServiceError`] for a server failure.
pub async fn serve(
    state: ApiState,
    rest: TcpListener,
    grpc: TcpListener,
    token: CancellationToken,
) -> Result<(), ApiServiceError> {
    let rest_addr = rest.local_addr().ok();
    let grpc_addr = grpc.local_addr().ok();
    tracing::info!(rest = ?rest_addr, grpc = ?grpc_addr, backend = state.store.backend_name(), "api-service listening");
    let app = router(state.clone());
    let rest_token = token.clone();
    let rest_fut = async move {
        axum::serve(rest, app)
            .with_graceful_shutdown(async move { rest_token.cancelled().await })
            .await
            .map_err(ApiServiceError::Rest)
    };
    let grpc_svc = proto::api::node_service_server::NodeServiceServer::from_arc(Arc::new(
        grpc::GrpcApi::new(state, token.clone()),
    ));
    let grpc_token = token.clone();
    let grpc_fut = async move {
        tonic::transport::Server::builder()
            .add_service(grpc_svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async move {
                    grpc_token.cancelled().await;
                },
            )
            .await
            .map_err(ApiServiceError::Grpc)
    };
    // If one server dies, stop the other too rather than limp along half-up.
    let stop_all = token.clone();
    let res = tokio::try_join!(
        async {
            let r = rest_fut.await;
            if r.is_err() {
                stop_all.cancel();
            }
            r
        },
        async {
            let r = grpc_fut.await;
            if r.is_err() {
                token.cancel();
            }
            r
        }
    );
    tracing::info!("api-service stopped");
    res.map(|_| ())
}
