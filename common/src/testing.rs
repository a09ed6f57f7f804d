//! What tests do when something outside the process is missing (feature `testing`).
//!
//! Some tests need more than cargo: PostgreSQL and RabbitMQ, QEMU, or real peers (the BMC
//! emulators sushy-tools and pyghmi, ipmitool, TFTP clients). On a developer's machine a
//! missing one makes the test skip, loudly, so that `cargo test` stays useful; in CI the
//! matching `FERRIC_REQUIRE_*=1` variable turns the skip into a failure, so that nothing is
//! skipped by accident. [`require_service`] is that rule, once, for every test crate.

pub mod corpus;

use std::fmt;

/// Something a test needs from the machine, and the variable that makes its absence a
/// failure rather than a skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// PostgreSQL or RabbitMQ: `FERRIC_REQUIRE_SERVICES=1`.
    Services,
    /// `qemu-system-x86_64` and what a real-machine boot needs: `FERRIC_REQUIRE_QEMU=1`.
    Qemu,
    /// Real peers driven by the tests (sushy-tools, pyghmi, ipmitool, TFTP clients):
    /// `FERRIC_REQUIRE_PEERS=1`.
    Peers,
}

impl Need {
    /// The environment variable that makes this need a requirement.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Services => "FERRIC_REQUIRE_SERVICES",
            Self::Qemu => "FERRIC_REQUIRE_QEMU",
            Self::Peers => "FERRIC_REQUIRE_PEERS",
        }
    }

    /// Whether the variable is set to `1` (missing means failing).
    pub fn required(self) -> bool {
        std::env::var(self.env_var()).is_ok_and(|v| v == "1")
    }
}

/// `Some(value)` when `found` is `Ok`; otherwise [`missing`]: a failed test when `need` is
/// required, else a loud skip message and `None` (the caller returns).
///
/// ```
/// use common::testing::{Need, require_service};
/// let port = std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().unwrap());
/// let Some(addr) = require_service(Need::Services, "a free port", port) else { return };
/// assert!(addr.port() > 0);
/// ```
///
/// # Panics
/// When `found` is an error and `need` is required.
#[track_caller]
pub fn require_service<T, E: fmt::Display>(
    need: Need,
    what: &str,
    found: Result<T, E>,
) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(why) => {
            missing(need, what, &why);
            None
        }
    }
}

/// Reports that `what` is not available because of `why`: panics when `need` is required,
/// else prints a loud skip message on stderr.
///
/// # Panics
/// When `need` is required.
#[track_caller]
pub fn missing(need: Need, what: &str, why: &dyn fmt::Display) {
    let var = need.env_var();
    assert!(!need.required(), "{what} is required ({var}=1) but not available: {why}");
    #[expect(clippy::print_stderr, reason = "a skipped test must say so where cargo test shows it")]
    {
        eprintln!(
            "\n*** SKIPPING: {what} is not available ({why}); set {var}=1 to make this a failure ***\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_each_need_names_its_variable() {
        assert_eq!(Need::Services.env_var(), "FERRIC_REQUIRE_SERVICES");
        assert_eq!(Need::Qemu.env_var(), "FERRIC_REQUIRE_QEMU");
        assert_eq!(Need::Peers.env_var(), "FERRIC_REQUIRE_PEERS");
    }

    #[test]
    fn test_found_is_passed_through() {
        assert_eq!(require_service::<_, String>(Need::Qemu, "x", Ok(3)), Some(3));
    }

    #[test]
    fn test_missing_skips_or_fails_by_the_variable() {
        // The process environment decides; the test checks whichever case applies here.
        let need = Need::Peers;
        let r = std::panic::catch_unwind(|| require_service::<(), _>(need, "a peer", Err("gone")));
        if need.required() {
            let msg = r.unwrap_err();
            let msg = msg.downcast_ref::<String>().unwrap();
            assert!(msg.contains("FERRIC_REQUIRE_PEERS=1") && msg.contains("gone"), "{msg}");
        } else {
            assert_eq!(r.unwrap(), None);
        }
    }
}

/// A certificate authority made for one test, and server certificates it signs
/// (`127.0.0.1`, `localhost`, …). Nothing is written to disk unless the test does.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A server certificate and its private key, PEM.
#[derive(Clone)]
pub struct TestCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A new CA named `name`.
    ///
    /// # Panics
    /// If key generation fails (a broken crypto provider fails every TLS test anyway).
    pub fn new(name: &str) -> Self {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("no names to check");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().expect("key generation works");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA signs itself");
        Self { issuer }
    }

    /// The CA certificate, PEM (what clients trust).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    ///
    /// # Panics
    /// If a name is unusable or signing fails.
    pub fn issue(&self, names: &[&str]) -> TestCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("usable names");
        params.distinguished_name.push(rcgen::DnType::CommonName, "ferric test server");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().expect("key generation works");
        let cert = params.signed_by(&key, &self.issuer).expect("the CA signs");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// Run `cmd` under `/usr/bin/time -v` (Debian's `time`) for a benchmark: its wall time and
/// peak resident set in KiB.
///
/// # Errors
/// When `time` cannot start or the command fails (with its stderr).
pub fn time_and_peak_rss(
    cmd: &std::process::Command,
) -> Result<(std::time::Duration, u64), String> {
    let started = std::time::Instant::now();
    let out = std::process::Command::new("/usr/bin/time")
        .arg("-v")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .output()
        .map_err(|e| format!("running /usr/bin/time (apt-get install time): {e}"))?;
    let elapsed = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{:?} failed: {err}", cmd.get_program()));
    }
    let rss = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok((elapsed, rss))
}
