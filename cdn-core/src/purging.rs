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
