//! HTTP for every part of the CDN, and nothing else: what origin-stub, the edges' client
//! side and the origin fetches share, with no QUIC, store or membership in its tree.
//!
//! Layout:
//! - [`body`](Body): the body type, plain answers, hop-by-hop fields (RFC 9110 §7.6.1).
//! - `server`: the accept loop (HTTP/1.1 and h2c on one port), timeouts from accept, the
//!   connection budget, graceful shutdown.
//! - [`policy`]: HTTP caching rules (RFC 9111, RFC 9213): storability, freshness, `Vary`,
//!   conditionals; the one place both tiers evaluate them.
//! - [`range`]: byte-range answers (206/416, If-Range) from stored bodies.
//! - [`origin`]: the pooled HTTP client to the origin.
//! - [`config`]: TOML and environment loading with errors that name the key, byte sizes,
//!   the exit-2 convention.
//! - `process`: logging set-up, the open-file limit, shutdown signals.
#![forbid(unsafe_code)]

mod body;
pub mod config;
pub mod origin;
pub mod policy;
mod process;
pub mod range;
mod server;

pub use body::{
    connection_named, empty, full, is_hop_by_hop, strip_hop_by_hop, text, Body, BoxError,
    HOP_BY_HOP,
};
pub use process::{
    init_tracing, log_runtime, raise_open_file_limit, server_runtime, shutdown_signal,
};
pub use server::{
    describe_metrics, listen, serve, Listener, ServerLimits, H2_SEND_BUFFER, LISTEN_BACKLOG,
};
