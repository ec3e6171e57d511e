//! The HTTP client to the origin (pooled HTTP/1.1 keep-alive connections).

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::http::Body;

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

/// A client for one origin base URL.
#[derive(Clone)]
pub struct Origin {
    base: Uri,
    host: HeaderValue,
    client: Client<HttpConnector, Body>,
    response_timeout: Duration,
}

impl Origin {
    /// A client for `base` (`http://host:port`, optionally with a path prefix).
    pub fn new(
        base: &str,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, String> {
        let base = check_url(base)?;
        let authority = base
            .authority()
            .ok_or_else(|| format!("`{base}` has no host"))?
            .clone();
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("`{base}`: bad host: {e}"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
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
            let mut again = Request::new(crate::http::empty());
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
