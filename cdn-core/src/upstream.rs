//! A cache tier seen from in front of it: the member list, one pooled QUIC connection per
//! node, owner selection (within a region when one is set), and a fill that pulls an object
//! from its owners into a flight. Edges use it for the node tier of their region; a node whose
//! region has a parent uses it for the parent region's nodes (the shield).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::fill::{FillError, FillErrorKind, FlightWriter, Head, Served, Sink, Via};
use cdn_net::peers::{Exchange, PeerError, PeerPool};
use cdn_net::quic::{codes, headers_from_fields, FrameReader, WireError};
use cdn_proto::{Frame, Member, Method};
use cdn_store::{Entry, NewEntry, Store};
use tokio::sync::watch;

/// Response-head latencies kept for the hedge delay.
const LATENCY_WINDOW: usize = 512;
/// Once the window is full, the hedge delay (its p95) is recomputed every this many samples.
const P95_EVERY: u32 = 32;

/// How long after a hedge found nothing stored the next owner is asked in full, if the first
/// owner still has not answered: a stuck owner, rather than a slow one.
const ESCALATE_AFTER: Duration = Duration::from_secs(1);

/// How long an owner that keeps losing to hedges is asked after the others (outlier
/// ejection): longer than the failure detector takes to declare a hung node down (about
/// 2.5 s), so a hung node costs a hedge delay to the few requests that found it out, not to
/// every request until then.
const EJECT_FOR: Duration = Duration::from_secs(3);

/// Hedges an owner must lose in a row (with no answer of its own in between) to be ejected:
/// a healthy node's slow tail loses one now and then, a hung one loses them all.
const EJECT_AFTER: u32 = 3;

/// An owner's recent record against hedges.
#[derive(Default)]
struct Record {
    losses: u32,
    ejected_until: Option<tokio::time::Instant>,
}

/// The edge's view of the node tier.
pub struct Upstream {
    pool: Arc<PeerPool>,
    replicas: usize,
    hedge_after: Option<Duration>,
    latency: LatencyWindow,
    hedges: std::sync::atomic::AtomicU64,
    // Place keys over this region's members only (None: every member).
    region: Option<String>,
    // With a region that has no members: use every member (an edge) or none (a shield).
    fallback_to_all: bool,
    // Owners that recently lost to hedges, by id. A std mutex: a lookup or update per miss,
    // never held across an await.
    records: std::sync::Mutex<std::collections::HashMap<String, Record>>,
    // Per member: heads received, and how many were hits there (for the status page).
    answers: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
}

impl Upstream {
    /// An upstream over `pool`, trying `replicas` owners per key.
    pub fn new(pool: Arc<PeerPool>, replicas: usize, hedge_after: Option<Duration>) -> Self {
        Self {
            pool,
            replicas,
            hedge_after,
            latency: LatencyWindow::default(),
            hedges: std::sync::atomic::AtomicU64::new(0),
            region: None,
            fallback_to_all: true,
            records: std::sync::Mutex::default(),
            answers: std::sync::Mutex::default(),
        }
    }

    /// Places keys over the members of `region` only; when it has none, over every member
    /// (`fallback_to_all`) or over none (then every fill goes to the caller's fallback).
    pub fn in_region(mut self, region: &str, fallback_to_all: bool) -> Self {
        self.region = Some(region.to_string());
        self.fallback_to_all = fallback_to_all;
        self
    }

    /// The connection pool (and member list).
    pub fn pool(&self) -> &Arc<PeerPool> {
        &self.pool
    }

    /// The current member list.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.pool.members()
    }

    /// Follows changes of the member list.
    pub fn watch_members(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.pool.watch_members()
    }

    /// Whether any member may own a key (what [`Upstream::owners`] would find non-empty,
    /// without placing a key or copying members).
    pub fn has_owners(&self) -> bool {
        !self.placed_over(&self.members()).is_empty()
    }

    /// The members keys are placed over: this region's, or every member when it has none and
    /// `fallback_to_all` (borrowed, not copied).
    fn placed_over<'a>(&self, all: &'a [Member]) -> Vec<&'a Member> {
        let mut members: Vec<&Member> = all
            .iter()
            .filter(|m| self.region.as_ref().is_none_or(|r| &m.region == r))
            .collect();
        if members.is_empty() && self.fallback_to_all {
            members = all.iter().collect();
        }
        members
    }

    /// The owners of `key`, best first.
    pub fn owners(&self, key: &str) -> Vec<Member> {
        let all = self.members();
        self.owners_in(&all, key).into_iter().cloned().collect()
    }

    /// The owners of `key` among `all`, best first, borrowed (a fill asks them without
    /// copying a member).
    fn owners_in<'a>(&self, all: &'a [Member], key: &str) -> Vec<&'a Member> {
        let members = self.placed_over(all);
        cdn_proto::owners(key.as_bytes(), &members, self.replicas, |m| &m.id)
            .into_iter()
            .map(|i| members[i])
            .collect()
    }

    /// Sends a GET for `key` to `member` and returns the response head and the frame reader
    /// positioned at the body. Failures before the head are retryable on another owner.
    async fn request(
        &self,
        member: &Member,
        request_id: u64,
        key: &str,
        headers: &http::HeaderMap,
        alive: &std::sync::atomic::AtomicBool,
    ) -> Result<(Head, NodeBody), PeerError> {
        let refused = |reason: String| PeerError::Refused {
            node: member.id.clone(),
            reason,
        };
        let mut frame = bytes::BytesMut::with_capacity(256);
        cdn_proto::frame::encode_request(
            &mut frame,
            request_id,
            Method::Get,
            key,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        );
        let frame = frame.freeze();
        let mut ex = self.pool.exchange(member, &frame).await?;
        let t = self.pool.timeouts();
        let mut sent = tokio::time::Instant::now();
        let deadline = sent + t.response;
        let mut heard = false;
        let mut first;
        loop {
            // Until the node says anything, it has `first_byte`; once it said `Pending`, the
            // head may take as long as its origin does.
            let wait = if heard {
                deadline
            } else {
                deadline.min(sent + t.first_byte)
            };
            let read = tokio::time::timeout_at(wait, ex.reader().next())
                .await
                .map_err(|_| {
                    refused(if heard {
                        format!("no response head within {:?}", t.response)
                    } else {
                        format!("silent for {:?}", t.first_byte)
                    })
                })?;
            let closed = matches!(
                read,
                Ok(None) | Err(WireError::Read(quinn::ReadError::Reset(_)))
            );
            if !heard && ex.reused() && closed {
                // The stream was kept from an earlier request and the node closed it
                // meanwhile: once more on a new stream, not a failed owner. (A lost
                // connection is a failed owner: the next one is asked.) The old stream goes
                // first, so it does not hold a place in the node's stream allowance.
                drop(ex);
                ex = tokio::time::timeout_at(wait, self.pool.exchange_new(member, &frame))
                    .await
                    .map_err(|_| refused(format!("silent for {:?}", t.first_byte)))??;
                sent = tokio::time::Instant::now();
                continue;
            }
            first = read.map_err(|e| refused(e.to_string()))?;
            heard = true;
            if matches!(first, Some(Frame::Pending)) {
                // Alive, waiting on the origin: no reason to ask another owner.
                alive.store(true, std::sync::atomic::Ordering::Release);
                continue;
            }
            break;
        }
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
                let head = Head {
                    status,
                    headers,
                    content_length,
                    storable: false,
                    via: Via::Node {
                        id: node.into(),
                        status: cache,
                    },
                    served: Served::Fetched,
                    variant: None,
                };
                if content_length.is_some_and(|l| l <= SMALL_BODY) {
                    // Small: read it whole before answering, so a node that dies mid-body is
                    // just another failed owner and the next one is asked; the client never
                    // sees a broken response for it.
                    let body = tokio::time::timeout_at(
                        deadline,
                        cdn_net::quic::read_body(ex.reader(), SMALL_BODY),
                    )
                    .await
                    .map_err(|_| refused("body not complete in time".into()))?
                    .map_err(refused)?;
                    ex.release();
                    return Ok((head, NodeBody::Whole(body)));
                }
                Ok((head, NodeBody::Stream(ex)))
            }
            Some(Frame::Error {
                code: cdn_proto::ErrorCode::NotCached,
                ..
            }) => Err(PeerError::NotCached(member.id.clone())),
            Some(Frame::Error { code, message }) => Err(refused(format!("{code:?}: {message}"))),
            Some(other) => {
                ex.reader().stop(codes::PROTOCOL);
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
        client_headers: &http::HeaderMap,
        l1: &Sink<'_>,
        stale: Option<&Entry>,
        mut w: FlightWriter<Head>,
    ) -> Result<Result<(), FillError>, (FlightWriter<Head>, Vec<PeerError>)> {
        let Sink {
            store: l1,
            max_object,
            rules,
        } = *l1;
        let mut failures = Vec::new();
        let mark = l1.fill_mark();
        // The client's own conditionals never shape a shared fill; ours revalidate a stale copy.
        let fill_headers = crate::fill::fill_headers(client_headers);
        let headers = &fill_headers;
        // Our own fields for a refresh; the client's as they are otherwise (no copy).
        let with_validators = stale.map(|stale| {
            let mut h = headers.clone();
            // We are refreshing a copy that went stale here: a stale copy from the node would
            // only be stored again as if it were new (RFC 9111 §4.2.4, RFC 5861 §3).
            h.insert(
                cdn_http::policy::REFRESH_FIELD,
                http::HeaderValue::from_static("1"),
            );
            if stale.validators() {
                h.extend(cdn_http::policy::validators_for(&stale.headers()));
            }
            h
        });
        let stale = stale.filter(|s| s.validators());
        let all = self.members();
        let owners = self.in_preference_order(self.owners_in(&all, key));
        let asked = with_validators.as_ref().unwrap_or(headers);
        let Some((member, mut head, body)) = self
            .first_head(&owners, request_id, key, asked, &mut failures)
            .await
        else {
            return Err((w, failures));
        };
        let now = SystemTime::now();
        let policy_req = cdn_http::policy::policy_request(&http::Method::GET, key, headers);
        if let (Some(s), http::StatusCode::NOT_MODIFIED) = (stale, head.status) {
            // The node confirmed our copy: refresh it and serve its body.
            let (entry, storable) =
                crate::fill::revalidated(s, &head.headers, &policy_req, now, rules);
            let entry = entry.with_source(member.id.as_str().into());
            let entry = if storable {
                let served = entry.clone();
                match l1.insert_filled(key, headers, entry, mark).await {
                    Some(stored) => stored,
                    None => served.keyed(key),
                }
            } else {
                entry.keyed(key)
            };
            let node_status = match &head.via {
                Via::Node { status, .. } => *status,
                _ => cdn_proto::CacheStatus::Hit,
            };
            let mut h = entry.headers();
            h.insert(
                http::header::AGE,
                http::HeaderValue::from(entry.age(now).as_secs()),
            );
            w.set_head(
                Head {
                    status: entry.status(),
                    headers: h,
                    content_length: Some(entry.body_len()),
                    storable,
                    via: Via::Node {
                        id: member.id.as_str().into(),
                        status: node_status,
                    },
                    served: Served::Revalidated,
                    variant: crate::fill::variant_of(key, &entry.headers(), headers),
                },
                true,
            );
            for c in &entry.body() {
                w.push(c.clone());
            }
            if let NodeBody::Stream(mut ex) = body {
                if let Ok(Some(Frame::End { .. })) = ex.reader().next().await {
                    ex.release();
                }
            }
            w.finish();
            return Ok(Ok(()));
        }
        let decision =
            cdn_http::policy::evaluate_head(&policy_req, head.status, &head.headers, now, rules);
        head.storable = decision.storable;
        head.variant = crate::fill::variant_of(key, &head.headers, headers);
        let fill = NodeFill {
            key,
            mark,
            expected: head.content_length,
            storable: decision.storable && head.content_length.is_none_or(|l| l <= max_object),
            max_object,
            status: head.status,
            decision,
            now,
            source: member.id.as_str().into(),
            request: fill_headers,
        };
        w.set_head(head, fill.decision.storable);
        Ok(match body {
            NodeBody::Whole(chunks) => fill.store_whole(chunks, l1, w).await,
            NodeBody::Stream(mut ex) => {
                let done = fill.stream_body(ex.reader(), l1, w).await;
                if done.is_ok() {
                    ex.release();
                }
                done
            }
        })
    }

    /// Asks the owners for `key`, best first: the next owner is asked at once when one fails,
    /// and also when the current one has not answered within the hedge delay (then the first
    /// head wins and the other request is dropped). `None` when no owner produced a head.
    async fn first_head<'a>(
        &self,
        owners: &[&'a Member],
        request_id: u64,
        key: &str,
        headers: &http::HeaderMap,
        failures: &mut Vec<PeerError>,
    ) -> Option<(&'a Member, Head, NodeBody)> {
        use futures::stream::StreamExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        // A hedge asks only for what the next owner already stores: it must never start a
        // second origin fill for an object the first owner is merely slow to serve.
        // Built when a hedge is first sent: most requests never hedge.
        let hedge_headers = std::sync::OnceLock::new();
        let hedge_headers = &hedge_headers;
        let mut pending = None;
        // Set when the first owner says it is filling (`Pending`): it is alive and the wait is
        // the origin's, which a second owner would only duplicate.
        let first_alive = Arc::new(AtomicBool::new(false));
        let ask = |m: &'a Member, alive: Arc<AtomicBool>, hedge: bool| async move {
            let started = tokio::time::Instant::now();
            let h = if hedge {
                hedge_headers.get_or_init(|| {
                    let mut h = headers.clone();
                    h.insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static("only-if-cached"),
                    );
                    h
                })
            } else {
                headers
            };
            let r = self.request(m, request_id, key, h, &alive).await;
            let filled = alive.load(Ordering::Acquire);
            (m, started.elapsed(), filled, hedge, r)
        };
        // The first owner's request is polled here directly; the set of further requests (a
        // hedge, the next owner after a failure) is made only when one is sent. Most misses
        // get their head from the first owner before any hedge is due, and a set made for
        // every one of them (its queue, a task per request, their wake-ups) showed in the
        // edge's profile.
        let first_owner: &'a Member = owners.first().copied()?;
        let first = ask(first_owner, first_alive.clone(), false);
        tokio::pin!(first);
        let mut first_live = true;
        let mut next = 1;
        let hedge = tokio::time::sleep(self.hedge_delay());
        tokio::pin!(hedge);
        let mut hedged = false;
        // An owner that answered a hedge with "not stored": asked in full if the first owner
        // still has not answered a while later (it is hung, not slow), or has failed.
        let mut escalate_to: Option<&'a Member> = None;
        let escalate = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(escalate);
        loop {
            let in_pending = any_left(&pending);
            let done = tokio::select! {
                done = &mut first, if first_live => {
                    first_live = false;
                    done
                }
                done = async { pending.as_mut()?.next().await }, if in_pending => {
                    let Some(done) = done else { continue };
                    done
                }
                _ = &mut hedge, if !hedged && next < owners.len() => {
                    hedged = true;
                    if first_alive.load(Ordering::Acquire) {
                        continue;
                    }
                    tracing::debug!(%key, owner = %owners[next].id, "hedging to the next owner");
                    self.hedges.fetch_add(1, Ordering::Relaxed);
                    let hedge = ask(owners[next], Arc::default(), true);
                    add(&mut pending, hedge);
                    next += 1;
                    continue;
                }
                _ = &mut escalate, if escalate_to.is_some() => {
                    if let Some(m) = escalate_to.take() {
                        tracing::debug!(%key, owner = %m.id, "first owner hung: asking the next in full");
                        let full = ask(m, Arc::default(), false);
                        add(&mut pending, full);
                    }
                    continue;
                }
                else => return None,
            };
            let (m, took, filled, was_hedge, r) = done;
            match r {
                Ok((head, reader)) => {
                    // The hedge delay tracks answers from memory, not origin fills.
                    if !filled {
                        self.record_latency(took);
                    }
                    if was_hedge && !first_alive.load(Ordering::Acquire) {
                        // The first owner lost to the hedge: ask it last for a while.
                        self.eject(&first_owner.id);
                    } else {
                        self.reinstate(&m.id);
                    }
                    self.count_answer(&m.id, &head);
                    return Some((m, head, reader));
                }
                Err(PeerError::NotCached(_)) if was_hedge => {
                    escalate_to = Some(m);
                    escalate
                        .as_mut()
                        .reset(tokio::time::Instant::now() + ESCALATE_AFTER);
                    if !any_left(&pending) && !first_live {
                        if let Some(m) = escalate_to.take() {
                            add(&mut pending, ask(m, Arc::default(), false));
                        }
                    }
                }
                Err(f) => {
                    tracing::debug!(%key, error = %f, "owner failed; trying the next");
                    failures.push(f);
                    if let Some(m) = escalate_to.take() {
                        add(&mut pending, ask(m, Arc::default(), false));
                    } else if next < owners.len() {
                        add(&mut pending, ask(owners[next], Arc::default(), false));
                        next += 1;
                    } else if !any_left(&pending) && !first_live {
                        return None;
                    }
                }
            }
        }
    }

    fn count_answer(&self, id: &str, head: &Head) {
        let hit = matches!(
            head.via,
            Via::Node {
                status: cdn_proto::CacheStatus::Hit,
                ..
            }
        );
        let mut a = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up before inserting: no key allocated per answer.
        match a.get_mut(id) {
            Some(e) => {
                e.0 += 1;
                e.1 += u64::from(hit);
            }
            None => {
                a.insert(id.to_string(), (1, u64::from(hit)));
            }
        }
    }

    /// Per member: heads received from it, and how many were hits in its store.
    pub fn answers(&self) -> std::collections::HashMap<String, (u64, u64)> {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `owners` with the ejected ones moved to the end (order otherwise kept).
    fn in_preference_order<'a>(&self, mut owners: Vec<&'a Member>) -> Vec<&'a Member> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.is_empty() {
            return owners;
        }
        let now = tokio::time::Instant::now();
        owners.sort_by_key(|m| {
            records
                .get(&m.id)
                .and_then(|r| r.ejected_until)
                .is_some_and(|until| until > now)
        });
        owners
    }

    /// `id` lost a hedge; after [`EJECT_AFTER`] in a row it is asked last for [`EJECT_FOR`].
    fn eject(&self, id: &str) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let r = records.entry(id.to_string()).or_default();
        r.losses += 1;
        if r.losses >= EJECT_AFTER {
            tracing::debug!(owner = %id, "owner keeps losing to hedges: asked last for a while");
            r.ejected_until = Some(tokio::time::Instant::now() + EJECT_FOR);
        }
    }

    /// `id` answered: its record is clean again.
    fn reinstate(&self, id: &str) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if !records.is_empty() {
            records.remove(id);
        }
    }

    /// The delay before a second owner is asked: the configured one, or the p95 of recent
    /// response heads (bounded to 5 ms – 1 s; 50 ms until there is history).
    pub fn hedge_delay(&self) -> Duration {
        if let Some(d) = self.hedge_after {
            return d;
        }
        match self.latency.p95() {
            None => Duration::from_millis(50),
            Some(p95) => p95.clamp(Duration::from_millis(5), Duration::from_secs(1)),
        }
    }

    fn record_latency(&self, took: Duration) {
        self.latency.record(took);
    }

    /// Second requests sent because the first owner was slow.
    pub fn hedges(&self) -> u64 {
        self.hedges.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Recent response-head latencies (the last [`LATENCY_WINDOW`]) and their p95.
#[derive(Default)]
struct LatencyWindow {
    // A std mutex: a push or a copy of 512 numbers, never held across an await.
    samples: std::sync::Mutex<std::collections::VecDeque<u32>>,
    // The p95 in µs (0: fewer than 20 samples yet), refreshed on each sample while the
    // window fills and every `P95_EVERY` samples after: a selection every few requests,
    // not a sort per request (the sort showed as 4 % of an edge's CPU).
    p95_us: std::sync::atomic::AtomicU32,
    recorded: std::sync::atomic::AtomicU32,
}

impl LatencyWindow {
    fn record(&self, took: Duration) {
        let mut lat = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if lat.len() == LATENCY_WINDOW {
            lat.pop_front();
        }
        lat.push_back(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        let n = self
            .recorded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(1);
        if lat.len() >= 20 && (lat.len() < LATENCY_WINDOW || n.is_multiple_of(P95_EVERY)) {
            let mut v: Vec<u32> = lat.iter().copied().collect();
            drop(lat);
            let at = (v.len() * 95 / 100).min(v.len() - 1);
            let (_, p95, _) = v.select_nth_unstable(at);
            self.p95_us
                .store((*p95).max(1), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The p95 of the window, once it has 20 samples.
    fn p95(&self) -> Option<Duration> {
        match self.p95_us.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(u64::from(us))),
        }
    }
}

/// Bodies up to this size are read whole from the node before the response starts.
const SMALL_BODY: u64 = 256 * 1024;

/// A node's response body: read already, or still to stream.
enum NodeBody {
    Whole(Vec<bytes::Bytes>),
    Stream(Exchange),
}

/// A node's response being received: what is needed to check and store it at the end.
struct NodeFill<'a> {
    key: &'a str,
    mark: u64,
    expected: Option<u64>,
    storable: bool,
    max_object: u64,
    status: http::StatusCode,
    decision: cdn_http::policy::Decision,
    now: SystemTime,
    source: Arc<str>,
    request: http::HeaderMap,
}

impl NodeFill<'_> {
    /// Streams the body frames into `w`; stores the entry in `l1` when complete, valid and
    /// storable.
    /// Publishes a body read whole, and stores the entry when it may.
    async fn store_whole(
        self,
        chunks: Vec<bytes::Bytes>,
        l1: &Store,
        mut w: FlightWriter<Head>,
    ) -> Result<(), FillError> {
        for c in chunks {
            w.push(c);
        }
        self.finish(l1, w).await
    }

    async fn stream_body(
        self,
        reader: &mut FrameReader,
        l1: &Store,
        mut w: FlightWriter<Head>,
    ) -> Result<(), FillError> {
        let expected = self.expected;
        if !self.storable {
            w.stop_retaining();
        }
        let broken = |m: String| FillError::new(FillErrorKind::Broken, m);
        loop {
            match reader.next().await {
                Ok(Some(Frame::Data(d))) => {
                    w.push_windowed(d).await;
                    if w.is_retaining() && w.len() > self.max_object {
                        w.stop_retaining();
                    }
                }
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
        self.finish(l1, w).await
    }

    /// The body is complete: store it when it may be (whole, within the size limit), then
    /// finish the flight (after storing, so no request misses both).
    async fn finish(self, l1: &Store, w: FlightWriter<Head>) -> Result<(), FillError> {
        let head = w
            .head()
            .filter(|_| w.is_retaining() && w.len() <= self.max_object);
        if let (true, Some(head)) = (self.storable, head) {
            let entry = NewEntry::new(
                self.status,
                &head.headers,
                w.chunks(),
                self.decision,
                self.now,
            )
            .with_source(self.source);
            l1.insert_filled(self.key, &self.request, entry, self.mark)
                .await;
        }
        w.finish();
        Ok(())
    }
}

/// Adds a request to a set made when the first is added.
fn add<F>(set: &mut Option<futures::stream::FuturesUnordered<F>>, request: F) {
    set.get_or_insert_with(futures::stream::FuturesUnordered::new)
        .push(request);
}

/// Whether a set of requests that may not have been made yet has any left.
fn any_left<F>(set: &Option<futures::stream::FuturesUnordered<F>>) -> bool {
    set.as_ref().is_some_and(|s| !s.is_empty())
}

fn wire_reason(e: &WireError) -> String {
    format!("node stream: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hedge_delay_follows_the_p95_of_recent_heads() {
        let w = LatencyWindow::default();
        for ms in 1..20 {
            w.record(Duration::from_millis(ms));
        }
        assert_eq!(w.p95(), None, "fewer than 20 samples: no p95 yet");
        for ms in 20..=100 {
            w.record(Duration::from_millis(ms));
        }
        assert_eq!(w.p95(), Some(Duration::from_millis(96)), "1..=100 ms");
        // The window keeps the last 512: after many fast heads the p95 follows them.
        for _ in 0..LATENCY_WINDOW {
            w.record(Duration::from_micros(700));
        }
        assert_eq!(w.p95(), Some(Duration::from_micros(700)));
        // A slow spell shows within P95_EVERY samples of filling 5 % of the window.
        let slow = LATENCY_WINDOW / 20 + P95_EVERY as usize;
        for _ in 0..slow {
            w.record(Duration::from_millis(30));
        }
        assert_eq!(w.p95(), Some(Duration::from_millis(30)));
    }
}
