//! Cluster membership among cache nodes: SWIM (the `foca` crate) carried in QUIC datagrams
//! over the nodes' mutually authenticated connections, so gossip needs no extra port and no
//! member without a cluster certificate can take part.
//!
//! foca is sans-IO: this module owns the one task that feeds it datagrams, fires its timers
//! in order, and sends what it asks to send through the [`PeerPool`]. After every step the
//! view (every member foca knows, with its state, plus ourselves) is handed to the pool,
//! which derives the routing list and tells the edges (see `cache-node`'s links).
//!
//! An identity is the node's id, QUIC address and region plus a `bump` (the start time in
//! milliseconds): a restarted node, or one wrongly declared down, comes back with a larger
//! bump and replaces its old identity at once instead of waiting for it to be forgotten.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cdn_proto::{Member, MemberState};
use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, State, Timer};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::peers::PeerPool;

/// Largest gossip datagram: under QUIC's minimum datagram room on a 1,200-byte path.
pub const MAX_PACKET: usize = 1_100;

/// A node as the failure detector knows it.
#[derive(Clone, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeIdentity {
    /// The node's id (placement input).
    pub id: String,
    /// Its QUIC address: the identity's unique address.
    pub addr: SocketAddr,
    /// Its region.
    pub region: String,
    /// Larger wins for the same address (restart or rejoin).
    pub bump: u64,
}

impl NodeIdentity {
    /// An identity for a node starting now.
    pub fn new(id: &str, addr: SocketAddr, region: &str) -> Self {
        let bump = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        Self {
            id: id.to_string(),
            addr,
            region: region.to_string(),
            bump,
        }
    }

    /// What we know of a seed before it answers: only its address (foca accepts an announce
    /// addressed to any identity with the receiver's address).
    fn seed(addr: SocketAddr) -> Self {
        Self {
            id: String::new(),
            addr,
            region: String::new(),
            bump: 0,
        }
    }

    fn member(&self, state: MemberState) -> Member {
        Member {
            id: self.id.clone(),
            addr: self.addr.to_string(),
            region: self.region.clone(),
            state,
        }
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// Failure-detector timing.
#[derive(Debug, Clone, Copy)]
pub struct GossipTiming {
    /// How often each node probes one other member.
    pub probe_period: Duration,
    /// How long a probe waits for its answer before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// How long a suspected member has to refute before it is declared down.
    pub suspect_to_down: Duration,
}

impl Default for GossipTiming {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            suspect_to_down: Duration::from_millis(1_500),
        }
    }
}

impl GossipTiming {
    fn foca_config(&self) -> foca::Config {
        let mut c = foca::Config::new_lan(NonZeroU32::MIN.saturating_add(15));
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.suspect_to_down_after = self.suspect_to_down;
        // Down members are remembered for a while so a late report cannot revive them.
        c.remove_down_after = Some(Duration::from_secs(120));
        c.max_packet_size = std::num::NonZeroUsize::new(MAX_PACKET).unwrap_or(c.max_packet_size);
        c
    }
}

enum Input {
    Data(Bytes),
    Leave(oneshot::Sender<()>),
}

/// A node's membership: the handle of the task running the failure detector.
pub struct Membership {
    tx: mpsc::Sender<Input>,
}

impl Membership {
    /// Starts the failure detector for `me`, joining through `seeds` (`ip:port` or
    /// `host:port`, resolved again until someone answers), until `shutdown`.
    pub fn start(
        me: NodeIdentity,
        pool: Arc<PeerPool>,
        seeds: Vec<String>,
        timing: GossipTiming,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(1_024);
        let task = Task {
            foca: Foca::new(
                me.clone(),
                timing.foca_config(),
                rand::make_rng(),
                PostcardCodec,
            ),
            runtime: AccumulatingRuntime::new(),
            timers: BTreeMap::new(),
            seq: 0,
            me,
            pool,
            leaving: false,
        };
        tokio::spawn(task.run(rx, seeds, shutdown));
        Arc::new(Self { tx })
    }

    /// Feeds a datagram received from a peer (dropped when the detector is behind: it is
    /// UDP-like traffic and SWIM tolerates loss).
    pub fn input(&self, data: Bytes) {
        let _ = self.tx.try_send(Input::Data(data));
    }

    /// Tells the cluster we are leaving; returns once the news was sent (or after 1 s).
    pub async fn leave(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Input::Leave(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
        }
    }
}

struct Task {
    foca: Foca<NodeIdentity, PostcardCodec, rand::rngs::StdRng, foca::NoCustomBroadcast>,
    runtime: AccumulatingRuntime<NodeIdentity>,
    // Timers by deadline and submission order: foca needs them fired in that order.
    timers: BTreeMap<(Instant, u64), Timer<NodeIdentity>>,
    seq: u64,
    me: NodeIdentity,
    pool: Arc<PeerPool>,
    leaving: bool,
}

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        seeds: Vec<String>,
        shutdown: CancellationToken,
    ) {
        self.publish();
        // Announce to the seeds until someone answers; quickly at first.
        let mut join = tokio::time::interval(Duration::from_millis(300));
        join.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self.timers.keys().next().map(|(at, _)| *at);
            let mut left: Option<oneshot::Sender<()>> = None;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                input = rx.recv() => match input {
                    None => return,
                    Some(Input::Data(d)) => {
                        if let Err(e) = self.foca.handle_data(&d, &mut self.runtime) {
                            tracing::trace!(error = %e, "gossip datagram ignored");
                        }
                    }
                    Some(Input::Leave(done)) => {
                        self.leaving = true;
                        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
                            tracing::warn!(error = %e, "leaving the membership");
                        }
                        left = Some(done);
                    }
                },
                _ = sleep_until(next), if next.is_some() => {
                    let now = Instant::now();
                    while let Some(entry) = self.timers.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        let timer = entry.remove();
                        if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
                            tracing::debug!(error = %e, "gossip timer");
                        }
                    }
                }
                _ = join.tick(), if !self.leaving && self.foca.num_members() == 0 => {
                    self.announce(&seeds).await;
                }
            }
            let sent = self.drain();
            if let Some(done) = left {
                // The leave must be on the wire before the connections close.
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    futures::future::join_all(sent),
                )
                .await;
                let _ = done.send(());
            }
        }
    }

    async fn announce(&mut self, seeds: &[String]) {
        for seed in seeds {
            let Ok(addrs) = tokio::net::lookup_host(seed.as_str()).await else {
                tracing::debug!(%seed, "seed does not resolve");
                continue;
            };
            for addr in addrs {
                if addr == self.me.addr {
                    continue;
                }
                if let Err(e) = self
                    .foca
                    .announce(NodeIdentity::seed(addr), &mut self.runtime)
                {
                    tracing::debug!(%addr, error = %e, "announce");
                }
            }
        }
    }

    /// Carries out what foca asked for; returns the sends started.
    fn drain(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut sent = Vec::new();
        while let Some((to, data)) = self.runtime.to_send() {
            sent.push(self.pool.send_datagram(to.addr, data));
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.seq += 1;
            self.timers.insert((now + after, self.seq), timer);
        }
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => {
                    tracing::info!(member = %m.id, addr = %m.addr, "member up");
                    self.pool.clear_left(m.addr);
                }
                OwnedNotification::MemberDown(m) => {
                    tracing::warn!(member = %m.id, addr = %m.addr, "member down")
                }
                OwnedNotification::Rename(old, new) => {
                    tracing::info!(member = %new.id, old = old.bump, new = new.bump, "member rejoined");
                    self.pool.clear_left(new.addr);
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(bump = id.bump, "declared down by the cluster; rejoined");
                    self.me = id;
                }
                OwnedNotification::Defunct if !self.leaving => {
                    tracing::warn!("declared down by the cluster");
                }
                _ => {}
            }
        }
        self.publish();
        sent
    }

    /// Hands the current view to the pool.
    fn publish(&self) {
        let mut view: Vec<Member> = self
            .foca
            .iter_membership_state()
            .map(|m| {
                let state = match m.state() {
                    State::Alive => MemberState::Alive,
                    State::Suspect => MemberState::Suspect,
                    State::Down => MemberState::Down,
                };
                m.id().member(state)
            })
            .filter(|m| m.id != self.me.id && !m.id.is_empty())
            .collect();
        let me = if self.leaving {
            MemberState::Left
        } else {
            MemberState::Alive
        };
        view.push(self.me.member(me));
        view.sort_by(|a, b| a.id.cmp(&b.id));
        // One entry per id: an old identity of a restarted member may linger as down.
        view.dedup_by(|b, a| {
            if a.id == b.id {
                if b.state < a.state {
                    std::mem::swap(a, b);
                }
                true
            } else {
                false
            }
        });
        self.pool.set_view(self.me.addr, view);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
