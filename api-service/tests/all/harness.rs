//! Starts api-service (`api_service::run`) in-process on a fresh database and bus, bound to
//! 127.0.0.1:0, and waits for its ready signal.

use std::time::Duration;

use api_service::{ApiConfig, ApiServiceError};
use bus::{Consumer, DynBus};
use common::shutdown::{CancellationToken, Shutdown};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use store::DataStore;
use store::testing::TestDatabase;
use tokio::task::JoinHandle;

/// A running API with its database and bus.
pub struct Harness {
    pub base: String,
    pub grpc_url: String,
    pub store: DataStore,
    pub bus: DynBus,
    token: CancellationToken,
    server: Option<JoinHandle<Result<(), ApiServiceError>>>,
    db: Option<TestDatabase>,
    client: reqwest::Client,
}

/// A response: status, headers, raw body.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `faultstring` of Ironic's double-encoded error body (asserting its shape).
    pub fn fault(&self) -> String {
        let outer = self.json();
        let inner: Value =
            serde_json::from_str(outer["error_message"].as_str().expect("error_message string"))
                .expect("error_message holds JSON");
        let code = inner["faultcode"].as_str().unwrap();
        assert_eq!(code, if self.status.is_server_error() { "Server" } else { "Client" });
        assert!(inner.get("debuginfo").is_some());
        inner["faultstring"].as_str().unwrap().to_owned()
    }
}

impl Harness {
    pub async fn sqlite() -> Harness {
        Self::sqlite_with(ApiConfig::default()).await
    }

    pub async fn sqlite_with(cfg: ApiConfig) -> Harness {
        let db = TestDatabase::sqlite().await;
        let bus = bus::connect(None).await.unwrap();
        Self::start(db, bus, cfg).await
    }

    /// PostgreSQL + RabbitMQ, or `None` when either is absent (and not required).
    pub async fn postgres() -> Option<Harness> {
        Self::postgres_with(ApiConfig::default()).await
    }

    /// [`Harness::postgres`] with `cfg`.
    pub async fn postgres_with(cfg: ApiConfig) -> Option<Harness> {
        let db = TestDatabase::postgres().await?;
        let bus = bus::testing::rabbit(&bus::testing::unique("ferric_test")).await?;
        Some(Self::start(db, bus, cfg).await)
    }

    pub async fn start(db: TestDatabase, bus: DynBus, cfg: ApiConfig) -> Harness {
        let store = db.store().clone();
        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", rest.local_addr().unwrap());
        let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
        let token = CancellationToken::new();
        let (shutdown, ready) = Shutdown::new(token.clone(), Duration::from_secs(10)).service();
        let server =
            tokio::spawn(api_service::run(cfg, rest, grpc, store.clone(), bus.clone(), shutdown));
        ready.wait().await.unwrap();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Harness { base, grpc_url, store, bus, token, server: Some(server), db: Some(db), client }
    }

    /// Send a request with an optional microversion and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        version: Option<&str>,
        body: Option<&str>,
    ) -> Resp {
        let mut rb = self.client.request(method, format!("{}{path}", self.base));
        if let Some(v) = version {
            rb = rb.header("X-OpenStack-Ironic-API-Version", v);
        }
        if let Some(b) = body {
            rb = rb.header("Content-Type", "application/json").body(b.to_owned());
        }
        let r = rb.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap();
        Resp { status, headers, body }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, Some("1.115"), None).await
    }

    pub async fn send(&self, method: Method, path: &str, body: Value) -> Resp {
        self.call(method, path, Some("1.115"), Some(&body.to_string())).await
    }

    /// Create a node and return its JSON.
    pub async fn create_node(&self, body: Value) -> Value {
        let r = self.send(Method::POST, "/v1/nodes", body).await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()
    }

    /// The database URL.
    pub fn db_url(&self) -> &str {
        self.db.as_ref().map(TestDatabase::url).unwrap_or_default()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Stop the server and drop the database.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(s) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(15), s)
                .await
                .expect("server stops")
                .unwrap()
                .unwrap();
        }
        if let Some(db) = self.db.take() {
            db.cleanup().await;
        }
    }
}

/// Wait (with a deadline) for an event on `consumer` matching `pred`.
pub async fn expect_event(
    consumer: &mut Consumer,
    pred: impl Fn(&proto::events::Event) -> bool,
) -> proto::events::Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let d = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .expect("event arrives before the deadline")
            .expect("subscription open");
        let ev = bus::decode_event(&d).unwrap();
        if pred(&ev) {
            return ev;
        }
    }
}

/// Generate a SQLite and a PostgreSQL+RabbitMQ test from one scenario `async fn(&Harness)`.
#[macro_export]
macro_rules! both_backends {
    ($scenario:path, $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let h = $crate::harness::Harness::sqlite().await;
            $scenario(&h).await;
            h.stop().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let Some(h) = $crate::harness::Harness::postgres().await else { return };
            $scenario(&h).await;
            h.stop().await;
        }
    };
}
