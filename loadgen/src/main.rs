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
    #[arg(long = "target", required_unless_present = "hit_ratio")]
    targets: Vec<SocketAddr>,
    /// No network: replay --requests keys (--keys, --dist) through the store's eviction
    /// policies (TinyLFU and LRU) at 0.1%, 1% and 10% capacity and print the hit ratios.
    #[arg(long)]
    hit_ratio: bool,
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
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1)]
    keys: u64,
    /// Key distribution: uniform, seq (every key in turn), zipf:S (e.g. zipf:0.99) or
    /// hot:KEYS:TRAFFIC (hot:0.01:0.9).
    #[arg(long, default_value = "uniform")]
    dist: loadgen::Dist,
    /// Open loop at this many requests/s in total (coordinated omission corrected); default:
    /// closed loop, each connection sending as fast as answers come back.
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP/2 with prior knowledge.
    #[arg(long)]
    h2: bool,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also measure purge propagation: purges to send while the load runs.
    #[arg(long, default_value_t = 0)]
    purges: usize,
    /// Admin address that accepts the purges.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Admin bearer token.
    #[arg(long, env = "CDN_ADMIN_TOKEN")]
    token: Option<String>,
    /// origin-stub address (republished before each purge).
    #[arg(long)]
    origin: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.hit_ratio {
        let requests = cli.requests.unwrap_or(1_000_000);
        let rows =
            loadgen::hit_ratios(cli.keys, cli.dist, requests, &[0.001, 0.01, 0.1], cli.seed)?;
        println!(
            "{requests} requests over {} keys ({:?}):",
            cli.keys, cli.dist
        );
        for r in &rows {
            println!(
                "  {:>8} capacity {:>7} ({:>5.1}%): hit ratio {:.4}",
                r.policy,
                r.capacity,
                r.fraction * 100.0,
                r.hit_ratio
            );
        }
        if let Some(path) = cli.json {
            std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)?;
        }
        return Ok(());
    }
    let purge = if cli.purges > 0 {
        let (Some(admin), Some(token), Some(origin)) = (cli.admin, cli.token.clone(), cli.origin)
        else {
            anyhow::bail!("--purges needs --admin, --token and --origin");
        };
        let opts = loadgen::PurgeOptions {
            edges: cli.targets.clone(),
            admin,
            token,
            origin,
            purges: cli.purges,
            path: "/purge-probe/{i}?size=1024&cc=max-age%3D600".into(),
        };
        Some(tokio::spawn(loadgen::purge_propagation(opts)))
    } else {
        None
    };
    let report = loadgen::run(loadgen::Options {
        targets: cli.targets,
        connections: cli.connections,
        duration: Duration::from_secs_f64(cli.duration),
        max_requests: cli.requests,
        path: cli.path,
        keys: cli.keys,
        dist: cli.dist,
        rate: cli.rate,
        h2: cli.h2,
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
    let purge_report = match purge {
        Some(p) => Some(p.await??),
        None => None,
    };
    if let Some(p) = &purge_report {
        println!(
            "purges {} (incomplete {}): visible at every edge p50 {} us, p99 {} us, max {} us; acknowledged p50 {} us, p99 {} us, max {} us",
            p.purges, p.incomplete, p.visible_p50_us, p.visible_p99_us, p.visible_max_us, p.acked_p50_us, p.acked_p99_us, p.acked_max_us
        );
    }
    if let Some(path) = cli.json {
        let v = serde_json::json!({ "load": report, "purge": purge_report });
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(())
}
