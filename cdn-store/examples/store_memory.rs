//! Resident memory of a store holding N objects of a given size, as bytes per object over
//! the payload. Objects look like real fills: a policy evaluated from typical origin headers.
//!
//! `cargo run --release -p cdn-store --example store_memory -- [N] [SIZE] [ENGINE] [tagged]`
//! (1,000,000 × 1 KiB on moka by default; ENGINE `moka` or `compact`; `tagged`: one surrogate
//! key per object).

use std::time::SystemTime;

use bytes::Bytes;
use cdn_http::policy::{evaluate, policy_request};
use cdn_store::{Engine, Eviction, NewEntry, Store};

mod common;
use common::rss_bytes;

// The allocator the node and edge binaries use: its size classes are part of the cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let engine: Engine = match args.next().map(|a| a.parse()) {
        None => Engine::Moka,
        Some(Ok(e)) => e,
        Some(Err(e)) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // `tagged`: each object carries one surrogate key (`Surrogate-Key: product-<i / 10>`).
    let tagged = args.next().as_deref() == Some("tagged");
    let store = Store::with_engine(u64::MAX / 4, Eviction::TinyLfu, engine);
    let now = SystemTime::now();
    let req_headers = {
        let mut h = http::HeaderMap::new();
        h.insert("accept", "*/*".parse().unwrap());
        h.insert("user-agent", "loadgen/0.1".parse().unwrap());
        h
    };
    let before = rss_bytes();
    for i in 0..n {
        let key = format!("/obj/{i}?size={size}");
        let mut resp = http::Response::builder();
        if tagged {
            resp = resp.header("surrogate-key", format!("product-{}", i / 10));
        }
        let resp = resp
            .header("content-type", "application/octet-stream")
            .header("cache-control", "public, max-age=3600")
            .header("etag", "\"0123456789abcdef\"")
            .header("date", "Fri, 27 Nov 2026 21:00:00 GMT")
            .header("content-length", size)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let req = policy_request(&http::Method::GET, &key, &req_headers);
        let decision = evaluate(&req, &resp, now);
        let body = Bytes::from(vec![(i % 251) as u8; size]);
        let entry = NewEntry::new(
            http::StatusCode::OK,
            &resp.headers,
            vec![body],
            decision,
            now,
        );
        store.insert(&key, entry).await;
    }
    store.sync().await;
    let after = rss_bytes();
    let grown = after.saturating_sub(before);
    let payload = (n * size) as u64;
    println!(
        "{engine:?}{}: {n} objects of {size} B: entries {}, RSS grew {:.1} MiB for {:.1} MiB of payload: {:.0} bytes per object over the payload; the store charges {:.0} bytes per object ({:.2} of the RSS growth)",
        if tagged { ", one tag each" } else { "" },
        store.entry_count(),
        grown as f64 / 1048576.0,
        payload as f64 / 1048576.0,
        (grown as f64 - payload as f64) / n as f64,
        store.weighted_size() as f64 / n as f64,
        store.weighted_size() as f64 / grown as f64
    );
}
