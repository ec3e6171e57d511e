//! The HTTP client to the origin (pooled HTTP/1.1 keep-alive connections).

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::Body;

/// Why an origin request failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// No connection, or the request could not be sent.
    #[error("origin unreachable: {0}")]
    Unreachable(String),
    /// No response head within the deadline.
    #[error("origin sent no response within {0:?}")]
    Timeout(Duration),
}

/// Checks an origin base URL: `http://host:port[/prefix]`.
pub fn check_url(base: &str) -> Result<Uri, String> {
    let uri: Uri = base
        .parse()
        .map_err(|e| format!("`{base}` is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{base}`: only http:// origins are supported"));
    }
    if uri.authority().is_none() {
        return Err(format!("`{base}` has no host"));
    }
    Ok(uri)
}

/// Any byte stream an origin connection can run on.
pub trait OriginStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static> OriginStream for T {}

/// One connection to the origin, whatever carries it.
pub struct OriginIo(TokioIo<Pin<Box<dyn OriginStream>>>);

impl OriginIo {
    /// Wraps a connected stream.
    pub fn new(stream: impl OriginStream) -> Self {
        Self(TokioIo::new(Box::pin(stream)))
    }
}

impl hyper::rt::Read for OriginIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for OriginIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for OriginIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

type DialFuture = Pin<Box<dyn Future<Output = std::io::Result<OriginIo>> + Send>>;

/// How the origin client opens connections: TCP ([`Dialer::tcp`]), or any other transport
/// (simulation tests run it on a simulated network).
#[derive(Clone)]
pub struct Dialer(Arc<dyn Fn(Uri) -> DialFuture + Send + Sync>);

impl Dialer {
    /// A dialer from a function of the URI.
    pub fn new(f: impl Fn(Uri) -> DialFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// TCP with `TCP_NODELAY`, giving up after `connect_timeout`.
    pub fn tcp(connect_timeout: Duration) -> Self {
        Self::new(move |uri: Uri| {
            Box::pin(async move {
                let host = uri
                    .host()
                    .unwrap_or_default()
                    .trim_matches(['[', ']'])
                    .to_string();
                let port = uri.port_u16().unwrap_or(80);
                let connect = tokio::net::TcpStream::connect((host.as_str(), port));
                let stream = tokio::time::timeout(connect_timeout, connect)
                    .await
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no connection to {host}:{port} within {connect_timeout:?}"),
                        )
                    })??;
                stream.set_nodelay(true)?;
                Ok(OriginIo::new(stream))
            }) as DialFuture
        })
    }
}

impl tower_service::Service<Uri> for Dialer {
    type Response = OriginIo;
    type Error = std::io::Error;
    type Future = DialFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        (self.0)(uri)
    }
}

/// A client for one origin base URL.
#[derive(Clone)]
pub struct Origin {
    base: Uri,
    host: HeaderValue,
    client: Client<Dialer, Body>,
    response_timeout: Duration,
}

impl Origin {
    /// A client for `base` (`http://host:port`, optionally with a path prefix) over TCP.
    pub fn new(
        base: &str,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, String> {
        Self::with_dialer(base, Dialer::tcp(connect_timeout), response_timeout)
    }

    /// A client for `base` whose connections `dialer` opens.
    pub fn with_dialer(
        base: &str,
        dialer: Dialer,
        response_timeout: Duration,
    ) -> Result<Self, String> {
        let base = check_url(base)?;
        let authority = base
            .authority()
            .ok_or_else(|| format!("`{base}` has no host"))?
            .clone();
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("`{base}`: bad host: {e}"))?;
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(dialer);
        Ok(Self {
            base,
            host,
            client,
            response_timeout,
        })
    }

    /// How long the origin may take to answer (and to send the next body bytes).
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// The origin's base URL.
    pub fn base(&self) -> &Uri {
        &self.base
    }

    /// The absolute URI for a client's path-and-query.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, String> {
        let prefix = self.base.path().trim_end_matches('/');
        let pq = if path_and_query.starts_with('/') {
            format!("{prefix}{path_and_query}")
        } else {
            format!("{prefix}/{path_and_query}")
        };
        Uri::builder()
            .scheme("http")
            .authority(
                self.base
                    .authority()
                    .map(|a| a.as_str())
                    .unwrap_or_default(),
            )
            .path_and_query(pq)
            .build()
            .map_err(|e| format!("bad request target `{path_and_query}`: {e}"))
    }

    /// Sends `req` (whose URI is a path-and-query) to the origin and waits for the head.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, OriginError> {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        *req.uri_mut() = self.uri_for(&pq).map_err(OriginError::Unreachable)?;
        req.headers_mut().insert(header::HOST, self.host.clone());
        *req.version_mut() = http::Version::HTTP_11;
        // A GET or HEAD without a body can be sent again if a pooled connection turns out to
        // have been closed by the origin (the request went out, no response came back).
        let idempotent = req.method() == http::Method::GET || req.method() == http::Method::HEAD;
        let retry = (idempotent && http_body::Body::is_end_stream(req.body())).then(|| {
            let mut again = Request::new(crate::empty());
            *again.method_mut() = req.method().clone();
            *again.uri_mut() = req.uri().clone();
            *again.headers_mut() = req.headers().clone();
            *again.version_mut() = req.version();
            again
        });
        let deadline = tokio::time::Instant::now() + self.response_timeout;
        let first = tokio::time::timeout_at(deadline, self.client.request(req)).await;
        let result = match (first, retry) {
            (Ok(Err(e)), Some(again)) if closed_before_answer(&e) => {
                tracing::debug!(error = %e, "pooled origin connection was closed: retrying once");
                tokio::time::timeout_at(deadline, self.client.request(again)).await
            }
            (first, _) => first,
        };
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(OriginError::Unreachable(format!(
                "{e:#}: {}",
                source_chain(&e)
            ))),
            Err(_) => Err(OriginError::Timeout(self.response_timeout)),
        }
    }
}

/// The request was written on a reused connection that the origin closed without answering
/// (it had timed out the idle connection): safe to resend an idempotent request once.
fn closed_before_answer(e: &hyper_util::client::legacy::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
