//! The cluster's network: mutual-TLS QUIC between members, frames over its streams, the pool
//! of connections to cache nodes with the member list learned through them, and SWIM
//! membership carried in its datagrams. It moves `cdn-proto` frames and bodies it is given; it
//! knows nothing of the store, the read path or HTTP caching, which sit above it.
//!
//! Layout (each module imports only those listed before it):
//! - [`tls`]: cluster CA, member certificates, mutual-TLS QUIC configurations.
//! - [`quic`]: frame I/O over quinn streams: read and write frames, send a head and body
//!   chunks, read a body, stream error codes.
//! - [`peers`]: pooled QUIC connections to cache nodes, `Hello`, the member list and its
//!   votes, streams nodes open back, purge fan-out and redelivery.
//! - [`membership`]: SWIM (foca) among cache nodes over the pool's datagrams.
//! - [`status`]: members' status documents over the links (`StatusRequest`, `Status`),
//!   bounded in time and size.
#![forbid(unsafe_code)]

pub mod membership;
pub mod peers;
pub mod quic;
pub mod status;
pub mod tls;
