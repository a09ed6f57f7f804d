//! The REST server loop: hyper with the timeouts axum's `serve` does not set.
//!
//! axum's `serve` gives hyper no timer, so hyper's header read timeout is off and a client
//! that sends one header byte a minute holds a connection forever (slow-loris). Here every
//! connection gets a header read timeout (also between keep-alive requests), a body that
//! must keep arriving ([`tower_http::timeout::RequestBodyTimeoutLayer`] in the router), and
//! the peer address as [`axum::extract::ConnectInfo`] for the per-address rate limit.
//!
//! With TLS, the handshake runs in the connection's own task under the header read
//! timeout, so a client that never finishes it holds only its own connection.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Connection timeouts of the REST listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// How long a client may take to send a request's headers (and how long an idle
    /// keep-alive connection stays open waiting for the next request).
    pub header_read: Duration,
}

/// Serve `app` on `listener` (over TLS when `tls` is given) until `token` is cancelled,
/// then let open connections finish their requests (the caller bounds that with its drain
/// timeout).
///
/// # Errors
/// Never for one connection's failure (logged at debug); only if accepting fails hard.
pub async fn serve_rest(
    listener: TcpListener,
    app: Router,
    timeouts: HttpTimeouts,
    tls: Option<TlsAcceptor>,
    token: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(timeouts.header_read))
        .keep_alive_timeout(timeouts.header_read);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!(error = %e, "accepting a REST connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let svc = app.clone().map_request(move |req: http::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            req
        });
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let tls = tls.clone();
        let handshake_timeout = timeouts.header_read;
        tokio::spawn(async move {
            let svc = TowerToHyperService::new(svc);
            let served = match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "REST connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
