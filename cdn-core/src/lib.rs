//! Runtime pieces shared by edges and cache nodes.
//!
//! HTTP itself (the body type, hop-by-hop fields, the accept loop, cache policy, ranges, the
//! origin client, config loading) lives in `cdn-http`, re-exported here as [`http`],
//! [`policy`], [`range`] and [`origin`] while the tiers move to it; the store, purge matching
//! and the coalescer live in `cdn-store`, re-exported as [`store`] and [`purge`] (and the
//! coalescer through [`fill`]).
//!
//! Layout:
//! - [`config`]: the loading helpers (from `cdn-http`) and the consistency switch.
//! - [`push`]: pushed objects: admin input, wire transfer, freshness check.
//! - [`fill`]: what a coalesced fill's head says, the origin fetch into a flight, completing
//!   one from a stored entry.
//! - [`read_path`]: the one read path both tiers compose: store, freshness, coalesced fill,
//!   then their sources in order (cache nodes, the origin).
//! - [`peers`]: pooled QUIC connections to cache nodes, `Hello`, member list, inbound streams.
//! - [`quic`]: frame I/O over quinn streams.
//! - [`tls`]: cluster CA, member certificates, mutual-TLS QUIC configurations.
//! - [`admin`]: the admin HTTP API every member serves (`/healthz`, `/status`, `/metrics`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod fill;
pub mod membership;
pub mod peers;
pub mod push;
pub mod quic;
pub mod read_path;
pub mod tls;
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

/// Installs the ring crypto provider as rustls' process default. Configs built here pass the
/// provider explicitly; this guards any library that asks rustls for the default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub use cdn_http::{init_tracing, raise_open_file_limit, shutdown_signal};
