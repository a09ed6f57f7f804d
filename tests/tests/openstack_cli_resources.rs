//! The real `openstack baremetal` client (python-openstackclient 10.5.0 + python-ironicclient
//! 6.3.0, pinned, in a venv under target/) through every resource of the API, against
//! api-service and one conductor on PostgreSQL + RabbitMQ: drivers, conductors, shards,
//! chassis, nodes (traits, VIFs, boot device, RAID, BIOS, inventory, history, children),
//! port groups, ports, volume connectors and targets, deploy templates, runbooks and
//! allocations. Every create, list, show, set, unset and delete runs as the CLI's own command;
//! each set/unset is re-read with `show`; bad input must make the CLI exit non-zero with
//! Ironic's error.
//!
//! Where Ferric answers differently from Ironic, the difference is recorded as a deviation and
//! the run goes on, so one does not hide the next; the test fails at the end listing them all.

#![expect(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]
#![expect(clippy::print_stdout, reason = "deviations and notes go to the test log as found")]

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::Cluster;
use common::testing::{Need, require_service};
use serde_json::{Value, json};
use tests::openstack::OpenStackCli;
use tokio::task::JoinHandle;

/// One CLI call's deadline (allocation and provision `--wait`s included).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What one `openstack baremetal …` call did.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.stdout).ok()
    }

    fn describe(&self) -> String {
        format!(
            "`openstack baremetal {}` {}: {} {}",
            self.args.join(" "),
            if self.success { "exited 0" } else { "failed" },
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// The CLI against one endpoint, at the newest version both sides speak.
#[derive(Clone)]
struct Cli {
    cli: OpenStackCli,
    endpoint: String,
}

impl Cli {
    /// Start `openstack baremetal <args…>` on a blocking thread.
    fn spawn(&self, args: &[&str]) -> JoinHandle<Run> {
        let (cli, endpoint) = (self.cli.clone(), self.endpoint.clone());
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let mut full = vec!["--os-baremetal-api-version", "latest", "baremetal"];
            full.extend(args.iter().map(String::as_str));
            let out = cli.run(&endpoint, &full, CALL_TIMEOUT).unwrap();
            Run {
                args,
                success: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.spawn(args).await.unwrap()
    }

    /// Run, assert exit 0 without a decode complaint, return stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert!(run.success, "{}", run.describe());
        assert!(!run.stderr.contains("Could not decode"), "{}", run.describe());
        run.stdout
    }

    /// Run with `-f json`, assert exit 0, return the parsed output.
    async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-f", "json"]);
        let out = self.ok(&args).await;
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`{}` printed no JSON ({e}): {out}", args.join(" ")))
    }

    /// Run, assert a non-zero exit, return stderr (where the CLI prints the API's error).
    async fn fails(&self, args: &[&str]) -> String {
        expect_failure(self.run(args).await)
    }
}

fn expect_failure(run: Run) -> String {
    assert!(!run.success, "expected an error: {}", run.describe());
    run.stderr
}

/// Where Ferric's answer differs from Ironic's: recorded, and the run goes on.
#[derive(Default)]
struct Deviations(Vec<String>);

impl Deviations {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            println!("DEVIATION: {what}");
            self.0.push(what);
        }
    }

    /// `run` must succeed and print JSON; the JSON when it did.
    fn json(&mut self, run: &Run, why: &str) -> Option<Value> {
        let v = if run.success { run.json() } else { None };
        self.check(v.is_some(), || format!("{why}: {}", run.describe()));
        v
    }
}

/// `key` of every item of a list output.
fn column(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|i| i[key].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_openstack_cli_drives_every_resource() {
    let Some(cluster) = Cluster::start("osc").await else { return };
    let venv = tokio::task::spawn_blocking(OpenStackCli::ensure).await.unwrap();
    let venv = venv.map_err(|e| format!("{e:#}"));
    let Some(cli) = require_service(Need::Services, "the openstack client venv", venv) else {
        return;
    };
    let endpoint = cluster.endpoint.clone();
    let hostname = cluster.conductor.clone();

    let c = Cli { cli, endpoint };
    let started = Instant::now();
    // Lanes that share nothing but the API run side by side (each CLI call is a second of
    // Python start-up): the main node with its chassis, traits, port groups and ports; VIFs
    // on a node of their own; templates, runbooks, volumes and allocations on theirs.
    let (mut dev, mut dev_b, mut dev_c) = Default::default();
    let lanes_a_c = async {
        let hw = drivers_and_conductors(&c, &hostname).await;
        let lane_a = async {
            let chassis = chassis(&c).await;
            let n1 = node(&c, &mut dev, &chassis).await;
            node_subresources(&c, &mut dev, &n1, &hw).await;
            let pg = port_groups_and_ports(&c, &mut dev, &n1).await;
            (chassis, n1, pg)
        };
        tokio::join!(lane_a, vifs(&c, &mut dev_c, &hw)).0
    };
    let lane_b = async {
        templates_and_runbooks(&c).await;
        volumes(&c, &mut dev_b).await;
        allocations(&c, &mut dev_b).await;
    };
    let ((chassis, n1, pg), ()) = tokio::join!(lanes_a_c, lane_b);
    let Deviations(more) = dev_b;
    dev.0.extend(more);
    let Deviations(more) = dev_c;
    dev.0.extend(more);

    // Ran beside the lanes: a 409 (the duplicate address, as on Ironic) is retried by the
    // client for 10 s.
    let dup = expect_failure(pg.duplicate.await.unwrap());
    assert!(dup.contains("already exists") && dup.contains("52:54:00:aa:00:01"), "{dup}");
    assert!(dup.contains("HTTP 409"), "Ironic's PortgroupMACAlreadyExists is a 409: {dup}");
    let err = expect_failure(pg.not_empty.await.unwrap());
    assert!(err.contains("contains ports") && err.contains(&pg.uuid), "{err}");
    // Ironic's PortgroupNotEmpty is an Invalid: 400, not retried by the client.
    dev.check(err.contains("HTTP 400"), || {
        format!(
            "DELETE /v1/portgroups/<uuid> with a port in it: Ironic 400 \"Cannot complete the \
             requested action because portgroup <uuid> contains ports.\", got {}",
            err.lines().last().unwrap_or_default()
        )
    });
    deletes(&c, &n1, &pg.uuid, &chassis).await;
    println!("openstack CLI over every resource: {:.0?}", started.elapsed());

    cluster.stop().await;
    assert!(
        dev.0.is_empty(),
        "{} answers differ from Ironic's:\n  {}",
        dev.0.len(),
        dev.0.join("\n  ")
    );
}

/// What the fake-hardware driver enables beyond the defaults.
struct Hardware {
    /// `flat` is an enabled network interface.
    flat: bool,
    /// `fake` is an enabled RAID interface.
    fake_raid: bool,
}

async fn drivers_and_conductors(c: &Cli, hostname: &str) -> Hardware {
    let drivers = c.json(&["driver", "list"]).await;
    assert_eq!(column(&drivers, "name"), ["fake-hardware", "ipmi", "redfish"]);
    for d in drivers.as_array().unwrap() {
        assert!(s(&d["hosts"]).contains(hostname), "{d}");
    }
    let fake = c.json(&["driver", "show", "fake-hardware"]).await;
    assert_eq!(fake["name"], "fake-hardware");
    assert_eq!(fake["type"], "dynamic");
    assert_eq!(fake["default_power_interface"], "fake");
    assert_eq!(fake["default_management_interface"], "fake");
    assert!(s(&fake["hosts"]).contains(hostname), "{fake}");
    let enabled = |iface: &str| {
        s(&fake[format!("enabled_{iface}_interfaces")])
            .split(", ")
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(enabled("network").contains(&"noop".to_owned()), "{fake}");
    let props = c.json(&["driver", "property", "list", "fake-hardware"]).await;
    assert!(column(&props, "property").contains(&"deploy_kernel".to_owned()), "{props}");
    let props = c.json(&["driver", "property", "list", "ipmi"]).await;
    assert!(column(&props, "property").contains(&"ipmi_address".to_owned()), "{props}");

    let conductors = c.json(&["conductor", "list"]).await;
    assert_eq!(column(&conductors, "hostname"), [hostname]);
    assert_eq!(conductors[0]["alive"], true);
    let shown = c.json(&["conductor", "show", hostname]).await;
    assert_eq!(shown["hostname"], hostname);
    assert_eq!(shown["alive"], true);
    assert_eq!(shown["conductor_group"], "");
    assert_eq!(shown["drivers"], json!(["fake-hardware", "ipmi", "redfish"]));

    let hw = Hardware {
        flat: enabled("network").contains(&"flat".to_owned()),
        fake_raid: enabled("raid").contains(&"fake".to_owned()),
    };
    if !hw.flat {
        println!("NOTE: fake-hardware enables only the noop network interface: VIFs on noop");
    }
    hw
}

async fn chassis(c: &Cli) -> String {
    let created =
        c.json(&["chassis", "create", "--description", "rack 1", "--extra", "loc=a1"]).await;
    let uuid = s(&created["uuid"]);
    assert_eq!(created["description"], "rack 1");
    assert_eq!(created["extra"], json!({"loc": "a1"}));
    let list = c.json(&["chassis", "list"]).await;
    assert_eq!(column(&list, "uuid"), [uuid.as_str()]);
    assert_eq!(list[0]["description"], "rack 1");

    c.ok(&["chassis", "set", &uuid, "--description", "rack 2", "--extra", "row=r7"]).await;
    let shown = c.json(&["chassis", "show", &uuid]).await;
    assert_eq!(shown["uuid"], uuid.as_str());
    assert_eq!(shown["description"], "rack 2");
    assert_eq!(shown["extra"], json!({"loc": "a1", "row": "r7"}));
    assert!(shown["updated_at"].is_string(), "{shown}");
    c.ok(&["chassis", "unset", &uuid, "--description", "--extra", "loc"]).await;
    let shown = c.json(&["chassis", "show", &uuid]).await;
    assert!(shown["description"].is_null(), "{shown}");
    assert_eq!(shown["extra"], json!({"row": "r7"}));
    uuid
}

/// The main node: create, list, show, set and unset of its fields, chassis and shard.
async fn node(c: &Cli, dev: &mut Deviations, chassis: &str) -> String {
    let created = c
        .json(&[
            "node",
            "create",
            "--driver",
            "fake-hardware",
            "--name",
            "osc-n1",
            "--resource-class",
            "osc-rc",
            "--property",
            "cpus=4",
        ])
        .await;
    let uuid = s(&created["uuid"]);
    assert_eq!(created["name"], "osc-n1");
    assert_eq!(created["driver"], "fake-hardware");
    assert_eq!(created["provision_state"], "enroll");
    assert_eq!(created["resource_class"], "osc-rc");
    assert_eq!(created["properties"], json!({"cpus": 4}));
    assert_eq!(created["management_interface"], "fake");
    assert_eq!(created["network_interface"], "noop");
    let list = c.json(&["node", "list"]).await;
    let listed = list.as_array().unwrap().iter().find(|n| n["uuid"] == uuid.as_str());
    assert_eq!(listed.unwrap()["name"], "osc-n1", "{list}");
    assert_eq!(listed.unwrap()["provision_state"], "enroll", "{list}");

    c.ok(&[
        "node",
        "set",
        "osc-n1",
        "--chassis-uuid",
        chassis,
        "--description",
        "first node",
        "--extra",
        "k=v",
        "--property",
        "memory_mb=1024",
        "--shard",
        "osc-shard",
        "--owner",
        "proj-a",
        "--lessee",
        "proj-b",
    ])
    .await;
    let shown = c.json(&["node", "show", &uuid]).await;
    assert_eq!(shown["name"], "osc-n1");
    assert_eq!(shown["chassis_uuid"], chassis);
    assert_eq!(shown["description"], "first node");
    assert_eq!(shown["extra"], json!({"k": "v"}));
    assert_eq!(shown["properties"], json!({"cpus": 4, "memory_mb": 1024}));
    assert_eq!(shown["shard"], "osc-shard");
    assert_eq!(shown["owner"], "proj-a");
    assert_eq!(shown["lessee"], "proj-b");

    // The client sends every filtered list to the collection with a trailing slash
    // (`GET /v1/nodes/?chassis_uuid=…`), which Ironic serves like `/v1/nodes`.
    let run = c.run(&["node", "list", "--chassis", chassis, "-f", "json"]).await;
    if let Some(list) = dev.json(&run, "node list --chassis (GET /v1/nodes/?chassis_uuid=…)") {
        dev.check(column(&list, "uuid") == [uuid.as_str()], || format!("{list}"));
    }
    let shards = c.json(&["shard", "list"]).await;
    assert!(shards.as_array().unwrap().contains(&json!({"name": "osc-shard", "count": 1})));

    let err = c.fails(&["chassis", "delete", chassis]).await;
    assert!(err.contains("contains nodes") && err.contains(chassis), "{err}");
    assert!(err.contains("HTTP 400"), "Ironic's ChassisNotEmpty is a 400: {err}");

    c.ok(&[
        "node",
        "unset",
        "osc-n1",
        "--chassis-uuid",
        "--description",
        "--extra",
        "k",
        "--property",
        "memory_mb",
        "--shard",
        "--owner",
        "--lessee",
    ])
    .await;
    let shown = c.json(&["node", "show", "osc-n1"]).await;
    for field in ["chassis_uuid", "description", "shard", "owner", "lessee"] {
        assert!(shown[field].is_null(), "{field} not unset: {shown}");
    }
    assert_eq!(shown["extra"], json!({}));
    assert_eq!(shown["properties"], json!({"cpus": 4}));
    let shards = c.json(&["shard", "list"]).await;
    assert!(!column(&shards, "name").contains(&"osc-shard".to_owned()), "{shards}");
    // Ironic names the group of unsharded nodes str(None).
    let unsharded = shards.as_array().unwrap().iter().all(|s| s["name"] == "None");
    dev.check(unsharded, || {
        format!("shard list (GET /v1/shards) names unsharded nodes null, Ironic \"None\": {shards}")
    });
    c.ok(&["node", "set", "osc-n1", "--chassis-uuid", chassis]).await;
    uuid
}

/// Traits, boot device, RAID, BIOS, inventory and children of the main node.
async fn node_subresources(c: &Cli, dev: &mut Deviations, n1: &str, hw: &Hardware) {
    let out = c
        .ok(&["node", "add", "trait", "osc-n1", "CUSTOM_GPU", "CUSTOM_FAST", "HW_CPU_X86_AVX2"])
        .await;
    assert!(out.contains("Added trait CUSTOM_FAST"), "{out}");
    let traits = c.json(&["node", "trait", "list", "osc-n1"]).await;
    assert_eq!(column(&traits, "traits"), ["CUSTOM_GPU", "CUSTOM_FAST", "HW_CPU_X86_AVX2"]);
    c.ok(&["node", "remove", "trait", "osc-n1", "CUSTOM_FAST"]).await;
    let shown = c.json(&["node", "show", "osc-n1", "-c", "traits"]).await;
    assert_eq!(shown["traits"], json!(["CUSTOM_GPU", "HW_CPU_X86_AVX2"]));
    let err = c.fails(&["node", "add", "trait", "osc-n1", "bad-trait"]).await;
    assert!(err.contains("bad-trait") && err.contains("HTTP 400"), "{err}");
    let err = c.fails(&["node", "remove", "trait", "osc-n1", "CUSTOM_NOPE"]).await;
    assert!(err.contains("CUSTOM_NOPE") && err.contains("HTTP 404"), "{err}");
    c.ok(&["node", "remove", "trait", "osc-n1", "--all"]).await;
    assert_eq!(c.json(&["node", "trait", "list", "osc-n1"]).await, json!([]));

    // Ironic's fake management supports only pxe, and refuses another device.
    let supported = c.json(&["node", "boot", "device", "show", "osc-n1", "--supported"]).await;
    assert_eq!(supported["supported_boot_devices"], "pxe");
    c.ok(&["node", "boot", "device", "set", "osc-n1", "pxe", "--persistent"]).await;
    let boot = c.json(&["node", "boot", "device", "show", "osc-n1"]).await;
    assert_eq!(boot["boot_device"], "pxe", "{boot}");
    let err = c.fails(&["node", "boot", "device", "set", "osc-n1", "disk"]).await;
    assert!(err.contains("disk") && err.contains("HTTP 400"), "{err}");

    let raid = r#"{"logical_disks": [{"size_gb": 10, "raid_level": "1", "is_root_volume": true}]}"#;
    let err = c.fails(&["node", "set", "osc-n1", "--target-raid-config", raid]).await;
    assert!(err.to_lowercase().contains("does not support raid"), "{err}");
    // Ironic answers UnsupportedDriverExtension from PUT /states/raid with 404.
    dev.check(err.contains("HTTP 404"), || {
        format!("PUT /v1/nodes/osc-n1/states/raid on a no-raid node: Ironic 404, got {err}")
    });
    // An empty target RAID config clears it, whatever the RAID interface (Ironic validates
    // only a non-empty one).
    let run = c.run(&["node", "unset", "osc-n1", "--target-raid-config"]).await;
    dev.check(run.success, || {
        format!("PUT /v1/nodes/osc-n1/states/raid {{}} must clear (204): {}", run.describe())
    });
    if hw.fake_raid {
        c.ok(&["node", "set", "osc-n1", "--raid-interface", "fake"]).await;
        c.ok(&["node", "set", "osc-n1", "--target-raid-config", raid]).await;
        let shown = c.json(&["node", "show", "osc-n1", "-c", "target_raid_config"]).await;
        assert_eq!(shown["target_raid_config"]["logical_disks"][0]["size_gb"], 10);
        c.ok(&["node", "unset", "osc-n1", "--target-raid-config"]).await;
        c.ok(&["node", "set", "osc-n1", "--raid-interface", "no-raid"]).await;
    }
    let shown = c.json(&["node", "show", "osc-n1", "-c", "target_raid_config"]).await;
    assert_eq!(shown["target_raid_config"], json!({}));

    assert_eq!(c.json(&["node", "bios", "setting", "list", "osc-n1"]).await, json!([]));
    let err = c.fails(&["node", "inventory", "save", "osc-n1"]).await;
    assert!(err.contains("could not be found") && err.contains(n1), "{err}");
    assert!(err.contains("HTTP 404"), "{err}");

    let child = c
        .json(&[
            "node",
            "create",
            "--driver",
            "fake-hardware",
            "--name",
            "osc-child",
            "--parent-node",
            "osc-n1",
        ])
        .await;
    assert_eq!(child["parent_node"], n1);
    let children = c.json(&["node", "children", "list", "osc-n1"]).await;
    assert_eq!(children["children"], json!([child["uuid"]]));
    c.ok(&["node", "delete", "osc-child"]).await;
}

/// VIFs on a node of their own: on `flat`, each takes a free port, and one more than there
/// are ports is refused; on `noop`, nothing is recorded, as Ironic's.
async fn vifs(c: &Cli, dev: &mut Deviations, hw: &Hardware) {
    let iface = if hw.flat { "flat" } else { "noop" };
    let node = c
        .json(&[
            "node",
            "create",
            "--driver",
            "fake-hardware",
            "--name",
            "osc-vif",
            "--network-interface",
            iface,
        ])
        .await;
    assert_eq!(node["network_interface"], iface);
    let node = s(&node["uuid"]);
    if !hw.flat {
        c.ok(&["node", "vif", "attach", "osc-vif", "vif-a"]).await;
        assert_eq!(c.json(&["node", "vif", "list", "osc-vif"]).await, json!([]));
        c.ok(&["node", "vif", "detach", "osc-vif", "vif-a"]).await;
        c.ok(&["node", "delete", &node]).await;
        return;
    }
    let port = c.json(&["port", "create", "52:54:00:bb:00:01", "--node", &node]).await;
    let port = s(&port["uuid"]);
    c.ok(&["node", "vif", "attach", "osc-vif", "vif-a"]).await;
    assert_eq!(c.json(&["node", "vif", "list", "osc-vif"]).await, json!([{"id": "vif-a"}]));
    let shown = c.json(&["port", "show", &port, "-c", "internal_info"]).await;
    assert_eq!(shown["internal_info"]["tenant_vif_port_id"], "vif-a");

    let err = c.fails(&["node", "vif", "attach", "osc-vif", "vif-b"]).await;
    assert!(err.contains("vif-b") && err.contains("not enough free physical ports"), "{err}");
    // Ironic's NoFreePhysicalPorts is an Invalid: 400, not retried by the client.
    dev.check(err.contains("HTTP 400"), || {
        format!(
            "POST /v1/nodes/osc-vif/vifs {{\"id\": \"vif-b\"}} with no free port: Ironic 400 \
             \"Unable to attach VIF vif-b, not enough free physical ports.\", got {}",
            err.lines().last().unwrap_or_default()
        )
    });
    let err = c.fails(&["node", "vif", "detach", "osc-vif", "vif-zzz"]).await;
    assert!(err.contains("vif-zzz") && err.contains("not attached"), "{err}");
    assert!(err.contains("HTTP 400"), "{err}");

    c.ok(&["node", "vif", "detach", "osc-vif", "vif-a"]).await;
    assert_eq!(c.json(&["node", "vif", "list", "osc-vif"]).await, json!([]));
    let shown = c.json(&["port", "show", &port, "-c", "internal_info"]).await;
    assert!(shown["internal_info"].get("tenant_vif_port_id").is_none(), "{shown}");
    // The node's port goes with it.
    c.ok(&["node", "delete", &node]).await;
    assert!(c.fails(&["port", "show", &port]).await.contains("HTTP 404"));
}

/// The main node's port group (holding one port until the attempts on it are over).
struct PortGroup {
    uuid: String,
    /// A second port group with the same address.
    duplicate: JoinHandle<Run>,
    /// Deleting it while it has a port.
    not_empty: JoinHandle<Run>,
}

async fn port_groups_and_ports(c: &Cli, dev: &mut Deviations, n1: &str) -> PortGroup {
    let pg = c
        .json(&[
            "port",
            "group",
            "create",
            "--node",
            n1,
            "--name",
            "osc-pg1",
            "--address",
            "52:54:00:AA:00:01",
            "--mode",
            "802.3ad",
            "--property",
            "miimon=100",
            "--extra",
            "a=b",
        ])
        .await;
    let uuid = s(&pg["uuid"]);
    assert_eq!(pg["name"], "osc-pg1");
    assert_eq!(pg["address"], "52:54:00:aa:00:01");
    assert_eq!(pg["node_uuid"], n1);
    assert_eq!(pg["mode"], "802.3ad");
    assert_eq!(pg["properties"], json!({"miimon": 100}));
    assert_eq!(pg["standalone_ports_supported"], true);
    let duplicate =
        c.spawn(&["port", "group", "create", "--node", n1, "--address", "52:54:00:aa:00:01"]);
    let list = c.json(&["port", "group", "list"]).await;
    assert_eq!(column(&list, "uuid"), [uuid.as_str()]);
    assert_eq!(list[0]["name"], "osc-pg1");
    let run = c.run(&["port", "group", "list", "--node", n1, "-f", "json"]).await;
    if let Some(list) = dev.json(&run, "port group list --node (GET /v1/portgroups/?node=…)") {
        dev.check(column(&list, "uuid") == [uuid.as_str()], || format!("{list}"));
    }

    c.ok(&[
        "port",
        "group",
        "set",
        "osc-pg1",
        "--name",
        "osc-pg-one",
        "--mode",
        "balance-rr",
        "--extra",
        "c=d",
        "--property",
        "xmit_hash_policy=layer2",
        "--unsupport-standalone-ports",
    ])
    .await;
    let shown = c.json(&["port", "group", "show", "osc-pg-one"]).await;
    assert_eq!(shown["uuid"], uuid.as_str());
    assert_eq!(shown["mode"], "balance-rr");
    assert_eq!(shown["extra"], json!({"a": "b", "c": "d"}));
    assert_eq!(shown["properties"], json!({"miimon": 100, "xmit_hash_policy": "layer2"}));
    assert_eq!(shown["standalone_ports_supported"], false);
    c.ok(&["port", "group", "unset", "osc-pg-one", "--extra", "a", "--property", "miimon"]).await;
    let shown = c.json(&["port", "group", "show", &uuid]).await;
    assert_eq!(shown["extra"], json!({"c": "d"}));
    assert_eq!(shown["properties"], json!({"xmit_hash_policy": "layer2"}));

    let port = c
        .json(&[
            "port",
            "create",
            "52:54:00:aa:00:02",
            "--node",
            n1,
            "--port-group",
            &uuid,
            "--physical-network",
            "physnet1",
            "--local-link-connection",
            "switch_id=00:11:22:33:44:55",
            "--local-link-connection",
            "port_id=Eth1",
            "--extra",
            "p=q",
        ])
        .await;
    let port_id = s(&port["uuid"]);
    assert_eq!(port["address"], "52:54:00:aa:00:02");
    assert_eq!(port["node_uuid"], n1);
    assert_eq!(port["portgroup_uuid"], uuid.as_str());
    assert_eq!(port["physical_network"], "physnet1");
    assert_eq!(port["pxe_enabled"], true);
    assert_eq!(
        port["local_link_connection"],
        json!({"switch_id": "00:11:22:33:44:55", "port_id": "Eth1"})
    );
    let list = c.json(&["port", "list"]).await;
    let listed = list.as_array().unwrap().iter().find(|p| p["uuid"] == port_id.as_str());
    assert_eq!(listed.unwrap()["address"], "52:54:00:aa:00:02", "{list}");
    let run = c.run(&["port", "list", "--port-group", &uuid, "-f", "json"]).await;
    if let Some(list) = dev.json(&run, "port list --port-group (GET /v1/ports/?portgroup=…)") {
        dev.check(column(&list, "uuid") == [port_id.as_str()], || format!("{list}"));
    }
    // Ports have a name since 1.88.
    let run = c
        .run(&[
            "port",
            "create",
            "52:54:00:aa:00:09",
            "--node",
            n1,
            "--name",
            "osc-port",
            "-f",
            "json",
        ])
        .await;
    if let Some(named) = dev.json(&run, "port create --name (POST /v1/ports {\"name\": …}, 1.88)")
    {
        dev.check(named["name"] == "osc-port", || format!("port name not kept: {named}"));
        c.ok(&["port", "delete", &s(&named["uuid"])]).await;
    }

    c.ok(&[
        "port",
        "set",
        &port_id,
        "--extra",
        "x=y",
        "--pxe-disabled",
        "--physical-network",
        "physnet2",
        "--local-link-connection",
        "port_id=Eth2",
    ])
    .await;
    let shown = c.json(&["port", "show", &port_id]).await;
    assert_eq!(shown["extra"], json!({"p": "q", "x": "y"}));
    assert_eq!(shown["pxe_enabled"], false);
    assert_eq!(shown["physical_network"], "physnet2");
    assert_eq!(shown["local_link_connection"]["port_id"], "Eth2");
    c.ok(&["port", "unset", &port_id, "--extra", "p", "--physical-network", "--port-group"]).await;
    let shown = c.json(&["port", "show", &port_id]).await;
    assert_eq!(shown["extra"], json!({"x": "y"}));
    assert!(shown["physical_network"].is_null(), "{shown}");
    assert!(shown["portgroup_uuid"].is_null(), "{shown}");
    c.ok(&["port", "set", &port_id, "--port-group", &uuid, "--pxe-enabled"]).await;
    let shown = c.json(&["port", "show", &port_id]).await;
    assert_eq!(shown["portgroup_uuid"], uuid.as_str());
    assert_eq!(shown["pxe_enabled"], true);
    let err = c.fails(&["port", "create", "52:54:00:aa:00:03", "--node", "osc-n1"]).await;
    assert!(err.contains("osc-n1") && err.contains("HTTP 400"), "--node takes a UUID: {err}");
    let not_empty = c.spawn(&["port", "group", "delete", &uuid]);
    PortGroup { uuid, duplicate, not_empty }
}

/// Volume connectors and targets, on a node of their own.
async fn volumes(c: &Cli, dev: &mut Deviations) {
    let node = c.json(&["node", "create", "--driver", "fake-hardware", "--name", "osc-vol"]).await;
    let n1 = s(&node["uuid"]);
    let n1 = n1.as_str();
    let vc = c
        .json(&[
            "volume",
            "connector",
            "create",
            "--node",
            n1,
            "--type",
            "iqn",
            "--connector-id",
            "iqn.2010-10.org.openstack:osc",
            "--extra",
            "a=1",
        ])
        .await;
    let vc_id = s(&vc["uuid"]);
    assert_eq!(vc["node_uuid"], n1);
    assert_eq!(vc["type"], "iqn");
    assert_eq!(vc["connector_id"], "iqn.2010-10.org.openstack:osc");
    assert_eq!(vc["extra"], json!({"a": 1}));
    let list = c.json(&["volume", "connector", "list"]).await;
    assert_eq!(column(&list, "uuid"), [vc_id.as_str()]);
    // Ironic's connector list shows uuid, node_uuid, type, connector_id.
    dev.check(list[0]["node_uuid"] == n1, || {
        format!("volume connector list (GET /v1/volume/connectors) leaves out node_uuid: {list}")
    });
    let run = c.run(&["volume", "connector", "list", "--node", n1, "-f", "json"]).await;
    if let Some(list) =
        dev.json(&run, "volume connector list --node (GET /v1/volume/connectors/?node=…)")
    {
        dev.check(column(&list, "uuid") == [vc_id.as_str()], || format!("{list}"));
    }
    c.ok(&[
        "volume",
        "connector",
        "set",
        &vc_id,
        "--type",
        "ip",
        "--connector-id",
        "192.0.2.10",
        "--extra",
        "b=2",
    ])
    .await;
    let shown = c.json(&["volume", "connector", "show", &vc_id]).await;
    assert_eq!(shown["type"], "ip");
    assert_eq!(shown["connector_id"], "192.0.2.10");
    assert_eq!(shown["extra"], json!({"a": 1, "b": 2}));
    c.ok(&["volume", "connector", "unset", &vc_id, "--extra", "a"]).await;
    let shown = c.json(&["volume", "connector", "show", &vc_id]).await;
    assert_eq!(shown["extra"], json!({"b": 2}));

    let vt = c
        .json(&[
            "volume",
            "target",
            "create",
            "--node",
            n1,
            "--type",
            "iscsi",
            "--boot-index",
            "0",
            "--volume-id",
            "vol-1",
            "--property",
            "target_lun=0",
        ])
        .await;
    let vt_id = s(&vt["uuid"]);
    assert_eq!(vt["volume_type"], "iscsi");
    assert_eq!(vt["boot_index"], 0);
    assert_eq!(vt["volume_id"], "vol-1");
    assert_eq!(vt["properties"], json!({"target_lun": 0}));
    let list = c.json(&["volume", "target", "list"]).await;
    assert_eq!(column(&list, "uuid"), [vt_id.as_str()]);
    dev.check(list[0]["node_uuid"] == n1, || {
        format!("volume target list (GET /v1/volume/targets) leaves out node_uuid: {list}")
    });
    c.ok(&[
        "volume",
        "target",
        "set",
        &vt_id,
        "--type",
        "fibre_channel",
        "--boot-index",
        "1",
        "--volume-id",
        "vol-2",
        "--property",
        "target_lun=3",
        "--extra",
        "e=1",
    ])
    .await;
    let shown = c.json(&["volume", "target", "show", &vt_id]).await;
    assert_eq!(shown["volume_type"], "fibre_channel");
    assert_eq!(shown["boot_index"], 1);
    assert_eq!(shown["volume_id"], "vol-2");
    assert_eq!(shown["properties"], json!({"target_lun": 3}));
    assert_eq!(shown["extra"], json!({"e": 1}));
    c.ok(&["volume", "target", "unset", &vt_id, "--property", "target_lun", "--extra", "e"]).await;
    let shown = c.json(&["volume", "target", "show", &vt_id]).await;
    assert_eq!(shown["properties"], json!({}));
    assert_eq!(shown["extra"], json!({}));

    c.ok(&["volume", "connector", "delete", &vc_id]).await;
    c.ok(&["volume", "target", "delete", &vt_id]).await;
    assert_eq!(c.json(&["volume", "connector", "list"]).await, json!([]));
    assert_eq!(c.json(&["volume", "target", "list"]).await, json!([]));
    c.ok(&["node", "delete", "osc-vol"]).await;
}

async fn templates_and_runbooks(c: &Cli) {
    let steps = r#"[{"interface": "bios", "step": "apply_configuration",
        "args": {"settings": [{"name": "LogicalProc", "value": "Enabled"}]}, "priority": 150}]"#;
    let dt = c
        .json(&[
            "deploy",
            "template",
            "create",
            "CUSTOM_OSC_HT",
            "--steps",
            steps,
            "--extra",
            "a=1",
        ])
        .await;
    let dt_id = s(&dt["uuid"]);
    assert_eq!(dt["name"], "CUSTOM_OSC_HT");
    assert_eq!(dt["steps"][0]["step"], "apply_configuration");
    assert_eq!(dt["steps"][0]["priority"], 150);
    let list = c.json(&["deploy", "template", "list"]).await;
    assert_eq!(column(&list, "name"), ["CUSTOM_OSC_HT"]);
    let new_steps =
        r#"[{"interface": "raid", "step": "delete_configuration", "args": {}, "priority": 10}]"#;
    c.ok(&[
        "deploy",
        "template",
        "set",
        "CUSTOM_OSC_HT",
        "--name",
        "CUSTOM_OSC_HT2",
        "--extra",
        "b=2",
        "--steps",
        new_steps,
    ])
    .await;
    let shown = c.json(&["deploy", "template", "show", "CUSTOM_OSC_HT2"]).await;
    assert_eq!(shown["uuid"], dt_id.as_str());
    assert_eq!(shown["extra"], json!({"a": 1, "b": 2}));
    assert_eq!(
        shown["steps"],
        json!([{"interface": "raid", "step": "delete_configuration", "args": {}, "priority": 10}])
    );
    c.ok(&["deploy", "template", "unset", "CUSTOM_OSC_HT2", "--extra", "a"]).await;
    let shown = c.json(&["deploy", "template", "show", &dt_id]).await;
    assert_eq!(shown["extra"], json!({"b": 2}));
    let err = c.fails(&["deploy", "template", "create", "osc-not-a-trait", "--steps", steps]).await;
    assert!(err.contains("osc-not-a-trait") && err.contains("HTTP 400"), "{err}");
    c.ok(&["deploy", "template", "delete", "CUSTOM_OSC_HT2"]).await;
    assert_eq!(c.json(&["deploy", "template", "list"]).await, json!([]));

    let steps = r#"[{"interface": "bios", "step": "apply_configuration", "args": {}, "order": 1}]"#;
    let rb = c
        .json(&["runbook", "create", "--name", "CUSTOM_OSC_RB", "--steps", steps, "--extra", "a=1"])
        .await;
    let rb_id = s(&rb["uuid"]);
    assert_eq!(rb["name"], "CUSTOM_OSC_RB");
    assert_eq!(rb["steps"][0]["order"], 1);
    assert_eq!(rb["public"], false);
    let list = c.json(&["runbook", "list"]).await;
    assert_eq!(column(&list, "name"), ["CUSTOM_OSC_RB"]);
    c.ok(&[
        "runbook",
        "set",
        "CUSTOM_OSC_RB",
        "--name",
        "osc-runbook",
        "--description",
        "nightly",
        "--extra",
        "b=2",
    ])
    .await;
    let shown = c.json(&["runbook", "show", "osc-runbook"]).await;
    assert_eq!(shown["uuid"], rb_id.as_str());
    assert_eq!(shown["description"], "nightly");
    assert_eq!(shown["extra"], json!({"a": 1, "b": 2}));
    c.ok(&["runbook", "unset", "osc-runbook", "--extra", "a", "--description"]).await;
    let shown = c.json(&["runbook", "show", &rb_id]).await;
    assert_eq!(shown["extra"], json!({"b": 2}));
    assert!(shown["description"].is_null(), "{shown}");
    c.ok(&["runbook", "delete", "osc-runbook"]).await;
    assert_eq!(c.json(&["runbook", "list"]).await, json!([]));
}

async fn allocations(c: &Cli, dev: &mut Deviations) {
    let node = c
        .json(&[
            "node",
            "create",
            "--driver",
            "fake-hardware",
            "--name",
            "osc-alloc",
            "--resource-class",
            "osc-gold",
        ])
        .await;
    let node = s(&node["uuid"]);
    c.ok(&["node", "manage", "osc-alloc", "--wait", "60"]).await;
    c.ok(&["node", "provide", "osc-alloc", "--wait", "60"]).await;
    let shown =
        c.json(&["node", "show", "osc-alloc", "-c", "provision_state", "-c", "power_state"]).await;
    assert_eq!(shown, json!({"provision_state": "available", "power_state": "power off"}));

    let a1 = c
        .json(&[
            "allocation",
            "create",
            "--resource-class",
            "osc-gold",
            "--name",
            "osc-a1",
            "--extra",
            "a=1",
            "--wait",
            "60",
        ])
        .await;
    let a1_id = s(&a1["uuid"]);
    assert_eq!(a1["state"], "active");
    assert_eq!(a1["node_uuid"], node.as_str());
    assert!(a1["last_error"].is_null(), "{a1}");
    let shown = c
        .json(&["node", "show", "osc-alloc", "-c", "allocation_uuid", "-c", "instance_uuid"])
        .await;
    assert_eq!(shown, json!({"allocation_uuid": a1_id, "instance_uuid": a1_id}));
    let list = c.json(&["allocation", "list"]).await;
    assert_eq!(column(&list, "uuid"), [a1_id.as_str()]);
    assert_eq!(list[0]["state"], "active");
    c.ok(&["allocation", "set", "osc-a1", "--name", "osc-a-one", "--extra", "b=2"]).await;
    let shown = c.json(&["allocation", "show", "osc-a-one"]).await;
    assert_eq!(shown["uuid"], a1_id.as_str());
    assert_eq!(shown["extra"], json!({"a": 1, "b": 2}));
    c.ok(&["allocation", "unset", "osc-a-one", "--name", "--extra", "a"]).await;
    let shown = c.json(&["allocation", "show", &a1_id]).await;
    assert!(shown["name"].is_null(), "{shown}");
    assert_eq!(shown["extra"], json!({"b": 2}));

    let err = c
        .fails(&[
            "allocation",
            "create",
            "--resource-class",
            "osc-none",
            "--name",
            "osc-a2",
            "--wait",
            "60",
        ])
        .await;
    assert!(err.contains("osc-none"), "{err}");
    let a2 = c.json(&["allocation", "show", "osc-a2"]).await;
    assert_eq!(a2["state"], "error");
    assert!(a2["node_uuid"].is_null(), "{a2}");
    let last_error = s(&a2["last_error"]);
    assert!(last_error.starts_with("Failed to process allocation"), "{last_error}");
    assert!(last_error.contains("osc-none"), "{last_error}");

    c.ok(&["allocation", "delete", &a1_id, "osc-a2"]).await;
    assert_eq!(c.json(&["allocation", "list"]).await, json!([]));
    let shown = c
        .json(&["node", "show", "osc-alloc", "-c", "allocation_uuid", "-c", "instance_uuid"])
        .await;
    assert_eq!(shown, json!({"allocation_uuid": null, "instance_uuid": null}));

    // manage and provide left history.
    let history = c.json(&["node", "history", "list", "osc-alloc"]).await;
    let events = history.as_array().unwrap();
    assert!(!events.is_empty(), "{history}");
    for e in events {
        assert!(e["uuid"].is_string() && e["severity"].is_string(), "{e}");
        assert!(e["event"].is_string() && e["created_at"].is_string(), "{e}");
    }
    let first = s(&events[0]["uuid"]);
    let run = c.run(&["node", "history", "get", "osc-alloc", &first, "-f", "json"]).await;
    // The client drops the event's `links`, which Ironic always sends.
    if let Some(event) = dev.json(&run, "node history get (GET /v1/nodes/…/history/<event>)") {
        dev.check(event["uuid"] == first.as_str() && event["event"] == events[0]["event"], || {
            format!("{event}")
        });
    }
    c.ok(&["node", "delete", &node]).await;
}

async fn deletes(c: &Cli, n1: &str, pg: &str, chassis: &str) {
    let ports = c.json(&["port", "list"]).await;
    let ports = column(&ports, "uuid");
    assert_eq!(ports.len(), 1, "{ports:?}");
    c.ok(&["port", "delete", &ports[0]]).await;
    assert_eq!(c.json(&["port", "list"]).await, json!([]));
    c.ok(&["port", "group", "delete", pg]).await;
    assert_eq!(c.json(&["port", "group", "list"]).await, json!([]));
    c.ok(&["node", "delete", n1]).await;
    assert_eq!(c.json(&["node", "list"]).await, json!([]));
    c.ok(&["chassis", "delete", chassis]).await;
    assert_eq!(c.json(&["chassis", "list"]).await, json!([]));
    assert_eq!(c.json(&["shard", "list"]).await, json!([]));
}
