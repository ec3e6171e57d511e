//! The built `cdnctl` binary against a whole cluster started in this process (origin-stub,
//! cache nodes, edges on ephemeral ports): exit codes, what it prints, and what it changes.

mod errors;
mod purge;
mod push;
mod status;
mod support;
mod top;
