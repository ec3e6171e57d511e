//! The cluster view every admin port serves (`/cluster`, `/cluster.html`): every member's
//! status gathered over the member links, from an edge and from a node, with a member gone,
//! and the page in headless Chromium.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::status_page::{chromium, dump_dom};
use crate::support::{cluster, get, TestCluster};

/// A JSON document from an admin address.
async fn json_of(addr: SocketAddr, path: &str) -> Value {
    let g = get(addr, path).await;
    assert_eq!(g.status, http::StatusCode::OK, "GET {path} on {addr}");
    serde_json::from_slice(&g.body).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Each member's admin address, by id.
fn admins(c: &TestCluster) -> Vec<(String, SocketAddr)> {
    let mut v: Vec<(String, SocketAddr)> = c
        .edges
        .iter()
        .map(|e| (e.edge.config().member.id.clone(), e.admin_addr))
        .collect();
    v.extend(
        c.nodes
            .iter()
            .flatten()
            .map(|n| (n.id().to_string(), n.admin_addr)),
    );
    v
}

/// The view's line for `id`.
fn line<'a>(view: &'a Value, id: &str) -> &'a Value {
    view["members"]
        .as_array()
        .and_then(|m| m.iter().find(|r| r["id"] == id))
        .unwrap_or_else(|| panic!("{id} not in the view: {view:#}"))
}

/// The ids in the view, in its order.
fn ids(view: &Value) -> Vec<String> {
    view["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

/// `from`'s view once it has a fresh answer from each of `n` members. On a loaded machine a
/// member can miss a gather's deadline (it is then shown unreachable, as it should be): wait
/// for a gather that reached everyone, within a deadline.
async fn complete_view(from: SocketAddr, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = json_of(from, "/cluster").await;
        let lines = v["members"].as_array().expect("members");
        if lines.len() == n && lines.iter().all(|l| l["link"] != "unreachable") {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no gather reached all {n} members within 30 s: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Traffic through both edges: edge-0 gets 2 misses and 2 hits, edge-1 1 miss and 2 hits
/// (one of its keys edge-0 already brought to a node).
async fn traffic(c: &TestCluster) {
    for (i, path) in [
        (0, "/cv/a?size=100"),
        (0, "/cv/a?size=100"),
        (0, "/cv/b?size=300"),
        (0, "/cv/b?size=300"),
        (1, "/cv/a?size=100"),
        (1, "/cv/a?size=100"),
        (1, "/cv/a?size=100"),
    ] {
        let g = get(c.edges[i].http_addr, path).await;
        assert_eq!(g.status, http::StatusCode::OK, "GET {path} via edge-{i}");
    }
}

#[tokio::test]
async fn every_member_is_listed_from_an_edge_and_from_a_node() {
    let c = cluster(2, 2, |_| {}).await;
    traffic(&c).await;
    let members = admins(&c);
    // Each member's own /status, after the traffic: nothing counts between these and the
    // views below.
    let mut own = Vec::new();
    for (id, addr) in &members {
        own.push((id.clone(), *addr, json_of(*addr, "/status").await));
    }
    for from in [
        c.edges[0].admin_addr,
        c.nodes[0].as_ref().unwrap().admin_addr,
    ] {
        let view = complete_view(from, 4).await;
        assert_eq!(
            ids(&view),
            ["edge-0", "edge-1", "node-0", "node-1"],
            "every member, edges first, from {from}: {view:#}"
        );
        for (id, addr, status) in &own {
            let l = line(&view, id);
            let role = if id.starts_with("edge") {
                "edge"
            } else {
                "node"
            };
            assert_eq!(l["role"], role, "{id}");
            assert_eq!(l["state"], "alive", "{id} from {from}");
            let self_line = *addr == from;
            assert_eq!(l["link"], if self_line { "self" } else { "up" }, "{id}");
            assert_eq!(l["admin_addr"], addr.to_string(), "{id}'s admin address");
            for k in [
                "requests",
                "hits",
                "origin_fetches",
                "bytes_sent",
                "entries",
            ] {
                assert_eq!(l[k], status[k], "{id}'s {k} from {from}");
            }
            assert_eq!(l["evictions"], status["evictions"], "{id}");
            assert_eq!(l["config_version"], status["config_version"], "{id}");
            let requests = status["requests"].as_u64().unwrap();
            let hits = status["hits"].as_u64().unwrap();
            if requests > 0 {
                assert_eq!(l["hit_ratio"], hits as f64 / requests as f64, "{id}");
            }
        }
        assert_eq!(line(&view, "edge-0")["requests"], 4);
        assert_eq!(line(&view, "edge-0")["hits"], 2);
        assert_eq!(line(&view, "edge-1")["requests"], 3);
        assert_eq!(line(&view, "edge-1")["hits"], 2);
        let node_requests: u64 = ["node-0", "node-1"]
            .iter()
            .map(|n| line(&view, n)["requests"].as_u64().unwrap())
            .sum();
        assert!(node_requests >= 3, "the nodes served the edges' misses");
        // One config per role (every member of a role started from one template).
        let versions = &view["total"]["config_versions"];
        assert_eq!(versions["edge"].as_array().map(Vec::len), Some(1), "{view}");
        assert_eq!(versions["node"].as_array().map(Vec::len), Some(1), "{view}");
        let total = &view["total"];
        assert_eq!(total["requests"], 7, "clients' requests: the edges'");
        assert_eq!(total["hits"], 4);
        assert_eq!(total["unreachable"], 0);
        let origin: u64 = own
            .iter()
            .map(|(_, _, s)| s["origin_fetches"].as_u64().unwrap())
            .sum();
        assert_eq!(total["origin_fetches"], origin);
        assert_eq!(total["origin_offload"], (7 - origin) as f64 / 7.0);
    }

    // Rates: between two gathers (at least a second apart), 5 more requests at edge-1.
    let edge1 = c.edges[1].admin_addr;
    let first = complete_view(edge1, 4).await;
    let t0 = first["now_ms"].as_u64().unwrap();
    for _ in 0..5 {
        get(c.edges[1].http_addr, "/cv/a?size=100").await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let v = complete_view(edge1, 4).await;
        if v["now_ms"].as_u64().unwrap() > t0 {
            break v;
        }
        assert!(Instant::now() < deadline, "no new gather within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let l = line(&second, "edge-1");
    assert_eq!(l["requests"], 8);
    // 5 requests between two samples of edge-1's counters at least half a second apart.
    let rps = l["requests_per_s"]
        .as_f64()
        .expect("a rate from two gathers");
    assert!(rps > 0.0 && rps <= 10.0, "5 requests: {rps}/s");
    assert_eq!(line(&second, "edge-0")["requests_per_s"], 0.0);
    c.stop().await;
}

#[tokio::test]
async fn a_member_that_stops_shows_as_down_or_unreachable_and_the_view_still_answers() {
    let mut c = cluster(2, 2, |_| {}).await;
    traffic(&c).await;
    let edge0 = c.edges[0].admin_addr;
    let node0 = c.nodes[0].as_ref().unwrap().admin_addr;
    let before = complete_view(edge0, 4).await;
    complete_view(node0, 4).await;
    let node1_requests = line(&before, "node-1")["requests"].clone();
    assert_eq!(line(&before, "node-1")["link"], "up");

    // node-1 crashes (its links close without LEAVING).
    c.abort_node(1).await;
    // Every answer comes within the per-member bound (a second, plus room for a loaded debug
    // build), whatever node-1 does; node-1 is unreachable at once and declared down by the
    // failure detector within seconds.
    let watch = |from: SocketAddr, until: fn(&Value) -> bool| async move {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let asked = Instant::now();
            let v = json_of(from, "/cluster").await;
            let took = asked.elapsed();
            assert!(took < Duration::from_secs(5), "/cluster took {took:?}");
            if until(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "never true from {from}: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let v = watch(edge0, |v| line(v, "node-1")["link"] == "unreachable").await;
    let n1 = line(&v, "node-1");
    assert!(n1["error"].is_string(), "why it is unreachable: {n1}");
    assert_eq!(n1["requests"], node1_requests, "its last known numbers");
    assert_eq!(
        line(&v, "edge-1")["state"],
        "alive",
        "edge-1 still reported by node-0"
    );
    let v = watch(node0, |v| line(v, "node-1")["state"] == "down").await;
    assert_eq!(line(&v, "node-1")["link"], "unreachable");
    let v = watch(edge0, |v| line(v, "node-1")["state"] == "down").await;
    assert_eq!(v["total"]["unreachable"], 1);

    // edge-1 shuts down: its node says it left, and the view keeps its last numbers.
    let e1 = c.edges.remove(1);
    e1.stop().await;
    for from in [node0, edge0] {
        let v = watch(from, |v| line(v, "edge-1")["state"] == "left").await;
        let l = line(&v, "edge-1");
        assert_eq!(l["link"], "unreachable");
        assert_eq!(l["requests"], 3, "edge-1's last numbers");
    }
    c.stop().await;
}

/// The text of the cell `col` in the table row of `member`, in a DOM Chromium dumped.
fn cell_text(dom: &str, member: &str, col: &str) -> String {
    let row = dom
        .find(&format!("<tr data-member=\"{member}\""))
        .unwrap_or_else(|| panic!("no row for {member} in {dom}"));
    let end = dom[row..].find("</tr>").expect("row end") + row;
    let row = &dom[row..end];
    let at = row
        .find(&format!("data-col=\"{col}\""))
        .unwrap_or_else(|| panic!("no {col} cell for {member} in {row}"));
    let text = &row[at..];
    let start = text.find('>').expect("tag end") + 1;
    let end = text.find("</td>").expect("cell end");
    // The cell's text, with any markup inside it (a link) dropped.
    strip_tags(&text[start..end])
}

fn strip_tags(s: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for ch in s.chars() {
        match ch {
            '<' => inside = true,
            '>' => inside = false,
            _ if !inside => out.push(ch),
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn the_cluster_page_shows_every_member_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let c = cluster(2, 2, |_| {}).await;
    traffic(&c).await;
    let members = admins(&c);
    for from in [
        c.edges[0].admin_addr,
        c.nodes[1].as_ref().unwrap().admin_addr,
    ] {
        // The member has everyone's numbers (one that misses a later gather on a loaded
        // machine is shown with them).
        complete_view(from, 4).await;
        let url = format!("http://{from}/cluster.html");
        let dom = dump_dom(browser, &url, Duration::from_secs(3)).await;
        for (id, addr) in &members {
            let status = json_of(*addr, "/status").await;
            let role = if id.starts_with("edge") {
                "edge"
            } else {
                "node"
            };
            assert!(
                dom.contains(&format!("<tr data-member=\"{id}\" data-role=\"{role}\">")),
                "{id} listed as {role} from {from}: {dom}"
            );
            assert_eq!(cell_text(&dom, id, "id"), *id);
            assert_eq!(cell_text(&dom, id, "state"), "alive", "{id}");
            let requests = status["requests"].as_u64().unwrap();
            let hits = status["hits"].as_u64().unwrap();
            assert_eq!(
                cell_text(&dom, id, "requests"),
                requests.to_string(),
                "{id}"
            );
            let ratio = if requests == 0 {
                "–".to_string()
            } else {
                format!("{:.1}%", 100.0 * hits as f64 / requests as f64)
            };
            assert_eq!(cell_text(&dom, id, "hit_ratio"), ratio, "{id} from {from}");
            assert_eq!(
                cell_text(&dom, id, "config_version"),
                status["config_version"].as_str().unwrap(),
                "{id}"
            );
        }
        // edge-0: 2 hits of 4; edge-1: 2 of 3; the total is the edges': 4 of 7.
        assert_eq!(cell_text(&dom, "edge-0", "hit_ratio"), "50.0%");
        assert_eq!(cell_text(&dom, "edge-1", "hit_ratio"), "66.7%");
        assert_eq!(cell_text(&dom, "total", "requests"), "7");
        assert_eq!(cell_text(&dom, "total", "hit_ratio"), "57.1%");
        assert!(dom.contains("4 members"), "the heading counts them: {dom}");
    }
    c.stop().await;
}
