//! A tier's fill: what a coalesced response's head says ([`Head`], [`Via`], [`Served`]),
//! fetching from the origin into a flight ([`fetch_origin`]), completing one from a stored
//! entry, and the revalidation merge. The coalescer itself (one fetch per key, its failure
//! semantics) is generic over the head and lives in `cdn-store`; it is re-exported here.

use std::sync::Arc;

pub use cdn_store::{
    Coalescer, FillBudget, FillError, FillErrorKind, FlightReader, FlightWriter, Joined,
    TIGHT_WINDOW, WINDOW,
};

/// Where a filled response came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// This member's own store (a fill that found the entry after winning leadership).
    Local,
    /// The origin, fetched by this member.
    Origin,
    /// A cache node, with what it did.
    Node {
        /// The node's id.
        id: Arc<str>,
        /// The node's outcome.
        status: cdn_proto::CacheStatus,
    },
}

/// The head of a filled response, as every waiter sees it.
#[derive(Debug, Clone)]
pub struct Head {
    /// Status code.
    pub status: http::StatusCode,
    /// Header fields (hop-by-hop removed; `Age` as received from upstream).
    pub headers: http::HeaderMap,
    /// Body length when known up front.
    pub content_length: Option<u64>,
    /// Cacheable by policy and shareable with other clients (it may still be too large to
    /// store at this tier).
    pub storable: bool,
    /// Where it came from.
    pub via: Via,
    /// Fetched anew, revalidated, or a stale copy served because upstream failed.
    pub served: Served,
    /// The variant key of the request it answers, when the response has `Vary`.
    pub variant: Option<String>,
}

/// The variant a response with `headers` answering `request` for `key` is (`None` when it
/// does not vary).
pub fn variant_of(
    key: &str,
    headers: &http::HeaderMap,
    request: &http::HeaderMap,
) -> Option<String> {
    match cdn_http::policy::vary_names(headers) {
        Some(names) if !names.is_empty() => {
            Some(cdn_http::policy::variant_key(key, &names, request))
        }
        _ => None,
    }
}

/// Whether a coalesced response also answers `request` (a follower's): it does unless it
/// varies on a field whose value differs. Followers it does not fit fetch on their own.
pub fn fits(head: &Head, key: &str, request: &http::HeaderMap) -> bool {
    match (&head.variant, cdn_http::policy::vary_names(&head.headers)) {
        (_, None) => false,
        (Some(v), Some(names)) if !names.is_empty() => {
            cdn_http::policy::variant_key(key, &names, request) == *v
        }
        _ => true,
    }
}

impl Head {
    /// This tier's outcome for the response, as `X-Cache` and the wire name it.
    pub fn outcome(&self) -> cdn_proto::CacheStatus {
        use cdn_proto::CacheStatus;
        match (self.served, &self.via, self.storable) {
            (Served::Revalidated, _, _) => CacheStatus::Revalidated,
            (Served::Stale, _, _) => CacheStatus::Stale,
            (Served::Fetched, Via::Local, _) => CacheStatus::Hit,
            (Served::Fetched, _, true) => CacheStatus::Miss,
            (Served::Fetched, _, false) => CacheStatus::Pass,
        }
    }
}

/// How a fill produced its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A full response from upstream (or the store).
    Fetched,
    /// Upstream confirmed the stored copy (304); the stored body with refreshed fields.
    Revalidated,
    /// Upstream failed and the stored copy was still allowed (stale-if-error).
    Stale,
}

/// Completes a flight from a stored entry (the leader found it after winning, or upstream
/// revalidated it, or failed while stale-if-error allows it).
pub fn complete_from_entry(
    mut w: FlightWriter<Head>,
    key: &str,
    request: &http::HeaderMap,
    entry: &cdn_store::Entry,
    now: std::time::SystemTime,
    served: Served,
) {
    let variant = variant_of(key, &entry.headers(), request);
    let mut headers = entry.headers();
    headers.insert(
        http::header::AGE,
        http::HeaderValue::from(entry.age(now).as_secs()),
    );
    w.set_head(
        Head {
            status: entry.status(),
            headers,
            content_length: Some(entry.body_len()),
            storable: true,
            via: Via::Local,
            served,
            variant,
        },
        true,
    );
    for c in &entry.body() {
        w.push(c.clone());
    }
    w.finish();
}

/// Where a fill stores what it gets, and under which rules.
#[derive(Clone, Copy)]
pub struct Sink<'a> {
    /// The store (a node's, or an edge's L1).
    pub store: &'a cdn_store::Store,
    /// Largest object stored.
    pub max_object: u64,
    /// Caching rules.
    pub rules: &'a cdn_http::policy::Rules,
}

/// The request fields a fill sends upstream: the client's end-to-end fields without
/// hop-by-hop ones, `Host`, or the client's own conditionals and range.
///
/// Built by keeping what passes, not by copying every field and removing names: a removal by
/// name parses and hashes the name whether or not the field is there, and there are
/// seventeen names to drop on every miss.
pub fn fill_headers(client: &http::HeaderMap) -> http::HeaderMap {
    let named = cdn_http::connection_named(client);
    let mut headers = http::HeaderMap::new();
    for (name, value) in client {
        if !cdn_http::is_hop_by_hop(name, &named)
            && name != http::header::HOST
            // Between members only: an origin or a parent fill never sees ours.
            && name.as_str() != cdn_http::policy::REFRESH_FIELD
            && !FILL_DROPPED.contains(&name.as_str())
        {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// The entry a 304 makes of a stored one: its body, its fields updated by the 304's, and a
/// lifetime evaluated anew from them; and whether it may still be stored.
pub fn revalidated(
    stale: &cdn_store::Entry,
    not_modified: &http::HeaderMap,
    policy_req: &http::request::Parts,
    now: std::time::SystemTime,
    rules: &cdn_http::policy::Rules,
) -> (cdn_store::NewEntry, bool) {
    let merged = cdn_http::policy::merge_not_modified(&stale.headers(), not_modified);
    let decision = cdn_http::policy::evaluate_head(policy_req, stale.status(), &merged, now, rules);
    let storable = decision.storable;
    let mut e = cdn_store::NewEntry::new(stale.status(), &merged, stale.body(), decision, now);
    if let Some(source) = stale.source() {
        e = e.with_source(source.into());
    }
    (e, storable)
}

/// Request fields a fill never forwards upstream: the cache fetches whole objects and does
/// its own validation, so one client's conditionals or range must not shape what is stored.
const FILL_DROPPED: [&str; 6] = [
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
];

/// Fetches `key` from the origin into `w`, and stores the response if it is storable,
/// complete, at most `max_object` bytes, and not purged while it was in flight. The entry is
/// stored before the flight finishes; a short, broken or oversized body is never stored.
pub async fn fetch_origin(
    origin: &cdn_http::origin::Origin,
    into: &Sink<'_>,
    key: &str,
    req_headers: &http::HeaderMap,
    stale: Option<cdn_store::Entry>,
    mut w: FlightWriter<Head>,
) -> Result<(), FillError> {
    use http_body_util::BodyExt;
    let Sink {
        store,
        max_object,
        rules,
    } = *into;

    let mut headers = fill_headers(req_headers);
    let request_fields = headers.clone();
    let policy_req = cdn_http::policy::policy_request(&http::Method::GET, key, &headers);
    let stale = stale.filter(|s| s.validators() || s.stale_if_error() > std::time::Duration::ZERO);
    if let Some(s) = stale.as_ref().filter(|s| s.validators()) {
        headers.extend(cdn_http::policy::validators_for(&s.headers()));
    }
    let mark = store.fill_mark();
    let mut req = http::Request::new(cdn_http::empty());
    *req.uri_mut() = key.parse().map_err(|_| {
        FillError::new(
            FillErrorKind::Unreachable,
            format!("bad request target {key}"),
        )
    })?;
    *req.headers_mut() = headers;
    let asked = std::time::Instant::now();
    let answered = origin.send(req).await;
    metrics::histogram!("cdn_origin_fetch_seconds").record(asked.elapsed().as_secs_f64());
    let resp = match answered {
        Ok(r) => r,
        Err(e) => {
            let now = std::time::SystemTime::now();
            if let Some(s) = stale.filter(|s| s.serve_on_error(now)) {
                tracing::warn!(%key, error = %e, "origin failed: serving stale (stale-if-error)");
                complete_from_entry(w, key, &request_fields, &s, now, Served::Stale);
                return Ok(());
            }
            let err = FillError::new(FillErrorKind::Unreachable, e.to_string());
            w.fail(err.clone());
            return Err(err);
        }
    };
    let (parts, mut body) = resp.into_parts();
    let now = std::time::SystemTime::now();
    if let Some(s) = &stale {
        if parts.status == http::StatusCode::NOT_MODIFIED && s.validators() {
            let (entry, storable) = revalidated(s, &parts.headers, &policy_req, now, rules);
            let entry = if storable {
                let served = entry.clone();
                match store.insert_filled(key, &request_fields, entry, mark).await {
                    Some(stored) => stored,
                    None => served.keyed(key),
                }
            } else {
                store.remove(key).await;
                entry.keyed(key)
            };
            complete_from_entry(w, key, &request_fields, &entry, now, Served::Revalidated);
            return Ok(());
        }
        // A stored error is no better than the origin's new one: that one is served.
        if parts.status.is_server_error() && !s.status().is_server_error() && s.serve_on_error(now)
        {
            tracing::warn!(%key, status = %parts.status, "origin error: serving stale (stale-if-error)");
            complete_from_entry(w, key, &request_fields, s, now, Served::Stale);
            return Ok(());
        }
    }
    let decision = cdn_http::policy::evaluate_with(&policy_req, &parts, now, rules);
    let content_length = http_body::Body::size_hint(&body).exact();
    let mut storable = decision.storable && content_length.is_none_or(|l| l <= max_object);
    let mut resp_headers = parts.headers;
    cdn_http::strip_hop_by_hop(&mut resp_headers);
    w.set_head(
        Head {
            status: parts.status,
            headers: resp_headers.clone(),
            content_length,
            storable: decision.storable,
            via: Via::Origin,
            served: Served::Fetched,
            variant: variant_of(key, &resp_headers, &request_fields),
        },
        decision.storable,
    );
    if !storable {
        w.stop_retaining();
    }
    // An origin that stops sending mid-body fails the fill after its response timeout.
    let idle = origin.response_timeout();
    loop {
        let next = match tokio::time::timeout(idle, body.frame()).await {
            Ok(next) => next,
            Err(_) => {
                let err = FillError::new(
                    FillErrorKind::Broken,
                    format!("origin body: nothing for {idle:?}"),
                );
                w.fail(err.clone());
                return Err(err);
            }
        };
        match next {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    w.push_windowed(data).await;
                    if w.is_retaining() && w.len() > max_object {
                        w.stop_retaining();
                    }
                }
            }
            Some(Err(e)) => {
                let err = FillError::new(FillErrorKind::Broken, format!("origin body: {e}"));
                w.fail(err.clone());
                return Err(err);
            }
            None => break,
        }
    }
    let got = w.len();
    if let Some(expected) = content_length {
        if got != expected {
            let err = FillError::new(
                FillErrorKind::Broken,
                format!("origin sent {got} of {expected} bytes"),
            );
            w.fail(err.clone());
            return Err(err);
        }
    }
    storable &= got <= max_object && w.is_retaining();
    if storable {
        let entry =
            cdn_store::NewEntry::new(parts.status, &resp_headers, w.chunks(), decision, now);
        store.insert_filled(key, &request_fields, entry, mark).await;
    }
    w.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in fields {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn pairs(h: &http::HeaderMap) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn a_fill_forwards_end_to_end_fields_only() {
        let client = map(&[
            ("host", "example.com"),
            ("accept", "text/html"),
            ("accept-encoding", "gzip"),
            ("accept-encoding", "br"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("if-none-match", "\"a\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("range", "bytes=0-1"),
            ("if-range", "\"a\""),
            ("cdn-refresh", "1"),
            ("authorization", "Bearer x"),
        ]);
        assert_eq!(
            pairs(&fill_headers(&client)),
            pairs(&map(&[
                ("accept", "text/html"),
                ("accept-encoding", "gzip"),
                ("accept-encoding", "br"),
                ("x-custom", "1"),
                ("authorization", "Bearer x"),
            ]))
        );
    }

    #[test]
    fn a_fill_drops_the_fields_connection_names() {
        let client = map(&[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("x-kept", "2"),
            ("host", "example.com"),
            ("range", "bytes=0-1"),
        ]);
        assert_eq!(
            pairs(&fill_headers(&client)),
            pairs(&map(&[("x-kept", "2")]))
        );
    }
}
