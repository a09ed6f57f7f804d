//! JSON rendering of nodes, ports, conductors and drivers as Ironic shows them.
//!
//! Fields are version-gated: a field introduced at 1.N is hidden from a client that
//! negotiated less (reference §9 item 4), `available` renders as `null` at 1.1, and secrets
//! are masked (`******`) everywhere a value leaves the service.

use chrono::{DateTime, Utc};
use deploy::model::{JsonObject, SECRET_MASK, is_secret_key, mask_secrets};
use deploy::{Conductor, Node, NodeHistory, Port, ProvisionState};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::version::Version;

/// Ironic's timestamp format: ISO 8601 with microseconds and an explicit UTC offset
/// (`%Y-%m-%dT%H:%M:%S%.6f+00:00`).
pub fn ts(t: &DateTime<Utc>) -> String {
    IronicTime(t).to_string()
}

/// A timestamp in Ironic's format ([`ts`]), written digit by digit: a detailed list of a
/// thousand nodes writes thousands of them, and `strftime` parses its pattern every time.
struct IronicTime<'a>(&'a DateTime<Utc>);

impl std::fmt::Display for IronicTime<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use chrono::{Datelike as _, Timelike as _};
        let t = self.0;
        let year = t.year();
        if !(0..=9999).contains(&year) {
            return write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00"));
        }
        // A leap second is nanosecond 1,000,000,000 and up of second 59; `%S` shows 60.
        let (second, nanos) = match t.nanosecond() {
            n if n >= 1_000_000_000 => (t.second() + 1, n - 1_000_000_000),
            n => (t.second(), n),
        };
        let mut b = *b"0000-00-00T00:00:00.000000+00:00";
        let mut put = |at: usize, width: usize, mut v: u32| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year.unsigned_abs());
        put(5, 2, t.month());
        put(8, 2, t.day());
        put(11, 2, t.hour());
        put(14, 2, t.minute());
        put(17, 2, second);
        put(20, 6, nanos / 1000);
        f.write_str(std::str::from_utf8(&b).map_err(|_| std::fmt::Error)?)
    }
}

fn opt_ts(t: Option<&DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(ts(t)))
}

fn opt_str(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::String(s.to_owned()))
}

/// `self` and `bookmark` links for a resource.
pub fn links(base: &str, coll: &str, id: &str) -> Value {
    json!([
        {"href": format!("{base}/v1/{coll}/{id}"), "rel": "self"},
        {"href": format!("{base}/{coll}/{id}"), "rel": "bookmark"},
    ])
}

/// Render a provision state for a client: before 1.2 `available` was spelled `null`.
pub fn provision_state_value(state: ProvisionState, v: Version) -> Value {
    if state == ProvisionState::Available && !v.at_least(2) {
        Value::Null
    } else {
        Value::String(state.as_str().to_owned())
    }
}

/// `driver_internal_info` as shown to API callers: the agent token is masked.
pub fn masked_internal_info(info: &JsonObject) -> JsonObject {
    mask_secrets(info)
}

/// `instance_info` as shown to API callers: secrets plus `configdrive`/`image_url` masked.
pub fn masked_instance_info(info: &JsonObject) -> JsonObject {
    let mut out = mask_secrets(info);
    for &k in INSTANCE_INFO_MASKED {
        if let Some(v) = out.get_mut(k)
            && !v.is_null()
        {
            *v = Value::String(SECRET_MASK.to_owned());
        }
    }
    out
}

/// Where the one table of node fields ([`node_fields`]) goes: a JSON serializer, or a list
/// of the names visible at a version.
trait FieldSink {
    type Error;
    /// One field, introduced at microversion 1.`since`.
    fn put<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        since: u32,
        value: &T,
    ) -> Result<(), Self::Error>;
}

/// A JSON object whose secrets (recursively) and, at the top level, the `extra` keys show as
/// [`SECRET_MASK`] — [`mask_secrets`] without building a copy.
struct Masked<'a> {
    obj: &'a JsonObject,
    extra: &'a [&'a str],
}

impl Serialize for Masked<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.obj.len()))?;
        for (k, v) in self.obj {
            if !v.is_null() && (is_secret_key(k) || self.extra.contains(&k.as_str())) {
                m.serialize_entry(k, SECRET_MASK)?;
            } else if let Value::Object(inner) = v {
                m.serialize_entry(k, &Masked { obj: inner, extra: &[] })?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// A timestamp in Ironic's format ([`ts`]), written without an intermediate string.
struct Ts<'a>(&'a DateTime<Utc>);

impl Serialize for Ts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&IronicTime(self.0))
    }
}

/// One `{"href", "rel"}` link to `{base}[/v1]/{coll}/{id}[/{sub}]`.
struct Link<'a> {
    base: &'a str,
    coll: &'a str,
    id: &'a str,
    sub: Option<&'a str>,
    /// `self` (versioned) or `bookmark`.
    bookmark: bool,
}

impl Link<'_> {
    /// The link's URL.
    fn href(&self) -> String {
        let mut href = String::with_capacity(
            self.base.len()
                + 5
                + self.coll.len()
                + self.id.len()
                + self.sub.map_or(0, |s| s.len() + 1),
        );
        href.push_str(self.base);
        if !self.bookmark {
            href.push_str("/v1");
        }
        for part in [Some(self.coll), Some(self.id), self.sub].into_iter().flatten() {
            href.push('/');
            href.push_str(part);
        }
        href
    }
}

impl Serialize for Link<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // One string, escaped once: `collect_str` would escape every piece a formatter
        // writes, and a page of a thousand nodes holds ten links per node.
        let href = self.href();
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("href", &href)?;
        m.serialize_entry("rel", if self.bookmark { "bookmark" } else { "self" })?;
        m.end()
    }
}

/// `self` and `bookmark` links to `{coll}/{id}` with an optional sub-resource.
fn link_pair<'a>(base: &'a str, coll: &'a str, id: &'a str, sub: Option<&'a str>) -> [Link<'a>; 2] {
    [Link { base, coll, id, sub, bookmark: false }, Link { base, coll, id, sub, bookmark: true }]
}

/// Every node field with the microversion (minor) that introduced it, in Ironic's order:
/// the one table behind [`NodeView`], [`node_json`] and [`node_field_names`].
fn node_fields<K: FieldSink>(n: &Node, v: Version, base: &str, k: &mut K) -> Result<(), K::Error> {
    let id = n.uuid.to_string();
    let state =
        |s: ProvisionState| (s != ProvisionState::Available || v.at_least(2)).then(|| s.as_str());
    k.put("uuid", 1, &id)?;
    k.put("name", 5, &n.name)?;
    k.put("driver", 1, &n.driver)?;
    k.put("driver_info", 1, &Masked { obj: &n.driver_info, extra: &[] })?;
    k.put("driver_internal_info", 3, &Masked { obj: &n.driver_internal_info, extra: &[] })?;
    k.put("instance_info", 1, &Masked { obj: &n.instance_info, extra: INSTANCE_INFO_MASKED })?;
    k.put("instance_uuid", 1, &n.instance_uuid)?;
    k.put("properties", 1, &n.properties)?;
    k.put("extra", 1, &n.extra)?;
    k.put("provision_state", 1, &state(n.provision_state))?;
    k.put("target_provision_state", 1, &n.target_provision_state.and_then(state))?;
    k.put("provision_updated_at", 1, &n.provision_updated_at.as_ref().map(Ts))?;
    k.put("power_state", 1, &n.power_state.map(|p| p.as_str()))?;
    k.put("target_power_state", 1, &n.target_power_state.map(|p| p.as_str()))?;
    k.put("maintenance", 1, &n.maintenance)?;
    k.put("maintenance_reason", 1, &n.maintenance_reason)?;
    k.put("last_error", 1, &n.last_error)?;
    k.put("reservation", 1, &n.reservation)?;
    k.put("console_enabled", 1, &n.console_enabled)?;
    k.put("chassis_uuid", 1, &n.chassis_uuid.map(|u| u.to_string()))?;
    k.put("inspection_started_at", 6, &n.inspection_started_at.as_ref().map(Ts))?;
    k.put("inspection_finished_at", 6, &n.inspection_finished_at.as_ref().map(Ts))?;
    k.put("clean_step", 7, &n.clean_step)?;
    k.put("raid_config", 12, &n.raid_config)?;
    k.put("target_raid_config", 12, &n.target_raid_config)?;
    k.put("network_interface", 20, &n.interfaces.network)?;
    k.put("resource_class", 21, &n.resource_class)?;
    k.put("traits", 37, &n.traits)?;
    k.put("fault", 42, &n.fault)?;
    k.put("deploy_step", 44, &n.deploy_step)?;
    k.put("conductor_group", 46, &n.conductor_group)?;
    k.put("automated_clean", 47, &n.automated_clean)?;
    k.put("protected", 48, &n.protected)?;
    k.put("protected_reason", 48, &n.protected_reason)?;
    k.put("conductor", 49, &n.conductor)?;
    k.put("owner", 50, &n.owner)?;
    k.put("description", 51, &n.description)?;
    k.put("allocation_uuid", 52, &n.allocation_uuid.map(|u| u.to_string()))?;
    k.put("retired", 61, &n.retired)?;
    k.put("retired_reason", 61, &n.retired_reason)?;
    k.put("lessee", 65, &n.lessee)?;
    k.put("network_data", 66, &n.network_data)?;
    k.put("boot_mode", 75, &n.boot_mode)?;
    k.put("secure_boot", 75, &n.secure_boot)?;
    k.put("shard", 82, &n.shard)?;
    k.put("parent_node", 83, &n.parent_node.map(|u| u.to_string()))?;
    k.put("service_step", 87, &n.service_step)?;
    k.put("disable_power_off", 95, &n.disable_power_off)?;
    k.put("instance_name", 104, &n.instance_name)?;
    k.put("health", 109, &None::<String>)?;
    k.put("created_at", 1, &Ts(&n.created_at))?;
    k.put("updated_at", 1, &n.updated_at.as_ref().map(Ts))?;
    k.put("links", 1, &link_pair(base, "nodes", &id, None))?;
    k.put("ports", 1, &link_pair(base, "nodes", &id, Some("ports")))?;
    k.put("states", 14, &link_pair(base, "nodes", &id, Some("states")))?;
    k.put("portgroups", 24, &link_pair(base, "nodes", &id, Some("portgroups")))?;
    k.put("volume", 32, &link_pair(base, "nodes", &id, Some("volume")))?;
    // Per-node interface fields: network (1.20) is above; the rest came in 1.31+.
    for (iface, value) in n.interfaces.entries() {
        let (name, since) = match iface {
            "network" => continue,
            "bios" => ("bios_interface", 40),
            "boot" => ("boot_interface", 31),
            "console" => ("console_interface", 31),
            "deploy" => ("deploy_interface", 31),
            "firmware" => ("firmware_interface", 86),
            "inspect" => ("inspect_interface", 31),
            "management" => ("management_interface", 31),
            "power" => ("power_interface", 31),
            "raid" => ("raid_interface", 31),
            "rescue" => ("rescue_interface", 38),
            "storage" => ("storage_interface", 33),
            _ => ("vendor_interface", 31),
        };
        k.put(name, since, value)?;
    }
    Ok(())
}

/// The top-level `instance_info` keys shown masked besides secrets.
const INSTANCE_INFO_MASKED: &[&str] = &["configdrive", "image_url"];

/// Collects the names of the fields visible at a version.
struct Names(Version, Vec<&'static str>);

impl FieldSink for Names {
    type Error = std::convert::Infallible;
    fn put<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        since: u32,
        _: &T,
    ) -> Result<(), Self::Error> {
        if self.0.at_least(since) {
            self.1.push(name);
        }
        Ok(())
    }
}

/// Writes the visible (and, with `fields`, wanted) fields into a JSON map.
struct Entries<'a, M> {
    map: M,
    v: Version,
    fields: Option<&'a [String]>,
}

impl<M: SerializeMap> FieldSink for Entries<'_, M> {
    type Error = M::Error;
    fn put<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        since: u32,
        value: &T,
    ) -> Result<(), M::Error> {
        if !self.v.at_least(since) {
            return Ok(());
        }
        if let Some(fields) = self.fields
            && name != "links"
            && !fields.iter().any(|f| f == name)
        {
            return Ok(());
        }
        self.map.serialize_entry(name, value)
    }
}

/// A node as a client at version `v` sees it, serialized straight to JSON: a list of a
/// thousand nodes builds no intermediate `Value` tree. `fields` restricts the output (links
/// always present).
pub struct NodeView<'a> {
    /// The node.
    pub node: &'a Node,
    /// The client's microversion.
    pub v: Version,
    /// The API's base URL for links.
    pub base: &'a str,
    /// The wanted fields (`fields=`), or every visible one.
    pub fields: Option<&'a [String]>,
}

impl Serialize for NodeView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut e = Entries { map: s.serialize_map(None)?, v: self.v, fields: self.fields };
        node_fields(self.node, self.v, self.base, &mut e)?;
        e.map.end()
    }
}

/// Names of the node fields visible at a version (for `fields=` validation).
pub fn node_field_names(v: Version) -> Vec<&'static str> {
    let probe = Node::new(deploy::NodeId::new_v4(), "x", Utc::now());
    let mut names = Names(v, Vec::new());
    match node_fields(&probe, v, "", &mut names) {
        Ok(()) => names.1,
    }
}

/// The default fields of a node list without `detail`.
pub const NODE_LIST_FIELDS: &[&str] =
    &["uuid", "name", "instance_uuid", "power_state", "provision_state", "maintenance", "links"];

/// Parse and validate `fields=` against what is visible at `v`. Links are always added.
///
/// # Errors
/// 400 naming the unknown fields; 406 when `fields` is used before 1.8.
pub fn parse_fields(
    raw: Option<&str>,
    v: Version,
    known: &[&str],
) -> Result<Option<Vec<String>>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    if !v.at_least(8) {
        return Err(ApiError::NotAcceptable(
            "The fields parameter requires API version 1.8 or later.".into(),
        ));
    }
    let wanted: Vec<String> =
        raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let bad: Vec<&str> = wanted.iter().map(String::as_str).filter(|f| !known.contains(f)).collect();
    if !bad.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Field(s) \"{}\" are not valid",
            bad.join(", ")
        )));
    }
    Ok(Some(wanted))
}

/// Render a node at version `v` as a `Value` (for callers that edit it further); `fields`
/// restricts the output (links always present). Lists serialize [`NodeView`] directly.
pub fn node_json(n: &Node, v: Version, base: &str, fields: Option<&[String]>) -> Value {
    serde_json::to_value(NodeView { node: n, v, base, fields }).unwrap_or_else(|e| {
        // Only a map with non-string keys can fail, and a node has none.
        tracing::error!(error = %e, "rendering a node failed");
        Value::Null
    })
}

/// Every port field with the microversion that introduced it.
fn port_field_table(p: &Port, v: Version, base: &str) -> Vec<(&'static str, u32, Value)> {
    let _ = v;
    let id = p.uuid.to_string();
    vec![
        ("uuid", 1, Value::String(id.clone())),
        ("address", 1, Value::String(p.address.to_string())),
        ("node_uuid", 1, Value::String(p.node_uuid.to_string())),
        ("extra", 1, Value::Object(p.extra.clone())),
        ("internal_info", 18, Value::Object(p.internal_info.clone())),
        ("pxe_enabled", 19, Value::Bool(p.pxe_enabled)),
        ("local_link_connection", 19, Value::Object(p.local_link_connection.clone())),
        (
            "portgroup_uuid",
            24,
            p.portgroup_uuid.map_or(Value::Null, |u| Value::String(u.to_string())),
        ),
        ("physical_network", 34, opt_str(p.physical_network.as_deref())),
        ("is_smartnic", 53, Value::Bool(p.is_smartnic)),
        ("name", 88, opt_str(p.name.as_deref())),
        ("description", 97, opt_str(p.description.as_deref())),
        ("vendor", 100, opt_str(p.vendor.as_deref())),
        ("category", 101, opt_str(p.category.as_deref())),
        ("available_for_dynamic_portgroup", 111, Value::Bool(p.available_for_dynamic_portgroup)),
        ("created_at", 1, Value::String(ts(&p.created_at))),
        ("updated_at", 1, opt_ts(p.updated_at.as_ref())),
        ("links", 1, links(base, "ports", &id)),
    ]
}

/// Names of the port fields visible at a version.
pub fn port_field_names(v: Version) -> Vec<&'static str> {
    let probe = Port::new(deploy::NodeId::new_v4(), deploy::ids::MacAddress([0; 6]), Utc::now());
    port_field_table(&probe, v, "")
        .into_iter()
        .filter(|(_, s, _)| v.at_least(*s))
        .map(|(n, _, _)| n)
        .collect()
}

/// The default fields of a port list without `detail`.
pub const PORT_LIST_FIELDS: &[&str] = &["uuid", "address", "links"];

/// Render a port at version `v`.
pub fn port_json(p: &Port, v: Version, base: &str, fields: Option<&[String]>) -> Value {
    let mut out = Map::new();
    for (name, since, value) in port_field_table(p, v, base) {
        if !v.at_least(since) {
            continue;
        }
        if let Some(fields) = fields
            && name != "links"
            && !fields.iter().any(|f| f == name)
        {
            continue;
        }
        out.insert(name.to_owned(), value);
    }
    Value::Object(out)
}

/// Render a conductor; `detail` adds timestamps and drivers as `GET /v1/conductors/{h}` does.
/// One node history entry as Ironic's history controller shows it: the standard fields
/// (the event cut to 255 characters) in a list, every field with `detail` and for one entry;
/// `project` from 1.113, `state`, `target_provision_state` and `duration_seconds` from 1.115.
pub fn history_json(h: &NodeHistory, v: Version, base: &str, detail: bool) -> Value {
    let mut m = Map::new();
    m.insert("uuid".into(), Value::String(h.uuid.to_string()));
    m.insert("created_at".into(), Value::String(ts(&h.created_at)));
    m.insert("severity".into(), Value::String(h.severity.clone()));
    if detail {
        m.insert("event".into(), Value::String(h.event.clone()));
        m.insert("event_type".into(), Value::String(h.event_type.clone()));
        m.insert("conductor".into(), opt_str(h.conductor.as_deref()));
        m.insert("user".into(), Value::Null);
        if v.at_least(113) {
            m.insert("project".into(), opt_str(h.project.as_deref()));
        }
        if v.at_least(115) {
            m.insert("state".into(), opt_str(h.state.map(ProvisionState::as_str)));
            m.insert(
                "target_provision_state".into(),
                opt_str(h.target_state.map(ProvisionState::as_str)),
            );
            m.insert("duration_seconds".into(), h.duration_secs.map_or(Value::Null, Value::from));
        }
    } else {
        let event = if h.event.chars().count() > 255 {
            format!("{}...", h.event.chars().take(251).collect::<String>())
        } else {
            h.event.clone()
        };
        m.insert("event".into(), Value::String(event));
    }
    m.insert(
        "links".into(),
        links(base, &format!("nodes/{}/history", h.node_uuid), &h.uuid.to_string()),
    );
    Value::Object(m)
}

pub fn conductor_json(c: &Conductor, base: &str, detail: bool, alive: bool) -> Value {
    let mut out = Map::new();
    out.insert("hostname".into(), json!(c.hostname));
    out.insert("conductor_group".into(), json!(c.conductor_group));
    out.insert("alive".into(), json!(alive));
    if detail {
        out.insert("drivers".into(), json!(c.drivers));
        out.insert("created_at".into(), json!(ts(&c.created_at)));
        out.insert("updated_at".into(), json!(ts(&c.last_heartbeat)));
    }
    out.insert("links".into(), links(base, "conductors", &c.hostname));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        let mut n = Node::new(deploy::NodeId::new_v4(), "ipmi", Utc::now());
        n.name = Some("n1".into());
        n.provision_state = ProvisionState::Available;
        n.driver_info.insert("ipmi_password".into(), json!("hunter2"));
        n.driver_info.insert("ipmi_address".into(), json!("10.0.0.1"));
        n.driver_internal_info
            .insert(deploy::internal_info::keys::AGENT_SECRET_TOKEN.into(), json!("tok-abc"));
        n.instance_info.insert("configdrive".into(), json!("H4sIAAAA"));
        n
    }

    #[test]
    fn test_fields_hidden_below_their_version() {
        let n = node();
        let old = node_json(&n, Version { minor: 1 }, "http://x", None);
        assert!(old.get("name").is_none());
        assert!(old.get("driver_internal_info").is_none());
        assert!(old["provision_state"].is_null(), "available renders null at 1.1");
        let new = node_json(&n, Version::MAX, "http://x", None);
        assert_eq!(new["name"], "n1");
        assert_eq!(new["provision_state"], "available");
        assert!(new.get("lessee").is_some() && new.get("deploy_interface").is_some());
        let mid = node_json(&n, Version { minor: 50 }, "http://x", None);
        assert!(mid.get("owner").is_some() && mid.get("lessee").is_none());
    }

    #[test]
    fn test_timestamps_are_written_as_strftime_writes_them() {
        use chrono::TimeZone as _;
        let strftime = |t: &DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string();
        let mut times = vec![
            Utc.with_ymd_and_hms(2026, 12, 4, 18, 5, 9).unwrap(),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(12345, 1, 1, 0, 0, 0).unwrap(),
            DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap(),
            DateTime::from_timestamp(1_700_000_000, 999_999).unwrap(),
        ];
        // A leap second.
        times.push(DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap());
        for t in &times {
            assert_eq!(ts(t), strftime(t), "{t:?}");
        }
        assert_eq!(ts(&times[0]), "2026-12-04T18:05:09.000000+00:00");
    }

    #[test]
    fn test_links_are_written_whole() {
        let [own, mark] = link_pair("http://h:6385", "nodes", "abc", Some("ports"));
        let v = serde_json::to_value([own, mark]).unwrap();
        assert_eq!(
            v,
            json!([
                {"href": "http://h:6385/v1/nodes/abc/ports", "rel": "self"},
                {"href": "http://h:6385/nodes/abc/ports", "rel": "bookmark"},
            ])
        );
    }

    #[test]
    fn test_secrets_masked() {
        let s = node_json(&node(), Version::MAX, "http://x", None).to_string();
        for secret in ["hunter2", "tok-abc", "H4sIAAAA"] {
            assert!(!s.contains(secret), "{secret} leaked: {s}");
        }
        assert!(s.contains("10.0.0.1"));
    }

    #[test]
    fn test_fields_selector() {
        let v = Version::MAX;
        let f = parse_fields(Some("uuid,name"), v, &node_field_names(v)).unwrap().unwrap();
        let j = node_json(&node(), v, "http://x", Some(&f));
        let keys: Vec<_> = j.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(parse_fields(Some("uuid,bogus"), v, &node_field_names(v)).is_err());
        assert!(matches!(
            parse_fields(Some("uuid"), Version { minor: 5 }, &node_field_names(v)),
            Err(ApiError::NotAcceptable(_))
        ));
    }
}
