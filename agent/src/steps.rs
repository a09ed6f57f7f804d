//! The steps this agent offers to the conductor, as ironic-python-agent's generic hardware
//! manager offers its clean, deploy and service steps: `deploy.erase_devices` (every byte),
//! `deploy.erase_devices_metadata` (partition tables and signatures) and
//! `deploy.erase_pstore` (the kernel's persistent crash records). The conductor asks for
//! them with `GetSteps`, merges them with its own by priority, and runs one with
//! `ExecuteStep`.

use std::path::Path;

use proto::agent::{AgentStep, EraseMode};
use serde_json::{Value, json};

/// The kinds of operation a step list is asked for.
pub const KINDS: [&str; 3] = ["clean", "deploy", "service"];

/// A parsed request to run one offered step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepCall {
    /// Erase the given disks (every disk when empty).
    Erase { mode: EraseMode, devices: Vec<String> },
    /// Remove the records under `/sys/fs/pstore`.
    ErasePstore,
}

fn devices_arg() -> Value {
    json!({"devices": {
        "description": "Names of the disks to erase (e.g. [\"/dev/sda\"]); every disk when absent",
        "required": false,
    }})
}

fn step(name: &str, priority: u32, argsinfo: &Value) -> AgentStep {
    AgentStep {
        interface: "deploy".into(),
        step: name.into(),
        priority,
        reboot_requested: false,
        abortable: true,
        argsinfo_json: argsinfo.to_string(),
    }
}

/// The steps offered for `kind` with their default priorities: cleaning erases metadata
/// (99) and the full erase at IPA's priority 10 (the conductor's configuration usually turns
/// it off for automated cleaning); deploy and service steps run only when asked for.
///
/// # Errors
/// A kind other than those of [`KINDS`].
pub fn offered(kind: &str) -> Result<Vec<AgentStep>, String> {
    let (full, meta) = match kind {
        "clean" => (10, 99),
        "deploy" | "service" => (0, 0),
        other => return Err(format!("unknown step kind {other:?}: expected one of {KINDS:?}")),
    };
    Ok(vec![
        step("erase_devices", full, &devices_arg()),
        step("erase_devices_metadata", meta, &devices_arg()),
        step("erase_pstore", 0, &json!({})),
    ])
}

/// Check a request against what [`offered`] says and turn it into a call.
///
/// # Errors
/// An unknown kind, interface or step, arguments that are not a JSON object, an argument
/// the step does not take, or `devices` that is not a list of strings.
pub fn parse(kind: &str, interface: &str, name: &str, args_json: &str) -> Result<StepCall, String> {
    let steps = offered(kind)?;
    let Some(s) = steps.iter().find(|s| s.interface == interface && s.step == name) else {
        return Err(format!("this agent offers no {kind} step {interface}.{name}"));
    };
    let args: serde_json::Map<String, Value> = if args_json.trim().is_empty() {
        serde_json::Map::new()
    } else {
        serde_json::from_str(args_json)
            .map_err(|e| format!("arguments must be a JSON object: {e}"))?
    };
    let info: serde_json::Map<String, Value> =
        serde_json::from_str(&s.argsinfo_json).unwrap_or_default();
    if let Some(k) = args.keys().find(|k| !info.contains_key(*k)) {
        return Err(format!("step {interface}.{name} takes no argument {k:?}"));
    }
    let devices = match args.get("devices") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|d| d.as_str().map(str::to_owned).ok_or("devices must be a list of disk names"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("devices must be a list of disk names".into()),
    };
    Ok(match name {
        "erase_devices" => StepCall::Erase { mode: EraseMode::Full, devices },
        "erase_devices_metadata" => StepCall::Erase { mode: EraseMode::Metadata, devices },
        _ => StepCall::ErasePstore,
    })
}

/// Remove every record the kernel keeps under `<root>/sys/fs/pstore` (IPA's `erase_pstore`).
///
/// # Errors
/// A record that cannot be removed.
pub fn erase_pstore(root: &Path) -> Result<Value, String> {
    let dir = root.join("sys/fs/pstore");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        // No pstore file system mounted: nothing to erase.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(json!({"removed": []}));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let path = entry.path();
        std::fs::remove_file(&path)
            .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        removed.push(entry.file_name().to_string_lossy().into_owned());
    }
    removed.sort();
    Ok(json!({ "removed": removed }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_offered_steps_and_their_priorities() {
        let clean = offered("clean").unwrap();
        let p = |n: &str| clean.iter().find(|s| s.step == n).unwrap().priority;
        assert_eq!(
            (p("erase_devices"), p("erase_devices_metadata"), p("erase_pstore")),
            (10, 99, 0)
        );
        assert!(offered("deploy").unwrap().iter().all(|s| s.priority == 0));
        assert!(offered("bogus").is_err());
    }

    #[test]
    fn test_parse_checks_names_and_arguments() {
        assert_eq!(
            parse("clean", "deploy", "erase_devices", r#"{"devices": ["/dev/vdb"]}"#).unwrap(),
            StepCall::Erase { mode: EraseMode::Full, devices: vec!["/dev/vdb".into()] }
        );
        assert_eq!(
            parse("service", "deploy", "erase_devices_metadata", "").unwrap(),
            StepCall::Erase { mode: EraseMode::Metadata, devices: vec![] }
        );
        assert_eq!(parse("clean", "deploy", "erase_pstore", "{}").unwrap(), StepCall::ErasePstore);
        assert!(parse("clean", "raid", "erase_devices", "").unwrap_err().contains("offers no"));
        assert!(
            parse("clean", "deploy", "erase_pstore", r#"{"x": 1}"#).unwrap_err().contains("\"x\"")
        );
        assert!(parse("clean", "deploy", "erase_devices", r#"{"devices": "sda"}"#).is_err());
        assert!(parse("clean", "deploy", "erase_devices", "[1]").is_err());
    }

    #[test]
    fn test_erase_pstore_removes_records() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(erase_pstore(root.path()).unwrap(), json!({"removed": []}));
        let dir = root.path().join("sys/fs/pstore");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dmesg-efi-1"), "oops").unwrap();
        std::fs::write(dir.join("console-ramoops-0"), "log").unwrap();
        let out = erase_pstore(root.path()).unwrap();
        assert_eq!(out, json!({"removed": ["console-ramoops-0", "dmesg-efi-1"]}));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }
}
