//! The `cache-node` binary as a real process, and the node code in a simulated network.

mod process;
mod sim;
