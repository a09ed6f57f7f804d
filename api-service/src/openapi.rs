//! `/v1/openapi.json`, generated from the `#[utoipa::path]` annotations on the handlers.

use serde_json::Value;
use utoipa::OpenApi;

use crate::rest::{agent, misc, nodes, ports};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferric bare-metal API (Ironic v1 compatible)",
        description = "Microversions 1.1 to 1.115 via X-OpenStack-Ironic-API-Version."
    ),
    paths(
        misc::root,
        misc::v1,
        misc::drivers,
        misc::driver,
        misc::driver_properties,
        misc::conductors,
        misc::conductor,
        misc::healthz,
        misc::metrics,
        nodes::list,
        nodes::list_detail,
        nodes::create,
        nodes::show,
        nodes::patch,
        nodes::delete,
        nodes::states,
        nodes::set_provision,
        nodes::set_power,
        nodes::maintenance_on,
        nodes::maintenance_off,
        nodes::validate,
        nodes::history,
        ports::list,
        ports::list_detail,
        ports::list_for_node,
        ports::create,
        ports::show,
        ports::patch,
        ports::delete,
        agent::lookup,
        agent::heartbeat,
    ),
    components(schemas(
        crate::service::NodeCreate,
        crate::service::PortCreate,
        crate::service::ProvisionRequest,
        crate::service::PowerRequest,
        crate::service::HeartbeatRequest,
        nodes::MaintenanceBody,
        crate::patch::PatchOp,
    ))
)]
struct ApiDoc;

/// The OpenAPI document as JSON.
pub fn document() -> Value {
    match serde_json::to_value(ApiDoc::openapi()) {
        Ok(mut v) => {
            crate::endpoints::complete_openapi(&mut v);
            v
        }
        Err(e) => {
            tracing::error!(error = %e, "serializing the OpenAPI document failed");
            Value::Null
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_document_lists_the_node_routes() {
        let doc = super::document();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/nodes",
            "/v1/nodes/{ident}/states/provision",
            "/v1/heartbeat/{ident}",
            "/v1/ports",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
    }
}
