//! Operations accepted on an edge's admin API: push and prewarm.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cdn_core::admin::PrewarmResult;
use cdn_core::fill::Via;
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
        for (m, r) in owners.iter().zip(futures::future::join_all(calls).await) {
            match r {
                Ok((acked, missing)) => report.merge(acked, missing, &members),
                Err(e) => {
                    tracing::warn!(node = %m.id, error = %e, key = %obj.key, "push not stored");
                    report.missing.push(m.id.clone());
                    report.error.get_or_insert(e.to_string());
                }
            }
        }
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

    /// Fills each URL through the normal miss path (owners, coalesced) and, with `edges`,
    /// pushes what is cacheable into every edge.
    pub async fn prewarm(self: &Arc<Self>, urls: Vec<String>, edges: bool) -> Vec<PrewarmResult> {
        let calls = urls.into_iter().map(|url| {
            let edge = self.clone();
            async move { edge.prewarm_one(url, edges).await }
        });
        futures::future::join_all(calls).await
    }

    async fn prewarm_one(self: Arc<Self>, url: String, edges: bool) -> PrewarmResult {
        let mut reader = self.reads.join(&url, &http::HeaderMap::new(), None).await;
        let head = match reader.head().await {
            Ok(h) => h,
            Err(e) => return PrewarmResult::origin_error(url, None, e.to_string()),
        };
        let mut body = Vec::new();
        while let Some(c) = reader.next_chunk().await {
            match c {
                Ok(c) => body.push(c),
                Err(e) => {
                    return PrewarmResult::origin_error(
                        url,
                        Some(head.status.as_u16()),
                        e.to_string(),
                    )
                }
            }
        }
        let status = head.status.as_u16();
        let node_passed = matches!(
            head.via,
            Via::Node {
                status: CacheStatus::Pass,
                ..
            }
        );
        if !head.storable || node_passed {
            return PrewarmResult::not_cacheable(url, status);
        }
        let mut pushed = vec![];
        if edges {
            let mut headers = head.headers.clone();
            headers.remove(http::header::AGE);
            let obj = PushObject {
                key: url.clone(),
                status: head.status,
                headers,
                body,
            };
            let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
            let members = self.upstream.members();
            let mut r = PushReport::default();
            self.push_everywhere(&obj, id, &members, &mut r).await;
            pushed = r.edges;
            pushed.sort();
            pushed.dedup();
        }
        PrewarmResult::stored(url, status, pushed)
    }
}
