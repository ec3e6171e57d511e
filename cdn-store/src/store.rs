//! The store: complete responses in a moka cache bounded in bytes.
//!
//! moka bounds memory (byte weigher, TinyLFU or LRU) and drops entries past their freshness
//! lifetime. moka's clock cannot be mocked, so freshness decisions never rely on it: each
//! [`Entry`] keeps its own `stored_at`, `ttl` and initial age, and callers ask
//! [`Entry::is_fresh`] with their `now`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use moka::policy::EvictionPolicy;

use cdn_http::policy::{variant_key, vary_names};

use crate::ban::{Bans, Verdict};
use crate::compact::Compact;
use crate::engine::{Engine, Eviction};
use crate::entry::{Entry, NewEntry};
use crate::purge::PurgeLog;

/// Entries a store's purges checked, and its sweeps.
#[derive(Default)]
struct Work {
    // Checked by purges themselves (before they returned).
    purges: std::sync::atomic::AtomicU64,
    // Checked by background sweeps.
    swept: std::sync::atomic::AtomicU64,
    sweeps: std::sync::atomic::AtomicU64,
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Entries checked.
    pub checked: u64,
    /// Entries removed (a hard purge covered them).
    pub removed: u64,
}

struct ExpireAtTtl;

impl moka::Expiry<Arc<str>, Entry> for ExpireAtTtl {
    fn expire_after_create(
        &self,
        _k: &Arc<str>,
        v: &Entry,
        _created: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.keep())
    }

    // A replaced entry gets the new entry's lifetime, not the old deadline (moka's default).
    fn expire_after_update(
        &self,
        _k: &Arc<str>,
        v: &Entry,
        _updated: std::time::Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.keep())
    }
}

/// A byte-bounded cache of [`Entry`]s keyed by path-and-query.
#[derive(Clone)]
pub struct Store {
    cache: Cache,
    capacity: u64,
    log: Arc<PurgeLog>,
    // Purges by tag, prefix, varying URL and `all`, evaluated at lookup (crate::ban).
    bans: Arc<Bans>,
    // Whether a background sweep task runs (one per store at a time), and the entries purges
    // and sweeps checked: relaxed atomics, only counted and flagged.
    sweeping: Arc<std::sync::atomic::AtomicBool>,
    work: Arc<Work>,
    // Which request fields each URL's responses vary on, learned from their `Vary`.
    vary: moka::future::Cache<Arc<str>, Arc<VaryMarker>>,
    // Set once any response stored here had a `Vary` (never cleared): until then a lookup
    // need not ask `vary` at all, and most stores never see one.
    varies: Arc<std::sync::atomic::AtomicBool>,
    // Entries removed, by cause: size, expiry, purge (explicit removal).
    evictions: Arc<[std::sync::atomic::AtomicU64; 3]>,
}

#[derive(Clone)]
enum Cache {
    Moka(moka::future::Cache<Arc<str>, Entry>),
    Compact(Arc<Compact>),
}

impl Cache {
    async fn get(&self, key: &str) -> Option<Entry> {
        match self {
            Cache::Moka(c) => c.get(key).await,
            Cache::Compact(c) => c.get(key, std::time::Instant::now()),
        }
    }

    async fn insert(&self, entry: Entry) {
        match self {
            Cache::Moka(c) => c.insert(Arc::from(entry.key()), entry).await,
            Cache::Compact(c) => {
                let keep = entry.keep();
                c.insert(entry, keep, std::time::Instant::now())
            }
        }
    }

    async fn invalidate(&self, key: &str) {
        match self {
            Cache::Moka(c) => c.invalidate(key).await,
            Cache::Compact(c) => c.remove(key),
        }
    }

    /// The entries `keep` selects, with their keys (a snapshot).
    fn entries_where(&self, keep: impl Fn(&str, &Entry) -> bool) -> Vec<(String, Entry)> {
        let mut out = Vec::new();
        self.for_each(|k, e| {
            if keep(k, e) {
                out.push((k.to_string(), e.clone()));
            }
        });
        out
    }

    /// Calls `f` with every entry and its key.
    fn for_each(&self, mut f: impl FnMut(&str, &Entry)) {
        match self {
            Cache::Moka(c) => c.iter().for_each(|(k, e)| f(&k, &e)),
            Cache::Compact(c) => c.for_each(std::time::Instant::now(), f),
        }
    }

    fn entry_count(&self) -> u64 {
        match self {
            Cache::Moka(c) => c.entry_count(),
            Cache::Compact(c) => c.entry_count(),
        }
    }

    fn weighted_size(&self) -> u64 {
        match self {
            Cache::Moka(c) => c.weighted_size(),
            Cache::Compact(c) => c.weighted_size(),
        }
    }

    async fn sync(&self) {
        if let Cache::Moka(c) = self {
            c.run_pending_tasks().await;
        }
    }
}

/// The shortest time between the starts of two background sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Variants kept per URL; beyond that, responses for new variants pass through unstored, so
/// one URL with a wildly varying header cannot flush the store.
pub const MAX_VARIANTS: usize = 32;

/// A URL's `Vary` field names, and how many variants were stored under it.
struct VaryMarker {
    names: Vec<http::HeaderName>,
    variants: std::sync::atomic::AtomicUsize,
}

impl Store {
    /// A moka store holding at most `capacity` bytes (as weighed by [`Entry::weight`]).
    pub fn new(capacity: u64, eviction: Eviction) -> Self {
        Self::with_engine(capacity, eviction, Engine::Moka)
    }

    /// A store on `engine` holding at most `capacity` bytes (as weighed by
    /// [`Entry::weight`] plus the key).
    pub fn with_engine(capacity: u64, eviction: Eviction, engine: Engine) -> Self {
        let evictions: Arc<[std::sync::atomic::AtomicU64; 3]> = Arc::default();
        // The lazy purge table is charged to the store: the engine gets the rest.
        let budget = Bans::budget(capacity);
        let total = capacity;
        let capacity = capacity - budget;
        let policy = match eviction {
            Eviction::TinyLfu => EvictionPolicy::tiny_lfu(),
            Eviction::Lru => EvictionPolicy::lru(),
        };
        if engine == Engine::Compact {
            let tiny_lfu = eviction == Eviction::TinyLfu;
            let cache = Compact::new(capacity, tiny_lfu, evictions.clone());
            return Self::on(Cache::Compact(Arc::new(cache)), total, evictions);
        }
        let cache = moka::future::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &Arc<str>, v: &Entry| {
                v.weight().saturating_add(Engine::Moka.entry_overhead())
            })
            .expire_after(ExpireAtTtl)
            .eviction_policy(policy)
            .eviction_listener({
                let e = evictions.clone();
                move |_k, _v, cause| {
                    let i = match cause {
                        moka::notification::RemovalCause::Size => 0,
                        moka::notification::RemovalCause::Expired => 1,
                        moka::notification::RemovalCause::Explicit => 2,
                        moka::notification::RemovalCause::Replaced => return,
                    };
                    e[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .build();
        Self::on(Cache::Moka(cache), total, evictions)
    }

    fn on(cache: Cache, capacity: u64, evictions: Arc<[std::sync::atomic::AtomicU64; 3]>) -> Self {
        Self {
            evictions,
            cache,
            capacity,
            log: Arc::default(),
            bans: Arc::new(Bans::new(Bans::budget(capacity))),
            sweeping: Arc::default(),
            work: Arc::default(),
            vary: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .build(),
            varies: Arc::default(),
        }
    }

    /// The entry a request for `key` with fields `request` would be served, if any.
    pub async fn lookup(&self, key: &str, request: &HeaderMap) -> Option<Entry> {
        match self.marker(key).await {
            Some(m) => self.get(variant_key(key, &m.names, request).as_str()).await,
            None => self.get(key).await,
        }
    }

    /// What `key`'s responses vary on, when they do.
    async fn marker(&self, key: &str) -> Option<Arc<VaryMarker>> {
        if !self.varies.load(Ordering::Acquire) {
            return None;
        }
        self.vary.get(key).await
    }

    /// `entry` as the recorded purges leave it: gone (left for the sweeper to reclaim, or for
    /// the next fill to replace), marked stale, or as it was.
    fn screen(&self, entry: Entry) -> Option<Entry> {
        if entry.hard_purged() {
            return None;
        }
        match self.bans.verdict(&entry) {
            Verdict::Clean => Some(entry),
            Verdict::Stale => {
                entry.mark_stale();
                Some(entry)
            }
            Verdict::Gone => None,
        }
    }

    /// The key concurrent misses coalesce under: the variant's key when the URL is known to
    /// vary, else the URL (the first response then decides; see `cdn_core::fill::fits`).
    pub async fn flight_key(&self, key: &str, request: &HeaderMap) -> String {
        match self.marker(key).await {
            Some(m) => variant_key(key, &m.names, request),
            None => key.to_string(),
        }
    }

    /// Where a response to `request` for `key` is stored: `None` when it must not be (`Vary:
    /// *`, or the URL already has [`MAX_VARIANTS`] variants).
    async fn storage_key(
        &self,
        key: &str,
        request: &HeaderMap,
        entry: &NewEntry,
    ) -> Option<String> {
        // Most responses have no `Vary`: no map of their fields for those.
        if entry.fields().get("vary").is_none() {
            return Some(key.to_string());
        }
        let names = vary_names(&entry.fields().to_map())?;
        if names.is_empty() {
            return Some(key.to_string());
        }
        // Set before the marker goes in: a lookup after the insert sees both (one racing it
        // may miss the marker, as it would have just before the insert).
        self.varies.store(true, Ordering::Release);
        let marker = self
            .vary
            .get_with(Arc::from(key), async {
                Arc::new(VaryMarker {
                    names: names.clone(),
                    variants: std::sync::atomic::AtomicUsize::new(0),
                })
            })
            .await;
        if marker.names != names {
            // The origin changed what it varies on: start over for this URL.
            self.vary
                .insert(
                    Arc::from(key),
                    Arc::new(VaryMarker {
                        names: names.clone(),
                        variants: std::sync::atomic::AtomicUsize::new(1),
                    }),
                )
                .await;
            return Some(variant_key(key, &names, request));
        }
        if marker.variants.fetch_add(1, Ordering::Relaxed) >= MAX_VARIANTS {
            return None;
        }
        Some(variant_key(key, &names, request))
    }

    /// The mark a fill takes when it starts; pass it to [`Store::insert_filled`].
    pub fn fill_mark(&self) -> u64 {
        self.log.mark()
    }

    /// Stores a filled entry unless a purge matching it was accepted since `mark` (the fill
    /// began before that purge, so its body may be the purged one). Returns the stored entry,
    /// if it stays (an entry not stored is not built).
    ///
    /// `request` is the request the response answers: it selects the variant when the
    /// response has `Vary`.
    pub async fn insert_filled(
        &self,
        key: &str,
        request: &HeaderMap,
        entry: NewEntry,
        mark: u64,
    ) -> Option<Entry> {
        let tags = entry.tags();
        if self.log.purged_since(mark, key, &tags) {
            return None;
        }
        let storage = self.storage_key(key, request, &entry).await?;
        let entry = self.insert_marked(&storage, entry, mark).await;
        // A purge may have been logged between the check and the insert: see crate::purge.
        if self.log.purged_since(mark, key, &tags) {
            self.remove(&storage).await;
            return None;
        }
        Some(entry)
    }

    /// Stores a pushed object (no request selects a variant: one with `Vary` is stored as
    /// the variant of a request without those fields). Returns whether it stays.
    pub async fn insert_pushed(&self, key: &str, entry: NewEntry) -> bool {
        self.insert_filled(key, &HeaderMap::new(), entry, self.fill_mark())
            .await
            .is_some()
    }

    /// Applies an invalidation: hard removes, soft marks stale. Returns the entries affected
    /// by URL; what a tag, prefix, `all` or a URL with variants covers is recorded in O(1)
    /// per item instead, never served again from the moment this returns, and reclaimed by
    /// the sweeper (counted as purge evictions). Only when the record of such purges is over
    /// its budget does this sweep before returning.
    pub async fn purge(&self, inv: &cdn_proto::Invalidation) -> u64 {
        // A URL with variants: they live under "url\0…", found by the URL part of their key.
        let mut varying = Vec::new();
        for url in &inv.urls {
            if self.marker(url.as_str()).await.is_some() {
                varying.push(url.as_str());
            }
        }
        let (_, lazy) = self.bans.record(&self.log, inv, &varying);
        let mut n = 0;
        for url in &inv.urls {
            self.work.purges.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = self.cache.get(url.as_str()).await {
                n += 1;
                if inv.soft {
                    e.mark_stale();
                } else {
                    self.cache.invalidate(url.as_str()).await;
                }
            }
        }
        if lazy {
            if self.bans.over_budget() {
                let swept = self.sweep_once(false).await;
                self.work.purges.fetch_add(swept.checked, Ordering::Relaxed);
            } else {
                self.sweep_in_background();
            }
        } else if self.bans.want_walk() {
            // URL purges take sequence numbers too: an entry's 32-bit mark must be walked
            // forward before the sequence runs 2^31 past it, or later purges would misread it.
            self.sweep_in_background();
        }
        n
    }

    /// Starts the background sweeper unless it runs (or there is no runtime to run it on: a
    /// later purge or [`Store::sweep`] does the work).
    fn sweep_in_background(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        rt.spawn(async move {
            loop {
                while store.bans.want_walk() {
                    let began = std::time::Instant::now();
                    let swept = store.sweep_once(true).await;
                    store.work.swept.fetch_add(swept.checked, Ordering::Relaxed);
                    store.work.sweeps.fetch_add(1, Ordering::Relaxed);
                    // Under a stream of purges, walk at most once a second and at most half
                    // the time: purges arriving meanwhile wait in the record (charged, and
                    // bounded by its budget), and serving keeps the CPU.
                    let took = began.elapsed();
                    if store.bans.want_walk() {
                        tokio::time::sleep(SWEEP_EVERY.saturating_sub(took).max(took)).await;
                    }
                }
                store.sweeping.store(false, Ordering::Release);
                // A purge recorded after the last check saw the flag still set: take it back.
                if !store.bans.want_walk() || store.sweeping.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
        });
    }

    /// Runs one whole sweep now: applies every recorded purge to every entry (removing what a
    /// hard one covers, marking stale what a soft one does), then retires them.
    pub async fn sweep(&self) -> Swept {
        let swept = self.sweep_once(false).await;
        self.work.swept.fetch_add(swept.checked, Ordering::Relaxed);
        self.work.sweeps.fetch_add(1, Ordering::Relaxed);
        swept
    }

    /// One walk. `background`: paced, so serving keeps the CPU (see [`Pace`]); else it only
    /// yields between steps (someone waits for it).
    async fn sweep_once(&self, background: bool) -> Swept {
        /// Entries checked per step: the walk yields between steps, and a compact shard is
        /// locked for one step only.
        const STEP: usize = 64;
        let mut pace = Pace::new(background);
        let start = self.bans.walk_start();
        let mut swept = Swept::default();
        let bans = &self.bans;
        let verdict = |e: &Entry| gone(bans, e, start);
        match &self.cache {
            Cache::Moka(c) => {
                // moka's iterator starts by copying out every key of the map (its one segment):
                // milliseconds per million entries, so the walk runs on a blocking thread and
                // hands what it finds gone, in batches, to this task to remove (back-pressured
                // by the channel).
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(Arc<str>, Entry)>>(4);
                let (c2, bans) = (c.clone(), self.bans.clone());
                let walker = tokio::task::spawn_blocking(move || {
                    let (mut checked, mut batch) = (0u64, Vec::new());
                    let mut since = std::time::Instant::now();
                    for (k, e) in c2.iter() {
                        checked += 1;
                        if gone(&bans, &e, start) {
                            batch.push((Arc::<str>::clone(&k), e));
                        }
                        if checked % STEP as u64 == 0 {
                            if !batch.is_empty()
                                && tx.blocking_send(std::mem::take(&mut batch)).is_err()
                            {
                                return None;
                            }
                            if background && since.elapsed() >= Pace::BURST {
                                std::thread::sleep(Pace::PAUSE);
                                since = std::time::Instant::now();
                            }
                        }
                    }
                    if !batch.is_empty() && tx.blocking_send(batch).is_err() {
                        return None;
                    }
                    Some(checked)
                });
                while let Some(mut batch) = rx.recv().await {
                    swept.removed += remove_same(c, &mut batch).await;
                    pace.step().await;
                }
                match walker.await {
                    Ok(Some(checked)) => swept.checked = checked,
                    // The walk did not finish: what it did stands, but nothing is retired.
                    _ => return swept,
                }
            }
            Cache::Compact(c) => {
                for shard in 0..Compact::SHARDS {
                    let mut from = Some(0);
                    while let Some(at) = from {
                        let (next, checked, removed) = c.sweep_step(shard, at, STEP, verdict);
                        swept.checked += checked;
                        swept.removed += removed;
                        from = next;
                        pace.step().await;
                    }
                }
            }
        }
        self.bans.walked(start);
        swept
    }

    /// Entries checked so far by purges before they returned, and by background sweeps; and
    /// sweeps completed. What a purge costs is the first (tests assert it stays bounded).
    pub fn purge_work(&self) -> (u64, u64, u64) {
        let w = &self.work;
        (
            w.purges.load(Ordering::Relaxed),
            w.swept.load(Ordering::Relaxed),
            w.sweeps.load(Ordering::Relaxed),
        )
    }

    /// Purged items (tags, prefixes, URLs with variants, `all`) recorded and not yet retired
    /// by a sweep, and the bytes they are charged.
    pub fn recorded_purges(&self) -> (usize, u64) {
        (self.bans.len(), self.bans.bytes())
    }

    /// The entry for `key`, fresh or not (moka drops it some time after its TTL).
    /// Not if a purge covers it (a soft one marks it stale).
    pub async fn get(&self, key: &str) -> Option<Entry> {
        let entry = self.cache.get(key).await?;
        let screened = self.screen(entry.clone());
        if screened.is_none() {
            // Covered by a hard purge: reclaim it now rather than when the sweeper passes (a
            // purged entry that is still asked for would otherwise look popular to TinyLFU).
            match &self.cache {
                Cache::Moka(c) => {
                    remove_same(c, &mut vec![(Arc::from(entry.key()), entry)]).await;
                }
                Cache::Compact(c) => c.remove_same(&entry),
            }
        }
        screened
    }

    /// Stores `entry` under `key`, replacing what was there; returns it as stored.
    pub async fn insert(&self, key: &str, entry: NewEntry) -> Entry {
        self.insert_marked(key, entry, self.fill_mark()).await
    }

    /// [`Store::insert`] for a fill that began at `mark`: every purge since covers it.
    async fn insert_marked(&self, key: &str, entry: NewEntry, mark: u64) -> Entry {
        // The low 32 bits: see crate::ban on why they suffice.
        let entry = entry.keyed_at(key, mark as u32);
        self.cache.insert(entry.clone()).await;
        entry
    }

    /// Removes `key`.
    pub async fn remove(&self, key: &str) {
        self.cache.invalidate(key).await;
    }

    /// Removes every entry that came from `node`. Returns how many.
    pub async fn purge_source(&self, node: &str) -> u64 {
        let hit = self.cache.entries_where(|_, e| e.source() == Some(node));
        for (k, _) in &hit {
            self.cache.invalidate(k).await;
        }
        hit.len() as u64
    }

    /// Entries removed so far by cause: `(size, expiry, purge)`.
    pub fn evictions(&self) -> (u64, u64, u64) {
        let get = |i: usize| self.evictions[i].load(std::sync::atomic::Ordering::Relaxed);
        (get(0), get(1), get(2))
    }

    /// Applies pending evictions so the counters below are exact (tests, status).
    pub async fn sync(&self) {
        self.cache.sync().await;
    }

    /// Entries held (approximate until [`Store::sync`]).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Bytes held as weighed, the record of lazy purges included (approximate until
    /// [`Store::sync`]).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size() + self.bans.bytes()
    }

    /// Configured capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Every entry's body length, for checking what is actually held.
    pub fn held_body_bytes(&self) -> u64 {
        let mut sum = 0;
        self.cache.for_each(|_, e| sum += e.body_len());
        sum
    }
}

/// What a walk that started at `start` does with `e`: true when a hard purge covers it (to be
/// removed); a soft one marks it stale.
fn gone(bans: &Bans, e: &Entry, start: u64) -> bool {
    match bans.check(e, start) {
        Verdict::Gone => {
            // Flagged before the walk can retire the purge: a lookup that read this entry
            // before the removal still finds it gone when it screens it afterwards.
            e.mark_purged();
            true
        }
        Verdict::Stale => {
            e.mark_stale();
            false
        }
        Verdict::Clean => false,
    }
}

/// How a walk shares the CPU. Between steps it yields; a background walk also pauses for
/// [`Pace::PAUSE`] after every [`Pace::BURST`] of work, so it takes at most about a fifth of a
/// core, and a request (a purge's own round trip through QUIC takes many scheduling turns)
/// never waits behind more than one burst per turn.
struct Pace {
    background: bool,
    since: std::time::Instant,
}

impl Pace {
    const BURST: Duration = Duration::from_micros(250);
    const PAUSE: Duration = Duration::from_millis(1);

    fn new(background: bool) -> Self {
        Self {
            background,
            since: std::time::Instant::now(),
        }
    }

    async fn step(&mut self) {
        if self.background && self.since.elapsed() >= Self::BURST {
            tokio::time::sleep(Self::PAUSE).await;
            self.since = std::time::Instant::now();
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Removes each of `gone` from `c` if it is still the entry under its key (a fill may have
/// replaced it since the sweep saw it); returns how many were.
async fn remove_same(
    c: &moka::future::Cache<Arc<str>, Entry>,
    gone: &mut Vec<(Arc<str>, Entry)>,
) -> u64 {
    let mut n = 0;
    for (k, e) in gone.drain(..) {
        let r = c
            .entry(k)
            .and_compute_with(|now| {
                let same = now.is_some_and(|now| now.value().same(&e));
                std::future::ready(if same {
                    moka::ops::compute::Op::Remove
                } else {
                    moka::ops::compute::Op::Nop
                })
            })
            .await;
        if matches!(r, moka::ops::compute::CompResult::Removed(_)) {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::entry::Freshness;
    use bytes::Bytes;
    use http::StatusCode;
    use std::time::SystemTime;

    fn entry(body_len: usize, cc: &str, now: SystemTime) -> NewEntry {
        let (headers, d) = crate::entry::tests::decision(cc, now);
        NewEntry::new(
            StatusCode::OK,
            &headers,
            vec![Bytes::from(vec![7u8; body_len])],
            d,
            now,
        )
    }

    #[test]
    fn freshness_uses_our_clock_not_mokas() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let e = entry(10, "max-age=60", t0).keyed("/");
        assert!(e.is_fresh(t0 + Duration::from_secs(59)));
        assert!(!e.is_fresh(t0 + Duration::from_secs(60)));
        assert_eq!(e.age(t0 + Duration::from_secs(7)), Duration::from_secs(7));
    }

    #[test]
    fn stale_windows_follow_the_entry_clock() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let e = entry(
            10,
            "max-age=10, stale-while-revalidate=5, stale-if-error=60",
            t0,
        )
        .keyed("/");
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(e.freshness(at(9)), Freshness::Fresh);
        assert_eq!(
            e.freshness(at(12)),
            Freshness::Stale {
                while_revalidate: true,
                on_error: true
            }
        );
        assert_eq!(
            e.freshness(at(20)),
            Freshness::Stale {
                while_revalidate: false,
                on_error: true
            }
        );
        assert_eq!(
            e.freshness(at(80)),
            Freshness::Stale {
                while_revalidate: false,
                on_error: false
            }
        );
        let strict = entry(10, "max-age=10, must-revalidate", t0).keyed("/");
        assert_eq!(
            strict.freshness(at(11)),
            Freshness::Stale {
                while_revalidate: false,
                on_error: false
            }
        );
        let soft = entry(10, "max-age=600, stale-while-revalidate=5", t0).keyed("/");
        soft.mark_stale();
        // A soft purge makes it stale at once; without stale-if-error, upstream errors get
        // the disconnected allowance (`stale_on_error`, 10 s by default).
        assert_eq!(
            soft.freshness(at(1)),
            Freshness::Stale {
                while_revalidate: true,
                on_error: true
            }
        );
    }

    #[test]
    fn variant_keys_normalise_the_varying_fields() {
        let names = vec![http::header::ACCEPT_ENCODING, http::header::ACCEPT_LANGUAGE];
        let mut a = HeaderMap::new();
        a.insert("accept-encoding", "gzip, deflate, br".parse().unwrap());
        a.insert("accept-language", "EN-us".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert("accept-encoding", "br;q=1".parse().unwrap());
        b.insert("accept-language", "en-US".parse().unwrap());
        assert_eq!(variant_key("/x", &names, &a), variant_key("/x", &names, &b));
        b.insert("accept-language", "fr".parse().unwrap());
        assert_ne!(variant_key("/x", &names, &a), variant_key("/x", &names, &b));
        assert_eq!(
            crate::purge::primary(&variant_key("/x?y", &names, &a)),
            "/x?y"
        );
        let mut h = HeaderMap::new();
        h.insert("vary", "Accept-Encoding, accept-language".parse().unwrap());
        assert_eq!(vary_names(&h).unwrap(), names);
        h.insert("vary", "*".parse().unwrap());
        assert!(vary_names(&h).is_none());
    }

    #[tokio::test]
    async fn never_holds_more_than_capacity() {
        let engines = [Engine::Moka, Engine::Compact];
        for (engine, eviction) in engines
            .iter()
            .flat_map(|g| [(*g, Eviction::TinyLfu), (*g, Eviction::Lru)])
        {
            let cap = 1 << 20;
            let store = Store::with_engine(cap, eviction, engine);
            let now = SystemTime::now();
            // 4x the capacity, in 64 KiB objects, some read back to give TinyLFU frequencies.
            for i in 0..64 {
                store
                    .insert(&format!("/o/{i}"), entry(64 * 1024, "max-age=600", now))
                    .await;
                store.get(&format!("/o/{}", i / 2)).await;
                store.sync().await;
                assert!(
                    store.weighted_size() <= cap,
                    "{engine:?} {eviction:?}: {}",
                    store.weighted_size()
                );
                assert!(store.held_body_bytes() <= cap);
            }
            assert!(store.entry_count() > 0);
        }
    }

    /// Hit ratio of a store on one Zipf 0.9 stream over 20,000 keys, capacity for 1 % of
    /// them (a miss fills, as a member does).
    async fn zipf_hit_ratio(engine: Engine, eviction: Eviction) -> f64 {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let now = SystemTime::now();
        let one = entry(100, "max-age=600", now);
        let per = u64::from(one.clone().keyed("/z/00000").weight() + engine.entry_overhead());
        let store = Store::with_engine(200 * per, eviction, engine);
        let zipf = rand_distr::Zipf::new(20_000.0, 0.9).unwrap();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let (mut hits, n) = (0u64, 200_000);
        for i in 0..n {
            let key = format!("/z/{}", zipf.sample(&mut rng) as u64);
            if store.get(&key).await.is_some() {
                hits += 1;
            } else {
                store.insert(&key, one.clone()).await;
            }
            if i % 64 == 0 {
                store.sync().await;
            }
        }
        hits as f64 / n as f64
    }

    #[tokio::test]
    async fn the_compact_engines_tiny_lfu_beats_its_clock_and_matches_mokas() {
        let compact_tlfu = zipf_hit_ratio(Engine::Compact, Eviction::TinyLfu).await;
        let compact_clock = zipf_hit_ratio(Engine::Compact, Eviction::Lru).await;
        let moka_tlfu = zipf_hit_ratio(Engine::Moka, Eviction::TinyLfu).await;
        let moka_lru = zipf_hit_ratio(Engine::Moka, Eviction::Lru).await;
        eprintln!(
            "zipf 0.9, 1% capacity: compact tiny-lfu {compact_tlfu:.3}, clock {compact_clock:.3}; moka tiny-lfu {moka_tlfu:.3}, lru {moka_lru:.3}"
        );
        assert!(
            compact_tlfu > compact_clock,
            "{compact_tlfu} vs {compact_clock}"
        );
        assert!(
            compact_tlfu >= 0.95 * moka_tlfu,
            "compact TinyLFU {compact_tlfu} well below moka's {moka_tlfu}"
        );
    }
}

#[cfg(test)]
mod purge_tests {
    //! Purges on a store of many entries: each kind costs the purge no walk over the store,
    //! and nothing it covers is served again.

    use super::*;
    use bytes::Bytes;
    use cdn_proto::Invalidation;
    use http::StatusCode;
    use std::time::SystemTime;

    const N: usize = 10_000;

    fn tagged(tags: &str, extra: &[(&str, &str)]) -> NewEntry {
        let now = SystemTime::now();
        let (mut h, d) = crate::entry::tests::decision("max-age=600", now);
        h.insert("surrogate-key", tags.parse().unwrap());
        for (k, v) in extra {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        NewEntry::new(
            StatusCode::OK,
            &h,
            vec![Bytes::from_static(b"body")],
            d,
            now,
        )
    }

    fn key(i: usize) -> String {
        format!("/d{}/o/{i}", i % 100)
    }

    /// A store of N entries: all tagged `grp`, and each `t<i % 100>`, under `/d<i % 100>/`.
    async fn full(engine: Engine) -> Store {
        let store = Store::with_engine(64 << 20, Eviction::TinyLfu, engine);
        for i in 0..N {
            let e = tagged(&format!("grp t{}", i % 100), &[]);
            assert!(store.insert_pushed(&key(i), e).await);
        }
        store.sync().await;
        assert_eq!(store.entry_count(), N as u64);
        store
    }

    fn inv(f: impl FnOnce(&mut Invalidation)) -> Invalidation {
        let mut i = Invalidation::default();
        f(&mut i);
        i
    }

    /// What a lookup of each key finds: (absent, stale, fresh).
    async fn census(store: &Store) -> (usize, usize, usize) {
        let now = SystemTime::now();
        let mut c = (0, 0, 0);
        for i in 0..N {
            match store.lookup(&key(i), &HeaderMap::new()).await {
                None => c.0 += 1,
                Some(e) if !e.is_fresh(now) => c.1 += 1,
                Some(_) => c.2 += 1,
            }
        }
        c
    }

    #[tokio::test]
    async fn every_purge_kind_checks_no_entry_and_nothing_purged_is_served() {
        for engine in [Engine::Moka, Engine::Compact] {
            for soft in [false, true] {
                let kinds: [(&str, Invalidation, usize); 7] = [
                    ("tag, none", inv(|i| i.tags = vec!["nothing".into()]), 0),
                    ("tag, 1%", inv(|i| i.tags = vec!["t7".into()]), N / 100),
                    ("tag, all", inv(|i| i.tags = vec!["grp".into()]), N),
                    ("prefix, none", inv(|i| i.prefixes = vec!["/x/".into()]), 0),
                    (
                        "prefix, 1%",
                        inv(|i| i.prefixes = vec!["/d7/".into()]),
                        N / 100,
                    ),
                    ("prefix, all", inv(|i| i.prefixes = vec!["/d".into()]), N),
                    ("all", inv(|i| i.all = true), N),
                ];
                for (what, mut purge, covered) in kinds {
                    purge.soft = soft;
                    let store = full(engine).await;
                    store.purge(&purge).await;
                    let (checked, _, _) = store.purge_work();
                    assert_eq!(checked, 0, "{engine:?} {what}: the purge walked the store");
                    let (absent, stale, fresh) = census(&store).await;
                    let (gone, marked) = if soft { (0, covered) } else { (covered, 0) };
                    assert_eq!(
                        (absent, stale, fresh),
                        (gone, marked, N - covered),
                        "{engine:?} soft={soft} {what}"
                    );
                    // The sweeper (this one, or the background one the purge started)
                    // reclaims what a hard purge covered and retires the record.
                    let swept = store.sweep().await;
                    assert!(swept.removed <= gone as u64, "{engine:?} {what}");
                    store.sync().await;
                    assert_eq!(store.entry_count(), (N - gone) as u64, "{engine:?} {what}");
                    assert_eq!(store.evictions().2, gone as u64, "{engine:?} {what}");
                    assert_eq!(store.recorded_purges(), (0, 0));
                    assert_eq!(census(&store).await, (gone, marked, N - covered));
                }
            }
        }
    }

    #[tokio::test]
    async fn an_entry_read_before_a_walk_retires_its_hard_purge_is_still_not_served() {
        for engine in [Engine::Moka, Engine::Compact] {
            let store = full(engine).await;
            let k = key(7);
            // A lookup has read the entry and stalls before screening it...
            let held = store.cache.get(&k).await.expect("stored");
            // ...while a hard purge covers it and a walk removes it and retires the purge.
            store.purge(&inv(|i| i.tags = vec!["t7".into()])).await;
            store.sweep().await;
            assert_eq!(store.recorded_purges(), (0, 0), "{engine:?}");
            // The lookup resumes: what it read is gone.
            assert!(store.screen(held).is_none(), "{engine:?}");
            assert!(store.lookup(&k, &HeaderMap::new()).await.is_none());
        }
    }

    #[tokio::test]
    async fn a_fill_that_began_before_a_purge_never_stores_the_purged_body() {
        for engine in [Engine::Moka, Engine::Compact] {
            let store = full(engine).await;
            let none = HeaderMap::new();
            // Began before the purge, completes after it: not stored.
            let early = store.fill_mark();
            store.purge(&inv(|i| i.tags = vec!["t3".into()])).await;
            let late = tagged("grp t3", &[]);
            assert!(store
                .insert_filled("/late", &none, late.clone(), early)
                .await
                .is_none());
            assert!(store.lookup("/late", &none).await.is_none());
            // Began before a purge and stored before it too: covered at once.
            let mark = store.fill_mark();
            assert!(store
                .insert_filled("/stored", &none, late.clone(), mark)
                .await
                .is_some());
            store.purge(&inv(|i| i.prefixes = vec!["/st".into()])).await;
            assert!(store.lookup("/stored", &none).await.is_none());
            // Began after: stored and served.
            let after = store.fill_mark();
            assert!(store
                .insert_filled("/stored", &none, late.clone(), after)
                .await
                .is_some());
            assert!(store.lookup("/stored", &none).await.is_some());
            // A sweep in progress does not retire a purge for an entry it has passed: a fill
            // that began before the purge is refused by the log however the sweep is placed.
            let early = store.fill_mark();
            store.purge(&inv(|i| i.tags = vec!["t4".into()])).await;
            store.sweep().await;
            assert!(store
                .insert_filled("/later", &none, tagged("t4", &[]), early)
                .await
                .is_none());
        }
    }

    #[tokio::test]
    async fn a_url_purge_covers_every_vary_variant_without_a_walk() {
        for engine in [Engine::Moka, Engine::Compact] {
            let store = full(engine).await;
            let mut gzip = HeaderMap::new();
            gzip.insert("accept-encoding", "gzip".parse().unwrap());
            let mut br = HeaderMap::new();
            br.insert("accept-encoding", "br".parse().unwrap());
            let varying = || tagged("v", &[("vary", "accept-encoding")]);
            for req in [&gzip, &br] {
                let m = store.fill_mark();
                assert!(store.insert_filled("/v", req, varying(), m).await.is_some());
                assert!(store.lookup("/v", req).await.is_some());
            }
            store.purge(&inv(|i| i.urls = vec!["/v".into()])).await;
            assert_eq!(store.purge_work().0, 1, "one key looked up, no walk");
            assert!(store.lookup("/v", &gzip).await.is_none());
            assert!(store.lookup("/v", &br).await.is_none());
            assert_eq!(census(&store).await, (0, 0, N), "nothing else touched");
        }
    }

    #[tokio::test]
    async fn over_its_budget_the_record_is_swept_before_the_purge_returns() {
        // 1 MiB of capacity keeps 4 KiB for the record: about 60 distinct tags.
        let store = Store::with_engine(1 << 20, Eviction::TinyLfu, Engine::Compact);
        for i in 0..100 {
            store
                .insert_pushed(&format!("/o/{i}"), tagged(&format!("x{i}"), &[]))
                .await;
        }
        let held = store.entry_count();
        for i in 0..200 {
            store.purge(&inv(|p| p.tags = vec![format!("x{i}")])).await;
            let (_, bytes) = store.recorded_purges();
            assert!(bytes <= Bans::budget(1 << 20) + 128, "{bytes}");
            assert!(store.weighted_size() <= store.capacity() + 128);
        }
        assert!(store.purge_work().0 > 0, "some purges swept");
        assert!(store.purge_work().0 <= 4 * held, "but only a few");
        for i in 0..100 {
            assert!(store.get(&format!("/o/{i}")).await.is_none());
        }
    }
}
