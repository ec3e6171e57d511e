//! The `cache-node` binary as a real process.

mod process;
