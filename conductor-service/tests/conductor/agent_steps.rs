//! Steps that come from the agent: an automated clean runs the agent's steps by priority
//! (the operator's overrides replace the agent's), a manual clean runs any offered step
//! with its arguments, a step that asks for a reboot boots the ramdisk again, an unknown
//! step or a bad argument fails the clean before any step runs, and a step that never ends
//! fails at its timeout. Fake-hardware nodes with the simulated agent, which offers the real
//! agent's steps plus those a test adds as a vendor hardware manager would.

use std::time::Duration;

use conductor_service::testing::{fast_config, insert_fake_node};
use deploy::internal_info::keys;
use deploy::provision::RequestArgs;
use deploy::{ApiVerb, Node, ProvisionState as S};
use proto::agent::AgentStep;
use serde_json::{Value, json};

use super::verbs::{request, transitions};
use super::{Env, env};

const LONG: Duration = Duration::from_secs(30);

fn vendor_step(interface: &str, step: &str, priority: u32, reboot: bool, args: Value) -> AgentStep {
    AgentStep {
        interface: interface.into(),
        step: step.into(),
        priority,
        reboot_requested: reboot,
        abortable: false,
        argsinfo_json: args.to_string(),
    }
}

async fn manageable(env: &Env) -> Node {
    let n = insert_fake_node(env.store(), "direct").await.unwrap();
    env.provision(n.uuid, ApiVerb::Manage).await.unwrap();
    env.wait_state(n.uuid, S::Manageable, LONG).await
}

fn labels(env: &Env, n: &Node) -> Vec<String> {
    env.agent.executed_steps(n.uuid).into_iter().map(|(l, _)| l).collect()
}

async fn boots(env: &Env, n: &Node) -> usize {
    let t = transitions(&env.store().history_list(n.uuid).await.unwrap());
    t.iter().filter(|(_, to)| *to == S::CleanWait).count()
}

/// Automated cleaning merges the agent's steps by priority: the metadata erase (99) and a
/// vendor step (50) run, the full erase (10) is turned off by the default override and a
/// priority-0 step is not run; the agent's list is cached on the node as Ironic caches it.
#[tokio::test]
async fn test_automated_clean_runs_the_agents_steps_by_priority() {
    let env = env(false).await.unwrap();
    env.agent.offer_step(vendor_step("raid", "delete_configuration", 50, false, json!({})));
    env.agent.offer_step(vendor_step("deploy", "burnin_cpu", 0, false, json!({})));
    let mut cfg = fast_config("c-agent-steps-auto", &env.queue);
    cfg.fast_track = true; // keeps the session, and with it the cache, for the checks below
    env.start_conductor(cfg).await;
    env.start_fleet();
    let n = manageable(&env).await;
    env.provision(n.uuid, ApiVerb::Provide).await.unwrap();
    let a = env.wait_state(n.uuid, S::Available, LONG).await;
    assert_eq!(a.last_error, None);
    assert_eq!(env.agent.erases(n.uuid), 1, "the metadata erase ran once");
    assert_eq!(labels(&env, &n), ["raid.delete_configuration"], "burnin_cpu has priority 0");
    let cached = &a.driver_internal_info[keys::AGENT_CACHED_CLEAN_STEPS];
    let names: Vec<&str> =
        cached["deploy"].as_array().unwrap().iter().filter_map(|s| s["step"].as_str()).collect();
    assert!(names.contains(&"erase_devices") && names.contains(&"erase_pstore"), "{cached}");
    assert_eq!(cached["raid"][0]["priority"], 50);
    env.finish().await;
}

/// The operator's overrides replace the agent's priorities: with every step turned off but
/// the full erase, automated cleaning erases every byte and runs nothing else.
#[tokio::test]
async fn test_clean_step_priority_override() {
    let env = env(false).await.unwrap();
    env.agent.offer_step(vendor_step("raid", "delete_configuration", 50, false, json!({})));
    let mut cfg = fast_config("c-agent-steps-override", &env.queue);
    cfg.clean_step_priority_override = vec![
        "deploy.erase_devices:20".into(),
        "deploy.erase_devices_metadata:0".into(),
        "raid.delete_configuration:0".into(),
    ];
    env.start_conductor(cfg).await;
    env.start_fleet();
    let n = manageable(&env).await;
    env.provision(n.uuid, ApiVerb::Provide).await.unwrap();
    env.wait_state(n.uuid, S::Available, LONG).await;
    assert!(labels(&env, &n).is_empty(), "{:?}", labels(&env, &n));
    assert_eq!(env.agent.erases(n.uuid), 1);
    let history = env.store().history_list(n.uuid).await.unwrap();
    let t = transitions(&history);
    assert!(t.contains(&(S::Cleaning, S::Available)), "{t:?}");
    env.finish().await;
}

/// A manual clean runs offered steps with their arguments in the order given; a step that
/// asks for a reboot boots the ramdisk again before the next one.
#[tokio::test]
async fn test_manual_clean_runs_agent_steps_with_arguments_and_reboots() {
    let env = env(false).await.unwrap();
    env.agent.offer_step(vendor_step(
        "deploy",
        "burnin_memory",
        0,
        true,
        json!({"passes": {"description": "how often", "required": true}}),
    ));
    env.start_conductor(fast_config("c-agent-steps-manual", &env.queue)).await;
    env.start_fleet();
    let n = manageable(&env).await;
    let steps = [
        json!({"interface": "deploy", "step": "burnin_memory", "args": {"passes": 2}}),
        json!({"interface": "deploy", "step": "erase_pstore"}),
        json!({"interface": "deploy", "step": "erase_devices", "args": {"devices": ["/dev/vda"]}}),
    ];
    let args = RequestArgs { clean_steps: Some(&steps), ..Default::default() };
    request(&env, n.uuid, ApiVerb::Clean, &args).await;
    let m = env.wait_state(n.uuid, S::Manageable, LONG).await;
    assert_eq!(m.last_error, None);
    let ran = env.agent.executed_steps(n.uuid);
    assert_eq!(ran[0].0, "deploy.burnin_memory");
    assert_eq!(serde_json::from_str::<Value>(&ran[0].1).unwrap(), json!({"passes": 2}));
    assert_eq!(ran[1].0, "deploy.erase_pstore");
    assert_eq!(ran.len(), 2, "the erase runs through its own command: {ran:?}");
    assert_eq!(env.agent.erases(n.uuid), 1);
    assert_eq!(boots(&env, &n).await, 2, "burnin_memory asked for a second ramdisk boot");
    env.finish().await;
}

/// Steps the agent does not offer, or arguments that do not fit, fail the clean with
/// Ironic's message before any step runs.
#[tokio::test]
async fn test_manual_clean_with_unknown_step_or_bad_arguments_fails_before_running() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-agent-steps-bad", &env.queue)).await;
    env.start_fleet();
    for (steps, want) in [
        (
            json!([{"interface": "deploy", "step": "erase_pstore"},
                   {"interface": "deploy", "step": "make_coffee"}]),
            "does not support the following clean steps: deploy.make_coffee",
        ),
        (
            json!([{"interface": "deploy", "step": "erase_devices", "args": {"force": true}}]),
            "unexpected arguments: force",
        ),
    ] {
        let n = manageable(&env).await;
        let steps = steps.as_array().unwrap().clone();
        let args = RequestArgs { clean_steps: Some(&steps), ..Default::default() };
        request(&env, n.uuid, ApiVerb::Clean, &args).await;
        let f = env.wait_state(n.uuid, S::CleanFailed, LONG).await;
        let e = f.last_error.clone().unwrap_or_default();
        assert!(e.contains(want), "{e}");
        assert!(labels(&env, &n).is_empty(), "nothing ran: {:?}", labels(&env, &n));
        assert_eq!(env.agent.erases(n.uuid), 0);
        assert!(f.reservation.is_none());
    }
    env.finish().await;
}

/// An agent step that never ends fails at `agent_step_timeout_secs`.
#[tokio::test]
async fn test_agent_step_that_never_ends_times_out() {
    let env = env(false).await.unwrap();
    env.agent.offer_step(vendor_step("deploy", "burnin_disk", 0, false, json!({})));
    env.agent.stall_step("deploy.burnin_disk");
    let mut cfg = fast_config("c-agent-steps-timeout", &env.queue);
    cfg.agent_step_timeout_secs = 2.0;
    env.start_conductor(cfg).await;
    env.start_fleet();
    let n = manageable(&env).await;
    let steps = [json!({"interface": "deploy", "step": "burnin_disk"})];
    let args = RequestArgs { clean_steps: Some(&steps), ..Default::default() };
    request(&env, n.uuid, ApiVerb::Clean, &args).await;
    let f = env.wait_state(n.uuid, S::CleanFailed, LONG).await;
    let e = f.last_error.clone().unwrap_or_default();
    assert!(e.contains("deploy.burnin_disk") && e.contains("did not finish within 2s"), "{e}");
    env.finish().await;
}

async fn active(env: &Env) -> Node {
    let mut n = insert_fake_node(env.store(), "direct").await.unwrap();
    n.provision_state = S::Active;
    n.power_state = Some(deploy::PowerState::On);
    n.instance_uuid = Some(uuid::Uuid::new_v4().to_string());
    env.store().node_update(&n).await.unwrap()
}

/// Servicing with an agent step boots the ramdisk, runs the step with its arguments next to
/// a step the conductor runs, and boots the instance again.
#[tokio::test]
async fn test_service_runs_agent_steps_in_the_ramdisk() {
    let env = env(false).await.unwrap();
    env.agent.offer_step(vendor_step(
        "raid",
        "apply_configuration",
        0,
        false,
        json!({"raid_config": {"required": true}}),
    ));
    env.start_conductor(fast_config("c-agent-steps-service", &env.queue)).await;
    env.start_fleet();
    let n = active(&env).await;
    let steps = [
        json!({"interface": "raid", "step": "apply_configuration", "args": {"raid_config": {"logical_disks": []}}}),
        json!({"interface": "power", "step": "power_on"}),
        json!({"interface": "deploy", "step": "erase_pstore"}),
    ];
    let args = RequestArgs { service_steps: Some(&steps), ..Default::default() };
    request(&env, n.uuid, ApiVerb::Service, &args).await;
    let a = env.wait_state(n.uuid, S::Active, LONG).await;
    assert_eq!(a.last_error, None);
    let ran = labels(&env, &n);
    assert_eq!(ran, ["raid.apply_configuration", "deploy.erase_pstore"]);
    let t = transitions(&env.store().history_list(n.uuid).await.unwrap());
    for want in
        [(S::Servicing, S::ServiceWait), (S::ServiceWait, S::Servicing), (S::Servicing, S::Active)]
    {
        assert!(t.contains(&want), "{want:?} in {t:?}");
    }
    assert_eq!(a.power_state, Some(deploy::PowerState::On));
    assert!(a.driver_internal_info.get(keys::AGENT_URL).is_none(), "the ramdisk's session is gone");
    assert!(a.driver_internal_info.get(keys::SERVICE_RAMDISK).is_none());
    env.finish().await;
}

/// A service step the agent does not offer fails the servicing before any step runs.
#[tokio::test]
async fn test_service_with_a_step_the_agent_lacks_fails() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-agent-steps-service-bad", &env.queue)).await;
    env.start_fleet();
    let n = active(&env).await;
    let steps = [
        json!({"interface": "deploy", "step": "erase_pstore"}),
        json!({"interface": "raid", "step": "apply_configuration"}),
    ];
    let args = RequestArgs { service_steps: Some(&steps), ..Default::default() };
    request(&env, n.uuid, ApiVerb::Service, &args).await;
    let f = env.wait_state(n.uuid, S::ServiceFailed, LONG).await;
    let e = f.last_error.clone().unwrap_or_default();
    assert!(
        e.contains("does not support the following service steps: raid.apply_configuration"),
        "{e}"
    );
    assert!(labels(&env, &n).is_empty(), "nothing ran: {:?}", labels(&env, &n));
    env.finish().await;
}
