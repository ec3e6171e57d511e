//! The status page every admin port serves, driven in a real browser (headless Chromium,
//! which `.ci/run` installs).

use std::time::Duration;

use crate::support::cluster;

/// The browser to drive, if one is installed. `.ci/run` installs Debian's `chromium` and sets
/// `CDN_REQUIRE_CHROMIUM=1`, so in CI a missing browser fails the test instead of skipping it.
pub fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CDN_REQUIRE_CHROMIUM").is_none(),
            "no Chromium binary (Debian's `chromium`), and CDN_REQUIRE_CHROMIUM is set"
        );
        eprintln!("SKIPPED: no Chromium binary; install Debian's `chromium` (or run .ci/run)");
    }
    found
}

/// Loads `url` headless, lets its timers run for `budget` of virtual time (network waits do
/// not count), and returns the DOM as the page left it.
pub async fn dump_dom(browser: &str, url: &str, budget: Duration) -> String {
    let out = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .args(["--dump-dom", url])
        .output()
        .await
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `points` of the polyline inside the chart `<svg id="{id}">`.
fn chart_points(dom: &str, id: &str) -> Vec<(f64, f64)> {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no chart {id} in {dom}"));
    let rest = &dom[at..];
    let p = rest.find("points=\"").expect("a polyline") + "points=\"".len();
    let end = rest[p..].find('"').expect("closing quote");
    rest[p..p + end]
        .split_whitespace()
        .filter_map(|xy| {
            let (x, y) = xy.split_once(',')?;
            Some((x.parse().ok()?, y.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn the_status_page_shows_the_members_and_live_charts_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let c = cluster(3, 1, |_| {}).await;
    // Traffic while the page watches, so the request-rate chart has something to draw.
    let load = tokio::spawn(loadgen::run(loadgen::Options {
        targets: vec![c.edges[0].http_addr],
        connections: 4,
        duration: Duration::from_secs(6),
        path: "/page/{key}?size=256".into(),
        keys: 50,
        dist: loadgen::Dist::Uniform,
        rate: Some(200.0),
        seed: 1,
        ..Default::default()
    }));
    // A purge to list.
    let (status, _) = crate::support::admin_purge(
        c.edges[0].admin_addr,
        serde_json::json!({"urls": ["/page/1?size=256"]}),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    let url = format!("http://{}/", c.edges[0].admin_addr);
    let dom = dump_dom(browser, &url, Duration::from_secs(5)).await;
    for j in 0..3 {
        assert!(
            dom.contains(&format!("data-member=\"node-{j}\"")),
            "node-{j} listed: {dom}"
        );
    }
    assert!(dom.contains("edge edge-0"), "the member's own name: {dom}");
    assert!(dom.contains(">alive<"), "member states shown: {dom}");
    let rps = chart_points(&dom, "rps");
    assert!(
        rps.len() >= 2,
        "a request-rate line with a point per second: {rps:?}"
    );
    assert!(
        rps.iter().any(|(_, y)| *y < 118.0),
        "the rate rose above zero while the load ran: {rps:?}"
    );
    assert!(chart_points(&dom, "bps").len() >= 2);
    assert!(
        dom.contains("hard: url /page/1?size=256"),
        "the purge listed: {dom}"
    );
    load.await.unwrap().unwrap();
    // A node's page lists the same members.
    let node_url = format!("http://{}/", c.nodes[0].as_ref().unwrap().admin_addr);
    let dom = dump_dom(browser, &node_url, Duration::from_secs(2)).await;
    assert!(dom.contains("cache-node node-0"), "{dom}");
    for j in 0..3 {
        assert!(dom.contains(&format!("data-member=\"node-{j}\"")), "{dom}");
    }
    c.stop().await;
}

/// The value of the first sample of `series` (name with labels, as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

#[tokio::test]
async fn metrics_are_exported_in_prometheus_format_through_the_metrics_crate() {
    let c = cluster(3, 1, |_| {}).await;
    let edge = c.edges[0].http_addr;
    let key = "/metrics-test/a?size=100";
    crate::support::get(edge, key).await;
    crate::support::get(edge, key).await;
    let (status, _) =
        crate::support::admin_purge(c.edges[0].admin_addr, serde_json::json!({"urls": [key]}))
            .await;
    assert_eq!(status, http::StatusCode::OK);
    let got = crate::support::get(c.edges[0].admin_addr, "/metrics").await;
    assert_eq!(got.header("content-type"), "text/plain; version=0.0.4");
    let text = String::from_utf8_lossy(&got.body).into_owned();
    // Counters by outcome and tier, from the same table as /status.
    assert!(
        sample(
            &text,
            "cdn_requests_total{tier=\"edge\",member=\"edge-0\",outcome=\"hit\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    // Member count by state, and each QUIC link's round-trip time.
    assert_eq!(
        sample(&text, "cdn_members{member=\"edge-0\",state=\"alive\"}"),
        Some(3.0),
        "{text}"
    );
    let rtts = text
        .lines()
        .filter(|l| l.starts_with("cdn_peer_rtt_seconds{member=\"edge-0\""))
        .count();
    assert_eq!(rtts, 3, "one RTT per node link: {text}");
    // The purge removed the L1 entry: an eviction by cause.
    assert!(
        sample(
            &text,
            "cdn_evictions_total{member=\"edge-0\",cause=\"purge\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    // Latency histograms recorded where the events happen.
    assert!(
        text.contains("# TYPE cdn_origin_fetch_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("cdn_purge_fanout_seconds_bucket{member=\"edge-0\",le=\"0.5\"}"),
        "{text}"
    );
    // /status reads the same counters: nothing ran between the two scrapes, so each count
    // is the same number in both.
    let status = crate::support::get(c.edges[0].admin_addr, "/status").await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    for (key, series) in [
        (
            "hits",
            "cdn_requests_total{tier=\"edge\",member=\"edge-0\",outcome=\"hit\"}",
        ),
        (
            "misses",
            "cdn_requests_total{tier=\"edge\",member=\"edge-0\",outcome=\"miss\"}",
        ),
        (
            "node_fetches",
            "cdn_fetches_total{tier=\"edge\",member=\"edge-0\",source=\"nodes\"}",
        ),
        (
            "purges",
            "cdn_purges_total{tier=\"edge\",member=\"edge-0\"}",
        ),
        (
            "entries",
            "cdn_store_entries{tier=\"edge\",member=\"edge-0\"}",
        ),
    ] {
        let json = status[key]
            .as_u64()
            .unwrap_or_else(|| panic!("/status has {key}"));
        assert_eq!(
            sample(&text, series),
            Some(json as f64),
            "{key} vs {series}: {text}"
        );
    }
    assert_eq!(status["misses"], 1, "the first GET missed");
    assert_eq!(status["hits"], 1, "the second hit");
    // A node exports the same families.
    let node = crate::support::get(c.nodes[0].as_ref().unwrap().admin_addr, "/metrics").await;
    let text = String::from_utf8_lossy(&node.body).into_owned();
    assert!(
        sample(&text, "cdn_members{member=\"node-0\",state=\"alive\"}") == Some(3.0),
        "{text}"
    );
    c.stop().await;
}
