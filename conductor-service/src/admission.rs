//! Load-aware admission of deploys and cleans: requests beyond what this conductor sustains
//! wait their turn instead of being refused (Ironic answers 503 past
//! `max_concurrent_deploy`).
//!
//! An operation is *in flight* from its admission until its node leaves the operation's
//! states: a deploy in `deploying` and `wait call-back`, a clean (automated after an
//! undeploy, or asked for) in `deleting`, `cleaning` and `clean wait`. Each conductor admits
//! at most `max_concurrent_deploys` deploys and `max_concurrent_cleans` cleans of the nodes
//! the ring gives it (Ironic's defaults, 250 and 50), and none while all its workers are
//! busy: operations already under way come first. An operation whose plan is recorded
//! (under way, resumed, re-planned after a takeover) is never held back.
//!
//! A node that has to wait keeps its state (`deploying`, `deleting`, `cleaning`) and shows
//! its place in `driver_internal_info.admission`: `operation`, `position` (1 = next),
//! `waiting` (how many wait for the same operation here), `queued_at` and `conductor`,
//! refreshed every few seconds (exactly for the first ten places, further back once the
//! place halved; a bounded number of writes per refresh, front first) and removed when it
//! is admitted. The order is fair: higher
//! `extra.admission_priority` first (an integer, default 0), then the projects (lessee, else
//! owner) in turn, one node each, and each project's nodes in the order they were queued.
//! The queue is rebuilt from the nodes after a restart or a takeover (`queued_at` keeps each
//! node's place). When no operation of a kind has been admitted for
//! `admission_timeout_secs` while nodes wait for one, the waiting nodes fail with
//! `last_error`: a queue never holds a node for ever.
//!
//! Besides the conductor, an operation loads endpoints it shares with other nodes: its BMC
//! address (several nodes behind one chassis manager or Redfish emulator) and, for a
//! deploy, the server its image comes from. With `max_operations_per_bmc` or
//! `max_deploys_per_image_server` set, a node whose endpoint has that many operations under
//! way (this conductor's exactly, the other conductors' as of the last resync) waits, and
//! nodes behind it whose endpoints have room go first; its place in the fair order is kept.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deploy::internal_info::keys;
use deploy::{Node, NodeId, ProvisionState as S};
use serde_json::{Value, json};
use store::NodeListQuery;
use tokio::time::Instant;

use crate::Ctx;
use crate::task::{LockGuard, Task};
use crate::workflows::Work;

/// The `driver_internal_info` key showing a waiting node's place.
pub const MARKER: &str = "admission";
/// How often positions, the in-flight count and the timeout are looked at.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);
/// How long an admitted node may take to record its plan before it stops counting.
const GRANT_TTL: Duration = Duration::from_secs(120);
/// Waiting nodes whose endpoints are full passed over per operation and pump: past this
/// many the line waits for the next settle or refresh, so a long line costs little.
const MAX_PASSED_OVER: usize = 1024;

/// An operation admission limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// A deploy.
    Deploy,
    /// Cleaning (asked for, or after an undeploy).
    Clean,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Deploy => "deploy",
            Op::Clean => "clean",
        }
    }

    fn limit(self, ctx: &Ctx) -> usize {
        match self {
            Op::Deploy => ctx.cfg.max_concurrent_deploys,
            Op::Clean => ctx.cfg.max_concurrent_cleans,
        }
    }

    /// The operation a node in `state` is in, if any.
    fn of_state(state: S) -> Option<Op> {
        match state {
            S::Deploying | S::WaitCallBack => Some(Op::Deploy),
            S::Deleting | S::Cleaning | S::CleanWait => Some(Op::Clean),
            _ => None,
        }
    }

    /// Whether `n`'s plan for this operation is recorded (the operation is under way).
    fn started(self, n: &Node) -> bool {
        let key = match self {
            Op::Deploy => keys::DEPLOY_STEP_INDEX,
            Op::Clean => keys::CLEAN_STEP_INDEX,
        };
        n.driver_internal_info.contains_key(key)
    }
}

/// The operation `work` would start on `n`: `None` when it starts none, or when its plan is
/// already recorded (an operation under way is never held back).
pub(crate) fn starts(n: &Node, work: Work) -> Option<Op> {
    let op = match work {
        Work::Deploy => Op::Deploy,
        Work::Clean | Work::Delete => Op::Clean,
        _ => return None,
    };
    (!op.started(n)).then_some(op)
}

/// An endpoint an operation loads besides its conductor, shared with other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Load {
    /// The node's BMC address.
    Bmc(String),
    /// The server a deploy downloads its image from (`scheme://host:port`).
    ImageServer(String),
}

impl Load {
    fn limit(&self, ctx: &Ctx) -> usize {
        match self {
            Load::Bmc(_) => ctx.cfg.max_operations_per_bmc,
            Load::ImageServer(_) => ctx.cfg.max_deploys_per_image_server,
        }
    }
}

/// The limited endpoints `op` on `n` loads (none while no limit is set).
fn loads_of(ctx: &Ctx, n: &Node, op: Op) -> Vec<Load> {
    let mut loads = Vec::new();
    if ctx.cfg.max_operations_per_bmc > 0
        && let Some(bmc) = crate::drivers::bmc_address(n)
    {
        loads.push(Load::Bmc(bmc));
    }
    if op == Op::Deploy
        && ctx.cfg.max_deploys_per_image_server > 0
        && let Some(server) = image_server(n)
    {
        loads.push(Load::ImageServer(server));
    }
    loads
}

/// The server `n`'s image is downloaded from: `scheme://host:port` of
/// `instance_info.image_url`, else of `image_source` when that is an http(s) URL.
fn image_server(n: &Node) -> Option<String> {
    let s = |k: &str| n.instance_info.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let url = reqwest::Url::parse(s("image_url").or_else(|| s("image_source"))?).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    Some(format!("{}://{}:{}", url.scheme(), url.host_str()?, url.port_or_known_default()?))
}

/// Operations under way or admitted, by endpoint.
type LoadCounts = HashMap<Load, usize>;

fn fits(ctx: &Ctx, counts: &LoadCounts, loads: &[Load]) -> bool {
    loads.iter().all(|l| counts.get(l).copied().unwrap_or(0) < l.limit(ctx))
}

fn add(counts: &mut LoadCounts, loads: &[Load]) {
    for l in loads {
        *counts.entry(l.clone()).or_default() += 1;
    }
}

/// A waiting node's place in the order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    queued_at: DateTime<Utc>,
    node: NodeId,
}

#[derive(Debug, Clone)]
struct Waiter {
    op: Op,
    priority: i64,
    project: String,
    place: Place,
    /// The limited endpoints it will load.
    loads: Vec<Load>,
    /// The position last written on the node.
    shown: Option<usize>,
}

/// The nodes waiting for one operation: by priority (highest first), then projects in
/// turn, then each project's nodes oldest first.
#[derive(Debug, Default, Clone)]
struct Line {
    by_priority: BTreeMap<Reverse<i64>, Turns>,
}

#[derive(Debug, Default, Clone)]
struct Turns {
    /// Projects in the order of their next turn.
    order: VecDeque<String>,
    queues: HashMap<String, BTreeSet<Place>>,
}

impl Line {
    fn insert(&mut self, w: &Waiter) {
        let turns = self.by_priority.entry(Reverse(w.priority)).or_default();
        let q = turns.queues.entry(w.project.clone()).or_default();
        if q.is_empty() {
            turns.order.push_back(w.project.clone());
        }
        q.insert(w.place.clone());
    }

    fn remove(&mut self, w: &Waiter) {
        let key = Reverse(w.priority);
        let Some(turns) = self.by_priority.get_mut(&key) else { return };
        if let Some(q) = turns.queues.get_mut(&w.project) {
            q.remove(&w.place);
            if q.is_empty() {
                turns.queues.remove(&w.project);
                turns.order.retain(|p| *p != w.project);
            }
        }
        if turns.order.is_empty() {
            self.by_priority.remove(&key);
        }
    }

    /// Take the next node in the order.
    fn pop(&mut self) -> Option<NodeId> {
        let mut entry = self.by_priority.first_entry()?;
        let turns = entry.get_mut();
        let project = turns.order.pop_front()?;
        let q = turns.queues.get_mut(&project)?;
        let next = q.pop_first()?;
        if q.is_empty() {
            turns.queues.remove(&project);
        } else {
            turns.order.push_back(project);
        }
        if turns.order.is_empty() {
            entry.remove();
        }
        Some(next.node)
    }

    /// The next node in the order, without taking it.
    fn peek(&self) -> Option<NodeId> {
        let turns = self.by_priority.values().next()?;
        let project = turns.order.front()?;
        Some(turns.queues.get(project)?.first()?.node)
    }

    /// `w`'s position (1 = next) in the order, without walking the line: the nodes of
    /// higher priorities, then whole rounds of project turns, then the projects whose turn
    /// in the current round comes before `w`'s. `None` when `w` is not in the line.
    fn position(&self, w: &Waiter) -> Option<usize> {
        let mut ahead = 0;
        for (prio, turns) in &self.by_priority {
            if prio.0 > w.priority {
                ahead += turns.queues.values().map(BTreeSet::len).sum::<usize>();
                continue;
            }
            if prio.0 != w.priority {
                return None;
            }
            let queue = turns.queues.get(&w.project).filter(|q| q.contains(&w.place))?;
            let rank = queue.range(..&w.place).count();
            let mut before_turn = true;
            for project in &turns.order {
                if *project == w.project {
                    before_turn = false;
                    ahead += rank;
                    continue;
                }
                let len = turns.queues.get(project).map_or(0, BTreeSet::len);
                ahead += len.min(rank) + usize::from(before_turn && len > rank);
            }
            return Some(ahead + 1);
        }
        None
    }

    /// How many nodes wait in the line.
    fn len(&self) -> usize {
        self.by_priority.values().flat_map(|t| t.queues.values()).map(BTreeSet::len).sum()
    }

    /// Every waiting node in admission order.
    fn order(&self) -> Vec<NodeId> {
        let mut copy = self.clone();
        std::iter::from_fn(|| copy.pop()).collect()
    }
}

#[derive(Debug, Default)]
struct State {
    /// Admitted operations whose plan is not recorded yet, and when they were admitted.
    granted: HashMap<NodeId, (Op, Instant)>,
    /// Operations under way (plan recorded), as of the last refresh or settle.
    running: HashMap<NodeId, Op>,
    waiting: HashMap<NodeId, Waiter>,
    lines: HashMap<Op, Line>,
    /// When an operation of each kind was last admitted (or when nodes began to wait).
    progress: HashMap<Op, Instant>,
    /// The limited endpoints each granted or running operation here loads.
    loads: HashMap<NodeId, Vec<Load>>,
    /// Operations under way on other conductors, by endpoint, as of the last resync.
    elsewhere: LoadCounts,
    /// When the next refresh reads the nodes from the database again.
    next_resync: Option<Instant>,
}

impl State {
    fn in_flight(&self, op: Op) -> usize {
        self.running.values().filter(|o| **o == op).count()
            + self.granted.values().filter(|(o, _)| *o == op).count()
    }

    fn unqueue(&mut self, node: NodeId) -> Option<Waiter> {
        let w = self.waiting.remove(&node)?;
        if let Some(line) = self.lines.get_mut(&w.op) {
            line.remove(&w);
        }
        Some(w)
    }

    fn grant(&mut self, node: NodeId, op: Op, loads: Vec<Load>) {
        self.unqueue(node);
        self.granted.insert(node, (op, Instant::now()));
        self.progress.insert(op, Instant::now());
        if !loads.is_empty() {
            self.loads.insert(node, loads);
        }
    }

    /// Operations on each limited endpoint: this conductor's granted and running ones, and
    /// the other conductors' as of the last refresh.
    fn load_counts(&self) -> LoadCounts {
        let mut counts = self.elsewhere.clone();
        for (id, loads) in &self.loads {
            if self.granted.contains_key(id) || self.running.contains_key(id) {
                add(&mut counts, loads);
            }
        }
        counts
    }

    /// Forget the endpoints of operations no longer granted or running here.
    fn prune_loads(&mut self) {
        let (granted, running) = (&self.granted, &self.running);
        self.loads.retain(|id, _| granted.contains_key(id) || running.contains_key(id));
    }
}

/// What [`Admission::request`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Go ahead.
    Go,
    /// Wait: the node is queued (`position` 1 = next).
    Wait { position: usize, waiting: usize },
}

/// One conductor's admission state.
#[derive(Debug, Default)]
pub struct Admission {
    state: Mutex<State>,
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ask to start `op` on `n`. `busy`: every worker of this conductor is taken.
    pub(crate) fn request(&self, ctx: &Ctx, n: &Node, op: Op, busy: bool) -> Decision {
        let mut st = self.lock();
        if st.granted.contains_key(&n.uuid) || st.running.contains_key(&n.uuid) {
            return Decision::Go;
        }
        let line_empty = st.lines.get(&op).is_none_or(|l| l.peek().is_none());
        let first = st.lines.get(&op).and_then(Line::peek) == Some(n.uuid);
        let loads = loads_of(ctx, n, op);
        if !busy
            && st.in_flight(op) < op.limit(ctx)
            && (line_empty || first)
            && (loads.is_empty() || fits(ctx, &st.load_counts(), &loads))
        {
            st.grant(n.uuid, op, loads);
            return Decision::Go;
        }
        if !st.waiting.contains_key(&n.uuid) {
            let mut w = Waiter {
                op,
                priority: n.extra.get("admission_priority").and_then(Value::as_i64).unwrap_or(0),
                project: n.lessee.clone().or_else(|| n.owner.clone()).unwrap_or_default(),
                place: Place {
                    queued_at: queued_at(n).unwrap_or_else(|| ctx.clock.now()),
                    node: n.uuid,
                },
                loads,
                shown: None,
            };
            if line_empty {
                // The timeout counts from when the line formed.
                st.progress.insert(op, Instant::now());
            }
            let line = st.lines.entry(op).or_default();
            line.insert(&w);
            // What the node shows: the marker it carries (after a restart or a takeover),
            // else the place the caller writes now.
            w.shown = shown_position(n).or_else(|| line.position(&w));
            st.waiting.insert(n.uuid, w);
        }
        let line = st.lines.get(&op);
        let waiting = line.map_or(0, Line::len);
        let position = st
            .waiting
            .get(&n.uuid)
            .and_then(|w| line.and_then(|l| l.position(w)))
            .unwrap_or(waiting);
        Decision::Wait { position, waiting }
    }

    /// `n` was driven and is now as given: an operation that ended frees its place.
    pub(crate) fn settled(&self, ctx: &Arc<Ctx>, n: &Node) {
        let freed = {
            let mut st = self.lock();
            let current = Op::of_state(n.provision_state);
            let mut freed = None;
            for op in [Op::Deploy, Op::Clean] {
                let held = st.granted.get(&n.uuid).map(|g| g.0) == Some(op)
                    || st.running.get(&n.uuid) == Some(&op);
                if !held {
                    continue;
                }
                if current == Some(op) {
                    if op.started(n) {
                        st.granted.remove(&n.uuid);
                        st.running.insert(n.uuid, op);
                    }
                } else {
                    st.granted.remove(&n.uuid);
                    st.running.remove(&n.uuid);
                    st.loads.remove(&n.uuid);
                    freed = Some(op);
                }
            }
            freed
        };
        if freed.is_some() {
            self.pump(ctx);
        }
    }

    /// Admit waiting nodes while there is room, and wake them. A node whose endpoints are
    /// full is passed over (keeping its place) for the nodes behind it.
    pub(crate) fn pump(&self, ctx: &Arc<Ctx>) {
        let busy = ctx.tasks.main_available() == 0;
        if busy {
            return;
        }
        let mut woken = Vec::new();
        {
            let mut st = self.lock();
            let mut counts = st.load_counts();
            for op in [Op::Deploy, Op::Clean] {
                let mut passed = Vec::new();
                while st.in_flight(op) < op.limit(ctx) && passed.len() < MAX_PASSED_OVER {
                    let Some(next) = st.lines.get_mut(&op).and_then(Line::pop) else { break };
                    let Some(w) = st.waiting.get(&next) else { continue };
                    if !fits(ctx, &counts, &w.loads) {
                        passed.push(w.clone());
                        continue;
                    }
                    let loads = w.loads.clone();
                    add(&mut counts, &loads);
                    st.grant(next, op, loads);
                    woken.push(next);
                }
                let line = st.lines.entry(op).or_default();
                for w in &passed {
                    line.insert(w);
                }
            }
        }
        for id in woken {
            tracing::debug!(node = %id, "admitted from the queue");
            ctx.tracker.spawn(crate::worker::wake_owned(ctx.clone(), id));
        }
    }

    /// The nodes waiting here.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

/// When `n` was first queued, from its marker (kept across restarts and takeovers).
fn queued_at(n: &Node) -> Option<DateTime<Utc>> {
    let s = n.driver_internal_info.get(MARKER)?.get("queued_at")?.as_str()?;
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// The position `n`'s marker shows.
fn shown_position(n: &Node) -> Option<usize> {
    let p = n.driver_internal_info.get(MARKER)?.get("position")?.as_u64()?;
    usize::try_from(p).ok()
}

/// Show `n`'s place in its `driver_internal_info` (under its lock, briefly); nothing when
/// the node is locked or changed meanwhile (the next refresh shows it).
pub(crate) async fn show(ctx: &Arc<Ctx>, id: NodeId, op: Op, position: usize, waiting: usize) {
    let Ok((guard, node)) = LockGuard::acquire(ctx, id).await else { return };
    if Op::of_state(node.provision_state) == Some(op) && !op.started(&node) {
        let queued = queued_at(&node).unwrap_or_else(|| ctx.clock.now());
        let mut task = Task { ctx: ctx.clone(), node };
        let marker = json!({
            "operation": op.label(),
            "position": position,
            "waiting": waiting,
            "queued_at": queued.to_rfc3339(),
            "conductor": ctx.cfg.hostname,
        });
        let _ = task
            .update(|n| {
                n.driver_internal_info.insert(MARKER.into(), marker.clone());
                Ok(())
            })
            .await;
    }
    guard.release().await;
}

/// Remove the place marker of an admitted node (under its lock).
pub(crate) async fn clear(task: &mut Task) {
    if task.node.driver_internal_info.contains_key(MARKER) {
        let _ = task
            .update(|n| {
                n.driver_internal_info.remove(MARKER);
                Ok(())
            })
            .await;
    }
}

/// Every [`REFRESH`]: count the operations under way on this conductor's nodes (from the
/// database when a resync is due, see [`RESYNC_ROWS`]), admit what fits, show the waiting
/// nodes their new places and fail those of a queue that has not moved for
/// `admission_timeout_secs`.
pub async fn refresh(ctx: Arc<Ctx>) {
    let due = ctx.admission.lock().next_resync.is_none_or(|at| Instant::now() >= at);
    if due {
        let Some(rows) = resync(&ctx).await else { return };
        // Every REFRESH while few nodes are read whole; with more, once per RESYNC_ROWS
        // nodes' worth of REFRESH, so that a conductor reads at most about
        // RESYNC_ROWS / REFRESH whole nodes a second however many of its nodes wait.
        // Half a period early, so a tick that comes a little early still resyncs.
        let periods = u32::try_from(rows.div_ceil(RESYNC_ROWS).max(1)).unwrap_or(u32::MAX);
        let next = Instant::now() + REFRESH.saturating_mul(periods) - REFRESH / 2;
        ctx.admission.lock().next_resync = Some(next);
    }
    settle_lines(&ctx).await;
}

/// Nodes a resync read whole per [`REFRESH`] that passes before the next resync.
const RESYNC_ROWS: usize = 5000;

/// Read the nodes in an operation's states and make the in-memory state match them: the
/// operations under way here, the other conductors' endpoints in use, the waiting nodes
/// that left their operation meanwhile. Returns the nodes read whole (this conductor's;
/// every conductor's with endpoint limits); `None` when the database did not answer.
async fn resync(ctx: &Arc<Ctx>) -> Option<usize> {
    let q = NodeListQuery {
        provision_states: vec![
            S::Deploying,
            S::WaitCallBack,
            S::Deleting,
            S::Cleaning,
            S::CleanWait,
        ],
        ..Default::default()
    };
    let limited = ctx.cfg.max_operations_per_bmc > 0 || ctx.cfg.max_deploys_per_image_server > 0;
    // Read a page at a time and keep little of each node (with many nodes waiting, every
    // one of them is in these states): this conductor's nodes by the operation their state
    // is in and whether its plan is recorded, the endpoints of its operations under way, and
    // the other conductors' operations under way by endpoint.
    let mut present: HashMap<NodeId, (Option<Op>, bool)> = HashMap::new();
    let mut running_loads = Vec::new();
    let mut elsewhere = LoadCounts::new();
    let started = |n: &Node| Op::of_state(n.provision_state).filter(|op| op.started(n));
    // With endpoint limits every conductor's operations count: the whole listing is read.
    // Without, only this conductor's nodes are read whole.
    let mut all = crate::periodic::Pages::new(q.clone());
    let mut owned = crate::periodic::OwnedPages::new(q);
    let mut rows = 0;
    loop {
        let page = if limited { all.next(&ctx.store).await } else { owned.next(ctx).await };
        let page = match page {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(_) => return None,
        };
        rows += page.len();
        let (mine, others) = if limited {
            let mine: HashSet<NodeId> = crate::ownership::owned(ctx, page.clone())
                .await
                .into_iter()
                .map(|n| n.uuid)
                .collect();
            page.into_iter().partition(|n| mine.contains(&n.uuid))
        } else {
            (page, Vec::new())
        };
        for n in &others {
            if let Some(op) = started(n) {
                add(&mut elsewhere, &loads_of(ctx, n, op));
            }
        }
        for n in &mine {
            let op = Op::of_state(n.provision_state);
            let under_way = started(n);
            if limited && let Some(op) = under_way {
                running_loads.push((n.uuid, loads_of(ctx, n, op)));
            }
            present.insert(n.uuid, (op, under_way.is_some()));
        }
    }
    {
        let mut st = ctx.admission.lock();
        st.elsewhere = elsewhere;
        st.running = present
            .iter()
            .filter_map(|(id, (op, started))| op.filter(|_| *started).map(|op| (*id, op)))
            .collect();
        st.loads.extend(running_loads);
        let running: Vec<NodeId> = st.running.keys().copied().collect();
        for id in running {
            st.granted.remove(&id);
        }
        st.granted.retain(|id, (op, at)| {
            at.elapsed() < GRANT_TTL && present.get(id).is_some_and(|(o, _)| *o == Some(*op))
        });
        let gone: Vec<NodeId> = st
            .waiting
            .iter()
            .filter(|(id, w)| {
                present.get(*id).is_none_or(|(op, started)| *op != Some(w.op) || *started)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            st.unqueue(id);
        }
        st.prune_loads();
    }
    Some(rows)
}

/// Admit what fits, fail the waiting nodes of a stalled queue and show the others their
/// places: at most [`MAX_SHOWN`] per refresh, front of the line first.
async fn settle_lines(ctx: &Arc<Ctx>) {
    ctx.admission.pump(ctx);
    let timeout = crate::config::dur(ctx.cfg.admission_timeout_secs);
    let (expired, moved) = {
        let mut st = ctx.admission.lock();
        let mut expired = Vec::new();
        for op in [Op::Deploy, Op::Clean] {
            let stalled = !timeout.is_zero()
                && st.lines.get(&op).is_some_and(|l| l.peek().is_some())
                && st.progress.get(&op).is_some_and(|at| at.elapsed() >= timeout);
            if stalled {
                while let Some(id) = st.lines.get_mut(&op).and_then(Line::pop) {
                    st.waiting.remove(&id);
                    expired.push((id, op));
                }
            }
        }
        let mut moved = Vec::new();
        for op in [Op::Deploy, Op::Clean] {
            let order = st.lines.get(&op).map(Line::order).unwrap_or_default();
            let total = order.len();
            for (i, id) in order.into_iter().enumerate() {
                if moved.len() >= MAX_SHOWN {
                    break;
                }
                if let Some(w) = st.waiting.get_mut(&id)
                    && worth_showing(w.shown, i + 1)
                {
                    w.shown = Some(i + 1);
                    moved.push((id, op, i + 1, total));
                }
            }
        }
        (expired, moved)
    };
    for (id, op) in expired {
        fail_waiting(ctx, id, op, timeout).await;
    }
    for (id, op, position, waiting) in moved {
        show(ctx, id, op, position, waiting).await;
    }
}

/// Places written per refresh: a long line costs the database a bounded trickle of writes;
/// places further back are written on later refreshes.
const MAX_SHOWN: usize = 64;

/// Whether a waiting node's place changed enough to write it again: exactly within the
/// first [`EXACT_PLACES`], elsewhere once it halved. A node at place 10,000 is written
/// about 14 times on its way to the front, not once per admission ahead of it.
fn worth_showing(shown: Option<usize>, now: usize) -> bool {
    match shown {
        None => true,
        Some(s) if s == now => false,
        Some(s) => now <= EXACT_PLACES || now * 2 <= s,
    }
}

/// Places shown exactly.
const EXACT_PLACES: usize = 10;

/// Fail a node whose queue stalled.
async fn fail_waiting(ctx: &Arc<Ctx>, id: NodeId, op: Op, timeout: Duration) {
    let Ok((guard, node)) = LockGuard::acquire(ctx, id).await else { return };
    if Op::of_state(node.provision_state) == Some(op) && !op.started(&node) {
        let mut task = Task { ctx: ctx.clone(), node };
        let msg = format!(
            "Timed out waiting to start the {}: conductor {} admitted no {} for {} s while at its \
             limit of {} (max_concurrent_{}s) or with every worker busy",
            op.label(),
            ctx.cfg.hostname,
            op.label(),
            timeout.as_secs(),
            op.limit(ctx),
            op.label(),
        );
        let _ = task
            .update(|n| {
                n.driver_internal_info.remove(MARKER);
                Ok(())
            })
            .await;
        if let Err(e) = crate::workflows::fail_current(&mut task, &msg).await {
            tracing::warn!(node = %id, error = %common::ErrorChain(&e), "cannot fail a node whose queue stalled");
        }
    }
    guard.release().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(op: Op, priority: i64, project: &str, secs: i64, node: u128) -> Waiter {
        Waiter {
            op,
            priority,
            project: project.into(),
            place: Place {
                queued_at: DateTime::from_timestamp(secs, 0).unwrap_or_default(),
                node: NodeId(uuid::Uuid::from_u128(node)),
            },
            loads: Vec::new(),
            shown: None,
        }
    }

    #[test]
    fn test_projects_take_turns_within_a_priority_and_priority_goes_first() {
        let mut line = Line::default();
        // Project a queued five nodes before b queued two; c one with priority.
        for i in 0..5 {
            line.insert(&waiter(Op::Deploy, 0, "a", i, 10 + i as u128));
        }
        line.insert(&waiter(Op::Deploy, 0, "b", 100, 20));
        line.insert(&waiter(Op::Deploy, 0, "b", 101, 21));
        line.insert(&waiter(Op::Deploy, 5, "c", 200, 30));
        let order: Vec<u128> = line.order().into_iter().map(|id| id.0.as_u128()).collect();
        assert_eq!(order, vec![30, 10, 20, 11, 21, 12, 13, 14]);
        // Taking one node keeps the turn order; removing a node closes its gap.
        assert_eq!(line.pop().map(|id| id.0.as_u128()), Some(30));
        line.remove(&waiter(Op::Deploy, 0, "b", 100, 20));
        let order: Vec<u128> = line.order().into_iter().map(|id| id.0.as_u128()).collect();
        assert_eq!(order, vec![10, 21, 11, 12, 13, 14]);
        assert_eq!(line.peek().map(|id| id.0.as_u128()), Some(10));
    }

    #[test]
    fn test_a_position_is_the_place_in_the_walked_order() {
        // Lines of mixed priorities and projects, some turns already taken: each waiter's
        // computed position is its index in the order the line pops in.
        let mut seed = 7_u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % m
        };
        for round in 0..50 {
            let mut line = Line::default();
            let mut all = Vec::new();
            for i in 0..(5 + next(60)) {
                let w = waiter(
                    Op::Deploy,
                    next(3) as i64 - 1,
                    ["a", "b", "c", "d"][next(4) as usize],
                    next(1000) as i64,
                    u128::from(round * 1000 + i),
                );
                line.insert(&w);
                all.push(w);
            }
            for _ in 0..next(10) {
                let Some(id) = line.pop() else { break };
                all.retain(|w| w.place.node != id);
            }
            let order = line.order();
            assert_eq!(line.len(), order.len());
            for w in &all {
                let want = order.iter().position(|id| *id == w.place.node).map(|p| p + 1);
                assert_eq!(line.position(w), want, "round {round}");
            }
            let gone = waiter(Op::Deploy, 0, "a", 5000, 1);
            assert_eq!(line.position(&gone), None);
        }
    }

    #[test]
    fn test_places_are_written_exactly_up_front_and_by_halves_behind() {
        assert!(worth_showing(None, 400));
        assert!(!worth_showing(Some(400), 400));
        assert!(!worth_showing(Some(400), 201), "not yet halved");
        assert!(worth_showing(Some(400), 200));
        assert!(!worth_showing(Some(20), 11));
        assert!(worth_showing(Some(11), 10), "exact within the first ten");
        assert!(worth_showing(Some(3), 2));
    }

    #[test]
    fn test_the_image_server_is_the_origin_of_the_image_url_or_an_http_image_source() {
        let server = |pairs: &[(&str, &str)]| {
            let mut n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
            for (k, v) in pairs {
                n.instance_info.insert((*k).into(), (*v).into());
            }
            image_server(&n)
        };
        assert_eq!(
            server(&[("image_source", "http://img.test/a.raw")]).unwrap(),
            "http://img.test:80"
        );
        assert_eq!(
            server(&[("image_source", "https://img.test:8443/a.qcow2")]).unwrap(),
            "https://img.test:8443"
        );
        assert_eq!(
            server(&[
                ("image_source", "f3e4a5b6-0000-4000-8000-000000000001"),
                ("image_url", "http://cache.test:8080/i")
            ])
            .unwrap(),
            "http://cache.test:8080"
        );
        assert_eq!(server(&[("image_source", "f3e4a5b6-0000-4000-8000-000000000001")]), None);
        assert_eq!(server(&[("image_source", "file:///var/lib/images/a.raw")]), None);
        assert_eq!(server(&[]), None);
    }

    #[test]
    fn test_an_operation_under_way_is_never_held_back() {
        let mut n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        n.provision_state = S::Deploying;
        assert_eq!(starts(&n, Work::Deploy), Some(Op::Deploy));
        n.driver_internal_info.insert(keys::DEPLOY_STEP_INDEX.into(), 0.into());
        assert_eq!(starts(&n, Work::Deploy), None);
        n.provision_state = S::Deleting;
        assert_eq!(starts(&n, Work::Delete), Some(Op::Clean));
        assert_eq!(starts(&n, Work::ResumeDeploy), None);
        assert_eq!(starts(&n, Work::Power(deploy::PowerState::On)), None);
    }
}
