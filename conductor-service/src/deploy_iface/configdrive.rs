//! The config drive the agent writes, from `instance_info.configdrive`: the string form
//! (gzipped, base64-encoded ISO 9660, or a URL to one) goes to the agent as it is; the object
//! form (`meta_data`, `user_data`, `network_data`, `vendor_data`, API 1.56/1.59) is built
//! here into that string, as Ironic's conductor does in `build_configdrive` (its
//! `get_configdrive_image` before the agent's `prepare_image`).

use chrono::{DateTime, Utc};
use deploy::Node;
use image::configdrive::{self, ConfigDriveFiles, MAX_CONFIGDRIVE};
use serde_json::Value;

/// The files of an object-form config drive, or `None` for the string form or none at all.
/// As Ironic: `meta_data` gets the node's `uuid` and (when it has one) `name` unless it
/// sets them; `user_data` given as an object or a list is stored as its JSON; empty
/// `user_data`, `network_data` and `vendor_data` are left out.
///
/// # Errors
/// A message for `last_error` when a field has a shape Ironic cannot build from, or when
/// the files cannot fit in Ironic's 64 MiB limit.
pub fn files(node: &Node) -> Result<Option<ConfigDriveFiles>, String> {
    let Some(Value::Object(cd)) = node.instance_info.get("configdrive") else {
        return Ok(None);
    };
    let mut meta = match cd.get("meta_data") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(format!("Invalid configdrive meta_data: expected an object, got {other}"));
        }
    };
    meta.entry("uuid").or_insert_with(|| Value::String(node.uuid.to_string()));
    if let Some(name) = node.name.as_deref().filter(|n| !n.is_empty()) {
        meta.entry("name").or_insert_with(|| Value::String(name.to_owned()));
    }
    let user_data = match cd.get("user_data") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => (!s.is_empty()).then(|| s.clone().into_bytes()),
        Some(v @ (Value::Object(_) | Value::Array(_))) => Some(v.to_string().into_bytes()),
        Some(other) => {
            return Err(format!(
                "Invalid configdrive user_data: expected a string, an object or a list, got {other}"
            ));
        }
    };
    // Ironic writes these only when they are truthy: an empty object or list is left out.
    let json_file = |key: &str| match cd.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) if o.is_empty() => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(v) => Some(v.to_string().into_bytes()),
    };
    let files = ConfigDriveFiles {
        meta_data: Value::Object(meta).to_string().into_bytes(),
        user_data,
        network_data: json_file("network_data"),
        vendor_data: json_file("vendor_data"),
    };
    let payload = files.meta_data.len()
        + [&files.user_data, &files.network_data, &files.vendor_data]
            .iter()
            .map(|f| f.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
    // The drive holds every file twice (two metadata versions).
    if 2 * payload as u64 > MAX_CONFIGDRIVE {
        return Err(format!(
            "The config drive is too large: its files take {} bytes twice, more than the \
             {MAX_CONFIGDRIVE} bytes a config drive may hold",
            payload
        ));
    }
    Ok(Some(files))
}

/// The `configdrive` value for the agent's image request: the string form unchanged, the
/// object form built (stamped `now`) and encoded, or empty for none.
///
/// # Errors
/// As [`files`], or when the image cannot be built.
pub fn agent_value(node: &Node, now: DateTime<Utc>) -> Result<String, String> {
    match node.instance_info.get("configdrive") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Object(_)) => {
            let Some(f) = files(node)? else { return Ok(String::new()) };
            let iso = configdrive::build(&f, now.timestamp()).map_err(|e| {
                format!("Failed to build the config drive: {}", common::ErrorChain(&e))
            })?;
            Ok(configdrive::encode(&iso))
        }
        Some(other) => {
            Err(format!("Invalid configdrive: expected a string or an object, got {other}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy::NodeId;
    use serde_json::json;

    fn node(cd: Value) -> Node {
        let mut n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        n.name = Some("node-1".into());
        n.instance_info.insert("configdrive".into(), cd);
        n
    }

    #[test]
    fn test_object_form_defaults_uuid_and_name_and_serialises_user_data() {
        let n = node(json!({
            "meta_data": {"hostname": "h1", "name": "given"},
            "user_data": {"ignition": {"version": "3.4.0"}},
            "network_data": {},
            "vendor_data": {"cloud-init": "#cloud-config"},
        }));
        let f = files(&n).unwrap().unwrap();
        let meta: Value = serde_json::from_slice(&f.meta_data).unwrap();
        assert_eq!(meta, json!({"hostname": "h1", "name": "given", "uuid": n.uuid.to_string()}));
        let user: Value = serde_json::from_slice(f.user_data.as_deref().unwrap()).unwrap();
        assert_eq!(user, json!({"ignition": {"version": "3.4.0"}}));
        assert_eq!(f.network_data, None, "an empty network_data is left out as Ironic does");
        assert_eq!(f.vendor_data.as_deref(), Some(&br##"{"cloud-init":"#cloud-config"}"##[..]));

        let bare = node(json!({"user_data": "#!/bin/sh\n"}));
        let f = files(&bare).unwrap().unwrap();
        let meta: Value = serde_json::from_slice(&f.meta_data).unwrap();
        assert_eq!(meta, json!({"uuid": bare.uuid.to_string(), "name": "node-1"}));
        assert_eq!(f.user_data.as_deref(), Some(&b"#!/bin/sh\n"[..]));
    }

    #[test]
    fn test_agent_value_builds_the_object_form_and_passes_strings_through() {
        let now = Utc::now();
        assert_eq!(agent_value(&node(json!("H4sIAAAA")), now).unwrap(), "H4sIAAAA");
        assert_eq!(agent_value(&node(Value::Null), now).unwrap(), "");
        let built = agent_value(&node(json!({"meta_data": {"k": "v"}})), now).unwrap();
        let iso = configdrive::decode(built.as_bytes()).unwrap();
        assert_eq!(&iso[0x8028..0x8030], b"config-2");
        let meta = br#"{"k":"v","name":"node-1","uuid":"#;
        assert!(iso.windows(meta.len()).any(|w| w == meta), "meta_data.json not in the image");
    }

    #[test]
    fn test_bad_shapes_and_oversized_drives_are_refused() {
        let e = files(&node(json!({"meta_data": "x"}))).unwrap_err();
        assert!(e.contains("meta_data"), "{e}");
        let e = files(&node(json!({"user_data": 5}))).unwrap_err();
        assert!(e.contains("user_data"), "{e}");
        let big = "x".repeat((MAX_CONFIGDRIVE / 2) as usize);
        let e = agent_value(&node(json!({"user_data": big})), Utc::now()).unwrap_err();
        assert!(e.contains("too large"), "{e}");
        assert!(agent_value(&node(json!(5)), Utc::now()).is_err());
    }
}
