//! The hardware a Redfish system describes, for out-of-band inspection: the System's
//! `ProcessorSummary` and `MemorySummary`, and the `Processors`, `SimpleStorage` and
//! `EthernetInterfaces` collections, rendered from the machine's inventory
//! ([`super::MachineBackend::hardware`]) in the shapes sushy-tools and real BMCs use, so the
//! BMC and the machine's agent describe the same machine.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use proto::agent::Inventory;
use serde_json::{Map, Value, json};

use super::{RedfishState, bmc_error_response, redfish_error, system_missing};

/// Redfish `InstructionSet` of an architecture name.
fn instruction_set(arch: &str) -> &'static str {
    match arch {
        "x86_64" => "x86-64",
        "i686" | "x86" => "x86",
        "aarch64" => "ARM-A64",
        "arm" => "ARM-A32",
        "ppc64le" => "PowerISA",
        _ => "OEM",
    }
}

/// The System's summaries and links for `inv`.
pub(super) fn system_fields(inv: &Inventory, base: &str) -> Map<String, Value> {
    let cpu = inv.cpu.clone().unwrap_or_default();
    let mem = inv.memory.unwrap_or_default();
    let mut m = Map::new();
    m.insert(
        "ProcessorSummary".into(),
        json!({"Count": cpu.count, "Status": {"State": "Enabled"}}),
    );
    // GiB as a number, as BMCs report it (sushy-tools: an integer, Dell: a float).
    #[expect(clippy::cast_precision_loss, reason = "memory sizes are far below 2^52 MiB")]
    let gib = mem.physical_mb as f64 / 1024.0;
    m.insert("MemorySummary".into(), json!({"TotalSystemMemoryGiB": gib}));
    m.insert("Processors".into(), json!({"@odata.id": format!("{base}/Processors")}));
    m.insert("SimpleStorage".into(), json!({"@odata.id": format!("{base}/SimpleStorage")}));
    m.insert(
        "EthernetInterfaces".into(),
        json!({"@odata.id": format!("{base}/EthernetInterfaces")}),
    );
    if let Some(v) = &inv.system_vendor {
        m.insert("Manufacturer".into(), v.manufacturer.clone().into());
        m.insert("Model".into(), v.product_name.clone().into());
        m.insert("SerialNumber".into(), v.serial_number.clone().into());
    }
    m
}

/// The routes of the hardware collections (added to the protected router).
pub(super) fn routes(router: Router<Arc<RedfishState>>) -> Router<Arc<RedfishState>> {
    use axum::routing::get;
    router
        .route("/redfish/v1/Systems/{id}/Processors", get(processors))
        .route("/redfish/v1/Systems/{id}/Processors/{item}", get(processor))
        .route("/redfish/v1/Systems/{id}/SimpleStorage", get(storages))
        .route("/redfish/v1/Systems/{id}/SimpleStorage/{item}", get(storage))
        .route("/redfish/v1/Systems/{id}/EthernetInterfaces", get(nics))
        .route("/redfish/v1/Systems/{id}/EthernetInterfaces/{item}", get(nic))
}

/// The machine's inventory, or the Redfish answer when there is none.
async fn hardware(state: &RedfishState, id: &str) -> Result<Inventory, Response> {
    let Some(backend) = state.system(id) else { return Err(system_missing(id)) };
    match backend.hardware().await {
        Ok(Some(inv)) => Ok(inv),
        Ok(None) => Err(missing()),
        Err(e) => Err(bmc_error_response(&e)),
    }
}

fn missing() -> Response {
    redfish_error(StatusCode::NOT_FOUND, "Base.1.0.ResourceMissingAtURI", "no such resource")
}

fn collection(base: &str, kind: &str, ids: &[String]) -> Response {
    let members: Vec<Value> =
        ids.iter().map(|i| json!({"@odata.id": format!("{base}/{kind}/{i}")})).collect();
    Json(json!({
        "@odata.id": format!("{base}/{kind}"),
        "Name": format!("{kind} Collection"),
        "Members@odata.count": members.len(),
        "Members": members,
    }))
    .into_response()
}

fn nic_id(mac: &str) -> String {
    mac.replace(':', "")
}

async fn processors(State(s): State<Arc<RedfishState>>, Path(id): Path<String>) -> Response {
    match hardware(&s, &id).await {
        Ok(_) => collection(&format!("/redfish/v1/Systems/{id}"), "Processors", &["CPU0".into()]),
        Err(r) => r,
    }
}

async fn processor(
    State(s): State<Arc<RedfishState>>,
    Path((id, item)): Path<(String, String)>,
) -> Response {
    let inv = match hardware(&s, &id).await {
        Ok(inv) if item == "CPU0" => inv,
        Ok(_) => return missing(),
        Err(r) => return r,
    };
    let cpu = inv.cpu.unwrap_or_default();
    Json(json!({
        "@odata.id": format!("/redfish/v1/Systems/{id}/Processors/CPU0"),
        "Id": "CPU0",
        "ProcessorType": "CPU",
        "InstructionSet": instruction_set(&cpu.architecture),
        "Model": cpu.model_name,
        "MaxSpeedMHz": cpu.frequency.parse::<f64>().ok(),
        "TotalCores": cpu.count,
    }))
    .into_response()
}

async fn storages(State(s): State<Arc<RedfishState>>, Path(id): Path<String>) -> Response {
    match hardware(&s, &id).await {
        Ok(_) => collection(&format!("/redfish/v1/Systems/{id}"), "SimpleStorage", &["1".into()]),
        Err(r) => r,
    }
}

async fn storage(
    State(s): State<Arc<RedfishState>>,
    Path((id, item)): Path<(String, String)>,
) -> Response {
    let inv = match hardware(&s, &id).await {
        Ok(inv) if item == "1" => inv,
        Ok(_) => return missing(),
        Err(r) => return r,
    };
    let devices: Vec<Value> =
        inv.disks.iter().map(|d| json!({"Name": d.name, "CapacityBytes": d.size})).collect();
    Json(json!({
        "@odata.id": format!("/redfish/v1/Systems/{id}/SimpleStorage/1"),
        "Id": "1",
        "Name": "Simple Storage Controller",
        "Devices": devices,
    }))
    .into_response()
}

async fn nics(State(s): State<Arc<RedfishState>>, Path(id): Path<String>) -> Response {
    match hardware(&s, &id).await {
        Ok(inv) => {
            let ids: Vec<String> = inv.interfaces.iter().map(|i| nic_id(&i.mac_address)).collect();
            collection(&format!("/redfish/v1/Systems/{id}"), "EthernetInterfaces", &ids)
        }
        Err(r) => r,
    }
}

async fn nic(
    State(s): State<Arc<RedfishState>>,
    Path((id, item)): Path<(String, String)>,
) -> Response {
    let inv = match hardware(&s, &id).await {
        Ok(inv) => inv,
        Err(r) => return r,
    };
    let Some(i) = inv.interfaces.iter().find(|i| nic_id(&i.mac_address) == item) else {
        return missing();
    };
    let mut body = json!({
        "@odata.id": format!("/redfish/v1/Systems/{id}/EthernetInterfaces/{item}"),
        "Id": item,
        "Name": i.name,
        "MACAddress": i.mac_address,
        "PermanentMACAddress": i.mac_address,
    });
    if i.speed_mbps > 0 {
        body["SpeedMbps"] = i.speed_mbps.into();
    }
    Json(body).into_response()
}
