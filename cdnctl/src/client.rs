//! The admin API client (hyper's pooled client over plain HTTP/1.1) and the errors every
//! command ends with, each with its exit code.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Exit codes, as `--help` lists them.
pub mod exit {
    /// Something else failed: the member answered with a server error, or an unexpected answer.
    pub const OTHER: u8 = 1;
    /// Bad input: a usage error, or a request the member refused as malformed.
    pub const USAGE: u8 = 2;
    /// The member could not be reached: connection refused, or no answer in time.
    pub const UNREACHABLE: u8 = 3;
    /// The member refused the token (401/403).
    pub const TOKEN: u8 = 4;
    /// Accepted but not done everywhere: a member did not acknowledge, a URL was not stored.
    pub const INCOMPLETE: u8 = 5;
}

/// Why a command failed. Each says what was being done and where, on one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad arguments or input files.
    #[error("{0}")]
    Usage(String),
    /// Connection refused, reset before an answer, or timed out.
    #[error("{what}: cannot reach {addr}: {detail}")]
    Unreachable {
        what: String,
        addr: String,
        detail: String,
    },
    /// 401 or 403.
    #[error("{what} on {addr}: token refused; set CDN_ADMIN_TOKEN or pass --token ({status})")]
    Token {
        what: String,
        addr: String,
        status: StatusCode,
    },
    /// 400, 413 or 422: the member understood the call and refused what it carried.
    #[error("{what} on {addr}: refused ({status}): {body}")]
    Rejected {
        what: String,
        addr: String,
        status: StatusCode,
        body: String,
    },
    /// Any other answer that is not a success.
    #[error("{what} on {addr}: {status}: {body}")]
    Server {
        what: String,
        addr: String,
        status: StatusCode,
        body: String,
    },
    /// The call succeeded but not everywhere (the report was printed).
    #[error("{0}")]
    Incomplete(String),
    /// Anything else (a reply that does not parse, the terminal).
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Rejected { .. } => exit::USAGE,
            Error::Unreachable { .. } => exit::UNREACHABLE,
            Error::Token { .. } => exit::TOKEN,
            Error::Incomplete(_) => exit::INCOMPLETE,
            Error::Server { .. } | Error::Other(_) => exit::OTHER,
        }
    }
}

/// A member's answer.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its whole body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON; `what` names the call in the error.
    pub fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Other(format!("{what}: the answer is not the expected JSON: {e}")))
    }
}

/// The client every command uses; one pool, so `top` keeps its connections between refreshes.
#[derive(Clone)]
pub struct Admin {
    client: Client<HttpConnector, Full<Bytes>>,
    token: Option<String>,
    timeout: Duration,
}

impl Admin {
    /// A client sending `token` with mutating calls, giving up on an answer after `timeout`
    /// and on a connection after `connect_timeout`.
    pub fn new(token: Option<String>, timeout: Duration, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            token: token.filter(|t| !t.is_empty()),
            timeout,
        }
    }

    /// `GET path` on the member at `addr`; any status other than success is an error.
    pub async fn get(&self, what: &str, addr: &str, path: &str) -> Result<Answer, Error> {
        let a = self
            .send(
                what,
                addr,
                Method::GET,
                path,
                HeaderMap::new(),
                Bytes::new(),
            )
            .await?;
        success(what, addr, a)
    }

    /// POSTs `body` as JSON to `path` with the token; answers as [`Self::send`].
    pub async fn post_json(
        &self,
        what: &str,
        addr: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Answer, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let body = Bytes::from(body.to_string());
        self.send(what, addr, Method::POST, path, headers, body)
            .await
    }

    /// Sends a request with the token (for anything but GET); answers of every status come
    /// back except 401/403, which are [`Error::Token`].
    pub async fn send(
        &self,
        what: &str,
        addr: &str,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Answer, Error> {
        let uri: http::Uri = format!("http://{addr}{path}").parse().map_err(|e| {
            Error::Usage(format!(
                "{what}: `{addr}` and `{path}` do not make a URL (HOST:PORT and a path): {e}"
            ))
        })?;
        let mut req = Request::builder().method(method.clone()).uri(uri);
        if let Some(h) = req.headers_mut() {
            h.extend(headers);
            if method != Method::GET {
                if let Some(t) = &self.token {
                    let v = http::HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                        Error::Usage("the admin token has characters a header cannot carry".into())
                    })?;
                    h.insert(header::AUTHORIZATION, v);
                }
            }
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::Usage(format!("{what}: building the request: {e}")))?;
        let unreachable = |detail: String| Error::Unreachable {
            what: what.to_string(),
            addr: addr.to_string(),
            detail,
        };
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    unreachable(root_cause(&e))
                } else {
                    Error::Other(format!("{what} on {addr}: {}", root_cause(&e)))
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| Error::Other(format!("{what} on {addr}: reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                body,
            })
        };
        let answer = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))??;
        if matches!(
            answer.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(Error::Token {
                what: what.to_string(),
                addr: addr.to_string(),
                status: answer.status,
            });
        }
        Ok(answer)
    }
}

/// `a` when it is a success, else the error its status means.
pub fn success(what: &str, addr: &str, a: Answer) -> Result<Answer, Error> {
    if a.status.is_success() {
        return Ok(a);
    }
    let body = first_line(&a.body);
    let (what, addr) = (what.to_string(), addr.to_string());
    Err(match a.status {
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNPROCESSABLE_ENTITY => Error::Rejected {
            what,
            addr,
            status: a.status,
            body,
        },
        status => Error::Server {
            what,
            addr,
            status,
            body,
        },
    })
}

/// The first line of a body, cut to something a terminal line holds.
fn first_line(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let line = s.lines().next().unwrap_or("").trim();
    let mut out: String = line.chars().take(200).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    if out.is_empty() {
        out = "(no body)".into();
    }
    out
}

/// The innermost error's message: "Connection refused (os error 111)" rather than hyper's
/// "client error (Connect)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
