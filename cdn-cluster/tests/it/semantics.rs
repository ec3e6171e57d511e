//! HTTP caching semantics through the real edge and node (RFC 9111 / 9110 / 9213).

use std::time::Duration;

use http::{Method, StatusCode};

use crate::support::{cluster, get, origin_reaches, request};

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

/// RFC 9213 §2: `CDN-Cache-Control` governs our tiers instead of `Cache-Control`, and is
/// forwarded downstream (another CDN behind us may be its target too).
#[tokio::test]
async fn cdn_cache_control_governs_our_tiers_and_is_forwarded_rfc_9213() {
    let c = cluster(3, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let cached = "/sem/cdncc/1?size=10&cc=no-store&cdn_cc=max-age%3D600";
    let first = get(edge, cached).await;
    assert_eq!(
        first.header("cache-control"),
        "no-store",
        "browsers get Cache-Control as sent"
    );
    assert_eq!(first.header("cdn-cache-control"), "max-age=600");
    let second = get(edge, cached).await;
    assert_eq!(second.edge_cache(), "HIT");
    assert_eq!(second.header("cdn-cache-control"), "max-age=600");
    assert_eq!(c.origin_count(cached), 1);
    let uncached = "/sem/cdncc/2?size=10&cc=max-age%3D600&cdn_cc=no-store";
    get(edge, uncached).await;
    let g = get(edge, uncached).await;
    assert_eq!(g.edge_cache(), "PASS");
    assert_eq!(g.header("cache-control"), "max-age=600");
    assert_eq!(g.header("cdn-cache-control"), "no-store");
    assert_eq!(c.origin_count(uncached), 2);
    // Past 2^31 seconds the lifetime is 2^31 seconds (RFC 9111 §1.2.2), not an overflow.
    let long = "/sem/cdncc/3?size=10&cc=max-age%3D1&cdn_cc=max-age%3D99999999999";
    get(edge, long).await;
    assert_eq!(get(edge, long).await.edge_cache(), "HIT");
    assert_eq!(c.origin_count(long), 1);
    c.stop().await;
}

/// RFC 9213 §2.1: a `CDN-Cache-Control` that is not a valid Structured Fields dictionary
/// (or has a known directive of the wrong type) is ignored as a whole: `Cache-Control`
/// governs, and the field is still forwarded as received.
#[tokio::test]
async fn an_invalid_cdn_cache_control_is_ignored_as_a_whole_rfc_9213() {
    let c = cluster(3, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    for (i, invalid) in ["max-age=10000, &&&&&", "max-age=\"10000\"", "MaX-aGe=10000"]
        .into_iter()
        .enumerate()
    {
        let target = format!(
            "/sem/cdncc/bad/{i}?size=10&etag=none&cc=no-store&cdn_cc={}",
            enc(invalid)
        );
        for _ in 0..2 {
            let g = get(edge, &target).await;
            assert_eq!(
                g.edge_cache(),
                "PASS",
                "{invalid}: Cache-Control no-store governs"
            );
            assert_eq!(g.header("cdn-cache-control"), invalid);
        }
        assert_eq!(c.origin_count(&target), 2, "{invalid}");
        // With a usable Cache-Control, that one is used instead.
        let target = format!(
            "/sem/cdncc/bad/{i}/cc?size=10&etag=none&cc=max-age%3D600&cdn_cc={}",
            enc(invalid)
        );
        get(edge, &target).await;
        assert_eq!(get(edge, &target).await.edge_cache(), "HIT", "{invalid}");
        assert_eq!(c.origin_count(&target), 1);
    }
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
        cfg.node.member.cache_set_cookie = true;
        cfg.edge.member.cache_set_cookie = true;
    })
    .await;
    get(c.edges[0].http_addr, target).await;
    assert_eq!(get(c.edges[0].http_addr, target).await.edge_cache(), "HIT");
    assert_eq!(c.origin_count(target), 1);
    c.stop().await;
}

fn stub(c: &cdn_cluster::Cluster) -> std::sync::Arc<origin_stub::Stats> {
    c.stub.as_ref().expect("stub").stats.clone()
}

#[tokio::test]
async fn an_expired_entry_with_a_validator_is_revalidated_not_refetched() {
    let c = cluster(3, 2, |cfg| {
        cfg.node.member.grace = Duration::ZERO;
        cfg.edge.member.grace = Duration::ZERO;
    })
    .await;
    let target = "/sem/reval?size=5000&cc=max-age%3D1";
    let first = get(c.edges[0].http_addr, target).await;
    // Waiting for the lifetime to pass is the behaviour under test.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let g = get(c.edges[0].http_addr, target).await;
    assert_eq!(g.status, StatusCode::OK);
    assert!(
        g.header("x-cache")
            .starts_with("REVALIDATED, REVALIDATED from node-"),
        "{}",
        g.header("x-cache")
    );
    assert_eq!(g.body, first.body, "the stored body is served after a 304");
    assert_eq!(c.origin_count(target), 2);
    assert_eq!(
        stub(&c).not_modified(),
        1,
        "the origin answered the conditional request with 304"
    );
    // Fresh again at both tiers.
    assert_eq!(get(c.edges[0].http_addr, target).await.edge_cache(), "HIT");
    assert!(get(c.edges[1].http_addr, target)
        .await
        .header("x-cache")
        .starts_with("MISS, HIT"));
    c.stop().await;
}

#[tokio::test]
async fn a_changed_object_replaces_the_stale_copy() {
    let c = cluster(3, 1, |cfg| {
        cfg.node.member.grace = Duration::ZERO;
        cfg.edge.member.grace = Duration::ZERO;
    })
    .await;
    let target = "/sem/changed?size=300&cc=max-age%3D1";
    get(c.edges[0].http_addr, target).await;
    let generation = stub(&c).bump_generation();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let g = get(c.edges[0].http_addr, target).await;
    assert_eq!(g.edge_cache(), "MISS", "{}", g.header("x-cache"));
    assert_eq!(
        g.body,
        crate::support::expected_gen(target, generation, 300)
    );
    assert_eq!(stub(&c).not_modified(), 0);
    c.stop().await;
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_with_one_request() {
    let c = cluster(3, 1, |_| {}).await;
    let target = "/sem/swr?size=800&cc=max-age%3D1%2C%20stale-while-revalidate%3D60";
    let first = get(c.edges[0].http_addr, target).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let gets = (0..20).map(|_| get(c.edges[0].http_addr, target));
    for g in futures::future::join_all(gets).await {
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.body, first.body);
        assert!(
            ["STALE", "HIT", "REVALIDATED"].contains(&g.edge_cache()),
            "{}",
            g.header("x-cache")
        );
    }
    origin_reaches(&c, target, 2).await;
    for _ in 0..5 {
        get(c.edges[0].http_addr, target).await;
    }
    assert_eq!(
        c.origin_count(target),
        2,
        "one refresh, however many stale hits"
    );
    c.stop().await;
}

/// RFC 5861 §4 and RFC 9111 §4.2.4: with the origin down, `stale-if-error` serves the
/// stored copy; so does a disconnected cache for `stale_on_error` (10 s by default) when the
/// origin forbade nothing; `must-revalidate` is never served stale.
#[tokio::test]
async fn stale_if_error_serves_the_stored_copy_when_the_origin_is_down() {
    let c = cluster(3, 1, |cfg| {
        cfg.node.member.origin_connect_timeout = Duration::from_millis(300);
        cfg.edge.member.origin_connect_timeout = Duration::from_millis(300);
    })
    .await;
    let kept = "/sem/sie?size=600&cc=max-age%3D1%2C%20stale-if-error%3D600";
    let disconnected = "/sem/nosie?size=600&cc=max-age%3D1&etag=none";
    let strict = "/sem/sie-strict?size=600&cc=max-age%3D1%2C%20must-revalidate&etag=none";
    let first = get(c.edges[0].http_addr, kept).await;
    let other = get(c.edges[0].http_addr, disconnected).await;
    get(c.edges[0].http_addr, strict).await;
    c.stop_origin();
    // Waiting for the lifetime to pass is the behaviour under test.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for (target, body) in [(kept, &first.body), (disconnected, &other.body)] {
        let g = get(c.edges[0].http_addr, target).await;
        assert_eq!(g.status, StatusCode::OK, "{target}");
        assert_eq!(&g.body, body, "{target}");
        assert!(
            g.header("x-cache").contains("STALE"),
            "{target}: {}",
            g.header("x-cache")
        );
    }
    let g = get(c.edges[0].http_addr, strict).await;
    assert_eq!(
        g.status,
        StatusCode::BAD_GATEWAY,
        "must-revalidate: the error shows"
    );
    c.stop().await;
    // `stale_on_error = "0s"`: without the origin's stale-if-error, every error shows.
    let c = cluster(3, 1, |cfg| {
        cfg.node.member.stale_on_error = Duration::ZERO;
        cfg.edge.member.stale_on_error = Duration::ZERO;
        cfg.node.member.origin_connect_timeout = Duration::from_millis(300);
        cfg.edge.member.origin_connect_timeout = Duration::from_millis(300);
    })
    .await;
    get(c.edges[0].http_addr, disconnected).await;
    c.stop_origin();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let g = get(c.edges[0].http_addr, disconnected).await;
    assert_eq!(g.status, StatusCode::BAD_GATEWAY);
    c.stop().await;
}

#[tokio::test]
async fn ranges_are_served_from_the_whole_object_at_either_tier() {
    let c = cluster(3, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let target = "/sem/range?size=300000&cc=max-age%3D600";
    let whole = crate::support::expected(target, 300_000);
    // A Range miss fills the whole object once and answers the range from it while it flows.
    let g = get_with(edge, target, &[("range", "bytes=100000-200000")]).await;
    assert_eq!(g.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(g.header("content-range"), "bytes 100000-200000/300000");
    assert_eq!(g.header("content-length"), "100001");
    assert!(g.body == whole[100_000..=200_000]);
    let full = get(edge, target).await;
    assert_eq!(
        full.edge_cache(),
        "HIT",
        "the whole object was stored, not the fragment"
    );
    assert!(full.body == whole);
    assert_eq!(c.origin_count(target), 1);
    // From the stored object.
    for (range, start, end) in [
        ("bytes=0-0", 0, 0),
        ("bytes=-10", 299_990, 299_999),
        ("bytes=299999-", 299_999, 299_999),
    ] {
        let g = get_with(edge, target, &[("range", range)]).await;
        assert_eq!(g.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            g.header("content-range"),
            format!("bytes {start}-{end}/300000")
        );
        assert!(g.body == whole[start..=end], "{range}");
    }
    let bad = get_with(edge, target, &[("range", "bytes=300000-")]).await;
    assert_eq!(bad.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(bad.header("content-range"), "bytes */300000");
    assert!(bad.body.is_empty());
    // If-Range: the range only if the validator still matches.
    let etag = origin_stub::default_etag(target);
    let g = get_with(edge, target, &[("range", "bytes=0-9"), ("if-range", &etag)]).await;
    assert_eq!(g.status, StatusCode::PARTIAL_CONTENT);
    let g = get_with(
        edge,
        target,
        &[("range", "bytes=0-9"), ("if-range", "\"stale-tag\"")],
    )
    .await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.body.len(), 300_000);
    // Several ranges: the whole object.
    let g = get_with(edge, target, &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(c.origin_count(target), 1);
    c.stop().await;
}

#[tokio::test]
async fn vary_keeps_one_variant_per_normalised_request_field() {
    let c = cluster(3, 2, |_| {}).await;
    let target = "/sem/vary?size=100&vary=Accept-Language&cc=max-age%3D600";
    let lang = |l: &'static str| [("accept-language", l)];
    let en = get_with(c.edges[0].http_addr, target, &lang("en")).await;
    assert_eq!(en.header("x-varied"), "accept-language=en");
    assert_eq!(en.edge_cache(), "MISS");
    let fr = get_with(c.edges[0].http_addr, target, &lang("fr")).await;
    assert_eq!(fr.header("x-varied"), "accept-language=fr");
    assert_eq!(fr.edge_cache(), "MISS", "another variant");
    let en_again = get_with(c.edges[0].http_addr, target, &lang("EN")).await;
    assert_eq!(en_again.edge_cache(), "HIT", "normalised: EN is en");
    assert_eq!(en_again.header("x-varied"), "accept-language=en");
    // The node keeps both too.
    let fr_other = get_with(c.edges[1].http_addr, target, &lang("fr")).await;
    assert!(
        fr_other.header("x-cache").starts_with("MISS, HIT from"),
        "{}",
        fr_other.header("x-cache")
    );
    assert_eq!(fr_other.header("x-varied"), "accept-language=fr");
    assert_eq!(c.origin_count(target), 2);
    // Concurrent misses of different variants coalesce per variant.
    let cold = "/sem/vary2?size=100&vary=Accept-Language&latency_ms=200&cc=max-age%3D600";
    let gets = (0..20).map(|i| {
        let l = if i % 2 == 0 { "de" } else { "it" };
        let addr = c.edges[(i / 2) % 2].http_addr;
        async move { (l, get_with(addr, cold, &[("accept-language", l)]).await) }
    });
    for (l, g) in futures::future::join_all(gets).await {
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(
            g.header("x-varied"),
            format!("accept-language={l}"),
            "each client gets its own variant"
        );
    }
    assert_eq!(c.origin_count(cold), 2, "one origin request per variant");
    // A purge of the URL removes every variant.
    let (status, _) =
        crate::support::admin_purge(c.edges[0].admin_addr, serde_json::json!({"urls": [target]}))
            .await;
    assert_eq!(status, StatusCode::OK);
    for l in ["en", "fr"] {
        assert_ne!(
            get_with(c.edges[0].http_addr, target, &lang(l))
                .await
                .edge_cache(),
            "HIT",
            "{l}"
        );
    }
    c.stop().await;
}

#[tokio::test]
async fn vary_star_is_never_stored() {
    let c = cluster(3, 1, |_| {}).await;
    let target = "/sem/varystar?size=10&vary=*&cc=max-age%3D600";
    for _ in 0..2 {
        assert_eq!(get(c.edges[0].http_addr, target).await.edge_cache(), "PASS");
    }
    assert_eq!(c.origin_count(target), 2);
    c.stop().await;
}

fn http_date(offset_secs: i64) -> String {
    let now = std::time::SystemTime::now();
    let t = if offset_secs >= 0 {
        now + std::time::Duration::from_secs(offset_secs as u64)
    } else {
        now - std::time::Duration::from_secs((-offset_secs) as u64)
    };
    httpdate::fmt_http_date(t)
}

fn unix(offset_secs: i64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (now + offset_secs) as u64
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Origin query, request fields, stored?, what the row shows.
type Row = (
    String,
    Vec<(&'static str, &'static str)>,
    bool,
    &'static str,
);

/// Each row: origin response shape, request fields, whether the second GET is served from
/// the edge's cache. Every row goes through a real edge and node.
#[tokio::test]
async fn freshness_and_storability_follow_rfc_9111() {
    let c = cluster(3, 1, |cfg| {
        cfg.node.member.grace = Duration::ZERO;
        cfg.edge.member.grace = Duration::ZERO;
    })
    .await;
    let edge = c.edges[0].http_addr;
    let rows: Vec<Row> = vec![
        (
            format!("cc={}", enc("max-age=600")),
            vec![],
            true,
            "max-age",
        ),
        (
            format!(
                "cc={}&etag=none&h_expires={}",
                enc("max-age=600"),
                enc(&http_date(-60))
            ),
            vec![],
            true,
            "max-age over Expires",
        ),
        (
            format!("cc=none&etag=none&h_expires={}", enc(&http_date(600))),
            vec![],
            true,
            "Expires alone",
        ),
        (
            format!("cc=none&etag=none&h_expires={}", enc(&http_date(-60))),
            vec![],
            false,
            "expired Expires",
        ),
        (
            format!("cc={}&etag=none&h_age=700", enc("max-age=600")),
            vec![],
            false,
            "upstream Age past max-age",
        ),
        (
            format!("cc={}&etag=none", enc("no-store")),
            vec![],
            false,
            "no-store",
        ),
        (
            format!("cc={}&etag=none", enc("private, max-age=600")),
            vec![],
            false,
            "private",
        ),
        (
            format!("cc={}&etag=none", enc("max-age=600")),
            vec![("authorization", "Bearer x")],
            false,
            "Authorization",
        ),
        (
            format!("cc={}&etag=none", enc("public, max-age=600")),
            vec![("authorization", "Bearer x")],
            true,
            "Authorization + public",
        ),
        (
            format!("cc={}&etag=none", enc("s-maxage=600")),
            vec![("authorization", "Bearer x")],
            true,
            "Authorization + s-maxage",
        ),
        (
            format!("cc=none&etag=none&lm={}", unix(-10 * 86_400)),
            vec![],
            true,
            "heuristic from Last-Modified",
        ),
        (
            format!("cc=none&etag=none&status=404&lm={}", unix(-10 * 86_400)),
            vec![],
            true,
            "404 is heuristically cacheable",
        ),
        (
            format!("cc=none&etag=none&status=302&lm={}", unix(-10 * 86_400)),
            vec![],
            false,
            "302 is not",
        ),
        (
            format!("cc={}&etag=none&status=302", enc("max-age=600")),
            vec![],
            true,
            "302 with explicit freshness",
        ),
        (
            format!("cc={}&etag=none&status=410", enc("max-age=600")),
            vec![],
            true,
            "410 with max-age",
        ),
        (
            "cc=none&etag=none".to_string(),
            vec![],
            false,
            "no freshness, no validator",
        ),
        // RFC 9111 §5.2: directive names are case-insensitive; delta-seconds are digits in
        // token form (a quoted or suffixed value is invalid, so the response is stale).
        (
            format!("cc={}&etag=none", enc("Max-Age=600, No-Store")),
            vec![],
            false,
            "No-Store in another case",
        ),
        (
            format!("cc={}&etag=none", enc("MAX-AGE=600")),
            vec![],
            true,
            "MAX-AGE in another case",
        ),
        (
            format!("cc={}&etag=none", enc("max-age=\"600\"")),
            vec![],
            false,
            "quoted max-age is invalid",
        ),
        (
            format!("cc={}&etag=none", enc("max-age=600a")),
            vec![],
            false,
            "max-age with a letter is invalid",
        ),
        (
            format!(
                "cc={}&etag=none",
                enc("extension=\"max-age=600\", max-age=1")
            ),
            vec![],
            true,
            "max-age inside a quoted string is not a directive (max-age=1 is)",
        ),
        // RFC 9111 §5.1: an invalid Age is ignored; a list's first member counts.
        (
            format!("cc={}&etag=none&h_age=1a", enc("max-age=600")),
            vec![],
            true,
            "Age: 1a is ignored",
        ),
        (
            format!(
                "cc={}&etag=none&h_age={}",
                enc("max-age=600"),
                enc("700, 0")
            ),
            vec![],
            false,
            "Age: 700, 0 is 700",
        ),
        // RFC 9111 §5.3: an Expires that is not an HTTP-date has passed; the obsolete forms
        // of RFC 9110 §5.6.7 are HTTP-dates.
        (
            format!(
                "cc=none&etag=none&h_expires={}",
                enc("Thu, 18  Aug  2050 02:01:18 GMT")
            ),
            vec![],
            false,
            "Expires with several spaces inside",
        ),
        (
            format!(
                "cc=none&etag=none&h_expires={}",
                enc("Thursday, 18-Aug-50 02:01:18 GMT")
            ),
            vec![],
            true,
            "Expires in RFC 850 form",
        ),
        (
            format!(
                "cc=none&etag=none&h_expires={}",
                enc("Thu Aug 18 02:01:18 2050")
            ),
            vec![],
            true,
            "Expires in asctime form",
        ),
        // RFC 9111 §3: any final status is stored when explicitly fresh.
        (
            format!("cc=none&etag=none&status=500&lm={}", unix(-10 * 86_400)),
            vec![],
            false,
            "500 is not heuristically cacheable",
        ),
    ];
    let mut rows = rows;
    for status in [299, 400, 499, 500, 502, 503, 504, 599] {
        rows.push((
            format!("cc={}&etag=none&status={status}", enc("max-age=600")),
            vec![],
            true,
            "status with max-age",
        ));
        rows.push((
            format!(
                "cc=none&etag=none&status={status}&h_expires={}",
                enc(&http_date(600))
            ),
            vec![],
            true,
            "status with Expires",
        ));
    }
    for (i, (query, fields, stored, what)) in rows.iter().enumerate() {
        let target = format!("/sem/rows/{i}?size=10&{query}");
        get_with(edge, &target, fields).await;
        let second = get_with(edge, &target, fields).await;
        let hit = second.edge_cache() == "HIT";
        assert_eq!(
            hit,
            *stored,
            "{what}: {} (status {}, x-cache {})",
            target,
            second.status,
            second.header("x-cache")
        );
        assert_eq!(
            c.origin_count(&target),
            if *stored { 1 } else { 2 },
            "{what}"
        );
    }
    c.stop().await;
}

#[tokio::test]
async fn s_maxage_wins_over_max_age_and_upstream_age_is_counted_through_the_node() {
    let c = cluster(3, 2, |cfg| {
        cfg.node.member.grace = Duration::ZERO;
        cfg.edge.member.grace = Duration::ZERO;
    })
    .await;
    let target = format!(
        "/sem/smaxage?size=10&cc={}&etag=none",
        enc("max-age=1, s-maxage=600")
    );
    get(c.edges[0].http_addr, &target).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        get(c.edges[0].http_addr, &target).await.edge_cache(),
        "HIT",
        "s-maxage governs shared caches"
    );
    // Age: the origin says 100; the node's answer to another edge carries at least that.
    let aged = format!("/sem/aged?size=10&cc={}&h_age=100", enc("max-age=600"));
    let first = get(c.edges[0].http_addr, &aged).await;
    assert!(first.header("age").parse::<u64>().unwrap() >= 100);
    let via_node = get(c.edges[1].http_addr, &aged).await;
    assert!(via_node.header("x-cache").starts_with("MISS, HIT"));
    assert!(
        via_node.header("age").parse::<u64>().unwrap() >= 100,
        "Age {}",
        via_node.header("age")
    );
    let hit = get(c.edges[1].http_addr, &aged).await;
    assert_eq!(hit.edge_cache(), "HIT");
    assert!(hit.header("age").parse::<u64>().unwrap() >= 100);
    c.stop().await;
}

#[tokio::test]
async fn no_cache_is_stored_but_revalidated_before_every_use() {
    let c = cluster(3, 1, |_| {}).await;
    let target = "/sem/nocache?size=50&cc=no-cache";
    let first = get(c.edges[0].http_addr, target).await;
    for _ in 0..3 {
        let g = get(c.edges[0].http_addr, target).await;
        assert_eq!(g.edge_cache(), "REVALIDATED", "{}", g.header("x-cache"));
        assert_eq!(g.body, first.body);
    }
    assert_eq!(c.origin_count(target), 4);
    assert_eq!(
        stub(&c).not_modified(),
        3,
        "each use was a conditional request answered 304"
    );
    c.stop().await;
}

#[tokio::test]
async fn every_method_reaches_the_origin_and_unknown_fields_pass_through() {
    let c = cluster(3, 1, |_| {}).await;
    for m in ["PUT", "DELETE", "OPTIONS", "PATCH", "PROPFIND"] {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let g = request(
            c.edges[0].http_addr,
            method,
            "/sem/methods?h_x-origin-extra=1",
            false,
            &[("x-client-extra", "2")],
            Some("body".into()),
        )
        .await
        .unwrap();
        assert_eq!(g.status, StatusCode::OK, "{m}");
        assert!(
            g.body.starts_with(format!("{m} /sem/methods").as_bytes()),
            "{m}: {:?}",
            g.body
        );
        assert_eq!(g.header("x-origin-extra"), "1");
        assert_eq!(g.header("x-cache"), "PASS");
    }
    assert_eq!(c.origin_count("/sem/methods?h_x-origin-extra=1"), 5);
    c.stop().await;
}

#[tokio::test]
async fn client_no_cache_is_ignored_by_default_and_honoured_when_configured() {
    let target = "/sem/client-nc?size=30&cc=max-age%3D600";
    let c = cluster(3, 1, |_| {}).await;
    get(c.edges[0].http_addr, target).await;
    for cc in ["no-cache", "max-age=0"] {
        let g = get_with(c.edges[0].http_addr, target, &[("cache-control", cc)]).await;
        assert_eq!(g.edge_cache(), "HIT", "{cc} ignored by default");
    }
    assert_eq!(c.origin_count(target), 1);
    c.stop().await;
    let c = cluster(3, 1, |cfg| {
        cfg.node.member.honour_client_no_cache = true;
        cfg.edge.member.honour_client_no_cache = true;
    })
    .await;
    get(c.edges[0].http_addr, target).await;
    let g = get_with(
        c.edges[0].http_addr,
        target,
        &[("cache-control", "no-cache")],
    )
    .await;
    assert!(
        g.header("x-cache")
            .starts_with("REVALIDATED, REVALIDATED from"),
        "{}",
        g.header("x-cache")
    );
    assert_eq!(c.origin_count(target), 2);
    assert_eq!(stub(&c).not_modified(), 1);
    assert_eq!(get(c.edges[0].http_addr, target).await.edge_cache(), "HIT");
    c.stop().await;
}

/// RFC 9111 §4.2.4: by default nothing is served stale while the origin answers, unless the
/// origin allowed it: an expired response is revalidated before it is used.
#[tokio::test]
async fn an_expired_response_is_not_served_stale_by_default_rfc_9111_4_2_4() {
    let c = cluster(3, 1, |_| {}).await;
    let target = "/sem/nograce?size=20&cc=max-age%3D1";
    let first = get(c.edges[0].http_addr, target).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let g = get(c.edges[0].http_addr, target).await;
    assert!(
        g.header("x-cache")
            .starts_with("REVALIDATED, REVALIDATED from"),
        "{}",
        g.header("x-cache")
    );
    assert_eq!(g.body, first.body);
    assert_eq!(c.origin_count(target), 2);
    assert_eq!(stub(&c).not_modified(), 1);
    c.stop().await;
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale_even_with_grace() {
    let c = cluster(3, 1, |cfg| {
        cfg.node.member.grace = Duration::from_secs(10);
        cfg.edge.member.grace = Duration::from_secs(10);
    })
    .await;
    let strict = "/sem/mustreval?size=20&cc=max-age%3D1%2C%20must-revalidate";
    let graced = "/sem/graced?size=20&cc=max-age%3D1";
    get(c.edges[0].http_addr, strict).await;
    get(c.edges[0].http_addr, graced).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let g = get(c.edges[0].http_addr, strict).await;
    assert!(
        g.header("x-cache").starts_with("REVALIDATED"),
        "{}",
        g.header("x-cache")
    );
    let g = get(c.edges[0].http_addr, graced).await;
    assert_eq!(
        g.edge_cache(),
        "STALE",
        "the operator's grace serves it while refreshing"
    );
    c.stop().await;
}
