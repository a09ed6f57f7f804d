//! The walk over the state machine: for every (state, verb) the API accepts, on
//! fake-hardware nodes with `fake`, `no-*` and `direct` interfaces, a node is put in the
//! state and given the verb, and every one must end stable or failed within a simulated
//! deadline — none is left without a workflow (issue 13).

use std::collections::HashMap;
use std::time::Duration;

use deploy::provision::RequestArgs;
use deploy::state::ALL_STATES;
use deploy::{ApiVerb, Node, NodeId, ProvisionState as S};
use serde_json::{Value, json};
use store::NodeListQuery;

use super::verbs::{Kit, node_in, request, shape};
use super::{Env, env_sim, sim_config, since};

const VERBS: [ApiVerb; 13] = [
    ApiVerb::Manage,
    ApiVerb::Provide,
    ApiVerb::Inspect,
    ApiVerb::Clean,
    ApiVerb::Active,
    ApiVerb::Rebuild,
    ApiVerb::Deleted,
    ApiVerb::Abort,
    ApiVerb::Adopt,
    ApiVerb::Rescue,
    ApiVerb::Unrescue,
    ApiVerb::Unhold,
    ApiVerb::Service,
];

/// A pair of the walk: the interfaces, the state the node is put in and the verb it gets.
type Case = (Kit, S, ApiVerb);

/// The steps the API requires with `clean` and `service`.
struct WalkSteps {
    clean: [Value; 1],
    service: [Value; 1],
}

impl Default for WalkSteps {
    fn default() -> Self {
        Self {
            clean: [json!({"interface": "deploy", "step": "erase_devices_metadata"})],
            service: [json!({"interface": "deploy", "step": "fake_step"})],
        }
    }
}

impl WalkSteps {
    fn args(&self, verb: ApiVerb) -> RequestArgs<'_> {
        RequestArgs {
            clean_steps: (verb == ApiVerb::Clean).then_some(&self.clean[..]),
            service_steps: (verb == ApiVerb::Service).then_some(&self.service[..]),
            ..Default::default()
        }
    }
}

/// Put a node in each case's state and request its verb.
async fn fire(env: &Env, pairs: &[Case], steps: &WalkSteps, cases: &mut HashMap<NodeId, Case>) {
    for &(kit, state, verb) in pairs {
        let n = node_in(env, kit, state, |_| {}).await;
        request(env, n.uuid, verb, &steps.args(verb)).await;
        cases.insert(n.uuid, (kit, state, verb));
    }
}

/// A node is done with a request when it is stable or failed (with its cause), unlocked,
/// and no power change is pending.
fn settled(n: &Node) -> bool {
    n.provision_state.is_at_rest() && n.reservation.is_none() && n.target_power_state.is_none()
}

/// For every (state, verb) the API accepts — the pairs `deploy::provision::apply_request`
/// lets through, with the steps the API requires for `clean` and `service` — and for each
/// interface kit, a node is put in the state and given the verb; every node must end stable
/// or failed (failed ones with `last_error`), unlocked and with no power change pending,
/// before a simulated deadline that outlasts the callback timeouts.
#[tokio::test]
async fn test_every_accepted_verb_ends_stable_or_failed() {
    let env = env_sim().await;
    let steps = WalkSteps::default();
    let args = |verb| steps.args(verb);
    // The pairs, from the rule itself.
    let mut pairs = Vec::new();
    for kit in [Kit::Fake, Kit::Bare, Kit::Direct] {
        for state in ALL_STATES.into_iter().filter(|s| !s.is_pseudo()) {
            for verb in VERBS {
                let mut n = Node::new(NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
                n.instance_info.insert("image_source".into(), json!("http://127.0.0.1:9/i"));
                kit.apply(&mut n);
                shape(&mut n, state, chrono::Utc::now());
                if deploy::provision::apply_request(&mut n, verb, &args(verb), chrono::Utc::now())
                    .is_ok()
                {
                    pairs.push((kit, state, verb));
                }
            }
        }
    }
    for verb in VERBS {
        assert!(pairs.iter().any(|p| p.2 == verb), "no state accepts {verb:?}");
    }
    // From the states a conductor works in, before it runs (else it would drive the node
    // before the request): only its startup sweep finds them. The others through the bus.
    let (unattended, attended): (Vec<Case>, Vec<Case>) =
        pairs.iter().copied().partition(|p| p.1.is_transient_working());
    let mut cases: HashMap<NodeId, Case> = HashMap::new();
    fire(&env, &unattended, &steps, &mut cases).await;
    let mut cfg = sim_config("c-walk", &env.queue);
    // Heals a power-off an abort left pending should its message be lost.
    cfg.power_sync_interval_secs = 60.0;
    env.start_conductor(cfg).await;
    fire(&env, &attended, &steps, &mut cases).await;
    let started = env.clock.now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3 * 3600);
    let nodes = loop {
        let nodes =
            conductor_service::periodic::list_all_store(env.store(), NodeListQuery::default())
                .await
                .unwrap();
        let pending: Vec<String> = nodes
            .iter()
            .filter(|n| !settled(n))
            .map(|n| format!("{:?} now {} ({:?})", cases[&n.uuid], n.provision_state, n.last_error))
            .collect();
        if pending.is_empty() {
            break nodes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left without a workflow after {}: {pending:#?}",
            since(&env.clock, started)
        );
        // Looking costs a listing of every node; the timeouts are checked once a minute.
        tokio::time::sleep(Duration::from_secs(60)).await;
    };
    assert_eq!(nodes.len(), cases.len());
    for n in &nodes {
        let case = cases[&n.uuid];
        if n.provision_state.is_failed() {
            assert!(n.last_error.is_some(), "{case:?} ended {} without a cause", n.provision_state);
        }
    }
    // Spot checks of what the walk proves: fake finishes, `no-*` fails with the cause,
    // `direct` without an agent times out.
    let outcome = |kit, state, verb| {
        let id = cases.iter().find(|(_, c)| **c == (kit, state, verb)).map(|(id, _)| *id).unwrap();
        nodes.iter().find(|n| n.uuid == id).unwrap().provision_state
    };
    assert_eq!(outcome(Kit::Fake, S::Manageable, ApiVerb::Inspect), S::Manageable);
    assert_eq!(outcome(Kit::Fake, S::Active, ApiVerb::Rescue), S::Rescue);
    assert_eq!(outcome(Kit::Bare, S::Rescue, ApiVerb::Unrescue), S::UnrescueFailed);
    assert_eq!(outcome(Kit::Fake, S::ServiceHold, ApiVerb::Unhold), S::Active);
    assert_eq!(outcome(Kit::Direct, S::Available, ApiVerb::Active), S::DeployFailed);
    assert_eq!(outcome(Kit::Direct, S::Active, ApiVerb::Service), S::ServiceFailed);
    env.finish().await;
}
