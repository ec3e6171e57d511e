//! An edge: serves clients over HTTP/1.1 and HTTP/2 from a small L1 cache, pulling misses
//! from the owning cache node over QUIC, and from the origin when no node answers.
//!
//! Layout:
//! - [`config`]: the typed config (TOML + flags) and its validation.
//! - [`inbound`]: streams nodes open towards the edge (invalidations).
//! - [`ops`]: push and prewarm, as accepted on the admin API.
//! - [`server`]: the HTTP request handling: read-path answers as HTTP (ranges, 304s,
//!   `X-Cache`), pass-through of other methods, `PURGE`.
//! - this file: [`Edge`] (shared state and counters), [`start`] and its [`EdgeHandle`].
#![forbid(unsafe_code)]

pub mod config;
pub mod inbound;
pub mod ops;
pub mod server;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cdn_core::admin::{AdminState, Metric};
use cdn_core::launch::TierConfig;
use cdn_core::read_path::{ReadPath, Source};
use cdn_core::upstream::Upstream;
use cdn_http::origin::Origin;
use cdn_net::peers::{Me, PeerPool, PurgeReport, Timeouts};
use cdn_net::tls::TlsMaterial;
use cdn_store::Store;
pub use config::Config;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why an edge could not start.
pub use cdn_core::launch::StartError as EdgeError;

use cdn_core::counters::Tier;
/// The edge's counters: the one table every member counts into (`cdn_core::counters`).
pub use cdn_core::counters::{Counter, Counters};

/// How often purges some node has not acknowledged are sent to it again.
const REDELIVER_EVERY: Duration = Duration::from_millis(500);

/// An edge's shared state.
pub struct Edge {
    config: Config,
    // L1, the fills in progress, and the sources a miss is filled from (nodes, origin).
    reads: Arc<ReadPath>,
    upstream: Arc<Upstream>,
    // For pass-through requests (other methods); fills reach the origin through `reads`.
    origin: Origin,
    // Shared with `reads`, which counts its events here.
    // Shared with `reads`, which counts its events here.
    counters: Arc<Counters>,
    // Shared with `reads`, which numbers its node requests from it.
    next_request_id: Arc<AtomicU64>,
    // Purges accepted here that some node has not acknowledged yet: sent again until it does.
    undelivered: Arc<cdn_net::peers::Undelivered>,
    // The last invalidations applied here, for the status page.
    recent_purges: cdn_store::purge::Recent,
    // Fan-out times of the purges accepted here, for `/status` and the cluster view.
    purge_latency: cdn_core::purging::Latency,
    // Where the admin API listens, in `/status` (so tools reach every member from one).
    admin_addr: String,
    // The config's fingerprint (`cdn_core::config::fingerprint`), in `/status`.
    config_version: String,
    // `/cluster`: the last gather, and what it remembers of each member.
    cluster: cdn_core::cluster::ClusterView,
}

impl Edge {
    /// Purges accepted here that some node still has to acknowledge.
    pub fn undelivered(&self) -> usize {
        self.undelivered.len()
    }

    /// The L1 store.
    pub fn l1(&self) -> &Store {
        self.reads.store()
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The node tier.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Config in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Strict consistency is configured.
    pub fn is_strict(&self) -> bool {
        self.config.member.consistency == cdn_core::config::Consistency::Strict
    }

    /// Whether an L1 entry may be served. In strict mode an entry from a node whose link (and
    /// so its invalidation stream) is down is not: a purge might have been missed.
    pub fn may_serve(&self, entry: &cdn_store::Entry) -> bool {
        may_serve(self.is_strict(), &self.upstream, entry)
    }

    /// A purge accepted here (admin API or `PURGE`): apply to L1, send to every cache node
    /// (each passes it to its edges), and report who acknowledged.
    pub async fn coordinate_purge(&self, inv: &cdn_proto::Invalidation) -> PurgeReport {
        let started = Instant::now();
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        self.apply_purge(inv).await;
        let mut report = PurgeReport {
            acked: vec![self.config.member.id.clone()],
            ..PurgeReport::default()
        };
        // Down nodes are asked too (and reported missing): only a node that left on purpose
        // no longer owes the cluster its purges.
        let nodes: Vec<cdn_proto::Member> = self
            .upstream
            .pool()
            .roster()
            .iter()
            .filter(|m| m.state != cdn_proto::MemberState::Left)
            .cloned()
            .collect();
        let deadline = self.config.member.purge_timeout;
        cdn_net::peers::fan_out_purge(self.upstream.pool(), &nodes, id, inv, deadline, &mut report)
            .await;
        // A node that did not acknowledge gets it again until it does: unlike a node, an edge
        // keeps no log its peers replay from.
        let owed: Vec<String> = nodes
            .iter()
            .map(|m| m.id.clone())
            .filter(|id| !report.acked.contains(id))
            .collect();
        self.undelivered.add(id, inv.clone(), owed);
        report.settle(started);
        self.purge_latency.record(started.elapsed());
        metrics::histogram!("cdn_purge_fanout_seconds", "member" => self.config.member.id.clone())
            .record(started.elapsed().as_secs_f64());
        report
    }

    /// Applies an invalidation to L1 and detaches matching fills in progress, so no request
    /// arriving after this returns is served the purged body. Returns entries affected.
    pub async fn apply_purge(&self, inv: &cdn_proto::Invalidation) -> u64 {
        cdn_core::purging::apply(&self.reads, &self.counters, &self.recent_purges, inv).await
    }
}

/// [`Edge::may_serve`], for the read path's filter (which cannot hold the `Edge` itself).
fn may_serve(strict: bool, upstream: &Upstream, entry: &cdn_store::Entry) -> bool {
    if !strict {
        return true;
    }
    let Some(source) = entry.source() else {
        return true;
    };
    upstream
        .members()
        .iter()
        .find(|m| m.id == source)
        .and_then(|m| m.addr.parse().ok())
        .is_some_and(|addr| upstream.pool().is_connected(addr))
}

impl AdminState for Edge {
    fn member(&self) -> &cdn_core::config::MemberConfig {
        &self.config.member
    }

    async fn push(
        &self,
        obj: cdn_core::push::PushObject,
        edges: bool,
    ) -> cdn_core::push::PushReport {
        Edge::push(self, obj, edges).await
    }

    async fn purge(&self, inv: cdn_proto::Invalidation) -> PurgeReport {
        self.coordinate_purge(&inv).await
    }

    fn status(&self) -> serde_json::Value {
        let answers = self.upstream.answers();
        let members: Vec<_> = self
            .upstream
            .pool()
            .roster()
            .iter()
            .map(|m| {
                // "state": what the nodes' failure detector says; "link": whether this edge's
                // connection (and its invalidation stream) is open; "answers"/"hits": what
                // this edge got from it, and how much of that came from its store.
                let up = m
                    .addr
                    .parse()
                    .is_ok_and(|a| self.upstream.pool().is_connected(a));
                let (answers, hits) = answers.get(&m.id).copied().unwrap_or_default();
                serde_json::json!({
                    "id": m.id,
                    "addr": m.addr,
                    "region": m.region,
                    "state": m.state.as_str(),
                    "link": if up { "up" } else { "down" },
                    "answers": answers,
                    "hits": hits,
                })
            })
            .collect();
        let mut doc = serde_json::json!({
            "id": self.config.member.id,
            "role": "edge",
            "region": self.config.member.region,
            "members": members,
            "recent_purges": self.recent_purges.to_json(),
            "now_ms": cdn_store::purge::unix_ms(),
            "undelivered_purges": self.undelivered.len(),
            "admin_addr": self.admin_addr,
            "config_version": self.config_version,
            "purge_latency": self.purge_latency.to_json(),
        });
        cdn_core::admin::store_status(&mut doc, &self.reads);
        self.counters.write_status(&mut doc);
        doc
    }

    async fn cluster(&self) -> Arc<serde_json::Value> {
        // An edge knows only nodes: each reports itself and the edges linked to it.
        self.cluster
            .get(|| {
                cdn_core::cluster::collect(
                    cdn_core::cluster::Report::own(&self.status()),
                    self.upstream.pool(),
                    async { Vec::new() },
                )
            })
            .await
    }

    fn metrics(&self) -> Vec<Metric> {
        let mut out = self.counters.metrics();
        out.push(
            Metric::gauge(
                "cdn_edge_members",
                "Cache nodes known.",
                self.upstream.members().len() as u64,
            )
            .label("member", self.config.member.id.clone()),
        );
        out.extend(cdn_core::admin::common_metrics(
            self.counters.tier().as_str(),
            &self.config.member.id,
            &self.reads,
            self.upstream.pool(),
        ));
        out
    }
}

/// A running edge.
pub struct EdgeHandle {
    /// Shared state and counters.
    pub edge: Arc<Edge>,
    /// Client HTTP address.
    pub http_addr: SocketAddr,
    /// Admin HTTP address.
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl EdgeHandle {
    /// Stops the edge: stops accepting, drains in-flight requests, closes node connections.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Waits until the edge knows at least `n` cache nodes.
    pub async fn wait_for_members(&self, n: usize) {
        let mut rx = self.edge.upstream.watch_members();
        let _ = rx.wait_for(|m| m.len() >= n).await;
    }
}

/// Starts an edge on already-bound listeners, until `shutdown` or [`EdgeHandle::stop`].
pub async fn start(
    config: Config,
    tls: &TlsMaterial,
    http: TcpListener,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> Result<EdgeHandle, EdgeError> {
    let http_addr = http
        .local_addr()
        .map_err(EdgeError::io("reading HTTP address"))?;
    let bind: SocketAddr = if http_addr.is_ipv6() {
        "[::]:0".parse()
    } else {
        "0.0.0.0:0".parse()
    }
    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let udp =
        std::net::UdpSocket::bind(bind).map_err(EdgeError::io("binding QUIC client socket"))?;
    let net = Net::tokio(udp, config.member.udp_buffer.0)?;
    start_on(config, tls, net, http, http_addr, Some(admin), shutdown).await
}

/// How an edge reaches the network: the QUIC socket it dials nodes from, and the origin.
pub use cdn_core::launch::Net;

/// Starts an edge serving clients from `http` (which listens at `http_addr`) on `net`, with
/// or without an admin listener (without one, `admin_addr` is unspecified).
pub async fn start_on(
    config: Config,
    tls: &TlsMaterial,
    net: Net,
    http: impl cdn_http::Listener,
    http_addr: SocketAddr,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<EdgeHandle, EdgeError> {
    config.validate()?;
    let admin_addr = match &admin {
        Some(a) => a
            .local_addr()
            .map_err(EdgeError::io("reading admin address"))?,
        None => SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    let transport =
        cdn_net::tls::transport_for(1024, config.member.idle_timeout, config.member.quic_mtu);
    let client_cfg = tls.quic_client(transport)?;
    let mut endpoint_cfg = quinn::EndpointConfig::default();
    cdn_net::tls::accept_datagrams(&mut endpoint_cfg, config.member.quic_mtu);
    let mut endpoint =
        quinn::Endpoint::new_with_abstract_socket(endpoint_cfg, None, net.socket, net.runtime)
            .map_err(EdgeError::io("starting the QUIC client endpoint"))?;
    endpoint.set_default_client_config(client_cfg);
    let origin = cdn_core::launch::origin(&config.member, net.origin)?;
    let pool = PeerPool::new(
        endpoint,
        Me {
            id: config.member.id.clone(),
            role: cdn_proto::Role::Edge,
            region: config.member.region.clone(),
            addr: String::new(),
        },
        Timeouts {
            connect: config.node_connect_timeout,
            response: config.node_response_timeout,
            first_byte: config.node_first_byte_timeout,
            retry: config.node_retry,
        },
    );
    let hedge = (!config.hedge_after.is_zero()).then_some(config.hedge_after);
    // Owners are chosen among the nodes of the edge's own region, when it has any.
    let upstream = Arc::new(
        Upstream::new(pool.clone(), config.member.replicas, hedge)
            .in_region(&config.member.region, true),
    );
    let seeds = config.member.seeds.clone();
    let counters = Arc::new(Counters::new(Tier::Edge, config.member.id.clone()));
    let next_request_id = Arc::new(AtomicU64::new(1));
    let strict = config.member.consistency == cdn_core::config::Consistency::Strict;
    let filter_upstream = upstream.clone();
    let reads = ReadPath::new(
        cdn_core::launch::store(&config.member),
        // The node tier first (skipped while no node is known), then the origin.
        vec![
            Source::Owners(upstream.clone()),
            Source::Origin(Arc::new(origin.clone())),
        ],
        cdn_core::launch::read_settings(&config.member),
        counters.clone(),
        next_request_id.clone(),
    )
    .with_filter(Arc::new(move |e: &cdn_store::Entry| {
        may_serve(strict, &filter_upstream, e)
    }));
    let edge = Arc::new(Edge {
        reads: Arc::new(reads),
        upstream: upstream.clone(),
        origin,
        counters,
        next_request_id,
        undelivered: Arc::default(),
        recent_purges: cdn_store::purge::Recent::default(),
        purge_latency: Default::default(),
        admin_addr: admin_addr.to_string(),
        config_version: cdn_core::config::fingerprint(&config),
        cluster: Default::default(),
        config,
    });
    tokio::spawn(edge.undelivered.clone().run(
        pool.clone(),
        REDELIVER_EVERY,
        edge.config.member.purge_timeout,
        shutdown.clone(),
    ));
    pool.set_inbound(Arc::new(inbound::FromNodes::new(Arc::downgrade(&edge))));
    let discover = tokio::spawn(pool.clone().maintain(seeds, shutdown.clone()));
    let admin_task = admin.map(|admin| {
        tokio::spawn(cdn_core::admin::serve_admin(
            admin,
            edge.clone(),
            shutdown.clone(),
        ))
    });
    let e = edge.clone();
    let s = shutdown.clone();
    let task = tokio::spawn(async move {
        server::run(e.clone(), http, s).await;
        e.upstream.pool().close();
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        let _ = discover.await;
    });
    tracing::info!(id = %edge.config.member.id, %http_addr, %admin_addr, "edge started");
    Ok(EdgeHandle {
        edge,
        http_addr,
        admin_addr,
        shutdown,
        task,
    })
}
