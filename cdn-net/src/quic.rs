//! Frame I/O over quinn streams: the thin async shell around `cdn_proto::Frame`.

use bytes::{Bytes, BytesMut};
use cdn_proto::frame::{encode_data_header, HEADER_LEN, MAX_DATA};
use cdn_proto::{DecodeError, Frame};

/// A stream failed or carried something that is not a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Reading failed (reset, connection lost).
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed (stopped, connection lost).
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream was already finished.
    #[error("stream closed")]
    Closed(#[from] quinn::ClosedStream),
    /// The peer sent bytes that are not a valid frame.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// The stream ended inside a frame.
    #[error("stream ended mid-frame")]
    Truncated,
    /// Nothing could be read or written for [`STREAM_IDLE`]: the peer hangs.
    #[error("stream idle for {0:?}")]
    Idle(std::time::Duration),
}

/// Longest a stream may go without a byte read or a write accepted before it counts as hung:
/// above every legitimate wait (a node's origin response timeout is 30 s, and it says
/// `Pending` before it starts waiting).
pub const STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// A stream's read buffer: a 16 KiB response arrives in a few chunks without regrowing it.
const READ_BUFFER: usize = 16 * 1024;

/// Longest a requester keeps a request stream idle for its next request
/// ([`crate::peers::Exchange::release`]). The side that answers waits [`STREAM_IDLE`] for the
/// next request before it closes the stream, four times longer, so a stream taken from the
/// pool is one the answering side still reads.
pub const KEEP_IDLE: std::time::Duration = std::time::Duration::from_secs(15);

/// Reads frames from a receive stream.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    idle: std::time::Duration,
}

impl FrameReader {
    /// Wraps a receive stream.
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            buf: BytesMut::with_capacity(READ_BUFFER),
            idle: STREAM_IDLE,
        }
    }

    /// Sets how long a read may wait for the next bytes before failing with `Idle`.
    pub fn with_idle(mut self, idle: std::time::Duration) -> Self {
        self.idle = idle;
        self
    }

    /// The next frame; `Ok(None)` when the peer finished the stream cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, WireError> {
        loop {
            if let Some(f) = Frame::decode(&mut self.buf)? {
                return Ok(Some(f));
            }
            if self.buf.capacity() == 0 {
                self.buf.reserve(READ_BUFFER);
            }
            let chunk = within(self.idle, self.recv.read_chunk(256 * 1024, true)).await??;
            match chunk {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(WireError::Truncated),
            }
        }
    }

    /// Whether every byte received so far was decoded: a stream between two responses.
    pub fn is_drained(&self) -> bool {
        self.buf.is_empty()
    }

    /// Gives the read buffer back while the stream waits for its next request (taken again
    /// by the next read): a stream kept open between requests holds no buffer meanwhile.
    pub fn release_buffer(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Tells the peer to stop sending (e.g. the request was abandoned).
    pub fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(code.into());
    }
}

/// Writes frames already encoded.
pub async fn send_bytes(send: &mut quinn::SendStream, frames: &Bytes) -> Result<(), WireError> {
    within(STREAM_IDLE, send.write_chunk(frames.clone())).await??;
    Ok(())
}

/// Writes one non-data frame.
pub async fn send_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), WireError> {
    within(STREAM_IDLE, send.write_chunk(frame.to_bytes())).await??;
    Ok(())
}

/// `op`, failing with [`WireError::Idle`] when it has not completed within `idle`. The timer
/// is armed only once `op` has to wait: most writes are accepted at once and many reads find
/// their bytes already there, and a timer per frame (a clock read and a timer-wheel entry)
/// showed in the miss path's profile.
pub async fn within<F: std::future::Future>(
    idle: std::time::Duration,
    op: F,
) -> Result<F::Output, WireError> {
    let mut op = std::pin::pin!(op);
    if let Some(done) = futures::FutureExt::now_or_never(op.as_mut()) {
        return Ok(done);
    }
    tokio::time::timeout(idle, op)
        .await
        .map_err(|_| WireError::Idle(idle))
}

/// Writes `data` as `Data` frames without copying it.
pub async fn send_data(send: &mut quinn::SendStream, mut data: Bytes) -> Result<(), WireError> {
    while !data.is_empty() {
        let piece = data.split_to(data.len().min(MAX_DATA));
        let mut header = BytesMut::with_capacity(HEADER_LEN);
        encode_data_header(piece.len(), &mut header);
        let mut chunks = [header.freeze(), piece];
        // A peer that stops granting flow-control credit must not hold the writer forever.
        within(STREAM_IDLE, send.write_all_chunks(&mut chunks)).await??;
    }
    Ok(())
}

/// Stream error codes sent with RESET_STREAM / STOP_SENDING.
pub mod codes {
    /// The response could not be completed; whatever arrived must be discarded.
    pub const ABORTED: u32 = 1;
    /// The requester no longer wants the response.
    pub const CANCELLED: u32 = 2;
    /// The peer broke the protocol.
    pub const PROTOCOL: u32 = 3;
}

/// Header fields as frame fields.
pub fn fields_from_headers(h: &http::HeaderMap) -> Vec<cdn_proto::frame::Field> {
    h.iter()
        .filter(|(_, v)| v.len() <= u16::MAX as usize)
        .map(|(k, v)| (k.as_str().to_string(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

/// Frame fields as a header map; a field that is not valid HTTP is a protocol error.
pub fn headers_from_fields(
    fields: Vec<cdn_proto::frame::Field>,
) -> Result<http::HeaderMap, DecodeError> {
    let mut h = http::HeaderMap::with_capacity(fields.len());
    for (k, v) in fields {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| DecodeError::Malformed("invalid header name"))?;
        let value = http::HeaderValue::from_maybe_shared(v)
            .map_err(|_| DecodeError::Malformed("invalid header value"))?;
        h.append(name, value);
    }
    Ok(h)
}

/// Responses up to this size go out ahead of larger ones on a connection.
pub const SMALL_RESPONSE: u64 = 64 << 10;

/// Orders a response's stream on its connection by size: small ones (up to
/// [`SMALL_RESPONSE`]) first, then up to 1 MiB, then larger or unknown ones. Send fairness is
/// off on member links (a cache serves whole objects), so without this a small response
/// written after the queued bodies of large downloads waits for all of them to go out: a
/// storm of large objects would hold every ordinary response sharing the connection.
pub fn prioritise(send: &quinn::SendStream, len: Option<u64>) {
    let priority = match len {
        Some(n) if n <= SMALL_RESPONSE => 2,
        Some(n) if n <= 1 << 20 => 1,
        _ => 0,
    };
    // Fails only on a stream already closed, which the write that follows reports.
    let _ = send.set_priority(priority);
}

/// Sends a whole response on a stream: `head` (an encoded `ResponseHead`, with room to
/// spare for the frame headers that follow), `body` as `Data` frames,
/// `End`, at the priority of its size ([`prioritise`]). Returns the body bytes sent. The stream
/// stays open: a request stream carries the requester's next request after `End`.
/// What the head and chunks are made of (a stored entry, say) is the caller's business: this
/// layer knows frames, not the store.
pub async fn send_whole(
    send: &mut quinn::SendStream,
    head: BytesMut,
    body: &[Bytes],
) -> Result<u64, WireError> {
    let len: u64 = body.iter().map(|c| c.len() as u64).sum();
    prioritise(send, Some(len));
    // One write for the whole response when it is small (the head, data and end frames in
    // one call, the body's buffers passed along, not copied): each write takes the
    // connection's lock and wakes its driver, and a response written in three went out in
    // more packets.
    let mut out = head;
    if len <= SMALL_RESPONSE {
        // The frame headers around the body's own buffers (not copied): one call.
        let mut pieces = Vec::with_capacity(2 * body.len() + 2);
        for chunk in body.iter().filter(|c| !c.is_empty()) {
            encode_data_header(chunk.len(), &mut out);
            pieces.push(out.split().freeze());
            pieces.push(chunk.clone());
        }
        Frame::End { len }.encode(&mut out);
        pieces.push(out.freeze());
        within(STREAM_IDLE, send.write_all_chunks(&mut pieces)).await??;
    } else {
        within(STREAM_IDLE, send.write_chunk(out.freeze())).await??;
        for chunk in body {
            send_data(send, chunk.clone()).await?;
        }
        send_frame(send, &Frame::End { len }).await?;
    }
    Ok(len)
}

/// Reads a body (the `Data` frames up to `End`), at most `max` bytes: a pushed object, or a
/// whole response fetched from a node.
pub async fn read_body(reader: &mut FrameReader, max: u64) -> Result<Vec<Bytes>, String> {
    let mut body = Vec::new();
    let mut got = 0u64;
    loop {
        match reader.next().await.map_err(|e| e.to_string())? {
            Some(Frame::Data(d)) => {
                got += d.len() as u64;
                if got > max {
                    return Err(format!("pushed body over {max} bytes"));
                }
                body.push(d);
            }
            Some(Frame::End { len }) if len == got => return Ok(body),
            Some(Frame::End { len }) => return Err(format!("End says {len} bytes, {got} arrived")),
            Some(other) => return Err(format!("unexpected frame {}", other.name())),
            None => return Err("stream ended before End".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A QUIC server and client on loopback with member transport for `max_streams`
    /// streams, and the server's address.
    fn endpoints(max_streams: u32) -> (quinn::Endpoint, quinn::Endpoint, std::net::SocketAddr) {
        crate::tls::install_crypto_provider();
        let tls = crate::tls::TlsMaterial::generate().unwrap();
        let t = crate::tls::transport(max_streams, Duration::from_secs(5));
        let server = quinn::Endpoint::server(
            tls.quic_server(t.clone()).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(tls.quic_client(t).unwrap());
        let addr = server.local_addr().unwrap();
        (server, client, addr)
    }

    /// Eight large responses are written on one connection, then a small one: the small one
    /// arrives while most of the large ones' bytes are still to come (without priorities it
    /// waited for all 8 MiB ahead of it).
    #[tokio::test]
    async fn a_small_response_overtakes_large_ones_queued_before_it() {
        const LARGE: usize = 1 << 20;
        let (server, client, addr) = endpoints(16);
        tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            // The client opens nine streams; each says which it is with its first byte.
            let mut large = Vec::new();
            let mut small = None;
            for _ in 0..9 {
                let (send, mut recv) = conn.accept_bi().await.unwrap();
                let mut which = [0u8; 1];
                recv.read_exact(&mut which).await.unwrap();
                if which[0] == b'L' {
                    large.push(send);
                } else {
                    small = Some(send);
                }
            }
            for send in &mut large {
                prioritise(send, Some(LARGE as u64 * 4));
                send.write_all(&vec![7u8; LARGE]).await.unwrap();
                send.finish().unwrap();
            }
            let mut send = small.unwrap();
            prioritise(&send, Some(1024));
            send.write_all(&[1u8; 1024]).await.unwrap();
            send.finish().unwrap();
            conn.closed().await;
        });
        let conn = client
            .connect(addr, crate::tls::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut readers = Vec::new();
        for _ in 0..8 {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(b"L").await.unwrap();
            let received = received.clone();
            readers.push(tokio::spawn(async move {
                while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.unwrap() {
                    received.fetch_add(chunk.bytes.len(), std::sync::atomic::Ordering::SeqCst);
                }
            }));
        }
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"S").await.unwrap();
        let small = recv.read_to_end(4096).await.unwrap();
        let large_by_then = received.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(small.len(), 1024);
        assert!(
            large_by_then < 4 * LARGE,
            "{large_by_then} of {} large bytes had arrived before the small response",
            8 * LARGE
        );
        for r in readers {
            r.await.unwrap();
        }
        assert_eq!(
            received.load(std::sync::atomic::Ordering::SeqCst),
            8 * LARGE
        );
    }

    #[tokio::test]
    async fn a_stream_that_stalls_mid_frame_fails_as_idle() {
        let (server, client, addr) = endpoints(8);
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (_send, recv) = conn.accept_bi().await.unwrap();
            let got = FrameReader::new(recv)
                .with_idle(Duration::from_millis(100))
                .next()
                .await;
            (got, server)
        });
        let conn = client
            .connect(addr, crate::tls::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        // The first bytes of a frame, then nothing (the stream stays open).
        let frame = Frame::MembersRequest.to_bytes();
        send.write_all(&frame[..1]).await.unwrap();
        let (got, _server) = accept.await.unwrap();
        assert!(
            matches!(got, Err(WireError::Idle(d)) if d == Duration::from_millis(100)),
            "{got:?}"
        );
    }
}
