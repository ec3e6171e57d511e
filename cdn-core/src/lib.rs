//! The runtime both tiers compose: the read path, fills from the origin and from a node tier,
//! pushes, the admin API.
//!
//! It is built on three crates below it, which its users name directly: `cdn-http` (body,
//! accept loop, cache policy, ranges, the origin client, config loading, process start-up),
//! `cdn-store` (the store, purge matching, the coalescer) and `cdn-net` (TLS, QUIC frame I/O,
//! the peer pool, membership).
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
//! - [`quic`]: sending a stored entry over `cdn-net`'s frame I/O.
//! - [`cluster`]: the cluster view: every member's status gathered over the member links,
//!   merged with rates, ratios and a total (`/cluster`), within time and size bounds.
//! - [`admin`]: the admin HTTP API every member serves (`/healthz`, `/status`, `/metrics`,
//!   `/cluster`, the status and cluster pages).
//! - `testing` (feature `test-support`): checks both tiers' tests make of their binaries and
//!   example config files.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cluster;
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
