//! `edge`: one edge of the CDN.

use std::net::SocketAddr;
use std::path::PathBuf;

use cdn_core::config::{load_toml, parse_args, ByteSize, ConfigError};
use cdn_core::tls::TlsMaterial;
use clap::Parser;
use edge::Config;
use tokio_util::sync::CancellationToken;

// Caches churn through objects: glibc's allocator keeps much of what is freed, so resident
// memory drifts far above the configured capacity (measured in docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An edge of the CDN: HTTP/1.1 and HTTP/2 to clients, QUIC to cache nodes.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML config file; flags win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the config and exit.
    #[arg(long)]
    check_config: bool,
    /// Edge identity.
    #[arg(long)]
    id: Option<String>,
    /// HTTP address for clients.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin HTTP address.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// A cache node's QUIC address (repeatable).
    #[arg(long = "seed")]
    seeds: Vec<String>,
    /// Origin base URL.
    #[arg(long)]
    origin: Option<String>,
    /// L1 capacity (e.g. 64MiB).
    #[arg(long)]
    capacity: Option<ByteSize>,
    /// Owners tried per key.
    #[arg(long)]
    replicas: Option<usize>,
    /// Admin API bearer token.
    #[arg(long, env = "CDN_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Directory with the cluster certificates.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Region name.
    #[arg(long)]
    region: Option<String>,
    /// available (default) or strict: see README, "Consistency".
    #[arg(long)]
    consistency: Option<cdn_core::config::Consistency>,
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
    if !cli.seeds.is_empty() {
        c.seeds = cli.seeds;
    }
    if let Some(v) = cli.origin {
        c.origin = v;
    }
    if let Some(v) = cli.capacity {
        c.capacity = v;
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
    let cli: Cli = parse_args();
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
    let http = cdn_core::http::listen(config.listen)
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.listen))?;
    let admin = cdn_core::http::listen(config.admin)
        .map_err(|e| anyhow::anyhow!("binding admin {}: {e}", config.admin))?;
    let shutdown = CancellationToken::new();
    let handle = edge::start(config, &tls, http, admin, shutdown.clone()).await?;
    println!(
        "edge http=http://{} admin=http://{}",
        handle.http_addr, handle.admin_addr
    );
    cdn_core::shutdown_signal().await;
    handle.stop().await;
    Ok(())
}
