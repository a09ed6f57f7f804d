//! Shared fixtures and the suite modules.

pub mod conductors;
pub mod history;
pub mod list;
pub mod lock;
pub mod modify;
pub mod nodes;
pub mod ports;
pub mod schema;
pub mod secrets;

use chrono::{DateTime, TimeZone, Utc};
use deploy::ids::MacAddress;
use deploy::internal_info::keys;
use deploy::model::{Interfaces, JsonObject};
use deploy::{Node, NodeId, Port, PortId, PowerState, ProvisionState};
use serde_json::json;
use store::DataStore;

/// A fixed timestamp with sub-microsecond digits (the store keeps microseconds).
pub fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + secs, 123_456_000).single().expect("valid timestamp")
}

pub fn obj(v: serde_json::Value) -> JsonObject {
    match v {
        serde_json::Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// A minimal node.
pub fn node(name: Option<&str>) -> Node {
    let mut n = Node::new(NodeId::new_v4(), "fake-hardware", t(0));
    n.name = name.map(str::to_owned);
    n
}

/// A node with every field set to a non-default value.
pub fn full_node() -> Node {
    let mut n = Node::new(NodeId::new_v4(), "redfish", t(1));
    n.name = Some("full-node".into());
    n.driver_info =
        obj(json!({"redfish_address": "http://127.0.0.1:8000", "redfish_password": "s3cret"}));
    n.driver_internal_info =
        obj(json!({keys::AGENT_URL: "http://127.0.0.1:9999", keys::DEPLOY_STEP_INDEX: 2}));
    n.instance_info = obj(json!({"image_source": "http://img", "root_gb": 10}));
    n.instance_uuid = Some("inst-1".into());
    n.properties = obj(json!({"cpu_arch": "x86_64", "root_device": {"size": ">= 10"}}));
    n.extra = obj(json!({"rack": 7, "nested": {"a": [1, 2, 3]}}));
    n.provision_state = ProvisionState::Deploying;
    n.target_provision_state = Some(ProvisionState::Active);
    n.provision_updated_at = Some(t(2));
    n.power_state = Some(PowerState::On);
    n.target_power_state = Some(PowerState::Off);
    n.maintenance = true;
    n.maintenance_reason = Some("checking".into());
    n.fault = Some("power failure".into());
    n.last_error = Some("it broke".into());
    n.reservation = None;
    n.conductor = Some("cond-1".into());
    n.conductor_group = "group-a".into();
    n.owner = Some("owner-1".into());
    n.lessee = Some("lessee-1".into());
    n.resource_class = Some("baremetal".into());
    n.interfaces = Interfaces {
        bios: Some("no-bios".into()),
        boot: Some("ipxe".into()),
        console: Some("no-console".into()),
        deploy: Some("direct".into()),
        firmware: Some("no-firmware".into()),
        inspect: Some("agent".into()),
        management: Some("redfish".into()),
        network: Some("noop".into()),
        power: Some("redfish".into()),
        raid: Some("no-raid".into()),
        rescue: Some("no-rescue".into()),
        storage: Some("noop".into()),
        vendor: Some("no-vendor".into()),
    };
    n.automated_clean = Some(false);
    n.protected = true;
    n.protected_reason = Some("prod".into());
    n.retired = true;
    n.retired_reason = Some("old".into());
    n.description = Some("a node with ünïcode".into());
    n.traits = vec!["CUSTOM_A".into(), "CUSTOM_B".into()];
    n.clean_step = obj(json!({"step": "erase_devices", "priority": 10}));
    n.deploy_step = obj(json!({"step": "write_image", "interface": "deploy"}));
    n.network_data = obj(json!({"links": [], "networks": []}));
    n.boot_mode = Some("uefi".into());
    n.generation = 7;
    n.updated_at = Some(t(3));
    n
}

/// `n` as the store returns it: timestamps at microsecond precision.
pub fn stored(mut n: Node) -> Node {
    use chrono::SubsecRound;
    n.created_at = n.created_at.trunc_subsecs(6);
    n.updated_at = n.updated_at.map(|x| x.trunc_subsecs(6));
    n.provision_updated_at = n.provision_updated_at.map(|x| x.trunc_subsecs(6));
    n
}

pub fn mac(s: &str) -> MacAddress {
    s.parse().expect("valid MAC")
}

pub fn port(node: NodeId, address: &str) -> Port {
    Port {
        uuid: PortId::new_v4(),
        address: mac(address),
        node_uuid: node,
        pxe_enabled: true,
        local_link_connection: obj(json!({"switch_id": "aa:bb:cc:dd:ee:ff", "port_id": "Eth1"})),
        physical_network: Some("physnet1".into()),
        extra: obj(json!({"k": "v"})),
        portgroup_uuid: None,
        internal_info: obj(json!({})),
        name: None,
        description: None,
        vendor: None,
        category: None,
        is_smartnic: false,
        // Not the default, so a column that is not written or read back shows.
        available_for_dynamic_portgroup: false,
        created_at: t(10),
        updated_at: None,
    }
}

/// Insert `n` and return the stored copy.
pub async fn insert(store: &DataStore, n: &Node) -> Node {
    store.node_insert(n).await.expect("node_insert")
}
