//! Network-boot firmware: what a machine's PXE/iPXE ROM does between power-on and the kernel.
//!
//! Over HTTP it behaves like iPXE: fetch `boot.ipxe`, run it (a small interpreter for the
//! commands boot scripts use: `chain`, `goto`, `set`, `isset`/`iseq`, `kernel`, `initrd`,
//! `boot`, `sanboot`, `exit`, with `||`/`&&` and `${netX/mac:hexhyp}`-style variables), follow
//! chains to the per-MAC script, and download the kernel and initrd it names. Over TFTP it
//! behaves like PXELINUX: fetch `pxelinux.cfg/01-<mac>` and take the default label, and load
//! its kernel and initrd, starting a transfer over when the server fails midway. The
//! result is a [`BootDecision`]: a kernel with its command line, or "boot from disk".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use deploy::ids::MacAddress;
use reqwest::Url;

use crate::tftp::{self, FetchOptions, RetryPolicy, TftpError};

/// Where the machine's network boot goes (what DHCP would have told it).
#[derive(Debug, Clone)]
pub struct NetbootConfig {
    /// iPXE over HTTP: the URL of `boot.ipxe` (e.g. `http://127.0.0.1:8080/boot.ipxe`).
    pub ipxe_script_url: Option<Url>,
    /// PXELINUX over TFTP: the server (tried when no iPXE URL is set).
    pub tftp_server: Option<SocketAddr>,
    /// Per-request timeout for HTTP and per-packet timeout for TFTP.
    pub timeout: Duration,
}

/// What the firmware decided to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// A kernel (and initrd) loaded over the network, with its command line.
    Kernel {
        /// Where the kernel came from.
        kernel: String,
        /// Where the initrd came from, if any.
        initrd: Option<String>,
        /// The kernel command line.
        cmdline: String,
        /// Bytes downloaded for kernel + initrd.
        loaded_bytes: u64,
    },
    /// The config said to boot from the local disk (`sanboot`, `exit`, `localboot`).
    LocalDisk,
}

/// Why network boot failed.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// No boot source is configured.
    #[error("no network boot source configured")]
    NotConfigured,
    /// An HTTP fetch failed.
    #[error("HTTP fetch of {url} failed: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// A TFTP fetch failed.
    #[error("TFTP fetch failed")]
    Tftp(#[from] TftpError),
    /// The script or config made no sense or never booted anything.
    #[error("boot script {url}: {message}")]
    Script {
        /// The script.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// Largest kernel/initrd the firmware downloads.
const MAX_IMAGE_BYTES: u64 = 1 << 30;
/// Largest boot script.
const MAX_SCRIPT_BYTES: usize = 256 << 10;
/// Commands a script run may execute before the firmware gives up (loops).
const MAX_STEPS: usize = 10_000;
/// Chain depth.
const MAX_DEPTH: usize = 8;

/// Performs a network boot for a machine with `macs` and returns what it would boot.
///
/// # Errors
/// [`FirmwareError`] when no config could be fetched or it booted nothing.
pub async fn netboot(
    client: &reqwest::Client,
    cfg: &NetbootConfig,
    macs: &[MacAddress],
) -> Result<BootDecision, FirmwareError> {
    if let Some(url) = &cfg.ipxe_script_url {
        let mut ipxe = Ipxe::new(client, cfg.timeout, macs);
        return ipxe.run_url(url.clone(), 0).await.and_then(|o| match o {
            Outcome::Boot => ipxe.finish(url),
            Outcome::LocalDisk => Ok(BootDecision::LocalDisk),
            Outcome::Exit(_) | Outcome::Failed => Err(FirmwareError::Script {
                url: url.to_string(),
                message: "script ended without booting".into(),
            }),
        });
    }
    if let Some(server) = cfg.tftp_server {
        return pxelinux(server, cfg.timeout, macs).await;
    }
    Err(FirmwareError::NotConfigured)
}

/// How a script (or one command) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `boot` succeeded with a loaded kernel.
    Boot,
    /// Boot from the local disk.
    LocalDisk,
    /// `exit N` (or the end of the script: 0).
    Exit(i64),
    /// The last command failed (only as a command result).
    Failed,
}

struct Ipxe<'a> {
    client: &'a reqwest::Client,
    timeout: Duration,
    macs: &'a [MacAddress],
    vars: HashMap<String, String>,
    kernel: Option<(String, String)>,
    initrd: Option<String>,
    loaded_bytes: u64,
    steps: usize,
}

impl<'a> Ipxe<'a> {
    fn new(client: &'a reqwest::Client, timeout: Duration, macs: &'a [MacAddress]) -> Self {
        let mut vars = HashMap::new();
        vars.insert("buildarch".into(), "x86_64".into());
        vars.insert("platform".into(), "efi".into());
        vars.insert("ip".into(), "127.0.0.1".into());
        Ipxe { client, timeout, macs, vars, kernel: None, initrd: None, loaded_bytes: 0, steps: 0 }
    }

    fn finish(&self, url: &Url) -> Result<BootDecision, FirmwareError> {
        let (kernel, cmdline) = self.kernel.clone().ok_or_else(|| FirmwareError::Script {
            url: url.to_string(),
            message: "boot without a kernel".into(),
        })?;
        Ok(BootDecision::Kernel {
            kernel,
            initrd: self.initrd.clone(),
            cmdline,
            loaded_bytes: self.loaded_bytes,
        })
    }

    fn run_url<'s>(
        &'s mut self,
        url: Url,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Outcome, FirmwareError>> + Send + 's>>
    where
        'a: 's,
    {
        Box::pin(async move {
            if depth > MAX_DEPTH {
                return Err(FirmwareError::Script {
                    url: url.to_string(),
                    message: "chains nested too deep".into(),
                });
            }
            let body = self.get_text(&url).await?;
            if !body.trim_start().starts_with("#!ipxe") {
                return Err(FirmwareError::Script {
                    url: url.to_string(),
                    message: "not an iPXE script".into(),
                });
            }
            self.run_script(&url, &body, depth).await
        })
    }

    async fn run_script(
        &mut self,
        url: &Url,
        body: &str,
        depth: usize,
    ) -> Result<Outcome, FirmwareError> {
        let lines: Vec<&str> = body.lines().map(str::trim).collect();
        let labels: HashMap<&str, usize> = lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.strip_prefix(':').map(|name| (name.trim(), i)))
            .collect();
        let script_err = |message: String| FirmwareError::Script { url: url.to_string(), message };
        let mut pc = 0usize;
        while let Some(line) = lines.get(pc) {
            pc += 1;
            if line.is_empty() || line.starts_with('#') || line.starts_with(':') {
                continue;
            }
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Err(script_err(format!("more than {MAX_STEPS} commands: a loop?")));
            }
            // A line is commands joined by `||` / `&&`, evaluated left to right like a shell.
            let mut ok = true;
            let mut first = true;
            let mut rest: &str = line;
            loop {
                let (cmd, connector, tail) = split_connector(rest);
                let run = first
                    || matches!(
                        (connector_prev(line, rest), ok),
                        (Some("&&"), true) | (Some("||"), false)
                    );
                first = false;
                if run {
                    let words: Vec<String> =
                        cmd.split_whitespace().map(|w| self.expand(w)).collect();
                    match self.command(url, &words, depth).await? {
                        Step::Continue(success) => ok = success,
                        Step::Goto(label) => match labels.get(label.as_str()) {
                            Some(&i) => {
                                pc = i + 1;
                                break;
                            }
                            None => {
                                return Err(script_err(format!("goto unknown label '{label}'")));
                            }
                        },
                        Step::End(o) => return Ok(o),
                    }
                }
                match (connector, tail) {
                    (Some(_), Some(t)) => rest = t,
                    _ => break,
                }
            }
        }
        Ok(Outcome::Exit(0))
    }

    async fn command(
        &mut self,
        base: &Url,
        words: &[String],
        depth: usize,
    ) -> Result<Step, FirmwareError> {
        let Some((name, args)) = words.split_first() else {
            return Ok(Step::Continue(true));
        };
        // Options (`--name x`, `--timeout 1000`, `-a`) come before the positional arguments.
        let positional = strip_options(args);
        Ok(match name.as_str() {
            "goto" => match positional.first() {
                Some(l) => Step::Goto((*l).clone()),
                None => Step::Continue(false),
            },
            "set" => {
                if let Some((k, v)) = positional.split_first() {
                    let v: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
                    // `set name:int32 0`: the type suffix is not part of the name.
                    let key = k.split(':').next().unwrap_or(k).to_owned();
                    self.vars.insert(key, v.join(" "));
                }
                Step::Continue(true)
            }
            "clear" => {
                if let Some(k) = positional.first() {
                    self.vars.remove(k.as_str());
                }
                Step::Continue(true)
            }
            "inc" => match positional.first() {
                Some(k) => {
                    let by = positional.get(1).and_then(|b| b.parse::<i64>().ok()).unwrap_or(1);
                    let cur =
                        self.vars.get(k.as_str()).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                    self.vars.insert((*k).clone(), (cur + by).to_string());
                    Step::Continue(true)
                }
                None => Step::Continue(false),
            },
            "isset" => Step::Continue(positional.first().is_some_and(|v| !v.is_empty())),
            "iseq" => Step::Continue(positional.first() == positional.get(1)),
            "chain" => {
                let Some(target) = positional.first() else { return Ok(Step::Continue(false)) };
                let url = match base.join(target) {
                    Ok(u) => u,
                    Err(_) => return Ok(Step::Continue(false)),
                };
                match self.fetch_script_or_kernel(url, &positional[1..], depth).await? {
                    Outcome::Exit(code) => Step::Continue(code == 0),
                    Outcome::Failed => Step::Continue(false),
                    o @ (Outcome::Boot | Outcome::LocalDisk) => Step::End(o),
                }
            }
            "kernel" | "imgexec" | "imgselect" => {
                let Some(target) = positional.first() else { return Ok(Step::Continue(false)) };
                let cmdline = join_words(&positional[1..]);
                match self.load(base, target).await {
                    Ok(u) => {
                        self.kernel = Some((u, cmdline));
                        if name == "imgexec" {
                            Step::End(Outcome::Boot)
                        } else {
                            Step::Continue(true)
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "kernel download failed");
                        Step::Continue(false)
                    }
                }
            }
            "initrd" | "module" | "imgfetch" => {
                let Some(target) = positional.first() else { return Ok(Step::Continue(false)) };
                match self.load(base, target).await {
                    Ok(u) => {
                        self.initrd = Some(u);
                        Step::Continue(true)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "initrd download failed");
                        Step::Continue(false)
                    }
                }
            }
            "boot" => {
                if self.kernel.is_some() {
                    Step::End(Outcome::Boot)
                } else {
                    Step::Continue(false)
                }
            }
            "imgfree" => {
                self.kernel = None;
                self.initrd = None;
                Step::Continue(true)
            }
            // sanboot without a URL boots the local disk; with one it would boot an ISO/iSCSI
            // target, which these machines do not have.
            "sanboot" => {
                if positional.is_empty() {
                    Step::End(Outcome::LocalDisk)
                } else {
                    Step::Continue(false)
                }
            }
            // `exit` hands control back to the firmware's boot order: the local disk.
            "exit" => {
                let code = positional.first().and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
                if depth == 0 || code == 0 {
                    Step::End(Outcome::LocalDisk)
                } else {
                    Step::End(Outcome::Exit(code))
                }
            }
            "reboot" | "poweroff" | "shell" => {
                return Err(FirmwareError::Script {
                    url: base.to_string(),
                    message: format!("script ran '{name}'"),
                });
            }
            // Everything else (echo, prompt, sleep, dhcp, ifopen, imgverify, cpuid, params, …)
            // has no effect in the simulation and succeeds.
            _ => Step::Continue(true),
        })
    }

    async fn fetch_script_or_kernel(
        &mut self,
        url: Url,
        args: &[&String],
        depth: usize,
    ) -> Result<Outcome, FirmwareError> {
        let resp = match self.client.get(url.clone()).timeout(self.timeout).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracing::debug!(%url, status = %r.status(), "chain target not found");
                return Ok(Outcome::Failed);
            }
            Err(e) => {
                tracing::debug!(%url, error = %e, "chain fetch failed");
                return Ok(Outcome::Failed);
            }
        };
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| FirmwareError::Http { url: url.to_string(), message: e.to_string() })?;
        if bytes.starts_with(b"#!ipxe") {
            if bytes.len() > MAX_SCRIPT_BYTES {
                return Err(FirmwareError::Script {
                    url: url.to_string(),
                    message: "script too large".into(),
                });
            }
            let body = String::from_utf8_lossy(&bytes).into_owned();
            return Box::pin(self.run_script(&url, &body, depth + 1)).await;
        }
        // Chaining a non-script loads and boots it as a kernel.
        self.loaded_bytes += bytes.len() as u64;
        self.kernel = Some((url.to_string(), join_words(args)));
        Ok(Outcome::Boot)
    }

    /// Downloads a kernel/initrd (discarding the bytes, counting them); returns its URL.
    async fn load(&mut self, base: &Url, target: &str) -> Result<String, FirmwareError> {
        let url = base
            .join(target)
            .map_err(|e| FirmwareError::Http { url: target.to_owned(), message: e.to_string() })?;
        let http = |message: String| FirmwareError::Http { url: url.to_string(), message };
        let mut resp = self
            .client
            .get(url.clone())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| http(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(http(format!("status {}", resp.status())));
        }
        let mut n = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| http(e.to_string()))? {
            n += chunk.len() as u64;
            if n > MAX_IMAGE_BYTES {
                return Err(http(format!("larger than {MAX_IMAGE_BYTES} bytes")));
            }
        }
        self.loaded_bytes += n;
        Ok(url.to_string())
    }

    async fn get_text(&self, url: &Url) -> Result<String, FirmwareError> {
        let http = |message: String| FirmwareError::Http { url: url.to_string(), message };
        let resp = self
            .client
            .get(url.clone())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| http(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(http(format!("status {}", resp.status())));
        }
        let bytes = resp.bytes().await.map_err(|e| http(e.to_string()))?;
        if bytes.len() > MAX_SCRIPT_BYTES {
            return Err(http("script too large".into()));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Expands `${name}` and `${name:type}` in one word.
    fn expand(&self, word: &str) -> String {
        let mut out = String::with_capacity(word.len());
        let mut rest = word;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                return out;
            };
            out.push_str(&self.lookup(&after[..end]));
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }

    fn lookup(&self, spec: &str) -> String {
        let (name, ty) = match spec.split_once(':') {
            Some((n, t)) => (n, Some(t)),
            None => (spec, None),
        };
        // `mac`, `netX/mac`: the MAC of NIC X (`mac` = the booting NIC, net0).
        let nic_mac = if name == "mac" {
            self.macs.first()
        } else if let Some(idx) = name.strip_prefix("net").and_then(|r| r.strip_suffix("/mac")) {
            idx.parse::<usize>().ok().and_then(|i| self.macs.get(i))
        } else {
            None
        };
        if let Some(mac) = nic_mac {
            return match ty {
                Some("hexhyp") => mac.hyphenated(),
                Some("hexraw") => mac.0.iter().map(|b| format!("{b:02x}")).collect(),
                _ => mac.to_string(),
            };
        }
        self.vars.get(name).cloned().unwrap_or_default()
    }
}

enum Step {
    Continue(bool),
    Goto(String),
    End(Outcome),
}

/// Splits `a || b && c` into (`a`, connector, `b && c`).
fn split_connector(s: &str) -> (&str, Option<&'static str>, Option<&str>) {
    let or = s.find("||");
    let and = s.find("&&");
    let (pos, conn) = match (or, and) {
        (Some(o), Some(a)) if a < o => (a, "&&"),
        (Some(o), _) => (o, "||"),
        (None, Some(a)) => (a, "&&"),
        (None, None) => return (s.trim(), None, None),
    };
    (s[..pos].trim(), Some(conn), Some(&s[pos + 2..]))
}

/// The connector just before `rest` inside `line` (`rest` is a suffix of `line`).
fn connector_prev<'l>(line: &'l str, rest: &str) -> Option<&'l str> {
    let cut = line.len().checked_sub(rest.len())?;
    let head = line.get(..cut)?.trim_end();
    head.get(head.len().checked_sub(2)?..).filter(|c| *c == "||" || *c == "&&")
}

fn strip_options(args: &[String]) -> Vec<&String> {
    let mut out = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        if out.is_empty() && a.starts_with('-') {
            // `--name=x` carries its value; `--name x`/`-n x` take the next word for the options
            // that have a value.
            if !a.contains('=')
                && matches!(a.as_str(), "--name" | "-n" | "--timeout" | "-t" | "--drive" | "-d")
            {
                it.next();
            }
            continue;
        }
        out.push(a);
    }
    out
}

fn join_words(words: &[&String]) -> String {
    words.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
}

/// PXELINUX over TFTP: `pxelinux.cfg/01-<mac>` for each NIC, then `default`.
async fn pxelinux(
    server: SocketAddr,
    timeout: Duration,
    macs: &[MacAddress],
) -> Result<BootDecision, FirmwareError> {
    // What a PXE ROM asks for: Ethernet-sized blocks and the file size, lock-step.
    let opts = FetchOptions {
        blksize: Some(1468),
        tsize: true,
        timeout,
        max_bytes: 512 << 20,
        ..FetchOptions::default()
    };
    let image_opts = FetchOptions { max_bytes: MAX_IMAGE_BYTES, ..opts.clone() };
    let mut last_err = None;
    let mut names: Vec<String> =
        macs.iter().map(|m| format!("pxelinux.cfg/01-{}", m.hyphenated())).collect();
    names.push("pxelinux.cfg/default".into());
    for name in names {
        match tftp::fetch(server, &name, &opts).await {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let entry = parse_pxelinux(&text, macs.first()).map_err(|message| {
                    FirmwareError::Script { url: format!("tftp://{server}/{name}"), message }
                })?;
                return match entry {
                    PxelinuxEntry::Local => Ok(BootDecision::LocalDisk),
                    PxelinuxEntry::Kernel { kernel, initrd, cmdline } => {
                        // Counted, not kept: the simulated machine only needs to have loaded
                        // them. A ROM starts a failed download over a few times (the server
                        // may have restarted midway) before the boot fails.
                        let retry = RetryPolicy::default();
                        let mut loaded = 0;
                        for file in std::iter::once(&kernel).chain(&initrd) {
                            let load = tftp::fetch_with_retry(
                                server,
                                file,
                                &image_opts,
                                &retry,
                                |_, _| {},
                            );
                            loaded += load.await?.fetched.bytes;
                        }
                        Ok(BootDecision::Kernel { kernel, initrd, cmdline, loaded_bytes: loaded })
                    }
                };
            }
            Err(e @ TftpError::Refused { .. }) => last_err = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last_err.map_or(FirmwareError::NotConfigured, FirmwareError::from))
}

/// The chosen entry of a PXELINUX config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PxelinuxEntry {
    /// `localboot`, or `chain.c32`: boot from disk.
    Local,
    /// A kernel to load.
    Kernel {
        /// Path of the kernel on the TFTP server.
        kernel: String,
        /// Path of the initrd (from `initrd=` in `append`, or an `initrd` line).
        initrd: Option<String>,
        /// The command line (`append` without `initrd=`, plus `BOOTIF` for `ipappend 2`).
        cmdline: String,
    },
}

/// Parses a PXELINUX config and returns its default label (the first when none is named).
///
/// # Errors
/// A message when the config has no usable label.
pub fn parse_pxelinux(text: &str, boot_mac: Option<&MacAddress>) -> Result<PxelinuxEntry, String> {
    #[derive(Default)]
    struct Label {
        name: String,
        kernel: Option<String>,
        append: String,
        initrd: Option<String>,
        ipappend: u32,
        local: bool,
    }
    let mut default = None;
    let mut labels: Vec<Label> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) =
            line.split_once(char::is_whitespace).map_or((line, ""), |(k, v)| (k, v.trim()));
        match key.to_ascii_lowercase().as_str() {
            "default" => {
                default = Some(value.split_whitespace().last().unwrap_or_default().to_owned())
            }
            "label" => labels.push(Label { name: value.to_owned(), ..Label::default() }),
            "kernel" | "linux" => {
                if let Some(l) = labels.last_mut() {
                    if value.ends_with("chain.c32") {
                        l.local = true;
                    }
                    l.kernel = Some(value.to_owned());
                }
            }
            "initrd" => {
                if let Some(l) = labels.last_mut() {
                    l.initrd = Some(value.to_owned());
                }
            }
            "append" => {
                if let Some(l) = labels.last_mut() {
                    l.append = value.to_owned();
                }
            }
            "ipappend" | "sysappend" => {
                if let Some(l) = labels.last_mut() {
                    l.ipappend = value.parse().unwrap_or(0);
                }
            }
            "localboot" => {
                if let Some(l) = labels.last_mut() {
                    l.local = true;
                }
            }
            _ => {}
        }
    }
    let chosen = match &default {
        Some(d) => labels.iter().find(|l| &l.name == d),
        None => labels.first(),
    }
    .ok_or_else(|| format!("no label {}", default.as_deref().unwrap_or("at all")))?;
    if chosen.local {
        return Ok(PxelinuxEntry::Local);
    }
    let kernel =
        chosen.kernel.clone().ok_or_else(|| format!("label '{}' has no kernel", chosen.name))?;
    let mut initrd = chosen.initrd.clone();
    let mut args: Vec<String> = Vec::new();
    for word in chosen.append.split_whitespace() {
        match word.strip_prefix("initrd=") {
            Some(i) if initrd.is_none() => {
                initrd = Some(i.split(',').next().unwrap_or(i).to_owned())
            }
            Some(_) => {}
            None => args.push(word.to_owned()),
        }
    }
    // `ipappend 2` makes PXELINUX add BOOTIF=01-<mac of the booting NIC>.
    if chosen.ipappend & 2 != 0
        && let Some(mac) = boot_mac
    {
        args.push(format!("BOOTIF=01-{}", mac.hyphenated()));
    }
    Ok(PxelinuxEntry::Kernel { kernel, initrd, cmdline: args.join(" ") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::routing::get;

    fn mac() -> MacAddress {
        "52:54:00:12:34:56".parse().unwrap()
    }

    async fn serve(app: Router) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        format!("http://{addr}")
    }

    const BOOT_IPXE: &str = "#!ipxe\n\
        set attempts:int32 0\n\
        :net0\n\
        isset ${net0/mac} || goto net1\n\
        chain pxelinux.cfg/${net0/mac:hexhyp} || goto net1\n\
        goto done\n\
        :net1\n\
        isset ${net1/mac} || goto no_config\n\
        chain pxelinux.cfg/${net1/mac:hexhyp} || goto no_config\n\
        :done\n\
        exit 0\n\
        :no_config\n\
        echo no config\n\
        reboot\n";

    #[tokio::test]
    async fn test_ipxe_chain_to_per_mac_script_loads_kernel_with_args() {
        let app = Router::new()
            .route("/boot.ipxe", get(|| async { BOOT_IPXE }))
            .route(
                "/pxelinux.cfg/{mac}",
                get(|Path(m): Path<String>| async move {
                    if m == "52-54-00-12-34-56" {
                        Ok("#!ipxe\ngoto deploy\n:deploy\nimgfree\n\
                            kernel --timeout 60000 /n1/deploy_kernel selinux=0 ferric.api_url=http://api ipa-api-url=http://api BOOTIF=${mac} initrd=deploy_ramdisk || goto retry\n\
                            initrd /n1/deploy_ramdisk || goto retry\nboot\n:retry\nexit 1\n"
                            .to_owned())
                    } else {
                        Err(StatusCode::NOT_FOUND)
                    }
                }),
            )
            .route("/n1/deploy_kernel", get(|| async { vec![7u8; 1000] }))
            .route("/n1/deploy_ramdisk", get(|| async { vec![8u8; 500] }));
        let base = serve(app).await;
        let cfg = NetbootConfig {
            ipxe_script_url: Some(format!("{base}/boot.ipxe").parse().unwrap()),
            tftp_server: None,
            timeout: Duration::from_secs(5),
        };
        let other: MacAddress = "52:54:00:00:00:01".parse().unwrap();
        // The booting machine's second NIC holds the config: net0 misses, net1 hits.
        let got = netboot(&reqwest::Client::new(), &cfg, &[other, mac()]).await.unwrap();
        match got {
            BootDecision::Kernel { kernel, initrd, cmdline, loaded_bytes } => {
                assert!(kernel.ends_with("/n1/deploy_kernel"), "{kernel}");
                assert!(initrd.unwrap().ends_with("/n1/deploy_ramdisk"));
                assert!(cmdline.contains("ferric.api_url=http://api"), "{cmdline}");
                // ${mac} is the first NIC's MAC in colon form, as iPXE renders it.
                assert!(cmdline.contains("BOOTIF=52:54:00:00:00:01"), "{cmdline}");
                assert_eq!(loaded_bytes, 1500);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn test_ipxe_exit_means_local_disk_and_unknown_mac_fails() {
        let app = Router::new().route("/boot.ipxe", get(|| async { BOOT_IPXE })).route(
            "/pxelinux.cfg/{mac}",
            get(|Path(m): Path<String>| async move {
                if m == "52-54-00-12-34-56" {
                    Ok("#!ipxe\nsanboot --no-describe --drive 0x80 || exit 0\n")
                } else {
                    Err(StatusCode::NOT_FOUND)
                }
            }),
        );
        let base = serve(app).await;
        let cfg = NetbootConfig {
            ipxe_script_url: Some(format!("{base}/boot.ipxe").parse().unwrap()),
            tftp_server: None,
            timeout: Duration::from_secs(5),
        };
        let got = netboot(&reqwest::Client::new(), &cfg, &[mac()]).await.unwrap();
        assert_eq!(got, BootDecision::LocalDisk);
        let unknown: MacAddress = "52:54:00:99:99:99".parse().unwrap();
        let err = netboot(&reqwest::Client::new(), &cfg, &[unknown]).await.unwrap_err();
        assert!(err.to_string().contains("reboot"), "{err}");
    }

    #[tokio::test]
    async fn test_ipxe_retry_loop_ends_in_poweroff_when_the_kernel_is_missing() {
        // The shape of pxe-service's deploy script: counted retries, then power off.
        let script = "#!ipxe\nset attempts:int32 3\nset i:int32 0\n\n:deploy\nimgfree\n\
            kernel /missing ferric.api_url=http://api initrd=deploy_ramdisk || goto retry\n\
            initrd --name deploy_ramdisk /missing2 || goto retry\nboot\n\n\
            :retry\niseq ${i} ${attempts} && goto fail ||\ninc i\nsleep ${i}\ngoto deploy\n\n\
            :fail\necho giving up\npoweroff\n";
        let app = Router::new().route("/boot.ipxe", get(move || async move { script }));
        let base = serve(app).await;
        let cfg = NetbootConfig {
            ipxe_script_url: Some(format!("{base}/boot.ipxe").parse().unwrap()),
            tftp_server: None,
            timeout: Duration::from_secs(5),
        };
        let err = netboot(&reqwest::Client::new(), &cfg, &[mac()]).await.unwrap_err();
        assert!(err.to_string().contains("poweroff"), "{err}");
    }

    #[test]
    fn test_pxelinux_default_label_with_ipappend() {
        let cfg = "default deploy\n\nlabel deploy\nkernel n1/deploy_kernel\n\
                   append initrd=n1/deploy_ramdisk selinux=0 ipa-api-url=http://api ferric.api_url=http://api\n\
                   ipappend 2\n\nlabel boot_whole_disk\nCOM32 chain.c32\nappend mbr:0x1234\n";
        let e = parse_pxelinux(cfg, Some(&mac())).unwrap();
        assert_eq!(
            e,
            PxelinuxEntry::Kernel {
                kernel: "n1/deploy_kernel".into(),
                initrd: Some("n1/deploy_ramdisk".into()),
                cmdline: "selinux=0 ipa-api-url=http://api ferric.api_url=http://api BOOTIF=01-52-54-00-12-34-56".into(),
            }
        );
        assert_eq!(
            parse_pxelinux("default local\nlabel local\nlocalboot 0\n", None).unwrap(),
            PxelinuxEntry::Local
        );
        assert!(parse_pxelinux("default x\nlabel y\nkernel k\n", None).is_err());
    }

    #[test]
    fn test_connectors_split_left_to_right() {
        assert_eq!(split_connector("a || b && c"), ("a", Some("||"), Some(" b && c")));
        assert_eq!(connector_prev("a || b && c", " b && c"), Some("||"));
        assert_eq!(connector_prev("a || b && c", " c"), Some("&&"));
    }
}
