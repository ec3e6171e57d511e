//! Cache node configuration: TOML file, then flags on top, then `validate()`.

use std::net::SocketAddr;
use std::path::PathBuf;

use cdn_core::config::{ByteSize, ConfigError, Consistency};
use cdn_core::store::{Engine, Eviction};
use serde::{Deserialize, Serialize};

/// Everything a cache node is configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Stable node identity: the input of placement, so it must not change across restarts.
    pub id: String,
    /// QUIC (UDP) address to serve edges and peers on.
    pub listen: SocketAddr,
    /// The QUIC address edges and peers are told to use, when `listen` is a wildcard (e.g.
    /// `0.0.0.0:4433` in a container: advertise the pod's address).
    pub advertise: Option<SocketAddr>,
    /// Admin HTTP address (`/healthz`, `/status`, `/metrics`).
    pub admin: SocketAddr,
    /// Other nodes' QUIC addresses to join through.
    pub seeds: Vec<String>,
    /// Origin base URL (`http://host:port`).
    pub origin: String,
    /// Store capacity in bytes: 256 MiB is a useful demo size on a laptop.
    pub capacity: ByteSize,
    /// Largest object stored; larger ones pass through. A quarter of the capacity by default
    /// (0 means that), so one object cannot flush the whole store.
    pub max_object_size: ByteSize,
    /// Eviction policy: `tiny-lfu` (default: resists scans) or `lru`.
    pub eviction: Eviction,
    /// Store engine: `moka` (default) or `compact` (about 320 bytes less per entry).
    pub store_engine: Engine,
    /// Bearer token for the admin API's mutating calls.
    pub admin_token: Option<String>,
    /// Directory with `ca.pem`, `member.pem`, `member.key` (from `cache-node init-tls`).
    pub tls_dir: Option<PathBuf>,
    /// Region name: edges place keys over the nodes of their own region.
    pub region: String,
    /// A region whose nodes this node asks before the origin (tiered cache / shield): a cold
    /// object is then fetched from the origin once for every region with this parent.
    pub parent_region: Option<String>,
    /// Origin TCP connect timeout: a healthy origin on the same network connects in
    /// milliseconds; past 2 s it is down and waiters should hear so.
    pub origin_connect_timeout_ms: u64,
    /// Time to wait for the origin's response head: generous, origins can be slow to render.
    pub origin_response_timeout_ms: u64,
    /// Concurrent requests one edge may have open on its connection.
    pub max_streams: u32,
    /// QUIC idle timeout: a silent peer is dropped after this (keep-alives go every third).
    pub idle_timeout_ms: u64,
    /// Deadline for every member to acknowledge a purge: on loopback or a LAN they answer in
    /// milliseconds, so 5 s means a member is down or partitioned.
    pub purge_timeout_ms: u64,
    /// `available` (default) or `strict`: what happens when invalidations may not arrive.
    pub consistency: Consistency,
    /// Store responses carrying `Set-Cookie` (off: a cookie for one client must not be
    /// replayed to others, whatever Cache-Control says).
    pub cache_set_cookie: bool,
    /// Seconds a response may be served stale while it is refreshed, or when upstream fails,
    /// if the origin sends neither stale-while-revalidate nor stale-if-error (Varnish's
    /// default grace, 10 s). 0 turns it off.
    pub grace_secs: u64,
    /// Revalidate when a client sends `Cache-Control: no-cache` / `max-age=0` (off, as CDNs
    /// do: otherwise any client can force origin traffic).
    pub honour_client_no_cache: bool,
    /// Owners per key (R): pushes are stored on this many nodes.
    pub replicas: usize,
    /// Failure detector: how often this node probes one other member (SWIM).
    pub probe_interval_ms: u64,
    /// Failure detector: how long a probe waits before asking others to probe indirectly.
    pub probe_timeout_ms: u64,
    /// Failure detector: how long a suspected member has to answer before it is declared
    /// down and its keys move to the next owners.
    pub suspect_timeout_ms: u64,
    /// On SIGTERM: how long requests in flight may take to finish after the cluster was told
    /// this node leaves.
    pub drain_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            id: "node-0".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            advertise: None,
            admin: SocketAddr::from(([127, 0, 0, 1], 9050)),
            seeds: vec![],
            origin: "http://127.0.0.1:8080".into(),
            capacity: ByteSize(256 << 20),
            max_object_size: ByteSize(0),
            eviction: Eviction::TinyLfu,
            store_engine: Engine::Moka,
            admin_token: None,
            tls_dir: None,
            region: String::new(),
            parent_region: None,
            origin_connect_timeout_ms: 2_000,
            origin_response_timeout_ms: 30_000,
            max_streams: 1024,
            idle_timeout_ms: 10_000,
            purge_timeout_ms: 5_000,
            consistency: Consistency::Available,
            cache_set_cookie: false,
            grace_secs: 10,
            honour_client_no_cache: false,
            replicas: 2,
            probe_interval_ms: 500,
            probe_timeout_ms: 200,
            suspect_timeout_ms: 1_500,
            drain_timeout_ms: 10_000,
        }
    }
}

impl Config {
    /// Checks values serde cannot: the first problem found, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.is_empty() || self.id.len() > 255 {
            return Err(ConfigError::new("id", "must be 1 to 255 bytes"));
        }
        if self.capacity.0 == 0 {
            return Err(ConfigError::new("capacity", "must be greater than 0"));
        }
        cdn_core::origin::check_url(&self.origin).map_err(|e| ConfigError::new("origin", e))?;
        if self.replicas == 0 {
            return Err(ConfigError::new("replicas", "must be at least 1"));
        }
        if self.max_streams == 0 {
            return Err(ConfigError::new("max_streams", "must be greater than 0"));
        }
        if self.idle_timeout_ms < 100 {
            return Err(ConfigError::new("idle_timeout_ms", "must be at least 100"));
        }
        if self.purge_timeout_ms == 0 {
            return Err(ConfigError::new(
                "purge_timeout_ms",
                "must be greater than 0",
            ));
        }
        for s in &self.seeds {
            cdn_core::peers::check_seed(s).map_err(|e| ConfigError::new("seeds", e))?;
        }
        if self.listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err(ConfigError::new(
                "advertise",
                format!(
                    "required when listen is {} (others cannot reach a wildcard address)",
                    self.listen
                ),
            ));
        }
        if self.advertise.is_some_and(|a| a.ip().is_unspecified()) {
            return Err(ConfigError::new("advertise", "must be a specific address"));
        }
        if self.parent_region.as_ref() == Some(&self.region) {
            return Err(ConfigError::new(
                "parent_region",
                "must differ from region (a region cannot shield itself)",
            ));
        }
        if self.probe_interval_ms < 10 {
            return Err(ConfigError::new("probe_interval_ms", "must be at least 10"));
        }
        if self.probe_timeout_ms == 0 || self.probe_timeout_ms >= self.probe_interval_ms {
            return Err(ConfigError::new(
                "probe_timeout_ms",
                "must be greater than 0 and less than probe_interval_ms",
            ));
        }
        if self.suspect_timeout_ms < self.probe_interval_ms {
            return Err(ConfigError::new(
                "suspect_timeout_ms",
                "must be at least probe_interval_ms",
            ));
        }
        if self.origin_response_timeout_ms == 0 {
            return Err(ConfigError::new(
                "origin_response_timeout_ms",
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    /// The caching rules this member applies.
    pub fn rules(&self) -> cdn_core::policy::Rules {
        cdn_core::policy::Rules {
            store_set_cookie: self.cache_set_cookie,
            grace: std::time::Duration::from_secs(self.grace_secs),
        }
    }

    /// The failure detector's timing.
    pub fn gossip(&self) -> cdn_core::membership::GossipTiming {
        use std::time::Duration;
        cdn_core::membership::GossipTiming {
            probe_period: Duration::from_millis(self.probe_interval_ms),
            probe_rtt: Duration::from_millis(self.probe_timeout_ms),
            suspect_to_down: Duration::from_millis(self.suspect_timeout_ms),
        }
    }

    /// The largest object stored.
    pub fn max_object(&self) -> u64 {
        if self.max_object_size.0 == 0 {
            self.capacity.0 / 4
        } else {
            self.max_object_size.0
        }
    }
}
