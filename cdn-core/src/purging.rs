//! Applying an invalidation at a member, whichever tier and however it arrived (admin API,
//! `PURGE`, fanned out by another member, replayed after a partition).

use cdn_proto::Invalidation;

use crate::counters::{Counter, Counters};
use crate::read_path::ReadPath;
use cdn_store::purge::{matches, surrogate_keys, Recent};

/// Applies `inv` to the member's store and detaches matching fills in progress, so no request
/// arriving after this returns is served the purged body; counts it and records it for the
/// status page. Returns the entries affected.
pub async fn apply(
    reads: &ReadPath,
    counters: &Counters,
    recent: &Recent,
    inv: &Invalidation,
) -> u64 {
    reads.fills().detach_if(|key, head| {
        let tags = head.map(|h| surrogate_keys(&h.headers));
        // A fill whose head has not arrived yet might carry a purged tag: detach it.
        matches(inv, key, tags.as_deref().unwrap_or(&[]))
            || (head.is_none() && !inv.tags.is_empty())
    });
    let n = reads.store().purge(inv).await;
    counters.inc(Counter::Purges);
    counters.add(Counter::Purged, n);
    recent.record(inv, n);
    n
}

/// How long the purges accepted at this member took to be acknowledged by every member (or
/// to reach the deadline): the time `cdn_purge_fanout_seconds` records, kept here too for
/// `/status` and the cluster view (the Prometheus recorder is process-wide and write-only).
#[derive(Debug, Default)]
pub struct Latency {
    // A std mutex: a push or a scan of `KEEP` numbers, never held across an await.
    inner: std::sync::Mutex<LatencyInner>,
}

#[derive(Debug, Default)]
struct LatencyInner {
    count: u64,
    // The newest last, at most `Latency::KEEP`.
    recent: std::collections::VecDeque<std::time::Duration>,
}

impl Latency {
    /// Purges the summary covers.
    pub const KEEP: usize = 100;

    /// Records one purge's fan-out time.
    pub fn record(&self, took: std::time::Duration) {
        let mut l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        l.count += 1;
        if l.recent.len() == Self::KEEP {
            l.recent.pop_front();
        }
        l.recent.push_back(took);
    }

    /// `{"count", "last_ms", "p50_ms", "max_ms"}` over the last [`Latency::KEEP`] purges
    /// accepted here (the times `null` before the first).
    pub fn to_json(&self) -> serde_json::Value {
        let l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let ms = |d: &std::time::Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        let mut sorted: Vec<_> = l.recent.iter().copied().collect();
        sorted.sort();
        serde_json::json!({
            "count": l.count,
            "last_ms": l.recent.back().map(ms),
            "p50_ms": sorted.get(sorted.len() / 2).map(ms),
            "max_ms": sorted.last().map(ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latency_summarises_the_recent_purges() {
        let l = Latency::default();
        assert_eq!(l.to_json()["last_ms"], serde_json::Value::Null);
        for ms in [3, 1, 2] {
            l.record(Duration::from_millis(ms));
        }
        let j = l.to_json();
        assert_eq!(j["count"], 3);
        assert_eq!(j["last_ms"], 2.0);
        assert_eq!(j["p50_ms"], 2.0);
        assert_eq!(j["max_ms"], 3.0);
        for _ in 0..Latency::KEEP {
            l.record(Duration::from_micros(1500));
        }
        let j = l.to_json();
        assert_eq!(j["count"], 3 + Latency::KEEP as u64);
        assert_eq!(j["max_ms"], 1.5, "only the last {} count", Latency::KEEP);
    }
}
