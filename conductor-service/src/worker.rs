//! Waking nodes: the bus consumer and the periodic sweep both call [`wake`], which re-reads
//! the node, takes its lock, decides from the database what to do and runs it.
//!
//! A node is driven by at most one task per conductor (a wake for a node already being
//! driven here only asks that task to look again when it finishes) and by at most one
//! conductor (the lock). Panics in a workflow are caught: the node fails with
//! `last_error` and the lock is released.
//!
//! Allocation events name no node: they go to [`crate::allocation::process`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bus::{Consumer, Delivery, OutgoingMessage, QueueSpec, routing};
use deploy::{NodeId, PublicError};
use futures::FutureExt;
use proto::events::event::Payload;
use tracing::Instrument;

use crate::Ctx;
use crate::task::{LockGuard, Task, WorkflowError};
use crate::workflows::{self, work_for};

/// Removes the node from the in-flight set when the driving task ends, however it ends.
struct InflightEntry<'a> {
    ctx: &'a Ctx,
    node: NodeId,
}

impl InflightEntry<'_> {
    /// Whether another wake arrived meanwhile (and clears the flag); removes the entry when
    /// not, so the decision and the removal are atomic.
    fn rerun_requested(&self) -> bool {
        let mut map = self.ctx.inflight.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&self.node) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                map.remove(&self.node);
                false
            }
        }
    }
}

impl Drop for InflightEntry<'_> {
    fn drop(&mut self) {
        self.ctx.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.node);
    }
}

/// How often [`wake`] looks at a node again right after answering a management call.
const MANAGEMENT_RELOOKS: usize = 4;

/// Tells the delivery that woke a node when the node is claimed: locked by this conductor,
/// found with nothing to do, already being driven here, or failed before any of these (the
/// error). From then on the node's recorded state and lock carry the work, and the message
/// can be acknowledged ([`crate::budget`]).
struct Claim(Option<tokio::sync::oneshot::Sender<Result<(), PublicError>>>);

impl Claim {
    fn claimed(&mut self) {
        self.finish(&Ok(()));
    }

    fn finish(&mut self, res: &Result<(), PublicError>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(res.clone());
        }
    }
}

/// Drive `node` if it needs work. Returns once the work is committed (or there was none,
/// or another conductor holds the node for longer than the lock retries).
///
/// # Errors
/// A database error; the caller may retry (the node's recorded state is unchanged).
pub async fn wake(ctx: &Arc<Ctx>, node: NodeId) -> Result<(), PublicError> {
    wake_claiming(ctx, node, &mut Claim(None)).await
}

async fn wake_claiming(ctx: &Arc<Ctx>, node: NodeId, claim: &mut Claim) -> Result<(), PublicError> {
    {
        let mut map = ctx.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(again) = map.get_mut(&node) {
            *again = true;
            claim.claimed();
            return Ok(());
        }
        map.insert(node, false);
    }
    let entry = InflightEntry { ctx, node };
    drive_while_asked(ctx, node, &entry, claim).await
}

/// Drive the node until no wake arrived while it was being driven.
async fn drive_while_asked(
    ctx: &Arc<Ctx>,
    node: NodeId,
    entry: &InflightEntry<'_>,
    claim: &mut Claim,
) -> Result<(), PublicError> {
    loop {
        // After a management call the node may still need its workflow or power change;
        // bounded, so a request that cannot be answered (database trouble) cannot spin.
        for _ in 0..MANAGEMENT_RELOOKS {
            if drive_once(ctx, node, claim).await? != Some(workflows::Work::Management) {
                break;
            }
        }
        if !entry.rerun_requested() {
            return Ok(());
        }
    }
}

/// [`wake`] for spawning: owns its context and logs failures. Boxed in a plain function so
/// the compiler checks `Send` once, with concrete lifetimes (async closures in the store
/// otherwise trip rustc's higher-ranked `Send` inference at nested spawn sites).
pub fn wake_owned(ctx: Arc<Ctx>, node: NodeId) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        if let Err(e) = wake(&ctx, node).await {
            tracing::warn!(node = %node, error = %common::ErrorChain(&e), "could not drive node");
        }
    })
}

/// One look at the node; returns the work it ran, if any. The work runs on a worker of
/// the node's lane ([`crate::budget`]), held until it ends.
async fn drive_once(
    ctx: &Arc<Ctx>,
    id: NodeId,
    claim: &mut Claim,
) -> Result<Option<workflows::Work>, PublicError> {
    let interval = Duration::from_millis(ctx.cfg.lock_retry_interval_ms);
    let mut worker = None;
    let mut lock_first_try = None;
    for attempt in 0..=ctx.cfg.lock_retry_attempts {
        let node = match ctx.store.node_fetch(id).await {
            Ok(n) => n,
            Err(PublicError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(work) = work_for(&node) else {
            tracing::debug!(node = %id, state = %node.provision_state, "nothing to do");
            if crate::boot_iface::unsettled(&node) {
                crate::boot_iface::settle_idle(ctx, id).await;
            }
            return Ok(None);
        };
        if let Some(op) = crate::admission::starts(&node, work) {
            let busy = ctx.tasks.main_available() == 0;
            if let crate::admission::Decision::Wait { position, waiting } =
                ctx.admission.request(ctx, &node, op, busy)
            {
                tracing::debug!(node = %id, ?op, position, waiting, "waiting to be admitted");
                claim.claimed();
                // Nodes ahead whose BMC or image server is full let this one go first.
                ctx.admission.pump(ctx);
                if !node.driver_internal_info.contains_key(crate::admission::MARKER) {
                    crate::admission::show(ctx, id, op, position, waiting).await;
                }
                return Ok(None);
            }
        }
        if worker.is_none() {
            let silent = ctx.drivers.bmc_silent(&node);
            if silent {
                tracing::debug!(node = %id, "BMC silent on its last call; slow lane");
            }
            worker = Some(ctx.tasks.acquire(silent).await);
        }
        let lock_since = *lock_first_try.get_or_insert_with(std::time::Instant::now);
        match LockGuard::acquire(ctx, id).await {
            Ok((guard, node)) => {
                crate::metrics::lock_acquired(lock_since.elapsed());
                claim.claimed();
                return Ok(run_locked(ctx, guard, node).await);
            }
            Err(PublicError::NodeLocked { holder, .. }) => {
                crate::metrics::lock_conflict();
                tracing::debug!(node = %id, holder, attempt, "node locked; retrying");
                tokio::select! {
                    biased;
                    () = ctx.token.cancelled() => return Ok(None),
                    () = tokio::time::sleep(interval) => {}
                }
            }
            Err(PublicError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    // Another task keeps the node; it re-reads the state when done, and the sweep heals
    // anything left behind.
    crate::metrics::lock_given_up();
    tracing::info!(node = %id, "node stayed locked; leaving it to its holder and the sweep");
    Ok(None)
}

/// Run the node's work under the lock; returns the work run.
async fn run_locked(
    ctx: &Arc<Ctx>,
    guard: LockGuard,
    node: deploy::Node,
) -> Option<workflows::Work> {
    let id = node.uuid;
    let Some(work) = work_for(&node) else {
        guard.release().await;
        return None;
    };
    let span = tracing::info_span!("workflow", otel.name = %format!("workflow {work:?}"),
        node_id = %id, work = ?work, state = %node.provision_state);
    if continues_operation(work) {
        // Work that continues after an asynchronous wait joins the trace of the workflow that
        // started the operation, unless the message that woke it already carried that trace.
        bus::trace::join_node_trace(&span, &node.driver_internal_info);
    }
    let admitted = crate::admission::starts(&node, work).is_some();
    let mut task = Task { ctx: ctx.clone(), node };
    if admitted {
        crate::admission::clear(&mut task).await;
    }
    let timer = crate::metrics::workflow_started(work);
    let res =
        AssertUnwindSafe(workflows::run(&mut task, work)).catch_unwind().instrument(span).await;
    timer.finish(&res, task.node.provision_state.is_failed());
    match res {
        Ok(Ok(())) => {}
        Ok(Err(WorkflowError::StateChanged { expected, found, .. })) => {
            tracing::info!(node = %id, %expected, %found, "state changed concurrently; stopped");
        }
        Ok(Err(WorkflowError::Shutdown)) => {
            tracing::info!(node = %id, "stopped by shutdown; the node keeps its recorded state");
        }
        Ok(Err(e @ WorkflowError::Store(_))) => {
            tracing::error!(node = %id, error = %common::ErrorChain(&e), "database error; will retry");
        }
        Ok(Err(WorkflowError::Failed(msg))) => {
            // `run` records failures itself; this is a failure while recording one.
            tracing::error!(node = %id, error = msg, "workflow failed");
        }
        Err(_panic) => {
            tracing::error!(node = %id, "workflow panicked; failing the node");
            if let Ok(n) = ctx.store.node_fetch(id).await {
                task.node = n;
                let msg =
                    "Internal error: the conductor's workflow crashed; see the conductor logs";
                if let Err(e) = workflows::fail_current(&mut task, msg).await {
                    tracing::error!(node = %id, error = %common::ErrorChain(&e), "could not fail the node");
                }
            }
        }
    }
    crate::boot_iface::settle(&mut task).await;
    guard.release().await;
    ctx.admission.settled(ctx, &task.node);
    Some(work)
}

/// Whether `work` continues an operation started earlier (the agent called back), which
/// belongs to the trace of the workflow that started it.
fn continues_operation(work: workflows::Work) -> bool {
    use workflows::Work as W;
    matches!(
        work,
        W::ResumeDeploy | W::ResumeClean | W::ResumeInspect | W::ResumeRescue | W::ResumeService
    )
}

/// Where a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// This conductor's own queue, where the API sends the work of the nodes the hash ring
    /// gives this conductor.
    Own,
    /// The shared work queue: allocations, and node work whose publisher knew no conductor
    /// for the node.
    Shared,
    /// The own queue of a conductor that left, handed over ([`crate::handover`]).
    Departed,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Own => "own",
            Source::Shared => "shared",
            Source::Departed => "departed",
        }
    }
}

/// How long a conductor's own queue outlives its last use (a consumer or a declaration)
/// before the broker deletes it: the conductors hand over a departed conductor's queue for
/// [`crate::handover::WINDOW`], and then nobody uses it.
const OWN_QUEUE_EXPIRES: Duration = Duration::from_secs(30 * 60);

/// Header counting how often node work was sent on ([`forward`]).
const FORWARDS_HEADER: &str = "ferric-forwards";
/// Forwards after which node work is done where it is: conductors whose views of the ring
/// differ for a moment must not pass it back and forth (the node lock makes any conductor
/// safe).
const MAX_FORWARDS: u32 = 2;

/// The work queue every conductor consumes: allocations, and node work whose publisher knew
/// no conductor for the node (which is sent on to the node's conductor, see [`forward`]).
fn shared_queue(ctx: &Ctx) -> QueueSpec {
    QueueSpec {
        queue: ctx.cfg.queue.clone(),
        patterns: vec![
            routing::PROVISION.into(),
            routing::POWER.into(),
            routing::MANAGEMENT.into(),
            routing::HEARTBEAT.into(),
            routing::ALLOCATION.into(),
        ],
        prefetch: ctx.cfg.prefetch,
        max_attempts: 10,
        dead_letters: None,
        expires: None,
    }
}

/// The own queue of the conductor `hostname`: the work of the nodes the ring gives it,
/// published with [`routing::conductor_key`]. Its dead letters go to the shared queue's
/// dead-letter queue, which lasts; the queue itself expires once its conductor is gone and
/// it has been handed over.
pub(crate) fn own_queue(ctx: &Ctx, hostname: &str) -> QueueSpec {
    QueueSpec {
        queue: format!("{}.{hostname}", ctx.cfg.queue),
        patterns: vec![routing::conductor_key(hostname)],
        prefetch: ctx.cfg.prefetch,
        max_attempts: 10,
        dead_letters: Some(bus::dead_letter_queue(&ctx.cfg.queue)),
        expires: Some(OWN_QUEUE_EXPIRES),
    }
}

/// The queues this conductor consumes, with their source.
pub(crate) fn queues(ctx: &Ctx) -> [(QueueSpec, Source); 2] {
    [(own_queue(ctx, &ctx.cfg.hostname), Source::Own), (shared_queue(ctx), Source::Shared)]
}

/// Start consuming `spec` (declaring and binding it), retrying while the bus refuses;
/// `None` when shutdown comes first.
pub async fn subscribe(ctx: &Ctx, spec: &QueueSpec) -> Option<Consumer> {
    loop {
        tokio::select! {
            biased;
            () = ctx.token.cancelled() => return None,
            c = ctx.bus.consume(spec.clone()) => match c {
                Ok(c) => {
                    tracing::info!(queue = %spec.queue, "consuming");
                    return Some(c);
                }
                Err(e) => {
                    tracing::warn!(queue = %spec.queue, error = %common::ErrorChain(&e), "cannot consume; retrying");
                    tokio::select! {
                        () = ctx.token.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            },
        }
    }
}

/// Handle deliveries from `consumer` (see [`subscribe`]) until shutdown, re-subscribing to
/// `spec` when the bus drops the consumer.
pub(crate) async fn consume(
    ctx: Arc<Ctx>,
    mut consumer: Consumer,
    spec: QueueSpec,
    source: Source,
) {
    loop {
        loop {
            let delivery = tokio::select! {
                // Shutdown first; `next` is cancel-safe (an unreceived delivery stays queued).
                biased;
                () = ctx.token.cancelled() => return,
                d = consumer.next() => d,
            };
            let Some(d) = delivery else {
                tracing::warn!(queue = %spec.queue, "consumer closed; re-subscribing");
                break;
            };
            let c = ctx.clone();
            ctx.tracker.spawn(handle_delivery_boxed(c, d, source));
        }
        let Some(again) = subscribe(&ctx, &spec).await else { return };
        consumer = again;
    }
}

/// Send node work that came off the shared queue or a departed conductor's queue on to the
/// node's conductor on the ring; `true` when it was sent (the caller acknowledges it). The
/// work stays here when this conductor owns the node, when no owner is known (the rings
/// cannot be read, or no live conductor serves the node), when the node is gone, after
/// [`MAX_FORWARDS`] forwards, or when the publish fails.
async fn forward(ctx: &Ctx, d: &Delivery, id: NodeId, source: Source) -> bool {
    let forwards: u32 = d.headers.get(FORWARDS_HEADER).and_then(|h| h.parse().ok()).unwrap_or(0);
    if forwards >= MAX_FORWARDS {
        return false;
    }
    let Ok(node) = ctx.store.node_fetch(id).await else { return false };
    let Some(owner) = crate::ownership::owner(ctx, &node).await else { return false };
    if owner == ctx.cfg.hostname {
        return false;
    }
    let mut headers = d.headers.clone();
    headers.insert(FORWARDS_HEADER.to_owned(), (forwards + 1).to_string());
    let msg =
        OutgoingMessage { message_id: d.message_id.clone(), headers, payload: d.payload.clone() };
    match ctx.bus.publish(&routing::conductor_key(&owner), msg).await {
        Ok(()) => {
            tracing::debug!(node = %id, conductor = %owner, from = source.label(), "work sent on to the node's conductor");
            crate::metrics::forwarded(source.label());
            true
        }
        Err(e) => {
            tracing::warn!(node = %id, conductor = %owner, error = %common::ErrorChain(&e),
                "cannot send work on to the node's conductor; doing it here");
            false
        }
    }
}

/// [`wake_claiming`] for spawning from a delivery: an error after the claim is logged here
/// (one before it goes to the delivery, which requeues the message).
fn wake_claiming_owned(
    ctx: Arc<Ctx>,
    node: NodeId,
    tx: tokio::sync::oneshot::Sender<Result<(), PublicError>>,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let mut claim = Claim(Some(tx));
        let res = wake_claiming(&ctx, node, &mut claim).await;
        if let Err(e) = &res
            && claim.0.is_none()
        {
            tracing::warn!(node = %node, error = %common::ErrorChain(e), "could not drive node");
        }
        claim.finish(&res);
    })
}

pub(crate) fn handle_delivery_boxed(
    ctx: Arc<Ctx>,
    d: Delivery,
    source: Source,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(handle_delivery(ctx, d, source))
}

async fn handle_delivery(ctx: Arc<Ctx>, d: Delivery, source: Source) {
    let span = tracing::info_span!("delivery", routing_key = %d.routing_key, queue = source.label(),
        message_id = %d.message_id, attempt = d.attempt, node_id = tracing::field::Empty,
        allocation_id = tracing::field::Empty);
    bus::trace::set_parent_from(&span, &d.headers);
    async move {
        let ev = match bus::decode_event(&d) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %common::ErrorChain(&e), "undecodable message; dead-lettering");
                let _ = d.dead_letter().await;
                return;
            }
        };
        let kind = crate::metrics::event_kind(ev.payload.as_ref());
        let _in_progress = crate::metrics::delivery_started(kind, &ev.created_at, ctx.clock.now());
        // Allocation events name no node (the conductor picks one).
        if let Some(Payload::AllocationRequested(p)) = &ev.payload {
            handle_allocation(&ctx, d, &p.allocation_uuid).await;
            return;
        }
        let Ok(id) = ev.node_uuid.parse::<NodeId>() else {
            tracing::warn!(node = %ev.node_uuid, "message without a valid node id; dead-lettering");
            let _ = d.dead_letter().await;
            return;
        };
        tracing::Span::current().record("node_id", tracing::field::display(id));
        // Work routed here by the ring is done here; work from elsewhere goes to its node's
        // conductor when that is another one.
        if source != Source::Own && forward(&ctx, &d, id, source).await {
            if let Err(e) = d.ack().await {
                tracing::warn!(error = %common::ErrorChain(&e), "ack failed; the message will come again");
            }
            return;
        }
        if let Some(Payload::ProvisionRequested(p)) = &ev.payload
            && p.event == "abort"
        {
            tracing::info!(node = %id, from = %p.from_state, "abort requested");
        }
        // The work runs in its own task; the message waits only until the node is claimed
        // (or the delivery budget ends), so slow work never holds the prefetch window.
        let (tx, claimed) = tokio::sync::oneshot::channel();
        ctx.tracker.spawn(wake_claiming_owned(ctx.clone(), id, tx).instrument(tracing::Span::current()));
        match tokio::time::timeout(ctx.cfg.delivery_budget(), claimed).await {
            Ok(Ok(Err(e))) => {
                tracing::warn!(node = %id, error = %common::ErrorChain(&e), "wake failed; requeueing");
                tokio::select! {
                    () = ctx.token.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let _ = d.nack_requeue().await;
            }
            claimed => {
                if claimed.is_err() {
                    tracing::debug!(node = %id,
                        "node not claimed within the delivery budget; acknowledged, its work stays queued here");
                }
                if let Err(e) = d.ack().await {
                    tracing::warn!(error = %common::ErrorChain(&e), "ack failed; the message will come again");
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// Process the allocation and ack: failures leave it `allocating` for the allocation sweep,
/// which retries (and eventually gives up), so the message is never requeued.
async fn handle_allocation(ctx: &Arc<Ctx>, d: Delivery, allocation: &str) {
    let Ok(uuid) = allocation.parse::<uuid::Uuid>() else {
        tracing::warn!(
            allocation,
            "allocation event without a valid allocation id; dead-lettering"
        );
        let _ = d.dead_letter().await;
        return;
    };
    tracing::Span::current().record("allocation_id", tracing::field::display(uuid));
    crate::allocation::process(ctx, uuid).await;
    if let Err(e) = d.ack().await {
        tracing::warn!(error = %common::ErrorChain(&e), "ack failed; the message will come again");
    }
}
