//! The compact store engine: a byte-bounded map of entries with a small fixed cost per entry.
//!
//! moka's bookkeeping alone costs 300–420 bytes per entry (`examples/moka_floor.rs`); this
//! engine keeps, per entry, one 16-byte slot (the entry, which holds its key; its weight,
//! expiry and CLOCK bit) in chunks that never move, and a 4-byte index in an open-addressing
//! table. Eviction is CLOCK (second chance, an LRU
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

use crate::engine::Engine;
use crate::entry::Entry;

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

#[derive(Default)]
struct Slot {
    // None: free.
    entry: Option<Entry>,
    weight: u32,
    // Seconds after the engine's epoch when it expires (low 31 bits) and the CLOCK bit.
    clock: u32,
}

const REFERENCED: u32 = 1 << 31;

impl Slot {
    fn expires(&self) -> u32 {
        self.clock & !REFERENCED
    }

    fn referenced(&self) -> bool {
        self.clock & REFERENCED != 0
    }

    fn set_referenced(&mut self, on: bool) {
        self.clock = if on {
            self.clock | REFERENCED
        } else {
            self.clock & !REFERENCED
        };
    }
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

/// Slots per chunk: a shard's slots grow a chunk at a time and never move (a growing
/// `Vec` would copy them and leave its old buffers behind in the allocator).
const CHUNK: usize = 1024;

/// A shard's slots, in chunks.
#[derive(Default)]
struct Slots {
    chunks: Vec<Box<[Slot]>>,
    // Slots handed out so far.
    len: usize,
}

impl Slots {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, slot: Slot) -> u32 {
        if self.len == self.chunks.len() * CHUNK {
            self.chunks
                .push(std::iter::repeat_with(Slot::default).take(CHUNK).collect());
        }
        let i = self.len;
        self.len += 1;
        self[i] = slot;
        i as u32
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.chunks.iter().flat_map(|c| c.iter()).take(self.len)
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Slot;
    fn index(&self, i: usize) -> &Slot {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl std::ops::IndexMut<usize> for Slots {
    fn index_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

struct Shard {
    table: HashTable<u32>,
    slots: Slots,
    free: Vec<u32>,
    hand: usize,
}

impl Shard {
    /// Stores `new` (whose key hashes to `hash`) in the slot of its key (returning the
    /// weight it replaced, and marking it referenced) or in a free slot.
    fn put(&mut self, hasher: &Hasher, hash: u64, new: Slot) -> Option<u32> {
        let key = new.entry.as_ref().map_or(&[][..], Entry::key_bytes);
        if let Some(i) = self.find(hash, key) {
            let slot = &mut self.slots[i as usize];
            let old = slot.weight;
            *slot = new;
            slot.set_referenced(true);
            return Some(old);
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = new;
                i
            }
            None => self.slots.push(new),
        };
        let slots = &self.slots;
        self.table
            .insert_unique(hash, i, |&j| hasher.of(&slots[j as usize]));
        None
    }

    /// The slot holding `key` (whose hash is `hash`).
    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(hash, |&i| {
                slots[i as usize]
                    .entry
                    .as_ref()
                    .is_some_and(|e| e.key_bytes() == key)
            })
            .copied()
    }
}

/// Key hashes (recomputed from a slot's entry when the table grows or a victim is weighed:
/// a slot does not keep its hash).
struct Hasher(std::hash::RandomState);

impl Hasher {
    fn key(&self, key: &[u8]) -> u64 {
        self.0.hash_one(key)
    }

    fn of(&self, slot: &Slot) -> u64 {
        self.key(slot.entry.as_ref().map_or(&[][..], Entry::key_bytes))
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
    hasher: Hasher,
    epoch: Instant,
    entries: AtomicU64,
    bytes: AtomicU64,
    evictions: Arc<[AtomicU64; 3]>,
}

/// An entry's charge: its body, key and header bytes, and this engine's fixed cost.
fn weight_of(entry: &Entry) -> u32 {
    entry
        .weight()
        .saturating_add(Engine::Compact.entry_overhead())
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
                        slots: Slots::default(),
                        free: Vec::new(),
                        hand: 0,
                    })
                })
                .collect(),
            capacity,
            tiny_lfu,
            sketch: Sketch::new(counters),
            next: AtomicUsize::new(0),
            hasher: Hasher(std::hash::RandomState::new()),
            epoch: Instant::now(),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            evictions,
        }
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.key(key.as_bytes())
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
    pub fn get(&self, key: &str, now: Instant) -> Option<Entry> {
        let hash = self.hash(key);
        let now = self.secs(now);
        if self.tiny_lfu {
            self.sketch.increment(hash);
        }
        let mut guard = self.shard(hash);
        let shard = &mut *guard;
        let found = shard.find(hash, key.as_bytes())?;
        let slot = &mut shard.slots[found as usize];
        if slot.expires() <= now {
            self.remove_at(shard, found, Cause::Expired);
            return None;
        }
        slot.set_referenced(true);
        slot.entry.clone()
    }

    /// Stores `entry` under its key (replacing what was there) to be kept for `keep` from
    /// `now`. It may not be admitted (TinyLFU) or may not fit: then it is dropped, counted as
    /// a size eviction.
    pub fn insert(&self, entry: Entry, keep: Duration, now: Instant) {
        let hash = self.hash(entry.key());
        let weight = weight_of(&entry);
        let expires = self.deadline(now, keep);
        let now_s = self.secs(now);
        if self.tiny_lfu {
            self.sketch.increment(hash);
        }
        // A new key must fit and be admitted; a replacement takes its predecessor's place.
        if self.shard(hash).find(hash, entry.key_bytes()).is_none()
            && (u64::from(weight) > self.capacity || !self.make_room(now_s, hash, weight))
        {
            self.evictions[Cause::Size as usize].fetch_add(1, Ordering::Relaxed);
            return;
        }
        // `put` replaces when the key is there by now (a concurrent insert of the same key),
        // so a key never has two slots.
        let slot = Slot {
            entry: Some(entry),
            weight,
            clock: expires.min(REFERENCED - 1),
        };
        match self.shard(hash).put(&self.hasher, hash, slot) {
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
                        let incumbent = self.sketch.estimate(self.hasher.of(&shard.slots[v]));
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
            if slot.expires() <= now {
                self.remove_at(shard, i as u32, Cause::Expired);
                return Hand::Freed;
            }
            if slot.referenced() {
                slot.set_referenced(false);
                continue;
            }
            return Hand::Victim(i);
        }
        Hand::Empty
    }

    fn remove_at(&self, shard: &mut Shard, i: u32, cause: Cause) {
        let slot = &mut shard.slots[i as usize];
        let Some(entry) = slot.entry.take() else {
            return;
        };
        let hash = self.hasher.key(entry.key_bytes());
        let weight = u64::from(slot.weight);
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
        if let Some(i) = shard.find(hash, key.as_bytes()) {
            self.remove_at(shard, i, Cause::Explicit);
        }
    }

    /// Calls `f` with every live entry and its key, one shard locked at a time (for purge
    /// scans: `f` must not call back into the engine).
    pub fn for_each(&self, now: Instant, mut f: impl FnMut(&str, &Entry)) {
        let now = self.secs(now);
        for m in self.shards.iter() {
            let shard = m.lock().unwrap_or_else(|p| p.into_inner());
            for s in shard.slots.iter() {
                if let Some(e) = &s.entry {
                    if s.expires() > now {
                        f(e.key(), e);
                    }
                }
            }
        }
    }

    /// Removes `entry` if it is still the one stored under its key (a purge found it covered;
    /// a fill may have replaced it since).
    pub fn remove_same(&self, entry: &Entry) {
        let hash = self.hash(entry.key());
        let mut guard = self.shard(hash);
        let shard = &mut *guard;
        if let Some(i) = shard.find(hash, entry.key_bytes()) {
            if shard.slots[i as usize]
                .entry
                .as_ref()
                .is_some_and(|e| e.same(entry))
            {
                self.remove_at(shard, i, Cause::Explicit);
            }
        }
    }

    /// Shards, for a walk in steps ([`Compact::sweep_step`]).
    pub const SHARDS: usize = SHARDS;

    /// One step of a walk: calls `remove` with each live entry in shard `shard`'s slots from
    /// `from`, at most `max` of them, removing those it says to (a purge). Returns where the
    /// next step starts (`None`: the shard is done), how many entries it checked and how many
    /// it removed. The
    /// shard is locked for the step only: `remove` must not call back into the engine.
    pub fn sweep_step(
        &self,
        shard: usize,
        from: usize,
        max: usize,
        mut remove: impl FnMut(&Entry) -> bool,
    ) -> (Option<usize>, u64, u64) {
        let mut guard = self.lock(shard % SHARDS);
        let shard = &mut *guard;
        let end = shard.slots.len().min(from.saturating_add(max));
        let (mut checked, mut removed) = (0, 0);
        for i in from..end {
            let Some(e) = shard.slots[i].entry.as_ref() else {
                continue;
            };
            checked += 1;
            if remove(e) {
                self.remove_at(shard, i as u32, Cause::Explicit);
                removed += 1;
            }
        }
        ((end < shard.slots.len()).then_some(end), checked, removed)
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

    fn entry(key: &str, size: usize) -> Entry {
        let mut h = http::HeaderMap::new();
        h.insert("cache-control", "max-age=600".parse().unwrap());
        let resp = {
            let mut r = http::Response::new(());
            *r.headers_mut() = h.clone();
            r.into_parts().0
        };
        let req =
            cdn_http::policy::policy_request(&http::Method::GET, "/k", &http::HeaderMap::new());
        let decision = cdn_http::policy::evaluate(&req, &resp, SystemTime::now());
        crate::entry::NewEntry::new(
            http::StatusCode::OK,
            &h,
            vec![bytes::Bytes::from(vec![7u8; size])],
            decision,
            SystemTime::now(),
        )
        .keyed(key)
    }

    fn engine(capacity: u64, tiny_lfu: bool) -> (Compact, Arc<[AtomicU64; 3]>) {
        let ev: Arc<[AtomicU64; 3]> = Arc::default();
        (Compact::new(capacity, tiny_lfu, ev.clone()), ev)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_slot_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }

    #[test]
    fn stores_replaces_and_removes_by_key() {
        let (c, ev) = engine(64 << 20, true);
        let now = Instant::now();
        c.insert(entry("/a", 100), HOUR, now);
        c.insert(entry("/b", 200), HOUR, now);
        assert_eq!(c.get("/a", now).unwrap().body_len(), 100);
        assert_eq!(c.get("/b", now).unwrap().body_len(), 200);
        assert!(c.get("/c", now).is_none());
        let before = c.weighted_size();
        c.insert(entry("/a", 300), HOUR, now);
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
        c.insert(entry("/short", 10), Duration::from_secs(5), now);
        c.insert(entry("/long", 10), HOUR, now);
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
            c.insert(entry(&format!("/flood/{i}"), 1024), HOUR, now);
            assert!(c.weighted_size() <= capacity, "over capacity after {i}");
        }
        let per = u64::from(weight_of(&entry("/flood/10000", 1024)));
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
                        c.insert(entry(&k, 64), HOUR, now);
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
                        c.insert(entry(&format!("/same/{i}"), 64), HOUR, now);
                    }
                });
            }
        });
        assert_eq!(c.entry_count(), 10_000);
        // A walk in steps sees every entry once and removes what it is told to.
        let mut seen = 0;
        for shard in 0..Compact::SHARDS {
            let mut from = Some(0);
            while let Some(at) = from {
                let (next, n, _) = c.sweep_step(shard, at, 100, |e| e.key().starts_with("/t0/"));
                seen += n;
                from = next;
            }
        }
        assert_eq!(seen, 10_000);
        assert_eq!(c.entry_count(), 8_000);
        assert!(c.get("/t0/5", now).is_none());
        c.remove("/same/7");
        assert!(
            c.get("/same/7", now).is_none(),
            "no second slot left behind"
        );
    }
}
