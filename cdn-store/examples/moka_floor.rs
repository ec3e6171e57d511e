//! The memory moka itself takes per entry, before anything we store: the floor under the
//! store's per-object overhead. One configuration per run (RSS growth is measured in a fresh
//! process):
//!
//! `cargo run --release -p cdn-store --example moka_floor -- MODE [N]`, MODE one of
//! - `plain`: `future::Cache<u64, u64>` with a count bound;
//! - `store`: the store's configuration (byte weigher, per-entry expiry, eviction listener,
//!   TinyLFU) with `u64` keys and `u64` values;
//! - `keys`: the same with the store's key type, `Arc<str>` paths like `/obj/123456?size=1024`.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::rss_bytes;

struct Ttl;

impl<K, V> moka::Expiry<K, V> for Ttl {
    fn expire_after_create(&self, _k: &K, _v: &V, _now: Instant) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

/// The store's moka configuration (see `Store::new`) over `K` keys and `u64` values.
fn store_like<K>() -> moka::future::Cache<K, u64>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    moka::future::Cache::builder()
        .max_capacity(u64::MAX / 4)
        .weigher(|_k: &K, _v: &u64| 1000)
        .expire_after(Ttl)
        .eviction_policy(moka::policy::EvictionPolicy::tiny_lfu())
        .eviction_listener(|_k, _v, _cause| {})
        .build()
}

fn report(mode: &str, n: u64, before: u64, entries: u64) {
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "{mode}: {entries} entries, RSS grew {:.1} MiB: {:.0} bytes per entry",
        grown as f64 / 1048576.0,
        grown as f64 / n as f64
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "store".into());
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let before = rss_bytes();
    match mode.as_str() {
        "plain" => {
            let c: moka::future::Cache<u64, u64> = moka::future::Cache::builder()
                .max_capacity(u64::MAX / 4)
                .build();
            for i in 0..n {
                c.insert(i, i).await;
            }
            c.run_pending_tasks().await;
            report(&mode, n, before, c.entry_count());
        }
        "store" => {
            let c = store_like::<u64>();
            for i in 0..n {
                c.insert(i, i).await;
            }
            c.run_pending_tasks().await;
            report(&mode, n, before, c.entry_count());
        }
        "keys" => {
            let c = store_like::<Arc<str>>();
            for i in 0..n {
                c.insert(Arc::from(format!("/obj/{i}?size=1024")), i).await;
            }
            c.run_pending_tasks().await;
            report(&mode, n, before, c.entry_count());
        }
        other => eprintln!("unknown mode {other}: plain, store or keys"),
    }
}
