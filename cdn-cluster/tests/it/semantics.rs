//! HTTP caching semantics through the real edge and node (RFC 9111 / 9110 / 9213).

use http::{Method, StatusCode};

use crate::support::{cluster, get, request};

async fn get_with(
    addr: std::net::SocketAddr,
    path: &str,
    fields: &[(&str, &str)],
) -> crate::support::Got {
    request(addr, Method::GET, path, false, fields, None)
        .await
        .expect("edge answers")
}

#[tokio::test]
async fn conditional_requests_are_answered_304_from_cache() {
    let c = cluster(3, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let target = "/sem/cond?size=500&cc=max-age=600&lm=784111777";
    let etag = origin_stub::default_etag(target);
    // On the first request (a miss) a matching If-None-Match is answered 304 too, and the
    // object is still filled whole for later clients.
    let first = get_with(edge, target, &[("if-none-match", &etag)]).await;
    assert_eq!(first.status, StatusCode::NOT_MODIFIED);
    assert!(first.body.is_empty());
    assert_eq!(first.header("etag"), etag);
    let hit = get_with(
        edge,
        target,
        &[("if-none-match", &format!("W/{etag}, \"other\""))],
    )
    .await;
    assert_eq!(hit.status, StatusCode::NOT_MODIFIED);
    assert_eq!(hit.edge_cache(), "HIT");
    assert_eq!(hit.header("cache-control"), "max-age=600");
    assert!(hit.header("age").parse::<u64>().is_ok());
    assert!(hit.headers.get("content-length").is_none() || hit.header("content-length") == "0");
    let other = get_with(edge, target, &[("if-none-match", "\"nope\"")]).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body.len(), 500);
    let since = get_with(
        edge,
        target,
        &[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")],
    )
    .await;
    assert_eq!(
        since.status,
        StatusCode::NOT_MODIFIED,
        "Last-Modified 784111777 is that instant"
    );
    let before = get_with(
        edge,
        target,
        &[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")],
    )
    .await;
    assert_eq!(before.status, StatusCode::OK);
    assert_eq!(c.origin_count(target), 1);
    c.stop().await;
}

#[tokio::test]
async fn only_if_cached_is_a_504_on_a_miss_and_a_hit_otherwise() {
    let c = cluster(3, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let target = "/sem/oic?size=10";
    let miss = get_with(edge, target, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(miss.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        c.origin_count(target),
        0,
        "only-if-cached never goes upstream"
    );
    get(edge, target).await;
    let hit = get_with(edge, target, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.edge_cache(), "HIT");
    c.stop().await;
}

#[tokio::test]
async fn a_successful_unsafe_request_invalidates_the_url_and_its_location_everywhere() {
    let c = cluster(3, 2, |_| {}).await;
    let target =
        "/sem/item?size=40&h_location=/sem/list&h_content-location=http://elsewhere.example/x";
    let list = "/sem/list";
    for e in &c.edges {
        get(e.http_addr, target).await;
        get(e.http_addr, list).await;
        assert_eq!(get(e.http_addr, target).await.edge_cache(), "HIT");
        assert_eq!(get(e.http_addr, list).await.edge_cache(), "HIT");
    }
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let r = request(
            c.edges[0].http_addr,
            method.clone(),
            target,
            false,
            &[],
            Some("x".into()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-cache"), "PASS");
        // Invalidated at the other edge as well, and at the nodes: the next GET refetches.
        let before = c.origin_count(target);
        let g = get(c.edges[1].http_addr, target).await;
        assert_ne!(g.edge_cache(), "HIT", "{method} invalidated the target");
        assert!(
            g.header("x-cache").contains("MISS from"),
            "{method}: {}",
            g.header("x-cache")
        );
        assert_eq!(c.origin_count(target), before + 1);
        assert_ne!(
            get(c.edges[1].http_addr, list).await.edge_cache(),
            "HIT",
            "{method} invalidated Location"
        );
    }
    // OPTIONS is safe: nothing is invalidated.
    get(c.edges[1].http_addr, target).await;
    request(
        c.edges[0].http_addr,
        Method::OPTIONS,
        target,
        false,
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(get(c.edges[1].http_addr, target).await.edge_cache(), "HIT");
    c.stop().await;
}

#[tokio::test]
async fn cdn_cache_control_governs_our_tiers_and_is_not_passed_to_clients() {
    let c = cluster(3, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let cached = "/sem/cdncc/1?size=10&cc=no-store&cdn_cc=max-age%3D600";
    let first = get(edge, cached).await;
    assert_eq!(
        first.header("cache-control"),
        "no-store",
        "browsers get Cache-Control as sent"
    );
    assert!(first.headers.get("cdn-cache-control").is_none());
    let second = get(edge, cached).await;
    assert_eq!(second.edge_cache(), "HIT");
    assert!(second.headers.get("cdn-cache-control").is_none());
    assert_eq!(c.origin_count(cached), 1);
    let uncached = "/sem/cdncc/2?size=10&cc=max-age%3D600&cdn_cc=no-store";
    get(edge, uncached).await;
    let g = get(edge, uncached).await;
    assert_eq!(g.edge_cache(), "PASS");
    assert_eq!(g.header("cache-control"), "max-age=600");
    assert_eq!(c.origin_count(uncached), 2);
    c.stop().await;
}

#[tokio::test]
async fn responses_setting_cookies_are_not_shared_unless_configured() {
    let target = "/sem/cookie?size=10&cc=max-age%3D600&h_set-cookie=session%3Dabc";
    let c = cluster(3, 1, |_| {}).await;
    for _ in 0..2 {
        let g = get(c.edges[0].http_addr, target).await;
        assert_eq!(g.header("set-cookie"), "session=abc");
        assert_eq!(g.edge_cache(), "PASS");
    }
    assert_eq!(c.origin_count(target), 2);
    c.stop().await;
    let c = cluster(3, 1, |cfg| {
        cfg.node.cache_set_cookie = true;
        cfg.edge.cache_set_cookie = true;
    })
    .await;
    get(c.edges[0].http_addr, target).await;
    assert_eq!(get(c.edges[0].http_addr, target).await.edge_cache(), "HIT");
    assert_eq!(c.origin_count(target), 1);
    c.stop().await;
}
