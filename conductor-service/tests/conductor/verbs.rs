//! The provision verbs beyond deploy and clean — inspect, adopt, rescue, unrescue,
//! service — and the way out of every wait state (issue 13, first slice):
//!
//! - fake-hardware's `fake` inspect and rescue interfaces and the `fake` deploy interface's
//!   servicing finish at once, as Ironic's fake interfaces do; `no-inspect` and `no-rescue`
//!   are refused before the state changes (Ironic's UnsupportedDriverExtension), and a node
//!   that reaches the operation without its interface fails with Ironic's text;
//! - every wait state (`wait call-back`, `clean wait`, `inspect wait`, `rescue wait`,
//!   `service wait`) fails at its callback timeout with `last_error` (simulated time), and
//!   `abort` from each does what Ironic's `_do_abort` does;
//! - and, in [`super::walk`], a walk over every (state, verb) the API accepts.
//!
//! `rescue wait` is reached only by the rescue ramdisk, which is later work, so its tests put
//! the node there the way such a workflow would leave it; so do these tests for `inspect
//! wait` (in-band inspection itself, with its own abort and timeout, is [`super::inspect`]).

use std::time::Duration;

use conductor_service::testing::{insert_fake_node, request_provision_with};
use deploy::provision::RequestArgs;
use deploy::{ApiVerb, Node, NodeHistory, NodeId, PowerState, ProvisionState as S};
use serde_json::{Value, json};

use super::{Env, available_node, env, env_sim, fast_config, sim_config};

/// The interface sets the tests drive fake-hardware with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kit {
    /// `fake` deploy, inspect and rescue: everything finishes at once.
    Fake,
    /// `fake` deploy, `no-inspect`, `no-rescue`.
    Bare,
    /// `direct` deploy (no agent answers in these tests), `fake` inspect and rescue.
    Direct,
}

impl Kit {
    pub(super) fn apply(self, n: &mut Node) {
        let (deploy, others) = match self {
            Kit::Fake => ("fake", "fake"),
            Kit::Bare => ("fake", "no"),
            Kit::Direct => ("direct", "fake"),
        };
        n.interfaces.deploy = Some(deploy.into());
        let (inspect, rescue) = match others {
            "fake" => ("fake", "fake"),
            _ => ("no-inspect", "no-rescue"),
        };
        n.interfaces.inspect = Some(inspect.into());
        n.interfaces.rescue = Some(rescue.into());
    }
}

fn step(interface: &str, name: &str) -> deploy::model::JsonObject {
    json!({"interface": interface, "step": name}).as_object().cloned().unwrap()
}

/// A node as a workflow leaves it in `state`: powered on, with the state's target, and for
/// the service wait and hold states the reserved step that put it there.
pub(super) fn shape(n: &mut Node, state: S, now: chrono::DateTime<chrono::Utc>) {
    n.provision_state = state;
    n.target_provision_state = if state.is_stable() { None } else { state.fsm_target() };
    n.provision_updated_at = Some(now);
    n.power_state = Some(PowerState::On);
    let dii = &mut n.driver_internal_info;
    match state {
        S::ServiceHold => {
            n.service_step = step("deploy", "hold");
            let plan = json!([{"interface": "deploy", "step": "hold"}, {"interface": "deploy", "step": "fake_step"}]);
            dii.insert("service_steps".into(), plan);
            dii.insert("service_step_index".into(), json!(1));
        }
        S::ServiceWait => {
            n.service_step = step("deploy", "wait");
            dii.insert("service_steps".into(), json!([{"interface": "deploy", "step": "wait"}]));
            dii.insert("service_step_index".into(), json!(1));
        }
        S::Inspecting | S::InspectWait => n.inspection_started_at = Some(now),
        _ => {}
    }
}

/// A fake-hardware node with `kit`'s interfaces and an image, shaped for `state`, inserted.
pub(super) async fn node_in(env: &Env, kit: Kit, state: S, f: impl FnOnce(&mut Node)) -> Node {
    let mut n = insert_fake_node(env.store(), "fake").await.unwrap();
    kit.apply(&mut n);
    shape(&mut n, state, env.clock.now());
    f(&mut n);
    env.store().node_update(&n).await.unwrap()
}

pub(super) async fn request(env: &Env, id: NodeId, verb: ApiVerb, args: &RequestArgs<'_>) -> Node {
    request_provision_with(env.store(), &env.bus, id, verb, args).await.unwrap()
}

fn service_args(steps: &[Value]) -> RequestArgs<'_> {
    RequestArgs { service_steps: Some(steps), ..Default::default() }
}

pub(super) fn transitions(history: &[NodeHistory]) -> Vec<(S, S)> {
    history.iter().filter_map(|h| Some((h.from_state?, h.to_state?))).collect()
}

const SHORT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn test_fake_inspection_completes_at_once_and_no_inspect_is_refused() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-inspect", &env.queue)).await;
    let n = node_in(&env, Kit::Fake, S::Manageable, |_| {}).await;
    let started = env.provision(n.uuid, ApiVerb::Inspect).await.unwrap();
    assert_eq!(started.provision_state, S::Inspecting);
    assert!(started.inspection_started_at.is_some());
    let done = env.wait_state(n.uuid, S::Manageable, SHORT).await;
    // Ironic's database: a finished inspection has its end and no start.
    assert!(done.inspection_finished_at.is_some() && done.inspection_started_at.is_none());
    assert_eq!((done.target_provision_state, done.last_error), (None, None));
    let t = transitions(&env.store().history_list(n.uuid).await.unwrap());
    assert!(
        t.ends_with(&[(S::Manageable, S::Inspecting), (S::Inspecting, S::Manageable)]),
        "{t:?}"
    );

    // no-inspect: refused, nothing changes.
    let bare = node_in(&env, Kit::Bare, S::Manageable, |_| {}).await;
    let e = env.provision(bare.uuid, ApiVerb::Inspect).await.unwrap_err();
    assert!(e.to_string().contains("Unsupported"), "{e}");
    assert_eq!(env.node(bare.uuid).await.provision_state, S::Manageable);

    // A node that got to `inspecting` without an inspect interface fails with Ironic's text.
    let stray = node_in(&env, Kit::Bare, S::Inspecting, |_| {}).await;
    let failed = env.wait_state(stray.uuid, S::InspectFailed, SHORT).await;
    assert_eq!(
        failed.last_error.as_deref(),
        Some("Driver fake-hardware does not support inspect (disabled or not implemented).")
    );
    assert_eq!(failed.target_provision_state, Some(S::Manageable));
    assert!(failed.inspection_started_at.is_none());
    // Inspect again from `inspect failed` once the interface is there.
    let mut fixed = failed;
    fixed.interfaces.inspect = Some("fake".into());
    env.store().node_update(&fixed).await.unwrap();
    env.provision(stray.uuid, ApiVerb::Inspect).await.unwrap();
    env.wait_state(stray.uuid, S::Manageable, SHORT).await;
    env.finish().await;
}

#[tokio::test]
async fn test_fake_rescue_and_unrescue_and_no_rescue() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-rescue", &env.queue)).await;
    let n = node_in(&env, Kit::Fake, S::Active, |_| {}).await;
    env.provision(n.uuid, ApiVerb::Rescue).await.unwrap();
    let r = env.wait_state(n.uuid, S::Rescue, SHORT).await;
    assert_eq!((r.target_provision_state, r.last_error), (None, None));
    env.provision(n.uuid, ApiVerb::Unrescue).await.unwrap();
    let a = env.wait_state(n.uuid, S::Active, SHORT).await;
    assert_eq!(a.power_state, Some(PowerState::On));
    let t = transitions(&env.store().history_list(n.uuid).await.unwrap());
    for want in [
        (S::Active, S::Rescuing),
        (S::Rescuing, S::Rescue),
        (S::Rescue, S::Unrescuing),
        (S::Unrescuing, S::Active),
    ] {
        assert!(t.contains(&want), "{want:?} missing from {t:?}");
    }

    let bare = node_in(&env, Kit::Bare, S::Active, |_| {}).await;
    let e = env.provision(bare.uuid, ApiVerb::Rescue).await.unwrap_err();
    assert!(e.to_string().contains("Unsupported"), "{e}");
    assert_eq!(env.node(bare.uuid).await.provision_state, S::Active);
    // Unrescue is not refused up front (Ironic validates only the power interface) and
    // fails in the conductor.
    let stuck = node_in(&env, Kit::Bare, S::Rescue, |_| {}).await;
    env.provision(stuck.uuid, ApiVerb::Unrescue).await.unwrap();
    let failed = env.wait_state(stuck.uuid, S::UnrescueFailed, SHORT).await;
    assert_eq!(
        failed.last_error.as_deref(),
        Some(
            "Failed to unrescue: Driver fake-hardware does not support rescue (disabled or not implemented)."
        )
    );
    assert_eq!(failed.target_provision_state, Some(S::Active));
    env.finish().await;
}

#[tokio::test]
async fn test_adopt_validates_instance_info() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-adopt", &env.queue)).await;
    let n =
        node_in(&env, Kit::Fake, S::Manageable, |n| n.power_state = Some(PowerState::Off)).await;
    env.provision(n.uuid, ApiVerb::Adopt).await.unwrap();
    let a = env.wait_state(n.uuid, S::Active, SHORT).await;
    assert_eq!(a.power_state, Some(PowerState::Off), "adoption does not touch the machine");
    assert_eq!(a.driver_internal_info["is_whole_disk_image"], json!(true));

    // A direct-deploy node without an image fails to adopt with the cause, and adopts once
    // the image is there.
    let d = node_in(&env, Kit::Direct, S::Manageable, |n| {
        n.instance_info.remove("image_source");
    })
    .await;
    env.provision(d.uuid, ApiVerb::Adopt).await.unwrap();
    let mut failed = env.wait_state(d.uuid, S::AdoptFailed, SHORT).await;
    assert_eq!(
        failed.last_error.as_deref(),
        Some(
            format!(
                "Error while attempting to adopt node {}: instance_info.image_source is required.",
                d.uuid
            )
            .as_str()
        )
    );
    assert_eq!(failed.power_state, None, "an unknown power state, as Ironic's NOSTATE");
    assert_eq!(failed.target_provision_state, Some(S::Active));
    failed.instance_info.insert("image_source".into(), json!("http://127.0.0.1:9/image.raw"));
    env.store().node_update(&failed).await.unwrap();
    env.provision(d.uuid, ApiVerb::Adopt).await.unwrap();
    let a = env.wait_state(d.uuid, S::Active, SHORT).await;
    assert_eq!(a.last_error, None);
    env.finish().await;
}

#[tokio::test]
async fn test_service_runs_steps_in_order_and_fails_unsupported_ones() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-service", &env.queue)).await;
    let n = node_in(&env, Kit::Fake, S::Active, |n| n.power_state = Some(PowerState::Off)).await;
    let steps = [
        json!({"interface": "deploy", "step": "fake_step", "args": {"x": 1}}),
        json!({"interface": "power", "step": "power_on"}),
        json!({"interface": "deploy", "step": "wait", "args": {"seconds": 1}}),
        json!({"interface": "management", "step": "reboot"}),
    ];
    request(&env, n.uuid, ApiVerb::Service, &service_args(&steps)).await;
    let a = env.wait_state(n.uuid, S::Active, SHORT).await;
    assert_eq!(a.power_state, Some(PowerState::On), "the power_on step ran");
    assert_eq!(a.last_error, None);
    assert!(a.service_step.is_empty());
    assert!(!a.driver_internal_info.contains_key("service_steps"));
    let history = env.store().history_list(n.uuid).await.unwrap();
    let t = transitions(&history);
    for want in [
        (S::Active, S::Servicing),
        (S::Servicing, S::ServiceWait),
        (S::ServiceWait, S::Servicing),
        (S::Servicing, S::Active),
    ] {
        assert!(t.contains(&want), "{want:?} missing from {t:?}");
    }
    // The steps are recorded when servicing starts and when it completes.
    let recorded: Vec<&str> = history
        .iter()
        .filter(|h| h.event_type.starts_with("servicing_"))
        .map(|h| h.event.as_str())
        .collect();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert!(recorded[0].starts_with("Starting servicing with steps=[{"), "{recorded:?}");
    assert!(recorded[1].starts_with("Servicing completed successfully"), "{recorded:?}");
    assert!(recorded.iter().all(|r| r.contains("fake_step") && r.contains("reboot")));

    // A step no interface of the node supports fails the servicing at once.
    let bad = [json!({"interface": "bios", "step": "apply_configuration"})];
    request(&env, n.uuid, ApiVerb::Service, &service_args(&bad)).await;
    let failed = env.wait_state(n.uuid, S::ServiceFailed, SHORT).await;
    let err = failed.last_error.clone().unwrap();
    assert!(
        err.starts_with(&format!(
            "Cannot service node {}: node does not support this service step",
            n.uuid
        )) && err.contains("apply_configuration"),
        "{err}"
    );
    assert_eq!(failed.target_provision_state, Some(S::Active));
    // Abort from `service failed` returns to active with Ironic's message.
    let back = env.provision(n.uuid, ApiVerb::Abort).await.unwrap();
    assert_eq!(back.provision_state, S::Active);
    assert_eq!(back.last_error.as_deref(), Some("By request, the service operation was aborted"));

    // `hold` pauses in `service hold`; `unhold` goes on with the next step at once.
    let held = [
        json!({"interface": "deploy", "step": "hold"}),
        json!({"interface": "power", "step": "power_off"}),
    ];
    request(&env, n.uuid, ApiVerb::Service, &service_args(&held)).await;
    let h = env.wait_state(n.uuid, S::ServiceHold, SHORT).await;
    assert_eq!(h.power_state, Some(PowerState::On), "nothing after the hold ran");
    env.provision(n.uuid, ApiVerb::Unhold).await.unwrap();
    let a = env.wait_state(n.uuid, S::Active, SHORT).await;
    assert_eq!(a.power_state, Some(PowerState::Off), "the step after the hold ran");

    // On a direct-deploy node the same step is the agent's: servicing boots the ramdisk and
    // waits for it (no agent answers here); an abort returns the node to active.
    let d = node_in(&env, Kit::Direct, S::Active, |_| {}).await;
    request(&env, d.uuid, ApiVerb::Service, &service_args(&steps[..1])).await;
    let w = env.wait_state(d.uuid, S::ServiceWait, SHORT).await;
    assert_eq!(
        w.driver_internal_info.get(deploy::internal_info::keys::SERVICE_RAMDISK),
        Some(&json!("booting"))
    );
    let back = env.provision(d.uuid, ApiVerb::Abort).await.unwrap();
    assert_eq!(back.provision_state, S::Active);
    env.finish().await;
}

/// Inspect, adopt, rescue, unrescue and service through PostgreSQL and RabbitMQ.
#[tokio::test]
async fn test_new_verbs_on_postgres_rabbitmq() {
    let Some(env) = env(true).await else { return };
    env.start_conductor(fast_config(&format!("c-verbs-{}", env.queue), &env.queue)).await;
    let long = Duration::from_secs(60);
    let n = node_in(&env, Kit::Fake, S::Manageable, |_| {}).await;
    env.provision(n.uuid, ApiVerb::Inspect).await.unwrap();
    let m = env.wait_state(n.uuid, S::Manageable, long).await;
    assert!(m.inspection_finished_at.is_some());
    env.provision(n.uuid, ApiVerb::Adopt).await.unwrap();
    env.wait_state(n.uuid, S::Active, long).await;
    env.provision(n.uuid, ApiVerb::Rescue).await.unwrap();
    env.wait_state(n.uuid, S::Rescue, long).await;
    env.provision(n.uuid, ApiVerb::Unrescue).await.unwrap();
    env.wait_state(n.uuid, S::Active, long).await;
    let steps = [json!({"interface": "power", "step": "reboot"})];
    request(&env, n.uuid, ApiVerb::Service, &service_args(&steps)).await;
    env.wait_state(n.uuid, S::Active, long).await;
    let t = transitions(&env.store().history_list(n.uuid).await.unwrap());
    assert!(t.contains(&(S::Servicing, S::Active)), "{t:?}");
    // And a wait state's abort: service wait → active with the cause.
    let w = [json!({"interface": "deploy", "step": "wait"})];
    request(&env, n.uuid, ApiVerb::Service, &service_args(&w)).await;
    env.wait_state(n.uuid, S::ServiceWait, long).await;
    let a = env.provision(n.uuid, ApiVerb::Abort).await.unwrap();
    assert_eq!(a.provision_state, S::Active);
    assert!(a.last_error.unwrap().contains("service operation was aborted"));
    env.finish().await;
}

/// One node in each wait state, waiting for an agent that never calls.
struct Waiting {
    deploy: Node,
    clean: Node,
    service: Node,
    inspect: Node,
    rescue: Node,
}

/// Drive (or, for inspection and rescue, put) one node into each wait state.
async fn into_every_wait_state(env: &Env, within: Duration) -> Waiting {
    let deploy = available_node(env).await;
    env.provision(deploy.uuid, ApiVerb::Active).await.unwrap();
    let clean = node_in(env, Kit::Direct, S::Manageable, |_| {}).await;
    env.provision(clean.uuid, ApiVerb::Provide).await.unwrap();
    let service = node_in(env, Kit::Fake, S::Active, |_| {}).await;
    let wait = [json!({"interface": "deploy", "step": "wait"})];
    request(env, service.uuid, ApiVerb::Service, &service_args(&wait)).await;
    let inspect = node_in(env, Kit::Fake, S::InspectWait, |_| {}).await;
    let rescue = node_in(env, Kit::Fake, S::RescueWait, |_| {}).await;
    Waiting {
        deploy: env.wait_state(deploy.uuid, S::WaitCallBack, within).await,
        clean: env.wait_state(clean.uuid, S::CleanWait, within).await,
        service: env.wait_state(service.uuid, S::ServiceWait, within).await,
        inspect,
        rescue,
    }
}

/// Every wait state fails at its callback timeout (Ironic's 30 minutes, simulated), at the
/// first check after it and not before, with Ironic's `last_error`; the cleaning,
/// inspection and rescue ramdisks are powered off, as Ironic tears them down.
#[tokio::test]
async fn test_every_wait_state_fails_at_its_timeout() {
    let env = env_sim().await;
    env.start_conductor(sim_config("c-timeouts", &env.queue)).await;
    let w = into_every_wait_state(&env, Duration::from_secs(600)).await;
    let entered = |n: &Node| match n.provision_state {
        S::InspectWait => n.inspection_started_at.unwrap(),
        _ => n.provision_updated_at.unwrap(),
    };
    let cases = [
        (&w.deploy, S::DeployFailed, "Timeout reached while waiting for callback for node"),
        (&w.clean, S::CleanFailed, "Timeout reached while cleaning the node."),
        (&w.service, S::ServiceFailed, "Timeout reached while servicing the node."),
        (&w.inspect, S::InspectFailed, "Timeout reached while inspecting the node."),
        (&w.rescue, S::RescueFailed, "Timeout reached while waiting for rescue ramdisk callback"),
    ];
    for (n, failed_state, text) in cases {
        let from = n.provision_state;
        let failed = env.wait_state(n.uuid, failed_state, Duration::from_secs(7200)).await;
        let err = failed.last_error.clone().unwrap_or_default();
        assert!(err.starts_with(text), "{from}: {err}");
        let waited = failed.provision_updated_at.unwrap() - entered(n);
        assert!(
            waited >= chrono::Duration::seconds(1800)
                && waited <= chrono::Duration::seconds(1800 + 61),
            "{from} failed after {waited}"
        );
        assert_eq!(failed.target_provision_state, from.fsm_target(), "{from}");
        // Powered off: the deploy (power_off_after_deploy_failure), cleaning, inspection and
        // rescue ramdisks; a servicing that waited in a `wait` step keeps the instance up.
        let off = from != S::ServiceWait;
        let want = if off { PowerState::Off } else { PowerState::On };
        assert_eq!(failed.power_state, Some(want), "{from}");
        assert_eq!(failed.last_error.as_deref(), Some(err.as_str()), "{from}: cause kept");
    }
    let service = env.node(w.service.uuid).await;
    assert!(service.last_error.unwrap().contains(r#""step":"wait""#), "names the step");
    assert!(env.node(w.inspect.uuid).await.inspection_started_at.is_none());
    env.finish().await;
}

/// `abort` from every wait state does what Ironic's `_do_abort` does: the failed state
/// (servicing: back to `active`) with Ironic's message, the agent session wiped, and the
/// cleaning and inspection ramdisks powered off by the conductor, keeping the cause.
#[tokio::test]
async fn test_abort_from_every_wait_state() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-abort", &env.queue)).await;
    let w = into_every_wait_state(&env, SHORT).await;
    let cases = [
        (
            &w.deploy,
            S::DeployFailed,
            Some(S::Active),
            "By request, the deploy operation was aborted",
            PowerState::On,
        ),
        (
            &w.clean,
            S::CleanFailed,
            Some(S::Available),
            "By request, the clean operation was aborted",
            PowerState::Off,
        ),
        (
            &w.service,
            S::Active,
            None,
            "By request, the service operation was aborted during or after the completion of step \"deploy.wait\"",
            PowerState::On,
        ),
        (
            &w.inspect,
            S::InspectFailed,
            Some(S::Manageable),
            "Inspection was aborted by request.",
            PowerState::Off,
        ),
        (
            &w.rescue,
            S::RescueFailed,
            Some(S::Rescue),
            "By request, the rescue operation was aborted.",
            PowerState::On,
        ),
    ];
    for (n, state, target, text, _) in cases {
        let a = env.provision(n.uuid, ApiVerb::Abort).await.unwrap();
        assert_eq!(
            (a.provision_state, a.target_provision_state),
            (state, target),
            "{}",
            n.provision_state
        );
        assert_eq!(a.last_error.as_deref(), Some(text), "{}", n.provision_state);
        assert!(!a.driver_internal_info.contains_key("agent_url"));
    }
    for (n, state, _, text, power) in cases {
        let store = env.store().clone();
        let id = n.uuid;
        let done = super::wait_for(SHORT, &format!("{id} to settle after abort"), || {
            let store = store.clone();
            async move {
                let n = store.node_fetch(id).await.ok()?;
                (n.target_power_state.is_none() && n.reservation.is_none()).then_some(n)
            }
        })
        .await;
        assert_eq!(done.provision_state, state);
        assert_eq!(done.power_state, Some(power), "{}", n.provision_state);
        assert_eq!(done.last_error.as_deref(), Some(text), "the power-off keeps the cause");
    }
    // A node whose cleaning was aborted can be managed again.
    env.provision(w.clean.uuid, ApiVerb::Manage).await.unwrap();
    env.wait_state(w.clean.uuid, S::Manageable, SHORT).await;
    env.finish().await;
}
