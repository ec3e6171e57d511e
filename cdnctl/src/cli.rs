//! The command line: global flags (which member, which token) and one struct per subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};

/// What `--help` ends with.
const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  the member answered with a server error, or something else failed
  2  bad input: a usage error, or a request the member refused as malformed (400, 413, 422)
  3  the member could not be reached (connection refused, no answer within --timeout)
  4  the member refused the token (401/403): set CDN_ADMIN_TOKEN or pass --token
  5  accepted but not done everywhere: a purge or push some member did not acknowledge,
     a prewarmed URL that was not stored

Errors are one line on stderr naming what failed.";

/// The operator's command line for the CDN: purges, pushes, prewarms, a member's status and a
/// live view of the cluster, through any member's admin API.
#[derive(Debug, Parser)]
#[command(name = "cdnctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Admin address (HOST:PORT) of the member to talk to: any edge or cache node. The default
    /// is an edge's default admin address, edge-0's in `cdn-cluster`.
    #[arg(
        long,
        global = true,
        env = "CDN_ADMIN",
        default_value = "127.0.0.1:9000",
        value_parser = admin_addr
    )]
    pub admin: String,
    /// Bearer token for purge, push and prewarm.
    #[arg(long, global = true, env = "CDN_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Give up on an answer after this long (a purge waits for every member to acknowledge,
    /// up to the cluster's purge_timeout, 5 s by default).
    #[arg(long, global = true, default_value = "30s", value_parser = crate::fmt::duration)]
    pub timeout: Duration,
    /// Give up on connecting after this long.
    #[arg(long, global = true, default_value = "3s", value_parser = crate::fmt::duration)]
    pub connect_timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Invalidate objects on every member (by URL, prefix, tag or all) and report who
    /// acknowledged.
    Purge(PurgeArgs),
    /// Store an object on its owners (and every edge) without asking the origin.
    Push(PushArgs),
    /// Have the owners fetch URLs from the origin now (and push them into every edge).
    Prewarm(PrewarmArgs),
    /// The member's counters, store and the cluster members it knows.
    Status(StatusArgs),
    /// A live view of the whole cluster, one line per member (every member's own numbers,
    /// gathered by the contacted member), refreshed in place (q quits).
    Top(TopArgs),
}

/// `cdnctl purge`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).multiple(true)
    .args(["urls", "prefix", "tag", "all"])))]
pub struct PurgeArgs {
    /// Exact URLs: paths with their query as clients request them (`/a.png?v=2`), or full URLs.
    pub urls: Vec<String>,
    /// Everything under this path prefix (repeatable).
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Vec<String>,
    /// Everything carrying this surrogate key (`Surrogate-Key` from the origin or a push;
    /// repeatable).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Everything.
    #[arg(long)]
    pub all: bool,
    /// Mark stale (served while revalidating) instead of removing.
    #[arg(long)]
    pub soft: bool,
    /// Print the member's JSON report instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// `cdnctl push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The object's URL: the path with query clients will request, or a full URL.
    pub path: String,
    /// The body, from this file (`-`: standard input).
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    /// Its Content-Type.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Cacheable for this many seconds (sends `Cache-Control: max-age=N`).
    #[arg(long, value_name = "SECONDS", conflicts_with = "cache_control")]
    pub max_age: Option<u64>,
    /// Its Cache-Control, whole (a push needs a lifetime and must not be private).
    #[arg(long, value_name = "VALUE")]
    pub cache_control: Option<String>,
    /// A surrogate key to purge it by later (repeatable; sent as `Surrogate-Key`).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Any other stored field, `Name: value` (ETag, Last-Modified, Expires, Vary, …;
    /// repeatable).
    #[arg(long, short = 'H', value_name = "NAME: VALUE")]
    pub header: Vec<String>,
    /// `all`: also put it into every edge's L1.
    #[arg(long, value_name = "all", value_parser = ["all"])]
    pub edges: Option<String>,
    /// Print the member's JSON report instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// `cdnctl prewarm`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).multiple(true).args(["urls", "from"])))]
pub struct PrewarmArgs {
    /// URLs: paths with query, or full URLs.
    pub urls: Vec<String>,
    /// Also read URLs from this file, one per line (`-`: standard input; blank lines and
    /// lines starting with # are skipped).
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Also push each object into every edge's L1.
    #[arg(long)]
    pub edges: bool,
    /// Print the member's JSON answer instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// `cdnctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the member's `/status` JSON as it came.
    #[arg(long)]
    pub json: bool,
}

/// `cdnctl top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between refreshes.
    #[arg(long, short = 'n', default_value = "1s", value_parser = crate::fmt::duration)]
    pub interval: Duration,
    /// Print one frame and exit (for scripts).
    #[arg(long)]
    pub once: bool,
}

/// An admin address as `HOST:PORT` (an `http://` prefix and a trailing `/` are dropped).
fn admin_addr(s: &str) -> Result<String, String> {
    let a = s.trim();
    let a = a.strip_prefix("http://").unwrap_or(a).trim_end_matches('/');
    let ok = a
        .parse::<http::uri::Authority>()
        .is_ok_and(|auth| auth.port_u16().is_some() && !a.contains('@'));
    if ok {
        Ok(a.to_string())
    } else {
        Err(format!("`{s}` is not HOST:PORT (e.g. 127.0.0.1:9000)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_need_a_port() {
        assert_eq!(admin_addr("127.0.0.1:9000").unwrap(), "127.0.0.1:9000");
        assert_eq!(admin_addr("http://edge-0:9000/").unwrap(), "edge-0:9000");
        assert!(admin_addr("127.0.0.1").is_err());
        assert!(admin_addr("https://x:1").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
