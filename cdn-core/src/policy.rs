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
}

/// Evaluates a response received at `now` for the request `req`.
///
/// Only GET responses are stored (the crate would also store a POST with `max-age`). A
/// response with no remaining freshness is not stored: revalidation of stored stale entries
/// is the only use for it, and until the entry keeps validators for that it would only cost
/// memory.
pub fn evaluate(req: &request::Parts, resp: &response::Parts, now: SystemTime) -> Decision {
    let policy = CachePolicy::new_options(req, resp, now, CacheOptions::default());
    let ttl = policy.time_to_live(now);
    let age = policy.age(now);
    let storable = req.method == Method::GET && policy.is_storable() && !ttl.is_zero();
    Decision {
        policy,
        storable,
        ttl,
        age,
    }
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
