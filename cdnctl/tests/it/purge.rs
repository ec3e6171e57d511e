//! `cdnctl purge`: what it removes, and the acknowledgement report it prints.

use crate::support::{cached, cdnctl, cluster, edge_admin, get, node_admin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_url_makes_the_next_get_miss() {
    let c = cluster(2, 2).await;
    let path = "/purge/one?size=64&ct=text/plain";
    cached(&c, 0, path).await;
    assert_eq!(c.origin_count(path), 1);

    let run = cdnctl(&["purge", path, "--admin", &edge_admin(&c, 0)]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("purged: acknowledged by all 4 members"),
        "{run:?}"
    );
    let acked = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("acknowledged:"))
        .expect("an acknowledged line");
    for id in ["edge-0", "edge-1", "node-0", "node-1"] {
        assert!(acked.contains(id), "{id} missing from {acked}");
    }
    assert!(run.stdout.contains("missing:      none"), "{run:?}");

    let after = get(c.edges[0].http_addr, path).await;
    assert_eq!(after.cache(), "MISS");
    assert_eq!(c.origin_count(path), 2, "the purge reached the nodes too");

    // A full URL, as copied from a browser, names the same object.
    cached(&c, 1, path).await;
    let url = format!("http://{}{path}", c.edges[1].http_addr);
    let run = cdnctl(&["purge", &url, "--admin", &edge_admin(&c, 1)]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(get(c.edges[1].http_addr, path).await.cache(), "MISS");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_by_tag_and_by_prefix_through_a_node() {
    let c = cluster(2, 2).await;
    let tagged = "/tagged/a?size=32&tags=blue";
    let pre1 = "/pre/x/1?size=32";
    let pre2 = "/pre/x/2?size=32";
    let other = "/other?size=32";
    for p in [tagged, pre1, pre2, other] {
        cached(&c, 0, p).await;
    }
    let node = node_admin(&c, 1);

    let run = cdnctl(&["purge", "--tag", "blue", "--admin", &node]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(get(c.edges[0].http_addr, tagged).await.cache(), "MISS");
    assert_eq!(c.origin_count(tagged), 2);
    assert_eq!(get(c.edges[0].http_addr, pre1).await.cache(), "HIT");

    let run = cdnctl(&["purge", "--prefix", "/pre/", "--admin", &node]).await;
    assert_eq!(run.code, 0, "{run:?}");
    for p in [pre1, pre2] {
        assert_eq!(get(c.edges[0].http_addr, p).await.cache(), "MISS", "{p}");
        assert_eq!(c.origin_count(p), 2, "{p}");
    }
    assert_eq!(get(c.edges[0].http_addr, other).await.cache(), "HIT");
    assert_eq!(c.origin_count(other), 1);
    c.stop().await;
}
