//! The real binaries as separate processes, for what only processes can show (kill -9).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A binary of the workspace (built by `cargo test --workspace`, next to this test's).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo test --workspace`",
        p.display()
    );
    p
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_http(addr: SocketAddr, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = crate::support::send(addr, http::Method::GET, path, false, None).await {
            if r.status.is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr}{path} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn kill_9_of_a_node_under_load_costs_no_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    assert!(Command::new(bin("cache-node"))
        .args(["init-tls", "--dir"])
        .arg(&tls)
        .status()
        .unwrap()
        .success());
    let mut procs = Procs(Vec::new());
    let quiet = || Stdio::null();
    // The origin runs in this process: the processes under test are the nodes and edges.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let stop_origin = tokio_util::sync::CancellationToken::new();
    tokio::spawn(
        origin_stub::OriginStub::new(origin_stub::Config::default())
            .run(listener, stop_origin.clone()),
    );
    let nodes: Vec<(SocketAddr, SocketAddr)> = (0..3).map(|_| (free_udp(), free_tcp())).collect();
    for (j, (quic, admin)) in nodes.iter().enumerate() {
        let mut cmd = Command::new(bin("cache-node"));
        cmd.args([
            "--id",
            &format!("node-{j}"),
            "--listen",
            &quic.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .args([
            "--origin",
            &format!("http://{origin}"),
            "--replicas",
            "2",
            "--tls-dir",
        ])
        .arg(&tls);
        for (q, _) in &nodes {
            cmd.args(["--seed", &q.to_string()]);
        }
        procs
            .0
            .push(cmd.stdout(quiet()).stderr(quiet()).spawn().unwrap());
    }
    let edges: Vec<SocketAddr> = (0..2).map(|_| free_tcp()).collect();
    for (i, http) in edges.iter().enumerate() {
        let mut cmd = Command::new(bin("edge"));
        // An L1 too small to keep 1 KiB objects: every request goes to the node tier.
        cmd.args([
            "--id",
            &format!("edge-{i}"),
            "--listen",
            &http.to_string(),
            "--admin",
            &free_tcp().to_string(),
        ])
        .args([
            "--origin",
            &format!("http://{origin}"),
            "--replicas",
            "2",
            "--capacity",
            "2KiB",
            "--tls-dir",
        ])
        .arg(&tls);
        for (q, _) in &nodes {
            cmd.args(["--seed", &q.to_string()]);
        }
        procs
            .0
            .push(cmd.stdout(quiet()).stderr(quiet()).spawn().unwrap());
    }
    for (_, admin) in &nodes {
        wait_http(*admin, "/healthz").await;
    }
    for e in &edges {
        wait_http(*e, "/ready?size=1").await;
    }
    // Warm 200 objects through both edges (each fill is copied to its second owner).
    for k in 0..200 {
        for e in &edges {
            crate::support::get(*e, &format!("/load/{k}?size=1024&cc=max-age%3D600")).await;
        }
    }
    let load = tokio::spawn(loadgen::run(loadgen::Options {
        targets: edges.clone(),
        connections: 16,
        duration: Duration::from_secs(4),
        max_requests: None,
        path: "/load/{key}?size=1024&cc=max-age%3D600".into(),
        keys: 200,
        dist: loadgen::Dist::Uniform,
        rate: Some(2_500.0),
        h2: false,
        seed: 9,
    }));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // kill -9 the first node while the load runs.
    let victim = &mut procs.0[1];
    assert!(Command::new("kill")
        .args(["-9", &victim.id().to_string()])
        .status()
        .unwrap()
        .success());
    let _ = victim.wait();
    let report = load.await.unwrap().unwrap();
    eprintln!(
        "kill -9 under load: {} requests, {:.0} req/s, errors {}, p50 {} us, p99 {} us, max {} us",
        report.requests, report.rps, report.errors, report.p50_us, report.p99_us, report.max_us
    );
    assert!(
        report.rps >= 2_000.0,
        "the load was at least 2,000 GETs/s: {:.0}",
        report.rps
    );
    assert_eq!(
        report.errors, 0,
        "no client request failed while a node was killed"
    );
}
