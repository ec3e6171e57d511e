//! The one piece of frame I/O that needs the store: sending a stored entry. The frame layer
//! (`cdn_net::quic`) sends a head and chunks it is given; turning an [`Entry`] into them
//! happens here, above it.

use bytes::BytesMut;
use cdn_net::quic::{send_whole, WireError};
use cdn_store::Entry;

/// Sends a stored entry on a stream: head (with `Age` at `now`), body, `End`. The head is
/// encoded straight from the entry's packed fields, with no field copied into a frame first
/// (building and then encoding an owned `ResponseHead` was an eighth of a node's hit).
pub async fn send_entry(
    send: &mut quinn::SendStream,
    entry: &Entry,
    cache: cdn_proto::CacheStatus,
    node: &str,
    now: std::time::SystemTime,
) -> Result<u64, WireError> {
    let age = entry.age(now).as_secs().to_string();
    let mut head = BytesMut::with_capacity(512);
    cdn_proto::frame::encode_response_head(
        &mut head,
        entry.status().as_u16(),
        cache,
        node,
        Some(entry.body_len()),
        entry
            .fields()
            .iter()
            .chain(std::iter::once(("age", age.as_bytes().into()))),
    );
    send_whole(send, head, &entry.body()).await
}
