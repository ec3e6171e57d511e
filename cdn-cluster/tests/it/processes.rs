//! The real binaries as separate processes, for what only processes can show: kill -9,
//! SIGSTOP/SIGCONT, SIGTERM, restarts, and the membership converging after each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// How waiting for a process to answer ended, when it did not.
enum NotUp {
    /// The process exited; its log's tail.
    Exited(String),
}

/// Waits until the process answers `path` on `addr` with a success; if it exits first,
/// says so with its log (a process that never answers panics after 30 s, with its log).
async fn wait_up(child: &mut Child, log: &Path, addr: SocketAddr, path: &str) -> Result<(), NotUp> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotUp::Exited(format!("{status}: {}", tail(log))));
        }
        if let Ok(r) = crate::support::send(addr, http::Method::GET, path, false, None).await {
            if r.status.is_success() {
                return Ok(());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{addr}{path} never answered; its log:\n{}",
            tail(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last lines of a process's log (empty with `CDN_TEST_LOGS`, which shows them live).
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Another process took a port between our choosing it and the child binding it (the ports
/// are picked by binding port 0 and letting go; tests run in parallel).
fn port_taken(exited: &str) -> bool {
    exited.contains("in use")
}

/// The member ids a member's `/status` lists in `state` (`alive`, `down`, `left`, ...).
async fn members_in(admin: SocketAddr, state: &str) -> Vec<String> {
    // A stopped (SIGSTOP) member accepts the connection and never answers.
    let get = crate::support::send(admin, http::Method::GET, "/status", false, None);
    let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(500), get).await else {
        return vec![];
    };
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let mut ids: Vec<String> = v["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|m| m["state"] == state)
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn ids(nodes: &[usize]) -> Vec<String> {
    nodes.iter().map(|j| format!("node-{j}")).collect()
}

/// A process's log: shown live with `CDN_TEST_LOGS=1` (and `RUST_LOG`), else kept in `path`
/// for the failure message.
fn log_to(path: &Path) -> Stdio {
    if std::env::var_os("CDN_TEST_LOGS").is_some() {
        Stdio::inherit()
    } else {
        std::fs::File::create(path).expect("log file").into()
    }
}

struct NodeProc {
    quic: SocketAddr,
    admin: SocketAddr,
    child: Option<Child>,
}

pub(crate) struct EdgeProc {
    pub(crate) http: SocketAddr,
    pub(crate) admin: SocketAddr,
    child: Child,
}

/// Cache nodes and edges as processes, an origin-stub in this process.
pub(crate) struct Fleet {
    dir: tempfile::TempDir,
    origin: SocketAddr,
    nodes: Vec<NodeProc>,
    pub(crate) edges: Vec<EdgeProc>,
    // A command the edges run under (e.g. `prlimit --nofile=512:512 --`), or nothing.
    edge_wrap: Vec<String>,
    _cores: crate::support::Cores,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let children = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.as_mut())
            .chain(self.edges.iter_mut().map(|e| &mut e.child));
        for c in children {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Fleet {
    /// `nodes` nodes and `edges` edges (edge config file lines in `edge_toml`), R = 2, each
    /// edge's L1 too small to keep 1 KiB objects so every request goes to the node tier.
    /// Returns once every node and edge lists every node alive.
    pub(crate) async fn start(
        nodes: usize,
        edges: usize,
        edge_toml: &str,
        cores: crate::support::Cores,
    ) -> Fleet {
        Self::start_wrapped(nodes, edges, edge_toml, cores, &[]).await
    }

    /// [`Fleet::start`] with every edge run under `edge_wrap` (a command that execs the rest
    /// of its arguments, e.g. `prlimit --nofile=512:512 --`).
    pub(crate) async fn start_wrapped(
        nodes: usize,
        edges: usize,
        edge_toml: &str,
        cores: crate::support::Cores,
        edge_wrap: &[&str],
    ) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        assert!(Command::new(bin("cache-node"))
            .args(["init-tls", "--dir"])
            .arg(dir.path().join("tls"))
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = listener.local_addr().unwrap();
        tokio::spawn(
            origin_stub::OriginStub::new(origin_stub::Config::default())
                .run(listener, tokio_util::sync::CancellationToken::new()),
        );
        let mut fleet = Fleet {
            dir,
            origin,
            nodes: (0..nodes)
                .map(|_| NodeProc {
                    quic: free_udp(),
                    admin: free_tcp(),
                    child: None,
                })
                .collect(),
            edges: Vec::new(),
            edge_wrap: edge_wrap.iter().map(|s| s.to_string()).collect(),
            _cores: cores,
        };
        for j in 0..nodes {
            fleet.node_up(j).await;
        }
        std::fs::write(fleet.dir.path().join("edge.toml"), edge_toml).unwrap();
        for i in 0..edges {
            fleet.edge_up(i).await;
        }
        let all: Vec<usize> = (0..nodes).collect();
        // Start-up, not what the tests measure: under the whole suite's load on 2 cores three
        // processes' first gossip rounds have taken over 10 s.
        let took = fleet.converge(&all, Duration::from_secs(30)).await;
        eprintln!("{nodes} nodes and {edges} edges agree on the member list {took:?} after start");
        fleet
    }

    fn spawn_node(&mut self, j: usize) {
        let mut cmd = Command::new(bin("cache-node"));
        cmd.args(["--id", &format!("node-{j}")])
            .args(["--listen", &self.nodes[j].quic.to_string()])
            .args(["--admin", &self.nodes[j].admin.to_string()])
            .args(["--origin", &format!("http://{}", self.origin)])
            .args(["--replicas", "2", "--tls-dir"])
            .arg(self.dir.path().join("tls"));
        for n in &self.nodes {
            cmd.args(["--seed", &n.quic.to_string()]);
        }
        if let Some(engine) = crate::support::test_store_engine() {
            cmd.args(["--store-engine", engine.as_str()]);
        }
        let log = self.log(&format!("node-{j}"));
        let child = cmd.stdout(Stdio::null()).stderr(log_to(&log)).spawn();
        self.nodes[j].child = Some(child.unwrap());
    }

    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts node `j` (again, after a kill) and waits for it to answer, on fresh ports if
    /// another process took its own meanwhile.
    async fn node_up(&mut self, j: usize) {
        for _ in 0..3 {
            if self.nodes[j].child.is_none() {
                self.spawn_node(j);
            }
            let (admin, log) = (self.nodes[j].admin, self.log(&format!("node-{j}")));
            let child = self.nodes[j].child.as_mut().expect("spawned");
            match wait_up(child, &log, admin, "/healthz").await {
                Ok(()) => return,
                Err(NotUp::Exited(why)) if port_taken(&why) => {
                    eprintln!("node-{j} lost its port to another process, retrying: {why}");
                    self.nodes[j].child = None;
                    self.nodes[j].quic = free_udp();
                    self.nodes[j].admin = free_tcp();
                }
                Err(NotUp::Exited(why)) => panic!("node-{j} exited: {why}"),
            }
        }
        panic!("node-{j} lost its ports three times");
    }

    /// Starts edge `i` (config file `edge.toml`, seeded with every node) and waits until
    /// it serves a GET through the node tier.
    async fn edge_up(&mut self, i: usize) {
        let log = self.log(&format!("edge-{i}"));
        for _ in 0..3 {
            let (http, admin) = (free_tcp(), free_tcp());
            let mut cmd = match self.edge_wrap.split_first() {
                Some((wrapper, args)) => {
                    let mut c = Command::new(wrapper);
                    c.args(args).arg(bin("edge"));
                    c
                }
                None => Command::new(bin("edge")),
            };
            cmd.arg("--config").arg(self.dir.path().join("edge.toml"));
            cmd.args(["--id", &format!("edge-{i}")])
                .args(["--listen", &http.to_string()])
                .args(["--admin", &admin.to_string()])
                .args(["--origin", &format!("http://{}", self.origin)])
                .args(["--replicas", "2", "--capacity", "2KiB", "--tls-dir"])
                .arg(self.dir.path().join("tls"));
            for n in &self.nodes {
                cmd.args(["--seed", &n.quic.to_string()]);
            }
            if let Some(engine) = crate::support::test_store_engine() {
                cmd.env("CDN_STORE_ENGINE", engine.as_str());
            }
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(log_to(&log))
                .spawn()
                .unwrap();
            match wait_up(&mut child, &log, http, "/ready?size=1").await {
                Ok(()) => {
                    self.edges.push(EdgeProc { http, admin, child });
                    return;
                }
                Err(NotUp::Exited(why)) if port_taken(&why) => {
                    eprintln!("edge-{i} lost its port to another process, retrying: {why}");
                }
                Err(NotUp::Exited(why)) => panic!("edge-{i} exited: {why}"),
            }
        }
        panic!("edge-{i} lost its ports three times");
    }

    /// Node `j`'s admin address.
    pub(crate) fn node_admin(&self, j: usize) -> SocketAddr {
        self.nodes[j].admin
    }

    /// The process ids of node `j` and edge `i` (for reading their resident memory).
    pub(crate) fn pids(&self, j: usize, i: usize) -> (u32, u32) {
        let node = self.nodes[j].child.as_ref().expect("node running").id();
        (node, self.edges[i].child.id())
    }

    /// Waits for node `j`'s process to exit, off the runtime (the load keeps running).
    async fn reap(&mut self, j: usize) -> std::process::ExitStatus {
        let mut child = self.nodes[j].child.take().expect("node running");
        tokio::task::spawn_blocking(move || child.wait().expect("wait for the node"))
            .await
            .expect("reaper")
    }

    fn signal(&self, j: usize, sig: &str) {
        let pid = self.nodes[j].child.as_ref().expect("node running").id();
        assert!(Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success());
    }

    /// Every running member's admin address.
    fn admins(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.admin)
            .chain(self.edges.iter().map(|e| e.admin))
            .collect()
    }

    /// Waits until every running member lists exactly `alive` as alive; panics after
    /// `within`. Returns how long it took.
    async fn converge(&self, alive: &[usize], within: Duration) -> Duration {
        let want = ids(alive);
        let started = Instant::now();
        for admin in self.admins() {
            loop {
                let got = members_in(admin, "alive").await;
                if got == want {
                    break;
                }
                assert!(
                    started.elapsed() < within,
                    "{admin} lists {got:?} alive, not {want:?}, after {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        started.elapsed()
    }

    /// Waits until every other running member lists node `j` in `state`; returns how long
    /// it took.
    async fn all_see(&self, j: usize, state: &str, within: Duration) -> Duration {
        let started = Instant::now();
        let id = format!("node-{j}");
        let others = self
            .admins()
            .into_iter()
            .filter(|a| *a != self.nodes[j].admin);
        for admin in others {
            while !members_in(admin, state).await.contains(&id) {
                assert!(
                    started.elapsed() < within,
                    "{admin} does not list {id} as {state} after {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        started.elapsed()
    }

    /// GETs 200 objects through every edge (each fill is copied to its second owner).
    async fn warm(&self) {
        for k in 0..200 {
            for e in &self.edges {
                let g = crate::support::get(e.http, &format!("{PATH_PREFIX}{k}{PATH_QUERY}")).await;
                assert_eq!(g.status, http::StatusCode::OK);
            }
        }
    }

    /// An open-loop load of `rate` GETs/s over the warmed objects through every edge.
    fn load(&self, rate: f64, secs: u64, seed: u64) -> tokio::task::JoinHandle<loadgen::Report> {
        let opts = loadgen::Options {
            targets: self.edges.iter().map(|e| e.http).collect(),
            // Enough connections that a request waiting out a hedge delay does not hold up
            // the ones scheduled after it (open loop: latency counts from when each was due).
            connections: 64,
            duration: Duration::from_secs(secs),
            path: format!("{PATH_PREFIX}{{key}}{PATH_QUERY}"),
            keys: 200,
            dist: loadgen::Dist::Uniform,
            rate: Some(rate),
            seed,
            ..Default::default()
        };
        tokio::spawn(async move { loadgen::run(opts).await.expect("load runs") })
    }
}

const PATH_PREFIX: &str = "/load/";
const PATH_QUERY: &str = "?size=1024&cc=max-age%3D600";

fn print(what: &str, r: &loadgen::Report) {
    eprintln!(
        "{what}: {} requests, {:.0} req/s, errors {}, p50 {} us, p99 {} us, max {} us",
        r.requests, r.rps, r.errors, r.p50_us, r.p99_us, r.max_us
    );
}

#[tokio::test]
async fn kill_9_of_a_node_under_load_costs_no_failed_request() {
    let alone = crate::support::Cores::Measuring(crate::support::measuring().await);
    let mut f = Fleet::start(3, 2, "", alone).await;
    f.warm().await;
    let before = f.load(2_500.0, 1, 8).await.unwrap();
    print("the same load before the kill", &before);
    // The kill window: from just after the load starts until 5 s later, past the moment
    // every member lists the node down (about 2.5 s).
    let load = f.load(2_500.0, 5, 9);
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.signal(1, "-9");
    let killed = Instant::now();
    f.reap(1).await;
    // Every node and edge marks it down: from then on no edge routes to it.
    f.all_see(1, "down", Duration::from_secs(10)).await;
    let detected = killed.elapsed();
    let report = load.await.unwrap();
    print("kill window (kill -9 under load)", &report);
    eprintln!("kill -9: every node and edge lists the node down {detected:?} after the kill");
    assert!(
        detected < Duration::from_millis(4_900),
        "the kill window ends after every member saw the death"
    );
    assert!(
        report.rps >= 2_000.0,
        "the load was at least 2,000 GETs/s: {:.0}",
        report.rps
    );
    assert_eq!(
        before.errors + report.errors,
        0,
        "no client request failed while a node was killed"
    );
    f.converge(&[0, 2], Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_stopped_node_is_hedged_around_and_rejoins_when_continued() {
    let hedge_ms = 25;
    let alone = crate::support::Cores::Measuring(crate::support::measuring().await);
    let f = Fleet::start(3, 2, &format!("hedge_after = \"{hedge_ms}ms\"\n"), alone).await;
    f.warm().await;
    // The cores are this test's alone: at 2,000 GETs/s, sharing them with another test's
    // cluster once swung the debug build's p99 past the bound on a 2-core CI machine.
    let normal = f.load(2_000.0, 3, 1).await.unwrap();
    print("node hits, no fault", &normal);
    let load = f.load(2_000.0, 3, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.signal(1, "-STOP");
    let stopped = Instant::now();
    let report = load.await.unwrap();
    print("node 1 stopped (SIGSTOP) under load", &report);
    assert_eq!(report.errors, 0, "no request failed while a node hung");
    // The hang is absorbed by hedging: p99 within the hedge delay plus the normal p99.
    let bound = hedge_ms * 1_000 + normal.p99_us;
    assert!(
        report.p99_us <= bound,
        "p99 {} us while a node hung, over hedge delay + normal p99 = {bound} us",
        report.p99_us
    );
    f.all_see(1, "down", Duration::from_secs(10)).await;
    eprintln!("SIGSTOP: declared down within {:?}", stopped.elapsed());
    f.signal(1, "-CONT");
    let took = f.converge(&[0, 1, 2], Duration::from_secs(10)).await;
    eprintln!("SIGCONT: every member lists node-1 alive again after {took:?}");
}

#[tokio::test]
async fn a_restarted_node_rejoins_and_serves_its_share() {
    let shared = crate::support::Cores::Sharing(crate::support::sharing().await);
    let mut f = Fleet::start(3, 1, "", shared).await;
    f.signal(1, "-9");
    f.reap(1).await;
    // Detection takes about 2.5 s; the bound leaves room for a 2-core machine running the
    // whole suite at once.
    f.all_see(1, "down", Duration::from_secs(20)).await;
    f.node_up(1).await;
    let took = f.converge(&[0, 1, 2], Duration::from_secs(10)).await;
    eprintln!("restart: every member lists node-1 alive again after {took:?}");
    // Fresh keys spread over all three nodes again, the restarted one included.
    let edge = f.edges[0].http;
    for k in 0..300 {
        let g = crate::support::get(edge, &format!("/share/{k}?size=16")).await;
        assert_eq!(g.status, http::StatusCode::OK);
    }
    let status = crate::support::get(f.nodes[1].admin, "/status").await;
    let v: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let served = v["origin_fetches"].as_u64().unwrap();
    assert!(
        (70..=130).contains(&served),
        "the restarted node filled {served} of 300 fresh keys, not about a third"
    );
}

#[tokio::test]
async fn sigterm_leaves_the_cluster_without_failing_a_request() {
    let shared = crate::support::Cores::Sharing(crate::support::sharing().await);
    let mut f = Fleet::start(3, 2, "", shared).await;
    f.warm().await;
    let load = f.load(2_000.0, 3, 5);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    f.signal(1, "-TERM");
    let exit = f.reap(1).await;
    assert!(exit.success(), "the node exits cleanly on SIGTERM: {exit}");
    // It told everyone before it exited.
    f.all_see(1, "left", Duration::from_millis(200)).await;
    let report = load.await.unwrap();
    print("SIGTERM of a node under load", &report);
    assert_eq!(report.errors, 0, "no request failed while a node left");
}
