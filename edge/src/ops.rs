//! Operations accepted on an edge's admin API: push and prewarm.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use cdn_core::fill::Via;
use cdn_core::prewarm::{NotFetched, Prewarm, Prewarmed};
use cdn_core::push::{push_to, PushObject, PushReport};
use cdn_proto::{CacheStatus, Member};

use crate::Edge;

impl Edge {
    fn op_deadline(&self) -> Duration {
        self.config.member.purge_timeout
    }

    /// Stores `obj` on its owners and, with `edges`, in this edge's L1 and (through one node)
    /// every edge's.
    pub async fn push(&self, obj: PushObject, edges: bool) -> PushReport {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let members = self.upstream.members();
        let owners = self.upstream.owners(&obj.key);
        let deadline = self.op_deadline();
        let mut report = PushReport::default();
        let calls = owners
            .iter()
            .map(|m| push_to(self.upstream.pool(), m, &obj, id, false, deadline));
        let answers = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect();
        report.owners_answered(&obj.key, &owners, answers, &members);
        if edges {
            self.push_everywhere(&obj, id, &members, &mut report).await;
        }
        report.settle();
        report
    }

    /// Puts `obj` in this edge's L1 and has one node push it into every edge it links to.
    async fn push_everywhere(
        &self,
        obj: &PushObject,
        id: u64,
        members: &[Member],
        report: &mut PushReport,
    ) {
        match obj.entry(SystemTime::now(), &self.config.member.rules()) {
            Ok(e) => {
                self.l1().insert_pushed(&obj.key, e).await;
                report.edges.push(self.config.member.id.clone());
            }
            Err(e) => {
                report.error.get_or_insert(e);
                return;
            }
        }
        // Owners first: they store it anyway. Any node will do; each links to every edge.
        let mut order = self.upstream.owners(&obj.key);
        order.extend(
            members
                .iter()
                .filter(|m| !order.contains(m))
                .cloned()
                .collect::<Vec<_>>(),
        );
        for m in &order {
            match push_to(self.upstream.pool(), m, obj, id, true, self.op_deadline()).await {
                Ok((acked, missing)) => {
                    report.merge(acked, missing, members);
                    return;
                }
                Err(e) => tracing::warn!(node = %m.id, error = %e, "could not fan the push out"),
            }
        }
    }
}

/// A prewarm at an edge: each URL through the normal miss path (owners, coalesced), then, with
/// `edges`, into this edge's L1 and every other edge's.
impl Prewarm for Edge {
    async fn fetch(&self, url: &str) -> Result<Prewarmed, NotFetched> {
        let mut reader = self.reads.join(url, &http::HeaderMap::new(), None).await;
        let head = reader.head().await.map_err(|e| NotFetched {
            status: None,
            detail: e.to_string(),
        })?;
        let mut body = Vec::new();
        while let Some(c) = reader.next_chunk().await {
            body.push(c.map_err(|e| NotFetched {
                status: Some(head.status.as_u16()),
                detail: e.to_string(),
            })?);
        }
        let node_passed = matches!(
            head.via,
            Via::Node {
                status: CacheStatus::Pass,
                ..
            }
        );
        Ok(Prewarmed {
            status: head.status,
            headers: head.headers.clone(),
            body,
            storable: head.storable && !node_passed,
        })
    }

    async fn push_to_edges(&self, obj: PushObject) -> Vec<String> {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let members = self.upstream.members();
        let mut r = PushReport::default();
        self.push_everywhere(&obj, id, &members, &mut r).await;
        r.edges
    }
}
