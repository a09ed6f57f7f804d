use chrono::{Duration, SubsecRound, Utc};
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
    // The caller's clock, not the database's: a simulated clock may be hours ahead.
    let at = Utc::now() + Duration::hours(3);
    let c = store.conductor_register(&conductor("cond-a"), at).await.unwrap();
    assert!(c.online, "registering marks it online");
    assert_eq!(c.last_heartbeat, at.trunc_subsecs(6), "heartbeat is the caller's time");
    assert_eq!(c.created_at, c.last_heartbeat);
    assert_eq!(c.drivers, vec!["fake-hardware", "ipmi"]);
    assert_eq!(store.conductor_fetch("cond-a").await.unwrap(), c);

    store.conductor_unregister("cond-a").await.unwrap();
    assert!(!store.conductor_fetch("cond-a").await.unwrap().online);
    let later = at + Duration::seconds(10);
    store.conductor_heartbeat("cond-a", later).await.unwrap();
    let beat = store.conductor_fetch("cond-a").await.unwrap();
    assert!(beat.online && beat.last_heartbeat == later.trunc_subsecs(6));

    // Re-registering updates group and drivers but keeps created_at.
    let mut again = conductor("cond-a");
    again.conductor_group = "g2".into();
    again.drivers = vec!["redfish".into()];
    let re = store.conductor_register(&again, later).await.unwrap();
    assert_eq!(re.created_at, c.created_at);
    assert_eq!(re.conductor_group, "g2");
    assert_eq!(re.drivers, vec!["redfish"]);

    store.conductor_register(&conductor("cond-b"), Utc::now()).await.unwrap();
    let names: Vec<String> =
        store.conductor_list().await.unwrap().into_iter().map(|c| c.hostname).collect();
    assert_eq!(names, ["cond-a", "cond-b"]);

    for res in [
        store.conductor_heartbeat("nope", Utc::now()).await,
        store.conductor_unregister("nope").await,
        store.conductor_fetch("nope").await.map(|_| ()),
    ] {
        assert_eq!(res.unwrap_err(), PublicError::not_found("Conductor", "nope"));
    }
    assert!(matches!(
        store.conductor_register(&conductor(""), Utc::now()).await,
        Err(PublicError::InvalidRequest { .. })
    ));
}

pub async fn test_conductor_list_stale(db: &TestDatabase) {
    let store = db.store();
    // Times come from the caller's clock, so the test picks them.
    let t0 = Utc::now().trunc_subsecs(6);
    store.conductor_register(&conductor("cond-a"), t0).await.unwrap();
    store.conductor_register(&conductor("cond-b"), t0).await.unwrap();
    assert!(store.conductor_list_stale(t0).await.unwrap().is_empty(), "strictly older only");

    let stale: Vec<String> = store
        .conductor_list_stale(t0 + Duration::seconds(60))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.hostname)
        .collect();
    assert_eq!(stale, ["cond-a", "cond-b"]);

    // A heartbeat after the cutoff takes a conductor off the stale list.
    let mid = t0 + Duration::seconds(30);
    store.conductor_heartbeat("cond-b", t0 + Duration::seconds(31)).await.unwrap();
    let stale: Vec<String> =
        store.conductor_list_stale(mid).await.unwrap().into_iter().map(|c| c.hostname).collect();
    assert_eq!(stale, ["cond-a"]);
}
