//! Simulation tests (turmoil): the real node code, and the edge's upstream client and origin
//! fallback, over QUIC and HTTP on a simulated network of hosts (three nodes, an origin, a
//! client), with a seeded schedule of partitions (longer than the QUIC idle timeout), slow
//! links, crashes and restarts, checking the cluster's invariants as time passes:
//! - every read returns the object (the origin stays reachable, so nothing may fail);
//! - no read returns a version older than a purge every member acknowledged, or older than a
//!   purge a member missed once the cluster has healed (the member replays it);
//! - at the end every node lists every node alive.
//!
//! quinn runs on turmoil's UDP through the adapter below; time is turmoil's (simulated), so
//! a minute of cluster life takes about a second. The fault schedule, the key stream and the
//! purges come from the seed; quinn and foca draw their own randomness, so packet-level
//! timings can differ between runs of the same seed (the invariants hold for every one).

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use cache_node::{Config, Node};
use cdn_net::tls::TlsMaterial;
use quinn::udp::{RecvMeta, Transmit};
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;

const PORT: u16 = 4433;
/// How long after the last fault ends (and after the purge) a purge some member missed must
/// have reached it.
const HEALED: Duration = Duration::from_secs(3);
const NODES: usize = 3;
const EDGES: usize = 2;
const EDGE_PORT: u16 = 8080;
const TOKEN: &str = "sim-token";
const KEYS: usize = 40;

/// quinn's socket over a turmoil UDP socket.
#[derive(Debug)]
struct SimUdp {
    socket: Arc<turmoil::net::UdpSocket>,
    incoming: Mutex<mpsc::UnboundedReceiver<(Vec<u8>, SocketAddr)>>,
    addr: SocketAddr,
}

impl SimUdp {
    /// Binds `port` on the simulated host `host`.
    async fn bind(host: &str, port: u16) -> io::Result<Arc<Self>> {
        // turmoil binds only the wildcard address; peers reach the host at its own address.
        let socket = Arc::new(turmoil::net::UdpSocket::bind(("0.0.0.0", port)).await?);
        let addr = SocketAddr::new(turmoil::lookup(host), socket.local_addr()?.port());
        let (tx, rx) = mpsc::unbounded_channel();
        let s = socket.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                if tx.send((buf[..n].to_vec(), from)).is_err() {
                    break;
                }
            }
        });
        Ok(Arc::new(Self {
            socket,
            incoming: Mutex::new(rx),
            addr,
        }))
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl quinn::UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl quinn::AsyncUdpSocket for SimUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, t: &Transmit) -> io::Result<()> {
        self.socket
            .try_send_to(t.contents, t.destination)
            .map(|_| ())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut rx = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
        match rx.poll_recv(cx) {
            Poll::Ready(Some((data, from))) => {
                let n = data.len().min(bufs[0].len());
                bufs[0][..n].copy_from_slice(&data[..n]);
                meta[0] = RecvMeta {
                    addr: from,
                    len: n,
                    stride: n,
                    ecn: None,
                    dst_ip: None,
                };
                Poll::Ready(Ok(1))
            }
            Poll::Ready(None) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// quinn's runtime on turmoil's clock (quinn's default reads the wall clock).
#[derive(Debug)]
struct SimRuntime;

impl quinn::Runtime for SimRuntime {
    fn new_timer(&self, t: std::time::Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        Box::pin(tokio::time::sleep_until(t.into()))
    }

    fn spawn(&self, future: Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        tokio::spawn(future);
    }

    fn wrap_udp_socket(
        &self,
        _: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

fn node_name(j: usize) -> String {
    format!("node-{j}")
}

fn seeds() -> Vec<String> {
    (0..NODES)
        .map(|j| SocketAddr::new(turmoil::lookup(node_name(j)), PORT).to_string())
        .collect()
}

fn edge_name(i: usize) -> String {
    format!("edge-{i}")
}

/// The edges' client listener on the simulated network.
struct SimListener(turmoil::net::TcpListener);

impl cdn_http::Listener for SimListener {
    type Io = turmoil::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Io, SocketAddr)> {
        self.0.accept().await
    }
}

/// One HTTP/1.1 request over the simulated network; the status and the whole body.
async fn http(
    host: &str,
    method: &str,
    path: &str,
    auth: bool,
) -> Result<(http::StatusCode, bytes::Bytes), String> {
    use http_body_util::BodyExt;
    let work = async {
        let s = turmoil::net::TcpStream::connect((host, EDGE_PORT))
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "cdn.example");
        if auth {
            req = req.header("authorization", format!("Bearer {TOKEN}"));
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()))
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Cut node j off from the other nodes and the edges.
    Partition(usize),
    Repair(usize),
    /// Cut edge i off from every node (clients and the origin still reach it).
    PartitionEdge(usize),
    RepairEdge(usize),
    /// Every message to and from node j takes this long (then back to 1 ms).
    Slow(usize, Duration),
    Fast(usize),
    /// Kill node j's host (its store and state are lost).
    Crash(usize),
    /// Start node j's host again.
    Restart(usize),
}

/// What the client saw.
#[derive(Default, Debug)]
struct Observed {
    gets: u64,
    failed: Vec<String>,
    /// Reads that returned a generation older than a purge acknowledged before them.
    stale_after_purge: Vec<String>,
    /// Purges every member acknowledged, and those some member missed.
    acked_purges: u64,
    partial_purges: u64,
    done: bool,
}

/// The origin: `v<generation> of <path>`, cacheable for an hour; a key's generation goes up
/// when the client changes it (before purging it).
#[derive(Default)]
struct OriginState {
    generation: Mutex<HashMap<String, u64>>,
    requests: std::sync::atomic::AtomicU64,
}

impl OriginState {
    fn generation(&self, path: &str) -> u64 {
        *self.generation.lock().unwrap().get(path).unwrap_or(&1)
    }

    fn bump(&self, path: &str) -> u64 {
        let mut g = self.generation.lock().unwrap();
        let e = g.entry(path.to_string()).or_insert(1);
        *e += 1;
        *e
    }
}

fn parse_generation(body: &[u8], key: &str) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let (g, rest) = text.strip_prefix('v')?.split_once(' ')?;
    (rest == format!("of {key}")).then_some(())?;
    g.parse().ok()
}

/// Origin connections over the simulated network.
fn sim_dialer() -> cdn_http::origin::Dialer {
    cdn_http::origin::Dialer::new(|uri: http::Uri| {
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(80);
            let s = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok(cdn_http::origin::OriginIo::new(s))
        })
    })
}

async fn serve_origin(state: Arc<OriginState>) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", 80)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        state
                            .requests
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let path = req.uri().path().to_string();
                        let body = format!("v{} of {path}", state.generation(&path));
                        http::Response::builder()
                            .header("cache-control", "max-age=3600")
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// A schedule of faults from `seed`: one node at a time is partitioned or crashed and
/// restarted, with quiet time between, so a key's other owner stays reachable throughout.
fn schedule(seed: u64) -> Vec<(Duration, Fault)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut at = Duration::from_secs(5);
    let mut out = Vec::new();
    for _ in 0..3 {
        let j = rng.random_range(0..NODES);
        if rng.random_bool(0.2) {
            let hold = Duration::from_millis(rng.random_range(3_000..8_000));
            let latency = Duration::from_millis(rng.random_range(20..200));
            out.push((at, Fault::Slow(j, latency)));
            out.push((at + hold, Fault::Fast(j)));
            at += hold;
        } else if rng.random_bool(0.25) {
            let i = rng.random_range(0..EDGES);
            let hold = Duration::from_millis(rng.random_range(11_000..15_000));
            out.push((at, Fault::PartitionEdge(i)));
            out.push((at + hold, Fault::RepairEdge(i)));
            at += hold;
        } else if rng.random_bool(0.5) {
            // Longer than the QUIC idle timeout (10 s), so links die and purges the node
            // missed can only reach it by replay when it is back.
            let hold = Duration::from_millis(rng.random_range(11_000..15_000));
            out.push((at, Fault::Partition(j)));
            out.push((at + hold, Fault::Repair(j)));
            at += hold;
        } else {
            let hold = Duration::from_millis(rng.random_range(2_000..6_000));
            out.push((at, Fault::Crash(j)));
            out.push((at + hold, Fault::Restart(j)));
            at += hold;
        }
        at += Duration::from_millis(rng.random_range(4_000..7_000));
    }
    out
}

fn run_seed(seed: u64) {
    cdn_net::tls::install_crypto_provider();
    // `RUST_LOG=...` shows the nodes' logs, stamped with simulated time.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tls = TlsMaterial::generate().expect("certificates");
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(150))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1))
        .rng_seed(seed)
        .build();
    let nodes: Arc<Mutex<HashMap<usize, Arc<Node>>>> = Arc::default();
    for j in 0..NODES {
        let (tls, nodes) = (tls.clone(), nodes.clone());
        sim.host(node_name(j), move || {
            let (tls, nodes) = (tls.clone(), nodes.clone());
            async move {
                let socket = SimUdp::bind(&node_name(j), PORT).await?;
                let addr = socket.addr;
                let mut config = Config::default();
                let m = &mut config.member;
                m.id = node_name(j);
                m.listen = addr;
                m.seeds = seeds();
                m.origin = "http://origin:80".into();
                m.replicas = 2;
                let shutdown = tokio_util::sync::CancellationToken::new();
                let net = cache_node::Net {
                    socket,
                    runtime: Arc::new(SimRuntime),
                    origin: Some(sim_dialer()),
                };
                let h = cache_node::start_on(config, &tls, net, None, shutdown.clone()).await?;
                nodes.lock().unwrap().insert(j, h.node.clone());
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let origin_state: Arc<OriginState> = Arc::default();
    let st = origin_state.clone();
    sim.host("origin", move || serve_origin(st.clone()));
    let edges: Arc<Mutex<HashMap<usize, Arc<edge::Edge>>>> = Arc::default();
    for i in 0..EDGES {
        let (tls, edges) = (tls.clone(), edges.clone());
        sim.host(edge_name(i), move || {
            let (tls, edges) = (tls.clone(), edges.clone());
            async move {
                let socket = SimUdp::bind(&edge_name(i), 0).await?;
                let listener =
                    SimListener(turmoil::net::TcpListener::bind(("0.0.0.0", EDGE_PORT)).await?);
                let addr = SocketAddr::new(turmoil::lookup(edge_name(i)), EDGE_PORT);
                let mut config = edge::Config::default();
                let m = &mut config.member;
                m.id = edge_name(i);
                m.listen = addr;
                m.seeds = seeds();
                m.origin = "http://origin:80".into();
                m.replicas = 2;
                m.admin_token = Some(TOKEN.into());
                let net = edge::Net {
                    socket,
                    runtime: Arc::new(SimRuntime),
                    origin: Some(sim_dialer()),
                };
                let shutdown = tokio_util::sync::CancellationToken::new();
                let h = edge::start_on(config, &tls, net, listener, addr, None, shutdown).await?;
                edges.lock().unwrap().insert(i, h.edge.clone());
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let observed: Arc<Mutex<Observed>> = Arc::default();
    let obs = observed.clone();
    let st = origin_state.clone();
    // The faults in force and when the last one ended (simulated time), as the schedule
    // applied them: the observer's ground truth for "the cluster has healed".
    let faults_now: Arc<Mutex<(usize, Duration)>> = Arc::default();
    let faults_seen = faults_now.clone();
    let (view_nodes, view_edges) = (nodes.clone(), edges.clone());
    // Whether every node lists every node alive, and every edge lists them all and is linked
    // to each (its links carry purges and replays).
    let whole = move || {
        let nodes = view_nodes.lock().unwrap();
        let edges = view_edges.lock().unwrap();
        nodes.len() == NODES
            && edges.len() == EDGES
            && nodes.values().all(|n| n.peers().members().len() == NODES)
            && edges.values().all(|e| {
                let up = e.upstream();
                let members = up.members();
                members.len() == NODES
                    && members
                        .iter()
                        .all(|m| m.addr.parse().is_ok_and(|a| up.pool().is_connected(a)))
            })
    };
    sim.client("client", async move {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !whole() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .map_err(|_| "nodes and edges did not converge within 10 s")?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        // The generation each key must be at least at: raised by acknowledged purges at once,
        // and by purges a member missed once every fault has been over for `HEALED` and the
        // members see each other again (by then what was missed has been delivered).
        let mut floor: HashMap<String, u64> = HashMap::new();
        let mut owed: Vec<(String, u64, Duration)> = Vec::new();
        let everyone: Vec<String> = (0..EDGES)
            .map(edge_name)
            .chain((0..NODES).map(node_name))
            .collect();
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_secs(70) {
            let elapsed = started.elapsed();
            let edge = edge_name(rng.random_range(0..EDGES));
            if rng.random_bool(0.02) {
                // The content changes at the origin, then the URL is purged through an edge.
                let key = format!("/sim/{}", rng.random_range(0..KEYS));
                let g = st.bump(&key);
                let answer = http(&edge, "PURGE", &key, true).await;
                let acked: Vec<String> = answer
                    .as_ref()
                    .ok()
                    .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| serde_json::from_value(v["acked"].clone()).ok())
                    .unwrap_or_default();
                let mut o = obs.lock().unwrap();
                if everyone.iter().all(|m| acked.contains(m)) {
                    o.acked_purges += 1;
                    floor.insert(key, g);
                } else {
                    // A member missed it (it gets it on reconnect): promised once healed.
                    o.partial_purges += 1;
                    owed.push((key, g, turmoil::sim_elapsed().unwrap_or_default()));
                }
            }
            let (active, last_end) = *faults_seen.lock().unwrap();
            let now = turmoil::sim_elapsed().unwrap_or_default();
            if active == 0 && whole() {
                owed.retain(|(k, g, issued)| {
                    if now < (*issued).max(last_end) + HEALED {
                        return true;
                    }
                    let f = floor.entry(k.clone()).or_default();
                    *f = (*f).max(*g);
                    false
                });
            }
            let key = format!("/sim/{}", rng.random_range(0..KEYS));
            let verdict = match http(&edge, "GET", &key, false).await {
                Ok((status, body)) if status == http::StatusCode::OK => {
                    match parse_generation(&body, &key) {
                        Some(g) if g < floor.get(&key).copied().unwrap_or(0) => {
                            Err((true, format!("{key} via {edge} at {elapsed:?}: v{g}")))
                        }
                        Some(_) => Ok(()),
                        None => Err((false, format!("{key} via {edge} at {elapsed:?}: {body:?}"))),
                    }
                }
                Ok((status, body)) => Err((
                    false,
                    format!("{key} via {edge} at {elapsed:?}: {status} {body:?}"),
                )),
                Err(e) => Err((false, format!("{key} via {edge} at {elapsed:?}: {e}"))),
            };
            {
                let mut o = obs.lock().unwrap();
                o.gets += 1;
                match verdict {
                    Ok(()) => {}
                    Err((true, stale)) => o.stale_after_purge.push(stale),
                    Err((false, failed)) => o.failed.push(failed),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        obs.lock().unwrap().done = true;
        Ok(())
    });
    let faults = schedule(seed);
    let mut next = 0;
    let mut clock = Duration::ZERO;
    loop {
        // The schedule counts from when the client starts reading (about 1 s in).
        while next < faults.len() && clock >= faults[next].0 + Duration::from_secs(1) {
            {
                let mut f = faults_now.lock().unwrap();
                match faults[next].1 {
                    Fault::Partition(_)
                    | Fault::PartitionEdge(_)
                    | Fault::Crash(_)
                    | Fault::Slow(..) => f.0 += 1,
                    Fault::Repair(_)
                    | Fault::RepairEdge(_)
                    | Fault::Restart(_)
                    | Fault::Fast(_) => {
                        f.0 -= 1;
                        f.1 = clock;
                    }
                }
            }
            match faults[next].1 {
                Fault::Partition(j) => {
                    for other in (0..NODES)
                        .filter(|k| *k != j)
                        .map(node_name)
                        .chain((0..EDGES).map(edge_name))
                    {
                        sim.partition(node_name(j), other);
                    }
                }
                Fault::Repair(j) => {
                    for other in (0..NODES)
                        .filter(|k| *k != j)
                        .map(node_name)
                        .chain((0..EDGES).map(edge_name))
                    {
                        sim.repair(node_name(j), other);
                    }
                }
                Fault::Slow(j, latency) => {
                    for other in (0..NODES)
                        .filter(|k| *k != j)
                        .map(node_name)
                        .chain((0..EDGES).map(edge_name))
                        .chain(["origin".to_string()])
                    {
                        sim.set_link_latency(node_name(j), other, latency);
                    }
                }
                Fault::Fast(j) => {
                    for other in (0..NODES)
                        .filter(|k| *k != j)
                        .map(node_name)
                        .chain((0..EDGES).map(edge_name))
                        .chain(["origin".to_string()])
                    {
                        sim.set_link_latency(node_name(j), other, Duration::from_millis(1));
                    }
                }
                Fault::PartitionEdge(i) => {
                    for k in 0..NODES {
                        sim.partition(edge_name(i), node_name(k));
                    }
                }
                Fault::RepairEdge(i) => {
                    for k in 0..NODES {
                        sim.repair(edge_name(i), node_name(k));
                    }
                }
                Fault::Crash(j) => {
                    nodes.lock().unwrap().remove(&j);
                    sim.crash(node_name(j));
                }
                Fault::Restart(j) => sim.bounce(node_name(j)),
            }
            next += 1;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => panic!("seed {seed}: simulation failed: {e}"),
        }
        clock = sim.elapsed();
    }
    let o = observed.lock().unwrap();
    let origin_requests = origin_state
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "seed {seed}: {} reads, {origin_requests} origin requests, {} purges acknowledged by all, \
         {} missed by someone; faults {faults:?}",
        o.gets, o.acked_purges, o.partial_purges
    );
    assert!(o.done, "seed {seed}: the client finished");
    assert!(o.gets > 1_000, "seed {seed}: {} reads", o.gets);
    assert!(o.acked_purges > 5, "seed {seed}: {} purges", o.acked_purges);
    assert!(
        o.failed.is_empty(),
        "seed {seed}: reads failed with the origin reachable: {:?} (schedule {faults:?})",
        o.failed
    );
    assert!(
        o.stale_after_purge.is_empty(),
        "seed {seed}: purged objects served after every member acknowledged the purge (or, \
         for a purge a member missed, after the cluster healed): {:?} (schedule {faults:?})",
        o.stale_after_purge
    );
    // After the last repair every node lists every node alive.
    let nodes = nodes.lock().unwrap();
    assert_eq!(nodes.len(), NODES, "seed {seed}: every node is running");
    for (j, n) in nodes.iter() {
        let alive: Vec<String> = n.peers().members().iter().map(|m| m.id.clone()).collect();
        assert_eq!(
            alive,
            (0..NODES).map(node_name).collect::<Vec<_>>(),
            "node-{j}, seed {seed}"
        );
    }
}

/// Seeds 1..=3 by default; `CDN_SIM_SEEDS=N` runs seeds 1..=N, `CDN_SIM_SEED=S` only S (to
/// replay a failure).
#[test]
fn the_node_tier_keeps_its_invariants_under_partitions_crashes_and_restarts() {
    let _cores = crate::support::sharing_blocking();
    let seeds: Vec<u64> = match (
        std::env::var("CDN_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok()),
        std::env::var("CDN_SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok()),
    ) {
        (Some(one), _) => vec![one],
        (None, Some(n)) => (1..=n).collect(),
        (None, None) => (1..=3).collect(),
    };
    for seed in seeds {
        run_seed(seed);
    }
}
