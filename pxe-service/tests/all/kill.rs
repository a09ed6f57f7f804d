//! The real pxe-service binary killed with SIGKILL in the middle of a download and started
//! again on the same ports: TFTP clients start the transfer over (our PXE-ROM-like client,
//! and tftp-hpa run again as a ROM would), the image fetcher resumes its HTTP body with
//! `Range`, every file arrives byte-identical, and the restarted service answers the same
//! files and per-node boot configs from the (SQLite) database.
//!
//! Each kill is triggered by the client's own progress, and the client holds still while the
//! service dies, so it always lands mid-transfer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy::ProvisionState;
use deploy::ids::MacAddress;
use image::fetch::{Chunk, FetchOptions as HttpOptions, Fetcher};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use sim::tftp::{self as client, FetchOptions, RetryPolicy};
use store::testing::TestDatabase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::harness::{have_tool, run_cmd};
use crate::render_db::{MAC, insert_node};

/// How long the service may take to answer after a start.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// Bound on a whole test phase (a transfer with its kill and restart).
const PHASE_WITHIN: Duration = Duration::from_secs(120);

/// A pxe-service process with its directories, config file and log, on fixed ports so that
/// a restart binds the same ones.
struct PxeProcess {
    dirs: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
    tftp: SocketAddr,
    http: SocketAddr,
    child: Mutex<Option<Child>>,
    starts: AtomicU64,
}

/// A port nobody listens on now (the kernel's pick for port 0), for a process to bind.
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

impl PxeProcess {
    async fn start(db_url: &str) -> Self {
        let dirs = tempfile::tempdir().unwrap();
        for d in ["tftp", "http", "data", "ipxe"] {
            std::fs::create_dir(dirs.path().join(d)).unwrap();
        }
        let tftp: SocketAddr = ([127, 0, 0, 1], free_port(true)).into();
        let http: SocketAddr = ([127, 0, 0, 1], free_port(false)).into();
        let dir = |d: &str| dirs.path().join(d).display().to_string();
        let config = dirs.path().join("pxe.toml");
        let text = format!(
            "[pxe]\ntftp_root = {:?}\nhttp_root = {:?}\ndata_dir = {:?}\nipxe_dir = {:?}\n\
             api_url = \"http://api.example:6385\"\nhttp_url = \"http://{http}\"\n\
             tftp_bind = \"{tftp}\"\nhttp_bind = \"{http}\"\n\n\
             [database]\nurl = {db_url:?}\n\n[telemetry]\nfilter = \"info\"\n",
            dir("tftp"),
            dir("http"),
            dir("data"),
            dir("ipxe"),
        );
        std::fs::write(&config, text).unwrap();
        let log = dirs.path().join("pxe-service.log");
        let p = Self {
            dirs,
            config,
            log,
            tftp,
            http,
            child: Mutex::new(None),
            starts: AtomicU64::new(0),
        };
        p.spawn();
        p.wait_ready().await;
        p
    }

    fn root(&self, which: &str) -> PathBuf {
        self.dirs.path().join(which)
    }

    fn spawn(&self) {
        let n = self.starts.fetch_add(1, Ordering::Relaxed);
        let mut log =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        writeln_sync(&mut log, &format!("==== start {n} ===="));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pxe-service"));
        cmd.arg("--config").arg(&self.config);
        // The test's own FERRIC_* variables (CI settings) must not reconfigure the service.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FERRIC_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        *self.child.lock().unwrap() = Some(child);
    }

    /// SIGKILL, at once: callable from inside a client's progress callback.
    fn kill(&self) {
        if let Some(c) = self.child.lock().unwrap().as_mut() {
            c.start_kill().unwrap();
        }
    }

    /// Wait for the killed process to be gone, then start it again on the same ports.
    async fn restart(&self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut c) = child {
            let status = tokio::time::timeout(READY_WITHIN, c.wait()).await.unwrap().unwrap();
            assert!(!status.success(), "pxe-service was meant to be killed: {status}");
        }
        self.spawn();
        self.wait_ready().await;
    }

    /// Poll `/healthz` until it answers 200; the TFTP socket is bound before it.
    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let ok = http
                .get(format!("http://{}/healthz", self.http))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            let exited = self.child.lock().unwrap().as_mut().and_then(|c| c.try_wait().unwrap());
            if let Some(status) = exited {
                panic!("pxe-service exited ({status}) before serving:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "pxe-service not ready:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn starts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }
}

fn writeln_sync(f: &mut std::fs::File, line: &str) {
    use std::io::Write as _;
    writeln!(f, "{line}").unwrap();
}

fn random(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    data
}

/// A database with one node in `deploying` whose NIC is [`MAC`], and the service over it.
async fn service_with_node() -> (TestDatabase, PxeProcess) {
    let db = TestDatabase::sqlite().await;
    insert_node(db.store(), MAC, ProvisionState::Deploying, |n| {
        n.driver_info = json!({"deploy_kernel": "ipa.kernel", "deploy_ramdisk": "ipa.initramfs"})
            .as_object()
            .unwrap()
            .clone();
    })
    .await;
    let svc = PxeProcess::start(db.url()).await;
    (db, svc)
}

/// A rendered config with its per-render request ID blanked, for comparing two renders.
fn without_request_id(text: &str) -> String {
    text.split(' ')
        .map(
            |w| if w.starts_with("ipa-global-request-id=") { "ipa-global-request-id=X" } else { w },
        )
        .collect::<Vec<_>>()
        .join(" ")
}

async fn tftp_config(svc: &PxeProcess) -> String {
    let mac: MacAddress = MAC.parse().unwrap();
    let name = format!("pxelinux.cfg/01-{}", mac.hyphenated());
    let bytes = client::fetch(svc.tftp, &name, &FetchOptions::default()).await.unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("ipa.kernel"), "{text}");
    without_request_id(&text)
}

async fn http_config(svc: &PxeProcess) -> String {
    let mac: MacAddress = MAC.parse().unwrap();
    let url = format!("http://{}/pxelinux.cfg/{}", svc.http, mac.hyphenated());
    let text = reqwest::get(url).await.unwrap().error_for_status().unwrap().text().await.unwrap();
    assert!(text.contains("ipa.kernel"), "{text}");
    without_request_id(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_tftp_transfer_started_over_after_sigkill_completes_identically() {
    const SIZE: usize = 4 << 20;
    const KILL_AT: usize = 1 << 20;
    let (_db, svc) = service_with_node().await;
    let data = random(SIZE);
    std::fs::write(svc.root("tftp").join("kernel.bin"), &data).unwrap();
    let config_before = tftp_config(&svc).await;

    // What a PXE ROM asks for: Ethernet-sized blocks and the size, lock-step. A transfer
    // waits at most 1 s for a dead server; the pauses between transfers cover a restart.
    let opts = FetchOptions {
        blksize: Some(1468),
        tsize: true,
        timeout: Duration::from_millis(250),
        retries: 3,
        ..FetchOptions::default()
    };
    let retry = RetryPolicy {
        attempts: 8,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
    };
    let killed = Notify::new();
    let mut fired = false;
    let mut got = Vec::new();
    let mut started_over = 0;
    let fetch = client::fetch_with_retry(svc.tftp, "kernel.bin", &opts, &retry, |offset, block| {
        if offset == 0 && !got.is_empty() {
            started_over += 1;
        }
        got.truncate(usize::try_from(offset).unwrap());
        got.extend_from_slice(block);
        // Killed before this block is acknowledged: the transfer cannot have finished.
        if !fired && got.len() >= KILL_AT {
            fired = true;
            svc.kill();
            killed.notify_one();
        }
    });
    let restart = async {
        killed.notified().await;
        svc.restart().await;
    };
    let (done, ()) = tokio::time::timeout(PHASE_WITHIN, async { tokio::join!(fetch, restart) })
        .await
        .expect("transfer, kill and restart within the deadline");
    let done = done.unwrap_or_else(|e| panic!("{e:#?}\n{}", svc.log_text()));
    assert!(fired, "the kill never happened");
    assert!(done.attempts >= 2 && started_over >= 1, "{done:?}, started over {started_over}");
    assert_eq!(done.fetched.bytes, SIZE as u64);
    assert_eq!(got.len(), SIZE);
    assert!(got == data, "content differs after the transfer started over");
    assert_eq!(svc.starts(), 2);

    // The restarted service renders the node's config as before and serves the same file.
    assert_eq!(tftp_config(&svc).await, config_before);
    let again = client::fetch(svc.tftp, "kernel.bin", &opts).await.unwrap();
    assert!(again == data, "restarted service serves different bytes");
}

/// tftp-hpa's `get` into a FIFO that the test reads: the client can only go as fast as the
/// test reads, so the test holds it still at a chosen byte while the service is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_tftp_hpa_run_again_after_sigkill_gets_the_file() {
    const SIZE: usize = 8 << 20;
    const KILL_AT: usize = 1 << 20;
    if !have_tool("tftp") || !have_tool("mkfifo") {
        return;
    }
    let (_db, svc) = service_with_node().await;
    let data = random(SIZE);
    std::fs::write(svc.root("tftp").join("ramdisk.bin"), &data).unwrap();
    let out = tempfile::tempdir().unwrap();
    let fifo = out.path().join("fifo");
    let (ok, log) = run_cmd(Command::new("mkfifo").arg(&fifo), Duration::from_secs(10)).await;
    assert!(ok, "mkfifo: {log}");

    // Commands on stdin rather than `-c`: a 1 s retransmission and 3 s before giving up, so
    // the client abandons the dead server quickly (it never hears ICMP errors).
    let mut first = Command::new("tftp")
        .arg(svc.tftp.ip().to_string())
        .arg(svc.tftp.port().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let script =
        format!("mode octet\nrexmt 1\ntimeout 3\nget ramdisk.bin {}\nquit\n", fifo.display());
    let mut stdin = first.stdin.take().unwrap();
    stdin.write_all(script.as_bytes()).await.unwrap();
    drop(stdin);
    let received = tokio::time::timeout(PHASE_WITHIN, async {
        let mut pipe = tokio::fs::File::open(&fifo).await.unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut received = Vec::new();
        while received.len() < KILL_AT {
            let n = pipe.read(&mut buf).await.unwrap();
            assert!(n > 0, "tftp stopped early:\n{}", svc.log_text());
            received.extend_from_slice(&buf[..n]);
        }
        // The client is blocked writing into the full pipe: the transfer is mid-way.
        svc.kill();
        svc.restart().await;
        // The client finds its server gone and gives up; the file is short.
        pipe.read_to_end(&mut received).await.unwrap();
        received
    })
    .await
    .expect("first transfer, kill and restart within the deadline");
    let first =
        tokio::time::timeout(PHASE_WITHIN, first.wait_with_output()).await.unwrap().unwrap();
    let said = String::from_utf8_lossy(&first.stdout).into_owned()
        + &String::from_utf8_lossy(&first.stderr);
    assert!(received.len() < SIZE, "the kill missed the transfer: {said}");
    assert!(received[..] == data[..received.len()], "the bytes before the kill differ");

    // As a ROM does: run the whole transfer again, a bounded number of times with a pause
    // that grows, until the file is complete.
    let local = out.path().join("ramdisk.bin");
    let mut pause = Duration::from_millis(100);
    let mut logs = Vec::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (ok, log) = run_cmd(&mut tftp_hpa(&svc, &local), PHASE_WITHIN).await;
        let got = std::fs::read(&local).unwrap_or_default();
        if ok && got == data {
            break;
        }
        logs.push(log);
        assert!(attempts < 5, "tftp-hpa never got the file: {logs:#?}\n{}", svc.log_text());
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
    assert_eq!(svc.starts(), 2);
}

/// `tftp 127.0.0.1 <port>` fetching `ramdisk.bin` in octet mode into `local`, retransmitting
/// every second and giving up after 5 s of silence.
fn tftp_hpa(svc: &PxeProcess, local: &Path) -> Command {
    let mut cmd = Command::new("tftp");
    cmd.arg(svc.tftp.ip().to_string()).arg(svc.tftp.port().to_string());
    cmd.args(["-m", "octet", "-c", "get", "ramdisk.bin"]).arg(local);
    cmd.stdin(Stdio::null());
    cmd
}

/// A TCP relay to the service that counts the bytes going each way and keeps what clients
/// sent (their request heads), so the test sees on the wire whether a download resumed.
struct Relay {
    addr: SocketAddr,
    down: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<u8>>>,
    _tasks: JoinSet<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        // Small buffers: little data waits inside the relay, so the client's own reading
        // paces the service's writing.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 << 10).unwrap();
        socket.set_send_buffer_size(64 << 10).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener: TcpListener = socket.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        let (d, r) = (down.clone(), requests.clone());
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                conns.spawn(relay_one(client, upstream, d.clone(), r.clone()));
            }
        });
        Self { addr, down, requests, _tasks: tasks }
    }

    fn requests(&self) -> String {
        String::from_utf8_lossy(&self.requests.lock().unwrap()).to_ascii_lowercase()
    }
}

async fn relay_one(
    client: TcpStream,
    upstream: SocketAddr,
    down: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<u8>>>,
) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let Ok(server) = socket.connect(upstream).await else { return };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n @ 1..) = cr.read(&mut buf).await {
            requests.lock().unwrap().extend_from_slice(&buf[..n]);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let back = async move {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n @ 1..) = sr.read(&mut buf).await {
            down.fetch_add(n as u64, Ordering::Relaxed);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        // The service died or finished: the client sees the connection end.
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_image_fetch_resumes_with_range_after_sigkill() {
    const SIZE: usize = 16 << 20;
    const KILL_AT: usize = 2 << 20;
    let (_db, svc) = service_with_node().await;
    let data = random(SIZE);
    std::fs::write(svc.root("http").join("image.raw"), &data).unwrap();
    let want = hex::encode(Sha256::digest(&data));
    let config_before = http_config(&svc).await;
    let relay = Relay::start(svc.http).await;

    // The agent's fetcher with short pauses: the restart happens within its attempts.
    let fetcher = Fetcher::new(HttpOptions {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(30),
        max_attempts: 100,
        retry_delay: Duration::from_millis(100),
        chunk_size: 256 << 10,
    })
    .unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(1);
    let url = format!("http://{}/image.raw", relay.addr);
    let stream = tokio::spawn({
        let (fetcher, counter) = (fetcher.clone(), counter.clone());
        async move { fetcher.stream(&url, tx, counter, Default::default()).await }
    });
    let (hash, len, fired) = tokio::time::timeout(PHASE_WITHIN, async {
        let mut hash = Sha256::new();
        let (mut len, mut fired) = (0usize, false);
        while let Some(chunk) = rx.recv().await {
            for part in chunk.parts() {
                hash.update(part);
            }
            len += chunk.len();
            if !fired && len >= KILL_AT {
                // Not reading meanwhile: the fetcher, the relay and the service all wait,
                // so the service dies with most of the body unsent.
                fired = true;
                svc.kill();
                svc.restart().await;
            }
        }
        (hex::encode(hash.finalize()), len, fired)
    })
    .await
    .expect("download, kill and restart within the deadline");
    let summary = stream.await.unwrap().unwrap_or_else(|e| panic!("{e:#?}\n{}", svc.log_text()));
    assert!(fired, "the kill never happened");
    assert_eq!((len, summary.bytes), (SIZE, SIZE as u64));
    assert_eq!(counter.load(Ordering::Relaxed), SIZE as u64);
    assert_eq!(hash, want, "streamed checksum differs");
    assert!(summary.resumes >= 1, "{summary:?}");
    let requests = relay.requests();
    assert!(
        requests.lines().any(|l| l.starts_with("range: bytes=") && !l.contains("bytes=0-")),
        "no Range request on the wire:\n{requests}"
    );
    let down = relay.down.load(Ordering::Relaxed);
    assert!(down < 2 * SIZE as u64, "{down} bytes sent for a {SIZE}-byte image: not resumed");
    assert_eq!(svc.starts(), 2);

    // The restarted service renders the node's config as before and honours Range.
    assert_eq!(http_config(&svc).await, config_before);
    let part = reqwest::Client::new()
        .get(format!("http://{}/image.raw", svc.http))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), reqwest::StatusCode::PARTIAL_CONTENT);
    assert!(part.bytes().await.unwrap()[..] == data[100..200]);
}
