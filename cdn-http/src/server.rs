//! The HTTP accept loop (HTTP/1.1 and h2c on one port) with graceful shutdown, timeouts
//! counted from accept, and a connection budget ([`conns`]).

mod conns;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{Body, BoxError};

/// Connections refused at the budget (none idle to close).
const CONNECTIONS_REFUSED: &str = "cdn_connections_refused_total";
/// Idle connections closed to make room for a new one.
const CONNECTIONS_EVICTED: &str = "cdn_connections_evicted_total";
/// Accepts that failed (e.g. out of file descriptors).
const ACCEPT_ERRORS: &str = "cdn_accept_errors_total";

/// Describes the accept loop's counters to the installed `metrics` recorder and registers each
/// at zero: a counter that first appears at its first event has no series for `rate()` until
/// then, so a dashboard would show "no data" where the answer is "none".
pub fn describe_metrics() {
    for (name, help) in [
        (
            CONNECTIONS_REFUSED,
            "Connections refused at the connection budget (none idle to close).",
        ),
        (
            CONNECTIONS_EVICTED,
            "Idle connections closed to make room at the connection budget.",
        ),
        (ACCEPT_ERRORS, "Accepts that failed."),
    ] {
        metrics::describe_counter!(name, help);
        metrics::counter!(name).increment(0);
    }
}

/// Limits applied to every client connection.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Time from accept for a client's first request head to arrive, and for each later head
    /// once its first byte has come (slowloris protection; a connection that sends nothing is
    /// closed after it too).
    pub header_read_timeout: Duration,
    /// Time a connection may sit between requests (no request in flight) before it is closed.
    pub keepalive_timeout: Duration,
    /// Connections served at once on this listener. Past it, the connection idle the longest
    /// (no request in flight) is closed to make room; if none is idle, the new connection
    /// gets a 503 and is closed at once. Clamped to what the open-file limit allows.
    pub max_connections: usize,
    /// Maximum header fields in a request.
    pub max_headers: usize,
    /// Maximum bytes buffered for a request head.
    pub max_head_bytes: usize,
    /// HTTP/2 concurrent streams per connection.
    pub h2_max_streams: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_headers: 100,
            max_head_bytes: 64 * 1024,
            h2_max_streams: 256,
        }
    }
}

impl ServerLimits {
    /// Limits for an admin listener: its own small connection budget, so a flood on the client
    /// port never locks operators out, and a flood on the admin port stays small.
    pub fn admin() -> Self {
        Self {
            max_connections: 256,
            ..Self::default()
        }
    }
}

/// Connections the kernel queues for a listener before it accepts them: 4,096 (capped by
/// `net.core.somaxconn`) instead of the usual 1,024, so a burst of connects (a flood, or
/// thousands of clients reconnecting at once) is queued rather than having SYNs dropped, each
/// of which costs its client a one-second retransmission.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Bytes of one HTTP/2 response hyper buffers beyond what the client's window lets it send.
pub const H2_SEND_BUFFER: usize = 128 * 1024;

/// Where client connections come from: a TCP listener, or any other transport (simulation
/// tests serve over a simulated network).
pub trait Listener: Send + 'static {
    /// One accepted connection.
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static;

    /// The next connection and its peer's address.
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, SocketAddr)>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&self) -> std::io::Result<(Self::Io, SocketAddr)> {
        let (s, peer) = TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok((s, peer))
    }
}

/// Serves HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on `listener` until `shutdown`
/// fires, then stops accepting and waits up to `drain` for in-flight requests.
///
/// Every connection is watched from accept ([`conns`]): closed when no request head arrives
/// within `header_read_timeout`, or when it sits idle between requests for
/// `keepalive_timeout`; past `max_connections` the longest-idle one makes room for the new.
pub async fn serve<L, F, Fut>(
    listener: L,
    limits: ServerLimits,
    shutdown: CancellationToken,
    drain: Duration,
    handler: F,
) where
    L: Listener,
    F: Fn(http::Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<Body>> + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Ours, from accept and between requests ([`conns`]): hyper's starts only once the
        // auto-detection has read a first byte, and runs on keep-alive idle too.
        .header_read_timeout(None)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_head_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        // A response a client's flow-control window holds back keeps at most this much
        // here (hyper's default is 400 KiB): the memory bound of a slow reader, per stream,
        // in docs/DESIGN.md "Limits and overload"; behind it the fill's window waits.
        .max_send_buf_size(H2_SEND_BUFFER)
        .max_header_list_size(limits.max_head_bytes as u32);
    let table = conns::Table::new(conns::connection_budget(limits.max_connections));
    let mut backoff = conns::AcceptBackoff::default();
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: the connection stays in the backlog; back off
                    // (growing, reset by the next success) instead of spinning on it.
                    let wait = backoff.failed(&e);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            },
        };
        backoff.succeeded();
        // Past the cap with evictions still closing, wait a moment for them (the listener's
        // backlog holds the connections behind this one meanwhile).
        let Some(conn_state) = table.admit_within(Duration::from_millis(50)).await else {
            // Full of busy connections: say so at once rather than leave the client hanging,
            // and close here, not in a task: under a flood, sockets waiting for a task to
            // close them would use up the descriptors the budget keeps free. A fresh socket's
            // send buffer takes the few bytes without waiting.
            let _ = stream.write_all(conns::BUSY_RESPONSE).now_or_never();
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let svc_state = conn_state.shared();
        let svc = hyper::service::service_fn(move |req| {
            let guard = svc_state.request_started();
            let fut = handler(req, peer);
            async move {
                // The request counts as in flight until its body is sent (or dropped): a
                // long download is not an idle connection.
                let resp = fut.await.map(|inner| Tracked {
                    inner,
                    _guard: guard,
                });
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(conn_state.watch(stream)), svc)
            .into_owned();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let closing = async {
                tokio::select! {
                    _ = shutdown.cancelled() => None,
                    why = conn_state.expired(&limits) => Some(why),
                }
            };
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, %peer, "connection ended with error");
                    }
                    return;
                }
                why = closing => {
                    if let Some(why) = why {
                        tracing::debug!(%peer, why, "closing connection");
                    }
                }
            }
            // Draining (shutdown): HTTP/1 closes once the response in flight is sent, HTTP/2
            // sends GOAWAY and lets open streams finish; the caller bounds the wait. Idle or
            // evicted: nothing is in flight, so the close is given 50 ms (an HTTP/2 GOAWAY
            // goes out) and then forced (a half-sent head is not waited for).
            conn.as_mut().graceful_shutdown();
            if shutdown.is_cancelled() {
                let _ = conn.await;
            } else {
                let _ = tokio::time::timeout(Duration::from_millis(50), conn).await;
            }
            drop(conn_state);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, table.drained()).await.is_err() {
        tracing::warn!(?drain, "connections still open after the drain deadline");
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped
/// (no allocation: the guard rides along with the body).
struct Tracked {
    inner: Body,
    _guard: conns::RequestGuard,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
