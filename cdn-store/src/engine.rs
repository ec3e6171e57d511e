//! Which engine a store runs on and which entries it keeps when full, and what an entry
//! costs on each engine beyond its own bytes: what both the store and the compact engine need,
//! so neither has to name the other for it.

use serde::{Deserialize, Serialize};

/// Which entries the store keeps when full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Eviction {
    /// Window TinyLFU: admits a new key only if it is likely to be used more than the victim;
    /// resists scans and one-hit wonders.
    #[default]
    TinyLfu,
    /// Least recently used.
    Lru,
}

impl std::str::FromStr for Eviction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tiny-lfu" | "tinylfu" => Ok(Eviction::TinyLfu),
            "lru" => Ok(Eviction::Lru),
            _ => Err(format!("`{s}` is not an eviction policy (tiny-lfu, lru)")),
        }
    }
}

/// Which map holds the entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// moka: TinyLFU or LRU; about 350 bytes of bookkeeping per entry.
    #[default]
    Moka,
    /// Our compact engine (`compact.rs`): CLOCK with TinyLFU admission (or CLOCK alone for
    /// `lru`); about 30 bytes per entry.
    Compact,
}

impl Engine {
    /// Its name in config files and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Moka => "moka",
            Engine::Compact => "compact",
        }
    }

    /// Fixed cost charged per entry on top of its body, key and own packed header bytes
    /// ([`crate::Entry::weight`]): the entry's fixed part, the engine's bookkeeping, allocator
    /// slack. Measured with `examples/store_memory.rs` (1,000,000 × 1 KiB objects, RSS
    /// growth per object beyond the entries' weight: about 470 on moka, 155 on compact).
    pub fn entry_overhead(self) -> u32 {
        match self {
            Engine::Moka => 480,
            Engine::Compact => 160,
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "moka" => Ok(Engine::Moka),
            "compact" => Ok(Engine::Compact),
            other => Err(format!("unknown store engine `{other}` (moka, compact)")),
        }
    }
}
