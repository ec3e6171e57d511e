//! Edge configuration: TOML file, then flags on top, then `validate()`.

use std::net::SocketAddr;
use std::path::PathBuf;

use cdn_core::config::{ByteSize, ConfigError, Consistency};
use cdn_core::store::{Engine, Eviction};
use serde::{Deserialize, Serialize};

/// Everything an edge is configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Edge identity, shown in `/status` and logs.
    pub id: String,
    /// HTTP address clients connect to (HTTP/1.1 and h2c).
    pub listen: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Cache nodes' QUIC addresses; the edge learns the member list from them.
    pub seeds: Vec<String>,
    /// Origin base URL, used for non-GET methods and when no cache node answers.
    pub origin: String,
    /// L1 capacity in bytes: small, the node tier holds the working set.
    pub capacity: ByteSize,
    /// Largest object kept in L1 (0: a quarter of the capacity).
    pub max_object_size: ByteSize,
    /// L1 eviction policy.
    pub eviction: Eviction,
    /// L1 store engine: `moka` (default) or `compact` (about 320 bytes less per entry).
    pub store_engine: Engine,
    /// Owners tried per key, best first (R).
    pub replicas: usize,
    /// Bearer token for mutating admin calls and `PURGE`.
    pub admin_token: Option<String>,
    /// Directory with the cluster certificates.
    pub tls_dir: Option<PathBuf>,
    /// Region name.
    pub region: String,
    /// QUIC handshake deadline: loopback and LAN handshakes take milliseconds, so a node that
    /// has not answered in a second is treated as down.
    pub node_connect_timeout_ms: u64,
    /// Time for a node's response head: covers the node's own origin fetch.
    pub node_response_timeout_ms: u64,
    /// How long a node has to say anything (the head, or `Pending` while it fills) before the
    /// next owner, then the origin, is asked instead: a partitioned or hung node costs this.
    pub node_first_byte_timeout_ms: u64,
    /// How long a node that failed to connect is skipped before it is tried again.
    pub node_retry_ms: u64,
    /// Ask the next owner too when the first has not answered within this many ms; 0 (the
    /// default) uses the p95 of recent answers, so only the slowest 5% are hedged.
    pub hedge_after_ms: u64,
    /// Origin TCP connect timeout.
    pub origin_connect_timeout_ms: u64,
    /// Time to wait for the origin's response head.
    pub origin_response_timeout_ms: u64,
    /// QUIC idle timeout to nodes.
    pub idle_timeout_ms: u64,
    /// Time a client has to send a request head, counted from accept for the first request
    /// (a connection that sends nothing is closed after it: Varnish's `timeout_idle` is 5 s,
    /// nginx's `client_header_timeout` 60 s).
    pub header_read_timeout_ms: u64,
    /// Time a client connection may sit idle between requests before it is closed (nginx's
    /// `keepalive_timeout` is 75 s; a minute keeps browsers' connections without holding
    /// abandoned ones for long).
    pub keepalive_timeout_ms: u64,
    /// Client connections served at once. Past it, the connection idle the longest is closed
    /// to make room, and when every one is busy a new client gets 503 at once. Clamped to
    /// three quarters of the open-file limit (the rest is for nodes, the origin and admin).
    pub max_connections: usize,
    /// Deadline for every member to acknowledge a purge (see the node's setting).
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            id: "edge-0".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9000)),
            seeds: vec![],
            origin: "http://127.0.0.1:8080".into(),
            capacity: ByteSize(64 << 20),
            max_object_size: ByteSize(0),
            eviction: Eviction::TinyLfu,
            store_engine: Engine::Moka,
            replicas: 2,
            admin_token: None,
            tls_dir: None,
            region: String::new(),
            node_connect_timeout_ms: 1_000,
            node_response_timeout_ms: 35_000,
            node_first_byte_timeout_ms: 2_000,
            node_retry_ms: 1_000,
            hedge_after_ms: 0,
            origin_connect_timeout_ms: 2_000,
            origin_response_timeout_ms: 30_000,
            idle_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            keepalive_timeout_ms: 60_000,
            max_connections: 10_000,
            purge_timeout_ms: 5_000,
            consistency: Consistency::Available,
            cache_set_cookie: false,
            grace_secs: 10,
            honour_client_no_cache: false,
        }
    }
}

impl Config {
    /// Checks values serde cannot: the first problem found, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.is_empty() {
            return Err(ConfigError::new("id", "must not be empty"));
        }
        if self.capacity.0 == 0 {
            return Err(ConfigError::new("capacity", "must be greater than 0"));
        }
        cdn_core::origin::check_url(&self.origin).map_err(|e| ConfigError::new("origin", e))?;
        if self.replicas == 0 {
            return Err(ConfigError::new("replicas", "must be at least 1"));
        }
        for (key, v) in [
            ("node_connect_timeout_ms", self.node_connect_timeout_ms),
            ("node_response_timeout_ms", self.node_response_timeout_ms),
            (
                "node_first_byte_timeout_ms",
                self.node_first_byte_timeout_ms,
            ),
            (
                "origin_response_timeout_ms",
                self.origin_response_timeout_ms,
            ),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("max_connections", self.max_connections as u64),
            ("purge_timeout_ms", self.purge_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        if self.idle_timeout_ms < 100 {
            return Err(ConfigError::new("idle_timeout_ms", "must be at least 100"));
        }
        for s in &self.seeds {
            cdn_core::peers::check_seed(s).map_err(|e| ConfigError::new("seeds", e))?;
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

    /// The largest object kept in L1.
    pub fn max_object(&self) -> u64 {
        if self.max_object_size.0 == 0 {
            self.capacity.0 / 4
        } else {
            self.max_object_size.0
        }
    }
}
