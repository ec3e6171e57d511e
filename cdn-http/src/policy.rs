//! The one place HTTP cache policy is evaluated; edges and nodes both call it.
//!
//! Decisions are pure functions of the request, the response and `now`
//! (http-cache-semantics underneath, as a shared cache). Two normalisations make the policy
//! agree across tiers and protocols:
//! - The request the policy sees carries the path-and-query as its URI and no `Host`: the
//!   cache key is the path-and-query (one origin per cluster), and HTTP/2 requests arrive with
//!   an absolute URI and no `Host` while HTTP/1.1 ones have both (STACK.md §4.5).
//! - Served headers are built from our stored copy, not from the crate's `cached_response`
//!   (which keeps only one value of a repeated field and writes `Date` in RFC 2822 form);
//!   only `Age` is computed per response.

use std::time::{Duration, SystemTime};

use http::{request, response, HeaderMap, Method};
use http_cache_semantics::{CacheOptions, CachePolicy};

/// Request fields the policy never sees, by default: CDNs ignore a client's wish to bypass
/// the shared cache (`no-cache`, `max-age=0`), or one client could force origin traffic.
const CLIENT_CACHE_FIELDS: [&str; 2] = ["cache-control", "pragma"];

/// The request as the policy sees it.
pub fn policy_request(method: &Method, path: &str, headers: &HeaderMap) -> request::Parts {
    let mut b = http::Request::builder().method(method.clone());
    b = b.uri(
        path.parse::<http::Uri>()
            .unwrap_or_else(|_| http::Uri::from_static("/")),
    );
    let (mut parts, ()) = b
        .body(())
        .unwrap_or_else(|_| http::Request::new(()))
        .into_parts();
    parts.headers = headers.clone();
    parts.headers.remove(http::header::HOST);
    for f in CLIENT_CACHE_FIELDS {
        parts.headers.remove(f);
    }
    parts
}

/// Operator choices that change what is stored. Both tiers are given the same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Store responses that carry `Set-Cookie` (off by default: a cookie set for one client
    /// must not be replayed to another, whatever the origin's Cache-Control says).
    pub store_set_cookie: bool,
    /// Stale-while-revalidate and stale-if-error window applied when the origin sends
    /// neither (and nothing forbids serving stale): Varnish's default grace, 10 s.
    pub grace: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            store_set_cookie: false,
            grace: Duration::from_secs(10),
        }
    }
}

/// How long an expired entry with validators is kept (space permitting) so it can be
/// revalidated with a conditional request instead of refetched whole.
pub const REVALIDATE_KEEP: Duration = Duration::from_secs(3600);

/// The `CDN-Cache-Control` field (RFC 9213): when present it governs our tiers instead of
/// `Cache-Control`, which is left for browsers downstream.
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";

/// Whether and for how long a response may be stored.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The policy, kept with the entry for later revalidation.
    pub policy: CachePolicy,
    /// May be stored and served to other clients.
    pub storable: bool,
    /// Freshness lifetime remaining at `now`.
    pub ttl: Duration,
    /// Age of the response at `now` (upstream `Age` plus time in flight).
    pub age: Duration,
    /// How long past its lifetime it may be served while a refresh runs.
    pub stale_while_revalidate: Duration,
    /// How long past its lifetime it may be served when upstream fails.
    pub stale_if_error: Duration,
    /// Must not be served stale at all (`must-revalidate`, `proxy-revalidate`, `no-cache`).
    pub revalidate_only: bool,
    /// Has `ETag` or `Last-Modified`, so it can be revalidated.
    pub validators: bool,
}

/// Evaluates a response received at `now` for the request `req`.
///
/// Only GET responses are stored (the crate would also store a POST with `max-age`). A
/// response with no remaining freshness is not stored: revalidation of stored stale entries
/// is the only use for it, and until the entry keeps validators for that it would only cost
/// memory.
pub fn evaluate(req: &request::Parts, resp: &response::Parts, now: SystemTime) -> Decision {
    evaluate_with(req, resp, now, &Rules::default())
}

/// [`evaluate`] under the operator's [`Rules`]. `CDN-Cache-Control`, when the response has
/// it, is what the policy reads as `Cache-Control`.
pub fn evaluate_with(
    req: &request::Parts,
    resp: &response::Parts,
    now: SystemTime,
    rules: &Rules,
) -> Decision {
    let has_cookie = resp.headers.contains_key(http::header::SET_COOKIE);
    let targeted = resp.headers.contains_key(CDN_CACHE_CONTROL);
    let view;
    let resp = if targeted || (has_cookie && rules.store_set_cookie) {
        let mut h = resp.headers.clone();
        if targeted {
            h.remove(http::header::CACHE_CONTROL);
            h.remove(http::header::PRAGMA);
            for v in resp.headers.get_all(CDN_CACHE_CONTROL) {
                h.append(http::header::CACHE_CONTROL, v.clone());
            }
        }
        if rules.store_set_cookie {
            // The crate refuses Set-Cookie responses unless `public`; the operator chose.
            h.remove(http::header::SET_COOKIE);
        }
        let mut r = http::Response::new(());
        *r.status_mut() = resp.status;
        *r.headers_mut() = h;
        view = r.into_parts().0;
        &view
    } else {
        resp
    };
    let policy = CachePolicy::new_options(req, resp, now, CacheOptions::default());
    let ttl = policy.time_to_live(now);
    let age = policy.age(now);
    let cookie_ok = rules.store_set_cookie || !has_cookie;
    let validators = resp.headers.contains_key(http::header::ETAG)
        || resp.headers.contains_key(http::header::LAST_MODIFIED);
    let cc = directives(&resp.headers);
    let seconds = |name: &str| {
        cc.iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref()?.parse::<u64>().ok())
            .map(Duration::from_secs)
    };
    let has = |name: &str| cc.iter().any(|(k, _)| k == name);
    let revalidate_only = has("must-revalidate") || has("proxy-revalidate") || has("no-cache");
    let (swr, sie) = match (seconds("stale-while-revalidate"), seconds("stale-if-error")) {
        // s-maxage implies proxy-revalidate (RFC 9111 §5.2.2.10): no default grace then.
        (None, None) if has("s-maxage") => (Duration::ZERO, Duration::ZERO),
        (None, None) => (rules.grace, rules.grace),
        (a, b) => (a.unwrap_or_default(), b.unwrap_or_default()),
    };
    // Stored if fresh, or revalidatable (`no-cache`, or `max-age=0` with a validator); never
    // with `Vary: *`, which no later request can match.
    let storable = req.method == Method::GET
        && vary_names(&resp.headers).is_some()
        && policy.is_storable()
        && (!ttl.is_zero() || validators)
        && cookie_ok;
    Decision {
        policy,
        storable,
        ttl,
        age,
        stale_while_revalidate: if revalidate_only { Duration::ZERO } else { swr },
        stale_if_error: if revalidate_only { Duration::ZERO } else { sie },
        revalidate_only,
        validators,
    }
}

/// Cache-Control directives, lowercase names with optional values.
fn directives(headers: &HeaderMap) -> Vec<(String, Option<String>)> {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| {
            let d = d.trim();
            if d.is_empty() {
                return None;
            }
            Some(match d.split_once('=') {
                Some((k, v)) => (
                    k.trim().to_ascii_lowercase(),
                    Some(v.trim().trim_matches('"').to_string()),
                ),
                None => (d.to_ascii_lowercase(), None),
            })
        })
        .collect()
}

/// The conditional fields to revalidate a stored response with.
pub fn validators_for(stored: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(e) = stored.get(http::header::ETAG) {
        h.insert(http::header::IF_NONE_MATCH, e.clone());
    }
    if let Some(lm) = stored.get(http::header::LAST_MODIFIED) {
        h.insert(http::header::IF_MODIFIED_SINCE, lm.clone());
    }
    h
}

/// The stored fields updated by a 304 (RFC 9111 §3.2, §4.3.4): every field of the 304
/// replaces the stored one, except those describing the body, which a 304 has not got.
pub fn merge_not_modified(stored: &HeaderMap, fresh: &HeaderMap) -> HeaderMap {
    let mut out = stored.clone();
    let skip = [
        http::header::CONTENT_LENGTH,
        http::header::CONTENT_ENCODING,
        http::header::TRANSFER_ENCODING,
        http::header::CONTENT_RANGE,
    ];
    let names: std::collections::HashSet<&http::HeaderName> =
        fresh.keys().filter(|k| !skip.contains(k)).collect();
    for n in names {
        out.remove(n);
        for v in fresh.get_all(n) {
            out.append(n.clone(), v.clone());
        }
    }
    out
}

/// Whether a client's conditional GET/HEAD is satisfied by a stored 200 with `stored`
/// fields, so the answer is 304 (RFC 9110 §13.1.2, §13.1.3, §13.2.2: `If-None-Match` with
/// weak comparison wins over `If-Modified-Since`).
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = request
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let Some(etag) = stored.get(http::header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
        return inm
            .split(',')
            .any(|t| t.trim() == "*" || weak(t) == weak(etag));
    }
    let since = request
        .get(http::header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let modified = stored
        .get(http::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((since, modified), (Some(s), Some(m)) if m <= s)
}

/// Response fields a 304 carries over from the stored response (RFC 9110 §15.4.5).
pub const NOT_MODIFIED_FIELDS: [http::header::HeaderName; 6] = [
    http::header::CACHE_CONTROL,
    http::header::CONTENT_LOCATION,
    http::header::DATE,
    http::header::ETAG,
    http::header::EXPIRES,
    http::header::VARY,
];

/// Whether the client asks for an end-to-end refresh: `Cache-Control: no-cache` or
/// `max-age=0`, or `Pragma: no-cache` without Cache-Control. Ignored unless the operator
/// chose to honour it (`honour_client_no_cache`).
pub fn client_wants_fresh(request: &HeaderMap) -> bool {
    let cc = directives(request);
    if cc.is_empty() {
        return request
            .get(http::header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"));
    }
    cc.iter()
        .any(|(k, v)| k == "no-cache" || (k == "max-age" && v.as_deref() == Some("0")))
}

/// Whether the request says `Cache-Control: only-if-cached` (answer 504 on a miss).
pub fn only_if_cached(request: &HeaderMap) -> bool {
    request
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("only-if-cached"))
}

/// The field names a response varies on: `None` for `Vary: *` (never matches), empty when
/// it does not vary.
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<http::HeaderName>> {
    let mut names = Vec::new();
    for v in headers.get_all(http::header::VARY) {
        for t in v.to_str().unwrap_or("*").split(',') {
            let t = t.trim();
            if t == "*" {
                return None;
            }
            if let Ok(n) = http::HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes()) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

/// The storage key of the variant of `key` that `request` selects: the URL, then each named
/// field's normalised value (lowercase, whitespace collapsed; `Accept-Encoding` reduced to
/// the coding we would pick), separated by NUL so no URL can collide with a variant.
pub fn variant_key(key: &str, names: &[http::HeaderName], request: &HeaderMap) -> String {
    let mut out = String::from(key);
    for n in names {
        out.push('\0');
        out.push_str(n.as_str());
        out.push('=');
        let joined: Vec<String> = request
            .get_all(n)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| {
                v.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_ascii_lowercase()
            })
            .collect();
        let value = joined.join(",");
        if n == http::header::ACCEPT_ENCODING {
            let coding = if value.contains("br") {
                "br"
            } else if value.contains("gzip") {
                "gzip"
            } else {
                "identity"
            };
            out.push_str(coding);
        } else {
            out.push_str(&value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(fields: &[(&str, &str)], status: u16) -> response::Parts {
        let mut b = http::Response::builder().status(status);
        for (k, v) in fields {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn get(path: &str) -> request::Parts {
        policy_request(&Method::GET, path, &HeaderMap::new())
    }

    #[test]
    fn max_age_gives_the_ttl_and_s_maxage_wins() {
        let now = SystemTime::now();
        let d = evaluate(
            &get("/a"),
            &resp(&[("cache-control", "max-age=60")], 200),
            now,
        );
        assert!(d.storable);
        assert_eq!(d.ttl, Duration::from_secs(60));
        let d = evaluate(
            &get("/a"),
            &resp(&[("cache-control", "max-age=60, s-maxage=300")], 200),
            now,
        );
        assert_eq!(d.ttl, Duration::from_secs(300));
    }

    #[test]
    fn upstream_age_counts_against_freshness() {
        let now = SystemTime::now();
        let d = evaluate(
            &get("/a"),
            &resp(&[("cache-control", "max-age=60"), ("age", "20")], 200),
            now,
        );
        assert_eq!(d.ttl, Duration::from_secs(40));
        assert_eq!(d.age, Duration::from_secs(20));
    }

    #[test]
    fn private_no_store_and_zero_ttl_are_not_stored() {
        let now = SystemTime::now();
        // (origin-stub sends an ETag by default; these have none, so cannot be revalidated)
        for cc in ["private, max-age=60", "no-store", "max-age=0", "no-cache"] {
            let d = evaluate(&get("/a"), &resp(&[("cache-control", cc)], 200), now);
            assert!(!d.storable, "{cc}");
        }
    }

    #[test]
    fn only_get_is_stored() {
        let now = SystemTime::now();
        let req = policy_request(&Method::POST, "/a", &HeaderMap::new());
        let d = evaluate(&req, &resp(&[("cache-control", "max-age=60")], 200), now);
        assert!(!d.storable);
    }

    #[test]
    fn cdn_cache_control_governs_our_tiers() {
        let now = SystemTime::now();
        let d = evaluate(
            &get("/a"),
            &resp(
                &[
                    ("cache-control", "no-store"),
                    ("cdn-cache-control", "max-age=120"),
                ],
                200,
            ),
            now,
        );
        assert!(d.storable);
        assert_eq!(d.ttl, Duration::from_secs(120));
        let d = evaluate(
            &get("/a"),
            &resp(
                &[
                    ("cache-control", "max-age=600"),
                    ("cdn-cache-control", "no-store"),
                ],
                200,
            ),
            now,
        );
        assert!(!d.storable);
    }

    #[test]
    fn stale_windows_come_from_directives_or_the_default_grace() {
        let now = SystemTime::now();
        let d = evaluate(
            &get("/a"),
            &resp(
                &[(
                    "cache-control",
                    "max-age=60, stale-while-revalidate=30, stale-if-error=300",
                )],
                200,
            ),
            now,
        );
        assert_eq!(
            (d.stale_while_revalidate, d.stale_if_error),
            (Duration::from_secs(30), Duration::from_secs(300))
        );
        let d = evaluate(
            &get("/a"),
            &resp(&[("cache-control", "max-age=60")], 200),
            now,
        );
        assert_eq!(d.stale_while_revalidate, Rules::default().grace);
        let d = evaluate(
            &get("/a"),
            &resp(&[("cache-control", "s-maxage=60")], 200),
            now,
        );
        assert!(
            d.stale_if_error.is_zero(),
            "s-maxage implies proxy-revalidate"
        );
        let d = evaluate(
            &get("/a"),
            &resp(
                &[(
                    "cache-control",
                    "max-age=60, must-revalidate, stale-if-error=60",
                )],
                200,
            ),
            now,
        );
        assert!(d.revalidate_only && d.stale_if_error.is_zero());
    }

    #[test]
    fn no_cache_with_a_validator_is_stored_for_revalidation() {
        let now = SystemTime::now();
        let d = evaluate(
            &get("/a"),
            &resp(&[("cache-control", "no-cache"), ("etag", "\"1\"")], 200),
            now,
        );
        assert!(d.storable && d.ttl.is_zero() && d.revalidate_only);
        let d = evaluate(
            &get("/a"),
            &resp(&[("cache-control", "no-cache")], 200),
            now,
        );
        assert!(!d.storable, "nothing to revalidate with");
    }

    #[test]
    fn a_304_updates_stored_fields_but_not_the_body_description() {
        let stored = resp(
            &[
                ("etag", "\"1\""),
                ("cache-control", "max-age=1"),
                ("content-length", "5"),
                ("x-a", "old"),
            ],
            200,
        )
        .headers;
        let fresh = resp(
            &[
                ("cache-control", "max-age=60"),
                ("content-length", "0"),
                ("x-a", "new"),
            ],
            304,
        )
        .headers;
        let m = merge_not_modified(&stored, &fresh);
        assert_eq!(m.get("cache-control").unwrap(), "max-age=60");
        assert_eq!(m.get("content-length").unwrap(), "5");
        assert_eq!(m.get("x-a").unwrap(), "new");
        assert_eq!(m.get("etag").unwrap(), "\"1\"");
        assert_eq!(
            validators_for(&stored).get("if-none-match").unwrap(),
            "\"1\""
        );
    }

    #[test]
    fn set_cookie_is_not_stored_unless_allowed() {
        let now = SystemTime::now();
        let r = resp(
            &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
            200,
        );
        assert!(!evaluate(&get("/a"), &r, now).storable);
        let allow = Rules {
            store_set_cookie: true,
            ..Rules::default()
        };
        assert!(evaluate_with(&get("/a"), &r, now, &allow).storable);
    }

    #[test]
    fn conditionals_match_like_rfc_9110() {
        let stored = resp(
            &[
                ("etag", "\"v1\""),
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ],
            200,
        )
        .headers;
        let req = |k: &str, v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
            h
        };
        assert!(not_modified(&req("if-none-match", "\"v1\""), &stored));
        assert!(not_modified(
            &req("if-none-match", "W/\"v1\", \"v2\""),
            &stored
        ));
        assert!(not_modified(&req("if-none-match", "*"), &stored));
        assert!(!not_modified(&req("if-none-match", "\"v2\""), &stored));
        assert!(not_modified(
            &req("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
            &stored
        ));
        assert!(!not_modified(
            &req("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT"),
            &stored
        ));
        assert!(!not_modified(&HeaderMap::new(), &stored));
        assert!(only_if_cached(&req(
            "cache-control",
            "max-age=0, only-if-cached"
        )));
    }

    #[test]
    fn host_and_client_cache_control_are_not_seen() {
        let mut h = HeaderMap::new();
        h.insert("host", "evil.example".parse().unwrap());
        h.insert("cache-control", "no-store".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        let p = policy_request(&Method::GET, "/x?y=1", &h);
        assert!(p.headers.get("host").is_none());
        assert!(p.headers.get("cache-control").is_none());
        assert_eq!(p.uri, "/x?y=1");
        let d = evaluate(
            &p,
            &resp(&[("cache-control", "max-age=5")], 200),
            SystemTime::now(),
        );
        assert!(
            d.storable,
            "a client's no-store does not stop the shared cache by default"
        );
    }
}
