//! The operations that run through the ramdisk's agent besides deploy and clean: `agent`
//! rescue (the rescue ramdisk boots, its agent gets the password hash and stops; unrescue
//! boots the instance again) and fast-track (the agent that cleaned stays up, the deploy
//! uses it without booting the ramdisk again, and a lapsed agent is powered off), on
//! fake-hardware nodes with the simulated agent.

use std::time::Duration;

use conductor_service::testing::{fast_config, insert_fake_node};
use deploy::internal_info::{AgentSession, keys};
use deploy::provision::RequestArgs;
use deploy::{ApiVerb, Node, PowerState, ProvisionState as S};
use sim::AgentCommand;

use super::verbs::{request, transitions};
use super::{Env, env};

const LONG: Duration = Duration::from_secs(30);

/// An active, powered-on fake-hardware node with the `agent` rescue interface.
async fn active_node(env: &Env) -> Node {
    let mut n = insert_fake_node(env.store(), "direct").await.unwrap();
    n.interfaces.rescue = Some("agent".into());
    n.provision_state = S::Active;
    n.power_state = Some(PowerState::On);
    n.instance_uuid = Some(uuid::Uuid::new_v4().to_string());
    env.store().node_update(&n).await.unwrap()
}

async fn rescue(env: &Env, n: &Node, password: &str) -> Node {
    let hash = deploy::rescue::hash(password, deploy::rescue::HashAlgorithm::Sha256).unwrap();
    let args = RequestArgs { rescue_password_hash: Some(&hash), ..Default::default() };
    request(env, n.uuid, ApiVerb::Rescue, &args).await
}

#[tokio::test]
async fn test_agent_rescue_sets_the_password_and_unrescue_boots_the_instance() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-agent-rescue", &env.queue)).await;
    env.start_fleet();
    let n = active_node(&env).await;
    let asked = rescue(&env, &n, "correct horse battery staple").await;
    // Only the hash is stored, never the password.
    let stored = serde_json::Value::Object(asked.instance_info.clone()).to_string();
    assert!(!stored.contains("correct horse"), "{stored}");
    assert!(asked.instance_info.contains_key("hashed_rescue_password"));

    let r = env.wait_state(n.uuid, S::Rescue, LONG).await;
    assert_eq!((r.target_provision_state, r.last_error.clone()), (None, None));
    // The agent got a hash that matches the password; the node forgot it.
    let sent = env.agent.rescue_hash(n.uuid).expect("FinalizeRescue reached the agent");
    assert!(deploy::rescue::verify("correct horse battery staple", &sent), "{sent}");
    assert!(!deploy::rescue::verify("wrong", &sent));
    assert!(!r.instance_info.contains_key("hashed_rescue_password"));
    assert!(!r.instance_info.contains_key("rescue_password"));
    assert!(AgentSession::of(&r).url.is_none(), "the stopped agent's session is void");
    let t = transitions(&env.store().history_list(n.uuid).await.unwrap());
    for want in [
        (S::Active, S::Rescuing),
        (S::Rescuing, S::RescueWait),
        (S::RescueWait, S::Rescuing),
        (S::Rescuing, S::Rescue),
    ] {
        assert!(t.contains(&want), "{want:?} missing from {t:?}");
    }

    env.provision(n.uuid, ApiVerb::Unrescue).await.unwrap();
    let a = env.wait_state(n.uuid, S::Active, LONG).await;
    assert_eq!(a.power_state, Some(PowerState::On));
    let t = transitions(&env.store().history_list(n.uuid).await.unwrap());
    assert!(t.contains(&(S::Unrescuing, S::Active)), "{t:?}");
    env.finish().await;
}

#[tokio::test]
async fn test_agent_rescue_failure_and_missing_password() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-rescue-fail", &env.queue)).await;
    env.start_fleet();
    // The agent refuses: `rescue failed`, the cause kept, the hash forgotten.
    let n = active_node(&env).await;
    env.agent.fail_next(n.uuid, AgentCommand::FinalizeRescue);
    rescue(&env, &n, "pw").await;
    let f = env.wait_state(n.uuid, S::RescueFailed, LONG).await;
    let err = f.last_error.clone().unwrap_or_default();
    assert!(err.contains("Failed to rescue") && err.contains("finalize_rescue"), "{err}");
    assert!(!f.instance_info.contains_key("hashed_rescue_password"), "{:?}", f.instance_info);
    assert_eq!(env.agent.rescue_hash(n.uuid), None);

    // A node that reaches rescuing without a stored password (not through the API) fails
    // with Ironic's text before anything boots.
    let bare = active_node(&env).await;
    env.provision(bare.uuid, ApiVerb::Rescue).await.unwrap();
    let f = env.wait_state(bare.uuid, S::RescueFailed, LONG).await;
    assert!(
        f.last_error
            .as_deref()
            .is_some_and(|e| e.contains("missing 'instance_info/rescue_password'")),
        "{:?}",
        f.last_error
    );
    assert_eq!(f.power_state, Some(PowerState::On), "nothing was booted");
    env.finish().await;
}

/// A node with fast-track in its driver_info: cleaning leaves the agent up, the deploy
/// writes through it without booting the ramdisk again (no `wait call-back`), and the
/// session is gone once the instance boots.
#[tokio::test]
async fn test_fast_track_deploy_skips_the_second_ramdisk_boot() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-fast-track", &env.queue)).await;
    env.start_fleet();
    let mut n = insert_fake_node(env.store(), "direct").await.unwrap();
    n.driver_info.insert("fast_track".into(), true.into());
    let n = env.store().node_update(&n).await.unwrap();
    env.provision(n.uuid, ApiVerb::Manage).await.unwrap();
    env.wait_state(n.uuid, S::Manageable, LONG).await;
    env.provision(n.uuid, ApiVerb::Provide).await.unwrap();
    let a = env.wait_state(n.uuid, S::Available, LONG).await;
    assert_eq!(env.agent.erases(n.uuid), 1);
    assert_eq!(a.power_state, Some(PowerState::On), "fast-track keeps the agent powered");
    assert!(AgentSession::of(&a).called_back(), "the agent's session is kept");

    env.provision(n.uuid, ApiVerb::Active).await.unwrap();
    let d = env.wait_state(n.uuid, S::Active, LONG).await;
    assert_eq!(env.agent.writes(n.uuid), 1);
    assert!(d.driver_internal_info.get(keys::AGENT_URL).is_none(), "agent wiped after deploy");
    let t = transitions(&env.store().history_list(n.uuid).await.unwrap());
    let boots = t.iter().filter(|(_, to)| matches!(to, S::CleanWait | S::WaitCallBack)).count();
    assert_eq!(boots, 1, "one ramdisk boot (cleaning) for clean + deploy: {t:?}");
    assert!(t.contains(&(S::Deploying, S::Active)), "{t:?}");

    // Without fast-track the same deploy boots the ramdisk again.
    let plain = insert_fake_node(env.store(), "direct").await.unwrap();
    for verb in [ApiVerb::Manage, ApiVerb::Provide, ApiVerb::Active] {
        env.provision(plain.uuid, verb).await.unwrap();
        let want = match verb {
            ApiVerb::Manage => S::Manageable,
            ApiVerb::Provide => S::Available,
            _ => S::Active,
        };
        env.wait_state(plain.uuid, want, LONG).await;
    }
    let t = transitions(&env.store().history_list(plain.uuid).await.unwrap());
    assert!(t.contains(&(S::Deploying, S::WaitCallBack)), "{t:?}");
    env.finish().await;
}

/// A fast-track agent that stops heartbeating is powered off and forgotten.
#[tokio::test]
async fn test_lapsed_fast_track_agent_is_powered_off() {
    let env = env(false).await.unwrap();
    let mut cfg = fast_config("c-fast-track-lapse", &env.queue);
    cfg.fast_track = true;
    cfg.fast_track_timeout_secs = 4.0;
    env.start_conductor(cfg).await;
    // The simulated fleet heartbeats only in wait states: once available, this agent is
    // silent.
    env.start_fleet();
    let n = insert_fake_node(env.store(), "direct").await.unwrap();
    env.provision(n.uuid, ApiVerb::Manage).await.unwrap();
    env.wait_state(n.uuid, S::Manageable, LONG).await;
    env.provision(n.uuid, ApiVerb::Provide).await.unwrap();
    let a = env.wait_state(n.uuid, S::Available, LONG).await;
    // Cleaning left the agent up (fast-track), so what follows is the lapse's doing.
    assert_eq!(a.power_state, Some(PowerState::On));
    assert!(AgentSession::of(&a).called_back(), "{:?}", a.driver_internal_info);
    let store = env.store().clone();
    let off = conductor_service::testing::wait_for(LONG, "the lapsed agent powered off", || {
        let store = store.clone();
        async move {
            let n = store.node_fetch(n.uuid).await.ok()?;
            (n.power_state == Some(PowerState::Off) && n.reservation.is_none()).then_some(n)
        }
    })
    .await;
    assert!(AgentSession::of(&off).url.is_none(), "{:?}", off.driver_internal_info);
    assert_eq!(off.provision_state, S::Available);
    assert_eq!(off.last_error, None);
    env.finish().await;
}
