//! `cache-node`: one cache node, or `cache-node init-tls --dir DIR`.

use std::net::SocketAddr;
use std::path::PathBuf;

use cache_node::Config;
use cdn_core::config::parse_args;
use cdn_core::launch::{load_or_exit, ConfigArgs};
use cdn_store::{Engine, Eviction};
use clap::{Parser, Subcommand};

// A cache churns through objects: glibc's allocator keeps much of what is freed, so a full
// store's resident memory drifts far above its capacity (measured in docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokio_util::sync::CancellationToken;

/// A cache node of the CDN cluster.
#[derive(Parser)]
#[command(version)]
// The shared flags' help, said for a node.
#[command(mut_arg("id", |a| a.help("Node identity (placement input; keep it stable)")))]
#[command(mut_arg("listen", |a| a.help("QUIC (UDP) address")))]
#[command(mut_arg("seeds", |a| a.help("Another node's QUIC address (repeatable)")))]
#[command(mut_arg("capacity", |a| a.help("Store capacity (e.g. 256MiB)")))]
#[command(mut_arg("replicas", |a| a.help("Owners per key (pushes are stored on this many nodes)")))]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Where the config comes from (file, `--check-config`) and the flags every member takes.
    #[command(flatten)]
    launch: ConfigArgs,
    /// QUIC address to advertise when --listen is a wildcard (e.g. the pod IP).
    #[arg(long, env = "CDN_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// Eviction policy: tiny-lfu or lru.
    #[arg(long)]
    eviction: Option<Eviction>,
    /// Store engine: moka or compact.
    #[arg(long)]
    store_engine: Option<Engine>,
    /// Region whose nodes to ask before the origin (tiered cache).
    #[arg(long)]
    parent_region: Option<String>,
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

fn main() -> anyhow::Result<()> {
    cdn_http::server_runtime()
        .map_err(|e| anyhow::anyhow!("starting the runtime: {e}"))?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    cdn_http::init_tracing();
    cdn_net::tls::install_crypto_provider();
    let mut cli: Cli = parse_args();
    if let Some(Cmd::InitTls { dir }) = cli.cmd.take() {
        cdn_net::tls::init_dir(&dir).map_err(|e| anyhow::anyhow!("init-tls: {e}"))?;
        println!(
            "wrote cluster CA and member certificate to {}",
            dir.display()
        );
        return Ok(());
    }
    let check_only = cli.launch.check_config;
    // The node's own flags go over the file and the environment too.
    let own = |c: &mut Config| {
        if let Some(v) = cli.advertise {
            c.advertise = Some(v);
        }
        if let Some(v) = cli.eviction {
            c.member.eviction = v;
        }
        if let Some(v) = cli.store_engine {
            c.member.store_engine = v;
        }
        if let Some(v) = cli.parent_region {
            c.parent_region = Some(v);
        }
    };
    let (config, tls) = load_or_exit(cli.launch, own);
    if check_only {
        println!("config ok");
        return Ok(());
    }
    cdn_http::log_runtime();
    cdn_http::raise_open_file_limit();
    let udp = std::net::UdpSocket::bind(config.member.listen)
        .map_err(|e| anyhow::anyhow!("binding QUIC {}: {e}", config.member.listen))?;
    let admin = cdn_http::listen(config.member.admin)
        .map_err(|e| anyhow::anyhow!("binding admin {}: {e}", config.member.admin))?;
    let shutdown = CancellationToken::new();
    let handle = cache_node::start(config, &tls, udp, admin, shutdown.clone()).await?;
    println!(
        "cache-node {} quic={} admin=http://{}",
        handle.id(),
        handle.quic_addr,
        handle.admin_addr
    );
    cdn_http::shutdown_signal().await;
    handle.stop().await;
    Ok(())
}
