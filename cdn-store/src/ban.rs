//! Lazy invalidation (Varnish's bans): a purge by tag, by prefix, of a URL with `Vary`
//! variants, or of everything costs O(1) per item to issue, whatever the store holds.
//!
//! Every purge takes the next number of the store's purge sequence ([`PurgeLog`]); every
//! entry is marked with the sequence when its fill began. A purge that cannot find its entries
//! by key is recorded here as "the newest purge of tag `t` (or prefix `p`, URL `u`,
//! everything) is number n, hard or soft". A lookup asks for the entry's [`Verdict`]: it is
//! gone if a hard purge that covers it is numbered at or after its mark, stale after a soft
//! one. That is a handful of hash lookups: one per tag the entry carries, one per distinct
//! length of the prefixes purged, one for its URL, and none at all when the entry is newer
//! than every recorded purge (the common case, checked with two atomics).
//!
//! The sweeper (`Store::sweep`) reclaims the memory: it walks the store in the background,
//! removing gone entries and marking stale ones, and advances each entry it checked to the
//! sequence the walk started at. After a whole walk, every purge numbered before that start
//! has been applied to every entry stored before it, and every entry stored since was
//! checked against the [`PurgeLog`] when its fill completed (which closes the purge/fill
//! race), so those purges are retired from the table. Its size is thus what arrives during one
//! walk; it is charged to the store (the store keeps [`Bans::budget`] of its capacity for
//! it), and a purge that finds it over budget sweeps before it returns, as every purge did
//! before this table existed.
//!
//! Marks are 32 bits (they fit in the padding of an entry's fixed part); they are read
//! relative to the current sequence, which is exact while an entry's mark is within 2^31
//! purges of it. The sweeper keeps it so: it also runs when the sequence has moved 2^30 since
//! the last walk, even without a recorded purge.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use cdn_proto::Invalidation;

use crate::entry::Entry;
use crate::purge::PurgeLog;

/// What the recorded purges make of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No purge covers it.
    Clean,
    /// A soft purge covers it: serve it only as stale.
    Stale,
    /// A hard purge covers it: never serve it again.
    Gone,
}

/// The newest hard and soft purge of one item, as `sequence + 1` (0: none), so "covers an
/// entry marked m" is `> m`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Latest {
    hard: u64,
    soft: u64,
}

impl Latest {
    fn note(&mut self, until: u64, soft: bool) {
        let at = if soft { &mut self.soft } else { &mut self.hard };
        *at = (*at).max(until);
    }

    fn merge(&mut self, other: &Latest) {
        self.hard = self.hard.max(other.hard);
        self.soft = self.soft.max(other.soft);
    }

    /// Forgets what is numbered below `upto`; true when nothing is left.
    fn retire(&mut self, upto: u64) -> bool {
        for at in [&mut self.hard, &mut self.soft] {
            if *at <= upto {
                *at = 0;
            }
        }
        *self == Latest::default()
    }

    fn verdict(&self, mark: u64) -> Verdict {
        if self.hard > mark {
            Verdict::Gone
        } else if self.soft > mark {
            Verdict::Stale
        } else {
            Verdict::Clean
        }
    }
}

/// Bytes charged per recorded item beyond its text: the map slot, the boxed string's header
/// and allocator slack.
const ITEM_COST: u64 = 64;

#[derive(Default)]
struct Table {
    all: Latest,
    urls: HashMap<Box<str>, Latest>,
    prefixes: HashMap<Box<str>, Latest>,
    // The lengths of the prefixes recorded (with how many of each): a lookup tries only the
    // key's prefixes of these lengths.
    lengths: BTreeMap<usize, usize>,
    tags: HashMap<Box<str>, Latest>,
    bytes: u64,
}

impl Table {
    fn note(map: &mut HashMap<Box<str>, Latest>, item: &str, until: u64, soft: bool) -> bool {
        match map.get_mut(item) {
            Some(l) => {
                l.note(until, soft);
                false
            }
            None => {
                let mut l = Latest::default();
                l.note(until, soft);
                map.insert(item.into(), l);
                true
            }
        }
    }

    fn verdict(&self, entry: &Entry, mark: u64) -> Verdict {
        let mut l = self.all;
        let url = crate::purge::primary(entry.key());
        if let Some(u) = self.urls.get(url) {
            l.merge(u);
        }
        for len in self.lengths.keys() {
            if let Some(p) = url.get(..*len).and_then(|p| self.prefixes.get(p)) {
                l.merge(p);
            }
        }
        if !self.tags.is_empty() {
            entry.fields().each_tag(|t| {
                if let Some(x) = self.tags.get(t) {
                    l.merge(x);
                }
            });
        }
        l.verdict(mark)
    }

    fn is_empty(&self) -> bool {
        self.all == Latest::default()
            && self.urls.is_empty()
            && self.prefixes.is_empty()
            && self.tags.is_empty()
    }
}

/// The purges recorded for lazy evaluation.
pub struct Bans {
    // Written by purges and by the sweeper retiring what it applied; read by lookups of
    // entries older than the newest recorded purge. A std lock: never held across an await.
    table: RwLock<Table>,
    // The next sequence number (the purge log's), and 1 + the newest recorded purge's (0:
    // none): a lookup of an entry marked at or after `newest` needs no lock. Stored under the
    // write lock, after the table: a reader that sees a number sees its purge recorded.
    next: AtomicU64,
    newest: AtomicU64,
    // Where the last whole walk started: marks stay within 2^31 of the sequence while
    // walks follow it closely (see the module doc).
    walked: AtomicU64,
    budget: u64,
}

impl Bans {
    /// A table that may hold `budget` bytes before purges sweep synchronously.
    pub fn new(budget: u64) -> Self {
        Self {
            table: RwLock::default(),
            next: AtomicU64::new(0),
            newest: AtomicU64::new(0),
            walked: AtomicU64::new(0),
            budget,
        }
    }

    /// The share of a store's capacity kept for the table: 1/256 (a 256 MiB store keeps 1 MiB,
    /// about 12,000 recorded tags or prefixes, many times what arrives during one walk).
    pub fn budget(capacity: u64) -> u64 {
        capacity / 256
    }

    /// Numbers `inv` in `log` and records, for lazy evaluation, its prefixes, tags and `all`,
    /// and those of its URLs in `lazy_urls` (URLs whose variants cannot be found by key).
    /// Returns its sequence number and whether anything was recorded.
    pub fn record(&self, log: &PurgeLog, inv: &Invalidation, lazy_urls: &[&str]) -> (u64, bool) {
        let mut t = self.write();
        // Numbered under the table's lock, so a walk that reads `next` sees every purge
        // numbered before it in the table.
        let seq = log.append(inv.clone());
        let until = seq + 1;
        let soft = inv.soft;
        let mut any = false;
        if inv.all {
            t.all.note(until, soft);
            any = true;
        }
        let mut added = 0u64;
        for u in lazy_urls {
            if Table::note(&mut t.urls, u, until, soft) {
                added += ITEM_COST + u.len() as u64;
            }
            any = true;
        }
        for p in &inv.prefixes {
            if Table::note(&mut t.prefixes, p, until, soft) {
                *t.lengths.entry(p.len()).or_default() += 1;
                added += ITEM_COST + p.len() as u64;
            }
            any = true;
        }
        for tag in &inv.tags {
            if Table::note(&mut t.tags, tag, until, soft) {
                added += ITEM_COST + tag.len() as u64;
            }
            any = true;
        }
        t.bytes += added;
        self.next.store(until, Ordering::Release);
        if any {
            self.newest.store(until, Ordering::Release);
        }
        (seq, any)
    }

    /// The full mark of `entry` (its 32 bits read relative to the current sequence).
    fn mark_of(&self, entry: &Entry) -> u64 {
        widen(self.next.load(Ordering::Acquire), entry.mark())
    }

    /// What the recorded purges make of `entry`.
    pub fn verdict(&self, entry: &Entry) -> Verdict {
        let mark = self.mark_of(entry);
        if self.newest.load(Ordering::Acquire) <= mark {
            return Verdict::Clean;
        }
        self.read().verdict(entry, mark)
    }

    /// Where a walk starting now starts: every purge numbered before it is in the table.
    pub fn walk_start(&self) -> u64 {
        let _t = self.read();
        self.next.load(Ordering::Acquire)
    }

    /// A walk that started at `start` checks `entry`: its verdict, and (unless gone) its mark
    /// advanced to `start`, since every purge before that has now been applied to it.
    pub fn check(&self, entry: &Entry, start: u64) -> Verdict {
        let v = self.verdict(entry);
        if v != Verdict::Gone {
            let next = self.next.load(Ordering::Acquire);
            entry.advance_mark(start as u32, |m| widen(next, m) < start);
        }
        v
    }

    /// A walk that started at `start` has checked every entry: retires the purges numbered
    /// before it.
    pub fn walked(&self, start: u64) {
        let mut t = self.write();
        let t = &mut *t;
        t.all.retire(start);
        let mut freed = 0u64;
        for map in [&mut t.urls, &mut t.tags] {
            map.retain(|k, l| {
                let keep = !l.retire(start);
                if !keep {
                    freed += ITEM_COST + k.len() as u64;
                }
                keep
            });
        }
        let lengths = &mut t.lengths;
        t.prefixes.retain(|k, l| {
            let keep = !l.retire(start);
            if !keep {
                freed += ITEM_COST + k.len() as u64;
                if let Some(n) = lengths.get_mut(&k.len()) {
                    *n -= 1;
                    if *n == 0 {
                        lengths.remove(&k.len());
                    }
                }
            }
            keep
        });
        t.bytes = t.bytes.saturating_sub(freed);
        if t.is_empty() {
            self.newest.store(0, Ordering::Release);
        }
        self.walked.fetch_max(start, Ordering::AcqRel);
    }

    /// Whether a walk has work: purges recorded, or marks to keep close to the sequence.
    pub fn want_walk(&self) -> bool {
        self.newest.load(Ordering::Acquire) != 0
            || self.next.load(Ordering::Acquire) - self.walked.load(Ordering::Acquire) >= 1 << 30
    }

    /// Whether the table holds more than its budget.
    pub fn over_budget(&self) -> bool {
        self.bytes() > self.budget
    }

    /// Bytes the table is charged.
    pub fn bytes(&self) -> u64 {
        self.read().bytes
    }

    /// Items recorded (tags, prefixes, URLs, and `all`), for status and tests.
    pub fn len(&self) -> usize {
        let t = self.read();
        t.urls.len() + t.prefixes.len() + t.tags.len() + usize::from(t.all != Latest::default())
    }

    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The full sequence number whose low 32 bits are `low`, nearest to `next` (marks are never
/// more than 2^31 away from it).
pub fn widen(next: u64, low: u32) -> u64 {
    let delta = i64::from(low.wrapping_sub(next as u32) as i32);
    next.saturating_add_signed(delta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn entry(key: &str, tags: &str, mark: u64) -> Entry {
        let now = SystemTime::now();
        let (mut h, d) = crate::entry::tests::decision("max-age=600", now);
        if !tags.is_empty() {
            h.insert("surrogate-key", tags.parse().unwrap());
        }
        crate::entry::NewEntry::new(http::StatusCode::OK, &h, Vec::new(), d, now)
            .keyed_at(key, mark as u32)
    }

    fn inv(f: impl FnOnce(&mut Invalidation)) -> Invalidation {
        let mut i = Invalidation::default();
        f(&mut i);
        i
    }

    #[test]
    fn marks_widen_around_the_sequence() {
        assert_eq!(widen(10, 7), 7);
        assert_eq!(widen(10, 12), 12);
        let big = (5u64 << 32) + 3;
        assert_eq!(widen(big, u32::MAX - 1), big - 5);
        assert_eq!(widen(big, 3), big);
        assert_eq!(widen(0, 0), 0);
    }

    #[test]
    fn a_purge_covers_entries_filled_before_it_by_tag_prefix_url_and_all() {
        let (log, bans) = (PurgeLog::default(), Bans::new(1 << 20));
        let before = entry("/img/a.png", "red blue", log.mark());
        let other = entry("/css/a.css", "green", log.mark());
        let variant = entry("/v?x=1\0gzip", "", log.mark());
        assert_eq!(bans.verdict(&before), Verdict::Clean);
        bans.record(&log, &inv(|i| i.tags = vec!["blue".into()]), &[]);
        let after = entry("/img/b.png", "blue", log.mark());
        assert_eq!(bans.verdict(&before), Verdict::Gone);
        assert_eq!(bans.verdict(&other), Verdict::Clean);
        assert_eq!(
            bans.verdict(&after),
            Verdict::Clean,
            "filled after the purge"
        );
        bans.record(
            &log,
            &inv(|i| {
                i.prefixes = vec!["/css/".into()];
                i.soft = true;
            }),
            &[],
        );
        assert_eq!(bans.verdict(&other), Verdict::Stale);
        assert_eq!(bans.verdict(&after), Verdict::Clean);
        // A URL with variants: every variant, by the URL part of its key.
        bans.record(&log, &inv(|i| i.urls = vec!["/v?x=1".into()]), &["/v?x=1"]);
        assert_eq!(bans.verdict(&variant), Verdict::Gone);
        bans.record(&log, &inv(|i| i.all = true), &[]);
        assert_eq!(bans.verdict(&after), Verdict::Gone);
        assert_eq!(bans.len(), 4);
    }

    #[test]
    fn a_walk_retires_what_it_applied_and_advances_marks() {
        let (log, bans) = (PurgeLog::default(), Bans::new(1 << 20));
        let kept = entry("/a", "t", log.mark());
        let soft = entry("/b", "s", log.mark());
        bans.record(&log, &inv(|i| i.tags = vec!["x".into()]), &[]);
        bans.record(
            &log,
            &inv(|i| {
                i.tags = vec!["s".into()];
                i.soft = true;
            }),
            &[],
        );
        assert!(bans.want_walk());
        let start = bans.walk_start();
        assert_eq!(bans.check(&kept, start), Verdict::Clean);
        assert_eq!(bans.check(&soft, start), Verdict::Stale);
        // A purge arriving during the walk stays recorded after it.
        bans.record(&log, &inv(|i| i.tags = vec!["t".into()]), &[]);
        bans.walked(start);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans.verdict(&kept), Verdict::Gone);
        let start = bans.walk_start();
        bans.walked(start);
        assert_eq!(bans.len(), 0);
        assert_eq!(bans.bytes(), 0);
        assert!(!bans.want_walk());
        assert_eq!(
            widen(log.mark(), soft.mark()),
            2,
            "advanced to the walk's start"
        );
    }

    #[test]
    fn the_table_is_charged_per_item() {
        let (log, bans) = (PurgeLog::default(), Bans::new(200));
        bans.record(&log, &inv(|i| i.tags = vec!["grp".into()]), &[]);
        assert_eq!(bans.bytes(), ITEM_COST + 3);
        bans.record(&log, &inv(|i| i.tags = vec!["grp".into()]), &[]);
        assert_eq!(
            bans.bytes(),
            ITEM_COST + 3,
            "the same tag again costs nothing"
        );
        assert!(!bans.over_budget());
        bans.record(&log, &inv(|i| i.prefixes = vec!["/p/".into()]), &[]);
        bans.record(&log, &inv(|i| i.prefixes = vec!["/q/".into()]), &[]);
        assert!(bans.over_budget());
    }
}
