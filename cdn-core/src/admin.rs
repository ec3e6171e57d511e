//! The admin HTTP API every member serves: `/healthz`, `/status` (JSON), `/metrics`
//! (Prometheus text). Components supply their state through [`AdminState`].

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{full, serve, text, Body, ServerLimits};

/// What a component exposes on its admin port.
pub trait AdminState: Send + Sync + 'static {
    /// The `/status` document.
    fn status(&self) -> serde_json::Value;
    /// Metric samples for `/metrics`.
    fn metrics(&self) -> Vec<Metric>;
}

/// One metric sample.
pub struct Metric {
    /// Metric name, e.g. `cdn_requests_total`.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// Label pairs.
    pub labels: Vec<(&'static str, String)>,
    /// Value.
    pub value: f64,
}

impl Metric {
    /// A counter sample.
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: "counter",
            labels: vec![],
            value: value as f64,
        }
    }

    /// A gauge sample.
    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: "gauge",
            labels: vec![],
            value: value as f64,
        }
    }

    /// Adds a label.
    pub fn label(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.labels.push((k, v.into()));
        self
    }
}

/// Renders samples in the Prometheus text exposition format (HELP/TYPE once per name).
pub fn render(metrics: &[Metric]) -> String {
    let mut out = String::new();
    let mut last = "";
    for m in metrics {
        if m.name != last {
            let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
            let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind);
            last = m.name;
        }
        out.push_str(m.name);
        if !m.labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in m.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(out, "{k}=\"{v}\"");
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", m.value);
    }
    out
}

/// Serves the admin API until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<dyn AdminState>,
    shutdown: CancellationToken,
) {
    serve(
        listener,
        ServerLimits::default(),
        shutdown,
        Duration::from_secs(2),
        move |req, _peer: SocketAddr| {
            let state = state.clone();
            async move { route(&state, req.method(), req.uri().path()) }
        },
    )
    .await
}

fn route(state: &Arc<dyn AdminState>, method: &Method, path: &str) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "admin API: use GET");
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok"),
        "/status" => {
            let body = serde_json::to_vec_pretty(&state.status()).unwrap_or_default();
            let mut r = Response::new(full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                "application/json".parse().expect("static"),
            );
            r
        }
        "/metrics" => {
            let mut r = Response::new(full(render(&state.metrics())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4".parse().expect("static"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, format!("no admin route {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let out = render(&[
            Metric::counter("x_total", "X.", 3).label("tier", "edge"),
            Metric::counter("x_total", "X.", 4).label("tier", "node\"1"),
            Metric::gauge("y_bytes", "Y.", 7),
        ]);
        assert_eq!(
            out,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{tier=\"edge\"} 3\nx_total{tier=\"node\\\"1\"} 4\n# HELP y_bytes Y.\n# TYPE y_bytes gauge\ny_bytes 7\n"
        );
    }
}
