//! Cache node configuration: TOML file, then the environment, then flags on top, then
//! `validate()`.

use std::net::SocketAddr;
use std::time::Duration;

use cdn_core::config::{ByteSize, ConfigError, MemberConfig};
use cdn_core::launch::TierConfig;
use serde::{Deserialize, Serialize};

/// Everything a cache node is configured with: the keys every member has, then the node's
/// own. Unknown keys are refused by the loader (`parse_toml`), as `deny_unknown_fields` cannot
/// be used with `flatten`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The keys shared with edges (id, addresses, origin, store, purge, caching rules). Node
    /// defaults: id `node-0`, QUIC on 127.0.0.1:4433, admin on 127.0.0.1:9050, a 256 MiB store
    /// (a useful demo size on a laptop).
    #[serde(flatten)]
    pub member: MemberConfig,
    /// The QUIC address edges and peers are told to use, when `listen` is a wildcard (e.g.
    /// `0.0.0.0:4433` in a container: advertise the pod's address). None by default: `listen`
    /// is advertised.
    pub advertise: Option<SocketAddr>,
    /// A region whose nodes this node asks before the origin (tiered cache / shield): a cold
    /// object is then fetched from the origin once for every region with this parent. None by
    /// default.
    pub parent_region: Option<String>,
    /// Concurrent requests one edge may have open on its connection (1,024: far more than one
    /// edge's working set of misses, few enough to bound a misbehaving edge).
    pub max_streams: u32,
    /// Failure detector: how often this node probes one other member (SWIM), 500 ms.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Failure detector: how long a probe waits before asking others to probe indirectly
    /// (200 ms: many round trips on a LAN). Must be less than `probe_interval`.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Failure detector: how long a suspected member has to answer before it is declared
    /// down and its keys move to the next owners (1.5 s: three probe rounds).
    #[serde(with = "humantime_serde")]
    pub suspect_timeout: Duration,
    /// On SIGTERM: how long requests in flight may take to finish after the cluster was told
    /// this node leaves (10 s; keep Kubernetes' grace period above it).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            member: MemberConfig::new(
                "node-0",
                SocketAddr::from(([127, 0, 0, 1], 4433)),
                SocketAddr::from(([127, 0, 0, 1], 9050)),
                ByteSize(256 << 20),
            ),
            advertise: None,
            parent_region: None,
            max_streams: 1024,
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(200),
            suspect_timeout: Duration::from_millis(1_500),
            drain_timeout: Duration::from_secs(10),
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
        if self.member.id.is_empty() || self.member.id.len() > 255 {
            return Err(ConfigError::new("id", "must be 1 to 255 bytes"));
        }
        self.member.validate()?;
        if self.max_streams == 0 {
            return Err(ConfigError::new("max_streams", "must be greater than 0"));
        }
        let listen = self.member.listen;
        if listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err(ConfigError::new(
                "advertise",
                format!(
                    "required when listen is {listen} (others cannot reach a wildcard address)"
                ),
            ));
        }
        if self.advertise.is_some_and(|a| a.ip().is_unspecified()) {
            return Err(ConfigError::new("advertise", "must be a specific address"));
        }
        if self.parent_region.as_ref() == Some(&self.member.region) {
            return Err(ConfigError::new(
                "parent_region",
                "must differ from region (a region cannot shield itself)",
            ));
        }
        if self.probe_interval < Duration::from_millis(10) {
            return Err(ConfigError::new("probe_interval", "must be at least 10ms"));
        }
        if self.probe_timeout.is_zero() || self.probe_timeout >= self.probe_interval {
            return Err(ConfigError::new(
                "probe_timeout",
                "must be greater than 0 and less than probe_interval",
            ));
        }
        if self.suspect_timeout < self.probe_interval {
            return Err(ConfigError::new(
                "suspect_timeout",
                "must be at least probe_interval",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The failure detector's timing.
    pub fn gossip(&self) -> cdn_net::membership::GossipTiming {
        cdn_net::membership::GossipTiming {
            probe_period: self.probe_interval,
            probe_rtt: self.probe_timeout,
            suspect_to_down: self.suspect_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config/cache-node.toml` documents every key: each one is set to its default there (or, if
    /// unset by default, shown commented out), except the two an example must fill in.
    #[test]
    fn the_example_file_shows_every_key_with_its_default() {
        cdn_core::testing::assert_example_shows_every_default::<Config>(include_str!(
            "../../config/cache-node.toml"
        ));
    }
}
