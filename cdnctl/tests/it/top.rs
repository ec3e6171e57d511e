//! `cdnctl top`: one frame for scripts, and the live view in a pseudo-terminal.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{cached, cdnctl, cluster, edge_admin, get, node_admin, status_of};

/// The cells of `member`'s line in a frame.
fn cells<'a>(frame: &'a str, member: &str) -> Vec<&'a str> {
    frame
        .lines()
        .find(|l| l.split_whitespace().next() == Some(member))
        .unwrap_or_else(|| panic!("no line for {member} in\n{frame}"))
        .split_whitespace()
        .collect()
}

fn percent(part: u64, whole: u64) -> String {
    format!("{:.1}%", 100.0 * part as f64 / whole as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_frame_lists_every_member_with_its_status_numbers() {
    let c = cluster(2, 2).await;
    for p in ["/top/a?size=100", "/top/b?size=200"] {
        cached(&c, 0, p).await;
    }
    get(c.edges[1].http_addr, "/top/a?size=100").await;

    // Every member's numbers through one admin address, an edge's or a node's: the member
    // gathers them over the cluster's links.
    for contacted in [edge_admin(&c, 0), node_admin(&c, 1)] {
        let run = cdnctl(&["top", "--once", "--admin", &contacted]).await;
        assert_eq!(run.code, 0, "{run:?}");
        let frame = &run.stdout;
        assert!(!frame.contains('\x1b'), "no escape codes in --once output");
        let mut edge_requests = 0;
        let admins = [
            ("edge-0", edge_admin(&c, 0)),
            ("edge-1", edge_admin(&c, 1)),
            ("node-0", node_admin(&c, 0)),
            ("node-1", node_admin(&c, 1)),
        ];
        for (id, admin) in &admins {
            let doc = status_of(admin).await;
            let requests = doc["requests"].as_u64().expect("requests");
            let hits = doc["hits"].as_u64().expect("hits");
            let origin = doc["origin_fetches"].as_u64().expect("origin_fetches");
            let ev = &doc["evictions"];
            let evictions: u64 = ["size", "expiry", "purge"]
                .iter()
                .map(|k| ev[*k].as_u64().expect("eviction count"))
                .sum();
            let row = cells(frame, id);
            // MEMBER ROLE STATE LINK REQS REQ/S HIT% OFFLOAD OUT OUT/S ENTRIES EVICT PURGE CONFIG
            let role = if id.starts_with("edge") {
                "edge"
            } else {
                "node"
            };
            assert_eq!(row[1], role);
            assert_eq!(row[2], "alive", "{id}\n{frame}");
            let link = if *admin == contacted { "self" } else { "up" };
            assert_eq!(row[3], link, "{id}\n{frame}");
            assert_eq!(row[4], requests.to_string(), "{id} requests\n{frame}");
            if requests > 0 {
                assert_eq!(row[6], percent(hits, requests), "{id} hit ratio\n{frame}");
                assert_eq!(row[7], percent(requests - origin, requests), "{id} offload");
            }
            assert_eq!(row[11], evictions.to_string(), "{id} evictions");
            assert_eq!(row[13], doc["config_version"].as_str().unwrap(), "{id}");
            if id.starts_with("edge") {
                edge_requests += requests;
            }
        }
        assert_eq!(edge_requests, 5);
        assert_eq!(
            cells(frame, "TOTAL")[1],
            "5",
            "TOTAL counts the edges' requests\n{frame}"
        );
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_redraws_in_a_terminal_and_quits_on_q() {
    let c = cluster(1, 1).await;
    get(c.edges[0].http_addr, "/live?size=10").await;
    // `script` (util-linux) runs cdnctl on a pseudo-terminal: our pipe is its keyboard.
    let line = format!(
        "{} top --admin {} --interval 100ms",
        env!("CARGO_BIN_EXE_cdnctl"),
        edge_admin(&c, 0),
    );
    let mut child = tokio::process::Command::new("script")
        .args(["-q", "-e", "-f", "-c", &line, "/dev/null"])
        .env_remove("CDN_ADMIN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("`script` (util-linux) runs");
    let mut keys = child.stdin.take().expect("stdin");
    let mut screen = child.stdout.take().expect("stdout");

    // Wait for the third frame: the view redraws by itself.
    let mut seen = Vec::new();
    let redrawn = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = screen.read(&mut buf).await.expect("read the terminal");
            assert!(n > 0, "top ended early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("refresh 3") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(redrawn.is_ok(), "no third frame within 30 s:\n{text}");
    assert!(
        text.contains("\x1b[?1049h"),
        "the alternate screen is taken"
    );
    // Each frame starts at home, over the last one.
    assert!(text.matches("\x1b[Hcdnctl top").count() >= 3, "{text:?}");
    assert!(text.contains("node-0"), "{text}");

    keys.write_all(b"q").await.expect("press q");
    keys.flush().await.expect("flush");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("top quits on q")
        .expect("wait");
    let mut rest = Vec::new();
    screen.read_to_end(&mut rest).await.expect("read the rest");
    let rest = String::from_utf8_lossy(&rest);
    assert!(status.success(), "exit {status:?}: {rest:?}");
    // The terminal is given back: cursor shown, alternate screen left.
    assert!(rest.contains("\x1b[?25h\x1b[?1049l"), "{rest:?}");
    c.stop().await;
}
