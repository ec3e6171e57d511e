//! Members connected to this node: edges (which it sends invalidations to) and nodes.
//!
//! A member's connection is registered when it says `Hello`. An edge whose connection closed
//! is remembered for [`REMEMBER`], so a purge reports it as missing instead of silently
//! leaving it out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cdn_core::cluster::Report;
use cdn_core::push::{write_push, PushObject};
use cdn_net::peers::PurgeReport;
use cdn_net::quic::{send_frame, FrameReader};
use cdn_proto::{Frame, Invalidation, Member, Position};

/// How long a disconnected edge still counts as expected to acknowledge purges.
pub const REMEMBER: Duration = Duration::from_secs(300);

struct Link {
    conn: Option<quinn::Connection>,
    last_seen: Instant,
    // Closed with `LEAVING`: shut down on purpose, no longer expected to acknowledge purges
    // (kept only to show it `left` in the cluster view).
    left: bool,
}

/// Invalidations kept for edges that reconnect: at thousands of purges per second this is
/// seconds of history, at the usual few per minute it is days.
pub const LOG_LEN: usize = 10_000;

/// Edges connected (or recently connected) to this node, and the numbered log of the
/// invalidations sent to them.
pub struct Links {
    // A std mutex: inserts and snapshots, never held across an await.
    edges: Mutex<HashMap<String, Link>>,
    // The number of connected edges, for whoever waits for a topology (tests, readiness).
    connected: tokio::sync::watch::Sender<usize>,
    epoch: u64,
    // A std mutex: numbering and a bounded append, or a scan for a replay; never awaited.
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    last: u64,
    recent: std::collections::VecDeque<(u64, Invalidation)>,
}

impl Default for Links {
    fn default() -> Self {
        Self {
            edges: Mutex::default(),
            connected: tokio::sync::watch::Sender::new(0),
            // Random, so a restarted node's positions never match an edge's old ones.
            epoch: rand::random::<u64>() | 1,
            log: Mutex::default(),
        }
    }
}

impl Links {
    /// Registers `conn` as edge `id`'s link, and forgets it when it closes.
    pub fn register_edge(self: &std::sync::Arc<Self>, id: String, conn: quinn::Connection) {
        let stable = conn.stable_id();
        let mut m = self.lock();
        // Edges gone longer than `REMEMBER` are forgotten here, so edges that come and go
        // (a rolling deploy names new pods) do not pile up.
        let now = Instant::now();
        m.retain(|_, l| l.conn.is_some() || now.duration_since(l.last_seen) < REMEMBER);
        m.insert(
            id.clone(),
            Link {
                conn: Some(conn.clone()),
                last_seen: Instant::now(),
                left: false,
            },
        );
        drop(m);
        self.publish();
        let links = self.clone();
        tokio::spawn(async move {
            let why = conn.closed().await;
            let mut m = links.lock();
            let ours = m
                .get(&id)
                .is_some_and(|l| l.conn.as_ref().is_some_and(|c| c.stable_id() == stable));
            if let Some(l) = m.get_mut(&id).filter(|_| ours) {
                l.conn = None;
                l.last_seen = Instant::now();
                // Shut down on purpose: no longer expected to acknowledge purges.
                l.left = cdn_net::peers::close::is_leaving(&why);
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
        self.wait_for_count(|c| c >= n).await;
    }

    /// Waits until the number of connected edges satisfies `pred`.
    pub async fn wait_for_count(&self, pred: impl Fn(usize) -> bool) {
        let mut rx = self.connected.subscribe();
        let _ = rx.wait_for(|c| pred(*c)).await;
    }

    /// Numbers an invalidation in this node's log.
    fn number(&self, inv: &Invalidation) -> Position {
        let mut l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        l.last += 1;
        let seq = l.last;
        l.recent.push_back((seq, inv.clone()));
        if l.recent.len() > LOG_LEN {
            l.recent.pop_front();
        }
        Position {
            epoch: self.epoch,
            seq,
        }
    }

    /// What an edge that last applied `from` missed: the answer to its `Hello`.
    pub fn resume(&self, from: Position) -> Frame {
        let l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let at = Position {
            epoch: self.epoch,
            seq: l.last,
        };
        if from == Position::default() {
            // A new edge: nothing it holds came from this node yet.
            return Frame::Resume {
                at,
                replay: vec![],
                gap: false,
            };
        }
        let oldest = l.recent.front().map(|(s, _)| *s).unwrap_or(l.last + 1);
        if from.epoch != self.epoch {
            // We restarted since: everything this process sent is what the peer can have
            // missed from us (what our old process sent, it got then or, if its link was down,
            // gets from the peers that did not restart). A log that still starts at 1 holds
            // it all; one that wrapped cannot say.
            return Frame::Resume {
                at,
                replay: l.recent.iter().map(|(_, inv)| inv.clone()).collect(),
                gap: oldest > 1,
            };
        }
        if from.seq + 1 < oldest || from.seq > l.last {
            return Frame::Resume {
                at,
                replay: vec![],
                gap: true,
            };
        }
        let replay = l
            .recent
            .iter()
            .filter(|(s, _)| *s > from.seq)
            .map(|(_, inv)| inv.clone())
            .collect();
        Frame::Resume {
            at,
            replay,
            gap: false,
        }
    }

    /// Edges with an open link.
    pub fn connected_edges(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, l)| l.conn.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// What each edge linked to this node (or disconnected within [`REMEMBER`]) says of itself,
    /// each asked within `deadline`: its report, or one saying why there is none (`down`: the
    /// link closed; `left`: it shut down on purpose).
    pub async fn ask_edges(&self, deadline: Duration) -> Vec<Report> {
        let (live, gone): (Vec<_>, Vec<_>) = {
            let now = Instant::now();
            let m = self.lock();
            let live = connected(&m);
            let gone: Vec<Report> = m
                .iter()
                .filter(|(_, l)| l.conn.is_none() && now.duration_since(l.last_seen) < REMEMBER)
                .map(|(id, l)| {
                    let (state, why) = if l.left {
                        ("left", "left the cluster")
                    } else {
                        ("down", "its link to this node is closed")
                    };
                    Report::without_status(id, "edge", state, why)
                })
                .collect();
            (live, gone)
        };
        let asks = live.into_iter().map(|(id, conn)| async move {
            let answer = cdn_net::status::ask_link(&conn, deadline).await;
            let own = answer.as_ref().ok().and_then(|docs| {
                docs.iter()
                    .filter_map(|d| Report::decode(d))
                    .find(|r| r.id == id && r.role == "edge")
            });
            match (own, answer) {
                (Some(mut r), _) => {
                    r.state = Some("alive".into());
                    r
                }
                (None, Err(e)) => Report::without_status(&id, "edge", "alive", e),
                (None, Ok(_)) => Report::without_status(
                    &id,
                    "edge",
                    "alive",
                    "its answer did not include itself",
                ),
            }
        });
        let mut out = futures::future::join_all(asks).await;
        out.extend(gone);
        out
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
        let frame = Frame::Purge {
            id,
            forward: false,
            at: self.number(inv),
            inv: inv.clone(),
        };
        let frame = &frame;
        self.each_edge(deadline, report, "purge", |conn| async move {
            let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            send_frame(&mut send, frame)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            read_ack(recv).await
        })
        .await;
    }

    /// Sends the member list to every connected edge and waits (up to `deadline`) until each
    /// has applied it.
    pub async fn announce_members(&self, members: Vec<Member>, deadline: Duration) -> PurgeReport {
        let frame = Frame::Members { members };
        let frame = &frame;
        let mut report = PurgeReport::default();
        self.each_edge(deadline, &mut report, "members", |conn| async move {
            let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            send_frame(&mut send, frame)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            read_ack(recv).await
        })
        .await;
        report
    }

    /// Pushes `obj` into every connected edge's L1, reporting like [`Links::fan_out`].
    pub async fn push_to_edges(
        &self,
        obj: &PushObject,
        id: u64,
        deadline: Duration,
        report: &mut PurgeReport,
    ) {
        self.each_edge(deadline, report, "push", |conn| async move {
            let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            write_push(&mut send, obj, id, false).await?;
            read_ack(recv).await
        })
        .await;
    }

    /// Runs `call` on every connected edge's link in parallel, each bounded by `deadline`;
    /// folds acknowledgements into `report`. Edges that fail, and edges disconnected within
    /// [`REMEMBER`], are reported missing.
    async fn each_edge<'a, F, Fut>(
        &self,
        deadline: Duration,
        report: &mut PurgeReport,
        what: &str,
        call: F,
    ) where
        F: Fn(quinn::Connection) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<String>, String>> + 'a,
    {
        let (live, gone): (Vec<_>, Vec<_>) = {
            let now = Instant::now();
            let m = self.lock();
            let live = connected(&m);
            let gone: Vec<String> = m
                .iter()
                .filter(|(_, l)| {
                    l.conn.is_none() && !l.left && now.duration_since(l.last_seen) < REMEMBER
                })
                .map(|(id, _)| id.clone())
                .collect();
            (live, gone)
        };
        report.missing.extend(gone);
        let calls = live.into_iter().map(|(edge, conn)| {
            let work = call(conn);
            async move {
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
                    tracing::warn!(%edge, error = %e, what, "edge did not acknowledge");
                    report.missing.push(edge);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.edges.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The edges with an open link, and their connections (a snapshot taken under the lock).
fn connected(m: &HashMap<String, Link>) -> Vec<(String, quinn::Connection)> {
    m.iter()
        .filter_map(|(id, l)| l.conn.clone().map(|c| (id.clone(), c)))
        .collect()
}

async fn read_ack(recv: quinn::RecvStream) -> Result<Vec<String>, String> {
    match FrameReader::new(recv).next().await {
        Ok(Some(Frame::Ack { acked, .. })) => Ok(acked),
        Ok(Some(Frame::Error { message, .. })) => Err(message),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> Invalidation {
        Invalidation {
            urls: vec![u.into()],
            ..Invalidation::default()
        }
    }

    #[test]
    fn resume_replays_what_was_missed_or_reports_a_gap() {
        let links = Links::default();
        let p1 = links.number(&url("/a"));
        let _p2 = links.number(&url("/b"));
        let p3 = links.number(&url("/c"));
        assert_eq!(p3.seq, 3);
        match links.resume(p1) {
            Frame::Resume { at, replay, gap } => {
                assert_eq!(at, p3);
                assert!(!gap);
                assert_eq!(replay, vec![url("/b"), url("/c")]);
            }
            f => panic!("{f:?}"),
        }
        assert!(
            matches!(links.resume(p3), Frame::Resume { ref replay, gap: false, .. } if replay.is_empty())
        );
        assert!(matches!(
            links.resume(Position::default()),
            Frame::Resume { gap: false, .. }
        ));
        // A peer that last heard from our previous process: it gets everything this one sent.
        let other_epoch = Position {
            epoch: p3.epoch ^ 2,
            seq: 7,
        };
        match links.resume(other_epoch) {
            Frame::Resume { at, replay, gap } => {
                assert_eq!(at, p3);
                assert!(!gap);
                assert_eq!(replay, vec![url("/a"), url("/b"), url("/c")]);
            }
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn a_position_older_than_the_log_is_a_gap() {
        let links = Links::default();
        let first = links.number(&url("/0"));
        for i in 0..LOG_LEN {
            links.number(&url(&format!("/{i}")));
        }
        // The log still holds everything after `first`: a full replay.
        match links.resume(first) {
            Frame::Resume { replay, gap, .. } => {
                assert!(!gap);
                assert_eq!(replay.len(), LOG_LEN);
            }
            f => panic!("{f:?}"),
        }
        links.number(&url("/one-more"));
        assert!(matches!(
            links.resume(first),
            Frame::Resume { gap: true, .. }
        ));
        // Nor can it tell a peer of our previous process what this one sent.
        let other_epoch = Position {
            epoch: first.epoch ^ 2,
            seq: 1,
        };
        assert!(matches!(
            links.resume(other_epoch),
            Frame::Resume { gap: true, .. }
        ));
    }
}
