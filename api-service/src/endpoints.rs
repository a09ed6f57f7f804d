//! Every REST endpoint the service answers, with the microversion that introduced it and the
//! test that exercises it. The OpenAPI document is completed from this table, `docs/API.md`
//! is generated from it (a test keeps the two equal), and a test sends a request to each
//! entry to prove it is routed.

use crate::resources::{NodeLink, Spec, kinds};

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path template with `{param}` segments.
    pub path: String,
    /// The microversion (minor) that introduced it.
    pub since: u32,
    /// What it does.
    pub summary: String,
    /// The tests that exercise it (test binary or file).
    pub tests: &'static str,
}

const SDK: &str = "openstacksdk_functional, openstack_cli_resources, bad_input_resources";
const NODE_EXTRAS: &str = "openstack_cli_resources, bad_input_resources";
const EXTRAS: &str = "node_extras";
const BMC_CALLS: &str = "openstack_cli_resources, bad_input_resources, rest, bmc_management";
const VMEDIA: &str =
    "openstacksdk_functional, openstack_cli_resources, bad_input_resources, bmc_management";
const VMEDIA_GET: &str = "openstack_cli_resources, bad_input_resources, bmc_management";
const INDICATORS: &str = "node_extras, bmc_management";

fn ep(
    method: &'static str,
    path: &str,
    since: u32,
    summary: &str,
    tests: &'static str,
) -> Endpoint {
    Endpoint { method, path: path.to_owned(), since, summary: summary.to_owned(), tests }
}

fn plural(t: &str) -> String {
    if t == "chassis" { t.to_owned() } else { format!("{t}s") }
}

fn resource_endpoints(spec: &Spec, out: &mut Vec<Endpoint>) {
    let title = spec.kind.title().to_lowercase();
    let a = if title.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    let coll = format!("/v1/{}", spec.path);
    let one = format!("{coll}/{{ident}}");
    out.push(ep("GET", &coll, spec.since, &format!("List {}", plural(&title)), SDK));
    out.push(ep("POST", &coll, spec.since, &format!("Create {a} {title}"), SDK));
    out.push(ep(
        "GET",
        &format!("{coll}/detail"),
        spec.since,
        &format!("List {} with every field", plural(&title)),
        SDK,
    ));
    out.push(ep("GET", &one, spec.since, &format!("Show {a} {title}"), SDK));
    out.push(ep("PATCH", &one, spec.since, &format!("Update {a} {title} (JSON Patch)"), SDK));
    out.push(ep("DELETE", &one, spec.since, &format!("Delete {a} {title}"), SDK));
    if spec.node == NodeLink::Required && spec.path != "portgroups" {
        let sub = format!("/v1/nodes/{{ident}}/{}", spec.path);
        out.push(ep("GET", &sub, spec.since, &format!("List a node's {}", plural(&title)), SDK));
    }
}

/// The whole table, in path order.
pub fn all() -> Vec<Endpoint> {
    let mut v = vec![
        ep("GET", "/", 1, "Version discovery", "rest"),
        ep("GET", "/v1/", 1, "The v1 document with links to every resource", "rest"),
        ep("GET", "/v1/nodes", 1, "List nodes (filters, fields, paging)", SDK),
        ep("POST", "/v1/nodes", 1, "Create a node (default interfaces filled in)", SDK),
        ep("GET", "/v1/nodes/detail", 1, "List nodes with every field", SDK),
        ep("GET", "/v1/nodes/{ident}", 1, "Show a node", SDK),
        ep("PATCH", "/v1/nodes/{ident}", 1, "Update a node (JSON Patch, reset_interfaces)", SDK),
        ep("DELETE", "/v1/nodes/{ident}", 1, "Delete a node", SDK),
        ep("GET", "/v1/nodes/{ident}/states", 1, "A node's states", "rest"),
        ep("PUT", "/v1/nodes/{ident}/states/provision", 1, "Change the provision state", SDK),
        ep("PUT", "/v1/nodes/{ident}/states/power", 1, "Change the power state", SDK),
        ep(
            "PUT",
            "/v1/nodes/{ident}/states/raid",
            12,
            "Set the target RAID configuration",
            NODE_EXTRAS,
        ),
        ep("PUT", "/v1/nodes/{ident}/states/boot_mode", 76, "Set the boot mode", BMC_CALLS),
        ep(
            "PUT",
            "/v1/nodes/{ident}/states/secure_boot",
            76,
            "Turn secure boot on or off",
            BMC_CALLS,
        ),
        ep("GET", "/v1/nodes/{ident}/states/console", 1, "Console state", NODE_EXTRAS),
        ep(
            "PUT",
            "/v1/nodes/{ident}/states/console",
            1,
            "Enable or disable the console",
            NODE_EXTRAS,
        ),
        ep("PUT", "/v1/nodes/{ident}/maintenance", 1, "Enter maintenance with a reason", SDK),
        ep("DELETE", "/v1/nodes/{ident}/maintenance", 1, "Leave maintenance", SDK),
        ep("GET", "/v1/nodes/{ident}/validate", 3, "Validate every interface", SDK),
        ep("GET", "/v1/nodes/{ident}/ports", 1, "List a node's ports", SDK),
        ep("GET", "/v1/nodes/{ident}/portgroups", 24, "List a node's port groups", SDK),
        ep("GET", "/v1/nodes/{ident}/history", 78, "A node's event history", NODE_EXTRAS),
        ep("GET", "/v1/nodes/{ident}/history/{event}", 78, "One history event", NODE_EXTRAS),
        ep("GET", "/v1/nodes/{ident}/traits", 37, "A node's traits", SDK),
        ep("PUT", "/v1/nodes/{ident}/traits", 37, "Replace a node's traits", SDK),
        ep("DELETE", "/v1/nodes/{ident}/traits", 37, "Remove every trait", NODE_EXTRAS),
        ep("PUT", "/v1/nodes/{ident}/traits/{name}", 37, "Add a trait", SDK),
        ep("DELETE", "/v1/nodes/{ident}/traits/{name}", 37, "Remove a trait", SDK),
        ep("GET", "/v1/nodes/{ident}/vifs", 28, "List attached VIFs", SDK),
        ep(
            "POST",
            "/v1/nodes/{ident}/vifs",
            28,
            "Attach a VIF (flat: on a free port or port group)",
            SDK,
        ),
        ep("DELETE", "/v1/nodes/{ident}/vifs/{vif}", 28, "Detach a VIF", SDK),
        ep(
            "GET",
            "/v1/nodes/{ident}/vmedia",
            93,
            "Virtual media devices (fake: what was attached; redfish: every device)",
            VMEDIA_GET,
        ),
        ep("POST", "/v1/nodes/{ident}/vmedia", 89, "Attach virtual media (fake, redfish)", VMEDIA),
        ep(
            "DELETE",
            "/v1/nodes/{ident}/vmedia",
            89,
            "Detach virtual media (fake, redfish)",
            VMEDIA,
        ),
        ep("GET", "/v1/nodes/{ident}/bios", 40, "BIOS settings", NODE_EXTRAS),
        ep("GET", "/v1/nodes/{ident}/bios/{name}", 40, "One BIOS setting", NODE_EXTRAS),
        ep("GET", "/v1/nodes/{ident}/firmware", 86, "Firmware components", SDK),
        ep(
            "GET",
            "/v1/nodes/{ident}/inventory",
            81,
            "The inspected inventory and plugin data",
            NODE_EXTRAS,
        ),
        ep(
            "GET",
            "/v1/nodes/{ident}/management/boot_device",
            1,
            "The boot device (fake, ipmitool, redfish)",
            BMC_CALLS,
        ),
        ep(
            "PUT",
            "/v1/nodes/{ident}/management/boot_device",
            1,
            "Set the boot device (fake, ipmitool, redfish)",
            BMC_CALLS,
        ),
        ep(
            "GET",
            "/v1/nodes/{ident}/management/boot_device/supported",
            1,
            "Supported boot devices",
            BMC_CALLS,
        ),
        ep(
            "PUT",
            "/v1/nodes/{ident}/management/inject_nmi",
            29,
            "Inject an NMI (fake, ipmitool, redfish)",
            BMC_CALLS,
        ),
        ep(
            "GET",
            "/v1/nodes/{ident}/management/indicators",
            63,
            "Indicators of every component (fake, redfish)",
            INDICATORS,
        ),
        ep(
            "GET",
            "/v1/nodes/{ident}/management/indicators/{indicator}",
            63,
            "An indicator's state, by name@component (fake, redfish)",
            INDICATORS,
        ),
        ep(
            "PUT",
            "/v1/nodes/{ident}/management/indicators/{indicator}",
            63,
            "Set an indicator's state (redfish; fake cannot, as Ironic's)",
            INDICATORS,
        ),
        ep("GET", "/v1/nodes/{ident}/vendor_passthru/methods", 1, "Vendor methods (none)", EXTRAS),
        ep(
            "POST",
            "/v1/nodes/{ident}/vendor_passthru",
            1,
            "Call a vendor method (400: none exist)",
            EXTRAS,
        ),
        ep("GET", "/v1/nodes/{ident}/children", 83, "Child nodes", NODE_EXTRAS),
        ep("GET", "/v1/nodes/{ident}/volume", 32, "A node's volume resources", NODE_EXTRAS),
        ep("GET", "/v1/ports", 1, "List ports", SDK),
        ep("POST", "/v1/ports", 1, "Create a port (optionally in a port group)", SDK),
        ep("GET", "/v1/ports/detail", 1, "List ports with every field", SDK),
        ep("GET", "/v1/ports/{ident}", 1, "Show a port", SDK),
        ep("PATCH", "/v1/ports/{ident}", 1, "Update a port", SDK),
        ep("DELETE", "/v1/ports/{ident}", 1, "Delete a port", SDK),
        ep("GET", "/v1/chassis/{ident}/nodes", 1, "A chassis' nodes", NODE_EXTRAS),
        ep("GET", "/v1/portgroups/{ident}/ports", 24, "A port group's ports", NODE_EXTRAS),
        ep("GET", "/v1/volume", 32, "The volume resources", NODE_EXTRAS),
        ep("PUT", "/v1/runbooks/{ident}/traits", 112, "Replace a runbook's traits", SDK),
        ep("PUT", "/v1/runbooks/{ident}/traits/{name}", 112, "Add a runbook trait", SDK),
        ep("DELETE", "/v1/runbooks/{ident}/traits/{name}", 112, "Remove a runbook trait", SDK),
        ep("GET", "/v1/drivers", 1, "List hardware types (type, detail)", SDK),
        ep("GET", "/v1/drivers/{name}", 1, "Show a hardware type", SDK),
        ep(
            "GET",
            "/v1/drivers/{name}/properties",
            1,
            "A hardware type's driver_info properties",
            SDK,
        ),
        ep(
            "GET",
            "/v1/drivers/{name}/raid/logical_disk_properties",
            12,
            "RAID logical disk properties",
            EXTRAS,
        ),
        ep(
            "GET",
            "/v1/drivers/{name}/vendor_passthru/methods",
            1,
            "Driver vendor methods (none)",
            EXTRAS,
        ),
        ep(
            "POST",
            "/v1/drivers/{name}/vendor_passthru",
            1,
            "Call a driver vendor method (400)",
            EXTRAS,
        ),
        ep("GET", "/v1/conductors", 49, "List conductors", SDK),
        ep("GET", "/v1/conductors/{hostname}", 49, "Show a conductor", SDK),
        ep("GET", "/v1/shards", 82, "Shards and their node counts", NODE_EXTRAS),
        ep("POST", "/v1/events", 54, "Network events (validated)", EXTRAS),
        ep("GET", "/v1/lookup", 22, "Agent lookup", "rest, agent, ipa"),
        ep("POST", "/v1/heartbeat/{ident}", 22, "Agent heartbeat", "rest, agent, ipa"),
        ep(
            "POST",
            "/v1/continue_inspection",
            84,
            "In-band inspection data from the ramdisk",
            "inspection",
        ),
        ep("GET", "/v1/openapi.json", 1, "This document", "rest"),
        ep("GET", "/healthz", 1, "Liveness and readiness", "rest"),
        ep("GET", "/metrics", 1, "Prometheus metrics", "rest"),
    ];
    for spec in kinds::ALL {
        resource_endpoints(spec, &mut v);
    }
    v.sort_by(|a, b| (a.path.as_str(), a.method).cmp(&(b.path.as_str(), b.method)));
    v
}

/// `docs/API.md`: the table of every endpoint.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Ferric's REST API\n\n\
         Generated from `api-service/src/endpoints.rs` (a test keeps this file equal to it; run \
         `FERRIC_BLESS=1 cargo test --workspace --lib endpoints` to regenerate). Every endpoint \
         answers only from the microversion shown (below it: 404, or 406 for a field); the \
         tests named exercise it.\n\n\
         | method | path | since | what | tests |\n|---|---|---|---|---|\n",
    );
    for e in all() {
        out.push_str(&format!(
            "| {} | `{}` | 1.{} | {} | {} |\n",
            e.method, e.path, e.since, e.summary, e.tests
        ));
    }
    out
}

/// Add every endpoint of the table that the generated document lacks, and the
/// `x-openstack-ironic-api-min-version` of each.
pub fn complete_openapi(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(serde_json::Value::as_object_mut) else {
        return;
    };
    for e in all() {
        let item = paths.entry(e.path.clone()).or_insert_with(|| serde_json::json!({}));
        let method = e.method.to_lowercase();
        let params: Vec<serde_json::Value> = e
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| serde_json::json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let op = item.as_object_mut().map(|m| {
            m.entry(method).or_insert_with(|| {
                serde_json::json!({
                    "summary": e.summary,
                    "parameters": params,
                    "responses": {"default": {"description": "Ironic-compatible response; errors carry Ironic's error body"}},
                })
            })
        });
        if let Some(op) = op {
            op["x-openstack-ironic-api-min-version"] = serde_json::json!(format!("1.{}", e.since));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_docs_table_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/API.md");
        let want = markdown();
        if std::env::var_os("FERRIC_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/API.md is stale: run FERRIC_BLESS=1 cargo test --workspace --lib endpoints"
        );
    }

    #[test]
    fn test_openapi_lists_every_endpoint() {
        let doc = crate::openapi::document();
        for e in all() {
            let op = &doc["paths"][&e.path][e.method.to_lowercase()];
            assert!(op.is_object(), "{} {} missing from the OpenAPI document", e.method, e.path);
            assert_eq!(op["x-openstack-ironic-api-min-version"], format!("1.{}", e.since));
        }
    }

    #[test]
    fn test_no_duplicates() {
        let all = all();
        for (i, a) in all.iter().enumerate() {
            assert!(
                !all[i + 1..].iter().any(|b| b.method == a.method && b.path == a.path),
                "{} {} listed twice",
                a.method,
                a.path
            );
        }
    }
}
