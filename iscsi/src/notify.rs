//! The end-of-write notification: after the conductor has written the image and logged
//! out, it tells the ramdisk to stop exporting its disk, as the original deploy ramdisk
//! waited on TCP port 10000 for the conductor's "done". A failed deploy sends `stop` with
//! the same effect, so a target is never left exporting a half-written disk.
//!
//! The wire form is one line each way: the conductor sends `done` or `stop`, the ramdisk
//! answers `ok` once it has stopped its target.
//!
//! Before that, the conductor may [`ask`] the ramdisk to do something on its own disk while
//! it still exports it (a partition image's bootloader install): `ask <body>` where the body
//! is one line (JSON in practice, opaque here), answered by one line once the work is done.
//! The export stays up, so the conductor can still log in and wipe the disk if the answer
//! is a failure; `done` or `stop` follows as always.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the conductor tells the ramdisk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The image was written: stop exporting, the node reboots into it.
    Done,
    /// The deploy failed: stop exporting.
    Stop,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Stop => "stop",
        }
    }
}

/// Notification failures.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The ramdisk could not be reached or the exchange broke.
    #[error("telling the ramdisk at {addr} to stop exporting failed")]
    Io {
        /// The ramdisk's notification address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No answer within the timeout.
    #[error("the ramdisk at {addr} did not answer within {after:?}")]
    Timeout {
        /// The ramdisk's notification address.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
}

/// Conductor side: send `outcome` to the ramdisk listening at `addr` and wait for its `ok`.
///
/// # Errors
/// [`NotifyError`] when the ramdisk cannot be reached or does not answer in `timeout`.
pub async fn notify(
    addr: SocketAddr,
    outcome: Outcome,
    timeout: Duration,
) -> Result<(), NotifyError> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("{}\n", outcome.word()).as_bytes()).await?;
        s.flush().await?;
        let mut line = String::new();
        BufReader::new(&mut s).read_line(&mut line).await?;
        if line.trim() == "ok" {
            Ok(())
        } else {
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected answer"))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r.map_err(|source| NotifyError::Io { addr, source }),
        Err(_) => Err(NotifyError::Timeout { addr, after: timeout }),
    }
}

/// The longest request or answer line.
const MAX_LINE: u64 = 64 << 10;

/// Conductor side: send `body` (one line) to the ramdisk at `addr` and wait up to `timeout`
/// for its one-line answer; the ramdisk keeps exporting.
///
/// # Errors
/// [`NotifyError`] when the ramdisk cannot be reached, closes without an answer, or does
/// not answer in `timeout`; a body with a line break is refused as invalid input.
pub async fn ask(addr: SocketAddr, body: &str, timeout: Duration) -> Result<String, NotifyError> {
    if body.contains(['\n', '\r']) {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "multi-line request");
        return Err(NotifyError::Io { addr, source });
    }
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("ask {body}\n").as_bytes()).await?;
        s.flush().await?;
        let mut line = String::new();
        BufReader::new(&mut s).take(MAX_LINE).read_line(&mut line).await?;
        if line.ends_with('\n') {
            Ok(line.trim_end().to_owned())
        } else {
            Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no answer"))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r.map_err(|source| NotifyError::Io { addr, source }),
        Err(_) => Err(NotifyError::Timeout { addr, after: timeout }),
    }
}

/// Ramdisk side: accept connections on `listener` until one says `done` or `stop`; call
/// `stop_export` (which stops the target) before answering `ok`, so the conductor knows
/// the disk is no longer exported when it reboots the node.
///
/// # Errors
/// When the listener fails.
pub async fn wait<F, Fut>(listener: &TcpListener, stop_export: F) -> std::io::Result<Outcome>
where
    F: FnOnce(Outcome) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    serve(listener, |_| async { "unsupported".to_owned() }, stop_export).await
}

/// [`wait`], answering every [`ask`] on the way with `on_ask(body)` (one line).
///
/// # Errors
/// When the listener fails.
pub async fn serve<A, AFut, F, Fut>(
    listener: &TcpListener,
    mut on_ask: A,
    stop_export: F,
) -> std::io::Result<Outcome>
where
    A: FnMut(String) -> AFut,
    AFut: std::future::Future<Output = String>,
    F: FnOnce(Outcome) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let (mut s, _) = listener.accept().await?;
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(30), async {
            BufReader::new(&mut s).take(MAX_LINE).read_line(&mut line).await
        })
        .await;
        let outcome = match (read, line.trim()) {
            (Ok(Ok(_)), "done") => Outcome::Done,
            (Ok(Ok(_)), "stop") => Outcome::Stop,
            (Ok(Ok(_)), l) if l.starts_with("ask ") => {
                let answer = on_ask(l["ask ".len()..].to_owned()).await;
                let answer = answer.replace(['\n', '\r'], " ");
                // A conductor that gave up does not read the answer; the next one asks again.
                let _ = s.write_all(format!("{answer}\n").as_bytes()).await;
                let _ = s.flush().await;
                continue;
            }
            // Anything else (a port scan, a half-open probe) is not the conductor.
            _ => continue,
        };
        stop_export(outcome).await;
        // The answer is a courtesy: the export has stopped whether or not it arrives.
        let _ = s.write_all(b"ok\n").await;
        let _ = s.flush().await;
        return Ok(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn test_done_reaches_the_ramdisk_after_it_stopped() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stopped.clone();
        let ramdisk = tokio::spawn(async move {
            wait(&l, |o| async move {
                assert_eq!(o, Outcome::Done);
                s2.store(true, std::sync::atomic::Ordering::SeqCst);
            })
            .await
        });
        // A stray connection first: ignored.
        drop(TcpStream::connect(addr).await.unwrap());
        notify(addr, Outcome::Done, Duration::from_secs(5)).await.unwrap();
        assert!(stopped.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(ramdisk.await.unwrap().unwrap(), Outcome::Done);
        assert!(notify(addr, Outcome::Stop, Duration::from_secs(1)).await.is_err());
    }

    #[tokio::test]
    async fn test_asks_are_answered_and_the_export_goes_on() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let ramdisk = tokio::spawn(async move {
            serve(&l, |body| async move { format!("did {body}") }, |_| async {}).await
        });
        let t = Duration::from_secs(5);
        assert_eq!(ask(addr, r#"{"x":1}"#, t).await.unwrap(), r#"did {"x":1}"#);
        assert_eq!(ask(addr, "again", t).await.unwrap(), "did again");
        assert!(ask(addr, "two\nlines", t).await.is_err());
        notify(addr, Outcome::Stop, t).await.unwrap();
        assert_eq!(ramdisk.await.unwrap().unwrap(), Outcome::Stop);
    }
}
