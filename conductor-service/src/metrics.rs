//! Prometheus metrics of the conductor (`ferric_conductor_*`) and of the image writes its
//! agents report (`ferric_agent_*`), and the `/metrics` endpoint that serves them.
//!
//! The families live in one registry per process ([`get`]): the events they count happen
//! deep in drivers, agent calls and workflows that share no handle but the process, and a
//! process runs one conductor (several only in tests, which then read the sum). Each
//! service owns its registry and serves it on its own listener, so `ferric up` exposes the
//! conductor's on `[conductor] metrics_bind` next to api-service's and pxe-service's
//! `/metrics`; [`registry`] lets a combined process gather it elsewhere.
//!
//! The agent keeps no metrics endpoint of its own (it lives in a ramdisk for minutes and
//! nothing scrapes it): its PrepareImage progress stream reaches the conductor, which
//! records every write's bytes, throughput and phase times here ([`WriteMeter`]), once per
//! deploy.
//!
//! Labels stay bounded and free of secrets: work types, step kinds, driver and operation
//! names, error kinds and outcomes; never a node UUID, a BMC address or a URL.
//!
//! If the families cannot be built or registered, the error is logged once and every
//! recording function does nothing: metrics never stop a conductor.

mod bmc;
mod write;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use deploy::steps::StepKind;
use prometheus::core::Collector;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::agent_client::AgentError;
use crate::deploy_iface::StepOutcome;
use crate::task::WorkflowError;
use crate::workflows::Work;

pub use bmc::Metered;
pub use write::{WriteMeter, WriteSummary};

/// Latency buckets of calls to other machines (BMCs, agents), in seconds.
const CALL_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Buckets of waits inside the conductor (queue age, locks, workers), in seconds.
const WAIT_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Buckets of workflows, steps and write phases, in seconds (up to hours for big disks).
const LONG_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    7200.0,
];
/// Throughput buckets, bytes per second: 1 MiB/s to 4 GiB/s.
const RATE_BUCKETS: &[f64] = &[
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    33_554_432.0,
    67_108_864.0,
    134_217_728.0,
    268_435_456.0,
    536_870_912.0,
    1_073_741_824.0,
    2_147_483_648.0,
    4_294_967_296.0,
];

/// The conductor's metric families.
#[derive(Debug, Clone)]
pub struct ConductorMetrics {
    registry: Registry,
    deliveries: IntCounterVec,
    delivery_age: HistogramVec,
    deliveries_in_progress: IntGauge,
    lock_wait: Histogram,
    lock_conflicts: IntCounter,
    lock_give_ups: IntCounter,
    forwarded: IntCounterVec,
    workflow_duration: HistogramVec,
    workflows_in_flight: IntGaugeVec,
    deploys_in_flight: IntGauge,
    step_duration: HistogramVec,
    bmc_duration: HistogramVec,
    bmc_errors: IntCounterVec,
    agent_duration: HistogramVec,
    admissions_queued: IntGaugeVec,
    admission_wait: HistogramVec,
    pub(crate) write: write::WriteFamilies,
}

fn histogram_vec(
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> prometheus::Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl ConductorMetrics {
    /// Build and register every family in a fresh registry.
    ///
    /// # Errors
    /// A family that is malformed or registered twice (a programming error).
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let counter = |name: &str, help: &str| register(&r, IntCounter::new(name, help)?);
        Ok(Self {
            deliveries: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ferric_conductor_deliveries_total",
                        "Work-queue deliveries taken, by event kind",
                    ),
                    &["kind"],
                )?,
            )?,
            delivery_age: register(
                &r,
                histogram_vec(
                    "ferric_conductor_delivery_age_seconds",
                    "Time from an event's publication to the start of its handling, by kind",
                    WAIT_BUCKETS,
                    &["kind"],
                )?,
            )?,
            deliveries_in_progress: register(
                &r,
                IntGauge::new(
                    "ferric_conductor_deliveries_in_progress",
                    "Deliveries received and not yet settled (the prefetch window in use)",
                )?,
            )?,
            lock_wait: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ferric_conductor_lock_wait_seconds",
                        "Time from the first attempt to take a node lock until it was taken",
                    )
                    .buckets(WAIT_BUCKETS.to_vec()),
                )?,
            )?,
            lock_conflicts: counter(
                "ferric_conductor_lock_conflicts_total",
                "Attempts to take a node lock that another task or conductor held",
            )?,
            lock_give_ups: counter(
                "ferric_conductor_lock_give_ups_total",
                "Wakes that left a node to its lock holder after every retry",
            )?,
            forwarded: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ferric_conductor_deliveries_forwarded_total",
                        "Node work sent on to the node's conductor on the hash ring, by the \
                         queue it came from (shared, or a departed conductor's)",
                    ),
                    &["queue"],
                )?,
            )?,
            workflow_duration: register(
                &r,
                histogram_vec(
                    "ferric_conductor_workflow_duration_seconds",
                    "Workflow runs under a node lock, by work type and outcome",
                    LONG_BUCKETS,
                    &["work", "outcome"],
                )?,
            )?,
            workflows_in_flight: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "ferric_conductor_workflows_in_flight",
                        "Workflows running now, by work type",
                    ),
                    &["work"],
                )?,
            )?,
            deploys_in_flight: register(
                &r,
                IntGauge::new(
                    "ferric_conductor_deploys_in_flight",
                    "Deploy workflows running now (a deploy waiting for its ramdisk to call \
                     back runs none)",
                )?,
            )?,
            step_duration: register(
                &r,
                histogram_vec(
                    "ferric_conductor_step_duration_seconds",
                    "Deploy and clean steps, by plan, step kind and outcome",
                    LONG_BUCKETS,
                    &["plan", "step", "outcome"],
                )?,
            )?,
            bmc_duration: register(
                &r,
                histogram_vec(
                    "ferric_conductor_bmc_call_duration_seconds",
                    "Power and management calls to BMCs, by driver and operation",
                    CALL_BUCKETS,
                    &["driver", "operation"],
                )?,
            )?,
            bmc_errors: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ferric_conductor_bmc_call_errors_total",
                        "Failed BMC calls, by driver, operation and error kind",
                    ),
                    &["driver", "operation", "error"],
                )?,
            )?,
            agent_duration: register(
                &r,
                histogram_vec(
                    "ferric_conductor_agent_command_duration_seconds",
                    "gRPC commands to deploy agents, by command and outcome",
                    CALL_BUCKETS,
                    &["command", "outcome"],
                )?,
            )?,
            admissions_queued: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "ferric_conductor_admissions_queued",
                        "Node workflows waiting for a worker, by lane (main, slow)",
                    ),
                    &["lane"],
                )?,
            )?,
            admission_wait: register(
                &r,
                histogram_vec(
                    "ferric_conductor_admission_wait_seconds",
                    "Time node workflows waited for a worker, by lane",
                    WAIT_BUCKETS,
                    &["lane"],
                )?,
            )?,
            write: write::WriteFamilies::new(&r)?,
            registry: r,
        })
    }

    /// The registry holding every family.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The process's conductor metrics; `None` when they could not be built (logged once).
pub fn get() -> Option<&'static ConductorMetrics> {
    static METRICS: OnceLock<Option<ConductorMetrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| match ConductorMetrics::new() {
            Ok(m) => Some(m),
            Err(error) => {
                tracing::error!(%error, "conductor metrics unavailable");
                None
            }
        })
        .as_ref()
}

/// The registry of the conductor's metrics, for a process that serves several services'
/// metrics itself.
pub fn registry() -> Option<&'static Registry> {
    get().map(ConductorMetrics::registry)
}

/// The conductor's metrics in Prometheus' text format.
pub fn render() -> String {
    let Some(m) = get() else { return String::new() };
    let mut buf = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&m.registry.gather(), &mut buf) {
        tracing::warn!(%error, "encoding metrics failed");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Serve `GET /metrics` on `listener` until `stop` is cancelled (`[conductor] metrics_bind`;
/// the conductor itself has no other HTTP server).
pub async fn serve(listener: TcpListener, stop: CancellationToken) {
    use axum::routing::get as route_get;
    let app = axum::Router::new().route(
        "/metrics",
        route_get(|| async {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], render())
        }),
    );
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "conductor metrics listening");
    if let Err(error) =
        axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
    {
        tracing::error!(%error, "conductor metrics server failed");
    }
}

/// Undoes a gauge increment when dropped, whichever way the work ends.
#[must_use = "the gauge goes back down when this is dropped"]
pub struct GaugeGuard(Vec<IntGauge>);

impl GaugeGuard {
    fn up(gauges: Vec<IntGauge>) -> Self {
        for g in &gauges {
            g.inc();
        }
        Self(gauges)
    }

    fn none() -> Self {
        Self(Vec::new())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        for g in &self.0 {
            g.dec();
        }
    }
}

/// The label of a work-queue event.
pub fn event_kind(payload: Option<&proto::events::event::Payload>) -> &'static str {
    use proto::events::event::Payload as P;
    match payload {
        Some(P::ProvisionRequested(_)) => "provision",
        Some(P::PowerRequested(_)) => "power",
        Some(P::AgentHeartbeat(_)) => "heartbeat",
        Some(P::ManagementRequested(_)) => "management",
        Some(P::AllocationRequested(_)) => "allocation",
        Some(P::NodeStateChanged(_) | P::DeployProgressed(_) | P::MaintenanceChanged(_)) => {
            "notification"
        }
        None => "empty",
    }
}

/// A delivery of `kind` published at `created_at` (RFC 3339; unparsable: age not recorded)
/// starts being handled at `now`; in progress until the guard drops.
pub fn delivery_started(
    kind: &'static str,
    created_at: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> GaugeGuard {
    let Some(m) = get() else { return GaugeGuard::none() };
    m.deliveries.with_label_values(&[kind]).inc();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(created_at)
        && let Ok(age) = (now - at.with_timezone(&chrono::Utc)).to_std()
    {
        m.delivery_age.with_label_values(&[kind]).observe(age.as_secs_f64());
    }
    GaugeGuard::up(vec![m.deliveries_in_progress.clone()])
}

/// A node lock was taken `waited` after the first attempt.
pub fn lock_acquired(waited: Duration) {
    if let Some(m) = get() {
        m.lock_wait.observe(waited.as_secs_f64());
    }
}

/// An attempt to take a node lock found it held.
pub fn lock_conflict() {
    if let Some(m) = get() {
        m.lock_conflicts.inc();
    }
}

/// Node work from `queue` (`shared` or `departed`) was sent on to the node's conductor.
pub fn forwarded(queue: &'static str) {
    if let Some(m) = get() {
        m.forwarded.with_label_values(&[queue]).inc();
    }
}

/// A wake gave up on a node that stayed locked.
pub fn lock_given_up() {
    if let Some(m) = get() {
        m.lock_give_ups.inc();
    }
}

/// The label of a work type.
pub fn work_label(work: Work) -> &'static str {
    match work {
        Work::Verify => "verify",
        Work::Deploy => "deploy",
        Work::Clean => "clean",
        Work::Delete => "delete",
        Work::ResumeDeploy => "resume_deploy",
        Work::ResumeClean => "resume_clean",
        Work::Inspect => "inspect",
        Work::ResumeInspect => "resume_inspect",
        Work::Adopt => "adopt",
        Work::Rescue => "rescue",
        Work::ResumeRescue => "resume_rescue",
        Work::Unrescue => "unrescue",
        Work::Service => "service",
        Work::ResumeService => "resume_service",
        Work::Power(_) => "power",
        Work::Management => "management",
    }
}

/// A workflow being timed ([`workflow_started`]).
pub struct WorkflowTimer {
    work: &'static str,
    started: Instant,
    _running: GaugeGuard,
}

/// A workflow of `work` starts; it is in flight until the timer is finished or dropped.
pub fn workflow_started(work: Work) -> WorkflowTimer {
    let label = work_label(work);
    let running = match get() {
        Some(m) => {
            let mut gauges = vec![m.workflows_in_flight.with_label_values(&[label])];
            if matches!(work, Work::Deploy | Work::ResumeDeploy) {
                gauges.push(m.deploys_in_flight.clone());
            }
            GaugeGuard::up(gauges)
        }
        None => GaugeGuard::none(),
    };
    WorkflowTimer { work: label, started: Instant::now(), _running: running }
}

impl WorkflowTimer {
    /// Record the run: `res` is what the workflow returned (`Err` for a panic), `failed`
    /// whether it left the node failed (the workflow records such failures and returns Ok).
    pub fn finish<P>(self, res: &Result<Result<(), WorkflowError>, P>, failed: bool) {
        let outcome = match res {
            Ok(Ok(())) if failed => "failed",
            Ok(Ok(())) => "ok",
            Ok(Err(e)) => workflow_error_label(e),
            Err(_panic) => "panic",
        };
        if let Some(m) = get() {
            m.workflow_duration
                .with_label_values(&[self.work, outcome])
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

fn workflow_error_label(e: &WorkflowError) -> &'static str {
    match e {
        WorkflowError::Failed(_) => "failed",
        WorkflowError::StateChanged { .. } => "state_changed",
        WorkflowError::Shutdown => "shutdown",
        WorkflowError::Store(_) => "db_error",
    }
}

/// The label of a step kind.
pub fn step_label(kind: StepKind) -> &'static str {
    match kind {
        StepKind::BootRamdisk => "boot_ramdisk",
        StepKind::WriteImage => "write_image",
        StepKind::InstallBootloader => "install_bootloader",
        StepKind::SetBootDisk => "set_boot_disk",
        StepKind::RebootToInstance => "reboot_to_instance",
        StepKind::FakeDeploy => "fake_deploy",
        StepKind::EraseMetadata => "erase_metadata",
        StepKind::EraseDevices => "erase_devices",
        StepKind::PowerOff => "power_off",
        StepKind::AgentSteps => "agent_steps",
        StepKind::Agent => "agent",
    }
}

/// A step of `plan` (`deploy`, `clean`) of `kind` ran from `started` with `res`.
pub fn step_finished(
    plan: &'static str,
    kind: StepKind,
    started: Instant,
    res: &Result<StepOutcome, WorkflowError>,
) {
    let outcome = match res {
        Ok(StepOutcome::Continue) => "done",
        Ok(StepOutcome::Wait) => "wait",
        Err(e) => workflow_error_label(e),
    };
    if let Some(m) = get() {
        m.step_duration
            .with_label_values(&[plan, step_label(kind), outcome])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The label of an agent call's outcome.
fn agent_outcome<T>(res: &Result<T, AgentError>) -> &'static str {
    match res {
        Ok(_) => "ok",
        Err(AgentError::NotConfigured(_)) => "not_configured",
        Err(AgentError::Unreachable { .. }) => "unreachable",
        Err(AgentError::Timeout { .. }) => "timeout",
        Err(AgentError::Unauthorized { .. }) => "unauthorized",
        Err(AgentError::UnknownCommand { .. }) => "unknown_command",
        Err(AgentError::CertificateMismatch { .. }) => "certificate_mismatch",
        Err(AgentError::Unsupported { .. }) => "unsupported",
        Err(AgentError::Rpc { .. }) => "rpc_error",
    }
}

/// A gRPC command to an agent (`command` is the RPC name) took `elapsed` and ended with `res`.
pub fn agent_command<T>(command: &'static str, elapsed: Duration, res: &Result<T, AgentError>) {
    if let Some(m) = get() {
        m.agent_duration
            .with_label_values(&[command, agent_outcome(res)])
            .observe(elapsed.as_secs_f64());
    }
}

/// A node workflow waits for a worker of its lane (`slow` or main); queued until the guard
/// drops, and the wait is recorded then.
pub fn admission_waiting(slow: bool) -> AdmissionTimer {
    let lane = if slow { "slow" } else { "main" };
    let queued = match get() {
        Some(m) => GaugeGuard::up(vec![m.admissions_queued.with_label_values(&[lane])]),
        None => GaugeGuard::none(),
    };
    AdmissionTimer { lane, started: Instant::now(), _queued: queued }
}

/// See [`admission_waiting`].
pub struct AdmissionTimer {
    lane: &'static str,
    started: Instant,
    _queued: GaugeGuard,
}

impl Drop for AdmissionTimer {
    fn drop(&mut self) {
        if let Some(m) = get() {
            m.admission_wait
                .with_label_values(&[self.lane])
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    #[test]
    fn test_recordings_show_in_the_exposition() {
        let before = render();
        let deliveries = sample(&before, "ferric_conductor_deliveries_total{kind=\"power\"}");
        {
            let now = chrono::Utc::now();
            let created = (now - chrono::Duration::seconds(2)).to_rfc3339();
            let _g = delivery_started("power", &created, now);
            assert!(render().contains("ferric_conductor_deliveries_in_progress"));
        }
        lock_conflict();
        lock_acquired(Duration::from_millis(3));
        let t = workflow_started(Work::Deploy);
        assert!(sample(&render(), "ferric_conductor_deploys_in_flight") >= 1.0);
        t.finish::<()>(&Ok(Ok(())), false);
        step_finished("deploy", StepKind::WriteImage, Instant::now(), &Ok(StepOutcome::Continue));
        agent_command::<()>("GetInventory", Duration::from_millis(5), &Ok(()));
        drop(admission_waiting(false));
        let text = render();
        assert_eq!(
            sample(&text, "ferric_conductor_deliveries_total{kind=\"power\"}"),
            deliveries + 1.0
        );
        assert!(
            sample(&text, "ferric_conductor_delivery_age_seconds_count{kind=\"power\"}") >= 1.0
        );
        assert!(sample(&text, "ferric_conductor_lock_conflicts_total") >= 1.0);
        assert!(sample(&text, "ferric_conductor_lock_wait_seconds_count") >= 1.0);
        assert!(
            text.contains(
                "ferric_conductor_workflow_duration_seconds_count{outcome=\"ok\",work=\"deploy\"}"
            ),
            "{text}"
        );
        assert!(text.contains(
            "ferric_conductor_step_duration_seconds_count{outcome=\"done\",plan=\"deploy\",step=\"write_image\"}"
        ));
        assert!(text.contains(
            "ferric_conductor_agent_command_duration_seconds_count{command=\"GetInventory\",outcome=\"ok\"}"
        ));
        assert!(text.contains("ferric_conductor_admission_wait_seconds_count{lane=\"main\"}"));
    }

    #[test]
    fn test_a_panicked_or_failed_workflow_is_labelled_so() {
        workflow_started(Work::Clean).finish::<&str>(&Err("boom"), false);
        workflow_started(Work::Clean).finish::<()>(&Ok(Ok(())), true);
        let text = render();
        assert!(text.contains("outcome=\"panic\",work=\"clean\""), "{text}");
        assert!(text.contains("outcome=\"failed\",work=\"clean\""), "{text}");
    }
}
