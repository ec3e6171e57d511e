//! The pull-through path, end to end.

use std::time::Duration;

use futures::future::join_all;
use http::{Method, StatusCode};

use crate::support::{cluster, expected, get, origin_reaches, send};

#[tokio::test]
async fn bodies_are_byte_exact_with_the_origins_content_type() {
    let c = cluster(3, 2, |_| {}).await;
    for size in [0usize, 1024, 1 << 20, 64 << 20] {
        let target = format!("/exact/{size}?size={size}&ct=application/x-test-{size}");
        for (i, edge) in c.edges.iter().enumerate() {
            let g = get(edge.http_addr, &target).await;
            assert_eq!(g.status, StatusCode::OK);
            assert_eq!(
                g.header("content-type"),
                format!("application/x-test-{size}")
            );
            assert_eq!(g.header("content-length"), size.to_string());
            assert_eq!(g.body.len(), size, "edge {i}");
            assert!(
                g.body == expected(&target, size),
                "body of {size} bytes differs at edge {i}"
            );
        }
        assert_eq!(
            c.origin_count(&target),
            1,
            "{size}: one origin fetch for two edges"
        );
    }
    c.stop().await;
}

#[tokio::test]
async fn second_get_hits_and_the_origin_sees_one_request_over_http1_and_h2() {
    let c = cluster(3, 2, |_| {}).await;
    let target = "/second?size=5000&cc=public,max-age=300";
    let first = get(c.edges[0].http_addr, target).await;
    assert_eq!(first.edge_cache(), "MISS");
    assert!(
        first.header("x-cache").contains("MISS from node-"),
        "{}",
        first.header("x-cache")
    );
    let again = get(c.edges[0].http_addr, target).await;
    assert_eq!(again.edge_cache(), "HIT");
    assert_eq!(again.body, first.body);
    // The other edge, over HTTP/2: an edge miss answered by the node's HIT.
    let other = send(c.edges[1].http_addr, Method::GET, target, true, None)
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::OK);
    assert!(
        other.header("x-cache").starts_with("MISS, HIT from node-"),
        "{}",
        other.header("x-cache")
    );
    assert_eq!(other.body, first.body);
    let other_again = send(c.edges[1].http_addr, Method::GET, target, true, None)
        .await
        .unwrap();
    assert_eq!(other_again.edge_cache(), "HIT");
    assert_eq!(c.origin_count(target), 1);
    // Every response carries Age.
    for g in [&first, &again, &other, &other_again] {
        assert!(
            g.header("age").parse::<u64>().is_ok(),
            "Age: {:?}",
            g.header("age")
        );
    }
    c.stop().await;
}

#[tokio::test]
async fn after_the_ttl_the_next_get_refetches_once() {
    // No grace and no validator: expiry means a plain refetch (revalidation and stale
    // serving are tested in `semantics`).
    let c = cluster(3, 2, |cfg| {
        cfg.node.member.grace = Duration::ZERO;
        cfg.edge.member.grace = Duration::ZERO;
    })
    .await;
    let target = "/ttl?size=100&cc=max-age=2&etag=none";
    assert_eq!(get(c.edges[0].http_addr, target).await.edge_cache(), "MISS");
    assert_eq!(get(c.edges[0].http_addr, target).await.edge_cache(), "HIT");
    assert_eq!(c.origin_count(target), 1);
    // Waiting for time to pass is the behaviour under test, not synchronisation.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let g = get(c.edges[0].http_addr, target).await;
    assert_eq!(g.edge_cache(), "MISS");
    assert_eq!(g.body, expected(target, 100));
    assert_eq!(
        get(c.edges[1].http_addr, target).await.body,
        expected(target, 100)
    );
    assert_eq!(
        c.origin_count(target),
        2,
        "exactly one refetch after expiry"
    );
    c.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_cold_gets_over_both_edges_make_one_origin_request() {
    let c = cluster(3, 2, |_| {}).await;
    let target = "/cold?size=20000&latency_ms=300";
    let addrs: Vec<_> = c.edges.iter().map(|e| e.http_addr).collect();
    let gets = (0..200).map(|i| {
        let addr = addrs[i % addrs.len()];
        async move { get(addr, target).await }
    });
    let results = join_all(gets).await;
    let want = expected(target, 20000);
    for g in &results {
        assert_eq!(g.status, StatusCode::OK);
        assert!(g.body == want);
    }
    assert_eq!(c.origin_count(target), 1);
    c.stop().await;
}

/// A fill runs in a task of its own, so it completes for every waiter even when the request
/// that started it goes away before the head (its client hung up): the next request is
/// served from that same fill or from what it stored, and the node tier is asked once.
#[tokio::test]
async fn a_fill_goes_on_when_the_client_that_started_it_hangs_up() {
    use tokio::io::AsyncWriteExt;
    let c = cluster(1, 1, |_| {}).await;
    let target = "/hangs-up?size=70000&latency_ms=1000&cc=public,max-age=300";
    let addr = c.edges[0].http_addr;
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(format!("GET {target} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // The fill has reached the origin, whose head is a second away: hang up now.
    origin_reaches(&c, target, 1).await;
    drop(client);
    let counters = c.edges[0].edge.counters();
    assert_eq!(counters.get(edge::Counter::NodeFetches), 1);
    let g = get(addr, target).await;
    assert_eq!(g.status, StatusCode::OK);
    assert!(g.body == expected(target, 70000), "body differs");
    assert_eq!(
        counters.get(edge::Counter::NodeFetches),
        1,
        "the first fill went on: no second fetch from the node tier ({})",
        g.header("x-cache")
    );
    assert_eq!(get(addr, target).await.edge_cache(), "HIT");
    assert_eq!(c.origin_count(target), 1);
    c.stop().await;
}

/// An edge's requests to a node go one after another on one QUIC stream, not a stream
/// each: twenty misses in turn, small bodies (read whole) and large ones (streamed), reach
/// the node as twenty requests on one stream, every body byte-exact.
#[tokio::test]
async fn requests_to_a_node_take_turns_on_one_stream() {
    let c = cluster(1, 1, |_| {}).await;
    misses_in_turn(c.edges[0].http_addr, "/turns", 20).await;
    let node = &c.nodes[0].as_ref().unwrap().node;
    assert_eq!(node.counters().get(cache_node::Counter::Requests), 20);
    assert_eq!(
        node.counters().get(cache_node::Counter::RequestStreams),
        1,
        "each request waited for the one before, so each found the stream it left"
    );
    let edge = c.edges[0].edge.counters();
    assert_eq!(edge.get(edge::Counter::NodeFailures), 0);
    assert_eq!(edge.get(edge::Counter::OriginFetches), 0);
    assert_eq!(c.edges[0].edge.upstream().pool().found_closed(), 0);
    c.stop().await;
}

/// `n` GETs of distinct keys under `prefix`, one after another, each a miss at the edge and
/// at the node: 1 KiB bodies (read whole from the node) and 300 KB ones (streamed) in turn,
/// every one 200 and byte-exact.
async fn misses_in_turn(addr: std::net::SocketAddr, prefix: &str, n: usize) {
    for i in 0..n {
        let size = if i % 2 == 0 { 1024 } else { 300_000 };
        let target = format!("{prefix}/{i}?size={size}&cc=public,max-age=300");
        let g = get(addr, &target).await;
        assert_eq!(g.status, StatusCode::OK, "{target}");
        assert!(g.body == expected(&target, size), "{target}: body differs");
    }
}

/// A node that closes each stream after its answer costs an edge nothing but new streams: a
/// stream it kept turns out closed, the request is sent again on a new one, and no request
/// fails, falls back to the origin or counts as a failed node. Both ways a kept stream can
/// turn out closed: the node stopped reading it (nodes did so before streams were kept; the
/// request's write fails), or it finished its answering side only (the write goes through,
/// and the answer ends before its first frame).
#[tokio::test]
async fn an_edge_sends_again_on_a_new_stream_when_a_node_closed_the_one_it_kept() {
    closed_streams(cache_node::AfterAnswer::FinishAndStop).await;
    closed_streams(cache_node::AfterAnswer::Finish).await;
}

async fn closed_streams(after: cache_node::AfterAnswer) {
    let c = cluster(1, 1, |_| {}).await;
    let node = &c.nodes[0].as_ref().unwrap().node;
    node.set_after_answer(after);
    misses_in_turn(
        c.edges[0].http_addr,
        &format!("/closed-streams/{after:?}"),
        10,
    )
    .await;
    assert_eq!(node.counters().get(cache_node::Counter::Requests), 10);
    assert_eq!(
        node.counters().get(cache_node::Counter::RequestStreams),
        10,
        "{after:?}: a new stream for every request"
    );
    let edge = c.edges[0].edge.counters();
    // Each request after the first was sent on a kept stream first, found it closed and
    // went again.
    assert_eq!(
        c.edges[0].edge.upstream().pool().found_closed(),
        9,
        "{after:?}: requests that found their kept stream closed"
    );
    assert_eq!(edge.get(edge::Counter::NodeFetches), 10, "{after:?}");
    assert_eq!(edge.get(edge::Counter::NodeFailures), 0, "{after:?}");
    assert_eq!(edge.get(edge::Counter::OriginFetches), 0, "{after:?}");
    c.stop().await;
}

#[tokio::test]
async fn keys_spread_evenly_and_both_edges_agree_on_owners() {
    let c = cluster(3, 2, |_| {}).await;
    let (a, b) = (&c.edges[0].edge, &c.edges[1].edge);
    let mut counts = std::collections::HashMap::new();
    for k in 0..10_000 {
        let key = format!("/spread/{k}");
        let oa = a.upstream().owners(&key);
        let ob = b.upstream().owners(&key);
        assert_eq!(oa, ob, "edges disagree on {key}");
        *counts.entry(oa[0].id.clone()).or_insert(0usize) += 1;
    }
    assert_eq!(counts.len(), 3);
    for (node, n) in &counts {
        let share = *n as f64 / 10_000.0;
        assert!(
            (share - 1.0 / 3.0).abs() <= 0.05 / 3.0,
            "{node} holds {share:.3}: {counts:?}"
        );
    }
    // And requests really go to the primary owner.
    for k in 0..20 {
        let key = format!("/spread/{k}");
        let owner = a.upstream().owners(&key)[0].id.clone();
        let g = get(c.edges[0].http_addr, &key).await;
        assert!(
            g.header("x-cache").ends_with(&format!("from {owner}")),
            "{key}: {}",
            g.header("x-cache")
        );
    }
    c.stop().await;
}

#[tokio::test]
async fn a_node_store_never_holds_more_than_its_capacity() {
    store_bound(cdn_store::Engine::Moka).await;
}

#[tokio::test]
async fn a_node_store_on_the_compact_engine_never_holds_more_than_its_capacity() {
    store_bound(cdn_store::Engine::Compact).await;
}

async fn store_bound(engine: cdn_store::Engine) {
    let cap: u64 = 1 << 20;
    let c = cluster(1, 1, |cfg| {
        cfg.node.member.capacity = cdn_core::config::ByteSize(cap);
        cfg.node.member.max_object_size = cdn_core::config::ByteSize(cap);
        cfg.node.member.store_engine = engine;
    })
    .await;
    let node = c.nodes[0].as_ref().unwrap().node.clone();
    let edge = c.edges[0].http_addr;
    // 4x the capacity in 32 KiB objects, each requested twice so TinyLFU admits some.
    let mut written = 0u64;
    let mut i = 0;
    while written < 4 * cap {
        let target = format!("/bound/{i}?size=32768");
        assert_eq!(get(edge, &target).await.body.len(), 32768);
        get(edge, &target).await;
        written += 32768;
        i += 1;
        if i % 8 == 0 {
            node.store().sync().await;
            assert!(
                node.store().weighted_size() <= cap,
                "weighed {} > {cap}",
                node.store().weighted_size()
            );
            assert!(node.store().held_body_bytes() <= cap);
        }
    }
    node.store().sync().await;
    assert!(node.store().weighted_size() <= cap);
    assert!(node.store().held_body_bytes() <= cap);
    assert!(node.store().entry_count() > 0, "the store holds something");
    c.stop().await;
}

#[tokio::test]
async fn with_every_node_stopped_the_edge_serves_from_the_origin() {
    let mut c = cluster(3, 1, |cfg| {
        cfg.edge.node_connect_timeout = Duration::from_millis(300);
    })
    .await;
    for j in 0..3 {
        c.stop_node(j).await;
    }
    for k in 0..5 {
        let target = format!("/nodes-down/{k}?size=3000");
        let g = get(c.edges[0].http_addr, &target).await;
        assert_eq!(g.status, StatusCode::OK, "{target}");
        assert!(g.body == expected(&target, 3000));
        assert_eq!(g.header("x-cache"), "MISS, origin");
    }
    c.stop().await;
}

#[tokio::test]
async fn an_origin_that_breaks_mid_body_is_an_error_not_a_short_body_and_is_not_cached() {
    let c = cluster(3, 2, |_| {}).await;
    let target = "/broken?size=300000&fail_after=100000&fail_times=1";
    let first = send(c.edges[0].http_addr, Method::GET, target, false, None).await;
    assert!(first.is_err(), "a truncated body must surface as an error");
    // Nothing was stored anywhere: the next GET goes to the origin again and is whole.
    let second = get(c.edges[0].http_addr, target).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body.len(), 300000);
    assert!(second.body == expected(target, 300000));
    assert_eq!(c.origin_count(target), 2);
    assert_eq!(get(c.edges[1].http_addr, target).await.body.len(), 300000);
    assert_eq!(c.origin_count(target), 2);
    c.stop().await;
}

#[tokio::test]
async fn head_is_served_from_the_cached_get_and_hop_by_hop_fields_are_removed() {
    let c = cluster(3, 1, |_| {}).await;
    let target = "/head?size=777&h_keep-alive=timeout%3D5&h_x-custom=kept";
    let h = send(c.edges[0].http_addr, Method::HEAD, target, false, None)
        .await
        .unwrap();
    assert_eq!(h.status, StatusCode::OK);
    assert!(h.body.is_empty());
    assert_eq!(h.header("content-length"), "777");
    assert_eq!(h.header("x-custom"), "kept");
    assert!(h.headers.get("keep-alive").is_none());
    let g = get(c.edges[0].http_addr, target).await;
    assert_eq!(g.edge_cache(), "HIT");
    assert!(g.body == expected(target, 777));
    let h2 = send(c.edges[0].http_addr, Method::HEAD, target, false, None)
        .await
        .unwrap();
    assert_eq!(h2.edge_cache(), "HIT");
    assert_eq!(c.origin_count(target), 1, "the origin saw one GET, no HEAD");
    c.stop().await;
}

#[tokio::test]
async fn other_methods_pass_to_the_origin_uncached() {
    let c = cluster(3, 1, |_| {}).await;
    for _ in 0..2 {
        let g = send(
            c.edges[0].http_addr,
            Method::POST,
            "/form",
            false,
            Some("a=1&b=2"),
        )
        .await
        .unwrap();
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.header("x-cache"), "PASS");
        assert_eq!(g.body, "POST /form 7\n");
    }
    assert_eq!(c.origin_count("/form"), 2);
    c.stop().await;
}

#[tokio::test]
async fn private_responses_are_not_shared_between_waiters() {
    let c = cluster(3, 1, |_| {}).await;
    let target = "/private?size=50&cc=private,max-age=60&latency_ms=200";
    let gets = (0..5).map(|_| get(c.edges[0].http_addr, target));
    for g in join_all(gets).await {
        assert_eq!(g.status, StatusCode::OK);
        assert!(
            g.header("x-cache").starts_with("PASS"),
            "{}",
            g.header("x-cache")
        );
    }
    assert_eq!(
        c.origin_count(target),
        5,
        "each client got its own private response"
    );
    c.stop().await;
}

#[tokio::test]
async fn objects_over_the_size_limit_stream_through_both_tiers_unstored() {
    let c = cluster(3, 2, |cfg| {
        cfg.node.member.max_object_size = cdn_core::config::ByteSize(1 << 20);
        cfg.edge.member.max_object_size = cdn_core::config::ByteSize(1 << 20);
    })
    .await;
    let target = "/big/pass?size=64MiB";
    let want = expected(target, 64 << 20);
    let gets = c.edges.iter().map(|e| get(e.http_addr, target));
    for g in join_all(gets).await {
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.body.len(), 64 << 20);
        assert!(g.body == want, "byte-exact through a bounded window");
    }
    for n in c.nodes.iter().flatten() {
        assert!(
            n.node.store().get(target).await.is_none(),
            "not stored at {}",
            n.id()
        );
    }
    c.stop().await;
}
