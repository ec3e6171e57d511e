//! End-to-end tests through real sockets: origin-stub, cache nodes over QUIC, edges over HTTP.

mod pull_through;
mod purge;
mod push;
mod raw_origin;
mod semantics;
mod support;
