//! `POST /prewarm`: have the owners fetch a list of URLs ahead of demand and, if asked, push
//! each into every edge. The flow (fetch, refuse what may not be stored, push into the edges,
//! report) is one for both tiers; how a tier fetches and how it reaches the edges are the two
//! steps of [`Prewarm`] it supplies.

use std::future::Future;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::push::PushObject;

/// The two steps of a prewarm that differ by tier.
pub trait Prewarm: Sync {
    /// Fetches `url` through the owners, as a miss would (coalesced with any concurrent
    /// one), and reads the whole response.
    fn fetch(&self, url: &str) -> impl Future<Output = Result<Prewarmed, NotFetched>> + Send;
    /// Pushes `obj` into every edge; resolves to the edges that took it.
    fn push_to_edges(&self, obj: PushObject) -> impl Future<Output = Vec<String>> + Send;
}

/// A response fetched for a prewarm.
#[derive(Debug)]
pub struct Prewarmed {
    /// Status.
    pub status: StatusCode,
    /// Header fields as the owner answered them.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Vec<Bytes>,
    /// Whether the owners store it (a response that passed is not pushed anywhere).
    pub storable: bool,
}

/// No complete response for a prewarm.
#[derive(Debug)]
pub struct NotFetched {
    /// The status, when a response began.
    pub status: Option<u16>,
    /// What went wrong.
    pub detail: String,
}

/// Prewarms every URL at once; one result per URL, in order.
pub async fn prewarm<T: Prewarm + ?Sized>(
    tier: &T,
    urls: Vec<String>,
    edges: bool,
) -> Vec<PrewarmResult> {
    futures::future::join_all(urls.into_iter().map(|url| prewarm_one(tier, url, edges))).await
}

async fn prewarm_one<T: Prewarm + ?Sized>(tier: &T, url: String, edges: bool) -> PrewarmResult {
    let f = match tier.fetch(&url).await {
        Ok(f) => f,
        Err(e) => return PrewarmResult::origin_error(url, e.status, e.detail),
    };
    let status = f.status.as_u16();
    if !f.storable {
        return PrewarmResult::not_cacheable(url, status);
    }
    let mut pushed = vec![];
    if edges {
        // The age it had when fetched is not what it will have in the edges: they count from
        // the push.
        let mut headers = f.headers;
        headers.remove(http::header::AGE);
        let obj = PushObject {
            key: url.clone(),
            status: f.status,
            headers,
            body: f.body,
        };
        pushed = tier.push_to_edges(obj).await;
        pushed.sort();
        pushed.dedup();
    }
    PrewarmResult::stored(url, status, pushed)
}

/// One URL's outcome in `POST /prewarm`.
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize, PartialEq, Eq)]
pub struct PrewarmResult {
    /// The URL (path and query).
    pub url: String,
    /// `stored`, `not cacheable` or `origin error`.
    pub result: String,
    /// The origin's status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Detail of an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Edges the object was pushed into.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub edges: Vec<String>,
}

impl PrewarmResult {
    /// Fetched and stored by its owners (and pushed into `edges`).
    pub fn stored(url: String, status: u16, edges: Vec<String>) -> Self {
        Self {
            url,
            result: "stored".into(),
            status: Some(status),
            detail: None,
            edges,
        }
    }

    /// Fetched, but the response may not be stored.
    pub fn not_cacheable(url: String, status: u16) -> Self {
        Self {
            url,
            result: "not cacheable".into(),
            status: Some(status),
            ..Self::default()
        }
    }

    /// No complete response from the origin (`status` when one began).
    pub fn origin_error(url: String, status: Option<u16>, detail: String) -> Self {
        Self {
            url,
            result: "origin error".into(),
            status,
            detail: Some(detail),
            ..Self::default()
        }
    }
}

/// The JSON body of `POST /prewarm`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrewarmRequest {
    /// Paths with query to fetch.
    pub urls: Vec<String>,
    /// Also push each into every edge.
    pub edges: bool,
}
