//! A cluster on ephemeral ports, an HTTP client for its edges, and a runner for the binary.

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use cdn_cluster::{Cluster, ClusterConfig};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The admin token of every test cluster.
pub const TOKEN: &str = "test-token";

/// Held while a cluster starts: the tests run in parallel on 2 cores, and clusters that start
/// at once (TLS handshakes, gossip converging) were seen to miss the harness's 30 s
/// convergence bound when the machine was also busy; once started they share it fine.
static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A cluster of `nodes` cache nodes and `edges` edges fronting a fresh origin-stub.
pub async fn cluster(nodes: usize, edges: usize) -> Cluster {
    let _one_at_a_time = STARTING.lock().await;
    Cluster::start(ClusterConfig {
        nodes,
        edges,
        admin_token: TOKEN.into(),
        ..ClusterConfig::default()
    })
    .await
    .expect("cluster starts")
}

/// Edge `i`'s admin address.
pub fn edge_admin(c: &Cluster, i: usize) -> String {
    c.edges[i].admin_addr.to_string()
}

/// Node `j`'s admin address.
pub fn node_admin(c: &Cluster, j: usize) -> String {
    c.nodes[j]
        .as_ref()
        .expect("node running")
        .admin_addr
        .to_string()
}

/// The `cdnctl` command with a clean environment (no admin address or token inherited).
pub fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cdnctl"));
    cmd.args(args)
        .env_remove("CDN_ADMIN")
        .env_remove("CDN_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// What a run of `cdnctl` did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cdnctl` (bounded: 60 s) with `env` set; the cluster keeps serving meanwhile.
pub async fn cdnctl_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("cdnctl {args:?} did not finish within 60 s"))
        .expect("cdnctl runs")
        .into()
}

/// Runs `cdnctl` with the cluster's token in `CDN_ADMIN_TOKEN`.
pub async fn cdnctl(args: &[&str]) -> Run {
    cdnctl_env(args, &[("CDN_ADMIN_TOKEN", TOKEN)]).await
}

/// What a client got.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    /// The edge's own outcome: the first token of `X-Cache` (`HIT`, `MISS`, …).
    pub fn cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split([',', ' '])
            .next()
            .unwrap_or("")
    }
}

/// GET `path` from the edge at `addr` over HTTP/1.1.
pub async fn get(addr: SocketAddr, path: &str) -> Got {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .expect("request");
    let resp = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GETs `path` through edge `i` until it is a hit there (a miss first, then the hit):
/// asserts the edge caches it.
pub async fn cached(c: &Cluster, i: usize, path: &str) {
    let first = get(c.edges[i].http_addr, path).await;
    assert_eq!(first.status, StatusCode::OK, "GET {path}");
    let second = get(c.edges[i].http_addr, path).await;
    assert_eq!(second.cache(), "HIT", "second GET of {path} at edge-{i}");
}

/// A member's `/status`.
pub async fn status_of(addr: &str) -> serde_json::Value {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = Request::get(format!("http://{addr}/status"))
        .body(Empty::new())
        .expect("request");
    let resp = client.request(req).await.expect("status answers");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("status is JSON")
}
