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
