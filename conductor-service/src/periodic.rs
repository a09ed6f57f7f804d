//! Periodic tasks (reference §5.4): liveness heartbeat, takeover of dead conductors' nodes
//! and stale-lock cleanup, the sweep that heals lost wake-ups, callback timeouts and the
//! power-state sync. The sweep, the callback timeouts and the power sync act only on the
//! nodes the conductors' hash ring gives this conductor ([`crate::ownership`]); releasing a
//! dead conductor's locks is anyone's job. The allocations' sweep is
//! [`crate::allocation::sweep`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use deploy::internal_info::keys;
use deploy::{Node, PowerState, ProvisionState as S};
use proto::events::event::Payload;
use store::NodeListQuery;

use crate::Ctx;
use crate::config::ConductorConfig;
use crate::task::{LockGuard, Task, WorkflowError};
use crate::worker::wake_owned;
use crate::workflows::{fail_current, power_off_after_failure, work_for};

/// Run `f` every `period` until shutdown (first run after one period).
pub async fn every<F, Fut>(ctx: Arc<Ctx>, name: &'static str, period: Duration, mut f: F)
where
    F: FnMut(Arc<Ctx>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if period.is_zero() {
        tracing::info!(task = name, "periodic task disabled");
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = ctx.token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let span = tracing::debug_span!("periodic", task = name);
        tracing::Instrument::instrument(f(ctx.clone()), span).await;
    }
}

/// Touch this conductor's row.
pub async fn heartbeat(ctx: Arc<Ctx>) {
    if let Err(e) = ctx.store.conductor_heartbeat(&ctx.cfg.hostname, ctx.clock.now()).await {
        tracing::warn!(error = %common::ErrorChain(&e), "conductor heartbeat failed");
        streak(&ctx).since = None;
        // Re-register in case the row was removed.
        if ctx.store.conductor_register(&ctx.registration(), ctx.clock.now()).await.is_ok() {
            heartbeat_succeeded(&ctx);
        }
    } else {
        heartbeat_succeeded(&ctx);
    }
}

/// This conductor's run of successful heartbeats.
#[derive(Debug, Default)]
pub(crate) struct HeartbeatStreak {
    /// When the run started (`None` after a failure).
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// When the last heartbeat of the run completed.
    last: Option<chrono::DateTime<chrono::Utc>>,
}

fn streak(ctx: &Ctx) -> std::sync::MutexGuard<'_, HeartbeatStreak> {
    ctx.heartbeat_streak.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Record a heartbeat that just completed. A gap of more than two intervals since the last
/// one (a call that hung while the database was away, a stalled process) starts a new run:
/// peers were as unable to heartbeat as this conductor was.
pub(crate) fn heartbeat_succeeded(ctx: &Ctx) {
    let now = ctx.clock.now();
    let gap = chrono::Duration::from_std(ctx.cfg.heartbeat_interval() * 2)
        .unwrap_or(chrono::Duration::MAX);
    let mut s = streak(ctx);
    if s.since.is_none() || s.last.is_none_or(|last| now - last > gap) {
        s.since = Some(now);
    }
    s.last = Some(now);
}

/// Whether this conductor has heartbeated without a failure or a gap for a whole liveness
/// timeout, so a silent peer is really silent and not just cut off as it was.
fn can_judge_liveness(ctx: &Ctx, timeout: chrono::Duration) -> bool {
    streak(ctx).since.is_some_and(|since| ctx.clock.now() - since >= timeout)
}

/// Declare conductors dead whose heartbeat is older than the liveness timeout, release
/// their locks and any lock whose holder is not a live conductor, then sweep so their
/// nodes are driven again by their new owners on the ring (this conductor sweeps its own
/// share at once; the others sweep theirs on their next run), and hand over the queues of
/// the conductors that left ([`crate::handover`]).
pub async fn takeover(ctx: Arc<Ctx>) {
    let timeout =
        chrono::Duration::from_std(ctx.cfg.liveness_timeout()).unwrap_or(chrono::Duration::MAX);
    if !can_judge_liveness(&ctx, timeout) {
        tracing::debug!("own heartbeats too recent or failing; judging no conductor dead");
        return;
    }
    let before = ctx.clock.now() - timeout;
    let mut released_any = false;
    match ctx.store.conductor_list_stale(before).await {
        Ok(dead) => {
            for c in dead.iter().filter(|c| c.hostname != ctx.cfg.hostname) {
                match ctx.store.node_release_all_held_by(&c.hostname).await {
                    Ok(n) => {
                        if n > 0 || c.online {
                            tracing::warn!(conductor = %c.hostname, released = n, "conductor is dead; took over its nodes");
                        }
                        released_any |= n > 0;
                    }
                    Err(e) => {
                        tracing::error!(conductor = %c.hostname, error = %common::ErrorChain(&e), "cannot release locks")
                    }
                }
                if c.online {
                    let _ = ctx.store.conductor_unregister(&c.hostname).await;
                    // Its nodes have new owners: read the ring again before sweeping.
                    ctx.ownership.invalidate();
                    released_any = true;
                }
            }
        }
        Err(e) => tracing::warn!(error = %common::ErrorChain(&e), "cannot list stale conductors"),
    }
    // Locks held by names that are not live conductors at all (stale-lock cleanup).
    if let Ok(all) = ctx.store.conductor_list().await {
        let live: HashSet<String> = all
            .into_iter()
            .filter(|c| c.online && c.last_heartbeat >= before)
            .map(|c| c.hostname)
            .collect();
        let q = NodeListQuery { reserved: Some(true), ..Default::default() };
        let me = &ctx.cfg.hostname;
        let stale = |n: Node| n.reservation.filter(|h| !live.contains(h) && h != me);
        if let Ok(holders) = select_all(&ctx.store, q, stale).await {
            let holders: HashSet<String> = holders.into_iter().collect();
            for h in holders {
                if let Ok(n) = ctx.store.node_release_all_held_by(&h).await {
                    tracing::warn!(holder = %h, released = n, "released stale locks");
                    released_any |= n > 0;
                }
            }
        }
    }
    if released_any {
        sweep(ctx.clone()).await;
    }
    crate::handover::drain_departed(&ctx).await;
}

/// The pages of a node listing, one at a time, so that a periodic task over a large fleet
/// holds one page and what it keeps of the pages before, never the whole fleet.
#[derive(Debug)]
pub struct Pages {
    q: NodeListQuery,
    done: bool,
}

impl Pages {
    /// The pages of `q` (its `limit` is the page size).
    pub fn new(q: NodeListQuery) -> Self {
        Self { q, done: false }
    }

    /// The next page; `None` after the last.
    ///
    /// # Errors
    /// The store's.
    pub async fn next(
        &mut self,
        store: &store::DataStore,
    ) -> Result<Option<Vec<Node>>, deploy::PublicError> {
        if self.done {
            return Ok(None);
        }
        let page = store.node_list(&self.q).await?;
        self.q.marker = page.last().map(|n| n.uuid);
        self.done = page.len() < self.q.limit as usize || self.q.marker.is_none();
        Ok(Some(page))
    }
}

/// The pages of a node listing keeping the nodes the ring gives this conductor: each page
/// lists the nodes' ring keys only ([`store::DataStore::node_heads`]) and reads whole the
/// nodes this conductor owns, so the conductors of a fleet together decode each node once
/// per listing, not once each.
pub struct OwnedPages {
    q: NodeListQuery,
    done: bool,
}

impl OwnedPages {
    /// The pages of `q` (its `limit` is the page size of the listing).
    pub fn new(q: NodeListQuery) -> Self {
        Self { q, done: false }
    }

    /// The next page's nodes this conductor owns (possibly none); `None` after the last.
    ///
    /// # Errors
    /// The store's.
    pub async fn next(&mut self, ctx: &Ctx) -> Result<Option<Vec<Node>>, deploy::PublicError> {
        if self.done {
            return Ok(None);
        }
        let heads = ctx.store.node_heads(&self.q).await?;
        self.q.marker = heads.last().map(|h| h.uuid);
        self.done = heads.len() < self.q.limit as usize || self.q.marker.is_none();
        let mine = crate::ownership::owned_heads(ctx, heads).await;
        Ok(Some(ctx.store.node_fetch_many(&mine).await?))
    }
}

/// What `select` keeps of the nodes of a listing that this conductor owns (by the ring),
/// read a page at a time ([`OwnedPages`]).
pub async fn select_owned<T>(
    ctx: &Ctx,
    q: NodeListQuery,
    mut select: impl FnMut(Node) -> Option<T>,
) -> Result<Vec<T>, deploy::PublicError> {
    let mut out = Vec::new();
    let mut pages = OwnedPages::new(q);
    while let Some(page) = pages.next(ctx).await? {
        out.extend(page.into_iter().filter_map(&mut select));
    }
    Ok(out)
}

/// Every page of a node listing, from a store.
pub async fn list_all_store(
    store: &store::DataStore,
    q: NodeListQuery,
) -> Result<Vec<Node>, deploy::PublicError> {
    select_all(store, q, Some).await
}

/// What `select` keeps of the nodes of a listing, read a page at a time ([`Pages`]).
pub async fn select_all<T>(
    store: &store::DataStore,
    q: NodeListQuery,
    mut select: impl FnMut(Node) -> Option<T>,
) -> Result<Vec<T>, deploy::PublicError> {
    let mut out = Vec::new();
    let mut pages = Pages::new(q);
    while let Some(page) = pages.next(store).await? {
        out.extend(page.into_iter().filter_map(&mut select));
    }
    Ok(out)
}

/// Find unlocked nodes this conductor owns that need a conductor (working states, wait
/// states whose agent called back or that were released from a hold) and wake them. Pending
/// power requests whose message was lost are the power sync's.
pub async fn sweep(ctx: Arc<Ctx>) {
    let q = NodeListQuery {
        reserved: Some(false),
        provision_states: vec![
            S::Verifying,
            S::Deploying,
            S::Cleaning,
            S::Deleting,
            S::Inspecting,
            S::Adopting,
            S::Rescuing,
            S::Unrescuing,
            S::Servicing,
            S::WaitCallBack,
            S::CleanWait,
            S::ServiceWait,
        ],
        ..Default::default()
    };
    let due = match select_owned(&ctx, q, |n| work_for(&n).is_some().then_some(n.uuid)).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %common::ErrorChain(&e), "sweep cannot list nodes");
            return;
        }
    };
    if !due.is_empty() {
        tracing::info!(nodes = due.len(), "sweep found nodes to drive");
    }
    for id in due {
        ctx.tracker.spawn(wake_owned(ctx.clone(), id));
    }
}

/// Fail nodes that stayed in a wait state longer than its timeout (reference §5.4:
/// `wait call-back` and `clean wait` after `callback_timeout_secs`, `inspect wait`,
/// `rescue wait` and `service wait` after Ironic's `inspect_wait_timeout`,
/// `rescue_callback_timeout` and `service_callback_timeout`), skipping nodes in
/// maintenance and nodes a workflow is about to continue.
pub async fn callback_timeouts(ctx: Arc<Ctx>) {
    let waits: Vec<S> = deploy::state::ALL_STATES
        .into_iter()
        .filter(|s| {
            ctx.cfg.wait_timeout(*s).is_some_and(|t| !t.is_zero())
                || (RAMDISK_WAITS.contains(s) && ctx.cfg.ramdisk_boot_timeout().is_some())
        })
        .collect();
    let q = NodeListQuery {
        reserved: Some(false),
        maintenance: Some(false),
        provision_states: waits,
        ..Default::default()
    };
    let now = ctx.clock.now();
    let due = |n: &Node| {
        if work_for(n).is_some() {
            None
        } else if timed_out(&ctx.cfg, n, now) {
            Some(Due::Fail)
        } else if boot_retry_due(&ctx.cfg, n, now) {
            Some(Due::BootAgain)
        } else {
            None
        }
    };
    let Ok(nodes) = select_owned(&ctx, q, |n| due(&n).map(|d| (n, d))).await else { return };
    for (n, due) in nodes {
        let Ok((guard, node)) = LockGuard::acquire(&ctx, n.uuid).await else { continue };
        // Re-check under the lock: the agent may have called back meanwhile.
        let still = node.provision_state == n.provision_state
            && work_for(&node).is_none()
            && match due {
                Due::Fail => timed_out(&ctx.cfg, &node, now),
                Due::BootAgain => boot_retry_due(&ctx.cfg, &node, now),
            };
        if still {
            let mut task = Task { ctx: ctx.clone(), node };
            let res = match due {
                Due::Fail => fail_wait(&mut task).await,
                Due::BootAgain => boot_again(&mut task).await,
            };
            if let Err(e) = res {
                tracing::error!(node = %n.uuid, error = %common::ErrorChain(&e), ?due, "could not handle a silent ramdisk");
            }
            crate::boot_iface::settle(&mut task).await;
        }
        guard.release().await;
    }
}

/// What a waiting node whose agent is silent needs.
#[derive(Debug, Clone, Copy)]
enum Due {
    /// Its wait timed out.
    Fail,
    /// Its ramdisk never called: boot it again.
    BootAgain,
}

/// The wait states entered right after booting the deploy ramdisk.
const RAMDISK_WAITS: [S; 4] = [S::WaitCallBack, S::CleanWait, S::InspectWait, S::RescueWait];

/// Whether `n` waits for a deploy ramdisk it booted that has not heartbeated for the
/// ramdisk boot timeout, with retries left.
fn boot_retry_due(cfg: &ConductorConfig, n: &Node, now: chrono::DateTime<chrono::Utc>) -> bool {
    let Some(limit) = cfg.ramdisk_boot_timeout() else { return false };
    if !RAMDISK_WAITS.contains(&n.provision_state) || !boots_ramdisk(cfg, n) {
        return false;
    }
    let session = deploy::internal_info::AgentSession::of(n);
    if session.last_heartbeat.is_some() || session.token_pregenerated {
        return false;
    }
    let (attempts, at) = retry_record(n);
    if attempts >= cfg.ramdisk_boot_retries {
        return false;
    }
    let Some(cutoff) = cutoff(limit, now) else { return false };
    at.or_else(|| wait_started(n)).is_some_and(|t| t < cutoff)
}

/// Whether the node's wait follows a boot into the deploy ramdisk: an agent-based deploy
/// interface for deploying and cleaning, the `agent` inspect interface for inspection.
fn boots_ramdisk(cfg: &ConductorConfig, n: &Node) -> bool {
    let Ok(ifaces) = deploy::hardware::resolve(n, cfg.default_deploy()) else { return false };
    match n.provision_state {
        S::InspectWait => ifaces.inspect == deploy::hardware::InspectIface::Agent,
        S::RescueWait => ifaces.rescue == deploy::hardware::RescueIface::Agent,
        _ => ifaces.deploy == deploy::hardware::DeployIface::Direct,
    }
}

fn retry_record(n: &Node) -> (u32, Option<chrono::DateTime<chrono::Utc>>) {
    let r = n.driver_internal_info.get(keys::RAMDISK_BOOT_RETRY);
    let attempts =
        r.and_then(|r| r["attempts"].as_u64()).and_then(|a| u32::try_from(a).ok()).unwrap_or(0);
    let at = r
        .and_then(|r| r["at"].as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    (attempts, at)
}

/// Boot the silent ramdisk again (a fresh agent session: the next lookup mints a new token)
/// and record the attempt; the node stays in its wait state.
async fn boot_again(task: &mut Task) -> Result<(), WorkflowError> {
    let (attempts, _) = retry_record(&task.node);
    let attempt = attempts + 1;
    let now = task.ctx.clock.now();
    // Recorded before the boot (a BMC that refuses still uses up an attempt) and again after
    // it (booting wipes the agent session, this record with it).
    let record = serde_json::json!({"attempts": attempt, "at": now.to_rfc3339()});
    save_retry(task, &record).await?;
    let d =
        task.ctx.drivers.for_node(&task.node).map_err(|e| WorkflowError::Failed(e.to_string()))?;
    let msg = format!(
        "the deploy ramdisk did not call back within {}s of its boot; booting it again (attempt {attempt} of {})",
        task.ctx.cfg.ramdisk_boot_timeout().unwrap_or_default().as_secs(),
        task.ctx.cfg.ramdisk_boot_retries
    );
    tracing::warn!(node = %task.id(), state = %task.node.provision_state, "{msg}");
    task.record_history("INFO", "ramdisk", &msg, None, None).await;
    match crate::deploy_iface::boot_ramdisk(task, &d).await {
        Ok(()) => {}
        // The BMC refused: the wait's own timeout will end it; say why meanwhile.
        Err(WorkflowError::Failed(e)) => {
            tracing::warn!(node = %task.id(), error = %e, "booting the ramdisk again failed");
        }
        Err(e) => return Err(e),
    }
    save_retry(task, &record).await
}

async fn save_retry(task: &mut Task, record: &serde_json::Value) -> Result<(), WorkflowError> {
    task.update(|n| {
        n.driver_internal_info.insert(keys::RAMDISK_BOOT_RETRY.into(), record.clone());
        Ok(())
    })
    .await
}

/// Whether `n` has been in its wait state ([`wait_started`]) longer than the state's timeout.
fn timed_out(cfg: &ConductorConfig, n: &Node, now: chrono::DateTime<chrono::Utc>) -> bool {
    let Some(limit) = cfg.wait_timeout(n.provision_state).filter(|t| !t.is_zero()) else {
        return false;
    };
    let Some(cutoff) = cutoff(limit, now) else { return false };
    wait_started(n).is_none_or(|t| t < cutoff)
}

/// When the node's wait began: inspection from its start (Ironic's `inspection_started_at`),
/// the others from the last provision update, which the agent's heartbeats bump.
fn wait_started(n: &Node) -> Option<chrono::DateTime<chrono::Utc>> {
    match n.provision_state {
        S::InspectWait => n.inspection_started_at.or(n.provision_updated_at),
        _ => n.provision_updated_at,
    }
}

/// `now - limit`, when representable.
fn cutoff(
    limit: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::Duration::from_std(limit).ok().and_then(|d| now.checked_sub_signed(d))
}

/// Fail a node whose wait timed out, with Ironic's message for its state, and power off the
/// ramdisk Ironic tears down: the cleaning one (`tear_down_cleaning`), the inspection one
/// (its managed boot) and the rescue one (`rescuing_error_handler`); a deploy's is powered
/// off by [`fail_current`] when `power_off_after_deploy_failure` says so.
async fn fail_wait(task: &mut Task) -> Result<(), WorkflowError> {
    let n = &task.node;
    let limit = task.ctx.cfg.wait_timeout(n.provision_state).unwrap_or_default();
    let step = |s: &deploy::model::JsonObject| serde_json::Value::Object(s.clone()).to_string();
    let (msg, power_off) = match n.provision_state {
        S::WaitCallBack => (
            format!(
                "Timeout reached while waiting for callback for node {}: no accepted heartbeat from the deploy ramdisk's agent (wait call-back) within {}s; heartbeats without this deploy's agent token are refused, and the API logs each",
                n.uuid,
                limit.as_secs()
            ),
            false,
        ),
        S::CleanWait => (
            format!(
                "Timeout reached while cleaning the node. Please check if the ramdisk responsible for the cleaning is running on the node. Failed on step {}.",
                step(&n.clean_step)
            ),
            true,
        ),
        S::InspectWait => (
            "Timeout reached while inspecting the node. Please check if the ramdisk responsible for the inspection is running on the node.".to_owned(),
            true,
        ),
        S::RescueWait => (
            format!("Timeout reached while waiting for rescue ramdisk callback for node {}", n.uuid),
            true,
        ),
        S::ServiceWait => (
            format!(
                "Timeout reached while servicing the node. Please check if the ramdisk responsible for the servicing is running on the node. Failed on step {}.",
                step(&n.service_step)
            ),
            false,
        ),
        _ => return Ok(()),
    };
    fail_current(task, &msg).await?;
    if power_off {
        power_off_after_failure(task, &msg).await?;
    }
    Ok(())
}

/// Read the power state of every eligible node this conductor owns from its BMC; record
/// out-of-band changes and put a node into maintenance after repeated BMC failures. Nodes
/// whose BMC stayed silent on its last call are read in a lane of their own, so hung BMCs
/// delay only each other.
pub async fn power_sync(ctx: Arc<Ctx>) {
    let q = NodeListQuery { maintenance: Some(false), reserved: Some(false), ..Default::default() };
    let page_size = q.limit as usize;
    let workers = ctx.cfg.power_sync_workers.max(1);
    let answering = Arc::new(tokio::sync::Semaphore::new(workers));
    let silent = Arc::new(tokio::sync::Semaphore::new(POWER_SYNC_SILENT_WORKERS));
    let mut set = tokio::task::JoinSet::new();
    // Page by page, so a conductor of a large fleet holds one page and the reads in flight,
    // never the whole fleet.
    let mut pages = OwnedPages::new(q);
    loop {
        let page = match pages.next(&ctx).await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %common::ErrorChain(&e), "power sync cannot list nodes");
                break;
            }
        };
        for n in page {
            if n.target_power_state.is_some() && !n.provision_state.is_transient_working() {
                // A pending request whose message was lost: drive it.
                set.spawn(wake_owned(ctx.clone(), n.uuid));
                continue;
            }
            if n.provision_state.skips_power_sync() || n.provision_state.is_transient_working() {
                continue;
            }
            let lane = if ctx.drivers.bmc_silent(&n) { &silent } else { &answering };
            set.spawn(sync_one(ctx.clone(), lane.clone(), n));
        }
        // The next page waits until the reads queued are down to about one page.
        while set.len() > workers + page_size {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}
}

/// BMCs that stayed silent on their last call read at once by power sync (beside
/// `power_sync_workers` for the others).
const POWER_SYNC_SILENT_WORKERS: usize = 2;

fn sync_one(
    ctx: Arc<Ctx>,
    sem: Arc<tokio::sync::Semaphore>,
    n: Node,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let _permit = sem.acquire().await;
        sync_one_inner(&ctx, n).await;
    })
}

async fn sync_one_inner(ctx: &Arc<Ctx>, n: Node) {
    let Ok(d) = ctx.drivers.for_node(&n) else { return };
    match d.power.get_power_state(&n).await {
        Ok(seen) => {
            ctx.power_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&n.uuid);
            if n.power_state == Some(seen) {
                return;
            }
            // The listing and the reading are both older than the lock: a workflow may have
            // changed the power and recorded it meanwhile (a deploy powering on). Judge again
            // under the lock, with the node as it is now and a fresh reading, so neither a
            // change the conductor made nor a stale reading is recorded as out of band.
            let Ok((guard, node)) = LockGuard::acquire(ctx, n.uuid).await else { return };
            let actual = if node.power_state == n.power_state
                && node.target_power_state.is_none()
                && !node.provision_state.is_transient_working()
            {
                d.power.get_power_state(&node).await.ok()
            } else {
                None
            };
            let Some(actual) = actual.filter(|a| node.power_state != Some(*a)) else {
                guard.release().await;
                return;
            };
            let mut task = Task { ctx: ctx.clone(), node };
            let before = task.node.power_state;
            let res = task
                .update(|x| {
                    x.power_state = Some(actual);
                    Ok(())
                })
                .await;
            if res.is_ok() {
                let text = format!(
                    "power state changed out of band: {} -> {actual}",
                    before.map_or_else(|| "None".to_owned(), |p| p.to_string())
                );
                tracing::warn!(node = %n.uuid, %actual, "power state changed out of band");
                task.record_history("INFO", "power", &text, None, None).await;
            }
            guard.release().await;
        }
        Err(e) => {
            let count = {
                let mut m = ctx.power_failures.lock().unwrap_or_else(|p| p.into_inner());
                let c = m.entry(n.uuid).or_insert(0);
                *c += 1;
                *c
            };
            tracing::warn!(node = %n.uuid, failures = count, error = %e, "power sync failed");
            if count < ctx.cfg.power_sync_max_failures {
                return;
            }
            let Ok((guard, node)) = LockGuard::acquire(ctx, n.uuid).await else { return };
            let mut task = Task { ctx: ctx.clone(), node };
            let reason =
                format!("During sync_power_state, max retries exceeded for node {}: {e}", n.uuid);
            let r = reason.clone();
            let res = task
                .update(|x| {
                    x.maintenance = true;
                    x.maintenance_reason = Some(r.clone());
                    x.fault = Some("power failure".into());
                    x.power_state = Some(PowerState::Error);
                    Ok(())
                })
                .await;
            if res.is_ok() {
                ctx.power_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&n.uuid);
                task.record_history("ERROR", "maintenance", &reason, None, None).await;
                ctx.publish(
                    n.uuid,
                    Payload::MaintenanceChanged(proto::events::MaintenanceChanged {
                        maintenance: true,
                        reason: reason.clone(),
                    }),
                );
                tracing::error!(node = %n.uuid, "node put into maintenance after power sync failures");
            }
            guard.release().await;
        }
    }
}
