//! Every endpoint in `api_service::endpoints::all()` (the table behind `docs/API.md` and the
//! OpenAPI document) is routed: at the newest microversion no entry answers 405 or the
//! router's own 404, and below its microversion a GET entry is hidden (404/406).

use reqwest::Method;
use serde_json::json;

use crate::harness::Harness;

/// The path with its parameters filled: a real node, a trait name, unknown other idents.
fn fill(path: &str, node: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{ident}" if path.starts_with("/v1/nodes/") => node.to_owned(),
            "{ident}" => "0a1b2c3d-0000-4000-8000-000000000001".to_owned(),
            "{name}" if path.contains("traits") => "CUSTOM_PROBE".to_owned(),
            "{name}" if path.starts_with("/v1/drivers/") => "fake-hardware".to_owned(),
            s if s.starts_with('{') => "probe".to_owned(),
            s => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

const ROUTER_404: &str = "The resource could not be found.";

#[tokio::test]
async fn test_every_listed_endpoint_is_routed() {
    let h = Harness::sqlite().await;
    let node = h.create_node(json!({"driver": "fake-hardware", "name": "probe-node"})).await;
    let node = node["uuid"].as_str().unwrap().to_owned();
    for e in api_service::endpoints::all() {
        let path = fill(&e.path, &node);
        let method = Method::from_bytes(e.method.as_bytes()).unwrap();
        let body = match e.method {
            "PATCH" => Some("[]"),
            "POST" | "PUT" => Some("{}"),
            _ => None,
        };
        let r = h.call(method.clone(), &path, Some("1.115"), body).await;
        assert_ne!(r.status, 405, "{} {path} is not routed for its method", e.method);
        if r.status == 404 && r.headers.get("content-type").is_some_and(|c| c == "application/json")
        {
            assert_ne!(r.fault(), ROUTER_404, "{} {path} is not routed", e.method);
        }
        if e.method == "GET" && e.since > 1 && !e.path.contains('{') {
            let below = format!("1.{}", e.since - 1);
            let r = h.call(Method::GET, &path, Some(&below), None).await;
            assert!(
                r.status == 404 || r.status == 406,
                "GET {path} answers {} at {below}, below its microversion 1.{}",
                r.status,
                e.since
            );
        }
    }
    h.stop().await;
}
