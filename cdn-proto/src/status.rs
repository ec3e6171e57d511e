//! Cache outcomes, named once and used in headers, logs, metrics and on the wire.

/// What a tier did to answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from this tier's cache, fresh.
    Hit,
    /// Not in this tier's cache (or unusable); filled from upstream.
    Miss,
    /// Served from this tier's cache although stale.
    Stale,
    /// Stale in this tier's cache, confirmed unchanged upstream (304) and served.
    Revalidated,
    /// Not cacheable: passed to upstream and not stored.
    Pass,
}

impl CacheStatus {
    /// The token used in `X-Cache`, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Pass => "PASS",
        }
    }

    /// Wire code of this outcome.
    pub fn code(self) -> u8 {
        match self {
            CacheStatus::Hit => 1,
            CacheStatus::Miss => 2,
            CacheStatus::Stale => 3,
            CacheStatus::Revalidated => 4,
            CacheStatus::Pass => 5,
        }
    }

    /// The outcome for a wire code, if it is one.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => CacheStatus::Hit,
            2 => CacheStatus::Miss,
            3 => CacheStatus::Stale,
            4 => CacheStatus::Revalidated,
            5 => CacheStatus::Pass,
            _ => return None,
        })
    }
}

impl std::fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for s in [
            CacheStatus::Hit,
            CacheStatus::Miss,
            CacheStatus::Stale,
            CacheStatus::Revalidated,
            CacheStatus::Pass,
        ] {
            assert_eq!(CacheStatus::from_code(s.code()), Some(s));
        }
        assert_eq!(CacheStatus::from_code(0), None);
        assert_eq!(CacheStatus::from_code(6), None);
    }
}
