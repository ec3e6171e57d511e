//! Hit ratio of the store's eviction policies on a key stream, without the network.

use rand::SeedableRng;
use serde::Serialize;

use crate::{Dist, Keys};

/// Hit ratio of the store's eviction policies on a key stream, without the network.
#[derive(Debug, Serialize)]
pub struct HitRatio {
    /// `tiny-lfu` or `lru`.
    pub policy: &'static str,
    /// Capacity in objects.
    pub capacity: u64,
    /// Capacity as a fraction of the distinct keys.
    pub fraction: f64,
    /// Hits / requests.
    pub hit_ratio: f64,
}

/// Replays `requests` keys drawn from `dist` over `keys` through moka with TinyLFU and with
/// LRU at each capacity fraction (the same stream for every run), as the store would see a
/// miss-then-fill per request.
pub fn hit_ratios(
    keys: u64,
    dist: Dist,
    requests: u64,
    fractions: &[f64],
    seed: u64,
) -> anyhow::Result<Vec<HitRatio>> {
    let sampler = Keys::new(keys, dist)?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let stream: Vec<u64> = (0..requests).map(|_| sampler.sample(&mut rng)).collect();
    let mut out = Vec::new();
    for &fraction in fractions {
        let capacity = ((keys as f64 * fraction).round() as u64).max(1);
        for (name, policy) in [
            ("tiny-lfu", moka::policy::EvictionPolicy::tiny_lfu()),
            ("lru", moka::policy::EvictionPolicy::lru()),
        ] {
            let cache: moka::sync::Cache<u64, ()> = moka::sync::Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(policy)
                .build();
            let mut hits = 0u64;
            for (i, k) in stream.iter().enumerate() {
                if cache.get(k).is_some() {
                    hits += 1;
                } else {
                    cache.insert(*k, ());
                }
                // Let admission and eviction keep up, as they do between real requests.
                if i % 64 == 0 {
                    cache.run_pending_tasks();
                }
            }
            out.push(HitRatio {
                policy: name,
                capacity,
                fraction,
                hit_ratio: hits as f64 / requests as f64,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_lfu_beats_lru_on_a_skewed_stream_at_one_percent() {
        let rows = hit_ratios(20_000, Dist::Zipf(0.9), 200_000, &[0.01], 3).unwrap();
        let tlfu = rows
            .iter()
            .find(|r| r.policy == "tiny-lfu")
            .unwrap()
            .hit_ratio;
        let lru = rows.iter().find(|r| r.policy == "lru").unwrap().hit_ratio;
        assert!(tlfu > lru, "tiny-lfu {tlfu} vs lru {lru}");
    }
}
