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
pub mod metrics;
pub mod render;
pub mod tftp;
pub mod vmedia;

use std::sync::Arc;
use std::time::Duration;

use common::shutdown::{Shutdown, joined};
use store::DataStore;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{info, warn};

pub use config::{BootFormat, PxeConfig, PxeConfigError, UnknownMac};
pub use image_cache::image_cache_url;

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

/// Run the TFTP and HTTP servers on already-bound sockets until `shutdown` is cancelled or
/// either fails; ready ([`Shutdown::ready`]) once the image cache is open and both serve. On
/// shutdown, transfers and image fetches get the drain timeout ([`Shutdown::drain`]).
///
/// The database must be migrated already (`main` and `ferric up` do it).
///
/// # Errors
/// [`PxeError`] for bad configuration or a listener that fails.
pub async fn run(
    cfg: PxeConfig,
    tftp_socket: UdpSocket,
    http_listener: TcpListener,
    store: DataStore,
    shutdown: Shutdown,
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
    let downloads = Arc::new(tokio::sync::Semaphore::new(cfg.http_max_downloads.max(1)));
    let state_store = store.clone();
    let vmedia = vmedia::VmediaIsos::new(cfg.clone(), store.clone());
    let state =
        http::HttpState { cfg: cfg.clone(), store, images: images.clone(), downloads, vmedia };
    let app = http::router(state);
    let tftp_addr = tftp_socket.local_addr().ok();
    let http_addr = http_listener.local_addr().ok();

    // Either server failing stops the other.
    let token = shutdown.token().clone();
    // Keep the image cache within its limits even when nothing new is fetched (TTL).
    shutdown.spawn({
        let (images, stop) = (images.clone(), token.clone());
        async move {
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
        }
    });
    if cfg.dnsmasq_hosts_dir.is_some() {
        shutdown.spawn(dnsmasq::keep_hosts_file(state_store, cfg.clone(), token.clone()));
    }
    let tftp = tftp::serve(tftp_socket, cfg.tftp_settings(), resolver, token.clone());
    let stop = token.clone();
    let tftp_task = shutdown.spawn(async move {
        let r = tftp.await.map_err(|source| PxeError::Io { what: "tftp", source });
        stop.cancel();
        r
    });
    let (http_token, stop) = (token.clone(), token);
    let http_task = shutdown.spawn(async move {
        let r = axum::serve(http_listener, app)
            .with_graceful_shutdown(http_token.cancelled_owned())
            .await
            .map_err(|source| PxeError::Io { what: "http", source });
        stop.cancel();
        r
    });
    shutdown.ready();
    info!(tftp = ?tftp_addr, http = ?http_addr, "pxe-service ready");

    shutdown.cancelled().await;
    // Image fetches run on the cache's own tracker; the drain waits for them too.
    let fetches = images.tracker().clone();
    fetches.close();
    shutdown.spawn(async move { fetches.wait().await });
    if shutdown.drain().await.is_err() {
        warn!("transfers or image fetches still running after the drain timeout; abandoning them");
        tftp_task.abort();
        http_task.abort();
    }
    let tftp_res = joined(tftp_task).await.unwrap_or(Ok(()));
    let http_res = joined(http_task).await.unwrap_or(Ok(()));
    info!("pxe-service stopped");
    tftp_res.and(http_res)
}
