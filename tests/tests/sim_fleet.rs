//! `ferric sim`, the deterministic fleet simulator, run as users run it: the built `ferric`
//! binary with real conductors on simulated time against simulated machines.
//!
//! - the same seed and fault plan replay the same history for every node, byte for byte,
//!   and another seed does not;
//! - every fault of the plan ends where it must: BMC refusals and hangs and agent crashes
//!   in `deploy failed` with `last_error`, slow disks and lost heartbeats in `active` (then
//!   `available` after undeploy and cleaning);
//! - on PostgreSQL the same seed gives the same histories as on SQLite;
//! - a larger fleet across three conductors all reaches its planned states (correctness,
//!   not speed: the figures are printed, not asserted).

#![expect(clippy::print_stderr, reason = "the simulator's figures go to the test log")]
#![expect(
    clippy::unwrap_used,
    reason = "harness helpers of an end-to-end test: a failure is a test failure"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tests::ferric_up::ferric_bin;

/// Run `ferric sim` with `args` plus `--json`; returns the report and the outcomes written
/// to `outcomes` (when given), one JSON value per node.
fn sim(args: &[&str], outcomes: Option<&Path>) -> (Value, Vec<u8>) {
    let mut cmd = Command::new(ferric_bin());
    cmd.arg("sim").args(args).arg("--json").env("RUST_LOG", "error");
    if let Some(p) = outcomes {
        cmd.arg("--outcomes").arg(p);
    }
    let started = std::time::Instant::now();
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ferric sim {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    eprintln!(
        "ferric sim {args:?}: {:.1}s real; phases {}; peak RSS {} KiB",
        started.elapsed().as_secs_f64(),
        report["phases"],
        report["peak_rss_kib"]
    );
    let bytes = outcomes.map(|p| std::fs::read(p).unwrap()).unwrap_or_default();
    (report, bytes)
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn transitions(o: &Value) -> Vec<(String, String)> {
    o["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t[0].as_str().unwrap().to_owned(), t[1].as_str().unwrap().to_owned()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

const FAULTS: &str =
    "bmc_refuses=0.03,bmc_hangs=0.03,agent_crashes=0.03,slow_disk=0.05,dropped_heartbeats=0.05";

#[test]
fn test_same_seed_replays_the_same_histories_and_faults_end_as_planned() {
    let dir = tempfile::tempdir().unwrap();
    let args =
        ["--nodes", "300", "--conductors", "3", "--seed", "11", "--undeploy", "--faults", FAULTS];
    let (first, a) = sim(&args, Some(&dir.path().join("a.jsonl")));
    let (second, b) = sim(&args, Some(&dir.path().join("b.jsonl")));
    assert_eq!(first["digest"], second["digest"]);
    assert!(a == b, "the same seed and plan gave different per-node histories");
    let mut other_args = args;
    other_args[5] = "12";
    let (other, _) = sim(&other_args, None);
    assert_ne!(first["digest"], other["digest"], "another seed replayed the same run");

    let nodes = lines(&a);
    assert_eq!(nodes.len(), 300);
    assert_eq!(first["unexpected"], serde_json::json!([]));
    assert_eq!(first["failed_without_error"], 0);
    assert_eq!(first["still_locked"], 0);

    let mut by_fault: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for n in &nodes {
        assert_eq!(n["provision_state"], n["expected"], "{n}");
        let fault = match &n["fault"] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o.keys().next().unwrap().clone(),
            other => panic!("fault {other}"),
        };
        by_fault.entry(fault).or_default().push(n);
    }
    for kind in
        ["none", "bmc_refuses", "bmc_hangs", "agent_crashes", "slow_disk", "dropped_heartbeats"]
    {
        assert!(by_fault.contains_key(kind), "no node had fault {kind}: {:?}", by_fault.keys());
    }

    let full_cycle = pairs(&[
        ("available", "deploying"),
        ("deploying", "wait call-back"),
        ("wait call-back", "deploying"),
        ("deploying", "active"),
        ("active", "deleting"),
        ("deleting", "cleaning"),
        ("cleaning", "clean wait"),
        ("clean wait", "cleaning"),
        ("cleaning", "available"),
    ]);
    for kind in ["none", "slow_disk", "dropped_heartbeats"] {
        for n in &by_fault[kind] {
            assert_eq!(transitions(n), full_cycle, "{kind}: {n}");
            assert_eq!(n["provision_state"], "available");
            assert!(n["last_error"].is_null(), "{n}");
        }
    }
    // The power-on of the deploy fails: the node never waits for an agent.
    for (kind, says) in [("bmc_refuses", "failed the request"), ("bmc_hangs", "did not answer")] {
        for n in &by_fault[kind] {
            assert_eq!(
                transitions(n),
                pairs(&[("available", "deploying"), ("deploying", "deploy failed")]),
                "{kind}: {n}"
            );
            let err = n["last_error"].as_str().unwrap();
            assert!(err.contains(says), "{kind}: {err}");
        }
    }
    // The agent vanishes mid-write: the write times out (Ironic's 30-minute callback
    // timeout, in simulated time) and the deploy fails.
    for n in &by_fault["agent_crashes"] {
        assert_eq!(
            transitions(n),
            pairs(&[
                ("available", "deploying"),
                ("deploying", "wait call-back"),
                ("wait call-back", "deploying"),
                ("deploying", "deploy failed"),
            ]),
            "{n}"
        );
        let err = n["last_error"].as_str().unwrap();
        assert!(err.contains("stopped answering"), "{err}");
        assert!(!err.contains("127.0.0.1"), "a run-specific address leaked into {err}");
    }
}

/// Machines in the larger run.
const FLEET: u64 = 2_000;

#[test]
fn test_a_fleet_reaches_its_planned_states() {
    let nodes = FLEET.to_string();
    let (r, _) = sim(&["--nodes", &nodes, "--conductors", "3", "--seed", "1"], None);
    assert_eq!(r["unexpected"], serde_json::json!([]), "nodes off the plan");
    assert_eq!(r["failed_without_error"], 0);
    assert_eq!(r["still_locked"], 0);
    let states = r["by_state"].as_object().unwrap();
    let total: u64 = states.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, FLEET);
    let failed = states.get("deploy failed").and_then(Value::as_u64).unwrap_or(0);
    let faults = r["by_fault"].as_object().unwrap();
    let fatal: u64 = ["bmc_refuses", "bmc_hangs", "agent_crashes"]
        .iter()
        .map(|k| faults.get(*k).and_then(Value::as_u64).unwrap_or(0))
        .sum();
    assert!(fatal > 0, "the default plan injects faults");
    assert_eq!(failed, fatal, "exactly the machines with a fatal fault fail");
    assert_eq!(states["active"].as_u64().unwrap(), FLEET - fatal);
    // The hash ring shares the fleet out: every conductor owns about a third.
    let shares = r["ring_shares"].as_object().unwrap();
    assert_eq!(shares.len(), 3, "{shares:?}");
    for (c, n) in shares {
        let n = n.as_u64().unwrap();
        assert!(n * 3 >= FLEET * 85 / 100 && n * 3 <= FLEET * 115 / 100, "{c} owns {n} of {FLEET}");
    }
    // Each conductor did only its own nodes' work: the simulator publishes every request
    // and heartbeat to the shared queue, and the conductors send each on to the node's
    // conductor, whose history entries are then the only ones.
    assert_eq!(r["foreign_entries"], 0, "history entries by another conductor than the node's");
}

/// On PostgreSQL the same seed gives the same histories as on SQLite: the simulator's
/// outcome does not depend on the backend.
#[tokio::test]
async fn test_postgres_replays_the_sqlite_histories() {
    let Some(db) = store::testing::TestDatabase::postgres().await else { return };
    let url = db.url().to_owned();
    let args =
        ["--nodes", "150", "--conductors", "2", "--seed", "21", "--undeploy", "--faults", FAULTS];
    let (on_pg, on_sqlite) = tokio::task::spawn_blocking(move || {
        let mut pg_args = args.to_vec();
        pg_args.extend(["--database", url.as_str()]);
        (sim(&pg_args, None).0, sim(&args, None).0)
    })
    .await
    .unwrap();
    assert_eq!(on_pg["unexpected"], serde_json::json!([]));
    assert_eq!(on_pg["digest"], on_sqlite["digest"], "PostgreSQL and SQLite runs diverged");
    db.cleanup().await;
}
