//! `edge`: one edge of the CDN.

use cdn_core::config::parse_args;
use cdn_core::launch::{load_or_exit, ConfigArgs};
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
    /// Where the config comes from (file, `--check-config`) and the flags every member takes.
    #[command(flatten)]
    launch: ConfigArgs,
}

fn main() -> anyhow::Result<()> {
    cdn_http::server_runtime()
        .map_err(|e| anyhow::anyhow!("starting the runtime: {e}"))?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    cdn_http::init_tracing();
    cdn_net::tls::install_crypto_provider();
    let cli: Cli = parse_args();
    let check_only = cli.launch.check_config;
    let (config, tls) = load_or_exit::<Config>(cli.launch, |_| {});
    if check_only {
        println!("config ok");
        return Ok(());
    }
    cdn_http::log_runtime();
    cdn_http::raise_open_file_limit();
    let http = cdn_http::listen(config.member.listen)
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.member.listen))?;
    let admin = cdn_http::listen(config.member.admin)
        .map_err(|e| anyhow::anyhow!("binding admin {}: {e}", config.member.admin))?;
    let shutdown = CancellationToken::new();
    let handle = edge::start(config, &tls, http, admin, shutdown.clone()).await?;
    println!(
        "edge http=http://{} admin=http://{}",
        handle.http_addr, handle.admin_addr
    );
    cdn_http::shutdown_signal().await;
    handle.stop().await;
    Ok(())
}
