//! Push and prewarm through the admin API.

use http::{Method, StatusCode};
use serde_json::json;

use crate::support::{admin_purge, cluster, expected, get, ids, request};

const TOKEN: &str = "Bearer test-token";

async fn put(
    admin: std::net::SocketAddr,
    path: &str,
    fields: &[(&str, &str)],
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let g = request(
        admin,
        Method::PUT,
        path,
        false,
        fields,
        Some(body.to_string()),
    )
    .await
    .expect("admin answers");
    let v = serde_json::from_slice(&g.body).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&g.body).into(),
    ));
    (g.status, v)
}

#[tokio::test]
async fn pushed_objects_are_served_as_hits_without_origin_requests() {
    let c = cluster(3, 2, |_| {}).await;
    let key = "/pushed/a?v=1";
    let (status, report) = put(
        c.edges[0].admin_addr,
        "/objects/pushed/a?v=1",
        &[
            ("authorization", TOKEN),
            ("cache-control", "max-age=600"),
            ("content-type", "text/plain"),
            ("surrogate-key", "launch"),
        ],
        "hello from a push",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let owners: Vec<String> = c.edges[0]
        .edge
        .upstream()
        .owners(key)
        .into_iter()
        .map(|m| m.id)
        .collect();
    let mut owners_sorted = owners.clone();
    owners_sorted.sort();
    assert_eq!(
        ids(&report, "stored"),
        owners_sorted,
        "stored on its R owners: {report}"
    );
    for e in &c.edges {
        let g = get(e.http_addr, key).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.body, "hello from a push");
        assert_eq!(g.header("content-type"), "text/plain");
        assert_eq!(g.header("x-cache"), format!("MISS, HIT from {}", owners[0]));
        assert_eq!(get(e.http_addr, key).await.edge_cache(), "HIT");
    }
    assert_eq!(c.origin_count(key), 0);
    // Tags sent with a push are purgeable like the origin's.
    let (status, _) = admin_purge(
        c.nodes[0].as_ref().unwrap().admin_addr,
        json!({"tags": ["launch"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let g = get(c.edges[0].http_addr, key).await;
    assert_eq!(
        g.header("x-cache"),
        format!("MISS, MISS from {}", owners[0])
    );
    assert_eq!(c.origin_count(key), 1);
    c.stop().await;
}

#[tokio::test]
async fn edges_all_makes_the_first_get_at_every_edge_a_hit() {
    let c = cluster(3, 2, |_| {}).await;
    for (admin, key) in [
        (c.nodes[1].as_ref().unwrap().admin_addr, "/pushed/all-1"),
        (c.edges[1].admin_addr, "/pushed/all-2"),
    ] {
        let (status, report) = put(
            admin,
            &format!("/objects{key}?edges=all"),
            &[
                ("authorization", TOKEN),
                ("cache-control", "public, max-age=600"),
            ],
            "everywhere",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(ids(&report, "edges"), vec!["edge-0", "edge-1"], "{report}");
        assert!(ids(&report, "missing").is_empty(), "{report}");
        for e in &c.edges {
            let g = get(e.http_addr, key).await;
            assert_eq!(g.edge_cache(), "HIT", "{key} at {}", e.http_addr);
            assert_eq!(g.body, "everywhere");
        }
        assert_eq!(c.origin_count(key), 0);
    }
    c.stop().await;
}

#[tokio::test]
async fn a_push_needs_the_token_a_lifetime_and_a_bounded_body() {
    let c = cluster(3, 1, |cfg| {
        cfg.node.member.max_object_size = cdn_core::config::ByteSize(1024);
    })
    .await;
    let admin = c.nodes[0].as_ref().unwrap().admin_addr;
    let (status, _) = put(
        admin,
        "/objects/pushed/denied",
        &[("cache-control", "max-age=60")],
        "x",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = put(
        admin,
        "/objects/pushed/denied",
        &[
            ("authorization", "Bearer nope"),
            ("cache-control", "max-age=60"),
        ],
        "x",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, why) = put(
        admin,
        "/objects/pushed/nolife",
        &[("authorization", TOKEN)],
        "x",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{why}");
    let (status, _) = put(
        admin,
        "/objects/pushed/private",
        &[
            ("authorization", TOKEN),
            ("cache-control", "private, max-age=60"),
        ],
        "x",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let big = "y".repeat(2048);
    let (status, _) = put(
        admin,
        "/objects/pushed/big",
        &[("authorization", TOKEN), ("cache-control", "max-age=60")],
        &big,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing refused was stored: these go to the origin.
    for key in ["/pushed/denied", "/pushed/nolife", "/pushed/big"] {
        let g = get(c.edges[0].http_addr, key).await;
        assert!(g.body == expected(key, 1024), "{key}");
        assert_eq!(c.origin_count(key), 1, "{key}");
    }
    c.stop().await;
}

#[tokio::test]
async fn prewarm_fetches_each_url_once_and_fills_every_edge() {
    let c = cluster(3, 2, |_| {}).await;
    let good = "/warm/a?size=3000&cc=max-age=600";
    let private = "/warm/b?size=10&cc=private";
    let broken = "/warm/c?status=503&cc=no-store";
    let g = request(
        c.nodes[2].as_ref().unwrap().admin_addr,
        Method::POST,
        "/prewarm",
        false,
        &[("authorization", TOKEN)],
        Some(json!({"urls": [good, private, broken], "edges": true}).to_string()),
    )
    .await
    .unwrap();
    assert_eq!(g.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0]["result"], "stored", "{v}");
    assert_eq!(results[0]["status"], 200);
    assert_eq!(ids(&results[0], "edges"), vec!["edge-0", "edge-1"], "{v}");
    assert_eq!(results[1]["result"], "not cacheable", "{v}");
    assert_eq!(results[2]["result"], "not cacheable", "{v}");
    assert_eq!(results[2]["status"], 503);
    for e in &c.edges {
        let g = get(e.http_addr, good).await;
        assert_eq!(g.edge_cache(), "HIT");
        assert!(g.body == expected(good, 3000));
    }
    assert_eq!(c.origin_count(good), 1);
    // From an edge too, and without the token nothing happens.
    let denied = request(
        c.edges[0].admin_addr,
        Method::POST,
        "/prewarm",
        false,
        &[],
        Some(json!({"urls": ["/warm/d"]}).to_string()),
    )
    .await
    .unwrap();
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(c.origin_count("/warm/d"), 0);
    c.stop().await;
}
