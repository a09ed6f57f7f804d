//! `GET /ui/api/events`: the fleet's changes as Server-Sent Events.
//!
//! The source is the gRPC API's `WatchNode` over every node, called in-process with the
//! request's own headers as its metadata: the same bus subscription (state changes and
//! deploy progress), the same authentication, the same visibility (a project-scoped caller
//! gets only the nodes it may see) and the same `last_error` redaction.
//!
//! Events: `ready` once subscribed (changes from then on are delivered), then `state`
//! (`provision_state`, `target_provision_state`, `power_state`, `last_error`, `event`) and
//! `progress` (`bytes_written`, `total_bytes`, `rate_bytes_per_sec`, `phase`, `step`,
//! `step_index`, `step_count`), each with the node's `uuid`. Progress that arrives faster
//! than the client reads is coalesced to the latest per node; state changes are all kept,
//! in order. A comment every few seconds keeps proxies from closing an idle stream; the
//! stream ends after [`MAX_LIFETIME`] (the page reconnects and authenticates again).

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use proto::api::node_service_server::NodeService;
use proto::api::{self as pb, node_event::Kind};
use serde_json::{Value, json};

use crate::grpc::GrpcApi;
use crate::service::ApiState;

/// Events read from the bus at once before coalescing.
const BATCH: usize = 256;
/// How often an idle stream sends a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long one stream lasts before the page must reconnect (and so authenticate again).
pub(super) const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// `GET /ui/api/events`.
pub(super) async fn stream(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    // The stream ends when the client goes away (the body is dropped), when the service
    // shuts down (so an open page does not hold the drain), or after MAX_LIFETIME.
    let api = GrpcApi::new(state.clone(), state.shutdown.clone());
    let req = tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(headers),
        tonic::Extensions::default(),
        pb::WatchNodeRequest { node: String::new(), send_initial: false },
    );
    let watch = match api.watch_node(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return status_response(&state, &status),
    };
    let events = watch
        .take_while(|r| futures::future::ready(r.is_ok()))
        .filter_map(|r| futures::future::ready(r.ok()))
        .ready_chunks(BATCH)
        .flat_map(|batch| futures::stream::iter(coalesce(batch)))
        .map(|ev| Ok::<_, Infallible>(to_sse(&ev)));
    let ready = futures::stream::once(futures::future::ready(Ok::<_, Infallible>(
        Event::default().event("ready").data("{}"),
    )));
    let stream = ready.chain(events).take_until(tokio::time::sleep(MAX_LIFETIME));
    let mut resp =
        Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    // Reverse proxies (nginx) pass each event on at once instead of buffering the stream.
    resp.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    super::harden(&mut resp, "no-store");
    resp
}

/// The answer when the watch cannot start, in the API's error form.
fn status_response(state: &ApiState, status: &tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::Unauthenticated => return super::unauthorized(&state.auth),
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    super::json_error(code, status.message())
}

/// Keep every state change and, per node, only the latest progress of the batch (at the
/// place it had), so a slow reader gets the newest numbers and no stale ones.
fn coalesce(batch: Vec<pb::NodeEvent>) -> Vec<pb::NodeEvent> {
    let mut seen = HashSet::new();
    let mut out: Vec<pb::NodeEvent> = batch
        .into_iter()
        .rev()
        .filter(|ev| match ev.kind {
            Some(Kind::Progress(_)) => seen.insert(ev.node_uuid.clone()),
            _ => true,
        })
        .collect();
    out.reverse();
    out
}

fn text(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { Value::from(s) }
}

/// One bus event as an SSE event (`state` or `progress`), its data a JSON object.
fn to_sse(ev: &pb::NodeEvent) -> Event {
    let (name, data) = match &ev.kind {
        Some(Kind::State(s)) => (
            "state",
            json!({
                "uuid": ev.node_uuid,
                "provision_state": text(&s.provision_state),
                "target_provision_state": text(&s.target_provision_state),
                "power_state": text(&s.power_state),
                "last_error": text(&s.last_error),
                "event": text(&s.event),
                "previous_provision_state": text(&s.previous_provision_state),
                "timestamp": text(&ev.timestamp),
            }),
        ),
        Some(Kind::Progress(p)) => (
            "progress",
            json!({
                "uuid": ev.node_uuid,
                "bytes_written": p.bytes_written,
                "total_bytes": p.total_bytes,
                "rate_bytes_per_sec": p.rate_bytes_per_sec,
                "phase": text(&p.phase),
                "step": text(&p.step),
                "step_index": p.step_index,
                "step_count": p.step_count,
                "timestamp": text(&ev.timestamp),
            }),
        ),
        None => ("unknown", json!({"uuid": ev.node_uuid})),
    };
    Event::default().event(name).data(data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(node: &str, bytes: u64) -> pb::NodeEvent {
        pb::NodeEvent {
            node_uuid: node.into(),
            kind: Some(Kind::Progress(pb::DeployProgress {
                bytes_written: bytes,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn state(node: &str, s: &str) -> pb::NodeEvent {
        pb::NodeEvent {
            node_uuid: node.into(),
            kind: Some(Kind::State(pb::StateChanged {
                provision_state: s.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn test_coalesce_keeps_states_and_latest_progress() {
        let out = coalesce(vec![
            progress("a", 1),
            progress("b", 1),
            progress("a", 2),
            state("a", "active"),
            progress("a", 3),
        ]);
        let got: Vec<String> = out
            .iter()
            .map(|e| match &e.kind {
                Some(Kind::Progress(p)) => format!("{}:{}", e.node_uuid, p.bytes_written),
                Some(Kind::State(s)) => format!("{}={}", e.node_uuid, s.provision_state),
                None => String::new(),
            })
            .collect();
        assert_eq!(got, ["b:1", "a=active", "a:3"]);
    }
}
