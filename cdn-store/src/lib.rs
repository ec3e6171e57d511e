//! The cache's memory: stored responses, the byte-bounded store on either engine, what a purge
//! matches, and the coalescer that turns concurrent misses into one fill. It knows HTTP
//! caching policy (from `cdn-http`) and the wire's invalidations (from `cdn-proto`), and
//! nothing of QUIC, peers or membership: the tiers and the read path sit above it.
//!
//! Layout (each module imports only those listed before it):
//! - `engine`: [`Engine`] (moka or compact) and [`Eviction`] (TinyLFU or LRU), and the fixed
//!   cost each engine charges per entry.
//! - `entry`: a stored response in one allocation ([`Entry`]), what becomes one
//!   ([`NewEntry`]), packed and shared header fields, [`Freshness`].
//! - [`purge`]: what an invalidation matches, and the log that closes the purge/fill race.
//! - `ban`: purges by tag, prefix and `all` recorded in O(1) and evaluated at lookup, with
//!   what the sweeper needs to retire them.
//! - `compact`: our own engine, CLOCK with TinyLFU admission at about 30 bytes per entry.
//! - `store`: the [`Store`]: entries by key and `Vary` variant, bounded in bytes, on moka or
//!   on `compact`; applies purges (by key, or recorded in `ban`) and runs the sweeper.
//! - `coalesce`: one fill per key however many requests wait ([`Coalescer`]), streamed to
//!   every waiter while it fills, with written failure semantics; generic over the head type.
#![forbid(unsafe_code)]

mod ban;
mod coalesce;
mod compact;
mod engine;
mod entry;
pub mod purge;
mod store;

pub use ban::Verdict;
pub use coalesce::{
    Coalescer, FillBudget, FillError, FillErrorKind, FlightReader, FlightWriter, Joined,
    TIGHT_WINDOW, WINDOW,
};
pub use engine::{Engine, Eviction};
pub use entry::{Chunks, Entry, Fields, Freshness, NewEntry};
pub use purge::primary;
pub use store::{Store, Swept, MAX_VARIANTS};
