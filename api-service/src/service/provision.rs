//! Provision and power requests: validated synchronously, recorded in one conditional
//! update, then announced on the bus for the conductor (reference §1.6, §2.3).

use chrono::Utc;
use deploy::provision::{Refusal, RequestArgs, apply_request};
use deploy::{AgentSession, ApiVerb, Node, PowerState, ProvisionState, PublicError};
use proto::events::event::Payload;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiState, Ctx};
use crate::error::ApiError;

/// Body of `PUT /v1/nodes/{ident}/states/provision`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// The verb: manage, provide, active/deploy, deleted/undeploy, clean, inspect, …
    pub target: String,
    /// Config drive: gzip+base64 string, URL, or (1.56) an object.
    #[schema(value_type = Option<Object>)]
    pub configdrive: Option<Value>,
    /// Steps for `clean` (1.15).
    #[schema(value_type = Option<Vec<Object>>)]
    pub clean_steps: Option<Vec<Value>>,
    /// Steps for `active`/`rebuild` (1.69).
    #[schema(value_type = Option<Vec<Object>>)]
    pub deploy_steps: Option<Vec<Value>>,
    /// Steps for `service` (1.87).
    #[schema(value_type = Option<Vec<Object>>)]
    pub service_steps: Option<Vec<Value>>,
    /// Password for `rescue` (1.38).
    pub rescue_password: Option<String>,
    /// Run out-of-band steps without the ramdisk (1.70).
    pub disable_ramdisk: Option<bool>,
    /// Runbook name/UUID (1.92) instead of `clean_steps`/`service_steps`.
    pub runbook: Option<String>,
}

/// Body of `PUT /v1/nodes/{ident}/states/power`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    /// power on, power off, rebooting, soft power off, soft rebooting.
    pub target: String,
    /// Seconds (1.27), at least 1.
    pub timeout: Option<i64>,
}

fn not_acceptable(what: &str, since: u32, v: crate::version::Version) -> ApiError {
    ApiError::NotAcceptable(format!(
        "{what} requires API version 1.{since} or later; the request used {v}."
    ))
}

fn check_steps(name: &str, steps: &[Value]) -> Result<(), ApiError> {
    for s in steps {
        let ok = s.as_object().is_some_and(|o| {
            o.get("interface").and_then(Value::as_str).is_some()
                && o.get("step").and_then(Value::as_str).is_some()
                && o.get("args").is_none_or(Value::is_object)
                && o.keys().all(|k| {
                    matches!(k.as_str(), "interface" | "step" | "args" | "priority" | "order")
                })
        });
        if !ok {
            return Err(ApiError::bad_request(format!(
                "Invalid {name}: each step must be an object with string 'interface' and 'step' and an optional object 'args'; got {s}"
            )));
        }
    }
    Ok(())
}

/// The `configdrive` of a provision request, as Ironic checks it: only with `active` or
/// `rebuild` (and on rebuild from 1.35), a string (or null), or from 1.56 an object with only
/// `meta_data`, `network_data`, `user_data` and (from 1.59) `vendor_data`.
///
/// # Errors
/// 400 or 406 as above.
pub(crate) fn check_configdrive(
    cd: &Value,
    verb: ApiVerb,
    v: crate::version::Version,
) -> Result<(), ApiError> {
    if !matches!(verb, ApiVerb::Active | ApiVerb::Rebuild) {
        return Err(ApiError::bad_request(
            "Adding a config drive is only supported when setting provision state to active or rebuild",
        ));
    }
    if verb == ApiVerb::Rebuild && !v.at_least(35) {
        return Err(not_acceptable("A config drive on rebuild", 35, v));
    }
    match cd {
        Value::String(_) | Value::Null => {}
        Value::Object(o) => {
            if !v.at_least(56) {
                return Err(not_acceptable("A config drive given as an object", 56, v));
            }
            if o.contains_key("vendor_data") && !v.at_least(59) {
                return Err(not_acceptable("Config drive vendor_data", 59, v));
            }
            if let Some(k) = o.keys().find(|k| {
                !matches!(k.as_str(), "meta_data" | "network_data" | "user_data" | "vendor_data")
            }) {
                return Err(ApiError::bad_request(format!("Invalid configdrive key '{k}'")));
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "Invalid configdrive: expected a string or an object, got {}",
                crate::patch::json_kind(other)
            )));
        }
    }
    Ok(())
}

impl ApiState {
    /// `PUT /v1/nodes/{ident}/states/provision`.
    ///
    /// # Errors
    /// 406 for a verb or field newer than the version, 400 for bad input or a transition
    /// the state machine refuses, 409 when locked, busy or stale, 404 when missing.
    pub async fn node_set_provision(
        &self,
        ctx: &Ctx,
        ident: &str,
        req: ProvisionRequest,
    ) -> Result<Node, ApiError> {
        let req = &req;
        super::waiting_for_lock(|| self.node_set_provision_once(ctx, ident, req.clone())).await
    }

    async fn node_set_provision_once(
        &self,
        ctx: &Ctx,
        ident: &str,
        req: ProvisionRequest,
    ) -> Result<Node, ApiError> {
        let v = ctx.version;
        let node = self.node_by_ident(ident, v).await?;
        let invalid_target = || {
            ApiError::bad_request(format!(
                "The requested action \"{}\" can not be performed on node \"{}\" while it is in state \"{}\".",
                req.target, node.uuid, node.provision_state
            ))
        };
        let (verb, alias) = ApiVerb::parse(&req.target).ok_or_else(invalid_target)?;
        let since = verb.min_version(alias);
        if !v.at_least(since) {
            return Err(not_acceptable(
                &format!("The \"{}\" provision target", req.target),
                since,
                v,
            ));
        }
        // Field checks, in Ironic's order: version gates, then which verb may carry what.
        let mut req = req;
        if let Some(rb) = req.runbook.take() {
            self.apply_runbook(ctx, &node, verb, &rb, &mut req).await?;
        }
        if let Some(cd) = &req.configdrive {
            check_configdrive(cd, verb, v)?;
        }
        match (&req.clean_steps, verb) {
            (Some(steps), ApiVerb::Clean) => check_steps("clean_steps", steps)?,
            (None, ApiVerb::Clean) => {
                return Err(ApiError::bad_request(format!(
                    "\"clean_steps\" is required when setting target provision state to {}",
                    req.target
                )));
            }
            (Some(_), _) => {
                return Err(ApiError::bad_request(format!(
                    "\"clean_steps\" is only valid when setting target provision state to clean, not {}",
                    req.target
                )));
            }
            (None, _) => {}
        }
        if let Some(steps) = &req.deploy_steps {
            if !v.at_least(69) {
                return Err(not_acceptable("\"deploy_steps\"", 69, v));
            }
            if !matches!(verb, ApiVerb::Active | ApiVerb::Rebuild) {
                return Err(ApiError::bad_request(format!(
                    "\"deploy_steps\" is only valid when setting target provision state to active or rebuild, not {}",
                    req.target
                )));
            }
            check_steps("deploy_steps", steps)?;
        }
        if let Some(steps) = &req.service_steps {
            if verb != ApiVerb::Service {
                return Err(ApiError::bad_request(
                    "\"service_steps\" is only valid with the service target",
                ));
            }
            if steps.is_empty() {
                return Err(ApiError::bad_request(
                    "\"service_steps\" is required when setting target provision state to service",
                ));
            }
            check_steps("service_steps", steps)?;
        } else if verb == ApiVerb::Service {
            return Err(ApiError::bad_request(
                "\"service_steps\" is required when setting target provision state to service",
            ));
        }
        if req.disable_ramdisk.is_some() && !v.at_least(70) {
            return Err(not_acceptable("\"disable_ramdisk\"", 70, v));
        }
        match (&req.rescue_password, verb) {
            (Some(p), ApiVerb::Rescue) if !p.trim().is_empty() => {}
            (_, ApiVerb::Rescue) => {
                return Err(ApiError::bad_request(
                    "A non-empty \"rescue_password\" is required when setting target provision state to rescue",
                ));
            }
            (Some(_), _) => {
                return Err(ApiError::bad_request(
                    "\"rescue_password\" is only valid when setting target provision state to rescue",
                ));
            }
            (None, _) => {}
        }
        // The lock, maintenance, protection, the state machine, then what the verb needs
        // (Ironic's order), checked again on every fresh read should another writer win.
        // Only the hash of a rescue password is kept (see deploy::rescue).
        let rescue_hash = match (&req.rescue_password, verb) {
            (Some(p), ApiVerb::Rescue) => Some(
                deploy::rescue::hash(p, self.settings.rescue_password_hash)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
            _ => None,
        };
        let args = RequestArgs {
            configdrive: req.configdrive.as_ref(),
            clean_steps: req.clean_steps.as_deref(),
            deploy_steps: req.deploy_steps.as_deref(),
            service_steps: req.service_steps.as_deref(),
            rescue_password_hash: rescue_hash.as_deref(),
        };
        let now = Utc::now();
        let (updated, change) = self
            .store
            .node_modify_from(node.clone(), |n| {
                apply_request(n, verb, &args, now).map_err(|r| refused(r, n, &req.target))
            })
            .await?
            .into_result(node.uuid)?;
        let (from, to) = (change.from, change.to);
        tracing::info!(node_id = %updated.uuid, verb = %req.target, from = %from, to = %to, "provision state change requested");
        let text = change.history_text();
        self.history(
            &updated,
            "provisioning",
            text,
            (Some(from), Some(to)),
            node.provision_updated_at,
        )
        .await;
        let payload = Payload::ProvisionRequested(proto::events::ProvisionRequested {
            verb: req.target.clone(),
            event: verb.event().as_str().to_owned(),
            from_state: from.as_str().to_owned(),
            to_state: to.as_str().to_owned(),
            // The config drive and the rescue password stay in the database (the conductor
            // reads them from the node): events are seen by every watcher and broker admin.
            configdrive: String::new(),
            clean_steps_json: req
                .clean_steps
                .as_ref()
                .map(|s| Value::Array(s.clone()).to_string())
                .unwrap_or_default(),
            deploy_steps_json: req
                .deploy_steps
                .as_ref()
                .map(|s| Value::Array(s.clone()).to_string())
                .unwrap_or_default(),
            rescue_password: String::new(),
        });
        self.publish(ctx, &updated, payload).await;
        self.publish_changed(ctx, &updated, from, verb.event().as_str()).await;
        Ok(updated)
    }

    /// Replace a request's `runbook` by its steps, as Ironic's API does: the runbook must be
    /// visible to the caller (public, or owned by its project), approved for the node (from
    /// 1.112 one of the runbook's traits is a node trait; before, its name is), and the verb
    /// must be `clean` or `service` without steps of its own. The steps run in their
    /// `order`; the runbook's `disable_ramdisk` applies.
    ///
    /// # Errors
    /// 406 below 1.92, 404 for an unknown or invisible runbook, 400 otherwise.
    async fn apply_runbook(
        &self,
        ctx: &Ctx,
        node: &Node,
        verb: ApiVerb,
        ident: &str,
        req: &mut ProvisionRequest,
    ) -> Result<(), ApiError> {
        let v = ctx.version;
        if !v.at_least(92) {
            return Err(not_acceptable("\"runbook\"", 92, v));
        }
        let rb = self.store.resource_fetch_by_ident(store::ResourceKind::Runbook, ident).await?;
        let public = rb.body.get("public").and_then(Value::as_bool).unwrap_or(false);
        let owner = rb.body.get("owner").and_then(Value::as_str);
        let visible = ctx.identity.sees_all()
            || public
            || owner.is_some_and(|o| ctx.identity.project_id.as_deref() == Some(o));
        if !visible {
            return Err(PublicError::not_found("Runbook", ident).into());
        }
        let list = |key: &str| -> Vec<String> {
            rb.body
                .get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        if v.at_least(112) {
            let traits = list("traits");
            if traits.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "Runbook {} has no traits configured. Please ask an administrator to add traits to the runbook.",
                    rb.uuid
                )));
            }
            if !traits.iter().any(|t| node.traits.contains(t)) {
                let mut sorted = traits;
                sorted.sort();
                return Err(ApiError::bad_request(format!(
                    "This runbook has not been approved for use on this node {}. The node does not have any of the runbook's traits {sorted:?}. Please ask an administrator to add a matching trait to your node.",
                    node.uuid
                )));
            }
        } else if !rb.name.as_ref().is_some_and(|n| node.traits.contains(n)) {
            return Err(ApiError::bad_request(format!(
                "This runbook has not been approved for use on this node {}. Please ask an administrator to add it to your node traits.",
                node.uuid
            )));
        }
        let mut steps: Vec<Value> =
            rb.body.get("steps").and_then(Value::as_array).cloned().unwrap_or_default();
        steps.sort_by_key(|s| s.get("order").and_then(Value::as_i64).unwrap_or(i64::MAX));
        let steps: Vec<Value> = steps
            .into_iter()
            .map(|s| {
                json!({"interface": s.get("interface").cloned().unwrap_or(Value::Null),
                       "step": s.get("step").cloned().unwrap_or(Value::Null),
                       "args": s.get("args").cloned().unwrap_or_else(|| json!({})),
                       "order": s.get("order").cloned().unwrap_or(Value::Null)})
            })
            .collect();
        let slot = match verb {
            ApiVerb::Clean => &mut req.clean_steps,
            ApiVerb::Service => &mut req.service_steps,
            _ => {
                return Err(ApiError::bad_request(
                    "\"runbooks\" is only valid when setting target provision state to any of ['clean', 'service']",
                ));
            }
        };
        if slot.is_some() {
            let what = if verb == ApiVerb::Clean { "clean_steps" } else { "service_steps" };
            return Err(ApiError::bad_request(format!(
                "Please provide either \"{what}\" or a runbook, but not both."
            )));
        }
        *slot = Some(steps);
        req.disable_ramdisk = rb.body.get("disable_ramdisk").and_then(Value::as_bool);
        tracing::info!(node_id = %node.uuid, runbook = %rb.uuid, verb = ?verb, "runbook applied");
        Ok(())
    }

    /// `PUT /v1/nodes/{ident}/states/power`.
    ///
    /// # Errors
    /// 406 for soft targets/timeout below 1.27, 400 for a bad target or timeout or while
    /// cleaning, 409 when locked or a power action is already running.
    pub async fn node_set_power(
        &self,
        ctx: &Ctx,
        ident: &str,
        req: PowerRequest,
    ) -> Result<Node, ApiError> {
        let req = &req;
        super::waiting_for_lock(|| self.node_set_power_once(ctx, ident, req.clone())).await
    }

    async fn node_set_power_once(
        &self,
        ctx: &Ctx,
        ident: &str,
        req: PowerRequest,
    ) -> Result<Node, ApiError> {
        let v = ctx.version;
        let node = self.node_by_ident(ident, v).await?;
        let target: PowerState =
            req.target.parse().ok().filter(|t| *t != PowerState::Error).ok_or_else(|| {
                ApiError::bad_request(format!("Invalid power state {} requested", req.target))
            })?;
        if matches!(target, PowerState::SoftOff | PowerState::SoftRebooting) && !v.at_least(27) {
            return Err(not_acceptable(&format!("Power target \"{}\"", req.target), 27, v));
        }
        if let Some(t) = req.timeout {
            if !v.at_least(27) {
                return Err(not_acceptable("The power \"timeout\"", 27, v));
            }
            if t < 1 {
                return Err(ApiError::bad_request(format!(
                    "Invalid timeout value {t}: it must be at least 1 second"
                )));
            }
        }
        if matches!(node.provision_state, ProvisionState::Cleaning | ProvisionState::CleanWait) {
            return Err(ApiError::bad_request(format!(
                "Can not change power state of node {} while it is in state \"{}\".",
                node.uuid, node.provision_state
            )));
        }
        if let Some(holder) = &node.reservation {
            return Err(PublicError::NodeLocked {
                node: node.uuid.to_string(),
                holder: holder.clone(),
            }
            .into());
        }
        if let Some(running) = node.target_power_state {
            return Err(PublicError::conflict(format!(
                "Node {} is busy: a power action to \"{running}\" is in progress",
                node.uuid
            ))
            .into());
        }
        let mut upd = node.clone();
        upd.target_power_state = Some(
            if matches!(target, PowerState::On | PowerState::Rebooting | PowerState::SoftRebooting)
            {
                PowerState::On
            } else {
                PowerState::Off
            },
        );
        upd.last_error = None;
        if target != PowerState::On {
            // A power-off or reboot ends the ramdisk: its agent URL and token are void
            // (Ironic wipes them in node_power_action), unless the token was baked in.
            AgentSession::wipe(&mut upd.driver_internal_info);
        }
        let updated = self.store.node_update(&upd).await?;
        tracing::info!(node_id = %updated.uuid, target = %target, "power state change requested");
        let timeout_secs = req.timeout.and_then(|t| u32::try_from(t).ok()).unwrap_or(0);
        self.publish(
            ctx,
            &updated,
            Payload::PowerRequested(proto::events::PowerRequested {
                target: target.as_str().to_owned(),
                timeout_secs,
            }),
        )
        .await;
        Ok(updated)
    }
}

/// Ironic's status and message for a refused provision request on `node`.
fn refused(r: Refusal, node: &Node, target: &str) -> ApiError {
    match r {
        Refusal::Locked { holder } => {
            PublicError::NodeLocked { node: node.uuid.to_string(), holder }.into()
        }
        Refusal::InMaintenance => ApiError::bad_request(format!(
            "The provisioning operation can't be performed on node {} because it's in maintenance mode.",
            node.uuid
        )),
        // Ironic refuses inspection with UnsupportedDriverExtension (400) and wraps the
        // rescue refusal in InstanceRescueFailure (sent as 500 by Ironic; a 400 here: the
        // request, not the service, is at fault).
        Refusal::Unsupported { driver, interface } => {
            let unsupported = deploy::hardware::unsupported(&driver, interface);
            ApiError::bad_request(if interface == "rescue" {
                format!(
                    "Failed to rescue instance {} for node {}: Validation failed: {unsupported}",
                    node.instance_uuid.as_deref().unwrap_or("None"),
                    node.uuid
                )
            } else {
                unsupported
            })
        }
        Refusal::Protected => ApiError::Forbidden(format!(
            "Node {} is protected and cannot be undeployed, rebuilt or deleted",
            node.uuid
        )),
        Refusal::Busy { state } => {
            PublicError::conflict(format!("Node {} is busy: {state}", node.uuid)).into()
        }
        Refusal::InvalidTransition { state } => ApiError::bad_request(format!(
            "The requested action \"{target}\" can not be performed on node \"{}\" while it is in state \"{state}\".",
            node.uuid
        )),
        Refusal::MissingImageSource => ApiError::bad_request(format!(
            "Cannot deploy node {}: instance_info is missing image_source",
            node.uuid
        )),
    }
}
