//! `loadgen`: HTTP load (closed or open loop, phases, mixed operations) with latency
//! percentiles, hit ratio per tier, errors by kind, JSON and SVG output.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// `println!` that ends the program quietly when stdout is gone (`loadgen ... | head -1`)
/// instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

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
    /// Path template; `{key}` becomes a key number, `{size}` the size of its object.
    #[arg(long, default_value = "/obj/{key}?size={size}")]
    path: String,
    /// Object sizes for `{size}`: one (16KiB) or classes with weights
    /// (1KiB=90,16KiB=9,1MiB=1); a key keeps its size.
    #[arg(long, default_value = "1KiB")]
    sizes: loadgen::Sizes,
    /// Operations with ratios, e.g. get=98,push=1,purge=1: pushes (`PUT /objects<path>`)
    /// and purges (`POST /purge`) go to --admin with --token.
    #[arg(long, default_value = "get=1")]
    mix: loadgen::Mix,
    /// Cache-Control of pushed objects.
    #[arg(long, default_value = "max-age=600")]
    push_cache_control: String,
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
    /// Phases run one after another, each RATE:SECONDS (RATE in requests/s, or `max` for
    /// closed loop), e.g. --phase 1000:10 --phase 2000:10; replaces --rate and --duration.
    #[arg(long = "phase")]
    phases: Vec<Phase>,
    /// Draw the latency by percentile (one curve per phase) and throughput over time here.
    #[arg(long)]
    plot: Option<PathBuf>,
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
    /// origin-stub's address: the report counts the origin requests the load caused (and
    /// --purges republishes the probe objects there).
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
        say!(
            "{requests} requests over {} keys ({:?}):",
            cli.keys,
            cli.dist
        );
        for r in &rows {
            say!(
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
    let phases = if cli.phases.is_empty() {
        vec![Phase {
            rate: cli.rate,
            seconds: cli.duration,
        }]
    } else {
        cli.phases.clone()
    };
    let admin = match (cli.mix.needs_admin(), cli.admin, cli.token.clone()) {
        (false, ..) => None,
        (true, Some(a), Some(t)) => Some((a, t)),
        (true, ..) => anyhow::bail!("--mix with push or purge needs --admin and --token"),
    };
    let mut runs = Vec::new();
    for phase in &phases {
        let live = std::sync::Arc::new(loadgen::Live::default());
        let progress = progress(phase, live.clone());
        let report = loadgen::run(loadgen::Options {
            targets: cli.targets.clone(),
            connections: cli.connections,
            duration: Duration::from_secs_f64(phase.seconds),
            max_requests: cli.requests,
            path: cli.path.clone(),
            keys: cli.keys,
            dist: cli.dist,
            sizes: cli.sizes.clone(),
            mix: cli.mix,
            admin: admin.clone(),
            push_cache_control: cli.push_cache_control.clone(),
            rate: phase.rate,
            h2: cli.h2,
            seed: cli.seed,
            origin: cli.origin,
            live: Some(live),
        })
        .await;
        progress.abort();
        let report = report?;
        let name = phase.to_string();
        if phases.len() > 1 {
            say!("phase {name}:");
        }
        print(&report);
        runs.push((name, report));
    }
    let purge_report = match purge {
        Some(p) => Some(p.await??),
        None => None,
    };
    if let Some(p) = &purge_report {
        say!(
            "purges {} (incomplete {}): visible at every edge p50 {} us, p99 {} us, max {} us; acknowledged p50 {} us, p99 {} us, max {} us",
            p.purges, p.incomplete, p.visible_p50_us, p.visible_p99_us, p.visible_max_us, p.acked_p50_us, p.acked_p99_us, p.acked_max_us
        );
    }
    if let Some(path) = cli.json {
        let phases: Vec<_> = runs
            .iter()
            .map(|(name, r)| serde_json::json!({ "phase": name, "load": r }))
            .collect();
        let load = (runs.len() == 1).then(|| &runs[0].1);
        let v = serde_json::json!({ "load": load, "phases": phases, "purge": purge_report });
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // The picture last, and not fatal: the numbers are already printed and written.
    if let Some(path) = &cli.plot {
        if let Err(e) = loadgen::plot::svg(&runs, path) {
            eprintln!("loadgen: warning: no plot: {e:#}");
        }
    }
    Ok(())
}

/// One phase of a run: a rate (or closed loop) for some seconds.
#[derive(Debug, Clone)]
struct Phase {
    rate: Option<f64>,
    seconds: f64,
}

impl std::str::FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: use RATE:SECONDS, e.g. 2000:10 or max:10");
        let (rate, secs) = s.split_once(':').ok_or_else(bad)?;
        let rate = match rate {
            "max" => None,
            r => Some(r.parse::<f64>().ok().filter(|r| *r > 0.0).ok_or_else(bad)?),
        };
        let seconds = secs
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0)
            .ok_or_else(bad)?;
        Ok(Phase { rate, seconds })
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.rate {
            Some(r) => write!(f, "{r}/s for {}s", self.seconds),
            None => write!(f, "closed loop for {}s", self.seconds),
        }
    }
}

/// A progress bar on a terminal (nothing otherwise), fed from the run's live counters.
fn progress(phase: &Phase, live: std::sync::Arc<loadgen::Live>) -> tokio::task::JoinHandle<()> {
    use std::io::IsTerminal;
    use std::sync::atomic::Ordering;
    let tenths = (phase.seconds * 10.0) as u64;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(tenths)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let started = std::time::Instant::now();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let secs = started.elapsed().as_secs_f64();
            let n = live.requests.load(Ordering::Relaxed);
            let e = live.errors.load(Ordering::Relaxed);
            bar.set_position(((secs * 10.0) as u64).min(tenths));
            bar.set_message(format!(
                "{n} requests, {:.0}/s, {e} errors",
                n as f64 / secs
            ));
        }
    })
}

fn print(r: &loadgen::Report) {
    say!(
        "{} requests in {:.2}s: {:.0} req/s, {:.1} MB/s, errors {}{}",
        r.requests,
        r.seconds,
        r.rps,
        r.bytes_per_sec / 1e6,
        r.errors,
        if r.errors_by_kind.is_empty() {
            String::new()
        } else {
            format!(" {:?}", r.errors_by_kind)
        }
    );
    say!(
        "latency us: p50 {} p90 {} p99 {} p99.9 {} max {}",
        r.p50_us,
        r.p90_us,
        r.p99_us,
        r.p999_us,
        r.max_us
    );
    let t = &r.tiers;
    say!(
        "answered by: edge {:.3}, node tier {:.3}, origin {:.3}{}",
        t.edge_hit,
        t.node_hit,
        t.miss,
        if t.unlabelled > 0.0 {
            format!(", unlabelled (no X-Cache) {:.3}", t.unlabelled)
        } else {
            String::new()
        }
    );
    if let Some(n) = r.origin_requests {
        say!("origin requests: {n}");
    }
    if r.ops.len() > 1 {
        for (op, o) in &r.ops {
            say!(
                "  {op}: {} requests, errors {}, p50 {} us, p99 {} us, max {} us",
                o.requests,
                o.errors,
                o.p50_us,
                o.p99_us,
                o.max_us
            );
        }
    }
}
