//! The QUIC side of a node: accept connections; requests on bidirectional streams, one at a
//! time on each, a stream kept open between them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cdn_core::fill::{FillErrorKind, FlightReader, Head};
use cdn_core::quic::send_entry;
use cdn_core::read_path::Lookup;
use cdn_http::policy;
use cdn_net::quic::{
    codes, fields_from_headers, headers_from_fields, prioritise, send_data, send_frame,
    FrameReader, WireError,
};
use cdn_proto::{CacheStatus, ErrorCode, Frame, Role};
use tokio_util::sync::CancellationToken;

use crate::{Counter, Node};

/// Time an edge has to send its request frame after opening a stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown`, then closes the endpoint.
pub async fn run(node: Arc<Node>, endpoint: quinn::Endpoint, shutdown: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let node = node.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => serve_connection(node, conn, shutdown).await,
                Err(e) => tracing::debug!(error = %e, "handshake failed"),
            }
        });
    }
    // Leaving on purpose (`NodeHandle::stop`) or dropped in a fault test (`abort`).
    if node.leaving.load(std::sync::atomic::Ordering::SeqCst) {
        endpoint.close(
            cdn_net::peers::close::LEAVING.into(),
            cdn_net::peers::close::LEAVING_REASON,
        );
    } else {
        endpoint.close(0u32.into(), b"node stopped");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

async fn serve_connection(node: Arc<Node>, conn: quinn::Connection, shutdown: CancellationToken) {
    let peer = conn.remote_address();
    // Gossip arrives as datagrams on the links other nodes opened to us.
    let (n, c) = (node.clone(), conn.clone());
    tokio::spawn(async move {
        while let Ok(d) = c.read_datagram().await {
            n.membership.input(d);
        }
    });
    loop {
        let (send, recv) = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection closed");
                    return;
                }
            },
        };
        let node = node.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_stream(&node, &conn, send, recv).await {
                node.counters.inc(Counter::Errors);
                tracing::debug!(%peer, error = %e, "stream failed");
            }
        });
    }
}

async fn serve_stream(
    node: &Arc<Node>,
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), WireError> {
    let mut reader = FrameReader::new(recv);
    let first = match tokio::time::timeout(REQUEST_TIMEOUT, reader.next()).await {
        Ok(r) => r,
        Err(_) => {
            let _ = send.reset(codes::PROTOCOL.into());
            return Ok(());
        }
    };
    match first {
        Ok(Some(first @ Frame::Request { .. })) => {
            serve_requests(node, first, &mut send, &mut reader).await
        }
        Ok(Some(Frame::MembersRequest)) => send_members(node, &mut send).await,
        Ok(Some(Frame::StatusRequest { linked })) => {
            let docs = node.status_reports(linked).await;
            cdn_net::status::answer(&mut send, &docs).await
        }
        Ok(Some(Frame::Push {
            id,
            key,
            status,
            headers,
            forward,
        })) => {
            let body = match cdn_net::quic::read_body(&mut reader, node.config.member.max_object())
                .await
            {
                Ok(b) => b,
                Err(e) => return refuse(&mut send, ErrorCode::BadRequest, e).await,
            };
            let obj = match cdn_core::push::PushObject::from_frame(key, status, headers, body) {
                Ok(o) => o,
                Err(e) => return refuse(&mut send, ErrorCode::BadRequest, e).await,
            };
            if let Err(e) = node.store_pushed(&obj).await {
                return refuse(&mut send, ErrorCode::BadRequest, e).await;
            }
            let mut report = cdn_net::peers::PurgeReport {
                acked: vec![node.config.member.id.clone()],
                ..Default::default()
            };
            if forward {
                let deadline = node.config.member.purge_timeout;
                node.links
                    .push_to_edges(&obj, id, deadline, &mut report)
                    .await;
            }
            answer(
                &mut send,
                &[Frame::Ack {
                    acked: report.acked,
                    missing: report.missing,
                }],
            )
            .await
        }
        Ok(Some(Frame::Hello {
            id,
            role,
            region,
            addr,
            resume,
        })) => {
            match role {
                // Register first: a purge numbered from here on is sent live, one numbered
                // before is in the replay (both is harmless).
                Role::Edge => node.links.register_edge(id, conn.clone()),
                // Nodes become members through gossip, not by connecting.
                Role::Node => tracing::debug!(%id, %addr, %region, "node linked"),
            }
            let members = node.peers.roster().as_ref().clone();
            answer(
                &mut send,
                &[Frame::Members { members }, node.links.resume(resume)],
            )
            .await
        }
        Ok(Some(Frame::Purge {
            id, forward, inv, ..
        })) => {
            let report = node.receive_purge(id, forward, &inv).await;
            answer(
                &mut send,
                &[Frame::Ack {
                    acked: report.acked,
                    missing: report.missing,
                }],
            )
            .await
        }
        Ok(Some(other)) => {
            refuse(
                &mut send,
                ErrorCode::BadRequest,
                format!("unexpected first frame {}", other.name()),
            )
            .await
        }
        Ok(None) => Ok(()),
        Err(e) => {
            let _ = send.reset(codes::PROTOCOL.into());
            Err(e)
        }
    }
}

/// Whether a stream is still open after an answer: `End` leaves it open for the next request,
/// anything else (an error, a fault injected) finishes or resets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Open,
    Closed,
}

/// Serves `first` (a `Request`) and each request the edge sends after it on the same stream,
/// one at a time: a stream stays open after `End` (see `cdn_proto::frame`) until the edge
/// finishes its side, an answer closes it, or no request comes for `STREAM_IDLE`.
async fn serve_requests(
    node: &Arc<Node>,
    first: Frame,
    send: &mut quinn::SendStream,
    reader: &mut FrameReader,
) -> Result<(), WireError> {
    node.counters.inc(Counter::RequestStreams);
    let mut next = first;
    loop {
        let Frame::Request {
            id, path, headers, ..
        } = next
        else {
            return refuse(
                send,
                ErrorCode::BadRequest,
                format!("unexpected frame {} after a response", next.name()),
            )
            .await;
        };
        if serve_one(node, id, &path, headers, send).await? == Stream::Closed {
            return Ok(());
        }
        match node.after_answer() {
            crate::AfterAnswer::Keep => {}
            crate::AfterAnswer::FinishAndStop => {
                let _ = send.finish();
                return Ok(());
            }
            crate::AfterAnswer::Finish => {
                let _ = send.finish();
                while let Ok(Some(_)) = reader.next().await {}
                return Ok(());
            }
        }
        reader.release_buffer();
        next = match reader.next().await {
            Ok(Some(f)) => f,
            // The edge finished its side, or kept the stream idle longer than it may.
            Ok(None) | Err(WireError::Idle(_)) => {
                reader.stop(0);
                let _ = send.finish();
                return Ok(());
            }
            Err(e) => {
                let _ = send.reset(codes::PROTOCOL.into());
                return Err(e);
            }
        };
    }
}

/// One GET from an edge.
async fn serve_one(
    node: &Arc<Node>,
    id: u64,
    path: &str,
    fields: Vec<cdn_proto::frame::Field>,
    send: &mut quinn::SendStream,
) -> Result<Stream, WireError> {
    node.counters.inc(Counter::Requests);
    let _inflight = crate::InFlight::enter(node);
    let headers = match headers_from_fields(fields) {
        Ok(h) => h,
        Err(e) => return closed(refuse(send, ErrorCode::BadRequest, e.to_string()).await),
    };
    if !path.starts_with('/') {
        return closed(
            refuse(
                send,
                ErrorCode::BadRequest,
                format!("request target `{path}` must start with /"),
            )
            .await,
        );
    }
    while node.is_stalled() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rid = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::debug!(id, request_id = rid, %path, "request");
    serve_request(node, path, &headers, send).await
}

fn closed(r: Result<(), WireError>) -> Result<Stream, WireError> {
    r.map(|()| Stream::Closed)
}

/// Sends `frames` and finishes the stream: every short answer on a stream ends this way.
async fn answer(send: &mut quinn::SendStream, frames: &[Frame]) -> Result<(), WireError> {
    for f in frames {
        send_frame(send, f).await?;
    }
    send.finish()?;
    Ok(())
}

async fn send_members(node: &Node, send: &mut quinn::SendStream) -> Result<(), WireError> {
    let members = node.peers.roster().as_ref().clone();
    answer(send, &[Frame::Members { members }]).await
}

async fn refuse(
    send: &mut quinn::SendStream,
    code: ErrorCode,
    message: String,
) -> Result<(), WireError> {
    answer(send, &[Frame::Error { code, message }]).await
}

/// A GET from an edge: the read path (store, then a coalesced fill), answered as frames.
async fn serve_request(
    node: &Arc<Node>,
    key: &str,
    headers: &http::HeaderMap,
    send: &mut quinn::SendStream,
) -> Result<Stream, WireError> {
    let now = SystemTime::now();
    let stale = match node.reads.lookup(key, headers, now).await {
        Lookup::Stored { entry, outcome } => {
            return respond_entry(node, send, &entry, outcome, headers, now).await
        }
        Lookup::NotCached => {
            // A hedge (or a client's only-if-cached): never start an origin fill for it.
            return closed(
                refuse(
                    send,
                    ErrorCode::NotCached,
                    format!("{key} is not stored here"),
                )
                .await,
            );
        }
        Lookup::Miss { stale } => stale,
    };
    // Tell the edge we are alive and filling: a slow answer now is the origin's, not ours.
    send_frame(send, &Frame::Pending).await?;
    match node.reads.fill(key, headers, stale).await {
        Ok((reader, head)) => stream_flight(node, reader, &head, headers, send).await,
        Err(e) => {
            let code = match e.kind {
                FillErrorKind::Unreachable => ErrorCode::OriginUnreachable,
                _ => ErrorCode::OriginBroken,
            };
            node.counters.inc(Counter::Errors);
            closed(refuse(send, code, e.message.to_string()).await)
        }
    }
}

/// Sends a stored entry, or a 304 when the request's conditionals match it.
async fn respond_entry(
    node: &Node,
    send: &mut quinn::SendStream,
    entry: &cdn_store::Entry,
    cache: CacheStatus,
    request: &http::HeaderMap,
    now: SystemTime,
) -> Result<Stream, WireError> {
    if entry.status() == http::StatusCode::OK
        && policy::conditional(request)
        && policy::not_modified(request, &entry.headers())
    {
        let mut headers = entry.headers();
        headers.insert(
            http::header::AGE,
            http::HeaderValue::from(entry.age(now).as_secs()),
        );
        return send_not_modified(node, send, &headers, cache).await;
    }
    if node.is_breaking() {
        return closed(break_mid_body(node, send, entry, cache).await);
    }
    let n = send_entry(send, entry, cache, &node.config.member.id, now).await?;
    node.counters.add(Counter::BytesSent, n);
    Ok(Stream::Open)
}

async fn send_not_modified(
    node: &Node,
    send: &mut quinn::SendStream,
    headers: &http::HeaderMap,
    cache: CacheStatus,
) -> Result<Stream, WireError> {
    prioritise(send, Some(0));
    let head = Frame::ResponseHead {
        status: 304,
        cache,
        node: node.config.member.id.clone(),
        content_length: Some(0),
        headers: fields_from_headers(headers),
    };
    send_frame(send, &head).await?;
    send_frame(send, &Frame::End { len: 0 }).await?;
    Ok(Stream::Open)
}

/// Fault injection: sends the head and half the body, then ends the stream without `End`, as
/// a node that dies mid-response looks to the edge (delivered reliably, unlike a reset).
async fn break_mid_body(
    node: &Node,
    send: &mut quinn::SendStream,
    entry: &cdn_store::Entry,
    cache: CacheStatus,
) -> Result<(), WireError> {
    send_frame(
        send,
        &Frame::ResponseHead {
            status: entry.status().as_u16(),
            cache,
            node: node.config.member.id.clone(),
            content_length: Some(entry.body_len()),
            headers: entry.fields().wire(),
        },
    )
    .await?;
    let half = (entry.body_len() / 2) as usize;
    let body: Vec<u8> = entry
        .body()
        .iter()
        .flat_map(|b| b.iter().copied())
        .take(half)
        .collect();
    send_data(send, Bytes::from(body)).await?;
    send.finish()?;
    Ok(())
}

/// Streams a flight to the edge: head, each chunk as it arrives, `End`. A failure after the
/// head sends `Error` and resets the stream, so the edge never takes a short body as whole.
async fn stream_flight(
    node: &Arc<Node>,
    mut reader: FlightReader<Head>,
    head: &Head,
    request: &http::HeaderMap,
    send: &mut quinn::SendStream,
) -> Result<Stream, WireError> {
    let cache = head.outcome();
    if head.status == http::StatusCode::OK && policy::not_modified(request, &head.headers) {
        return send_not_modified(node, send, &head.headers, cache).await;
    }
    prioritise(send, head.content_length);
    let mut fields = fields_from_headers(&head.headers);
    if !head.headers.contains_key(http::header::AGE) {
        fields.push(("age".into(), Bytes::from_static(b"0")));
    }
    send_frame(
        send,
        &Frame::ResponseHead {
            status: head.status.as_u16(),
            cache,
            node: node.config.member.id.clone(),
            content_length: head.content_length,
            headers: fields,
        },
    )
    .await?;
    if node.is_breaking() {
        // Fault injection: the head, then the end of the stream without a body or `End`.
        send.finish()?;
        return Ok(Stream::Closed);
    }
    let mut sent = 0u64;
    while let Some(chunk) = reader.next_chunk().await {
        match chunk {
            Ok(c) => {
                sent += c.len() as u64;
                send_data(send, c).await?;
            }
            Err(e) => {
                node.counters.inc(Counter::Errors);
                let _ = send_frame(
                    send,
                    &Frame::Error {
                        code: ErrorCode::OriginBroken,
                        message: e.message.to_string(),
                    },
                )
                .await;
                let _ = send.reset(codes::ABORTED.into());
                return Ok(Stream::Closed);
            }
        }
    }
    send_frame(send, &Frame::End { len: sent }).await?;
    node.counters.add(Counter::BytesSent, sent);
    Ok(Stream::Open)
}
