//! In-band (`agent`) inspection on simulated machines: the node boots the ramdisk, the
//! simulated agent reports its machine's inventory (GetInventory), and the node ends
//! `manageable` with the properties, ports (per `add_ports`/`keep_ports`), stored inventory
//! and inspection rules the machine's inventory calls for, powered off. Also: data posted
//! the way `POST /v1/continue_inspection` records it, a bad inventory and a failing rule
//! (`inspect failed` with `last_error`), abort, and the `inspect wait` timeout in simulated
//! time.

use std::time::Duration;

use conductor_service::config::InspectorConfig;
use conductor_service::testing::{fast_config, insert_fake_node};
use deploy::inspection::{AddPorts, KeepPorts, attributes};
use deploy::{ApiVerb, Node, Port, PowerState, ProvisionState as S};
use proto::agent::{Boot, Cpu, Disk, Inventory, Memory, NetworkInterface, SystemVendor};
use serde_json::{Value, json};
use store::{Duplicates, PortListQuery, Resource, ResourceKind};

use super::{Env, env, env_sim, sim_config};

const SHORT: Duration = Duration::from_secs(30);

/// A machine with two NICs (booted from the first), three disks and 16 GiB, in BIOS mode.
fn machine() -> Inventory {
    let nic = |name: &str, mac: &str, ip: &str| NetworkInterface {
        name: name.into(),
        mac_address: mac.into(),
        ipv4_address: ip.into(),
        has_carrier: true,
        ..Default::default()
    };
    let disk =
        |name: &str, gib: u64| Disk { name: name.into(), size: gib << 30, ..Default::default() };
    Inventory {
        cpu: Some(Cpu { count: 8, architecture: "x86_64".into(), ..Default::default() }),
        memory: Some(Memory { total: 16 << 30, physical_mb: 16384 }),
        disks: vec![disk("/dev/sda", 480), disk("/dev/sdb", 60), disk("/dev/sdc", 1)],
        interfaces: vec![
            nic("eth0", "52:54:00:12:34:01", "10.0.0.5"),
            nic("eth1", "52:54:00:12:34:02", "10.0.1.5"),
        ],
        system_vendor: Some(SystemVendor {
            product_name: "PowerEdge R640".into(),
            serial_number: "SN-1".into(),
            manufacturer: "Dell Inc.".into(),
        }),
        boot: Some(Boot {
            current_boot_mode: "bios".into(),
            pxe_interface: "52:54:00:12:34:01".into(),
        }),
        hostname: "host-1".into(),
        ..Default::default()
    }
}

/// A manageable, powered-off fake-hardware node with the `agent` inspect interface.
async fn agent_node(env: &Env) -> Node {
    let mut n = insert_fake_node(env.store(), "fake").await.unwrap();
    n.interfaces.inspect = Some("agent".into());
    n.provision_state = S::Manageable;
    n.power_state = Some(PowerState::Off);
    env.store().node_update(&n).await.unwrap()
}

async fn add_port(env: &Env, n: &Node, mac: &str) -> Port {
    let p = Port::new(n.uuid, mac.parse().unwrap(), chrono::Utc::now());
    env.store().port_insert(&p).await.unwrap()
}

async fn ports(env: &Env, n: &Node) -> Vec<Port> {
    let q = PortListQuery { node: Some(n.uuid), ..Default::default() };
    env.store().port_list(&q).await.unwrap()
}

async fn add_rule(env: &Env, body: Value) {
    let mut body = body.as_object().cloned().unwrap();
    body.entry("phase").or_insert("main".into());
    let r = Resource::new(ResourceKind::InspectionRule, uuid::Uuid::new_v4(), body);
    env.store().resource_insert(&r, &Duplicates::default()).await.unwrap();
}

fn macs(ports: &[Port]) -> Vec<(String, bool)> {
    let mut m: Vec<(String, bool)> =
        ports.iter().map(|p| (p.address.to_string(), p.pxe_enabled)).collect();
    m.sort();
    m
}

fn conductor(
    env: &Env,
    name: &str,
    add_ports: AddPorts,
    keep_ports: KeepPorts,
) -> conductor_service::ConductorConfig {
    let mut cfg = fast_config(name, &env.queue);
    cfg.inspector = InspectorConfig { add_ports, keep_ports };
    cfg
}

/// The whole in-band inspection with Ironic's defaults (`add_ports = pxe`,
/// `keep_ports = all`) and two rules, one of which applies.
#[tokio::test]
async fn test_agent_inspection_sets_properties_ports_inventory_and_rules() {
    let env = env(false).await.unwrap();
    env.start_conductor(conductor(&env, "c-inspect", AddPorts::Pxe, KeepPorts::All)).await;
    env.start_fleet();
    add_rule(
        &env,
        json!({"priority": 50, "conditions": [
            {"op": "ge", "args": {"values": ["{inventory[memory][physical_mb]}", 8192]}},
            {"op": "matches", "args": {"value": "{inventory[system_vendor][manufacturer]}", "regex": "Dell.*"}}
        ], "actions": [
            {"op": "add-trait", "args": {"name": "CUSTOM_BIG_MEMORY"}},
            {"op": "set-attribute", "args": {"path": "extra/model", "value": "{inventory[system_vendor][product_name]}"}},
            {"op": "set-capability", "args": {"name": "vendor", "value": "dell"}},
            {"op": "set-plugin-data", "args": {"path": "rules.seen", "value": true}},
            {"op": "set-port-attribute", "args": {"port_id": "52:54:00:12:34:01", "path": "physical_network", "value": "provisioning"}}
        ]}),
    )
    .await;
    add_rule(
        &env,
        json!({"priority": 10, "conditions": [
            {"op": "eq", "args": {"values": ["{inventory[cpu][architecture]}", "aarch64"]}}
        ], "actions": [{"op": "add-trait", "args": {"name": "CUSTOM_ARM"}}]}),
    )
    .await;
    let n = agent_node(&env).await;
    env.agent.set_inventory(n.uuid, machine());
    // An operator-made port for a NIC the inventory does not show, and one for eth1.
    add_port(&env, &n, "52:54:00:99:99:99").await;
    add_port(&env, &n, "52:54:00:12:34:02").await;
    let started = env.provision(n.uuid, ApiVerb::Inspect).await.unwrap();
    assert_eq!(started.provision_state, S::Inspecting);
    let done = env.wait_state(n.uuid, S::Manageable, SHORT).await;

    let p = &done.properties;
    assert_eq!(p["cpus"], 8);
    assert_eq!(p["cpu_arch"], "x86_64");
    assert_eq!(p["memory_mb"], 16384);
    // The smallest disk of at least 4 GiB (60 GiB), less one, as Ironic.
    assert_eq!(p["local_gb"], 59);
    assert_eq!(p["capabilities"], "boot_mode:bios,vendor:dell");
    assert_eq!(done.traits, ["CUSTOM_BIG_MEMORY"], "only the rule whose conditions hold");
    assert_eq!(done.extra["model"], "PowerEdge R640");
    let inventory = &done.attributes[attributes::INVENTORY];
    assert_eq!(*inventory, proto::inventory::to_ipa_json(&machine()), "the inventory is stored");
    assert_eq!(done.attributes[attributes::PLUGIN_DATA], json!({"rules": {"seen": true}}));
    assert!(done.inspection_finished_at.is_some() && done.inspection_started_at.is_none());
    assert_eq!(done.power_state, Some(PowerState::Off), "the ramdisk is powered off");
    assert!(done.last_error.is_none());
    assert!(!done.driver_internal_info.contains_key("agent_url"), "agent session wiped");
    assert_eq!(env.agent.inventory_reads(n.uuid), 1);

    // add_ports = pxe: a port for the NIC that booted only; keep_ports = all keeps the
    // others, and pxe_enabled follows the inventory.
    let got = ports(&env, &n).await;
    assert_eq!(
        macs(&got),
        [
            ("52:54:00:12:34:01".to_owned(), true),
            ("52:54:00:12:34:02".to_owned(), false),
            ("52:54:00:99:99:99".to_owned(), false),
        ]
    );
    let booted = got.iter().find(|p| p.address.to_string() == "52:54:00:12:34:01").unwrap();
    assert_eq!(booted.physical_network.as_deref(), Some("provisioning"), "port rule applied");

    let history = env.store().history_list(n.uuid).await.unwrap();
    let t: Vec<(S, S)> =
        history.iter().filter_map(|h| Some((h.from_state?, h.to_state?))).collect();
    assert!(
        t.ends_with(&[
            (S::Manageable, S::Inspecting),
            (S::Inspecting, S::InspectWait),
            (S::InspectWait, S::Inspecting),
            (S::Inspecting, S::Manageable),
        ]),
        "{t:?}"
    );
    // Inspecting again changes nothing for the ports (no duplicates).
    env.provision(n.uuid, ApiVerb::Inspect).await.unwrap();
    env.wait_state(n.uuid, S::Manageable, SHORT).await;
    assert_eq!(ports(&env, &n).await.len(), 3);
    env.finish().await;
}

/// `add_ports = all` with `keep_ports = present`, then `active` with `added`.
#[tokio::test]
async fn test_agent_inspection_add_ports_and_keep_ports() {
    for (add, keep, want) in [
        (
            AddPorts::All,
            KeepPorts::Present,
            vec![
                ("52:54:00:12:34:01", true),
                ("52:54:00:12:34:02", false),
                ("52:54:00:12:34:03", false),
            ],
        ),
        (
            AddPorts::Active,
            KeepPorts::Added,
            vec![("52:54:00:12:34:01", true), ("52:54:00:12:34:02", false)],
        ),
        (AddPorts::Disabled, KeepPorts::All, vec![("52:54:00:99:99:99", false)]),
    ] {
        let env = env(false).await.unwrap();
        env.start_conductor(conductor(&env, "c-ports", add, keep)).await;
        env.start_fleet();
        let n = agent_node(&env).await;
        let mut m = machine();
        // A third NIC without an address: `all` adds it, `active` does not.
        m.interfaces.push(NetworkInterface {
            name: "eth2".into(),
            mac_address: "52:54:00:12:34:03".into(),
            ..Default::default()
        });
        env.agent.set_inventory(n.uuid, m);
        add_port(&env, &n, "52:54:00:99:99:99").await;
        env.provision(n.uuid, ApiVerb::Inspect).await.unwrap();
        env.wait_state(n.uuid, S::Manageable, SHORT).await;
        let want: Vec<(String, bool)> = want.into_iter().map(|(m, p)| (m.to_owned(), p)).collect();
        assert_eq!(macs(&ports(&env, &n).await), want, "{add:?}/{keep:?}");
        env.finish().await;
    }
}

/// An agent that posted its data (as `POST /v1/continue_inspection` records it) is not
/// asked again: the posted inventory and plugin data are processed.
#[tokio::test]
async fn test_posted_inspection_data_is_processed() {
    let env = env(false).await.unwrap();
    env.start_conductor(conductor(&env, "c-posted", AddPorts::Pxe, KeepPorts::All)).await;
    let n = agent_node(&env).await;
    env.provision(n.uuid, ApiVerb::Inspect).await.unwrap();
    env.wait_state(n.uuid, S::InspectWait, SHORT).await;
    let inventory = proto::inventory::to_ipa_json(&machine());
    let inv = inventory.clone();
    env.store()
        .node_modify(n.uuid, |n| {
            deploy::inspection::set_pending(n, inv.clone(), json!({"from": "ipa"}));
            Ok::<_, deploy::PublicError>(())
        })
        .await
        .unwrap()
        .into_result(n.uuid)
        .unwrap();
    conductor_service::testing::publish_heartbeat(&env.bus, n.uuid, "inspect wait").await.unwrap();
    let done = env.wait_state(n.uuid, S::Manageable, SHORT).await;
    assert_eq!(env.agent.inventory_reads(n.uuid), 0, "the agent was not asked");
    assert_eq!(done.attributes[attributes::INVENTORY], inventory);
    assert_eq!(done.attributes[attributes::PLUGIN_DATA], json!({"from": "ipa"}));
    assert!(!done.attributes.contains_key(attributes::PENDING));
    assert_eq!(done.properties["memory_mb"], 16384);
    assert_eq!(macs(&ports(&env, &n).await), [("52:54:00:12:34:01".to_owned(), true)]);

    // A ramdisk that reports an error fails the inspection with it (Ironic's ramdisk-error).
    env.provision(n.uuid, ApiVerb::Inspect).await.unwrap();
    env.wait_state(n.uuid, S::InspectWait, SHORT).await;
    let inv = inventory.clone();
    env.store()
        .node_modify(n.uuid, |n| {
            deploy::inspection::set_pending(n, inv.clone(), json!({"error": "lshw failed"}));
            Ok::<_, deploy::PublicError>(())
        })
        .await
        .unwrap()
        .into_result(n.uuid)
        .unwrap();
    conductor_service::testing::publish_heartbeat(&env.bus, n.uuid, "inspect wait").await.unwrap();
    let failed = env.wait_state(n.uuid, S::InspectFailed, SHORT).await;
    assert_eq!(
        failed.last_error.as_deref(),
        Some("Failed to inspect hardware. Reason: Ramdisk reported error: lshw failed")
    );
    env.finish().await;
}

/// A bad inventory and a `fail` rule end in `inspect failed` with `last_error`, the ramdisk
/// powered off, and nothing half-written to the properties.
#[tokio::test]
async fn test_bad_inventory_and_failing_rule_fail_inspection() {
    let env = env(false).await.unwrap();
    env.start_conductor(conductor(&env, "c-bad", AddPorts::Pxe, KeepPorts::All)).await;
    env.start_fleet();
    add_rule(
        &env,
        json!({"priority": 0, "conditions": [
            {"op": "eq", "args": {"values": ["{inventory[system_vendor][serial_number]}", "SN-FAIL"]}}
        ], "actions": [{"op": "fail", "args": {"msg": "this machine is blacklisted"}}]}),
    )
    .await;
    let bad = agent_node(&env).await;
    let mut m = machine();
    m.cpu = None;
    env.agent.set_inventory(bad.uuid, m);
    let ruled = agent_node(&env).await;
    let mut m = machine();
    m.system_vendor.as_mut().unwrap().serial_number = "SN-FAIL".into();
    m.interfaces.truncate(0);
    m.interfaces.push(NetworkInterface {
        name: "eth0".into(),
        mac_address: "52:54:00:12:35:01".into(),
        ipv4_address: "10.0.0.6".into(),
        ..Default::default()
    });
    m.boot.as_mut().unwrap().pxe_interface = "52:54:00:12:35:01".into();
    env.agent.set_inventory(ruled.uuid, m);
    // Empty: no interfaces at all.
    let empty = agent_node(&env).await;
    env.agent.set_inventory(empty.uuid, Inventory::default());
    for (n, want) in [
        (&bad, "Inventory is invalid: no CPU count (cpu.count) in the inventory"),
        (&ruled, "this machine is blacklisted"),
        (&empty, "Inventory is invalid: no CPU count"),
    ] {
        env.provision(n.uuid, ApiVerb::Inspect).await.unwrap();
        let failed = env.wait_state(n.uuid, S::InspectFailed, SHORT).await;
        let err = failed.last_error.clone().unwrap();
        assert!(err.starts_with("Failed to inspect hardware. Reason: "), "{err}");
        assert!(err.contains(want), "{err}");
        assert_eq!(failed.target_provision_state, Some(S::Manageable));
        assert_eq!(failed.power_state, Some(PowerState::Off), "ramdisk powered off");
        assert!(!failed.properties.contains_key("memory_mb"), "nothing half-written");
        assert!(!failed.attributes.contains_key(attributes::INVENTORY));
        assert!(failed.inspection_started_at.is_none());
    }
    // A failed inspection can be retried once the machine is fixed.
    env.agent.set_inventory(bad.uuid, machine());
    env.provision(bad.uuid, ApiVerb::Inspect).await.unwrap();
    let ok = env.wait_state(bad.uuid, S::Manageable, SHORT).await;
    assert_eq!(ok.properties["cpus"], 8);
    assert!(ok.last_error.is_none());
    env.finish().await;
}

/// Abort from `inspect wait` (the ramdisk is booting): `inspect failed` with Ironic's
/// message and the ramdisk powered off by the conductor.
#[tokio::test]
async fn test_agent_inspection_abort_powers_off() {
    let env = env(false).await.unwrap();
    env.start_conductor(conductor(&env, "c-abort-inspect", AddPorts::Pxe, KeepPorts::All)).await;
    // No fleet: the ramdisk never calls.
    let n = agent_node(&env).await;
    env.provision(n.uuid, ApiVerb::Inspect).await.unwrap();
    let waiting = env.wait_state(n.uuid, S::InspectWait, SHORT).await;
    assert_eq!(waiting.power_state, Some(PowerState::On), "booted into the ramdisk");
    let aborted = env.provision(n.uuid, ApiVerb::Abort).await.unwrap();
    assert_eq!(aborted.provision_state, S::InspectFailed);
    let store = env.store().clone();
    let id = n.uuid;
    let done = super::wait_for(SHORT, "the ramdisk to be powered off", || {
        let store = store.clone();
        async move {
            let n = store.node_fetch(id).await.ok()?;
            (n.power_state == Some(PowerState::Off) && n.reservation.is_none()).then_some(n)
        }
    })
    .await;
    assert_eq!(done.provision_state, S::InspectFailed);
    assert_eq!(done.last_error.as_deref(), Some("Inspection was aborted by request."));
    env.finish().await;
}

/// The ramdisk never reports: `inspect failed` 30 minutes (simulated) after the inspection
/// started, powered off.
#[tokio::test]
async fn test_agent_inspection_times_out_in_inspect_wait() {
    let env = env_sim().await;
    env.start_conductor(sim_config("c-inspect-timeout", &env.queue)).await;
    let n = agent_node(&env).await;
    env.provision(n.uuid, ApiVerb::Inspect).await.unwrap();
    let waiting = env.wait_state(n.uuid, S::InspectWait, Duration::from_secs(600)).await;
    let started = waiting.inspection_started_at.unwrap();
    let failed = env.wait_state(n.uuid, S::InspectFailed, Duration::from_secs(7200)).await;
    let err = failed.last_error.unwrap();
    assert!(err.starts_with("Timeout reached while inspecting the node."), "{err}");
    let waited = failed.provision_updated_at.unwrap() - started;
    assert!(
        waited >= chrono::Duration::seconds(1800) && waited <= chrono::Duration::seconds(1800 + 61),
        "failed after {waited}"
    );
    assert_eq!(failed.power_state, Some(PowerState::Off));
    env.finish().await;
}

/// The same simulated machine inspected out of band (its Redfish BMC describes its
/// processors, memory, disks and NICs) and in band (its agent reports its inventory): both
/// give the node the same properties; the BMC cannot tell which NIC boots, so Ironic's
/// `pxe` default adds a port for every NIC, the agent only for the one that booted.
#[tokio::test]
async fn test_redfish_and_agent_inspection_agree_on_a_simulated_machine() {
    let env = env(false).await.unwrap();
    let mut cfg = conductor(&env, "c-oob", AddPorts::Pxe, KeepPorts::All);
    cfg.redfish.attempts = 1;
    cfg.redfish.power_poll_interval_ms = 100;
    env.start_conductor(cfg).await;
    env.start_fleet();
    let mut hw = machine();
    hw.boot.as_mut().unwrap().current_boot_mode = "uefi".into();
    let mut props = Vec::new();
    for (i, inspect) in ["redfish", "agent"].into_iter().enumerate() {
        let machine = sim::agent::AgentMachine::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bmc = listener.local_addr().unwrap();
        let systems: Vec<(String, std::sync::Arc<dyn sim::bmc::MachineBackend>)> =
            vec![("1".into(), std::sync::Arc::new(machine.clone()))];
        tokio::spawn(sim::bmc::serve_redfish(listener, systems, None, env.token.clone()));
        let mut n = Node::new(deploy::NodeId::new_v4(), "redfish", env.clock.now());
        n.driver_info.insert("redfish_address".into(), format!("http://{bmc}").into());
        n.driver_info.insert("redfish_system_id".into(), "1".into());
        n.interfaces.inspect = Some(inspect.into());
        n.provision_state = S::Manageable;
        n.power_state = Some(PowerState::Off);
        let n = env.store().node_insert(&n).await.unwrap();
        // The agent's MACs must not collide with the other machine's ports.
        let mut own = hw.clone();
        for nic in &mut own.interfaces {
            nic.mac_address = nic.mac_address.replace("52:54:00:12", &format!("52:54:0{i}:12"));
        }
        own.boot.as_mut().unwrap().pxe_interface = own.interfaces[0].mac_address.clone();
        machine.set_hardware(own.clone());
        env.agent.set_inventory(n.uuid, own);
        env.provision(n.uuid, ApiVerb::Inspect).await.unwrap();
        let done = env.wait_state(n.uuid, S::Manageable, SHORT).await;
        assert_eq!(done.power_state, Some(PowerState::Off), "{inspect}");
        let nports = ports(&env, &done).await.len();
        assert_eq!(nports, if inspect == "redfish" { 2 } else { 1 }, "{inspect}");
        let oob = machine.changes().is_empty();
        assert_eq!(oob, inspect == "redfish", "only in-band inspection powers the machine on");
        props.push(done.properties.clone());
    }
    assert_eq!(props[0], props[1]);
    let p = &props[0];
    assert_eq!(
        (p["cpus"].clone(), p["cpu_arch"].clone(), p["memory_mb"].clone(), p["local_gb"].clone()),
        (json!(8), json!("x86_64"), json!(16384), json!(59))
    );
    assert_eq!(p["capabilities"], "boot_mode:uefi");
    env.finish().await;
}
