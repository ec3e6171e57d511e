//! What every long-running binary does at start and stop: logging, the open-file limit,
//! and the signals that end it.

/// Raises the soft open-file limit to the hard one, as nginx's `worker_rlimit_nofile` does:
/// every client connection, QUIC link and origin connection takes a descriptor, and the soft
/// default (often 1,024) is far below what a server is allowed. Logs what it did; the
/// HTTP connection budget is computed under the result.
pub fn raise_open_file_limit() {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft);
    match (before, rlimit::increase_nofile_limit(u64::MAX)) {
        (Ok(before), Ok(after)) if after > before => {
            tracing::info!(
                before,
                after,
                "raised the open-file limit to the hard limit"
            )
        }
        (Ok(soft), Ok(_)) => tracing::info!(limit = soft, "open-file limit"),
        (_, Err(e)) | (Err(e), _) => {
            tracing::warn!(error = %e, "could not read or raise the open-file limit")
        }
    }
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

/// The runtime a server binary runs on: tokio's multi-threaded scheduler, one worker per
/// core this process may use (`TOKIO_WORKER_THREADS` overrides), with the LIFO slot off.
///
/// Why the LIFO slot is off: with it, a task woken by the one running is polled next, ahead
/// of everything queued. A QUIC connection's driver is woken by every stream write, so it ran
/// after each response and sent that response alone: 1.63 UDP datagrams per request on the
/// miss-at-the-edge path. Queued behind the other ready tasks it finds many responses
/// written and sends them together (GSO): 0.31 datagrams per request, and 20-25 % more
/// requests per second for the edge and node pair (docs/BENCHMARKS.md). Turning it off is an
/// unstable tokio setting, enabled by `--cfg tokio_unstable` in `.cargo/config.toml`; a build
/// without that flag (e.g. `RUSTFLAGS` set in the environment, which replaces it) gets the
/// default scheduler and says so in the log.
pub fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    #[cfg(tokio_unstable)]
    b.disable_lifo_slot();
    b.build()
}

/// Logs the scheduler [`server_runtime`] built (called once logging is set up).
pub fn log_runtime() {
    let workers = tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers())
        .unwrap_or(0);
    if cfg!(tokio_unstable) {
        tracing::info!(workers, "runtime: multi-threaded, LIFO slot off");
    } else {
        tracing::warn!(
            workers,
            "runtime: built without --cfg tokio_unstable, LIFO slot on (slower QUIC batching)"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn builds_carry_the_flag_the_server_runtime_needs() {
        // `.cargo/config.toml` sets it; a build without it runs with the LIFO slot on, so the
        // tests of such a build do not compile.
        const {
            assert!(
                cfg!(tokio_unstable),
                "built without --cfg tokio_unstable (.cargo/config.toml)"
            )
        };
        let rt = super::server_runtime().expect("runtime");
        assert!(rt.metrics().num_workers() >= 1);
    }
}
