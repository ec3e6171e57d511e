//! The compact store engine: a byte-bounded map of entries with a small fixed cost per entry.
//!
//! moka's bookkeeping alone costs 300–420 bytes per entry (`examples/moka_floor.rs`); this
//! engine keeps, per entry, one 48-byte slot (key, entry, key hash, weight, expiry, CLOCK bit)
//! and a 4-byte index in an open-addressing table. Eviction is CLOCK (second chance, an LRU
//! approximation); with TinyLFU on, a new entry that would evict is admitted only if a
//! count-min sketch has seen its key more often than the victim's, which keeps a scan of
//! one-hit keys from flushing the hot set, as moka's TinyLFU does. Entries expire at their
//! `keep()` deadline: checked on read and swept by the clock hand.
//!
//! Sharded by key hash; each shard is a mutex held only for map operations (never across an
//! await). Time is passed in (`now`), so tests drive expiry without waiting.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hashbrown::HashTable;

use crate::store::Entry;

/// Why an entry left (indexes of the store's eviction counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Evicted to stay within capacity (or not admitted).
    Size = 0,
    /// Past its deadline.
    Expired = 1,
    /// Removed on request (purge).
    Explicit = 2,
}

const SHARDS: usize = 64;
const NEVER: u32 = u32::MAX;

struct Slot {
    key: Box<str>,
    entry: Option<Arc<Entry>>,
    hash: u64,
    weight: u32,
    // Seconds after the engine's epoch when it expires.
    expires: u32,
    referenced: bool,
}

/// A count-min sketch of key frequencies, shared by every shard and updated without a lock:
/// 8-bit counters in 64-byte blocks, a key's four counters (one per 16-counter row of its
/// block) in one block, so a lookup touches one cache line, as in Caffeine's sketch. Halved
/// every `40 × blocks` increments (counters then average about 2.5, as in Caffeine's) so old
/// popularity fades.
struct Sketch {
    blocks: Box<[Block]>,
    added: AtomicUsize,
}

#[repr(align(64))]
struct Block([AtomicU8; 64]);

impl Sketch {
    /// About `counters` counters in all.
    fn new(counters: usize) -> Self {
        let n = (counters / 64).max(1).next_power_of_two();
        Self {
            blocks: (0..n)
                .map(|_| Block(std::array::from_fn(|_| AtomicU8::new(0))))
                .collect(),
            added: AtomicUsize::new(0),
        }
    }

    /// The key's block and its four counters in it.
    fn counters(&self, hash: u64) -> (&Block, [usize; 4]) {
        let mixed = hash.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let block = &self.blocks[(mixed >> 32) as usize & (self.blocks.len() - 1)];
        let at = |row: usize| row * 16 + ((hash >> (4 * row)) & 15) as usize;
        (block, [at(0), at(1), at(2), at(3)])
    }

    fn increment(&self, hash: u64) {
        let (block, at) = self.counters(hash);
        for i in at {
            let _ =
                block.0[i].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_add(1));
        }
        if self.added.fetch_add(1, Ordering::Relaxed) + 1 >= 40 * self.blocks.len() {
            self.added.store(0, Ordering::Relaxed);
            for b in self.blocks.iter() {
                for c in &b.0 {
                    let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v / 2));
                }
            }
        }
    }

    fn estimate(&self, hash: u64) -> u8 {
        let (block, at) = self.counters(hash);
        at.iter()
            .map(|&i| block.0[i].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

/// What an eviction step did.
enum Evicted {
    /// Removed an entry.
    One,
    /// TinyLFU kept the victim over the candidate.
    Refused,
    /// Every shard is empty.
    Nothing,
}

/// What the clock hand found.
enum Hand {
    /// An entry to evict.
    Victim(usize),
    /// An expired entry, removed.
    Freed,
    /// Nothing: the shard is empty.
    Empty,
}

struct Shard {
    table: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    hand: usize,
}

impl Shard {
    /// Stores `new` in the slot of its key (returning the weight it replaced, and marking it
    /// referenced) or in a free slot.
    fn put(&mut self, new: Slot) -> Option<u32> {
        if let Some(i) = self.find(new.hash, &new.key) {
            let slot = &mut self.slots[i as usize];
            let old = slot.weight;
            slot.entry = new.entry;
            slot.weight = new.weight;
            slot.expires = new.expires;
            slot.referenced = true;
            return Some(old);
        }
        let hash = new.hash;
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = new;
                i
            }
            None => {
                self.slots.push(new);
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.table
            .insert_unique(hash, i, |&j| slots[j as usize].hash);
        None
    }

    /// The slot holding `key` (whose hash is `hash`).
    fn find(&self, hash: u64, key: &str) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(hash, |&i| {
                let s = &slots[i as usize];
                s.hash == hash && &*s.key == key
            })
            .copied()
    }
}

/// The engine.
pub struct Compact {
    shards: Box<[Mutex<Shard>]>,
    capacity: u64,
    tiny_lfu: bool,
    sketch: Sketch,
    // The shard the next eviction looks in: evictions go round the shards, each shard's
    // clock hand picking its victim.
    next: AtomicUsize,
    hasher: std::hash::RandomState,
    epoch: Instant,
    entries: AtomicU64,
    bytes: AtomicU64,
    evictions: Arc<[AtomicU64; 3]>,
}

/// An entry's charge: its body and header bytes, its key, and this engine's fixed cost.
fn weight_of(key: &str, entry: &Entry) -> u32 {
    entry
        .weight()
        .saturating_add(crate::store::Engine::Compact.entry_overhead())
        .saturating_add(u32::try_from(key.len()).unwrap_or(u32::MAX))
}

impl Compact {
    /// At most `capacity` bytes (as weighed); TinyLFU admission when `tiny_lfu`, plain CLOCK
    /// otherwise; removals counted into `evictions` by [`Cause`].
    pub fn new(capacity: u64, tiny_lfu: bool, evictions: Arc<[AtomicU64; 3]>) -> Self {
        // Four counters for every KiB of capacity, within bounds (16 MiB at most).
        let counters = ((capacity / 256) as usize).clamp(1 << 14, 1 << 24);
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        table: HashTable::new(),
                        slots: Vec::new(),
                        free: Vec::new(),
                        hand: 0,
                    })
                })
                .collect(),
            capacity,
            tiny_lfu,
            sketch: Sketch::new(counters),
            next: AtomicUsize::new(0),
            hasher: std::hash::RandomState::new(),
            epoch: Instant::now(),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            evictions,
        }
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        self.lock((hash >> 58) as usize % SHARDS)
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn secs(&self, at: Instant) -> u32 {
        u32::try_from(at.saturating_duration_since(self.epoch).as_secs()).unwrap_or(NEVER - 1)
    }

    fn deadline(&self, now: Instant, keep: Duration) -> u32 {
        u32::try_from(
            now.saturating_duration_since(self.epoch)
                .saturating_add(keep)
                .as_secs_f64()
                .ceil() as u64,
        )
        .unwrap_or(NEVER)
    }

    /// The entry under `key`, unless expired at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<Arc<Entry>> {
        let hash = self.hash(key);
        let now = self.secs(now);
        if self.tiny_lfu {
            self.sketch.increment(hash);
        }
        let mut guard = self.shard(hash);
        let shard = &mut *guard;
        let found = shard.find(hash, key)?;
        let slot = &mut shard.slots[found as usize];
        if slot.expires <= now {
            self.remove_at(shard, found, Cause::Expired);
            return None;
        }
        slot.referenced = true;
        slot.entry.clone()
    }

    /// Stores `entry` under `key` (replacing what was there) to be kept for `keep` from
    /// `now`. It may not be admitted (TinyLFU) or may not fit: then it is dropped, counted as
    /// a size eviction.
    pub fn insert(&self, key: &str, entry: Arc<Entry>, keep: Duration, now: Instant) {
        let hash = self.hash(key);
        let weight = weight_of(key, &entry);
        let expires = self.deadline(now, keep);
        let now_s = self.secs(now);
        if self.tiny_lfu {
            self.sketch.increment(hash);
        }
        // A new key must fit and be admitted; a replacement takes its predecessor's place.
        if self.shard(hash).find(hash, key).is_none()
            && (u64::from(weight) > self.capacity || !self.make_room(now_s, hash, weight))
        {
            self.evictions[Cause::Size as usize].fetch_add(1, Ordering::Relaxed);
            return;
        }
        // `put` replaces when the key is there by now (a concurrent insert of the same key),
        // so a key never has two slots.
        let slot = Slot {
            key: key.into(),
            entry: Some(entry),
            hash,
            weight,
            expires,
            referenced: false,
        };
        match self.shard(hash).put(slot) {
            Some(old) => {
                self.bytes.fetch_add(u64::from(weight), Ordering::Relaxed);
                self.bytes.fetch_sub(u64::from(old), Ordering::Relaxed);
            }
            None => {
                self.bytes.fetch_add(u64::from(weight), Ordering::Relaxed);
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Concurrent inserts may have overshot together: settle back under the bound.
        while self.bytes.load(Ordering::Relaxed) > self.capacity {
            if !matches!(self.try_evict(now_s, None), Evicted::One) {
                break;
            }
        }
    }

    /// Frees room for a new entry of `weight` bytes with key hash `hash`, taking victims
    /// round the shards; false when TinyLFU prefers a victim to the newcomer (which is then
    /// not admitted).
    fn make_room(&self, now: u32, hash: u64, weight: u32) -> bool {
        while self.bytes.load(Ordering::Relaxed) + u64::from(weight) > self.capacity {
            match self.try_evict(now, Some(hash)) {
                Evicted::One => {}
                Evicted::Refused => return false,
                Evicted::Nothing => return true,
            }
        }
        true
    }

    /// One eviction step, trying each shard in turn until one yields an entry.
    fn try_evict(&self, now: u32, candidate: Option<u64>) -> Evicted {
        for _ in 0..SHARDS {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let mut guard = self.lock(i);
            let shard = &mut *guard;
            match self.sweep(shard, now) {
                Hand::Empty => continue,
                Hand::Freed => return Evicted::One,
                Hand::Victim(v) => {
                    if let (true, Some(hash)) = (self.tiny_lfu, candidate) {
                        let incumbent = self.sketch.estimate(shard.slots[v].hash);
                        if self.sketch.estimate(hash) <= incumbent {
                            // The victim keeps its place; the hand has moved past it.
                            return Evicted::Refused;
                        }
                    }
                    self.remove_at(shard, v as u32, Cause::Size);
                    return Evicted::One;
                }
            }
        }
        Evicted::Nothing
    }

    /// Moves the clock hand to the next entry that was not referenced since the hand last
    /// passed (clearing the bits it passes), removing an expired entry if it meets one first.
    fn sweep(&self, shard: &mut Shard, now: u32) -> Hand {
        let n = shard.slots.len();
        // Two turns clear every referenced bit, so a victim turns up within them.
        for _ in 0..2 * n {
            if shard.hand >= n {
                shard.hand = 0;
            }
            let i = shard.hand;
            shard.hand += 1;
            let slot = &mut shard.slots[i];
            if slot.entry.is_none() {
                continue;
            }
            if slot.expires <= now {
                self.remove_at(shard, i as u32, Cause::Expired);
                return Hand::Freed;
            }
            if slot.referenced {
                slot.referenced = false;
                continue;
            }
            return Hand::Victim(i);
        }
        Hand::Empty
    }

    fn remove_at(&self, shard: &mut Shard, i: u32, cause: Cause) {
        let slot = &mut shard.slots[i as usize];
        if slot.entry.take().is_none() {
            return;
        }
        let (hash, weight) = (slot.hash, u64::from(slot.weight));
        slot.key = Box::default();
        if let Ok(e) = shard.table.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        shard.free.push(i);
        self.bytes.fetch_sub(weight, Ordering::Relaxed);
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.evictions[cause as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Removes `key` (a purge).
    pub fn remove(&self, key: &str) {
        let hash = self.hash(key);
        let mut guard = self.shard(hash);
        let shard = &mut *guard;
        if let Some(i) = shard.find(hash, key) {
            self.remove_at(shard, i, Cause::Explicit);
        }
    }

    /// Calls `f` with every live entry and its key, one shard locked at a time (for purge
    /// scans: `f` must not call back into the engine).
    pub fn for_each(&self, now: Instant, mut f: impl FnMut(&str, &Arc<Entry>)) {
        let now = self.secs(now);
        for m in self.shards.iter() {
            let shard = m.lock().unwrap_or_else(|p| p.into_inner());
            for s in &shard.slots {
                if let Some(e) = &s.entry {
                    if s.expires > now {
                        f(&s.key, e);
                    }
                }
            }
        }
    }

    /// Entries held.
    pub fn entry_count(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// Bytes charged.
    pub fn weighted_size(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn entry(size: usize) -> Arc<Entry> {
        let mut h = http::HeaderMap::new();
        h.insert("cache-control", "max-age=600".parse().unwrap());
        let resp = {
            let mut r = http::Response::new(());
            *r.headers_mut() = h.clone();
            r.into_parts().0
        };
        let req = crate::policy::policy_request(&http::Method::GET, "/k", &http::HeaderMap::new());
        let decision = crate::policy::evaluate(&req, &resp, SystemTime::now());
        Arc::new(Entry::new(
            http::StatusCode::OK,
            h,
            vec![bytes::Bytes::from(vec![7u8; size])],
            decision,
            SystemTime::now(),
        ))
    }

    fn engine(capacity: u64, tiny_lfu: bool) -> (Compact, Arc<[AtomicU64; 3]>) {
        let ev: Arc<[AtomicU64; 3]> = Arc::default();
        (Compact::new(capacity, tiny_lfu, ev.clone()), ev)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn stores_replaces_and_removes_by_key() {
        let (c, ev) = engine(64 << 20, true);
        let now = Instant::now();
        c.insert("/a", entry(100), HOUR, now);
        c.insert("/b", entry(200), HOUR, now);
        assert_eq!(c.get("/a", now).unwrap().body_len(), 100);
        assert_eq!(c.get("/b", now).unwrap().body_len(), 200);
        assert!(c.get("/c", now).is_none());
        let before = c.weighted_size();
        c.insert("/a", entry(300), HOUR, now);
        assert_eq!(c.get("/a", now).unwrap().body_len(), 300, "replaced");
        assert_eq!(c.entry_count(), 2);
        assert_eq!(c.weighted_size(), before + 200);
        c.remove("/a");
        assert!(c.get("/a", now).is_none());
        assert_eq!(c.entry_count(), 1);
        assert_eq!(ev[Cause::Explicit as usize].load(Ordering::Relaxed), 1);
        let mut keys = Vec::new();
        c.for_each(now, |k, _| keys.push(k.to_string()));
        assert_eq!(keys, vec!["/b".to_string()]);
    }

    #[test]
    fn expires_at_its_deadline_and_counts_it() {
        let (c, ev) = engine(64 << 20, false);
        let now = Instant::now();
        c.insert("/short", entry(10), Duration::from_secs(5), now);
        c.insert("/long", entry(10), HOUR, now);
        assert!(c.get("/short", now + Duration::from_secs(4)).is_some());
        assert!(c.get("/short", now + Duration::from_secs(6)).is_none());
        assert!(c.get("/long", now + Duration::from_secs(6)).is_some());
        assert_eq!(c.entry_count(), 1);
        assert_eq!(ev[Cause::Expired as usize].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_byte_bound_holds_under_a_flood_of_distinct_keys() {
        let capacity = 4 << 20;
        let (c, ev) = engine(capacity, false);
        let now = Instant::now();
        for i in 0..20_000 {
            c.insert(&format!("/flood/{i}"), entry(1024), HOUR, now);
            assert!(c.weighted_size() <= capacity, "over capacity after {i}");
        }
        let per = u64::from(weight_of("/flood/10000", &entry(1024)));
        assert!(
            c.weighted_size() > capacity - SHARDS as u64 * per,
            "the store fills up to its bound: {} of {capacity}",
            c.weighted_size()
        );
        assert_eq!(
            ev[Cause::Size as usize].load(Ordering::Relaxed),
            20_000 - c.entry_count()
        );
        // The most recent are there (CLOCK without admission keeps what came last).
        assert!(c.get("/flood/19999", now).is_some());
        assert!(c.get("/flood/0", now).is_none());
    }

    #[test]
    fn shares_between_threads() {
        let (c, _) = engine(64 << 20, true);
        let c = Arc::new(c);
        let now = Instant::now();
        std::thread::scope(|s| {
            for t in 0..4 {
                let c = c.clone();
                s.spawn(move || {
                    for i in 0..2_000 {
                        let k = format!("/t{t}/{i}");
                        c.insert(&k, entry(64), HOUR, now);
                        assert!(c.get(&k, now).is_some());
                    }
                });
            }
        });
        assert_eq!(c.entry_count(), 8_000);
        let mut n = 0;
        c.for_each(now, |_, _| n += 1);
        assert_eq!(n, 8_000);
        // The same keys from every thread at once: one slot per key, whoever wins.
        std::thread::scope(|s| {
            for _ in 0..4 {
                let c = c.clone();
                s.spawn(move || {
                    for i in 0..2_000 {
                        c.insert(&format!("/same/{i}"), entry(64), HOUR, now);
                    }
                });
            }
        });
        assert_eq!(c.entry_count(), 10_000);
        c.remove("/same/7");
        assert!(
            c.get("/same/7", now).is_none(),
            "no second slot left behind"
        );
    }
}
