//! The large-fleet simulator's machines: thousands of BMCs in one process, on a seeded
//! random source and simulated time.
//!
//! A fleet this large has no HTTP server per node. [`SimBmcs`] implements the conductor's
//! own driver traits ([`PowerDriver`], [`ManagementDriver`]) and keeps each machine's power
//! state and boot device in memory, answering after a seeded BMC latency. The real Redfish and
//! IPMI paths stay covered by the tests that run [`crate::bmc`] and the emulators; this module
//! is for scale and for replay.
//!
//! [`FaultPlan`] decides, from the seed and a node's index alone, which fault a machine has:
//! a BMC that refuses power changes, one that hangs until the caller's timeout, an agent that
//! crashes mid-write, a slow disk, or heartbeats that get lost. Every random draw is a pure
//! function of `(seed, node, purpose, n)`, never of the order in which tasks happen to run,
//! so the same seed and plan replay the same per-node histories however the runtime
//! interleaves the fleet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy::drivers::{BootDevice, DriverError, DriverFuture, ManagementDriver, PowerDriver};
use deploy::{Node, NodeId, PowerState};
use serde_json::Value;
use tokio::sync::mpsc;

/// The `driver_info` key that holds a simulated machine's index in its fleet.
pub const SIM_INDEX_KEY: &str = "sim_index";

/// What can go wrong with one simulated machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeFault {
    /// Nothing.
    None,
    /// The BMC answers every power change with an error.
    BmcRefuses,
    /// The BMC accepts the connection and never answers a power change: the caller's
    /// timeout ends the call.
    BmcHangs,
    /// The agent crashes in the middle of its first image write and never comes back.
    AgentCrashes,
    /// The disk writes this many times slower than the others.
    SlowDisk(u32),
    /// The agent's first heartbeats of each ramdisk boot are lost on the way.
    DroppedHeartbeats(u32),
}

impl NodeFault {
    /// Whether a deploy on this machine fails (and must end in a failed state with
    /// `last_error`), as opposed to only taking longer.
    pub fn is_fatal(self) -> bool {
        matches!(self, NodeFault::BmcRefuses | NodeFault::BmcHangs | NodeFault::AgentCrashes)
    }

    /// A short label for reports.
    pub fn label(self) -> &'static str {
        match self {
            NodeFault::None => "none",
            NodeFault::BmcRefuses => "bmc_refuses",
            NodeFault::BmcHangs => "bmc_hangs",
            NodeFault::AgentCrashes => "agent_crashes",
            NodeFault::SlowDisk(_) => "slow_disk",
            NodeFault::DroppedHeartbeats(_) => "dropped_heartbeats",
        }
    }
}

/// The share of machines with each fault (each between 0 and 1; their sum at most 1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FaultRates {
    /// BMCs that refuse power changes.
    pub bmc_refuses: f64,
    /// BMCs that hang.
    pub bmc_hangs: f64,
    /// Agents that crash mid-write.
    pub agent_crashes: f64,
    /// Slow disks.
    pub slow_disk: f64,
    /// Lost heartbeats.
    pub dropped_heartbeats: f64,
}

impl FaultRates {
    /// No faults at all.
    pub const NONE: FaultRates = FaultRates {
        bmc_refuses: 0.0,
        bmc_hangs: 0.0,
        agent_crashes: 0.0,
        slow_disk: 0.0,
        dropped_heartbeats: 0.0,
    };

    /// A fleet where about one machine in a hundred has each fault.
    pub const DEFAULT: FaultRates = FaultRates {
        bmc_refuses: 0.01,
        bmc_hangs: 0.01,
        agent_crashes: 0.01,
        slow_disk: 0.02,
        dropped_heartbeats: 0.02,
    };

    fn all(&self) -> [f64; 5] {
        [
            self.bmc_refuses,
            self.bmc_hangs,
            self.agent_crashes,
            self.slow_disk,
            self.dropped_heartbeats,
        ]
    }

    /// Check that every rate is a share and that they add up to at most 1.
    ///
    /// # Errors
    /// A message naming the problem.
    pub fn validate(&self) -> Result<(), String> {
        let all = self.all();
        if all.iter().any(|r| !r.is_finite() || *r < 0.0 || *r > 1.0) {
            return Err("every fault rate must be between 0 and 1".into());
        }
        if all.iter().sum::<f64>() > 1.0 + 1e-9 {
            return Err("the fault rates add up to more than 1".into());
        }
        Ok(())
    }
}

/// Why a random number is drawn: each purpose has its own stream, so adding a draw for one
/// purpose never shifts another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Draw {
    /// The node's UUID.
    Uuid = 1,
    /// The node's fault.
    Fault = 2,
    /// The fault's parameter (how slow, how many heartbeats).
    FaultParam = 3,
    /// A BMC call's latency (n = the call's number for this node).
    BmcLatency = 4,
    /// A ramdisk boot's duration (n = the boot's number for this node).
    BootTime = 5,
    /// The offset of the first heartbeat after boot.
    HeartbeatOffset = 6,
}

/// A seeded fault plan: which machine has which fault, and every random timing.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FaultPlan {
    /// The seed.
    pub seed: u64,
    /// The fault shares.
    pub rates: FaultRates,
    /// How long a hanging BMC keeps a call before the caller gives up (the driver's own
    /// request timeout, as a real client would see it).
    #[serde(with = "secs")]
    pub bmc_timeout: Duration,
}

mod secs {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// fmix64 of MurmurHash3: a fast bijective mixer with full avalanche.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

impl FaultPlan {
    /// A plan with `rates` on `seed`.
    pub fn new(seed: u64, rates: FaultRates) -> Self {
        Self { seed, rates, bmc_timeout: Duration::from_secs(60) }
    }

    /// The `n`-th random number of `purpose` for the node at `index`.
    pub fn draw(&self, index: u64, purpose: Draw, n: u64) -> u64 {
        let mut h = fmix64(self.seed ^ 0x9e37_79b9_7f4a_7c15);
        h = fmix64(h ^ index.wrapping_mul(0xbf58_476d_1ce4_e5b9));
        h = fmix64(h ^ (purpose as u64).wrapping_mul(0x94d0_49bb_1331_11eb));
        fmix64(h ^ n)
    }

    /// A uniform number in `[0, 1)` from [`FaultPlan::draw`].
    pub fn unit(&self, index: u64, purpose: Draw, n: u64) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "53 random bits fit an f64 exactly")]
        let v = (self.draw(index, purpose, n) >> 11) as f64;
        v / (1u64 << 53) as f64
    }

    /// A duration between `lo` and `hi`, drawn as [`FaultPlan::unit`].
    pub fn between(
        &self,
        index: u64,
        purpose: Draw,
        n: u64,
        lo: Duration,
        hi: Duration,
    ) -> Duration {
        lo + hi.saturating_sub(lo).mul_f64(self.unit(index, purpose, n))
    }

    /// The UUID of the node at `index`: the same for the same seed.
    pub fn node_id(&self, index: u64) -> NodeId {
        let hi = self.draw(index, Draw::Uuid, 0);
        let lo = self.draw(index, Draw::Uuid, 1);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&hi.to_be_bytes());
        b[8..].copy_from_slice(&lo.to_be_bytes());
        NodeId::from(uuid::Builder::from_random_bytes(b).into_uuid())
    }

    /// The fault of the node at `index`.
    pub fn fault(&self, index: u64) -> NodeFault {
        let u = self.unit(index, Draw::Fault, 0);
        let param = self.draw(index, Draw::FaultParam, 0);
        let r = &self.rates;
        let mut edge = 0.0;
        let mut hit = |rate: f64| {
            edge += rate;
            u < edge
        };
        if hit(r.bmc_refuses) {
            NodeFault::BmcRefuses
        } else if hit(r.bmc_hangs) {
            NodeFault::BmcHangs
        } else if hit(r.agent_crashes) {
            NodeFault::AgentCrashes
        } else if hit(r.slow_disk) {
            // 4 to 19 times slower.
            NodeFault::SlowDisk(4 + u32::try_from(param % 16).unwrap_or(0))
        } else if hit(r.dropped_heartbeats) {
            // One to three lost heartbeats.
            NodeFault::DroppedHeartbeats(1 + u32::try_from(param % 3).unwrap_or(0))
        } else {
            NodeFault::None
        }
    }
}

/// A simulated machine's index, from its `driver_info`.
pub fn sim_index(node: &Node) -> Option<u64> {
    match node.driver_info.get(SIM_INDEX_KEY)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
struct Machine {
    power: PowerState,
    boot: BootDevice,
    /// BMC calls so far (numbers each call's latency draw).
    calls: u64,
    /// Power-ons so far.
    boots: u64,
}

impl Default for Machine {
    fn default() -> Self {
        Self { power: PowerState::Off, boot: BootDevice::Disk, calls: 0, boots: 0 }
    }
}

/// A machine powered on: what the firmware will boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerOn {
    /// The node.
    pub node: NodeId,
    /// Its index in the fleet.
    pub index: u64,
    /// The boot device set at power-on.
    pub device: BootDevice,
    /// This machine's power-on count (1 = first).
    pub boot: u64,
}

/// Every simulated BMC of a fleet, as the conductor's power and management drivers.
#[derive(Clone)]
pub struct SimBmcs {
    plan: FaultPlan,
    latency: (Duration, Duration),
    machines: Arc<Mutex<HashMap<NodeId, Machine>>>,
    power_on: mpsc::UnboundedSender<PowerOn>,
}

impl std::fmt::Debug for SimBmcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBmcs").field("plan", &self.plan).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SimBmcs {
    /// BMCs following `plan`, each call taking between `latency.0` and `latency.1` of
    /// (simulated) time. Every power-on is reported on the returned channel, which is what
    /// starts a simulated machine's boot.
    pub fn new(
        plan: FaultPlan,
        latency: (Duration, Duration),
    ) -> (Self, mpsc::UnboundedReceiver<PowerOn>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { plan, latency, machines: Arc::default(), power_on: tx }, rx)
    }

    /// The plan these BMCs follow.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// The machine's power state as its BMC knows it.
    pub fn power(&self, node: NodeId) -> PowerState {
        lock(&self.machines).get(&node).map_or(PowerState::Off, |m| m.power)
    }

    /// BMC calls answered or refused so far, over the whole fleet.
    pub fn calls(&self) -> u64 {
        lock(&self.machines).values().map(|m| m.calls).sum()
    }

    /// Each machine's BMC calls so far, passed to `f` one machine at a time (under the
    /// fleet's lock, so `f` must be short). Machines whose BMC has never been called are
    /// not passed.
    pub fn for_each_calls(&self, mut f: impl FnMut(NodeId, u64)) {
        for (id, m) in lock(&self.machines).iter() {
            f(*id, m.calls);
        }
    }

    fn index(node: &Node) -> Result<u64, DriverError> {
        sim_index(node).ok_or_else(|| DriverError::InvalidDriverInfo {
            message: format!("driver_info.{SIM_INDEX_KEY} is required for a simulated machine"),
        })
    }

    fn label(index: u64) -> String {
        format!("sim-bmc-{index}")
    }

    /// Count a call and wait its latency.
    async fn call(&self, node: &Node, index: u64) {
        let n = {
            let mut m = lock(&self.machines);
            let e = m.entry(node.uuid).or_default();
            e.calls += 1;
            e.calls
        };
        let d = self.plan.between(index, Draw::BmcLatency, n, self.latency.0, self.latency.1);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// The fault a power change meets, if any (after waiting what it costs).
    async fn power_fault(&self, index: u64) -> Result<(), DriverError> {
        match self.plan.fault(index) {
            NodeFault::BmcRefuses => Err(DriverError::Bmc {
                bmc: Self::label(index),
                message: "Base.1.8.GeneralError: the power action could not be completed".into(),
            }),
            NodeFault::BmcHangs => {
                tokio::time::sleep(self.plan.bmc_timeout).await;
                Err(DriverError::Timeout { bmc: Self::label(index), after: self.plan.bmc_timeout })
            }
            _ => Ok(()),
        }
    }
}

impl PowerDriver for SimBmcs {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        Self::index(node).map(|_| ())
    }

    fn get_power_state<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, PowerState> {
        Box::pin(async move {
            let index = Self::index(node)?;
            self.call(node, index).await;
            Ok(self.power(node.uuid))
        })
    }

    fn set_power_state<'a>(
        &'a self,
        node: &'a Node,
        target: PowerState,
    ) -> DriverFuture<'a, PowerState> {
        Box::pin(async move {
            let index = Self::index(node)?;
            self.call(node, index).await;
            self.power_fault(index).await?;
            let reached = match target {
                PowerState::On | PowerState::Rebooting | PowerState::SoftRebooting => {
                    PowerState::On
                }
                PowerState::Off | PowerState::SoftOff => PowerState::Off,
                PowerState::Error => return Err(DriverError::error_state_requested("fake")),
            };
            let booted = {
                let mut m = lock(&self.machines);
                let e = m.entry(node.uuid).or_default();
                let was_on = e.power == PowerState::On;
                e.power = reached;
                // A power-on from off, or any reboot, runs the firmware again.
                let boots = reached == PowerState::On
                    && (!was_on
                        || matches!(target, PowerState::Rebooting | PowerState::SoftRebooting));
                if boots {
                    e.boots += 1;
                }
                boots.then_some(PowerOn { node: node.uuid, index, device: e.boot, boot: e.boots })
            };
            if let Some(on) = booted {
                // The receiver is gone only when the simulation is over.
                let _ = self.power_on.send(on);
            }
            Ok(reached)
        })
    }
}

impl ManagementDriver for SimBmcs {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        PowerDriver::validate(self, node)
    }

    fn set_boot_device<'a>(
        &'a self,
        node: &'a Node,
        device: BootDevice,
        _persistent: bool,
    ) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            let index = Self::index(node)?;
            self.call(node, index).await;
            lock(&self.machines).entry(node.uuid).or_default().boot = device;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_plan_is_a_function_of_seed_and_index() {
        let a = FaultPlan::new(7, FaultRates::DEFAULT);
        let b = FaultPlan::new(7, FaultRates::DEFAULT);
        let c = FaultPlan::new(8, FaultRates::DEFAULT);
        let faults = |p: &FaultPlan| (0..2000).map(|i| p.fault(i)).collect::<Vec<_>>();
        assert_eq!(faults(&a), faults(&b));
        assert_ne!(faults(&a), faults(&c));
        assert_eq!(a.node_id(5), b.node_id(5));
        assert_ne!(a.node_id(5), a.node_id(6));
        assert_ne!(a.node_id(5), c.node_id(5));
    }

    #[test]
    fn test_fault_shares_follow_the_rates() {
        let p = FaultPlan::new(1, FaultRates::DEFAULT);
        let n = 100_000;
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for i in 0..n {
            *counts.entry(p.fault(i).label()).or_default() += 1;
        }
        let share = |k: &str| f64::from(counts.get(k).copied().unwrap_or(0)) / 100_000.0;
        for (k, want) in [
            ("bmc_refuses", 0.01),
            ("bmc_hangs", 0.01),
            ("agent_crashes", 0.01),
            ("slow_disk", 0.02),
            ("dropped_heartbeats", 0.02),
        ] {
            assert!((share(k) - want).abs() < want * 0.15, "{k}: {} against {want}", share(k));
        }
        let none = FaultPlan::new(1, FaultRates::NONE);
        assert!((0..10_000).all(|i| none.fault(i) == NodeFault::None));
    }

    #[test]
    fn test_rates_are_validated() {
        assert!(FaultRates::DEFAULT.validate().is_ok());
        let mut r = FaultRates::NONE;
        r.bmc_hangs = 1.5;
        assert!(r.validate().is_err());
        r = FaultRates { bmc_refuses: 0.6, bmc_hangs: 0.6, ..FaultRates::NONE };
        assert!(r.validate().is_err());
        r.bmc_hangs = f64::NAN;
        assert!(r.validate().is_err());
    }

    fn node(plan: &FaultPlan, index: u64) -> Node {
        let mut n = Node::new(plan.node_id(index), "fake-hardware", chrono::Utc::now());
        n.driver_info.insert(SIM_INDEX_KEY.into(), index.into());
        n
    }

    fn index_with(plan: &FaultPlan, want: NodeFault) -> u64 {
        (0..100_000).find(|&i| plan.fault(i) == want).expect("the plan has that fault")
    }

    #[tokio::test(start_paused = true)]
    async fn test_bmcs_power_boot_and_fail_as_planned() {
        let plan =
            FaultPlan::new(3, FaultRates { bmc_refuses: 0.3, bmc_hangs: 0.3, ..FaultRates::NONE });
        let (bmcs, mut on) =
            SimBmcs::new(plan, (Duration::from_millis(100), Duration::from_secs(1)));

        let ok = node(&plan, index_with(&plan, NodeFault::None));
        assert_eq!(bmcs.get_power_state(&ok).await.unwrap(), PowerState::Off);
        bmcs.set_boot_device(&ok, BootDevice::Pxe, false).await.unwrap();
        assert_eq!(bmcs.set_power_state(&ok, PowerState::On).await.unwrap(), PowerState::On);
        let first = on.try_recv().unwrap();
        assert_eq!((first.node, first.device, first.boot), (ok.uuid, BootDevice::Pxe, 1));
        // Powering on what is on does not boot it again; a reboot does.
        bmcs.set_power_state(&ok, PowerState::On).await.unwrap();
        assert!(on.try_recv().is_err());
        bmcs.set_power_state(&ok, PowerState::Rebooting).await.unwrap();
        assert_eq!(on.try_recv().unwrap().boot, 2);
        assert_eq!(bmcs.power(ok.uuid), PowerState::On);
        let mut calls = Vec::new();
        bmcs.for_each_calls(|id, n| calls.push((id, n)));
        assert_eq!(calls, [(ok.uuid, 5)], "one read, a boot device, three power changes");

        let refuses = node(&plan, index_with(&plan, NodeFault::BmcRefuses));
        let e = bmcs.set_power_state(&refuses, PowerState::On).await.unwrap_err();
        assert!(matches!(e, DriverError::Bmc { .. }), "{e}");
        assert_eq!(bmcs.power(refuses.uuid), PowerState::Off);

        let hangs = node(&plan, index_with(&plan, NodeFault::BmcHangs));
        let t0 = tokio::time::Instant::now();
        let e = bmcs.set_power_state(&hangs, PowerState::On).await.unwrap_err();
        assert!(matches!(e, DriverError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() >= plan.bmc_timeout);
        assert!(on.try_recv().is_err());

        let mut bad = ok.clone();
        bad.driver_info.clear();
        assert!(matches!(
            bmcs.set_power_state(&bad, PowerState::On).await,
            Err(DriverError::InvalidDriverInfo { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn test_latencies_replay() {
        let plan = FaultPlan::new(11, FaultRates::NONE);
        let lat = (Duration::from_millis(200), Duration::from_secs(2));
        let mut runs = Vec::new();
        for _ in 0..2 {
            let (bmcs, _on) = SimBmcs::new(plan, lat);
            let n = node(&plan, 42);
            let mut took = Vec::new();
            for _ in 0..5 {
                let t0 = tokio::time::Instant::now();
                bmcs.get_power_state(&n).await.unwrap();
                took.push(t0.elapsed());
            }
            assert!(took.iter().all(|d| *d >= lat.0 && *d <= lat.1));
            runs.push(took);
        }
        assert_eq!(runs[0], runs[1]);
    }
}
