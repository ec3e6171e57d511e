//! Runtime pieces shared by edges and cache nodes.
//!
//! Layout:
//! - [`config`]: TOML loading with errors that name the key, byte sizes, the exit-2 convention.
//! - [`http`]: body type, hop-by-hop header removal, the HTTP accept loop with graceful shutdown.
//! - [`policy`]: the one place HTTP cache policy is evaluated (both tiers call it).
//! - [`purge`]: what an invalidation matches, and the log that closes the purge/fill race.
//! - [`push`]: pushed objects: admin input, wire transfer, freshness check.
//! - [`store`]: the byte-bounded store of complete responses ([`store::Entry`]), on moka or on
//!   [`compact`], our own engine with a smaller cost per entry.
//! - [`fill`]: coalescing of concurrent misses into one upstream fetch, streamed to every
//!   waiter while it fills (read-while-writer).
//! - [`read_path`]: the one read path both tiers compose: store, freshness, coalesced fill,
//!   then their sources in order (cache nodes, the origin).
//! - [`origin`]: the HTTP client to the origin.
//! - [`peers`]: pooled QUIC connections to cache nodes, `Hello`, member list, inbound streams.
//! - [`range`]: byte-range answers (206/416, If-Range) from stored bodies.
//! - [`quic`]: frame I/O over quinn streams.
//! - [`tls`]: cluster CA, member certificates, mutual-TLS QUIC configurations.
//! - [`admin`]: the admin HTTP API every member serves (`/healthz`, `/status`, `/metrics`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod compact;
pub mod config;
pub mod entry;
pub mod fill;
pub mod http;
pub mod membership;
pub mod origin;
pub mod peers;
pub mod policy;
pub mod purge;
pub mod push;
pub mod quic;
pub mod range;
pub mod read_path;
pub mod store;
pub mod tls;
pub mod upstream;

/// Installs the ring crypto provider as rustls' process default. Configs built here pass the
/// provider explicitly; this guards any library that asks rustls for the default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Sets up `tracing` from `RUST_LOG` (default `info`), as text or, with
/// `CDN_LOG_FORMAT=json`, one JSON object per line. Safe to call more than once. An unknown
/// format is a config error: named, and the process exits 2.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("CDN_LOG_FORMAT").as_deref() {
        Err(_) | Ok("") | Ok("text") => {
            let _ = builder.try_init();
        }
        Ok("json") => {
            let _ = builder.json().with_current_span(false).try_init();
        }
        Ok(other) => {
            eprintln!(
                "error: invalid environment `CDN_LOG_FORMAT`: `{other}` is not `text` or `json`"
            );
            std::process::exit(2);
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
