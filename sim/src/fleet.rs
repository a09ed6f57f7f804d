//! A fleet of simulated machines, each with its own Redfish BMC on 127.0.0.1. The BMCs offer
//! virtual media unless turned off ([`FleetConfig::virtual_media`]), keeping the downloaded
//! images next to each machine's root tree (`<dir>/<name>.bmc-media`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploy::ids::MacAddress;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bmc::{MachineBackend, RedfishOptions, VirtualMediaConfig, serve_redfish_with};
use crate::disk::SplitMix64;
use crate::firmware::NetbootConfig;
use crate::machine::{Faults, MachineError, MachineSpec, RamdiskLauncher, SimMachine};
use crate::ramdisk;

/// How to build a fleet.
#[derive(Clone)]
pub struct FleetConfig {
    /// Directory holding one root tree per machine.
    pub dir: PathBuf,
    /// Number of machines.
    pub count: usize,
    /// Seed for MACs and jitter: the same seed gives the same fleet.
    pub seed: u64,
    /// Disk size per machine (a sparse file).
    pub disk_bytes: u64,
    /// Where the machines network-boot from.
    pub netboot: NetbootConfig,
    /// BMC credentials (user, password); `None` = no auth.
    pub credentials: Option<(String, String)>,
    /// POST time before the firmware boots.
    pub post_delay: Duration,
    /// NICs per machine.
    pub nics: usize,
    /// Name prefix: machines are `<prefix>-0001`, ….
    pub name_prefix: String,
    /// What network boot (and a virtual CD boot) starts.
    pub launcher: Arc<dyn RamdiskLauncher>,
    /// Whether the BMCs offer virtual media drives (default true).
    pub virtual_media: bool,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("dir", &self.dir)
            .field("count", &self.count)
            .field("seed", &self.seed)
            .field("disk_bytes", &self.disk_bytes)
            .field("netboot", &self.netboot)
            .field("credentials", &self.credentials.as_ref().map(|(u, _)| (u, "***")))
            .field("virtual_media", &self.virtual_media)
            .finish_non_exhaustive()
    }
}

impl FleetConfig {
    /// A fleet of `count` machines in `dir` booting from `netboot`, running the real agent.
    pub fn new(dir: PathBuf, count: usize, netboot: NetbootConfig) -> Self {
        FleetConfig {
            dir,
            count,
            seed: 1,
            // Sparse: only written blocks use space. At least 4 GiB, the agent's (and
            // Ironic's) smallest default root disk.
            disk_bytes: 8 << 30,
            netboot,
            credentials: Some(("admin".into(), "password".into())),
            post_delay: Duration::from_millis(50),
            nics: 1,
            name_prefix: "sim".into(),
            launcher: Arc::new(ramdisk::AgentLauncher::default()),
            virtual_media: true,
        }
    }
}

/// One machine of a fleet and where its BMC listens.
#[derive(Debug, Clone)]
pub struct FleetMachine {
    /// The machine.
    pub machine: SimMachine,
    /// Base URL of its Redfish BMC (`http://127.0.0.1:port`).
    pub bmc_url: String,
    credentials: Option<(String, String)>,
}

impl FleetMachine {
    /// `driver_info` for Ferric's (and Ironic's) `redfish` driver.
    pub fn redfish_driver_info(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("redfish_address".into(), json!(self.bmc_url));
        m.insert(
            "redfish_system_id".into(),
            json!(format!("/redfish/v1/Systems/{}", self.machine.name())),
        );
        m.insert("redfish_verify_ca".into(), json!(false));
        if let Some((u, p)) = &self.credentials {
            m.insert("redfish_username".into(), json!(u));
            m.insert("redfish_password".into(), json!(p));
        }
        m
    }
}

/// Running simulated machines.
#[derive(Debug)]
pub struct Fleet {
    machines: Vec<FleetMachine>,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Fleet {
    /// Creates the machines (powered off) and starts their BMCs.
    ///
    /// # Errors
    /// [`MachineError::Prepare`] when a root tree or listener cannot be created.
    pub async fn start(cfg: FleetConfig, token: CancellationToken) -> Result<Fleet, MachineError> {
        let tracker = TaskTracker::new();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| MachineError::Prepare {
                name: "fleet".into(),
                dir: cfg.dir.clone(),
                source: std::io::Error::other(e),
            })?;
        let mut rng = SplitMix64(cfg.seed);
        let mut machines = Vec::with_capacity(cfg.count);
        for i in 0..cfg.count {
            let name = format!("{}-{:04}", cfg.name_prefix, i + 1);
            let macs = fleet_macs(cfg.seed, i, cfg.nics.max(1));
            let dir = cfg.dir.join(&name);
            let prep =
                |source| MachineError::Prepare { name: name.clone(), dir: dir.clone(), source };
            let layout = {
                let (dir, macs, serial, bytes) = (
                    dir.clone(),
                    macs.clone(),
                    format!("SIM{:08X}", rng.next_u64() as u32),
                    cfg.disk_bytes,
                );
                tokio::task::spawn_blocking(move || {
                    ramdisk::prepare_root(&dir, bytes, &macs, &serial)
                })
                .await
                .map_err(|e| prep(std::io::Error::other(e)))?
                .map_err(prep)?
            };
            let spec = MachineSpec {
                name: name.clone(),
                macs,
                disk_bytes: cfg.disk_bytes,
                faults: Faults::default(),
                seed: rng.next_u64(),
                post_delay: cfg.post_delay,
                virtual_media: cfg.virtual_media,
            };
            let machine = SimMachine::new(
                spec,
                layout,
                cfg.netboot.clone(),
                http.clone(),
                cfg.launcher.clone(),
                token.child_token(),
            );
            let listener = TcpListener::bind("127.0.0.1:0").await.map_err(prep)?;
            let addr = listener.local_addr().map_err(prep)?;
            let backend: Arc<dyn MachineBackend> = Arc::new(machine.clone());
            let options = RedfishOptions {
                credentials: cfg.credentials.clone(),
                virtual_media: VirtualMediaConfig {
                    // Outside the root tree: the machine sees its media only through the BMC.
                    dir: Some(cfg.dir.join(format!("{name}.bmc-media"))),
                    ..VirtualMediaConfig::default()
                },
            };
            tracker.spawn(serve_redfish_with(
                listener,
                vec![(name.clone(), backend)],
                options,
                token.child_token(),
            ));
            machines.push(FleetMachine {
                machine,
                bmc_url: format!("http://{addr}"),
                credentials: cfg.credentials.clone(),
            });
        }
        Ok(Fleet { machines, token, tracker })
    }

    /// The machines, in creation order.
    pub fn machines(&self) -> &[FleetMachine] {
        &self.machines
    }

    /// The machine with `name`.
    pub fn get(&self, name: &str) -> Option<&FleetMachine> {
        self.machines.iter().find(|m| m.machine.name() == name)
    }

    /// Powers everything off, stops the BMCs and waits for all tasks.
    pub async fn shutdown(&self) {
        for m in &self.machines {
            m.machine.shutdown().await;
        }
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Locally administered, unique per (seed, index, nic) MACs: `52:54:<seed>:<index>:<nic>`.
pub fn fleet_macs(seed: u64, index: usize, nics: usize) -> Vec<MacAddress> {
    (0..nics)
        .map(|n| {
            let s = seed.to_le_bytes();
            let i = u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes();
            // 52:54 prefix, one seed byte, 16 bits of index and the NIC number in the top bits.
            let nic_bits = u8::try_from(n & 0x0f).unwrap_or(0) << 4;
            MacAddress([0x52, 0x54, s[0], i[2] | nic_bits, i[3], 0x10 | (i[1] & 0x0f)])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::Router;
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::routing::get;
    use serde_json::Value;

    use super::*;
    use crate::bmc::{BootEnabled, BootTarget, MediaDevice, PowerStatus, ResetKind};
    use crate::machine::{Phase, RamdiskBoot};

    /// Records each boot; optionally writes `write` bytes to the disk slowly, then waits.
    #[derive(Default)]
    struct FakeRamdisk {
        boots: Mutex<Vec<(PathBuf, String)>>,
        stopped: Mutex<u32>,
        write: u64,
    }

    #[async_trait::async_trait]
    impl RamdiskLauncher for FakeRamdisk {
        async fn run(&self, boot: RamdiskBoot) -> Result<(), String> {
            let cmdline = std::fs::read_to_string(boot.root.join("proc/cmdline")).unwrap();
            self.boots.lock().unwrap().push((boot.root.clone(), cmdline));
            if self.write > 0 {
                use std::io::{Seek, Write};
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(boot.root.join("dev/sda"))
                    .unwrap();
                let chunk = vec![0xA5u8; 256 << 10];
                let mut done = 0;
                while done < self.write && !boot.token.is_cancelled() {
                    f.seek(std::io::SeekFrom::Start(done)).unwrap();
                    f.write_all(&chunk).unwrap();
                    f.sync_data().unwrap();
                    done += chunk.len() as u64;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            boot.token.cancelled().await;
            *self.stopped.lock().unwrap() += 1;
            Ok(())
        }
    }

    async fn pxe_server() -> String {
        let app = Router::new()
            .route("/boot.ipxe", get(|| async { "#!ipxe\nchain pxelinux.cfg/${net0/mac:hexhyp} || exit 1\n" }))
            .route(
                "/pxelinux.cfg/{mac}",
                get(|Path(m): Path<String>| async move {
                    if m.starts_with("52-54-") {
                        Ok(format!(
                            "#!ipxe\nkernel /k ferric.api_url=http://api:6385 ipa-api-url=http://api:6385 BOOTIF=01-{m}\ninitrd /r\nboot\n"
                        ))
                    } else {
                        Err(StatusCode::NOT_FOUND)
                    }
                }),
            )
            .route("/k", get(|| async { vec![1u8; 4096] }))
            .route("/r", get(|| async { vec![2u8; 4096] }));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        format!("http://{addr}/boot.ipxe")
    }

    async fn fleet(dir: &std::path::Path, n: usize, launcher: Arc<dyn RamdiskLauncher>) -> Fleet {
        let netboot = NetbootConfig {
            ipxe_script_url: Some(pxe_server().await.parse().unwrap()),
            tftp_server: None,
            timeout: Duration::from_secs(5),
        };
        let mut cfg = FleetConfig::new(dir.to_path_buf(), n, netboot);
        cfg.disk_bytes = 16 << 20;
        cfg.post_delay = Duration::from_millis(5);
        cfg.launcher = launcher;
        Fleet::start(cfg, CancellationToken::new()).await.unwrap()
    }

    async fn redfish(
        c: &reqwest::Client,
        m: &FleetMachine,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut r =
            c.request(method, format!("{}{path}", m.bmc_url)).basic_auth("admin", Some("password"));
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }

    #[tokio::test]
    async fn test_pxe_boot_runs_ramdisk_with_kernel_args_and_power_off_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRamdisk::default());
        let f = fleet(dir.path(), 2, fake.clone()).await;
        let m = &f.machines()[1];
        let sys = format!("/redfish/v1/Systems/{}", m.machine.name());
        let c = reqwest::Client::new();
        let r = redfish(&c, m, reqwest::Method::PATCH, &sys, Some(serde_json::json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}))).await;
        assert_eq!(r.status(), 204);
        let r = redfish(
            &c,
            m,
            reqwest::Method::POST,
            &format!("{sys}/Actions/ComputerSystem.Reset"),
            Some(serde_json::json!({"ResetType": "On"})),
        )
        .await;
        assert_eq!(r.status(), 204);
        let st = m
            .machine
            .wait_for("ramdisk", Duration::from_secs(10), |s| {
                matches!(s.phase, Phase::Ramdisk { .. })
            })
            .await
            .unwrap();
        assert_eq!(st.power, PowerStatus::On);
        // The Once override was consumed by this boot.
        assert_eq!(st.boot.enabled, BootEnabled::Disabled);
        let (root, cmdline) = fake.boots.lock().unwrap()[0].clone();
        assert_eq!(root, m.machine.layout().root);
        let mac = m.machine.macs()[0].hyphenated();
        assert!(cmdline.contains("ferric.api_url=http://api:6385"), "{cmdline}");
        assert!(cmdline.contains(&format!("BOOTIF=01-{mac}")), "{cmdline}");
        assert!(cmdline.contains(&format!("ferric.root={}", root.display())), "{cmdline}");
        // The other machine never powered on.
        assert_eq!(f.machines()[0].machine.status().power, PowerStatus::Off);

        let r = redfish(
            &c,
            m,
            reqwest::Method::POST,
            &format!("{sys}/Actions/ComputerSystem.Reset"),
            Some(serde_json::json!({"ResetType": "ForceOff"})),
        )
        .await;
        assert_eq!(r.status(), 204);
        let v: Value = redfish(&c, m, reqwest::Method::GET, &sys, None).await.json().await.unwrap();
        assert_eq!(v["PowerState"], "Off");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while *fake.stopped.lock().unwrap() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "ramdisk was not stopped by power off");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f.shutdown().await;
    }

    #[tokio::test]
    async fn test_disk_boot_verifies_the_image_and_blank_disk_does_not_boot() {
        let dir = tempfile::tempdir().unwrap();
        let f = fleet(dir.path(), 1, Arc::new(FakeRamdisk::default())).await;
        let m = &f.machines()[0].machine;
        let img = crate::disk::build_whole_disk_image(4 << 20, 1 << 20, 9);
        m.expect_image(img.len() as u64, &crate::disk::sha256_hex(&img));
        m.set_boot_override(crate::bmc::BootOverride {
            target: BootTarget::Hdd,
            enabled: BootEnabled::Continuous,
            mode: crate::bmc::BootMode::Uefi,
        })
        .await
        .unwrap();

        // Blank disk: nothing to boot.
        m.reset(ResetKind::On).await.unwrap();
        let st = m
            .wait_for("no boot device", Duration::from_secs(5), |s| {
                matches!(s.phase, Phase::NoBootDevice(_))
            })
            .await
            .unwrap();
        assert_eq!(st.power, PowerStatus::On);

        // The image on the disk: boots and verifies.
        {
            use std::io::Write;
            let mut fh = std::fs::OpenOptions::new().write(true).open(&m.layout().disk).unwrap();
            fh.write_all(&img).unwrap();
        }
        m.reset(ResetKind::ForceRestart).await.unwrap();
        let st = m
            .wait_for("os", Duration::from_secs(5), |s| matches!(s.phase, Phase::Os(_)))
            .await
            .unwrap();
        match st.phase {
            Phase::Os(os) => assert_eq!(os.image_verified, Some(true)),
            other => panic!("{other:?}"),
        }
        // One flipped byte in the written range: still boots, but does not verify.
        {
            use std::io::{Seek, Write};
            let mut fh = std::fs::OpenOptions::new().write(true).open(&m.layout().disk).unwrap();
            fh.seek(std::io::SeekFrom::Start(3 << 20)).unwrap();
            fh.write_all(&[0xff]).unwrap();
        }
        m.reset(ResetKind::ForceRestart).await.unwrap();
        let st = m
            .wait_for("os", Duration::from_secs(5), |s| {
                matches!(s.phase, Phase::Os(_)) && s.boots == 3
            })
            .await
            .unwrap();
        match st.phase {
            Phase::Os(os) => assert_eq!(os.image_verified, Some(false)),
            other => panic!("{other:?}"),
        }
        f.shutdown().await;
    }

    #[tokio::test]
    async fn test_injected_faults_refuse_fail_and_crash() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRamdisk { write: 8 << 20, ..FakeRamdisk::default() });
        let f = fleet(dir.path(), 1, fake.clone()).await;
        let fm = &f.machines()[0];
        let m = &fm.machine;
        let c = reqwest::Client::new();
        let sys = format!("/redfish/v1/Systems/{}", m.name());

        m.set_faults(Faults { bmc_refuse_credentials: true, ..Faults::default() });
        assert_eq!(redfish(&c, fm, reqwest::Method::GET, &sys, None).await.status(), 401);
        m.set_faults(Faults { bmc_unavailable: true, ..Faults::default() });
        assert_eq!(redfish(&c, fm, reqwest::Method::GET, &sys, None).await.status(), 503);
        m.set_faults(Faults { network_drop: true, ..Faults::default() });
        m.set_boot_override(crate::bmc::BootOverride {
            target: BootTarget::Pxe,
            enabled: BootEnabled::Once,
            mode: crate::bmc::BootMode::Uefi,
        })
        .await
        .unwrap();
        m.reset(ResetKind::On).await.unwrap();
        m.wait_for(
            "netboot failure",
            Duration::from_secs(5),
            |s| matches!(&s.phase, Phase::NoBootDevice(w) if w.contains("no link")),
        )
        .await
        .unwrap();

        // Crash once 1 MiB has reached the disk: the ramdisk is stopped and the machine hangs.
        m.set_faults(Faults { agent_crash_after_bytes: Some(1 << 20), ..Faults::default() });
        m.set_boot_override(crate::bmc::BootOverride {
            target: BootTarget::Pxe,
            enabled: BootEnabled::Once,
            mode: crate::bmc::BootMode::Uefi,
        })
        .await
        .unwrap();
        m.reset(ResetKind::ForceRestart).await.unwrap();
        let st = m
            .wait_for(
                "crash",
                Duration::from_secs(10),
                |s| matches!(&s.phase, Phase::Hung(w) if w.contains("crashed")),
            )
            .await
            .unwrap();
        assert_eq!(st.power, PowerStatus::On);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while *fake.stopped.lock().unwrap() != 1 {
            assert!(tokio::time::Instant::now() < deadline, "crashed ramdisk still running");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f.shutdown().await;
    }

    /// Serves `files` (name → bytes) on 127.0.0.1; the base URL.
    async fn file_server(files: Vec<(&'static str, Vec<u8>)>) -> String {
        let files = Arc::new(files);
        let app = Router::new().route(
            "/{name}",
            get(move |Path(name): Path<String>| {
                let files = files.clone();
                async move {
                    let found = files.iter().find(|(n, _)| *n == name).map(|(_, b)| b.clone());
                    found.ok_or(StatusCode::NOT_FOUND)
                }
            }),
        );
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        format!("http://{addr}")
    }

    async fn boot_cd(c: &reqwest::Client, m: &FleetMachine, enabled: &str) {
        let sys = format!("/redfish/v1/Systems/{}", m.machine.name());
        let boot = serde_json::json!({"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": enabled}});
        assert_eq!(redfish(c, m, reqwest::Method::PATCH, &sys, Some(boot)).await.status(), 204);
        let reset = serde_json::json!({"ResetType": "ForceRestart"});
        let path = format!("{sys}/Actions/ComputerSystem.Reset");
        assert_eq!(redfish(c, m, reqwest::Method::POST, &path, Some(reset)).await.status(), 204);
    }

    async fn insert(c: &reqwest::Client, m: &FleetMachine, url: &str) -> reqwest::StatusCode {
        let path = format!(
            "/redfish/v1/Systems/{}/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia",
            m.machine.name()
        );
        let body = serde_json::json!({"Image": url, "Inserted": true, "WriteProtected": true});
        redfish(c, m, reqwest::Method::POST, &path, Some(body)).await.status()
    }

    async fn eject(c: &reqwest::Client, m: &FleetMachine) {
        let path = format!(
            "/redfish/v1/Systems/{}/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia",
            m.machine.name()
        );
        let r = redfish(c, m, reqwest::Method::POST, &path, Some(serde_json::json!({}))).await;
        assert_eq!(r.status(), 204);
    }

    #[tokio::test]
    async fn test_virtual_cd_boot_runs_the_ramdisk_with_the_iso_cmdline() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRamdisk::default());
        let f = fleet(dir.path(), 1, fake.clone()).await;
        let fm = &f.machines()[0];
        let cmdline = "ipa-api-url=http://api:6385 ferric.vmedia=1 BOOTIF=01-52-54-00-00-00-01";
        let iso = image::iso9660::build(
            "VMEDIA_BOOT",
            &[("ferric/cmdline", format!("{cmdline}\n").as_bytes()), ("ferric/kernel", &[9; 3000])],
            1_700_000_000,
        )
        .unwrap();
        let images =
            file_server(vec![("boot.iso", iso), ("garbage.iso", vec![0x5a; 64 << 10])]).await;
        let c = reqwest::Client::new();

        let boot_url = format!("{images}/boot.iso");
        assert_eq!(insert(&c, fm, &boot_url).await, 204);
        boot_cd(&c, fm, "Once").await;
        let st = fm
            .machine
            .wait_for("ramdisk", Duration::from_secs(10), |s| {
                matches!(s.phase, Phase::Ramdisk { .. })
            })
            .await
            .unwrap();
        assert_eq!(st.boot.enabled, BootEnabled::Disabled);
        let (root, booted) = fake.boots.lock().unwrap()[0].clone();
        let want = format!("{cmdline} ferric.root={}", root.display());
        assert_eq!(booted.trim_end(), want);
        assert!(matches!(&st.phase, Phase::Ramdisk { cmdline, .. } if *cmdline == want));
        let held = fm.machine.media(MediaDevice::Cd).unwrap();
        assert_eq!(held.url, boot_url);
        assert!(held.path.starts_with(dir.path().join("sim-0001.bmc-media")));

        // An empty drive boots nothing.
        eject(&c, fm).await;
        boot_cd(&c, fm, "Continuous").await;
        fm.machine
            .wait_for(
                "no boot device",
                Duration::from_secs(10),
                |s| matches!(&s.phase, Phase::NoBootDevice(w) if w.contains("no medium")),
            )
            .await
            .unwrap();
        // Neither does an image that is not ISO 9660.
        let garbage = format!("{images}/garbage.iso");
        assert_eq!(insert(&c, fm, &garbage).await, 204);
        boot_cd(&c, fm, "Continuous").await;
        let st = fm
            .machine
            .wait_for("no boot device", Duration::from_secs(10), |s| {
                matches!(&s.phase, Phase::NoBootDevice(w) if w.starts_with("cannot boot the virtual media: "))
            })
            .await
            .unwrap();
        assert!(matches!(&st.phase, Phase::NoBootDevice(w) if w.contains("not an ISO 9660 image")));
        assert_eq!(fake.boots.lock().unwrap().len(), 1);
        let images: Vec<_> = fm.machine.media_events().into_iter().map(|e| e.image).collect();
        assert_eq!(images, [Some(boot_url), None, Some(garbage)]);
        f.shutdown().await;
    }

    #[tokio::test]
    async fn test_fleet_without_virtual_media_offers_none() {
        let dir = tempfile::tempdir().unwrap();
        let netboot = NetbootConfig {
            ipxe_script_url: None,
            tftp_server: None,
            timeout: Duration::from_secs(1),
        };
        let mut cfg = FleetConfig::new(dir.path().to_path_buf(), 1, netboot);
        cfg.disk_bytes = 16 << 20;
        cfg.post_delay = Duration::from_millis(5);
        cfg.launcher = Arc::new(FakeRamdisk::default());
        cfg.virtual_media = false;
        let f = Fleet::start(cfg, CancellationToken::new()).await.unwrap();
        let fm = &f.machines()[0];
        let c = reqwest::Client::new();
        let sys = format!("/redfish/v1/Systems/{}", fm.machine.name());
        let v: Value =
            redfish(&c, fm, reqwest::Method::GET, &sys, None).await.json().await.unwrap();
        assert!(v.get("VirtualMedia").is_none(), "{v}");
        assert_eq!(insert(&c, fm, "http://127.0.0.1:1/x.iso").await, 404);
        boot_cd(&c, fm, "Once").await;
        fm.machine
            .wait_for(
                "no boot device",
                Duration::from_secs(10),
                |s| matches!(&s.phase, Phase::NoBootDevice(w) if w == "no Cd device"),
            )
            .await
            .unwrap();
        f.shutdown().await;
    }

    #[test]
    fn test_macs_are_unique_and_reproducible() {
        let mut all = std::collections::HashSet::new();
        for i in 0..500 {
            for m in fleet_macs(7, i, 2) {
                assert!(all.insert(m), "duplicate {m}");
            }
        }
        assert_eq!(fleet_macs(7, 3, 1), fleet_macs(7, 3, 1));
    }
}
