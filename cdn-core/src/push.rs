//! Pushed objects: what `PUT /objects/...` stores, how it travels (`Push`, `Data`..., `End`,
//! answered by `Ack`), and the freshness check it shares with fetched objects.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cdn_proto::{Frame, Member};
use http::{HeaderMap, StatusCode};

use cdn_net::peers::{PeerError, PeerPool};
use cdn_net::quic::{fields_from_headers, send_data, send_frame, FrameReader};
use cdn_store::NewEntry;

/// Request fields of a push that become the stored response's fields; everything else the
/// admin request carries (its token above all) is dropped.
pub const PUSHED_FIELDS: [&str; 12] = [
    "cache-control",
    "cdn-cache-control",
    "content-type",
    "content-encoding",
    "content-language",
    "content-disposition",
    "etag",
    "last-modified",
    "expires",
    "surrogate-key",
    "vary",
    "link",
];

/// An object to store, as pushed.
#[derive(Debug, Clone)]
pub struct PushObject {
    /// Path and query: the cache key.
    pub key: String,
    /// Status to store.
    pub status: StatusCode,
    /// Response fields to store.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<Bytes>,
}

impl PushObject {
    /// Takes the storable fields of an admin request's headers.
    pub fn from_request(key: String, request_headers: &HeaderMap, body: Bytes) -> Self {
        let mut headers = HeaderMap::new();
        for name in PUSHED_FIELDS {
            for v in request_headers.get_all(name) {
                headers.append(name, v.clone());
            }
        }
        Self {
            key,
            status: StatusCode::OK,
            headers,
            body: if body.is_empty() { vec![] } else { vec![body] },
        }
    }

    /// The entry to store at `now`, under the same freshness rules as a fetched response
    /// (the member's `rules`); `Err` says why it is not storable.
    pub fn entry(
        &self,
        now: SystemTime,
        rules: &cdn_http::policy::Rules,
    ) -> Result<NewEntry, String> {
        let mut headers = self.headers.clone();
        if !headers.contains_key(http::header::DATE) {
            headers.insert(
                http::header::DATE,
                http::HeaderValue::from_str(&httpdate::fmt_http_date(now))
                    .map_err(|e| e.to_string())?,
            );
        }
        let len: usize = self.body.iter().map(Bytes::len).sum();
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        let req =
            cdn_http::policy::policy_request(&http::Method::GET, &self.key, &HeaderMap::new());
        let decision = cdn_http::policy::evaluate_head(&req, self.status, &headers, now, rules);
        if !decision.storable {
            return Err("not cacheable: give it a lifetime (Cache-Control: max-age=N or s-maxage=N) and no private/no-store".into());
        }
        Ok(NewEntry::new(
            self.status,
            &headers,
            self.body.clone(),
            decision,
            now,
        ))
    }

    /// The frame that starts the push.
    pub fn frame(&self, id: u64, forward: bool) -> Frame {
        Frame::Push {
            id,
            key: self.key.clone(),
            status: self.status.as_u16(),
            headers: fields_from_headers(&self.headers),
            forward,
        }
    }

    /// Total body bytes.
    pub fn len(&self) -> u64 {
        self.body.iter().map(|b| b.len() as u64).sum()
    }

    /// No body.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rebuilds an object from a received `Push` head and body.
    pub fn from_frame(
        key: String,
        status: u16,
        headers: Vec<cdn_proto::frame::Field>,
        body: Vec<Bytes>,
    ) -> Result<Self, String> {
        Ok(Self {
            key,
            status: StatusCode::from_u16(status).map_err(|e| e.to_string())?,
            headers: cdn_net::quic::headers_from_fields(headers).map_err(|e| e.to_string())?,
            body,
        })
    }
}

/// Writes a push (head, body, `End`) on `send` and finishes it.
pub async fn write_push(
    send: &mut quinn::SendStream,
    obj: &PushObject,
    id: u64,
    forward: bool,
) -> Result<(), String> {
    send_frame(send, &obj.frame(id, forward))
        .await
        .map_err(|e| e.to_string())?;
    for c in &obj.body {
        send_data(send, c.clone())
            .await
            .map_err(|e| e.to_string())?;
    }
    send_frame(send, &Frame::End { len: obj.len() })
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

/// Pushes `obj` to `member` and waits up to `deadline` for its `Ack`.
pub async fn push_to(
    pool: &PeerPool,
    member: &Member,
    obj: &PushObject,
    id: u64,
    forward: bool,
    deadline: Duration,
) -> Result<(Vec<String>, Vec<String>), PeerError> {
    let refused = |reason: String| PeerError::Refused {
        node: member.id.clone(),
        reason,
    };
    let work = async {
        let conn = pool
            .connection(
                &member.id,
                member
                    .addr
                    .parse()
                    .map_err(|_| refused(format!("bad address {}", member.addr)))?,
            )
            .await?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| refused(e.to_string()))?;
        write_push(&mut send, obj, id, forward)
            .await
            .map_err(refused)?;
        match FrameReader::new(recv).next().await {
            Ok(Some(Frame::Ack { acked, missing })) => Ok((acked, missing)),
            Ok(Some(Frame::Error { message, .. })) => Err(refused(message)),
            Ok(other) => Err(refused(format!("unexpected answer {other:?}"))),
            Err(e) => Err(refused(e.to_string())),
        }
    };
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| Err(refused(format!("no answer within {deadline:?}"))))
}

/// A member's answer to a push: who acknowledged and who was missing (a node that fanned it
/// out to its edges answers for them), or why it was not stored.
pub type PushAnswer = Result<(Vec<String>, Vec<String>), String>;

/// The answer to a push.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PushReport {
    /// Cache nodes that stored it.
    pub stored: Vec<String>,
    /// Edges that took it into L1 (with `?edges=all`).
    pub edges: Vec<String>,
    /// Members that should have and did not acknowledge.
    pub missing: Vec<String>,
    /// Why it was refused, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PushReport {
    /// Files acknowledgements by role.
    pub fn merge(&mut self, acked: Vec<String>, missing: Vec<String>, nodes: &[Member]) {
        for a in acked {
            if nodes.iter().any(|m| m.id == a) {
                self.stored.push(a);
            } else {
                self.edges.push(a);
            }
        }
        self.missing.extend(missing);
    }

    /// Files the answers of a push of `key` to its `owners` (in their order): each one's
    /// acknowledgements by role; an owner that failed is missing, and the first failure is the
    /// error.
    pub fn owners_answered(
        &mut self,
        key: &str,
        owners: &[Member],
        answers: Vec<PushAnswer>,
        nodes: &[Member],
    ) {
        for (m, r) in owners.iter().zip(answers) {
            match r {
                Ok((acked, missing)) => self.merge(acked, missing, nodes),
                Err(e) => {
                    tracing::warn!(node = %m.id, error = %e, %key, "push not stored");
                    self.missing.push(m.id.clone());
                    self.error.get_or_insert(e);
                }
            }
        }
    }

    /// Sorts, dedups, and clears `missing` of whoever acknowledged.
    pub fn settle(&mut self) {
        for v in [&mut self.stored, &mut self.edges, &mut self.missing] {
            v.sort();
            v.dedup();
        }
        let (s, e) = (&self.stored, &self.edges);
        self.missing.retain(|m| !s.contains(m) && !e.contains(m));
    }
}
