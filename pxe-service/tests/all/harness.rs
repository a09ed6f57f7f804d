//! Shared helpers: a TFTP server over a plain directory, random files, tool checks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::testing::{Need, require_service};
use pxe_service::tftp::source::{self, Content, ResolveError, Resolver};
use pxe_service::tftp::{self, TftpSettings};
use rand::RngCore;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Serves files under a directory, nothing else.
pub struct DirResolver(pub PathBuf);

impl Resolver for DirResolver {
    async fn resolve(&self, path: &str, _peer: SocketAddr) -> Result<Content, ResolveError> {
        source::open_under(&self.0, path).await
    }
}

pub struct TftpHarness {
    pub addr: SocketAddr,
    pub token: CancellationToken,
    pub root: tempfile::TempDir,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TftpHarness {
    pub async fn start(settings: TftpSettings) -> Self {
        let root = tempfile::tempdir().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let token = CancellationToken::new();
        let resolver = Arc::new(DirResolver(root.path().to_path_buf()));
        let task = tokio::spawn(tftp::serve(socket, settings, resolver, token.clone()));
        Self { addr, token, root, task }
    }

    pub fn write_random(&self, name: &str, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        rand::rng().fill_bytes(&mut data);
        std::fs::write(self.root.path().join(name), &data).unwrap();
        data
    }

    pub async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.unwrap().unwrap().unwrap();
    }
}

/// Whether an external tool (a peer: a TFTP client or server) is installed; if not, skip
/// loudly (or fail under FERRIC_REQUIRE_PEERS=1).
pub fn have_tool(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| is_exec(&d.join(name))))
        .unwrap_or(false);
    let why = "not installed (apt-get install -y tftp-hpa atftp tftpd-hpa ipxe)";
    require_service(Need::Peers, name, if found { Ok(()) } else { Err(why) }).is_some()
}

fn is_exec(p: &Path) -> bool {
    p.is_file()
}

/// Run a command with a deadline; returns (status ok, stdout+stderr).
pub async fn run_cmd(cmd: &mut tokio::process::Command, deadline: Duration) -> (bool, String) {
    cmd.kill_on_drop(true);
    let out =
        tokio::time::timeout(deadline, cmd.output()).await.expect("command timed out").unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Receive one datagram with a deadline.
pub async fn recv(sock: &UdpSocket, within: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 70000];
    match tokio::time::timeout(within, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

/// The (opcode, code-or-block) of a packet.
pub fn head(p: &[u8]) -> (u16, u16) {
    (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]))
}
