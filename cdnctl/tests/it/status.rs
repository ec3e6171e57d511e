//! `cdnctl status`: the raw JSON and the readable summary.

use crate::support::{cdnctl, cluster, edge_admin, get, node_admin, status_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_member_and_the_nodes_it_knows() {
    let c = cluster(2, 1).await;
    get(c.edges[0].http_addr, "/status-test?size=10").await;

    let run = cdnctl(&["status", "--json", "--admin", &edge_admin(&c, 0)]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(doc["id"], "edge-0");
    assert_eq!(doc["role"], "edge");
    assert_eq!(doc["requests"], 1);
    assert!(doc["evictions"].is_object(), "{doc}");

    let run = cdnctl(&["status", "--json", "--admin", &node_admin(&c, 1)]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(doc["id"], "node-1");

    let run = cdnctl(&["status", "--admin", &edge_admin(&c, 0)]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let s = &run.stdout;
    assert!(s.starts_with("edge-0 (edge), admin "), "{s}");
    assert!(s.contains("requests 1: hits 0 (0.0%), misses 1"), "{s}");
    assert!(s.contains("cache nodes known (2):"), "{s}");
    let edge = status_of(&edge_admin(&c, 0)).await;
    for m in edge["members"].as_array().expect("members") {
        let id = m["id"].as_str().expect("id");
        let line = s
            .lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_else(|| panic!("no line for {id}: {s}"));
        assert!(line.contains(m["addr"].as_str().expect("addr")), "{line}");
        assert!(line.contains("alive") && line.contains("up"), "{line}");
    }
    c.stop().await;
}
