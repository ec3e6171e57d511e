//! A stored response in one allocation.
//!
//! A store holds millions of these, so an entry is one reference-counted block: its
//! freshness times, status and flags, then its storage key, the node it came from and its
//! own header fields, packed; the body is a second buffer of exactly its size (allocators
//! round sizes up to a class, so a body sharing the block would cost more than its pointer).
//! Fields that many responses share word for word (`Content-Type`, `Cache-Control`,
//! `Server`, CORS and security fields...) are packed once into a block every entry with the
//! same ones points to, as HPACK's dynamic table shares fields between responses; `Date`,
//! `ETag`, `Last-Modified` and any field not known to be shared stay in the entry. An
//! [`Entry`] is shared by every reader; a response is first a [`NewEntry`], which the store
//! keys once it knows where the entry goes (a `Vary` variant's key depends on its fields).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use triomphe::ThinArc;

/// Bodies up to this size are stored as one exact-size buffer; larger ones keep the chunks
/// they arrived in (which are most of their read buffers anyway).
const COMPACT_BODY: u64 = 1 << 20;

const REVALIDATE_ONLY: u8 = 1;
const VALIDATORS: u8 = 2;
const STALE: u8 = 4;
/// Found covered by a hard purge by a walk: never served again, whatever the record of purges
/// says once the walk retires that purge (a lookup may hold the entry across the walk).
const PURGED: u8 = 8;

/// A duration in 32 bits: milliseconds below 2^31 (24.8 days), else whole seconds with the
/// top bit set (up to 68 years).
#[derive(Debug, Clone, Copy)]
struct Span(u32);

const IN_SECONDS: u32 = 1 << 31;

impl Span {
    fn of(d: Duration) -> Self {
        match u32::try_from(d.as_millis()) {
            Ok(ms) if ms < IN_SECONDS => Span(ms),
            _ => Span(
                IN_SECONDS
                    | u32::try_from(d.as_secs())
                        .unwrap_or(u32::MAX)
                        .min(!IN_SECONDS),
            ),
        }
    }

    fn get(self) -> Duration {
        if self.0 & IN_SECONDS != 0 {
            Duration::from_secs((self.0 & !IN_SECONDS).into())
        } else {
            Duration::from_millis(self.0.into())
        }
    }
}

/// A stored body.
#[derive(Debug)]
enum Body {
    /// One buffer of exactly the body's size.
    One(Box<[u8]>),
    /// Chunks, for bodies over [`COMPACT_BODY`].
    Many(Arc<Vec<Bytes>>),
}

/// The fixed part of an entry.
#[derive(Debug)]
struct Meta {
    // When stored (ns since the Unix epoch; exact: callers compare it with instants taken
    // before a fill) and the freshness remaining then.
    stored_ns: u64,
    ttl: Span,
    // The low 32 bits of the store's purge sequence when its fill began (or later, once the
    // sweeper has checked it against every purge before that): which lazy purges cover it,
    // see `crate::ban`. Atomic: the sweeper advances it on a shared entry.
    mark: AtomicU32,
    body: Body,
    // Fields shared with other entries.
    shared: Option<SharedFields>,
    // Age when stored, the stale-while-revalidate and stale-if-error windows.
    initial_age: Span,
    swr: Span,
    sie: Span,
    key_len: u32,
    source_len: u16,
    status: StatusCode,
    flags: AtomicU8,
}

/// A stored response, complete and immutable (but for the soft-purge mark): cheap to clone,
/// shared by every reader.
#[derive(Clone)]
pub struct Entry(ThinArc<Meta, u8>);

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key())
            .field("status", &self.status())
            .field("body_len", &self.body_len())
            .finish()
    }
}

/// A stored body as a `Bytes` owner: serving shares the entry instead of copying the body.
struct BodyOf(Entry);

impl AsRef<[u8]> for BodyOf {
    fn as_ref(&self) -> &[u8] {
        match &self.0.meta().body {
            Body::One(b) => b,
            Body::Many(_) => &[],
        }
    }
}

impl Entry {
    fn meta(&self) -> &Meta {
        &self.0.header.header
    }

    fn tail(&self) -> &[u8] {
        &self.0.slice
    }

    /// Whether both are the same stored entry.
    pub fn same(&self, other: &Entry) -> bool {
        self.0.ptr() == other.0.ptr()
    }

    /// The key it is stored under.
    pub fn key(&self) -> &str {
        std::str::from_utf8(self.key_bytes()).unwrap_or_default()
    }

    /// The key's bytes (for comparisons, without the UTF-8 check).
    pub fn key_bytes(&self) -> &[u8] {
        &self.tail()[..self.meta().key_len as usize]
    }

    /// The cache node it came from (edges), so a member whose invalidation stream from that
    /// node broke can drop or stop serving exactly those entries.
    pub fn source(&self) -> Option<&str> {
        let m = self.meta();
        let at = m.key_len as usize;
        let s = &self.tail()[at..at + m.source_len as usize];
        (!s.is_empty()).then(|| std::str::from_utf8(s).unwrap_or_default())
    }

    /// The header fields as stored (hop-by-hop fields, `Age` and `Content-Length` removed:
    /// both are computed when served).
    pub fn fields(&self) -> Fields<'_> {
        let m = self.meta();
        Fields {
            shared: m.shared.as_ref().map_or(&[], |s| &s.0.slice),
            own: &self.tail()[m.key_len as usize + m.source_len as usize..],
        }
    }

    /// The header fields as a map (built per call).
    pub fn headers(&self) -> HeaderMap {
        self.fields().to_map()
    }

    /// Response status.
    pub fn status(&self) -> StatusCode {
        self.meta().status
    }

    /// Served stale only after a successful revalidation (`must-revalidate`, ...).
    pub fn revalidate_only(&self) -> bool {
        self.meta().flags.load(Ordering::Relaxed) & REVALIDATE_ONLY != 0
    }

    /// Can be revalidated (has `ETag` or `Last-Modified`).
    pub fn validators(&self) -> bool {
        self.meta().flags.load(Ordering::Relaxed) & VALIDATORS != 0
    }

    /// The body, sharing the stored buffer (empty: no chunks).
    pub fn body(&self) -> Chunks {
        match &self.meta().body {
            Body::One(b) if b.is_empty() => Chunks::One(Bytes::new()),
            Body::One(_) => Chunks::One(Bytes::from_owner(BodyOf(self.clone()))),
            Body::Many(v) => Chunks::Many(v.clone()),
        }
    }

    /// Total body bytes.
    pub fn body_len(&self) -> u64 {
        match &self.meta().body {
            Body::One(b) => b.len() as u64,
            Body::Many(v) => v.iter().map(|b| b.len() as u64).sum(),
        }
    }

    /// When the entry was stored.
    pub fn stored_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.meta().stored_ns)
    }

    /// Freshness remaining when stored.
    pub fn ttl(&self) -> Duration {
        self.meta().ttl.get()
    }

    /// Served stale when upstream fails, for this long past the lifetime.
    pub fn stale_if_error(&self) -> Duration {
        self.meta().sie.get()
    }

    /// Served stale while a refresh runs, for this long past the lifetime.
    pub fn stale_while_revalidate(&self) -> Duration {
        self.meta().swr.get()
    }

    /// Surrogate keys (from `Surrogate-Key`), for purge by tag.
    pub fn tags(&self) -> Vec<String> {
        self.fields().tags()
    }

    /// The low 32 bits of the purge sequence it is marked with (see `crate::ban`).
    pub(crate) fn mark(&self) -> u32 {
        self.meta().mark.load(Ordering::Acquire)
    }

    /// Advances the mark to `to` (low 32 bits) if `older(current)` says the current one is
    /// older; a concurrent advance to a newer mark is kept.
    pub(crate) fn advance_mark(&self, to: u32, older: impl Fn(u32) -> bool) {
        let _ = self
            .meta()
            .mark
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                older(m).then_some(to)
            });
    }

    /// Time held here at `now`.
    fn held(&self, now: SystemTime) -> Duration {
        now.duration_since(self.stored_at()).unwrap_or_default()
    }

    /// Marks the entry stale (soft purge).
    pub fn mark_stale(&self) {
        self.meta().flags.fetch_or(STALE, Ordering::Release);
    }

    /// Marks the entry as covered by a hard purge (see [`Entry::hard_purged`]).
    pub(crate) fn mark_purged(&self) {
        self.meta().flags.fetch_or(PURGED, Ordering::Release);
    }

    /// A walk found a hard purge covering it: it must not be served, even if the purge has
    /// since been retired from the record.
    pub(crate) fn hard_purged(&self) -> bool {
        self.meta().flags.load(Ordering::Acquire) & PURGED != 0
    }

    fn soft_purged(&self) -> bool {
        self.meta().flags.load(Ordering::Acquire) & STALE != 0
    }

    /// Still fresh at `now` (and not soft-purged).
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        !self.soft_purged() && self.held(now) < self.ttl()
    }

    /// How usable the entry is at `now`.
    pub fn freshness(&self, now: SystemTime) -> Freshness {
        let held = self.held(now);
        let soft_purged = self.soft_purged();
        if !soft_purged && held < self.ttl() {
            return Freshness::Fresh;
        }
        // Past its lifetime (or soft-purged, which counts as just expired).
        let past = if soft_purged {
            Duration::ZERO
        } else {
            held - self.ttl()
        };
        let revalidate_only = self.revalidate_only();
        Freshness::Stale {
            while_revalidate: !revalidate_only && past < self.stale_while_revalidate(),
            on_error: !revalidate_only && past < self.stale_if_error(),
        }
    }

    /// Whether it may be served because upstream failed.
    pub fn serve_on_error(&self, now: SystemTime) -> bool {
        matches!(self.freshness(now), Freshness::Stale { on_error: true, .. })
    }

    /// How long a store keeps it: its lifetime plus the longest window in which a stale
    /// copy is still useful (served stale, or revalidated instead of refetched).
    pub(crate) fn keep(&self) -> Duration {
        let revalidate = if self.validators() {
            cdn_http::policy::REVALIDATE_KEEP
        } else {
            Duration::ZERO
        };
        self.ttl()
            + self
                .stale_while_revalidate()
                .max(self.stale_if_error())
                .max(revalidate)
    }

    /// The `Age` to send at `now`: age when stored plus time held here.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.meta().initial_age.get() + self.held(now)
    }

    /// Its body, key and own packed header bytes (shared fields are not charged to each
    /// entry); a store charges this plus its engine's
    /// [`crate::Engine::entry_overhead`].
    pub fn weight(&self) -> u32 {
        let w = self.body_len().saturating_add(self.tail().len() as u64);
        u32::try_from(w).unwrap_or(u32::MAX)
    }
}

/// How usable a stored entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within its lifetime: serve.
    Fresh,
    /// Past it: revalidate, unless a window allows serving it meanwhile.
    Stale {
        /// May be served now while one background request refreshes it.
        while_revalidate: bool,
        /// May be served if upstream fails.
        on_error: bool,
    },
}

/// A response about to be stored: everything but the key.
#[derive(Debug, Clone)]
pub struct NewEntry {
    status: StatusCode,
    // Packed: fields commonly shared between responses, and the others.
    shared: Vec<u8>,
    own: Vec<u8>,
    body: Chunks,
    stored_ns: u64,
    ttl: Span,
    initial_age: Span,
    swr: Span,
    sie: Span,
    flags: u8,
    source: Option<Arc<str>>,
}

impl NewEntry {
    /// Builds an entry; `headers` should already be free of hop-by-hop fields.
    pub fn new(
        status: StatusCode,
        headers: &HeaderMap,
        body: impl Into<Chunks>,
        decision: cdn_http::policy::Decision,
        stored_at: SystemTime,
    ) -> Self {
        let since_epoch = stored_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut flags = 0;
        if decision.revalidate_only {
            flags |= REVALIDATE_ONLY;
        }
        if decision.validators {
            flags |= VALIDATORS;
        }
        let (shared, own) = pack(headers);
        Self {
            status,
            shared,
            own,
            body: body.into(),
            stored_ns: u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX),
            ttl: Span::of(decision.ttl),
            initial_age: Span::of(decision.age),
            swr: Span::of(decision.stale_while_revalidate),
            sie: Span::of(decision.stale_if_error),
            flags,
            source: None,
        }
    }

    /// Records the node the entry came from.
    pub fn with_source(mut self, node: Arc<str>) -> Self {
        self.source = Some(node);
        self
    }

    /// Its header fields.
    pub fn fields(&self) -> Fields<'_> {
        Fields {
            shared: &self.shared,
            own: &self.own,
        }
    }

    /// Surrogate keys (from `Surrogate-Key`).
    pub fn tags(&self) -> Vec<String> {
        self.fields().tags()
    }

    /// The entry, stored under `key`: one block for the fixed part, the key, the source and
    /// the fields, and the body copied once into a buffer of its size (unless it is large).
    pub fn keyed(self, key: &str) -> Entry {
        self.keyed_at(key, 0)
    }

    /// [`NewEntry::keyed`], marked with the low 32 bits of the purge sequence its fill began
    /// at (what a store checks lazy purges against).
    pub(crate) fn keyed_at(self, key: &str, mark: u32) -> Entry {
        let body_len = self.body.len_bytes();
        let body = if body_len > COMPACT_BODY {
            // Already chunks (a large stored body being revalidated): shared, not copied.
            Body::Many(match self.body {
                Chunks::Many(chunks) => chunks,
                Chunks::One(b) => Arc::new(vec![b]),
            })
        } else {
            let mut one = Vec::with_capacity(body_len as usize);
            for c in self.body.iter() {
                one.extend_from_slice(c);
            }
            Body::One(one.into_boxed_slice())
        };
        // A source id too long to record (never, in practice) is not recorded.
        let source = match self.source.as_deref() {
            Some(s) if s.len() <= u16::MAX as usize => s.as_bytes(),
            _ => &[],
        };
        let shared = SharedFields::intern(&self.shared);
        let inline: &[u8] = if shared.is_some() { &[] } else { &self.shared };
        let mut tail = Vec::with_capacity(key.len() + source.len() + inline.len() + self.own.len());
        tail.extend_from_slice(key.as_bytes());
        tail.extend_from_slice(source);
        tail.extend_from_slice(inline);
        tail.extend_from_slice(&self.own);
        let meta = Meta {
            stored_ns: self.stored_ns,
            ttl: self.ttl,
            mark: AtomicU32::new(mark),
            body,
            shared,
            initial_age: self.initial_age,
            swr: self.swr,
            sie: self.sie,
            key_len: u32::try_from(key.len()).unwrap_or(u32::MAX),
            source_len: source.len() as u16,
            status: self.status,
            flags: AtomicU8::new(self.flags),
        };
        Entry(ThinArc::from_header_and_slice(meta, &tail))
    }
}

/// A body as handed out: one buffer, or (over [`COMPACT_BODY`] when stored) chunks. Derefs
/// to the chunks (none for an empty body).
#[derive(Clone, Debug)]
pub enum Chunks {
    /// One buffer (possibly empty).
    One(Bytes),
    /// Several chunks.
    Many(Arc<Vec<Bytes>>),
}

impl Default for Chunks {
    fn default() -> Self {
        Chunks::One(Bytes::new())
    }
}

impl Chunks {
    /// Total bytes.
    pub fn len_bytes(&self) -> u64 {
        self.iter().map(|b| b.len() as u64).sum()
    }
}

impl std::ops::Deref for Chunks {
    type Target = [Bytes];
    fn deref(&self) -> &[Bytes] {
        match self {
            Chunks::One(b) if b.is_empty() => &[],
            Chunks::One(b) => std::slice::from_ref(b),
            Chunks::Many(v) => v,
        }
    }
}

impl<'a> IntoIterator for &'a Chunks {
    type Item = &'a Bytes;
    type IntoIter = std::slice::Iter<'a, Bytes>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl From<Vec<Bytes>> for Chunks {
    fn from(mut body: Vec<Bytes>) -> Self {
        if body.len() <= 1 {
            return Chunks::One(body.pop().unwrap_or_default());
        }
        Chunks::Many(Arc::new(body))
    }
}

// ---- packed header fields ----

/// Names stored as one byte (lower case; a field with another name stores its name), and
/// whether the field is usually the same for many responses of one origin: those are packed
/// into a shared block, the rest stays in each entry (so a field unique to each response,
/// or one not listed here, cannot make every shared block unique).
const NAMES: [(&str, bool); 40] = [
    ("accept-ranges", true),
    ("access-control-allow-credentials", true),
    ("access-control-allow-headers", true),
    ("access-control-allow-methods", true),
    // Often echoes the request's Origin: not shared.
    ("access-control-allow-origin", false),
    ("access-control-expose-headers", true),
    ("access-control-max-age", true),
    ("alt-svc", true),
    ("cache-control", true),
    ("cdn-cache-control", true),
    ("content-disposition", false),
    ("content-encoding", true),
    ("content-language", true),
    ("content-location", false),
    ("content-range", false),
    // Often carries a per-response nonce: not shared.
    ("content-security-policy", false),
    ("content-type", true),
    ("cross-origin-resource-policy", true),
    ("date", false),
    ("digest", false),
    ("etag", false),
    ("expires", false),
    ("last-modified", false),
    ("link", false),
    ("location", false),
    ("permissions-policy", true),
    ("referrer-policy", true),
    ("server", true),
    ("set-cookie", false),
    ("strict-transport-security", true),
    ("surrogate-control", true),
    ("surrogate-key", false),
    ("timing-allow-origin", true),
    ("vary", true),
    ("via", true),
    ("x-content-type-options", true),
    ("x-frame-options", true),
    ("x-powered-by", true),
    ("x-request-id", false),
    ("x-xss-protection", true),
];

/// Fields whose HTTP-date values are stored as 4 bytes when they round-trip exactly.
const DATED: [&str; 3] = ["date", "expires", "last-modified"];

/// The tag bit of a field stored as a 4-byte date.
const AS_DATE: u8 = 0x80;

/// A value's length: one byte below 255, else 255 and two bytes.
fn put_len(out: &mut Vec<u8>, len: usize) {
    if len < 0xff {
        out.push(len as u8);
    } else {
        out.push(0xff);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    }
}

/// An HTTP-date's seconds since the epoch, when formatting them gives back `value` exactly.
fn packed_date(value: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(value).ok()?;
    let t = httpdate::parse_http_date(text).ok()?;
    let secs = u32::try_from(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs()).ok()?;
    (httpdate::fmt_http_date(t) == text).then_some(secs)
}

/// Packs `headers` into the fields commonly shared (see [`NAMES`]) and the others, leaving out
/// `Age` and `Content-Length` (both computed when served) and values over 64 KiB. Each
/// field: a tag (a [`NAMES`] index + 1, with [`AS_DATE`] for a packed date; 0 for a name
/// that follows with its `u16` length), then the value (4 bytes for a date, else its length
/// and bytes).
fn pack(headers: &HeaderMap) -> (Vec<u8>, Vec<u8>) {
    let (mut shared, mut own) = (Vec::new(), Vec::new());
    for (k, v) in headers {
        let known = NAMES.iter().position(|(n, _)| *n == k.as_str());
        let out = if known.is_some_and(|i| NAMES[i].1) {
            &mut shared
        } else {
            &mut own
        };
        if k == http::header::AGE || k == http::header::CONTENT_LENGTH {
            continue;
        }
        let (name, value) = (k.as_str(), v.as_bytes());
        if value.len() > u16::MAX as usize || name.len() > u16::MAX as usize {
            continue;
        }
        match known {
            Some(i) => {
                let tag = i as u8 + 1;
                if DATED.contains(&name) {
                    if let Some(secs) = packed_date(value) {
                        out.push(tag | AS_DATE);
                        out.extend_from_slice(&secs.to_be_bytes());
                        continue;
                    }
                }
                out.push(tag);
            }
            None => {
                out.push(0);
                out.extend_from_slice(&(name.len() as u16).to_be_bytes());
                out.extend_from_slice(name.as_bytes());
            }
        }
        put_len(out, value.len());
        out.extend_from_slice(value);
    }
    (shared, own)
}

/// Packed fields shared between entries (see [`NAMES`]).
#[derive(Clone, Debug)]
struct SharedFields(ThinArc<(), u8>);

/// Distinct shared blocks kept: beyond this, blocks no entry uses are dropped, and if all
/// are in use a new entry keeps its fields inline.
const MAX_SHARED: usize = 4096;

/// Larger blocks stay inline, charged to their entry: shared blocks are not charged to any
/// store, so together they must stay small (at most 2 MiB).
const MAX_SHARED_BLOCK: usize = 512;

/// The shared blocks, by content.
static INTERNED: OnceLock<Mutex<Interned>> = OnceLock::new();

#[derive(Default)]
struct Interned {
    blocks: hashbrown::HashTable<SharedFields>,
    hasher: std::hash::RandomState,
    // New blocks refused since the table was last swept: it is swept again only after as
    // many refusals as it holds, so a full table of blocks in use costs no scan per insert.
    refused: usize,
}

impl SharedFields {
    /// The shared block holding `packed`, made if new; `None` for no fields, for a block over
    /// [`MAX_SHARED_BLOCK`], or when [`MAX_SHARED`] blocks are in use.
    fn intern(packed: &[u8]) -> Option<SharedFields> {
        use std::hash::BuildHasher;
        if packed.is_empty() || packed.len() > MAX_SHARED_BLOCK {
            return None;
        }
        let mut guard = INTERNED
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Interned {
            blocks,
            hasher,
            refused,
        } = &mut *guard;
        let hash = hasher.hash_one(packed);
        if let Some(found) = blocks.find(hash, |b| &b.0.slice == packed) {
            return Some(found.clone());
        }
        if blocks.len() >= MAX_SHARED {
            if (1..MAX_SHARED).contains(refused) {
                *refused += 1;
                return None;
            }
            // Only the table holds them: no entry uses them any more.
            blocks.retain(|b| ThinArc::strong_count(&b.0) > 1);
            if blocks.len() >= MAX_SHARED {
                *refused = 1;
                return None;
            }
            *refused = 0;
        }
        let block = SharedFields(ThinArc::from_header_and_slice((), packed));
        blocks.insert_unique(hash, block.clone(), |b| hasher.hash_one(&b.0.slice));
        Some(block)
    }
}

/// Packed header fields (see [`pack`]), borrowed from an entry: the shared ones, then its
/// own.
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    shared: &'a [u8],
    own: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.shared.is_empty() && self.own.is_empty()
    }

    /// The fields, shared ones first: name (lower case) and value. Repeated fields keep
    /// their order (a name is always shared or always not).
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Cow<'a, [u8]>)> + 'a {
        self.raw().map(|(n, v)| (n, v.bytes()))
    }

    /// The fields with their values as packed (a date not yet formatted).
    fn raw(&self) -> impl Iterator<Item = (&'a str, Packed<'a>)> + 'a {
        unpack(self.shared).chain(unpack(self.own))
    }
}

/// A packed value: its bytes, or a date (seconds since the epoch) formatted when read.
#[derive(Clone, Copy)]
enum Packed<'a> {
    Bytes(&'a [u8]),
    Date(u32),
}

impl<'a> Packed<'a> {
    fn bytes(self) -> Cow<'a, [u8]> {
        match self {
            Packed::Bytes(b) => Cow::Borrowed(b),
            Packed::Date(secs) => {
                let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.into());
                Cow::Owned(httpdate::fmt_http_date(t).into_bytes())
            }
        }
    }
}

/// The fields packed in `b`.
fn unpack(b: &[u8]) -> impl Iterator<Item = (&str, Packed<'_>)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let u16_at = |i: usize| -> Option<usize> {
            Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize)
        };
        let tag = *b.get(at)?;
        at += 1;
        let name = if tag == 0 {
            let n = u16_at(at)?;
            let name = std::str::from_utf8(b.get(at + 2..at + 2 + n)?).ok()?;
            at += 2 + n;
            name
        } else {
            NAMES.get(usize::from(tag & !AS_DATE).checked_sub(1)?)?.0
        };
        if tag & AS_DATE != 0 {
            let secs = u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
            at += 4;
            return Some((name, Packed::Date(secs)));
        }
        let len = match *b.get(at)? {
            0xff => {
                at += 3;
                u16_at(at - 2)?
            }
            n => {
                at += 1;
                usize::from(n)
            }
        };
        let value = b.get(at..at + len)?;
        at += len;
        Some((name, Packed::Bytes(value)))
    })
}

impl<'a> Fields<'a> {
    /// The first value of `name` (lower case).
    pub fn get(&self, name: &str) -> Option<Cow<'a, [u8]>> {
        self.raw().find(|(n, _)| *n == name).map(|(_, v)| v.bytes())
    }

    /// Surrogate keys (from `Surrogate-Key`).
    pub fn tags(&self) -> Vec<String> {
        self.raw()
            .filter(|(n, _)| *n == "surrogate-key")
            .flat_map(|(_, v)| {
                String::from_utf8_lossy(&v.bytes())
                    .split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Calls `f` with each surrogate key, without allocating (the same keys as
    /// [`Fields::tags`] when they are UTF-8).
    pub(crate) fn each_tag(&self, mut f: impl FnMut(&str)) {
        for (_, v) in self.raw().filter(|(n, _)| *n == "surrogate-key") {
            let v = v.bytes();
            match std::str::from_utf8(&v) {
                Ok(s) => s.split_whitespace().for_each(&mut f),
                Err(_) => String::from_utf8_lossy(&v)
                    .split_whitespace()
                    .for_each(&mut f),
            }
        }
    }

    /// Unpacks into a map.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(8);
        for (name, value) in self.iter() {
            let value = match value {
                Cow::Borrowed(v) => http::HeaderValue::from_bytes(v),
                Cow::Owned(v) => http::HeaderValue::from_maybe_shared(Bytes::from(v)),
            };
            let (Ok(name), Ok(mut value)) = (http::HeaderName::from_bytes(name.as_bytes()), value)
            else {
                continue;
            };
            if name == http::header::SET_COOKIE {
                value.set_sensitive(true);
            }
            map.append(name, value);
        }
        map
    }

    /// As wire-protocol fields.
    pub fn wire(&self) -> Vec<cdn_proto::frame::Field> {
        self.iter()
            .map(|(n, v)| (n.to_string(), Bytes::from(v.into_owned())))
            .collect()
    }
}

/// Packs `headers` and reads them back (tests of the packing).
#[cfg(test)]
fn round_trip(headers: &HeaderMap) -> HeaderMap {
    let (shared, own) = pack(headers);
    Fields {
        shared: &shared,
        own: &own,
    }
    .to_map()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A response with `Cache-Control: cc` and the policy's decision on it at `now`.
    pub(crate) fn decision(cc: &str, now: SystemTime) -> (HeaderMap, cdn_http::policy::Decision) {
        let req = cdn_http::policy::policy_request(&http::Method::GET, "/", &HeaderMap::new());
        let resp = http::Response::builder()
            .header("cache-control", cc)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let d = cdn_http::policy::evaluate(&req, &resp, now);
        (resp.headers, d)
    }

    #[test]
    fn fields_pack_names_dates_and_long_values_and_read_back_the_same() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "text/html; charset=utf-8".parse().unwrap());
        h.insert("date", "Fri, 27 Nov 2026 21:00:00 GMT".parse().unwrap());
        // Not in the exact IMF-fixdate form: kept as text, byte for byte.
        h.insert("expires", "Friday, 27-Nov-26 21:00:00 GMT".parse().unwrap());
        h.insert(
            "last-modified",
            "Thu, 01 Jan 1970 00:00:00 GMT".parse().unwrap(),
        );
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "b=2".parse().unwrap());
        h.insert("x-custom-thing", "x".repeat(300).parse().unwrap());
        h.insert("x-empty", "".parse().unwrap());
        h.insert("age", "12".parse().unwrap());
        h.insert("content-length", "5".parse().unwrap());
        let (shared, own) = pack(&h);
        let packed = Fields {
            shared: &shared,
            own: &own,
        };
        let back = round_trip(&h);
        let mut want = h.clone();
        want.remove("age");
        want.remove("content-length");
        assert_eq!(back, want);
        let cookies: Vec<_> = back.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"], "repeated fields keep their order");
        assert!(back.get("set-cookie").unwrap().is_sensitive());
        // A date is 5 bytes, a known name one byte, a value's length one byte below 255.
        let alone = |name: &str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
            let (shared, own) = pack(&h);
            shared.len() + own.len()
        };
        assert_eq!(alone("date", "Fri, 27 Nov 2026 21:00:00 GMT"), 5);
        assert_eq!(alone("content-type", "text/html"), 1 + 1 + 9);
        assert_eq!(alone("x-custom", "v"), 1 + 2 + 8 + 1 + 1);
        assert_eq!(alone("x-long", &"v".repeat(300)), 1 + 2 + 6 + 3 + 300);
        assert_eq!(
            packed.get("date").as_deref(),
            Some(&b"Fri, 27 Nov 2026 21:00:00 GMT"[..])
        );
    }

    #[test]
    fn an_entry_keeps_key_source_fields_and_body_in_order() {
        let now = SystemTime::now();
        let (mut h, d) = decision("max-age=60", now);
        h.insert("surrogate-key", "a b".parse().unwrap());
        let body = vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")];
        let e = NewEntry::new(StatusCode::NOT_FOUND, &h, body, d.clone(), now)
            .with_source(Arc::from("node-7"))
            .keyed("/k?x=1");
        assert_eq!(e.key(), "/k?x=1");
        assert_eq!(e.source(), Some("node-7"));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.tags(), ["a", "b"]);
        assert_eq!(e.headers().get("cache-control").unwrap(), "max-age=60");
        let served = e.body();
        assert_eq!(served.len(), 1, "small bodies are one buffer");
        assert_eq!(&served[0][..], b"hello world");
        assert_eq!(e.body_len(), 11);
        // The served buffer keeps the entry alive, not a copy of the body.
        let buffer = served[0].clone();
        drop((served, e));
        assert_eq!(&buffer[..], b"hello world");
        let none = NewEntry::new(StatusCode::OK, &h, Vec::new(), d, now).keyed("/e");
        assert_eq!(none.source(), None);
        assert!(none.body().is_empty());
        assert_eq!(none.body_len(), 0);
    }

    #[test]
    fn entries_with_the_same_common_fields_share_one_block() {
        let now = SystemTime::now();
        let (mut h, d) = decision("max-age=61, public", now);
        h.insert("content-type", "text/x-shared-test".parse().unwrap());
        let mut with_etag = |etag: &str| {
            h.insert("etag", etag.parse().unwrap());
            NewEntry::new(StatusCode::OK, &h, Vec::new(), d.clone(), now).keyed("/s")
        };
        let (a, b) = (with_etag("\"a\""), with_etag("\"b\""));
        let (sa, sb) = (a.meta().shared.as_ref(), b.meta().shared.as_ref());
        assert_eq!(
            sa.map(|s| s.0.ptr()),
            sb.map(|s| s.0.ptr()),
            "one shared block"
        );
        assert!(sa.is_some());
        // Each entry keeps its key and its own fields (the ETag, 1 + 1 + 3 bytes).
        assert_eq!(a.tail().len(), 2 + 5);
        assert_eq!(a.headers().get("etag").unwrap(), "\"a\"");
        assert_eq!(b.headers().get("etag").unwrap(), "\"b\"");
        assert_eq!(
            b.headers().get("content-type").unwrap(),
            "text/x-shared-test"
        );
        assert_eq!(
            b.headers().get("cache-control").unwrap(),
            "max-age=61, public"
        );
    }

    #[test]
    fn a_large_common_block_stays_in_its_entry() {
        let now = SystemTime::now();
        let (mut h, d) = decision("max-age=60", now);
        h.insert("server", "s".repeat(600).parse().unwrap());
        let e = NewEntry::new(StatusCode::OK, &h, Vec::new(), d, now).keyed("/big-fields");
        assert!(
            e.meta().shared.is_none(),
            "not interned: it would go uncharged"
        );
        assert!(e.weight() > 600, "charged to the entry: {}", e.weight());
        assert_eq!(e.headers().get("server").unwrap().len(), 600);
    }

    #[test]
    fn spans_keep_milliseconds_and_reach_decades() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(1_234),
            Duration::from_secs(24 * 86_400),
            Duration::from_secs(60 * 86_400),
            Duration::from_secs(30 * 365 * 86_400),
        ] {
            let back = Span::of(d).get();
            let tolerance = if d < Duration::from_secs(24 * 86_400) {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            };
            assert!(d - back <= tolerance && back <= d, "{d:?} -> {back:?}");
        }
        assert_eq!(
            Span::of(Duration::MAX).get(),
            Duration::from_secs((!IN_SECONDS).into())
        );
    }

    #[test]
    fn a_large_body_keeps_its_chunks() {
        let now = SystemTime::now();
        let (h, d) = decision("max-age=60", now);
        let chunk = Bytes::from(vec![3u8; 1 << 19]);
        let e =
            NewEntry::new(StatusCode::OK, &h, vec![chunk.clone(); 3], d.clone(), now).keyed("/big");
        assert_eq!(e.body().len(), 3);
        assert_eq!(e.body_len(), 3 << 19);
        assert_eq!(e.body()[1].as_ptr(), chunk.as_ptr(), "not copied");
        // A new entry made from it (a revalidation) shares its list of chunks.
        let again = NewEntry::new(StatusCode::OK, &h, e.body(), d, now).keyed("/big");
        let (Body::Many(a), Body::Many(b)) = (&e.meta().body, &again.meta().body) else {
            panic!("chunks expected")
        };
        assert!(Arc::ptr_eq(a, b));
    }

    #[test]
    fn the_block_is_small() {
        assert!(
            std::mem::size_of::<Meta>() <= 64,
            "{}",
            std::mem::size_of::<Meta>()
        );
        assert_eq!(std::mem::size_of::<Option<Entry>>(), 8);
    }
}
