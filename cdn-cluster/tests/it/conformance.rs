//! Conformance by default (issue 14): stale content, background revalidation, statuses and
//! parsing, each through a real edge and node with the default configuration, with the
//! origin's requests counted. The RFC section is in each test's name.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::raw_origin::raw_origin;
use crate::support::{cluster, get, get_with_fields};

/// A 200 with `cache-control`, `etag` and `body`.
fn response(cache_control: &str, etag: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncache-control: {cache_control}\r\n\
         etag: {etag}\r\ncontent-type: text/plain\r\n\r\n{body}",
        body.len()
    )
}

/// An origin that answers its first request with `first` and every later one with `then`,
/// and counts them.
async fn changing_origin(first: String, then: String) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let n = asked.clone();
    let addr = raw_origin(move |_, _, _| {
        Some(if n.fetch_add(1, Ordering::SeqCst) == 0 {
            first.clone()
        } else {
            then.clone()
        })
    })
    .await;
    (addr, asked)
}

/// Waits (bounded) until the origin has been asked `n` times: a background refresh is the
/// event awaited.
async fn asked_reaches(asked: &AtomicUsize, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while asked.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the origin was never asked {n} times"));
}

/// RFC 5861 §3, RFC 9111 §4.3.3: served stale while a background request refreshes it, the
/// refresh's answer (a new 200 with `no-cache` and a new ETag) replaces the stored response
/// at both tiers, so once the old copy's window is over the next request reaches the origin
/// instead of getting the first response again.
#[tokio::test]
async fn a_background_revalidation_replaces_the_stored_response_rfc_5861_3() {
    let (origin, asked) = changing_origin(
        response("max-age=1, stale-while-revalidate=2", "\"v1\"", "first"),
        response("no-cache", "\"v2\"", "second"),
    )
    .await;
    let c = cluster(1, 1, |cfg| cfg.origin = Some(format!("http://{origin}"))).await;
    let edge = c.edges[0].http_addr;
    assert_eq!(get(edge, "/swr").await.body, "first");
    // Waiting for the lifetime to pass is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stale = get(edge, "/swr").await;
    assert_eq!(stale.edge_cache(), "STALE", "{}", stale.header("x-cache"));
    assert_eq!(stale.body, "first");
    asked_reaches(&asked, 2).await;
    // Past the first response's stale-while-revalidate window (1 s + 2 s).
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let g = get(edge, "/swr").await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.body, "second", "x-cache {}", g.header("x-cache"));
    assert_eq!(g.header("etag"), "\"v2\"");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        3,
        "no-cache: this request reached the origin"
    );
    c.stop().await;
}

/// RFC 5861 §3: after the background refresh, the edge serves the refreshed response (new
/// fields, new body) as a hit: the node does not answer the edge's refresh with its own
/// stale copy, and the origin is asked once for it.
#[tokio::test]
async fn the_refreshed_response_is_served_after_stale_while_revalidate_rfc_5861_3() {
    let (origin, asked) = changing_origin(
        response("max-age=1, stale-while-revalidate=60", "\"v1\"", "first"),
        response("max-age=3600", "\"v2\"", "second"),
    )
    .await;
    let c = cluster(1, 1, |cfg| cfg.origin = Some(format!("http://{origin}"))).await;
    let edge = c.edges[0].http_addr;
    get(edge, "/swr-new").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stale = get(edge, "/swr-new").await;
    assert_eq!(stale.edge_cache(), "STALE");
    assert_eq!(stale.body, "first");
    asked_reaches(&asked, 2).await;
    // The edge stores the refresh a moment after the origin answered it: until then it may
    // still serve the old copy (without asking the origin again).
    let hit = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let g = get(edge, "/swr-new").await;
            if g.edge_cache() == "HIT" {
                return g;
            }
            assert_eq!(g.edge_cache(), "STALE", "{}", g.header("x-cache"));
            assert_eq!(g.body, "first");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the refreshed response is stored at the edge");
    assert_eq!(hit.body, "second");
    assert_eq!(hit.header("etag"), "\"v2\"");
    assert_eq!(hit.header("cache-control"), "max-age=3600");
    assert_eq!(asked.load(Ordering::SeqCst), 2, "one refresh");
    // The miss and one refresh: the node answered the refresh with the new response, not
    // with its own stale copy (which the edge would have stored and refreshed again).
    let fetches = c.edges[0].edge.counters().get(edge::Counter::NodeFetches);
    assert_eq!(fetches, 2, "edge fetches from the node tier");
    c.stop().await;
}

/// RFC 9111 §4.1: a stored variant is selected when the request's varying field has the same
/// value once normalised: `Accept-Language` members in any order, case or spacing.
#[tokio::test]
async fn vary_matches_normalised_values_rfc_9111_4_1() {
    let c = cluster(3, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let target = "/conf/vary?size=10&vary=Accept-Language&cc=max-age%3D600";
    let first = get_with_fields(edge, target, &[("accept-language", "en-US, fr;q=0.5")]).await;
    assert_eq!(first.edge_cache(), "MISS");
    for same in ["fr; q=0.5,EN-us", "en-us,  fr;q=0.5", "FR;Q=0.5, en-US"] {
        let g = get_with_fields(edge, target, &[("accept-language", same)]).await;
        assert_eq!(g.edge_cache(), "HIT", "{same}: {}", g.header("x-cache"));
        assert_eq!(g.body, first.body);
    }
    let other = get_with_fields(edge, target, &[("accept-language", "de")]).await;
    assert_eq!(other.edge_cache(), "MISS");
    assert_eq!(c.origin_count(target), 2, "one origin request per variant");
    c.stop().await;
}

/// RFC 9111 §4.3.2: a stored response without `Last-Modified` answers `If-Modified-Since`
/// by its `Date`.
#[tokio::test]
async fn if_modified_since_is_answered_by_date_without_last_modified_rfc_9111_4_3_2() {
    let c = cluster(3, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let target = "/conf/ims?size=10&cc=max-age%3D600&etag=none";
    let first = get(edge, target).await;
    assert!(first.headers.get("last-modified").is_none());
    let date = first.header("date").to_string();
    let since = httpdate::parse_http_date(&date).expect("the origin sent a Date");
    let g = get_with_fields(edge, target, &[("if-modified-since", &date)]).await;
    assert_eq!(g.status, StatusCode::NOT_MODIFIED);
    assert!(g.body.is_empty());
    let earlier = httpdate::fmt_http_date(since - Duration::from_secs(86_400));
    let g = get_with_fields(edge, target, &[("if-modified-since", &earlier)]).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.body, first.body);
    assert_eq!(c.origin_count(target), 1);
    c.stop().await;
}

/// RFC 9111 §3, §4.2.4: a 5xx with explicit freshness is stored and reused while fresh; once
/// stale, the origin's new answer is served (a stored error is not served in its place).
#[tokio::test]
async fn an_explicitly_fresh_5xx_is_reused_while_fresh_and_not_when_stale_rfc_9111_3() {
    let c = cluster(3, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let target = "/conf/503?size=10&status=503&cc=max-age%3D1&etag=none";
    let first = get(edge, target).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    let hit = get(edge, target).await;
    assert_eq!(hit.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(hit.edge_cache(), "HIT");
    assert_eq!(c.origin_count(target), 1);
    // Waiting for the lifetime to pass is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let g = get(edge, target).await;
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !g.header("x-cache").contains("STALE") && g.edge_cache() != "HIT",
        "{}",
        g.header("x-cache")
    );
    assert_eq!(c.origin_count(target), 2);
    c.stop().await;
}

/// RFC 9110 §9.3.3, RFC 9111 §4: a POST response with explicit freshness whose
/// `Content-Location` is the POST's own target is reused for a later GET of it; without that
/// `Content-Location` it is not.
#[tokio::test]
async fn a_post_response_naming_its_own_url_is_reused_for_get_rfc_9110_9_3_3() {
    let asked = Arc::new(AtomicUsize::new(0));
    let n = asked.clone();
    let origin = raw_origin(move |_, _, head| {
        n.fetch_add(1, Ordering::SeqCst);
        let answer = |location: &str, body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncache-control: max-age=600\r\n\
                 {location}content-type: text/plain\r\n\r\n{body}",
                body.len()
            )
        };
        Some(if head.starts_with("POST /posted ") {
            answer("content-location: /posted\r\n", "made by POST")
        } else if head.starts_with("POST ") {
            answer("", "made by POST")
        } else {
            answer("", "made by GET")
        })
    })
    .await;
    let c = cluster(1, 1, |cfg| cfg.origin = Some(format!("http://{origin}"))).await;
    let edge = c.edges[0].http_addr;
    let post = |path: &'static str| async move {
        crate::support::request(edge, http::Method::POST, path, false, &[], None)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    };
    let p = post("/posted").await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(p.body, "made by POST");
    assert_eq!(p.header("x-cache"), "PASS");
    // The edge stores it once its body is complete: awaited with only-if-cached, which is
    // answered from the edge's own cache and never goes upstream.
    let stored = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let g = get_with_fields(edge, "/posted", &[("cache-control", "only-if-cached")]).await;
            if g.status == StatusCode::OK {
                return g;
            }
            assert_eq!(g.status, StatusCode::GATEWAY_TIMEOUT);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the POST response is stored for GET");
    assert_eq!(stored.body, "made by POST");
    let g = get(edge, "/posted").await;
    assert_eq!(g.edge_cache(), "HIT");
    assert_eq!(g.body, "made by POST");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "the GET never reached the origin"
    );
    // Without a Content-Location naming its target, a POST response is not reused.
    post("/unnamed").await;
    let g = get(edge, "/unnamed").await;
    assert_eq!(g.body, "made by GET");
    assert_ne!(g.edge_cache(), "HIT");
    assert_eq!(asked.load(Ordering::SeqCst), 3);
    c.stop().await;
}
