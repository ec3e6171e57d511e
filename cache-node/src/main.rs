//! `cache-node`: one cache node, or `cache-node init-tls --dir DIR`.

use std::net::SocketAddr;
use std::path::PathBuf;

use cache_node::Config;
use cdn_core::config::{load_toml, parse_args, ByteSize, ConfigError};
use cdn_core::store::{Engine, Eviction};
use cdn_core::tls::TlsMaterial;
use clap::{Parser, Subcommand};

// A cache churns through objects: glibc's allocator keeps much of what is freed, so a full
// store's resident memory drifts far above its capacity (measured in docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokio_util::sync::CancellationToken;

/// A cache node of the CDN cluster.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// TOML config file; flags win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the config and exit.
    #[arg(long)]
    check_config: bool,
    /// Node identity (placement input; keep it stable).
    #[arg(long)]
    id: Option<String>,
    /// QUIC (UDP) address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// QUIC address to advertise when --listen is a wildcard (e.g. the pod IP).
    #[arg(long, env = "CDN_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// Admin HTTP address.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Another node's QUIC address (repeatable).
    #[arg(long = "seed")]
    seeds: Vec<String>,
    /// Origin base URL.
    #[arg(long)]
    origin: Option<String>,
    /// Store capacity (e.g. 256MiB).
    #[arg(long)]
    capacity: Option<ByteSize>,
    /// Owners per key (pushes are stored on this many nodes).
    #[arg(long)]
    replicas: Option<usize>,
    /// Eviction policy: tiny-lfu or lru.
    #[arg(long)]
    eviction: Option<Eviction>,
    /// Store engine: moka or compact.
    #[arg(long)]
    store_engine: Option<Engine>,
    /// Admin API bearer token.
    #[arg(long, env = "CDN_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Directory with the cluster certificates (see `init-tls`).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Region name.
    #[arg(long)]
    region: Option<String>,
    /// Region whose nodes to ask before the origin (tiered cache).
    #[arg(long)]
    parent_region: Option<String>,
    /// available (default) or strict: see README, "Consistency".
    #[arg(long)]
    consistency: Option<cdn_core::config::Consistency>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a cluster CA and a member certificate into DIR.
    InitTls {
        /// Directory to create.
        #[arg(long)]
        dir: PathBuf,
    },
}

fn config_from(cli: Cli) -> Result<Config, ConfigError> {
    let c = match &cli.config {
        Some(p) => load_toml::<Config>(p)?,
        None => Config::default(),
    };
    // File, then environment (`CDN_<KEY>`), then flags.
    let mut c = cdn_core::config::apply_env(c)?;
    if let Some(v) = cli.id {
        c.id = v;
    }
    if let Some(v) = cli.listen {
        c.listen = v;
    }
    if let Some(v) = cli.admin {
        c.admin = v;
    }
    if let Some(v) = cli.advertise {
        c.advertise = Some(v);
    }
    if !cli.seeds.is_empty() {
        c.seeds = cli.seeds;
    }
    if let Some(v) = cli.origin {
        c.origin = v;
    }
    if let Some(v) = cli.capacity {
        c.capacity = v;
    }
    if let Some(v) = cli.eviction {
        c.eviction = v;
    }
    if let Some(v) = cli.store_engine {
        c.store_engine = v;
    }
    if let Some(v) = cli.replicas {
        c.replicas = v;
    }
    if let Some(v) = cli.admin_token {
        c.admin_token = Some(v);
    }
    if let Some(v) = cli.tls_dir {
        c.tls_dir = Some(v);
    }
    if let Some(v) = cli.region {
        c.region = v;
    }
    if let Some(v) = cli.parent_region {
        c.parent_region = Some(v);
    }
    if let Some(v) = cli.consistency {
        c.consistency = v;
    }
    c.validate()?;
    if c.tls_dir.is_none() {
        return Err(ConfigError::new(
            "tls_dir",
            "required: create one with `cache-node init-tls --dir DIR`",
        ));
    }
    Ok(c)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cdn_core::init_tracing();
    cdn_core::install_crypto_provider();
    let mut cli: Cli = parse_args();
    if let Some(Cmd::InitTls { dir }) = cli.cmd.take() {
        cdn_core::tls::init_dir(&dir).map_err(|e| anyhow::anyhow!("init-tls: {e}"))?;
        println!(
            "wrote cluster CA and member certificate to {}",
            dir.display()
        );
        return Ok(());
    }
    let check_only = cli.check_config;
    let config = config_from(cli).unwrap_or_else(|e| e.exit());
    let tls_dir = config.tls_dir.clone().unwrap_or_default();
    let tls = TlsMaterial::load(&tls_dir)
        .unwrap_or_else(|e| ConfigError::new("tls_dir", e.to_string()).exit());
    if check_only {
        println!("config ok");
        return Ok(());
    }
    cdn_core::raise_open_file_limit();
    let udp = std::net::UdpSocket::bind(config.listen)
        .map_err(|e| anyhow::anyhow!("binding QUIC {}: {e}", config.listen))?;
    let admin = cdn_core::http::listen(config.admin)
        .map_err(|e| anyhow::anyhow!("binding admin {}: {e}", config.admin))?;
    let shutdown = CancellationToken::new();
    let handle = cache_node::start(config, &tls, udp, admin, shutdown.clone()).await?;
    println!(
        "cache-node {} quic={} admin=http://{}",
        handle.id(),
        handle.quic_addr,
        handle.admin_addr
    );
    cdn_core::shutdown_signal().await;
    handle.stop().await;
    Ok(())
}
