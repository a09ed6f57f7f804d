//! `driver_info` secrets encrypted at rest: sealed on every write, opened on every read,
//! re-encrypted by `node_secrets_rotate`.

use std::num::NonZeroU32;

use deploy::PublicError;
use serde_json::{Value, json};
use store::testing::TestDatabase;
use store::{DataStore, SecretKeys};

use super::{insert, node, obj};

const K1: [u8; 32] = [0x11; 32];
const K2: [u8; 32] = [0x22; 32];

fn store_with(
    db: &TestDatabase,
    active: &str,
    keys: &[(&'static str, &'static [u8; 32])],
) -> DataStore {
    let keys = SecretKeys::new(Some(active), keys.iter().copied()).expect("valid key set");
    db.store().with_keys_for_test(keys)
}

fn bmc_info(password: &str) -> deploy::model::JsonObject {
    obj(json!({
        "redfish_address": "http://127.0.0.1:8000",
        "redfish_username": "admin",
        "redfish_password": password,
        "nested": {"snmp_auth_key": "auth-key-value"},
    }))
}

fn raw_text(raw: &deploy::model::JsonObject) -> String {
    Value::Object(raw.clone()).to_string()
}

pub async fn test_secrets_are_encrypted_at_rest_and_read_back(db: &TestDatabase) {
    let store = store_with(db, "k1", &[("k1", &K1)]);
    let mut n = node(Some("enc"));
    n.driver_info = bmc_info("hunter2-password");
    let stored = insert(&store, &n).await;
    assert_eq!(stored.driver_info, n.driver_info, "insert returns plaintext");

    let raw = store.node_driver_info_raw(n.uuid).await.unwrap();
    let text = raw_text(&raw);
    assert!(!text.contains("hunter2-password") && !text.contains("auth-key-value"), "{text}");
    assert!(text.contains("$ferric-enc$v1$k1$"), "{text}");
    assert_eq!(raw["redfish_username"], "admin", "non-secret fields stay readable");

    // Every read path gives plaintext back.
    assert_eq!(store.node_fetch(n.uuid).await.unwrap().driver_info, n.driver_info);
    assert_eq!(store.node_fetch_by_ident("enc").await.unwrap().driver_info, n.driver_info);
    let listed = store.node_list(&Default::default()).await.unwrap();
    assert_eq!(listed[0].driver_info, n.driver_info);
    let reserved = store.node_reserve(n.uuid, "c1").await.unwrap();
    assert_eq!(reserved.driver_info, n.driver_info);

    // A patch keeps the encryption, old and new secrets alike.
    let (patched, ()) = store
        .node_modify(n.uuid, |m| {
            m.driver_info.insert("redfish_password".into(), json!("new-password-2"));
            m.driver_info.insert("ipmi_password".into(), json!("ipmi-secret-3"));
            Ok::<_, PublicError>(())
        })
        .await
        .unwrap()
        .into_result(n.uuid)
        .unwrap();
    assert_eq!(patched.driver_info["redfish_password"], "new-password-2");
    let text = raw_text(&store.node_driver_info_raw(n.uuid).await.unwrap());
    for secret in ["new-password-2", "ipmi-secret-3", "auth-key-value", "hunter2"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert_eq!(store.node_fetch(n.uuid).await.unwrap().driver_info, patched.driver_info);
}

pub async fn test_rotation_moves_every_value_to_the_active_key(db: &TestDatabase) {
    let old = store_with(db, "k1", &[("k1", &K1)]);
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut n = node(Some(&format!("rot-{i}")));
        n.driver_info = bmc_info(&format!("pw-{i}"));
        ids.push(insert(&old, &n).await.uuid);
    }
    let both = store_with(db, "k2", &[("k1", &K1), ("k2", &K2)]);
    let done = both.node_secrets_rotate(NonZeroU32::new(3).unwrap()).await.unwrap();
    assert_eq!((done.scanned, done.rewritten), (7, 7));
    let again = both.node_secrets_rotate(NonZeroU32::new(3).unwrap()).await.unwrap();
    assert_eq!((again.scanned, again.rewritten), (7, 0), "idempotent");

    // No value under k1 is left: a store with k2 alone reads every node.
    let only_k2 = store_with(db, "k2", &[("k2", &K2)]);
    for (i, id) in ids.iter().enumerate() {
        let text = raw_text(&only_k2.node_driver_info_raw(*id).await.unwrap());
        assert!(!text.contains("$k1$") && text.contains("$ferric-enc$v1$k2$"), "{text}");
        let n = only_k2.node_fetch(*id).await.unwrap();
        assert_eq!(n.driver_info, bmc_info(&format!("pw-{i}")));
    }
}

pub async fn test_rotation_encrypts_plaintext_secrets(db: &TestDatabase) {
    // Written before any key was configured.
    let plain = db.store();
    let mut n = node(Some("plain"));
    n.driver_info = bmc_info("was-plaintext");
    insert(plain, &n).await;
    assert!(raw_text(&plain.node_driver_info_raw(n.uuid).await.unwrap()).contains("was-plaintext"));
    // A keyed store still reads plaintext values.
    let keyed = store_with(db, "k1", &[("k1", &K1)]);
    assert_eq!(keyed.node_fetch(n.uuid).await.unwrap().driver_info, n.driver_info);

    let done = keyed.node_secrets_rotate(NonZeroU32::new(100).unwrap()).await.unwrap();
    assert_eq!((done.scanned, done.rewritten), (1, 1));
    let text = raw_text(&keyed.node_driver_info_raw(n.uuid).await.unwrap());
    assert!(!text.contains("was-plaintext"), "{text}");
    assert_eq!(keyed.node_fetch(n.uuid).await.unwrap().driver_info, n.driver_info);
    // Rotation without an active key refuses.
    let e = plain.node_secrets_rotate(NonZeroU32::new(1).unwrap()).await.unwrap_err();
    assert!(matches!(e, PublicError::Internal { .. }), "{e:?}");
}

pub async fn test_unknown_key_and_tampering_give_a_clear_error(db: &TestDatabase) {
    let k1 = store_with(db, "k1", &[("k1", &K1)]);
    let mut n = node(Some("tamper"));
    n.driver_info = bmc_info("tamper-secret");
    insert(&k1, &n).await;

    // Read by a store that does not have k1 (nor any key).
    for other in [store_with(db, "k2", &[("k2", &K2)]), db.store().clone()] {
        let e = other.node_fetch(n.uuid).await.unwrap_err();
        let PublicError::Internal { internal } = &e else { panic!("{e:?}") };
        assert!(
            internal.contains(&n.uuid.to_string()) && internal.contains("\"k1\""),
            "{internal}"
        );
        assert!(internal.contains("not configured"), "{internal}");
        assert!(!internal.contains("tamper-secret"), "{internal}");
    }

    // One changed byte in the stored ciphertext.
    let mut raw = k1.node_driver_info_raw(n.uuid).await.unwrap();
    let sealed = raw["redfish_password"].as_str().unwrap().to_owned();
    let mut chars: Vec<char> = sealed.chars().collect();
    let i = chars.len() - 4;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    raw.insert("redfish_password".into(), Value::String(chars.into_iter().collect()));
    k1.node_driver_info_set_raw(n.uuid, &raw).await.unwrap();
    let e = k1.node_fetch(n.uuid).await.unwrap_err();
    let PublicError::Internal { internal } = &e else { panic!("{e:?}") };
    assert!(internal.contains(&n.uuid.to_string()) && internal.contains("\"k1\""), "{internal}");
    assert!(internal.contains("does not decrypt"), "{internal}");
    // Rotation stops on it with the same error instead of overwriting it.
    let e = k1.node_secrets_rotate(NonZeroU32::new(10).unwrap()).await;
    assert!(e.is_ok(), "the node is sealed under the active key, so rotation leaves it: {e:?}");
    let rotating = store_with(db, "k2", &[("k1", &K1), ("k2", &K2)]);
    let e = rotating.node_secrets_rotate(NonZeroU32::new(10).unwrap()).await.unwrap_err();
    assert!(e.to_string().contains("k1") || format!("{e:?}").contains("k1"), "{e:?}");
}
