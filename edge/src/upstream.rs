//! The node tier as an edge sees it: the member list, one pooled QUIC connection per node,
//! owner selection, and a fill that pulls an object from its owners into a flight.

use std::sync::Arc;
use std::time::SystemTime;

use cdn_core::fill::{FillError, FillErrorKind, FlightWriter, Head, Served, Sink, Via};
use cdn_core::peers::{PeerError, PeerPool};
use cdn_core::quic::{codes, fields_from_headers, headers_from_fields, FrameReader, WireError};
use cdn_core::store::{Entry, Store};
use cdn_proto::{Frame, Member, Method};
use tokio::sync::watch;

/// The edge's view of the node tier.
pub struct Upstream {
    pool: Arc<PeerPool>,
    replicas: usize,
}

impl Upstream {
    /// An upstream over `pool`, trying `replicas` owners per key.
    pub fn new(pool: Arc<PeerPool>, replicas: usize) -> Self {
        Self { pool, replicas }
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

    /// The owners of `key`, best first.
    pub fn owners(&self, key: &str) -> Vec<Member> {
        let members = self.members();
        cdn_proto::owners(key.as_bytes(), &members, self.replicas, |m| &m.id)
            .into_iter()
            .map(|i| members[i].clone())
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
    ) -> Result<(Head, FrameReader), PeerError> {
        let refused = |reason: String| PeerError::Refused {
            node: member.id.clone(),
            reason,
        };
        let frame = Frame::Request {
            id: request_id,
            method: Method::Get,
            path: key.to_string(),
            headers: fields_from_headers(headers),
        };
        let (mut send, mut reader) = self.pool.open(member, &frame).await?;
        let _ = send.finish();
        let first = tokio::time::timeout(self.pool.timeouts().response, reader.next())
            .await
            .map_err(|_| {
                refused(format!(
                    "no response head within {:?}",
                    self.pool.timeouts().response
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
                        served: Served::Fetched,
                        variant: None,
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
        client_headers: &http::HeaderMap,
        l1: &Sink<'_>,
        stale: Option<&Arc<Entry>>,
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
        let headers = &cdn_core::fill::fill_headers(client_headers);
        let stale = stale.filter(|s| s.validators);
        let mut with_validators = headers.clone();
        if let Some(s) = stale {
            with_validators.extend(cdn_core::policy::validators_for(&s.headers));
        }
        for member in self.owners(key) {
            let (mut head, mut reader) = match self
                .request(&member, request_id, key, &with_validators)
                .await
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
            if let (Some(s), http::StatusCode::NOT_MODIFIED) = (stale, head.status) {
                // The node confirmed our copy: refresh it and serve its body.
                let (entry, storable) =
                    cdn_core::fill::revalidated(s, &head.headers, &policy_req, now, rules);
                let entry = Arc::new(entry.with_source(member.id.as_str().into()));
                if storable {
                    l1.insert_filled(key, headers, entry.clone(), mark).await;
                }
                let node_status = match &head.via {
                    Via::Node { status, .. } => *status,
                    _ => cdn_proto::CacheStatus::Hit,
                };
                let mut h = entry.headers.clone();
                h.insert(
                    http::header::AGE,
                    http::HeaderValue::from(entry.age(now).as_secs()),
                );
                w.set_head(
                    Head {
                        status: entry.status,
                        headers: h,
                        content_length: Some(entry.body_len),
                        storable,
                        via: Via::Node {
                            id: member.id.as_str().into(),
                            status: node_status,
                        },
                        served: Served::Revalidated,
                        variant: cdn_core::fill::variant_of(key, &entry.headers, headers),
                    },
                    true,
                );
                for c in &entry.body {
                    w.push(c.clone());
                }
                let _ = reader.next().await;
                w.finish();
                return Ok(Ok(()));
            }
            let decision = cdn_core::policy::evaluate_with(&policy_req, &parts, now, rules);
            head.storable = decision.storable;
            head.variant = cdn_core::fill::variant_of(key, &head.headers, headers);
            let fill = NodeFill {
                key,
                mark,
                expected: head.content_length,
                storable: decision.storable && head.content_length.is_none_or(|l| l <= max_object),
                max_object,
                status: head.status,
                headers: head.headers.clone(),
                decision,
                now,
                source: member.id.as_str().into(),
                request: headers.clone(),
            };
            w.set_head(head, fill.decision.storable);
            return Ok(fill.stream_body(&mut reader, l1, w).await);
        }
        Err((w, failures))
    }
}

/// A node's response being received: what is needed to check and store it at the end.
struct NodeFill<'a> {
    key: &'a str,
    mark: u64,
    expected: Option<u64>,
    storable: bool,
    max_object: u64,
    status: http::StatusCode,
    headers: http::HeaderMap,
    decision: cdn_core::policy::Decision,
    now: SystemTime,
    source: Arc<str>,
    request: http::HeaderMap,
}

impl NodeFill<'_> {
    /// Streams the body frames into `w`; stores the entry in `l1` when complete, valid and
    /// storable.
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
        if self.storable && w.is_retaining() && w.len() <= self.max_object {
            let entry = Entry::new(
                self.status,
                self.headers,
                w.chunks(),
                self.decision,
                self.now,
            )
            .with_source(self.source);
            l1.insert_filled(self.key, &self.request, Arc::new(entry), self.mark)
                .await;
        }
        w.finish();
        Ok(())
    }
}

fn wire_reason(e: &WireError) -> String {
    format!("node stream: {e}")
}
