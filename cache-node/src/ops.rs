//! Operations accepted on a node's admin API: push and prewarm.

use std::time::{Duration, SystemTime};

use cdn_core::prewarm::{NotFetched, Prewarm, Prewarmed};
use cdn_core::push::{push_to, PushObject, PushReport};
use cdn_net::peers::{fetch_whole, PurgeReport};
use cdn_proto::{CacheStatus, Member};
use std::sync::atomic::Ordering;

use crate::{Counter, Node};

impl Node {
    /// The owners of `key` in this node's region, best first.
    fn owners(&self, key: &str) -> Vec<Member> {
        self.owners_in(key, &self.config.member.region)
    }

    fn owners_in(&self, key: &str, region: &str) -> Vec<Member> {
        let all = self.peers.members();
        let members: Vec<&Member> = all.iter().filter(|m| m.region == region).collect();
        cdn_proto::owners(key.as_bytes(), &members, self.config.member.replicas, |m| {
            &m.id
        })
        .into_iter()
        .map(|i| members[i].clone())
        .collect()
    }

    /// The owners of `key` in every region (a push is stored in all of them).
    fn owners_everywhere(&self, key: &str) -> Vec<Member> {
        let mut regions: Vec<String> = self
            .peers
            .members()
            .iter()
            .map(|m| m.region.clone())
            .collect();
        regions.sort();
        regions.dedup();
        regions
            .iter()
            .flat_map(|r| self.owners_in(key, r))
            .collect()
    }

    fn op_deadline(&self) -> Duration {
        self.config.member.purge_timeout
    }

    /// Stores `obj` on its owners (this node included when it is one) and, with `edges`,
    /// pushes it into every edge connected to this node.
    pub async fn push(&self, obj: PushObject, edges: bool) -> PushReport {
        let id = self.next_purge_id.fetch_add(1, Ordering::Relaxed);
        let owners = self.owners_everywhere(&obj.key);
        let members = self.peers.members();
        let mut report = PushReport::default();
        let deadline = self.op_deadline();
        let calls = owners.iter().map(|m| {
            let obj = &obj;
            async move {
                if m.id == self.config.member.id {
                    match self.store_pushed(obj).await {
                        Ok(()) => Ok((vec![m.id.clone()], vec![])),
                        Err(e) => Err(e),
                    }
                } else {
                    push_to(&self.peers, m, obj, id, false, deadline)
                        .await
                        .map_err(|e| e.to_string())
                }
            }
        });
        let answers = futures::future::join_all(calls).await;
        report.owners_answered(&obj.key, &owners, answers, &members);
        if edges {
            let mut r = PurgeReport::default();
            self.links.push_to_edges(&obj, id, deadline, &mut r).await;
            report.merge(r.acked, r.missing, &members);
        }
        report.settle();
        report
    }

    /// After a fill stored `key` here (at or after `since`), copies it to the key's other
    /// owners, so a read that falls over or is hedged to them finds it. Best effort: an owner
    /// that cannot take it now fills on its own later. Responses with `Vary` are not copied
    /// (a push carries no request to pick the variant by).
    pub async fn replicate(&self, key: &str, request: &http::HeaderMap, since: SystemTime) {
        let Some(entry) = self.store().lookup(key, request).await else {
            return;
        };
        if entry.stored_at() < since || entry.fields().get("vary").is_some() {
            return;
        }
        let others: Vec<Member> = self
            .owners(key)
            .into_iter()
            .filter(|m| m.id != self.config.member.id)
            .collect();
        if others.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let mut headers = entry.headers();
        headers.insert(
            http::header::AGE,
            http::HeaderValue::from(entry.age(now).as_secs()),
        );
        let obj = PushObject {
            key: key.to_string(),
            status: entry.status(),
            headers,
            body: entry.body().to_vec(),
        };
        let id = self.next_purge_id.fetch_add(1, Ordering::Relaxed);
        for m in &others {
            match push_to(&self.peers, m, &obj, id, false, self.op_deadline()).await {
                Ok(_) => self.counters.add(Counter::Replicated, 1),
                Err(e) => tracing::debug!(%key, node = %m.id, error = %e, "replica not stored"),
            }
        }
    }

    /// Stores a pushed object here.
    pub async fn store_pushed(&self, obj: &PushObject) -> Result<(), String> {
        let entry = obj.entry(SystemTime::now(), &self.config.member.rules())?;
        self.store().insert_pushed(&obj.key, entry).await;
        Ok(())
    }
}

/// A prewarm at a node: each URL fetched at its primary owner (coalesced with concurrent misses
/// there), then, with `edges`, pushed into every edge connected to this node.
impl Prewarm for Node {
    async fn fetch(&self, url: &str) -> Result<Prewarmed, NotFetched> {
        let max = self.config.member.max_object();
        let deadline = self.config.member.origin_response_timeout + Duration::from_secs(5);
        let mut last_error = String::from("no cache node is reachable");
        for owner in self.owners(url) {
            // The owner may be this node: the QUIC request to ourselves takes the same path
            // (store, coalesced fill) as any other.
            match fetch_whole(&self.peers, &owner, url, max, deadline).await {
                Ok(f) => {
                    return Ok(Prewarmed {
                        storable: f.cache != CacheStatus::Pass,
                        status: f.status,
                        headers: f.headers,
                        body: f.body,
                    })
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(NotFetched {
            status: None,
            detail: last_error,
        })
    }

    async fn push_to_edges(&self, obj: PushObject) -> Vec<String> {
        let mut r = PurgeReport::default();
        let id = self.next_purge_id.fetch_add(1, Ordering::Relaxed);
        self.links
            .push_to_edges(&obj, id, self.op_deadline(), &mut r)
            .await;
        r.acked
    }
}
