//! The connections a listener holds: who is idle, since when, and which one makes room.
//!
//! A connection is idle while no request is in flight on it: before its first request head,
//! and between requests. Idle time is what the timeouts bound (a silent or slowloris client
//! holds a socket and a file descriptor for nothing) and what the connection cap reclaims
//! first, as nginx reuses keep-alive connections when `worker_connections` runs out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::ServerLimits;

/// What a client past the cap gets when every connection is busy: an answer, then the close.
pub(super) const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain\r\ncontent-length: 21\r\nretry-after: 1\r\nconnection: close\r\n\r\n\
too many connections\n";

/// The connections of one listener.
pub(super) struct Table {
    inner: Arc<Inner>,
}

struct Inner {
    cap: usize,
    // Taken once per accept and once per close: short critical sections, and a scan of the
    // table only when it is full.
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    emptied: Notify,
    // Signalled whenever a connection ends, for an accept waiting on a closing one.
    closed: Notify,
}

/// One connection's activity, shared by its task and its requests.
pub(super) struct ConnState {
    id: u64,
    accepted: Instant,
    // Requests whose response is not yet fully sent (HTTP/2: open streams).
    in_flight: AtomicUsize,
    // Requests started on this connection.
    started: AtomicU64,
    // When `in_flight` last fell to zero, in ms after `accepted` (0: never busy yet).
    idle_since_ms: AtomicU64,
    // When the first byte of the next request head arrived, in ms after `accepted` (0: none
    // since the last request started).
    head_started_ms: AtomicU64,
    // Fired when the table picks this connection to make room.
    evict: CancellationToken,
}

/// A slot in the table, freed when dropped (the connection's task ended).
pub(super) struct Admitted {
    state: Arc<ConnState>,
    table: Arc<Inner>,
}

impl Table {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                cap: cap.max(1),
                conns: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                emptied: Notify::new(),
                closed: Notify::new(),
            }),
        }
    }

    /// A slot for a new connection. At the cap, an idle connection is told to close and the
    /// new one is admitted (the table may run over by the evictions still closing, at most an
    /// eighth). The victim is the oldest of the connections that never sent a request (what a
    /// flood is made of), else the keep-alive connection idle the longest: a client that has
    /// been served keeps its connection while there are silent ones to close. With no idle
    /// connection, `None`: refuse the new one.
    pub(super) fn admit(&self) -> Option<Admitted> {
        let now = Instant::now();
        let mut conns = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() >= self.inner.cap {
            let slack = self.inner.cap / 8 + 1;
            let victim = conns
                .values()
                .filter(|c| c.in_flight.load(Ordering::Acquire) == 0 && !c.evict.is_cancelled())
                .min_by_key(|c| (c.started.load(Ordering::Acquire) > 0, c.idle_since()));
            match victim {
                Some(v) if conns.len() < self.inner.cap + slack => v.evict.cancel(),
                _ => {
                    drop(conns);
                    metrics::counter!(super::CONNECTIONS_REFUSED).increment(1);
                    return None;
                }
            }
            metrics::counter!(super::CONNECTIONS_EVICTED).increment(1);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            id,
            accepted: now,
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            evict: CancellationToken::new(),
        });
        conns.insert(id, state.clone());
        Some(Admitted {
            state,
            table: self.inner.clone(),
        })
    }

    /// [`Table::admit`], but when the table is full only because connections told to close
    /// have not closed yet (a burst of connects outruns their tasks), waits up to `patience`
    /// for them: the new client is queued briefly instead of refused.
    pub(super) async fn admit_within(&self, patience: Duration) -> Option<Admitted> {
        let deadline = Instant::now() + patience;
        loop {
            let closed = self.inner.closed.notified();
            if let Some(a) = self.admit() {
                return Some(a);
            }
            if !self.closing() || Instant::now() >= deadline {
                return None;
            }
            let _ = tokio::time::timeout_at(deadline, closed).await;
        }
    }

    /// Whether some connection was told to close and has not yet.
    fn closing(&self) -> bool {
        self.inner
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|c| c.evict.is_cancelled())
    }

    /// Resolves once every admitted connection has ended.
    pub(super) async fn drained(&self) {
        loop {
            let emptied = self.inner.emptied.notified();
            if self
                .inner
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
            emptied.await;
        }
    }
}

impl Admitted {
    /// The activity record the connection's requests update.
    pub(super) fn shared(&self) -> Arc<ConnState> {
        self.state.clone()
    }

    /// Resolves when the connection should close, saying why: a request head not complete
    /// within `header_read_timeout` of its first byte, no request at all within it of accept,
    /// idle between requests for `keepalive_timeout`, or picked to make room.
    pub(super) async fn expired(&self, limits: &ServerLimits) -> &'static str {
        let s = &self.state;
        loop {
            let wait_until = if s.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: look again after a timeout's worth (the end of a request resets
                // the idle clock, so this never closes early).
                Instant::now() + limits.keepalive_timeout
            } else {
                let head = s.head_started_ms.load(Ordering::Acquire);
                let (deadline, why) = if head != 0 {
                    (
                        s.accepted + Duration::from_millis(head) + limits.header_read_timeout,
                        "request head not complete in time",
                    )
                } else if s.started.load(Ordering::Acquire) == 0 {
                    (
                        s.idle_since() + limits.header_read_timeout,
                        "no request in time",
                    )
                } else {
                    (s.idle_since() + limits.keepalive_timeout, "idle keep-alive")
                };
                if Instant::now() >= deadline && s.in_flight.load(Ordering::Acquire) == 0 {
                    return why;
                }
                deadline
            };
            tokio::select! {
                _ = s.evict.cancelled() => return "closed to make room for a new connection",
                _ = tokio::time::sleep_until(wait_until) => {}
            }
        }
    }

    /// Wraps the connection's socket so the bytes it reads are seen.
    pub(super) fn watch<T>(&self, io: T) -> Watched<T> {
        Watched {
            io,
            state: self.state.clone(),
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut conns = self.table.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.remove(&self.state.id);
        if conns.is_empty() {
            self.table.emptied.notify_waiters();
        }
        drop(conns);
        self.table.closed.notify_waiters();
    }
}

impl ConnState {
    fn idle_since(&self) -> Instant {
        self.accepted + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub(super) fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.head_started_ms.store(0, Ordering::Release);
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }
}

/// A connection's socket, noting when a request head starts to arrive on an idle connection.
pub(super) struct Watched<T> {
    io: T,
    state: Arc<ConnState>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let s = &this.state;
            // Only the first byte on an idle connection is noted: two loads per read.
            if s.in_flight.load(Ordering::Relaxed) == 0
                && s.head_started_ms.load(Ordering::Relaxed) == 0
            {
                let ms = s.accepted.elapsed().as_millis() as u64;
                s.head_started_ms.store(ms.max(1), Ordering::Release);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request in flight on a connection; dropped with the response body.
pub(super) struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let s = &self.0;
        // Written before the count falls, so a watcher that sees zero sees this time.
        let ms = s.accepted.elapsed().as_millis() as u64;
        s.idle_since_ms.store(ms.max(1), Ordering::Release);
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many connections a listener may hold: the configured number, clamped so client
/// connections alone cannot use up the process's open-file limit (a quarter of it, at most
/// 1,024, stays for the cluster's links, the origin, admin connections and files).
pub(crate) fn connection_budget(configured: usize) -> usize {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) if soft != rlimit::INFINITY => {
            let reserve = (soft / 4).min(1024);
            configured.min(soft.saturating_sub(reserve).max(16) as usize)
        }
        _ => configured,
    }
}

/// Back-off after failed accepts (EMFILE, ENFILE, ENOMEM, ...): 5 ms doubling to 1 s, reset
/// by the next success, and at most one log line a second.
#[derive(Default)]
pub(super) struct AcceptBackoff {
    failures: u32,
    suppressed: u64,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    pub(super) fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.failures = self.failures.saturating_add(1);
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(
                error = %e,
                failures = self.failures,
                not_logged = self.suppressed,
                "accept failed; backing off"
            );
            self.last_log = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        metrics::counter!(super::ACCEPT_ERRORS).increment(1);
        backoff_delay(self.failures)
    }

    pub(super) fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting again");
            self.failures = 0;
        }
    }
}

fn backoff_delay(failures: u32) -> Duration {
    let ms = 5u64 << failures.saturating_sub(1).min(8);
    Duration::from_millis(ms.min(1_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_one_second() {
        let waits: Vec<u64> = (1..=10)
            .map(|n| backoff_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    #[test]
    fn a_full_table_makes_room_by_closing_the_longest_idle_connection() {
        // Room for 2, and an eighth (at least 1) over it while evicted ones close.
        let table = Table::new(2);
        let a = table.admit().unwrap();
        let b = table.admit().unwrap();
        // `a` is busy, `b` idle: the third connection evicts `b`.
        let _busy = a.shared().request_started();
        let c = table.admit().unwrap();
        assert!(b.state.evict.is_cancelled());
        assert!(!a.state.evict.is_cancelled());
        // `b` still closing, the slack used: refused, though `c` is idle.
        assert!(table.admit().is_none());
        // `b` closed: the next evicts `c`, the longest idle.
        drop(b);
        let d = table.admit().unwrap();
        assert!(c.state.evict.is_cancelled());
        // Every connection busy or closing: refused.
        let _busy_d = d.shared().request_started();
        drop(c);
        assert!(table.admit().is_none(), "a and d busy");
        drop(_busy_d);
        assert!(table.admit().is_some(), "d idle again: it makes room");
    }

    #[test]
    fn silent_connections_are_evicted_before_served_keep_alive_ones() {
        let table = Table::new(2);
        let served = table.admit().unwrap();
        drop(served.shared().request_started());
        // Admitted later, so idle for less time, but it never sent a request.
        let silent = table.admit().unwrap();
        let _new = table.admit().unwrap();
        assert!(
            silent.state.evict.is_cancelled(),
            "the silent one makes room"
        );
        assert!(!served.state.evict.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_waits_briefly_for_evicted_connections_to_close() {
        let table = Arc::new(Table::new(1));
        let first = table.admit().unwrap();
        let _second = table.admit().unwrap(); // evicts `first`; slack used up
        assert!(table.admit().is_none());
        let t = tokio::spawn({
            let table = table.clone();
            async move {
                table
                    .admit_within(Duration::from_millis(50))
                    .await
                    .is_some()
            }
        });
        tokio::task::yield_now().await;
        drop(first); // the evicted connection closes
        assert!(t.await.unwrap(), "admitted once the evicted one closed");
        // Every connection busy and none closing: refused at once, no wait.
        let busy_table = Table::new(1);
        let busy = busy_table.admit().unwrap();
        let _guard = busy.shared().request_started();
        let t0 = Instant::now();
        assert!(busy_table
            .admit_within(Duration::from_millis(50))
            .await
            .is_none());
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_after_the_header_timeout_and_an_idle_one_after_keepalive()
    {
        let limits = ServerLimits {
            header_read_timeout: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(5),
            ..ServerLimits::default()
        };
        let table = Table::new(10);
        let silent = table.admit().unwrap();
        let t0 = Instant::now();
        assert_eq!(silent.expired(&limits).await, "no request in time");
        assert_eq!(t0.elapsed(), Duration::from_secs(2));

        let served = table.admit().unwrap();
        let guard = served.shared().request_started();
        let t1 = Instant::now();
        let finish = async {
            tokio::time::sleep(Duration::from_secs(7)).await;
            drop(guard);
        };
        let (why, ()) = tokio::join!(served.expired(&limits), finish);
        assert_eq!(why, "idle keep-alive");
        // A 7 s response, then 5 s idle: never closed while busy.
        assert_eq!(t1.elapsed(), Duration::from_secs(12));

        // Between requests, the first byte of a head starts the header timeout: 2 s.
        let again = table.admit().unwrap();
        drop(again.shared().request_started());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut io = again.watch(&b"GET / HTTP/1.1\r\n"[..]);
        let mut buf = [0u8; 64];
        let n = tokio::io::AsyncReadExt::read(&mut io, &mut buf)
            .await
            .unwrap();
        assert!(n > 0);
        let t2 = Instant::now();
        assert_eq!(
            again.expired(&limits).await,
            "request head not complete in time"
        );
        assert_eq!(t2.elapsed(), Duration::from_secs(2));
    }
}
