//! `GET /v1/drivers`: the hardware types of [`deploy::hardware`] rendered as Ironic does.
//!
//! The table itself lives in `deploy`, where the conductor reads it too: the API advertises,
//! and accepts in `*_interface`, exactly the implementations the conductor runs.

use deploy::hardware::HardwareType;
use serde_json::{Map, Value, json};

use crate::render::links;

pub use deploy::hardware::{HARDWARE_TYPES, find};

/// Render `hw` for `GET /v1/drivers[/{name}]`; `detail` adds each interface's default and
/// enabled values.
pub fn json(hw: &HardwareType, base: &str, hosts: &[String], detail: bool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(hw.name));
    m.insert("hosts".into(), json!(hosts));
    m.insert("type".into(), json!("dynamic"));
    m.insert("links".into(), links(base, "drivers", hw.name));
    m.insert(
        "properties".into(),
        json!([
            {"href": format!("{base}/v1/drivers/{}/properties", hw.name), "rel": "self"},
            {"href": format!("{base}/drivers/{}/properties", hw.name), "rel": "bookmark"},
        ]),
    );
    if detail {
        for spec in &hw.interfaces {
            m.insert(format!("default_{}_interface", spec.interface), json!(spec.default));
            m.insert(format!("enabled_{}_interfaces", spec.interface), json!(spec.enabled));
        }
    }
    Value::Object(m)
}
