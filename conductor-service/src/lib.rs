//! Ferric's conductor: consumes the API's events, drives nodes through the provision state
//! machine under per-node exclusive locks, talks to BMCs (fake, Redfish, IPMI) and to the
//! deploy agent (gRPC), and runs the periodic tasks that keep a fleet of conductors honest
//! (liveness and takeover, sweep, callback timeouts, power sync) for the nodes the
//! conductors' hash ring gives it ([`ownership`]); it also reserves nodes for allocations
//! ([`allocation`]).
//!
//! The database is the truth: a bus delivery only wakes a node; the handler re-reads it,
//! takes its lock, decides what to do from the recorded state, commits, and only then acks.
//! See `docs/CONTRACTS.md` for the surfaces this crate uses and exposes.

pub mod admission;
pub mod agent_client;
mod agent_steps;
pub mod allocation;
mod boot_iface;
pub mod budget;
pub mod config;
pub mod deploy_iface;
mod deploy_logs;
pub mod drivers;
pub mod events;
pub mod fast_track;
pub mod handover;
pub mod inspection;
pub mod ipa_client;
mod ipa_ops;
pub mod management;
pub mod metrics;
pub mod ownership;
pub mod periodic;
pub mod power;
#[cfg(feature = "simulation")]
pub mod simulation;
pub mod task;
#[cfg(feature = "simulation")]
pub mod testing;
pub mod worker;
pub mod workflows;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bus::DynBus;
use common::ErrorChain;
use common::shutdown::Shutdown;
use deploy::hardware::HardwareError;
use deploy::{Conductor, Node, NodeId, PublicError, SharedClock, SystemClock};
use store::DataStore;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{ConductorConfig, ConductorConfigError, ConductorFileConfig};
use deploy_iface::DeployInterface;
use drivers::Drivers;

/// Why the conductor could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ConductorError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConductorConfigError),
    /// The drivers could not be built.
    #[error("cannot load drivers")]
    Drivers(#[source] deploy::drivers::DriverError),
    /// Registering in the database failed.
    #[error("cannot register conductor {hostname}")]
    Register {
        /// This conductor.
        hostname: String,
        /// Cause.
        #[source]
        source: PublicError,
    },
}

/// Everything a conductor's tasks share.
pub struct Ctx {
    /// Configuration (validated).
    pub cfg: ConductorConfig,
    /// The database.
    pub store: DataStore,
    /// The bus.
    pub bus: DynBus,
    /// Notifications on their way to the bus ([`Ctx::publish`]).
    pub events: events::Events,
    /// Power and management drivers.
    pub drivers: Drivers,
    /// Wall-clock time for every timestamp written and every timeout compared (callback
    /// timeouts, conductor liveness); waiting and elapsed time use Tokio's timers.
    pub clock: SharedClock,
    /// Cancelled on shutdown.
    pub token: CancellationToken,
    /// Every spawned task.
    pub tracker: TaskTracker,
    /// Nodes being driven by this conductor; `true` = look again when done.
    pub(crate) inflight: Mutex<HashMap<NodeId, bool>>,
    /// Consecutive power-sync failures per node.
    pub(crate) power_failures: Mutex<HashMap<NodeId, u32>>,
    /// Allocations being processed here and their failed attempts.
    pub(crate) allocations: allocation::Tracker,
    /// Limits on concurrently driven nodes: one lane for nodes whose BMC answers, one for
    /// the others ([`budget`]).
    pub(crate) tasks: budget::Lanes,
    /// This conductor's own run of successful heartbeats: it judges others dead only when
    /// it could have seen their heartbeats for a whole liveness timeout (a database outage
    /// silences everyone).
    pub(crate) heartbeat_streak: Mutex<periodic::HeartbeatStreak>,
    /// The cached hash rings that say which nodes this conductor's periodic tasks handle
    /// ([`ownership`]).
    pub(crate) ownership: ownership::Ownership,
    /// Deploys and cleans admitted, under way and waiting ([`admission`]).
    pub(crate) admission: admission::Admission,
}

impl Ctx {
    /// This conductor's registration row.
    pub fn registration(&self) -> Conductor {
        let now = self.clock.now();
        Conductor {
            hostname: self.cfg.hostname.clone(),
            conductor_group: self.cfg.conductor_group.clone(),
            drivers: deploy::hardware::hardware_type_names().map(str::to_owned).collect(),
            online: true,
            last_heartbeat: now,
            created_at: now,
        }
    }

    /// The node's deploy interface: its `deploy_interface`, else the configured default
    /// where its hardware type enables it, else the hardware type's default.
    ///
    /// # Errors
    /// [`HardwareError`] for an unknown hardware type or an interface it does not enable.
    pub fn deploy_interface(&self, node: &Node) -> Result<Arc<dyn DeployInterface>, HardwareError> {
        let ifaces = deploy::hardware::resolve(node, self.cfg.default_deploy())?;
        Ok(deploy_iface::implementation(ifaces.deploy))
    }
}

/// Run a conductor until `shutdown` is cancelled: register, release this host's stale locks,
/// start consuming the work queue — then it is ready ([`Shutdown::ready`]) — and run the
/// periodic tasks; on shutdown drain running workflows through [`Shutdown::drain`] (bounded by
/// `drain_timeout_secs`, which replaces the shutdown's own timeout), release what is still
/// held and unregister.
///
/// # Errors
/// [`ConductorError`] when the config is invalid or registration fails.
pub async fn run(
    cfg: ConductorConfig,
    store: DataStore,
    bus: DynBus,
    shutdown: Shutdown,
) -> Result<(), ConductorError> {
    run_with_clock(cfg, store, bus, shutdown, SystemClock::shared()).await
}

/// [`run`] on `clock` instead of the system clock (tests run timeouts in simulated time
/// with `sim::SimClock` on a paused runtime).
///
/// # Errors
/// As [`run`].
pub async fn run_with_clock(
    cfg: ConductorConfig,
    store: DataStore,
    bus: DynBus,
    shutdown: Shutdown,
    clock: SharedClock,
) -> Result<(), ConductorError> {
    run_with(cfg, store, bus, shutdown, RunOptions { clock, fake_drivers: None }).await
}

/// How a conductor runs beyond its configuration.
#[derive(Clone)]
pub struct RunOptions {
    /// The wall clock (the system's, or `sim::SimClock` on a paused runtime).
    pub clock: SharedClock,
    /// What runs behind `fake-hardware`'s power and management interfaces instead of the
    /// fake driver: the fleet simulator's in-memory BMCs (`sim::scale::SimBmcs`).
    pub fake_drivers: Option<drivers::DriverSet>,
}

/// [`run`] with [`RunOptions`].
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    cfg: ConductorConfig,
    store: DataStore,
    bus: DynBus,
    shutdown: Shutdown,
    opts: RunOptions,
) -> Result<(), ConductorError> {
    cfg.validate()?;
    let RunOptions { clock, fake_drivers } = opts;
    let shutdown = shutdown.with_drain_timeout(cfg.drain_timeout());
    let mut drivers = Drivers::new(&cfg).map_err(ConductorError::Drivers)?;
    if let Some(fake) = fake_drivers {
        drivers = drivers.with_fake(fake);
    }
    let tracker = shutdown.tracker().clone();
    let ctx = Arc::new(Ctx {
        tasks: budget::Lanes::new(cfg.max_concurrent_tasks, cfg.slow_peer_tasks),
        cfg,
        store,
        events: events::Events::start(bus.clone()),
        bus,
        drivers,
        clock,
        token: shutdown.token().clone(),
        tracker: tracker.clone(),
        inflight: Mutex::new(HashMap::new()),
        power_failures: Mutex::new(HashMap::new()),
        allocations: allocation::Tracker::default(),
        heartbeat_streak: Mutex::default(),
        ownership: ownership::Ownership::default(),
        admission: admission::Admission::default(),
    });
    let host = ctx.cfg.hostname.clone();
    ctx.store
        .conductor_register(&ctx.registration(), ctx.clock.now())
        .await
        .map_err(|source| ConductorError::Register { hostname: host.clone(), source })?;
    periodic::heartbeat_succeeded(&ctx);
    // Locks this hostname held in a previous life are stale by definition.
    match ctx.store.node_release_all_held_by(&host).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(released = n, "released locks left by a previous run"),
        Err(e) => tracing::warn!(error = %ErrorChain(&e), "cannot release stale locks"),
    }

    // Deliveries published before the queues exist would be lost: consume first, then say
    // ready (below). `None`: shut down before the bus answered.
    let mut consumers = Vec::new();
    for (spec, source) in worker::queues(&ctx) {
        let Some(consumer) = worker::subscribe(&ctx, &spec).await else {
            return stop(&ctx, &shutdown).await;
        };
        consumers.push((consumer, spec, source));
    }

    let c = &ctx.cfg;
    for (consumer, spec, source) in consumers {
        tracker.spawn(worker::consume(ctx.clone(), consumer, spec, source));
    }
    tracker.spawn(periodic::every(
        ctx.clone(),
        "heartbeat",
        c.heartbeat_interval(),
        periodic::heartbeat,
    ));
    tracker.spawn(periodic::every(
        ctx.clone(),
        "takeover",
        c.heartbeat_interval(),
        periodic::takeover,
    ));
    tracker.spawn(periodic::every(
        ctx.clone(),
        "sweep",
        config::dur(c.sweep_interval_secs),
        periodic::sweep,
    ));
    tracker.spawn(periodic::every(
        ctx.clone(),
        "callback_timeouts",
        config::dur(c.check_timeouts_interval_secs),
        periodic::callback_timeouts,
    ));
    tracker.spawn(periodic::every(
        ctx.clone(),
        "fast_track_lapses",
        c.fast_track_timeout() / 2,
        fast_track::lapses,
    ));
    tracker.spawn(periodic::every(
        ctx.clone(),
        "power_sync",
        config::dur(c.power_sync_interval_secs),
        periodic::power_sync,
    ));
    tracker.spawn(periodic::every(
        ctx.clone(),
        "admission",
        admission::REFRESH,
        admission::refresh,
    ));
    tracker.spawn(periodic::every(
        ctx.clone(),
        "allocations",
        config::dur(c.sweep_interval_secs),
        allocation::sweep,
    ));
    // A first sweep at once picks up whatever happened while no conductor was running.
    tracker.spawn(periodic::sweep(ctx.clone()));
    tracker.spawn(allocation::sweep(ctx.clone()));
    shutdown.ready();
    tracing::info!(conductor = %host, queue = %c.queue, "conductor ready");

    shutdown.cancelled().await;
    stop(&ctx, &shutdown).await
}

/// How long a stopping conductor spends publishing the notifications still queued.
const EVENTS_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// On shutdown: drain running workflows (bounded), release what is still held, unregister.
async fn stop(ctx: &Ctx, shutdown: &Shutdown) -> Result<(), ConductorError> {
    let host = &ctx.cfg.hostname;
    tracing::info!(conductor = %host, "conductor stopping");
    // `drain` logs the tasks it gave up on.
    let _ = shutdown.drain().await;
    // Anything still held (a workflow cut off by the drain timeout) is released now: its
    // node keeps its recorded state and the next conductor re-plans it.
    if let Err(e) = ctx.store.node_release_all_held_by(host).await {
        tracing::warn!(error = %ErrorChain(&e), "cannot release locks at shutdown");
    }
    if let Err(e) = ctx.store.conductor_unregister(host).await {
        tracing::warn!(error = %ErrorChain(&e), "cannot unregister");
    }
    ctx.events.close(EVENTS_FLUSH_TIMEOUT).await;
    tracing::info!(conductor = %host, "conductor stopped");
    Ok(())
}
