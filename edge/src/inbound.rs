//! Streams a node opens on the edge's connection: invalidations fanned out to every edge.

use std::sync::{Arc, Weak};

use cdn_core::peers::Inbound;
use cdn_core::quic::{codes, send_frame, FrameReader};
use cdn_proto::Frame;
use futures::future::BoxFuture;

use crate::Edge;

/// The edge's handler for node-initiated streams.
pub struct FromNodes(pub Weak<Edge>);

impl Inbound for FromNodes {
    fn serve(
        &self,
        from: Arc<str>,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> BoxFuture<'static, ()> {
        let edge = self.0.clone();
        Box::pin(async move {
            let Some(edge) = edge.upgrade() else { return };
            let mut reader = FrameReader::new(recv);
            match reader.next().await {
                Ok(Some(Frame::Purge { id, inv, .. })) => {
                    let n = edge.apply_purge(&inv).await;
                    tracing::debug!(purge = id, node = %from, entries = n, "purge applied");
                    let ack = Frame::PurgeAck {
                        acked: vec![edge.config.id.clone()],
                        missing: vec![],
                    };
                    if send_frame(&mut send, &ack).await.is_ok() {
                        let _ = send.finish();
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
}
