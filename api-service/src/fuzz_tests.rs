//! Property-based fuzzing of what clients send (proptest; bounded case counts so each runs
//! in seconds in CI): JSON Patch documents against nodes and ports, node list query strings,
//! request bodies through the depth check and the create body. Nothing may panic; every
//! rejection is a 4xx error.

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::patch::{PatchOp, patch_node, patch_port};
use crate::service::{NodeCreate, NodeListParams};
use crate::version::Version;

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON Pointer paths: real field names, nested keys, escapes and junk.
fn path() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        Just("driver_info".to_owned()),
        Just("instance_info".to_owned()),
        Just("properties".to_owned()),
        Just("extra".to_owned()),
        Just("name".to_owned()),
        Just("owner".to_owned()),
        Just("provision_state".to_owned()),
        Just("uuid".to_owned()),
        Just("deploy_interface".to_owned()),
        Just("traits".to_owned()),
        Just("address".to_owned()),
        Just("node_uuid".to_owned()),
        Just("~0~1".to_owned()),
        Just("-".to_owned()),
        Just("0".to_owned()),
        ".{0,8}",
    ];
    proptest::collection::vec(seg, 0..4).prop_map(|v| format!("/{}", v.join("/")))
}

fn op() -> impl Strategy<Value = PatchOp> {
    (
        prop_oneof![
            Just("add"),
            Just("replace"),
            Just("remove"),
            Just("move"),
            Just("test"),
            Just("")
        ],
        path(),
        proptest::option::of(json_value()),
    )
        .prop_map(|(op, path, value)| PatchOp { op: op.to_owned(), path, value })
}

fn is_client_error(e: &ApiError) -> bool {
    e.status().is_client_error()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn test_fuzz_node_patch_never_panics(ops in proptest::collection::vec(op(), 0..5)) {
        let node = deploy::Node::new(deploy::NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
        if let Err(e) = patch_node(&node, &ops) {
            prop_assert!(is_client_error(&e), "{e:?}");
        }
        // The policy's reading of the same patch never panics either.
        let _ = crate::policy::node_patch_policies(ops.iter().map(|o| (o.path.as_str(), o.value.as_ref())));
    }

    #[test]
    fn test_fuzz_port_patch_never_panics(ops in proptest::collection::vec(op(), 0..5)) {
        let port = deploy::Port::new(
            deploy::NodeId::new_v4(),
            "52:54:00:12:34:56".parse().unwrap(),
            chrono::Utc::now(),
        );
        if let Err(e) = patch_port(&port, &ops) {
            prop_assert!(is_client_error(&e), "{e:?}");
        }
    }

    #[test]
    fn test_fuzz_node_list_query_strings(query in "[a-z_=&%0-9A-F.,:-]{0,64}") {
        let uri: axum::http::Uri = match format!("/v1/nodes?{query}").parse() {
            Ok(u) => u,
            Err(_) => return Ok(()),
        };
        if let Ok(axum::extract::Query(p)) = axum::extract::Query::<NodeListParams>::try_from_uri(&uri) {
            let p: NodeListParams = p;
            for v in [Version::MAX, Version { minor: 1 }, Version { minor: 50 }] {
                if let Err(e) = p.to_query(v) {
                    prop_assert!(is_client_error(&e), "{e:?}");
                }
                let _ = p.wants_detail(v);
            }
        }
    }

    #[test]
    fn test_fuzz_bodies_depth_check_agrees_with_serde(body in json_value(), junk in proptest::collection::vec(any::<u8>(), 0..64)) {
        let text = body.to_string();
        // serde_json's own recursion limit is 128; ours (25) must refuse first and never
        // refuse a shallow document.
        let depth = depth_of(&body);
        prop_assert_eq!(crate::limits::json_too_deep(text.as_bytes(), crate::limits::MAX_JSON_DEPTH), depth > crate::limits::MAX_JSON_DEPTH);
        let _ = crate::limits::json_too_deep(&junk, 3);
        // A create body of any shape is accepted or refused by serde, never a panic.
        let _ = serde_json::from_value::<NodeCreate>(body);
        let _ = serde_json::from_slice::<NodeCreate>(&junk);
    }

    #[test]
    fn test_fuzz_node_idents_as_names(ident in ".{0,80}") {
        // Names are checked with Ironic's rules before anything is stored.
        let _ = crate::patch::is_valid_name(&ident);
        let _ = ident.parse::<uuid::Uuid>();
    }
}

fn depth_of(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

// Corpus replays: the seed inputs of `fuzz/corpus/<target>/` and seeded mutations of them
// (see `common::testing::corpus`), through the same entry points as the requests above.

/// Mutations per corpus entry: enough to reach the parsers' odd corners, few enough to run
/// in a second or two.
const MUTATIONS: usize = 400;

fn json_of(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}

#[test]
fn test_fuzz_corpus_json_patch() {
    use common::testing::corpus::replay;
    let node = deploy::Node::new(deploy::NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
    let port = deploy::Port::new(
        deploy::NodeId::new_v4(),
        "52:54:00:12:34:56".parse().unwrap(),
        chrono::Utc::now(),
    );
    replay("json_patch", MUTATIONS, 1, |bytes| {
        let _ = crate::limits::json_too_deep(bytes, crate::limits::MAX_JSON_DEPTH);
        let Ok(ops) = serde_json::from_slice::<Vec<PatchOp>>(bytes) else { return };
        if let Err(e) = patch_node(&node, &ops) {
            assert!(is_client_error(&e), "{e:?}");
        }
        if let Err(e) = patch_port(&port, &ops) {
            assert!(is_client_error(&e), "{e:?}");
        }
        let _ = crate::policy::node_patch_policies(
            ops.iter().map(|o| (o.path.as_str(), o.value.as_ref())),
        );
    });
}

#[test]
fn test_fuzz_corpus_request_bodies() {
    common::testing::corpus::replay("request_body", MUTATIONS, 2, |bytes| {
        let deep = crate::limits::json_too_deep(bytes, crate::limits::MAX_JSON_DEPTH);
        if let Some(v) = json_of(bytes) {
            assert_eq!(deep, depth_of(&v) > crate::limits::MAX_JSON_DEPTH);
        }
        let _ = serde_json::from_slice::<NodeCreate>(bytes);
        let _ = serde_json::from_slice::<crate::service::PortCreate>(bytes);
        let _ = serde_json::from_slice::<crate::service::ProvisionRequest>(bytes);
    });
}

#[test]
fn test_fuzz_corpus_node_query() {
    common::testing::corpus::replay("node_query", MUTATIONS, 3, |bytes| {
        let Ok(query) = std::str::from_utf8(bytes) else { return };
        let Ok(uri) = format!("/v1/nodes?{}", query.trim()).parse::<axum::http::Uri>() else {
            return;
        };
        if let Ok(axum::extract::Query(p)) =
            axum::extract::Query::<NodeListParams>::try_from_uri(&uri)
        {
            let p: NodeListParams = p;
            for v in [Version::MAX, Version { minor: 1 }, Version { minor: 50 }] {
                if let Err(e) = p.to_query(v) {
                    assert!(is_client_error(&e), "{e:?}");
                }
            }
        }
        for ident in query.split('&') {
            let _ = crate::patch::is_valid_name(ident);
        }
    });
}

/// What an agent posts to `/v1/continue_inspection`: Ironic's data check, then everything
/// inspection reads from the inventory (facts, interfaces, the PXE MAC, the root disk, the
/// properties it fills in).
#[test]
fn test_fuzz_corpus_inventory() {
    common::testing::corpus::replay("inventory", MUTATIONS, 4, |bytes| {
        let Some(data) = json_of(bytes) else { return };
        let inventory = data.get("inventory").cloned().unwrap_or_else(|| data.clone());
        if let Err(e) = crate::rest::inspection::validate(data) {
            assert!(is_client_error(&e), "{e:?}");
        }
        let _ = deploy::inspection::facts(&inventory);
        let _ = deploy::inspection::interfaces(&inventory);
        let _ = deploy::inspection::pxe_mac(&inventory);
        let _ = deploy::inspection::root_disk_bytes(&inventory);
        let mut props = deploy::model::JsonObject::new();
        let _ = deploy::inspection::apply_discovered(&mut props, &inventory);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Inventories of any shape: refused with a 4xx or read without a panic.
    #[test]
    fn test_fuzz_inventory_shapes(inv in json_value(), macs in proptest::collection::vec("[0-9a-fA-F:]{0,20}", 0..4)) {
        let ifaces: Vec<Value> = macs.iter().map(|m| json!({"mac_address": m, "name": "eth0"})).collect();
        for data in [json!({"inventory": inv.clone()}), json!({"inventory": {"interfaces": ifaces, "disks": inv.clone(), "memory": inv.clone(), "cpu": inv.clone()}})] {
            let inventory = data["inventory"].clone();
            if let Err(e) = crate::rest::inspection::validate(data) {
                prop_assert!(is_client_error(&e), "{e:?}");
            }
            let _ = deploy::inspection::facts(&inventory);
            let _ = deploy::inspection::interfaces(&inventory);
            let _ = deploy::inspection::root_disk_bytes(&inventory);
            let mut props = deploy::model::JsonObject::new();
            let _ = deploy::inspection::apply_discovered(&mut props, &inventory);
        }
    }

    /// Config drives of any shape, under every version and verb: accepted, or refused with a
    /// 4xx.
    #[test]
    fn test_fuzz_configdrive_values(cd in json_value(), minor in 1u32..=115, rebuild in any::<bool>()) {
        let verb = if rebuild { deploy::ApiVerb::Rebuild } else { deploy::ApiVerb::Active };
        if let Err(e) = crate::service::check_configdrive(&cd, verb, Version { minor }) {
            prop_assert!(is_client_error(&e), "{e:?}");
        }
    }
}

/// The `configdrive` of provision requests as clients send it (strings, objects, junk), through
/// the API's check under old and new versions.
#[test]
fn test_fuzz_corpus_configdrive_api() {
    common::testing::corpus::replay("configdrive", MUTATIONS, 5, |bytes| {
        let Some(v) = json_of(bytes) else { return };
        let cd = v.get("configdrive").cloned().unwrap_or(v);
        for minor in [1, 35, 56, 59, 115] {
            for verb in
                [deploy::ApiVerb::Active, deploy::ApiVerb::Rebuild, deploy::ApiVerb::Deleted]
            {
                if let Err(e) = crate::service::check_configdrive(&cd, verb, Version { minor }) {
                    assert!(is_client_error(&e), "{e:?}");
                }
            }
        }
    });
}
