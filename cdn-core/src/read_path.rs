//! The read path both tiers compose: store → freshness → coalesced fill → sources in order.
//!
//! Modelled on groupcache's `Group.Get` → `load` → peer or getter: one [`ReadPath`] owns a
//! tier's store, its [`Coalescer`], and the ordered list of [`Source`]s a miss is filled from.
//! The edge passes `[node tier, origin]`, a node `[parent region, origin]`; everything that
//! differs on the *response* side (HTTP ranges and 304s, QUIC frames) stays in the tier.
//!
//! A read takes two steps, because a node tells its edge `Pending` between finding a miss and
//! joining the fill:
//! 1. [`ReadPath::lookup`]: a stored entry that may be served now (fresh, or stale while one
//!    background request refreshes it), an only-if-cached miss, or a miss (with the expired
//!    entry to revalidate, if any).
//! 2. [`ReadPath::fill`]: join the coalesced fill or lead it (re-checking the store after
//!    winning, since a fill may have completed between the miss and the join), and fetch
//!    alone when the shared response is not ours to use (private, or another `Vary` variant).
//!
//! The fill itself runs in its own task, so it completes for every waiter even if the leader's
//! request goes away. Sources are tried in order; one that cannot produce a head hands the
//! flight on to the next, one that fails after the head ends the fill (its waiters see the
//! error: a body cannot be restarted from elsewhere mid-stream).
//!
//! Counting stays with the tier: the read path reports [`ReadEvent`]s through [`ReadEvents`]
//! and each tier maps them onto its own counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use http::HeaderMap;

use crate::fill::{
    self, Coalescer, FillBudget, FillError, FillErrorKind, FlightReader, FlightWriter, Head,
    Joined, Served,
};
use crate::upstream::Upstream;
use cdn_http::origin::Origin;
use cdn_http::policy::{self, Rules};
use cdn_proto::CacheStatus;
use cdn_store::{Entry, Freshness, Store};

/// Where a miss can be filled from.
pub enum Source {
    /// Cache nodes over QUIC, the key's owners first: an edge's node tier, or a node's parent
    /// region. Skipped for a key with no owners (no members known, or none in the region).
    Owners(Arc<Upstream>),
    /// The origin over HTTP. Always asked when reached, so it belongs last.
    Origin(Arc<Origin>),
}

impl Source {
    /// What kind of source this is, for counting.
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::Owners(_) => SourceKind::Owners,
            Source::Origin(_) => SourceKind::Origin,
        }
    }
}

/// The kind of a [`Source`], as events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Cache nodes ([`Source::Owners`]).
    Owners,
    /// The origin ([`Source::Origin`]).
    Origin,
}

impl SourceKind {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Owners => "owners",
            SourceKind::Origin => "origin",
        }
    }
}

/// Something the read path did, for the tier to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEvent {
    /// A fresh stored entry is served.
    Hit,
    /// A stale stored entry is served while one background request refreshes it.
    Stale,
    /// Nothing servable is stored: the request goes on to a fill.
    Miss,
    /// The request waits on another request's fill.
    Coalesced,
    /// A fill asks a source.
    Fetch(SourceKind),
    /// So many of a source's members failed before a head (each one tried the next).
    SourceFailures(SourceKind, u64),
}

/// Receives the read path's events; each tier maps them onto its own counters (so the read
/// path never names a tier's `Stats`, and the counters' names stay the tier's).
pub trait ReadEvents: Send + Sync {
    /// Records one event.
    fn event(&self, e: ReadEvent);
}

/// Called after a fill stored a response from any source: `(key, request fields, when the
/// fill started)`. A node replicates the new entry to the key's other owners.
pub type AfterFill =
    Arc<dyn Fn(String, HeaderMap, SystemTime) -> BoxFuture<'static, ()> + Send + Sync>;

/// Whether a stored entry may be served at all (an edge in strict consistency refuses entries
/// from a node whose invalidation stream is down). Applies to lookups and to the re-check.
pub type MayServe = Arc<dyn Fn(&Entry) -> bool + Send + Sync>;

/// The tier's settings the read path applies.
#[derive(Debug, Clone, Copy)]
pub struct ReadSettings {
    /// A client's `no-cache` forces a revalidation instead of a hit.
    pub honour_client_no_cache: bool,
    /// Largest object stored.
    pub max_object: u64,
    /// Bytes the fills in flight may hold at once (see `FillBudget`).
    pub fill_memory: u64,
    /// Caching rules.
    pub rules: Rules,
}

/// What [`ReadPath::lookup`] found.
pub enum Lookup {
    /// A stored entry to serve now: `Hit`, or `Stale` (its background refresh has started).
    Stored {
        /// The entry.
        entry: Entry,
        /// [`CacheStatus::Hit`] or [`CacheStatus::Stale`].
        outcome: CacheStatus,
    },
    /// Nothing servable, and the request said `only-if-cached`: answer without a fill.
    NotCached,
    /// Nothing servable: go on with [`ReadPath::fill`], revalidating `stale` when there is one.
    Miss {
        /// The expired entry, if any.
        stale: Option<Entry>,
    },
}

/// How a stored entry may be served, given its freshness, whether the client asked for a
/// fresh copy (`refresh`: even a fresh entry is revalidated) and whether the request is a
/// downstream member refreshing its own copy (`refreshing`: a stale entry is not served, it
/// is refreshed first): `Some(Hit)`, `Some(Stale)` (serve while refreshing), or `None` (fill
/// first). Pure, so the policy is tested without a store.
pub fn serve_decision(
    freshness: Freshness,
    refresh: bool,
    refreshing: bool,
) -> Option<CacheStatus> {
    if refresh {
        return None;
    }
    match freshness {
        Freshness::Fresh => Some(CacheStatus::Hit),
        Freshness::Stale {
            while_revalidate: true,
            ..
        } if !refreshing => Some(CacheStatus::Stale),
        Freshness::Stale { .. } => None,
    }
}

/// One tier's read path. See the module docs.
pub struct ReadPath {
    store: Store,
    fills: Coalescer<Head>,
    sources: Vec<Source>,
    settings: ReadSettings,
    events: Arc<dyn ReadEvents>,
    // Request ids for fills from cache nodes. Shared with the tier, which numbers its own
    // requests (purges, pushes) from the same counter: an atomic, since any task takes one.
    ids: Arc<AtomicU64>,
    after_fill: Option<AfterFill>,
    may_serve: Option<MayServe>,
}

impl ReadPath {
    /// A read path over `store`, filling misses from `sources` in order. Fills from cache
    /// nodes take their request ids from `ids`.
    pub fn new(
        store: Store,
        sources: Vec<Source>,
        settings: ReadSettings,
        events: Arc<dyn ReadEvents>,
        ids: Arc<AtomicU64>,
    ) -> Self {
        Self {
            store,
            fills: Coalescer::with_budget(Arc::new(FillBudget::new(settings.fill_memory))),
            sources,
            settings,
            events,
            ids,
            after_fill: None,
            may_serve: None,
        }
    }

    /// Runs `hook` after every fill that completed from a source.
    pub fn with_after_fill(mut self, hook: AfterFill) -> Self {
        self.after_fill = Some(hook);
        self
    }

    /// Serves only stored entries `filter` accepts.
    pub fn with_filter(mut self, filter: MayServe) -> Self {
        self.may_serve = Some(filter);
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The fills in progress (purges detach from it).
    pub fn fills(&self) -> &Coalescer<Head> {
        &self.fills
    }

    fn may_serve(&self, entry: &Entry) -> bool {
        self.may_serve.as_ref().is_none_or(|f| f(entry))
    }

    /// Step one: what the store holds for this request at `now`. A stale entry served while
    /// revalidating has its one background refresh started here.
    pub async fn lookup(
        self: &Arc<Self>,
        key: &str,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Lookup {
        let mut stale = None;
        if let Some(entry) = self
            .store
            .lookup(key, headers)
            .await
            .filter(|e| self.may_serve(e))
        {
            let refresh =
                self.settings.honour_client_no_cache && policy::client_wants_fresh(headers);
            let refreshing = headers.contains_key(policy::REFRESH_FIELD);
            match serve_decision(entry.freshness(now), refresh, refreshing) {
                Some(outcome) => {
                    if outcome == CacheStatus::Stale {
                        self.revalidate_in_background(key, headers, entry.clone())
                            .await;
                        self.events.event(ReadEvent::Stale);
                    } else {
                        self.events.event(ReadEvent::Hit);
                    }
                    return Lookup::Stored { entry, outcome };
                }
                None => stale = Some(entry),
            }
        }
        if policy::only_if_cached(headers) {
            return Lookup::NotCached;
        }
        self.events.event(ReadEvent::Miss);
        Lookup::Miss { stale }
    }

    /// Step two: the response for a miss, as a reader positioned at the body and its head.
    /// Joins the coalesced fill (or leads it); when the shared head is not ours to use (not
    /// shareable, or another `Vary` variant), fetches alone, unshared.
    pub async fn fill(
        self: &Arc<Self>,
        key: &str,
        headers: &HeaderMap,
        stale: Option<Entry>,
    ) -> Result<(FlightReader<Head>, Arc<Head>), FillError> {
        let reader = self.join(key, headers, stale).await;
        let first = match reader.head().await {
            Ok(h) if !reader.is_leader() && !fill::fits(&h, key, headers) => {
                Err(FillError::not_shared())
            }
            other => other,
        };
        match first {
            Ok(h) => Ok((reader, h)),
            Err(e) if e.kind == FillErrorKind::NotShared => {
                // Let go of the other flight first: a reader holds back a pass-through writer.
                drop(reader);
                let (w, r) = self.fills.alone();
                self.spawn_fill(key, headers, None, w);
                let h = r.head().await?;
                Ok((r, h))
            }
            Err(e) => Err(e),
        }
    }

    /// Joins (or leads) the coalesced fill for this request, as is: no fetch of its own when
    /// the head turns out not to fit (prewarm reads what the shared fill gets). A leader
    /// re-checks the store, then starts the fill in its own task. `stale` is the expired entry
    /// to revalidate, if any.
    pub async fn join(
        self: &Arc<Self>,
        key: &str,
        headers: &HeaderMap,
        stale: Option<Entry>,
    ) -> FlightReader<Head> {
        match self.fills.join(&self.store.flight_key(key, headers).await) {
            Joined::Leader(w, r) => {
                let now = SystemTime::now();
                match self.store.lookup(key, headers).await {
                    // Not the entry this fill was started to refresh (a client's no-cache).
                    Some(e)
                        if e.is_fresh(now)
                            && self.may_serve(&e)
                            && !stale.as_ref().is_some_and(|s| s.same(&e)) =>
                    {
                        fill::complete_from_entry(w, key, headers, &e, now, Served::Fetched)
                    }
                    _ => self.spawn_fill(key, headers, stale, w),
                }
                r
            }
            Joined::Follower(r) => {
                self.events.event(ReadEvent::Coalesced);
                r
            }
        }
    }

    /// Starts a refresh of `key` unless one is already running (then it is that one).
    async fn revalidate_in_background(
        self: &Arc<Self>,
        key: &str,
        headers: &HeaderMap,
        stale: Entry,
    ) {
        if let Joined::Leader(w, _) = self.fills.join(&self.store.flight_key(key, headers).await) {
            self.spawn_fill(key, headers, Some(stale), w);
        }
    }

    /// Fills in its own task, so the fill completes for every waiter even if the request that
    /// started it goes away.
    fn spawn_fill(
        self: &Arc<Self>,
        key: &str,
        headers: &HeaderMap,
        stale: Option<Entry>,
        w: FlightWriter<Head>,
    ) {
        let this = self.clone();
        let (key, headers) = (key.to_string(), headers.clone());
        // Boxed: the fill's state machine is large, and a task holding it inline copies all of
        // it when spawned and again when it completes.
        tokio::spawn(Box::pin(
            async move { this.load(key, headers, stale, w).await },
        ));
    }

    /// Asks each source in order until one produces a head.
    async fn load(
        &self,
        key: String,
        headers: HeaderMap,
        stale: Option<Entry>,
        mut w: FlightWriter<Head>,
    ) {
        let into = fill::Sink {
            store: &self.store,
            max_object: self.settings.max_object,
            rules: &self.settings.rules,
        };
        let started = SystemTime::now();
        for source in &self.sources {
            let kind = source.kind();
            match source {
                Source::Owners(owners) => {
                    if !owners.has_owners() {
                        continue;
                    }
                    let id = self.ids.fetch_add(1, Ordering::Relaxed);
                    self.events.event(ReadEvent::Fetch(kind));
                    match owners
                        .fill(id, &key, &headers, &into, stale.as_ref(), w)
                        .await
                    {
                        Ok(Ok(())) => return self.filled(key, headers, started).await,
                        Ok(Err(e)) => {
                            tracing::warn!(%key, source = kind.as_str(), error = %e, "fill failed after the head");
                            return;
                        }
                        Err((back, failures)) => {
                            self.events
                                .event(ReadEvent::SourceFailures(kind, failures.len() as u64));
                            for f in &failures {
                                tracing::debug!(%key, source = kind.as_str(), error = %f, "owner failed");
                            }
                            w = back;
                        }
                    }
                }
                Source::Origin(origin) => {
                    self.events.event(ReadEvent::Fetch(kind));
                    match fill::fetch_origin(origin, &into, &key, &headers, stale, w).await {
                        Ok(()) => self.filled(key, headers, started).await,
                        Err(e) => tracing::warn!(%key, error = %e, "origin fill failed"),
                    }
                    return;
                }
            }
        }
        w.fail(FillError::new(
            FillErrorKind::Unreachable,
            "no source could answer",
        ));
    }

    async fn filled(&self, key: String, headers: HeaderMap, started: SystemTime) {
        if let Some(hook) = &self.after_fill {
            hook(key, headers, started).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_decides_what_is_served() {
        let stale = |while_revalidate| Freshness::Stale {
            while_revalidate,
            on_error: true,
        };
        assert_eq!(
            serve_decision(Freshness::Fresh, false, false),
            Some(CacheStatus::Hit)
        );
        assert_eq!(
            serve_decision(stale(true), false, false),
            Some(CacheStatus::Stale)
        );
        assert_eq!(serve_decision(stale(false), false, false), None);
        // A client's no-cache (when honoured) revalidates even a fresh entry.
        assert_eq!(serve_decision(Freshness::Fresh, true, false), None);
        assert_eq!(serve_decision(stale(true), true, false), None);
        // A member refreshing its copy gets a fresh entry, never a stale one.
        assert_eq!(
            serve_decision(Freshness::Fresh, false, true),
            Some(CacheStatus::Hit)
        );
        assert_eq!(serve_decision(stale(true), false, true), None);
    }
}
