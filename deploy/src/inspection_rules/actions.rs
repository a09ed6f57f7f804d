//! The actions of inspection rules (Ironic's `inspection_rules/actions.py`): node
//! attributes, traits, capabilities, plugin data and port attributes.

use serde_json::{Map, Value};

use super::{
    Context, Outcome, Subject, action_signature, loop_items, op_of, processed_args, python_str,
};
use crate::inspection::{set_capability, unset_capability};

pub(super) enum ActionError {
    Fail(String),
    Invalid(String),
}

impl From<String> for ActionError {
    fn from(s: String) -> Self {
        ActionError::Invalid(s)
    }
}

pub(super) fn run_action(
    a: &Value,
    subject: &mut Subject<'_>,
    out: &mut Outcome,
) -> Result<(), ActionError> {
    let op = op_of(a)?;
    let s = action_signature(op).ok_or_else(|| {
        format!(
            "Unsupported action: '{op}'. Supported actions are: fail, log, set-attribute, \
             extend-attribute, del-attribute, set-capability, unset-capability, add-trait, \
             remove-trait, set-plugin-data, extend-plugin-data, unset-plugin-data, \
             set-port-attribute, extend-port-attribute, del-port-attribute."
        )
    })?;
    match loop_items(a) {
        Some(items) => {
            for item in &items {
                let args = processed_args(
                    op,
                    &s,
                    a.get("args"),
                    &Context::new(subject, Some(item)),
                    true,
                )?;
                execute(op, &args, subject, out)?;
            }
            Ok(())
        }
        None => {
            let args = processed_args(op, &s, a.get("args"), &Context::new(subject, None), false)?;
            execute(op, &args, subject, out)
        }
    }
}

/// Ironic's `normalize_path`: `a/b/c` or `a.b.c`.
fn path_parts(path: &str) -> Vec<String> {
    if path.contains('/') {
        path.trim_matches('/').split('/').map(str::to_owned).collect()
    } else {
        path.split('.').map(str::to_owned).collect()
    }
}

/// Node fields a rule may not touch: identity, the state machine and the lock.
const PROTECTED_NODE_FIELDS: [&str; 9] = [
    "uuid",
    "provision_state",
    "target_provision_state",
    "reservation",
    "generation",
    "created_at",
    "updated_at",
    "attributes",
    "driver_internal_info",
];

/// How an attribute changes.
enum Edit {
    Set(Value),
    Extend { value: Value, unique: bool },
    Delete,
}

/// Apply `edit` at `path` inside the JSON form of a record.
fn edit_json(record: &mut Map<String, Value>, path: &str, edit: Edit) -> Result<(), String> {
    let parts = path_parts(path);
    let Some((last, parents)) = parts.split_last() else {
        return Err(format!("empty path '{path}'"));
    };
    let mut cur = record;
    for (depth, p) in parents.iter().enumerate() {
        let slot = if depth == 0 || !matches!(edit, Edit::Delete) {
            if depth == 0 && !cur.contains_key(p) {
                return Err(format!("no attribute '{p}'"));
            }
            let slot = cur.entry(p.clone()).or_insert_with(|| Value::Object(Map::new()));
            if slot.is_null() {
                *slot = Value::Object(Map::new());
            }
            slot
        } else {
            cur.get_mut(p).ok_or_else(|| format!("'{p}' not found"))?
        };
        cur = slot.as_object_mut().ok_or_else(|| format!("'{p}' is not a dictionary"))?;
    }
    match edit {
        Edit::Set(v) => {
            if parents.is_empty() && !cur.contains_key(last) {
                return Err(format!("no attribute '{last}'"));
            }
            cur.insert(last.clone(), v);
        }
        Edit::Extend { value, unique } => {
            let slot = cur.entry(last.clone()).or_insert_with(|| Value::Array(Vec::new()));
            if slot.is_null() {
                *slot = Value::Array(Vec::new());
            }
            let list = slot.as_array_mut().ok_or_else(|| {
                format!("Cannot extend non-list attribute {path} with value {value}")
            })?;
            if !unique || !list.contains(&value) {
                list.push(value);
            }
        }
        Edit::Delete => {
            if parents.is_empty() {
                // A top-level field goes back to its empty value.
                let slot = cur.get_mut(last).ok_or_else(|| format!("no attribute '{last}'"))?;
                *slot = match slot {
                    Value::Object(_) => Value::Object(Map::new()),
                    Value::Array(_) => Value::Array(Vec::new()),
                    Value::Bool(_) => Value::Bool(false),
                    _ => Value::Null,
                };
            } else if cur.remove(last).is_none() {
                return Err(format!("'{last}' not found"));
            }
        }
    }
    Ok(())
}

/// Edit a serializable record through its JSON form.
fn edit_record<T>(record: &mut T, path: &str, edit: Edit, protected: &[&str]) -> Result<(), String>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let parts = path_parts(path);
    if let Some(first) = parts.first()
        && protected.contains(&first.as_str())
    {
        return Err(format!("'{first}' cannot be changed by an inspection rule"));
    }
    let Value::Object(mut json) = serde_json::to_value(&*record).map_err(|e| e.to_string())? else {
        return Err("record is not an object".into());
    };
    edit_json(&mut json, path, edit)?;
    *record = serde_json::from_value(Value::Object(json)).map_err(|e| e.to_string())?;
    Ok(())
}

fn arg<'a>(args: &'a Map<String, Value>, k: &str) -> &'a Value {
    args.get(k).unwrap_or(&Value::Null)
}

fn text_arg(args: &Map<String, Value>, k: &str) -> Result<String, String> {
    match args.get(k) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) if !v.is_null() => Ok(python_str(v)),
        _ => Err(format!("'{k}' is required")),
    }
}

fn flag(args: &Map<String, Value>, k: &str) -> bool {
    match args.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.to_lowercase().as_str(), "true" | "yes" | "1"),
        _ => false,
    }
}

fn execute(
    op: &str,
    args: &Map<String, Value>,
    subject: &mut Subject<'_>,
    out: &mut Outcome,
) -> Result<(), ActionError> {
    let node = &mut *subject.node;
    let failed = |what: String| move |e: String| ActionError::Invalid(format!("{what}: {e}"));
    match op {
        "fail" => return Err(ActionError::Fail(python_str(arg(args, "msg")))),
        "log" => {
            let level = args.get("level").and_then(Value::as_str).unwrap_or("info").to_lowercase();
            if !["debug", "info", "warning", "error", "critical"].contains(&level.as_str()) {
                return Err(ActionError::Invalid(format!("Invalid log level: {level}")));
            }
            out.logs.push((level, python_str(arg(args, "msg"))));
        }
        "set-attribute" | "extend-attribute" | "del-attribute" => {
            let path = text_arg(args, "path")?;
            let edit = match op {
                "set-attribute" => Edit::Set(arg(args, "value").clone()),
                "extend-attribute" => {
                    Edit::Extend { value: arg(args, "value").clone(), unique: flag(args, "unique") }
                }
                _ => Edit::Delete,
            };
            edit_record(node, &path, edit, &PROTECTED_NODE_FIELDS)
                .map_err(failed(format!("Failed to {op} {path}")))?;
        }
        "add-trait" => {
            let name = text_arg(args, "name")?;
            if !node.traits.contains(&name) {
                node.traits.push(name);
            }
        }
        "remove-trait" => {
            let name = text_arg(args, "name")?;
            node.traits.retain(|t| *t != name);
        }
        "set-capability" => {
            let (name, value) = (text_arg(args, "name")?, python_str(arg(args, "value")));
            let caps = set_capability(node.properties.get("capabilities"), &name, &value);
            node.properties.insert("capabilities".into(), caps.into());
        }
        "unset-capability" => {
            let name = text_arg(args, "name")?;
            let caps = unset_capability(node.properties.get("capabilities"), &name);
            node.properties.insert("capabilities".into(), caps.into());
        }
        "set-plugin-data" | "extend-plugin-data" | "unset-plugin-data" => {
            let path = text_arg(args, "path")?;
            if !subject.plugin_data.is_object() {
                *subject.plugin_data = Value::Object(Map::new());
            }
            let Some(data) = subject.plugin_data.as_object_mut() else {
                return Err(ActionError::Invalid("plugin data is not an object".into()));
            };
            // Plugin data paths are dotted and may create any key.
            let dotted = path.replace('/', ".");
            let mut wrapper = Map::new();
            wrapper.insert("plugin_data".into(), Value::Object(std::mem::take(data)));
            let edit = match op {
                "set-plugin-data" => Edit::Set(arg(args, "value").clone()),
                "extend-plugin-data" => {
                    Edit::Extend { value: arg(args, "value").clone(), unique: flag(args, "unique") }
                }
                _ => Edit::Delete,
            };
            let res = edit_json(&mut wrapper, &format!("plugin_data.{dotted}"), edit);
            if let Some(Value::Object(m)) = wrapper.remove("plugin_data") {
                *data = m;
            }
            // Ironic only warns when the path to unset is not there.
            if op != "unset-plugin-data" {
                res.map_err(failed(format!("Failed to {op} at {path}")))?;
            }
        }
        "set-port-attribute" | "extend-port-attribute" | "del-port-attribute" => {
            let id = text_arg(args, "port_id")?;
            let path = text_arg(args, "path")?;
            let index = subject
                .ports
                .iter()
                .position(|p| {
                    p.uuid.to_string() == id || p.address.to_string() == id.to_lowercase()
                })
                .ok_or_else(|| format!("Port {id} could not be found."))?;
            let edit = match op {
                "set-port-attribute" => Edit::Set(arg(args, "value").clone()),
                "extend-port-attribute" => {
                    Edit::Extend { value: arg(args, "value").clone(), unique: flag(args, "unique") }
                }
                _ => Edit::Delete,
            };
            let protected = ["uuid", "address", "node_uuid", "created_at", "updated_at"];
            edit_record(&mut subject.ports[index], &path, edit, &protected)
                .map_err(failed(format!("Failed to {op} {path} for port {id}")))?;
            out.changed_ports.insert(index);
        }
        "api-call" => {
            return Err(ActionError::Invalid(
                "the 'api-call' action is not supported by this conductor".into(),
            ));
        }
        other => return Err(ActionError::Invalid(format!("Unsupported action '{other}'."))),
    }
    Ok(())
}
