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

use crate::compact::Compact;
use crate::engine::{Engine, Eviction};
use crate::entry::{Entry, NewEntry};
use crate::purge::PurgeLog;

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
    // Which request fields each URL's responses vary on, learned from their `Vary`.
    vary: moka::future::Cache<Arc<str>, Arc<VaryMarker>>,
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

/// Variants kept per URL; beyond that, responses for new variants pass through unstored, so
/// one URL with a wildly varying header cannot flush the store.
pub const MAX_VARIANTS: usize = 32;

/// A URL's `Vary` field names, and how many variants were stored under it.
struct VaryMarker {
    names: Vec<http::HeaderName>,
    variants: std::sync::atomic::AtomicUsize,
}

/// The URL part of a storage key.
pub fn primary(storage_key: &str) -> &str {
    storage_key.split('\0').next().unwrap_or(storage_key)
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
        let policy = match eviction {
            Eviction::TinyLfu => EvictionPolicy::tiny_lfu(),
            Eviction::Lru => EvictionPolicy::lru(),
        };
        if engine == Engine::Compact {
            let tiny_lfu = eviction == Eviction::TinyLfu;
            let cache = Compact::new(capacity, tiny_lfu, evictions.clone());
            return Self::on(Cache::Compact(Arc::new(cache)), capacity, evictions);
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
        Self::on(Cache::Moka(cache), capacity, evictions)
    }

    fn on(cache: Cache, capacity: u64, evictions: Arc<[std::sync::atomic::AtomicU64; 3]>) -> Self {
        Self {
            evictions,
            cache,
            capacity,
            log: Arc::default(),
            vary: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .build(),
        }
    }

    /// The entry a request for `key` with fields `request` would be served, if any.
    pub async fn lookup(&self, key: &str, request: &HeaderMap) -> Option<Entry> {
        match self.vary.get(key).await {
            Some(m) => {
                self.cache
                    .get(variant_key(key, &m.names, request).as_str())
                    .await
            }
            None => self.cache.get(key).await,
        }
    }

    /// The key concurrent misses coalesce under: the variant's key when the URL is known to
    /// vary, else the URL (the first response then decides; see `cdn_core::fill::fits`).
    pub async fn flight_key(&self, key: &str, request: &HeaderMap) -> String {
        match self.vary.get(key).await {
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
        let names = vary_names(&entry.fields().to_map())?;
        if names.is_empty() {
            return Some(key.to_string());
        }
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
        let entry = self.insert(&storage, entry).await;
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

    /// Applies an invalidation: hard removes, soft marks stale. Returns entries affected.
    pub async fn purge(&self, inv: &cdn_proto::Invalidation) -> u64 {
        self.log.append(inv.clone());
        let mut n = 0;
        let scan = inv.all || !inv.prefixes.is_empty() || !inv.tags.is_empty();
        let mut varying = false;
        for url in &inv.urls {
            varying |= self.vary.get(url.as_str()).await.is_some();
        }
        if !scan && !varying {
            for url in &inv.urls {
                if let Some(e) = self.cache.get(url.as_str()).await {
                    n += 1;
                    if inv.soft {
                        e.mark_stale();
                    } else {
                        self.cache.invalidate(url.as_str()).await;
                    }
                }
            }
            return n;
        }
        // Variants live under "url\0…": match on the URL part.
        let hit = self
            .cache
            .entries_where(|k, e| crate::purge::matches(inv, primary(k), &e.tags()));
        for (k, e) in hit {
            n += 1;
            if inv.soft {
                e.mark_stale();
            } else {
                self.cache.invalidate(&k).await;
            }
        }
        n
    }

    /// The entry for `key`, fresh or not (moka drops it some time after its TTL).
    pub async fn get(&self, key: &str) -> Option<Entry> {
        self.cache.get(key).await
    }

    /// Stores `entry` under `key`, replacing what was there; returns it as stored.
    pub async fn insert(&self, key: &str, entry: NewEntry) -> Entry {
        let entry = entry.keyed(key);
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

    /// Bytes held as weighed (approximate until [`Store::sync`]).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
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
        assert_eq!(primary(&variant_key("/x?y", &names, &a)), "/x?y");
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
