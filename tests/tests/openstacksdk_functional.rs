//! openstacksdk's own functional baremetal suite (`openstack.tests.functional.baremetal`,
//! shipped inside the pinned openstacksdk 4.22.0 wheel) against api-service and a conductor on
//! PostgreSQL + RabbitMQ. It is the same test code the SDK's maintainers run against a real
//! Ironic: nodes, ports, port groups, chassis, allocations, conductors, drivers, deploy
//! templates, runbooks, inspection rules and volume connectors/targets through every call the
//! SDK makes, with fake-hardware nodes really moved through manage/provide and power on/off by
//! the conductor. Passing all 96 tests — none skipped for a missing microversion — proves that
//! Ferric is wire-compatible with Ironic for everything the SDK's suite exercises.

#[path = "support/cluster.rs"]
mod cluster;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cluster::Cluster;
use common::testing::{Need, require_service};
use tests::junit::{self, Case, Outcome};
use tests::openstack::OpenStackCli;

/// How many tests openstacksdk 4.22.0's baremetal functional suite has.
const SUITE_TESTS: usize = 96;
/// The whole pytest run.
const SUITE_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// One test (oslotest's `OS_TEST_TIMEOUT`; the suite's waits have no timeout of their own).
const TEST_TIMEOUT_SECS: &str = "60";
/// The clouds the suite's base class connects to; all are Ferric without authentication.
const CLOUDS: [&str; 4] = ["devstack", "devstack-alt", "devstack-admin", "devstack-system-admin"];
/// Where test ids start; the table leaves it out.
const PREFIX: &str = "openstack.tests.functional.baremetal.v1.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_openstacksdk_functional_baremetal_suite_passes() {
    let Some(cluster) = Cluster::start("sdk").await else { return };
    let venv = tokio::task::spawn_blocking(OpenStackCli::ensure).await.unwrap();
    let venv = venv.map_err(|e| format!("{e:#}"));
    let Some(venv) = require_service(Need::Services, "the openstack client venv", venv) else {
        return;
    };
    let endpoint = cluster.endpoint.clone();

    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let run = {
        let (python, dir, endpoint) = (venv.python(), dir.path().to_owned(), endpoint.clone());
        tokio::task::spawn_blocking(move || run_suite(&python, &dir, &endpoint)).await.unwrap()
    };
    let elapsed = started.elapsed();

    cluster.stop().await;

    let run = run.unwrap();
    // Kept for a look after the temp dir is gone.
    let kept = tests::openstack::target_dir().join("openstacksdk-functional");
    let _ = std::fs::create_dir_all(&kept);
    let _ = std::fs::copy(&run.junit, kept.join("junit.xml"));
    let _ = std::fs::write(kept.join("pytest.log"), &run.log);
    println!("pytest's JUnit XML and output: {}", kept.display());
    let log_tail = tail(&run.log, 40);
    let xml = std::fs::read_to_string(&run.junit).unwrap_or_else(|e| {
        panic!(
            "pytest ({}, timed out: {}) wrote no JUnit XML at {} ({e}); its output ends:\n{log_tail}",
            run.status.map_or_else(|| "killed".to_owned(), |s| s.to_string()),
            run.timed_out,
            run.junit.display()
        )
    });
    let cases = junit::parse(&xml).unwrap();
    println!("{}", report(&cases, elapsed));

    let bad: Vec<&Case> = cases.iter().filter(|c| c.outcome != Outcome::Passed).collect();
    let mut why = String::new();
    for c in &bad {
        let _ = writeln!(why, "  {} {}", c.outcome, short_id(c));
        for line in first_lines(c, 4) {
            let _ = writeln!(why, "      {line}");
        }
    }
    assert!(!run.timed_out, "the suite did not finish within {SUITE_DEADLINE:?}:\n{why}");
    assert!(
        bad.is_empty(),
        "{} of {} openstacksdk functional baremetal tests did not pass (skips count: the \
         suite must not skip):\n{why}",
        bad.len(),
        cases.len()
    );
    assert_eq!(
        cases.len(),
        SUITE_TESTS,
        "the suite ran {} tests, not {SUITE_TESTS}; pytest's output ends:\n{log_tail}",
        cases.len()
    );
    assert!(
        run.status.is_some_and(|s| s.success()),
        "pytest exited {:?} although every test passed; its output ends:\n{log_tail}",
        run.status
    );
}

struct SuiteRun {
    status: Option<ExitStatus>,
    timed_out: bool,
    junit: PathBuf,
    log: String,
}

/// Write the clouds.yaml and run pytest over the suite from `dir` (outside any source tree),
/// with only the loopback network and the environment the suite's base class reads.
fn run_suite(python: &Path, dir: &Path, endpoint: &str) -> anyhow::Result<SuiteRun> {
    let clouds = dir.join("clouds.yaml");
    std::fs::write(&clouds, clouds_yaml(endpoint)).context("writing clouds.yaml")?;
    let junit = dir.join("junit.xml");
    let log_path = dir.join("pytest.log");
    let log = std::fs::File::create(&log_path).context("creating pytest.log")?;

    let mut cmd = Command::new(python);
    cmd.current_dir(dir)
        .args(["-m", "pytest", "--pyargs", "openstack.tests.functional.baremetal"])
        .args(["-p", "no:cacheprovider", "-q"])
        .arg(format!("--junitxml={}", junit.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("cloning the log handle")?)
        .stderr(log);
    // Nothing from the caller's OpenStack settings, no proxies: the suite talks to Ferric only.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("OS_")
            || k.starts_with("OPENSTACKSDK_")
            || k.to_ascii_lowercase().ends_with("_proxy")
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join(".config"))
        .env("no_proxy", "127.0.0.1,localhost")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("OS_CLIENT_CONFIG_FILE", &clouds)
        .env("OS_CLIENT_SECURE_FILE", dir.join("secure.yaml"))
        .env("OS_CLOUD", "devstack-admin")
        .env("OPENSTACKSDK_OPERATOR_CLOUD", "devstack-admin")
        .env("OPENSTACKSDK_DEMO_CLOUD", "devstack")
        // base.py reads OPENSTACKSDK_DEMO_CLOUD_ALT; the documented name is set too.
        .env("OPENSTACKSDK_DEMO_CLOUD_ALT", "devstack-alt")
        .env("OPENSTACKSDK_DEMO_ALT_CLOUD", "devstack-alt")
        .env("OPENSTACKSDK_SYSTEM_ADMIN_CLOUD", "devstack-system-admin")
        // The per-test timeout (openstacksdk's default of 5 s is for unit tests; its tox
        // functional env uses 600) and the base class's wait_for timeout.
        .env("OS_TEST_TIMEOUT", TEST_TIMEOUT_SECS)
        .env("OPENSTACKSDK_FUNC_TEST_TIMEOUT", TEST_TIMEOUT_SECS);

    let mut child = cmd.spawn().context("starting pytest")?;
    let deadline = Instant::now() + SUITE_DEADLINE;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            // SIGINT first: pytest still writes the JUnit XML for what ran.
            timed_out = true;
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let grace = Instant::now() + Duration::from_secs(30);
            while child.try_wait()?.is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(100));
            }
            if child.try_wait()?.is_none() {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            break child.try_wait()?;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    Ok(SuiteRun { status, timed_out, junit, log })
}

/// The four clouds the suite's base class asks for, each Ferric without authentication and
/// with every other service absent.
fn clouds_yaml(endpoint: &str) -> String {
    let mut y = String::from("clouds:\n");
    for name in CLOUDS {
        let _ = write!(
            y,
            "  {name}:\n    auth_type: none\n    auth:\n      endpoint: {endpoint}\n    \
             baremetal_endpoint_override: {endpoint}\n"
        );
        for service in ["compute", "image", "network", "volume", "object_store", "identity"] {
            let _ = writeln!(y, "    has_{service}: false");
        }
    }
    y
}

fn short_id(c: &Case) -> String {
    let id = c.id();
    id.strip_prefix(PREFIX).map_or_else(|| id.clone(), str::to_owned)
}

/// The first `n` lines of what went wrong, each clipped.
fn first_lines(c: &Case, n: usize) -> Vec<String> {
    c.summary()
        .iter()
        .take(n)
        .map(|l| {
            if l.chars().count() > 400 {
                format!("{}…", l.chars().take(400).collect::<String>())
            } else {
                l.clone()
            }
        })
        .collect()
}

/// A table of every test's outcome and time, the totals, and the reason for every skip.
fn report(cases: &[Case], elapsed: Duration) -> String {
    let count = |o: Outcome| cases.iter().filter(|c| c.outcome == o).count();
    let mut out = format!(
        "\nopenstacksdk functional baremetal suite: {} tests in {:.0?}: {} passed, {} failed, \
         {} errors, {} skipped\n{:<8} {:>7}  test ({PREFIX}…)\n",
        cases.len(),
        elapsed,
        count(Outcome::Passed),
        count(Outcome::Failed),
        count(Outcome::Error),
        count(Outcome::Skipped),
        "outcome",
        "secs",
    );
    for c in cases {
        let _ = writeln!(out, "{:<8} {:>7}  {}", c.outcome.to_string(), c.time, short_id(c));
    }
    let skipped: Vec<&Case> = cases.iter().filter(|c| c.outcome == Outcome::Skipped).collect();
    if !skipped.is_empty() {
        let _ = writeln!(out, "\nskip reasons:");
        for c in skipped {
            let _ = writeln!(out, "  {}: {}", short_id(c), first_lines(c, 1).join(" "));
        }
    }
    out
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
