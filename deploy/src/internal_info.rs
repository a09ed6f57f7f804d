//! `driver_internal_info`: the node's JSON bag of conductor and agent bookkeeping, its key
//! names in one place ([`keys`]), and a typed view of the agent session kept in it
//! ([`AgentSession`]).
//!
//! The agent session is what the API records when the ramdisk looks up and heartbeats
//! (token, callback URL, version, …) and what the conductor reads to call the agent back.
//! It is void once the ramdisk is gone, so every power off or reboot wipes it through the
//! one [`AgentSession::wipe`], whoever asks for the power change.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::Node;
use crate::model::JsonObject;

/// The key names of `driver_internal_info`.
pub mod keys {
    /// The agent's callback URL (`http://host:port`, its gRPC address).
    pub const AGENT_URL: &str = "agent_url";
    /// The token minted at lookup; the agent presents it on every heartbeat and call.
    pub const AGENT_SECRET_TOKEN: &str = "agent_secret_token";
    /// `true` when the token was baked into the boot media (it survives a power off).
    pub const AGENT_SECRET_TOKEN_PREGENERATED: &str = "agent_secret_token_pregenerated";
    /// The agent's version from its heartbeat.
    pub const AGENT_VERSION: &str = "agent_version";
    /// Which command API the agent serves ([`super::AgentApi`]).
    pub const AGENT_API: &str = "agent_api";
    /// IPA's hardware-manager versions from the last step listing, sent back with each step.
    pub const AGENT_HARDWARE_MANAGER_VERSION: &str = "agent_hardware_manager_version";
    /// When the agent last heartbeated (RFC 3339).
    pub const AGENT_LAST_HEARTBEAT: &str = "agent_last_heartbeat";
    /// PEM of the agent's TLS certificate.
    pub const AGENT_VERIFY_CA: &str = "agent_verify_ca";
    /// One-way installer status (`start`, `end`, `error`).
    pub const AGENT_STATUS: &str = "agent_status";
    /// One-way installer status message.
    pub const AGENT_STATUS_MESSAGE: &str = "agent_status_message";
    /// The agent command the conductor is waiting on (asked again after a takeover).
    pub const AGENT_COMMAND_ID: &str = "agent_command_id";
    /// Clean steps the agent reported (Ironic's cache; wiped with the session).
    pub const AGENT_CACHED_CLEAN_STEPS: &str = "agent_cached_clean_steps";
    /// Deploy steps the agent reported (Ironic's cache; wiped with the session).
    pub const AGENT_CACHED_DEPLOY_STEPS: &str = "agent_cached_deploy_steps";
    /// How often the conductor booted a silent ramdisk again during the current wait, and
    /// when last (`{"attempts": n, "at": rfc3339}`); wiped with the session.
    pub const RAMDISK_BOOT_RETRY: &str = "ramdisk_boot_retry";

    /// The recorded deploy plan.
    pub const DEPLOY_STEPS: &str = "deploy_steps";
    /// The index of the next deploy step to run.
    pub const DEPLOY_STEP_INDEX: &str = "deploy_step_index";
    /// The recorded (or, for a manual clean, requested) cleaning plan.
    pub const CLEAN_STEPS: &str = "clean_steps";
    /// The index of the next clean step to run.
    pub const CLEAN_STEP_INDEX: &str = "clean_step_index";
    /// Deploy steps a user asked for with `active`/`rebuild` (1.69).
    pub const USER_DEPLOY_STEPS: &str = "user_deploy_steps";
    /// Service steps a user asked for with `service` (1.87).
    pub const SERVICE_STEPS: &str = "service_steps";
    /// The index of the next service step to run.
    pub const SERVICE_STEP_INDEX: &str = "service_step_index";
    /// Where the ramdisk of a servicing with agent steps is: `booting` until its agent has
    /// heartbeated and the steps were checked against the agent's, then `up`.
    pub const SERVICE_RAMDISK: &str = "service_ramdisk";
    /// The image write's progress as the conductor last recorded it.
    pub const DEPLOY_PROGRESS: &str = "deploy_progress";
    /// The last image write's record: outcome, bytes, seconds, rate and seconds per phase.
    pub const DEPLOY_WRITE_SUMMARY: &str = "deploy_write_summary";
    /// Whether the deployed image is a whole-disk image.
    pub const IS_WHOLE_DISK_IMAGE: &str = "is_whole_disk_image";
    /// The root partition UUID or disk id the agent reported.
    pub const ROOT_UUID_OR_DISK_ID: &str = "root_uuid_or_disk_id";
    /// When the conductor last changed the power state (RFC 3339).
    pub const LAST_POWER_STATE_CHANGE: &str = "last_power_state_change";
    /// A management request the API recorded for the conductor
    /// ([`crate::management::ManagementRequest`]).
    pub const MANAGEMENT_REQUEST: &str = "management_request";
    /// The conductor's answer to it ([`crate::management::ManagementResult`]).
    pub const MANAGEMENT_RESULT: &str = "management_result";
}

/// Every key [`AgentSession::wipe`] removes (the token only when it was not pre-generated).
const SESSION_KEYS: [&str; 13] = [
    keys::AGENT_URL,
    keys::AGENT_VERSION,
    keys::AGENT_API,
    keys::AGENT_HARDWARE_MANAGER_VERSION,
    keys::AGENT_LAST_HEARTBEAT,
    keys::AGENT_VERIFY_CA,
    keys::AGENT_STATUS,
    keys::AGENT_STATUS_MESSAGE,
    keys::AGENT_COMMAND_ID,
    keys::AGENT_CACHED_CLEAN_STEPS,
    keys::AGENT_CACHED_DEPLOY_STEPS,
    keys::RAMDISK_BOOT_RETRY,
    keys::AGENT_SECRET_TOKEN,
];

/// The command API a node's agent serves, from its heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AgentApi {
    /// Ferric's gRPC agent API (`agent.v1.AgentService`): the heartbeat says
    /// `"agent_api": "ferric"`. A session recorded without the key is Ferric's too (the
    /// API records the key on every heartbeat).
    #[default]
    Ferric,
    /// ironic-python-agent's REST command API (`/v1/commands`): every agent that does not
    /// say otherwise, as Ironic's agents do not.
    Ipa,
}

impl AgentApi {
    /// The name recorded and sent in heartbeats.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentApi::Ferric => "ferric",
            AgentApi::Ipa => "ipa",
        }
    }

    /// Parse a heartbeat's `agent_api`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ferric" => Some(AgentApi::Ferric),
            "ipa" => Some(AgentApi::Ipa),
            _ => None,
        }
    }
}

/// The agent session recorded in a node's `driver_internal_info`. Empty strings read as
/// absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSession {
    /// The agent's callback URL.
    pub url: Option<String>,
    /// The agent token.
    pub token: Option<String>,
    /// The token was baked into the boot media.
    pub token_pregenerated: bool,
    /// The agent's version.
    pub version: Option<String>,
    /// When the agent last heartbeated.
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// PEM of the agent's TLS certificate.
    pub verify_ca: Option<String>,
    /// One-way installer status.
    pub status: Option<String>,
    /// The agent command the conductor is waiting on.
    pub command_id: Option<String>,
    /// The command API the agent serves.
    pub api: AgentApi,
}

/// What a heartbeat records (see [`AgentSession::record_heartbeat`]).
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat<'a> {
    /// The agent's callback URL.
    pub url: &'a str,
    /// When it arrived.
    pub at: DateTime<Utc>,
    /// The agent's version, when sent.
    pub version: Option<&'a str>,
    /// PEM of the agent's TLS certificate, when sent.
    pub verify_ca: Option<&'a str>,
    /// One-way installer status, when sent (its message is recorded with it, even if absent).
    pub status: Option<(&'a str, Option<&'a str>)>,
    /// The agent's command API.
    pub api: AgentApi,
}

fn text(dii: &JsonObject, key: &str) -> Option<String> {
    dii.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

impl AgentSession {
    /// Read the session from `driver_internal_info`.
    pub fn from_internal_info(dii: &JsonObject) -> Self {
        Self {
            url: text(dii, keys::AGENT_URL),
            token: text(dii, keys::AGENT_SECRET_TOKEN),
            token_pregenerated: dii
                .get(keys::AGENT_SECRET_TOKEN_PREGENERATED)
                .and_then(Value::as_bool)
                .unwrap_or(false),
            version: text(dii, keys::AGENT_VERSION),
            last_heartbeat: text(dii, keys::AGENT_LAST_HEARTBEAT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            verify_ca: text(dii, keys::AGENT_VERIFY_CA),
            status: text(dii, keys::AGENT_STATUS),
            command_id: text(dii, keys::AGENT_COMMAND_ID),
            api: text(dii, keys::AGENT_API).and_then(|a| AgentApi::parse(&a)).unwrap_or_default(),
        }
    }

    /// Read the session of `node`.
    pub fn of(node: &Node) -> Self {
        Self::from_internal_info(&node.driver_internal_info)
    }

    /// The agent of the current ramdisk boot has heartbeated: its URL and token are wiped on
    /// every power off and reboot, so their presence means "called back since the boot".
    pub fn called_back(&self) -> bool {
        self.url.is_some() && self.token.is_some()
    }

    /// Forget the session: the ramdisk is gone (power off, reboot). The token stays when it
    /// was pre-generated, since the next boot presents the same one.
    pub fn wipe(dii: &mut JsonObject) {
        let keep_token =
            dii.get(keys::AGENT_SECRET_TOKEN_PREGENERATED).and_then(Value::as_bool) == Some(true);
        for k in SESSION_KEYS {
            if k != keys::AGENT_SECRET_TOKEN || !keep_token {
                dii.remove(k);
            }
        }
    }

    /// Record a token minted at lookup.
    pub fn set_token(dii: &mut JsonObject, token: &str) {
        dii.insert(keys::AGENT_SECRET_TOKEN.into(), Value::String(token.to_owned()));
    }

    /// Record a heartbeat.
    pub fn record_heartbeat(dii: &mut JsonObject, hb: &Heartbeat<'_>) {
        dii.insert(keys::AGENT_URL.into(), Value::String(hb.url.to_owned()));
        dii.insert(keys::AGENT_LAST_HEARTBEAT.into(), Value::String(hb.at.to_rfc3339()));
        dii.insert(keys::AGENT_API.into(), Value::String(hb.api.as_str().to_owned()));
        if let Some(v) = hb.version {
            dii.insert(keys::AGENT_VERSION.into(), Value::String(v.to_owned()));
        }
        if let Some(ca) = hb.verify_ca {
            dii.insert(keys::AGENT_VERIFY_CA.into(), Value::String(ca.to_owned()));
        }
        if let Some((status, message)) = hb.status {
            dii.insert(keys::AGENT_STATUS.into(), Value::String(status.to_owned()));
            dii.insert(
                keys::AGENT_STATUS_MESSAGE.into(),
                message.map_or(Value::Null, |m| Value::String(m.to_owned())),
            );
        }
    }

    /// Record the agent command the conductor now waits on.
    pub fn set_command_id(dii: &mut JsonObject, command_id: &str) {
        dii.insert(keys::AGENT_COMMAND_ID.into(), Value::String(command_id.to_owned()));
    }
}

/// A non-empty string value of `driver_internal_info`.
pub fn internal_str<'a>(dii: &'a JsonObject, key: &str) -> Option<&'a str> {
    dii.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Whether fast-track applies to `node`: its `driver_info.fast_track` (a boolean or
/// Ironic's boolean strings) or else the service-wide `default` (`[deploy] fast_track`).
pub fn fast_track_enabled(node: &Node, default: bool) -> bool {
    node.driver_info.get("fast_track").and_then(bool_value).unwrap_or(default)
}

/// A boolean as Ironic reads one from a node's JSON fields: a JSON boolean, or one of
/// Ironic's boolean strings (`true`/`yes`/`on`/`1`/…, any case); `None` for anything else.
pub fn bool_value(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "on" | "y" | "yes" => Some(true),
            "0" | "f" | "false" | "off" | "n" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn heartbeat(dii: &mut JsonObject) {
        AgentSession::set_token(dii, "tok");
        AgentSession::record_heartbeat(
            dii,
            &Heartbeat {
                url: "http://10.0.0.5:9999",
                at: Utc::now(),
                version: Some("1.0"),
                verify_ca: Some("PEM"),
                status: Some(("start", None)),
                api: AgentApi::Ipa,
            },
        );
        AgentSession::set_command_id(dii, "cmd-1");
    }

    #[test]
    fn test_session_round_trip_and_called_back() {
        let mut dii = JsonObject::new();
        assert!(!AgentSession::from_internal_info(&dii).called_back());
        heartbeat(&mut dii);
        let s = AgentSession::from_internal_info(&dii);
        assert!(s.called_back());
        assert_eq!(s.url.as_deref(), Some("http://10.0.0.5:9999"));
        assert_eq!(s.token.as_deref(), Some("tok"));
        assert_eq!(s.version.as_deref(), Some("1.0"));
        assert_eq!(s.verify_ca.as_deref(), Some("PEM"));
        assert_eq!(s.status.as_deref(), Some("start"));
        assert_eq!(s.command_id.as_deref(), Some("cmd-1"));
        assert_eq!(s.api, AgentApi::Ipa);
        assert!(s.last_heartbeat.is_some());
        assert_eq!(dii[keys::AGENT_STATUS_MESSAGE], Value::Null);
        dii.insert(keys::AGENT_URL.into(), json!(""));
        assert!(!AgentSession::from_internal_info(&dii).called_back());
    }

    #[test]
    fn test_wipe_removes_every_session_key_and_nothing_else() {
        let mut dii = JsonObject::new();
        heartbeat(&mut dii);
        dii.insert(keys::AGENT_CACHED_CLEAN_STEPS.into(), json!([]));
        dii.insert(keys::AGENT_CACHED_DEPLOY_STEPS.into(), json!([]));
        dii.insert(keys::DEPLOY_STEPS.into(), json!([]));
        dii.insert(keys::ROOT_UUID_OR_DISK_ID.into(), json!("0x1"));
        AgentSession::wipe(&mut dii);
        assert_eq!(AgentSession::from_internal_info(&dii), AgentSession::default());
        let left: Vec<&str> = dii.keys().map(String::as_str).collect();
        assert_eq!(left, [keys::DEPLOY_STEPS, keys::ROOT_UUID_OR_DISK_ID]);
    }

    #[test]
    fn test_wipe_keeps_a_pregenerated_token() {
        let mut dii = JsonObject::new();
        heartbeat(&mut dii);
        dii.insert(keys::AGENT_SECRET_TOKEN_PREGENERATED.into(), json!(true));
        AgentSession::wipe(&mut dii);
        let s = AgentSession::from_internal_info(&dii);
        assert_eq!(s.token.as_deref(), Some("tok"));
        assert!(s.token_pregenerated);
        assert!(s.url.is_none() && !s.called_back());
    }
}
