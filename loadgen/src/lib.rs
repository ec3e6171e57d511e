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
    /// Keys are drawn from `0..keys`...
    pub keys: u64,
    /// ...with this distribution.
    pub dist: Dist,
    /// Open loop: this many requests per second in total, latency measured from when each
    /// request was due (coordinated omission corrected, as wrk2 does). `None`: closed loop.
    pub rate: Option<f64>,
    /// HTTP/2 (prior knowledge) instead of HTTP/1.1.
    pub h2: bool,
    /// RNG seed, for repeatable key streams.
    pub seed: u64,
}

/// How keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    /// Every key equally likely.
    Uniform,
    /// Keys in order, 0, 1, 2, … (then again from 0): loads every key once per pass.
    Sequential,
    /// Zipf with this exponent (0.99 is the classic web cache workload).
    Zipf(f64),
    /// A hot set: `keys` of the keys get `traffic` of the requests (e.g. 0.01 and 0.9).
    Hot {
        /// Fraction of the keys that are hot.
        keys: f64,
        /// Fraction of the requests they get.
        traffic: f64,
    },
}

impl std::str::FromStr for Dist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}`: use uniform, seq, zipf:S (e.g. zipf:0.99) or hot:KEYS:TRAFFIC (e.g. hot:0.01:0.9)")
        };
        let mut parts = s.split(':');
        match parts.next() {
            Some("uniform") => Ok(Dist::Uniform),
            Some("seq") | Some("sequential") => Ok(Dist::Sequential),
            Some("zipf") => {
                let e: f64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                if e <= 0.0 {
                    return Err(bad());
                }
                Ok(Dist::Zipf(e))
            }
            Some("hot") => {
                let k: f64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                let t: f64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                if !(0.0..=1.0).contains(&k) || !(0.0..=1.0).contains(&t) {
                    return Err(bad());
                }
                Ok(Dist::Hot {
                    keys: k,
                    traffic: t,
                })
            }
            _ => Err(bad()),
        }
    }
}

/// Draws keys from a distribution over `0..n`.
pub struct Keys {
    n: u64,
    dist: Dist,
    zipf: Option<rand_distr::Zipf<f64>>,
    // Sequential: the next key, shared by every worker of a run, so together they visit
    // each key once per pass however fast each one is.
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Keys {
    /// A sampler for `n` keys.
    pub fn new(n: u64, dist: Dist) -> anyhow::Result<Self> {
        let n = n.max(1);
        let zipf = match dist {
            Dist::Zipf(e) => {
                Some(rand_distr::Zipf::new(n as f64, e).map_err(|e| anyhow::anyhow!("zipf: {e}"))?)
            }
            _ => None,
        };
        Ok(Self {
            n,
            dist,
            zipf,
            next: std::sync::Arc::default(),
        })
    }

    /// A sampler sharing `next` (the sequential position) with the run's other workers.
    pub fn shared(
        n: u64,
        dist: Dist,
        next: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> anyhow::Result<Self> {
        let mut k = Self::new(n, dist)?;
        k.next = next;
        Ok(k)
    }

    /// The next key.
    pub fn sample(&self, rng: &mut impl rand::Rng) -> u64 {
        use rand_distr::Distribution;
        match self.dist {
            Dist::Uniform => rng.random_range(0..self.n),
            Dist::Sequential => {
                self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.n
            }
            // Zipf ranks are 1..=n; rank 1 is the most popular key, 0.
            Dist::Zipf(_) => self
                .zipf
                .as_ref()
                .map(|z| z.sample(rng) as u64 - 1)
                .unwrap_or(0)
                .min(self.n - 1),
            Dist::Hot { keys, traffic } => {
                let hot = ((self.n as f64 * keys).ceil() as u64).clamp(1, self.n);
                if rng.random_bool(traffic) || hot == self.n {
                    rng.random_range(0..hot)
                } else {
                    rng.random_range(hot..self.n)
                }
            }
        }
    }
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
    let seq = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..opts.connections {
        let addr = opts.targets[c % opts.targets.len()];
        let opts = opts.clone();
        let budget = budget.clone();
        let seq = seq.clone();
        tasks.push(tokio::spawn(async move {
            worker(addr, opts, c as u64, deadline, budget, seq).await
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
    seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
    let keys = Keys::shared(opts.keys, opts.dist, seq)?;
    let mut sender = connect(addr, opts.h2).await?;
    // Open loop: this worker's share of the rate, one request due every `interval`; latency
    // counts from when a request was due, so a stall is not hidden (coordinated omission).
    let interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(opts.connections as f64 / r.max(0.001)));
    let mut due = Instant::now();
    while Instant::now() < deadline {
        let take = |b: u64| b.checked_sub(1);
        let ordering = std::sync::atomic::Ordering::Relaxed;
        if budget.fetch_update(ordering, ordering, take).is_err() {
            break;
        }
        let key = keys.sample(&mut rng);
        let path = opts.path.replace("{key}", &key.to_string());
        let req = if opts.h2 {
            http::Request::get(format!("http://{addr}{path}")).body(Empty::<Bytes>::new())?
        } else {
            http::Request::get(&path)
                .header(http::header::HOST, addr.to_string())
                .body(Empty::<Bytes>::new())?
        };
        let t0 = match interval {
            Some(iv) => {
                tokio::time::sleep_until(due.into()).await;
                let t = due;
                due += iv;
                t
            }
            None => Instant::now(),
        };
        let result = async {
            let resp = sender.send(req).await?;
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
                sender = connect(addr, opts.h2).await?;
            }
        }
    }
    Ok(w)
}

/// One connection, HTTP/1.1 or HTTP/2.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn send(
        &mut self,
        req: http::Request<Empty<Bytes>>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        Ok(match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        })
    }
}

async fn connect(addr: SocketAddr, h2: bool) -> anyhow::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    if h2 {
        let exec = hyper_util::rt::TokioExecutor::new();
        let (sender, conn) = hyper::client::conn::http2::handshake(exec, TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H1(sender))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributions_parse_and_skew_as_asked() {
        assert_eq!("uniform".parse::<Dist>().unwrap(), Dist::Uniform);
        assert_eq!("zipf:0.99".parse::<Dist>().unwrap(), Dist::Zipf(0.99));
        assert!("zipf:-1".parse::<Dist>().is_err());
        assert!("hot:2:0.9".parse::<Dist>().is_err());
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let n = 100_000;
        let zipf = Keys::new(1000, Dist::Zipf(1.1)).unwrap();
        let top10 = (0..n).filter(|_| zipf.sample(&mut rng) < 10).count();
        assert!(
            top10 as f64 / n as f64 > 0.4,
            "zipf 1.1: the top 1% of keys get most traffic ({top10})"
        );
        let hot = Keys::new(
            1000,
            Dist::Hot {
                keys: 0.01,
                traffic: 0.9,
            },
        )
        .unwrap();
        let hits = (0..n).filter(|_| hot.sample(&mut rng) < 10).count();
        assert!((hits as f64 / n as f64 - 0.9).abs() < 0.01, "{hits}");
        let seq = Keys::new(3, Dist::Sequential).unwrap();
        let drawn: Vec<u64> = (0..7).map(|_| seq.sample(&mut rng)).collect();
        assert_eq!(drawn, vec![0, 1, 2, 0, 1, 2, 0]);
        let uni = Keys::new(1000, Dist::Uniform).unwrap();
        assert!((0..n).all(|_| uni.sample(&mut rng) < 1000));
    }

    #[test]
    fn tiny_lfu_beats_lru_on_a_skewed_stream_at_one_percent() {
        let rows = hit_ratios(20_000, Dist::Zipf(0.9), 200_000, &[0.01], 3).unwrap();
        let tlfu = rows
            .iter()
            .find(|r| r.policy == "tiny-lfu")
            .unwrap()
            .hit_ratio;
        let lru = rows.iter().find(|r| r.policy == "lru").unwrap().hit_ratio;
        assert!(tlfu > lru, "tiny-lfu {tlfu} vs lru {lru}");
    }
}

/// Hit ratio of the store's eviction policies on a key stream, without the network.
#[derive(Debug, Serialize)]
pub struct HitRatio {
    /// `tiny-lfu` or `lru`.
    pub policy: &'static str,
    /// Capacity in objects.
    pub capacity: u64,
    /// Capacity as a fraction of the distinct keys.
    pub fraction: f64,
    /// Hits / requests.
    pub hit_ratio: f64,
}

/// Replays `requests` keys drawn from `dist` over `keys` through moka with TinyLFU and with
/// LRU at each capacity fraction (the same stream for every run), as the store would see a
/// miss-then-fill per request.
pub fn hit_ratios(
    keys: u64,
    dist: Dist,
    requests: u64,
    fractions: &[f64],
    seed: u64,
) -> anyhow::Result<Vec<HitRatio>> {
    let sampler = Keys::new(keys, dist)?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let stream: Vec<u64> = (0..requests).map(|_| sampler.sample(&mut rng)).collect();
    let mut out = Vec::new();
    for &fraction in fractions {
        let capacity = ((keys as f64 * fraction).round() as u64).max(1);
        for (name, policy) in [
            ("tiny-lfu", moka::policy::EvictionPolicy::tiny_lfu()),
            ("lru", moka::policy::EvictionPolicy::lru()),
        ] {
            let cache: moka::sync::Cache<u64, ()> = moka::sync::Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(policy)
                .build();
            let mut hits = 0u64;
            for (i, k) in stream.iter().enumerate() {
                if cache.get(k).is_some() {
                    hits += 1;
                } else {
                    cache.insert(*k, ());
                }
                // Let admission and eviction keep up, as they do between real requests.
                if i % 64 == 0 {
                    cache.run_pending_tasks();
                }
            }
            out.push(HitRatio {
                policy: name,
                capacity,
                fraction,
                hit_ratio: hits as f64 / requests as f64,
            });
        }
    }
    Ok(out)
}
