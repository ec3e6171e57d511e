//! Simulation tests (turmoil): the real node code, and the edge's upstream client and origin
//! fallback, over QUIC and HTTP on a simulated network of hosts (three nodes, an origin, a
//! client), with a seeded schedule of partitions (longer than the QUIC idle timeout), crashes
//! and restarts, checking the cluster's invariants as time passes:
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
use cdn_core::fill::{Coalescer, Sink};
use cdn_core::peers::{fan_out_purge, Inbound, Me, PeerPool, PurgeReport, Timeouts};
use cdn_core::quic::{send_frame, FrameReader};
use cdn_core::store::{Eviction, Store};
use cdn_core::tls::TlsMaterial;
use cdn_core::upstream::Upstream;
use cdn_proto::{Frame, Invalidation, Position, Role};
use futures::future::BoxFuture;
use quinn::udp::{RecvMeta, Transmit};
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;

const PORT: u16 = 4433;
/// How long the cluster must look whole before purges a member missed must have reached it.
const HEALED: Duration = Duration::from_secs(3);
const NODES: usize = 3;
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

/// The client's stand-in for an edge's inbound handler: applies member lists, acknowledges
/// purges (and records them).
struct ClientInbound {
    pool: std::sync::Weak<PeerPool>,
}

impl Inbound for ClientInbound {
    fn serve(
        &self,
        _from: Arc<str>,
        addr: SocketAddr,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> BoxFuture<'static, ()> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let frame = FrameReader::new(recv).next().await;
            match frame {
                Ok(Some(Frame::Members { members })) => {
                    if let Some(p) = pool.upgrade() {
                        p.set_view(addr, members);
                    }
                }
                Ok(Some(Frame::Purge { .. })) => {}
                _ => return,
            }
            let ack = Frame::Ack {
                acked: vec!["client".into()],
                missing: vec![],
            };
            if send_frame(&mut send, &ack).await.is_ok() {
                let _ = send.finish();
            }
        })
    }

    fn position(&self, _: SocketAddr) -> Position {
        Position::default()
    }

    fn resume(
        &self,
        _: Arc<str>,
        _: SocketAddr,
        _: Position,
        _: Vec<Invalidation>,
        _: bool,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Cut node j off from everyone (nodes and client).
    Partition(usize),
    Repair(usize),
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
fn sim_dialer() -> cdn_core::origin::Dialer {
    cdn_core::origin::Dialer::new(|uri: http::Uri| {
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(80);
            let s = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok(cdn_core::origin::OriginIo::new(s))
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
        if rng.random_bool(0.5) {
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
    cdn_core::install_crypto_provider();
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
                let config = Config {
                    id: node_name(j),
                    listen: addr,
                    seeds: seeds(),
                    origin: "http://origin:80".into(),
                    replicas: 2,
                    ..Config::default()
                };
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
    let observed: Arc<Mutex<Observed>> = Arc::default();
    let obs = observed.clone();
    let st = origin_state.clone();
    sim.client("client", async move {
        let socket = SimUdp::bind("client", 0).await?;
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(SimRuntime),
        )?;
        let transport = cdn_core::tls::transport(1024, Duration::from_secs(10));
        endpoint.set_default_client_config(tls.quic_client(transport)?);
        let pool = PeerPool::new(
            endpoint,
            Me {
                id: "client".into(),
                role: Role::Edge,
                region: String::new(),
                addr: String::new(),
            },
            Timeouts {
                connect: Duration::from_millis(1_000),
                response: Duration::from_millis(2_000),
                retry: Duration::from_millis(500),
            },
        );
        pool.set_inbound(Arc::new(ClientInbound {
            pool: Arc::downgrade(&pool),
        }));
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(pool.clone().maintain(seeds(), stop.clone()));
        // The edge's own pieces: the upstream client (owners, failover, hedging), and the
        // origin as the fallback when no owner answers.
        let up = Upstream::new(pool.clone(), 2, Some(Duration::from_millis(50)));
        let origin = cdn_core::origin::Origin::with_dialer(
            "http://origin:80",
            sim_dialer(),
            Duration::from_secs(2),
        )?;
        // Members converge: the client (through the nodes' views) lists all three alive.
        let mut members = pool.watch_members();
        tokio::time::timeout(
            Duration::from_secs(10),
            members.wait_for(|m| m.len() == NODES),
        )
        .await
        .map_err(|_| "the three nodes did not converge within 10 s")??;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        let l1 = Store::new(1, Eviction::Lru);
        let rules = cdn_core::policy::Rules::default();
        let sink = Sink {
            store: &l1,
            max_object: 1 << 20,
            rules: &rules,
        };
        let headers = http::HeaderMap::new();
        // The generation each key must be at least at: raised by acknowledged purges at once,
        // and by purges a member missed once the cluster has looked whole for `HEALED` (by
        // then the member has replayed what it missed from its peers).
        let mut floor: HashMap<String, u64> = HashMap::new();
        let mut owed: Vec<(String, u64)> = Vec::new();
        let mut whole_since: Option<tokio::time::Instant> = None;
        let started = tokio::time::Instant::now();
        let mut id = 1_000;
        while started.elapsed() < Duration::from_secs(70) {
            let elapsed = started.elapsed();
            if rng.random_bool(0.02) {
                // The content changes at the origin, then the key is purged everywhere.
                let key = format!("/sim/{}", rng.random_range(0..KEYS));
                let g = st.bump(&key);
                let inv = Invalidation {
                    urls: vec![key.clone()],
                    ..Invalidation::default()
                };
                let mut report = PurgeReport::default();
                let nodes: Vec<cdn_proto::Member> = pool
                    .roster()
                    .iter()
                    .filter(|m| m.state != cdn_proto::MemberState::Left)
                    .cloned()
                    .collect();
                id += 1;
                fan_out_purge(&pool, &nodes, id, &inv, Duration::from_secs(2), &mut report).await;
                let mut o = obs.lock().unwrap();
                if report.missing.is_empty() && nodes.len() == NODES {
                    o.acked_purges += 1;
                    floor.insert(key, g);
                } else {
                    // A member missed it (it replays it on reconnect): promised once healed.
                    o.partial_purges += 1;
                    owed.push((key, g));
                    whole_since = None;
                }
            }
            if pool.members().len() == NODES {
                let since = *whole_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= HEALED {
                    for (k, g) in owed.drain(..) {
                        let f = floor.entry(k).or_default();
                        *f = (*f).max(g);
                    }
                }
            } else {
                whole_since = None;
            }
            let key = format!("/sim/{}", rng.random_range(0..KEYS));
            id += 1;
            let (w, mut r) = Coalescer::solo();
            let fill = match up.fill(id, &key, &headers, &sink, None, w).await {
                Ok(done) => done,
                // No owner answered: the edge goes to the origin itself.
                Err((w, _)) => {
                    cdn_core::fill::fetch_origin(&origin, &sink, &key, &headers, None, w).await
                }
            };
            let body = match fill {
                Ok(()) => {
                    let mut body = Vec::new();
                    while let Some(c) = r.next_chunk().await {
                        body.extend_from_slice(&c.map_err(|e| e.to_string())?);
                    }
                    Ok(body)
                }
                Err(e) => Err(e.to_string()),
            };
            let verdict = match body.as_deref().map(|b| parse_generation(b, &key)) {
                Ok(Some(g)) if g < floor.get(&key).copied().unwrap_or(0) => {
                    Err((true, format!("{key} at {elapsed:?}: v{g}")))
                }
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err((false, format!("{key} at {elapsed:?}: wrong body {body:?}"))),
                Err(e) => Err((false, format!("{key} at {elapsed:?}: {e}"))),
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
        stop.cancel();
        obs.lock().unwrap().done = true;
        Ok(())
    });
    let faults = schedule(seed);
    let mut next = 0;
    let mut clock = Duration::ZERO;
    loop {
        // The schedule counts from when the client starts reading (about 1 s in).
        while next < faults.len() && clock >= faults[next].0 + Duration::from_secs(1) {
            match faults[next].1 {
                Fault::Partition(j) => {
                    sim.partition(node_name(j), "client");
                    for k in (0..NODES).filter(|k| *k != j) {
                        sim.partition(node_name(j), node_name(k));
                    }
                }
                Fault::Repair(j) => {
                    sim.repair(node_name(j), "client");
                    for k in (0..NODES).filter(|k| *k != j) {
                        sim.repair(node_name(j), node_name(k));
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
