//! The wire between edges and cache nodes, with no I/O in it.
//!
//! Layout:
//! - [`frame`]: the versioned binary frames (`encode` into a `BufMut`, `decode` from a buffer,
//!   `Ok(None)` meaning "need more bytes").
//! - [`placement`]: rendezvous (highest-random-weight) hashing with blake3, pinned by golden
//!   vectors so that two versions of the code never disagree on owners.
//! - [`status`]: the cache outcomes shared by headers, logs, metrics and the wire.
//!
//! Every edge and node links this crate; nothing here touches a socket or a clock.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod frame;
pub mod placement;
pub mod status;

pub use frame::{
    DecodeError, ErrorCode, Frame, Invalidation, Member, MemberState, Method, Position, Role,
};
pub use placement::{owners, score};
pub use status::CacheStatus;

/// ALPN protocol name; it carries the protocol version, so a node and an edge that do not
/// speak the same version fail at the TLS handshake instead of misreading frames.
pub const ALPN: &[u8] = b"cdn/1";
