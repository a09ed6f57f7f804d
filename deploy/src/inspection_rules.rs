//! Inspection rules (Ironic's `ironic/common/inspection_rules`, API 1.96): conditions on
//! the inspected inventory and the node, and actions on the node, its ports and the
//! inspection's plugin data, applied after an inspection in priority order.
//!
//! A rule is `{"priority", "phase", "sensitive", "conditions": [...], "actions": [...]}`.
//! A condition is `{"op": "[!]<operator>", "args": {...}, "loop": [...], "multiple":
//! "any|all|first|last"}`; an action is `{"op": "<action>", "args": {...}, "loop": [...]}`.
//! Arguments are interpolated with Python's `str.format` field syntax, as Ironic does:
//! `{inventory[cpu][count]}`, `{node.properties[cpus]}`, `{plugin_data[x]}`, `{item}` in a
//! loop; a field that cannot be resolved leaves the text as it is. One deliberate
//! difference: an argument that is exactly one field (`"{inventory[cpu][count]}"`) keeps the
//! field's JSON type instead of becoming text, so numbers compare as numbers and
//! `set-attribute` stores `8`, not `"8"`; text around a field makes it text, as in Ironic.
//!
//! Every operator and action of Ironic is here except `api-call`, which would make the
//! domain core do network I/O: a rule that uses it fails with a clear message. The engine
//! is pure; the conductor loads the rules and writes back what changed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{Map, Value};
use thiserror::Error;

use crate::inspection::{set_capability, unset_capability};
use crate::model::{Node, Port};

/// The phase rules run in after an inspection.
pub const PHASE_MAIN: &str = "main";

/// Why rules could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    /// A rule is malformed or an argument is unusable (Ironic's rule validation and
    /// execution failures).
    #[error("Failed to apply rule {rule}: {message}")]
    Invalid {
        /// The rule's UUID.
        rule: String,
        /// What is wrong.
        message: String,
    },
    /// A `fail` action ran (Ironic's `HardwareInspectionFailure`).
    #[error("{message}")]
    Failed {
        /// The rule's UUID.
        rule: String,
        /// The action's message.
        message: String,
    },
}

/// One rule, as stored by the API.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// UUID (for messages and logs).
    pub uuid: String,
    /// Higher runs first.
    pub priority: i64,
    /// `main` (after inspection) or another phase.
    pub phase: String,
    /// A sensitive rule's data is not logged.
    pub sensitive: bool,
    /// Every condition must hold.
    pub conditions: Vec<Value>,
    /// Run in order when the conditions hold.
    pub actions: Vec<Value>,
}

impl Rule {
    /// A rule from the body the API stores (`priority`, `phase`, `sensitive`, `conditions`,
    /// `actions`; defaults as Ironic's).
    pub fn from_body(uuid: impl Into<String>, body: &Map<String, Value>) -> Self {
        let list = |k: &str| body.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
        Self {
            uuid: uuid.into(),
            priority: body.get("priority").and_then(Value::as_i64).unwrap_or(0),
            phase: body.get("phase").and_then(Value::as_str).unwrap_or(PHASE_MAIN).to_owned(),
            sensitive: body.get("sensitive").and_then(Value::as_bool).unwrap_or(false),
            conditions: list("conditions"),
            actions: list("actions"),
        }
    }
}

/// What the rules act on.
pub struct Subject<'a> {
    /// The node (its fields, traits and capabilities may change).
    pub node: &'a mut Node,
    /// Its ports (`set-port-attribute` and friends).
    pub ports: &'a mut [Port],
    /// The inspected inventory (read only).
    pub inventory: &'a Value,
    /// The inspection's plugin data (`set-plugin-data` and friends).
    pub plugin_data: &'a mut Value,
}

/// What applying the rules did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// UUIDs of the rules whose conditions held, in the order they ran.
    pub applied: Vec<String>,
    /// Messages of `log` actions: (level, text).
    pub logs: Vec<(String, String)>,
    /// Indices into [`Subject::ports`] of the ports an action changed.
    pub changed_ports: BTreeSet<usize>,
}

/// Apply the rules of `phase` to `subject`, highest priority first (ties keep their
/// order).
///
/// # Errors
/// [`RuleError::Failed`] when a `fail` action runs; [`RuleError::Invalid`] for a malformed
/// rule or an unusable argument. Changes made before the error stay in `subject`.
pub fn apply(rules: &[Rule], phase: &str, subject: &mut Subject<'_>) -> Result<Outcome, RuleError> {
    let mut ordered: Vec<&Rule> = rules.iter().filter(|r| r.phase == phase).collect();
    ordered.sort_by_key(|r| std::cmp::Reverse(r.priority));
    let mut out = Outcome::default();
    for rule in ordered {
        let err = |message: String| RuleError::Invalid { rule: rule.uuid.clone(), message };
        let mut holds = true;
        for c in &rule.conditions {
            if !check_condition(c, subject).map_err(err)? {
                holds = false;
                break;
            }
        }
        if !holds {
            continue;
        }
        out.applied.push(rule.uuid.clone());
        for a in &rule.actions {
            run_action(a, subject, &mut out).map_err(|e| match e {
                ActionError::Fail(message) => {
                    RuleError::Failed { rule: rule.uuid.clone(), message }
                }
                ActionError::Invalid(m) => err(m),
            })?;
        }
    }
    Ok(out)
}

// ---- arguments and interpolation ---------------------------------------------------------

/// Parameter names of each operator and action: (required, optional, formatted).
struct Signature {
    required: &'static [&'static str],
    optional: &'static [&'static str],
    formatted: &'static [&'static str],
}

const fn sig(
    required: &'static [&'static str],
    optional: &'static [&'static str],
    formatted: &'static [&'static str],
) -> Signature {
    Signature { required, optional, formatted }
}

fn operator_signature(op: &str) -> Option<Signature> {
    Some(match op {
        "eq" | "lt" | "gt" | "le" | "ge" | "ne" => {
            sig(&["values"], &["force_strings"], &["values"])
        }
        "is-empty" | "is-none" | "is-true" | "is-false" => sig(&["value"], &[], &["value"]),
        "in-net" => sig(&["address", "subnet"], &[], &["address", "subnet"]),
        "matches" | "contains" => sig(&["value", "regex"], &[], &["value"]),
        "one-of" => sig(&["value"], &["values"], &["value"]),
        _ => return None,
    })
}

fn action_signature(op: &str) -> Option<Signature> {
    Some(match op {
        "fail" => sig(&["msg"], &[], &[]),
        "log" => sig(&["msg"], &["level"], &["msg"]),
        "set-attribute" | "set-plugin-data" => sig(&["path", "value"], &[], &["value"]),
        "extend-attribute" | "extend-plugin-data" => {
            sig(&["path", "value"], &["unique"], &["value"])
        }
        "del-attribute" | "unset-plugin-data" => sig(&["path"], &[], &[]),
        "add-trait" | "remove-trait" | "unset-capability" => sig(&["name"], &[], &[]),
        "set-capability" => sig(&["name", "value"], &[], &["value"]),
        "set-port-attribute" => sig(&["port_id", "path", "value"], &[], &["value"]),
        "extend-port-attribute" => sig(&["port_id", "path", "value"], &["unique"], &["value"]),
        "del-port-attribute" => sig(&["port_id", "path"], &[], &[]),
        "api-call" => {
            sig(&["url"], &["headers", "proxies", "timeout", "retries", "backoff_factor"], &["url"])
        }
        _ => return None,
    })
}

/// `args` as named arguments (a list is Ironic's deprecated positional form), checked
/// against the signature.
fn named_args(op: &str, s: &Signature, args: Option<&Value>) -> Result<Map<String, Value>, String> {
    let map = match args {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(Value::Array(list)) => {
            let names = s.required.iter().chain(s.optional);
            if list.len() < s.required.len() {
                return Err(format!(
                    "'{op}': not enough arguments provided. Missing: {}",
                    s.required[list.len()..].join(", ")
                ));
            }
            names.zip(list).map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
        }
        Some(_) => return Err(format!("'{op}': args must be either a list or dictionary")),
    };
    let missing: Vec<&str> = s.required.iter().copied().filter(|k| !map.contains_key(*k)).collect();
    let unexpected: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !s.required.contains(k) && !s.optional.contains(k))
        .collect();
    let mut msg = Vec::new();
    if !missing.is_empty() {
        msg.push(format!("missing required argument(s): {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        msg.push(format!("unexpected argument(s): {}", unexpected.join(", ")));
    }
    if msg.is_empty() { Ok(map) } else { Err(format!("'{op}': {}", msg.join("; "))) }
}

/// The names interpolation resolves: `node`, `inventory`, `plugin_data`, `item`.
struct Context {
    root: Map<String, Value>,
}

impl Context {
    fn new(subject: &Subject<'_>, item: Option<&Value>) -> Self {
        let mut root = Map::new();
        root.insert("node".into(), serde_json::to_value(&*subject.node).unwrap_or(Value::Null));
        root.insert("inventory".into(), subject.inventory.clone());
        root.insert("plugin_data".into(), subject.plugin_data.clone());
        if let Some(i) = item {
            root.insert("item".into(), i.clone());
        }
        Self { root }
    }

    /// Resolve one `str.format` field (`inventory[cpu][count]`, `node.properties[cpus]`).
    fn field(&self, field: &str) -> Option<Value> {
        // A conversion (`!r`) or format spec (`:>4`) is not supported: treat as missing.
        if field.contains(['!', ':']) {
            return None;
        }
        let name_end = field.find(['.', '[']).unwrap_or(field.len());
        let mut cur = self.root.get(&field[..name_end])?;
        let mut rest = &field[name_end..];
        while !rest.is_empty() {
            let (key, next) = if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                (&r[..end], &r[end..])
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']')?;
                (&r[..end], &r[end + 1..])
            } else {
                return None;
            };
            cur = match cur {
                Value::Object(m) => m.get(key)?,
                Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
                _ => return None,
            };
            rest = next;
        }
        Some(cur.clone())
    }

    /// Interpolate one string; `None` when a field is missing (Ironic then keeps the text).
    fn format(&self, s: &str) -> Option<Value> {
        // One field and nothing else: keep its type (see the module comment).
        if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}'))
            && !inner.contains(['{', '}'])
            && !inner.is_empty()
        {
            return self.field(inner);
        }
        let mut out = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if s[i + 1..].starts_with('{') => {
                    out.push('{');
                    chars.next();
                }
                '}' if s[i + 1..].starts_with('}') => {
                    out.push('}');
                    chars.next();
                }
                '{' => {
                    let end = s[i..].find('}')? + i;
                    out.push_str(&python_str(&self.field(&s[i + 1..end])?));
                    while chars.peek().is_some_and(|(j, _)| *j <= end) {
                        chars.next();
                    }
                }
                c => out.push(c),
            }
        }
        Some(Value::String(out))
    }

    /// Ironic's `interpolate_variables`: strings are formatted, objects and lists
    /// recursively; a string whose field is missing stays as it is (`None` for `is-empty`).
    fn interpolate(&self, v: &Value, op: &str) -> Value {
        match v {
            Value::String(s) => match self.format(s) {
                Some(x) => x,
                None if op == "is-empty" => Value::Null,
                None => v.clone(),
            },
            Value::Array(a) => Value::Array(a.iter().map(|x| self.interpolate(x, op)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| {
                        let key = match self.format(k) {
                            Some(Value::String(s)) => s,
                            Some(other) => python_str(&other),
                            None => k.clone(),
                        };
                        (key, self.interpolate(x, op))
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Python's `str()` of a JSON value.
fn python_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The arguments of `op`, interpolated where Ironic formats them (every argument in a loop).
fn processed_args(
    op: &str,
    s: &Signature,
    raw: Option<&Value>,
    ctx: &Context,
    in_loop: bool,
) -> Result<Map<String, Value>, String> {
    let args = named_args(op, s, raw)?;
    Ok(args
        .into_iter()
        .map(|(k, v)| {
            let v = if in_loop || s.formatted.contains(&k.as_str()) {
                ctx.interpolate(&v, op)
            } else {
                v
            };
            (k, v)
        })
        .collect())
}

/// A loop's items: a list runs once per item, an object once with the object.
fn loop_items(v: &Value) -> Option<Vec<Value>> {
    match v.get("loop") {
        Some(Value::Array(a)) if !a.is_empty() => Some(a.clone()),
        Some(o @ Value::Object(m)) if !m.is_empty() => Some(vec![o.clone()]),
        _ => None,
    }
}

fn op_of(v: &Value) -> Result<&str, String> {
    v.get("op").and_then(Value::as_str).ok_or_else(|| "Operation must contain 'op' key".into())
}

// ---- conditions -------------------------------------------------------------------------

/// Ironic's `parse_inverted_operator`: `!eq` is `eq` inverted; one `!` at most.
fn parse_op(op: &str) -> Result<(&str, bool), String> {
    let op = op.trim();
    if op.matches('!').count() > 1 {
        return Err("Multiple exclamation marks are not allowed".into());
    }
    match op.strip_prefix('!') {
        Some(rest) => Ok((rest.trim(), true)),
        None => Ok((op, false)),
    }
}

fn check_condition(c: &Value, subject: &Subject<'_>) -> Result<bool, String> {
    let (op, inverted) = parse_op(op_of(c)?)?;
    let s = operator_signature(op).ok_or_else(|| {
        format!(
            "Unsupported operator: '{op}'. Supported operators are: eq, lt, gt, le, ge, ne, \
             is-empty, in-net, matches, contains, one-of, is-none, is-true, is-false."
        )
    })?;
    let one = |item: Option<&Value>| -> Result<bool, String> {
        let ctx = Context::new(subject, item);
        let mut args = processed_args(op, &s, c.get("args"), &ctx, item.is_some())?;
        if item.is_some() && s.optional.contains(&"force_strings") {
            args.insert("force_strings".into(), Value::Bool(true));
        }
        let r = operator(op, &args)?;
        Ok(r != inverted)
    };
    let Some(items) = loop_items(c) else { return one(None) };
    let multiple = c.get("multiple").and_then(Value::as_str).unwrap_or("any");
    let mut results = Vec::new();
    for item in &items {
        let r = one(Some(item))?;
        match multiple {
            "first" if r => return Ok(true),
            "last" => results = vec![r],
            _ => results.push(r),
        }
    }
    Ok(match multiple {
        "any" => results.iter().any(|r| *r),
        "all" => results.iter().all(|r| *r),
        _ => results.first().copied().unwrap_or(false),
    })
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Order two values as Python would where it can: numbers (also numeric text against a
/// number) numerically, text as text, lists by element.
fn compare(a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
        (Value::Null, Value::Null) => Ok(Ordering::Equal),
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y).ok_or_else(|| "NaN".to_owned()),
            _ => Err(format!("cannot compare {a} with {b}")),
        },
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    a == b || matches!((number(a), number(b)), (Some(x), Some(y)) if x == y)
}

fn str_arg<'a>(args: &'a Map<String, Value>, k: &str) -> Result<&'a str, String> {
    args.get(k).and_then(Value::as_str).ok_or_else(|| format!("'{k}' must be a string"))
}

fn regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(pattern).map_err(|e| format!("invalid regular expression: {e}"))
}

fn operator(op: &str, args: &Map<String, Value>) -> Result<bool, String> {
    let value = args.get("value").unwrap_or(&Value::Null);
    match op {
        "eq" | "lt" | "gt" | "le" | "ge" | "ne" => {
            let Some(values) = args.get("values").and_then(Value::as_array) else {
                return Err(format!(
                    "Failed to check condition: '{op}': expected a list for 'values'"
                ));
            };
            let force = args.get("force_strings").and_then(Value::as_bool).unwrap_or(false);
            let values: Vec<Value> = if force {
                values.iter().map(|v| Value::String(python_str(v))).collect()
            } else {
                values.clone()
            };
            for pair in values.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                let holds = match op {
                    "eq" => equal(a, b),
                    "ne" => !equal(a, b),
                    "lt" => compare(a, b)?.is_lt(),
                    "gt" => compare(a, b)?.is_gt(),
                    "le" => compare(a, b)?.is_le(),
                    _ => compare(a, b)?.is_ge(),
                };
                if !holds {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        "is-empty" => Ok(match value {
            Value::Null => true,
            Value::String(s) => s.is_empty() || s == "None" || s == "[]" || s == "{}",
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        }),
        "is-none" => Ok(value.is_null()),
        "is-true" => Ok(match value {
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
            Value::String(s) => matches!(s.to_lowercase().as_str(), "yes" | "true"),
            _ => false,
        }),
        "is-false" => Ok(match value {
            Value::Bool(b) => !*b,
            Value::Number(n) => n.as_f64().is_some_and(|f| f == 0.0),
            Value::String(s) => matches!(s.to_lowercase().as_str(), "no" | "false"),
            Value::Null => true,
            _ => false,
        }),
        "one-of" => {
            let values = args.get("values").and_then(Value::as_array).cloned().unwrap_or_default();
            Ok(values.iter().any(|v| equal(v, value)))
        }
        "matches" => {
            let mut pattern = str_arg(args, "regex")?.to_owned();
            if !pattern.ends_with('$') {
                pattern.push('$');
            }
            // Python's re.match anchors at the start.
            Ok(regex(&format!("^(?:{pattern})"))?.is_match(&python_str(value)))
        }
        "contains" => Ok(regex(str_arg(args, "regex")?)?.is_match(&python_str(value))),
        "in-net" => {
            let address = python_str(args.get("address").unwrap_or(&Value::Null));
            in_net(&address, str_arg(args, "subnet")?)
        }
        other => Err(format!("Unsupported operator '{other}'.")),
    }
}

fn in_net(address: &str, subnet: &str) -> Result<bool, String> {
    let bad = |what: &str| format!("invalid value: {what}");
    let (net, prefix) = subnet.split_once('/').unwrap_or((subnet, ""));
    let net: IpAddr = net.trim().parse().map_err(|_| bad(subnet))?;
    let addr: IpAddr = address.trim().parse().map_err(|_| bad(address))?;
    let bits = match (net, addr) {
        (IpAddr::V4(_), IpAddr::V4(_)) => 32,
        (IpAddr::V6(_), IpAddr::V6(_)) => 128,
        _ => return Ok(false),
    };
    let prefix: u32 =
        if prefix.is_empty() { bits } else { prefix.parse().map_err(|_| bad(subnet))? };
    if prefix > bits {
        return Err(bad(subnet));
    }
    let as_u128 = |ip: IpAddr| match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    };
    let shift = bits - prefix;
    let mask = if shift >= 128 { 0 } else { u128::MAX << shift };
    Ok(as_u128(net) & mask == as_u128(addr) & mask)
}

// ---- actions ----------------------------------------------------------------------------

enum ActionError {
    Fail(String),
    Invalid(String),
}

impl From<String> for ActionError {
    fn from(s: String) -> Self {
        ActionError::Invalid(s)
    }
}

fn run_action(a: &Value, subject: &mut Subject<'_>, out: &mut Outcome) -> Result<(), ActionError> {
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

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::NodeId;

    fn rule(priority: i64, conditions: Value, actions: Value) -> Rule {
        let body = json!({"priority": priority, "conditions": conditions, "actions": actions});
        Rule::from_body(format!("rule-{priority}"), body.as_object().unwrap())
    }

    fn inventory() -> Value {
        json!({
            "cpu": {"count": 8, "architecture": "x86_64"},
            "memory": {"physical_mb": 16384},
            "interfaces": [
                {"name": "eth0", "mac_address": "52:54:00:aa:bb:01", "ipv4_address": "10.0.0.5"},
                {"name": "eth1", "mac_address": "52:54:00:aa:bb:02", "ipv4_address": null}
            ],
            "system_vendor": {"manufacturer": "Dell Inc.", "product_name": "PowerEdge R640"},
            "bmc_address": "192.168.1.10"
        })
    }

    struct Fixture {
        node: Node,
        ports: Vec<Port>,
        plugin_data: Value,
    }

    impl Fixture {
        fn new() -> Self {
            let mut node = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
            node.properties.insert("cpus".into(), 8.into());
            let ports =
                vec![Port::new(node.uuid, "52:54:00:aa:bb:01".parse().unwrap(), Utc::now())];
            Self { node, ports, plugin_data: json!({}) }
        }

        fn run(&mut self, rules: &[Rule]) -> Result<Outcome, RuleError> {
            let inv = inventory();
            let mut s = Subject {
                node: &mut self.node,
                ports: &mut self.ports,
                inventory: &inv,
                plugin_data: &mut self.plugin_data,
            };
            apply(rules, PHASE_MAIN, &mut s)
        }
    }

    fn holds(condition: Value) -> bool {
        let mut f = Fixture::new();
        let r = rule(0, json!([condition]), json!([{"op": "add-trait", "args": {"name": "X"}}]));
        let out = f.run(&[r]).unwrap_or_else(|e| panic!("{e}"));
        !out.applied.is_empty()
    }

    #[test]
    fn test_operators() {
        let c = |op: &str, args: Value| json!({"op": op, "args": args});
        assert!(holds(c("eq", json!({"values": ["{inventory[cpu][count]}", 8]}))));
        assert!(holds(c(
            "eq",
            json!({"values": ["{node.properties[cpus]}", "{inventory[cpu][count]}"]})
        )));
        assert!(holds(c("!eq", json!({"values": ["{inventory[cpu][architecture]}", "aarch64"]}))));
        assert!(holds(c("ne", json!({"values": [1, 2]}))));
        assert!(holds(c("lt", json!({"values": [1, 2, 3]}))));
        assert!(!holds(c("lt", json!({"values": [1, 3, 2]}))));
        assert!(holds(c("ge", json!({"values": ["{inventory[memory][physical_mb]}", 8192]}))));
        assert!(holds(c("le", json!({"values": ["a", "b"]}))));
        assert!(holds(c("gt", json!({"values": [16, "{inventory[cpu][count]}"]}))));
        assert!(holds(c("is-true", json!({"value": "yes"}))));
        assert!(holds(c("is-false", json!({"value": false}))));
        assert!(holds(c("is-none", json!({"value": null}))));
        assert!(holds(c("is-empty", json!({"value": "{inventory[missing]}"}))), "missing = empty");
        assert!(holds(c("is-empty", json!({"value": []}))));
        assert!(!holds(c("is-empty", json!({"value": "{inventory[cpu]}"}))));
        assert!(holds(c(
            "matches",
            json!({"value": "{inventory[system_vendor][manufacturer]}", "regex": "Dell.*"})
        )));
        assert!(!holds(c("matches", json!({"value": "xDell", "regex": "Dell"}))), "anchored");
        assert!(holds(c(
            "contains",
            json!({"value": "{inventory[system_vendor][product_name]}", "regex": "R6[0-9]0"})
        )));
        assert!(holds(c(
            "one-of",
            json!({"value": "{inventory[cpu][architecture]}", "values": ["aarch64", "x86_64"]})
        )));
        assert!(holds(c(
            "in-net",
            json!({"address": "{inventory[bmc_address]}", "subnet": "192.168.0.0/16"})
        )));
        assert!(!holds(c("in-net", json!({"address": "10.1.1.1", "subnet": "192.168.0.0/16"}))));
        // The deprecated list form of args.
        assert!(holds(c("eq", json!([[1, 1]]))));
        // Text around a field makes text.
        assert!(holds(c("eq", json!({"values": ["cpus={inventory[cpu][count]}", "cpus=8"]}))));
    }

    #[test]
    fn test_loops_and_multiple() {
        let looped = |multiple: &str, regex: &str| {
            json!({"op": "matches", "args": {"value": "{item[name]}", "regex": regex},
                   "loop": inventory()["interfaces"], "multiple": multiple})
        };
        assert!(holds(looped("any", "eth1")));
        assert!(!holds(looped("all", "eth1")));
        assert!(holds(looped("all", "eth[01]")));
        assert!(holds(looped("first", "eth1")));
        assert!(holds(looped("last", "eth1")));
        assert!(!holds(looped("last", "eth0")));
    }

    #[test]
    fn test_actions_change_node_ports_and_plugin_data() {
        let mut f = Fixture::new();
        let port = f.ports[0].uuid.to_string();
        let r = rule(
            10,
            json!([]),
            json!([
                {"op": "set-attribute", "args": {"path": "properties/memory_mb", "value": "{inventory[memory][physical_mb]}"}},
                {"op": "set-attribute", "args": {"path": "extra.vendor", "value": "{inventory[system_vendor][manufacturer]}"}},
                {"op": "set-attribute", "args": {"path": "resource_class", "value": "large"}},
                {"op": "extend-attribute", "args": {"path": "extra/tags", "value": "a", "unique": true}},
                {"op": "extend-attribute", "args": {"path": "extra/tags", "value": "a", "unique": true}},
                {"op": "add-trait", "args": {"name": "CUSTOM_GPU"}},
                {"op": "add-trait", "args": {"name": "CUSTOM_OLD"}},
                {"op": "remove-trait", "args": {"name": "CUSTOM_OLD"}},
                {"op": "set-capability", "args": {"name": "boot_mode", "value": "uefi"}},
                {"op": "set-capability", "args": {"name": "gpu", "value": "yes"}},
                {"op": "unset-capability", "args": {"name": "gpu"}},
                {"op": "set-plugin-data", "args": {"path": "a.b", "value": "{inventory[cpu][count]}"}},
                {"op": "extend-plugin-data", "args": {"path": "list", "value": 1}},
                {"op": "set-port-attribute", "args": {"port_id": port, "path": "physical_network", "value": "physnet1"}},
                {"op": "set-port-attribute", "args": {"port_id": port, "path": "extra/switch", "value": "sw1"}},
                {"op": "log", "args": {"msg": "node has {inventory[cpu][count]} CPUs", "level": "warning"}},
                {"op": "del-attribute", "args": {"path": "properties/cpus"}}
            ]),
        );
        let out = f.run(&[r]).unwrap();
        let n = &f.node;
        assert_eq!(n.properties["memory_mb"], 16384, "a lone field keeps its type");
        assert!(!n.properties.contains_key("cpus"));
        assert_eq!(n.extra["vendor"], "Dell Inc.");
        assert_eq!(n.extra["tags"], json!(["a"]));
        assert_eq!(n.resource_class.as_deref(), Some("large"));
        assert_eq!(n.traits, ["CUSTOM_GPU"]);
        assert_eq!(n.properties["capabilities"], "boot_mode:uefi");
        assert_eq!(f.plugin_data, json!({"a": {"b": 8}, "list": [1]}));
        assert_eq!(f.ports[0].physical_network.as_deref(), Some("physnet1"));
        assert_eq!(f.ports[0].extra["switch"], "sw1");
        assert_eq!(out.changed_ports.into_iter().collect::<Vec<_>>(), [0]);
        assert_eq!(out.logs, [("warning".to_owned(), "node has 8 CPUs".to_owned())]);
    }

    #[test]
    fn test_priority_order_phase_and_failures() {
        let mut f = Fixture::new();
        let set =
            |v: &str| json!([{"op": "set-attribute", "args": {"path": "extra/who", "value": v}}]);
        let mut other_phase = rule(100, json!([]), set("other"));
        other_phase.phase = "preprocess".into();
        let rules = [rule(1, json!([]), set("low")), rule(5, json!([]), set("high")), other_phase];
        let out = f.run(&rules).unwrap();
        // Higher priority first, so the low one writes last.
        assert_eq!(out.applied, ["rule-5", "rule-1"]);
        assert_eq!(f.node.extra["who"], "low");
        let fail = rule(
            3,
            json!([{"op": "lt", "args": {"values": ["{inventory[memory][physical_mb]}", 32768]}}]),
            json!([{"op": "fail", "args": {"msg": "not enough memory"}}]),
        );
        let e = f.run(&[fail]).unwrap_err();
        assert_eq!(
            e,
            RuleError::Failed { rule: "rule-3".into(), message: "not enough memory".into() }
        );
        for (conditions, actions, want) in [
            (json!([{"op": "bogus", "args": {}}]), json!([]), "Unsupported operator"),
            (json!([]), json!([{"op": "bogus"}]), "Unsupported action"),
            (json!([{"op": "eq", "args": {}}]), json!([]), "missing required argument(s): values"),
            (json!([{"op": "!!eq", "args": {"values": []}}]), json!([]), "exclamation"),
            (
                json!([]),
                json!([{"op": "set-attribute", "args": {"path": "provision_state", "value": "active"}}]),
                "cannot be changed",
            ),
            (
                json!([]),
                json!([{"op": "set-port-attribute", "args": {"port_id": "nope", "path": "extra/x", "value": 1}}]),
                "could not be found",
            ),
            (
                json!([{"op": "matches", "args": {"value": "x", "regex": "("}}]),
                json!([]),
                "invalid regular expression",
            ),
            (json!([]), json!([{"op": "api-call", "args": {"url": "http://x"}}]), "not supported"),
        ] {
            let e = f.run(&[rule(0, conditions, actions)]).unwrap_err();
            assert!(matches!(e, RuleError::Invalid { .. }) && e.to_string().contains(want), "{e}");
        }
    }
}
