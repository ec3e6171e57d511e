//! Config pieces of the cluster's members: the loading helpers every binary shares (from
//! `cdn-http`, so origin-stub needs nothing else), and the consistency switch.

use serde::{Deserialize, Serialize};

pub use cdn_http::config::*;

/// What a member does when invalidations may not reach it (the CAP switch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Keep serving cached copies while an invalidation stream is down (bounded by TTL and
    /// the replay on reconnect); a purge reports members it could not reach as `missing`.
    #[default]
    Available,
    /// An edge stops serving entries that came from a node whose invalidation stream is down
    /// (it goes upstream or to the origin instead), and a purge that some member cannot
    /// acknowledge fails (503).
    Strict,
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "available" => Ok(Self::Available),
            "strict" => Ok(Self::Strict),
            _ => Err(format!(
                "`{s}` is not a consistency mode (available, strict)"
            )),
        }
    }
}
