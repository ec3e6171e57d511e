//! The admin HTTP API every member serves: `/healthz`, `/status` (JSON), `/metrics`
//! (Prometheus text), `/cluster` (every member's status, JSON) and the pages over them (`/`,
//! `/cluster.html`). Components supply their state through [`AdminState`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cdn_proto::Invalidation;
use http::{header, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::config::{Consistency, MemberConfig};
use crate::prewarm::{prewarm, Prewarm};
pub use crate::prewarm::{PrewarmRequest, PrewarmResult};
use crate::push::{PushObject, PushReport};
use cdn_net::peers::PurgeReport;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use cdn_http::{full, serve, text, Body, ServerLimits};

/// What a member exposes on its admin port. The admin API is served generically over it
/// ([`serve_admin`]), so a tier writes its operations as plain async methods; what follows from
/// the shared config section (token, consistency, largest push) is answered here once.
pub trait AdminState: Prewarm + Send + Sync + 'static {
    /// The keys every member has.
    fn member(&self) -> &MemberConfig;
    /// The `/status` document.
    fn status(&self) -> serde_json::Value;
    /// Metric samples for `/metrics`.
    fn metrics(&self) -> Vec<Metric>;
    /// The `/cluster` document: every member's status, gathered over the member links
    /// (`crate::cluster`), at most a second old.
    fn cluster(&self) -> impl Future<Output = Arc<serde_json::Value>> + Send;
    /// Accepts a purge and fans it out; resolves when every member acknowledged or the
    /// deadline passed.
    fn purge(&self, inv: Invalidation) -> impl Future<Output = PurgeReport> + Send;
    /// Stores a pushed object on its owners (and every edge when `edges`).
    fn push(&self, obj: PushObject, edges: bool) -> impl Future<Output = PushReport> + Send;

    /// The bearer token mutating calls need; `None` refuses them all.
    fn token(&self) -> Option<&str> {
        self.member().admin_token.as_deref()
    }
    /// Strict consistency: a purge some member did not acknowledge fails.
    fn strict(&self) -> bool {
        self.member().consistency == Consistency::Strict
    }
    /// Largest pushed body accepted: the largest object stored.
    fn max_push(&self) -> u64 {
        self.member().max_object()
    }
}

/// Splits `PUT /objects/<path>?<query>` into the cache key and whether `edges=all` was given
/// (that one parameter is not part of the key).
pub fn push_target(uri: &http::Uri) -> Result<(String, bool), String> {
    let rest = uri
        .path()
        .strip_prefix("/objects")
        .filter(|r| r.starts_with('/') && r.len() > 1)
        .ok_or("push to /objects/<path>")?;
    let mut edges = false;
    let query: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let all = *p == "edges=all";
            edges |= all;
            !all
        })
        .collect();
    let key = if query.is_empty() {
        rest.to_string()
    } else {
        format!("{rest}?{}", query.join("&"))
    };
    Ok((key, edges))
}

/// Largest admin request body read.
const MAX_ADMIN_BODY: usize = 1 << 20;

/// The JSON body of `POST /purge`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PurgeRequest {
    /// Exact paths with query, as clients request them.
    pub urls: Vec<String>,
    /// Path prefixes.
    pub prefixes: Vec<String>,
    /// Surrogate keys.
    pub tags: Vec<String>,
    /// Mark stale instead of removing.
    pub soft: bool,
    /// Everything.
    pub all: bool,
}

impl PurgeRequest {
    /// Checks the request and turns it into an invalidation; errors name the field.
    pub fn into_invalidation(self) -> Result<Invalidation, String> {
        for (field, list) in [("urls", &self.urls), ("prefixes", &self.prefixes)] {
            if let Some(bad) = list.iter().find(|u| !u.starts_with('/')) {
                return Err(format!("`{field}`: `{bad}` must be a path starting with /"));
            }
        }
        for (field, list) in [
            ("urls", &self.urls),
            ("prefixes", &self.prefixes),
            ("tags", &self.tags),
        ] {
            if list.len() > 1000 {
                return Err(format!("`{field}`: at most 1000 per call"));
            }
            if list.iter().any(|s| s.is_empty() || s.len() > 8192) {
                return Err(format!("`{field}`: entries must be 1 to 8192 bytes"));
            }
        }
        if self.urls.is_empty() && self.prefixes.is_empty() && self.tags.is_empty() && !self.all {
            return Err("nothing to purge: give urls, prefixes, tags or all".into());
        }
        Ok(Invalidation {
            urls: self.urls,
            prefixes: self.prefixes,
            tags: self.tags,
            all: self.all,
            soft: self.soft,
        })
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in constant time.
pub fn authorized(headers: &http::HeaderMap, token: Option<&str>) -> bool {
    let Some(token) = token else { return false };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    constant_time_eq(given, token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret; contents are compared without an early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A 401 that says what is needed, and never echoes what was sent.
pub fn unauthorized() -> Response<Body> {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "admin token required: Authorization: Bearer <token>",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    r
}

/// The answer to a purge: 200 with the report, or 503 with it when consistency is strict
/// and some member did not acknowledge.
pub fn purge_response(strict: bool, report: &PurgeReport) -> Response<Body> {
    if strict && !report.missing.is_empty() {
        json(StatusCode::SERVICE_UNAVAILABLE, report)
    } else {
        json(StatusCode::OK, report)
    }
}

/// A JSON response.
pub fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec_pretty(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// One metric sample.
pub struct Metric {
    /// Metric name, e.g. `cdn_requests_total`.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// Label pairs.
    pub labels: Vec<(&'static str, String)>,
    /// Value.
    pub value: f64,
}

impl Metric {
    /// A counter sample.
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: "counter",
            labels: vec![],
            value: value as f64,
        }
    }

    /// A gauge sample.
    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: "gauge",
            labels: vec![],
            value: value as f64,
        }
    }

    /// A gauge sample with a fractional value (seconds, ratios).
    pub fn gauge_f64(name: &'static str, help: &'static str, value: f64) -> Self {
        Self {
            name,
            help,
            kind: "gauge",
            labels: vec![],
            value,
        }
    }

    /// Adds a label.
    pub fn label(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.labels.push((k, v.into()));
        self
    }
}

/// The process's Prometheus recorder (the `metrics` crate's global one), installed on first
/// use. Events are recorded where they happen (`metrics::histogram!` and friends); the
/// member's counters and gauges are published into it at each scrape; the accept loop's
/// counters are registered at zero when it is installed.
pub fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = metrics_exporter_prometheus::PrometheusBuilder::new();
        // Latencies as histograms with buckets from 0.5 ms to 10 s (not summaries).
        let builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ],
            )
            .unwrap_or_else(|_| metrics_exporter_prometheus::PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics shows only ours");
        }
        cdn_http::describe_metrics();
        handle
    })
}

/// The store's size, what fills in flight hold against their budget, entries removed by cause,
/// and the record of lazy purges, under the `/status` keys every member uses.
pub fn store_status(doc: &mut serde_json::Value, reads: &crate::read_path::ReadPath) {
    let store = reads.store();
    doc["entries"] = store.entry_count().into();
    doc["bytes"] = store.weighted_size().into();
    doc["capacity"] = store.capacity().into();
    doc["fill_bytes"] = reads.fills().budget().used().into();
    doc["fill_budget"] = reads.fills().budget().limit().into();
    // Entries removed by cause: the same numbers as `cdn_evictions_total` (`cdnctl top` shows
    // them beside the other counters without scraping `/metrics`).
    let (size, expiry, purge) = store.evictions();
    doc["evictions"] = serde_json::json!({ "size": size, "expiry": expiry, "purge": purge });
    // Purges by tag, prefix or `all` waiting for the sweeper, and what it has done.
    let (items, bytes) = store.recorded_purges();
    let (_, swept, sweeps) = store.purge_work();
    doc["purge_record"] = serde_json::json!({
        "items": items, "bytes": bytes, "sweeps": sweeps, "swept_entries": swept,
    });
}

/// What every member reports besides its counters: its store's entries, bytes and capacity,
/// entries removed from its store by cause, the cache nodes it knows by state, and each QUIC link's round-trip time and lost
/// packets.
pub fn common_metrics(
    tier: &'static str,
    member: &str,
    reads: &crate::read_path::ReadPath,
    pool: &cdn_net::peers::PeerPool,
) -> Vec<Metric> {
    let mut out = Vec::new();
    let store = reads.store();
    let budget = reads.fills().budget();
    for (name, help, v) in [
        (
            "cdn_fill_bytes",
            "Bytes held by fills in flight (kept for the store or not yet read).",
            budget.used(),
        ),
        (
            "cdn_fill_budget_bytes",
            "What fills in flight may hold (fill_memory).",
            budget.limit(),
        ),
        ("cdn_store_entries", "Entries stored.", store.entry_count()),
        (
            "cdn_store_bytes",
            "Bytes stored (weighed).",
            store.weighted_size(),
        ),
        (
            "cdn_store_capacity_bytes",
            "Configured capacity.",
            store.capacity(),
        ),
    ] {
        out.push(
            Metric::gauge(name, help, v)
                .label("tier", tier)
                .label("member", member),
        );
    }
    let (size, expiry, purge) = store.evictions();
    for (cause, n) in [("size", size), ("expiry", expiry), ("purge", purge)] {
        out.push(
            Metric::counter("cdn_evictions_total", "Entries removed, by cause.", n)
                .label("member", member)
                .label("cause", cause),
        );
    }
    let roster = pool.roster();
    for state in [
        cdn_proto::MemberState::Alive,
        cdn_proto::MemberState::Suspect,
        cdn_proto::MemberState::Down,
        cdn_proto::MemberState::Left,
    ] {
        let n = roster.iter().filter(|m| m.state == state).count() as u64;
        out.push(
            Metric::gauge("cdn_members", "Cache nodes known, by state.", n)
                .label("member", member)
                .label("state", state.as_str()),
        );
    }
    for (peer, rtt, lost) in pool.link_stats() {
        out.push(
            Metric::gauge_f64(
                "cdn_peer_rtt_seconds",
                "Smoothed QUIC round-trip time to each node.",
                rtt.as_secs_f64(),
            )
            .label("member", member)
            .label("peer", peer.to_string()),
        );
        out.push(
            Metric::counter(
                "cdn_peer_lost_packets_total",
                "QUIC packets lost on the link to each node.",
                lost,
            )
            .label("member", member)
            .label("peer", peer.to_string()),
        );
    }
    out
}

/// Publishes `metrics` into the recorder and renders everything it holds in the Prometheus
/// text format.
pub fn render(metrics: &[Metric]) -> String {
    let handle = prometheus();
    for m in metrics {
        let labels: Vec<metrics::Label> = m
            .labels
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, v.clone()))
            .collect();
        if m.kind == "counter" {
            metrics::describe_counter!(m.name, m.help);
            metrics::counter!(m.name, labels).absolute(m.value as u64);
        } else {
            metrics::describe_gauge!(m.name, m.help);
            metrics::gauge!(m.name, labels).set(m.value);
        }
    }
    handle.run_upkeep();
    handle.render()
}

/// Serves the admin API until `shutdown`.
pub async fn serve_admin<S: AdminState>(
    listener: TcpListener,
    state: Arc<S>,
    shutdown: CancellationToken,
) {
    // Installed before anything is recorded, so no event is lost.
    prometheus();
    serve(
        listener,
        ServerLimits::admin(),
        shutdown,
        Duration::from_secs(2),
        move |req, _peer: SocketAddr| {
            let state = state.clone();
            async move { route(state, req).await }
        },
    )
    .await
}

/// The status page (`GET /`): plain HTML and JavaScript polling `/status`, no build step.
const STATUS_PAGE: &str = include_str!("status.html");
/// The cluster page (`GET /cluster.html`): the same, polling `/cluster`.
const CLUSTER_PAGE: &str = include_str!("cluster.html");

fn html(page: &'static str) -> Response<Body> {
    let mut r = Response::new(full(page));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/html; charset=utf-8".parse().expect("static"),
    );
    r
}

async fn route<S: AdminState>(state: Arc<S>, req: http::Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if method == Method::POST && path == "/purge" {
        if !authorized(req.headers(), state.token()) {
            return unauthorized();
        }
        let body = match read_body(req.into_body()).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let parsed: PurgeRequest = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("purge request: {e}")),
        };
        let inv = match parsed.into_invalidation() {
            Ok(i) => i,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("purge request: {e}")),
        };
        let strict = state.strict();
        let report = state.purge(inv).await;
        return purge_response(strict, &report);
    }
    if method == Method::PUT && path.starts_with("/objects/") {
        return push_route(state, req).await;
    }
    if method == Method::POST && path == "/prewarm" {
        return prewarm_route(state, req).await;
    }
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("admin API: {method} {path} is not a route"),
        );
    }
    match path.as_str() {
        "/" | "/index.html" => html(STATUS_PAGE),
        "/cluster.html" => html(CLUSTER_PAGE),
        "/cluster" => json(StatusCode::OK, &*state.cluster().await),
        "/healthz" => text(StatusCode::OK, "ok"),
        "/status" => {
            let body = serde_json::to_vec_pretty(&state.status()).unwrap_or_default();
            let mut r = Response::new(full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                "application/json".parse().expect("static"),
            );
            r
        }
        "/metrics" => {
            let mut r = Response::new(full(render(&state.metrics())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4".parse().expect("static"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, format!("no admin route {path}")),
    }
}

async fn push_route<S: AdminState>(state: Arc<S>, req: http::Request<Incoming>) -> Response<Body> {
    if !authorized(req.headers(), state.token()) {
        return unauthorized();
    }
    let (key, edges) = match push_target(req.uri()) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let headers = req.headers().clone();
    let body = match read_limited(req.into_body(), state.max_push()).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let obj = PushObject::from_request(key, &headers, body);
    if let Err(e) = obj.entry(
        std::time::SystemTime::now(),
        &cdn_http::policy::Rules::default(),
    ) {
        return text(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("push refused: {e}"),
        );
    }
    let strict = state.strict();
    let report = state.push(obj, edges).await;
    if report.stored.is_empty() || (strict && !report.missing.is_empty()) {
        return json(StatusCode::SERVICE_UNAVAILABLE, &report);
    }
    json(StatusCode::OK, &report)
}

async fn prewarm_route<S: AdminState>(
    state: Arc<S>,
    req: http::Request<Incoming>,
) -> Response<Body> {
    if !authorized(req.headers(), state.token()) {
        return unauthorized();
    }
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed: PrewarmRequest = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("prewarm request: {e}")),
    };
    if parsed.urls.is_empty() || parsed.urls.len() > 1000 {
        return text(
            StatusCode::BAD_REQUEST,
            "prewarm request: `urls`: give 1 to 1000 paths",
        );
    }
    if let Some(bad) = parsed.urls.iter().find(|u| !u.starts_with('/')) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("prewarm request: `urls`: `{bad}` must start with /"),
        );
    }
    let results = prewarm(&*state, parsed.urls, parsed.edges).await;
    json(StatusCode::OK, &serde_json::json!({ "results": results }))
}

async fn read_body(body: Incoming) -> Result<bytes::Bytes, Response<Body>> {
    read_limited(body, MAX_ADMIN_BODY as u64).await
}

async fn read_limited(body: Incoming, max: u64) -> Result<bytes::Bytes, Response<Body>> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {max} bytes"),
        )),
        Err(e) => Err(text(StatusCode::BAD_REQUEST, format!("reading body: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_targets_keep_the_query_but_not_edges_all() {
        let t = |u: &str| push_target(&u.parse().unwrap());
        assert_eq!(
            t("/objects/a/b.png").unwrap(),
            ("/a/b.png".to_string(), false)
        );
        assert_eq!(
            t("/objects/a?v=2&edges=all").unwrap(),
            ("/a?v=2".to_string(), true)
        );
        assert_eq!(t("/objects/a?edges=all").unwrap(), ("/a".to_string(), true));
        assert!(t("/objects/").is_err());
        assert!(t("/object/x").is_err());
    }

    #[test]
    fn bearer_tokens_compare_exactly() {
        let mut h = http::HeaderMap::new();
        assert!(!authorized(&h, Some("t0k")));
        h.insert("authorization", "Bearer t0k".parse().unwrap());
        assert!(authorized(&h, Some("t0k")));
        assert!(!authorized(&h, Some("t0")));
        assert!(!authorized(&h, Some("t0kk")));
        assert!(!authorized(&h, None));
        h.insert("authorization", "Basic t0k".parse().unwrap());
        assert!(!authorized(&h, Some("t0k")));
    }

    #[test]
    fn purge_requests_are_validated_naming_the_field() {
        let bad = PurgeRequest {
            urls: vec!["nope".into()],
            ..Default::default()
        };
        assert!(bad.into_invalidation().unwrap_err().contains("urls"));
        assert!(PurgeRequest::default().into_invalidation().is_err());
        let ok = PurgeRequest {
            tags: vec!["t".into()],
            soft: true,
            ..Default::default()
        };
        let inv = ok.into_invalidation().unwrap();
        assert!(inv.soft);
        assert_eq!(inv.tags, vec!["t"]);
    }

    #[test]
    fn renders_prometheus_text_through_the_metrics_recorder() {
        prometheus();
        metrics::histogram!("test_event_seconds").record(0.003);
        let out = render(&[
            Metric::counter("test_x_total", "X.", 3).label("tier", "edge"),
            Metric::counter("test_x_total", "X.", 4).label("tier", "node\"1"),
            Metric::gauge("test_y_bytes", "Y.", 7),
        ]);
        assert!(
            out.contains("# HELP test_x_total X.\n# TYPE test_x_total counter\n"),
            "{out}"
        );
        assert!(out.contains("test_x_total{tier=\"edge\"} 3\n"), "{out}");
        assert!(
            out.contains("test_x_total{tier=\"node\\\"1\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE test_y_bytes gauge\ntest_y_bytes 7\n"),
            "{out}"
        );
        // Events recorded where they happen come out as histograms with buckets.
        assert!(
            out.contains("test_event_seconds_bucket{le=\"0.005\"} 1\n"),
            "{out}"
        );
        // The accept loop's counters are there before their first event.
        assert!(
            out.contains("# TYPE cdn_connections_refused_total counter\n"),
            "{out}"
        );
        // A counter published again is set, not added to.
        let out = render(&[Metric::counter("test_x_total", "X.", 5).label("tier", "edge")]);
        assert!(out.contains("test_x_total{tier=\"edge\"} 5\n"), "{out}");
    }
}
