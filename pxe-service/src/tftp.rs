//! A read-only TFTP server on tokio: RFC 1350 with option negotiation (RFC 2347), blksize
//! (RFC 2348), timeout and tsize (RFC 2349) and windowsize (RFC 7440).
//!
//! The listening socket only accepts requests; every transfer gets its own socket (a new
//! transfer ID, as RFC 1350 requires) connected to the client, so the kernel filters stray
//! packets. A semaphore bounds concurrent transfers and a bound on waiting requests keeps a flood
//! from growing memory: past both, a request is answered with the error "server busy, try
//! again" at once (clients retry). Retransmitted requests from a client whose transfer is
//! already waiting or running are ignored instead of starting a second transfer.

pub mod options;
pub mod packet;
pub mod source;
pub mod transfer;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use self::options::Limits;
use self::packet::{ErrorCode, Packet, Request};
use self::source::{BlockReader, Resolver};
use self::transfer::Transfer;

/// Payload bytes in one window at most (see [`options::Limits::max_window_bytes`]).
const WINDOW_BYTES: usize = 64 * 1024;

/// Settings of the TFTP server.
#[derive(Debug, Clone)]
pub struct TftpSettings {
    /// Most transfers running at once; more requests wait for a slot.
    pub max_transfers: usize,
    /// Most requests waiting for a slot; past that a request is refused "server busy".
    pub max_waiting: usize,
    /// Retransmission timeout unless the client negotiates one.
    pub timeout: Duration,
    /// Retransmissions before a transfer is abandoned.
    pub retries: u32,
    /// Largest block size granted.
    pub max_blksize: usize,
    /// Largest window granted.
    pub max_windowsize: u16,
    /// Treat a leading `/` as the root (tftpd-hpa `-s`); otherwise absolute names are refused.
    pub absolute_paths: bool,
}

impl Default for TftpSettings {
    fn default() -> Self {
        Self {
            max_transfers: 256,
            max_waiting: 768,
            timeout: Duration::from_secs(1),
            retries: 5,
            max_blksize: options::MAX_BLKSIZE,
            max_windowsize: 64,
            absolute_paths: false,
        }
    }
}

/// Removes a client from the set of active transfers when its task ends.
struct ActiveGuard {
    set: Arc<Mutex<HashSet<SocketAddr>>>,
    peer: SocketAddr,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.peer);
        }
    }
}

/// Serve read requests on `socket` until `token` is cancelled, then wait for running transfers
/// to stop (they are cancelled too).
///
/// # Errors
/// Only if the listening socket fails persistently; per-transfer errors are logged.
pub async fn serve<R: Resolver>(
    socket: UdpSocket,
    settings: TftpSettings,
    resolver: Arc<R>,
    token: CancellationToken,
) -> std::io::Result<()> {
    let socket = Arc::new(socket);
    let local = socket.local_addr()?;
    let slots = Arc::new(Semaphore::new(settings.max_transfers.max(1)));
    let active: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let tracker = TaskTracker::new();
    // Requests waiting for a slot are bounded too, so a flood cannot grow memory without limit.
    let max_queued = settings.max_transfers.max(1).saturating_add(settings.max_waiting);
    let mut buf = vec![0u8; 65536];
    info!(addr = %local, "tftp server listening");
    let mut consecutive_errors = 0u32;
    loop {
        let (n, peer) = tokio::select! {
            biased;
            () = token.cancelled() => break,
            // Cancel-safe: no datagram is lost when the other branch wins.
            r = socket.recv_from(&mut buf) => match r {
                Ok(v) => { consecutive_errors = 0; v }
                Err(error) => {
                    consecutive_errors += 1;
                    warn!(%error, "tftp receive failed");
                    if consecutive_errors > 100 {
                        return Err(error);
                    }
                    continue;
                }
            },
        };
        let reply = match packet::parse(&buf[..n]) {
            Ok(Packet::Read(req)) => {
                let queued = {
                    let mut set = active.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if set.contains(&peer) {
                        debug!(%peer, "retransmitted request ignored; transfer already running");
                        continue;
                    }
                    if set.len() >= max_queued {
                        None
                    } else {
                        set.insert(peer);
                        Some(ActiveGuard { set: active.clone(), peer })
                    }
                };
                let Some(guard) = queued else {
                    warn!(%peer, "tftp server busy; request refused");
                    let busy = packet::encode_error(ErrorCode::Undefined, "server busy, try again");
                    send_reply(&socket, busy, peer);
                    continue;
                };
                let ctx = TransferCtx {
                    local_ip: local.ip(),
                    settings: settings.clone(),
                    resolver: resolver.clone(),
                    slots: slots.clone(),
                    token: token.child_token(),
                };
                let span = tracing::info_span!("tftp_transfer", %peer, file = %req.filename);
                tracker.spawn(
                    async move {
                        let _guard = guard;
                        ctx.handle(req, peer).await;
                    }
                    .instrument(span),
                );
                None
            }
            Ok(Packet::Write(req)) => {
                info!(%peer, file = %req.filename, "write request refused");
                Some(packet::encode_error(ErrorCode::AccessViolation, "this server is read-only"))
            }
            // Never answer an error with an error (it could loop between two servers).
            Ok(Packet::Error { .. }) => None,
            Ok(Packet::Data { .. } | Packet::Ack(_) | Packet::OptionAck(_)) => {
                Some(packet::encode_error(ErrorCode::UnknownTransferId, "no transfer on this port"))
            }
            Err(packet::PacketError::BadMode(mode)) => {
                debug!(%peer, %mode, "unsupported mode");
                Some(packet::encode_error(ErrorCode::IllegalOperation, "unsupported transfer mode"))
            }
            Err(error) => {
                debug!(%peer, %error, "malformed packet");
                Some(packet::encode_error(ErrorCode::IllegalOperation, &error.to_string()))
            }
        };
        if let Some(reply) = reply {
            send_reply(&socket, reply, peer);
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Best-effort reply from the listening socket; never blocks the accept loop.
fn send_reply(socket: &UdpSocket, reply: Vec<u8>, peer: SocketAddr) {
    if let Err(error) = socket.try_send_to(&reply, peer) {
        debug!(%peer, %error, "could not send tftp reply");
    }
}

struct TransferCtx<R> {
    local_ip: IpAddr,
    settings: TftpSettings,
    resolver: Arc<R>,
    slots: Arc<Semaphore>,
    token: CancellationToken,
}

impl<R: Resolver> TransferCtx<R> {
    async fn handle(self, req: Request, peer: SocketAddr) {
        let file = req.filename.clone();
        tokio::select! {
            biased;
            () = self.token.cancelled() => debug!(%peer, %file, "transfer cancelled by shutdown"),
            () = self.transfer(req, peer) => {}
        }
    }

    async fn transfer(&self, req: Request, peer: SocketAddr) {
        // Counted until it ends; dropped by a shutdown, it counts as cancelled.
        let rec = crate::metrics::TftpTransfer::start();
        let wait = self.settings.timeout * (self.settings.retries + 1);
        let _permit = match tokio::time::timeout(wait, self.slots.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) | Err(_) => {
                rec.fail("busy");
                warn!(%peer, file = %req.filename, "no transfer slot became free");
                self.fail(peer, ErrorCode::Undefined, "server busy, try again").await;
                return;
            }
        };
        let limits = Limits {
            max_blksize: self.settings.max_blksize,
            max_windowsize: self.settings.max_windowsize,
            default_timeout: self.settings.timeout,
            max_window_bytes: WINDOW_BYTES,
        };
        let negotiated = match options::negotiate(&req.options, limits) {
            Ok(n) => n,
            Err(error) => {
                rec.fail("negotiation");
                info!(%peer, file = %req.filename, %error, "option negotiation refused");
                self.fail(peer, ErrorCode::OptionNegotiation, &error.to_string()).await;
                return;
            }
        };
        let name = if self.settings.absolute_paths {
            req.filename.trim_start_matches(['/', '\\'])
        } else {
            req.filename.as_str()
        };
        let content = match source::sanitize(name) {
            Ok(path) => self.resolver.resolve(&path, peer).await,
            Err(e) => Err(e),
        };
        let content = match content {
            Ok(c) => c,
            Err(error) => {
                rec.fail("refused");
                info!(%peer, file = %req.filename, %error, "tftp request refused");
                self.fail(peer, error.code(), &error.to_string()).await;
                return;
            }
        };
        let reader = BlockReader::new(content, req.mode);
        // An OACK with nothing in it would confuse clients: then answer with DATA 1 directly.
        let oack_options = negotiated.oack_options(reader.transfer_size());
        let oack = (!oack_options.is_empty()).then(|| packet::encode_oack(&oack_options));
        let socket = match self.transfer_socket(peer).await {
            Ok(s) => s,
            Err(error) => {
                rec.fail("io");
                warn!(%peer, %error, "cannot open a transfer socket");
                return;
            }
        };
        let (blksize, windowsize) = (negotiated.blksize, negotiated.windowsize);
        let started = tokio::time::Instant::now();
        let transfer = Transfer { socket, peer, negotiated, oack, retries: self.settings.retries };
        match transfer.run(reader, self.token.clone()).await {
            Ok(sent) => {
                rec.complete(&sent);
                info!(
                    %peer, file = %req.filename, bytes = sent.bytes, retransmits = sent.retransmits,
                    blksize, windowsize, elapsed_ms = started.elapsed().as_millis() as u64,
                    "tftp transfer complete"
                );
            }
            Err(error) => {
                rec.broke(&error);
                warn!(%peer, file = %req.filename, %error, "tftp transfer failed");
            }
        }
    }

    async fn transfer_socket(&self, peer: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
        // Reply from the address the request came in on when it is known; a wildcard listener
        // lets the kernel pick the source address by route.
        let ip = match (self.local_ip, peer.ip()) {
            (ip, _) if !ip.is_unspecified() => ip,
            (_, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (_, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        // Binding and connecting a UDP socket never waits on the network.
        let socket = std::net::UdpSocket::bind((ip, 0))?;
        socket.connect(peer)?;
        Ok(socket)
    }

    async fn fail(&self, peer: SocketAddr, code: ErrorCode, message: &str) {
        // Errors come from a fresh transfer ID too, as RFC 1350 expects.
        if let Ok(socket) = self.transfer_socket(peer).await {
            // Best effort, and a UDP send to a connected peer does not block.
            let _ = socket.send(&packet::encode_error(code, message));
        }
    }
}
