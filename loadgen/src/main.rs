//! `loadgen`: closed-loop HTTP load with latency percentiles and hit ratio.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Load an edge (or several) and report throughput, latency and hit ratio.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Edge address (repeatable; connections are spread round-robin).
    #[arg(long = "target", required = true)]
    targets: Vec<SocketAddr>,
    /// Concurrent keep-alive connections.
    #[arg(long, short = 'c', default_value_t = 32)]
    connections: usize,
    /// Seconds to run.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Path template; `{key}` becomes a key number.
    #[arg(long, default_value = "/obj/{key}?size=1024")]
    path: String,
    /// Number of distinct keys (uniform).
    #[arg(long, default_value_t = 1)]
    keys: u64,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = loadgen::run(loadgen::Options {
        targets: cli.targets,
        connections: cli.connections,
        duration: Duration::from_secs_f64(cli.duration),
        max_requests: cli.requests,
        path: cli.path,
        keys: cli.keys,
        seed: cli.seed,
    })
    .await?;
    println!(
        "{} requests in {:.2}s: {:.0} req/s, {:.1} MB/s, errors {}, edge hit ratio {:.3}",
        report.requests,
        report.seconds,
        report.rps,
        report.bytes_per_sec / 1e6,
        report.errors,
        report.edge_hit_ratio
    );
    println!(
        "latency us: p50 {} p90 {} p99 {} p99.9 {} max {}",
        report.p50_us, report.p90_us, report.p99_us, report.p999_us, report.max_us
    );
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
