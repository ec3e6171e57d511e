//! Byte ranges (RFC 9110 §14): which part of a stored 200 a `Range` request gets.
//!
//! Pure decisions, tested without sockets. One range per request is served as 206; several
//! ranges, or a syntax we do not parse, get the whole 200 (a server may ignore `Range`).

use bytes::Bytes;
use http::HeaderMap;

/// What to answer a request for a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole body, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416, with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decides how to answer `request` for a stored 200 with `stored` fields and a body of `len`.
pub fn decide(request: &HeaderMap, stored: &HeaderMap, len: u64) -> RangeAnswer {
    let Some(range) = request
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return RangeAnswer::Full;
    };
    if let Some(if_range) = request
        .get(http::header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        if !if_range_matches(if_range.trim(), stored) {
            return RangeAnswer::Full;
        }
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(b) {
            None => RangeAnswer::Full,
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        },
        // bytes=A- and bytes=A-B.
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeAnswer::Full;
            };
            let end = if b.is_empty() {
                None
            } else {
                match parse(b) {
                    Some(e) if e >= start => Some(e),
                    _ => return RangeAnswer::Full,
                }
            };
            if start >= len {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Partial {
                start,
                end: end.unwrap_or(len - 1).min(len - 1),
            }
        }
        (true, true) => RangeAnswer::Full,
    }
}

/// `If-Range`: an entity tag must match strongly; a date must equal `Last-Modified`.
fn if_range_matches(if_range: &str, stored: &HeaderMap) -> bool {
    if if_range.starts_with('"') || if_range.starts_with("W/") {
        let etag = stored.get(http::header::ETAG).and_then(|v| v.to_str().ok());
        return !if_range.starts_with("W/")
            && etag.is_some_and(|e| !e.starts_with("W/") && e == if_range);
    }
    let lm = stored
        .get(http::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok());
    match (
        httpdate::parse_http_date(if_range),
        lm.and_then(|l| httpdate::parse_http_date(l).ok()),
    ) {
        (Ok(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The pieces of `chunks` covering bytes `start..=end`, without copying.
pub fn slice(chunks: &[Bytes], start: u64, end: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    for c in chunks {
        let (c_start, c_end) = (pos, pos + c.len() as u64);
        pos = c_end;
        if c_end <= start || c_start > end {
            continue;
        }
        let from = start.saturating_sub(c_start) as usize;
        let to = ((end + 1).min(c_end) - c_start) as usize;
        out.push(c.slice(from..to));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(range: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("range", range.parse().unwrap());
        h
    }

    #[test]
    fn single_ranges() {
        let s = HeaderMap::new();
        assert_eq!(
            decide(&req("bytes=0-9"), &s, 100),
            RangeAnswer::Partial { start: 0, end: 9 }
        );
        assert_eq!(
            decide(&req("bytes=90-"), &s, 100),
            RangeAnswer::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            decide(&req("bytes=90-500"), &s, 100),
            RangeAnswer::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            decide(&req("bytes=-10"), &s, 100),
            RangeAnswer::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            decide(&req("bytes=-500"), &s, 100),
            RangeAnswer::Partial { start: 0, end: 99 }
        );
        assert_eq!(
            decide(&req("bytes=100-"), &s, 100),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(decide(&req("bytes=0-0"), &s, 0), RangeAnswer::Unsatisfiable);
        assert_eq!(
            decide(&req("bytes=-0"), &s, 100),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(decide(&req("bytes=0-1,5-6"), &s, 100), RangeAnswer::Full);
        assert_eq!(decide(&req("bytes=9-3"), &s, 100), RangeAnswer::Full);
        assert_eq!(decide(&req("items=0-3"), &s, 100), RangeAnswer::Full);
        assert_eq!(decide(&HeaderMap::new(), &s, 100), RangeAnswer::Full);
    }

    #[test]
    fn if_range_needs_a_strong_match_or_the_exact_date() {
        let mut stored = HeaderMap::new();
        stored.insert("etag", "\"v1\"".parse().unwrap());
        stored.insert(
            "last-modified",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        let mut r = req("bytes=0-1");
        r.insert("if-range", "\"v1\"".parse().unwrap());
        assert_eq!(
            decide(&r, &stored, 10),
            RangeAnswer::Partial { start: 0, end: 1 }
        );
        r.insert("if-range", "\"v2\"".parse().unwrap());
        assert_eq!(decide(&r, &stored, 10), RangeAnswer::Full);
        r.insert("if-range", "W/\"v1\"".parse().unwrap());
        assert_eq!(decide(&r, &stored, 10), RangeAnswer::Full);
        r.insert("if-range", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        assert_eq!(
            decide(&r, &stored, 10),
            RangeAnswer::Partial { start: 0, end: 1 }
        );
        r.insert("if-range", "Mon, 07 Nov 1994 08:49:37 GMT".parse().unwrap());
        assert_eq!(decide(&r, &stored, 10), RangeAnswer::Full);
    }

    #[test]
    fn slices_cross_chunk_boundaries_without_copying() {
        let chunks = vec![
            Bytes::from_static(b"abcd"),
            Bytes::from_static(b"efgh"),
            Bytes::from_static(b"ij"),
        ];
        let join = |v: Vec<Bytes>| {
            v.iter()
                .flat_map(|b| b.iter().copied())
                .collect::<Vec<u8>>()
        };
        assert_eq!(join(slice(&chunks, 2, 5)), b"cdef");
        assert_eq!(join(slice(&chunks, 0, 9)), b"abcdefghij");
        assert_eq!(join(slice(&chunks, 8, 9)), b"ij");
        assert_eq!(join(slice(&chunks, 4, 4)), b"e");
    }
}
