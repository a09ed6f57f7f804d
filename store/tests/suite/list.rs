use deploy::{Node, NodeId, PowerState, ProvisionState, PublicError};
use store::testing::TestDatabase;
use store::{NodeListQuery, NodeSortKey, SortDir};

use super::{insert, node, t};

fn uuids(nodes: &[Node]) -> Vec<NodeId> {
    nodes.iter().map(|n| n.uuid).collect()
}

pub async fn test_node_list_filters(db: &TestDatabase) {
    let store = db.store();
    let mut a = node(Some("a"));
    a.provision_state = ProvisionState::Available;
    a.driver = "ipmi".into();
    a.owner = Some("p1".into());
    a.conductor = Some("c1".into());
    a.resource_class = Some("gold".into());
    let mut b = node(Some("b"));
    b.provision_state = ProvisionState::Active;
    b.maintenance = true;
    b.lessee = Some("p2".into());
    b.instance_uuid = Some("inst-b".into());
    b.conductor = Some("c2".into());
    let mut c = node(Some("c"));
    c.provision_state = ProvisionState::Manageable;
    c.driver = "ipmi".into();
    c.owner = Some("p1".into());
    c.resource_class = Some("silver".into());
    let (a, b, c) = (insert(store, &a).await, insert(store, &b).await, insert(store, &c).await);
    store.node_reserve(c.uuid, "c9").await.unwrap();

    let cases: Vec<(NodeListQuery, Vec<NodeId>)> = vec![
        (NodeListQuery::default(), vec![a.uuid, b.uuid, c.uuid]),
        (
            NodeListQuery { provision_state: Some(ProvisionState::Active), ..Default::default() },
            vec![b.uuid],
        ),
        (
            NodeListQuery {
                provision_states: vec![ProvisionState::Available, ProvisionState::Manageable],
                ..Default::default()
            },
            vec![a.uuid, c.uuid],
        ),
        (
            NodeListQuery {
                provision_state: Some(ProvisionState::Available),
                provision_states: vec![ProvisionState::Manageable],
                ..Default::default()
            },
            vec![],
        ),
        (NodeListQuery { maintenance: Some(true), ..Default::default() }, vec![b.uuid]),
        (NodeListQuery { maintenance: Some(false), ..Default::default() }, vec![a.uuid, c.uuid]),
        (NodeListQuery { driver: Some("ipmi".into()), ..Default::default() }, vec![a.uuid, c.uuid]),
        (NodeListQuery { resource_class: Some("gold".into()), ..Default::default() }, vec![a.uuid]),
        (NodeListQuery { owner: Some("p1".into()), ..Default::default() }, vec![a.uuid, c.uuid]),
        (NodeListQuery { lessee: Some("p2".into()), ..Default::default() }, vec![b.uuid]),
        (NodeListQuery { conductor: Some("c2".into()), ..Default::default() }, vec![b.uuid]),
        (
            NodeListQuery { instance_uuid: Some("inst-b".into()), ..Default::default() },
            vec![b.uuid],
        ),
        (NodeListQuery { associated: Some(true), ..Default::default() }, vec![b.uuid]),
        (NodeListQuery { associated: Some(false), ..Default::default() }, vec![a.uuid, c.uuid]),
        (NodeListQuery { reserved: Some(true), ..Default::default() }, vec![c.uuid]),
        (NodeListQuery { reserved: Some(false), ..Default::default() }, vec![a.uuid, b.uuid]),
        (
            NodeListQuery {
                driver: Some("ipmi".into()),
                owner: Some("p1".into()),
                reserved: Some(false),
                ..Default::default()
            },
            vec![a.uuid],
        ),
        (NodeListQuery { driver: Some("nope".into()), ..Default::default() }, vec![]),
        // A filter value is a value, never SQL.
        (NodeListQuery { owner: Some("p1' OR '1'='1".into()), ..Default::default() }, vec![]),
        // A project's view: what it owns or leases.
        (NodeListQuery { project: Some("p1".into()), ..Default::default() }, vec![a.uuid, c.uuid]),
        (NodeListQuery { project: Some("p2".into()), ..Default::default() }, vec![b.uuid]),
        (NodeListQuery { project: Some("p3".into()), ..Default::default() }, vec![]),
        (
            NodeListQuery {
                project: Some("p1".into()),
                driver: Some("ipmi".into()),
                resource_class: Some("gold".into()),
                ..Default::default()
            },
            vec![a.uuid],
        ),
    ];
    for (q, want) in cases {
        let got = store.node_list(&q).await.unwrap();
        assert_eq!(uuids(&got), want, "{q:?}");
    }
    // Ports follow their node's owner or lessee.
    let mac = |i: u8| format!("52:54:00:00:01:{i:02x}").parse().unwrap();
    for (i, n) in [&a, &b, &c].into_iter().enumerate() {
        let i = u8::try_from(i).unwrap();
        store.port_insert(&deploy::Port::new(n.uuid, mac(i), chrono::Utc::now())).await.unwrap();
    }
    for (project, want) in [("p1", vec![a.uuid, c.uuid]), ("p2", vec![b.uuid]), ("p3", vec![])] {
        let q = store::PortListQuery { project: Some(project.into()), ..Default::default() };
        let got: Vec<NodeId> =
            store.port_list(&q).await.unwrap().iter().map(|p| p.node_uuid).collect();
        assert_eq!(got, want, "ports of {project}");
    }
}

/// The sort value of `n` for `key` as a string that sorts like the column (None = NULL).
fn sort_value(n: &Node, key: NodeSortKey) -> Option<String> {
    let ts = |t: chrono::DateTime<chrono::Utc>| t.format("%Y%m%d%H%M%S%6f").to_string();
    match key {
        NodeSortKey::Id => None,
        NodeSortKey::Uuid => Some(n.uuid.to_string()),
        NodeSortKey::Name => n.name.clone(),
        NodeSortKey::CreatedAt => Some(ts(n.created_at)),
        NodeSortKey::UpdatedAt => n.updated_at.map(ts),
        NodeSortKey::ProvisionState => Some(n.provision_state.as_str().to_owned()),
        NodeSortKey::ProvisionUpdatedAt => n.provision_updated_at.map(ts),
        NodeSortKey::Driver => Some(n.driver.clone()),
        NodeSortKey::PowerState => n.power_state.map(|p| p.as_str().to_owned()),
    }
}

pub async fn test_node_list_pages_through_every_sort_key(db: &TestDatabase) {
    let store = db.store();
    let states = [
        ProvisionState::Available,
        ProvisionState::Active,
        ProvisionState::Enroll,
        ProvisionState::Manageable,
    ];
    let powers = [None, Some(PowerState::On), Some(PowerState::Off), Some(PowerState::Error)];
    let drivers = ["ipmi", "redfish", "fake-hardware"];
    let mut inserted = Vec::new();
    for i in 0..23i64 {
        let name = format!("node{:02}", (i * 7) % 23);
        let mut n = node(if i % 4 == 0 { None } else { Some(&name) });
        n.created_at = t((i * 5) % 7); // many ties
        n.updated_at = if i % 3 == 0 { None } else { Some(t(i % 5)) };
        n.provision_updated_at = if i % 2 == 0 { None } else { Some(t(100 - i)) };
        n.provision_state = states[(i % 4) as usize];
        n.power_state = powers[(i % 4) as usize];
        n.driver = drivers[(i % 3) as usize].into();
        inserted.push(insert(store, &n).await);
    }

    for key in NodeSortKey::ALL {
        // Insertion order breaks ties; NULLs first ascending. Descending is the exact reverse.
        let mut want: Vec<(Option<String>, usize)> =
            inserted.iter().enumerate().map(|(i, n)| (sort_value(n, key), i)).collect();
        want.sort();
        let mut want: Vec<NodeId> = want.into_iter().map(|(_, i)| inserted[i].uuid).collect();
        for dir in [SortDir::Asc, SortDir::Desc] {
            if dir == SortDir::Desc {
                want.reverse();
            }
            for limit in [1u32, 4, 23, 1000] {
                let mut got = Vec::new();
                let mut marker = None;
                loop {
                    let q = NodeListQuery {
                        limit,
                        marker,
                        sort_key: key,
                        sort_dir: dir,
                        ..Default::default()
                    };
                    let page = store.node_list(&q).await.unwrap();
                    assert!(page.len() <= limit as usize);
                    got.extend(uuids(&page));
                    if page.len() < limit as usize {
                        break;
                    }
                    marker = page.last().map(|n| n.uuid);
                    assert!(got.len() <= inserted.len(), "{key} {dir} {limit}: pages repeat");
                }
                assert_eq!(got, want, "sort {key} {dir}, limit {limit}");
            }
        }
    }

    // A filtered walk keeps the filter on every page.
    let q = NodeListQuery {
        driver: Some("ipmi".into()),
        limit: 2,
        sort_key: NodeSortKey::Name,
        ..Default::default()
    };
    let first = store.node_list(&q).await.unwrap();
    let second = store
        .node_list(&NodeListQuery { marker: first.last().map(|n| n.uuid), ..q.clone() })
        .await
        .unwrap();
    assert!(first.iter().chain(&second).all(|n| n.driver == "ipmi"));
    assert_eq!(first.len() + second.len(), 4);
}

pub async fn test_node_list_rejects_bad_limit_and_unknown_marker(db: &TestDatabase) {
    let store = db.store();
    insert(store, &node(None)).await;
    for limit in [0, 1001, u32::MAX] {
        let e = store.node_list(&NodeListQuery { limit, ..Default::default() }).await.unwrap_err();
        assert!(matches!(e, PublicError::InvalidRequest { .. }), "{limit}: {e:?}");
    }
    assert_eq!(
        store.node_list(&NodeListQuery { limit: 1000, ..Default::default() }).await.unwrap().len(),
        1
    );
    let missing = NodeId::new_v4();
    let e = store
        .node_list(&NodeListQuery { marker: Some(missing), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e, PublicError::not_found("Node", missing));
    assert_eq!("name".parse::<NodeSortKey>().unwrap(), NodeSortKey::Name);
    assert!(matches!(
        "reservation".parse::<NodeSortKey>(),
        Err(PublicError::InvalidRequest { .. })
    ));
    assert!(matches!("up".parse::<SortDir>(), Err(PublicError::InvalidRequest { .. })));
}

pub async fn test_node_list_is_served_by_an_index(db: &TestDatabase) {
    let store = db.store();
    let marker = insert(store, &node(Some("m"))).await.uuid;
    let mut queries = Vec::new();
    for key in NodeSortKey::ALL {
        for dir in [SortDir::Asc, SortDir::Desc] {
            for marker in [None, Some(marker)] {
                queries.push(NodeListQuery {
                    sort_key: key,
                    sort_dir: dir,
                    marker,
                    ..Default::default()
                });
            }
        }
    }
    queries.push(NodeListQuery {
        provision_state: Some(ProvisionState::Active),
        marker: Some(marker),
        ..Default::default()
    });
    queries.push(NodeListQuery { driver: Some("ipmi".into()), ..Default::default() });
    // The filters a large fleet is sliced by, first page and after a marker.
    for marker in [None, Some(marker)] {
        queries.push(NodeListQuery { owner: Some("p1".into()), marker, ..Default::default() });
        queries.push(NodeListQuery { lessee: Some("p1".into()), marker, ..Default::default() });
        queries.push(NodeListQuery {
            conductor_group: Some("g1".into()),
            marker,
            ..Default::default()
        });
        queries.push(NodeListQuery {
            resource_class: Some("large".into()),
            marker,
            ..Default::default()
        });
        queries.push(NodeListQuery { conductor: Some("c1".into()), marker, ..Default::default() });
        queries.push(NodeListQuery { shards: vec!["s1".into()], marker, ..Default::default() });
    }
    // Several states, as the conductors' periodic listings ask.
    for marker in [None, Some(marker)] {
        queries.push(NodeListQuery {
            provision_states: vec![
                ProvisionState::Deploying,
                ProvisionState::WaitCallBack,
                ProvisionState::Cleaning,
            ],
            marker,
            ..Default::default()
        });
    }
    for q in queries {
        let plan = store.node_list_explain(&q, true).await.unwrap();
        assert!(!plan.contains("Seq Scan"), "{q:?}\n{plan}");
        if q.provision_states.len() > 1 {
            assert!(!plan.contains("SCAN nodes"), "{q:?}\n{plan}");
            // One index range per state, merged in order. PostgreSQL merges the ranges
            // (Merge Append) without a sort; SQLite sorts each branch's page (at most a
            // page per state) before its merge, never the matches beyond.
            let lines: Vec<&str> = plan.lines().map(str::trim).collect();
            assert!(!plan.contains("Sort  ("), "{q:?}\n{plan}");
            if db.sqlite_path().is_none() {
                // The primary key with a filter would also avoid a sort, reading every
                // node after the marker; the merged ranges are what keep a page cheap.
                assert!(plan.contains("Merge Append"), "{q:?}\n{plan}");
            }
            for (i, line) in lines.iter().enumerate() {
                if line.contains("TEMP B-TREE") {
                    assert!(i > 0 && lines[i - 1].starts_with("SCAN s"), "{q:?}\n{plan}");
                }
            }
            continue;
        }
        // The order comes from an index walk: no sort step, so a page of 1000 out of any
        // number of nodes reads about 1000 index entries.
        assert!(!plan.contains("Sort") && !plan.contains("TEMP B-TREE"), "{q:?}\n{plan}");
    }
}

pub async fn test_node_heads_page_like_the_listing_and_fetch_many_reads_them_whole(
    db: &TestDatabase,
) {
    let store = db.store();
    let mut all = Vec::new();
    for i in 0..7 {
        let mut n = node(Some(&format!("h{i}")));
        n.driver = if i % 2 == 0 { "ipmi" } else { "redfish" }.into();
        n.conductor_group = if i < 4 { "" } else { "rack-b" }.into();
        n.provision_state =
            if i % 3 == 0 { ProvisionState::Active } else { ProvisionState::Available };
        all.push(insert(store, &n).await);
    }
    // The heads of a filtered listing, a page at a time, are the listing's nodes' keys.
    let q = NodeListQuery {
        provision_state: Some(ProvisionState::Available),
        limit: 2,
        ..Default::default()
    };
    let mut heads = Vec::new();
    let mut marker = None;
    loop {
        let page = store.node_heads(&NodeListQuery { marker, ..q.clone() }).await.unwrap();
        marker = page.last().map(|h| h.uuid);
        let short = page.len() < 2;
        heads.extend(page);
        if short {
            break;
        }
    }
    let listed = store.node_list(&NodeListQuery { limit: 1000, ..q.clone() }).await.unwrap();
    assert_eq!(heads.iter().map(|h| h.uuid).collect::<Vec<_>>(), uuids(&listed));
    // Several states (one index range each, merged): pages of both kinds keep insertion
    // order across the states, forwards and backwards, and a marker in one state resumes
    // the others too.
    for dir in [SortDir::Asc, SortDir::Desc] {
        let q = NodeListQuery {
            provision_states: vec![ProvisionState::Active, ProvisionState::Available],
            limit: 2,
            sort_dir: dir,
            ..Default::default()
        };
        let (mut by_heads, mut by_nodes) = (Vec::new(), Vec::new());
        let (mut head_marker, mut node_marker) = (None, None);
        loop {
            let h = store.node_heads(&NodeListQuery { marker: head_marker, ..q.clone() }).await;
            let n = store.node_list(&NodeListQuery { marker: node_marker, ..q.clone() }).await;
            let (h, n) = (h.unwrap(), n.unwrap());
            assert!(h.len() <= 2 && n.len() <= 2);
            head_marker = h.last().map(|h| h.uuid);
            node_marker = n.last().map(|n| n.uuid);
            let short = h.len() < 2;
            by_heads.extend(h.into_iter().map(|h| h.uuid));
            by_nodes.extend(uuids(&n));
            if short {
                break;
            }
        }
        let mut want = uuids(&all);
        if dir == SortDir::Desc {
            want.reverse();
        }
        assert_eq!(by_heads, want, "{dir:?}");
        assert_eq!(by_nodes, want, "{dir:?}");
    }
    for (h, n) in heads.iter().zip(&listed) {
        assert_eq!(
            (h.driver.as_str(), h.conductor_group.as_str()),
            (n.driver.as_str(), n.conductor_group.as_str())
        );
    }
    // Whole nodes by UUID, in insertion order whatever the order asked, unknown ones left out.
    let ids = vec![all[5].uuid, NodeId::new_v4(), all[1].uuid, all[3].uuid];
    let got = store.node_fetch_many(&ids).await.unwrap();
    assert_eq!(got, vec![all[1].clone(), all[3].clone(), all[5].clone()]);
    assert_eq!(store.node_fetch_many(&[]).await.unwrap(), Vec::<Node>::new());
    let too_many: Vec<NodeId> = (0..1001).map(|_| NodeId::new_v4()).collect();
    assert!(matches!(
        store.node_fetch_many(&too_many).await,
        Err(PublicError::InvalidRequest { .. })
    ));
}
