//! The body type every service and client here uses, and the header plumbing of a proxy:
//! hop-by-hop fields (RFC 9110 §7.6.1) are never forwarded.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Boxed error carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every service here returns and every client here sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body of one buffer.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A response with a plain-text body (errors, admin answers).
pub fn text(status: http::StatusCode, msg: impl Into<String>) -> http::Response<Body> {
    let mut msg = msg.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    let mut r = http::Response::new(full(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Header fields that describe one connection, never forwarded (RFC 9110 §7.6.1).
pub const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop fields, including those named in `Connection`, and `proxy-connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for n in connection_named(headers) {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
    headers.remove("proxy-connection");
}

/// The fields a message's `Connection` names (hop-by-hop for that message); empty, with no
/// allocation, when it has none.
pub fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Whether `name` is hop-by-hop in a message whose `Connection` names `named`
/// ([`connection_named`]): what [`strip_hop_by_hop`] removes, asked field by field by a
/// caller that builds a new map instead of editing one.
pub fn is_hop_by_hop(name: &HeaderName, named: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str() == "proxy-connection" || named.contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_fields_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("content-type", "text/plain".parse().unwrap());
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "b=2".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3);
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
        assert!(h.get("x-private").is_none());
    }
}
