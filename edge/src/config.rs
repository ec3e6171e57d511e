//! Edge configuration: TOML file, then the environment, then flags on top, then `validate()`.

use std::net::SocketAddr;
use std::time::Duration;

use cdn_core::config::{ByteSize, ConfigError, MemberConfig};
use cdn_core::launch::TierConfig;
use serde::{Deserialize, Serialize};

/// Everything an edge is configured with: the keys every member has, then the edge's own.
/// Unknown keys are refused by the loader (`parse_toml`), as `deny_unknown_fields` cannot be
/// used with `flatten`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The keys shared with cache nodes (id, addresses, origin, store, purge, caching rules).
    /// Edge defaults: id `edge-0`, HTTP on 127.0.0.1:8000, admin on 127.0.0.1:9000, a 64 MiB
    /// L1 (small: the node tier holds the working set).
    #[serde(flatten)]
    pub member: MemberConfig,
    /// QUIC handshake deadline: loopback and LAN handshakes take milliseconds, so a node that
    /// has not answered in a second is treated as down.
    #[serde(with = "humantime_serde")]
    pub node_connect_timeout: Duration,
    /// Time for a node's response head: covers the node's own origin fetch, so 35 s, the
    /// origin's 30 s and some.
    #[serde(with = "humantime_serde")]
    pub node_response_timeout: Duration,
    /// How long a node has to say anything (the head, or `Pending` while it fills) before the
    /// next owner, then the origin, is asked instead: a partitioned or hung node costs this
    /// (2 s).
    #[serde(with = "humantime_serde")]
    pub node_first_byte_timeout: Duration,
    /// How long a node that failed to connect is skipped before it is tried again (1 s: a
    /// restarted node is used again soon, a dead one costs one handshake a second).
    #[serde(with = "humantime_serde")]
    pub node_retry: Duration,
    /// Ask the next owner too when the first has not answered within this; `"0s"` (the
    /// default) uses the p95 of recent answers, so only the slowest 5% are hedged.
    #[serde(with = "humantime_serde")]
    pub hedge_after: Duration,
    /// Time a client has to send a request head, counted from accept for the first request
    /// (a connection that sends nothing is closed after it: Varnish's `timeout_idle` is 5 s,
    /// nginx's `client_header_timeout` 60 s; 10 s here).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a client connection may sit idle between requests before it is closed (nginx's
    /// `keepalive_timeout` is 75 s; a minute keeps browsers' connections without holding
    /// abandoned ones for long).
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Client connections served at once (10,000). Past it, the connection idle the longest is
    /// closed to make room, and when every one is busy a new client gets 503 at once. Clamped
    /// to three quarters of the open-file limit (the rest is for nodes, the origin and admin).
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            member: MemberConfig::new(
                "edge-0",
                SocketAddr::from(([127, 0, 0, 1], 8000)),
                SocketAddr::from(([127, 0, 0, 1], 9000)),
                ByteSize(64 << 20),
            ),
            node_connect_timeout: Duration::from_secs(1),
            node_response_timeout: Duration::from_secs(35),
            node_first_byte_timeout: Duration::from_secs(2),
            node_retry: Duration::from_secs(1),
            hedge_after: Duration::ZERO,
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

impl TierConfig for Config {
    fn member(&self) -> &MemberConfig {
        &self.member
    }

    fn member_mut(&mut self) -> &mut MemberConfig {
        &mut self.member
    }

    /// Checks values serde cannot: the first problem found, naming its key.
    fn validate(&self) -> Result<(), ConfigError> {
        self.member.validate()?;
        for (key, v) in [
            ("node_connect_timeout", self.node_connect_timeout),
            ("node_response_timeout", self.node_response_timeout),
            ("node_first_byte_timeout", self.node_first_byte_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("keepalive_timeout", self.keepalive_timeout),
        ] {
            if v.is_zero() {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "max_connections",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config/edge.toml` documents every key: each one is set to its default there (or, if
    /// unset by default, shown commented out), except the two an example must fill in.
    #[test]
    fn the_example_file_shows_every_key_with_its_default() {
        cdn_core::testing::assert_example_shows_every_default::<Config>(include_str!(
            "../../config/edge.toml"
        ));
    }
}
