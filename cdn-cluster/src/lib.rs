//! The whole system on one machine, in one process: origin-stub, N cache nodes, M edges.
//!
//! Layout: this one file. It only wires the component libraries together (no logic of its
//! own); tests use the same [`Cluster`] as their harness, on ephemeral ports.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use cache_node::NodeHandle;
use cdn_net::tls::TlsMaterial;
use edge::EdgeHandle;
use tokio_util::sync::CancellationToken;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Front this origin instead of starting origin-stub.
    pub origin: Option<String>,
    /// Cache nodes.
    pub nodes: usize,
    /// Edges.
    pub edges: usize,
    /// Owners per key (R).
    pub replicas: usize,
    /// Edge i serves clients on this port + i (0: ephemeral ports).
    pub edge_port: u16,
    /// Edge i's admin API on this port + i, node j's on this port + 50 + j (0: ephemeral).
    pub admin_port: u16,
    /// Admin bearer token.
    pub admin_token: String,
    /// Template for every node (id, addresses and seeds are set per node).
    pub node: cache_node::Config,
    /// Template for every edge (id, addresses and seeds are set per edge).
    pub edge: edge::Config,
    /// Template for the origin-stub (its address is ephemeral).
    pub origin_stub: origin_stub::Config,
    /// Node j's region and parent region (nodes past the list keep the template's).
    pub node_regions: Vec<(String, Option<String>)>,
    /// Edge i's region (edges past the list keep the template's).
    pub edge_regions: Vec<String>,
    /// Put before every member id (`{prefix}node-0`, `{prefix}edge-0`). Every member of a
    /// process records metrics into the one process-wide recorder, told apart by `member`:
    /// two clusters in one process (tests running side by side) that read `/metrics` need
    /// different ids, or each would see the other's series as its own.
    pub id_prefix: String,
}

impl ClusterConfig {
    /// Node `j`'s member id.
    pub fn node_id(&self, j: usize) -> String {
        format!("{}node-{j}", self.id_prefix)
    }

    /// Edge `i`'s member id.
    pub fn edge_id(&self, i: usize) -> String {
        format!("{}edge-{i}", self.id_prefix)
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            origin: None,
            nodes: 3,
            edges: 2,
            replicas: 2,
            edge_port: 0,
            admin_port: 0,
            admin_token: String::new(),
            node: cache_node::Config::default(),
            edge: edge::Config::default(),
            origin_stub: origin_stub::Config::default(),
            node_regions: Vec::new(),
            edge_regions: Vec::new(),
            id_prefix: String::new(),
        }
    }
}

/// The origin-stub started by the cluster.
pub struct StubHandle {
    /// Its address.
    pub addr: SocketAddr,
    /// Its request counters.
    pub stats: Arc<origin_stub::Stats>,
}

/// A running cluster.
pub struct Cluster {
    /// The origin base URL every member uses.
    pub origin_url: String,
    /// The stub, when the cluster started one.
    pub stub: Option<StubHandle>,
    /// Cache nodes; `None` once stopped with [`Cluster::stop_node`].
    pub nodes: Vec<Option<NodeHandle>>,
    /// Edges.
    pub edges: Vec<EdgeHandle>,
    /// Admin bearer token.
    pub admin_token: String,
    /// The cluster's certificates (generated for this run).
    pub tls: TlsMaterial,
    shutdown: CancellationToken,
    stub_shutdown: CancellationToken,
    cfg: ClusterConfig,
    // Every node's QUIC address (the seeds of nodes and edges).
    seeds: Vec<String>,
}

fn port(base: u16, offset: usize) -> anyhow::Result<u16> {
    if base == 0 {
        return Ok(0);
    }
    u16::try_from(base as usize + offset).context("port out of range")
}

impl Cluster {
    /// Starts everything on 127.0.0.1 and waits until every edge knows every node.
    pub async fn start(cfg: ClusterConfig) -> anyhow::Result<Self> {
        cdn_net::tls::install_crypto_provider();
        let shutdown = CancellationToken::new();
        let stub_shutdown = shutdown.child_token();
        let tls = TlsMaterial::generate().context("generating cluster certificates")?;
        let (origin_url, stub) = match &cfg.origin {
            Some(url) => (url.clone(), None),
            None => {
                let listener = cdn_http::listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
                    .context("binding origin-stub")?;
                let addr = listener.local_addr()?;
                let stub = origin_stub::OriginStub::new(cfg.origin_stub.clone());
                let stats = stub.stats();
                tokio::spawn(stub.run(listener, stub_shutdown.clone()));
                (format!("http://{addr}"), Some(StubHandle { addr, stats }))
            }
        };
        // Bind every node's socket first, so each can be given the others as seeds.
        let mut udps = Vec::new();
        for _ in 0..cfg.nodes {
            udps.push(
                std::net::UdpSocket::bind("127.0.0.1:0").context("binding node QUIC socket")?,
            );
        }
        let seeds: Vec<String> = udps
            .iter()
            .map(|u| u.local_addr().map(|a| a.to_string()))
            .collect::<Result<_, _>>()?;
        let mut nodes = Vec::new();
        for (j, udp) in udps.into_iter().enumerate() {
            nodes.push(start_node(&cfg, j, udp, &seeds, &origin_url, &tls, &shutdown).await?);
        }
        let mut edges = Vec::new();
        for i in 0..cfg.edges {
            let mut c = cfg.edge.clone();
            c.member.id = cfg.edge_id(i);
            c.member.origin = origin_url.clone();
            c.member.seeds = seeds.clone();
            c.member.replicas = cfg.replicas;
            c.member.admin_token = Some(cfg.admin_token.clone());
            if let Some(r) = cfg.edge_regions.get(i) {
                c.member.region = r.clone();
            }
            let http = cdn_http::listen(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                port(cfg.edge_port, i)?,
            )))
            .with_context(|| format!("binding {} HTTP port", cfg.edge_id(i)))?;
            let admin = cdn_http::listen(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                port(cfg.admin_port, i)?,
            )))
            .with_context(|| format!("binding {} admin port", cfg.edge_id(i)))?;
            c.member.listen = http.local_addr()?;
            c.member.admin = admin.local_addr()?;
            let h = edge::start(c, &tls, http, admin, shutdown.child_token())
                .await
                .with_context(|| format!("starting {}", cfg.edge_id(i)))?;
            edges.push(h);
        }
        // Every node sees every other alive (gossip converged) before the cluster is ready.
        for (j, n) in nodes.iter().enumerate() {
            let mut members = n.node.peers().watch_members();
            tokio::time::timeout(
                std::time::Duration::from_secs(30),
                members.wait_for(|m| m.len() >= cfg.nodes),
            )
            .await
            .with_context(|| {
                format!(
                    "{} did not see every node alive within 30 s",
                    cfg.node_id(j)
                )
            })?
            .context("node stopped")?;
        }
        for e in &edges {
            tokio::time::timeout(
                std::time::Duration::from_secs(30),
                e.wait_for_members(nodes.len()),
            )
            .await
            .context("edges did not learn every node within 30 s")?;
            let mut connects = e.edge.upstream().pool().watch_connects();
            tokio::time::timeout(
                std::time::Duration::from_secs(30),
                connects.wait_for(|n| *n >= nodes.len() as u64),
            )
            .await
            .context("edges did not connect to every node within 30 s")?
            .context("edge stopped")?;
        }
        Ok(Self {
            origin_url,
            stub,
            nodes: nodes.into_iter().map(Some).collect(),
            edges,
            admin_token: cfg.admin_token.clone(),
            tls,
            shutdown,
            stub_shutdown,
            cfg,
            seeds,
        })
    }

    /// Stops node `j` gracefully, as on SIGTERM: it leaves the cluster, drains, closes.
    pub async fn stop_node(&mut self, j: usize) {
        if let Some(n) = self.nodes.get_mut(j).and_then(Option::take) {
            n.stop().await;
        }
    }

    /// Stops node `j` without leaving the cluster (a crash, as far as peers can tell
    /// in-process: its connections close without the `LEAVING` code).
    pub async fn abort_node(&mut self, j: usize) {
        if let Some(n) = self.nodes.get_mut(j).and_then(Option::take) {
            n.abort().await;
        }
    }

    /// Starts one more node (seeded with every node's address) and waits until every node
    /// and edge lists it alive. Returns its index.
    pub async fn add_node(&mut self) -> anyhow::Result<usize> {
        let j = self.nodes.len();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").context("binding node QUIC socket")?;
        let addr = udp.local_addr()?.to_string();
        self.seeds.push(addr.clone());
        let h = start_node(
            &self.cfg,
            j,
            udp,
            &self.seeds,
            &self.origin_url,
            &self.tls,
            &self.shutdown,
        )
        .await?;
        self.nodes.push(Some(h));
        let id = self.cfg.node_id(j);
        let knows = |m: &Arc<Vec<cdn_proto::Member>>| m.iter().any(|m| m.id == id);
        let wait = std::time::Duration::from_secs(30);
        for n in self.nodes.iter().flatten() {
            let mut rx = n.node.peers().watch_members();
            tokio::time::timeout(wait, rx.wait_for(knows))
                .await
                .with_context(|| format!("{} did not see {id} alive", n.id()))?
                .context("node stopped")?;
        }
        for e in &self.edges {
            let mut rx = e.edge.upstream().watch_members();
            tokio::time::timeout(wait, rx.wait_for(knows))
                .await
                .with_context(|| format!("an edge did not see {id} alive"))?
                .context("edge stopped")?;
        }
        Ok(j)
    }

    /// Stops the origin-stub (the origin goes down; members see connection errors).
    pub fn stop_origin(&self) {
        self.stub_shutdown.cancel();
    }

    /// Origin requests for an exact path-and-query (stub only; 0 otherwise).
    pub fn origin_count(&self, target: &str) -> u64 {
        self.stub
            .as_ref()
            .map(|s| s.stats.target(target))
            .unwrap_or(0)
    }

    /// Stops every member, edges first so in-flight requests drain.
    pub async fn stop(self) {
        for e in self.edges {
            e.stop().await;
        }
        for n in self.nodes.into_iter().flatten() {
            n.stop().await;
        }
        self.shutdown.cancel();
    }
}

/// Starts node `j` from the template on `udp`.
async fn start_node(
    cfg: &ClusterConfig,
    j: usize,
    udp: std::net::UdpSocket,
    seeds: &[String],
    origin_url: &str,
    tls: &TlsMaterial,
    shutdown: &CancellationToken,
) -> anyhow::Result<NodeHandle> {
    let mut c = cfg.node.clone();
    c.member.id = cfg.node_id(j);
    c.member.seeds = seeds.to_vec();
    c.member.replicas = cfg.replicas;
    c.member.origin = origin_url.to_string();
    c.member.admin_token = Some(cfg.admin_token.clone());
    c.member.listen = udp.local_addr()?;
    if let Some((region, parent)) = cfg.node_regions.get(j) {
        c.member.region = region.clone();
        c.parent_region = parent.clone();
    }
    let admin = cdn_http::listen(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        port(cfg.admin_port, 50 + j)?,
    )))
    .with_context(|| format!("binding {} admin port", cfg.node_id(j)))?;
    c.member.admin = admin.local_addr()?;
    cache_node::start(c, tls, udp, admin, shutdown.child_token())
        .await
        .with_context(|| format!("starting {}", cfg.node_id(j)))
}
