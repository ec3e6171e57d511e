//! What nodes send the edge on its connections: invalidations fanned out to every edge, and
//! at each (re)connect the invalidations the edge missed while the link was down.
//!
//! The edge remembers, per node, the last log position it applied. On reconnect it says so in
//! `Hello`; the node answers with the missed invalidations, or with a gap when its log no
//! longer reaches back (or it restarted), and then the edge drops every entry it got from
//! that node. The connection is used only after that, so nothing possibly purged is served
//! as fresh once the link is back.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use cdn_core::admin::AdminState;
use cdn_net::peers::{Inbound, Positions};
use cdn_net::quic::{codes, send_frame, FrameReader};
use cdn_proto::{Frame, Invalidation, Position};
use futures::future::BoxFuture;

use crate::Edge;

/// The edge's handler for node-initiated streams and log resumes.
pub struct FromNodes {
    edge: Weak<Edge>,
    positions: Arc<Positions>,
}

impl FromNodes {
    /// A handler for `edge`.
    pub fn new(edge: Weak<Edge>) -> Self {
        Self {
            edge,
            positions: Arc::default(),
        }
    }
}

impl Inbound for FromNodes {
    fn serve(
        &self,
        from: Arc<str>,
        addr: SocketAddr,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> BoxFuture<'static, ()> {
        let edge = self.edge.clone();
        let positions = self.positions.clone();
        Box::pin(async move {
            let Some(edge) = edge.upgrade() else { return };
            let mut reader = FrameReader::new(recv);
            match reader.next().await {
                Ok(Some(Frame::Purge { id, inv, at, .. })) => {
                    let n = edge.apply_purge(&inv).await;
                    positions.advance(addr, at);
                    tracing::debug!(purge = id, node = %from, entries = n, "purge applied");
                    let ack = Frame::Ack {
                        acked: vec![edge.config.member.id.clone()],
                        missing: vec![],
                    };
                    if send_frame(&mut send, &ack).await.is_ok() {
                        let _ = send.finish();
                    }
                }
                Ok(Some(Frame::Push {
                    key,
                    status,
                    headers,
                    ..
                })) => {
                    let stored = async {
                        let body =
                            cdn_net::quic::read_body(&mut reader, edge.config.member.max_object())
                                .await?;
                        let obj =
                            cdn_core::push::PushObject::from_frame(key, status, headers, body)?;
                        let entry = obj
                            .entry(std::time::SystemTime::now(), &edge.config.member.rules())?
                            .with_source(from.clone());
                        edge.l1().insert_pushed(&obj.key, entry).await;
                        Ok::<_, String>(())
                    }
                    .await;
                    let answer = match stored {
                        Ok(()) => Frame::Ack {
                            acked: vec![edge.config.member.id.clone()],
                            missing: vec![],
                        },
                        Err(message) => Frame::Error {
                            code: cdn_proto::ErrorCode::BadRequest,
                            message,
                        },
                    };
                    if send_frame(&mut send, &answer).await.is_ok() {
                        let _ = send.finish();
                    }
                }
                Ok(Some(Frame::Members { members })) => {
                    tracing::debug!(node = %from, members = members.len(), "member list");
                    edge.upstream.pool().set_view(addr, members);
                    let ack = Frame::Ack {
                        acked: vec![edge.config.member.id.clone()],
                        missing: vec![],
                    };
                    if send_frame(&mut send, &ack).await.is_ok() {
                        let _ = send.finish();
                    }
                }
                Ok(Some(Frame::StatusRequest { .. })) => {
                    // An edge reports itself alone: it links to no one a node cannot ask.
                    let own = cdn_core::cluster::Report::own(&edge.status()).encode();
                    if let Err(e) = cdn_net::status::answer(&mut send, &[own]).await {
                        tracing::debug!(node = %from, error = %e, "status answer not sent");
                    }
                }
                Ok(Some(other)) => {
                    tracing::debug!(node = %from, frame = other.name(), "unexpected frame from node");
                    let _ = send.reset(codes::PROTOCOL.into());
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(node = %from, error = %e, "bad stream from node");
                    let _ = send.reset(codes::PROTOCOL.into());
                }
            }
        })
    }

    fn position(&self, addr: SocketAddr) -> Position {
        self.positions.get(addr)
    }

    fn resume(
        &self,
        node: Arc<str>,
        addr: SocketAddr,
        at: Position,
        replay: Vec<Invalidation>,
        gap: bool,
    ) -> BoxFuture<'static, ()> {
        let edge = self.edge.clone();
        let positions = self.positions.clone();
        Box::pin(async move {
            let Some(edge) = edge.upgrade() else { return };
            if gap {
                let n = edge.l1().purge_source(&node).await;
                tracing::info!(%node, dropped = n, "invalidation log gap: dropped entries from this node");
            }
            for inv in &replay {
                edge.apply_purge(inv).await;
            }
            if !replay.is_empty() {
                tracing::info!(%node, replayed = replay.len(), "replayed missed invalidations");
            }
            // A resume sets the position outright: a new epoch replaces the old one.
            positions.set(addr, at);
        })
    }
}
