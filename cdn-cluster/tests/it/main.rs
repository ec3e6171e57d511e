//! End-to-end tests through real sockets (origin-stub, cache nodes over QUIC, edges over
//! HTTP), and the same code on a simulated network (`sim`).

mod abuse;
mod cluster;
mod cluster_page;
mod conformance;
mod grafana;
mod limits;
mod load;
mod processes;
mod pull_through;
mod purge;
mod push;
mod raw_origin;
mod security;
mod semantics;
mod sim;
mod status_page;
mod support;
