//! Test harness helpers: a cluster on ephemeral ports and an HTTP client.

use std::net::SocketAddr;

use bytes::Bytes;
use cdn_cluster::{Cluster, ClusterConfig};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A cluster of `nodes` nodes and `edges` edges, with `tweak` applied to the config first.
pub async fn cluster(
    nodes: usize,
    edges: usize,
    tweak: impl FnOnce(&mut ClusterConfig),
) -> Cluster {
    let mut cfg = ClusterConfig {
        nodes,
        edges,
        admin_token: "test-token".into(),
        ..ClusterConfig::default()
    };
    tweak(&mut cfg);
    Cluster::start(cfg).await.expect("cluster starts")
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
    let uri = format!("http://{addr}{path}");
    let resp = if let Some(b) = body {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .build_http::<Full<Bytes>>();
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::from_static(b.as_bytes())))
            .map_err(|e| e.to_string())?;
        client.request(req).await.map_err(|e| format!("{e:?}"))?
    } else {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .build_http::<Empty<Bytes>>();
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
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
