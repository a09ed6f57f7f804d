//! Unit tests of the inspection rules engine.
use chrono::Utc;
use serde_json::json;

use super::*;
use crate::NodeId;

fn rule(priority: i64, conditions: Value, actions: Value) -> Rule {
    let body = json!({"priority": priority, "conditions": conditions, "actions": actions});
    Rule::from_body(format!("rule-{priority}"), body.as_object().unwrap())
}

fn inventory() -> Value {
    json!({
        "cpu": {"count": 8, "architecture": "x86_64"},
        "memory": {"physical_mb": 16384},
        "interfaces": [
            {"name": "eth0", "mac_address": "52:54:00:aa:bb:01", "ipv4_address": "10.0.0.5"},
            {"name": "eth1", "mac_address": "52:54:00:aa:bb:02", "ipv4_address": null}
        ],
        "system_vendor": {"manufacturer": "Dell Inc.", "product_name": "PowerEdge R640"},
        "bmc_address": "192.168.1.10"
    })
}

struct Fixture {
    node: Node,
    ports: Vec<Port>,
    plugin_data: Value,
}

impl Fixture {
    fn new() -> Self {
        let mut node = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        node.properties.insert("cpus".into(), 8.into());
        let ports = vec![Port::new(node.uuid, "52:54:00:aa:bb:01".parse().unwrap(), Utc::now())];
        Self { node, ports, plugin_data: json!({}) }
    }

    fn run(&mut self, rules: &[Rule]) -> Result<Outcome, RuleError> {
        let inv = inventory();
        let mut s = Subject {
            node: &mut self.node,
            ports: &mut self.ports,
            inventory: &inv,
            plugin_data: &mut self.plugin_data,
        };
        apply(rules, PHASE_MAIN, &mut s)
    }
}

fn holds(condition: Value) -> bool {
    let mut f = Fixture::new();
    let r = rule(0, json!([condition]), json!([{"op": "add-trait", "args": {"name": "X"}}]));
    let out = f.run(&[r]).unwrap_or_else(|e| panic!("{e}"));
    !out.applied.is_empty()
}

#[test]
fn test_operators() {
    let c = |op: &str, args: Value| json!({"op": op, "args": args});
    assert!(holds(c("eq", json!({"values": ["{inventory[cpu][count]}", 8]}))));
    assert!(holds(c(
        "eq",
        json!({"values": ["{node.properties[cpus]}", "{inventory[cpu][count]}"]})
    )));
    assert!(holds(c("!eq", json!({"values": ["{inventory[cpu][architecture]}", "aarch64"]}))));
    assert!(holds(c("ne", json!({"values": [1, 2]}))));
    assert!(holds(c("lt", json!({"values": [1, 2, 3]}))));
    assert!(!holds(c("lt", json!({"values": [1, 3, 2]}))));
    assert!(holds(c("ge", json!({"values": ["{inventory[memory][physical_mb]}", 8192]}))));
    assert!(holds(c("le", json!({"values": ["a", "b"]}))));
    assert!(holds(c("gt", json!({"values": [16, "{inventory[cpu][count]}"]}))));
    assert!(holds(c("is-true", json!({"value": "yes"}))));
    assert!(holds(c("is-false", json!({"value": false}))));
    assert!(holds(c("is-none", json!({"value": null}))));
    assert!(holds(c("is-empty", json!({"value": "{inventory[missing]}"}))), "missing = empty");
    assert!(holds(c("is-empty", json!({"value": []}))));
    assert!(!holds(c("is-empty", json!({"value": "{inventory[cpu]}"}))));
    assert!(holds(c(
        "matches",
        json!({"value": "{inventory[system_vendor][manufacturer]}", "regex": "Dell.*"})
    )));
    assert!(!holds(c("matches", json!({"value": "xDell", "regex": "Dell"}))), "anchored");
    assert!(holds(c(
        "contains",
        json!({"value": "{inventory[system_vendor][product_name]}", "regex": "R6[0-9]0"})
    )));
    assert!(holds(c(
        "one-of",
        json!({"value": "{inventory[cpu][architecture]}", "values": ["aarch64", "x86_64"]})
    )));
    assert!(holds(c(
        "in-net",
        json!({"address": "{inventory[bmc_address]}", "subnet": "192.168.0.0/16"})
    )));
    assert!(!holds(c("in-net", json!({"address": "10.1.1.1", "subnet": "192.168.0.0/16"}))));
    // The deprecated list form of args.
    assert!(holds(c("eq", json!([[1, 1]]))));
    // Text around a field makes text.
    assert!(holds(c("eq", json!({"values": ["cpus={inventory[cpu][count]}", "cpus=8"]}))));
}

#[test]
fn test_loops_and_multiple() {
    let looped = |multiple: &str, regex: &str| {
        json!({"op": "matches", "args": {"value": "{item[name]}", "regex": regex},
               "loop": inventory()["interfaces"], "multiple": multiple})
    };
    assert!(holds(looped("any", "eth1")));
    assert!(!holds(looped("all", "eth1")));
    assert!(holds(looped("all", "eth[01]")));
    assert!(holds(looped("first", "eth1")));
    assert!(holds(looped("last", "eth1")));
    assert!(!holds(looped("last", "eth0")));
}

#[test]
fn test_actions_change_node_ports_and_plugin_data() {
    let mut f = Fixture::new();
    let port = f.ports[0].uuid.to_string();
    let r = rule(
        10,
        json!([]),
        json!([
            {"op": "set-attribute", "args": {"path": "properties/memory_mb", "value": "{inventory[memory][physical_mb]}"}},
            {"op": "set-attribute", "args": {"path": "extra.vendor", "value": "{inventory[system_vendor][manufacturer]}"}},
            {"op": "set-attribute", "args": {"path": "resource_class", "value": "large"}},
            {"op": "extend-attribute", "args": {"path": "extra/tags", "value": "a", "unique": true}},
            {"op": "extend-attribute", "args": {"path": "extra/tags", "value": "a", "unique": true}},
            {"op": "add-trait", "args": {"name": "CUSTOM_GPU"}},
            {"op": "add-trait", "args": {"name": "CUSTOM_OLD"}},
            {"op": "remove-trait", "args": {"name": "CUSTOM_OLD"}},
            {"op": "set-capability", "args": {"name": "boot_mode", "value": "uefi"}},
            {"op": "set-capability", "args": {"name": "gpu", "value": "yes"}},
            {"op": "unset-capability", "args": {"name": "gpu"}},
            {"op": "set-plugin-data", "args": {"path": "a.b", "value": "{inventory[cpu][count]}"}},
            {"op": "extend-plugin-data", "args": {"path": "list", "value": 1}},
            {"op": "set-port-attribute", "args": {"port_id": port, "path": "physical_network", "value": "physnet1"}},
            {"op": "set-port-attribute", "args": {"port_id": port, "path": "extra/switch", "value": "sw1"}},
            {"op": "log", "args": {"msg": "node has {inventory[cpu][count]} CPUs", "level": "warning"}},
            {"op": "del-attribute", "args": {"path": "properties/cpus"}}
        ]),
    );
    let out = f.run(&[r]).unwrap();
    let n = &f.node;
    assert_eq!(n.properties["memory_mb"], 16384, "a lone field keeps its type");
    assert!(!n.properties.contains_key("cpus"));
    assert_eq!(n.extra["vendor"], "Dell Inc.");
    assert_eq!(n.extra["tags"], json!(["a"]));
    assert_eq!(n.resource_class.as_deref(), Some("large"));
    assert_eq!(n.traits, ["CUSTOM_GPU"]);
    assert_eq!(n.properties["capabilities"], "boot_mode:uefi");
    assert_eq!(f.plugin_data, json!({"a": {"b": 8}, "list": [1]}));
    assert_eq!(f.ports[0].physical_network.as_deref(), Some("physnet1"));
    assert_eq!(f.ports[0].extra["switch"], "sw1");
    assert_eq!(out.changed_ports.into_iter().collect::<Vec<_>>(), [0]);
    assert_eq!(out.logs, [("warning".to_owned(), "node has 8 CPUs".to_owned())]);
}

#[test]
fn test_priority_order_phase_and_failures() {
    let mut f = Fixture::new();
    let set = |v: &str| json!([{"op": "set-attribute", "args": {"path": "extra/who", "value": v}}]);
    let mut other_phase = rule(100, json!([]), set("other"));
    other_phase.phase = "preprocess".into();
    let rules = [rule(1, json!([]), set("low")), rule(5, json!([]), set("high")), other_phase];
    let out = f.run(&rules).unwrap();
    // Higher priority first, so the low one writes last.
    assert_eq!(out.applied, ["rule-5", "rule-1"]);
    assert_eq!(f.node.extra["who"], "low");
    let fail = rule(
        3,
        json!([{"op": "lt", "args": {"values": ["{inventory[memory][physical_mb]}", 32768]}}]),
        json!([{"op": "fail", "args": {"msg": "not enough memory"}}]),
    );
    let e = f.run(&[fail]).unwrap_err();
    assert_eq!(e, RuleError::Failed { rule: "rule-3".into(), message: "not enough memory".into() });
    for (conditions, actions, want) in [
        (json!([{"op": "bogus", "args": {}}]), json!([]), "Unsupported operator"),
        (json!([]), json!([{"op": "bogus"}]), "Unsupported action"),
        (json!([{"op": "eq", "args": {}}]), json!([]), "missing required argument(s): values"),
        (json!([{"op": "!!eq", "args": {"values": []}}]), json!([]), "exclamation"),
        (
            json!([]),
            json!([{"op": "set-attribute", "args": {"path": "provision_state", "value": "active"}}]),
            "cannot be changed",
        ),
        (
            json!([]),
            json!([{"op": "set-port-attribute", "args": {"port_id": "nope", "path": "extra/x", "value": 1}}]),
            "could not be found",
        ),
        (
            json!([{"op": "matches", "args": {"value": "x", "regex": "("}}]),
            json!([]),
            "invalid regular expression",
        ),
        (json!([]), json!([{"op": "api-call", "args": {"url": "http://x"}}]), "not supported"),
    ] {
        let e = f.run(&[rule(0, conditions, actions)]).unwrap_err();
        assert!(matches!(e, RuleError::Invalid { .. }) && e.to_string().contains(want), "{e}");
    }
}

#[test]
fn test_every_listed_op_has_a_signature() {
    assert!(OPERATORS.iter().all(|op| operator_signature(op).is_some()));
    assert!(ACTIONS.iter().all(|op| action_signature(op).is_some()));
}

#[test]
fn test_secrets_are_masked() {
    let mut f = Fixture::new();
    let inv = json!({"bmc": {"bmc_password": "hunter2", "user": "admin"}});
    let r = rule(
        0,
        json!([{"op": "eq", "args": {"values": ["{inventory[bmc][bmc_password]}", "***"]}}]),
        json!([{"op": "set-attribute", "args": {"path": "extra/bmc", "value": "{inventory[bmc]}"}}]),
    );
    let mut s = Subject {
        node: &mut f.node,
        ports: &mut f.ports,
        inventory: &inv,
        plugin_data: &mut f.plugin_data,
    };
    let out = apply(&[r], PHASE_MAIN, &mut s).unwrap();
    assert_eq!(out.applied.len(), 1);
    assert_eq!(f.node.extra["bmc"], json!({"bmc_password": "***", "user": "admin"}));
}
