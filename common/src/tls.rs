//! TLS plumbing shared by the listeners and the conductor's agent client (rustls with the
//! aws-lc-rs provider, chosen explicitly so that no process-wide default is needed):
//!
//! - [`ReloadingCert`]: a server certificate read from PEM files and read again when the
//!   files change, so a renewed certificate is served to new connections without a restart
//!   (a broken replacement keeps the old certificate and logs an error);
//! - [`tls_incoming`]: a stream of accepted TLS connections for tonic, with handshakes
//!   run concurrently and bounded by a timeout, so one slow client stalls nobody;
//! - [`SelfSigned`]: the agent's auto-TLS certificate (IPA's `enable_auto_tls`);
//! - [`PinnedCertVerifier`]: a client-side verifier that trusts exactly one certificate
//!   (the one the agent sent in its heartbeat), whatever name or address it carries.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// ALPN for gRPC listeners (HTTP/2 only).
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// ALPN for REST listeners (HTTP/2 preferred, HTTP/1.1 for everyone else).
pub const ALPN_H2_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A TLS setup failed.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A PEM certificate is malformed.
    #[error("{} holds a malformed PEM certificate", path.display())]
    BadCertificate {
        /// The file (or `heartbeat` for a pinned certificate).
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The key file holds no usable private key.
    #[error("{} holds no usable PEM private key", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The key does not fit the certificate or uses an unsupported algorithm.
    #[error("the key in {} does not fit the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the configuration.
    #[error("cannot build the TLS configuration")]
    Config(#[source] rustls::Error),
    /// A self-signed certificate cannot be made.
    #[error("cannot generate a self-signed certificate for {host}")]
    Generate {
        /// The name or address it was for.
        host: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
}

/// The crypto provider every Ferric TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Read a certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1 or
/// SEC1) into a key rustls can serve.
///
/// # Errors
/// [`TlsError`] naming the file that is missing, empty, malformed or mismatched.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
    };
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadCertificate { path: cert.to_owned(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_owned() });
    }
    let key_pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|source| TlsError::BadKey { path: key.to_owned(), source })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| TlsError::KeyMismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// What identifies one version of a file pair: modification times and lengths.
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(paths: [&Path; 2]) -> Stamp {
    paths.map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
}

/// A server certificate from PEM files, reloaded when they change ([`ReloadingCert::watch`]).
/// New connections get the current certificate; open ones keep theirs.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Stamp)>,
}

impl ReloadingCert {
    /// Load the certificate and key once.
    ///
    /// # Errors
    /// [`TlsError`] when the files cannot be used.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp([cert, key]);
        let ck = load_certified_key(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new((Arc::new(ck), stamp)),
        }))
    }

    /// Load the files again if their modification time or length changed. `Ok(true)` when
    /// a new certificate is now served.
    ///
    /// # Errors
    /// [`TlsError`] when the changed files cannot be used; the old certificate stays, and
    /// the same files are tried again on the next call.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp([&self.cert, &self.key]);
        let seen = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).1;
        if now == seen {
            return Ok(false);
        }
        let ck = load_certified_key(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            (Arc::new(ck), now);
        Ok(true)
    }

    /// Poll the files every `interval` until `token` is cancelled. A half-written
    /// replacement fails to load, is logged, and is loaded once it is complete.
    pub async fn watch(self: Arc<Self>, interval: Duration, token: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    failing = false;
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                }
                Ok(false) => {}
                // Logged once per broken version, not on every poll.
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(
                        error = %crate::ErrorChain(&e),
                        "the changed TLS certificate cannot be used; still serving the old one"
                    );
                }
                Err(_) => {}
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).0.clone())
    }
}

/// A server configuration serving what `certs` resolves, offering `alpn`.
///
/// # Errors
/// [`TlsError::Config`] when the provider offers no usable protocol version.
pub fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Accepted connections on `listener` after their TLS handshake, until `token` is
/// cancelled. Handshakes run concurrently, each bounded by `handshake_timeout`; a failed
/// handshake is logged at debug and skipped (it is the client's problem, not the server's).
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    token: CancellationToken,
) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
    let pending = FuturesUnordered::new();
    futures::stream::unfold(
        (listener, acceptor, pending, token),
        move |(listener, acceptor, mut pending, token)| async move {
            loop {
                tokio::select! {
                    // Shutdown first: stop accepting promptly.
                    biased;
                    () = token.cancelled() => return None,
                    Some((peer, done)) = pending.next(), if !pending.is_empty() => match done {
                        Ok(Ok(stream)) => {
                            return Some((Ok(stream), (listener, acceptor, pending, token)));
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    },
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, peer)) => {
                            let _ = tcp.set_nodelay(true);
                            let hs = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
                            pending.push(async move { (peer, hs.await) });
                        }
                        Err(e) => {
                            // EMFILE and friends: back off a little instead of spinning.
                            tracing::warn!(error = %e, "accepting a TLS connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                }
            }
        },
    )
}

/// A self-signed certificate and its key, made at start (the agent's auto-TLS).
#[derive(Clone)]
pub struct SelfSigned {
    /// The certificate, PEM (what the agent sends as `agent_verify_ca`).
    pub cert_pem: String,
    /// The certificate and key, ready to serve.
    pub key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is a secret: never printed.
        f.debug_struct("SelfSigned").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl SelfSigned {
    /// A new key pair and a certificate for `host` (an IP address or a DNS name).
    ///
    /// # Errors
    /// [`TlsError::Generate`] when the name is unusable or key generation fails.
    pub fn generate(host: &str) -> Result<Self, TlsError> {
        let gen_err = |source| TlsError::Generate { host: host.to_owned(), source };
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec![host.to_owned()]).map_err(gen_err)?;
        let private = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
        let key = CertifiedKey::from_der(vec![cert.der().clone()], private, &provider())
            .map_err(TlsError::Config)?;
        Ok(Self { cert_pem: cert.pem(), key: Arc::new(key) })
    }

    /// A server configuration serving this certificate, offering `alpn`.
    ///
    /// # Errors
    /// [`TlsError::Config`] as [`server_config`].
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(Arc::new(Fixed(self.key.clone())), alpn)
    }
}

/// One certificate, always.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The server presented a certificate other than the pinned one.
#[derive(Debug, Error)]
#[error("the peer presented a TLS certificate that is not the pinned one")]
pub struct PinMismatch;

/// Trusts exactly one certificate: the handshake succeeds only when the server's
/// end-entity certificate is byte-for-byte the pinned one (and it proves possession of the
/// key). Names, addresses, expiry and issuers are not consulted: the pin is the trust.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pinned: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCertVerifier {
    /// Pin the first certificate of `pem`.
    ///
    /// # Errors
    /// [`TlsError::BadCertificate`] or [`TlsError::NoCertificate`] when `pem` holds none.
    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        let path = PathBuf::from("the pinned certificate");
        let pinned = match CertificateDer::pem_slice_iter(pem.as_bytes()).next() {
            Some(Ok(c)) => c,
            Some(Err(source)) => return Err(TlsError::BadCertificate { path, source }),
            None => return Err(TlsError::NoCertificate { path }),
        };
        Ok(Self { pinned, provider: provider() })
    }

    /// A client configuration that trusts only the pinned certificate, offering `alpn`.
    ///
    /// # Errors
    /// [`TlsError::Config`] when the provider offers no usable protocol version.
    pub fn client_config(self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
        let mut cfg = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self))
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls error in `error`'s source chain, if any. `io::Error::source` skips the error
/// it wraps (tokio-rustls and hyper wrap rustls' errors in one), so this looks inside.
pub fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(error);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(r) = rustls_error(inner)
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// Whether `error`'s source chain holds a [`PinMismatch`] (the handshake failed because the
/// server's certificate is not the pinned one).
pub fn is_pin_mismatch(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(error);
    while let Some(e) = cur {
        if e.is::<PinMismatch>() {
            return true;
        }
        cur = e.source();
    }
    matches!(
        rustls_error(error),
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)))
            if o.0.is::<PinMismatch>()
    )
}

/// Whether `error` is (or wraps) a refused server certificate: unknown issuer, expired,
/// wrong name, not the pinned one.
pub fn is_untrusted_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(rustls_error(error), Some(rustls::Error::InvalidCertificate(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_load_reports_missing_and_mismatched_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_certified_key(&dir.path().join("nope.pem"), &dir.path().join("k.pem"))
            .unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");

        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, a.cert.pem()).unwrap();
        std::fs::write(&key, b.signing_key.serialize_pem()).unwrap();
        let err = load_certified_key(&cert, &key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");

        std::fs::write(&key, a.signing_key.serialize_pem()).unwrap();
        load_certified_key(&cert, &key).unwrap();
        std::fs::write(&cert, "not a certificate").unwrap();
        let err = load_certified_key(&cert, &key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    }

    #[test]
    fn test_reload_keeps_the_old_certificate_when_the_new_one_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        std::fs::write(&cert, a.cert.pem()).unwrap();
        std::fs::write(&key, a.signing_key.serialize_pem()).unwrap();
        let rc = ReloadingCert::load(&cert, &key).unwrap();
        assert!(!rc.reload_if_changed().unwrap());
        let served = |rc: &ReloadingCert| rc.current.read().unwrap().0.cert[0].clone();
        assert_eq!(served(&rc).as_ref(), a.cert.der().as_ref());

        // A broken replacement (longer, so the stamp changes even within one mtime tick).
        std::fs::write(&cert, format!("{}garbage-garbage", a.cert.pem())).unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap();
        assert!(rc.reload_if_changed().is_err());
        assert_eq!(served(&rc).as_ref(), a.cert.der().as_ref());

        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        std::fs::write(&cert, b.cert.pem()).unwrap();
        std::fs::write(&key, b.signing_key.serialize_pem()).unwrap();
        assert!(rc.reload_if_changed().unwrap());
        assert_eq!(served(&rc).as_ref(), b.cert.der().as_ref());
    }

    #[test]
    fn test_pinned_verifier_accepts_only_the_pinned_certificate() {
        let a = SelfSigned::generate("10.0.0.5").unwrap();
        let b = SelfSigned::generate("10.0.0.5").unwrap();
        let v = PinnedCertVerifier::from_pem(&a.cert_pem).unwrap();
        let name = ServerName::try_from("example.invalid").unwrap();
        let now = UnixTime::now();
        assert!(v.verify_server_cert(&a.key.cert[0], &[], &name, &[], now).is_ok());
        let err = v.verify_server_cert(&b.key.cert[0], &[], &name, &[], now).unwrap_err();
        assert!(is_pin_mismatch(&err), "{err:?}");
        assert!(PinnedCertVerifier::from_pem("nothing here").is_err());
    }
}
