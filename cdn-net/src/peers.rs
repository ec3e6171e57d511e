//! Outgoing QUIC connections to cache nodes, one pooled connection per node, shared by edges
//! (to reach owners) and nodes (to reach their peers).
//!
//! A new connection starts with `Hello` (who we are) answered by `Members` (who the node
//! knows), so the member list is refreshed on every (re)connect. The node may open streams back
//! on the connection (invalidations, pushes); those go to the [`Inbound`] handler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cdn_proto::{Frame, Invalidation, Member, MemberState, Position, Role};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::quic::{send_bytes, send_frame, FrameReader};

/// How talking to one node failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// Recently failed to connect; skipped until the retry time.
    #[error("node {0} is marked down")]
    Down(String),
    /// Could not connect or open a stream.
    #[error("connecting to {node}: {reason}")]
    Connect {
        /// Node id or address.
        node: String,
        /// Why.
        reason: String,
    },
    /// Asked only for what it stores (a hedge), the node does not have it.
    #[error("node {0} does not store it")]
    NotCached(String),
    /// The node answered with an error, broke the protocol, or did not answer in time.
    #[error("node {node}: {reason}")]
    Refused {
        /// Node id or address.
        node: String,
        /// Why.
        reason: String,
    },
}

/// Timeouts for talking to nodes.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// QUIC handshake.
    pub connect: Duration,
    /// From request to the response head (covers the node's own origin fetch).
    pub response: Duration,
    /// From request to the first frame of any kind: a node that is alive answers at once,
    /// with the head or with `Pending` when it fills from the origin first, so silence this
    /// long means the node (or the path to it) hangs.
    pub first_byte: Duration,
    /// Skip a node this long after a failed connect.
    pub retry: Duration,
}

/// Handles what nodes send back on connections we made: streams they open (invalidations)
/// and the invalidation-log resume at each (re)connect.
pub trait Inbound: Send + Sync + 'static {
    /// Serves one stream opened by the node `from` (at `addr`).
    fn serve(
        &self,
        from: Arc<str>,
        addr: SocketAddr,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> BoxFuture<'static, ()>;

    /// The last position applied from the node at `addr`, sent in `Hello`.
    fn position(&self, addr: SocketAddr) -> Position;

    /// Applies what the node says was missed (or, on `gap`, forgets what came from it). The
    /// connection is used only after this completes.
    fn resume(
        &self,
        node: Arc<str>,
        addr: SocketAddr,
        at: Position,
        replay: Vec<Invalidation>,
        gap: bool,
    ) -> BoxFuture<'static, ()>;
}

/// The last log position applied from each node, by its address.
#[derive(Default)]
pub struct Positions {
    // A std mutex: one map read or write per purge, never held across an await.
    map: Mutex<HashMap<SocketAddr, Position>>,
}

impl Positions {
    /// Moves forward to `at` (a new epoch replaces the old one; older positions are ignored).
    pub fn advance(&self, addr: SocketAddr, at: Position) {
        if at == Position::default() {
            return;
        }
        let mut p = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let cur = p.entry(addr).or_default();
        if cur.epoch != at.epoch || at.seq > cur.seq {
            *cur = at;
        }
    }

    /// Sets the position outright (after a resume).
    pub fn set(&self, addr: SocketAddr, at: Position) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, at);
    }

    /// The position for `addr` (zero when none).
    pub fn get(&self, addr: SocketAddr) -> Position {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .copied()
            .unwrap_or_default()
    }
}

struct Peer {
    addr: SocketAddr,
    // Async mutex: held across the handshake so concurrent requests share one connect.
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
    // Std mutex: a timestamp read or written, never across an await.
    // tokio's clock (not std's), so simulated time drives retries in simulation tests.
    down_until: Mutex<Option<tokio::time::Instant>>,
    // Whether the pooled connection is open: read on every strict-mode hit, so an atomic
    // instead of the connection's lock.
    up: std::sync::atomic::AtomicBool,
    // Std mutex: request streams between two requests, newest last; a push or a pop.
    idle: Mutex<Vec<IdleStream>>,
    // Signalled when a stream goes back to `idle`: a request waiting for the node to grant
    // another stream takes it instead.
    returned: tokio::sync::Notify,
}

/// Request streams kept per node for the next requests. A node allows `max_streams` open
/// streams a connection (1,024 by default), idle ones included; a stream that cannot be
/// opened because idle ones hold the node's allowance closes them ([`PeerPool::open`]).
const MAX_IDLE_STREAMS: usize = 64;

/// A request stream whose last response was read to its `End`.
struct IdleStream {
    conn: usize,
    send: quinn::SendStream,
    reader: FrameReader,
    since: tokio::time::Instant,
}

impl Peer {
    /// The newest idle stream of connection `conn`, unless it has been idle too long. Idle
    /// streams of another (older) connection, or idle longer than that, are closed.
    fn take_idle(&self, conn: usize) -> Option<IdleStream> {
        let now = tokio::time::Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut stale = Vec::new();
        if idle.iter().any(|s| s.conn != conn) {
            // A reconnect: streams of the old connection may sit among (or above) the new.
            let (keep, old): (Vec<_>, Vec<_>) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|s| s.conn == conn);
            *idle = keep;
            stale = old;
        }
        let found = match idle.pop() {
            Some(s) if now - s.since < crate::quic::KEEP_IDLE => Some(s),
            Some(s) => {
                // The rest went idle earlier still.
                stale.push(s);
                stale.append(&mut idle);
                None
            }
            None => None,
        };
        drop(idle);
        drop(stale);
        found
    }

    /// Closes the idle streams that were idle longer than [`crate::quic::KEEP_IDLE`], or
    /// all of them (`all`): the connection closed, or the node's stream allowance is needed
    /// for a stream of another kind.
    fn close_idle(&self, all: bool) {
        let now = tokio::time::Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let stale: Vec<IdleStream> = if all {
            std::mem::take(&mut *idle)
        } else {
            // Oldest first: the ones past the limit are a prefix.
            let n = idle
                .iter()
                .take_while(|s| now - s.since >= crate::quic::KEEP_IDLE)
                .count();
            idle.drain(..n).collect()
        };
        drop(idle);
        drop(stale);
    }
}

/// Opens a stream on `conn`; when the node grants none at once, the idle request streams
/// kept for it (which count against its allowance) are closed first.
async fn open_reclaiming(
    conn: &quinn::Connection,
    home: &Peer,
) -> Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError> {
    let open = conn.open_bi();
    tokio::pin!(open);
    if let Some(o) = futures::FutureExt::now_or_never(open.as_mut()) {
        return o;
    }
    home.close_idle(true);
    open.await
}

/// A request on a stream to a node: the request sent, its answer to be read from
/// [`Exchange::reader`]. A stream whose response was read to its `End` goes back to its
/// connection with [`Exchange::release`] and carries the next request to that node: no stream
/// opened or accepted, no task started at the node. Dropped otherwise (an answer abandoned,
/// an error), which ends the stream at both ends.
pub struct Exchange {
    send: quinn::SendStream,
    reader: FrameReader,
    home: Arc<Peer>,
    conn: usize,
    reused: bool,
}

impl Exchange {
    /// Where the answer is read.
    pub fn reader(&mut self) -> &mut FrameReader {
        &mut self.reader
    }

    /// Whether the stream carried an earlier request: one that fails before its first frame
    /// may have been closed by the node while idle, and is worth one retry on a new stream.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// The answer was read to its `End`: the stream waits for the next request to this node
    /// (up to [`crate::quic::KEEP_IDLE`]), unless the connection keeps enough already.
    pub fn release(self) {
        let Exchange {
            send,
            reader,
            home,
            conn,
            ..
        } = self;
        if !reader.is_drained() {
            return;
        }
        let mut idle = home.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= MAX_IDLE_STREAMS {
            drop(idle);
            drop((send, reader));
            return;
        }
        idle.push(IdleStream {
            conn,
            send,
            reader,
            since: tokio::time::Instant::now(),
        });
        drop(idle);
        home.returned.notify_one();
    }
}

/// Who we are, as sent in `Hello`.
#[derive(Debug, Clone)]
pub struct Me {
    /// Our id.
    pub id: String,
    /// Edge or node.
    pub role: Role,
    /// Our region.
    pub region: String,
    /// Our QUIC address (nodes), empty for edges.
    pub addr: String,
}

/// The pool of connections to cache nodes, and the member list learned through them.
///
/// A node's own view comes from its gossip membership, which hands it over with
/// [`PeerPool::set_view`]. An edge hears every node's view (in answer to `Hello`, and pushed
/// on every change) and combines them: views that came over a link now down are ignored
/// while any link is up, and each member's state is what most views say (see [`vote`]): a
/// node killed with its link still open is down as soon as the others say so, and a node cut
/// off from the others cannot talk the edge out of routing to them.
/// A member whose connection closed with [`close::LEAVING`] is `Left` until it reconnects.
pub struct PeerPool {
    endpoint: quinn::Endpoint,
    me: Me,
    // Members to route to (alive or suspect), sorted by id: placement's input.
    members: watch::Sender<Arc<Vec<Member>>>,
    // Every known member with its state, sorted by id: what `/status` shows.
    roster: watch::Sender<Arc<Vec<Member>>>,
    // Std mutex: each node's view by the node's address, replaced whole; never awaited.
    views: Mutex<HashMap<SocketAddr, Vec<Member>>>,
    // Std mutex: addresses that closed their connection with `LEAVING`.
    left: Mutex<std::collections::HashSet<SocketAddr>>,
    // Std mutex: a map lookup or insert, never held across an await.
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    timeouts: Timeouts,
    inbound: OnceLock<Arc<dyn Inbound>>,
    // Counts connections established, for whoever waits for a reconnect (tests, readiness).
    connects: watch::Sender<u64>,
    // Kept request streams found closed by their node when a request was sent on them.
    found_closed: std::sync::atomic::AtomicU64,
    // Fault injection (tests only): while set, no connection is made and existing ones are
    // closed; and single links: addresses not to connect to.
    #[cfg(feature = "fault-injection")]
    severed: std::sync::atomic::AtomicBool,
    #[cfg(feature = "fault-injection")]
    severed_peers: Mutex<std::collections::HashSet<SocketAddr>>,
    // Ourselves, for tasks that outlive a call (set by `PeerPool::new`).
    weak: OnceLock<std::sync::Weak<PeerPool>>,
}

impl PeerPool {
    /// A pool dialing from `endpoint` (which has the cluster's client config as default).
    pub fn new(endpoint: quinn::Endpoint, me: Me, timeouts: Timeouts) -> Arc<Self> {
        let pool = Arc::new(Self {
            endpoint,
            me,
            members: watch::Sender::new(Arc::new(Vec::new())),
            roster: watch::Sender::new(Arc::new(Vec::new())),
            views: Mutex::default(),
            left: Mutex::default(),
            peers: Mutex::new(HashMap::new()),
            timeouts,
            inbound: OnceLock::new(),
            connects: watch::Sender::new(0),
            found_closed: std::sync::atomic::AtomicU64::new(0),
            #[cfg(feature = "fault-injection")]
            severed: std::sync::atomic::AtomicBool::new(false),
            #[cfg(feature = "fault-injection")]
            severed_peers: Mutex::default(),
            weak: OnceLock::new(),
        });
        let _ = pool.weak.set(Arc::downgrade(&pool));
        pool
    }

    /// Cuts the link to the node at `addr` and refuses it until [`PeerPool::restore_peer`].
    #[cfg(feature = "fault-injection")]
    pub async fn sever_peer(&self, addr: SocketAddr) {
        self.severed_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr);
        let peer = self.peer(addr);
        peer.up.store(false, std::sync::atomic::Ordering::Release);
        let taken = peer.conn.lock().await.take();
        if let Some(c) = taken {
            c.close(1u32.into(), b"severed");
        }
    }

    /// Allows the link to `addr` again.
    #[cfg(feature = "fault-injection")]
    pub fn restore_peer(&self, addr: SocketAddr) {
        self.severed_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
    }

    /// Follows the number of connections established so far.
    pub fn watch_connects(&self) -> watch::Receiver<u64> {
        self.connects.subscribe()
    }

    /// Cuts every link to the nodes and refuses new ones until [`PeerPool::restore`]: the
    /// fault seam for partition tests.
    #[cfg(feature = "fault-injection")]
    pub async fn sever(&self) {
        self.severed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let peers = self.peer_list();
        for p in peers {
            p.up.store(false, std::sync::atomic::Ordering::Release);
            if let Some(c) = p.conn.lock().await.take() {
                c.close(1u32.into(), b"severed");
            }
        }
    }

    /// Allows links again after [`PeerPool::sever`].
    #[cfg(feature = "fault-injection")]
    pub fn restore(&self) {
        self.severed
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sets the handler for streams nodes open towards us (once).
    pub fn set_inbound(&self, h: Arc<dyn Inbound>) {
        let _ = self.inbound.set(h);
    }

    /// Timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The cache nodes to route to (alive or suspect), sorted by id.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.members.borrow().clone()
    }

    /// Every known cache node with its state, sorted by id.
    pub fn roster(&self) -> Arc<Vec<Member>> {
        self.roster.borrow().clone()
    }

    /// Follows changes of the roster (states included).
    pub fn watch_roster(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.roster.subscribe()
    }

    /// Replaces what the node at `from` says about the members (a node passes its own
    /// address and its gossip view).
    pub fn set_view(&self, from: SocketAddr, view: Vec<Member>) {
        let changed = {
            let mut v = self.views.lock().unwrap_or_else(|p| p.into_inner());
            if v.get(&from) == Some(&view) {
                false
            } else {
                v.insert(from, view);
                true
            }
        };
        if changed {
            self.recompute();
        }
    }

    /// Marks the member at `addr` as having left (its connection closed with `LEAVING`).
    pub fn mark_left(&self, addr: SocketAddr) {
        if self
            .left
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr)
        {
            self.recompute();
        }
    }

    /// Forgets that the member at `addr` left (it is back).
    pub fn clear_left(&self, addr: SocketAddr) {
        if self
            .left
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr)
        {
            self.recompute();
        }
    }

    /// Rebuilds the roster and the routing list from the views, links and leaves.
    fn recompute(&self) {
        let roster = {
            let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            let left = self.left.lock().unwrap_or_else(|p| p.into_inner());
            // Views that came over a link now down are stale; they count only while no link
            // is up at all (then the last known list is the best there is).
            let up = |a: &SocketAddr| self.me.role == Role::Node || self.is_connected(*a);
            let any_up = views.keys().any(up);
            // Every report about each member, noting which came from the member itself.
            let mut reports: std::collections::BTreeMap<&str, Vec<(bool, &Member)>> =
                Default::default();
            for (from, view) in views.iter() {
                if any_up && !up(from) {
                    continue;
                }
                let from = from.to_string();
                for m in view {
                    reports
                        .entry(m.id.as_str())
                        .or_default()
                        .push((m.addr == from, m));
                }
            }
            let mut roster: Vec<Member> = reports
                .values()
                .map(|rs| {
                    let own = rs.iter().find(|(o, _)| *o).map(|(_, m)| *m);
                    let mut m = own.unwrap_or(rs[0].1).clone();
                    m.state = vote(rs);
                    if m.addr.parse().is_ok_and(|a| left.contains(&a)) {
                        m.state = MemberState::Left;
                    }
                    m
                })
                .collect();
            // Two nodes split from each other vote each other down; rather than route to
            // nobody, trust what the members say of themselves.
            if !roster.iter().any(Member::routable) {
                for m in roster.iter_mut() {
                    let own = reports
                        .get(m.id.as_str())
                        .and_then(|rs| rs.iter().find(|(o, _)| *o));
                    if let Some((_, r)) = own {
                        if m.state != MemberState::Left {
                            m.state = r.state;
                        }
                    }
                }
            }
            roster
        };
        let routable: Vec<Member> = roster.iter().filter(|m| m.routable()).cloned().collect();
        self.roster.send_if_modified(|r| {
            if **r == roster {
                return false;
            }
            *r = Arc::new(roster);
            true
        });
        self.members.send_if_modified(|r| {
            if **r == routable {
                return false;
            }
            *r = Arc::new(routable);
            true
        });
    }

    /// Follows changes of the member list.
    pub fn watch_members(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.members.subscribe()
    }

    fn peer(&self, addr: SocketAddr) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Peer {
                    addr,
                    conn: tokio::sync::Mutex::new(None),
                    down_until: Mutex::new(None),
                    up: std::sync::atomic::AtomicBool::new(false),
                    idle: Mutex::new(Vec::new()),
                    returned: tokio::sync::Notify::new(),
                })
            })
            .clone()
    }

    /// Every peer known (a snapshot: the map's lock is not held after).
    fn peer_list(&self) -> Vec<Arc<Peer>> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Each open link: the node's address, QUIC's smoothed round-trip time, packets lost.
    pub fn link_stats(&self) -> Vec<(SocketAddr, Duration, u64)> {
        let peers = self.peer_list();
        peers
            .iter()
            .filter_map(|p| {
                // A link being set up right now is skipped rather than waited for.
                let slot = p.conn.try_lock().ok()?;
                let c = slot.as_ref().filter(|c| c.close_reason().is_none())?;
                Some((p.addr, c.rtt(), c.stats().path.lost_packets))
            })
            .collect()
    }

    /// Whether the pool currently holds an open connection to `addr` (the link that carries
    /// that node's invalidations).
    pub fn is_connected(&self, addr: SocketAddr) -> bool {
        self.peer(addr)
            .up
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The pooled connection to the node at `addr` (named `name` in errors), connecting and
    /// introducing ourselves if needed.
    pub async fn connection(
        &self,
        name: &str,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, PeerError> {
        #[cfg(feature = "fault-injection")]
        if self.severed.load(std::sync::atomic::Ordering::SeqCst)
            || self
                .severed_peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&addr)
        {
            return Err(PeerError::Down(name.to_string()));
        }
        let peer = self.peer(addr);
        if let Some(until) = *peer.down_until.lock().unwrap_or_else(|p| p.into_inner()) {
            if tokio::time::Instant::now() < until {
                return Err(PeerError::Down(name.to_string()));
            }
        }
        let mut slot = peer.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let fail = |reason: String| {
            *peer.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(tokio::time::Instant::now() + self.timeouts.retry);
            PeerError::Connect {
                node: name.to_string(),
                reason,
            }
        };
        let connecting = self
            .endpoint
            .connect(peer.addr, crate::tls::SERVER_NAME)
            .map_err(|e| fail(e.to_string()))?;
        let conn = match tokio::time::timeout(self.timeouts.connect, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(_) => {
                return Err(fail(format!(
                    "no handshake within {:?}",
                    self.timeouts.connect
                )))
            }
        };
        let hello = tokio::time::timeout(
            self.timeouts.connect.max(self.timeouts.response),
            self.hello(&conn, addr),
        )
        .await;
        let (members, resume) = match hello {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(fail(format!("hello: {e}"))),
            Err(_) => return Err(fail("no answer to hello".into())),
        };
        let node_id: Arc<str> = members
            .iter()
            .find(|m| m.addr == addr.to_string())
            .map(|m| Arc::from(m.id.as_str()))
            .unwrap_or_else(|| Arc::from(addr.to_string()));
        if self.me.role == Role::Edge {
            self.set_view(addr, members);
        }
        if let (Some(h), Some(Frame::Resume { at, replay, gap })) = (self.inbound.get(), resume) {
            h.resume(node_id.clone(), addr, at, replay, gap).await;
        }
        *peer.down_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *slot = Some(conn.clone());
        if let Some(h) = self.inbound.get().cloned() {
            let c = conn.clone();
            tokio::spawn(async move {
                while let Ok((send, recv)) = c.accept_bi().await {
                    tokio::spawn(h.serve(node_id.clone(), addr, send, recv));
                }
            });
        }
        peer.up.store(true, std::sync::atomic::Ordering::Release);
        self.clear_left(addr);
        self.recompute();
        let (p, c) = (peer.clone(), conn.clone());
        let pool = self.weak.get().cloned();
        tokio::spawn(async move {
            let why = c.closed().await;
            p.up.store(false, std::sync::atomic::Ordering::Release);
            p.close_idle(true);
            if let Some(pool) = pool.and_then(|w| w.upgrade()) {
                if close::is_leaving(&why) {
                    tracing::info!(node = %p.addr, "node left the cluster");
                    pool.mark_left(p.addr);
                }
                pool.recompute();
            }
        });
        self.connects.send_modify(|n| *n += 1);
        Ok(conn)
    }

    /// Says `Hello` and reads `Members`, then `Resume` when the node sends one (to edges).
    async fn hello(
        &self,
        conn: &quinn::Connection,
        addr: SocketAddr,
    ) -> Result<(Vec<Member>, Option<Frame>), String> {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let resume = self
            .inbound
            .get()
            .map(|h| h.position(addr))
            .unwrap_or_default();
        let hello = Frame::Hello {
            id: self.me.id.clone(),
            role: self.me.role,
            region: self.me.region.clone(),
            addr: self.me.addr.clone(),
            resume,
        };
        send_frame(&mut send, &hello)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv);
        let members = match reader.next().await {
            Ok(Some(Frame::Members { members })) => members,
            Ok(Some(other)) => return Err(format!("unexpected answer {}", other.name())),
            Ok(None) => return Err("stream closed".into()),
            Err(e) => return Err(e.to_string()),
        };
        match reader.next().await {
            Ok(Some(f @ Frame::Resume { .. })) => Ok((members, Some(f))),
            Ok(Some(other)) => Err(format!("unexpected frame {} after members", other.name())),
            Ok(None) => Ok((members, None)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Opens a request stream to `member` and sends `frame`; returns the stream halves.
    pub async fn open(
        &self,
        member: &Member,
        frame: &Frame,
    ) -> Result<(quinn::SendStream, FrameReader), PeerError> {
        let (addr, conn) = self.member_connection(member).await?;
        let refused = |reason: String| PeerError::Refused {
            node: member.id.clone(),
            reason,
        };
        let (mut send, recv) = open_reclaiming(&conn, &self.peer(addr))
            .await
            .map_err(|e| refused(e.to_string()))?;
        send_frame(&mut send, frame)
            .await
            .map_err(|e| refused(e.to_string()))?;
        Ok((send, FrameReader::new(recv)))
    }

    /// Sends the request `frame` to `member` on a stream of its connection: an idle one when
    /// there is one ([`Exchange::release`]), else a new one. When the node grants no more
    /// streams for now (its `max_streams`), the first stream to come back is taken.
    /// `request` is the encoded frame (`cdn_proto::frame::encode_request`), so a retry sends
    /// the same bytes without encoding them again.
    pub async fn exchange(&self, member: &Member, request: &Bytes) -> Result<Exchange, PeerError> {
        let (addr, conn) = self.member_connection(member).await?;
        let refused = |reason: String| PeerError::Refused {
            node: member.id.clone(),
            reason,
        };
        let home = self.peer(addr);
        let id = conn.stable_id();
        let reuse = |s: IdleStream| Exchange {
            send: s.send,
            reader: s.reader,
            home: home.clone(),
            conn: id,
            reused: true,
        };
        let fresh = |send, recv| Exchange {
            send,
            reader: FrameReader::new(recv),
            home: home.clone(),
            conn: id,
            reused: false,
        };
        let mut waited = false;
        loop {
            // Armed before the idle list is read, so a stream put back in between is seen.
            let returned = home.returned.notified();
            tokio::pin!(returned);
            if waited {
                returned.as_mut().enable();
            }
            if let Some(s) = home.take_idle(id) {
                let mut ex = reuse(s);
                if send_bytes(&mut ex.send, request).await.is_ok() {
                    return Ok(ex);
                }
                // Closed by the node while idle: try the next one.
                self.found_closed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            let open = conn.open_bi();
            tokio::pin!(open);
            let opened = if !waited {
                // Most requests find a stream, or the node's allowance for a new one, at once:
                // no wait to arm for them.
                match futures::FutureExt::now_or_never(open.as_mut()) {
                    Some(o) => o,
                    None => {
                        waited = true;
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    o = &mut open => o,
                    _ = &mut returned => continue,
                }
            };
            let (send, recv) = opened.map_err(|e| refused(e.to_string()))?;
            let mut ex = fresh(send, recv);
            send_bytes(&mut ex.send, request)
                .await
                .map_err(|e| refused(e.to_string()))?;
            return Ok(ex);
        }
    }

    /// Kept request streams a request found closed by their node (its write failed, or the
    /// answer ended before its first frame); each request was sent again.
    pub fn found_closed(&self) -> u64 {
        self.found_closed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`PeerPool::exchange`] on a new stream: the retry of a request whose reused stream
    /// turned out closed (counted in [`PeerPool::found_closed`]).
    pub async fn exchange_new(
        &self,
        member: &Member,
        request: &Bytes,
    ) -> Result<Exchange, PeerError> {
        self.found_closed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (addr, conn) = self.member_connection(member).await?;
        let refused = |reason: String| PeerError::Refused {
            node: member.id.clone(),
            reason,
        };
        let home = self.peer(addr);
        let (mut send, recv) = open_reclaiming(&conn, &home)
            .await
            .map_err(|e| refused(e.to_string()))?;
        send_bytes(&mut send, request)
            .await
            .map_err(|e| refused(e.to_string()))?;
        Ok(Exchange {
            send,
            reader: FrameReader::new(recv),
            home,
            conn: conn.stable_id(),
            reused: false,
        })
    }

    /// The pooled connection to `member` ([`PeerPool::connection`]), and its address.
    async fn member_connection(
        &self,
        member: &Member,
    ) -> Result<(SocketAddr, quinn::Connection), PeerError> {
        let addr: SocketAddr = member.addr.parse().map_err(|_| PeerError::Refused {
            node: member.id.clone(),
            reason: format!("bad address {}", member.addr),
        })?;
        Ok((addr, self.connection(&member.id, addr).await?))
    }

    /// Sends `frame` to `member` and waits (up to `deadline`) for one answer frame.
    pub async fn call(
        &self,
        member: &Member,
        frame: &Frame,
        deadline: Duration,
    ) -> Result<Frame, PeerError> {
        let refused = |reason: String| PeerError::Refused {
            node: member.id.clone(),
            reason,
        };
        let work = async {
            let (mut send, mut reader) = self.open(member, frame).await?;
            let _ = send.finish();
            match reader.next().await {
                Ok(Some(f)) => Ok(f),
                Ok(None) => Err(refused("stream closed without an answer".into())),
                Err(e) => Err(refused(e.to_string())),
            }
        };
        tokio::time::timeout(deadline, work)
            .await
            .unwrap_or_else(|_| Err(refused(format!("no answer within {deadline:?}"))))
    }

    /// Keeps a connection to every seed and every known member other than `skip_id` (our own
    /// id, for nodes), reconnecting as needed, until `shutdown`. Connections carry
    /// invalidations back to us, so they are held open, not only opened on demand.
    ///
    /// Seeds are `ip:port` or `host:port`; names are resolved again on every round, so a DNS
    /// name with one address per node (a Kubernetes headless service) follows the nodes.
    pub async fn maintain(self: Arc<Self>, seeds: Vec<String>, shutdown: CancellationToken) {
        loop {
            let mut targets: Vec<(String, SocketAddr)> = Vec::new();
            for seed in &seeds {
                match tokio::net::lookup_host(seed.as_str()).await {
                    Ok(addrs) => {
                        for a in addrs {
                            if !targets.iter().any(|(_, t)| *t == a) {
                                targets.push((a.to_string(), a));
                            }
                        }
                    }
                    Err(e) => tracing::debug!(%seed, error = %e, "seed does not resolve"),
                }
            }
            for m in self.members().iter() {
                if m.id == self.me.id {
                    continue;
                }
                if let Ok(a) = m.addr.parse::<SocketAddr>() {
                    if !targets.iter().any(|(_, t)| *t == a) {
                        targets.push((m.id.clone(), a));
                    }
                }
            }
            let mut all_up = true;
            for (name, addr) in targets {
                if self.me.role == Role::Node
                    && self
                        .members()
                        .iter()
                        .any(|m| m.id == self.me.id && m.addr == addr.to_string())
                {
                    continue;
                }
                if let Err(e) = self.connection(&name, addr).await {
                    all_up = false;
                    tracing::debug!(peer = %name, error = %e, "peer not reachable");
                }
            }
            // Streams idle past their limit are closed here too, not only when the next
            // request to their node finds them.
            for p in self.peer_list() {
                p.close_idle(false);
            }
            // Quickly while something is missing, then at a relaxed pace.
            let wait = if all_up {
                Duration::from_secs(2)
            } else {
                Duration::from_millis(250)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Closes every connection, telling peers we leave the cluster.
    pub fn close(&self) {
        self.endpoint
            .close(close::LEAVING.into(), close::LEAVING_REASON);
    }

    /// Sends one gossip datagram to the node at `addr` (connecting first if needed, in the
    /// background: a datagram that cannot go now is lost, as on UDP, and SWIM copes).
    pub fn send_datagram(
        &self,
        addr: SocketAddr,
        data: bytes::Bytes,
    ) -> tokio::task::JoinHandle<()> {
        let pool = self.weak.get().and_then(|w| w.upgrade());
        tokio::spawn(async move {
            let Some(pool) = pool else { return };
            match pool.connection(&addr.to_string(), addr).await {
                Ok(c) => {
                    if let Err(e) = c.send_datagram(data) {
                        tracing::debug!(%addr, error = %e, "gossip datagram not sent");
                    }
                }
                Err(e) => tracing::trace!(%addr, error = %e, "gossip peer not reachable"),
            }
        })
    }
}

/// Connection close codes (application level).
pub mod close {
    /// The member is shutting down gracefully and leaves the cluster.
    pub const LEAVING: u32 = 0x10;
    /// The reason text sent with [`LEAVING`].
    pub const LEAVING_REASON: &[u8] = b"leaving the cluster";

    /// Whether a connection closed because the peer left the cluster.
    pub fn is_leaving(e: &quinn::ConnectionError) -> bool {
        matches!(e, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == LEAVING.into())
    }
}

/// A member's state from the reports about it (`true`: the member's own report): a member
/// that says it left has left; otherwise the majority wins, a tie is settled by the others'
/// reports, and a remaining tie by the most alive state.
fn vote(reports: &[(bool, &Member)]) -> MemberState {
    if reports
        .iter()
        .any(|(own, m)| *own && m.state == MemberState::Left)
    {
        return MemberState::Left;
    }
    let tally = |others_only: bool| {
        let mut t: std::collections::BTreeMap<MemberState, usize> = Default::default();
        for (own, m) in reports {
            if !(others_only && *own) {
                *t.entry(m.state).or_default() += 1;
            }
        }
        t
    };
    let winners = |t: &std::collections::BTreeMap<MemberState, usize>| -> Vec<MemberState> {
        let max = t.values().copied().max().unwrap_or(0);
        t.iter()
            .filter(|(_, n)| **n == max)
            .map(|(s, _)| *s)
            .collect()
    };
    let all = winners(&tally(false));
    if all.len() == 1 {
        return all[0];
    }
    let others = winners(&tally(true));
    if others.len() == 1 {
        return others[0];
    }
    all.into_iter().min().unwrap_or(MemberState::Alive)
}

/// Checks a seed: `ip:port`, or `host:port` to be resolved by DNS.
pub fn check_seed(seed: &str) -> Result<(), String> {
    if seed.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match seed.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && port.parse::<u16>().is_ok() && !host.contains('/') =>
        {
            Ok(())
        }
        _ => Err(format!("`{seed}` is not an ip:port or host:port address")),
    }
}

/// Who acknowledged an invalidation, who did not, and how long it took.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PurgeReport {
    /// Members that applied it.
    pub acked: Vec<String>,
    /// Members that should have and did not acknowledge in time.
    pub missing: Vec<String>,
    /// Time from acceptance to the last acknowledgement (or the deadline).
    pub elapsed_ms: u64,
}

impl PurgeReport {
    /// Folds in one acknowledgement.
    pub fn merge(&mut self, acked: Vec<String>, missing: Vec<String>) {
        self.acked.extend(acked);
        self.missing.extend(missing);
    }

    /// Sorts, removes duplicates, and drops from `missing` whoever acknowledged after all
    /// (an edge reached through another node).
    pub fn settle(&mut self, started: Instant) {
        self.acked.sort();
        self.acked.dedup();
        self.missing.sort();
        self.missing.dedup();
        let acked = &self.acked;
        self.missing.retain(|m| acked.binary_search(m).is_err());
        self.elapsed_ms = started.elapsed().as_millis() as u64;
    }
}

/// Sends `Purge { forward: true }` to each of `nodes` in parallel and folds their answers
/// into `report`; a node that does not answer by `deadline` is reported missing.
pub async fn fan_out_purge(
    pool: &PeerPool,
    nodes: &[Member],
    id: u64,
    inv: &cdn_proto::Invalidation,
    deadline: Duration,
    report: &mut PurgeReport,
) {
    let frame = Frame::Purge {
        id,
        forward: true,
        at: Position::default(),
        inv: inv.clone(),
    };
    let calls = nodes.iter().map(|m| {
        let frame = &frame;
        async move { (m.id.clone(), pool.call(m, frame, deadline).await) }
    });
    for (node, answer) in futures::future::join_all(calls).await {
        match answer {
            Ok(Frame::Ack { acked, missing }) => report.merge(acked, missing),
            Ok(other) => {
                tracing::warn!(%node, frame = other.name(), "unexpected answer to purge");
                report.missing.push(node);
            }
            Err(e) => {
                tracing::warn!(%node, error = %e, "purge not acknowledged");
                report.missing.push(node);
            }
        }
    }
}

/// Most purges an edge keeps sending again to nodes that have not acknowledged them.
pub const MAX_UNDELIVERED: usize = 10_000;

/// How long a purge is sent again to the nodes that have not acknowledged it.
pub const REDELIVER_FOR: Duration = Duration::from_secs(3_600);

/// Purges accepted by a member that is not a node (an edge) which some nodes have not
/// acknowledged: sent to them again until they do. (A node needs no such list: every purge it
/// accepts is in its own log, which peers that missed it replay when they reconnect.)
#[derive(Default)]
pub struct Undelivered {
    // A std mutex: pushes and swaps, never held across an await.
    list: Mutex<Vec<Owed>>,
}

struct Owed {
    id: u64,
    inv: Invalidation,
    nodes: Vec<String>,
    since: Instant,
}

impl Undelivered {
    /// Remembers that `nodes` (ids) still owe an acknowledgement for `inv`.
    pub fn add(&self, id: u64, inv: Invalidation, nodes: Vec<String>) {
        if nodes.is_empty() {
            return;
        }
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() >= MAX_UNDELIVERED {
            tracing::warn!("too many undelivered purges: dropping the oldest");
            list.remove(0);
        }
        list.push(Owed {
            id,
            inv,
            nodes,
            since: Instant::now(),
        });
    }

    /// Purges still owed by some node.
    pub fn len(&self) -> usize {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends each owed purge again to the nodes that owe it (a node that left owes nothing),
    /// in order, and keeps what is still not acknowledged.
    pub async fn retry(&self, pool: &PeerPool, deadline: Duration) {
        let owed = std::mem::take(&mut *self.list.lock().unwrap_or_else(|p| p.into_inner()));
        let mut kept = Vec::new();
        for mut o in owed {
            if o.since.elapsed() > REDELIVER_FOR {
                tracing::warn!(purge = o.id, nodes = ?o.nodes, "purge never acknowledged: given up");
                continue;
            }
            let roster = pool.roster();
            let targets: Vec<Member> = roster
                .iter()
                .filter(|m| o.nodes.contains(&m.id) && m.state != MemberState::Left)
                .cloned()
                .collect();
            let mut report = PurgeReport::default();
            fan_out_purge(pool, &targets, o.id, &o.inv, deadline, &mut report).await;
            o.nodes = targets
                .iter()
                .map(|m| m.id.clone())
                .filter(|id| !report.acked.contains(id))
                .collect();
            if o.nodes.is_empty() {
                tracing::info!(purge = o.id, "purge delivered late to every node");
            } else {
                kept.push(o);
            }
        }
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        // Purges added meanwhile come after the retried ones.
        kept.append(&mut list);
        *list = kept;
    }

    /// Retries every `every` until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        pool: Arc<PeerPool>,
        every: Duration,
        deadline: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if !self.is_empty() {
                self.retry(&pool, deadline).await;
            }
        }
    }
}

/// A whole response fetched from a node.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Status.
    pub status: http::StatusCode,
    /// Header fields.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Vec<bytes::Bytes>,
    /// What the node did.
    pub cache: cdn_proto::CacheStatus,
}

/// GETs `key` from `member` (which fills it from the origin if needed, coalesced with any
/// concurrent miss) and reads the whole response, up to `max` body bytes.
pub async fn fetch_whole(
    pool: &PeerPool,
    member: &Member,
    key: &str,
    max: u64,
    deadline: Duration,
) -> Result<Fetched, PeerError> {
    let refused = |reason: String| PeerError::Refused {
        node: member.id.clone(),
        reason,
    };
    let request = Frame::Request {
        id: 0,
        method: cdn_proto::Method::Get,
        path: key.to_string(),
        headers: vec![],
    };
    let work = async {
        let (mut send, mut reader) = pool.open(member, &request).await?;
        let _ = send.finish();
        let mut first = reader.next().await.map_err(|e| refused(e.to_string()))?;
        while matches!(first, Some(Frame::Pending)) {
            first = reader.next().await.map_err(|e| refused(e.to_string()))?;
        }
        let (status, cache, headers) = match first {
            Some(Frame::ResponseHead {
                status,
                cache,
                headers,
                ..
            }) => (status, cache, headers),
            Some(Frame::Error { code, message }) => {
                return Err(refused(format!("{code:?}: {message}")))
            }
            other => return Err(refused(format!("unexpected answer {other:?}"))),
        };
        let body = crate::quic::read_body(&mut reader, max)
            .await
            .map_err(refused)?;
        Ok(Fetched {
            status: http::StatusCode::from_u16(status).map_err(|e| refused(e.to_string()))?,
            headers: crate::quic::headers_from_fields(headers)
                .map_err(|e| refused(e.to_string()))?,
            body,
            cache,
        })
    };
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| Err(refused(format!("no answer within {deadline:?}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(state: MemberState) -> Member {
        Member {
            state,
            ..Member::alive("n1", "127.0.0.1:1", "")
        }
    }

    #[test]
    fn member_state_is_the_majority_of_reports() {
        use MemberState::*;
        let (alive, down, suspect, left) = (m(Alive), m(Down), m(Suspect), m(Left));
        // Killed with its link still open: its own stale report is outvoted.
        assert_eq!(
            vote(&[(true, &alive), (false, &down), (false, &down)]),
            Down
        );
        // Cut off from one peer only: still alive.
        assert_eq!(
            vote(&[(true, &alive), (false, &alive), (false, &down)]),
            Alive
        );
        // A tie is settled by the others.
        assert_eq!(vote(&[(true, &alive), (false, &down)]), Down);
        assert_eq!(vote(&[(false, &suspect), (false, &alive)]), Alive);
        // Leaving is the member's own word.
        assert_eq!(
            vote(&[(true, &left), (false, &alive), (false, &alive)]),
            Left
        );
        assert_eq!(vote(&[(false, &left), (false, &alive)]), Alive);
    }

    #[test]
    fn seeds_are_ip_port_or_host_port() {
        assert!(check_seed("127.0.0.1:4433").is_ok());
        assert!(check_seed("[::1]:4433").is_ok());
        assert!(check_seed("cdn-nodes.default.svc.cluster.local:4433").is_ok());
        assert!(check_seed("localhost").is_err());
        assert!(check_seed(":4433").is_err());
        assert!(check_seed("host:port").is_err());
    }
}
