//! End-to-end tests through real sockets: origin-stub, cache nodes over QUIC, edges over HTTP.

mod cluster;
mod limits;
mod processes;
mod pull_through;
mod purge;
mod push;
mod raw_origin;
mod security;
mod semantics;
mod support;
