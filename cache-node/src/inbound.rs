//! What peer nodes send back on this node's connections to them: at each (re)connect, the
//! invalidations this node missed while the link was down (its own purge log stays per node;
//! see `links`). A node that was partitioned replays them before using the link again; when
//! the peer's log cannot say what was missed, it drops its whole store rather than serve
//! something that may have been purged.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use cdn_net::peers::{Inbound, Positions};
use cdn_net::quic::codes;
use cdn_proto::{Invalidation, Position};
use futures::future::BoxFuture;

use crate::Node;

/// The node's handler for its connections to peers.
pub struct FromPeers {
    node: Weak<Node>,
    positions: Arc<Positions>,
}

impl FromPeers {
    /// A handler for `node`.
    pub fn new(node: Weak<Node>) -> Self {
        Self {
            node,
            positions: Arc::default(),
        }
    }
}

impl Inbound for FromPeers {
    fn serve(
        &self,
        from: Arc<str>,
        _addr: SocketAddr,
        mut send: quinn::SendStream,
        _recv: quinn::RecvStream,
    ) -> BoxFuture<'static, ()> {
        // Peers send requests on their own connections to us, never back on ours.
        tracing::debug!(peer = %from, "unexpected stream from a peer");
        let _ = send.reset(codes::PROTOCOL.into());
        Box::pin(async {})
    }

    fn position(&self, addr: SocketAddr) -> Position {
        self.positions.get(addr)
    }

    fn resume(
        &self,
        peer: Arc<str>,
        addr: SocketAddr,
        at: Position,
        replay: Vec<Invalidation>,
        gap: bool,
    ) -> BoxFuture<'static, ()> {
        let node = self.node.clone();
        let positions = self.positions.clone();
        let had_position = positions.get(addr) != Position::default();
        Box::pin(async move {
            let Some(node) = node.upgrade() else { return };
            if gap && had_position {
                let all = Invalidation {
                    all: true,
                    ..Invalidation::default()
                };
                let n = node.apply_purge(&all).await;
                tracing::warn!(%peer, dropped = n, "missed invalidations beyond the peer's log: store dropped");
            }
            for inv in &replay {
                node.apply_purge(inv).await;
            }
            if !replay.is_empty() {
                tracing::info!(%peer, replayed = replay.len(), "replayed invalidations missed while partitioned");
            }
            positions.set(addr, at);
        })
    }
}
