//! origin-stub: a configurable HTTP/1.1 + HTTP/2 origin for demos and tests.
//!
//! Layout (one module; it is small):
//! - [`body_bytes`]: the deterministic body of a request target, at any offset, so a client
//!   can verify every byte it received without the origin keeping anything.
//! - [`OriginStub`]: the server; each response is shaped by the query string (see
//!   [`Shape`]) over defaults from [`Config`].
//! - [`Stats`]: requests served, in total and per path, also at `GET /_stub/stats`.
//!
//! Query parameters (all optional): `size` (bytes, suffixes allowed), `status`, `cc`
//! (Cache-Control), `cdn_cc` (CDN-Cache-Control), `etag` (`none` omits it), `lm`
//! (Last-Modified, Unix seconds), `vary`, `tags` (Surrogate-Key), `ct` (Content-Type),
//! `latency_ms` (before the head), `body_delay_ms` (between head and body), `fail_after`
//! (abort the connection after that many body bytes), `fail_times` (only the first that-many
//! requests for the target fail), `delay_times` (only the first N are delayed), `chunked=1`
//! (no Content-Length), and
//! `h_<name>=<value>` for any other response header.
//!
//! With `vary`, the response carries `X-Varied: <field>=<request value>; …` so a client can
//! tell the variants apart. `POST /_stub/generation` republishes every object (new bodies and ETags), so tests can tell
//! a purged old version from the new one.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cdn_http::config::ByteSize;
use cdn_http::{full, serve, text, Body, BoxError, ServerLimits};
use futures::stream;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Size of the chunks a body is streamed in.
const CHUNK: usize = 64 * 1024;

/// Defaults for responses whose query does not say otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Cache-Control when the query has no `cc`: cacheable for a minute, so a demo shows hits.
    pub cache_control: String,
    /// Body size when the query has no `size`.
    pub size: ByteSize,
    /// Delay before every response head, in milliseconds (simulates a distant origin).
    pub latency_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cache_control: "public, max-age=60".into(),
            size: ByteSize(1024),
            latency_ms: 0,
        }
    }
}

/// The deterministic body of `target` (path and query as requested): `len` bytes starting at
/// `offset`. The bytes are blake3's extendable output keyed by the target.
pub fn body_bytes(target: &str, offset: u64, len: usize) -> Vec<u8> {
    versioned_body_bytes(target, 0, offset, len)
}

/// The body of `target` at content generation `generation` (see [`Stats::bump_generation`]):
/// generation 0 is [`body_bytes`]; every later one differs throughout.
pub fn versioned_body_bytes(target: &str, generation: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(target.as_bytes());
    if generation > 0 {
        h.update(format!("#{generation}").as_bytes());
    }
    let mut xof = h.finalize_xof();
    xof.set_position(offset);
    let mut out = vec![0u8; len];
    xof.fill(&mut out);
    out
}

/// The whole body a GET of `target` returns when its size is `size`.
pub fn expected_body(target: &str, size: usize) -> Vec<u8> {
    body_bytes(target, 0, size)
}

/// The strong ETag origin-stub sends for `target` at generation 0 unless told otherwise.
pub fn default_etag(target: &str) -> String {
    versioned_etag(target, 0)
}

/// The ETag for `target` at `generation`.
pub fn versioned_etag(target: &str, generation: u64) -> String {
    let h = blake3::hash(format!("{target}#{generation}").as_bytes());
    format!("\"{}\"", &h.to_hex()[..16])
}

/// Requests served.
#[derive(Default)]
pub struct Stats {
    total: AtomicU64,
    generation: AtomicU64,
    not_modified: AtomicU64,
    // A std mutex: one map update per request, never held across an await.
    by_path: Mutex<HashMap<String, u64>>,
    by_target: Mutex<HashMap<String, u64>>,
}

impl Stats {
    /// All requests served (the `/_stub/` endpoints excluded).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Requests for a path, whatever the query.
    pub fn path(&self, path: &str) -> u64 {
        lock(&self.by_path).get(path).copied().unwrap_or(0)
    }

    /// Requests for an exact path-and-query.
    pub fn target(&self, target: &str) -> u64 {
        lock(&self.by_target).get(target).copied().unwrap_or(0)
    }

    /// The content generation: every body and default ETag changes when it does, as if the
    /// whole site were republished.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Conditional requests answered 304.
    pub fn not_modified(&self) -> u64 {
        self.not_modified.load(Ordering::SeqCst)
    }

    /// Republishes everything: returns the new generation.
    pub fn bump_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn record(&self, path: &str, target: &str) {
        self.total.fetch_add(1, Ordering::SeqCst);
        *lock(&self.by_path).entry(path.to_string()).or_default() += 1;
        *lock(&self.by_target).entry(target.to_string()).or_default() += 1;
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "total": self.total(),
            "generation": self.generation(),
            "not_modified": self.not_modified(),
            "paths": *lock(&self.by_path),
            "targets": *lock(&self.by_target),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How one response looks, from the query over the config's defaults.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Body bytes.
    pub size: u64,
    /// Status code.
    pub status: StatusCode,
    /// Extra response fields (Cache-Control, ETag, ...), in order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// ETag to match conditionals against.
    pub etag: Option<String>,
    /// Last-Modified to match conditionals against.
    pub last_modified: Option<SystemTime>,
    /// Delay before the head.
    pub latency: Duration,
    /// Delay between the head and the body.
    pub body_delay: Duration,
    /// Abort after this many body bytes.
    pub fail_after: Option<u64>,
    /// Apply `fail_after` only to the first this-many requests for the target (0: always).
    pub fail_times: u64,
    /// Apply `latency_ms` and `body_delay_ms` only to the first this-many requests for the
    /// target (0: always).
    pub delay_times: u64,
    /// Omit Content-Length.
    pub chunked: bool,
    /// Content generation the body is made from.
    pub generation: u64,
}

impl Shape {
    /// Parses the query of `target`; an unusable parameter is an error naming it.
    pub fn parse(target: &str, config: &Config, generation: u64) -> Result<Self, String> {
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut s = Shape {
            size: config.size.0,
            status: StatusCode::OK,
            headers: vec![],
            etag: Some(versioned_etag(target, generation)),
            generation,
            last_modified: None,
            latency: Duration::from_millis(config.latency_ms),
            body_delay: Duration::ZERO,
            fail_after: None,
            fail_times: 0,
            delay_times: 0,
            chunked: false,
        };
        let mut cc = Some(config.cache_control.clone());
        let hv = |k: &str, v: &str| {
            HeaderValue::from_str(v).map_err(|_| format!("query `{k}`: not a valid header value"))
        };
        let num = |k: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("query `{k}`: `{v}` is not a number"))
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "size" => {
                    s.size = v
                        .parse::<ByteSize>()
                        .map_err(|e| format!("query `size`: {e}"))?
                        .0
                }
                "status" => {
                    s.status = v
                        .parse::<u16>()
                        .ok()
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .ok_or_else(|| format!("query `status`: `{v}` is not a status"))?
                }
                "cc" => {
                    cc = if v == "none" {
                        None
                    } else {
                        Some(v.to_string())
                    }
                }
                "cdn_cc" => s
                    .headers
                    .push((HeaderName::from_static("cdn-cache-control"), hv(&k, &v)?)),
                "etag" => {
                    s.etag = if v == "none" {
                        None
                    } else {
                        Some(v.to_string())
                    }
                }
                "lm" => {
                    s.last_modified =
                        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(num(&k, &v)?))
                }
                "vary" => s.headers.push((header::VARY, hv(&k, &v)?)),
                "tags" => s
                    .headers
                    .push((HeaderName::from_static("surrogate-key"), hv(&k, &v)?)),
                "ct" => s.headers.push((header::CONTENT_TYPE, hv(&k, &v)?)),
                "latency_ms" => s.latency = Duration::from_millis(num(&k, &v)?),
                "body_delay_ms" => s.body_delay = Duration::from_millis(num(&k, &v)?),
                "fail_after" => s.fail_after = Some(num(&k, &v)?),
                "fail_times" => s.fail_times = num(&k, &v)?,
                "delay_times" => s.delay_times = num(&k, &v)?,
                "chunked" => s.chunked = v == "1" || v == "true",
                other => {
                    if let Some(name) = other.strip_prefix("h_") {
                        let name = HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| format!("query `{other}`: not a header name"))?;
                        s.headers.push((name, hv(&k, &v)?));
                    }
                }
            }
        }
        if let Some(cc) = cc {
            s.headers.push((header::CACHE_CONTROL, hv("cc", &cc)?));
        }
        if let Some(e) = &s.etag {
            s.headers.push((header::ETAG, hv("etag", e)?));
        }
        if let Some(lm) = s.last_modified {
            s.headers.push((
                header::LAST_MODIFIED,
                hv("lm", &httpdate::fmt_http_date(lm))?,
            ));
        }
        if !s.headers.iter().any(|(n, _)| n == header::CONTENT_TYPE) {
            s.headers.push((
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ));
        }
        Ok(s)
    }

    /// Whether the request's conditionals match, so a 304 is due (RFC 9110 §13.2.2).
    fn not_modified(&self, req: &Request<Incoming>) -> bool {
        if let Some(inm) = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
        {
            let Some(etag) = &self.etag else { return false };
            let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
            return inm
                .split(',')
                .any(|t| t.trim() == "*" || weak(t) == weak(etag));
        }
        if let (Some(ims), Some(lm)) = (
            req.headers()
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok()),
            self.last_modified,
        ) {
            return lm <= ims;
        }
        false
    }
}

/// The origin server.
pub struct OriginStub {
    config: Arc<Config>,
    stats: Arc<Stats>,
}

impl OriginStub {
    /// A stub with `config`'s defaults.
    pub fn new(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            stats: Arc::new(Stats::default()),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Serves on `listener` until `shutdown`.
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken) {
        let config = self.config;
        let stats = self.stats;
        serve(
            listener,
            ServerLimits::default(),
            shutdown,
            Duration::from_secs(2),
            move |req, _peer| handle(req, config.clone(), stats.clone()),
        )
        .await
    }
}

async fn handle(req: Request<Incoming>, config: Arc<Config>, stats: Arc<Stats>) -> Response<Body> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = req.uri().path().to_string();
    if path == "/_stub/generation" && req.method() == Method::POST {
        let g = stats.bump_generation();
        return text(StatusCode::OK, g.to_string());
    }
    if path == "/_stub/stats" {
        let mut r = Response::new(full(serde_json::to_vec(&stats.json()).unwrap_or_default()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    }
    stats.record(&path, &target);
    let mut shape = match Shape::parse(&target, &config, stats.generation()) {
        Ok(s) => s,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let served = stats.target(&target);
    if shape.fail_times > 0 && served > shape.fail_times {
        shape.fail_after = None;
    }
    if shape.delay_times > 0 && served > shape.delay_times {
        shape.latency = Duration::ZERO;
        shape.body_delay = Duration::ZERO;
    }
    if !shape.latency.is_zero() {
        tokio::time::sleep(shape.latency).await;
    }
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        // Unsafe and extension methods: echo what arrived, never cacheable.
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        let mut r = Response::new(full(format!("{method} {target} {body}\n")));
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (n, v) in &shape.headers {
            // Location, Content-Location and other h_ fields; never caching fields.
            if ![
                header::CACHE_CONTROL,
                header::ETAG,
                header::LAST_MODIFIED,
                header::CONTENT_TYPE,
            ]
            .contains(n)
            {
                r.headers_mut().append(n, v.clone());
            }
        }
        return r;
    }
    let not_modified = shape.not_modified(&req);
    if not_modified {
        stats.not_modified.fetch_add(1, Ordering::SeqCst);
    }
    let mut builder = Response::builder().status(if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        shape.status
    });
    for (n, v) in &shape.headers {
        builder = builder.header(n, v);
    }
    builder = builder.header(header::DATE, httpdate::fmt_http_date(SystemTime::now()));
    // Echo the request fields the response varies on, so a client can tell variants apart.
    let varied: Vec<String> = shape
        .headers
        .iter()
        .filter(|(n, _)| n == header::VARY)
        .filter_map(|(_, v)| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty() && n != "*")
        .map(|n| {
            let v = req
                .headers()
                .get(n.as_str())
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            format!("{n}={v}")
        })
        .collect();
    if !varied.is_empty() {
        builder = builder.header("x-varied", varied.join("; "));
    }
    let no_body = not_modified
        || method == Method::HEAD
        || shape.status == StatusCode::NO_CONTENT
        || shape.status == StatusCode::NOT_MODIFIED;
    if !shape.chunked && !not_modified {
        builder = builder.header(header::CONTENT_LENGTH, shape.size);
    }
    let body = if no_body {
        cdn_http::empty()
    } else {
        body_stream(target, &shape)
    };
    builder
        .body(body)
        .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The body as a stream of chunks generated on demand, so size is not bounded by memory.
fn body_stream(target: String, shape: &Shape) -> Body {
    struct St {
        target: String,
        generation: u64,
        pos: u64,
        size: u64,
        fail_after: Option<u64>,
        delay: Option<Duration>,
    }
    let st = St {
        target,
        generation: shape.generation,
        pos: 0,
        size: shape.size,
        fail_after: shape.fail_after,
        delay: (!shape.body_delay.is_zero()).then_some(shape.body_delay),
    };
    let s = stream::unfold(st, |mut st| async move {
        if let Some(d) = st.delay.take() {
            tokio::time::sleep(d).await;
        }
        if st.pos >= st.size {
            return None;
        }
        let limit = st.fail_after.unwrap_or(u64::MAX);
        if st.pos >= limit {
            // Abort: hyper closes the connection without finishing the body.
            st.size = 0;
            let err: BoxError = "origin-stub: fail_after reached".into();
            return Some((Err(err), st));
        }
        let n = (st.size - st.pos).min(CHUNK as u64).min(limit - st.pos) as usize;
        let chunk = Bytes::from(versioned_body_bytes(&st.target, st.generation, st.pos, n));
        st.pos += n as u64;
        Some((Ok(Frame::data(chunk)), st))
    });
    StreamBody::new(s).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_deterministic_and_offsets_agree() {
        let whole = body_bytes("/a?size=100", 0, 100);
        assert_eq!(whole, body_bytes("/a?size=100", 0, 100));
        assert_eq!(&whole[40..70], &body_bytes("/a?size=100", 40, 30)[..]);
        assert_ne!(whole, body_bytes("/b?size=100", 0, 100));
        assert_ne!(whole, versioned_body_bytes("/a?size=100", 1, 0, 100));
    }

    #[test]
    fn query_shapes_the_response() {
        let c = Config::default();
        let s = Shape::parse(
            "/x?size=2KiB&cc=max-age%3D5&status=404&tags=a%20b&h_x-test=1&etag=none",
            &c,
            0,
        )
        .unwrap();
        assert_eq!(s.size, 2048);
        assert_eq!(s.status, StatusCode::NOT_FOUND);
        assert!(s.etag.is_none());
        let get = |n: &str| {
            s.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get("cache-control").as_deref(), Some("max-age=5"));
        assert_eq!(get("surrogate-key").as_deref(), Some("a b"));
        assert_eq!(get("x-test").as_deref(), Some("1"));
        assert!(Shape::parse("/x?size=lots", &c, 0)
            .unwrap_err()
            .contains("size"));
    }
}
