//! The runtime both tiers compose: the read path, fills from the origin and from a node tier,
//! pushes, the admin API.
//!
//! What it is built on lives in crates of their own, re-exported here under their old paths
//! while the tiers move to them: HTTP (body, accept loop, cache policy, ranges, the origin
//! client, config loading) in `cdn-http`, as [`http`], [`policy`], [`range`], [`origin`]; the
//! store, purge matching and the coalescer in `cdn-store`, as [`store`], [`purge`] and through
//! [`fill`]; TLS, QUIC frame I/O, the peer pool and membership in `cdn-net`, as [`tls`],
//! [`peers`], [`membership`] and (with `send_entry` added) [`quic`].
//!
//! Layout:
//! - [`config`]: the loading helpers (from `cdn-http`), the section and flags both tiers share,
//!   and the consistency switch.
//! - [`counters`]: the one table of counted events; it feeds `/status` and `/metrics` alike.
//! - [`push`]: pushed objects: admin input, wire transfer, freshness check.
//! - [`prewarm`]: `POST /prewarm`'s flow, over the tier's fetch and push into the edges.
//! - [`fill`]: what a coalesced fill's head says, the origin fetch into a flight, completing
//!   one from a stored entry.
//! - [`read_path`]: the one read path both tiers compose: store, freshness, coalesced fill,
//!   then their sources in order (cache nodes, the origin).
//! - [`purging`]: applying an invalidation at a member (store, fills in progress, counts).
//! - [`launch`]: what both members do first: the config from file, environment and flags,
//!   the TLS material, and the store, origin client and read settings it configures.
//! - [`upstream`]: a cache tier seen from in front of it: owners, hedges, the fill from a node.
//! - [`quic`]: `cdn-net`'s frame I/O plus sending a stored entry.
//! - [`admin`]: the admin HTTP API every member serves (`/healthz`, `/status`, `/metrics`).
//! - `testing` (feature `test-support`): checks both tiers' tests make of their binaries and
//!   example config files.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod counters;
pub mod fill;
pub mod launch;
pub mod prewarm;
pub mod purging;
pub mod push;
pub mod quic;
pub mod read_path;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod upstream;

pub use cdn_http as http;
pub use cdn_http::{origin, policy, range};
pub use cdn_store::purge;

/// The store (from `cdn-store`), under its old path while the tiers move to `cdn_store`.
pub mod store {
    pub use cdn_http::policy::{variant_key, vary_names};
    pub use cdn_store::{
        primary, Chunks, Engine, Entry, Eviction, Fields, Freshness, NewEntry, Store, MAX_VARIANTS,
    };
}

pub use cdn_net::tls::install_crypto_provider;
pub use cdn_net::{membership, peers, tls};

pub use cdn_http::{
    init_tracing, log_runtime, raise_open_file_limit, server_runtime, shutdown_signal,
};
