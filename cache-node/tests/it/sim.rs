//! Simulation tests (turmoil): the real node code and the real upstream client over QUIC on a
//! simulated network of hosts, with a seeded schedule of partitions, crashes and restarts,
//! checking the cluster's invariants as time passes.
//!
//! quinn runs on turmoil's UDP through the adapter below; time is turmoil's (simulated), so
//! a minute of cluster life takes seconds. The fault schedule and the key stream come from
//! the seed; quinn and foca draw their own randomness, so packet-level timings can differ
//! between runs of the same seed (the invariants must hold for every interleaving).

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
use cdn_core::push::{push_to, PushObject};
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

/// The faults in force, as the schedule applied them (read by the client to tell a failure
/// from an object that no reachable node holds any more).
#[derive(Default, Debug)]
struct Faults {
    partitioned: std::collections::HashSet<usize>,
    crashed: std::collections::HashSet<usize>,
    /// Nodes that crashed at some point: what they held is gone.
    lost: std::collections::HashSet<usize>,
    /// When each node was last reconnected (simulated time): members take a moment to
    /// list it alive again, and until then reads go around it.
    back_at: HashMap<usize, Duration>,
}

/// How long a reconnected node may take to be listed alive again (the failure detector's
/// suspicion timeout plus a few probe periods).
const REJOIN: Duration = Duration::from_secs(4);

impl Faults {
    /// Whether one of `holders` still holds the object and can be reached at `now`.
    fn reachable(&self, holders: &[usize], now: Duration) -> bool {
        holders.iter().any(|j| {
            !self.lost.contains(j)
                && !self.partitioned.contains(j)
                && !self.crashed.contains(j)
                && self.back_at.get(j).is_none_or(|at| now > *at + REJOIN)
        })
    }
}

fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// What the client saw.
#[derive(Default, Debug)]
struct Observed {
    gets: u64,
    failed: Vec<String>,
    stale_after_purge: Vec<String>,
    /// Reads of objects no reachable node held (its holders crashed or were cut off).
    unavailable: u64,
    purged: Vec<String>,
    done: bool,
}

/// A schedule of faults from `seed`: one node at a time is partitioned or crashed and
/// restarted, with quiet time between, so a key's other owner stays reachable throughout.
fn schedule(seed: u64) -> Vec<(Duration, Fault)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut at = Duration::from_secs(5);
    let mut out = Vec::new();
    for _ in 0..4 {
        let j = rng.random_range(0..NODES);
        let hold = Duration::from_millis(rng.random_range(2_000..6_000));
        if rng.random_bool(0.5) {
            out.push((at, Fault::Partition(j)));
            out.push((at + hold, Fault::Repair(j)));
        } else {
            out.push((at, Fault::Crash(j)));
            out.push((at + hold, Fault::Restart(j)));
        }
        at += hold + Duration::from_millis(rng.random_range(3_000..6_000));
    }
    out
}

fn run_seed(seed: u64) {
    cdn_core::install_crypto_provider();
    let tls = TlsMaterial::generate().expect("certificates");
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
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
                    origin: "http://192.0.2.1:80".into(),
                    replicas: 2,
                    ..Config::default()
                };
                let shutdown = tokio_util::sync::CancellationToken::new();
                let h = cache_node::start_on(
                    config,
                    &tls,
                    socket,
                    Arc::new(SimRuntime),
                    None,
                    shutdown.clone(),
                )
                .await?;
                nodes.lock().unwrap().insert(j, h.node.clone());
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let observed: Arc<Mutex<Observed>> = Arc::default();
    let obs = observed.clone();
    let faults_now: Arc<Mutex<Faults>> = Arc::default();
    let faults_seen = faults_now.clone();
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
        let up = Upstream::new(pool.clone(), 2, Some(Duration::from_millis(50)));
        // Members converge: the client (through the nodes' views) lists all three alive.
        let mut members = pool.watch_members();
        tokio::time::timeout(
            Duration::from_secs(10),
            members.wait_for(|m| m.len() == NODES),
        )
        .await
        .map_err(|_| "the three nodes did not converge within 10 s")??;
        // Store every key on both of its owners.
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut holders: HashMap<String, Vec<usize>> = HashMap::new();
        for k in 0..KEYS {
            let key = format!("/sim/{k}");
            let obj = PushObject {
                key: key.clone(),
                status: http::StatusCode::OK,
                headers: http::HeaderMap::from_iter([(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("max-age=3600"),
                )]),
                body: vec![bytes::Bytes::from(format!("body of {key}"))],
            };
            for m in up.owners(&key) {
                push_to(&pool, &m, &obj, k as u64, false, Duration::from_secs(2)).await?;
                let j: usize = m.id.trim_start_matches("node-").parse()?;
                holders.entry(key.clone()).or_default().push(j);
            }
        }
        // Read keys for a minute of simulated time while faults come and go; purge two
        // keys at quiet moments.
        let l1 = Store::new(1, Eviction::Lru);
        let rules = cdn_core::policy::Rules::default();
        let sink = Sink {
            store: &l1,
            max_object: 1 << 20,
            rules: &rules,
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("only-if-cached"),
        );
        let started = tokio::time::Instant::now();
        let mut id = 1_000;
        while started.elapsed() < Duration::from_secs(60) {
            let elapsed = started.elapsed();
            // Purges at 1 s and 3 s: the schedule's first fault comes at 5 s.
            let purge_now = {
                let o = obs.lock().unwrap();
                (elapsed > Duration::from_secs(1) && o.purged.is_empty())
                    || (elapsed > Duration::from_secs(3) && o.purged.len() == 1)
            };
            if purge_now {
                let key = format!("/sim/{}", obs.lock().unwrap().purged.len());
                let inv = Invalidation {
                    urls: vec![key.clone()],
                    ..Invalidation::default()
                };
                let mut report = PurgeReport::default();
                let nodes = pool.members();
                fan_out_purge(&pool, &nodes, id, &inv, Duration::from_secs(2), &mut report).await;
                assert!(
                    report.missing.is_empty(),
                    "purge not acknowledged: {report:?}"
                );
                obs.lock().unwrap().purged.push(key);
            }
            let key = format!("/sim/{}", rng.random_range(0..KEYS));
            let reachable_before = faults_seen
                .lock()
                .unwrap()
                .reachable(&holders[&key], sim_now());
            id += 1;
            let (w, mut r) = Coalescer::solo();
            let outcome = up.fill(id, &key, &headers, &sink, None, w).await;
            let why = match &outcome {
                Err((_, failures)) => format!(
                    "{:?}; roster {:?}",
                    failures.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                    pool.roster()
                        .iter()
                        .map(|m| (m.id.clone(), m.state))
                        .collect::<Vec<_>>()
                ),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(())) => String::new(),
            };
            let body = match outcome {
                Ok(Ok(())) => {
                    let mut body = Vec::new();
                    while let Some(c) = r.next_chunk().await {
                        body.extend_from_slice(&c.map_err(|e| e.to_string())?);
                    }
                    Some(body)
                }
                _ => None,
            };
            let reachable = reachable_before
                && faults_seen
                    .lock()
                    .unwrap()
                    .reachable(&holders[&key], sim_now());
            {
                let mut o = obs.lock().unwrap();
                o.gets += 1;
                let purged = o.purged.contains(&key);
                match body {
                    Some(b) if purged => o.stale_after_purge.push(format!(
                        "{key} at {elapsed:?}: {}",
                        String::from_utf8_lossy(&b)
                    )),
                    Some(b) if b == format!("body of {key}").as_bytes() => {}
                    Some(b) => o
                        .failed
                        .push(format!("{key} at {elapsed:?}: wrong body {b:?}")),
                    None if purged => {}
                    None if !reachable => o.unavailable += 1,
                    None => o.failed.push(format!("{key} at {elapsed:?}: {why}")),
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
            {
                let mut f = faults_now.lock().unwrap();
                match faults[next].1 {
                    Fault::Partition(j) => f.partitioned.insert(j),
                    Fault::Repair(j) => {
                        f.back_at.insert(j, clock);
                        f.partitioned.remove(&j)
                    }
                    Fault::Crash(j) => {
                        f.lost.insert(j);
                        f.crashed.insert(j)
                    }
                    Fault::Restart(j) => {
                        f.back_at.insert(j, clock);
                        f.crashed.remove(&j)
                    }
                };
            }
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
    eprintln!(
        "seed {seed}: {} reads, {} of objects no reachable node held; faults {faults:?}",
        o.gets, o.unavailable
    );
    assert!(o.done, "seed {seed}: the client finished");
    assert!(o.gets > 1_000, "seed {seed}: {} reads", o.gets);
    assert_eq!(o.purged.len(), 2, "seed {seed}");
    assert!(
        o.failed.is_empty(),
        "seed {seed}: reads failed while an owner was reachable: {:?} (schedule {faults:?})",
        o.failed
    );
    assert!(
        o.stale_after_purge.is_empty(),
        "seed {seed}: purged objects served after the purge was acknowledged: {:?}",
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
