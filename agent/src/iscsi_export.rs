//! The ramdisk side of the `iscsi` deploy interface: export the target disk as an iSCSI
//! target (the deploy's target name, a portal on the node's address, LUN 1, CHAP with the
//! deploy's credentials), call back `pass_deploy_info` with the one-time deploy key as an
//! auth header, and wait for the conductor to say the write ended ([`iscsi::notify`]), then
//! stop exporting. If the disk cannot be opened, the callback carries the error instead, so
//! the deploy fails at once with the cause rather than at the callback timeout.
//!
//! Before its "done", the conductor of a partition image asks the ramdisk to format the
//! ephemeral partition and install the bootloader ([`bootloader`]); the export stays up
//! until the outcome.
//!
//! The credentials come from the per-node token file pxe-service serves next to the boot
//! config ([`deploy::iscsi::ExportCredentials::from_token_file`]); the key is never put on
//! the kernel command line and never logged.

pub mod bootloader;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploy::iscsi::{DeployInfo, ExportCredentials};
use iscsi::notify::Outcome;
use iscsi::target::TargetConfig;
use iscsi::{BlockBackend, ChapCredentials, FileBackend};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The header the deploy key travels in (the API's `pass_deploy_info`).
pub const DEPLOY_KEY_HEADER: &str = "X-Ferric-Deploy-Key";

/// What the export needs.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// The API's base URL (`http://host:6385`).
    pub api_url: String,
    /// The node's UUID.
    pub node_uuid: String,
    /// The disk to export (a block device, or a file in tests).
    pub disk: PathBuf,
    /// The address the portal and the notification listener bind, reported to the API.
    pub address: IpAddr,
    /// The portal's port (3260; 0 picks one).
    pub iscsi_port: u16,
    /// The notification port (10000; 0 picks one).
    pub notify_port: u16,
    /// How long to wait for the API and for the conductor.
    pub timeout: Duration,
    /// A fake machine root (the simulator): bootloader installs are recorded there, not run.
    pub fake_root: Option<PathBuf>,
}

/// Why the export failed.
#[derive(Debug, Error)]
pub enum ExportError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The disk could not be opened; the callback reported it.
    #[error("cannot open the target disk {disk}")]
    Disk {
        /// The disk.
        disk: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The API refused or could not be reached.
    #[error("pass_deploy_info failed: {0}")]
    Callback(String),
    /// The notification listener failed.
    #[error("waiting for the conductor failed")]
    Notify(#[source] std::io::Error),
}

/// Export `cfg.disk` under `creds`, call back, and wait for the conductor's outcome.
///
/// # Errors
/// [`ExportError`]; the API has been told about a disk that cannot be opened.
pub async fn run(
    cfg: &ExportConfig,
    creds: &ExportCredentials,
    shutdown: &CancellationToken,
) -> Result<Outcome, ExportError> {
    let http = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .build()
        .map_err(|e| ExportError::Callback(e.to_string()))?;
    let backend: Arc<dyn BlockBackend> = match FileBackend::open(&cfg.disk) {
        Ok(b) => Arc::new(b),
        Err(source) => {
            let info = DeployInfo {
                error: Some(format!(
                    "cannot open the target disk {}: {source}",
                    cfg.disk.display()
                )),
                ..Default::default()
            };
            callback(&http, cfg, creds, &info).await?;
            return Err(ExportError::Disk { disk: cfg.disk.clone(), source });
        }
    };
    let bind = |port| async move {
        let addr = SocketAddr::new(cfg.address, port);
        TcpListener::bind(addr).await.map_err(|source| ExportError::Listen { addr, source })
    };
    let portal = bind(cfg.iscsi_port).await?;
    let notify = bind(cfg.notify_port).await?;
    let port = portal.local_addr().map_err(ExportError::Notify)?.port();
    let notify_port = notify.local_addr().map_err(ExportError::Notify)?.port();
    let mut tc = TargetConfig::new(creds.iqn.clone());
    tc.chap = Some(ChapCredentials::new(creds.chap_user.clone(), creds.chap_secret.clone()));
    let target =
        iscsi::target::spawn(portal, tc, backend, shutdown).map_err(ExportError::Notify)?;
    tracing::info!(iqn = %creds.iqn, port, notify_port, "exporting the target disk over iSCSI");
    let info = DeployInfo {
        address: cfg.address.to_string(),
        iqn: creds.iqn.clone(),
        port: Some(port),
        notify_port: Some(notify_port),
        error: None,
    };
    if let Err(e) = callback(&http, cfg, creds, &info).await {
        target.shutdown(Duration::from_secs(5)).await;
        return Err(e);
    }
    let target = std::sync::Mutex::new(Some(target));
    let target = &target;
    let outcome = tokio::select! {
        biased;
        () = shutdown.cancelled() => Outcome::Stop,
        r = iscsi::notify::serve(&notify, |body| {
            let (disk, fake) = (cfg.disk.clone(), cfg.fake_root.clone());
            async move { bootloader::answer(&body, &disk, fake.as_deref()).await }
        }, |outcome| async move {
            let t = target.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if let Some(t) = t {
                t.shutdown(Duration::from_secs(5)).await;
            }
            // Logged before the conductor hears `ok`: it reboots the machine right after,
            // and a line written later may never reach the console.
            tracing::info!(?outcome, "the conductor ended the iSCSI export");
        }) => r.map_err(ExportError::Notify)?,
    };
    let t = target.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(t) = t {
        t.shutdown(Duration::from_secs(5)).await;
        tracing::info!(?outcome, "the iSCSI export stopped with the ramdisk");
    }
    Ok(outcome)
}

/// How long the root disk may take to appear (a slow controller) before the export gives up.
const DISK_WAIT: Duration = Duration::from_secs(60);

/// The boot of an `iscsi` deploy ([`crate::AgentConfig::iscsi_token_url`]): fetch the token
/// file (retrying while pxe-service or the network comes up), find the root disk (retrying
/// while it is slow to appear), export it at `address` and wait for the conductor. A fake
/// root (the simulator) picks free ports; a real machine uses 3260 and 10000.
///
/// # Errors
/// [`ExportError`]; a missing disk has been reported to the API.
pub async fn run_from_boot(
    cfg: &crate::AgentConfig,
    address: IpAddr,
    shutdown: &CancellationToken,
) -> Result<Outcome, ExportError> {
    let url = cfg.iscsi_token_url.clone().unwrap_or_default();
    let api_url = cfg
        .api_url
        .clone()
        .ok_or_else(|| ExportError::Callback("no API URL (ferric.api_url) to call back".into()))?;
    let node_uuid =
        url.rsplit('/').next().unwrap_or_default().trim_start_matches("token-").to_owned();
    let http = reqwest::Client::builder()
        .timeout(cfg.api_timeout())
        .build()
        .map_err(|e| ExportError::Callback(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.lookup_timeout_secs);
    let (creds, hints) = loop {
        let got = async {
            let r = http.get(&url).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            let text = r.text().await.ok()?;
            let creds = ExportCredentials::from_token_file(&text)?;
            Some((creds, ExportCredentials::root_device_hints(&text)))
        };
        if let Some(c) = got.await {
            break c;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ExportError::Callback(format!("no deploy token at {url}")));
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(Outcome::Stop),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let root = cfg.root_dir();
    // The operator's root-device hints, as the token file carries them; hints that do not
    // parse match no disk (the deploy fails with the cause) rather than another disk.
    let hints = match hints.as_deref().map(deploy::hints::RootDeviceHints::parse_str) {
        Some(Ok(h)) => Ok(h),
        Some(Err(e)) => Err(e),
        None => Ok(None),
    };
    let disk_deadline = tokio::time::Instant::now() + DISK_WAIT;
    let disk = loop {
        let inv = crate::inventory::collect(&root, cfg.bootif.as_deref());
        let devices = crate::inventory::block_devices(&inv);
        let chosen = match &hints {
            Ok(h) => deploy::hints::select_root_device(&devices, h.as_ref()),
            Err(e) => Err(e.clone()),
        };
        match chosen {
            Ok(d) => break crate::inventory::device_path(&root, &d.name),
            Err(e) if tokio::time::Instant::now() >= disk_deadline => {
                // Reported through the callback, so the deploy fails now with the cause.
                let missing = root.join("dev/no-root-disk");
                tracing::warn!(error = %e, "no root disk appeared");
                break missing;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    };
    let fake = cfg.is_fake_root();
    let export = ExportConfig {
        api_url,
        node_uuid,
        disk,
        address,
        iscsi_port: if fake { 0 } else { deploy::iscsi::DEFAULT_ISCSI_PORT },
        notify_port: if fake { 0 } else { deploy::iscsi::DEFAULT_NOTIFY_PORT },
        timeout: cfg.api_timeout(),
        fake_root: fake.then_some(root),
    };
    run(&export, &creds, shutdown).await
}

/// `POST /v1/nodes/{uuid}/vendor_passthru/pass_deploy_info` with the key in the header.
async fn callback(
    http: &reqwest::Client,
    cfg: &ExportConfig,
    creds: &ExportCredentials,
    info: &DeployInfo,
) -> Result<(), ExportError> {
    let url = format!(
        "{}/v1/nodes/{}/vendor_passthru/pass_deploy_info",
        cfg.api_url.trim_end_matches('/'),
        cfg.node_uuid
    );
    let resp = http
        .post(url)
        .header(DEPLOY_KEY_HEADER, &creds.deploy_key)
        .header("X-OpenStack-Ironic-API-Version", crate::api_client::API_VERSION)
        .json(info)
        .send()
        .await
        .map_err(|e| ExportError::Callback(e.to_string()))?;
    if resp.status().is_success() {
        return Ok(());
    }
    let status = resp.status().as_u16();
    let body: String = resp.text().await.unwrap_or_default().chars().take(500).collect();
    Err(ExportError::Callback(format!("HTTP {status}: {body}")))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::Router;
    use axum::http::HeaderMap;
    use axum::routing::post;
    use iscsi::initiator::{InitiatorConfig, Session};

    use super::*;

    /// Serve `app` on a loopback port until the token is cancelled: its URL and the token.
    async fn serve(app: Router) -> (String, CancellationToken) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", l.local_addr().unwrap());
        let token = CancellationToken::new();
        let t2 = token.clone();
        tokio::spawn(async move {
            axum::serve(l, app).with_graceful_shutdown(t2.cancelled_owned()).await.unwrap();
        });
        (api, token)
    }

    fn creds() -> ExportCredentials {
        ExportCredentials {
            deploy_key: "the-key".into(),
            iqn: "iqn.2026-12.io.ferric:deploy:test".into(),
            chap_user: "ferric-u".into(),
            chap_secret: "secret-secret-12".into(),
        }
    }

    /// A fake API that records callbacks; the test plays the conductor with the initiator.
    #[tokio::test]
    async fn test_export_callback_write_and_done() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk).unwrap().set_len(4 << 20).unwrap();
        let seen: Arc<Mutex<Vec<(String, DeployInfo)>>> = Arc::default();
        let s2 = seen.clone();
        let app = Router::new().route(
            "/v1/nodes/{id}/vendor_passthru/pass_deploy_info",
            post(move |h: HeaderMap, axum::Json(info): axum::Json<DeployInfo>| {
                let s = s2.clone();
                async move {
                    let key = h.get("x-ferric-deploy-key").unwrap().to_str().unwrap().to_owned();
                    s.lock().unwrap().push((key, info));
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        );
        let (api, token) = serve(app).await;
        let cfg = ExportConfig {
            api_url: api,
            node_uuid: "n1".into(),
            disk: disk.clone(),
            address: "127.0.0.1".parse().unwrap(),
            iscsi_port: 0,
            notify_port: 0,
            timeout: Duration::from_secs(10),
            fake_root: None,
        };
        let (c, t) = (cfg.clone(), token.clone());
        let ramdisk = tokio::spawn(async move { run(&c, &creds(), &t).await });
        let info = loop {
            if let Some((key, info)) = seen.lock().unwrap().first().cloned() {
                assert_eq!(key, "the-key");
                break info;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let portal = SocketAddr::new(info.address.parse().unwrap(), info.port.unwrap());
        // A wrong secret is refused; the right one writes.
        let mut bad = InitiatorConfig::new("iqn.2026-12.io.ferric:test-initiator");
        bad.chap = Some(ChapCredentials::new("ferric-u", "wrong-secret-123"));
        let e = Session::login(portal, &info.iqn, bad).await.unwrap_err();
        assert!(e.is_auth_failure(), "{e}");
        let mut good = InitiatorConfig::new("iqn.2026-12.io.ferric:test-initiator");
        good.chap = Some(ChapCredentials::new("ferric-u", "secret-secret-12"));
        let mut s = Session::login(portal, &info.iqn, good).await.unwrap();
        s.write(0, &[0x5a; 4096]).await.unwrap();
        s.logout().await.unwrap();
        let done = SocketAddr::new(portal.ip(), info.notify_port.unwrap());
        // A bootloader install on a disk without a table: the report says why, and the
        // export goes on.
        let ask = serde_json::json!({"root_uuid": "x", "boot_mode": "bios"}).to_string();
        let answer = iscsi::notify::ask(done, &ask, Duration::from_secs(5)).await.unwrap();
        let report: deploy::iscsi::BootloaderReport = serde_json::from_str(&answer).unwrap();
        assert!(report.result().unwrap_err().contains("no partition table"), "{report:?}");
        assert!(tokio::net::TcpStream::connect(portal).await.is_ok(), "still exporting");
        iscsi::notify::notify(done, Outcome::Done, Duration::from_secs(5)).await.unwrap();
        assert_eq!(ramdisk.await.unwrap().unwrap(), Outcome::Done);
        assert!(std::fs::read(&disk).unwrap()[..4096].iter().all(|b| *b == 0x5a));
        // The export has stopped.
        assert!(tokio::net::TcpStream::connect(portal).await.is_err());
        token.cancel();
    }

    #[tokio::test]
    async fn test_missing_disk_is_reported_in_the_callback() {
        let seen: Arc<Mutex<Vec<DeployInfo>>> = Arc::default();
        let s2 = seen.clone();
        let app = Router::new().route(
            "/v1/nodes/{id}/vendor_passthru/pass_deploy_info",
            post(move |axum::Json(info): axum::Json<DeployInfo>| {
                let s = s2.clone();
                async move {
                    s.lock().unwrap().push(info);
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        );
        let (api, token) = serve(app).await;
        let cfg = ExportConfig {
            api_url: api,
            node_uuid: "n1".into(),
            disk: "/nonexistent/disk".into(),
            address: "127.0.0.1".parse().unwrap(),
            iscsi_port: 0,
            notify_port: 0,
            timeout: Duration::from_secs(10),
            fake_root: None,
        };
        let e = run(&cfg, &creds(), &token).await.unwrap_err();
        assert!(matches!(e, ExportError::Disk { .. }), "{e}");
        let got = seen.lock().unwrap().clone();
        assert!(got[0].error.as_deref().unwrap().contains("/nonexistent/disk"), "{got:?}");
        token.cancel();
    }
}
