//! `cdnctl push` and `cdnctl prewarm`: objects placed without a client's miss.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::support::{cached, cdnctl, cluster, command, edge_admin, get, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_object_is_a_hit_with_the_pushed_bytes() {
    let c = cluster(2, 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("promo.html");
    let body = "<h1>pushed by cdnctl</h1>\n".repeat(30);
    std::fs::write(&file, &body).expect("write");
    let file = file.to_str().expect("utf-8 path");
    let path = "/pushed/promo.html";

    let run = cdnctl(&[
        "push",
        path,
        "--file",
        file,
        "--content-type",
        "text/html",
        "--max-age",
        "600",
        "--tag",
        "promo",
        "--edges",
        "all",
        "--admin",
        &edge_admin(&c, 0),
    ])
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("pushed /pushed/promo.html (780 B)"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("in edges' L1:    edge-0, edge-1"),
        "{run:?}"
    );

    for i in 0..2 {
        let got = get(c.edges[i].http_addr, path).await;
        assert_eq!(got.cache(), "HIT", "edge-{i}");
        assert_eq!(got.body, body.as_bytes(), "edge-{i}");
        assert_eq!(got.headers["content-type"], "text/html");
    }
    assert_eq!(c.origin_count(path), 0);

    // Its tag purges it.
    let run = cdnctl(&["purge", "--tag", "promo", "--admin", &edge_admin(&c, 1)]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(get(c.edges[0].http_addr, path).await.cache(), "MISS");

    // Without a lifetime the member refuses it: bad input.
    let run = cdnctl(&[
        "push",
        "/no-ttl",
        "--file",
        file,
        "--admin",
        &edge_admin(&c, 0),
    ])
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("422"), "{run:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_reads_urls_from_stdin() {
    let c = cluster(2, 1).await;
    let (a, b) = ("/warm/a?size=32", "/warm/b?size=32");
    let mut cmd = command(&[
        "prewarm",
        "--from",
        "-",
        "--edges",
        "--admin",
        &edge_admin(&c, 0),
    ]);
    cmd.env("CDN_ADMIN_TOKEN", TOKEN).stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("cdnctl runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{a}\n# not a URL\n\n{b}\n").as_bytes())
        .await
        .expect("write");
    drop(stdin);
    let run: crate::support::Run =
        tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("prewarm finishes")
            .expect("output")
            .into();
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.matches("stored").count(), 2, "{run:?}");
    for p in [a, b] {
        assert_eq!(c.origin_count(p), 1, "{p}");
        assert_eq!(get(c.edges[0].http_addr, p).await.cache(), "HIT", "{p}");
    }
    // An origin error is reported and the exit code says not everything was stored.
    let bad = "/warm/private?size=8&cc=no-store";
    let run = cdnctl(&["prewarm", bad, "--admin", &edge_admin(&c, 0)]).await;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("1 of 1 URLs not stored"), "{run:?}");
    cached(&c, 0, a).await;
    c.stop().await;
}
