//! `cdn-cluster`: origin-stub + cache nodes + edges on 127.0.0.1, in the foreground.

use cdn_cluster::{Cluster, ClusterConfig};
use cdn_core::config::{parse_args, ByteSize};
use clap::Parser;

// Caches churn through objects: glibc's allocator keeps much of what is freed, so resident
// memory drifts far above the configured capacity (measured in docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs the whole CDN on one machine until Ctrl-C or SIGTERM.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Front this origin instead of the built-in origin-stub.
    #[arg(long)]
    origin: Option<String>,
    /// Cache nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Edges.
    #[arg(long, default_value_t = 2)]
    edges: usize,
    /// Owners per key.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Edge i serves clients on P+i.
    #[arg(long, default_value_t = 8000)]
    edge_port: u16,
    /// Edge i's admin API on A+i; cache node j's on A+50+j.
    #[arg(long, default_value_t = 9000)]
    admin_port: u16,
    /// Admin bearer token (default: random, printed).
    #[arg(long, env = "CDN_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Store capacity per cache node.
    #[arg(long, default_value = "256MiB")]
    capacity: ByteSize,
    /// L1 capacity per edge.
    #[arg(long, default_value = "64MiB")]
    edge_capacity: ByteSize,
}

fn random_token() -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

fn main() -> anyhow::Result<()> {
    cdn_http::server_runtime()
        .map_err(|e| anyhow::anyhow!("starting the runtime: {e}"))?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    cdn_http::init_tracing();
    let cli: Cli = parse_args();
    let bad = |key: &str, msg: &str| -> ! { cdn_core::config::ConfigError::new(key, msg).exit() };
    if cli.nodes == 0 {
        bad("--nodes", "must be at least 1");
    }
    if cli.edges == 0 {
        bad("--edges", "must be at least 1");
    }
    if cli.replicas == 0 {
        bad("--replicas", "must be at least 1");
    }
    let mut cfg = ClusterConfig {
        origin: cli.origin,
        nodes: cli.nodes,
        edges: cli.edges,
        replicas: cli.replicas,
        edge_port: cli.edge_port,
        admin_port: cli.admin_port,
        admin_token: cli.admin_token.unwrap_or_else(random_token),
        ..ClusterConfig::default()
    };
    cfg.node.member.capacity = cli.capacity;
    cfg.edge.member.capacity = cli.edge_capacity;
    cdn_http::log_runtime();
    cdn_http::raise_open_file_limit();
    let cluster = Cluster::start(cfg).await?;
    println!("cdn-cluster is up");
    if let Some(s) = &cluster.stub {
        println!(
            "  origin-stub   http://{}   (counts: http://{}/_stub/stats)",
            s.addr, s.addr
        );
    } else {
        println!("  origin        {}", cluster.origin_url);
    }
    for n in cluster.nodes.iter().flatten() {
        println!(
            "  {}        quic={}  admin=http://{}",
            n.id(),
            n.quic_addr,
            n.admin_addr
        );
    }
    for e in &cluster.edges {
        println!(
            "  {}        http://{}  admin=http://{}",
            e.edge.config().member.id,
            e.http_addr,
            e.admin_addr
        );
    }
    println!("  admin token   {}", cluster.admin_token);
    if let Some(e) = cluster.edges.first() {
        let a = e.http_addr;
        println!();
        println!("try:");
        println!("  curl -si 'http://{a}/hello?size=64&ct=text/plain' | grep -iE 'x-cache|age|content'   # MISS, then HIT");
        println!("  curl -s  'http://{a}/big?size=64MiB' | wc -c");
        println!("  curl -s  http://{}/status", e.admin_addr);
        println!(
            "  open     http://{}/cluster.html   # every member on one page (JSON: /cluster)",
            e.admin_addr
        );
        println!("  curl -s  http://{}/metrics", e.admin_addr);
    }
    println!("Ctrl-C stops everything.");
    cdn_http::shutdown_signal().await;
    println!("shutting down");
    cluster.stop().await;
    Ok(())
}
