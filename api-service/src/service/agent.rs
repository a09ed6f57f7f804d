//! The agent-facing endpoints: lookup (mints the agent token once) and heartbeat (checks it),
//! reference §1.11 and §4.11.

use base64::Engine;
use chrono::Utc;
use deploy::ids::MacAddress;
use deploy::internal_info::{AgentApi, Heartbeat, keys};
use deploy::model::{JsonObject, SECRET_MASK};
use deploy::{AgentSession, Node, NodeId, PublicError};
use proto::events::event::Payload;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::{ApiState, Ctx};
use crate::error::ApiError;
use crate::render::{links, masked_instance_info, masked_internal_info};

/// Query of `GET /v1/lookup`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LookupQuery {
    /// Comma-separated MAC addresses.
    pub addresses: Option<String>,
    /// Node UUID, when the agent knows it.
    pub node_uuid: Option<String>,
}

/// Body of `POST /v1/heartbeat/{node}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// URL of the agent's command API (Ferric: its gRPC URL `http://ip:port`).
    pub callback_url: String,
    /// The token received at lookup (1.62).
    pub agent_token: Option<String>,
    /// Agent version (1.36).
    pub agent_version: Option<String>,
    /// PEM of the agent's TLS certificate (1.68).
    pub agent_verify_ca: Option<String>,
    /// One-way installer status (1.72).
    pub agent_status: Option<String>,
    /// One-way installer status message (1.72).
    pub agent_status_message: Option<String>,
    /// Ferric: the command API the agent serves, `ferric` (Ferric's gRPC agent) or `ipa`
    /// (ironic-python-agent's REST API, also when absent, as IPA never sends it).
    pub agent_api: Option<String>,
}

/// A fresh agent token: 32 random bytes, urlsafe base64 without padding (43 characters),
/// like Python's `secrets.token_urlsafe()`.
pub fn mint_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Compare secrets in constant time (`subtle`), so timing does not reveal the matching
/// prefix. Only the length may differ quickly, and agent tokens all have the same length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

fn check_callback_url(url: &str, require_tls: bool) -> Result<(), ApiError> {
    if url.is_empty() {
        return Ok(());
    }
    let bad = || {
        ApiError::bad_request(format!(
            "Invalid callback_url \"{url}\": expected http(s)://host:port"
        ))
    };
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        if require_tls {
            return Err(ApiError::bad_request(
                "The callback_url must use https when TLS is required",
            ));
        }
        r
    } else {
        return Err(bad());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

impl ApiState {
    /// `GET /v1/lookup`: find the node of a booting agent and hand it its config and token.
    ///
    /// # Errors
    /// 404 below 1.22, for an unknown node, or a node in a state that expects no agent;
    /// 400 without any valid MAC or UUID.
    pub async fn agent_lookup(
        &self,
        ctx: &Ctx,
        base: &str,
        q: &LookupQuery,
    ) -> Result<Value, ApiError> {
        let v = ctx.version;
        if !v.at_least(22) {
            return Err(ApiError::RouteNotFound);
        }
        let macs: Vec<MacAddress> = q
            .addresses
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .filter_map(|s| match s.parse::<MacAddress>() {
                Ok(m) => Some(m),
                Err(_) => {
                    tracing::warn!(address = %s, "lookup: ignoring an invalid MAC address");
                    None
                }
            })
            .collect();
        let node_uuid = match q.node_uuid.as_deref().filter(|s| !s.is_empty()) {
            Some(u) => Some(u.parse::<NodeId>().map_err(|_| {
                ApiError::bad_request(format!("Expected a UUID but received {u}."))
            })?),
            None => None,
        };
        if macs.is_empty() && node_uuid.is_none() {
            return Err(ApiError::bad_request(
                "One or more of addresses and node_uuid is required for lookup (invalid MAC addresses are ignored)",
            ));
        }
        let not_found = || {
            ApiError::Public(PublicError::NotFound {
                kind: "Node",
                id: "matching the lookup".into(),
            })
        };
        let node = match node_uuid {
            Some(id) => match self.store.node_fetch(id).await {
                Ok(n) => n,
                Err(PublicError::NotFound { .. }) => return Err(not_found()),
                Err(e) => return Err(e.into()),
            },
            None => self.store.node_lookup_by_macs(&macs).await?.ok_or_else(not_found)?,
        };
        let allowed = if deploy::internal_info::fast_track_enabled(&node, self.settings.fast_track)
        {
            node.provision_state.allows_fast_track_lookup()
        } else {
            node.provision_state.allows_lookup()
        };
        if self.settings.restrict_lookup && !allowed {
            // Deliberately the same 404 as "not found" (Ironic).
            tracing::info!(node_id = %node.uuid, state = %node.provision_state, "lookup refused: state does not expect an agent");
            return Err(not_found());
        }
        let (node, token) = if v.at_least(62) { self.token_for(node).await? } else { (node, None) };
        let mut config = json!({
            "heartbeat_timeout": self.settings.ramdisk_heartbeat_timeout,
            "agent_token_required": self.settings.agent_token_required,
            "metrics": {"backend": "noop", "prepend_host": false, "prepend_uuid": false,
                        "prepend_host_reverse": true, "global_prefix": null},
            "metrics_statsd": {"statsd_host": "localhost", "statsd_port": 8125},
            "agent_md5_checksum_enable": false,
            "disable_deep_image_inspection": false,
            "permitted_image_formats": ["raw", "gpt", "qcow2", "iso"],
            "agent_skip_bmc_detect": node.driver == "redfish",
            "enable_bios_bootloader_install": false,
            "tls_min_version": "1.2",
            "tls_cipher_suites": null,
        });
        if let (Some(t), Some(obj)) = (token, config.as_object_mut()) {
            obj.insert("agent_token".into(), Value::String(t));
        }
        Ok(json!({
            "node": {
                "uuid": node.uuid.to_string(),
                "properties": node.properties,
                "instance_info": masked_instance_info(&node.instance_info),
                "driver_internal_info": masked_internal_info(&node.driver_internal_info),
                "links": links(base, "nodes", &node.uuid.to_string()),
            },
            "config": config,
        }))
    }

    /// Mint the token at the first lookup; later lookups see `******`.
    async fn token_for(&self, node: Node) -> Result<(Node, Option<String>), ApiError> {
        let id = node.uuid;
        let (node, minted) = self
            .store
            .node_modify_from(node, |n| {
                if AgentSession::of(n).token.is_some() {
                    return Ok::<_, ApiError>(None);
                }
                let t = mint_token();
                AgentSession::set_token(&mut n.driver_internal_info, &t);
                Ok(Some(t))
            })
            .await?
            .into_result(id)?;
        let session = AgentSession::of(&node);
        let (stored, pregenerated) = (session.token.as_deref(), session.token_pregenerated);
        let shown = match (&minted, stored) {
            // We minted and our write won.
            (Some(t), Some(s)) if t == s => Some(t.clone()),
            // A pre-generated token is baked into the boot media: handing it out is harmless.
            (_, Some(s)) if pregenerated => Some(s.to_owned()),
            _ => Some(SECRET_MASK.to_owned()),
        };
        if minted.is_some() {
            tracing::info!(node_id = %node.uuid, "agent token minted at lookup");
        }
        Ok((node, shown))
    }

    /// `POST /v1/heartbeat/{ident}`: record the agent's URL and liveness, wake the conductor.
    ///
    /// # Errors
    /// 404 below 1.22 or for an unknown node; 400 for a missing/wrong token, a changed
    /// callback URL or a bad URL; 409 when locked before the agent URL is known.
    pub async fn agent_heartbeat(
        &self,
        ctx: &Ctx,
        ident: &str,
        req: HeartbeatRequest,
    ) -> Result<(), ApiError> {
        let v = ctx.version;
        if !v.at_least(22) {
            return Err(ApiError::RouteNotFound);
        }
        for (set, name, since) in [
            (req.agent_version.is_some(), "agent_version", 36),
            (req.agent_token.is_some(), "agent_token", 62),
            (req.agent_verify_ca.is_some(), "agent_verify_ca", 68),
            (req.agent_status.is_some() || req.agent_status_message.is_some(), "agent_status", 72),
        ] {
            if set && !v.at_least(since) {
                return Err(ApiError::NotAcceptable(format!(
                    "The \"{name}\" field requires API version 1.{since} or later; the request used {v}."
                )));
            }
        }
        check_callback_url(&req.callback_url, self.settings.require_agent_tls)?;
        let api = match req.agent_api.as_deref() {
            None => AgentApi::Ipa,
            Some(a) => AgentApi::parse(a).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid agent_api \"{a}\": expected \"ferric\" or \"ipa\""
                ))
            })?,
        };
        let node = self.node_by_ident(ident, v).await?;
        let token_ok = |n: &Node| {
            let stored = AgentSession::of(n).token;
            match (stored.as_deref(), req.agent_token.as_deref()) {
                (Some(s), Some(given)) => constant_time_eq(s.as_bytes(), given.as_bytes()),
                (None, _) => !self.settings.agent_token_required,
                (Some(_), None) => false,
            }
        };
        if !token_ok(&node) {
            tracing::warn!(node_id = %node.uuid, "heartbeat with an invalid or missing agent token");
            return Err(ApiError::bad_request("Invalid or missing agent token received."));
        }
        let session = AgentSession::of(&node);
        if let Some(known) = &session.url
            && *known != req.callback_url
        {
            return Err(ApiError::bad_request(
                "Detected change in ramdisk provided \"callback_url\"",
            ));
        }
        // The certificate pinned at the first heartbeat stays the agent's for the session: a
        // heartbeat cannot swap in another one (Ironic refuses the same way).
        if let (Some(pinned), Some(given)) = (&session.verify_ca, &req.agent_verify_ca)
            && pinned.trim() != given.trim()
        {
            tracing::warn!(node_id = %node.uuid, "heartbeat with another agent certificate than the pinned one");
            return Err(ApiError::bad_request(
                "Detected change in ramdisk provided \"agent_verify_ca\"",
            ));
        }
        if req.agent_version.is_none() && req.agent_status.is_none() {
            return Err(ApiError::bad_request("Agent did not transmit a version"));
        }
        if let Some(holder) = &node.reservation
            && session.url.is_none()
        {
            return Err(PublicError::NodeLocked {
                node: node.uuid.to_string(),
                holder: holder.clone(),
            }
            .into());
        }
        let state = node.provision_state;
        let supported = state.heartbeat_acts() || state.heartbeat_recorded() || state.is_wait();
        if !supported {
            tracing::warn!(node_id = %node.uuid, state = %state, "heartbeat in a state that expects no agent; ignored");
            return Ok(());
        }
        let hb = Heartbeat {
            url: &req.callback_url,
            at: Utc::now(),
            version: req.agent_version.as_deref(),
            verify_ca: req.agent_verify_ca.as_deref(),
            status: req.agent_status.as_deref().map(|s| (s, req.agent_status_message.as_deref())),
            api,
        };
        let id = node.uuid;
        let wake = !state.heartbeat_recorded();
        if liveness_only(&node.driver_internal_info, &hb) {
            // Nothing in the session changes but its time: record that alone, without a
            // node write (no generation bump, so a conductor working on the node is not
            // disturbed), and wake the conductor only where heartbeats drive the work. In
            // Ironic's record-only states the node's lock holder has its own work in hand.
            if self.store.node_record_heartbeat(id, node.generation, hb.at).await? {
                tracing::debug!(node_id = %id, state = %state, "heartbeat recorded (liveness)");
                if wake {
                    self.publish_heartbeat(ctx, &node, &req).await;
                }
                return Ok(());
            }
            // The node changed since it was read: the write below re-reads and re-checks.
        }
        let (updated, ()) = self
            .store
            .node_modify_from(node, |n| {
                // Re-check on every fresh read: a power-off may have wiped the token meanwhile.
                if !token_ok(n) {
                    return Err(ApiError::bad_request("Invalid or missing agent token received."));
                }
                AgentSession::record_heartbeat(&mut n.driver_internal_info, &hb);
                Ok(())
            })
            .await?
            .into_result(id)?;
        tracing::debug!(node_id = %updated.uuid, state = %state, "heartbeat recorded");
        // The session changed (a first heartbeat, a new status): the conductor may have work
        // in any state.
        self.publish_heartbeat(ctx, &updated, &req).await;
        Ok(())
    }

    /// Wake the node's conductor after a heartbeat. The heartbeat is recorded on the node;
    /// the event only wakes its conductor sooner, so it may be lost.
    async fn publish_heartbeat(&self, ctx: &Ctx, node: &Node, req: &HeartbeatRequest) {
        // The wake-up continues the trace of the operation the agent serves (recorded on the
        // node by the conductor when it started), so the work it resumes joins that trace.
        let dii = &node.driver_internal_info;
        let span = bus::trace::node_context(dii).map(|_| {
            let span = tracing::info_span!("heartbeat", node_id = %node.uuid);
            bus::trace::join_node_trace(&span, dii);
            span
        });
        let publish = self.publish_lossy(
            ctx,
            node,
            Payload::AgentHeartbeat(proto::events::AgentHeartbeat {
                agent_url: req.callback_url.clone(),
                agent_version: req.agent_version.clone().unwrap_or_default(),
                provision_state: node.provision_state.as_str().to_owned(),
            }),
        );
        match span {
            Some(span) => publish.instrument(span).await,
            None => publish.await,
        }
    }
}

/// Whether recording `hb` would change nothing in the session `dii` holds but the time of
/// the last heartbeat (the common case: the same agent, URL and version every interval).
fn liveness_only(dii: &JsonObject, hb: &Heartbeat<'_>) -> bool {
    let mut after = dii.clone();
    AgentSession::record_heartbeat(&mut after, hb);
    // Recording only inserts keys, so comparing what it leaves is enough.
    after.iter().all(|(k, v)| k == keys::AGENT_LAST_HEARTBEAT || dii.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_token_shape_and_compare() {
        let t = mint_token();
        assert_eq!(t.len(), 43);
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(t, mint_token());
        assert!(constant_time_eq(t.as_bytes(), t.as_bytes()));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn test_liveness_only_when_the_session_is_unchanged() {
        let hb = |url: &'static str, version: &'static str| Heartbeat {
            url,
            at: Utc::now(),
            version: Some(version),
            verify_ca: None,
            status: None,
            api: AgentApi::Ferric,
        };
        let mut dii = JsonObject::new();
        assert!(!liveness_only(&dii, &hb("http://10.0.0.1:9999", "1")), "a first heartbeat");
        AgentSession::record_heartbeat(&mut dii, &hb("http://10.0.0.1:9999", "1"));
        assert!(liveness_only(&dii, &hb("http://10.0.0.1:9999", "1")));
        assert!(!liveness_only(&dii, &hb("http://10.0.0.1:9999", "2")), "a new version");
        assert!(!liveness_only(&dii, &hb("http://10.0.0.2:9999", "1")), "a new URL");
    }

    #[test]
    fn test_callback_url_rules() {
        assert!(check_callback_url("http://10.0.0.5:9999", false).is_ok());
        assert!(check_callback_url("https://[::1]:9999/", true).is_ok());
        assert!(check_callback_url("", true).is_ok());
        assert!(check_callback_url("http://10.0.0.5:9999", true).is_err());
        assert!(check_callback_url("ftp://x:1", false).is_err());
        assert!(check_callback_url("http://host", false).is_err());
    }
}
