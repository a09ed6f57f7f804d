//! pxe-service: the TFTP server, the HTTP boot server and per-MAC boot config rendering.
//!
//! Machines network-boot from it: DHCP (an operator's dnsmasq, see [`dnsmasq`]) points them at
//! an iPXE binary over TFTP, iPXE fetches `boot.ipxe` over HTTP and chains the per-MAC script
//! rendered from the node's row (deploy ramdisk, instance kernel, local disk or exit). PXELINUX
//! and GRUB configs are rendered the same way over TFTP. Nothing per node is written to disk,
//! so replicas behind one address serve identical answers.

pub mod config;
pub mod dnsmasq;
pub mod files;
pub mod http;
pub mod image_cache;
pub mod render;
pub mod tftp;

use std::sync::Arc;
use std::time::Duration;

use store::DataStore;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{BootFormat, PxeConfig, PxeConfigError, UnknownMac};
pub use image_cache::image_cache_url;

/// How long running transfers and image fetches get to finish after shutdown was requested.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How often the image cache is checked against its size and TTL limits.
const CACHE_CLEAN_INTERVAL: Duration = Duration::from_secs(600);

/// Why pxe-service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PxeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] PxeConfigError),
    /// The image cache directory cannot be used.
    #[error("image cache")]
    ImageCache(#[source] image_cache::CacheError),
    /// A listener failed.
    #[error("{what} server failed")]
    Io {
        /// `tftp` or `http`.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Run the TFTP and HTTP servers on already-bound sockets until `token` is cancelled.
///
/// # Errors
/// [`PxeError`] for bad configuration or a listener that fails.
pub async fn run(
    cfg: PxeConfig,
    tftp_socket: UdpSocket,
    http_listener: TcpListener,
    store: DataStore,
    token: CancellationToken,
) -> Result<(), PxeError> {
    cfg.validate()?;
    files::check_ipxe_binaries(&cfg);
    let cfg = Arc::new(cfg);
    let images = image_cache::ImageCache::new(
        cfg.data_dir.join("images"),
        store.clone(),
        Duration::from_secs(cfg.image_fetch_timeout_secs),
        cfg.image_cache_limits(),
    )
    .map_err(PxeError::ImageCache)?;
    let resolver = Arc::new(files::BootFiles::tftp(cfg.clone(), store.clone()));
    let state = http::HttpState { cfg: cfg.clone(), store, images: images.clone() };
    let app = http::router(state);
    if let Ok(addr) = http_listener.local_addr() {
        info!(%addr, "http boot server listening");
    }

    // Either server failing stops the other.
    let inner = token.child_token();
    // Keep the image cache within its limits even when nothing new is fetched (TTL).
    let cleaner = {
        let (images, stop) = (images.clone(), inner.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CACHE_CLEAN_INTERVAL);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(error) = images.clean().await {
                            warn!(%error, "image cache cleaning failed");
                        }
                    }
                }
            }
        })
    };
    let tftp = tftp::serve(tftp_socket, cfg.tftp_settings(), resolver, inner.clone());
    let http_token = inner.clone();
    let http = async move {
        axum::serve(http_listener, app).with_graceful_shutdown(http_token.cancelled_owned()).await
    };
    let (tftp_res, http_res) = tokio::join!(
        async {
            let r = tftp.await;
            inner.cancel();
            r
        },
        async {
            let r = http.await;
            inner.cancel();
            r
        }
    );
    cleaner.abort();
    images.tracker().close();
    if tokio::time::timeout(DRAIN_GRACE, images.tracker().wait()).await.is_err() {
        warn!("image fetches still running after the grace period; abandoning them");
    }
    tftp_res.map_err(|source| PxeError::Io { what: "tftp", source })?;
    http_res.map_err(|source| PxeError::Io { what: "http", source })?;
    info!("pxe-service stopped");
    Ok(())
}

/// Why the service could not start or stopped with an error (for the binary).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("binding the {what} listener on {addr}")]
    Bind {
        /// `tftp` or `http`.
        what: &'static str,
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error("opening the database: {0}")]
    Database(deploy::PublicError),
    /// The service failed.
    #[error("serving")]
    Run(#[source] PxeError),
}

/// Bind the configured addresses, open and migrate the database, and [`run`] until `token`.
///
/// # Errors
/// [`StartError`].
pub async fn serve(cfg: config::PxeFileConfig, token: CancellationToken) -> Result<(), StartError> {
    let pxe = cfg.pxe;
    let tftp = UdpSocket::bind(&pxe.tftp_bind).await.map_err(|source| StartError::Bind {
        what: "tftp",
        addr: pxe.tftp_bind.clone(),
        source,
    })?;
    let http = TcpListener::bind(&pxe.http_bind).await.map_err(|source| StartError::Bind {
        what: "http",
        addr: pxe.http_bind.clone(),
        source,
    })?;
    let store = DataStore::connect(&cfg.database.url).await.map_err(StartError::Database)?;
    store.migrate().await.map_err(StartError::Database)?;
    run(pxe, tftp, http, store, token).await.map_err(StartError::Run)
}
