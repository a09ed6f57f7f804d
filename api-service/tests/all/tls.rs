//! TLS on both listeners: REST and gRPC clients that trust only a test CA, and a
//! certificate replaced on disk that new connections get without a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_service::ApiConfig;
use common::testing::{TestCa, TestCert};
use proto::api::ListNodesRequest;
use proto::api::node_service_client::NodeServiceClient;
use rustls_pki_types::pem::PemObject as _;
use serde_json::json;
use store::testing::TestDatabase;

use crate::harness::Harness;

fn write_cert(dir: &Path, c: &TestCert) {
    // Key first, then the certificate: a watcher that looks in between sees a mismatched
    // pair, fails to load it and keeps the old one until the next look.
    std::fs::write(dir.join("key.pem"), &c.key_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), &c.cert_pem).unwrap();
}

fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A tonic channel over TLS that trusts only `ca_pem`.
async fn grpc_channel(addr: &str, ca_pem: &str) -> tonic::transport::Channel {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(common::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let addr = addr.to_owned();
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_uri| {
            let (connector, addr) = (connector.clone(), addr.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap()
}

#[tokio::test]
async fn test_rest_and_grpc_serve_tls_and_reload_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ferric test CA one");
    write_cert(dir.path(), &ca.issue(&["localhost", "127.0.0.1"]));
    let mut cfg = ApiConfig::default();
    cfg.api.tls_cert_file = Some(dir.path().join("cert.pem"));
    cfg.api.tls_key_file = Some(dir.path().join("key.pem"));
    cfg.api.tls_reload_interval = 1;
    let db = TestDatabase::sqlite().await;
    let bus = bus::connect(None).await.unwrap();
    let h = Harness::start(db, bus, cfg).await;
    let rest_addr = h.base.trim_start_matches("http://").to_owned();
    let grpc_addr = h.grpc_url.trim_start_matches("http://").to_owned();
    let https = format!("https://{rest_addr}");

    // REST over TLS, trusting only the test CA.
    let client = https_client(&ca.cert_pem());
    let r = client
        .post(format!("{https}/v1/nodes"))
        .header("X-OpenStack-Ironic-API-Version", "1.115")
        .json(&json!({"driver": "fake-hardware", "name": "tls-node"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Plain HTTP on the TLS port gets no answer from the API.
    let plain = reqwest::Client::new().get(format!("http://{rest_addr}/v1")).send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    // A client without the CA refuses the server.
    let other = https_client(&TestCa::new("unrelated CA").cert_pem());
    let err = other.get(format!("{https}/v1")).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    // gRPC over TLS with the same certificate.
    let mut grpc = NodeServiceClient::new(grpc_channel(&grpc_addr, &ca.cert_pem()).await);
    let nodes = grpc.list(ListNodesRequest::default()).await.unwrap().into_inner();
    assert!(nodes.nodes.iter().any(|n| n.name == "tls-node"), "{nodes:?}");

    // A new certificate from another CA: new connections get it within the deadline.
    let ca2 = TestCa::new("ferric test CA two");
    write_cert(dir.path(), &ca2.issue(&["localhost", "127.0.0.1"]));
    let client2 = https_client(&ca2.cert_pem());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client2.get(format!("{https}/v1")).send().await {
            Ok(r) => {
                assert_eq!(r.status(), 200);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "the new certificate never served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The old CA no longer verifies new connections, on either listener.
    // (A new client: an HTTP/2 connection opened before the change may still be shared.)
    let old = https_client(&ca.cert_pem());
    assert!(old.get(format!("{https}/v1")).send().await.is_err());
    let mut grpc2 = NodeServiceClient::new(grpc_channel(&grpc_addr, &ca2.cert_pem()).await);
    grpc2.list(ListNodesRequest::default()).await.unwrap();
    h.stop().await;
}
