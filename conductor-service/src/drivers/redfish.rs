//! The `redfish` power and management interfaces (reference §6.3) over reqwest:
//! `Systems/{id}` PowerState, `ComputerSystem.Reset`, and the boot source override; the
//! indicator LEDs ([`indicators`]) and virtual media ([`vmedia`]) in their own modules.
//!
//! `driver_info`: `redfish_address` (required; `https://` assumed without a scheme),
//! `redfish_system_id` (discovered when the BMC has exactly one system),
//! `redfish_username`/`redfish_password` (basic auth), `redfish_verify_ca` (`true`/unset:
//! the system's roots; `false`: no verification; a path: only the CAs of that PEM bundle,
//! as Ironic passes it to requests). Every request has a connect and a total timeout and is retried on
//! connection errors and 5xx answers.

mod indicators;
mod vmedia;

use std::sync::Arc;
use std::time::Duration;

use deploy::drivers::{
    BootDevice, BootDeviceInfo, BootMode, DriverError, DriverFuture, ManagementDriver, PowerDriver,
};
use deploy::indicators::{Indicator, IndicatorState};
use deploy::vmedia::{VirtualMedia, VmediaDevice};
use deploy::{Node, PowerState};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{info_str, required_str};

mod inspect;
use crate::budget::PeerHealth;
use crate::config::{RedfishConfig, dur};

/// The redfish driver: two shared HTTP clients (verifying and not verifying TLS).
pub struct RedfishDriver {
    cfg: RedfishConfig,
    verify: reqwest::Client,
    insecure: reqwest::Client,
    power_timeout: Duration,
    health: Arc<PeerHealth>,
}

/// Everything one call needs, read from `driver_info`.
struct Target {
    base: String,
    system_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    verify: Verify,
}

enum Verify {
    Yes,
    No,
    CaFile(String),
}

impl Target {
    fn bmc(&self) -> String {
        self.base.clone()
    }
}

fn client_builder(cfg: &RedfishConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(dur(cfg.connect_timeout_secs))
        .timeout(dur(cfg.request_timeout_secs))
        .pool_idle_timeout(Duration::from_secs(30))
}

impl RedfishDriver {
    /// Build the shared clients.
    ///
    /// # Errors
    /// [`DriverError::Unsupported`] when the TLS backend cannot be initialised.
    pub fn new(cfg: RedfishConfig, power_timeout: Duration) -> Result<Self, DriverError> {
        let build_err = |e: reqwest::Error| DriverError::Unsupported {
            interface: "redfish".into(),
            operation: format!("building an HTTP client ({e})"),
        };
        let verify = client_builder(&cfg).build().map_err(build_err)?;
        let insecure =
            client_builder(&cfg).danger_accept_invalid_certs(true).build().map_err(build_err)?;
        Ok(Self { cfg, verify, insecure, power_timeout, health: Arc::default() })
    }

    /// Report every call's outcome to `health` (shared by the conductor's drivers).
    #[must_use]
    pub fn with_health(mut self, health: Arc<PeerHealth>) -> Self {
        self.health = health;
        self
    }

    /// The label under which calls to the node's BMC are reported to [`PeerHealth`];
    /// `None` when its driver_info names none.
    pub fn bmc_of(node: &Node) -> Option<String> {
        Self::target(node).ok().map(|t| t.bmc())
    }

    fn target(node: &Node) -> Result<Target, DriverError> {
        let addr = required_str(node, "redfish_address")?;
        let base = if addr.contains("://") { addr.to_owned() } else { format!("https://{addr}") };
        let parsed = reqwest::Url::parse(&base).map_err(|e| DriverError::InvalidDriverInfo {
            message: format!("driver_info.redfish_address '{addr}' is not a URL: {e}"),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(DriverError::InvalidDriverInfo {
                message: format!("driver_info.redfish_address '{addr}' must be http(s)://host"),
            });
        }
        let verify = match node.driver_info.get("redfish_verify_ca") {
            None | Some(Value::Null) | Some(Value::Bool(true)) => Verify::Yes,
            Some(Value::Bool(false)) => Verify::No,
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "on" => Verify::Yes,
                "false" | "no" | "0" | "off" => Verify::No,
                _ => Verify::CaFile(s.clone()),
            },
            Some(_) => {
                return Err(DriverError::InvalidDriverInfo {
                    message: "driver_info.redfish_verify_ca must be a boolean or a path".into(),
                });
            }
        };
        let system_id = info_str(node, "redfish_system_id").map(|s| {
            if s.starts_with('/') { s.to_owned() } else { format!("/redfish/v1/Systems/{s}") }
        });
        Ok(Target {
            base: base.trim_end_matches('/').to_owned(),
            system_id,
            username: info_str(node, "redfish_username").map(str::to_owned),
            password: node
                .driver_info
                .get("redfish_password")
                .and_then(Value::as_str)
                .map(str::to_owned),
            verify,
        })
    }

    fn client(&self, t: &Target) -> Result<reqwest::Client, DriverError> {
        match &t.verify {
            Verify::Yes => Ok(self.verify.clone()),
            Verify::No => Ok(self.insecure.clone()),
            Verify::CaFile(path) => {
                let pem = std::fs::read(path).map_err(|e| DriverError::InvalidDriverInfo {
                    message: format!("driver_info.redfish_verify_ca: cannot read {path}: {e}"),
                })?;
                // As Ironic (requests' `verify=<path>`): the bundle's CAs and nothing else.
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .ok()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| DriverError::InvalidDriverInfo {
                        message: format!(
                            "driver_info.redfish_verify_ca: {path} holds no PEM certificate"
                        ),
                    })?;
                client_builder(&self.cfg).tls_certs_only(certs).build().map_err(|e| {
                    DriverError::InvalidDriverInfo {
                        message: format!("driver_info.redfish_verify_ca: {path}: {e}"),
                    }
                })
            }
        }
    }

    /// One request with retries; returns the JSON body (or Null).
    async fn request(
        &self,
        t: &Target,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, DriverError> {
        self.request_core(t, method, path, body, false)
            .await
            .map(Option::unwrap_or_default)
            .map_err(|(_, e)| e)
    }

    /// [`Self::request`]; with `allow_missing`, a 404 answer is `Ok(None)`.
    async fn request_or_missing(
        &self,
        t: &Target,
        method: Method,
        path: &str,
        body: Option<&Value>,
        allow_missing: bool,
    ) -> Result<Option<Value>, DriverError> {
        self.request_core(t, method, path, body, allow_missing).await.map_err(|(_, e)| e)
    }

    /// [`Self::request`], with the HTTP status of a refusal (4xx other than 401/403) beside
    /// the error, for callers that try another resource on some refusals.
    async fn request_status(
        &self,
        t: &Target,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, (Option<StatusCode>, DriverError)> {
        self.request_core(t, method, path, body, false).await.map(Option::unwrap_or_default)
    }

    /// One request with retries: the body read, `None` for a 404 when `allow_missing`, or
    /// the error with the refusal's status. Whether the BMC answered goes to [`PeerHealth`].
    async fn request_core(
        &self,
        t: &Target,
        method: Method,
        path: &str,
        body: Option<&Value>,
        allow_missing: bool,
    ) -> Result<Option<Value>, (Option<StatusCode>, DriverError)> {
        let res = self.request_attempts(t, method, path, body, allow_missing).await;
        self.health.record(&t.bmc(), &res.as_ref().map_err(|(_, e)| e.clone()));
        res
    }

    async fn request_attempts(
        &self,
        t: &Target,
        method: Method,
        path: &str,
        body: Option<&Value>,
        allow_missing: bool,
    ) -> Result<Option<Value>, (Option<StatusCode>, DriverError)> {
        let client = self.client(t).map_err(|e| (None, e))?;
        let url = format!("{}{}", t.base, path);
        let attempts = self.cfg.attempts.max(1);
        let mut last = None;
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(self.cfg.retry_interval_ms)).await;
            }
            let mut req = client.request(method.clone(), &url).header("Accept", "application/json");
            if let Some(user) = &t.username {
                req = req.basic_auth(user, t.password.as_deref());
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let err = if e.is_timeout() {
                        DriverError::Timeout {
                            bmc: t.bmc(),
                            after: dur(self.cfg.request_timeout_secs),
                        }
                    } else if common::tls::is_untrusted_certificate(&e) {
                        // Say which knob decides, not only what rustls saw.
                        DriverError::Unreachable {
                            bmc: t.bmc(),
                            detail: format!(
                                "the BMC's TLS certificate is not trusted ({}); set \
                                 driver_info.redfish_verify_ca to the path of its CA bundle, or \
                                 to false to skip verification",
                                transport_detail(&e)
                            ),
                        }
                    } else {
                        DriverError::Unreachable { bmc: t.bmc(), detail: transport_detail(&e) }
                    };
                    tracing::warn!(bmc = %t.base, attempt, error = %err, "redfish request failed");
                    last = Some(err);
                    continue;
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err((None, DriverError::AuthFailed { bmc: t.bmc() }));
            }
            let text = resp.text().await.unwrap_or_default();
            if status.is_server_error() {
                last = Some(DriverError::Bmc {
                    bmc: t.bmc(),
                    message: format!("{method} {path} answered {status}"),
                });
                continue;
            }
            if allow_missing && status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                return Err((
                    Some(status),
                    DriverError::Bmc {
                        bmc: t.bmc(),
                        message: format!(
                            "{method} {path} answered {status}: {}",
                            redfish_message(&text)
                        ),
                    },
                ));
            }
            return Ok(Some(serde_json::from_str(&text).unwrap_or(Value::Null)));
        }
        Err((
            None,
            last.unwrap_or_else(|| DriverError::Unreachable {
                bmc: t.bmc(),
                detail: "no attempt was made".into(),
            }),
        ))
    }

    /// The system's path: `redfish_system_id`, or the only member of `/redfish/v1/Systems`.
    async fn system_path(&self, t: &Target) -> Result<String, DriverError> {
        if let Some(s) = &t.system_id {
            return Ok(s.clone());
        }
        let systems = self.request(t, Method::GET, "/redfish/v1/Systems", None).await?;
        let members: Vec<&str> = systems
            .get("Members")
            .and_then(Value::as_array)
            .map(|m| m.iter().filter_map(|x| x.get("@odata.id").and_then(Value::as_str)).collect())
            .unwrap_or_default();
        match members.as_slice() {
            [one] => Ok((*one).to_owned()),
            _ => Err(DriverError::InvalidDriverInfo {
                message: format!(
                    "driver_info.redfish_system_id is required: the BMC at {} has {} systems",
                    t.base,
                    members.len()
                ),
            }),
        }
    }

    async fn read_power(&self, t: &Target, system: &str) -> Result<PowerState, DriverError> {
        let sys = self.request(t, Method::GET, system, None).await?;
        match sys.get("PowerState").and_then(Value::as_str) {
            Some("On" | "PoweringOn") => Ok(PowerState::On),
            Some("Off" | "PoweringOff") => Ok(PowerState::Off),
            other => Err(DriverError::Bmc {
                bmc: t.bmc(),
                message: format!("unexpected PowerState {other:?}"),
            }),
        }
    }

    async fn reset(&self, t: &Target, system: &str, kind: &str) -> Result<(), DriverError> {
        let path = format!("{system}/Actions/ComputerSystem.Reset");
        self.request(t, Method::POST, &path, Some(&json!({ "ResetType": kind }))).await.map(|_| ())
    }

    async fn wait_for(
        &self,
        t: &Target,
        system: &str,
        want: PowerState,
    ) -> Result<PowerState, DriverError> {
        let deadline = Instant::now() + self.power_timeout;
        loop {
            if self.read_power(t, system).await? == want {
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

fn transport_detail(e: &reqwest::Error) -> String {
    // reqwest's Display includes the URL but never credentials (basic auth is a header).
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The `error.message` of a Redfish error body, or the start of the text.
fn redfish_message(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/@Message.ExtendedInfo/0/Message")
                .or_else(|| v.pointer("/error/message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| text.chars().take(200).collect())
}

impl PowerDriver for RedfishDriver {
    fn name(&self) -> &'static str {
        "redfish"
    }

    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        Self::target(node).map(|_| ())
    }

    fn get_power_state<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, PowerState> {
        Box::pin(async move {
            let t = Self::target(node)?;
            let system = self.system_path(&t).await?;
            self.read_power(&t, &system).await
        })
    }

    fn set_power_state<'a>(
        &'a self,
        node: &'a Node,
        target: PowerState,
    ) -> DriverFuture<'a, PowerState> {
        Box::pin(async move {
            let t = Self::target(node)?;
            let system = self.system_path(&t).await?;
            let current = self.read_power(&t, &system).await?;
            match target {
                PowerState::On if current == PowerState::On => Ok(PowerState::On),
                PowerState::Off | PowerState::SoftOff if current == PowerState::Off => {
                    Ok(PowerState::Off)
                }
                PowerState::On => {
                    self.reset(&t, &system, "On").await?;
                    self.wait_for(&t, &system, PowerState::On).await
                }
                PowerState::Off => {
                    self.reset(&t, &system, "ForceOff").await?;
                    self.wait_for(&t, &system, PowerState::Off).await
                }
                PowerState::SoftOff => {
                    self.reset(&t, &system, "GracefulShutdown").await?;
                    self.wait_for(&t, &system, PowerState::Off).await
                }
                PowerState::Rebooting | PowerState::SoftRebooting => {
                    if current == PowerState::Off {
                        self.reset(&t, &system, "On").await?;
                    } else if target == PowerState::SoftRebooting {
                        self.reset(&t, &system, "GracefulRestart").await?;
                    } else {
                        self.reset(&t, &system, "ForceRestart").await?;
                    }
                    self.wait_for(&t, &system, PowerState::On).await
                }
                PowerState::Error => Err(DriverError::error_state_requested("redfish")),
            }
        })
    }
}

impl ManagementDriver for RedfishDriver {
    fn name(&self) -> &'static str {
        "redfish"
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
            let Some(target) = redfish_target(device) else {
                return Err(self.unsupported(&format!("boot device '{device}'")));
            };
            let t = Self::target(node)?;
            let system = self.system_path(&t).await?;
            let mode = match BootMode::of(node) {
                BootMode::Uefi => "UEFI",
                BootMode::Bios => "Legacy",
            };
            let body = json!({"Boot": {
                "BootSourceOverrideTarget": target,
                "BootSourceOverrideEnabled": if persistent { "Continuous" } else { "Once" },
                "BootSourceOverrideMode": mode,
            }});
            self.request(&t, Method::PATCH, &system, Some(&body)).await.map(|_| ())
        })
    }

    fn get_boot_device<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, BootDeviceInfo> {
        Box::pin(async move {
            let t = Self::target(node)?;
            let system = self.system_path(&t).await?;
            let sys = self.request(&t, Method::GET, &system, None).await?;
            let boot = sys.get("Boot");
            let device = boot
                .and_then(|b| b.get("BootSourceOverrideTarget"))
                .and_then(Value::as_str)
                .and_then(from_redfish_target);
            let persistent = boot
                .and_then(|b| b.get("BootSourceOverrideEnabled"))
                .and_then(Value::as_str)
                .map(|e| e == "Continuous");
            Ok(BootDeviceInfo { device, persistent })
        })
    }

    fn supported_boot_devices<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, Vec<BootDevice>> {
        Box::pin(async move {
            let t = Self::target(node)?;
            let system = self.system_path(&t).await?;
            let sys = self.request(&t, Method::GET, &system, None).await?;
            let allowed = sys
                .pointer("/Boot/BootSourceOverrideTarget@Redfish.AllowableValues")
                .and_then(Value::as_array);
            // As Ironic: without AllowableValues, every device the driver can map.
            Ok(match allowed {
                Some(a) => {
                    let mut out: Vec<BootDevice> = a
                        .iter()
                        .filter_map(Value::as_str)
                        .filter_map(from_redfish_target)
                        .collect();
                    out.dedup();
                    out
                }
                None => {
                    BootDevice::ALL.into_iter().filter(|d| redfish_target(*d).is_some()).collect()
                }
            })
        })
    }

    fn inject_nmi<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            let t = Self::target(node)?;
            let system = self.system_path(&t).await?;
            self.reset(&t, &system, "Nmi").await
        })
    }

    fn set_boot_mode<'a>(&'a self, node: &'a Node, mode: BootMode) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            let t = Self::target(node)?;
            let system = self.system_path(&t).await?;
            let mode = match mode {
                BootMode::Uefi => "UEFI",
                BootMode::Bios => "Legacy",
            };
            let body = json!({"Boot": {"BootSourceOverrideMode": mode}});
            self.request(&t, Method::PATCH, &system, Some(&body)).await.map(|_| ())
        })
    }

    fn set_secure_boot<'a>(&'a self, node: &'a Node, enabled: bool) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            let t = Self::target(node)?;
            let system = self.system_path(&t).await?;
            let sys = self.request(&t, Method::GET, &system, None).await?;
            let Some(path) = sys.pointer("/SecureBoot/@odata.id").and_then(Value::as_str) else {
                return Err(self.unsupported("secure boot (the system has no SecureBoot resource)"));
            };
            let body = json!({"SecureBootEnable": enabled});
            self.request(&t, Method::PATCH, path, Some(&body)).await.map(|_| ())
        })
    }

    fn supported_indicators<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, Vec<Indicator>> {
        Box::pin(self.indicators(node))
    }

    fn get_indicator_state<'a>(
        &'a self,
        node: &'a Node,
        component: &'a str,
        name: &'a str,
    ) -> DriverFuture<'a, IndicatorState> {
        Box::pin(self.indicator_state(node, component, name))
    }

    fn set_indicator_state<'a>(
        &'a self,
        node: &'a Node,
        component: &'a str,
        name: &'a str,
        state: IndicatorState,
    ) -> DriverFuture<'a, ()> {
        Box::pin(self.set_indicator(node, component, name, state))
    }

    fn get_virtual_media<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, Vec<VirtualMedia>> {
        Box::pin(self.virtual_media(node))
    }

    fn attach_virtual_media<'a>(
        &'a self,
        node: &'a Node,
        device: VmediaDevice,
        image_url: &'a str,
    ) -> DriverFuture<'a, ()> {
        Box::pin(self.insert_media(node, device, image_url))
    }

    fn detach_virtual_media<'a>(
        &'a self,
        node: &'a Node,
        devices: Option<&'a [VmediaDevice]>,
    ) -> DriverFuture<'a, ()> {
        Box::pin(self.eject_media(node, devices))
    }
}

/// Ironic's boot device → `BootSourceOverrideTarget`; `None` where Redfish has none.
fn redfish_target(d: BootDevice) -> Option<&'static str> {
    match d {
        BootDevice::Pxe => Some("Pxe"),
        BootDevice::Disk => Some("Hdd"),
        BootDevice::Cdrom => Some("Cd"),
        BootDevice::Bios => Some("BiosSetup"),
        BootDevice::UefiHttp => Some("UefiHttp"),
        BootDevice::Safe => None,
    }
}

fn from_redfish_target(s: &str) -> Option<BootDevice> {
    BootDevice::ALL.into_iter().find(|d| redfish_target(*d) == Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy::NodeId;

    #[test]
    fn test_target_parsing() {
        let mut n = Node::new(NodeId::new_v4(), "redfish", chrono::Utc::now());
        assert!(matches!(RedfishDriver::target(&n), Err(DriverError::InvalidDriverInfo { .. })));
        n.driver_info.insert("redfish_address".into(), "10.0.0.1:8000".into());
        n.driver_info.insert("redfish_system_id".into(), "abc".into());
        n.driver_info.insert("redfish_verify_ca".into(), "False".into());
        let t = RedfishDriver::target(&n).unwrap();
        assert_eq!(t.base, "https://10.0.0.1:8000");
        assert_eq!(t.system_id.as_deref(), Some("/redfish/v1/Systems/abc"));
        assert!(matches!(t.verify, Verify::No));
        n.driver_info.insert("redfish_address".into(), "ftp://x".into());
        assert!(RedfishDriver::target(&n).is_err());
    }

    #[test]
    fn test_redfish_message_extraction() {
        let body = r#"{"error":{"message":"bad","@Message.ExtendedInfo":[{"Message":"Nope"}]}}"#;
        assert_eq!(redfish_message(body), "Nope");
        assert_eq!(redfish_message("plain"), "plain");
    }
}
