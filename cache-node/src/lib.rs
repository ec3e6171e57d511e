//! A cache node: serves edges over QUIC from a byte-bounded store, filling each miss from the
//! origin once however many requests wait for it.
//!
//! Layout:
//! - [`config`]: the typed config (TOML + flags) and its validation.
//! - [`inbound`]: invalidations replayed by peers when this node reconnects to them.
//! - [`links`]: edges connected to this node, and the fan-out of invalidations to them.
//! - [`ops`]: push and prewarm, as accepted on the admin API.
//! - [`server`]: the QUIC listener and the per-stream request handling.
//! - this file: [`Node`] (shared state and counters), [`start`] and its [`NodeHandle`].
#![forbid(unsafe_code)]

pub mod config;
pub mod inbound;
pub mod links;
pub mod ops;
pub mod server;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;
use std::time::Duration;

use cdn_core::admin::{AdminState, Metric};
use cdn_core::launch::TierConfig;
use cdn_core::read_path::{ReadPath, Source};
use cdn_net::peers::{Me, PeerPool, PurgeReport, Timeouts};
use cdn_net::tls::TlsMaterial;
use cdn_proto::{Invalidation, Member, MemberState};
use cdn_store::Store;
pub use config::Config;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a node could not start.
pub use cdn_core::launch::StartError as NodeError;

/// Faults a test can switch on in a running node. Only with the `fault-injection` feature,
/// which the test crates enable: a release binary checks nothing of this on its requests.
#[cfg(feature = "fault-injection")]
#[derive(Default)]
struct Faults {
    // While set, requests are accepted and never answered (a hung node).
    stalled: std::sync::atomic::AtomicBool,
    // While set, responses break off right after their head.
    breaking: std::sync::atomic::AtomicBool,
    // What a request stream does after an answer (`AfterAnswer as u8`).
    after_answer: std::sync::atomic::AtomicU8,
}

/// What a node does with a request stream after an answer. Only `Keep` outside fault tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AfterAnswer {
    /// Wait for the edge's next request on it.
    Keep = 0,
    /// Finish the answering side and read on without answering: a stream closed while the
    /// edge's next request was already on its way.
    Finish = 1,
    /// Finish it and stop reading, as nodes did before streams were kept between requests.
    FinishAndStop = 2,
}

use cdn_core::counters::Tier;
/// The node's counters: the one table every member counts into (`cdn_core::counters`).
pub use cdn_core::counters::{Counter, Counters};

/// A node's shared state.
pub struct Node {
    config: Config,
    // The store, the fills in progress, and the sources a miss is filled from (the parent
    // region's owners when `parent_region` is set, then the origin).
    reads: Arc<ReadPath>,
    // Shared with `reads`, which counts its events here.
    counters: Arc<Counters>,
    member: Member,
    links: Arc<links::Links>,
    peers: Arc<PeerPool>,
    // Shared with `reads`, which numbers its requests to the parent region from it.
    next_purge_id: Arc<AtomicU64>,
    // Fault injection (tests only, behind the `fault-injection` feature).
    #[cfg(feature = "fault-injection")]
    faults: Faults,
    membership: Arc<cdn_net::membership::Membership>,
    // Set once the node announced it leaves; the endpoint then closes with `LEAVING`.
    leaving: std::sync::atomic::AtomicBool,
    // Requests being served, for draining on shutdown: a counter, and a signal given when it
    // falls to zero (a watch channel here woke every subscriber slot twice per request).
    inflight: AtomicU64,
    drained: tokio::sync::Notify,
    // The last invalidations applied here, for the status page.
    recent_purges: cdn_store::purge::Recent,
    // Fan-out times of the purges accepted here, for `/status` and the cluster view.
    purge_latency: cdn_core::purging::Latency,
    // Where the admin API is reached, in `/status` (so tools reach every member from one).
    admin_addr: String,
    // The config's fingerprint (`cdn_core::config::fingerprint`), in `/status`.
    config_version: String,
    // `/cluster`: the last gather, and what it remembers of each member.
    cluster: cdn_core::cluster::ClusterView,
    // What the linked edges last said of themselves: asked once a second at most, however
    // many members gather at once (`cdn_core::cluster`).
    linked: cdn_core::cluster::Cached<Vec<cdn_core::cluster::Report>>,
}

/// Counts a request in flight while alive.
pub(crate) struct InFlight<'a>(&'a Node);

impl<'a> InFlight<'a> {
    pub(crate) fn enter(node: &'a Node) -> Self {
        node.inflight.fetch_add(1, Ordering::SeqCst);
        Self(node)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // Sequentially consistent with `leave`'s store of `leaving` and load of the count:
        // either this sees `leaving`, or `leave` sees the count this left.
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.leaving.load(Ordering::SeqCst)
        {
            self.0.drained.notify_waiters();
        }
    }
}

impl Node {
    /// The store.
    pub fn store(&self) -> &Store {
        self.reads.store()
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// This node as a member.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// Config in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Makes the node hang (accept requests, never answer) or recover: the in-process
    /// stand-in for SIGSTOP in fault tests.
    #[cfg(feature = "fault-injection")]
    pub fn set_stalled(&self, stalled: bool) {
        self.faults.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Makes the node break every response off after its head, or stop doing so: a node
    /// dying mid-response, for fault tests.
    #[cfg(feature = "fault-injection")]
    pub fn set_breaking(&self, breaking: bool) {
        self.faults.breaking.store(breaking, Ordering::SeqCst);
    }

    /// Makes the node close each request stream after one answer (fault injection), or keep
    /// them again ([`AfterAnswer::Keep`]).
    #[cfg(feature = "fault-injection")]
    pub fn set_after_answer(&self, after: AfterAnswer) {
        self.faults
            .after_answer
            .store(after as u8, Ordering::SeqCst);
    }

    /// What a request stream does after an answer (always `Keep` in a release build).
    pub(crate) fn after_answer(&self) -> AfterAnswer {
        #[cfg(feature = "fault-injection")]
        return match self.faults.after_answer.load(Ordering::SeqCst) {
            1 => AfterAnswer::Finish,
            2 => AfterAnswer::FinishAndStop,
            _ => AfterAnswer::Keep,
        };
        #[cfg(not(feature = "fault-injection"))]
        AfterAnswer::Keep
    }

    /// Whether requests are to hang (fault injection; always false in a release build).
    pub(crate) fn is_stalled(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        return self.faults.stalled.load(Ordering::SeqCst);
        #[cfg(not(feature = "fault-injection"))]
        false
    }

    /// Whether responses are to break off after their head (fault injection; always false
    /// in a release build).
    pub(crate) fn is_breaking(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        return self.faults.breaking.load(Ordering::SeqCst);
        #[cfg(not(feature = "fault-injection"))]
        false
    }

    /// Requests being served right now.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Leaves the cluster: tells the other nodes (gossip) and every connected edge (which
    /// acknowledge), then waits up to `drain` for the requests in flight to finish. The
    /// connections stay open meanwhile, so nothing in flight is cut off.
    pub async fn leave(&self, drain: Duration) {
        self.leaving.store(true, Ordering::SeqCst);
        self.membership.leave().await;
        let report = self
            .links
            .announce_members(self.peers.roster().as_ref().clone(), self.purge_deadline())
            .await;
        tracing::info!(edges = report.acked.len(), missing = ?report.missing, "left the cluster");
        // `leaving` is set above, so a request ending from here on signals `drained`; the
        // signal is armed before the count is read, so none is missed in between.
        let drained = async {
            loop {
                let signal = self.drained.notified();
                tokio::pin!(signal);
                signal.as_mut().enable();
                if self.inflight() == 0 {
                    return;
                }
                signal.await;
            }
        };
        if tokio::time::timeout(drain, drained).await.is_err() {
            tracing::warn!(inflight = self.inflight(), "drain deadline passed");
        }
    }

    /// Edges connected to this node.
    pub fn links(&self) -> &links::Links {
        &self.links
    }

    /// Connections to the other nodes, and the member list.
    pub fn peers(&self) -> &PeerPool {
        &self.peers
    }

    /// Applies an invalidation to the store and detaches matching fills in progress.
    pub async fn apply_purge(&self, inv: &Invalidation) -> u64 {
        cdn_core::purging::apply(&self.reads, &self.counters, &self.recent_purges, inv).await
    }

    /// A purge received from another member: apply it, and when `forward`, pass it to every
    /// connected edge. The answer lists this node and the edges that acknowledged.
    pub async fn receive_purge(&self, id: u64, forward: bool, inv: &Invalidation) -> PurgeReport {
        let started = Instant::now();
        self.apply_purge(inv).await;
        let mut report = PurgeReport {
            acked: vec![self.config.member.id.clone()],
            ..PurgeReport::default()
        };
        if forward {
            self.links
                .fan_out(id, inv, self.purge_deadline(), &mut report)
                .await;
        }
        report.settle(started);
        report
    }

    /// A purge accepted here (admin API): apply, send to every connected edge and every other
    /// node (which send it to their edges), and report who acknowledged.
    pub async fn coordinate_purge(&self, inv: &Invalidation) -> PurgeReport {
        let started = Instant::now();
        let id = self.next_purge_id.fetch_add(1, Ordering::Relaxed);
        // Down members are asked too (and reported missing): only a member that left on
        // purpose is no longer expected to apply purges.
        let others: Vec<Member> = self
            .peers
            .roster()
            .iter()
            .filter(|m| m.id != self.config.member.id && m.state != MemberState::Left)
            .cloned()
            .collect();
        let deadline = self.purge_deadline();
        let mut local = self.receive_purge(id, true, inv).await;
        let mut remote = PurgeReport::default();
        cdn_net::peers::fan_out_purge(&self.peers, &others, id, inv, deadline, &mut remote).await;
        local.merge(remote.acked, remote.missing);
        local.settle(started);
        self.purge_latency.record(started.elapsed());
        metrics::histogram!("cdn_purge_fanout_seconds", "member" => self.config.member.id.clone())
            .record(started.elapsed().as_secs_f64());
        local
    }

    fn purge_deadline(&self) -> Duration {
        self.config.member.purge_timeout
    }

    /// The answer to `StatusRequest`: this node's report of itself, then, when `linked`, what
    /// each edge linked to it says of itself (asked at most once a second).
    pub async fn status_reports(&self, linked: bool) -> Vec<bytes::Bytes> {
        let mut docs = vec![cdn_core::cluster::Report::own(&self.status()).encode()];
        if linked {
            docs.extend(self.linked_edges().await.iter().map(|r| r.encode()));
        }
        docs
    }

    async fn linked_edges(&self) -> Arc<Vec<cdn_core::cluster::Report>> {
        self.linked
            .get(cdn_core::cluster::FRESH_FOR, || {
                self.links.ask_edges(cdn_core::cluster::ASK_EDGE)
            })
            .await
    }
}

impl AdminState for Node {
    fn member(&self) -> &cdn_core::config::MemberConfig {
        &self.config.member
    }

    async fn push(
        &self,
        obj: cdn_core::push::PushObject,
        edges: bool,
    ) -> cdn_core::push::PushReport {
        Node::push(self, obj, edges).await
    }

    async fn purge(&self, inv: Invalidation) -> PurgeReport {
        self.coordinate_purge(&inv).await
    }

    fn status(&self) -> serde_json::Value {
        let c = &self.counters;
        let mut doc = serde_json::json!({
            "id": self.config.member.id,
            "role": "cache-node",
            "region": self.config.member.region,
            "members": self.peers.roster().iter().map(|m| {
                let up = m.id == self.config.member.id
                    || m.addr.parse().is_ok_and(|a| self.peers.is_connected(a));
                let mut v = serde_json::json!({
                    "id": m.id,
                    "addr": m.addr,
                    "region": m.region,
                    "state": m.state.as_str(),
                    "link": if up { "up" } else { "down" },
                });
                if m.id == self.config.member.id {
                    // This node's own answers, and how many came from its store.
                    v["answers"] = c.get(Counter::Requests).into();
                    v["hits"] = c.get(Counter::Hits).into();
                }
                v
            }).collect::<Vec<_>>(),
            "inflight": self.inflight(),
            "edges": self.links.connected_edges(),
            "recent_purges": self.recent_purges.to_json(),
            "now_ms": cdn_store::purge::unix_ms(),
            "parent_region": self.config.parent_region,
            "admin_addr": self.admin_addr,
            "config_version": self.config_version,
            "purge_latency": self.purge_latency.to_json(),
        });
        cdn_core::admin::store_status(&mut doc, &self.reads);
        c.write_status(&mut doc);
        doc
    }

    async fn cluster(&self) -> Arc<serde_json::Value> {
        // A node asks its peers (each reports itself and its edges) and its own edges.
        self.cluster
            .get(|| async {
                let own_edges = async { self.linked_edges().await.as_ref().clone() };
                cdn_core::cluster::collect(
                    cdn_core::cluster::Report::own(&self.status()),
                    &self.peers,
                    own_edges,
                )
                .await
            })
            .await
    }

    fn metrics(&self) -> Vec<Metric> {
        let mut out = self.counters.metrics();
        out.extend(cdn_core::admin::common_metrics(
            self.counters.tier().as_str(),
            &self.config.member.id,
            &self.reads,
            &self.peers,
        ));
        out
    }
}

/// A running node.
pub struct NodeHandle {
    /// Shared state and counters.
    pub node: Arc<Node>,
    /// The QUIC address it serves on.
    pub quic_addr: SocketAddr,
    /// The admin HTTP address.
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl NodeHandle {
    /// Stops the node gracefully (SIGTERM): leaves the cluster, drains requests in flight
    /// (up to `drain_timeout`), then closes its connections with `LEAVING`.
    pub async fn stop(self) {
        let drain = self.node.config.drain_timeout;
        self.node.leave(drain).await;
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Stops the node without leaving the cluster: what peers see of a crash, short of the
    /// silence of `kill -9` (its connections close, without `LEAVING`).
    pub async fn abort(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.node.config.member.id
    }
}

/// Starts a node on already-bound sockets (port 0 in tests), until `shutdown` or
/// [`NodeHandle::stop`].
pub async fn start(
    config: Config,
    tls: &TlsMaterial,
    udp: std::net::UdpSocket,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> Result<NodeHandle, NodeError> {
    let net = Net::tokio(udp, config.member.udp_buffer.0)?;
    start_on(config, tls, net, Some(admin), shutdown).await
}

/// The admin address others reach: a wildcard address (`0.0.0.0:9050` in a container) takes
/// the IP the node advertises for QUIC.
fn reachable_admin(admin: SocketAddr, advertise: Option<SocketAddr>) -> SocketAddr {
    match advertise {
        Some(a) if admin.ip().is_unspecified() => SocketAddr::new(a.ip(), admin.port()),
        _ => admin,
    }
}

/// How a node reaches the network: its QUIC socket, and the origin.
pub use cdn_core::launch::Net;

/// Starts a node on `net`, with or without an admin listener (without one, `admin_addr` is
/// unspecified).
pub async fn start_on(
    config: Config,
    tls: &TlsMaterial,
    net: Net,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<NodeHandle, NodeError> {
    let Net {
        socket,
        runtime,
        origin,
    } = net;
    config.validate()?;
    let quic_addr = socket
        .local_addr()
        .map_err(NodeError::io("reading QUIC address"))?;
    let admin_addr = match &admin {
        Some(a) => a
            .local_addr()
            .map_err(NodeError::io("reading admin address"))?,
        None => SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    let transport = cdn_net::tls::transport_for(
        config.max_streams,
        config.member.idle_timeout,
        config.member.quic_mtu,
    );
    let server_cfg = tls.quic_server(transport.clone())?;
    let client_cfg = tls.quic_client(transport)?;
    let mut endpoint_cfg = tls.endpoint_config(quic_addr);
    cdn_net::tls::accept_datagrams(&mut endpoint_cfg, config.member.quic_mtu);
    let mut endpoint =
        quinn::Endpoint::new_with_abstract_socket(endpoint_cfg, Some(server_cfg), socket, runtime)
            .map_err(NodeError::io("starting QUIC endpoint"))?;
    // The same socket dials other nodes, so they see this node's listen address.
    endpoint.set_default_client_config(client_cfg);
    let origin = cdn_core::launch::origin(&config.member, origin)?;
    // The address others reach us at: `advertise`, or the bound address when it is specific.
    let reachable = config.advertise.unwrap_or(quic_addr);
    let member = Member::alive(
        config.member.id.clone(),
        reachable.to_string(),
        config.member.region.clone(),
    );
    let peers = PeerPool::new(
        endpoint.clone(),
        Me {
            id: config.member.id.clone(),
            role: cdn_proto::Role::Node,
            region: config.member.region.clone(),
            addr: reachable.to_string(),
        },
        Timeouts {
            connect: Duration::from_millis(1_000),
            response: config.member.origin_response_timeout + Duration::from_secs(5),
            first_byte: Duration::from_millis(2_000),
            retry: Duration::from_millis(1_000),
        },
    );
    peers.set_view(reachable, vec![member.clone()]);
    let seeds = config.member.seeds.clone();
    let membership = cdn_net::membership::Membership::start(
        cdn_net::membership::NodeIdentity::new(&config.member.id, reachable, &config.member.region),
        peers.clone(),
        seeds.clone(),
        config.gossip(),
        shutdown.clone(),
    );
    let counters = Arc::new(Counters::new(Tier::Node, config.member.id.clone()));
    let next_purge_id = Arc::new(AtomicU64::new(1));
    // A region with a parent asks the parent's owners first: they fill from the origin once
    // for every child region (and coalesce concurrent misses from all of them).
    let mut sources: Vec<Source> = config
        .parent_region
        .as_ref()
        .map(|p| {
            let parent =
                cdn_core::upstream::Upstream::new(peers.clone(), config.member.replicas, None)
                    .in_region(p, false);
            Source::Owners(Arc::new(parent))
        })
        .into_iter()
        .collect();
    sources.push(Source::Origin(Arc::new(origin)));
    let reads = ReadPath::new(
        cdn_core::launch::store(&config.member),
        sources,
        cdn_core::launch::read_settings(&config.member),
        counters.clone(),
        next_purge_id.clone(),
    );
    let node = Arc::new_cyclic(|me: &std::sync::Weak<Node>| {
        // After every fill, copy the new entry to the key's other owners. Weak: the node owns
        // the read path, which owns this hook.
        let me = me.clone();
        let reads = reads.with_after_fill(Arc::new(
            move |key: String,
                  headers: http::HeaderMap,
                  started: std::time::SystemTime|
                  -> futures::future::BoxFuture<'static, ()> {
                let me = me.clone();
                Box::pin(async move {
                    if let Some(node) = me.upgrade() {
                        node.replicate(&key, &headers, started).await;
                    }
                })
            },
        ));
        Node {
            reads: Arc::new(reads),
            counters,
            member,
            links: Arc::default(),
            peers: peers.clone(),
            next_purge_id,
            #[cfg(feature = "fault-injection")]
            faults: Faults::default(),
            membership,
            leaving: std::sync::atomic::AtomicBool::new(false),
            inflight: AtomicU64::new(0),
            drained: tokio::sync::Notify::new(),
            recent_purges: cdn_store::purge::Recent::default(),
            purge_latency: Default::default(),
            admin_addr: reachable_admin(admin_addr, config.advertise).to_string(),
            config_version: cdn_core::config::fingerprint(&config),
            cluster: Default::default(),
            linked: Default::default(),
            config,
        }
    });
    // Every change of the member list goes to the edges linked here.
    let (n, s) = (node.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut rx = n.peers.watch_roster();
        loop {
            tokio::select! {
                _ = s.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
            let roster = rx.borrow_and_update().as_ref().clone();
            n.links.announce_members(roster, n.purge_deadline()).await;
        }
    });
    peers.set_inbound(Arc::new(inbound::FromPeers::new(Arc::downgrade(&node))));
    let maintain = tokio::spawn(peers.maintain(seeds, shutdown.clone()));
    let admin_task = admin.map(|admin| {
        tokio::spawn(cdn_core::admin::serve_admin(
            admin,
            node.clone(),
            shutdown.clone(),
        ))
    });
    let n = node.clone();
    let s = shutdown.clone();
    let task = tokio::spawn(async move {
        server::run(n, endpoint, s).await;
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        let _ = maintain.await;
    });
    tracing::info!(id = %node.config.member.id, %quic_addr, %admin_addr, "cache node started");
    Ok(NodeHandle {
        node,
        quic_addr,
        admin_addr,
        shutdown,
        task,
    })
}
