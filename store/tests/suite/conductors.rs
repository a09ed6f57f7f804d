use chrono::{Duration, Utc};
use deploy::{Conductor, PublicError};
use store::testing::TestDatabase;

fn conductor(hostname: &str) -> Conductor {
    Conductor {
        hostname: hostname.into(),
        conductor_group: "g1".into(),
        drivers: vec!["fake-hardware".into(), "ipmi".into()],
        online: false,
        last_heartbeat: Utc::now() - Duration::days(1),
        created_at: Utc::now() - Duration::days(1),
    }
}

pub async fn test_conductor_register_heartbeat_unregister(db: &TestDatabase) {
    let store = db.store();
    let before = Utc::now() - Duration::seconds(1);
    let c = store.conductor_register(&conductor("cond-a")).await.unwrap();
    assert!(c.online, "registering marks it online");
    assert!(c.last_heartbeat >= before, "heartbeat is the store's now, not the caller's");
    assert_eq!(c.drivers, vec!["fake-hardware", "ipmi"]);
    assert_eq!(store.conductor_fetch("cond-a").await.unwrap(), c);

    store.conductor_unregister("cond-a").await.unwrap();
    assert!(!store.conductor_fetch("cond-a").await.unwrap().online);
    store.conductor_heartbeat("cond-a").await.unwrap();
    let beat = store.conductor_fetch("cond-a").await.unwrap();
    assert!(beat.online && beat.last_heartbeat >= c.last_heartbeat);

    // Re-registering updates group and drivers but keeps created_at.
    let mut again = conductor("cond-a");
    again.conductor_group = "g2".into();
    again.drivers = vec!["redfish".into()];
    let re = store.conductor_register(&again).await.unwrap();
    assert_eq!(re.created_at, c.created_at);
    assert_eq!(re.conductor_group, "g2");
    assert_eq!(re.drivers, vec!["redfish"]);

    store.conductor_register(&conductor("cond-b")).await.unwrap();
    let names: Vec<String> =
        store.conductor_list().await.unwrap().into_iter().map(|c| c.hostname).collect();
    assert_eq!(names, ["cond-a", "cond-b"]);

    for res in [
        store.conductor_heartbeat("nope").await,
        store.conductor_unregister("nope").await,
        store.conductor_fetch("nope").await.map(|_| ()),
    ] {
        assert_eq!(res.unwrap_err(), PublicError::not_found("Conductor", "nope"));
    }
    assert!(matches!(
        store.conductor_register(&conductor("")).await,
        Err(PublicError::InvalidRequest { .. })
    ));
}

pub async fn test_conductor_list_stale(db: &TestDatabase) {
    let store = db.store();
    store.conductor_register(&conductor("cond-a")).await.unwrap();
    store.conductor_register(&conductor("cond-b")).await.unwrap();
    let cutoff = store.conductor_fetch("cond-b").await.unwrap().last_heartbeat;
    assert!(store.conductor_list_stale(cutoff - Duration::seconds(60)).await.unwrap().is_empty());

    let stale: Vec<String> = store
        .conductor_list_stale(Utc::now() + Duration::seconds(60))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.hostname)
        .collect();
    assert_eq!(stale, ["cond-a", "cond-b"]);

    // A heartbeat after the cutoff takes a conductor off the stale list.
    let mid = Utc::now() + Duration::milliseconds(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        store.conductor_heartbeat("cond-b").await.unwrap();
        if store.conductor_fetch("cond-b").await.unwrap().last_heartbeat > mid {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "clock did not advance");
        tokio::task::yield_now().await;
    }
    let stale: Vec<String> =
        store.conductor_list_stale(mid).await.unwrap().into_iter().map(|c| c.hostname).collect();
    assert_eq!(stale, ["cond-a"]);
}
