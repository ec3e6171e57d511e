//! loadgen: HTTP/1.1 or HTTP/2 load against one or more edges, closed or open loop, with HDR
//! latency histograms, hit ratio per tier read from `X-Cache`, and errors by kind.
//!
//! Layout: [`Options`] (what to run) and [`run`] (N keep-alive connections, each a worker
//! sending one request at a time) here, with [`Report`] (the result); [`keys`] (key
//! distributions, object sizes, the operation mix); [`propagation`] (purge propagation);
//! [`hit_ratio`] (eviction policies without the network); [`plot`] (SVG charts).
#![forbid(unsafe_code)]

pub mod hit_ratio;
pub mod keys;
pub mod plot;
pub mod propagation;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rand::SeedableRng;
use serde::Serialize;

pub use hit_ratio::{hit_ratios, HitRatio};
pub use keys::{Dist, Keys, Mix, Op, Sizes};
pub use propagation::{purge_propagation, PurgeOptions, PurgeReport};

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
    /// Request path template; `{key}` is replaced by a key number and `{size}` by the size
    /// of that key's object.
    pub path: String,
    /// Keys are drawn from `0..keys`...
    pub keys: u64,
    /// ...with this distribution.
    pub dist: Dist,
    /// Object-size classes, for `{size}`.
    pub sizes: Sizes,
    /// Ratios of GET, push and purge; pushes and purges go to `admin`.
    pub mix: Mix,
    /// Admin address and bearer token, for pushes and purges.
    pub admin: Option<(SocketAddr, String)>,
    /// `Cache-Control` of pushed objects.
    pub push_cache_control: String,
    /// Open loop: this many requests per second in total, latency measured from when each
    /// request was due (coordinated omission corrected, as wrk2 does). `None`: closed loop.
    pub rate: Option<f64>,
    /// HTTP/2 (prior knowledge) instead of HTTP/1.1.
    pub h2: bool,
    /// RNG seed, for repeatable key streams.
    pub seed: u64,
    /// origin-stub's address: the report counts the origin requests the run caused.
    pub origin: Option<SocketAddr>,
    /// Counters updated as requests complete, for live progress.
    pub live: Option<Arc<Live>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            connections: 32,
            duration: Duration::from_secs(10),
            max_requests: None,
            path: "/obj/{key}?size={size}".into(),
            keys: 1,
            dist: Dist::Uniform,
            sizes: Sizes::default(),
            mix: Mix::default(),
            admin: None,
            push_cache_control: "max-age=600".into(),
            rate: None,
            h2: false,
            seed: 1,
            origin: None,
            live: None,
        }
    }
}

/// Live counters of a run in progress.
#[derive(Debug, Default)]
pub struct Live {
    /// Requests completed.
    pub requests: AtomicU64,
    /// Of which failed.
    pub errors: AtomicU64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Requests completed (every operation).
    pub requests: u64,
    /// Requests that failed: see `errors_by_kind`.
    pub errors: u64,
    /// Failed requests by kind: `connect` (no connection), `transport` (the connection broke
    /// mid-request), `status_5xx` (a GET answered 5xx), `admin_rejected` (a push or purge
    /// answered other than 2xx).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Requests per second.
    pub rps: f64,
    /// Response body bytes per second.
    pub bytes_per_sec: f64,
    /// Latency percentiles in microseconds, every operation: median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// Fraction of GET answers whose `X-Cache` says the edge had it (`tiers.edge_hit`).
    pub edge_hit_ratio: f64,
    /// Where GETs were answered, as fractions of GET answers.
    pub tiers: Tiers,
    /// Per operation (`get`, `push`, `purge`).
    pub ops: BTreeMap<String, OpReport>,
    /// Requests origin-stub served during the run (with `Options::origin`).
    pub origin_requests: Option<u64>,
    /// The latency curve: (quantile, microseconds) from the median to the maximum.
    pub percentiles: Vec<(f64, u64)>,
    /// Completions per second of the run.
    pub timeline: Vec<Second>,
}

/// Where GETs were answered, from `X-Cache` (`HIT`; `MISS, HIT from node-1`; `MISS, MISS
/// from node-1`; `MISS, origin`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tiers {
    /// The edge's own cache (`HIT`, `STALE`, `REVALIDATED` first).
    pub edge_hit: f64,
    /// The node tier (the edge missed, the node had it).
    pub node_hit: f64,
    /// Neither: the origin answered.
    pub miss: f64,
    /// No `X-Cache` field (another cache under test).
    pub unlabelled: f64,
}

/// One operation's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// Requests sent.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Maximum.
    pub max_us: u64,
}

/// One second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds since the start.
    pub second: u64,
    /// Requests completed in it.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
}

const QUANTILES: [f64; 9] = [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0];

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// An operation's (latencies, requests, errors).
type OpTally = (Histogram<u64>, u64, u64);

fn op_tally(ops: &mut BTreeMap<Op, OpTally>, op: Op) -> anyhow::Result<&mut OpTally> {
    Ok(match ops.entry(op) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(v) => v.insert((histogram()?, 0, 0)),
    })
}

/// One worker's (or, merged, the run's) counts.
struct Tally {
    hist: Histogram<u64>,
    ops: BTreeMap<Op, OpTally>,
    requests: u64,
    errors: u64,
    errors_by_kind: BTreeMap<&'static str, u64>,
    bytes: u64,
    // GET answers by `Tier`.
    tiers: [u64; 4],
    timeline: Vec<(u64, u64)>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hist: histogram()?,
            ops: BTreeMap::new(),
            requests: 0,
            errors: 0,
            errors_by_kind: BTreeMap::new(),
            bytes: 0,
            tiers: [0; 4],
            timeline: Vec::new(),
        })
    }

    fn record(
        &mut self,
        op: Op,
        us: u64,
        error: Option<&'static str>,
        second: usize,
    ) -> anyhow::Result<()> {
        let us = us.clamp(1, 60_000_000);
        self.requests += 1;
        self.hist.record(us)?;
        let o = op_tally(&mut self.ops, op)?;
        o.0.record(us)?;
        o.1 += 1;
        o.2 += error.is_some() as u64;
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, (0, 0));
        }
        self.timeline[second].0 += 1;
        if let Some(kind) = error {
            self.errors += 1;
            *self.errors_by_kind.entry(kind).or_default() += 1;
            self.timeline[second].1 += 1;
        }
        Ok(())
    }

    fn merge(&mut self, o: Tally) -> anyhow::Result<()> {
        self.hist.add(&o.hist)?;
        for (op, (h, n, e)) in o.ops {
            let m = op_tally(&mut self.ops, op)?;
            m.0.add(&h)?;
            m.1 += n;
            m.2 += e;
        }
        self.requests += o.requests;
        self.errors += o.errors;
        for (k, n) in o.errors_by_kind {
            *self.errors_by_kind.entry(k).or_default() += n;
        }
        self.bytes += o.bytes;
        for i in 0..4 {
            self.tiers[i] += o.tiers[i];
        }
        if self.timeline.len() < o.timeline.len() {
            self.timeline.resize(o.timeline.len(), (0, 0));
        }
        for (i, (n, e)) in o.timeline.into_iter().enumerate() {
            self.timeline[i].0 += n;
            self.timeline[i].1 += e;
        }
        Ok(())
    }

    fn report(self, seconds: f64, origin_requests: Option<u64>) -> Report {
        let h = &self.hist;
        let answered: u64 = self.tiers.iter().sum();
        let share = |n: u64| {
            if answered == 0 {
                0.0
            } else {
                n as f64 / answered as f64
            }
        };
        let tiers = Tiers {
            edge_hit: share(self.tiers[Tier::Edge as usize]),
            node_hit: share(self.tiers[Tier::Node as usize]),
            miss: share(self.tiers[Tier::Origin as usize]),
            unlabelled: share(self.tiers[Tier::Unsaid as usize]),
        };
        Report {
            requests: self.requests,
            errors: self.errors,
            errors_by_kind: self
                .errors_by_kind
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
            seconds,
            rps: self.requests as f64 / seconds,
            bytes_per_sec: self.bytes as f64 / seconds,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            edge_hit_ratio: tiers.edge_hit,
            tiers,
            ops: self
                .ops
                .into_iter()
                .map(|(op, (h, n, e))| {
                    let r = OpReport {
                        requests: n,
                        errors: e,
                        p50_us: h.value_at_quantile(0.5),
                        p99_us: h.value_at_quantile(0.99),
                        max_us: h.max(),
                    };
                    (op.name().to_string(), r)
                })
                .collect(),
            origin_requests,
            percentiles: QUANTILES
                .iter()
                .map(|q| (*q, h.value_at_quantile(*q)))
                .collect(),
            timeline: self
                .timeline
                .into_iter()
                .enumerate()
                .map(|(i, (requests, errors))| Second {
                    second: i as u64,
                    requests,
                    errors,
                })
                .collect(),
        }
    }
}

/// Runs the load and reports.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    anyhow::ensure!(!opts.targets.is_empty(), "no targets");
    anyhow::ensure!(opts.connections > 0, "connections must be > 0");
    anyhow::ensure!(
        !opts.mix.needs_admin() || opts.admin.is_some(),
        "pushes and purges need an admin address and token"
    );
    let origin_before = match opts.origin {
        Some(o) => Some(origin_served(o).await?),
        None => None,
    };
    let start = Instant::now();
    let deadline = start + opts.duration;
    let budget = Arc::new(AtomicU64::new(opts.max_requests.unwrap_or(u64::MAX)));
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..opts.connections {
        let addr = opts.targets[c % opts.targets.len()];
        let opts = opts.clone();
        let budget = budget.clone();
        let seq = seq.clone();
        tasks.push(tokio::spawn(async move {
            worker(addr, opts, c as u64, start, deadline, budget, seq).await
        }));
    }
    let mut total = Tally::new()?;
    for t in tasks {
        total.merge(t.await.context("worker panicked")??)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let origin_requests = match (opts.origin, origin_before) {
        (Some(o), Some(before)) => Some(origin_served(o).await?.saturating_sub(before)),
        _ => None,
    };
    Ok(total.report(seconds, origin_requests))
}

/// Requests origin-stub has served so far (its `/_stub/stats`).
async fn origin_served(origin: SocketAddr) -> anyhow::Result<u64> {
    let (status, _, body) =
        propagation::simple(origin, http::Method::GET, "/_stub/stats", &[], None)
            .await
            .with_context(|| format!("asking origin-stub at {origin} for its counters"))?;
    anyhow::ensure!(status.is_success(), "origin-stub stats: {status}");
    let v: serde_json::Value = serde_json::from_slice(&body).context("origin-stub stats")?;
    v["total"]
        .as_u64()
        .context("origin-stub stats have no `total`")
}

/// One request's outcome: response body bytes and where it was answered, or why it failed.
type Outcome = Result<(u64, Option<Tier>), &'static str>;

async fn worker(
    addr: SocketAddr,
    opts: Options,
    index: u64,
    start: Instant,
    deadline: Instant,
    budget: Arc<AtomicU64>,
    seq: Arc<AtomicU64>,
) -> anyhow::Result<Tally> {
    let mut rng =
        rand::rngs::SmallRng::seed_from_u64(opts.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut w = Tally::new()?;
    let keys = Keys::shared(opts.keys, opts.dist, seq)?;
    let mut target: Option<Sender> = None;
    let mut admin: Option<Sender> = None;
    // Open loop: this worker's share of the rate, one request due every `interval`; latency
    // counts from when a request was due, so a stall is not hidden (coordinated omission).
    let interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(opts.connections as f64 / r.max(0.001)));
    let mut due = Instant::now();
    while Instant::now() < deadline {
        let take = |b: u64| b.checked_sub(1);
        if budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, take)
            .is_err()
        {
            break;
        }
        let key = keys.sample(&mut rng);
        let size = opts.sizes.of(key);
        let path = opts
            .path
            .replace("{key}", &key.to_string())
            .replace("{size}", &size.to_string());
        let op = opts.mix.pick(&mut rng);
        let t0 = match interval {
            // Behind schedule (the previous answer came late): the request was due at `due`
            // and its latency counts from then, however late it is sent.
            Some(iv) if Instant::now() >= due => {
                let t = due;
                due += iv;
                t
            }
            // Ahead: wait, and count from when the timer let us go (it wakes up to a
            // millisecond late, which is the generator's delay, not the server's).
            Some(iv) => {
                tokio::time::sleep_until(due.into()).await;
                due += iv;
                Instant::now()
            }
            None => Instant::now(),
        };
        let outcome = match op {
            Op::Get => get(&mut target, addr, opts.h2, &path).await,
            Op::Push | Op::Purge => {
                let (admin_addr, token) = opts.admin.as_ref().context("admin address")?;
                admin_call(&mut admin, *admin_addr, token, op, &path, size, &opts).await
            }
        };
        let us = t0.elapsed().as_micros() as u64;
        let second = t0.saturating_duration_since(start).as_secs() as usize;
        let error = outcome.err();
        if let Ok((bytes, tier)) = outcome {
            w.bytes += bytes;
            if let Some(t) = tier {
                w.tiers[t as usize] += 1;
            }
        }
        w.record(op, us, error, second)?;
        if let Some(live) = &opts.live {
            live.requests.fetch_add(1, Ordering::Relaxed);
            live.errors
                .fetch_add(error.is_some() as u64, Ordering::Relaxed);
        }
        if error == Some("connect") {
            // Do not spin on a member that is down; the open loop's clock keeps counting.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(w)
}

/// A connection from `slot` that is ready for a request: a new one if there is none or the
/// server closed it (keep-alive limits, idle timeouts: no request was lost, so no error).
async fn ensure(
    slot: &mut Option<Sender>,
    addr: SocketAddr,
    h2: bool,
) -> Result<&mut Sender, &'static str> {
    if let Some(s) = slot.as_mut() {
        if s.ready().await.is_err() {
            *slot = None;
        }
    }
    if slot.is_none() {
        let mut s = connect(addr, h2).await.map_err(|_| "connect")?;
        s.ready().await.map_err(|_| "connect")?;
        *slot = Some(s);
    }
    slot.as_mut().ok_or("connect")
}

/// Whether the server said it closes the connection after this response.
fn closing(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

async fn get(slot: &mut Option<Sender>, addr: SocketAddr, h2: bool, path: &str) -> Outcome {
    let req = if h2 {
        http::Request::get(format!("http://{addr}{path}"))
    } else {
        http::Request::get(path).header(http::header::HOST, addr.to_string())
    };
    let req = req.body(Full::new(Bytes::new())).map_err(|_| "bad path")?;
    let sender = ensure(slot, addr, h2).await?;
    let result = async {
        let resp = sender.send(req).await?;
        let tier = tier(resp.headers().get("x-cache"));
        let ok = resp.status().as_u16() < 500;
        let close = closing(resp.headers());
        let n = resp.into_body().collect().await?.to_bytes().len() as u64;
        anyhow::Ok((ok, n, tier, close))
    }
    .await;
    if matches!(result, Ok((.., true))) {
        *slot = None;
    }
    match result {
        Ok((true, n, tier, _)) => Ok((n, Some(tier))),
        Ok((false, ..)) => Err("status_5xx"),
        Err(_) => {
            *slot = None;
            Err("transport")
        }
    }
}

/// Which tier answered a GET (indexes `Tally::tiers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Edge = 0,
    Node = 1,
    Origin = 2,
    /// No `X-Cache`.
    Unsaid = 3,
}

/// Which tier answered, from `X-Cache`.
fn tier(x_cache: Option<&http::HeaderValue>) -> Tier {
    let Some(v) = x_cache.and_then(|v| v.to_str().ok()) else {
        return Tier::Unsaid;
    };
    let served = |s: &str| {
        let s = s.trim_start();
        s.starts_with("HIT") || s.starts_with("STALE") || s.starts_with("REVALIDATED")
    };
    let (edge, rest) = v.split_once(',').unwrap_or((v, ""));
    if served(edge) {
        Tier::Edge
    } else if served(rest) {
        Tier::Node
    } else {
        Tier::Origin
    }
}

async fn admin_call(
    slot: &mut Option<Sender>,
    addr: SocketAddr,
    token: &str,
    op: Op,
    path: &str,
    size: u64,
    opts: &Options,
) -> Outcome {
    let b = http::Request::builder()
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    let req = match op {
        Op::Push => b
            .method(http::Method::PUT)
            .uri(format!("/objects{path}"))
            .header(http::header::CACHE_CONTROL, &opts.push_cache_control)
            .body(Full::new(Bytes::from(vec![b'p'; size as usize]))),
        _ => b
            .method(http::Method::POST)
            .uri("/purge")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                serde_json::json!({ "urls": [path] }).to_string(),
            ))),
    }
    .map_err(|_| "bad path")?;
    let sender = ensure(slot, addr, false).await?;
    let result = async {
        let resp = sender.send(req).await?;
        let ok = resp.status().is_success();
        let close = closing(resp.headers());
        let n = resp.into_body().collect().await?.to_bytes().len() as u64;
        anyhow::Ok((ok, n, close))
    }
    .await;
    if matches!(result, Ok((.., true))) {
        *slot = None;
    }
    match result {
        Ok((true, n, _)) => Ok((n, None)),
        Ok((false, ..)) => Err("admin_rejected"),
        Err(_) => {
            *slot = None;
            Err("transport")
        }
    }
}

/// One connection, HTTP/1.1 or HTTP/2.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn ready(&mut self) -> anyhow::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await?,
            Sender::H2(s) => s.ready().await?,
        }
        Ok(())
    }

    async fn send(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        Ok(match self {
            Sender::H1(s) => s.send_request(req).await?,
            Sender::H2(s) => s.send_request(req).await?,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers one request per connection and says `Connection: close`, as
    /// nginx does on its `keepalive_requests`-th response.
    async fn one_request_per_connection() -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer =
                        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                    let _ = tcp.write_all(answer.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_server_closing_keep_alive_connections_costs_no_errors() {
        let addr = one_request_per_connection().await;
        let r = run(Options {
            targets: vec![addr],
            connections: 2,
            max_requests: Some(50),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!((r.requests, r.errors), (50, 0), "{:?}", r.errors_by_kind);
        assert_eq!((r.bytes_per_sec * r.seconds).round(), 100.0);
    }

    #[test]
    fn x_cache_names_the_tier_that_answered() {
        let t = |v: &str| tier(Some(&http::HeaderValue::from_str(v).unwrap()));
        assert_eq!(t("HIT"), Tier::Edge);
        assert_eq!(t("STALE"), Tier::Edge);
        assert_eq!(t("MISS, HIT from node-1"), Tier::Node);
        assert_eq!(t("MISS, STALE from node-0"), Tier::Node);
        assert_eq!(t("MISS, MISS from node-2"), Tier::Origin);
        assert_eq!(t("MISS, origin"), Tier::Origin);
        assert_eq!(t("PASS"), Tier::Origin);
        assert_eq!(tier(None), Tier::Unsaid);
    }
}
