//! `ferric.v1.NodeService` over tonic. Every method calls the same service functions as
//! REST (at the maximum microversion), so validation is identical; errors map to gRPC codes
//! in `ApiError → Status` (error.rs), which defers to `proto::status` for `PublicError`.
//!
//! Every call is authenticated from its metadata by the same [`crate::auth::Auth`] as REST
//! (`authorization` for http_basic, the identity headers in keystone mode) and checked by the
//! same [`crate::policy`] rules; `WatchNode` streams only the nodes the caller may see.

use std::pin::Pin;

use deploy::Node;
use futures::{Stream, StreamExt};
use proto::api::node_service_server::NodeService;
use proto::api::{self as pb};
use proto::events::event::Payload;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::Identity;
use crate::error::ApiError;
use crate::patch::PatchOp;
use crate::policy::{Policy, Target, p};
use crate::render::{masked_instance_info, masked_internal_info, ts};
use crate::service::{ApiState, Ctx, NodeCreate, NodeListParams, PowerRequest, ProvisionRequest};

/// The gRPC service implementation.
#[derive(Debug, Clone)]
pub struct GrpcApi {
    state: ApiState,
    shutdown: CancellationToken,
}

impl GrpcApi {
    /// A service over `state`; watch streams end when `shutdown` is cancelled.
    pub fn new(state: ApiState, shutdown: CancellationToken) -> Self {
        Self { state, shutdown }
    }

    /// Authenticate a call from its metadata.
    async fn ctx<T>(&self, req: &Request<T>) -> Result<Ctx, Status> {
        let headers = req.metadata().clone().into_headers();
        let identity = self.state.auth.authenticate(&headers).await.map_err(ApiError::from)?;
        Ok(Ctx::for_identity(identity))
    }

    /// Fetch a node the caller may act on with `policy` (404 when hidden, 403 when denied).
    async fn node_for(&self, ctx: &Ctx, ident: &str, policy: Policy) -> Result<Node, Status> {
        let n = self.state.node_by_ident(ident, ctx.version).await?;
        if policy == p::NODE_DELETE {
            self.state.authorize_delete(&ctx.identity, &n, ident)?;
        } else {
            ctx.identity.authorize_node(policy, &n, ident)?;
        }
        Ok(n)
    }
}

/// Render a node for gRPC, secrets masked as on REST.
pub fn node_to_pb(n: &Node) -> pb::Node {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    pb::Node {
        uuid: n.uuid.to_string(),
        name: s(&n.name),
        driver: n.driver.clone(),
        provision_state: n.provision_state.as_str().to_owned(),
        target_provision_state: n
            .target_provision_state
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        power_state: n.power_state.map(|p| p.as_str().to_owned()).unwrap_or_default(),
        target_power_state: n.target_power_state.map(|p| p.as_str().to_owned()).unwrap_or_default(),
        maintenance: n.maintenance,
        maintenance_reason: s(&n.maintenance_reason),
        last_error: s(&n.last_error),
        reservation: s(&n.reservation),
        conductor: s(&n.conductor),
        resource_class: s(&n.resource_class),
        owner: s(&n.owner),
        lessee: s(&n.lessee),
        driver_info_json: Value::Object(deploy::model::mask_secrets(&n.driver_info)).to_string(),
        driver_internal_info_json: Value::Object(masked_internal_info(&n.driver_internal_info))
            .to_string(),
        instance_info_json: Value::Object(masked_instance_info(&n.instance_info)).to_string(),
        properties_json: Value::Object(n.properties.clone()).to_string(),
        extra_json: Value::Object(n.extra.clone()).to_string(),
        created_at: ts(&n.created_at),
        updated_at: n.updated_at.as_ref().map(ts).unwrap_or_default(),
        provision_updated_at: n.provision_updated_at.as_ref().map(ts).unwrap_or_default(),
        instance_uuid: s(&n.instance_uuid),
        fault: s(&n.fault),
    }
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn json_field<T: serde::de::DeserializeOwned>(name: &str, raw: &str) -> Result<Option<T>, Status> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(raw)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("{name}: invalid JSON: {e}")))
}

/// A span for a gRPC call that continues the caller's W3C trace (`traceparent` metadata), so
/// the events it publishes join that trace.
fn call_span<T>(req: &Request<T>, method: &'static str) -> tracing::Span {
    let span = tracing::info_span!("grpc", method);
    let carried: std::collections::BTreeMap<String, String> = ["traceparent", "tracestate"]
        .iter()
        .filter_map(|k| Some(((*k).to_owned(), req.metadata().get(*k)?.to_str().ok()?.to_owned())))
        .collect();
    if !carried.is_empty() {
        bus::trace::set_parent_from(&span, &carried);
    }
    span
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::NodeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for GrpcApi {
    async fn get(&self, req: Request<pb::GetNodeRequest>) -> Result<Response<pb::Node>, Status> {
        let ctx = self.ctx(&req).await?;
        let n = self.node_for(&ctx, &req.get_ref().node, p::NODE_GET).await?;
        Ok(Response::new(node_to_pb(&ctx.identity.node_view(&n))))
    }

    async fn list(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let ctx = self.ctx(&req).await?;
        let r = req.into_inner();
        let params = NodeListParams {
            limit: (r.limit > 0).then_some(i64::from(r.limit)),
            marker: opt(&r.marker),
            provision_state: opt(&r.provision_state),
            driver: opt(&r.driver),
            resource_class: opt(&r.resource_class),
            owner: opt(&r.owner),
            conductor: opt(&r.conductor),
            maintenance: r.maintenance.map(|m| m.to_string()),
            sort_key: opt(&r.sort_key),
            sort_dir: opt(&r.sort_dir),
            ..NodeListParams::default()
        };
        let mut q = params.to_query(ctx.version)?;
        self.state.scope_node_list(&ctx.identity, &mut q)?;
        let nodes = self.state.node_list(&q).await?;
        let next_marker = match nodes.last() {
            Some(last) if nodes.len() == q.limit as usize => last.uuid.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.iter().map(|n| node_to_pb(&ctx.identity.node_view(n))).collect(),
            next_marker,
        }))
    }

    async fn create(
        &self,
        req: Request<pb::CreateNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let ctx = self.ctx(&req).await?;
        let r = req.into_inner();
        let body = NodeCreate {
            driver: r.driver,
            uuid: opt(&r.uuid),
            name: opt(&r.name),
            driver_info: json_field("driver_info_json", &r.driver_info_json)?,
            properties: json_field("properties_json", &r.properties_json)?,
            instance_info: json_field("instance_info_json", &r.instance_info_json)?,
            extra: json_field("extra_json", &r.extra_json)?,
            resource_class: opt(&r.resource_class),
            owner: opt(&r.owner),
            ..NodeCreate::default()
        };
        if body.driver.is_empty() {
            return Err(Status::invalid_argument("'driver' is a required property"));
        }
        let n = self.state.node_create(&ctx, body).await?;
        Ok(Response::new(node_to_pb(&ctx.identity.node_view(&n))))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let ctx = self.ctx(&req).await?;
        let r = req.into_inner();
        let ops: Vec<PatchOp> = json_field("json_patch", &r.json_patch)?.ok_or_else(|| {
            Status::invalid_argument("json_patch: a JSON Patch document is required")
        })?;
        let n = self.state.node_patch(&ctx, &r.node, &ops, None).await?;
        Ok(Response::new(node_to_pb(&ctx.identity.node_view(&n))))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        let ctx = self.ctx(&req).await?;
        self.node_for(&ctx, &req.get_ref().node, p::NODE_DELETE).await?;
        self.state.node_delete(&ctx, &req.get_ref().node).await?;
        Ok(Response::new(pb::DeleteNodeResponse {}))
    }

    async fn set_provision_state(
        &self,
        req: Request<pb::SetProvisionStateRequest>,
    ) -> Result<Response<pb::SetProvisionStateResponse>, Status> {
        let span = call_span(&req, "SetProvisionState");
        let ctx = self.ctx(&req).await?;
        let r = req.into_inner();
        self.node_for(&ctx, &r.node, p::NODE_SET_PROVISION).await?;
        let configdrive = if r.configdrive.trim_start().starts_with('{') {
            json_field::<Value>("configdrive", &r.configdrive)?
        } else {
            opt(&r.configdrive).map(Value::String)
        };
        let body = ProvisionRequest {
            target: r.target,
            configdrive,
            clean_steps: json_field("clean_steps_json", &r.clean_steps_json)?,
            deploy_steps: json_field("deploy_steps_json", &r.deploy_steps_json)?,
            rescue_password: opt(&r.rescue_password),
            ..ProvisionRequest::default()
        };
        let n = self.state.node_set_provision(&ctx, &r.node, body).instrument(span).await?;
        Ok(Response::new(pb::SetProvisionStateResponse {
            node: Some(node_to_pb(&ctx.identity.node_view(&n))),
        }))
    }

    async fn set_power_state(
        &self,
        req: Request<pb::SetPowerStateRequest>,
    ) -> Result<Response<pb::SetPowerStateResponse>, Status> {
        let span = call_span(&req, "SetPowerState");
        let ctx = self.ctx(&req).await?;
        let r = req.into_inner();
        self.node_for(&ctx, &r.node, p::NODE_SET_POWER).await?;
        let body = PowerRequest {
            target: r.target,
            timeout: (r.timeout_secs > 0).then_some(i64::from(r.timeout_secs)),
        };
        let n = self.state.node_set_power(&ctx, &r.node, body).instrument(span).await?;
        Ok(Response::new(pb::SetPowerStateResponse {
            node: Some(node_to_pb(&ctx.identity.node_view(&n))),
        }))
    }

    type WatchNodeStream = WatchStream;

    async fn watch_node(
        &self,
        req: Request<pb::WatchNodeRequest>,
    ) -> Result<Response<Self::WatchNodeStream>, Status> {
        let ctx = self.ctx(&req).await?;
        let r = req.into_inner();
        let node = if r.node.is_empty() {
            None
        } else {
            Some(self.node_for(&ctx, &r.node, p::NODE_GET).await?)
        };
        // Subscribe before reading the initial state so no change falls in between.
        let consumer = self
            .state
            .bus
            .subscribe(&[bus::routing::CHANGED, bus::routing::PROGRESS])
            .await
            .map_err(|e| Status::unavailable(format!("event bus unavailable: {e}")))?;
        let initial: Vec<Result<pb::NodeEvent, Status>> = match (&node, r.send_initial) {
            (Some(n), true) => vec![Ok(pb::NodeEvent {
                node_uuid: n.uuid.to_string(),
                node_name: n.name.clone().unwrap_or_default(),
                kind: Some(pb::node_event::Kind::State(pb::StateChanged {
                    provision_state: n.provision_state.as_str().to_owned(),
                    target_provision_state: n
                        .target_provision_state
                        .map(|t| t.as_str().to_owned())
                        .unwrap_or_default(),
                    power_state: n.power_state.map(|p| p.as_str().to_owned()).unwrap_or_default(),
                    last_error: ctx.identity.node_view(n).last_error.clone().unwrap_or_default(),
                    event: "initial".into(),
                    previous_provision_state: String::new(),
                })),
                timestamp: chrono::Utc::now().to_rfc3339(),
            })],
            _ => Vec::new(),
        };
        let filter = node.as_ref().map(|n| n.uuid.to_string());
        let name = node.as_ref().and_then(|n| n.name.clone()).unwrap_or_default();
        let visibility = Visibility::new(self.state.clone(), ctx.identity);
        let events =
            futures::stream::unfold((consumer, visibility), move |(mut consumer, mut vis)| {
                let filter = filter.clone();
                let name = name.clone();
                async move {
                    loop {
                        let delivery = consumer.next().await?;
                        let ev = match bus::decode_event(&delivery) {
                            Ok(ev) => ev,
                            Err(e) => {
                                tracing::warn!(error = %e, "watch: undecodable event skipped");
                                continue;
                            }
                        };
                        if filter.as_ref().is_some_and(|f| *f != ev.node_uuid) {
                            continue;
                        }
                        let Some(sees_error) = vis.check(&ev.node_uuid).await else { continue };
                        if let Some(mut out) = event_to_pb(ev, &name) {
                            if !sees_error
                                && let Some(pb::node_event::Kind::State(s)) = &mut out.kind
                                && !s.last_error.is_empty()
                            {
                                s.last_error = REDACTED_LAST_ERROR.into();
                            }
                            return Some((Ok(out), (consumer, vis)));
                        }
                    }
                }
            });
        let stream = futures::stream::iter(initial)
            .chain(events)
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What a lessee sees instead of a node's `last_error` (Ironic's redaction note).
const REDACTED_LAST_ERROR: &str =
    "** Value Redacted - Requires baremetal:node:get:last_error permission. **";

/// Which nodes a watcher may see, remembered for a few seconds per node so a busy stream
/// does not read the node for every progress event.
struct Visibility {
    state: ApiState,
    identity: Identity,
    seen: std::collections::HashMap<String, (std::time::Instant, Option<bool>)>,
}

impl Visibility {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(5);

    fn new(state: ApiState, identity: Identity) -> Self {
        Self { state, identity, seen: std::collections::HashMap::new() }
    }

    /// `None` when the node is hidden from the caller, else whether it sees `last_error`.
    async fn check(&mut self, node_uuid: &str) -> Option<bool> {
        if !self.identity.enforced() || self.identity.sees_all() {
            return Some(true);
        }
        if let Some((at, v)) = self.seen.get(node_uuid)
            && at.elapsed() < Self::FRESH
        {
            return *v;
        }
        let verdict = match node_uuid.parse::<deploy::NodeId>() {
            Ok(id) => match self.state.store.node_fetch(id).await {
                Ok(n) => {
                    let t = Target::node(&n);
                    self.identity
                        .allows(p::NODE_GET.rule, t)
                        .then(|| self.identity.sees_last_error(t))
                }
                Err(_) => None,
            },
            Err(_) => None,
        };
        if self.seen.len() > 10_000 {
            self.seen.clear();
        }
        self.seen.insert(node_uuid.to_owned(), (std::time::Instant::now(), verdict));
        verdict
    }
}

fn event_to_pb(ev: proto::events::Event, name: &str) -> Option<pb::NodeEvent> {
    let kind = match ev.payload? {
        Payload::NodeStateChanged(c) => pb::node_event::Kind::State(pb::StateChanged {
            provision_state: c.provision_state,
            target_provision_state: c.target_provision_state,
            power_state: c.power_state,
            last_error: c.last_error,
            event: c.event,
            previous_provision_state: c.previous_provision_state,
        }),
        Payload::DeployProgressed(p) => pb::node_event::Kind::Progress(pb::DeployProgress {
            bytes_written: p.bytes_written,
            total_bytes: p.total_bytes,
            rate_bytes_per_sec: p.rate_bytes_per_sec,
            phase: p.phase,
            step: p.step,
            step_index: p.step_index,
            step_count: p.step_count,
        }),
        Payload::ProvisionRequested(_)
        | Payload::PowerRequested(_)
        | Payload::ManagementRequested(_)
        | Payload::AgentHeartbeat(_)
        | Payload::MaintenanceChanged(_)
        | Payload::AllocationRequested(_) => return None,
    };
    Some(pb::NodeEvent {
        node_uuid: ev.node_uuid,
        node_name: name.to_owned(),
        kind: Some(kind),
        timestamp: ev.created_at,
    })
}
