//! Boot configs rendered from a real (SQLite) database, fetched through the running service
//! over TFTP and HTTP, for a node in deploying, active with network boot and active with
//! local boot.

use std::sync::Arc;

use deploy::ids::{MacAddress, NodeId};
use deploy::model::JsonObject;
use deploy::{Node, Port, ProvisionState};
use pxe_service::files::BootFiles;
use pxe_service::render::Format;
use serde_json::json;
use sim::tftp::{self as client, FetchOptions};
use store::DataStore;
use store::testing::TestDatabase;

use crate::http_boot::Service;

pub const MAC: &str = "52:54:00:aa:bb:cc";

fn obj(v: serde_json::Value) -> JsonObject {
    v.as_object().expect("an object").clone()
}

pub async fn insert_node(
    store: &DataStore,
    mac: &str,
    state: ProvisionState,
    f: impl FnOnce(&mut Node),
) -> Node {
    let mut node = Node::new(NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
    node.provision_state = state;
    f(&mut node);
    let node = store.node_insert(&node).await.unwrap();
    let port = Port::new(node.uuid, mac.parse().unwrap(), chrono::Utc::now());
    store.port_insert(&port).await.unwrap();
    node
}

async fn set_state(
    store: &DataStore,
    node: &Node,
    state: ProvisionState,
    f: impl FnOnce(&mut Node),
) -> Node {
    let mut n = store.node_fetch(node.uuid).await.unwrap();
    n.provision_state = state;
    f(&mut n);
    store.node_update(&n).await.unwrap()
}

/// All three formats for MAC, fetched the way machines fetch them.
async fn fetch_all(svc: &Service) -> (String, String, String) {
    let mac: MacAddress = MAC.parse().unwrap();
    let ipxe = reqwest::get(format!("{}/pxelinux.cfg/{}", svc.http_url, mac.hyphenated()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let opts = FetchOptions::default();
    let pxelinux = client::fetch(svc.tftp, &format!("pxelinux.cfg/01-{}", mac.hyphenated()), &opts)
        .await
        .unwrap();
    let grub =
        client::fetch(svc.tftp, &format!("grub.cfg-01-{}", mac.hyphenated()), &opts).await.unwrap();
    (ipxe, String::from_utf8(pxelinux).unwrap(), String::from_utf8(grub).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_rendered_configs_follow_node_state() {
    let db = TestDatabase::sqlite().await;
    let store = db.store().clone();
    let node = insert_node(&store, MAC, ProvisionState::Deploying, |n| {
        n.driver_info = obj(json!({
            "deploy_kernel": "http://images.example/ipa.kernel",
            "deploy_ramdisk": "ipa.initramfs",
            "ipmi_password": "hunter2",
        }));
    })
    .await;
    let svc = Service::start(store.clone(), |_| {}).await;
    let api = "ferric.api_url=http://api.example:6385 ipa-api-url=http://api.example:6385";
    let bootif = "BOOTIF=01-52-54-00-aa-bb-cc console=ttyS0 ipa-global-request-id=req-";

    // deploying → the deploy ramdisk with the agent's kernel arguments.
    let (ipxe, pxelinux, grub) = fetch_all(&svc).await;
    assert!(ipxe.starts_with("#!ipxe\n"), "{ipxe}");
    assert!(
        ipxe.contains(&format!("kernel http://images.example/ipa.kernel {api} {bootif}")),
        "{ipxe}"
    );
    assert!(ipxe.contains(" nofb vga=normal initrd=deploy_ramdisk || goto retry\n"), "{ipxe}");
    assert!(ipxe.contains("initrd --name deploy_ramdisk http://127.0.0.1:"), "{ipxe}");
    assert!(ipxe.contains("/ipa.initramfs || goto retry\nboot\n"), "{ipxe}");
    assert!(!ipxe.contains("hunter2"));
    assert!(pxelinux.contains("default deploy\n"), "{pxelinux}");
    assert!(pxelinux.contains("kernel http://images.example/ipa.kernel\n"), "{pxelinux}");
    assert!(
        pxelinux.contains(&format!("append initrd=ipa.initramfs {api} {bootif}")),
        "{pxelinux}"
    );
    assert!(pxelinux.contains("ipappend 2\n"), "{pxelinux}");
    assert!(grub.contains("set default=deploy\n"), "{grub}");
    assert!(
        grub.contains(&format!("linux (http,images.example)/ipa.kernel {api} {bootif}")),
        "{grub}"
    );
    assert!(grub.contains("boot_server=127.0.0.1\n    initrd /ipa.initramfs\n"), "{grub}");

    // active with boot_option=netboot → the instance's kernel and ramdisk.
    let node = set_state(&store, &node, ProvisionState::Active, |n| {
        n.instance_info = obj(json!({
            "capabilities": {"boot_option": "netboot"},
            "kernel": "http://images.example/vmlinuz",
            "ramdisk": "http://images.example/initrd.img",
        }));
        n.driver_internal_info =
            obj(json!({"root_uuid_or_disk_id": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"}));
    })
    .await;
    let (ipxe, pxelinux, grub) = fetch_all(&svc).await;
    let root = "root=UUID=1be26c0b-03f2-4d2e-ae87-c02d7f33c123 ro text";
    assert!(
        ipxe.contains(&format!(
            "kernel http://images.example/vmlinuz {root} nofb vga=normal initrd=ramdisk"
        )),
        "{ipxe}"
    );
    assert!(ipxe.contains("initrd --name ramdisk http://images.example/initrd.img"), "{ipxe}");
    assert!(!ipxe.contains("ipa-api-url"), "{ipxe}");
    assert!(pxelinux.contains("kernel http://images.example/vmlinuz\n"), "{pxelinux}");
    assert!(
        pxelinux.contains(&format!("append initrd=http://images.example/initrd.img {root}")),
        "{pxelinux}"
    );
    assert!(grub.contains(&format!("linux (http,images.example)/vmlinuz {root}")), "{grub}");
    assert!(grub.contains("initrd (http,images.example)/initrd.img\n"), "{grub}");

    // active, local boot → boot from disk in every format.
    let node =
        set_state(&store, &node, ProvisionState::Active, |n| n.instance_info = JsonObject::new())
            .await;
    let (ipxe, pxelinux, grub) = fetch_all(&svc).await;
    assert!(ipxe.contains("sanboot --no-describe --drive 0x80 || goto exit\n"), "{ipxe}");
    assert!(ipxe.contains("exit 0\n"), "{ipxe}");
    assert!(!ipxe.contains("kernel "), "{ipxe}");
    assert!(pxelinux.contains("localboot 0\n"), "{pxelinux}");
    assert!(grub.contains("chainloader /EFI/BOOT/BOOTX64.EFI\n"), "{grub}");

    // A state in which nothing should boot from the network → exit.
    set_state(&store, &node, ProvisionState::Available, |_| {}).await;
    let (ipxe, pxelinux, grub) = fetch_all(&svc).await;
    assert!(
        ipxe.contains("exit 0\n") && !ipxe.contains("sanboot") && !ipxe.contains("kernel"),
        "{ipxe}"
    );
    assert!(pxelinux.contains("localboot -1\n"), "{pxelinux}");
    assert!(grub.contains("set default=exit\n"), "{grub}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_cleaning_rescue_and_unknown_macs() {
    let db = TestDatabase::sqlite().await;
    let store = db.store().clone();
    insert_node(&store, MAC, ProvisionState::CleanWait, |n| {
        n.driver_info = obj(json!({"kernel_append_params": "ferric.root=/tmp/x"}));
    })
    .await;
    insert_node(&store, "52:54:00:00:00:02", ProvisionState::RescueWait, |n| {
        n.driver_info = obj(json!({"rescue_kernel": "rk", "rescue_ramdisk": "rr"}));
    })
    .await;
    let cfg = Arc::new(pxe_service::PxeConfig {
        api_url: "http://api.example:6385/".into(),
        ..pxe_service::PxeConfig::default()
    });
    let files = BootFiles::tftp(cfg, store.clone());
    let clean = files.render_for_mac(MAC.parse().unwrap(), Format::Ipxe).await.unwrap().unwrap();
    // driver_info.kernel_append_params replaces the default; trailing slash of the API URL is dropped.
    assert!(clean.contains("ipa-api-url=http://api.example:6385 BOOTIF="), "{clean}");
    assert!(clean.contains(" ferric.root=/tmp/x initrd=deploy_ramdisk"), "{clean}");
    assert!(!clean.contains("nofb"), "{clean}");
    let rescue = files
        .render_for_mac("52:54:00:00:00:02".parse().unwrap(), Format::Pxelinux)
        .await
        .unwrap()
        .unwrap();
    assert!(rescue.contains("kernel rk\nappend initrd=rr "), "{rescue}");
    assert_eq!(
        files.render_for_mac("52:54:00:99:99:99".parse().unwrap(), Format::Ipxe).await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_grub_absolute_names_when_enabled() {
    let db = TestDatabase::sqlite().await;
    let store = db.store().clone();
    insert_node(&store, MAC, ProvisionState::Deploying, |_| {}).await;
    let opts = FetchOptions::default();
    // Off by default: GRUB's absolute names are refused with an access violation.
    let svc = Service::start(store.clone(), |_| {}).await;
    let e = client::fetch(svc.tftp, "/grub.cfg-01-52-54-00-aa-bb-cc", &opts).await;
    assert!(matches!(e, Err(client::TftpError::Refused { code: 2, .. })), "{e:?}");
    svc.stop().await;
    let svc = Service::start(store, |c| c.tftp_absolute_paths = true).await;
    let master = client::fetch(svc.tftp, "/grub/grub.cfg", &opts).await.unwrap();
    assert!(
        String::from_utf8(master).unwrap().contains("configfile /grub.cfg-01-$net_default_mac")
    );
    // GRUB's $net_default_mac has colons.
    let grub = client::fetch(svc.tftp, "/grub/grub.cfg-01-52:54:00:aa:bb:cc", &opts).await.unwrap();
    let grub = String::from_utf8(grub).unwrap();
    assert!(
        grub.contains("linux /deploy_kernel ferric.api_url=http://api.example:6385 "),
        "{grub}"
    );
    assert!(grub.contains("initrd /deploy_ramdisk\n"), "{grub}");
    svc.stop().await;
}

/// An iSCSI deploy: the boot config names the token file (never the key), the token file is
/// served over TFTP and HTTP while the key is unused, and is gone once the callback used it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_iscsi_token_file_served_while_the_key_is_unused() {
    let db = TestDatabase::sqlite().await;
    let store = db.store().clone();
    let creds = deploy::iscsi::ExportCredentials {
        deploy_key: "key-0123456789".into(),
        iqn: "iqn.2026-12.io.ferric:t".into(),
        chap_user: "ferric-u".into(),
        chap_secret: "chap-secret-1234".into(),
    };
    let node = insert_node(&store, MAC, ProvisionState::WaitCallBack, |n| {
        n.interfaces.deploy = Some("iscsi".into());
        deploy::iscsi::IscsiSession::begin(&mut n.driver_internal_info, &creds);
    })
    .await;
    let svc = Service::start(store.clone(), |_| {}).await;
    let (ipxe, pxelinux, _) = fetch_all(&svc).await;
    let url = format!("{}/token/{}", svc.http_url, node.uuid);
    for cfg in [&ipxe, &pxelinux] {
        assert!(cfg.contains("ferric.iscsi_token_url="), "{cfg}");
        assert!(!cfg.contains("key-0123456789") && !cfg.contains("chap-secret"), "{cfg}");
    }
    let over_http = reqwest::get(&url).await.unwrap();
    assert_eq!(over_http.status(), 200);
    let text = over_http.text().await.unwrap();
    assert_eq!(deploy::iscsi::ExportCredentials::from_token_file(&text), Some(creds.clone()));
    let opts = FetchOptions::default();
    let name = format!("token-{}", node.uuid);
    let over_tftp = client::fetch(svc.tftp, &name, &opts).await.unwrap();
    assert_eq!(String::from_utf8(over_tftp).unwrap(), text);

    // The callback used the key: the file is gone from both.
    let info = deploy::iscsi::DeployInfo {
        address: "127.0.0.1".into(),
        iqn: creds.iqn.clone(),
        ..Default::default()
    };
    let mut n = store.node_fetch(node.uuid).await.unwrap();
    deploy::iscsi::accept_callback(&mut n, &creds.deploy_key, &info).unwrap();
    store.node_update(&n).await.unwrap();
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 404);
    assert!(client::fetch(svc.tftp, &name, &opts).await.is_err());
    // So is an unknown node's.
    let other = format!("{}/token/{}", svc.http_url, NodeId::new_v4());
    assert_eq!(reqwest::get(&other).await.unwrap().status(), 404);
    svc.stop().await;
}
