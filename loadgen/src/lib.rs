//! loadgen: closed-loop HTTP/1.1 load against one or more edges, with HDR latency histograms
//! and hit ratios read from `X-Cache`.
//!
//! Layout (one module for now): [`Options`] (what to run), [`run`] (N keep-alive
//! connections, each a worker sending one request at a time), [`Report`] (the result).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Edges to load, round-robin by connection.
    pub targets: Vec<SocketAddr>,
    /// Concurrent keep-alive connections.
    pub connections: usize,
    /// How long to run.
    pub duration: Duration,
    /// Stop after this many requests in total (whichever comes first).
    pub max_requests: Option<u64>,
    /// Request path template; `{key}` is replaced by a key number.
    pub path: String,
    /// Keys drawn uniformly from `0..keys`.
    pub keys: u64,
    /// RNG seed, for repeatable key streams.
    pub seed: u64,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Requests completed.
    pub requests: u64,
    /// Requests that failed (transport error or status >= 500).
    pub errors: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Requests per second.
    pub rps: f64,
    /// Body bytes per second.
    pub bytes_per_sec: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// Fraction of responses whose `X-Cache` starts with HIT.
    pub edge_hit_ratio: f64,
}

struct Worker {
    hist: Histogram<u64>,
    requests: u64,
    errors: u64,
    bytes: u64,
    hits: u64,
}

/// Runs the load and reports.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    anyhow::ensure!(!opts.targets.is_empty(), "no targets");
    anyhow::ensure!(opts.connections > 0, "connections must be > 0");
    let start = Instant::now();
    let deadline = start + opts.duration;
    let budget = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
        opts.max_requests.unwrap_or(u64::MAX),
    ));
    let mut tasks = Vec::new();
    for c in 0..opts.connections {
        let addr = opts.targets[c % opts.targets.len()];
        let opts = opts.clone();
        let budget = budget.clone();
        tasks.push(tokio::spawn(async move {
            worker(addr, opts, c as u64, deadline, budget).await
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut requests, mut errors, mut bytes, mut hits) = (0, 0, 0, 0);
    for t in tasks {
        let w = t.await.context("worker panicked")??;
        hist.add(&w.hist)?;
        requests += w.requests;
        errors += w.errors;
        bytes += w.bytes;
        hits += w.hits;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Report {
        requests,
        errors,
        seconds,
        rps: requests as f64 / seconds,
        bytes_per_sec: bytes as f64 / seconds,
        p50_us: hist.value_at_quantile(0.50),
        p90_us: hist.value_at_quantile(0.90),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        edge_hit_ratio: if requests == 0 {
            0.0
        } else {
            hits as f64 / requests as f64
        },
    })
}

async fn worker(
    addr: SocketAddr,
    opts: Options,
    index: u64,
    deadline: Instant,
    budget: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<Worker> {
    let mut rng =
        rand::rngs::SmallRng::seed_from_u64(opts.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut w = Worker {
        hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        requests: 0,
        errors: 0,
        bytes: 0,
        hits: 0,
    };
    let mut sender = connect(addr).await?;
    while Instant::now() < deadline {
        if budget
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |b| b.checked_sub(1),
            )
            .is_err()
        {
            break;
        }
        let key = if opts.keys <= 1 {
            0
        } else {
            rng.random_range(0..opts.keys)
        };
        let path = opts.path.replace("{key}", &key.to_string());
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let t0 = Instant::now();
        let result = async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let hit = resp
                .headers()
                .get("x-cache")
                .is_some_and(|v| v.as_bytes().starts_with(b"HIT"));
            let ok = resp.status().as_u16() < 500;
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((ok, hit, body.len()))
        }
        .await;
        let us = t0.elapsed().as_micros().max(1) as u64;
        w.requests += 1;
        match result {
            Ok((ok, hit, n)) => {
                w.hist.record(us.min(60_000_000))?;
                w.bytes += n as u64;
                w.hits += hit as u64;
                w.errors += (!ok) as u64;
            }
            Err(_) => {
                w.errors += 1;
                sender = connect(addr).await?;
            }
        }
    }
    Ok(w)
}

async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Purge-propagation measurement: what to run.
#[derive(Debug, Clone)]
pub struct PurgeOptions {
    /// Edges to watch (all of them, to measure "every edge").
    pub edges: Vec<SocketAddr>,
    /// Admin address that accepts the purges.
    pub admin: SocketAddr,
    /// Admin bearer token.
    pub token: String,
    /// origin-stub address: each round republishes there so old and new versions differ.
    pub origin: SocketAddr,
    /// Purges to measure.
    pub purges: usize,
    /// Probe path template; `{i}` becomes the round number.
    pub path: String,
}

/// Purge-propagation results, in microseconds.
#[derive(Debug, Serialize)]
pub struct PurgeReport {
    /// Purges measured.
    pub purges: usize,
    /// Time from sending the purge until every edge served the new version: p50.
    pub visible_p50_us: u64,
    /// p99 of the same.
    pub visible_p99_us: u64,
    /// Maximum of the same.
    pub visible_max_us: u64,
    /// Time until the admin call returned (every member acknowledged): p50.
    pub acked_p50_us: u64,
    /// p99 of the same.
    pub acked_p99_us: u64,
    /// Maximum of the same.
    pub acked_max_us: u64,
    /// Purges some member did not acknowledge.
    pub incomplete: usize,
}

async fn simple(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    fields: &[(&str, String)],
    body: Option<String>,
) -> anyhow::Result<(http::StatusCode, http::HeaderMap, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    for (k, v) in fields {
        b = b.header(*k, v);
    }
    let req = b.body(http_body_util::Full::new(Bytes::from(
        body.unwrap_or_default(),
    )))?;
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    Ok((
        parts.status,
        parts.headers,
        body.collect().await?.to_bytes(),
    ))
}

/// Measures purge propagation: per round, warm a probe object at every edge, republish it at
/// the origin, purge it through `admin`, and time until every edge serves the new version.
pub async fn purge_propagation(opts: PurgeOptions) -> anyhow::Result<PurgeReport> {
    let mut visible = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut acked = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut incomplete = 0;
    for i in 0..opts.purges {
        let key = opts.path.replace("{i}", &i.to_string());
        let mut old = Vec::new();
        for e in &opts.edges {
            simple(*e, http::Method::GET, &key, &[], None).await?;
            let (_, h, _) = simple(*e, http::Method::GET, &key, &[], None).await?;
            old.push(h.get(http::header::ETAG).cloned());
        }
        simple(
            opts.origin,
            http::Method::POST,
            "/_stub/generation",
            &[],
            None,
        )
        .await?;
        let t0 = Instant::now();
        let body = serde_json::json!({ "urls": [key] }).to_string();
        let auth = format!("Bearer {}", opts.token);
        let admin = opts.admin;
        let purge = tokio::spawn(async move {
            let r = simple(
                admin,
                http::Method::POST,
                "/purge",
                &[
                    ("authorization", auth),
                    ("content-type", "application/json".into()),
                ],
                Some(body),
            )
            .await;
            (t0.elapsed(), r)
        });
        let watchers = opts.edges.iter().zip(old).map(|(e, old)| {
            let key = key.clone();
            let e = *e;
            async move {
                loop {
                    let (_, h, _) = simple(e, http::Method::GET, &key, &[], None).await?;
                    if h.get(http::header::ETAG) != old.as_ref() {
                        return anyhow::Ok(t0.elapsed());
                    }
                    anyhow::ensure!(
                        t0.elapsed() < Duration::from_secs(30),
                        "edge {e} still serves the old version after 30 s"
                    );
                }
            }
        });
        let times = futures_join(watchers).await?;
        let worst = times.into_iter().max().unwrap_or_default();
        visible.record(worst.as_micros().max(1) as u64)?;
        let (ack, r) = purge.await?;
        acked.record(ack.as_micros().max(1) as u64)?;
        match r {
            Ok((status, _, body)) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if !status.is_success() || v["missing"].as_array().is_some_and(|m| !m.is_empty()) {
                    incomplete += 1;
                }
            }
            Err(_) => incomplete += 1,
        }
    }
    Ok(PurgeReport {
        purges: opts.purges,
        visible_p50_us: visible.value_at_quantile(0.5),
        visible_p99_us: visible.value_at_quantile(0.99),
        visible_max_us: visible.max(),
        acked_p50_us: acked.value_at_quantile(0.5),
        acked_p99_us: acked.value_at_quantile(0.99),
        acked_max_us: acked.max(),
        incomplete,
    })
}

async fn futures_join<I, F, T>(futs: I) -> anyhow::Result<Vec<T>>
where
    I: IntoIterator<Item = F>,
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut out = Vec::new();
    for r in futures::future::join_all(futs).await {
        out.push(r?);
    }
    Ok(out)
}
