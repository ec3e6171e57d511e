//! `edge`: one edge of the CDN.

use std::path::PathBuf;

use cdn_core::config::{load_toml, parse_args, ConfigError, MemberArgs};
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
// The shared flags' help, said for an edge.
#[command(mut_arg("id", |a| a.help("Edge identity")))]
#[command(mut_arg("listen", |a| a.help("HTTP address for clients")))]
#[command(mut_arg("capacity", |a| a.help("L1 capacity (e.g. 64MiB)")))]
#[command(mut_arg("replicas", |a| a.help("Owners tried per key")))]
struct Cli {
    /// TOML config file; flags win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the config and exit.
    #[arg(long)]
    check_config: bool,
    /// The flags every member takes (identity, addresses, seeds, origin, store, TLS...).
    #[command(flatten)]
    member: MemberArgs,
}

fn config_from(cli: Cli) -> Result<Config, ConfigError> {
    let c = match &cli.config {
        Some(p) => load_toml::<Config>(p)?,
        None => Config::default(),
    };
    // File, then environment (`CDN_<KEY>`), then flags.
    let mut c = cdn_core::config::apply_env(c)?;
    cli.member.apply(&mut c.member);
    c.validate()?;
    if c.member.tls_dir.is_none() {
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
    let tls_dir = config.member.tls_dir.clone().unwrap_or_default();
    let tls = TlsMaterial::load(&tls_dir)
        .unwrap_or_else(|e| ConfigError::new("tls_dir", e.to_string()).exit());
    if check_only {
        println!("config ok");
        return Ok(());
    }
    cdn_core::raise_open_file_limit();
    let http = cdn_core::http::listen(config.member.listen)
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.member.listen))?;
    let admin = cdn_core::http::listen(config.member.admin)
        .map_err(|e| anyhow::anyhow!("binding admin {}: {e}", config.member.admin))?;
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
