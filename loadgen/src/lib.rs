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
