//! The node tier as an edge sees it: the member list, one pooled QUIC connection per node,
//! owner selection, and a fill that pulls an object from its owners into a flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cdn_core::fill::{FillError, FillErrorKind, FlightWriter, Head, Via};
use cdn_core::quic::{
    codes, fields_from_headers, headers_from_fields, send_frame, FrameReader, WireError,
};
use cdn_core::store::{Entry, Store};
use cdn_proto::{Frame, Member, Method};
use tokio::sync::watch;

/// How a request to one node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeFailure {
    /// Recently failed to connect; skipped until the retry time.
    #[error("node {0} is marked down")]
    Down(String),
    /// Could not connect or open a stream.
    #[error("connecting to {node}: {reason}")]
    Connect {
        /// Node id.
        node: String,
        /// Why.
        reason: String,
    },
    /// The node answered with an error or broke the protocol before the head.
    #[error("node {node}: {reason}")]
    Refused {
        /// Node id.
        node: String,
        /// Why.
        reason: String,
    },
}

struct Peer {
    addr: SocketAddr,
    // Async mutex: held across the handshake so concurrent requests share one connect.
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
    // Std mutex: a timestamp read or written, never across an await.
    down_until: Mutex<Option<Instant>>,
}

/// Timeouts for talking to nodes.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// QUIC handshake.
    pub connect: Duration,
    /// From request to response head.
    pub response: Duration,
    /// Skip a node this long after a failed connect.
    pub retry: Duration,
}

/// The edge's view of the node tier.
pub struct Upstream {
    endpoint: quinn::Endpoint,
    members: watch::Sender<Arc<Vec<Member>>>,
    // Std mutex: a map lookup or insert, never held across an await.
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    replicas: usize,
    timeouts: Timeouts,
}

impl Upstream {
    /// An upstream using `endpoint` (a client endpoint with the cluster's client config).
    pub fn new(endpoint: quinn::Endpoint, replicas: usize, timeouts: Timeouts) -> Self {
        Self {
            endpoint,
            members: watch::Sender::new(Arc::new(Vec::new())),
            peers: Mutex::new(HashMap::new()),
            replicas,
            timeouts,
        }
    }

    /// The current member list.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.members.borrow().clone()
    }

    /// Follows changes of the member list.
    pub fn watch_members(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.members.subscribe()
    }

    /// The owners of `key`, best first.
    pub fn owners(&self, key: &str) -> Vec<Member> {
        let members = self.members();
        cdn_proto::owners(key.as_bytes(), &members, self.replicas, |m| &m.id)
            .into_iter()
            .map(|i| members[i].clone())
            .collect()
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
                })
            })
            .clone()
    }

    /// The pooled connection to `addr`, connecting if needed.
    async fn connection(
        &self,
        name: &str,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, NodeFailure> {
        let peer = self.peer(addr);
        if let Some(until) = *peer.down_until.lock().unwrap_or_else(|p| p.into_inner()) {
            if Instant::now() < until {
                return Err(NodeFailure::Down(name.to_string()));
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
                Some(Instant::now() + self.timeouts.retry);
            NodeFailure::Connect {
                node: name.to_string(),
                reason,
            }
        };
        let connecting = self
            .endpoint
            .connect(peer.addr, cdn_core::tls::SERVER_NAME)
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
        *peer.down_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Asks the node at `addr` which members it knows.
    pub async fn fetch_members(&self, addr: SocketAddr) -> Result<Vec<Member>, NodeFailure> {
        let name = addr.to_string();
        let conn = self.connection(&name, addr).await?;
        let refused = |reason: String| NodeFailure::Refused {
            node: name.clone(),
            reason,
        };
        let (mut send, recv) = conn.open_bi().await.map_err(|e| refused(e.to_string()))?;
        send_frame(&mut send, &Frame::MembersRequest)
            .await
            .map_err(|e| refused(e.to_string()))?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv);
        match tokio::time::timeout(self.timeouts.response, reader.next()).await {
            Ok(Ok(Some(Frame::Members { members }))) => Ok(members),
            Ok(Ok(other)) => Err(refused(format!("unexpected answer {other:?}"))),
            Ok(Err(e)) => Err(refused(e.to_string())),
            Err(_) => Err(refused("no answer".into())),
        }
    }

    /// Merges members learned from a node into the list (by id; newest address wins).
    pub fn merge_members(&self, learned: Vec<Member>) {
        self.members.send_if_modified(|list| {
            let mut changed = false;
            let mut next: Vec<Member> = list.as_ref().clone();
            for m in learned {
                match next.iter_mut().find(|x| x.id == m.id) {
                    Some(x) if *x == m => {}
                    Some(x) => {
                        *x = m;
                        changed = true;
                    }
                    None => {
                        next.push(m);
                        changed = true;
                    }
                }
            }
            if changed {
                next.sort_by(|a, b| a.id.cmp(&b.id));
                *list = Arc::new(next);
            }
            changed
        });
    }

    /// Learns the member list from `seeds`, retrying the ones that have not answered; runs
    /// until `shutdown`.
    pub async fn discover(
        self: Arc<Self>,
        seeds: Vec<SocketAddr>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut answered = vec![false; seeds.len()];
        loop {
            for (i, addr) in seeds.iter().enumerate() {
                match self.fetch_members(*addr).await {
                    Ok(m) => {
                        answered[i] = true;
                        self.merge_members(m);
                    }
                    Err(e) => tracing::debug!(seed = %addr, error = %e, "seed did not answer"),
                }
            }
            // Retry quickly until every seed has answered, then refresh slowly.
            let wait = if answered.iter().all(|a| *a) {
                Duration::from_secs(10)
            } else {
                Duration::from_millis(250)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Closes every pooled connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"edge shutting down");
    }

    /// Sends a GET for `key` to `member` and returns the response head and the frame reader
    /// positioned at the body. Failures before the head are retryable on another owner.
    async fn request(
        &self,
        member: &Member,
        request_id: u64,
        key: &str,
        headers: &http::HeaderMap,
    ) -> Result<(Head, FrameReader), NodeFailure> {
        let addr: SocketAddr = member.addr.parse().map_err(|_| NodeFailure::Refused {
            node: member.id.clone(),
            reason: format!("bad address {}", member.addr),
        })?;
        let conn = self.connection(&member.id, addr).await?;
        let refused = |reason: String| NodeFailure::Refused {
            node: member.id.clone(),
            reason,
        };
        let (mut send, recv) = conn.open_bi().await.map_err(|e| refused(e.to_string()))?;
        let frame = Frame::Request {
            id: request_id,
            method: Method::Get,
            path: key.to_string(),
            headers: fields_from_headers(headers),
        };
        send_frame(&mut send, &frame)
            .await
            .map_err(|e| refused(e.to_string()))?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv);
        let first = tokio::time::timeout(self.timeouts.response, reader.next())
            .await
            .map_err(|_| {
                refused(format!(
                    "no response head within {:?}",
                    self.timeouts.response
                ))
            })?
            .map_err(|e| refused(e.to_string()))?;
        match first {
            Some(Frame::ResponseHead {
                status,
                cache,
                node,
                content_length,
                headers,
            }) => {
                let status =
                    http::StatusCode::from_u16(status).map_err(|_| refused("bad status".into()))?;
                let headers = headers_from_fields(headers).map_err(|e| refused(e.to_string()))?;
                Ok((
                    Head {
                        status,
                        headers,
                        content_length,
                        storable: false,
                        via: Via::Node {
                            id: node.into(),
                            status: cache,
                        },
                    },
                    reader,
                ))
            }
            Some(Frame::Error { code, message }) => Err(refused(format!("{code:?}: {message}"))),
            Some(other) => {
                reader.stop(codes::PROTOCOL);
                Err(refused(format!("unexpected frame {other:?}")))
            }
            None => Err(refused("stream ended before the head".into())),
        }
    }

    /// Fills `key` from its owners, best first, into `w`; the edge stores the result in `l1`
    /// when its own policy allows. Returns `Err` with the flight untouched when no owner could
    /// produce a head, so the caller can fall back to the origin.
    pub async fn fill(
        &self,
        request_id: u64,
        key: &str,
        headers: &http::HeaderMap,
        l1: &Store,
        max_object: u64,
        mut w: FlightWriter<Head>,
    ) -> Result<Result<(), FillError>, (FlightWriter<Head>, Vec<NodeFailure>)> {
        let mut failures = Vec::new();
        for member in self.owners(key) {
            let (mut head, mut reader) = match self.request(&member, request_id, key, headers).await
            {
                Ok(x) => x,
                Err(f) => {
                    tracing::debug!(%key, error = %f, "owner failed; trying the next");
                    failures.push(f);
                    continue;
                }
            };
            let now = SystemTime::now();
            let parts = {
                let mut r = http::Response::new(());
                *r.status_mut() = head.status;
                *r.headers_mut() = head.headers.clone();
                r.into_parts().0
            };
            let policy_req = cdn_core::policy::policy_request(&http::Method::GET, key, headers);
            let decision = cdn_core::policy::evaluate(&policy_req, &parts, now);
            head.storable = decision.storable;
            let shareable = decision.storable;
            let status = head.status;
            let resp_headers = head.headers.clone();
            let expected = head.content_length;
            let storable = decision.storable && head.content_length.is_none_or(|l| l <= max_object);
            w.set_head(head, shareable);
            return Ok(self
                .stream_body(
                    key,
                    &mut reader,
                    expected,
                    storable,
                    max_object,
                    l1,
                    status,
                    resp_headers,
                    decision,
                    now,
                    w,
                )
                .await);
        }
        Err((w, failures))
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_body(
        &self,
        key: &str,
        reader: &mut FrameReader,
        expected: Option<u64>,
        mut storable: bool,
        max_object: u64,
        l1: &Store,
        status: http::StatusCode,
        resp_headers: http::HeaderMap,
        decision: cdn_core::policy::Decision,
        now: SystemTime,
        mut w: FlightWriter<Head>,
    ) -> Result<(), FillError> {
        let broken = |m: String| FillError::new(FillErrorKind::Broken, m);
        loop {
            match reader.next().await {
                Ok(Some(Frame::Data(d))) => w.push(d),
                Ok(Some(Frame::End { len })) => {
                    let got = w.len();
                    if got != len || expected.is_some_and(|e| e != got) {
                        let err = broken(format!(
                            "node sent {got} bytes, announced {len}/{expected:?}"
                        ));
                        w.fail(err.clone());
                        return Err(err);
                    }
                    break;
                }
                Ok(Some(Frame::Error { code, message })) => {
                    let err = broken(format!("node: {code:?}: {message}"));
                    w.fail(err.clone());
                    return Err(err);
                }
                Ok(Some(other)) => {
                    reader.stop(codes::PROTOCOL);
                    let err = broken(format!("unexpected frame {other:?}"));
                    w.fail(err.clone());
                    return Err(err);
                }
                Ok(None) => {
                    let err = broken("node stream ended without End".into());
                    w.fail(err.clone());
                    return Err(err);
                }
                Err(e) => {
                    let err = broken(wire_reason(&e));
                    w.fail(err.clone());
                    return Err(err);
                }
            }
        }
        storable &= w.len() <= max_object;
        if storable {
            let entry = Entry::new(status, resp_headers, w.chunks(), decision, now);
            l1.insert(key, Arc::new(entry)).await;
        }
        w.finish();
        Ok(())
    }
}

fn wire_reason(e: &WireError) -> String {
    format!("node stream: {e}")
}
