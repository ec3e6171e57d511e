//! One table of the events a member counts. Both tiers count into [`Counters`], and the same
//! table names each counter's `/status` key and its `/metrics` series (with a `tier` label),
//! so a counter is named once and the status page, the JSON and Prometheus can never
//! disagree.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::admin::Metric;
use crate::read_path::{ReadEvent, ReadEvents, SourceKind};

/// Which tier a member is: the `tier` label of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// An edge: clients over HTTP, an L1 store.
    Edge,
    /// A cache node: edges over QUIC, the cluster's store.
    Node,
}

impl Tier {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Edge => "edge",
            Tier::Node => "node",
        }
    }
}

/// An event a member counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Requests received (edge: from clients; node: on QUIC streams).
    Requests,
    /// Served fresh from the store.
    Hits,
    /// Nothing servable stored: filled from a source.
    Misses,
    /// Served stale while one background request refreshed the entry.
    Stale,
    /// Not cacheable, sent through (other methods, uncacheable responses).
    Passes,
    /// Requests that waited on another request's fill.
    Coalesced,
    /// Fills sent to the node tier (edge).
    NodeFetches,
    /// Fills sent to the parent region's nodes (node).
    ParentFetches,
    /// Requests sent to the origin.
    OriginFetches,
    /// Node requests that failed before a head (each tried the next owner).
    NodeFailures,
    /// Filled objects copied to the key's other owners (node).
    Replicated,
    /// Responses that could not be completed.
    Errors,
    /// Invalidations applied.
    Purges,
    /// Entries removed or marked stale by invalidations.
    Purged,
    /// Response body bytes sent.
    BytesSent,
    /// Request streams accepted (node), from edges and from child-region nodes: each carries
    /// one request or more in turn, so requests over streams is how well they are kept.
    RequestStreams,
}

/// How many counters there are.
const COUNT: usize = 16;

/// A counter's names: its `/status` key, its metric and the metric's own label, its help.
struct Row {
    // Only the test reads it: it pins each row to its counter's storage slot.
    #[cfg_attr(not(test), allow(dead_code))]
    counter: Counter,
    status: &'static str,
    metric: &'static str,
    label: Option<(&'static str, &'static str)>,
    help: &'static str,
}

/// The table. The order is the counters' storage order (`Counter as usize`).
const TABLE: [Row; COUNT] = [
    row(
        Counter::Requests,
        "requests",
        "cdn_requests_received_total",
        None,
        "Requests received.",
    ),
    row(
        Counter::Hits,
        "hits",
        "cdn_requests_total",
        Some(("outcome", "hit")),
        "Requests by outcome.",
    ),
    row(
        Counter::Misses,
        "misses",
        "cdn_requests_total",
        Some(("outcome", "miss")),
        "Requests by outcome.",
    ),
    row(
        Counter::Stale,
        "stale",
        "cdn_requests_total",
        Some(("outcome", "stale")),
        "Requests by outcome.",
    ),
    row(
        Counter::Passes,
        "passes",
        "cdn_requests_total",
        Some(("outcome", "pass")),
        "Requests by outcome.",
    ),
    row(
        Counter::Coalesced,
        "coalesced",
        "cdn_coalesced_total",
        None,
        "Requests that waited on another's fill.",
    ),
    row(
        Counter::NodeFetches,
        "node_fetches",
        "cdn_fetches_total",
        Some(("source", "nodes")),
        "Fills sent to a source.",
    ),
    row(
        Counter::ParentFetches,
        "parent_fetches",
        "cdn_fetches_total",
        Some(("source", "parent")),
        "Fills sent to a source.",
    ),
    row(
        Counter::OriginFetches,
        "origin_fetches",
        "cdn_fetches_total",
        Some(("source", "origin")),
        "Fills sent to a source.",
    ),
    row(
        Counter::NodeFailures,
        "node_failures",
        "cdn_node_failures_total",
        None,
        "Node requests that failed before a head.",
    ),
    row(
        Counter::Replicated,
        "replicated",
        "cdn_replicated_total",
        None,
        "Filled objects copied to the key's other owners.",
    ),
    row(
        Counter::Errors,
        "errors",
        "cdn_errors_total",
        None,
        "Responses that could not be completed.",
    ),
    row(
        Counter::Purges,
        "purges",
        "cdn_purges_total",
        None,
        "Invalidations applied.",
    ),
    row(
        Counter::Purged,
        "purged",
        "cdn_purged_entries_total",
        None,
        "Entries removed or marked stale by invalidations.",
    ),
    row(
        Counter::BytesSent,
        "bytes_sent",
        "cdn_sent_bytes_total",
        None,
        "Response body bytes sent.",
    ),
    row(
        Counter::RequestStreams,
        "request_streams",
        "cdn_request_streams_total",
        None,
        "Request streams accepted (each carries one request or more in turn).",
    ),
];

const fn row(
    counter: Counter,
    status: &'static str,
    metric: &'static str,
    label: Option<(&'static str, &'static str)>,
    help: &'static str,
) -> Row {
    Row {
        counter,
        status,
        metric,
        label,
        help,
    }
}

/// What each tier counts (and so reports): a node has no passes and no node tier above it; an
/// edge has no parent region and replicates nothing.
const EDGE: &[Counter] = &[
    Counter::Requests,
    Counter::Hits,
    Counter::Misses,
    Counter::Stale,
    Counter::Passes,
    Counter::Coalesced,
    Counter::NodeFetches,
    Counter::OriginFetches,
    Counter::NodeFailures,
    Counter::Errors,
    Counter::Purges,
    Counter::Purged,
    Counter::BytesSent,
];
const NODE: &[Counter] = &[
    Counter::Requests,
    Counter::Hits,
    Counter::Misses,
    Counter::Stale,
    Counter::Coalesced,
    Counter::ParentFetches,
    Counter::OriginFetches,
    Counter::Replicated,
    Counter::Errors,
    Counter::Purges,
    Counter::Purged,
    Counter::BytesSent,
];

/// A member's counters.
#[derive(Debug)]
pub struct Counters {
    tier: Tier,
    member: String,
    // Relaxed atomics: each is an independent count read for reports, never used to order
    // other memory.
    values: [AtomicU64; COUNT],
}

impl Counters {
    /// Zeroed counters of member `member` of `tier`.
    pub fn new(tier: Tier, member: impl Into<String>) -> Self {
        Self {
            tier,
            member: member.into(),
            values: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one `c`.
    pub fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    /// Counts `n` of `c`.
    pub fn add(&self, c: Counter, n: u64) {
        self.values[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// The count of `c`.
    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }

    /// The tier.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    fn reported(&self) -> &'static [Counter] {
        match self.tier {
            Tier::Edge => EDGE,
            Tier::Node => NODE,
        }
    }

    /// Every counter of this tier under its `/status` key, into `doc` (a JSON object).
    pub fn write_status(&self, doc: &mut serde_json::Value) {
        for &c in self.reported() {
            doc[TABLE[c as usize].status] = self.get(c).into();
        }
    }

    /// Every counter of this tier as a metric sample, labelled with the tier and the member.
    pub fn metrics(&self) -> Vec<Metric> {
        self.reported()
            .iter()
            .map(|&c| {
                let r = &TABLE[c as usize];
                let m = Metric::counter(r.metric, r.help, self.get(c))
                    .label("tier", self.tier.as_str())
                    .label("member", self.member.clone());
                match r.label {
                    Some((k, v)) => m.label(k, v),
                    None => m,
                }
            })
            .collect()
    }
}

/// The read path's events, counted under the tier's names: a fill from owners is a fill from
/// the node tier at an edge and from the parent region at a node.
impl ReadEvents for Counters {
    fn event(&self, e: ReadEvent) {
        match (e, self.tier) {
            (ReadEvent::Hit, _) => self.inc(Counter::Hits),
            (ReadEvent::Stale, _) => self.inc(Counter::Stale),
            (ReadEvent::Miss, _) => self.inc(Counter::Misses),
            (ReadEvent::Coalesced, _) => self.inc(Counter::Coalesced),
            (ReadEvent::Fetch(SourceKind::Origin), _) => self.inc(Counter::OriginFetches),
            (ReadEvent::Fetch(SourceKind::Owners), Tier::Edge) => self.inc(Counter::NodeFetches),
            (ReadEvent::Fetch(SourceKind::Owners), Tier::Node) => self.inc(Counter::ParentFetches),
            (ReadEvent::SourceFailures(SourceKind::Owners, n), Tier::Edge) => {
                self.add(Counter::NodeFailures, n)
            }
            // A node logs its parent region's failures; the origin has no members to fail over.
            (ReadEvent::SourceFailures(..), _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_storage_order_and_names_each_counter_once() {
        for (i, r) in TABLE.iter().enumerate() {
            assert_eq!(r.counter as usize, i, "{} out of order", r.status);
        }
        let mut keys: Vec<&str> = TABLE.iter().map(|r| r.status).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), COUNT, "a /status key used twice");
        let mut series: Vec<(&str, Option<(&str, &str)>)> =
            TABLE.iter().map(|r| (r.metric, r.label)).collect();
        series.sort();
        series.dedup();
        assert_eq!(series.len(), COUNT, "a metric series used twice");
    }

    #[test]
    fn status_and_metrics_read_the_same_counts() {
        let c = Counters::new(Tier::Node, "node-1");
        c.inc(Counter::Hits);
        c.add(Counter::BytesSent, 512);
        c.event(ReadEvent::Fetch(SourceKind::Owners));
        c.event(ReadEvent::Fetch(SourceKind::Origin));
        let mut doc = serde_json::json!({});
        c.write_status(&mut doc);
        assert_eq!(doc["hits"], 1);
        assert_eq!(doc["bytes_sent"], 512);
        assert_eq!(doc["parent_fetches"], 1);
        assert_eq!(doc["origin_fetches"], 1);
        assert!(doc.get("passes").is_none(), "a node has no passes");
        let metrics = c.metrics();
        let hit = metrics
            .iter()
            .find(|m| m.labels.contains(&("outcome", "hit".into())))
            .unwrap();
        assert_eq!(hit.name, "cdn_requests_total");
        assert_eq!(hit.value, 1.0);
        assert!(hit.labels.contains(&("tier", "node".into())));
        assert!(hit.labels.contains(&("member", "node-1".into())));
        let parent = metrics
            .iter()
            .find(|m| m.labels.contains(&("source", "parent".into())))
            .unwrap();
        assert_eq!(parent.value, 1.0);
    }

    #[test]
    fn an_edge_counts_owner_fetches_as_node_fetches() {
        let c = Counters::new(Tier::Edge, "edge-0");
        c.event(ReadEvent::Fetch(SourceKind::Owners));
        c.event(ReadEvent::SourceFailures(SourceKind::Owners, 2));
        assert_eq!(c.get(Counter::NodeFetches), 1);
        assert_eq!(c.get(Counter::NodeFailures), 2);
        assert_eq!(c.get(Counter::ParentFetches), 0);
    }
}
