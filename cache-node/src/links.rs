//! Members connected to this node: edges (which it sends invalidations to) and nodes.
//!
//! A member's connection is registered when it says `Hello`. An edge whose connection closed
//! is remembered for [`REMEMBER`], so a purge reports it as missing instead of silently
//! leaving it out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cdn_core::peers::PurgeReport;
use cdn_core::quic::{send_frame, FrameReader};
use cdn_proto::{Frame, Invalidation};

/// How long a disconnected edge still counts as expected to acknowledge purges.
pub const REMEMBER: Duration = Duration::from_secs(300);

struct Link {
    conn: Option<quinn::Connection>,
    last_seen: Instant,
}

/// Edges connected (or recently connected) to this node.
pub struct Links {
    // A std mutex: inserts and snapshots, never held across an await.
    edges: Mutex<HashMap<String, Link>>,
    // The number of connected edges, for whoever waits for a topology (tests, readiness).
    connected: tokio::sync::watch::Sender<usize>,
}

impl Default for Links {
    fn default() -> Self {
        Self {
            edges: Mutex::default(),
            connected: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Links {
    /// Registers `conn` as edge `id`'s link, and forgets it when it closes.
    pub fn register_edge(self: &std::sync::Arc<Self>, id: String, conn: quinn::Connection) {
        let stable = conn.stable_id();
        self.lock().insert(
            id.clone(),
            Link {
                conn: Some(conn.clone()),
                last_seen: Instant::now(),
            },
        );
        self.publish();
        let links = self.clone();
        tokio::spawn(async move {
            conn.closed().await;
            let mut m = links.lock();
            if let Some(l) = m.get_mut(&id) {
                if l.conn.as_ref().is_some_and(|c| c.stable_id() == stable) {
                    l.conn = None;
                    l.last_seen = Instant::now();
                }
            }
            drop(m);
            links.publish();
        });
    }

    fn publish(&self) {
        let n = self.lock().values().filter(|l| l.conn.is_some()).count();
        self.connected.send_replace(n);
    }

    /// Waits until at least `n` edges are connected.
    pub async fn wait_for_edges(&self, n: usize) {
        let mut rx = self.connected.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// Edges with an open link.
    pub fn connected_edges(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, l)| l.conn.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Sends `Purge { forward: false }` to every connected edge and waits up to `deadline`
    /// for each acknowledgement. Edges that do not answer, and edges disconnected within
    /// [`REMEMBER`], are reported missing.
    pub async fn fan_out(
        &self,
        id: u64,
        inv: &Invalidation,
        deadline: Duration,
        report: &mut PurgeReport,
    ) {
        let (live, gone): (Vec<_>, Vec<_>) = {
            let now = Instant::now();
            let m = self.lock();
            let live: Vec<(String, quinn::Connection)> = m
                .iter()
                .filter_map(|(id, l)| l.conn.clone().map(|c| (id.clone(), c)))
                .collect();
            let gone: Vec<String> = m
                .iter()
                .filter(|(_, l)| l.conn.is_none() && now.duration_since(l.last_seen) < REMEMBER)
                .map(|(id, _)| id.clone())
                .collect();
            (live, gone)
        };
        report.missing.extend(gone);
        let frame = Frame::Purge {
            id,
            forward: false,
            inv: inv.clone(),
        };
        let calls = live.into_iter().map(|(edge, conn)| {
            let frame = &frame;
            async move {
                let work = async {
                    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                    send_frame(&mut send, frame)
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = send.finish();
                    match FrameReader::new(recv).next().await {
                        Ok(Some(Frame::PurgeAck { acked, .. })) => Ok(acked),
                        Ok(other) => Err(format!("unexpected answer {other:?}")),
                        Err(e) => Err(e.to_string()),
                    }
                };
                let r = tokio::time::timeout(deadline, work)
                    .await
                    .unwrap_or_else(|_| Err("no acknowledgement in time".into()));
                (edge, r)
            }
        });
        for (edge, r) in futures::future::join_all(calls).await {
            match r {
                Ok(acked) => report.acked.extend(acked),
                Err(e) => {
                    tracing::warn!(%edge, error = %e, "edge did not acknowledge purge");
                    report.missing.push(edge);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.edges.lock().unwrap_or_else(|p| p.into_inner())
    }
}
