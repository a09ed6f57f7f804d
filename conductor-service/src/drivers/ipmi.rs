//! The `ipmitool` power and management interfaces (reference §6.2): runs
//! `ipmitool -I lanplus -H <addr> [-p port] -U <user> -L <priv> -f <password file> …`.
//!
//! The password goes through a private temporary file (mode 0600, deleted after the call),
//! never on the command line, so it does not appear in process lists or logs. Every
//! invocation is killed after the configured timeout.

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use deploy::drivers::{
    BootDevice, BootDeviceInfo, BootMode, DriverError, DriverFuture, ManagementDriver, PowerDriver,
};
use deploy::{Node, PowerState};
use serde_json::Value;
use tokio::time::Instant;

use super::{info_str, required_str};
use crate::budget::PeerHealth;
use crate::config::{IpmiConfig, dur};

/// The ipmitool driver.
pub struct IpmiDriver {
    cfg: IpmiConfig,
    power_timeout: Duration,
    health: Arc<PeerHealth>,
}

struct Target {
    address: String,
    port: Option<u16>,
    username: Option<String>,
    password: String,
    privilege: String,
}

impl Target {
    fn bmc(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.address),
            None => self.address.clone(),
        }
    }
}

impl IpmiDriver {
    /// A driver using `cfg.ipmitool`.
    pub fn new(cfg: IpmiConfig, power_timeout: Duration) -> Self {
        Self { cfg, power_timeout, health: Arc::default() }
    }

    /// Report every command's outcome to `health` (shared by the conductor's drivers).
    #[must_use]
    pub fn with_health(mut self, health: Arc<PeerHealth>) -> Self {
        self.health = health;
        self
    }

    /// The label under which commands to the node's BMC are reported to [`PeerHealth`];
    /// `None` when its driver_info names none.
    pub fn bmc_of(node: &Node) -> Option<String> {
        Self::target(node).ok().map(|t| t.bmc())
    }

    fn target(node: &Node) -> Result<Target, DriverError> {
        let address = required_str(node, "ipmi_address")?.to_owned();
        if address.starts_with('-') || address.contains(char::is_whitespace) {
            return Err(DriverError::InvalidDriverInfo {
                message: format!("driver_info.ipmi_address '{address}' is not a host"),
            });
        }
        let port = match node.driver_info.get("ipmi_port") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
            Some(Value::String(s)) => s.trim().parse::<u16>().ok(),
            Some(_) => None,
        };
        if node.driver_info.get("ipmi_port").is_some_and(|v| !v.is_null()) && port.is_none() {
            return Err(DriverError::InvalidDriverInfo {
                message: "driver_info.ipmi_port must be a port number".into(),
            });
        }
        let privilege =
            info_str(node, "ipmi_priv_level").unwrap_or("ADMINISTRATOR").to_ascii_uppercase();
        if !matches!(privilege.as_str(), "ADMINISTRATOR" | "CALLBACK" | "OPERATOR" | "USER") {
            return Err(DriverError::InvalidDriverInfo {
                message: format!("driver_info.ipmi_priv_level '{privilege}' is not valid"),
            });
        }
        let username = info_str(node, "ipmi_username").map(str::to_owned);
        if username.as_deref().is_some_and(|u| u.starts_with('-')) {
            return Err(DriverError::InvalidDriverInfo {
                message: "driver_info.ipmi_username is not valid".into(),
            });
        }
        Ok(Target {
            address,
            port,
            username,
            password: node
                .driver_info
                .get("ipmi_password")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            privilege,
        })
    }

    /// Run one ipmitool command with retries; returns stdout. Whether the BMC answered goes
    /// to [`PeerHealth`].
    async fn run(&self, t: &Target, args: &[&str]) -> Result<String, DriverError> {
        let res = self.run_attempts(t, args).await;
        self.health.record(&t.bmc(), &res);
        res
    }

    async fn run_attempts(&self, t: &Target, args: &[&str]) -> Result<String, DriverError> {
        let mut last = None;
        for attempt in 1..=self.cfg.attempts.max(1) {
            match self.run_once(t, args).await {
                Ok(out) => return Ok(out),
                Err(e) if e.retryable() => {
                    tracing::warn!(bmc = %t.bmc(), attempt, command = %args.join(" "), error = %e,
                        "ipmitool failed");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| DriverError::Unreachable {
            bmc: t.bmc(),
            detail: "no attempt was made".into(),
        }))
    }

    async fn run_once(&self, t: &Target, args: &[&str]) -> Result<String, DriverError> {
        let spawn_err = |e: std::io::Error| DriverError::Unsupported {
            interface: "ipmitool".into(),
            operation: format!("running {} ({e})", self.cfg.ipmitool),
        };
        // The password file: created 0600 by tempfile, removed when `pw` drops.
        let mut pw = tempfile::NamedTempFile::new().map_err(spawn_err)?;
        pw.write_all(t.password.as_bytes()).map_err(spawn_err)?;
        pw.flush().map_err(spawn_err)?;
        let pw_path = pw.path().to_string_lossy().into_owned();

        let mut cmd = tokio::process::Command::new(&self.cfg.ipmitool);
        cmd.args(["-I", "lanplus", "-H", &t.address, "-L", &t.privilege]);
        let port_s;
        if let Some(p) = t.port {
            port_s = p.to_string();
            cmd.args(["-p", &port_s]);
        }
        if let Some(u) = &t.username {
            cmd.args(["-U", u]);
        }
        // -R/-N bound ipmitool's own retries so the timeout below is the real limit.
        cmd.args(["-R", "2", "-N", "1", "-f", &pw_path]);
        cmd.args(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let limit = dur(self.cfg.command_timeout_secs);
        let child = cmd.spawn().map_err(spawn_err)?;
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(r) => r.map_err(spawn_err)?,
            Err(_) => return Err(DriverError::Timeout { bmc: t.bmc(), after: limit }),
        };
        drop(pw);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(classify(&t.bmc(), &stderr))
    }

    async fn power_status(&self, t: &Target) -> Result<PowerState, DriverError> {
        let out = self.run(t, &["power", "status"]).await?;
        parse_power(&out).ok_or_else(|| DriverError::Bmc {
            bmc: t.bmc(),
            message: format!("unexpected power status output: {}", out.trim()),
        })
    }

    async fn wait_for(&self, t: &Target, want: PowerState) -> Result<PowerState, DriverError> {
        let deadline = Instant::now() + self.power_timeout;
        loop {
            if self.power_status(t).await? == want {
                return Ok(want);
            }
            if Instant::now() >= deadline {
                return Err(DriverError::PowerStateTimeout {
                    bmc: t.bmc(),
                    target: want,
                    after: self.power_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(self.cfg.power_poll_interval_ms.max(50)))
                .await;
        }
    }
}

/// "Chassis Power is on" / "Chassis Power is off".
fn parse_power(out: &str) -> Option<PowerState> {
    let l = out.to_ascii_lowercase();
    if l.contains("chassis power is on") {
        Some(PowerState::On)
    } else if l.contains("chassis power is off") {
        Some(PowerState::Off)
    } else {
        None
    }
}

/// Map ipmitool's stderr to a driver error (the text never contains the password: it was
/// only ever in the file).
fn classify(bmc: &str, stderr: &str) -> DriverError {
    let l = stderr.to_ascii_lowercase();
    let first = stderr.lines().find(|x| !x.trim().is_empty()).unwrap_or("").trim().to_owned();
    if l.contains("rakp 2 hmac is invalid")
        || l.contains("unauthorized name")
        || l.contains("invalid user name")
        || l.contains("rakp 2 message indicates an error")
        || l.contains("unable to establish ipmi v2 / rmcp+ session") && l.contains("rakp")
    {
        DriverError::AuthFailed { bmc: bmc.to_owned() }
    } else if l.contains("unable to establish")
        || l.contains("no response")
        || l.contains("connection refused")
        || l.contains("address lookup")
        || l.contains("insufficient resources for session")
    {
        DriverError::Unreachable { bmc: bmc.to_owned(), detail: first }
    } else {
        DriverError::Bmc { bmc: bmc.to_owned(), message: first }
    }
}

impl PowerDriver for IpmiDriver {
    fn name(&self) -> &'static str {
        "ipmitool"
    }

    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        Self::target(node).map(|_| ())
    }

    fn get_power_state<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, PowerState> {
        Box::pin(async move {
            let t = Self::target(node)?;
            self.power_status(&t).await
        })
    }

    fn set_power_state<'a>(
        &'a self,
        node: &'a Node,
        target: PowerState,
    ) -> DriverFuture<'a, PowerState> {
        Box::pin(async move {
            let t = Self::target(node)?;
            match target {
                PowerState::On => {
                    self.run(&t, &["power", "on"]).await?;
                    self.wait_for(&t, PowerState::On).await
                }
                PowerState::Off => {
                    self.run(&t, &["power", "off"]).await?;
                    self.wait_for(&t, PowerState::Off).await
                }
                PowerState::SoftOff => {
                    self.run(&t, &["power", "soft"]).await?;
                    self.wait_for(&t, PowerState::Off).await
                }
                PowerState::Rebooting | PowerState::SoftRebooting => {
                    // As Ironic: off (if on), wait, on, wait.
                    if self.power_status(&t).await? == PowerState::On {
                        let how = if target == PowerState::SoftRebooting { "soft" } else { "off" };
                        self.run(&t, &["power", how]).await?;
                        self.wait_for(&t, PowerState::Off).await?;
                    }
                    self.run(&t, &["power", "on"]).await?;
                    self.wait_for(&t, PowerState::On).await
                }
                PowerState::Error => Err(DriverError::error_state_requested("ipmitool")),
            }
        })
    }
}

impl ManagementDriver for IpmiDriver {
    fn name(&self) -> &'static str {
        "ipmitool"
    }

    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        Self::target(node).map(|_| ())
    }

    fn set_boot_device<'a>(
        &'a self,
        node: &'a Node,
        device: BootDevice,
        persistent: bool,
    ) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            if !IPMI_BOOT_DEVICES.contains(&device) {
                return Err(self.unsupported(&format!("boot device '{device}'")));
            }
            let t = Self::target(node)?;
            let mut options = Vec::new();
            if persistent {
                options.push("persistent");
            }
            if BootMode::of(node) == BootMode::Uefi {
                options.push("efiboot");
            }
            let opt = format!("options={}", options.join(","));
            let mut args = vec!["chassis", "bootdev", device.as_str()];
            if !options.is_empty() {
                args.push(&opt);
            }
            self.run(&t, &args).await.map(|_| ())
        })
    }

    fn get_boot_device<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, BootDeviceInfo> {
        Box::pin(async move {
            let t = Self::target(node)?;
            let out = self.run(&t, &["chassis", "bootparam", "get", "5"]).await?;
            Ok(parse_bootparam(&out))
        })
    }

    fn supported_boot_devices<'a>(&'a self, _node: &'a Node) -> DriverFuture<'a, Vec<BootDevice>> {
        Box::pin(async move { Ok(IPMI_BOOT_DEVICES.to_vec()) })
    }

    fn inject_nmi<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            let t = Self::target(node)?;
            self.run(&t, &["chassis", "power", "diag"]).await.map(|_| ())
        })
    }
}

/// What Ironic's ipmitool management interface offers.
const IPMI_BOOT_DEVICES: [BootDevice; 5] =
    [BootDevice::Pxe, BootDevice::Disk, BootDevice::Cdrom, BootDevice::Bios, BootDevice::Safe];

/// `chassis bootparam get 5` as Ironic reads it: the "Boot Device Selector" line and
/// whether the options apply to all future boots.
fn parse_bootparam(out: &str) -> BootDeviceInfo {
    let selector = out
        .lines()
        .find_map(|l| l.split_once("Boot Device Selector :").map(|(_, v)| v.trim().to_owned()));
    let device = selector.and_then(|s| {
        if s.contains("PXE") {
            Some(BootDevice::Pxe)
        } else if s.contains("Hard-Drive") {
            Some(BootDevice::Disk)
        } else if s.contains("BIOS") {
            Some(BootDevice::Bios)
        } else if s.contains("Safe Mode") {
            Some(BootDevice::Safe)
        } else if s.contains("CD/DVD") {
            Some(BootDevice::Cdrom)
        } else {
            None
        }
    });
    BootDeviceInfo { device, persistent: Some(out.contains("Options apply to all future boots")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_power() {
        assert_eq!(parse_power("Chassis Power is on\n"), Some(PowerState::On));
        assert_eq!(parse_power("Chassis Power is off"), Some(PowerState::Off));
        assert_eq!(parse_power("garbage"), None);
    }

    #[test]
    fn test_parse_bootparam() {
        let out = "Boot parameter version: 1\n Boot Flags :\n   - Boot Flag Valid\n   - Options apply to all future boots\n   - Boot Device Selector : Force PXE\n";
        assert_eq!(
            parse_bootparam(out),
            BootDeviceInfo { device: Some(BootDevice::Pxe), persistent: Some(true) }
        );
        let out = "   - Options apply to only next boot\n   - Boot Device Selector : No override\n";
        assert_eq!(parse_bootparam(out), BootDeviceInfo { device: None, persistent: Some(false) });
    }

    #[test]
    fn test_classify() {
        assert!(matches!(
            classify(
                "b",
                "Error: Unable to establish IPMI v2 / RMCP+ session\n> RAKP 2 HMAC is invalid"
            ),
            DriverError::AuthFailed { .. }
        ));
        assert!(matches!(
            classify("b", "Error: Unable to establish IPMI v2 / RMCP+ session"),
            DriverError::Unreachable { .. }
        ));
    }
}
