//! Test harness helpers: a cluster on ephemeral ports and an HTTP client.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};

use bytes::Bytes;
use cdn_cluster::{Cluster, ClusterConfig};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{RwLockReadGuard, RwLockWriteGuard};

/// The machine's cores, as a lock: a test that measures latency under load holds it alone
/// ([`measuring`]), every test that starts a cluster holds it shared ([`cluster`]), so a
/// latency bound is never checked while another test's cluster competes for the 2 cores.
static CORES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Shared hold on the cores, for a test that runs members but measures no latency.
pub async fn sharing() -> RwLockReadGuard<'static, ()> {
    CORES.read().await
}

/// Sole hold on the cores, for a test that checks a latency bound.
pub async fn measuring() -> RwLockWriteGuard<'static, ()> {
    CORES.write().await
}

/// Blocking [`sharing`], for a test that runs its own runtime (the simulation).
pub fn sharing_blocking() -> RwLockReadGuard<'static, ()> {
    CORES.blocking_read()
}

/// A hold on the cores, shared or sole.
#[allow(dead_code)] // held for its drop
pub enum Cores {
    Sharing(RwLockReadGuard<'static, ()>),
    Measuring(RwLockWriteGuard<'static, ()>),
}

/// A test's cluster; it shares the cores (see [`measuring`]) until stopped or dropped.
pub struct TestCluster {
    cluster: Cluster,
    _cores: RwLockReadGuard<'static, ()>,
}

impl TestCluster {
    pub async fn stop(self) {
        self.cluster.stop().await;
    }
}

impl Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

/// A cluster of `nodes` nodes and `edges` edges, with `tweak` applied to the config first.
pub async fn cluster(
    nodes: usize,
    edges: usize,
    tweak: impl FnOnce(&mut ClusterConfig),
) -> TestCluster {
    let cores = sharing().await;
    let mut cfg = ClusterConfig {
        nodes,
        edges,
        admin_token: "test-token".into(),
        ..ClusterConfig::default()
    };
    if let Some(engine) = test_store_engine() {
        cfg.node.member.store_engine = engine;
        cfg.edge.member.store_engine = engine;
    }
    tweak(&mut cfg);
    TestCluster {
        cluster: Cluster::start(cfg).await.expect("cluster starts"),
        _cores: cores,
    }
}

/// The store engine every member of a test cluster uses, from `CDN_TEST_STORE_ENGINE`
/// (`moka`, `compact`); unset: each member's default. CI runs these tests once per engine.
pub fn test_store_engine() -> Option<cdn_store::Engine> {
    let name = std::env::var("CDN_TEST_STORE_ENGINE").ok()?;
    Some(
        name.parse()
            .unwrap_or_else(|e| panic!("CDN_TEST_STORE_ENGINE: {e}")),
    )
}

/// What a client received.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The edge's outcome: the first token of `X-Cache`.
    pub fn edge_cache(&self) -> &str {
        self.header("x-cache")
            .split([',', ' '])
            .next()
            .unwrap_or("")
    }
}

/// Sends a request; errors (including a body cut short) come back as `Err`.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    h2: bool,
    body: Option<&'static str>,
) -> Result<Got, String> {
    request(addr, method, path, h2, &[], body.map(str::to_string)).await
}

/// Sends a request with extra header fields and an optional body.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    h2: bool,
    fields: &[(&str, &str)],
    body: Option<String>,
) -> Result<Got, String> {
    let uri = format!("http://{addr}{path}");
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in fields {
        b = b.header(*k, *v);
    }
    let resp = if let Some(body) = body {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .build_http::<Full<Bytes>>();
        let req = b
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        client.request(req).await.map_err(|e| format!("{e:?}"))?
    } else {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .build_http::<Empty<Bytes>>();
        let req = b.body(Empty::new()).map_err(|e| e.to_string())?;
        client.request(req).await.map_err(|e| format!("{e:?}"))?
    };
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?
        .to_bytes();
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// GET over HTTP/1.1; panics on transport errors.
pub async fn get(addr: SocketAddr, path: &str) -> Got {
    send(addr, Method::GET, path, false, None)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The body origin-stub sends for `target` of `size` bytes.
pub fn expected(target: &str, size: usize) -> Vec<u8> {
    origin_stub::expected_body(target, size)
}

/// The body origin-stub sends for `target` of `size` bytes at content `generation`.
pub fn expected_gen(target: &str, generation: u64, size: usize) -> Vec<u8> {
    origin_stub::versioned_body_bytes(target, generation, 0, size)
}

/// `POST /purge` on an admin address with the test token; returns the JSON answer.
pub async fn admin_purge(
    admin: SocketAddr,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    admin_purge_with(admin, body, Some("test-token")).await
}

/// `POST /purge` with the given token (or none).
pub async fn admin_purge_with(
    admin: SocketAddr,
    body: serde_json::Value,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut fields = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        fields.push(("authorization", a.as_str()));
    }
    let g = request(
        admin,
        Method::POST,
        "/purge",
        false,
        &fields,
        Some(body.to_string()),
    )
    .await
    .expect("admin answers");
    let v = serde_json::from_slice(&g.body).unwrap_or(serde_json::Value::Null);
    (g.status, v)
}

/// The ids in a purge report's list `field`, sorted.
pub fn ids(report: &serde_json::Value, field: &str) -> Vec<String> {
    let mut v: Vec<String> = report[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every member of a cluster with `nodes` nodes and `edges` edges, sorted as reports sort.
pub fn everyone(nodes: usize, edges: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..nodes)
        .map(|j| format!("node-{j}"))
        .chain((0..edges).map(|i| format!("edge-{i}")))
        .collect();
    v.sort();
    v
}

/// GET with extra request fields; panics on transport errors.
pub async fn get_with_fields(addr: SocketAddr, path: &str, fields: &[(&str, &str)]) -> Got {
    request(addr, Method::GET, path, false, fields, None)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Waits (bounded) until the origin-stub has served `n` requests for `target`: the event tests
/// wait for when a fill runs in the background.
pub async fn origin_reaches(c: &Cluster, target: &str, n: u64) {
    let stats = c.stub.as_ref().expect("stub").stats.clone();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while stats.target(target) < n {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("origin never saw {n} requests for {target}"));
}

/// Pushes `body` as `key` (path and query) through edge 0's admin API, cacheable for 10
/// minutes, so every owner stores it; asserts it was accepted.
pub async fn push_object(c: &Cluster, key: &str, body: String) {
    let push = request(
        c.edges[0].admin_addr,
        Method::PUT,
        &format!("/objects{key}"),
        false,
        &[
            ("authorization", "Bearer test-token"),
            ("cache-control", "max-age=600"),
        ],
        Some(body),
    )
    .await
    .unwrap();
    assert_eq!(push.status, StatusCode::OK, "push of {key}");
}

/// The running node with id `id`.
pub fn node<'a>(c: &'a Cluster, id: &str) -> &'a cache_node::NodeHandle {
    c.nodes
        .iter()
        .flatten()
        .find(|n| n.id() == id)
        .unwrap_or_else(|| panic!("no running node {id}"))
}
