//! The one piece of frame I/O that needs the store: sending a stored entry. The frame layer
//! (`cdn_net::quic`) sends a head and chunks it is given; turning an [`Entry`] into them
//! happens here, above it.

use bytes::Bytes;
use cdn_net::quic::{send_whole, WireError};
use cdn_proto::Frame;
use cdn_store::Entry;

/// Sends a stored entry on a stream: head (with `Age` at `now`), body, `End`, finish.
pub async fn send_entry(
    send: &mut quinn::SendStream,
    entry: &Entry,
    cache: cdn_proto::CacheStatus,
    node: &str,
    now: std::time::SystemTime,
) -> Result<u64, WireError> {
    let mut headers = entry.fields().wire();
    headers.push((
        "age".into(),
        Bytes::from(entry.age(now).as_secs().to_string()),
    ));
    let head = Frame::ResponseHead {
        status: entry.status().as_u16(),
        cache,
        node: node.to_string(),
        content_length: Some(entry.body_len()),
        headers,
    };
    send_whole(send, &head, &entry.body()).await
}
