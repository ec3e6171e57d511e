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

/// The request as the policy sees it: its method, target and the one request field that
/// bears on what a shared cache may store, `Authorization` (RFC 9111 §3.5). The client's own
/// `Cache-Control` and `Pragma` are left out (CDNs ignore a client's wish to bypass the shared
/// cache, `no-cache` or `max-age=0`, or one client could force origin traffic), and so is
/// everything else: the policy reads nothing more, and copying every field per fill showed in
/// the miss path's profile.
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
    for v in headers.get_all(http::header::AUTHORIZATION) {
        parts.headers.append(http::header::AUTHORIZATION, v.clone());
    }
    parts
}

/// Operator choices that change what is stored. Both tiers are given the same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Store responses that carry `Set-Cookie` (off by default: a cookie set for one client
    /// must not be replayed to another, whatever the origin's Cache-Control says).
    pub store_set_cookie: bool,
    /// Opt-in grace (Varnish's): a stale-while-revalidate and stale-if-error window applied
    /// when the origin sends neither (and nothing forbids serving stale). Zero by default:
    /// RFC 9111 §4.2.4 forbids serving stale without the origin's or the client's permission
    /// while the origin can be reached.
    pub grace: Duration,
    /// How long past its lifetime a response may still be served when upstream is
    /// unreachable, times out or answers 5xx, when the origin sent no `stale-if-error` and
    /// nothing forbids serving it stale: RFC 9111 §4.2.4 allows a disconnected cache to.
    /// 10 s by default (what the old default grace gave errors).
    pub stale_on_error: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            store_set_cookie: false,
            grace: Duration::ZERO,
            stale_on_error: Duration::from_secs(10),
        }
    }
}

/// How long an expired entry with validators is kept (space permitting) so it can be
/// revalidated with a conditional request instead of refetched whole.
pub const REVALIDATE_KEEP: Duration = Duration::from_secs(3600);

/// The `CDN-Cache-Control` field (RFC 9213): when present and valid it governs our tiers
/// instead of `Cache-Control` and `Expires`. It is forwarded downstream like any end-to-end
/// field: another CDN behind us may be its target too.
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";

/// Request field one member adds when it asks another to refresh a copy it holds (a
/// background revalidation, or an expired copy): the member asked must not answer with a
/// stale copy of its own, which would only be stored again as if it were new. Removed from
/// clients' requests at the edge and never sent to an origin.
pub const REFRESH_FIELD: &str = "cdn-refresh";

/// The largest delta-seconds value a cache must handle (RFC 9111 §1.2.2): larger ones count
/// as this.
const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// Whether and for how long a response may be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// May be stored and served to other clients.
    pub storable: bool,
    /// Freshness lifetime remaining at `now`.
    pub ttl: Duration,
    /// Age of the response at `now` (upstream `Age` plus time in flight).
    pub age: Duration,
    /// How long past its lifetime it may be served while a refresh runs (already reduced by
    /// how stale it arrived).
    pub stale_while_revalidate: Duration,
    /// How long past its lifetime it may be served when upstream fails (already reduced by
    /// how stale it arrived).
    pub stale_if_error: Duration,
    /// Must not be served stale at all (`must-revalidate`, `proxy-revalidate`, `no-cache`).
    pub revalidate_only: bool,
    /// Has `ETag` or `Last-Modified`, so it can be revalidated.
    pub validators: bool,
}

/// Evaluates a response received at `now` for the request `req`.
///
/// Only GET responses are stored (the crate would also store a POST with `max-age`). A
/// response with no remaining freshness is stored only if it can be revalidated.
pub fn evaluate(req: &request::Parts, resp: &response::Parts, now: SystemTime) -> Decision {
    evaluate_with(req, resp, now, &Rules::default())
}

/// [`evaluate`] under the operator's [`Rules`].
///
/// http-cache-semantics is lenient where RFC 9111 is not (and strict where it need not be),
/// so it is handed a normalised view of the response ([`Normalised`]): the governing
/// directives (a valid `CDN-Cache-Control`, else `Cache-Control`) with lower-case names and
/// validated values, `Expires` / `Date` / `Last-Modified` as IMF-fixdates or (an invalid
/// `Expires`) already past, no `Age` (counted here), and a status it understands when ours
/// has explicit freshness (RFC 9111 §3 allows storing any final status then).
pub fn evaluate_with(
    req: &request::Parts,
    resp: &response::Parts,
    now: SystemTime,
    rules: &Rules,
) -> Decision {
    evaluate_head(req, resp.status, &resp.headers, now, rules)
}

/// [`evaluate_with`] for a response given as its status and fields (no `Parts` to build).
pub fn evaluate_head(
    req: &request::Parts,
    status: http::StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
    rules: &Rules,
) -> Decision {
    evaluate_normalised(req, status, headers, now, rules, true)
}

/// [`evaluate_head`], taking the [`plain_lifetime`] shortcut when `shortcut` allows (the
/// differential test turns it off to compare both ways).
fn evaluate_normalised(
    req: &request::Parts,
    status: http::StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
    rules: &Rules,
    shortcut: bool,
) -> Decision {
    let has_cookie = headers.contains_key(http::header::SET_COOKIE);
    let norm = Normalised::of(status, headers);
    let vary_ok = vary_names(headers).is_some();
    let plain = shortcut
        .then(|| plain_lifetime(req, &norm, has_cookie, vary_ok, rules))
        .flatten();
    let (crate_storable, lifetime) = match plain {
        // What the crate would answer, without building its view and policy.
        Some(lifetime) => (true, lifetime),
        None => {
            let view = norm.view(now, rules);
            let policy = CachePolicy::new_options(req, &view, now, CacheOptions::default());
            // The view has no `Age` and was received `now`: its time to live is the whole
            // lifetime.
            (policy.is_storable(), policy.time_to_live(now))
        }
    };
    let age = norm.age;
    let ttl = lifetime.saturating_sub(age);
    // A response that arrives already stale (an upstream cache served it stale) has used
    // that much of its stale windows already.
    let late = age.saturating_sub(lifetime);
    let cookie_ok = rules.store_set_cookie || !has_cookie;
    let validators = headers.contains_key(http::header::ETAG)
        || headers.contains_key(http::header::LAST_MODIFIED);
    let cc = &norm.directives;
    let revalidate_only =
        cc.has("must-revalidate") || cc.has("proxy-revalidate") || cc.has("no-cache");
    let swr = cc.seconds("stale-while-revalidate");
    let sie = cc.seconds("stale-if-error");
    // s-maxage implies proxy-revalidate (RFC 9111 §5.2.2.10): no grace of ours then.
    let ours = !cc.has("s-maxage");
    let grace = if ours && swr.is_none() && sie.is_none() {
        rules.grace
    } else {
        Duration::ZERO
    };
    let swr = swr.unwrap_or(grace);
    let sie = match sie {
        Some(s) => s,
        None if ours => grace.max(rules.stale_on_error),
        None => Duration::ZERO,
    };
    // Stored if fresh, or revalidatable (`no-cache`, or `max-age=0` with a validator); never
    // with `Vary: *`, which no later request can match.
    let storable = req.method == Method::GET
        && norm.status_storable
        && vary_ok
        && crate_storable
        && (!ttl.is_zero() || validators)
        && cookie_ok;
    let window = |w: Duration| {
        if revalidate_only {
            Duration::ZERO
        } else {
            w.saturating_sub(late)
        }
    };
    Decision {
        storable,
        ttl,
        age,
        stale_while_revalidate: window(swr),
        stale_if_error: window(sie),
        revalidate_only,
        validators,
    }
}

/// The freshness lifetime of the common response, worked out without http-cache-semantics:
/// a GET with no `Authorization` or `Cache-Control` of its own, answered with a status the
/// crate's view understands, an explicit `s-maxage` or `max-age`, and nothing that would
/// make the crate answer otherwise (`no-store`, `private`, `no-cache`, `proxy-revalidate`,
/// `Vary: *`, a `Set-Cookie` it would see). For such a response the crate stores it and
/// takes `s-maxage`, else `max-age`, as its whole lifetime: `Expires`, `Date`,
/// `Last-Modified` and `Pragma` are never read. `None` hands anything else to the crate.
///
/// Building the crate's view and policy (a copy of the fields it reads, its own parse of
/// `Cache-Control`, its copies of both heads) was most of the edge's cost of evaluating a
/// node's answer, on every miss. The test `plain_lifetime_agrees_with_the_crate` checks this
/// answer against the crate's over a grid of heads, requests and rules.
fn plain_lifetime(
    req: &request::Parts,
    norm: &Normalised<'_>,
    has_cookie: bool,
    vary_ok: bool,
    rules: &Rules,
) -> Option<Duration> {
    let cc = &norm.directives;
    let understood = norm.status_storable || UNDERSTOOD.contains(&norm.status.as_u16());
    let plain = req.method == Method::GET
        && !req.headers.contains_key(http::header::AUTHORIZATION)
        && !req.headers.contains_key(http::header::CACHE_CONTROL)
        && understood
        && vary_ok
        && (!has_cookie || rules.store_set_cookie)
        && !["no-store", "private", "no-cache", "proxy-revalidate"]
            .iter()
            .any(|d| cc.has(d));
    if !plain {
        return None;
    }
    cc.seconds("s-maxage").or_else(|| cc.seconds("max-age"))
}

/// Statuses http-cache-semantics understands (it refuses to store any other).
const UNDERSTOOD: [u16; 14] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// A response's caching fields, validated and normalised once (see [`evaluate_with`]).
#[derive(Debug)]
struct Normalised<'a> {
    status: http::StatusCode,
    headers: &'a HeaderMap,
    /// The directives that govern us: `CDN-Cache-Control` when valid, else `Cache-Control`.
    directives: Directives,
    /// `CDN-Cache-Control` governs (so `Cache-Control`, `Pragma` and `Expires` are ignored).
    targeted: bool,
    /// The `Age` received, when valid (else ignored, RFC 9111 §5.1).
    age: Duration,
    /// May be stored as far as its status goes.
    status_storable: bool,
}

impl<'a> Normalised<'a> {
    fn of(status: http::StatusCode, headers: &'a HeaderMap) -> Self {
        let targeted_dirs = cdn_cache_control(headers);
        let targeted = targeted_dirs.is_some();
        let directives = targeted_dirs.unwrap_or_else(|| Directives::parse(headers));
        let explicit = directives.has("max-age")
            || directives.has("s-maxage")
            || (!targeted && headers.contains_key(http::header::EXPIRES));
        // RFC 9111 §3: any final status may be stored; those the crate does not know only
        // with explicit freshness (no heuristics for them). 206 is never stored (we fetch
        // whole objects), nor a 304 on its own.
        let code = status.as_u16();
        let status_storable =
            UNDERSTOOD.contains(&code) || (code >= 200 && code != 206 && code != 304 && explicit);
        Self {
            status,
            headers,
            directives,
            targeted,
            age: age_field(headers).unwrap_or_default(),
            status_storable,
        }
    }

    /// The response as http-cache-semantics should see it.
    fn view(&self, now: SystemTime, rules: &Rules) -> response::Parts {
        use http::header::{CACHE_CONTROL, DATE, EXPIRES, LAST_MODIFIED, PRAGMA, SET_COOKIE, VARY};
        // Only the fields http-cache-semantics reads for storability and freshness (it copies
        // what it is given; the rest of a response's fields would be copied for nothing).
        // `Age` is left out (counted here), and so are both cache-control fields (the
        // governing directives are rebuilt below).
        let mut h = HeaderMap::with_capacity(8);
        let mut copy = |name: http::header::HeaderName| {
            for v in self.headers.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        };
        copy(DATE);
        copy(LAST_MODIFIED);
        copy(VARY);
        // Pragma counts only without Cache-Control (RFC 9111 §5.4); the view may have no
        // Cache-Control left (no directive the crate acts on), so it goes too.
        if !self.targeted && !self.headers.contains_key(CACHE_CONTROL) {
            copy(PRAGMA);
        }
        if !self.targeted {
            copy(EXPIRES);
        }
        // The crate refuses Set-Cookie responses unless `public`; with `store_set_cookie` the
        // operator chose.
        if !rules.store_set_cookie {
            copy(SET_COOKIE);
        }
        let cc = self.directives.for_crate();
        if !cc.is_empty() {
            if let Ok(v) = http::HeaderValue::from_str(&cc) {
                h.insert(CACHE_CONTROL, v);
            }
        }
        for field in [DATE, LAST_MODIFIED] {
            match h.get(&field).map(|v| (http_date(v), is_imf_fixdate(v))) {
                // Already in the form the crate parses: kept as it is.
                Some((Some(_), true)) | None => {}
                Some((Some(t), false)) => {
                    h.insert(field, imf_fixdate(t));
                }
                Some((None, _)) => {
                    h.remove(field);
                }
            }
        }
        if let Some(v) = h.get(EXPIRES) {
            match (http_date(v), is_imf_fixdate(v)) {
                (Some(_), true) => {}
                // RFC 9111 §5.3: an invalid date means "already expired".
                (t, _) => {
                    h.insert(EXPIRES, imf_fixdate(t.unwrap_or(SystemTime::UNIX_EPOCH)));
                }
            }
            if !h.contains_key(DATE) {
                // The crate measures Expires from Date, or from the response time.
                h.insert(DATE, imf_fixdate(now));
            }
        }
        let mut r = http::Response::new(());
        *r.status_mut() = if self.status_storable && !UNDERSTOOD.contains(&self.status.as_u16()) {
            // Explicitly fresh: the same freshness rules as a 200 (no heuristics apply).
            http::StatusCode::OK
        } else {
            self.status
        };
        *r.headers_mut() = h;
        r.into_parts().0
    }
}

/// An HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms a recipient must
/// accept, RFC 9110 §5.6.7); `None` for anything else (extra spaces, other zones, ...).
fn http_date(v: &http::HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?).ok()
}

/// Whether `v` has the IMF-fixdate shape (`Sun, 06 Nov 1994 08:49:37 GMT`: 29 bytes, the
/// comma, spaces and colons in place, digits where digits go). Together with [`http_date`]
/// accepting it, the value is one the policy crate parses as it is.
fn is_imf_fixdate(v: &http::HeaderValue) -> bool {
    let b = v.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 29
        && b[3] == b','
        && b[4] == b' '
        && b[7] == b' '
        && b[11] == b' '
        && b[16] == b' '
        && b[19] == b':'
        && b[22] == b':'
        && &b[25..] == b" GMT"
        && digits(5..7)
        && digits(12..16)
        && digits(17..19)
        && digits(20..22)
        && digits(23..25)
}

fn imf_fixdate(t: SystemTime) -> http::HeaderValue {
    http::HeaderValue::from_str(&httpdate::fmt_http_date(t)).unwrap_or(
        http::HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
    )
}

/// The `Age` field's value: the first member of the first line (RFC 9111 §5.1), when it is
/// a non-negative integer; `None` when absent or invalid (it is then ignored).
fn age_field(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::AGE)?.to_str().ok()?;
    let first = v.split(',').next()?.trim();
    delta_seconds(first).map(Duration::from_secs)
}

/// `1*DIGIT`, clamped to 2^31 (RFC 9111 §1.2.2); `None` for anything else (signs, quotes,
/// decimals, trailing letters).
fn delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX).min(DELTA_SECONDS_MAX))
}

/// Directives whose argument is delta-seconds, in token form only (RFC 9111 §5.2).
const DELTA_DIRECTIVES: [&str; 6] = [
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
    "min-fresh",
    "max-stale",
];

/// Directives kept per field before only the known ones are (a bound on parsing work).
const MAX_DIRECTIVES: usize = 64;

/// Directives http-cache-semantics acts on; others are left out of its view.
const CRATE_DIRECTIVES: [&str; 10] = [
    "max-age",
    "s-maxage",
    "no-cache",
    "no-store",
    "private",
    "public",
    "must-revalidate",
    "proxy-revalidate",
    "immutable",
    "only-if-cached",
];

/// Cache directives: lower-case names, each with its value (unquoted) if it had one; the
/// first occurrence of a name wins (RFC 9111 §4.2.1 allows using the first).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    /// Parses every `Cache-Control` line of `headers` (RFC 9111 §5.2: names are
    /// case-insensitive, a value is a token or a quoted-string, commas inside quotes do not
    /// split). A delta-seconds directive whose value is not `1*DIGIT` (quoted, signed,
    /// decimal, trailing letters) is invalid: an invalid `max-age` or `s-maxage` makes the
    /// response stale (as §4.2.1 encourages), other invalid ones are dropped.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut out = Directives::default();
        let lines = headers.get_all(http::header::CACHE_CONTROL);
        for line in lines.iter().filter_map(|v| v.to_str().ok()) {
            for (name, value, quoted) in split_directives(line) {
                let name = name.to_ascii_lowercase();
                // Past MAX_DIRECTIVES only directives we act on are kept, so a field of
                // thousands of names costs linear time, and a `no-store` or `private` at its
                // end still counts.
                let known = DELTA_DIRECTIVES.contains(&name.as_str())
                    || CRATE_DIRECTIVES.contains(&name.as_str());
                if name.is_empty() || (out.0.len() >= MAX_DIRECTIVES && !known) || out.has(&name) {
                    continue;
                }
                if DELTA_DIRECTIVES.contains(&name.as_str()) {
                    match value.as_deref().filter(|_| !quoted).and_then(delta_seconds) {
                        Some(n) => out.0.push((name, Some(n.to_string()))),
                        None if name == "max-age" || name == "s-maxage" => {
                            out.0.push((name, Some("0".into())))
                        }
                        None => {}
                    }
                } else {
                    out.0.push((name, value));
                }
            }
        }
        out
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the directive `name` (lower case) is present.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// The value of `name`, when it has one.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// A delta-seconds directive's value (validated when parsed).
    pub fn seconds(&self, name: &str) -> Option<Duration> {
        self.value(name)
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
    }

    /// The directives http-cache-semantics acts on, as one `Cache-Control` value it parses
    /// the same way (no quoted values, which it would split wrongly).
    fn for_crate(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.0 {
            if !CRATE_DIRECTIVES.contains(&k.as_str()) {
                continue;
            }
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(k);
            if let (Some(v), true) = (v, DELTA_DIRECTIVES.contains(&k.as_str())) {
                out.push('=');
                out.push_str(v);
            }
        }
        out
    }
}

/// Splits a Cache-Control line into `(name, value, quoted)`; a quoted-string value is
/// unescaped, and commas inside it do not split.
fn split_directives(line: &str) -> Vec<(String, Option<String>, bool)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return out;
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',') {
            name.push(c);
        }
        let mut value = None;
        let mut quoted = false;
        if chars.next_if_eq(&'=').is_some() {
            let mut v = String::new();
            if chars.next_if_eq(&'"').is_some() {
                quoted = true;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => v.extend(chars.next()),
                        '"' => break,
                        c => v.push(c),
                    }
                }
                // Anything between the closing quote and the next comma is dropped.
                while chars.next_if(|c| *c != ',').is_some() {}
            } else {
                while let Some(c) = chars.next_if(|c| *c != ',') {
                    v.push(c);
                }
                v = v.trim().to_string();
            }
            value = Some(v);
        }
        out.push((name.trim().to_string(), value, quoted));
    }
}

/// The directives of a valid, non-empty `CDN-Cache-Control` (RFC 9213 §2.1): its lines
/// parsed together as one RFC 8941 Dictionary. A field that does not parse, or in which a
/// directive this cache knows has a value of the wrong type, is ignored as a whole (`None`:
/// `Cache-Control` and `Expires` govern again).
fn cdn_cache_control(headers: &HeaderMap) -> Option<Directives> {
    let lines: Vec<&str> = headers
        .get_all(CDN_CACHE_CONTROL)
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<_, _>>()
        .ok()?;
    if lines.is_empty() {
        return None;
    }
    let joined = lines.join(", ");
    let dict: sfv::Dictionary = sfv::Parser::new(&joined)
        .with_version(sfv::Version::Rfc8941)
        .parse()
        .ok()?;
    if dict.is_empty() {
        return None;
    }
    let mut out = Directives::default();
    for (key, entry) in &dict {
        let name = key.as_str();
        let item = match entry {
            sfv::ListEntry::Item(i) => Some(&i.bare_item),
            sfv::ListEntry::InnerList(_) => None,
        };
        let value = if DELTA_DIRECTIVES.contains(&name) {
            match item {
                Some(sfv::BareItem::Integer(n)) => {
                    let n = u64::try_from(i64::from(*n)).ok()?;
                    Some(n.min(DELTA_SECONDS_MAX).to_string())
                }
                _ => return None,
            }
        } else if name == "no-cache" || name == "private" {
            // The field-name forms (a string, or a list of them) restrict as the plain form.
            match item {
                Some(sfv::BareItem::Boolean(false)) => continue,
                Some(sfv::BareItem::Boolean(true) | sfv::BareItem::String(_)) | None => None,
                Some(_) => return None,
            }
        } else if CRATE_DIRECTIVES.contains(&name) {
            match item {
                Some(sfv::BareItem::Boolean(true)) => None,
                Some(sfv::BareItem::Boolean(false)) => continue,
                _ => return None,
            }
        } else {
            // Directives we do not know are ignored, whatever their value.
            None
        };
        out.0.push((name.to_string(), value));
    }
    Some(out)
}

/// Whether a response has explicit freshness for us: `max-age` or `s-maxage` in the governing
/// directives (a valid `CDN-Cache-Control`, else `Cache-Control`), or `Expires` when
/// `Cache-Control` governs. A POST response is reusable for a GET only with it (RFC 9110
/// §9.3.3).
pub fn explicitly_fresh(headers: &HeaderMap) -> bool {
    match cdn_cache_control(headers) {
        Some(d) => d.has("max-age") || d.has("s-maxage"),
        None => {
            let d = Directives::parse(headers);
            d.has("max-age") || d.has("s-maxage") || headers.contains_key(http::header::EXPIRES)
        }
    }
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
    conditional(request) && not_modified_given(request, stored)
}

/// Whether `request` carries a validator a stored response could match (`If-None-Match` or
/// `If-Modified-Since`): without one, [`not_modified`] is false whatever is stored, so a
/// caller can skip building the stored fields.
pub fn conditional(request: &HeaderMap) -> bool {
    request.contains_key(http::header::IF_NONE_MATCH)
        || request.contains_key(http::header::IF_MODIFIED_SINCE)
}

fn not_modified_given(request: &HeaderMap, stored: &HeaderMap) -> bool {
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
        .and_then(http_date);
    // RFC 9111 §4.3.2: without Last-Modified, the stored response's Date stands in.
    let modified = stored
        .get(http::header::LAST_MODIFIED)
        .or_else(|| stored.get(http::header::DATE))
        .and_then(http_date);
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
    let cc = Directives::parse(request);
    if cc.is_empty() {
        return request
            .get(http::header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"));
    }
    cc.has("no-cache") || cc.value("max-age") == Some("0")
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

/// Request fields whose members are a set under quality values (RFC 9110 §12.4.2): their
/// order carries no meaning, so variants are keyed on them sorted.
const UNORDERED: [http::HeaderName; 3] = [
    http::header::ACCEPT,
    http::header::ACCEPT_CHARSET,
    http::header::ACCEPT_LANGUAGE,
];

/// The storage key of the variant of `key` that `request` selects: the URL, then each named
/// field's normalised value, separated by NUL so no URL can collide with a variant. Values
/// are normalised as RFC 9111 §4.1 allows: lines combined, list members trimmed, lower case,
/// whitespace collapsed (removed around `;` and `=` in `Accept`-style fields, whose members
/// are also sorted), and `Accept-Encoding` reduced to the coding we would pick.
pub fn variant_key(key: &str, names: &[http::HeaderName], request: &HeaderMap) -> String {
    let mut out = String::from(key);
    for n in names {
        out.push('\0');
        out.push_str(n.as_str());
        out.push('=');
        let unordered = UNORDERED.contains(n);
        let mut members: Vec<String> = request
            .get_all(n)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|m| {
                let words = m.split_whitespace();
                let m = if unordered {
                    words.collect::<String>()
                } else {
                    words.collect::<Vec<_>>().join(" ")
                };
                m.to_ascii_lowercase()
            })
            .filter(|m| !m.is_empty())
            .collect();
        if unordered {
            members.sort();
            members.dedup();
        }
        let value = members.join(",");
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

    /// The shortcut ([`plain_lifetime`]) gives the same decision as the crate over a grid of
    /// statuses, cache directives (both fields), other caching fields, requests and rules;
    /// and it is taken for a good share of them, so the comparison is not vacuous.
    #[test]
    fn plain_lifetime_agrees_with_the_crate() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = |t: SystemTime| httpdate::fmt_http_date(t);
        let statuses = [200, 203, 204, 206, 299, 301, 304, 404, 500];
        let cache_controls = [
            "",
            "max-age=60",
            "s-maxage=300, max-age=60",
            "max-age=60, public",
            "max-age=abc",
            "max-age=\"60\"",
            "max-age=0",
            "s-maxage=0, max-age=100",
            "max-age=60, max-age=10",
            "max-age=60, private",
            "private=\"set-cookie\", max-age=60",
            "max-age=60, no-store",
            "max-age=60, no-cache",
            "max-age=60, must-revalidate",
            "s-maxage=10, proxy-revalidate",
            "max-age=60, immutable",
            "max-age=60, stale-while-revalidate=30, stale-if-error=600",
            "public",
            "immutable",
        ];
        let targeted = [
            "",
            "max-age=120",
            "no-store",
            "max-age=30, stale-if-error=5",
        ];
        let past = date(now - Duration::from_secs(3600));
        let future = date(now + Duration::from_secs(600));
        let then = date(now - Duration::from_secs(10));
        let extras: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("expires", past.as_str())],
            vec![("expires", future.as_str()), ("date", then.as_str())],
            vec![("expires", "0")],
            vec![("date", then.as_str()), ("last-modified", past.as_str())],
            vec![("vary", "accept-encoding")],
            vec![("vary", "*")],
            vec![("vary", "accept, *")],
            vec![("set-cookie", "a=b")],
            vec![("age", "30")],
            vec![("age", "100"), ("etag", "\"v1\"")],
            vec![("pragma", "no-cache")],
        ];
        let mut requests = vec![
            get("/a"),
            policy_request(&Method::HEAD, "/a", &HeaderMap::new()),
        ];
        let mut auth = HeaderMap::new();
        auth.insert(http::header::AUTHORIZATION, "Bearer x".parse().unwrap());
        requests.push(policy_request(&Method::GET, "/a", &auth));
        let mut no_store = get("/a");
        no_store
            .headers
            .insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        requests.push(no_store);
        let rules = [
            Rules::default(),
            Rules {
                store_set_cookie: true,
                grace: Duration::from_secs(30),
                stale_on_error: Duration::from_secs(60),
            },
        ];
        let (mut compared, mut shortcut) = (0, 0);
        for status in statuses {
            let status = http::StatusCode::from_u16(status).unwrap();
            for cc in cache_controls {
                for cdn in targeted {
                    for extra in &extras {
                        let mut h = HeaderMap::new();
                        if !cc.is_empty() {
                            h.insert(http::header::CACHE_CONTROL, cc.parse().unwrap());
                        }
                        if !cdn.is_empty() {
                            h.insert(CDN_CACHE_CONTROL, cdn.parse().unwrap());
                        }
                        for (k, v) in extra {
                            h.append(*k, v.parse().unwrap());
                        }
                        for req in &requests {
                            for r in &rules {
                                let norm = Normalised::of(status, &h);
                                let cookie = h.contains_key(http::header::SET_COOKIE);
                                let vary_ok = vary_names(&h).is_some();
                                if plain_lifetime(req, &norm, cookie, vary_ok, r).is_some() {
                                    shortcut += 1;
                                }
                                let fast = evaluate_normalised(req, status, &h, now, r, true);
                                let slow = evaluate_normalised(req, status, &h, now, r, false);
                                assert_eq!(
                                    fast, slow,
                                    "{status} cc={cc:?} cdn={cdn:?} {extra:?} {:?} {:?} {r:?}",
                                    req.method, req.headers
                                );
                                compared += 1;
                            }
                        }
                    }
                }
            }
        }
        // About a tenth of the grid is plain (most of it varies what makes a head not plain).
        assert!(
            shortcut * 20 > compared,
            "shortcut taken {shortcut} times of {compared}"
        );
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

    fn cc(v: &str) -> response::Parts {
        resp(&[("cache-control", v)], 200)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn stale_windows_come_from_directives_not_a_default_grace() {
        let now = SystemTime::now();
        let d = evaluate(
            &get("/a"),
            &cc("max-age=60, stale-while-revalidate=30, stale-if-error=300"),
            now,
        );
        assert_eq!(
            (d.stale_while_revalidate, d.stale_if_error),
            (secs(30), secs(300))
        );
        // RFC 9111 §4.2.4: nothing allows serving it stale while the origin answers; only a
        // disconnected cache may (upstream unreachable or failing), for `stale_on_error`.
        let d = evaluate(&get("/a"), &cc("max-age=60"), now);
        assert_eq!(d.stale_while_revalidate, Duration::ZERO);
        assert_eq!(d.stale_if_error, Rules::default().stale_on_error);
        // The origin's stale-if-error replaces the disconnected allowance, shorter or not.
        let d = evaluate(&get("/a"), &cc("max-age=60, stale-if-error=1"), now);
        assert_eq!(d.stale_if_error, secs(1));
        let d = evaluate(&get("/a"), &cc("s-maxage=60"), now);
        assert!(
            d.stale_if_error.is_zero() && d.stale_while_revalidate.is_zero(),
            "s-maxage implies proxy-revalidate"
        );
        for forbid in ["must-revalidate", "proxy-revalidate", "no-cache"] {
            let d = evaluate(
                &get("/a"),
                &cc(&format!("max-age=60, {forbid}, stale-if-error=60")),
                now,
            );
            assert!(d.revalidate_only && d.stale_if_error.is_zero(), "{forbid}");
        }
        // Grace is the operator's opt-in.
        let graced = Rules {
            grace: secs(10),
            ..Rules::default()
        };
        let d = evaluate_with(&get("/a"), &cc("max-age=60"), now, &graced);
        assert_eq!(
            (d.stale_while_revalidate, d.stale_if_error),
            (secs(10), secs(10))
        );
        let d = evaluate_with(
            &get("/a"),
            &cc("max-age=60, stale-if-error=3"),
            now,
            &graced,
        );
        assert_eq!(
            (d.stale_while_revalidate, d.stale_if_error),
            (Duration::ZERO, secs(3))
        );
    }

    #[test]
    fn a_response_that_arrives_stale_has_used_part_of_its_windows() {
        // An upstream cache served it 3 s past its lifetime (RFC 5861 counts the windows
        // from the end of the lifetime, not from when we stored it).
        let now = SystemTime::now();
        let d = evaluate(
            &get("/a"),
            &resp(
                &[
                    (
                        "cache-control",
                        "max-age=1, stale-while-revalidate=4, stale-if-error=10",
                    ),
                    ("age", "4"),
                    ("etag", "\"a\""),
                ],
                200,
            ),
            now,
        );
        assert!(d.ttl.is_zero());
        assert_eq!(d.age, secs(4));
        assert_eq!(
            (d.stale_while_revalidate, d.stale_if_error),
            (secs(1), secs(7))
        );
    }

    #[test]
    fn directive_names_are_case_insensitive() {
        let now = SystemTime::now();
        assert!(!evaluate(&get("/a"), &cc("Max-Age=60, No-Store"), now).storable);
        assert!(!evaluate(&get("/a"), &cc("PRIVATE, max-age=60"), now).storable);
        let d = evaluate(
            &get("/a"),
            &resp(
                &[
                    ("cache-control", "max-age=600, No-Cache"),
                    ("etag", "\"1\""),
                ],
                200,
            ),
            now,
        );
        assert!(d.storable && d.revalidate_only && d.ttl.is_zero());
        assert_eq!(evaluate(&get("/a"), &cc("MAX-AGE=60"), now).ttl, secs(60));
    }

    #[test]
    fn delta_seconds_must_be_digits_in_token_form() {
        let now = SystemTime::now();
        // Invalid freshness makes the response stale (RFC 9111 §4.2.1, §5.2).
        for bad in [
            "max-age=\"3600\"",
            "max-age='3600'",
            "max-age=3600a",
            "max-age=-1",
            "max-age=36.5",
            "s-maxage=\"3600\"",
        ] {
            let d = evaluate(&get("/a"), &cc(bad), now);
            assert!(d.ttl.is_zero() && !d.storable, "{bad}: {d:?}");
        }
        assert_eq!(
            evaluate(&get("/a"), &cc("max-age=003600"), now).ttl,
            secs(3600)
        );
        assert_eq!(
            evaluate(&get("/a"), &cc("max-age=99999999999999999999"), now).ttl,
            secs(1 << 31),
            "clamped to 2^31 (RFC 9111 §1.2.2)"
        );
        // A quoted string that looks like a directive is not one, commas and all.
        for v in [
            "extension=\"max-age=3600\", max-age=1",
            "max-age=1, extension=\"max-age=3600, public\"",
        ] {
            assert_eq!(evaluate(&get("/a"), &cc(v), now).ttl, secs(1), "{v}");
        }
        let d = evaluate(
            &get("/a"),
            &cc("max-age=60, stale-while-revalidate=\"30\""),
            now,
        );
        assert!(d.stale_while_revalidate.is_zero());
    }

    #[test]
    fn age_is_the_first_integer_or_ignored() {
        let now = SystemTime::now();
        let with_age = |age: &str| {
            evaluate(
                &get("/a"),
                &resp(&[("cache-control", "max-age=600"), ("age", age)], 200),
                now,
            )
        };
        for ignored in ["1a", "abc", "-7200", "7200.0", ""] {
            let d = with_age(ignored);
            assert_eq!((d.age, d.ttl), (Duration::ZERO, secs(600)), "{ignored:?}");
        }
        // A list: the first member counts (RFC 9111 §5.1).
        let d = with_age("700, 0");
        assert_eq!(d.age, secs(700));
        assert!(d.ttl.is_zero() && !d.storable);
        assert_eq!(with_age("100").ttl, secs(500));
    }

    #[test]
    fn expires_must_be_an_http_date_or_it_has_passed() {
        let now = SystemTime::now();
        let expires = |v: &str| {
            evaluate(
                &get("/a"),
                &resp(
                    &[("expires", v), ("date", &httpdate::fmt_http_date(now))],
                    200,
                ),
                now,
            )
        };
        for invalid in [
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "0",
            "soon",
        ] {
            let d = expires(invalid);
            assert!(d.ttl.is_zero() && !d.storable, "{invalid}");
        }
        // The three forms of RFC 9110 §5.6.7.
        for valid in [
            "Thu, 18 Aug 2050 02:01:18 GMT",
            "Thursday, 18-Aug-50 02:01:18 GMT",
            "Thu Aug 18 02:01:18 2050",
        ] {
            let d = expires(valid);
            assert!(d.storable && d.ttl > secs(86_400 * 365), "{valid}: {d:?}");
        }
        // Measured from Date, not from when we received it.
        let d = evaluate(
            &get("/a"),
            &resp(
                &[
                    ("expires", "Sun, 06 Nov 1994 08:49:47 GMT"),
                    ("date", "Sunday, 06-Nov-94 08:49:37 GMT"),
                ],
                200,
            ),
            now,
        );
        assert_eq!(d.ttl, secs(10));
    }

    #[test]
    fn any_final_status_with_explicit_freshness_is_stored() {
        let now = SystemTime::now();
        for status in [299, 400, 403, 499, 500, 502, 503, 504, 599] {
            let d = evaluate(
                &get("/a"),
                &resp(&[("cache-control", "max-age=60")], status),
                now,
            );
            assert!(d.storable && d.ttl == secs(60), "{status} with max-age");
            let later = httpdate::fmt_http_date(now + secs(60));
            let d = evaluate(&get("/a"), &resp(&[("expires", &later)], status), now);
            assert!(d.storable, "{status} with Expires");
            // No heuristics for them, and no-store still wins.
            let d = evaluate(
                &get("/a"),
                &resp(
                    &[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")],
                    status,
                ),
                now,
            );
            assert!(!d.storable, "{status} without explicit freshness");
            let d = evaluate(
                &get("/a"),
                &resp(&[("cache-control", "max-age=60, no-store")], status),
                now,
            );
            assert!(!d.storable, "{status} no-store");
        }
        // Partial content is never stored: we store whole objects.
        let d = evaluate(
            &get("/a"),
            &resp(&[("cache-control", "max-age=60")], 206),
            now,
        );
        assert!(!d.storable);
    }

    #[test]
    fn an_invalid_cdn_cache_control_is_ignored_as_a_whole() {
        let now = SystemTime::now();
        let both = |cdn: &str, cc: &str| {
            evaluate(
                &get("/a"),
                &resp(&[("cdn-cache-control", cdn), ("cache-control", cc)], 200),
                now,
            )
        };
        // Not an RFC 8941 dictionary, or a known directive of the wrong type: Cache-Control.
        for invalid in [
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "MaX-aGe=3600",
            "max-age =100",
            "max-age= 100",
            "max-age=-5",
            "max-age=1.5",
            "no-store=1",
            "",
        ] {
            assert!(!both(invalid, "no-store").storable, "{invalid:?}");
            assert_eq!(both(invalid, "max-age=7").ttl, secs(7), "{invalid:?}");
        }
        // Valid: it governs, Cache-Control and Expires are ignored.
        assert_eq!(both("foobar, max-age=3600", "no-store").ttl, secs(3600));
        assert_eq!(both("max-age=99999999999", "max-age=1").ttl, secs(1 << 31));
        assert_eq!(both("max-age=3600;foo=bar", "max-age=1").ttl, secs(3600));
        assert!(!both("private", "max-age=10000").storable);
        assert!(!both("no-store", "max-age=10000").storable);
        assert!(!both("no-cache=\"set-cookie\"", "max-age=10000").storable);
        assert!(both("no-store=?0, max-age=60", "no-store").storable);
        let d = evaluate(
            &get("/a"),
            &resp(
                &[
                    ("cdn-cache-control", "max-age=3600"),
                    ("expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ],
                200,
            ),
            now,
        );
        assert_eq!(d.ttl, secs(3600));
        let d = evaluate(
            &get("/a"),
            &resp(
                &[("cdn-cache-control", "max-age=3600"), ("age", "7200")],
                200,
            ),
            now,
        );
        assert!(
            !d.storable,
            "Age counts against CDN-Cache-Control's max-age too"
        );
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
    fn variants_match_whatever_the_order_case_and_spaces_rfc_9111_4_1() {
        let names = [
            http::header::ACCEPT_LANGUAGE,
            http::header::HeaderName::from_static("x-v"),
        ];
        let req = |lang: &[&str], x: &str| {
            let mut h = HeaderMap::new();
            for l in lang {
                h.append("accept-language", l.parse().unwrap());
            }
            h.insert("x-v", x.parse().unwrap());
            variant_key("/k", &names, &h)
        };
        let base = req(&["en-US, fr;q=0.5"], "a b");
        assert_eq!(req(&["fr; q=0.5,  EN-us"], "a  b"), base);
        assert_eq!(req(&["fr;q=0.5", "en-us"], "A B"), base);
        assert_ne!(req(&["fr;q=0.6, en-us"], "a b"), base);
        assert_ne!(
            req(&["en-US, fr;q=0.5"], "b a"),
            base,
            "other fields keep their order"
        );
    }

    #[test]
    fn if_modified_since_uses_date_when_there_is_no_last_modified() {
        let stored = resp(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")], 200).headers;
        let ims = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("if-modified-since", v.parse().unwrap());
            h
        };
        assert!(not_modified(&ims("Sun, 06 Nov 1994 08:49:37 GMT"), &stored));
        assert!(!not_modified(
            &ims("Sat, 05 Nov 1994 08:49:37 GMT"),
            &stored
        ));
    }

    #[test]
    fn pragma_counts_only_without_cache_control() {
        let now = SystemTime::now();
        let later = httpdate::fmt_http_date(now + secs(600));
        let date = httpdate::fmt_http_date(now);
        let with_cc = evaluate(
            &get("/a"),
            &resp(
                &[
                    ("cache-control", "community=\"x\""),
                    ("pragma", "no-cache"),
                    ("expires", &later),
                    ("date", &date),
                ],
                200,
            ),
            now,
        );
        assert!(with_cc.storable && with_cc.ttl == secs(600), "{with_cc:?}");
        let without = evaluate(
            &get("/a"),
            &resp(
                &[("pragma", "no-cache"), ("expires", &later), ("date", &date)],
                200,
            ),
            now,
        );
        assert!(without.ttl.is_zero());
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

    #[test]
    fn a_field_of_many_directives_is_bounded_and_still_honours_no_store_at_its_end() {
        let mut h = HeaderMap::new();
        let mut v: String = (0..5000).map(|i| format!("x{i}, ")).collect();
        v.push_str("no-store, max-age=60");
        h.insert(http::header::CACHE_CONTROL, v.parse().unwrap());
        let d = Directives::parse(&h);
        assert!(d.has("no-store"));
        assert_eq!(d.value("max-age"), Some("60"));
        assert!(d.0.len() <= MAX_DIRECTIVES + 2, "{} kept", d.0.len());
    }
}
