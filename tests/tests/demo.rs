//! `ferric demo` and `ferric up` end to end, with simulated machines: the built `ferric`
//! binary, the pinned OpenStack client, PostgreSQL + RabbitMQ, and injected faults.
//!
//! The `ferric` binary is (re)built with `cargo build -p cli --bin ferric` at the start.

#![expect(
    clippy::unwrap_used,
    reason = "harness helpers of an end-to-end test: a failure is a test failure"
)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sim::firmware::NetbootConfig;
use sim::ramdisk::AgentLauncher;
use sim::{Faults, Fleet, FleetConfig, Phase};
use store::testing::TestDatabase;
use tests::ferric_up::{Up, ferric_bin};
use tests::openstack::OpenStackCli;
use tokio_util::sync::CancellationToken;

/// `ferric up`'s configuration for the tests on the embedded default: a short callback
/// timeout, quick Redfish polling and heartbeats.
const EMBEDDED_CONFIG: &str = "[conductor]\ncallback_timeout_secs = 60.0\n[conductor.redfish]\npower_poll_interval_ms = 100\n\
                               [api]\nramdisk_heartbeat_timeout = 10\n[telemetry]\nfilter = \"warn\"\n";

/// The real OpenStack client (its venv made on first use).
async fn openstack_cli() -> OpenStackCli {
    tokio::task::spawn_blocking(OpenStackCli::ensure).await.unwrap().expect("OpenStack client venv")
}

/// One simulated machine booting from `up`.
async fn fleet(up: &Up, n: usize, token: &CancellationToken) -> Fleet {
    let netboot = NetbootConfig {
        ipxe_script_url: Some(format!("{}/boot.ipxe", up.http).parse().unwrap()),
        tftp_server: None,
        timeout: Duration::from_secs(30),
    };
    let mut cfg = FleetConfig::new(up.data_dir.path().join("machines"), n, netboot);
    cfg.launcher = Arc::new(AgentLauncher { lookup_interval_ms: Some(300) });
    cfg.seed = u64::from(std::process::id());
    Fleet::start(cfg, token.child_token()).await.unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn api_json(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Value {
    let mut r = c.request(method.clone(), url).header("X-OpenStack-Ironic-API-Version", "latest");
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{method} {url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Polls the node until `pred`; records every provision state seen.
async fn wait_node(
    api: &str,
    node: &str,
    what: &str,
    timeout: Duration,
    seen: &mut Vec<String>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let c = http();
    let deadline = Instant::now() + timeout;
    loop {
        let n = api_json(&c, reqwest::Method::GET, &format!("{api}/v1/nodes/{node}"), None).await;
        let s = n["provision_state"].as_str().unwrap_or_default().to_owned();
        if seen.last() != Some(&s) {
            seen.push(s);
        }
        if pred(&n) {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} did not reach {what} within {timeout:?}; last {n}; seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |n| n["provision_state"] == want && n["target_provision_state"].is_null()
}

/// manage, then provide (cleaning runs): the node ends `available`.
async fn make_available(api: &str, uuid: &str, seen: &mut Vec<String>) {
    for (verb, state, secs) in [("manage", "manageable", 60), ("provide", "available", 120)] {
        provision(api, uuid, verb).await;
        wait_node(api, uuid, state, Duration::from_secs(secs), seen, state_is(state)).await;
    }
}

async fn enrol(api: &str, m: &sim::FleetMachine) -> String {
    let c = http();
    let node = api_json(
        &c,
        reqwest::Method::POST,
        &format!("{api}/v1/nodes"),
        Some(json!({"name": m.machine.name(), "driver": "redfish", "driver_info": Value::Object(m.redfish_driver_info()), "deploy_interface": "direct"})),
    )
    .await;
    let uuid = node["uuid"].as_str().unwrap().to_owned();
    for mac in m.machine.macs() {
        api_json(
            &c,
            reqwest::Method::POST,
            &format!("{api}/v1/ports"),
            Some(json!({"address": mac.to_string(), "node_uuid": uuid})),
        )
        .await;
    }
    uuid
}

async fn provision(api: &str, node: &str, target: &str) {
    let c = http();
    let r = c
        .put(format!("{api}/v1/nodes/{node}/states/provision"))
        .header("X-OpenStack-Ironic-API-Version", "latest")
        .json(&json!({"target": target}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "provision {target}: {}", r.status());
}

#[test]
fn test_demo_20_nodes_reach_active_with_verified_disks() {
    let out = Command::new(ferric_bin())
        .args(["demo", "--nodes", "20", "--timeout-secs", "600"])
        .stderr(Stdio::inherit())
        .output()
        .expect("running ferric demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ferric demo exited {}:\n{stdout}", out.status);
    assert!(stdout.contains("20/20 active, 20/20 disks verified"), "{stdout}");
    // One summary row per node, each active and verified.
    let rows = stdout
        .lines()
        .filter(|l| l.starts_with("sim-") && l.contains(" active ") && l.contains("verified"))
        .count();
    assert_eq!(rows, 20, "{stdout}");
}

/// The same demo with `--deploy-interface iscsi`: every ramdisk exports its disk and the
/// conductor writes the image over iSCSI.
#[test]
fn test_demo_iscsi_deploy_interface_reaches_active_with_verified_disks() {
    let out = Command::new(ferric_bin())
        .args(["demo", "--nodes", "5", "--deploy-interface", "iscsi", "--timeout-secs", "600"])
        .stderr(Stdio::inherit())
        .output()
        .expect("running ferric demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ferric demo exited {}:\n{stdout}", out.status);
    assert!(stdout.contains("5/5 active, 5/5 disks verified"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_openstack_lifecycle_on_postgres_and_rabbitmq_with_simulated_machines() {
    let Some(db) = TestDatabase::postgres().await else { return };
    let amqp = bus::testing::amqp_url();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    // RabbitMQ answering? (required with FERRIC_REQUIRE_SERVICES=1)
    if bus::testing::rabbit(&format!("ferric-probe-{tag}")).await.is_none() {
        return;
    }
    let cli = openstack_cli().await;
    let config = format!(
        "[bus]\nexchange = \"ferric-demo-{tag}\"\n[conductor]\nhostname = \"demo-{tag}\"\nqueue = \"conductor.demo-{tag}\"\n\
         callback_timeout_secs = 60.0\n[conductor.redfish]\npower_poll_interval_ms = 100\nretry_interval_ms = 200\n\
         [api]\nramdisk_heartbeat_timeout = 10\n[telemetry]\nfilter = \"warn\"\n"
    );
    let up = Up::start(&config, &["--database-url", db.url(), "--bus-url", &amqp]);
    let token = CancellationToken::new();
    let fleet = fleet(&up, 1, &token).await;
    let m = &fleet.machines()[0];
    let image = sim::disk::build_whole_disk_image(6 << 20, 3 << 20, 11);
    let sha = sim::disk::sha256_hex(&image);
    m.machine.expect_image(image.len() as u64, &sha);
    let image_url = up.serve_image(&image);
    let api = up.api.clone();
    let osc = Osc { cli, api: api.clone() };
    let osc = &osc;
    let os = move |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        osc.run(&refs).await
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let name = m.machine.name().to_owned();
    let info = m.redfish_driver_info();
    let mut create = s(&[
        "baremetal",
        "node",
        "create",
        "--driver",
        "redfish",
        "--name",
        &name,
        "--deploy-interface",
        "direct",
        "-f",
        "value",
        "-c",
        "uuid",
    ]);
    for (k, v) in &info {
        let v = match v {
            Value::String(x) => x.clone(),
            other => other.to_string(),
        };
        create.extend(["--driver-info".to_owned(), format!("{k}={v}")]);
    }
    let uuid = os(create).await.trim().to_owned();
    assert_eq!(uuid.len(), 36, "{uuid}");
    os(s(&["baremetal", "port", "create", &m.machine.macs()[0].to_string(), "--node", &uuid]))
        .await;

    let mut seen = Vec::new();
    os(s(&["baremetal", "node", "manage", &name])).await;
    wait_node(
        &api,
        &uuid,
        "manageable",
        Duration::from_secs(60),
        &mut seen,
        state_is("manageable"),
    )
    .await;
    os(s(&["baremetal", "node", "provide", &name])).await;
    wait_node(&api, &uuid, "available", Duration::from_secs(120), &mut seen, state_is("available"))
        .await;

    os(s(&[
        "baremetal",
        "node",
        "set",
        &name,
        "--instance-info",
        &format!("image_source={image_url}"),
        "--instance-info",
        "image_os_hash_algo=sha256",
        "--instance-info",
        &format!("image_os_hash_value={sha}"),
        "--instance-info",
        "image_disk_format=raw",
    ]))
    .await;
    // `ferric node watch`, started before the deploy, follows it live until the node is active.
    let mut watch = Command::new(ferric_bin());
    watch
        .args(["node", "watch", &name, "--until", "active", "--timeout-secs", "180"])
        .args(["--url", &api, "--grpc-url", &up.grpc])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let watch = watch.spawn().unwrap();
    os(s(&["baremetal", "node", "deploy", &name])).await;
    let out = tokio::task::spawn_blocking(move || watch.wait_with_output().unwrap()).await.unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.lines().any(|l| l.ends_with(" wait call-back")), "{printed}");
    assert!(
        printed.lines().any(|l| l.contains(" bytes ")),
        "no write progress:\n{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.trim_end().ends_with(" active"), "{printed}");
    wait_node(&api, &uuid, "active", Duration::from_secs(180), &mut seen, state_is("active")).await;
    // The machine booted its disk and the disk holds the image.
    let st = m
        .machine
        .wait_for("OS boot", Duration::from_secs(30), |s| matches!(s.phase, Phase::Os(_)))
        .await
        .unwrap();
    assert!(matches!(&st.phase, Phase::Os(o) if o.image_verified == Some(true)), "{st:?}");
    assert_eq!(m.machine.disk_sha256(image.len() as u64).unwrap(), sha);

    // Power off / on through the API reach the simulated BMC.
    os(s(&["baremetal", "node", "power", "off", &name])).await;
    m.machine
        .wait_for("power off", Duration::from_secs(60), |s| s.power == sim::bmc::PowerStatus::Off)
        .await
        .unwrap();
    wait_node(&api, &uuid, "power off recorded", Duration::from_secs(60), &mut seen, |n| {
        n["power_state"] == "power off"
    })
    .await;
    os(s(&["baremetal", "node", "power", "on", &name])).await;
    m.machine
        .wait_for("power on", Duration::from_secs(60), |s| s.power == sim::bmc::PowerStatus::On)
        .await
        .unwrap();
    wait_node(&api, &uuid, "power on recorded", Duration::from_secs(60), &mut seen, |n| {
        n["power_state"] == "power on"
    })
    .await;

    // Undeploy: cleaning boots the ramdisk again, which erases the disk metadata; then
    // available. Cleaning is too fast here for a poll to be sure to see it, so the machine's
    // own count of ramdisk boots is the evidence.
    let ramdisk_boots = m.machine.status().ramdisk_boots;
    os(s(&["baremetal", "node", "undeploy", &name])).await;
    wait_node(&api, &uuid, "available", Duration::from_secs(180), &mut seen, state_is("available"))
        .await;
    assert!(
        m.machine.status().ramdisk_boots > ramdisk_boots,
        "undeploy did not boot the cleaning ramdisk"
    );
    assert_eq!(
        m.machine.disk_partition_table().unwrap(),
        None,
        "partition table survived cleaning"
    );

    // A manual clean with the full erase step (`erase_devices`): the real agent erases the
    // whole disk, which then reads back as zeros (the image's bytes survived the metadata
    // erase above).
    assert!(!m.machine.disk_all_zero().unwrap(), "the metadata erase left the image's data");
    os(s(&["baremetal", "node", "manage", &name])).await;
    wait_node(
        &api,
        &uuid,
        "manageable",
        Duration::from_secs(60),
        &mut seen,
        state_is("manageable"),
    )
    .await;
    let ramdisk_boots = m.machine.status().ramdisk_boots;
    let erase = r#"[{"interface": "deploy", "step": "erase_devices"}]"#;
    os(s(&["baremetal", "node", "clean", "--clean-steps", erase, &name])).await;
    wait_node(&api, &uuid, "manageable", Duration::from_secs(180), &mut seen, |n| {
        state_is("manageable")(n) && n["clean_step"].as_object().is_none_or(|o| o.is_empty())
    })
    .await;
    assert!(m.machine.status().ramdisk_boots > ramdisk_boots, "the clean booted no ramdisk");
    assert!(m.machine.disk_all_zero().unwrap(), "the full erase left data on the disk");

    fleet.shutdown().await;
    token.cancel();
}

/// The object form of a config drive through the real OpenStack CLI
/// (`baremetal node deploy --config-drive '{…}'`): the conductor builds the ISO 9660 image,
/// the real agent writes it into a `config-2` partition of the simulated machine's disk, and
/// isoinfo finds Ironic's files there with what was asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_openstack_deploy_with_configdrive_object_fills_the_config2_partition() {
    let cli = openstack_cli().await;
    let up = Up::start(EMBEDDED_CONFIG, &[]);
    let token = CancellationToken::new();
    let fleet = fleet(&up, 1, &token).await;
    let m = &fleet.machines()[0];
    let uuid = enrol(&up.api, m).await;
    let mut seen = Vec::new();
    make_available(&up.api, &uuid, &mut seen).await;
    let image = sim::disk::build_whole_disk_image(6 << 20, 3 << 20, 17);
    let url = up.serve_image(&image);
    let c = http();
    api_json(
        &c,
        reqwest::Method::PATCH,
        &format!("{}/v1/nodes/{uuid}", up.api),
        Some(json!([
            {"op": "add", "path": "/instance_info/image_source", "value": url},
            {"op": "add", "path": "/instance_info/image_os_hash_algo", "value": "sha256"},
            {"op": "add", "path": "/instance_info/image_os_hash_value", "value": sim::disk::sha256_hex(&image)},
        ])),
    )
    .await;
    let user_data = "#cloud-config\nhostname: cd-test\n";
    let drive = json!({
        "meta_data": {"hostname": "cd-test", "public_keys": {"k": "ssh-ed25519 AAAA test"}},
        "user_data": user_data,
        "network_data": {"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": m.machine.macs()[0].to_string()}], "networks": [], "services": []},
        "vendor_data": {"cloud-init": "#cloud-config\n"},
    });
    let (api, node, drive_text) = (up.api.clone(), uuid.clone(), drive.to_string());
    let c2 = cli.clone();
    let out = tokio::task::spawn_blocking(move || {
        c2.run(
            &api,
            &["baremetal", "node", "deploy", &node, "--config-drive", &drive_text],
            Duration::from_secs(120),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "openstack failed: {}", String::from_utf8_lossy(&out.stderr));
    let n = wait_node(&up.api, &uuid, "active", Duration::from_secs(180), &mut seen, |n| {
        assert!(n["provision_state"] != "deploy failed", "deploy failed: {n}");
        state_is("active")(n)
    })
    .await;
    assert_eq!(n["instance_info"]["configdrive"], "******", "the drive leaked: {n}");

    // The disk's config-2 partition holds the drive.
    let Some(sim::disk::PartitionTable::Gpt { partitions, .. }) =
        m.machine.disk_partition_table().unwrap()
    else {
        panic!("no GPT on the disk after the deploy");
    };
    let (first, last, _) =
        partitions.iter().find(|p| p.2 == "config-2").expect("a config-2 partition").clone();
    let disk = std::fs::read(&m.machine.layout().disk).unwrap();
    let part = up.data_dir.path().join("config-2.img");
    std::fs::write(&part, &disk[(first * 512) as usize..((last + 1) * 512) as usize]).unwrap();
    let isoinfo = |args: &[&str]| {
        let o = Command::new("isoinfo")
            .args(args)
            .arg("-i")
            .arg(&part)
            .output()
            .expect("isoinfo is required for this test (apt-get install genisoimage)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(isoinfo(&["-d"]).contains("Volume id: config-2"));
    for v in ["latest", "2012-08-10"] {
        let get = |f: &str| isoinfo(&["-x", &format!("/openstack/{v}/{f}")]);
        let meta: Value = serde_json::from_str(&get("meta_data.json;1")).unwrap();
        assert_eq!(meta["uuid"], uuid.as_str(), "{meta}");
        assert_eq!(meta["name"], m.machine.name(), "{meta}");
        assert_eq!(meta["hostname"], "cd-test", "{meta}");
        assert_eq!(get("user_data.;1"), user_data);
        let net: Value = serde_json::from_str(&get("network_data.json;1")).unwrap();
        assert_eq!(net, drive["network_data"]);
        let vendor: Value = serde_json::from_str(&get("vendor_data2.json;1")).unwrap();
        assert_eq!(vendor, drive["vendor_data"]);
    }

    // The string form: the CLI builds the drive from a directory itself (genisoimage, gzip,
    // base64) and the rebuild writes that image as it is.
    let tree = up.data_dir.path().join("cd-tree/openstack/latest");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("meta_data.json"), r#"{"uuid":"from-a-directory"}"#).unwrap();
    let (api, node, dir) = (up.api.clone(), uuid.clone(), up.data_dir.path().join("cd-tree"));
    let out = tokio::task::spawn_blocking(move || {
        let dir = dir.to_string_lossy().into_owned();
        cli.run(
            &api,
            &["baremetal", "node", "rebuild", &node, "--config-drive", &dir],
            Duration::from_secs(120),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "openstack failed: {}", String::from_utf8_lossy(&out.stderr));
    wait_node(&up.api, &uuid, "active again", Duration::from_secs(180), &mut seen, |n| {
        assert!(n["provision_state"] != "deploy failed", "rebuild failed: {n}");
        state_is("active")(n)
    })
    .await;
    let Some(sim::disk::PartitionTable::Gpt { partitions, .. }) =
        m.machine.disk_partition_table().unwrap()
    else {
        panic!("no GPT on the disk after the rebuild");
    };
    let (first, last, _) =
        partitions.iter().find(|p| p.2 == "config-2").expect("a config-2 partition").clone();
    let disk = std::fs::read(&m.machine.layout().disk).unwrap();
    std::fs::write(&part, &disk[(first * 512) as usize..((last + 1) * 512) as usize]).unwrap();
    // genisoimage wrote Rock Ridge names: read them with -R.
    let meta = isoinfo(&["-R", "-x", "/openstack/latest/meta_data.json"]);
    assert_eq!(meta, r#"{"uuid":"from-a-directory"}"#);
    fleet.shutdown().await;
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_agent_killed_mid_write_fails_the_deploy_with_last_error() {
    let config = "[conductor]\ncallback_timeout_secs = 10.0\ncheck_timeouts_interval_secs = 1.0\n\
                  [conductor.redfish]\npower_poll_interval_ms = 100\n[api]\nramdisk_heartbeat_timeout = 5\n\
                  [telemetry]\nfilter = \"warn\"\n";
    let up = Up::start(config, &[]);
    let token = CancellationToken::new();
    let fleet = fleet(&up, 1, &token).await;
    let m = &fleet.machines()[0];
    let uuid = enrol(&up.api, m).await;
    let mut seen = Vec::new();
    make_available(&up.api, &uuid, &mut seen).await;

    // 16 MiB of incompressible data; the ramdisk dies after 2 MiB reached the disk.
    let image = sim::disk::build_whole_disk_image(24 << 20, 16 << 20, 5);
    let url = up.serve_image(&image);
    m.machine.set_faults(Faults { agent_crash_after_bytes: Some(2 << 20), ..Faults::default() });
    let c = http();
    api_json(
        &c,
        reqwest::Method::PATCH,
        &format!("{}/v1/nodes/{uuid}", up.api),
        Some(json!([
            {"op": "add", "path": "/instance_info/image_source", "value": url},
            {"op": "add", "path": "/instance_info/image_os_hash_algo", "value": "sha256"},
            {"op": "add", "path": "/instance_info/image_os_hash_value", "value": sim::disk::sha256_hex(&image)},
        ])),
    )
    .await;
    provision(&up.api, &uuid, "active").await;
    m.machine
        .wait_for(
            "ramdisk crash",
            Duration::from_secs(60),
            |s| matches!(&s.phase, Phase::Hung(w) if w.contains("crashed")),
        )
        .await
        .unwrap();
    let n = wait_node(&up.api, &uuid, "deploy failed", Duration::from_secs(90), &mut seen, |n| {
        n["provision_state"] == "deploy failed"
    })
    .await;
    let err = n["last_error"].as_str().unwrap_or_default();
    assert!(!err.is_empty(), "deploy failed without last_error: {n}");
    eprintln!("agent crash → last_error: {err}");
    // The half-written disk must not pass for the image.
    assert_ne!(m.machine.disk_sha256(image.len() as u64).ok(), Some(sim::disk::sha256_hex(&image)));
    fleet.shutdown().await;
    token.cancel();
}

/// `ferric up` starts the API listeners through the same code as api-service: with
/// `[api] tls_cert_file`/`tls_key_file` in its config it prints and serves https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ferric_up_serves_the_api_over_tls_from_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::testing::TestCa::new("ferric up test CA");
    let server = ca.issue(&["127.0.0.1", "localhost"]);
    let (cert, key) = (dir.path().join("api.pem"), dir.path().join("api.key"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    let config = format!(
        "[api]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n[telemetry]\nfilter = \"warn\"\n",
        cert.display(),
        key.display()
    );
    let up = Up::start(&config, &[]);
    assert!(up.api.starts_with("https://"), "{}", up.api);
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap()])
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let nodes =
        api_json(&client, reqwest::Method::GET, &format!("{}/v1/nodes", up.api), None).await;
    assert!(nodes["nodes"].is_array(), "{nodes}");
    // Plain HTTP on the same port gets no API answer.
    let plain =
        http().get(format!("{}/v1/nodes", up.api.replace("https://", "http://"))).send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
}

/// Sets `instance_info` for `image` served by `up` and asks for `active`.
async fn deploy_image(up: &Up, uuid: &str, image: &[u8], name: &str) {
    let dir = up.data_dir.path().join("httpboot/images-test");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), image).unwrap();
    let url = format!("{}/images-test/{name}", up.http);
    api_json(
        &http(),
        reqwest::Method::PATCH,
        &format!("{}/v1/nodes/{uuid}", up.api),
        Some(json!([
            {"op": "add", "path": "/instance_info/image_source", "value": url},
            {"op": "add", "path": "/instance_info/image_os_hash_algo", "value": "sha256"},
            {"op": "add", "path": "/instance_info/image_os_hash_value", "value": sim::disk::sha256_hex(image)},
        ])),
    )
    .await;
    provision(&up.api, uuid, "active").await;
}

/// The real agent serves TLS with a certificate it made at boot and pins it in its
/// heartbeat; the conductor deploys over TLS trusting only that certificate, and refuses
/// an agent whose heartbeat pins another one (the deploy fails naming the mismatch).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_deploy_over_pinned_agent_tls_and_refusal_of_a_foreign_certificate() {
    let config = "[conductor]\ncallback_timeout_secs = 60.0\ncheck_timeouts_interval_secs = 1.0\n\
                  [conductor.redfish]\npower_poll_interval_ms = 100\n[api]\nramdisk_heartbeat_timeout = 5\n\
                  [telemetry]\nfilter = \"warn\"\n";
    let up = Up::start(config, &[]);
    let token = CancellationToken::new();
    let fleet = fleet(&up, 2, &token).await;
    let (good, impostor) = (&fleet.machines()[0], &fleet.machines()[1]);
    let mut uuids = Vec::new();
    for m in [good, impostor] {
        let uuid = enrol(&up.api, m).await;
        let mut seen = Vec::new();
        make_available(&up.api, &uuid, &mut seen).await;
        uuids.push(uuid);
    }
    impostor.machine.set_faults(Faults { agent_foreign_tls_cert: true, ..Faults::default() });

    let image = sim::disk::build_whole_disk_image(6 << 20, 3 << 20, 21);
    good.machine.expect_image(image.len() as u64, &sim::disk::sha256_hex(&image));
    deploy_image(&up, &uuids[0], &image, "good.img").await;
    deploy_image(&up, &uuids[1], &image, "impostor.img").await;

    let mut seen = Vec::new();
    let n =
        wait_node(&up.api, &uuids[1], "deploy failed", Duration::from_secs(120), &mut seen, |n| {
            n["provision_state"] == "deploy failed"
        })
        .await;
    let err = n["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("TLS certificate") && err.contains("agent_verify_ca"),
        "last_error does not name the certificate mismatch: {n}"
    );
    let mut seen = Vec::new();
    wait_node(
        &up.api,
        &uuids[0],
        "active",
        Duration::from_secs(120),
        &mut seen,
        state_is("active"),
    )
    .await;
    assert_eq!(
        good.machine.disk_sha256(image.len() as u64).ok(),
        Some(sim::disk::sha256_hex(&image)),
        "the image written over pinned TLS is on the disk"
    );
    // Nothing reached the impostor's disk.
    assert_ne!(
        impostor.machine.disk_sha256(image.len() as u64).ok(),
        Some(sim::disk::sha256_hex(&image))
    );
    fleet.shutdown().await;
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_bmc_refusing_credentials_fails_manage_naming_the_bmc() {
    let config = "[conductor.redfish]\nattempts = 1\n[telemetry]\nfilter = \"warn\"\n";
    let up = Up::start(config, &[]);
    let token = CancellationToken::new();
    let fleet = fleet(&up, 1, &token).await;
    let m = &fleet.machines()[0];
    m.machine.set_faults(Faults { bmc_refuse_credentials: true, ..Faults::default() });
    let uuid = enrol(&up.api, m).await;
    provision(&up.api, &uuid, "manage").await;
    let mut seen = Vec::new();
    let n = wait_node(&up.api, &uuid, "manage failure", Duration::from_secs(60), &mut seen, |n| {
        n["provision_state"] == "enroll" && n["last_error"].as_str().is_some_and(|e| !e.is_empty())
    })
    .await;
    let err = n["last_error"].as_str().unwrap();
    let bmc = m.bmc_url.trim_start_matches("http://");
    assert!(err.contains(bmc), "last_error does not name the BMC {bmc}: {err}");
    // The password never shows up.
    assert!(!n.to_string().contains("\"password\""), "{n}");
    fleet.shutdown().await;
    token.cancel();
}

/// The real OpenStack client against `ferric up`.
struct Osc {
    cli: OpenStackCli,
    api: String,
}

impl Osc {
    /// Runs `openstack …`, asserting it exits 0; returns its stdout.
    async fn run(&self, args: &[&str]) -> String {
        let (cli, api) = (self.cli.clone(), self.api.clone());
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let out = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cli.run(&api, &refs, Duration::from_secs(120))
        })
        .await
        .unwrap()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "openstack failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-f", "json"]);
        let out = self.run(&all).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

/// Every workflow through the real OpenStack client on one simulated machine running the
/// real agent: in-band inspection (properties, port and stored inventory equal the
/// machine's), adoption, rescue and unrescue (the rescue password's hash lands in the
/// ramdisk), servicing with a step of the BMC's and one of the agent's, undeploy with automated cleaning, a fast-track deploy
/// that boots the ramdisk once for cleaning and deploy, a deploy template applied because of
/// the instance's trait, and a runbook; the template's and the runbook's step is the agent's
/// own `erase_pstore`, whose effect (the machine's crash records gone) is the evidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_openstack_cli_runs_every_workflow() {
    let cli = openstack_cli().await;
    let up = Up::start(EMBEDDED_CONFIG, &[]);
    let token = CancellationToken::new();
    let fleet = fleet(&up, 1, &token).await;
    let m = &fleet.machines()[0];
    let os = Osc { cli, api: up.api.clone() };
    let api = up.api.clone();
    let name = m.machine.name().to_owned();
    let mut create = vec![
        "baremetal".to_owned(),
        "node".into(),
        "create".into(),
        "--driver".into(),
        "redfish".into(),
        "--name".into(),
        name.clone(),
        "--deploy-interface".into(),
        "direct".into(),
        "--inspect-interface".into(),
        "agent".into(),
        "--rescue-interface".into(),
        "agent".into(),
        "-f".into(),
        "value".into(),
        "-c".into(),
        "uuid".into(),
    ];
    for (k, v) in m.redfish_driver_info() {
        let v = match v {
            Value::String(x) => x,
            other => other.to_string(),
        };
        create.extend(["--driver-info".to_owned(), format!("{k}={v}")]);
    }
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    let uuid = os.run(&create).await.trim().to_owned();
    let mac = m.machine.macs()[0].to_string();
    os.run(&["baremetal", "port", "create", &mac, "--node", &uuid]).await;
    let mut seen = Vec::new();
    let wait = |state: &'static str, secs: u64| {
        let (api, uuid) = (api.clone(), uuid.clone());
        async move {
            let mut seen = Vec::new();
            wait_node(&api, &uuid, state, Duration::from_secs(secs), &mut seen, state_is(state))
                .await
        }
    };

    // Inspection: the agent's inventory becomes the node's properties and is stored.
    os.run(&["baremetal", "node", "manage", &name]).await;
    wait("manageable", 60).await;
    os.run(&["baremetal", "node", "inspect", &name]).await;
    wait_node(&api, &uuid, "inspected", Duration::from_secs(120), &mut seen, |n| {
        state_is("manageable")(n) && n["inspection_finished_at"].is_string()
    })
    .await;
    let shown = os.json(&["baremetal", "node", "show", &name]).await;
    let props = &shown["properties"];
    assert_eq!(props["cpus"], 2, "{props}");
    assert_eq!(props["memory_mb"], 4096, "{props}");
    assert_eq!(props["cpu_arch"], "x86_64", "{props}");
    assert_eq!(props["local_gb"], deploy::inspection::local_gb(8 << 30), "{props}");
    let ports = os.json(&["baremetal", "port", "list", "--node", &uuid]).await;
    assert_eq!(ports.as_array().unwrap().len(), 1, "{ports}");
    let address = ports[0].get("Address").or_else(|| ports[0].get("address"));
    assert_eq!(address.and_then(Value::as_str), Some(mac.as_str()), "{ports}");
    let inv_file = up.data_dir.path().join("inventory.json");
    let inv_path = inv_file.to_string_lossy().into_owned();
    os.run(&["baremetal", "node", "inventory", "save", &name, "--file", &inv_path]).await;
    let inv: Value = serde_json::from_slice(&std::fs::read(&inv_file).unwrap()).unwrap();
    let macs: Vec<&str> = inv["inventory"]["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["mac_address"].as_str())
        .collect();
    assert!(macs.contains(&mac.as_str()), "{inv}");
    assert_eq!(inv["inventory"]["disks"][0]["size"], 8u64 << 30, "{inv}");

    // Adoption: an instance that is already there becomes active without a deploy.
    let image = sim::disk::build_whole_disk_image(6 << 20, 3 << 20, 23);
    let sha = sim::disk::sha256_hex(&image);
    let image_url = up.serve_image(&image);
    let source = format!("image_source={image_url}");
    let hash = format!("image_os_hash_value={sha}");
    let set_image = [
        "baremetal",
        "node",
        "set",
        &name,
        "--instance-info",
        &source,
        "--instance-info",
        "image_os_hash_algo=sha256",
        "--instance-info",
        &hash,
    ];
    os.run(&set_image).await;
    let boots = m.machine.status().ramdisk_boots;
    os.run(&["baremetal", "node", "adopt", &name]).await;
    wait("active", 60).await;
    assert_eq!(m.machine.status().ramdisk_boots, boots, "adoption booted nothing");

    // Rescue: the rescue ramdisk's agent gets the password's hash; unrescue returns.
    os.run(&["baremetal", "node", "rescue", &name, "--rescue-password", "s3cret-rescue"]).await;
    let r = wait("rescue", 120).await;
    assert!(!r.to_string().contains("s3cret-rescue"), "{r}");
    let hash_file = m.machine.layout().root.join("etc/ipa-rescue-config/ipa-rescue-password");
    let hash = std::fs::read_to_string(&hash_file).unwrap();
    assert!(deploy::rescue::verify("s3cret-rescue", hash.trim()), "{hash}");
    os.run(&["baremetal", "node", "unrescue", &name]).await;
    wait("active", 120).await;

    // Servicing with a step the conductor runs through the BMC.
    let steps = r#"[{"interface": "power", "step": "reboot"}]"#;
    os.run(&["baremetal", "node", "service", &name, "--service-steps", steps]).await;
    wait("active", 120).await;
    let history = os.json(&["baremetal", "node", "history", "list", &name, "--long"]).await;
    assert!(history.to_string().contains("servic"), "{history}");
    // Servicing with a step of the agent's: the ramdisk boots, the step runs, the instance
    // boots again.
    let pstore = m.machine.layout().root.join("sys/fs/pstore");
    std::fs::create_dir_all(&pstore).unwrap();
    std::fs::write(pstore.join("dmesg-efi-0"), "oops").unwrap();
    let boots = m.machine.status().ramdisk_boots;
    let steps = r#"[{"interface": "deploy", "step": "erase_pstore"}]"#;
    os.run(&["baremetal", "node", "service", &name, "--service-steps", steps]).await;
    wait("active", 120).await;
    assert_eq!(m.machine.status().ramdisk_boots, boots + 1, "servicing booted the ramdisk");
    assert!(!pstore.join("dmesg-efi-0").exists(), "the agent's service step ran");

    // Undeploy: automated cleaning with the agent's steps; then fast-track: cleaning leaves
    // the agent up and the deploy uses it, one ramdisk boot for both.
    os.run(&["baremetal", "node", "undeploy", &name]).await;
    wait("available", 180).await;
    os.run(&["baremetal", "node", "manage", &name]).await;
    wait("manageable", 60).await;
    os.run(&["baremetal", "node", "set", &name, "--driver-info", "fast_track=true"]).await;
    let boots = m.machine.status().ramdisk_boots;
    os.run(&["baremetal", "node", "provide", &name]).await;
    wait("available", 180).await;

    // A deploy template bound to the instance's trait runs the agent's erase_pstore.
    std::fs::write(pstore.join("dmesg-efi-1"), "oops").unwrap();
    let tsteps = r#"[{"interface": "deploy", "step": "erase_pstore", "args": {}, "priority": 90}]"#;
    os.run(&["baremetal", "deploy", "template", "create", "CUSTOM_PSTORE", "--steps", tsteps])
        .await;
    os.run(&["baremetal", "node", "add", "trait", &name, "CUSTOM_PSTORE"]).await;
    os.run(&["baremetal", "node", "set", &name, "--instance-info", r#"traits=["CUSTOM_PSTORE"]"#])
        .await;
    // Undeploying cleared instance_info, as Ironic does.
    os.run(&set_image).await;
    m.machine.expect_image(image.len() as u64, &sha);
    os.run(&["baremetal", "node", "deploy", &name]).await;
    wait("active", 180).await;
    assert_eq!(m.machine.status().ramdisk_boots, boots + 1, "fast-track: one ramdisk boot");
    assert_eq!(m.machine.disk_sha256(image.len() as u64).unwrap(), sha);
    assert!(!pstore.join("dmesg-efi-1").exists(), "the template's erase_pstore ran");

    // A runbook (its name is a trait of the node) for a manual clean.
    std::fs::write(pstore.join("dmesg-efi-2"), "oops").unwrap();
    os.run(&["baremetal", "node", "undeploy", &name]).await;
    wait("available", 180).await;
    os.run(&["baremetal", "node", "manage", &name]).await;
    wait("manageable", 60).await;
    let rsteps = r#"[{"interface": "deploy", "step": "erase_pstore", "args": {}, "order": 1}]"#;
    os.run(&["baremetal", "runbook", "create", "--name", "CUSTOM_RB_PSTORE", "--steps", rsteps])
        .await;
    os.run(&["baremetal", "node", "add", "trait", &name, "CUSTOM_RB_PSTORE"]).await;
    // Before 1.112 a runbook is approved for a node by its name among the node's traits.
    os.run(&[
        "--os-baremetal-api-version",
        "1.92",
        "baremetal",
        "node",
        "clean",
        &name,
        "--runbook",
        "CUSTOM_RB_PSTORE",
    ])
    .await;
    wait_node(&api, &uuid, "cleaned", Duration::from_secs(180), &mut seen, |n| {
        state_is("manageable")(n) && n["clean_step"].as_object().is_none_or(|o| o.is_empty())
    })
    .await;
    assert!(!pstore.join("dmesg-efi-2").exists(), "the runbook's erase_pstore ran");

    fleet.shutdown().await;
    token.cancel();
}
