//! Debian's tgtd (Linux's userspace iSCSI target) on a private control port and portal, for
//! the peer tests and the throughput bench (which includes this file by path).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use iscsi::ChapCredentials;
use tokio::process::Command;

pub fn find_binary(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} not found on PATH (apt-get install libiscsi-bin tgt)"))
}

/// Runs a peer tool to completion (bounded), returning exit success and stdout+stderr.
pub async fn run(bin: &Path, args: &[&str]) -> (bool, String) {
    let ran = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(bin).args(args).stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await;
    match ran {
        Ok(Ok(out)) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        }
        Ok(Err(e)) => (false, format!("{} could not run: {e}", bin.display())),
        Err(_) => (false, format!("{} {args:?} did not finish within 60 s", bin.display())),
    }
}

/// tgtd on a private control port and portal; killed on drop.
pub struct Tgtd {
    child: tokio::process::Child,
    control: String,
    tgtadm: PathBuf,
}

impl Tgtd {
    async fn adm(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-C", self.control.as_str(), "--lld", "iscsi"];
        all.extend_from_slice(args);
        let (ok, out) = run(&self.tgtadm, &all).await;
        if ok { Ok(out) } else { Err(format!("tgtadm {args:?}: {out}")) }
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Start tgtd serving `backing` as LUN 1 of target `iqn` on a free loopback port, with
/// `chap` required at login when given.
pub async fn start_tgtd(
    backing: &Path,
    log: &Path,
    iqn: &str,
    chap: Option<&ChapCredentials>,
) -> Result<(Tgtd, std::net::SocketAddr), String> {
    let tgtd = find_binary("tgtd")?;
    let tgtadm = find_binary("tgtadm")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    // The control port names tgtd's management socket (/var/run/tgtd/socket.N, N at most
    // 32767); derive it from the free TCP port so that it differs from a system tgtd's 0.
    let control = (1 + u32::from(port) % 32_000).to_string();
    std::fs::create_dir_all("/var/run/tgtd").map_err(|e| format!("/var/run/tgtd: {e}"))?;
    let child = Command::new(tgtd)
        .args(["-f", "-C", &control, "--iscsi", &format!("portal=127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).map_err(|e| format!("tgtd log: {e}"))?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawning tgtd: {e}"))?;
    let mut t = Tgtd { child, control, tgtadm };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if t.adm(&["--mode", "sys", "--op", "show"]).await.is_ok() {
            break;
        }
        if let Ok(Some(status)) = t.child.try_wait() {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("tgtd exited with {status}: {said}"));
        }
        if Instant::now() > deadline {
            return Err("tgtd's control socket did not come up within 15 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = backing.to_string_lossy().into_owned();
    t.adm(&["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn]).await?;
    t.adm(&["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", &b]).await?;
    t.adm(&["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]).await?;
    if let Some(c) = chap {
        t.adm(&["--op", "new", "--mode", "account", "--user", &c.user, "--password", &c.secret])
            .await?;
        t.adm(&["--op", "bind", "--mode", "account", "--tid", "1", "--user", &c.user]).await?;
    }
    Ok((t, std::net::SocketAddr::from(([127, 0, 0, 1], port))))
}
