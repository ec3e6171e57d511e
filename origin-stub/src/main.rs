//! `origin-stub`: see the library docs for the query parameters.

use std::net::SocketAddr;
use std::path::PathBuf;

use cdn_http::config::{load_toml, parse_args, ByteSize};
use clap::Parser;
use origin_stub::{Config, OriginStub};
use tokio_util::sync::CancellationToken;

/// A configurable HTTP origin with deterministic bodies, for demos and tests.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML config file (flags win over it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Cache-Control for responses whose query sets none.
    #[arg(long)]
    cache_control: Option<String>,
    /// Body size for responses whose query sets none.
    #[arg(long)]
    size: Option<ByteSize>,
    /// Delay before every response head, in milliseconds.
    #[arg(long)]
    latency_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cdn_http::init_tracing();
    let cli: Cli = parse_args();
    let mut config = match &cli.config {
        Some(p) => load_toml::<Config>(p).unwrap_or_else(|e| e.exit()),
        None => Config::default(),
    };
    if let Some(v) = cli.listen {
        config.listen = v;
    }
    if let Some(v) = cli.cache_control {
        config.cache_control = v;
    }
    if let Some(v) = cli.size {
        config.size = v;
    }
    if let Some(v) = cli.latency_ms {
        config.latency_ms = v;
    }
    cdn_http::raise_open_file_limit();
    let listener = cdn_http::listen(config.listen)
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.listen))?;
    println!("origin-stub listening on http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        cdn_http::shutdown_signal().await;
        s.cancel();
    });
    OriginStub::new(config).run(listener, shutdown).await;
    Ok(())
}
