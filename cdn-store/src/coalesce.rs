//! Coalescing: one upstream fetch per key, however many requests wait for it.
//!
//! A [`Flight`] is one fill in progress: a head (status and headers, once known), the body
//! chunks received so far, and how it ended. The leader owns the [`FlightWriter`]; every
//! request, the leader's own included, reads through a [`FlightReader`] that follows the
//! chunks as they arrive, so a large object streams to all waiters while it fills.
//!
//! Failure semantics (written down because callers branch on them):
//! - Exactly one leader per key at a time: [`Coalescer::join`] hands out one writer.
//! - The leader re-checks the cache after winning (its caller does, before fetching), since a
//!   fill may have completed between the miss and the join.
//! - Waiters get the leader's result: its head and body, or its error.
//! - A head the leader marks as not shareable (e.g. `private`) is never given to waiters: they
//!   get [`FillError::NotShared`] and fetch on their own.
//! - If the writer is dropped without finishing (the leader's task died), the flight fails
//!   with [`FillErrorKind::Abandoned`] and leaves the map, so waiters can compete again
//!   instead of hanging.
//! - On success the caller stores the entry *before* finishing the flight, so no request can
//!   miss both the store and the flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

/// Why a fill failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillErrorKind {
    /// Upstream could not be reached or refused before sending a head; another upstream may work.
    Unreachable,
    /// Upstream broke off after the head (short body, reset, bad framing).
    Broken,
    /// The leader went away without finishing.
    Abandoned,
    /// The head was not shareable: fetch on your own.
    NotShared,
}

/// A fill failure, cheap to clone to every waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct FillError {
    /// What kind of failure.
    pub kind: FillErrorKind,
    /// Detail for logs.
    pub message: Arc<str>,
}

impl FillError {
    /// A new error.
    pub fn new(kind: FillErrorKind, message: impl Into<Arc<str>>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The error waiters see for an unshareable head.
    pub fn not_shared() -> Self {
        Self::new(FillErrorKind::NotShared, "response is not shareable")
    }
}

struct State<H> {
    // Every byte in `chunks` is charged to it while held.
    budget: Arc<FillBudget>,
    head: Option<(Arc<H>, bool)>,
    // Chunks from index `base` on; earlier ones were released (see `retain`).
    chunks: std::collections::VecDeque<Bytes>,
    base: usize,
    held: u64,
    len: u64,
    end: Option<Result<(), FillError>>,
    // False once the body will not be stored: chunks every reader has passed are released,
    // and the writer waits while readers lag more than the window.
    retain: bool,
    // Each live reader's next chunk index, by reader id.
    readers: HashMap<u64, usize>,
    next_reader: u64,
}

impl<H> State<H> {
    fn new_reader(&mut self) -> u64 {
        let id = self.next_reader;
        self.next_reader += 1;
        self.readers.insert(id, self.base);
        id
    }

    /// Releases chunks every reader has passed (only when not retaining).
    fn release(&mut self) {
        if self.retain {
            return;
        }
        let upto = self
            .readers
            .values()
            .copied()
            .min()
            .unwrap_or(self.base + self.chunks.len());
        while self.base < upto {
            match self.chunks.pop_front() {
                Some(c) => {
                    self.held -= c.len() as u64;
                    self.budget.release(c.len() as u64);
                    self.base += 1;
                }
                None => break,
            }
        }
    }
}

/// Bytes a pass-through flight may hold ahead of its slowest reader.
pub const WINDOW: u64 = 4 << 20;

/// Bytes a pass-through flight may hold ahead of its slowest reader while the fills in flight
/// are over their [`FillBudget`]: enough to keep a reader busy, small enough that a hundred
/// slow readers hold tens of megabytes, not gigabytes.
pub const TIGHT_WINDOW: u64 = 256 << 10;

/// The memory every fill of one [`Coalescer`] may hold at once: bytes received from upstream
/// and not yet released (kept for the store, or waiting for a slow reader). Past it, a fill
/// that grows stops keeping its body (it streams through unstored) and waits for its readers
/// beyond [`TIGHT_WINDOW`], so what fills hold stays near the budget whatever the clients do:
/// slow readers, many large objects, many distinct misses.
#[derive(Debug)]
pub struct FillBudget {
    limit: u64,
    // Relaxed is enough: the count is a bound checked after each chunk, not a lock; a fill
    // that reads it a little stale goes over by at most one chunk.
    used: AtomicU64,
}

impl FillBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// No limit (tests, tools).
    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    /// Bytes fills hold now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether fills hold more than the limit.
    pub fn is_over(&self) -> bool {
        self.used() > self.limit
    }

    fn charge(&self, n: u64) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// One fill in progress. See the module docs.
pub struct Flight<H> {
    // A std mutex: every critical section is a few field reads or a push, never held across
    // an await, and readers wake through `changed`.
    state: Mutex<State<H>>,
    changed: Notify,
}

impl<H> Drop for Flight<H> {
    fn drop(&mut self) {
        // What no reader released (a stored body, a failed fill) goes back to the budget.
        let s = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        s.budget.release(s.held);
    }
}

impl<H> Flight<H> {
    fn new(budget: Arc<FillBudget>) -> Self {
        Self {
            state: Mutex::new(State {
                budget,
                head: None,
                chunks: std::collections::VecDeque::new(),
                base: 0,
                held: 0,
                len: 0,
                end: None,
                retain: true,
                readers: HashMap::new(),
                next_reader: 0,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<H>> {
        // A panic while holding this lock cannot leave the state half-updated (each update is
        // one assignment or push), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type FlightMap<H> = Mutex<HashMap<String, Arc<Flight<H>>>>;

/// The map of fills in progress, by cache key.
pub struct Coalescer<H> {
    inflight: Arc<FlightMap<H>>,
    budget: Arc<FillBudget>,
}

impl<H> Default for Coalescer<H> {
    fn default() -> Self {
        Self::with_budget(Arc::new(FillBudget::unlimited()))
    }
}

/// What [`Coalescer::join`] gave this request.
pub enum Joined<H> {
    /// This request leads: fetch, write through the writer, read through the reader.
    Leader(FlightWriter<H>, FlightReader<H>),
    /// Another request leads: read its result.
    Follower(FlightReader<H>),
}

impl<H> Coalescer<H> {
    /// A coalescer whose fills share `budget`.
    pub fn with_budget(budget: Arc<FillBudget>) -> Self {
        Self {
            inflight: Arc::new(Mutex::new(HashMap::new())),
            budget,
        }
    }

    /// The memory budget its fills share.
    pub fn budget(&self) -> &Arc<FillBudget> {
        &self.budget
    }

    /// Joins the fill for `key`, becoming its leader if none is in progress.
    pub fn join(&self, key: &str) -> Joined<H> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(key) {
            return Joined::Follower(FlightReader::new(f.clone(), false));
        }
        let flight = Arc::new(Flight::new(self.budget.clone()));
        map.insert(key.to_string(), flight.clone());
        drop(map);
        Joined::Leader(
            FlightWriter {
                flight: flight.clone(),
                map: Some((self.inflight.clone(), key.to_string())),
                ended: false,
            },
            FlightReader::new(flight, true),
        )
    }

    /// A flight no one else can join, outside any budget: for tests and tools.
    pub fn solo() -> (FlightWriter<H>, FlightReader<H>) {
        Self::solo_in(Arc::new(FillBudget::unlimited()))
    }

    /// A flight no one else can join, under this coalescer's budget: for fetches that must
    /// not be shared (private responses, another `Vary` variant).
    pub fn alone(&self) -> (FlightWriter<H>, FlightReader<H>) {
        Self::solo_in(self.budget.clone())
    }

    fn solo_in(budget: Arc<FillBudget>) -> (FlightWriter<H>, FlightReader<H>) {
        let flight = Arc::new(Flight::new(budget));
        (
            FlightWriter {
                flight: flight.clone(),
                map: None,
                ended: false,
            },
            FlightReader::new(flight, true),
        )
    }

    /// Detaches the fills for which `pred(key, head)` holds (`head` is `None` until known):
    /// requests arriving from now on start a new fill, while the readers already attached
    /// finish with the old one. Used by purges. Returns how many were detached.
    pub fn detach_if(&self, pred: impl Fn(&str, Option<&H>) -> bool) -> usize {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|k, f| {
            let s = f.lock();
            let head = s.head.as_ref().map(|(h, _)| h.as_ref());
            !pred(k, head)
        });
        before - map.len()
    }

    /// Number of fills in progress.
    pub fn len(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// No fill in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The leader's side of a flight.
pub struct FlightWriter<H> {
    flight: Arc<Flight<H>>,
    map: Option<(Arc<FlightMap<H>>, String)>,
    ended: bool,
}

impl<H> FlightWriter<H> {
    /// Publishes the head. `shareable: false` leaves the map at once (so no new request joins)
    /// and tells current waiters to fetch on their own.
    pub fn set_head(&mut self, head: H, shareable: bool) {
        if !shareable {
            self.leave_map();
        }
        self.flight.lock().head = Some((Arc::new(head), shareable));
        self.flight.changed.notify_waiters();
    }

    /// The head published with [`FlightWriter::set_head`], if any.
    pub fn head(&self) -> Option<Arc<H>> {
        self.flight.lock().head.as_ref().map(|(h, _)| h.clone())
    }

    /// Appends a body chunk.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        {
            let mut s = self.flight.lock();
            s.len += chunk.len() as u64;
            s.held += chunk.len() as u64;
            s.budget.charge(chunk.len() as u64);
            s.chunks.push_back(chunk);
            s.release();
        }
        self.flight.changed.notify_waiters();
    }

    /// Appends a chunk, then, if the body is not being kept, waits while the slowest reader
    /// is more than [`WINDOW`] bytes behind: memory stays bounded by the window, not by the
    /// object, and the upstream read is paused meanwhile.
    ///
    /// When the fills in flight hold more than their [`FillBudget`], a body still being kept
    /// stops being kept (it will not be stored, and no new request joins it), and the window
    /// shrinks to [`TIGHT_WINDOW`]: the upstream read waits for the readers instead of memory
    /// growing.
    pub async fn push_windowed(&mut self, chunk: Bytes) {
        self.push(chunk);
        // One lock for both questions: this runs for every chunk of every fill.
        let keep_over_budget = {
            let s = self.flight.lock();
            s.retain && s.budget.is_over()
        };
        if keep_over_budget {
            self.stop_retaining();
        }
        loop {
            let notified = self.flight.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.flight.lock();
                let window = if s.budget.is_over() {
                    TIGHT_WINDOW
                } else {
                    WINDOW
                };
                if s.retain || s.held <= window || s.readers.is_empty() {
                    return;
                }
            }
            notified.await;
        }
    }

    /// The body will not be stored: release what readers have passed from now on, and let no
    /// new request join (it could not read from the start).
    pub fn stop_retaining(&mut self) {
        self.leave_map();
        let mut s = self.flight.lock();
        s.retain = false;
        s.release();
    }

    /// Whether the whole body is still held (so [`FlightWriter::chunks`] is complete).
    pub fn is_retaining(&self) -> bool {
        self.flight.lock().retain
    }

    /// Bytes pushed so far.
    pub fn len(&self) -> u64 {
        self.flight.lock().len
    }

    /// No bytes pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body chunks pushed so far (cheap clones), for building the stored entry. Complete
    /// only while [`FlightWriter::is_retaining`].
    pub fn chunks(&self) -> Vec<Bytes> {
        self.flight.lock().chunks.iter().cloned().collect()
    }

    /// Marks the body complete. Call after storing the entry.
    pub fn finish(mut self) {
        self.end(Ok(()));
    }

    /// Fails the flight: waiters see `err`.
    pub fn fail(mut self, err: FillError) {
        self.end(Err(err));
    }

    fn leave_map(&mut self) {
        if let Some((map, key)) = self.map.take() {
            let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
            if m.get(&key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                m.remove(&key);
            }
        }
    }

    fn end(&mut self, result: Result<(), FillError>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.leave_map();
        self.flight.lock().end = Some(result);
        self.flight.changed.notify_waiters();
    }
}

impl<H> Drop for FlightWriter<H> {
    fn drop(&mut self) {
        self.end(Err(FillError::new(
            FillErrorKind::Abandoned,
            "fill abandoned before completion",
        )));
    }
}

/// One request's view of a flight.
pub struct FlightReader<H> {
    flight: Arc<Flight<H>>,
    id: u64,
    next: usize,
    leader: bool,
}

impl<H> Drop for FlightReader<H> {
    fn drop(&mut self) {
        {
            let mut s = self.flight.lock();
            s.readers.remove(&self.id);
            s.release();
        }
        // A writer waiting on the window may go on.
        self.flight.changed.notify_waiters();
    }
}

impl<H> FlightReader<H> {
    fn new(flight: Arc<Flight<H>>, leader: bool) -> Self {
        let (id, next) = {
            let mut s = flight.lock();
            let id = s.new_reader();
            (id, s.base)
        };
        Self {
            flight,
            id,
            next,
            leader,
        }
    }

    /// Waits for the head. Followers of an unshareable flight get [`FillErrorKind::NotShared`].
    pub async fn head(&self) -> Result<Arc<H>, FillError> {
        loop {
            let notified = self.flight.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.flight.lock();
                if let Some((h, shareable)) = &s.head {
                    if !shareable && !self.leader {
                        return Err(FillError::not_shared());
                    }
                    return Ok(h.clone());
                }
                if let Some(Err(e)) = &s.end {
                    return Err(e.clone());
                }
                if let Some(Ok(())) = &s.end {
                    return Err(FillError::new(
                        FillErrorKind::Broken,
                        "flight ended without a head",
                    ));
                }
            }
            notified.await;
        }
    }

    /// The next body chunk; `None` once the body is complete.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, FillError>> {
        loop {
            let notified = self.flight.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.flight.lock();
                if self.next < s.base {
                    return Some(Err(FillError::new(
                        FillErrorKind::Broken,
                        "fell behind a pass-through flight",
                    )));
                }
                if let Some(c) = s.chunks.get(self.next - s.base).cloned() {
                    self.next += 1;
                    let (id, next) = (self.id, self.next);
                    s.readers.insert(id, next);
                    if !s.retain {
                        s.release();
                        drop(s);
                        self.flight.changed.notify_waiters();
                    }
                    return Some(Ok(c));
                }
                match &s.end {
                    Some(Ok(())) => return None,
                    Some(Err(e)) => return Some(Err(e.clone())),
                    None => {}
                }
            }
            notified.await;
        }
    }

    /// The whole body at once, when the fill has already ended well, the body is at most
    /// `max` bytes and this reader has read nothing yet (a small response, read whole before
    /// its head was set): the caller sends it as one body instead of waiting chunk by chunk.
    /// `None` otherwise: stream it with [`FlightReader::next_chunk`]. The chunks handed out
    /// stop counting against the fill budget once the flight ends (a streaming reader keeps
    /// them counted until its client has them), hence `max`: keep it within the window a
    /// reader may hold anyway.
    pub fn whole_body(&mut self, max: u64) -> Option<Vec<Bytes>> {
        let mut s = self.flight.lock();
        if !matches!(s.end, Some(Ok(()))) || s.base != 0 || self.next != 0 || s.len > max {
            return None;
        }
        let chunks: Vec<Bytes> = s.chunks.iter().cloned().collect();
        self.next = chunks.len();
        let (id, next) = (self.id, self.next);
        s.readers.insert(id, next);
        s.release();
        Some(chunks)
    }

    /// Whether this reader belongs to the leader.
    pub fn is_leader(&self) -> bool {
        self.leader
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_complete_flight_hands_its_whole_body_to_a_reader_that_read_nothing() {
        let c = Coalescer::<u16>::default();
        let Joined::Leader(mut w, mut r) = c.join("/k") else {
            panic!("first must lead")
        };
        w.set_head(200, true);
        w.push(Bytes::from_static(b"ab"));
        // Not ended yet: stream it.
        assert!(r.whole_body(1024).is_none());
        w.push(Bytes::from_static(b"cd"));
        w.finish();
        // Larger than the caller allows: stream it.
        assert!(r.whole_body(3).is_none());
        let body = r.whole_body(4).expect("ended: whole");
        assert_eq!(
            body,
            vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")]
        );
        // Everything was handed over: the stream that follows is empty, and not twice.
        assert!(r.next_chunk().await.is_none());
        assert!(r.whole_body(1024).is_none());
    }

    #[tokio::test]
    async fn a_reader_that_read_a_chunk_does_not_get_the_whole_body() {
        let c = Coalescer::<u16>::default();
        let Joined::Leader(mut w, mut r) = c.join("/k") else {
            panic!("first must lead")
        };
        w.set_head(200, true);
        w.push(Bytes::from_static(b"ab"));
        assert_eq!(
            r.next_chunk().await.unwrap().unwrap(),
            Bytes::from_static(b"ab")
        );
        w.push(Bytes::from_static(b"cd"));
        w.finish();
        assert!(r.whole_body(1024).is_none());
        assert_eq!(
            r.next_chunk().await.unwrap().unwrap(),
            Bytes::from_static(b"cd")
        );
        assert!(r.next_chunk().await.is_none());
    }

    #[tokio::test]
    async fn one_leader_and_followers_see_head_and_every_chunk() {
        let c = Coalescer::<u16>::default();
        let Joined::Leader(mut w, mut lr) = c.join("/k") else {
            panic!("first must lead")
        };
        let mut followers: Vec<_> = (0..10)
            .map(|_| match c.join("/k") {
                Joined::Follower(r) => r,
                Joined::Leader(..) => panic!("second leader"),
            })
            .collect();
        let readers = tokio::spawn(async move {
            let mut out = vec![];
            for r in followers.iter_mut() {
                let h = r.head().await.unwrap();
                let mut body = vec![];
                while let Some(c) = r.next_chunk().await {
                    body.extend_from_slice(&c.unwrap());
                }
                out.push((*h, body));
            }
            out
        });
        w.set_head(200, true);
        w.push(Bytes::from_static(b"hel"));
        w.push(Bytes::from_static(b"lo"));
        assert_eq!(c.len(), 1);
        w.finish();
        assert!(c.is_empty());
        for (h, body) in readers.await.unwrap() {
            assert_eq!(h, 200);
            assert_eq!(body, b"hello");
        }
        assert_eq!(*lr.head().await.unwrap(), 200);
        assert_eq!(lr.next_chunk().await.unwrap().unwrap(), "hel");
    }

    #[tokio::test]
    async fn a_pass_through_flight_holds_at_most_the_window_ahead_of_its_slowest_reader() {
        let c = Coalescer::<u16>::default();
        let Joined::Leader(mut w, mut fast) = c.join("/big") else {
            panic!()
        };
        let Joined::Follower(mut slow) = c.join("/big") else {
            panic!()
        };
        w.set_head(200, true);
        w.stop_retaining();
        assert!(
            matches!(c.join("/big"), Joined::Leader(..)),
            "no one joins a flight that releases chunks"
        );
        let flight = fast.flight.clone();
        let chunk = Bytes::from(vec![7u8; 256 * 1024]);
        let total = 64usize;
        let writer = tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..total {
                w.push_windowed(chunk.clone()).await;
                peak = peak.max(w.flight.lock().held);
            }
            w.finish();
            peak
        });
        let fast_reader = tokio::spawn(async move {
            let mut n = 0;
            while let Some(c) = fast.next_chunk().await {
                n += c.unwrap().len();
            }
            n
        });
        let mut got = 0;
        while let Some(c) = slow.next_chunk().await {
            got += c.unwrap().len();
            tokio::task::yield_now().await;
        }
        let peak = writer.await.unwrap();
        assert_eq!(got, total * 256 * 1024);
        assert_eq!(fast_reader.await.unwrap(), total * 256 * 1024);
        assert!(peak <= WINDOW + 256 * 1024, "held {peak} bytes");
        drop(slow);
        assert_eq!(flight.lock().held, 0, "everything released once read");
    }

    #[tokio::test]
    async fn dropped_writer_fails_waiters_and_frees_the_key() {
        let c = Coalescer::<u16>::default();
        let Joined::Leader(w, _) = c.join("/k") else {
            panic!()
        };
        let Joined::Follower(r) = c.join("/k") else {
            panic!()
        };
        let waiting = tokio::spawn(async move { r.head().await });
        drop(w);
        let err = waiting.await.unwrap().unwrap_err();
        assert_eq!(err.kind, FillErrorKind::Abandoned);
        assert!(
            matches!(c.join("/k"), Joined::Leader(..)),
            "waiters can compete again"
        );
    }

    #[tokio::test]
    async fn unshareable_heads_are_not_given_to_followers() {
        let c = Coalescer::<u16>::default();
        let Joined::Leader(mut w, lr) = c.join("/p") else {
            panic!()
        };
        let Joined::Follower(r) = c.join("/p") else {
            panic!()
        };
        w.set_head(200, false);
        assert_eq!(r.head().await.unwrap_err().kind, FillErrorKind::NotShared);
        assert_eq!(*lr.head().await.unwrap(), 200);
        assert!(
            matches!(c.join("/p"), Joined::Leader(..)),
            "left the map at once"
        );
    }

    #[tokio::test]
    async fn failure_mid_body_reaches_readers_after_the_chunks() {
        let c = Coalescer::<u16>::default();
        let Joined::Leader(mut w, mut r) = c.join("/b") else {
            panic!()
        };
        w.set_head(200, true);
        w.push(Bytes::from_static(b"part"));
        w.fail(FillError::new(FillErrorKind::Broken, "origin closed"));
        assert_eq!(r.next_chunk().await.unwrap().unwrap(), "part");
        assert_eq!(
            r.next_chunk().await.unwrap().unwrap_err().kind,
            FillErrorKind::Broken
        );
    }

    #[tokio::test]
    async fn fills_over_their_budget_stop_keeping_bodies_and_hold_a_tight_window() {
        let budget = Arc::new(FillBudget::new(1 << 20));
        let c = Coalescer::<u16>::with_budget(budget.clone());
        let chunk = Bytes::from(vec![1u8; 100 * 1024]);
        // A fill keeps 800 KiB for the store: under the 1 MiB budget.
        let Joined::Leader(mut a, a_reader) = c.join("/a") else {
            panic!()
        };
        a.set_head(200, true);
        for _ in 0..8 {
            a.push_windowed(chunk.clone()).await;
        }
        assert!(a.is_retaining());
        assert_eq!(budget.used(), 800 * 1024);
        // A second fill passes the budget: it stops keeping its body, and with a reader that
        // follows slowly it holds no more than the tight window ahead of it.
        let Joined::Leader(mut b, mut b_reader) = c.join("/b") else {
            panic!()
        };
        b.set_head(200, true);
        let total = 40usize;
        let writer = tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..total {
                b.push_windowed(Bytes::from(vec![2u8; 100 * 1024])).await;
                peak = peak.max(b.flight.lock().held);
            }
            let kept = b.is_retaining();
            b.finish();
            (peak, kept)
        });
        let mut got = 0;
        while let Some(c) = b_reader.next_chunk().await {
            got += c.unwrap().len();
            tokio::task::yield_now().await;
        }
        let (peak, kept) = writer.await.unwrap();
        assert_eq!(got, total * 100 * 1024, "the reader gets the whole body");
        assert!(!kept, "over budget: the body is not kept for the store");
        assert!(
            peak <= TIGHT_WINDOW + 100 * 1024,
            "held {peak} bytes ahead of a slow reader"
        );
        assert!(
            a.is_retaining(),
            "the fill already under way keeps its body"
        );
        // Everything goes back to the budget when the flights end.
        drop(b_reader);
        a.finish();
        drop(a_reader);
        assert_eq!(budget.used(), 0);
    }
}
