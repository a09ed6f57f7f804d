//! Request limits: body size (413) and JSON depth (400) with Ironic's error body, the
//! per-address rate limit of lookup and heartbeat (429), and slow clients cut off by the
//! header and body read timeouts.

use std::time::Duration;

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_body_size_and_json_depth_limits() {
    let h = Harness::sqlite().await;
    let big = format!(
        r#"{{"driver": "fake-hardware", "extra": {{"x": "{}"}}}}"#,
        "a".repeat(1100 * 1024)
    );
    let r = h.call(Method::POST, "/v1/nodes", Some("1.115"), Some(&big)).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.fault().contains("too large"), "{}", r.body);
    let deep = format!(
        r#"{{"driver": "fake-hardware", "extra": {{"x": {}1{}}}}}"#,
        "[".repeat(30),
        "]".repeat(30)
    );
    let r = h.call(Method::POST, "/v1/nodes", Some("1.115"), Some(&deep)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("deeper than 25"), "{}", r.body);
    // 20 levels is fine.
    let ok = format!(
        r#"{{"driver": "fake-hardware", "extra": {{"x": {}1{}}}}}"#,
        "[".repeat(20),
        "]".repeat(20)
    );
    let r = h.call(Method::POST, "/v1/nodes", Some("1.115"), Some(&ok)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_lookup_and_heartbeat_are_rate_limited_per_address() {
    let mut cfg = api_service::ApiConfig::default();
    cfg.api.ramdisk_rate_limit_per_second = 1;
    cfg.api.ramdisk_rate_limit_burst = 3;
    let h = Harness::sqlite_with(cfg).await;
    let lookup = "/v1/lookup?addresses=52:54:00:00:00:09";
    for _ in 0..3 {
        let r = h.call(Method::GET, lookup, Some("1.62"), None).await;
        assert_eq!(r.status, 404, "{}", r.body);
    }
    let r = h.call(Method::GET, lookup, Some("1.62"), None).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.fault().contains("Too many requests"));
    assert_eq!(r.headers["retry-after"], "1");
    let r = h.call(Method::POST, "/v1/heartbeat/52:54:00:00:00:09", Some("1.62"), Some("{}")).await;
    assert_eq!(r.status, 429, "heartbeat shares the address's bucket: {}", r.body);
    let inventory = r#"{"inventory": {"interfaces": [{"mac_address": "52:54:00:00:00:09"}]}}"#;
    let r = h.call(Method::POST, "/v1/continue_inspection", Some("1.84"), Some(inventory)).await;
    assert_eq!(r.status, 429, "continue_inspection shares the address's bucket: {}", r.body);
    // Other endpoints are not limited.
    for _ in 0..5 {
        assert_eq!(h.get("/v1/nodes").await.status, 200);
    }
    h.stop().await;
}

/// Read until the server closes the connection or answers; `None` when it does neither
/// before the deadline.
async fn closed_or_answered(
    stream: &mut tokio::net::TcpStream,
    deadline: Duration,
) -> Option<String> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(deadline, stream.read_to_end(&mut buf)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&buf).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_slow_clients_are_cut_off() {
    let mut cfg = api_service::ApiConfig::default();
    cfg.api.header_read_timeout = 1;
    cfg.api.body_read_timeout = 1;
    let h = Harness::sqlite_with(cfg).await;
    let addr = h.base.trim_start_matches("http://").to_owned();

    // Slow-loris: headers that never end.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let got = closed_or_answered(&mut s, Duration::from_secs(10)).await;
    assert!(got.is_some(), "the server keeps a connection with unfinished headers open");
    assert!(!got.unwrap_or_default().contains("200 OK"));

    // A body that stops arriving.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"POST /v1/nodes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          X-OpenStack-Ironic-API-Version: 1.115\r\nContent-Length: 100\r\n\r\n{\"driver\"",
    )
    .await
    .unwrap();
    let got = closed_or_answered(&mut s, Duration::from_secs(10)).await;
    let got = got.expect("the server waits for a stalled body forever");
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 4"), "{got}");

    // An idle keep-alive connection is closed too.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let got = closed_or_answered(&mut s, Duration::from_secs(10)).await;
    assert!(
        got.is_some_and(|g| g.starts_with("HTTP/1.1 200")),
        "idle connection closed after its answer"
    );
    h.stop().await;
}
