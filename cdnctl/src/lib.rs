//! `cdnctl`: the operator's command line for the CDN, as varnishadm and varnishstat are for
//! Varnish. It talks to one member's admin API (any edge or cache node, `--admin HOST:PORT`
//! or `CDN_ADMIN`; default `127.0.0.1:9000`, an edge's default admin address and edge-0's in
//! `cdn-cluster`), with the bearer token from `CDN_ADMIN_TOKEN` or `--token`:
//!
//! ```sh
//! cdnctl purge '/hello?size=64&ct=text/plain'      # exact URL (path and query, or a full URL)
//! cdnctl purge --prefix /img/ --tag product-42     # by prefix and surrogate key; --all, --soft
//! cdnctl push /promo.html --file promo.html --content-type text/html --max-age 600 --edges all
//! cdnctl prewarm /a /b --edges                     # or --from urls.txt (- for stdin)
//! cdnctl status                                    # counters, store, known nodes; --json
//! cdnctl top                                       # every member, live; q quits; --once for scripts
//! ```
//!
//! Purges and pushes print who acknowledged and who is missing, and exit 5 when not every
//! member did. Errors are one line on stderr; exit codes: 1 server error or other, 2 bad input,
//! 3 member unreachable, 4 token refused, 5 incomplete (see `cdnctl --help`).
//!
//! `top` shows one line per member of the whole cluster, from the contacted member's
//! `/cluster` (which it gathers over the cluster's links): state and link, requests,
//! requests/s, hit ratio, origin offload (requests not sent to the origin), bytes out, entries,
//! evictions, purge latency and config version, and totals. A member that does not answer is
//! shown with the numbers it last reported, and the frame says so.
//!
//! Layout (each module uses only those before it):
//! - `fmt`: paths from URLs, durations, byte sizes, ratios, tables (pure).
//! - `doc`: what is read from a `/status` document (pure).
//! - `client`: the admin API client (hyper) and the errors with their exit codes.
//! - `cli`: the command line (clap derive).
//! - `ops`: purge, push, prewarm.
//! - `status`: `cdnctl status`.
//! - `term`: the terminal for `top` (keys without echo, alternate screen, restored on drop).
//! - `top`: `cdnctl top`: fetching `/cluster`, the rows and frames (pure), the refresh loop.
//! - `app`: runs a parsed command line.
#![forbid(unsafe_code)]

mod app;
mod cli;
mod client;
mod doc;
mod fmt;
mod ops;
mod status;
mod term;
mod top;

pub use app::run;
pub use cli::Cli;
pub use client::{exit, Error};
