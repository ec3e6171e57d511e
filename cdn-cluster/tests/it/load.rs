//! loadgen against a real cluster: what its report says (tiers, origin requests, bytes,
//! operations, errors by kind) matches what the cluster did.

use std::time::Duration;

use crate::support::{cluster, get};

fn opts(c: &cdn_cluster::Cluster, path: &str, keys: u64, sizes: &str) -> loadgen::Options {
    loadgen::Options {
        targets: vec![c.edges[0].http_addr],
        connections: 4,
        duration: Duration::from_secs(30),
        max_requests: Some(keys),
        path: path.into(),
        keys,
        dist: loadgen::Dist::Sequential,
        sizes: sizes.parse().unwrap(),
        admin: Some((c.edges[0].admin_addr, c.admin_token.clone())),
        origin: c.stub.as_ref().map(|s| s.addr),
        ..Default::default()
    }
}

/// Response body bytes of a run (its rate times its length).
fn bytes(r: &loadgen::Report) -> u64 {
    (r.bytes_per_sec * r.seconds).round() as u64
}

#[tokio::test]
async fn the_report_counts_tiers_origin_requests_and_bytes_as_the_cluster_served_them() {
    let c = cluster(2, 1, |_| {}).await;
    let sizes = "100=1,3000=1";
    let classes: loadgen::Sizes = sizes.parse().unwrap();
    let payload: u64 = (0..40).map(|k| classes.of(k)).sum();
    let path = "/lg/{key}?size={size}&cc=max-age%3D600";

    // Cold: every key once, each from the origin.
    let cold = loadgen::run(opts(&c, path, 40, sizes)).await.unwrap();
    assert_eq!((cold.requests, cold.errors), (40, 0));
    assert_eq!(cold.origin_requests, Some(40));
    assert_eq!(cold.tiers.miss, 1.0, "{:?}", cold.tiers);
    assert_eq!(bytes(&cold), payload, "each key's object is its size class");

    // Warm: every key from the edge's own cache, none from the origin.
    let warm = loadgen::run(opts(&c, path, 40, sizes)).await.unwrap();
    assert_eq!(warm.origin_requests, Some(0));
    assert_eq!(warm.tiers.edge_hit, 1.0, "{:?}", warm.tiers);
    assert_eq!(warm.edge_hit_ratio, 1.0);
    assert_eq!(bytes(&warm), payload);

    // Purges through the admin API, then every key comes from the origin again.
    let purge = loadgen::run(loadgen::Options {
        mix: "purge=1".parse().unwrap(),
        ..opts(&c, path, 40, sizes)
    })
    .await
    .unwrap();
    assert_eq!(purge.errors, 0, "{:?}", purge.errors_by_kind);
    assert_eq!(purge.ops["purge"].requests, 40);
    assert!(!purge.ops.contains_key("get"));
    let refill = loadgen::run(opts(&c, path, 40, sizes)).await.unwrap();
    assert_eq!(refill.origin_requests, Some(40));
    assert_eq!(refill.tiers.miss, 1.0);

    // Pushes store objects on the node tier: GETs find them there, the origin is not asked.
    let pushed = "/lg-push/{key}?size={size}";
    let push = loadgen::run(loadgen::Options {
        mix: "push=1".parse().unwrap(),
        ..opts(&c, pushed, 20, sizes)
    })
    .await
    .unwrap();
    assert_eq!(push.errors, 0, "{:?}", push.errors_by_kind);
    assert_eq!(push.ops["push"].requests, 20);
    let read = loadgen::run(opts(&c, pushed, 20, sizes)).await.unwrap();
    assert_eq!(read.origin_requests, Some(0));
    assert_eq!(read.tiers.node_hit, 1.0, "{:?}", read.tiers);
    let pushed_bytes: u64 = (0..20).map(|k| classes.of(k)).sum();
    assert_eq!(bytes(&read), pushed_bytes, "the pushed bodies, whole");
    let one = get(
        c.edges[0].http_addr,
        &pushed
            .replace("{key}", "3")
            .replace("{size}", &classes.of(3).to_string()),
    )
    .await;
    assert!(
        one.body.iter().all(|b| *b == b'p'),
        "the pushed body, not the origin's"
    );
}

#[tokio::test]
async fn a_mixed_run_reports_each_operation_and_errors_by_kind() {
    let c = cluster(1, 1, |_| {}).await;
    let mixed = loadgen::run(loadgen::Options {
        mix: "get=8,push=1,purge=1".parse().unwrap(),
        dist: loadgen::Dist::Uniform,
        max_requests: Some(400),
        ..opts(&c, "/mix/{key}?size={size}&cc=max-age%3D600", 50, "512")
    })
    .await
    .unwrap();
    assert_eq!(mixed.requests, 400);
    assert_eq!(mixed.errors, 0, "{:?}", mixed.errors_by_kind);
    let n = |op: &str| mixed.ops.get(op).map_or(0, |o| o.requests);
    assert_eq!(n("get") + n("push") + n("purge"), 400);
    assert!(
        (280..=360).contains(&n("get")),
        "about 80% GETs: {}",
        n("get")
    );
    assert!(n("push") > 10 && n("purge") > 10, "{:?}", mixed.ops);
    let secs: u64 = mixed.timeline.iter().map(|s| s.requests).sum();
    assert_eq!(secs, 400, "the timeline counts every request");

    // 5xx from the origin, counted as such (and still a complete report).
    let failing = loadgen::run(opts(&c, "/lg5/{key}?status=503", 10, "1"))
        .await
        .unwrap();
    assert_eq!(failing.errors, 10);
    assert_eq!(failing.errors_by_kind.get("status_5xx"), Some(&10));

    // Nothing listening: connect errors, counted, not a failed run.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let refused = loadgen::run(loadgen::Options {
        targets: vec![addr],
        connections: 1,
        ..opts(&c, "/x/{key}", 5, "1")
    })
    .await
    .unwrap();
    assert_eq!(refused.errors, 5);
    assert_eq!(refused.errors_by_kind.get("connect"), Some(&5));
}
