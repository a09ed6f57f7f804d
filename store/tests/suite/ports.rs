use deploy::{PortId, PublicError};
use store::testing::TestDatabase;
use store::{PortListQuery, SortDir};

use super::{insert, mac, node, port};

pub async fn test_port_crud(db: &TestDatabase) {
    let store = db.store();
    let n = insert(store, &node(None)).await;
    let other = insert(store, &node(None)).await;
    let p = port(n.uuid, "52:54:00:12:34:56");
    let stored = store.port_insert(&p).await.unwrap();
    assert_eq!(stored, p, "every field round-trips");
    assert_eq!(store.port_fetch(p.uuid).await.unwrap(), p);
    assert_eq!(store.port_fetch_by_address(mac("52:54:00:12:34:56")).await.unwrap(), p);

    let mut changed = p.clone();
    changed.address = mac("52:54:00:65:43:21");
    changed.node_uuid = other.uuid;
    changed.pxe_enabled = false;
    changed.physical_network = None;
    changed.extra.insert("x".into(), 1.into());
    let updated = store.port_update(&changed).await.unwrap();
    assert!(updated.updated_at.is_some());
    assert_eq!(updated.address, changed.address);
    assert_eq!(updated.node_uuid, other.uuid);
    assert!(!updated.pxe_enabled);
    assert_eq!(updated.extra, changed.extra);
    assert_eq!(store.port_fetch(p.uuid).await.unwrap(), updated);
    assert!(matches!(
        store.port_fetch_by_address(mac("52:54:00:12:34:56")).await,
        Err(PublicError::NotFound { kind: "Port", .. })
    ));

    // A port must belong to an existing node.
    let orphan = port(deploy::NodeId::new_v4(), "52:54:00:00:00:77");
    assert_eq!(
        store.port_insert(&orphan).await.unwrap_err(),
        PublicError::not_found("Node", orphan.node_uuid)
    );
    let mut moved = updated.clone();
    moved.node_uuid = deploy::NodeId::new_v4();
    assert!(matches!(
        store.port_update(&moved).await,
        Err(PublicError::NotFound { kind: "Node", .. })
    ));

    store.port_delete(p.uuid).await.unwrap();
    assert!(matches!(store.port_fetch(p.uuid).await, Err(PublicError::NotFound { .. })));
    assert!(matches!(store.port_delete(p.uuid).await, Err(PublicError::NotFound { .. })));
    let ghost = port(n.uuid, "52:54:00:00:00:78");
    assert!(matches!(
        store.port_update(&ghost).await,
        Err(PublicError::NotFound { kind: "Port", .. })
    ));
}

pub async fn test_port_mac_is_unique_case_insensitively(db: &TestDatabase) {
    let store = db.store();
    let n = insert(store, &node(None)).await;
    store.port_insert(&port(n.uuid, "52:54:00:AB:CD:EF")).await.unwrap();
    let e = store.port_insert(&port(n.uuid, "52-54-00-ab-cd-ef")).await.unwrap_err();
    assert_eq!(
        e,
        PublicError::AlreadyExists {
            message: "A port with MAC address 52:54:00:ab:cd:ef already exists.".into()
        }
    );
    let mut dup_uuid = port(n.uuid, "52:54:00:00:00:01");
    dup_uuid.uuid = store.port_fetch_by_address(mac("52:54:00:ab:cd:ef")).await.unwrap().uuid;
    assert!(matches!(
        store.port_insert(&dup_uuid).await,
        Err(PublicError::AlreadyExists { message }) if message.contains("UUID")
    ));

    // Bypassing the normalising type: the database itself refuses an upper-case duplicate.
    let raw = "INSERT INTO ports (uuid, address, node_uuid, created_at) VALUES ($1, $2, $3, $4)";
    let id = uuid::Uuid::new_v4();
    let upper = "52:54:00:AB:CD:EF";
    let res = if db.sqlite_path().is_some() {
        let pool = sqlx::SqlitePool::connect(db.url()).await.unwrap();
        let r = sqlx::query(raw)
            .bind(id.hyphenated())
            .bind(upper)
            .bind(n.uuid.as_uuid().hyphenated())
            .bind(chrono::Utc::now())
            .execute(&pool)
            .await;
        pool.close().await;
        r.map(|_| ())
    } else {
        let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
        let r = sqlx::query(raw)
            .bind(id)
            .bind(upper)
            .bind(n.uuid.as_uuid())
            .bind(chrono::Utc::now())
            .execute(&pool)
            .await;
        pool.close().await;
        r.map(|_| ())
    };
    let err = res.unwrap_err();
    assert!(err.as_database_error().is_some_and(|d| d.is_unique_violation()), "{err}");
    assert_eq!(store.port_list(&PortListQuery::default()).await.unwrap().len(), 1);
}

pub async fn test_port_list_filters_and_pages(db: &TestDatabase) {
    let store = db.store();
    let a = insert(store, &node(None)).await;
    let b = insert(store, &node(None)).await;
    let mut all = Vec::new();
    for i in 0..7u8 {
        let owner = if i % 2 == 0 { a.uuid } else { b.uuid };
        all.push(
            store.port_insert(&port(owner, &format!("52:54:00:00:01:{i:02x}"))).await.unwrap().uuid,
        );
    }
    let ids = |v: Vec<deploy::Port>| v.into_iter().map(|p| p.uuid).collect::<Vec<PortId>>();

    assert_eq!(ids(store.port_list(&PortListQuery::default()).await.unwrap()), all);
    let of_a: Vec<PortId> = all.iter().copied().step_by(2).collect();
    assert_eq!(
        ids(store
            .port_list(&PortListQuery { node: Some(a.uuid), ..Default::default() })
            .await
            .unwrap()),
        of_a
    );
    assert_eq!(
        ids(store
            .port_list(&PortListQuery {
                address: Some(mac("52:54:00:00:01:03")),
                ..Default::default()
            })
            .await
            .unwrap()),
        vec![all[3]]
    );

    for dir in [SortDir::Asc, SortDir::Desc] {
        let mut want = all.clone();
        if dir == SortDir::Desc {
            want.reverse();
        }
        let mut got = Vec::new();
        let mut marker = None;
        loop {
            let page = store
                .port_list(&PortListQuery { limit: 3, marker, sort_dir: dir, ..Default::default() })
                .await
                .unwrap();
            let n = page.len();
            marker = page.last().map(|p| p.uuid);
            got.extend(ids(page));
            if n < 3 {
                break;
            }
        }
        assert_eq!(got, want, "{dir}");
    }
    assert!(matches!(
        store.port_list(&PortListQuery { limit: 0, ..Default::default() }).await,
        Err(PublicError::InvalidRequest { .. })
    ));
    assert!(matches!(
        store
            .port_list(&PortListQuery { marker: Some(PortId::new_v4()), ..Default::default() })
            .await,
        Err(PublicError::NotFound { kind: "Port", .. })
    ));
}
