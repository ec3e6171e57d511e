//! Client-facing HTTP: L1 hits, coalesced misses filled from the node tier (or the origin),
//! and pass-through of every other method.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cdn_core::fill::{FlightReader, Head, Via};
use cdn_core::read_path::Lookup;
use cdn_http::policy;
use cdn_http::range::{self, RangeAnswer};
use cdn_http::{empty, serve, strip_hop_by_hop, text, Body, BoxError, Listener, ServerLimits};
use cdn_proto::CacheStatus;
use cdn_store::{Chunks, Entry, NewEntry};
use futures::stream;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio_util::sync::CancellationToken;

use crate::{Counter, Edge};

const X_CACHE: &str = "x-cache";

/// Serves clients until `shutdown`, then drains in-flight requests for up to 10 s.
pub async fn run(edge: Arc<Edge>, listener: impl Listener, shutdown: CancellationToken) {
    let limits = ServerLimits {
        header_read_timeout: edge.config.header_read_timeout,
        keepalive_timeout: edge.config.keepalive_timeout,
        max_connections: edge.config.max_connections,
        ..ServerLimits::default()
    };
    serve(
        listener,
        limits,
        shutdown,
        Duration::from_secs(10),
        move |req, _peer| handle(edge.clone(), req),
    )
    .await
}

async fn handle(edge: Arc<Edge>, mut req: Request<Incoming>) -> Response<Body> {
    edge.counters.inc(Counter::Requests);
    // Only members say they are refreshing a copy (it changes what a lookup may serve).
    req.headers_mut().remove(policy::REFRESH_FIELD);
    let rid = request_id(&edge, &mut req);
    let mut resp = match *req.method() {
        Method::GET | Method::HEAD => cached(&edge, req).await,
        _ if req.method().as_str() == "PURGE" => purge(&edge, req).await,
        _ => pass(&edge, req).await,
    };
    resp.headers_mut().insert(X_REQUEST_ID, rid);
    if let Some(n) = http_body::Body::size_hint(resp.body()).exact() {
        edge.counters.add(Counter::BytesSent, n);
    }
    resp
}

const X_REQUEST_ID: &str = "x-request-id";

/// The request's id: the client's `X-Request-Id` when it sent a sane one, else ours
/// (`<edge id>-<n>`). It travels with the request (to the node in the `Request` frame's
/// fields, and to the origin), is logged on both tiers, and comes back to the client.
fn request_id(edge: &Edge, req: &mut Request<Incoming>) -> HeaderValue {
    if let Some(v) = req.headers().get(X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 && v.to_str().is_ok() {
            return v.clone();
        }
    }
    let n = edge.next_request_id.fetch_add(1, Ordering::Relaxed);
    let v = HeaderValue::from_str(&format!("{}-{n}", edge.config.member.id))
        .unwrap_or(HeaderValue::from_static("edge"));
    req.headers_mut().insert(X_REQUEST_ID, v.clone());
    v
}

/// GET and HEAD: the read path (L1, then a coalesced fill), answered as HTTP: ranges,
/// conditionals (304) and `X-Cache`. HEAD is answered from the full GET object.
async fn cached(edge: &Arc<Edge>, req: Request<Incoming>) -> Response<Body> {
    let head_only = req.method() == Method::HEAD;
    let key = match req.uri().path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => pq.as_str().to_string(),
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "request target must be an absolute path",
            )
        }
    };
    let now = SystemTime::now();
    let stale = match edge.reads.lookup(&key, req.headers(), now).await {
        Lookup::Stored { entry, outcome } => {
            return stored_response(&req, &entry, outcome, now, head_only)
        }
        Lookup::NotCached => {
            let mut r = text(
                StatusCode::GATEWAY_TIMEOUT,
                "not in this edge's cache (only-if-cached)",
            );
            r.headers_mut()
                .insert(X_CACHE, HeaderValue::from_static("MISS"));
            r.headers_mut()
                .insert(header::AGE, HeaderValue::from_static("0"));
            return r;
        }
        Lookup::Miss { stale } => stale,
    };
    let (reader, head) = match edge.reads.fill(&key, req.headers(), stale).await {
        Ok(filled) => filled,
        Err(e) => return upstream_failed(edge, &e.to_string()),
    };
    if !head.storable && head.via != Via::Local {
        edge.counters.inc(Counter::Passes);
    }
    let conditional =
        head.status == StatusCode::OK && policy::not_modified(req.headers(), &head.headers);
    let answer = range_answer(
        &req,
        head.status,
        &head.headers,
        head.content_length,
        conditional,
    );
    if let (RangeAnswer::Partial { start, end }, Some(len)) = (answer, head.content_length) {
        let r = flight_head_response(&head, sliced_flight(reader, start, end));
        return client_response(with_range(r, answer, len), false);
    }
    let len = head.content_length.unwrap_or(0);
    client_response(
        with_range(
            flight_response(
                &head,
                reader,
                head_only || conditional || answer != RangeAnswer::Full,
            ),
            answer,
            len,
        ),
        conditional,
    )
}

/// A stored entry the read path said to serve now (`outcome`: a hit, or stale while it is
/// refreshed), with the request's range and conditionals applied.
fn stored_response(
    req: &Request<Incoming>,
    entry: &Entry,
    outcome: CacheStatus,
    now: SystemTime,
    head_only: bool,
) -> Response<Body> {
    // The stored fields as a map, built once: the conditionals, the range and the response
    // all read it.
    let headers = entry.headers();
    let conditional =
        entry.status() == StatusCode::OK && policy::not_modified(req.headers(), &headers);
    let answer = range_answer(
        req,
        entry.status(),
        &headers,
        Some(entry.body_len()),
        conditional,
    );
    let mut r = entry_response(
        entry,
        headers,
        now,
        head_only || conditional || answer != RangeAnswer::Full,
    );
    if outcome != CacheStatus::Hit {
        r.headers_mut()
            .insert(X_CACHE, HeaderValue::from_static(outcome.as_str()));
    }
    if let RangeAnswer::Partial { start, end } = answer {
        *r.body_mut() = chunks_body(range::slice(&entry.body(), start, end));
    }
    client_response(with_range(r, answer, entry.body_len()), conditional)
}

/// How to answer a GET's `Range` for a 200 of `len` bytes (the whole body when the length is
/// unknown, the response is not a 200, or a conditional already answered 304).
fn range_answer(
    req: &Request<Incoming>,
    status: StatusCode,
    stored: &http::HeaderMap,
    len: Option<u64>,
    conditional: bool,
) -> RangeAnswer {
    match len {
        Some(len) if req.method() == Method::GET && status == StatusCode::OK && !conditional => {
            range::decide(req.headers(), stored, len)
        }
        _ => RangeAnswer::Full,
    }
}

/// Turns a full response into a 206 or 416 per `answer` (the body is set by the caller).
fn with_range(mut r: Response<Body>, answer: RangeAnswer, len: u64) -> Response<Body> {
    match answer {
        RangeAnswer::Full => {}
        RangeAnswer::Partial { start, end } => {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0")),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
        }
        RangeAnswer::Unsatisfiable => {
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0")),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
            *r.body_mut() = empty();
        }
    }
    r
}

/// Final touches on a response to a client: a satisfied conditional request becomes a 304
/// carrying only the fields RFC 9110 allows. (`CDN-Cache-Control` is forwarded: RFC 9213
/// targets it at every CDN, and another may sit between us and the client.)
fn client_response(mut r: Response<Body>, not_modified: bool) -> Response<Body> {
    if not_modified {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        let h = r.headers_mut();
        let keep: Vec<(header::HeaderName, HeaderValue)> = h
            .iter()
            .filter(|(k, _)| {
                policy::NOT_MODIFIED_FIELDS.contains(k)
                    || *k == header::AGE
                    || k.as_str() == X_CACHE
                    || *k == header::LAST_MODIFIED
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        h.clear();
        for (k, v) in keep {
            h.append(k, v);
        }
        *r.body_mut() = empty();
    }
    r
}

fn upstream_failed(edge: &Edge, reason: &str) -> Response<Body> {
    edge.counters.inc(Counter::Errors);
    let mut r = text(
        StatusCode::BAD_GATEWAY,
        format!("upstream failed: {reason}"),
    );
    r.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static("MISS"));
    r.headers_mut()
        .insert(header::AGE, HeaderValue::from_static("0"));
    r
}

fn x_cache(head: &Head) -> HeaderValue {
    let edge = head.outcome();
    match &head.via {
        Via::Local => HeaderValue::from_static(edge.as_str()),
        Via::Origin => HeaderValue::from_str(&format!("{edge}, origin"))
            .unwrap_or(HeaderValue::from_static("MISS")),
        Via::Node { id, status } => HeaderValue::from_str(&format!("{edge}, {status} from {id}"))
            .unwrap_or(HeaderValue::from_static("MISS")),
    }
}

fn entry_response(
    entry: &Entry,
    headers: http::HeaderMap,
    now: SystemTime,
    head_only: bool,
) -> Response<Body> {
    let mut r = Response::new(if head_only {
        empty()
    } else {
        stored_body(&entry.body())
    });
    *r.status_mut() = entry.status();
    let h = r.headers_mut();
    *h = headers;
    h.insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
    h.insert(X_CACHE, HeaderValue::from_static("HIT"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body_len()));
    r
}

fn chunks_body(chunks: Vec<Bytes>) -> Body {
    if chunks.len() == 1 {
        return cdn_http::full(chunks.into_iter().next().unwrap_or_default());
    }
    StreamBody::new(stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(c))),
    ))
    .boxed()
}

/// A stored body as a response body (one buffer: no allocation beyond the body's box).
fn stored_body(body: &Chunks) -> Body {
    match body {
        Chunks::One(b) => cdn_http::full(b.clone()),
        Chunks::Many(_) => chunks_body(body.to_vec()),
    }
}

/// A response that streams a flight's body as it arrives. If the fill fails mid-body the
/// body errors, and hyper aborts the connection: the client never gets a short body that
/// looks complete.
fn flight_response(head: &Head, mut reader: FlightReader<Head>, head_only: bool) -> Response<Body> {
    let body = if head_only {
        empty()
    } else if let Some(chunks) = reader.whole_body(cdn_core::fill::TIGHT_WINDOW) {
        // Already complete (a small response from a node is read whole before its head):
        // one body, not a stream polled chunk by chunk. At most the window a streaming reader
        // may hold, since these bytes leave the fill budget when the flight ends.
        chunks_body(chunks)
    } else {
        StreamBody::new(stream::unfold(reader, |mut r| async move {
            let c = r.next_chunk().await?;
            Some((c.map(Frame::data).map_err(|e| Box::new(e) as BoxError), r))
        }))
        .boxed()
    };
    flight_head_response(head, body)
}

/// Bytes `start..=end` of a flight's body, streamed as they arrive.
fn sliced_flight(reader: FlightReader<Head>, start: u64, end: u64) -> Body {
    let state = (reader, 0u64);
    StreamBody::new(stream::unfold(state, move |(mut r, mut pos)| async move {
        loop {
            if pos > end {
                return None;
            }
            let c = match r.next_chunk().await? {
                Ok(c) => c,
                Err(e) => return Some((Err(Box::new(e) as BoxError), (r, u64::MAX))),
            };
            let piece = range::slice(
                std::slice::from_ref(&c),
                start.saturating_sub(pos),
                end - pos,
            );
            let skipped = pos + (c.len() as u64) <= start;
            pos += c.len() as u64;
            if skipped {
                continue;
            }
            if let Some(p) = piece.into_iter().next() {
                return Some((Ok(Frame::data(p)), (r, pos)));
            }
        }
    }))
    .boxed()
}

fn flight_head_response(head: &Head, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = head.status;
    let h = r.headers_mut();
    *h = head.headers.clone();
    if !h.contains_key(header::AGE) {
        h.insert(header::AGE, HeaderValue::from_static("0"));
    }
    h.insert(X_CACHE, x_cache(head));
    if let Some(len) = head.content_length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

/// The cache key a `Location` / `Content-Location` value names, when it is on our origin:
/// a path, or an absolute URL whose authority is the request's host.
fn same_origin_path(v: &HeaderValue, host: Option<&str>) -> Option<String> {
    let s = v.to_str().ok()?;
    if s.starts_with('/') && !s.starts_with("//") {
        return Some(s.to_string());
    }
    let uri: http::Uri = s.parse().ok()?;
    let same = uri.authority().map(|a| a.as_str()) == host && host.is_some();
    same.then(|| uri.path_and_query().map(|p| p.as_str().to_string()))
        .flatten()
}

/// `PURGE /path` with the admin token: a hard purge of that URL everywhere (`Soft-Purge: 1`
/// makes it soft), answered with who acknowledged, as Varnish and Fastly users expect.
async fn purge(edge: &Arc<Edge>, req: Request<Incoming>) -> Response<Body> {
    if !cdn_core::admin::authorized(req.headers(), edge.config.member.admin_token.as_deref()) {
        return cdn_core::admin::unauthorized();
    }
    let Some(key) = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|k| k.starts_with('/'))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "PURGE target must be an absolute path",
        );
    };
    let soft = req
        .headers()
        .get("soft-purge")
        .is_some_and(|v| v.as_bytes() == b"1");
    let inv = cdn_proto::Invalidation {
        urls: vec![key],
        soft,
        ..Default::default()
    };
    let report = edge.coordinate_purge(&inv).await;
    cdn_core::admin::purge_response(edge.is_strict(), &report)
}

/// A POST's 200 is reusable for later GETs of its target when it is explicitly fresh and its
/// `Content-Location` is that target (RFC 9110 §9.3.3, RFC 9111 §4): its body is kept as it
/// streams to the client and stored in this edge's L1 once complete (unless a purge of the
/// key came meanwhile, or it is larger than `max_object_size`). Anything else streams as is.
fn post_for_get(
    edge: &Arc<Edge>,
    key: String,
    fields: http::HeaderMap,
    parts: &http::response::Parts,
    host: Option<&str>,
    body: Body,
) -> Body {
    let names_target = parts
        .headers
        .get(header::CONTENT_LOCATION)
        .and_then(|v| same_origin_path(v, host))
        .is_some_and(|p| p == key);
    if parts.status != StatusCode::OK || !names_target || !policy::explicitly_fresh(&parts.headers)
    {
        return body;
    }
    let now = SystemTime::now();
    let rules = edge.config.member.rules();
    let decision = policy::evaluate_with(
        &policy::policy_request(&Method::GET, &key, &fields),
        parts,
        now,
        &rules,
    );
    if !decision.storable || decision.ttl.is_zero() {
        return body;
    }
    let max = edge.config.member.max_object();
    let mark = edge.reads.store().fill_mark();
    let (status, headers) = (parts.status, parts.headers.clone());
    let expected = http_body::Body::size_hint(&body).exact();
    let edge = edge.clone();
    let kept: Option<Vec<Bytes>> = Some(Vec::new());
    // Stored when the last byte passes: with a known length hyper stops reading the body
    // then, without waiting for its end.
    let store = move |chunks: Vec<Bytes>| {
        let entry = NewEntry::new(status, &headers, chunks, decision.clone(), now);
        let (edge, key, fields) = (edge.clone(), key.clone(), fields.clone());
        // In a task of its own: the store's future is not `Sync`, which a response body must
        // be. Awaited, so the last chunk goes out once the entry is stored.
        tokio::spawn(async move {
            edge.reads
                .store()
                .insert_filled(&key, &fields, entry, mark)
                .await;
        })
    };
    StreamBody::new(stream::unfold(Some((body, kept, 0u64)), move |state| {
        let store = store.clone();
        async move {
            let (mut body, mut kept, mut len) = state?;
            let frame = body.frame().await;
            if let Some(Ok(d)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                len += d.map_or(0, |d| d.len() as u64);
                match (kept.as_mut(), d) {
                    _ if len > max => kept = None,
                    (Some(k), Some(d)) => k.push(d.clone()),
                    _ => {}
                }
            }
            let complete = match &frame {
                Some(Ok(_)) => expected == Some(len),
                Some(Err(_)) => {
                    kept = None;
                    false
                }
                // (Already stored, and `kept` taken, if the length was known and reached.)
                None => expected.is_none_or(|e| e == len),
            };
            if let Some(chunks) = kept.take_if(|_| complete) {
                if let Err(e) = store(chunks).await {
                    tracing::warn!(error = %e, "storing a POST response failed");
                }
            }
            // After an error the body is over: nothing more is read, nothing is stored.
            frame.map(|f| {
                let next = f.is_ok().then_some((body, kept, len));
                (f, next)
            })
        }
    }))
    .boxed()
}

/// Every other method goes to the origin, uncached, body streamed both ways.
async fn pass(edge: &Arc<Edge>, req: Request<Incoming>) -> Response<Body> {
    edge.counters.inc(Counter::Passes);
    edge.counters.inc(Counter::OriginFetches);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let unsafe_method = !matches!(parts.method, Method::OPTIONS | Method::TRACE);
    let post_fields =
        (parts.method == Method::POST).then(|| cdn_core::fill::fill_headers(&parts.headers));
    let target = parts.uri.path_and_query().map(|p| p.as_str().to_string());
    let post_target = target.clone().filter(|_| post_fields.is_some());
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let req = Request::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed());
    match edge.origin.send(req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let ok = parts.status.is_success() || parts.status.is_redirection();
            if unsafe_method && ok {
                // RFC 9111 §4.4: an unsafe request that succeeded invalidates the target and
                // the same-origin Location / Content-Location, across the whole cluster.
                let mut urls: Vec<String> = target.into_iter().collect();
                for f in [header::LOCATION, header::CONTENT_LOCATION] {
                    if let Some(u) = parts
                        .headers
                        .get(&f)
                        .and_then(|v| same_origin_path(v, host.as_deref()))
                    {
                        urls.push(u);
                    }
                }
                urls.sort();
                urls.dedup();
                let inv = cdn_proto::Invalidation {
                    urls,
                    ..Default::default()
                };
                edge.coordinate_purge(&inv).await;
            }
            let body = body.map_err(|e| Box::new(e) as BoxError).boxed();
            let body = match (post_fields, post_target) {
                (Some(fields), Some(key)) => {
                    post_for_get(edge, key, fields, &parts, host.as_deref(), body)
                }
                _ => body,
            };
            if !parts.headers.contains_key(header::AGE) {
                parts
                    .headers
                    .insert(header::AGE, HeaderValue::from_static("0"));
            }
            parts
                .headers
                .insert(X_CACHE, HeaderValue::from_static("PASS"));
            Response::from_parts(parts, body)
        }
        Err(e) => {
            edge.counters.inc(Counter::Errors);
            let mut r = text(StatusCode::BAD_GATEWAY, e.to_string());
            r.headers_mut()
                .insert(X_CACHE, HeaderValue::from_static("PASS"));
            r.headers_mut()
                .insert(header::AGE, HeaderValue::from_static("0"));
            r
        }
    }
}
