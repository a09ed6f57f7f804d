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
//! Secrets in the inventory and plugin data (`password`, `auth_token`, `bmc_password`) read
//! as `***`, as with Ironic's default `mask_secrets = always`.
//!
//! Every operator and action of Ironic is here except `api-call`, which would make the
//! domain core do network I/O: a rule that uses it fails with a clear message. The engine
//! is pure; the conductor loads the rules and writes back what changed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{Map, Value};
use thiserror::Error;

use crate::model::{Node, Port};

/// Every condition operator (optionally negated with a leading `!`).
pub const OPERATORS: [&str; 14] = [
    "eq", "ne", "lt", "gt", "le", "ge", "is-empty", "is-none", "is-true", "is-false", "in-net",
    "matches", "contains", "one-of",
];

/// Every action this engine runs (Ironic's, less `api-call`).
pub const ACTIONS: [&str; 15] = [
    "fail",
    "log",
    "set-attribute",
    "extend-attribute",
    "del-attribute",
    "add-trait",
    "remove-trait",
    "set-capability",
    "unset-capability",
    "set-plugin-data",
    "extend-plugin-data",
    "unset-plugin-data",
    "set-port-attribute",
    "extend-port-attribute",
    "del-port-attribute",
];

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

/// Keys whose values rules never see (Ironic's `SENSITIVE_FIELDS`, masked as with its
/// default `[inspection_rules] mask_secrets = always`).
const SENSITIVE_FIELDS: [&str; 3] = ["password", "auth_token", "bmc_password"];

/// `v` with every [`SENSITIVE_FIELDS`] value, at any depth, replaced by `***`.
fn masked(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let x = if SENSITIVE_FIELDS.contains(&k.as_str()) {
                        Value::String("***".into())
                    } else {
                        masked(x)
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(masked).collect()),
        other => other.clone(),
    }
}

impl Context {
    fn new(subject: &Subject<'_>, item: Option<&Value>) -> Self {
        let mut root = Map::new();
        root.insert("node".into(), serde_json::to_value(&*subject.node).unwrap_or(Value::Null));
        root.insert("inventory".into(), masked(subject.inventory));
        root.insert("plugin_data".into(), masked(subject.plugin_data));
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

mod actions;

use actions::{ActionError, run_action};

#[cfg(test)]
mod tests;
