//! api-service and one conductor in-process on PostgreSQL + RabbitMQ, bound to 127.0.0.1:0,
//! for the tests that drive Ferric with a real client (shared by those test binaries).

use std::time::Duration;

use api_service::ApiConfig;
use bus::testing::{rabbit, unique};
use common::shutdown::{CancellationToken, Shutdown};
use conductor_service::testing::fast_config;
use store::testing::TestDatabase;

/// A running API + conductor.
pub struct Cluster {
    /// `http://127.0.0.1:PORT` of the REST API.
    pub endpoint: String,
    /// The conductor's hostname.
    #[allow(dead_code, reason = "not every test binary that shares this module reads it")]
    pub conductor: String,
    db: TestDatabase,
    token: CancellationToken,
    services: tokio::task::JoinSet<()>,
}

#[allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]
impl Cluster {
    /// Start on a fresh PostgreSQL database and RabbitMQ exchange named after `name`;
    /// `None` when either service is absent (and not required).
    pub async fn start(name: &str) -> Option<Cluster> {
        let db = TestDatabase::postgres().await?;
        let exchange = unique(&format!("ferric_{name}"));
        let bus = rabbit(&exchange).await?;
        let token = CancellationToken::new();
        let root = Shutdown::new(token.clone(), Duration::from_secs(10));
        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", rest.local_addr().unwrap());
        let mut services = tokio::task::JoinSet::new();
        let (shutdown, api_ready) = root.service();
        let store = db.store().clone();
        services.spawn(async move {
            api_service::run(ApiConfig::default(), rest, grpc, store, bus, shutdown).await.unwrap();
        });
        api_ready.wait().await.unwrap();
        let conductor = unique(&format!("{name}-conductor"));
        let cfg = fast_config(&conductor, &unique(&format!("conductor.{name}")));
        let store = store::DataStore::connect(db.url()).await.unwrap();
        let bus = rabbit(&exchange).await.unwrap();
        let (shutdown, conductor_ready) = root.service();
        services.spawn(async move {
            conductor_service::run(cfg, store, bus, shutdown).await.unwrap();
        });
        conductor_ready.wait().await.unwrap();
        Some(Cluster { endpoint, conductor, db, token, services })
    }

    /// Stop both services (each must end cleanly) and drop the database.
    pub async fn stop(mut self) {
        self.token.cancel();
        while let Some(stopped) =
            tokio::time::timeout(Duration::from_secs(30), self.services.join_next()).await.unwrap()
        {
            stopped.unwrap();
        }
        self.db.cleanup().await;
    }
}
