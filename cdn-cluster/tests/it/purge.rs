//! Purge fan-out: accepted anywhere, applied at every node and edge, acknowledged.

use std::time::Duration;

use futures::future::join_all;
use http::{Method, StatusCode};
use serde_json::json;

use crate::support::{
    admin_purge, admin_purge_with, cluster, everyone, expected_gen, get, ids, request,
};

/// Warms `target` into every edge's L1 (and its owner node): the second GET at each edge hits.
async fn warm(c: &cdn_cluster::Cluster, target: &str) {
    for e in &c.edges {
        get(e.http_addr, target).await;
        assert_eq!(
            get(e.http_addr, target).await.edge_cache(),
            "HIT",
            "{target} warm at {}",
            e.http_addr
        );
    }
}

fn republish(c: &cdn_cluster::Cluster) -> u64 {
    c.stub.as_ref().expect("stub").stats.bump_generation()
}

#[tokio::test]
async fn after_a_hard_purge_no_edge_serves_the_old_body() {
    let c = cluster(3, 2, |_| {}).await;
    let target = "/p/hard?size=4000&cc=max-age=600";
    warm(&c, target).await;
    let generation = republish(&c);
    // Accepted by a node that may not even own the key.
    let admin = c.nodes[2].as_ref().unwrap().admin_addr;
    let (status, report) = admin_purge(admin, json!({"urls": [target]})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(ids(&report, "acked"), everyone(3, 2), "{report}");
    assert!(ids(&report, "missing").is_empty(), "{report}");
    assert!(report["elapsed_ms"].as_u64().is_some());
    let new = expected_gen(target, generation, 4000);
    let addrs: Vec<_> = c.edges.iter().map(|e| e.http_addr).collect();
    let gets = (0..1000).map(|i| get(addrs[i % 2], target));
    let old = join_all(gets)
        .await
        .iter()
        .filter(|g| g.body != new)
        .count();
    assert_eq!(
        old, 0,
        "responses with the old body after the purge was acknowledged"
    );
    assert_eq!(
        c.origin_count(target),
        2,
        "one refetch for the whole cluster"
    );
    c.stop().await;
}

#[tokio::test]
async fn purge_method_on_an_edge_needs_the_token_and_soft_purge_refetches() {
    // Without grace a soft-purged entry is refetched at once (with grace it is served stale
    // while one background request refreshes it: see `semantics`).
    let c = cluster(3, 2, |cfg| {
        cfg.node.member.grace = Duration::ZERO;
        cfg.edge.member.grace = Duration::ZERO;
    })
    .await;
    let target = "/p/method?size=300&cc=max-age=600";
    warm(&c, target).await;
    let edge = c.edges[1].http_addr;
    let denied = request(
        edge,
        Method::from_bytes(b"PURGE").unwrap(),
        target,
        false,
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    let wrong = request(
        edge,
        Method::from_bytes(b"PURGE").unwrap(),
        target,
        false,
        &[("authorization", "Bearer nope")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    for e in &c.edges {
        assert_eq!(
            get(e.http_addr, target).await.edge_cache(),
            "HIT",
            "a refused purge changes nothing"
        );
    }
    let generation = republish(&c);
    let ok = request(
        edge,
        Method::from_bytes(b"PURGE").unwrap(),
        target,
        false,
        &[("authorization", "Bearer test-token"), ("soft-purge", "1")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    let report: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(ids(&report, "acked"), everyone(3, 2), "{report}");
    // Soft: the next GET at each edge does not serve the stale copy as a hit.
    for e in &c.edges {
        let g = get(e.http_addr, target).await;
        assert_eq!(g.edge_cache(), "MISS", "{}", g.header("x-cache"));
        assert_eq!(g.body, expected_gen(target, generation, 300));
    }
    assert_eq!(c.origin_count(target), 2);
    c.stop().await;
}

/// A cluster whose nodes and edges all store on `engine`.
async fn cluster_on(engine: cdn_store::Engine) -> crate::support::TestCluster {
    cluster(3, 2, |cfg| {
        cfg.node.member.store_engine = engine;
        cfg.edge.member.store_engine = engine;
    })
    .await
}

#[tokio::test]
async fn purge_by_tag_removes_exactly_the_tagged_objects_everywhere() {
    purge_by_tag(cdn_store::Engine::Moka).await;
}

#[tokio::test]
async fn purge_by_tag_on_the_compact_engine() {
    purge_by_tag(cdn_store::Engine::Compact).await;
}

async fn purge_by_tag(engine: cdn_store::Engine) {
    let c = cluster_on(engine).await;
    let a = "/p/tag/1?size=100&tags=red%20round&cc=max-age=600";
    let b = "/p/tag/2?size=100&tags=red&cc=max-age=600";
    let other = "/p/tag/3?size=100&tags=blue&cc=max-age=600";
    for t in [a, b, other] {
        warm(&c, t).await;
    }
    let (status, report) = admin_purge(c.edges[0].admin_addr, json!({"tags": ["red"]})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&report, "acked"), everyone(3, 2));
    for e in &c.edges {
        for t in [a, b] {
            let g = get(e.http_addr, t).await;
            assert_ne!(g.edge_cache(), "HIT", "{t} was purged");
        }
        assert_eq!(
            get(e.http_addr, other).await.edge_cache(),
            "HIT",
            "untagged object kept"
        );
    }
    assert_eq!(c.origin_count(a), 2);
    assert_eq!(c.origin_count(b), 2);
    assert_eq!(c.origin_count(other), 1);
    c.stop().await;
}

#[tokio::test]
async fn purge_by_prefix_removes_exactly_what_is_under_it() {
    purge_by_prefix(cdn_store::Engine::Moka).await;
}

#[tokio::test]
async fn purge_by_prefix_on_the_compact_engine() {
    purge_by_prefix(cdn_store::Engine::Compact).await;
}

async fn purge_by_prefix(engine: cdn_store::Engine) {
    let c = cluster_on(engine).await;
    let inside = ["/p/img/a?size=10", "/p/img/b/c?size=10"];
    let outside = "/p/imgx?size=10";
    for t in inside.iter().chain([&outside]) {
        warm(&c, t).await;
    }
    let (status, report) = admin_purge(
        c.nodes[0].as_ref().unwrap().admin_addr,
        json!({"prefixes": ["/p/img/"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&report, "acked"), everyone(3, 2));
    for e in &c.edges {
        for t in inside {
            assert_ne!(get(e.http_addr, t).await.edge_cache(), "HIT", "{t}");
        }
        assert_eq!(get(e.http_addr, outside).await.edge_cache(), "HIT");
    }
    for t in inside {
        assert_eq!(c.origin_count(t), 2, "{t}");
    }
    assert_eq!(c.origin_count(outside), 1);
    c.stop().await;
}

#[tokio::test]
async fn a_purge_during_a_slow_fill_keeps_the_old_body_out() {
    let c = cluster(3, 2, |_| {}).await;
    // Only the first fill is slow: the refill after the purge finishes first, so a slow fill
    // that stored its old body on completion would overwrite the new one.
    let target = "/p/slow?size=50000&body_delay_ms=600&delay_times=1&cc=max-age=600";
    let edge = c.edges[0].http_addr;
    let in_flight = tokio::spawn(async move { get(edge, target).await });
    // Wait until the origin has the request (the fill is under way), then republish + purge.
    crate::support::origin_reaches(&c, target, 1).await;
    let generation = republish(&c);
    let (status, report) = admin_purge(c.edges[1].admin_addr, json!({"urls": [target]})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&report, "acked"), everyone(3, 2));
    let new = expected_gen(target, generation, 50000);
    // After the acknowledgement, no edge serves the body of the fill that began before it.
    for e in &c.edges {
        let g = get(e.http_addr, target).await;
        assert!(
            g.body == new,
            "old body served after the purge at {}",
            e.http_addr
        );
    }
    let old = in_flight.await.unwrap();
    assert!(
        old.body == expected_gen(target, 0, 50000),
        "the request made before the purge completes whole"
    );
    for e in &c.edges {
        let g = get(e.http_addr, target).await;
        assert!(
            g.body == new,
            "the slow fill did not store its old body afterwards"
        );
    }
    for n in c.nodes.iter().flatten() {
        n.node.store().sync().await;
        if let Some(entry) = n.node.store().get(target).await {
            let body: Vec<u8> = entry
                .body()
                .iter()
                .flat_map(|b| b.iter().copied())
                .collect();
            assert!(body == new, "{} stored the old body", n.id());
        }
    }
    c.stop().await;
}

#[tokio::test]
async fn purging_what_is_cached_nowhere_succeeds() {
    let c = cluster(3, 2, |_| {}).await;
    let (status, report) = admin_purge(
        c.edges[0].admin_addr,
        json!({"urls": ["/never/cached"], "prefixes": ["/nothing/"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&report, "acked"), everyone(3, 2));
    assert!(ids(&report, "missing").is_empty());
    c.stop().await;
}

#[tokio::test]
async fn mutating_admin_calls_need_the_token_and_bad_requests_say_why() {
    let c = cluster(3, 2, |_| {}).await;
    let target = "/p/auth?size=10&cc=max-age=600";
    warm(&c, target).await;
    let admin = c.nodes[0].as_ref().unwrap().admin_addr;
    for token in [None, Some("wrong"), Some("")] {
        let (status, _) = admin_purge_with(admin, json!({"all": true}), token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    for e in &c.edges {
        assert_eq!(
            get(e.http_addr, target).await.edge_cache(),
            "HIT",
            "nothing changed"
        );
    }
    assert_eq!(c.origin_count(target), 1);
    let (status, _) = admin_purge(admin, json!({"urls": ["no-slash"]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = admin_purge(admin, json!({"colour": "red"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    c.stop().await;
}

#[tokio::test]
async fn a_purge_reports_a_crashed_node_as_missing_but_not_one_that_left() {
    let mut c = cluster(4, 2, |cfg| {
        cfg.edge.member.purge_timeout = Duration::from_secs(1);
        cfg.node.member.purge_timeout = Duration::from_secs(1);
    })
    .await;
    // node-1 crashes: it still owes the cluster this purge (it replays it when it is back).
    c.abort_node(1).await;
    // node-3 leaves gracefully: it no longer holds anything the purge could be about.
    c.stop_node(3).await;
    let (status, report) = admin_purge(c.edges[0].admin_addr, json!({"all": true})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ids(&report, "missing"),
        vec!["node-1".to_string()],
        "{report}"
    );
    assert_eq!(
        ids(&report, "acked"),
        vec!["edge-0", "edge-1", "node-0", "node-2"],
        "{report}"
    );
    c.stop().await;
}

/// Cuts every link of edge `i` to the nodes and waits until every node has seen it go.
async fn cut_edge(c: &cdn_cluster::Cluster, i: usize) {
    c.edges[i].edge.upstream().pool().sever().await;
    let others = c.edges.len() - 1;
    for n in c.nodes.iter().flatten() {
        tokio::time::timeout(
            Duration::from_secs(10),
            n.node.links().wait_for_count(|k| k == others),
        )
        .await
        .expect("nodes notice the cut");
    }
}

/// Restores edge `i`'s links and waits until it reconnected to every node.
async fn restore_edge(c: &cdn_cluster::Cluster, i: usize) {
    let pool = c.edges[i].edge.upstream().pool();
    let mut connects = pool.watch_connects();
    let before = *connects.borrow();
    let nodes = c.nodes.iter().flatten().count() as u64;
    pool.restore();
    tokio::time::timeout(
        Duration::from_secs(10),
        connects.wait_for(|n| *n >= before + nodes),
    )
    .await
    .expect("edge reconnects")
    .expect("pool alive");
}

#[tokio::test]
async fn an_edge_cut_off_during_a_purge_replays_it_when_it_reconnects() {
    let c = cluster(3, 2, |cfg| {
        cfg.edge.member.purge_timeout = Duration::from_secs(1);
        cfg.node.member.purge_timeout = Duration::from_secs(1);
    })
    .await;
    let target = "/p/cut?size=2000&cc=max-age=600";
    warm(&c, target).await;
    cut_edge(&c, 1).await;
    let generation = republish(&c);
    let (status, report) = admin_purge(c.edges[0].admin_addr, json!({"urls": [target]})).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "available mode reports, does not fail"
    );
    assert_eq!(
        ids(&report, "missing"),
        vec!["edge-1".to_string()],
        "{report}"
    );
    // Available: the cut-off edge keeps serving its copy (bounded by TTL and the replay).
    assert_eq!(get(c.edges[1].http_addr, target).await.edge_cache(), "HIT");
    restore_edge(&c, 1).await;
    let g = get(c.edges[1].http_addr, target).await;
    assert_ne!(g.edge_cache(), "HIT", "the purge was replayed on reconnect");
    assert!(g.body == expected_gen(target, generation, 2000));
    c.stop().await;
}

#[tokio::test]
async fn in_strict_mode_an_edge_cut_off_from_its_nodes_stops_serving_their_entries() {
    let c = cluster(3, 2, |cfg| {
        cfg.edge.member.consistency = cdn_core::config::Consistency::Strict;
        cfg.node.member.consistency = cdn_core::config::Consistency::Strict;
        cfg.edge.member.purge_timeout = Duration::from_secs(1);
        cfg.node.member.purge_timeout = Duration::from_secs(1);
        cfg.edge.node_connect_timeout = Duration::from_millis(300);
    })
    .await;
    let target = "/p/strict?size=1500&cc=max-age=600";
    warm(&c, target).await;
    cut_edge(&c, 1).await;
    let g = get(c.edges[1].http_addr, target).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(
        g.header("x-cache"),
        "MISS, origin",
        "not served from L1 while the link is down"
    );
    assert!(g.body == expected_gen(target, 0, 1500));
    // And a purge that cannot reach everyone fails.
    let (status, report) = admin_purge(c.edges[0].admin_addr, json!({"urls": [target]})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{report}");
    assert_eq!(ids(&report, "missing"), vec!["edge-1".to_string()]);
    c.stop().await;
}

#[tokio::test]
async fn a_node_partitioned_during_a_purge_replays_it_when_it_rejoins() {
    let c = cluster(3, 2, |cfg| {
        cfg.edge.member.purge_timeout = Duration::from_secs(1);
        cfg.node.member.purge_timeout = Duration::from_secs(1);
    })
    .await;
    let target = "/p/node-cut?size=700&cc=max-age=600";
    warm(&c, target).await;
    let owner_id = c.edges[0].edge.upstream().owners(target)[0].id.clone();
    let owner = c
        .nodes
        .iter()
        .flatten()
        .find(|n| n.id() == owner_id)
        .unwrap();
    assert!(
        owner.node.store().get(target).await.is_some(),
        "the owner holds it"
    );
    // Partition the owner from everyone.
    for e in &c.edges {
        e.edge.upstream().pool().sever_peer(owner.quic_addr).await;
    }
    for n in c.nodes.iter().flatten().filter(|n| n.id() != owner_id) {
        n.node.peers().sever_peer(owner.quic_addr).await;
    }
    owner.node.peers().sever().await;
    tokio::time::timeout(
        Duration::from_secs(10),
        owner.node.links().wait_for_count(|k| k == 0),
    )
    .await
    .expect("the owner sees its edges go");
    let generation = republish(&c);
    let (status, report) = admin_purge(c.edges[0].admin_addr, json!({"urls": [target]})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&report, "missing"), vec![owner_id.clone()], "{report}");
    assert!(
        owner.node.store().get(target).await.is_some(),
        "the partitioned owner missed it"
    );
    // Heal: the owner reconnects to its peers, which replay what it missed.
    let mut connects = owner.node.peers().watch_connects();
    let before = *connects.borrow();
    owner.node.peers().restore();
    for n in c.nodes.iter().flatten().filter(|n| n.id() != owner_id) {
        n.node.peers().restore_peer(owner.quic_addr);
    }
    for e in &c.edges {
        e.edge.upstream().pool().restore_peer(owner.quic_addr);
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        connects.wait_for(|n| *n >= before + 2),
    )
    .await
    .expect("the owner reconnects to both peers")
    .unwrap();
    assert!(
        owner.node.store().get(target).await.is_none(),
        "the missed purge was replayed"
    );
    for e in &c.edges {
        let g = get(e.http_addr, target).await;
        assert!(
            g.body == expected_gen(target, generation, 700),
            "old body at {}",
            e.http_addr
        );
    }
    c.stop().await;
}

#[tokio::test]
async fn tag_and_prefix_purges_during_slow_fills_keep_every_old_body_out() {
    purges_during_slow_fills(cdn_store::Engine::Moka).await;
}

#[tokio::test]
async fn tag_and_prefix_purges_during_slow_fills_on_the_compact_engine() {
    purges_during_slow_fills(cdn_store::Engine::Compact).await;
}

/// Fills of tagged objects under a prefix are under way at both tiers when a tag purge and a
/// prefix purge are acknowledged: no edge serves an old body after that, and no store keeps
/// one once the fills complete.
async fn purges_during_slow_fills(engine: cdn_store::Engine) {
    let c = cluster_on(engine).await;
    let targets: Vec<String> = (0..4)
        .map(|i| {
            // Half purged by tag, half by prefix; only the first fill of each is slow.
            let (dir, tag) = if i % 2 == 0 { ("t", "slowgrp") } else { ("q", "other") };
            format!("/p/slow-{dir}/{i}?size=20000&tags={tag}&body_delay_ms=600&delay_times=1&cc=max-age=600")
        })
        .collect();
    let mut in_flight = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let edge = c.edges[i % 2].http_addr;
        let t = t.clone();
        in_flight.push(tokio::spawn(async move { get(edge, &t).await }));
    }
    for t in &targets {
        crate::support::origin_reaches(&c, t, 1).await;
    }
    let generation = republish(&c);
    for purge in [
        json!({"tags": ["slowgrp"]}),
        json!({"prefixes": ["/p/slow-q/"]}),
    ] {
        let (status, report) = admin_purge(c.edges[1].admin_addr, purge).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(ids(&report, "acked"), everyone(3, 2), "{report}");
    }
    let check = |when: &'static str| {
        let c = &c;
        let targets = &targets;
        async move {
            for e in &c.edges {
                for t in targets {
                    let g = get(e.http_addr, t).await;
                    assert!(
                        g.body == expected_gen(t, generation, 20000),
                        "{t}: old body served {when} at {}",
                        e.http_addr
                    );
                }
            }
        }
    };
    check("after the purges were acknowledged").await;
    for f in in_flight {
        f.await.expect("request made before the purge");
    }
    check("after the slow fills completed").await;
    for n in c.nodes.iter().flatten() {
        for t in &targets {
            if let Some(entry) = n.node.store().get(t).await {
                let body: Vec<u8> = entry
                    .body()
                    .iter()
                    .flat_map(|b| b.iter().copied())
                    .collect();
                assert!(
                    body == expected_gen(t, generation, 20000),
                    "{} stored the old body of {t}",
                    n.id()
                );
            }
        }
    }
    c.stop().await;
}

#[tokio::test]
async fn an_edge_cut_off_during_tag_and_prefix_purges_replays_them_when_it_reconnects() {
    for engine in [cdn_store::Engine::Moka, cdn_store::Engine::Compact] {
        let c = cluster(3, 2, |cfg| {
            cfg.edge.member.purge_timeout = Duration::from_secs(1);
            cfg.node.member.purge_timeout = Duration::from_secs(1);
            cfg.node.member.store_engine = engine;
            cfg.edge.member.store_engine = engine;
            // A soft-purged entry is then refetched at once, not served stale meanwhile.
            cfg.node.member.grace = Duration::ZERO;
            cfg.edge.member.grace = Duration::ZERO;
        })
        .await;
        let tagged = "/p/cut-tag?size=2000&tags=cut&cc=max-age=600";
        let under = "/p/cut-dir/a?size=2000&cc=max-age=600";
        let soft = "/p/cut-soft?size=2000&tags=soft&cc=max-age=600";
        let kept = "/p/cut-kept?size=2000&tags=kept&cc=max-age=600";
        for t in [tagged, under, soft, kept] {
            warm(&c, t).await;
        }
        cut_edge(&c, 1).await;
        let generation = republish(&c);
        for purge in [
            json!({"tags": ["cut"]}),
            json!({"prefixes": ["/p/cut-dir/"]}),
            json!({"tags": ["soft"], "soft": true}),
        ] {
            let (status, report) = admin_purge(c.edges[0].admin_addr, purge).await;
            assert_eq!(status, StatusCode::OK, "{report}");
            assert_eq!(ids(&report, "missing"), vec!["edge-1".to_string()]);
        }
        // Available: the cut-off edge serves its copies until the link is back.
        assert_eq!(get(c.edges[1].http_addr, tagged).await.edge_cache(), "HIT");
        restore_edge(&c, 1).await;
        for t in [tagged, under, soft] {
            let g = get(c.edges[1].http_addr, t).await;
            assert_ne!(
                g.edge_cache(),
                "HIT",
                "{engine:?} {t}: replayed on reconnect"
            );
            assert!(
                g.body == expected_gen(t, generation, 2000),
                "{engine:?} {t}"
            );
        }
        assert_eq!(
            get(c.edges[1].http_addr, kept).await.edge_cache(),
            "HIT",
            "{engine:?}: what no purge covered stays"
        );
        c.stop().await;
    }
}
