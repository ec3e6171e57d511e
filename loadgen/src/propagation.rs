//! Purge propagation: how long after a purge until no edge serves the old version.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde::Serialize;

/// Purge-propagation measurement: what to run.
#[derive(Debug, Clone)]
pub struct PurgeOptions {
    /// Edges to watch (all of them, to measure "every edge").
    pub edges: Vec<SocketAddr>,
    /// Admin address that accepts the purges.
    pub admin: SocketAddr,
    /// Admin bearer token.
    pub token: String,
    /// origin-stub address: each round republishes there so old and new versions differ.
    pub origin: SocketAddr,
    /// Purges to measure.
    pub purges: usize,
    /// Probe path template; `{i}` becomes the round number.
    pub path: String,
}

/// Purge-propagation results, in microseconds.
#[derive(Debug, Serialize)]
pub struct PurgeReport {
    /// Purges measured.
    pub purges: usize,
    /// Time from sending the purge until every edge served the new version: p50.
    pub visible_p50_us: u64,
    /// p99 of the same.
    pub visible_p99_us: u64,
    /// Maximum of the same.
    pub visible_max_us: u64,
    /// Time until the admin call returned (every member acknowledged): p50.
    pub acked_p50_us: u64,
    /// p99 of the same.
    pub acked_p99_us: u64,
    /// Maximum of the same.
    pub acked_max_us: u64,
    /// Purges some member did not acknowledge.
    pub incomplete: usize,
}

pub(crate) async fn simple(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    fields: &[(&str, String)],
    body: Option<String>,
) -> anyhow::Result<(http::StatusCode, http::HeaderMap, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    for (k, v) in fields {
        b = b.header(*k, v);
    }
    let req = b.body(http_body_util::Full::new(Bytes::from(
        body.unwrap_or_default(),
    )))?;
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    Ok((
        parts.status,
        parts.headers,
        body.collect().await?.to_bytes(),
    ))
}

/// Measures purge propagation: per round, warm a probe object at every edge, republish it at
/// the origin, purge it through `admin`, and time until every edge serves the new version.
pub async fn purge_propagation(opts: PurgeOptions) -> anyhow::Result<PurgeReport> {
    let mut visible = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut acked = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut incomplete = 0;
    for i in 0..opts.purges {
        let key = opts.path.replace("{i}", &i.to_string());
        let mut old = Vec::new();
        for e in &opts.edges {
            simple(*e, http::Method::GET, &key, &[], None).await?;
            let (_, h, _) = simple(*e, http::Method::GET, &key, &[], None).await?;
            old.push(h.get(http::header::ETAG).cloned());
        }
        simple(
            opts.origin,
            http::Method::POST,
            "/_stub/generation",
            &[],
            None,
        )
        .await?;
        let t0 = Instant::now();
        let body = serde_json::json!({ "urls": [key] }).to_string();
        let auth = format!("Bearer {}", opts.token);
        let admin = opts.admin;
        let purge = tokio::spawn(async move {
            let r = simple(
                admin,
                http::Method::POST,
                "/purge",
                &[
                    ("authorization", auth),
                    ("content-type", "application/json".into()),
                ],
                Some(body),
            )
            .await;
            (t0.elapsed(), r)
        });
        let watchers = opts.edges.iter().zip(old).map(|(e, old)| {
            let key = key.clone();
            let e = *e;
            async move {
                loop {
                    let (_, h, _) = simple(e, http::Method::GET, &key, &[], None).await?;
                    if h.get(http::header::ETAG) != old.as_ref() {
                        return anyhow::Ok(t0.elapsed());
                    }
                    anyhow::ensure!(
                        t0.elapsed() < Duration::from_secs(30),
                        "edge {e} still serves the old version after 30 s"
                    );
                }
            }
        });
        let times = futures_join(watchers).await?;
        let worst = times.into_iter().max().unwrap_or_default();
        visible.record(worst.as_micros().max(1) as u64)?;
        let (ack, r) = purge.await?;
        acked.record(ack.as_micros().max(1) as u64)?;
        match r {
            Ok((status, _, body)) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if !status.is_success() || v["missing"].as_array().is_some_and(|m| !m.is_empty()) {
                    incomplete += 1;
                }
            }
            Err(_) => incomplete += 1,
        }
    }
    Ok(PurgeReport {
        purges: opts.purges,
        visible_p50_us: visible.value_at_quantile(0.5),
        visible_p99_us: visible.value_at_quantile(0.99),
        visible_max_us: visible.max(),
        acked_p50_us: acked.value_at_quantile(0.5),
        acked_p99_us: acked.value_at_quantile(0.99),
        acked_max_us: acked.max(),
        incomplete,
    })
}

async fn futures_join<I, F, T>(futs: I) -> anyhow::Result<Vec<T>>
where
    I: IntoIterator<Item = F>,
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut out = Vec::new();
    for r in futures::future::join_all(futs).await {
        out.push(r?);
    }
    Ok(out)
}
