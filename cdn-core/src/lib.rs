//! Runtime pieces shared by edges and cache nodes.
//!
//! HTTP itself (the body type, hop-by-hop fields, the accept loop, cache policy, ranges, the
//! origin client, config loading) lives in `cdn-http`, re-exported here as [`http`],
//! [`policy`], [`range`] and [`origin`] while the tiers move to it.
//!
//! Layout:
//! - [`config`]: the loading helpers (from `cdn-http`), the section and flags both tiers share,
//!   and the consistency switch.
//! - [`purge`]: what an invalidation matches, and the log that closes the purge/fill race.
//! - [`push`]: pushed objects: admin input, wire transfer, freshness check.
//! - [`store`]: the byte-bounded store of complete responses ([`store::Entry`]), on moka or on
//!   [`compact`], our own engine with a smaller cost per entry.
//! - [`fill`]: coalescing of concurrent misses into one upstream fetch, streamed to every
//!   waiter while it fills (read-while-writer).
//! - [`read_path`]: the one read path both tiers compose: store, freshness, coalesced fill,
//!   then their sources in order (cache nodes, the origin).
//! - [`peers`]: pooled QUIC connections to cache nodes, `Hello`, member list, inbound streams.
//! - [`quic`]: frame I/O over quinn streams.
//! - [`tls`]: cluster CA, member certificates, mutual-TLS QUIC configurations.
//! - [`admin`]: the admin HTTP API every member serves (`/healthz`, `/status`, `/metrics`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod compact;
pub mod config;
pub mod entry;
pub mod fill;
pub mod membership;
pub mod peers;
pub mod purge;
pub mod push;
pub mod quic;
pub mod read_path;
pub mod store;
pub mod tls;
pub mod upstream;

pub use cdn_http as http;
pub use cdn_http::{origin, policy, range};

/// Installs the ring crypto provider as rustls' process default. Configs built here pass the
/// provider explicitly; this guards any library that asks rustls for the default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub use cdn_http::{init_tracing, raise_open_file_limit, shutdown_signal};
