//! The `edge` binary as a real process.

mod process;
