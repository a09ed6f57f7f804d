//! Test support (feature `testing`): a fleet that plays the ramdisk side of the simulated
//! agent ([`sim::SimAgent`]: lookup + heartbeat, as the API records them), and helpers that
//! perform the API's first transition + publish, or record an allocation + publish.

use std::time::Duration;

use chrono::Utc;
use deploy::internal_info::{AgentApi, AgentSession, Heartbeat};
use deploy::provision::{Refusal, RequestArgs, apply_request};
use deploy::{ApiVerb, Node, NodeHistory, NodeId, PowerState, ProvisionState, PublicError};
use proto::events::event::Payload;
use proto::events::{Event, ProvisionRequested};
use sim::SimAgent;
use store::{DataStore, NodeListQuery, NodeModify};
use tokio_util::sync::CancellationToken;

use crate::ConductorConfig;

pub mod iscsi;
pub mod peers;

/// Record a lookup + heartbeat for `node` as the API does (token minted on first lookup,
/// agent_url and timestamps in `driver_internal_info`), then publish `AgentHeartbeat`.
/// Returns false when the node is not in a state that expects an agent.
///
/// # Errors
/// Database errors.
pub async fn heartbeat(
    store: &DataStore,
    bus: &bus::DynBus,
    agent: &SimAgent,
    node: NodeId,
) -> Result<bool, PublicError> {
    heartbeat_at(store, bus, agent, node, Utc::now()).await
}

/// [`heartbeat`] recorded as made `at` (the simulated clock's time).
///
/// # Errors
/// Database errors.
pub async fn heartbeat_at(
    store: &DataStore,
    bus: &bus::DynBus,
    agent: &SimAgent,
    node: NodeId,
    at: chrono::DateTime<Utc>,
) -> Result<bool, PublicError> {
    if agent.vanished(node) {
        return Ok(false);
    }
    let url = agent.url();
    let recorded = store
        .node_modify(node, |n| {
            if !n.provision_state.is_wait() || n.power_state != Some(PowerState::On) {
                return Ok(false);
            }
            // An iSCSI deploy's ramdisk calls back with pass_deploy_info ([`iscsi`]).
            if n.provision_state == ProvisionState::WaitCallBack
                && deploy::iscsi::IscsiSession::active(n)
            {
                return Ok(false);
            }
            let dii = &mut n.driver_internal_info;
            let token = match AgentSession::from_internal_info(dii).token {
                Some(t) => t,
                None => {
                    let t = agent.mint_token(node);
                    AgentSession::set_token(dii, &t);
                    t
                }
            };
            agent.register_token(&token, node);
            let hb = Heartbeat {
                url: &url,
                at,
                version: Some(SIM_AGENT_VERSION),
                verify_ca: None,
                status: None,
                api: AgentApi::Ferric,
            };
            AgentSession::record_heartbeat(dii, &hb);
            Ok::<_, PublicError>(true)
        })
        .await?;
    let n = match recorded {
        NodeModify::Updated { node: n, value: true } => n,
        NodeModify::NotFound => return Err(PublicError::not_found("Node", node)),
        _ => return Ok(false),
    };
    publish_agent_event(bus, node, &url, &n.provision_state.to_string()).await?;
    Ok(true)
}

/// Publish the `AgentHeartbeat` event the API publishes after it recorded something from
/// the ramdisk (a heartbeat, or inspection data posted to `/v1/continue_inspection`).
///
/// # Errors
/// The bus refused the event.
pub async fn publish_heartbeat(
    bus: &bus::DynBus,
    node: NodeId,
    provision_state: &str,
) -> Result<(), PublicError> {
    publish_agent_event(bus, node, "", provision_state).await
}

async fn publish_agent_event(
    bus: &bus::DynBus,
    node: NodeId,
    url: &str,
    provision_state: &str,
) -> Result<(), PublicError> {
    let ev = Event {
        event_id: uuid::Uuid::new_v4().to_string(),
        node_uuid: node.to_string(),
        request_id: String::new(),
        created_at: Utc::now().to_rfc3339(),
        payload: Some(Payload::AgentHeartbeat(proto::events::AgentHeartbeat {
            agent_url: url.to_owned(),
            agent_version: SIM_AGENT_VERSION.into(),
            provision_state: provision_state.to_owned(),
        })),
    };
    bus::publish_event(bus.as_ref(), &ev).await.map_err(|e| PublicError::unavailable(e.to_string()))
}

/// The version the simulated agent reports in its heartbeats.
const SIM_AGENT_VERSION: &str = "sim-1.0";

/// The ramdisk side of every simulated node: when a node enters a wait state powered on,
/// its "ramdisk boots" and heartbeats; a periodic pass catches missed events.
pub async fn run_fleet(
    store: DataStore,
    bus: bus::DynBus,
    agent: SimAgent,
    period: Duration,
    token: CancellationToken,
) {
    let mut sub = match bus.subscribe(&[bus::routing::CHANGED]).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "fleet cannot subscribe; polling only");
            None
        }
    };
    let mut tick = tokio::time::interval(period);
    loop {
        let from_event = tokio::select! {
            biased;
            () = token.cancelled() => return,
            d = async { match sub.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => d,
            _ = tick.tick() => None,
        };
        if let Some(d) = from_event {
            if let Ok(ev) = bus::decode_event(&d)
                && let Some(Payload::NodeStateChanged(c)) = &ev.payload
                && matches!(
                    c.provision_state.as_str(),
                    "wait call-back"
                        | "clean wait"
                        | "inspect wait"
                        | "rescue wait"
                        | "service wait"
                )
                && let Ok(id) = ev.node_uuid.parse::<NodeId>()
            {
                let (s, b, a) = (store.clone(), bus.clone(), agent.clone());
                tokio::spawn(async move {
                    if booted_ramdisk(&s, id).await {
                        let _ = heartbeat(&s, &b, &a, id).await;
                    }
                });
            }
            continue;
        }
        let q = NodeListQuery {
            provision_states: vec![
                ProvisionState::WaitCallBack,
                ProvisionState::CleanWait,
                ProvisionState::InspectWait,
                ProvisionState::RescueWait,
                ProvisionState::ServiceWait,
            ],
            ..Default::default()
        };
        if let Ok(nodes) = crate::periodic::list_all_store(&store, q).await {
            for n in nodes
                .into_iter()
                .filter(|n| !crate::workflows::agent_called_back(n) && in_ramdisk(n))
            {
                let _ = heartbeat(&store, &bus, &agent, n.uuid).await;
            }
        }
    }
}

/// Whether a waiting node runs the ramdisk: every wait state does but `service wait`, which
/// does only while servicing boots it for agent steps (a `wait` step leaves the instance up).
fn in_ramdisk(n: &deploy::Node) -> bool {
    n.provision_state != ProvisionState::ServiceWait
        || n.driver_internal_info
            .get(deploy::internal_info::keys::SERVICE_RAMDISK)
            .and_then(serde_json::Value::as_str)
            == Some("booting")
}

async fn booted_ramdisk(store: &DataStore, id: NodeId) -> bool {
    store.node_fetch(id).await.is_ok_and(|n| in_ramdisk(&n))
}

/// What the API does for `PUT states/provision`, through the same rules
/// ([`deploy::provision::apply_request`]): refuse a locked node (`NodeLocked`) or a verb the
/// node does not allow (`Conflict`), else commit the first transition with a conditional
/// update, record history and publish `ProvisionRequested`.
///
/// # Errors
/// `NodeLocked`, `Conflict` (also when another request won the race), database errors.
pub async fn request_provision(
    store: &DataStore,
    bus: &bus::DynBus,
    node: NodeId,
    verb: ApiVerb,
) -> Result<Node, PublicError> {
    request_provision_with(store, bus, node, verb, &RequestArgs::default()).await
}

/// [`request_provision`] with what the request carries besides its verb (clean or service
/// steps, a config drive).
///
/// # Errors
/// As [`request_provision`].
pub async fn request_provision_with(
    store: &DataStore,
    bus: &bus::DynBus,
    node: NodeId,
    verb: ApiVerb,
    args: &RequestArgs<'_>,
) -> Result<Node, PublicError> {
    request_provision_at(store, bus, node, verb, args, Utc::now()).await
}

/// [`request_provision_with`] made `now` (the simulated clock's time, which the history
/// entry carries).
///
/// # Errors
/// As [`request_provision`].
pub async fn request_provision_at(
    store: &DataStore,
    bus: &bus::DynBus,
    node: NodeId,
    verb: ApiVerb,
    args: &RequestArgs<'_>,
    now: chrono::DateTime<Utc>,
) -> Result<Node, PublicError> {
    let (stored, change) = store
        .node_modify(node, |n| {
            apply_request(n, verb, args, now).map_err(|r| match r {
                Refusal::Locked { holder } => {
                    PublicError::NodeLocked { node: node.to_string(), holder }
                }
                other => PublicError::conflict(format!("{verb:?} refused: {other:?}")),
            })
        })
        .await?
        .into_result(node)?;
    store
        .history_insert(&NodeHistory {
            uuid: uuid::Uuid::new_v4(),
            node_uuid: node,
            severity: "INFO".into(),
            event_type: "provisioning".into(),
            event: change.history_text(),
            conductor: None,
            from_state: Some(change.from),
            to_state: Some(change.to),
            state: Some(change.to),
            target_state: None,
            duration_secs: None,
            project: None,
            created_at: now,
        })
        .await?;
    let ev = Event {
        event_id: uuid::Uuid::new_v4().to_string(),
        node_uuid: node.to_string(),
        request_id: format!("req-{}", uuid::Uuid::new_v4()),
        created_at: now.to_rfc3339(),
        payload: Some(Payload::ProvisionRequested(ProvisionRequested {
            verb: format!("{verb:?}").to_lowercase(),
            event: change.event.to_string(),
            from_state: change.from.to_string(),
            to_state: change.to.to_string(),
            ..Default::default()
        })),
    };
    bus::publish_event(bus.as_ref(), &ev)
        .await
        .map_err(|e| PublicError::unavailable(e.to_string()))?;
    Ok(stored)
}

/// What the API does for `PUT states/power`.
///
/// # Errors
/// `NodeLocked`, `Conflict`, database errors.
pub async fn request_power(
    store: &DataStore,
    bus: &bus::DynBus,
    node: NodeId,
    target: PowerState,
) -> Result<Node, PublicError> {
    let mut n = store.node_fetch(node).await?;
    if let Some(holder) = &n.reservation {
        return Err(PublicError::NodeLocked { node: node.to_string(), holder: holder.clone() });
    }
    n.target_power_state = Some(target);
    let stored = store.node_update(&n).await?;
    let ev = Event {
        event_id: uuid::Uuid::new_v4().to_string(),
        node_uuid: node.to_string(),
        payload: Some(Payload::PowerRequested(proto::events::PowerRequested {
            target: target.to_string(),
            timeout_secs: 0,
        })),
        ..Default::default()
    };
    bus::publish_event(bus.as_ref(), &ev)
        .await
        .map_err(|e| PublicError::unavailable(e.to_string()))?;
    Ok(stored)
}

/// A fake-hardware node with the given deploy interface, an image to deploy, inserted.
///
/// # Errors
/// Database errors.
pub async fn insert_fake_node(
    store: &DataStore,
    deploy_interface: &str,
) -> Result<Node, PublicError> {
    store.node_insert(&fake_node(NodeId::new_v4(), deploy_interface, Utc::now())).await
}

/// A fake-hardware node with the given deploy interface and an image to deploy (not
/// stored).
pub fn fake_node(id: NodeId, deploy_interface: &str, now: chrono::DateTime<Utc>) -> Node {
    let mut n = Node::new(id, "fake-hardware", now);
    n.interfaces.deploy = Some(deploy_interface.into());
    n.instance_info.insert("image_source".into(), "http://127.0.0.1:9/image.raw".into());
    n.instance_info.insert(
        "image_checksum".into(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
    );
    n
}

/// A new allocation's body as the API stores it: `resource_class`, no traits, no candidate
/// nodes, no owner, state `allocating`.
pub fn allocation_body(resource_class: &str) -> deploy::model::JsonObject {
    let mut body = deploy::model::JsonObject::new();
    body.insert("resource_class".into(), resource_class.into());
    body.insert("traits".into(), serde_json::json!([]));
    body.insert("candidate_nodes".into(), serde_json::json!([]));
    body.insert("state".into(), crate::allocation::state::ALLOCATING.into());
    body.insert("last_error".into(), serde_json::Value::Null);
    body.insert("extra".into(), serde_json::json!({}));
    body.insert("owner".into(), serde_json::Value::Null);
    body
}

/// What the API does for `POST /v1/allocations` without a node: insert the allocation
/// (named `name`, with `body`, see [`allocation_body`]) and, when `bus` is given, publish
/// `AllocationRequested` (`None`: the event is lost).
///
/// # Errors
/// Database or bus errors.
pub async fn request_allocation(
    store: &DataStore,
    bus: Option<&bus::DynBus>,
    name: Option<&str>,
    body: deploy::model::JsonObject,
) -> Result<store::Resource, PublicError> {
    let mut r = store::Resource::new(store::ResourceKind::Allocation, uuid::Uuid::new_v4(), body);
    r.name = name.map(str::to_owned);
    let r = store.resource_insert(&r, &store::Duplicates::default()).await?;
    if let Some(bus) = bus {
        let ev = Event {
            event_id: uuid::Uuid::new_v4().to_string(),
            node_uuid: String::new(),
            request_id: String::new(),
            created_at: Utc::now().to_rfc3339(),
            payload: Some(Payload::AllocationRequested(proto::events::AllocationRequested {
                allocation_uuid: r.uuid.to_string(),
            })),
        };
        bus::publish_event(bus.as_ref(), &ev)
            .await
            .map_err(|e| PublicError::unavailable(e.to_string()))?;
    }
    Ok(r)
}

/// A node an allocation of `resource_class` can take: fake hardware, `available`, powered
/// off, inserted.
///
/// # Errors
/// Database errors.
pub async fn insert_free_node(
    store: &DataStore,
    resource_class: &str,
    f: impl FnOnce(&mut Node),
) -> Result<Node, PublicError> {
    let mut n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
    n.provision_state = ProvisionState::Available;
    n.power_state = Some(PowerState::Off);
    n.resource_class = Some(resource_class.into());
    f(&mut n);
    store.node_insert(&n).await
}

/// A conductor config with short intervals for tests.
pub fn fast_config(hostname: &str, queue: &str) -> ConductorConfig {
    ConductorConfig {
        hostname: hostname.into(),
        queue: queue.into(),
        heartbeat_interval_secs: 1.0,
        sweep_interval_secs: 1.0,
        check_timeouts_interval_secs: 0.5,
        callback_timeout_secs: 30.0,
        // Also heals power requests whose message was lost.
        power_sync_interval_secs: 1.0,
        lock_retry_interval_ms: 50,
        lock_retry_attempts: 40,
        drain_timeout_secs: 5.0,
        ..ConductorConfig::default()
    }
}

/// Poll `f` until it returns `Some`, or panic with `what` after `deadline`.
///
/// # Panics
/// When the deadline passes.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    // Every 50 ms for the short waits of real-time tests; a long wait (a test in simulated
    // time waiting out a 30-minute timeout) looks about 2,000 times, at most every 5 s, so
    // the checks do not cost more than the workflow they watch.
    let every = (deadline / 2000).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Check that `history` holds every transition of a full direct-deploy lifecycle with
/// automated cleaning (manage, provide, deploy, undeploy); returns the recorded transitions
/// in order.
///
/// # Panics
/// When one is missing.
pub fn assert_lifecycle_history(history: &[NodeHistory]) -> Vec<(ProvisionState, ProvisionState)> {
    use ProvisionState as S;
    let transitions: Vec<(S, S)> =
        history.iter().filter_map(|h| Some((h.from_state?, h.to_state?))).collect();
    for want in [
        (S::Enroll, S::Verifying),
        (S::Verifying, S::Manageable),
        (S::Manageable, S::Cleaning),
        (S::Cleaning, S::CleanWait),
        (S::CleanWait, S::Cleaning),
        (S::Cleaning, S::Available),
        (S::Available, S::Deploying),
        (S::Deploying, S::WaitCallBack),
        (S::WaitCallBack, S::Deploying),
        (S::Deploying, S::Active),
        (S::Active, S::Deleting),
        (S::Deleting, S::Cleaning),
    ] {
        assert!(transitions.contains(&want), "history lacks {want:?}: {transitions:?}");
    }
    transitions
}
