//! Cluster behaviour: any node serves any key.

use std::time::Duration;

use cdn_net::tls::{transport, SERVER_NAME};
use cdn_proto::Frame;

use crate::support::cluster;

#[tokio::test]
async fn any_node_answers_a_key_it_does_not_own() {
    let c = cluster(3, 1, |_| {}).await;
    let key = "/any-node?size=2000";
    let owner = c.edges[0].edge.upstream().owners(key)[0].id.clone();
    let other = c.nodes.iter().flatten().find(|n| n.id() != owner).unwrap();
    let t = transport(16, Duration::from_secs(5));
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(c.tls.quic_client(t).unwrap());
    let conn = ep
        .connect(other.quic_addr, SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let req = Frame::Request {
        id: 1,
        method: cdn_proto::Method::Get,
        path: key.into(),
        headers: vec![],
    };
    cdn_net::quic::send_frame(&mut send, &req).await.unwrap();
    send.finish().unwrap();
    let mut reader = cdn_net::quic::FrameReader::new(recv);
    // A miss is announced (`Pending`) before the head.
    let mut first = reader.next().await.unwrap();
    assert_eq!(first, Some(Frame::Pending));
    first = reader.next().await.unwrap();
    let Some(Frame::ResponseHead { status, node, .. }) = first else {
        panic!("no head")
    };
    assert_eq!(status, 200);
    assert_eq!(node, other.id(), "answered by the node asked, not an error");
    let body = cdn_net::quic::read_body(&mut reader, 1 << 20)
        .await
        .unwrap();
    let bytes: Vec<u8> = body.iter().flat_map(|b| b.iter().copied()).collect();
    assert!(bytes == origin_stub::expected_body(key, 2000));
    c.stop().await;
}

#[tokio::test]
async fn a_hung_owner_is_hedged_around() {
    let c = cluster(3, 1, |cfg| {
        cfg.replicas = 2;
        cfg.edge.hedge_after = Duration::from_millis(100);
    })
    .await;
    let edge = c.edges[0].http_addr;
    // Two keys with the same primary: one pushed (both owners hold it), one cold.
    let up = c.edges[0].edge.upstream();
    let primary_id = up.owners("/hedge/held")[0].id.clone();
    let cold = (0..)
        .map(|i| format!("/hedge/cold/{i}?size=1000"))
        .find(|k| up.owners(k)[0].id == primary_id)
        .unwrap();
    let held_owners = up.owners("/hedge/held");
    crate::support::push_object(&c, "/hedge/held", "held by both owners".into()).await;
    let primary = crate::support::node(&c, &primary_id);
    primary.node.set_stalled(true);
    // The hedge finds it at the second owner. Without hedging each GET would wait for the
    // node response timeout (35 s).
    let g = tokio::time::timeout(
        Duration::from_secs(5),
        crate::support::get(edge, "/hedge/held"),
    )
    .await
    .expect("the hedge answers");
    assert_eq!(g.body, "held by both owners");
    assert_eq!(
        g.header("x-cache"),
        format!("MISS, HIT from {}", held_owners[1].id)
    );
    // Cold: the hedge finds nothing stored (and starts no fill); a second later the second
    // owner is asked in full and fills it once.
    let g = tokio::time::timeout(Duration::from_secs(5), crate::support::get(edge, &cold))
        .await
        .expect("answered after the escalation");
    assert_eq!(g.status, http::StatusCode::OK);
    assert!(g.body == origin_stub::expected_body(&cold, 1000));
    assert!(
        g.header("x-cache").starts_with("MISS, MISS from"),
        "{}",
        g.header("x-cache")
    );
    assert_eq!(c.origin_count(&cold), 1);
    assert_eq!(up.hedges(), 2);
    primary.node.set_stalled(false);
    c.stop().await;
}

#[tokio::test]
async fn an_owner_that_keeps_losing_to_hedges_is_asked_last() {
    let c = cluster(3, 1, |cfg| {
        cfg.edge.hedge_after = Duration::from_millis(100)
    })
    .await;
    let up = c.edges[0].edge.upstream();
    // Five objects with the same primary, pushed so both owners hold them.
    let primary_id = up.owners("/eject/0")[0].id.clone();
    let keys: Vec<String> = (0..)
        .map(|i| format!("/eject/{i}"))
        .filter(|k| up.owners(k)[0].id == primary_id)
        .take(5)
        .collect();
    for k in &keys {
        crate::support::push_object(&c, k, format!("body of {k}")).await;
    }
    let primary = crate::support::node(&c, &primary_id);
    primary.node.set_stalled(true);
    for (i, k) in keys.iter().enumerate() {
        let g = crate::support::get(c.edges[0].http_addr, k).await;
        assert_eq!(g.body, format!("body of {k}"));
        let second = &up.owners(k)[1].id;
        assert_eq!(g.header("x-cache"), format!("MISS, HIT from {second}"));
        // Three hedges lost in a row eject the primary: later reads go to the second owner
        // first and need no hedge.
        assert_eq!(up.hedges(), (i as u64 + 1).min(3), "after GET {i}");
    }
    primary.node.set_stalled(false);
    c.stop().await;
}

#[tokio::test]
async fn a_fill_is_copied_to_the_other_owners() {
    let c = cluster(3, 1, |cfg| cfg.replicas = 2).await;
    let key = "/replicated?size=3000&cc=max-age%3D600";
    let owners = c.edges[0].edge.upstream().owners(key);
    let g = crate::support::get(c.edges[0].http_addr, key).await;
    assert!(g
        .header("x-cache")
        .ends_with(&format!("MISS from {}", owners[0].id)));
    let second = c
        .nodes
        .iter()
        .flatten()
        .find(|n| n.id() == owners[1].id)
        .unwrap();
    let held = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(e) = second.node.store().get(key).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the second owner receives a copy");
    let body: Vec<u8> = held.body().iter().flat_map(|b| b.iter().copied()).collect();
    assert!(body == origin_stub::expected_body(key, 3000));
    assert!(held.is_fresh(std::time::SystemTime::now()));
    assert_eq!(
        c.origin_count(key),
        1,
        "the copy came from the first owner, not the origin"
    );
    c.stop().await;
}

#[tokio::test]
async fn an_owner_dying_mid_response_costs_a_small_object_no_error() {
    let c = cluster(3, 1, |cfg| cfg.replicas = 2).await;
    let key = "/dies-mid-body?size=20000&cc=max-age%3D600";
    let owners = c.edges[0].edge.upstream().owners(key);
    // Fill it (the first owner copies it to the second), then drop the edge's own copy.
    crate::support::get(c.edges[0].http_addr, key).await;
    let second = c
        .nodes
        .iter()
        .flatten()
        .find(|n| n.id() == owners[1].id)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while second.node.store().get(key).await.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("replicated");
    c.edges[0].edge.l1().remove(key).await;
    let first = c
        .nodes
        .iter()
        .flatten()
        .find(|n| n.id() == owners[0].id)
        .unwrap();
    first.node.set_breaking(true);
    let g = crate::support::get(c.edges[0].http_addr, key).await;
    assert_eq!(g.status, http::StatusCode::OK);
    assert!(
        g.body == origin_stub::expected_body(key, 20000),
        "whole and exact"
    );
    assert_eq!(
        g.header("x-cache"),
        format!("MISS, HIT from {}", owners[1].id)
    );
    assert_eq!(c.origin_count(key), 1);
    first.node.set_breaking(false);
    c.stop().await;
}

#[tokio::test]
async fn seeds_may_be_dns_names() {
    let c = cluster(2, 1, |_| {}).await;
    let port = c.nodes[0].as_ref().unwrap().quic_addr.port();
    let mut cfg = edge::Config::default();
    cfg.member.id = "edge-dns".into();
    cfg.member.seeds = vec![format!("localhost:{port}")];
    cfg.member.origin = c.origin_url.clone();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.member.listen = http.local_addr().unwrap();
    cfg.member.admin = admin.local_addr().unwrap();
    let e = edge::start(
        cfg,
        &c.tls,
        http,
        admin,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), e.wait_for_members(2))
        .await
        .expect("the edge found both nodes through a name");
    let g = crate::support::get(e.http_addr, "/via-dns-seed?size=10").await;
    assert!(
        g.header("x-cache").contains("from node-"),
        "{}",
        g.header("x-cache")
    );
    e.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn status_shows_each_member_and_its_link_state() {
    let mut c = cluster(3, 1, |cfg| {
        cfg.edge.node_connect_timeout = Duration::from_millis(300)
    })
    .await;
    let status = |addr: std::net::SocketAddr| async move {
        let g = crate::support::get(addr, "/status").await;
        serde_json::from_slice::<serde_json::Value>(&g.body).unwrap()
    };
    let states = |v: &serde_json::Value| -> Vec<(String, String, String)> {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_string(),
                    m["state"].as_str().unwrap().to_string(),
                    m["link"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let all = |state: &str| -> Vec<(String, String, String)> {
        (0..3)
            .map(|j| (format!("node-{j}"), state.to_string(), "up".to_string()))
            .collect()
    };
    let edge = status(c.edges[0].admin_addr).await;
    assert_eq!(states(&edge), all("alive"));
    let node = status(c.nodes[0].as_ref().unwrap().admin_addr).await;
    assert_eq!(node["edges"], serde_json::json!(["edge-0"]));
    assert_eq!(states(&node), all("alive"), "{node}");
    // A node stopped gracefully has left, as seen from the edge and from a peer, as soon as
    // the stop returns: it told them before closing.
    c.stop_node(2).await;
    let gone = ("node-2".to_string(), "left".to_string(), "down".to_string());
    let until = |addr, want: (String, String, String)| async move {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let v = status(addr).await;
                if states(&v).contains(&want) {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{want:?} not reported by {addr}"))
    };
    until(c.edges[0].admin_addr, gone.clone()).await;
    until(c.nodes[0].as_ref().unwrap().admin_addr, gone).await;
    assert_eq!(c.edges[0].edge.upstream().members().len(), 2);
    c.stop().await;
}

#[tokio::test]
async fn keys_spread_evenly_and_a_node_added_under_load_takes_only_its_share() {
    let mut c = cluster(5, 1, |_| {}).await;
    let keys: Vec<String> = (0..100_000).map(|k| format!("/spread/{k}")).collect();
    let primaries = |c: &cdn_cluster::Cluster| -> Vec<String> {
        let up = c.edges[0].edge.upstream();
        keys.iter().map(|k| up.owners(k)[0].id.clone()).collect()
    };
    let before = primaries(&c);
    for j in 0..5 {
        let n = before
            .iter()
            .filter(|id| **id == format!("node-{j}"))
            .count();
        assert!(
            (19_000..=21_000).contains(&n),
            "node-{j} is primary for {n} of 100,000 keys, not 20,000 ± 5%"
        );
    }
    // A sixth node joins while a load runs through the edge.
    let load = tokio::spawn(loadgen::run(loadgen::Options {
        targets: vec![c.edges[0].http_addr],
        connections: 8,
        duration: Duration::from_secs(3),
        path: "/join/{key}?size=512&cc=max-age%3D600".into(),
        keys: 500,
        dist: loadgen::Dist::Uniform,
        rate: Some(500.0),
        seed: 3,
        ..Default::default()
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let six = c.add_node().await.unwrap();
    assert_eq!(six, 5);
    let after = primaries(&c);
    let moved: Vec<(&String, &String)> =
        before.iter().zip(&after).filter(|(b, a)| b != a).collect();
    let share = moved.len() as f64 / keys.len() as f64;
    assert!(
        (0.14..=0.20).contains(&share),
        "{:.1}% of keys moved, not 14-20%",
        share * 100.0
    );
    assert!(
        moved.iter().all(|(_, a)| *a == "node-5"),
        "keys moved only to the new node, never between old ones"
    );
    let report = load.await.unwrap().unwrap();
    assert_eq!(report.errors, 0, "no request failed while a node joined");
    // The new node serves its share: fresh keys land on it.
    let status = crate::support::get(c.nodes[5].as_ref().unwrap().admin_addr, "/status").await;
    let before_fetches = serde_json::from_slice::<serde_json::Value>(&status.body).unwrap()
        ["origin_fetches"]
        .as_u64()
        .unwrap();
    for k in 0..300 {
        crate::support::get(c.edges[0].http_addr, &format!("/fresh/{k}?size=16")).await;
    }
    let status = crate::support::get(c.nodes[5].as_ref().unwrap().admin_addr, "/status").await;
    let fetched = serde_json::from_slice::<serde_json::Value>(&status.body).unwrap()
        ["origin_fetches"]
        .as_u64()
        .unwrap()
        - before_fetches;
    assert!(
        (25..=75).contains(&fetched),
        "the new node filled {fetched} of 300 fresh keys, not about a sixth"
    );
    c.stop().await;
}

#[tokio::test]
async fn a_cold_object_reaches_the_origin_once_across_a_region_and_its_parent() {
    let c = cluster(4, 2, |cfg| {
        cfg.node_regions = vec![
            ("eu".into(), None),
            ("eu".into(), None),
            ("us".into(), Some("eu".into())),
            ("us".into(), Some("eu".into())),
        ];
        cfg.edge_regions = vec!["eu".into(), "us".into()];
    })
    .await;
    let (eu, us) = (c.edges[0].http_addr, c.edges[1].http_addr);
    // Each edge places keys over its own region's nodes.
    let key = "/regional/a?size=3000";
    for (i, region) in [(0, "eu"), (1, "us")] {
        let owners = c.edges[i].edge.upstream().owners(key);
        assert_eq!(owners.len(), 2);
        assert!(owners.iter().all(|m| m.region == region), "{owners:?}");
    }
    // Asked in the child region first: its owner asks the parent region, which fills once.
    let got = crate::support::get(us, key).await;
    assert_eq!(got.body, origin_stub::expected_body(key, 3000));
    let got = crate::support::get(eu, key).await;
    assert_eq!(got.body, origin_stub::expected_body(key, 3000));
    assert_eq!(
        c.origin_count(key),
        1,
        "one origin request for both regions"
    );
    let parent_fetches: u64 = c
        .nodes
        .iter()
        .flatten()
        .map(|n| n.node.counters().get(cache_node::Counter::ParentFetches))
        .sum();
    assert_eq!(
        parent_fetches, 1,
        "the us owner asked the parent region once"
    );
    // Both regions at once: still one origin request (the parent coalesces).
    let key = "/regional/b?size=3000&latency_ms=100";
    let (a, b) = tokio::join!(crate::support::get(us, key), crate::support::get(eu, key));
    assert_eq!(a.body, origin_stub::expected_body(key, 3000));
    assert_eq!(b.body, origin_stub::expected_body(key, 3000));
    assert_eq!(c.origin_count(key), 1);
    // A purge accepted in the child region reaches the parent's nodes and edges too.
    let (status, report) = crate::support::admin_purge(
        c.edges[1].admin_addr,
        serde_json::json!({"urls": ["/regional/a?size=3000"]}),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK, "{report}");
    assert!(
        crate::support::ids(&report, "missing").is_empty(),
        "{report}"
    );
    let got = crate::support::get(eu, "/regional/a?size=3000").await;
    assert_eq!(got.edge_cache(), "MISS");
    assert_eq!(c.origin_count("/regional/a?size=3000"), 2);
    c.stop().await;
}
