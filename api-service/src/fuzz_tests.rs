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
