//! Config pieces of the cluster's members: the loading helpers every binary shares (from
//! `cdn-http`, so origin-stub needs nothing else), the section and the flags both tiers have
//! ([`MemberConfig`], [`MemberArgs`]), and the consistency switch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use cdn_store::{Engine, Eviction};

pub use cdn_http::config::*;

/// The keys an edge and a cache node both have, meaning the same in both. Each tier's
/// `Config` embeds it with `#[serde(flatten)]`, so the file stays flat (`capacity = …`, not
/// `[member] capacity = …`), and takes its flags through [`MemberArgs`].
///
/// It has no `Default`: the first four keys differ per tier, which builds it with
/// [`MemberConfig::new`]; [`parse_toml`] reads a file over the tier's whole default, so a key
/// the file leaves out keeps the tier's value. The other defaults are shared and their reasons
/// are given below.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberConfig {
    /// Identity, in `/status`, logs and purge reports (tier default: `edge-0`, `node-0`). A
    /// node's id is also the input of placement, so it must not change across restarts.
    pub id: String,
    /// The address the tier serves on: an edge's HTTP/1.1 and h2c port for clients, a node's
    /// QUIC (UDP) port for edges and peers (tier default: 127.0.0.1:8000, 127.0.0.1:4433).
    pub listen: SocketAddr,
    /// Admin HTTP address: `/healthz`, `/status`, `/metrics`, purges (tier default:
    /// 127.0.0.1:9000, 127.0.0.1:9050).
    pub admin: SocketAddr,
    /// Cache nodes' QUIC addresses to join through (`host:port`, names resolved): a node
    /// gossips with them, an edge learns the member list from them. None by default: a lone
    /// node is a cluster of one.
    pub seeds: Vec<String>,
    /// Origin base URL (`http://host:port`). The default is a local origin, the one
    /// `origin-stub` serves by default, so a demo needs no flags.
    pub origin: String,
    /// Store capacity in bytes (tier default: 64 MiB for an edge's L1, which only keeps what is
    /// hot there; 256 MiB for a node, a useful demo size on a laptop).
    pub capacity: ByteSize,
    /// Largest object stored; larger ones pass through. 0 (the default) means a quarter of
    /// the capacity, so one object cannot flush the whole store.
    pub max_object_size: ByteSize,
    /// Bytes the fills in flight may hold at once: bodies being kept for the store, and what
    /// slow clients have not read yet. Past it, a growing fill streams through unstored and
    /// waits for its readers, so memory stays near capacity + this whatever clients do (100
    /// slow readers of large objects cannot run a member out of memory). 0 (the default)
    /// means a quarter of the capacity, and at least the largest object.
    pub fill_memory: ByteSize,
    /// Eviction policy: `tiny-lfu` (default: a scan of one-off objects cannot push out the
    /// popular ones) or `lru`.
    pub eviction: Eviction,
    /// Store engine: `compact` (default: about 320 bytes less per entry than moka, a better
    /// hit ratio, hits as fast; docs/BENCHMARKS.md "The default store engine") or `moka`.
    pub store_engine: Engine,
    /// Owners per key (R): an edge asks them best first, a node stores pushes on this many.
    /// 2 by default: one owner can fail without its keys going back to the origin.
    pub replicas: usize,
    /// Bearer token for the admin API's mutating calls and `PURGE`. None by default: unset,
    /// mutating calls are refused.
    pub admin_token: Option<String>,
    /// Directory with `ca.pem`, `member.pem`, `member.key` (from `cache-node init-tls`).
    /// Required by the binaries; no default, a member must not run without its certificates.
    pub tls_dir: Option<PathBuf>,
    /// Region name: edges place keys over the nodes of their own region. Empty by default:
    /// one region.
    pub region: String,
    /// `available` (default: serving goes on while invalidations may be late, bounded by TTL
    /// and the replay on reconnect) or `strict`: what happens when invalidations may not
    /// arrive.
    pub consistency: Consistency,
    /// Origin TCP connect deadline: a healthy origin on the same network connects in
    /// milliseconds; past 2 s (the default) it is down and waiters should hear so.
    #[serde(with = "humantime_serde")]
    pub origin_connect_timeout: Duration,
    /// Time to wait for the origin's response head: 30 s by default, generous because origins
    /// can be slow to render.
    #[serde(with = "humantime_serde")]
    pub origin_response_timeout: Duration,
    /// QUIC idle timeout: a silent peer is dropped after it (keep-alives go every third).
    /// 10 s by default: a dead peer is noticed well before clients give up. At least 100 ms.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Deadline for every member to acknowledge a purge: on loopback or a LAN they answer in
    /// milliseconds, so 5 s (the default) means a member is down or partitioned.
    #[serde(with = "humantime_serde")]
    pub purge_timeout: Duration,
    /// Store responses carrying `Set-Cookie` (off by default: a cookie for one client must
    /// not be replayed to others, whatever Cache-Control says).
    pub cache_set_cookie: bool,
    /// Opt-in grace (Varnish's): how long a response may be served stale while it is
    /// refreshed, and when upstream fails, if the origin sends neither stale-while-revalidate
    /// nor stale-if-error. Off (`"0s"`) by default: RFC 9111 §4.2.4 forbids serving stale
    /// without the origin's or the client's permission while the origin can be reached, and
    /// a stale copy would hide what a revalidation brings.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How long past its lifetime a response may still be served when upstream is
    /// unreachable, times out or answers 5xx, if the origin sent no stale-if-error and nothing
    /// forbids serving it stale (must-revalidate, proxy-revalidate, s-maxage, no-cache): RFC
    /// 9111 §4.2.4 allows a disconnected cache to. 10 s by default, so a short origin outage
    /// does not reach clients; `"0s"` shows every upstream error.
    #[serde(with = "humantime_serde")]
    pub stale_on_error: Duration,
    /// Revalidate when a client sends `Cache-Control: no-cache` / `max-age=0` (off by default,
    /// as CDNs do: otherwise any client can force origin traffic).
    pub honour_client_no_cache: bool,
    /// Largest UDP payload on the cluster's QUIC links, in bytes (1200..=65527). Connections
    /// start at 1,200 and MTU discovery (RFC 8899, probes that need no ICMP) climbs to what
    /// the path carries, up to this: on a 1,500-byte Ethernet path it settles at 1,452 and
    /// the larger probes are simply lost. 6500 by default, so members on one host (loopback)
    /// or on jumbo-frame networks send 16 KiB in 3 datagrams instead of 12 (measured: 1.3-1.6x
    /// the 16 KiB node-tier throughput of 1452). Above 6550 segmentation offload is off
    /// (10 datagrams per system call would pass the kernel's 64 KiB). A member also accepts
    /// datagrams up to this size, and the smaller of the two ends' values wins.
    pub quic_mtu: u16,
    /// Receive and send buffer of the QUIC socket (SO_RCVBUF / SO_SNDBUF). A burst of
    /// datagrams beyond the receive buffer is dropped and resent a round trip later. 0 leaves
    /// the system default; the kernel caps it at net.core.rmem_max / wmem_max, and the size
    /// the socket got is logged at start.
    pub udp_buffer: ByteSize,
}

impl MemberConfig {
    /// The shared defaults, with the four values each tier chooses for itself.
    pub fn new(id: &str, listen: SocketAddr, admin: SocketAddr, capacity: ByteSize) -> Self {
        Self {
            id: id.into(),
            listen,
            admin,
            seeds: vec![],
            origin: "http://127.0.0.1:8080".into(),
            capacity,
            max_object_size: ByteSize(0),
            fill_memory: ByteSize(0),
            eviction: Eviction::TinyLfu,
            store_engine: Engine::Compact,
            replicas: 2,
            admin_token: None,
            tls_dir: None,
            region: String::new(),
            consistency: Consistency::Available,
            origin_connect_timeout: Duration::from_secs(2),
            origin_response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(10),
            purge_timeout: Duration::from_secs(5),
            cache_set_cookie: false,
            grace: Duration::ZERO,
            stale_on_error: Duration::from_secs(10),
            honour_client_no_cache: false,
            quic_mtu: 6500,
            udp_buffer: ByteSize(0),
        }
    }

    /// Checks the shared keys' values serde cannot: the first problem found, naming its key.
    /// Each tier's `validate()` calls it, then checks its own keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.is_empty() {
            return Err(ConfigError::new("id", "must not be empty"));
        }
        if self.capacity.0 == 0 {
            return Err(ConfigError::new("capacity", "must be greater than 0"));
        }
        cdn_http::origin::check_url(&self.origin).map_err(|e| ConfigError::new("origin", e))?;
        if self.replicas == 0 {
            return Err(ConfigError::new("replicas", "must be at least 1"));
        }
        for (key, v) in [
            ("origin_response_timeout", self.origin_response_timeout),
            ("purge_timeout", self.purge_timeout),
        ] {
            if v.is_zero() {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        if !(1200..=65_527).contains(&self.quic_mtu) {
            return Err(ConfigError::new(
                "quic_mtu",
                "must be between 1200 and 65527 (bytes of UDP payload)",
            ));
        }
        if self.idle_timeout < Duration::from_millis(100) {
            return Err(ConfigError::new("idle_timeout", "must be at least 100ms"));
        }
        for s in &self.seeds {
            cdn_net::peers::check_seed(s).map_err(|e| ConfigError::new("seeds", e))?;
        }
        Ok(())
    }

    /// The caching rules this member applies.
    pub fn rules(&self) -> cdn_http::policy::Rules {
        cdn_http::policy::Rules {
            store_set_cookie: self.cache_set_cookie,
            grace: self.grace,
            stale_on_error: self.stale_on_error,
        }
    }

    /// What the fills in flight may hold at once.
    pub fn fill_memory(&self) -> u64 {
        if self.fill_memory.0 == 0 {
            (self.capacity.0 / 4).max(self.max_object())
        } else {
            self.fill_memory.0
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

/// Keys that differ from member to member by design, left out of [`fingerprint`]: who and
/// where the member is (id, addresses, seeds, region) and its secrets and their paths.
const PER_MEMBER: &[&str] = &[
    "id",
    "listen",
    "admin",
    "advertise",
    "seeds",
    "admin_token",
    "tls_dir",
    "region",
    "parent_region",
];

/// A short hash of a member's effective config (a tier's whole `Config`, defaults included),
/// without the keys that differ per member by design ([`PER_MEMBER`]): `config_version` in
/// `/status` and the cluster view, so members of one tier running different settings stand
/// out. 12 hex digits of blake3 over the config as JSON (whose keys serde_json sorts).
pub fn fingerprint(config: &impl Serialize) -> String {
    let mut v = serde_json::to_value(config).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        for k in PER_MEMBER {
            map.remove(*k);
        }
    }
    let bytes = serde_json::to_vec(&v).unwrap_or_default();
    blake3::hash(&bytes).to_hex()[..12].to_string()
}

/// The flags both binaries take, for keys of [`MemberConfig`]: each `main`'s `Cli` has them
/// with `#[command(flatten)]` and puts them over the file and the environment with
/// [`MemberArgs::apply`]. Flags for a tier's own keys stay in its `main`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MemberArgs {
    /// Member identity (a node's is its placement input: keep it stable).
    #[arg(long)]
    pub id: Option<String>,
    /// Address to serve on: an edge's HTTP for clients, a node's QUIC (UDP).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Admin HTTP address.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// A cache node's QUIC address to join through (repeatable).
    #[arg(long = "seed")]
    pub seeds: Vec<String>,
    /// Origin base URL.
    #[arg(long)]
    pub origin: Option<String>,
    /// Store capacity (e.g. 64MiB, 4GiB).
    #[arg(long)]
    pub capacity: Option<ByteSize>,
    /// Owners per key (R).
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Admin API bearer token.
    #[arg(long, env = "CDN_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Directory with the cluster certificates (see `cache-node init-tls`).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Region name.
    #[arg(long)]
    pub region: Option<String>,
    /// available (default) or strict: see README, "Consistency".
    #[arg(long)]
    pub consistency: Option<Consistency>,
}

impl MemberArgs {
    /// Puts the flags that were given over `c`: flags win over the file and the environment.
    pub fn apply(self, c: &mut MemberConfig) {
        fn set<T>(slot: &mut T, flag: Option<T>) {
            if let Some(v) = flag {
                *slot = v;
            }
        }
        set(&mut c.id, self.id);
        set(&mut c.listen, self.listen);
        set(&mut c.admin, self.admin);
        if !self.seeds.is_empty() {
            c.seeds = self.seeds;
        }
        set(&mut c.origin, self.origin);
        set(&mut c.capacity, self.capacity);
        set(&mut c.replicas, self.replicas);
        set(&mut c.admin_token, self.admin_token.map(Some));
        set(&mut c.tls_dir, self.tls_dir.map(Some));
        set(&mut c.region, self.region);
        set(&mut c.consistency, self.consistency);
    }
}

/// What a member does when invalidations may not reach it (the CAP switch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Keep serving cached copies while an invalidation stream is down (bounded by TTL and
    /// the replay on reconnect); a purge reports members it could not reach as `missing`.
    #[default]
    Available,
    /// An edge stops serving entries that came from a node whose invalidation stream is down
    /// (it goes upstream or to the origin instead), and a purge that some member cannot
    /// acknowledge fails (503).
    Strict,
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "available" => Ok(Self::Available),
            "strict" => Ok(Self::Strict),
            _ => Err(format!(
                "`{s}` is not a consistency mode (available, strict)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tier as the binaries write one: the shared section flattened, its own keys beside.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(default)]
    struct Tier {
        #[serde(flatten)]
        member: MemberConfig,
        #[serde(with = "humantime_serde")]
        own_timeout: Duration,
    }

    impl Default for Tier {
        fn default() -> Self {
            Self {
                member: MemberConfig::new(
                    "t-0",
                    SocketAddr::from(([127, 0, 0, 1], 1)),
                    SocketAddr::from(([127, 0, 0, 1], 2)),
                    ByteSize(1 << 20),
                ),
                own_timeout: Duration::from_secs(1),
            }
        }
    }

    #[test]
    fn the_fingerprint_ignores_identity_and_follows_settings() {
        let a = Tier::default();
        let mut b = Tier::default();
        b.member.id = "t-1".into();
        b.member.admin = SocketAddr::from(([10, 0, 0, 1], 9));
        b.member.seeds = vec!["10.0.0.2:4433".into()];
        b.member.admin_token = Some("secret".into());
        b.member.region = "eu".into();
        let fa = fingerprint(&a);
        assert_eq!(fa.len(), 12);
        assert_eq!(fa, fingerprint(&b), "identity and secrets do not count");
        b.member.purge_timeout = Duration::from_secs(9);
        assert_ne!(fa, fingerprint(&b), "a setting does");
        b.member.purge_timeout = a.member.purge_timeout;
        b.own_timeout = Duration::from_secs(2);
        assert_ne!(fa, fingerprint(&b), "so does a tier's own key");
    }

    #[test]
    fn durations_read_with_units_and_bad_ones_name_their_key() {
        let t = parse_toml::<Tier>(
            "purge_timeout = \"2s\"\ngrace = \"0s\"\nidle_timeout = \"1m\"\nown_timeout = \"500ms\"\n",
        )
        .unwrap();
        assert_eq!(t.member.purge_timeout, Duration::from_secs(2));
        assert_eq!(t.member.grace, Duration::ZERO);
        assert_eq!(t.member.idle_timeout, Duration::from_secs(60));
        assert_eq!(t.own_timeout, Duration::from_millis(500));
        // Left out: the tier's default, not a shared one.
        assert_eq!(t.member.id, "t-0");
        assert_eq!(t.member.capacity, ByteSize(1 << 20));
        for (text, key) in [
            ("purge_timeout = \"soon\"\n", "purge_timeout"),
            ("purge_timeout = 5000\n", "purge_timeout"),
            ("own_timeout = \"x\"\n", "own_timeout"),
            ("purge_timeout_ms = 5000\n", "purge_timeout_ms"),
        ] {
            let e = parse_toml::<Tier>(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        let mut t = Tier::default();
        t.member.purge_timeout = Duration::ZERO;
        assert_eq!(t.member.validate().unwrap_err().key, "purge_timeout");
        t.member.purge_timeout = Duration::from_secs(1);
        t.member.idle_timeout = Duration::from_millis(99);
        assert_eq!(t.member.validate().unwrap_err().key, "idle_timeout");
        t.member.idle_timeout = Duration::from_secs(1);
        for bad in [1199, 65_528] {
            t.member.quic_mtu = bad;
            assert_eq!(t.member.validate().unwrap_err().key, "quic_mtu");
        }
    }

    #[test]
    fn flags_replace_only_what_they_give() {
        let mut m = Tier::default().member;
        m.region = "eu".into();
        m.seeds = vec!["a:1".into()];
        MemberArgs {
            id: Some("n7".into()),
            capacity: Some(ByteSize(5)),
            tls_dir: Some("tls".into()),
            ..MemberArgs::default()
        }
        .apply(&mut m);
        assert_eq!(m.id, "n7");
        assert_eq!(m.capacity, ByteSize(5));
        assert_eq!(m.tls_dir, Some(PathBuf::from("tls")));
        assert_eq!(m.region, "eu");
        assert_eq!(m.seeds, vec!["a:1".to_string()]);
    }
}
