//! Invalidation: what a purge matches, and the log that keeps a fill that started before a
//! purge from storing the purged body.
//!
//! The race, and why the order below closes it: a purge first appends itself to the log
//! (taking a sequence number), then removes matching entries. A fill notes the log's sequence
//! when it starts; after inserting its entry it checks the log for purges numbered after its
//! start that match, and removes its own entry if one does. Whichever of "purge applies" and
//! "fill checks" runs second sees the other's effect, so the purged body never stays stored.

use std::collections::VecDeque;
use std::sync::Mutex;

use cdn_proto::Invalidation;

/// Purges kept for the race check: a fill that runs longer than this many purges is treated
/// as purged (conservative), see [`PurgeLog::purged_since`].
const LOG_LEN: usize = 4096;

/// Whether `inv` covers the object at `key` carrying surrogate keys `tags`.
pub fn matches(inv: &Invalidation, key: &str, tags: &[String]) -> bool {
    inv.all
        || inv.urls.iter().any(|u| u == key)
        || inv.prefixes.iter().any(|p| key.starts_with(p.as_str()))
        || (!inv.tags.is_empty() && tags.iter().any(|t| inv.tags.contains(t)))
}

/// The URL part of a storage key (a `Vary` variant's key is the URL, a NUL, then the
/// normalised fields it varies on).
pub fn primary(storage_key: &str) -> &str {
    storage_key.split('\0').next().unwrap_or(storage_key)
}

/// Surrogate keys of a response: the space-separated tokens of its `Surrogate-Key` fields.
pub fn surrogate_keys(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("surrogate-key")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(str::split_ascii_whitespace)
        .map(str::to_string)
        .collect()
}

/// The recent purges of one store, numbered.
#[derive(Default)]
pub struct PurgeLog {
    // A std mutex: appends and short scans, never held across an await.
    inner: Mutex<LogInner>,
}

#[derive(Default)]
struct LogInner {
    next: u64,
    recent: VecDeque<(u64, Invalidation)>,
}

impl PurgeLog {
    /// The sequence a fill starting now records.
    pub fn mark(&self) -> u64 {
        self.lock().next
    }

    /// Appends a purge; returns its sequence number.
    pub fn append(&self, inv: Invalidation) -> u64 {
        let mut l = self.lock();
        let seq = l.next;
        l.next += 1;
        l.recent.push_back((seq, inv));
        if l.recent.len() > LOG_LEN {
            l.recent.pop_front();
        }
        seq
    }

    /// Whether a purge numbered `since` or later matches `key`/`tags`. If the log no longer
    /// reaches back to `since`, the answer is yes: unknown means unsafe to keep.
    pub fn purged_since(&self, since: u64, key: &str, tags: &[String]) -> bool {
        let l = self.lock();
        if l.next == since {
            return false;
        }
        match l.recent.front() {
            Some((first, _)) if *first <= since => {}
            _ => return true,
        }
        l.recent
            .iter()
            .filter(|(seq, _)| *seq >= since)
            .any(|(_, inv)| matches(inv, key, tags))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_purges_list_each_invalidation_once_newest_first() {
        let recent = Recent::default();
        let a = inv(|i| i.urls = vec!["/a".into()]);
        let b = inv(|i| {
            i.tags = vec!["t1".into(), "t2".into(), "t3".into(), "t4".into()];
            i.soft = true;
        });
        // The same purge heard from three nodes is one entry.
        for _ in 0..3 {
            recent.record(&a, 1);
        }
        recent.record(&b, 0);
        let v = recent.to_json();
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["what"], "soft: tag t1, t2, t3 (+1)");
        assert_eq!(list[1]["what"], "hard: url /a");
        assert_eq!(list[1]["entries"], 3);
    }

    fn inv(f: impl FnOnce(&mut Invalidation)) -> Invalidation {
        let mut i = Invalidation::default();
        f(&mut i);
        i
    }

    #[test]
    fn matching_by_url_prefix_tag_and_all() {
        let tags = vec!["a".to_string(), "b".to_string()];
        assert!(matches(
            &inv(|i| i.urls = vec!["/x?v=1".into()]),
            "/x?v=1",
            &[]
        ));
        assert!(!matches(
            &inv(|i| i.urls = vec!["/x".into()]),
            "/x?v=1",
            &[]
        ));
        assert!(matches(
            &inv(|i| i.prefixes = vec!["/img/".into()]),
            "/img/a.png",
            &[]
        ));
        assert!(!matches(
            &inv(|i| i.prefixes = vec!["/img/".into()]),
            "/css/a.css",
            &[]
        ));
        assert!(matches(&inv(|i| i.tags = vec!["b".into()]), "/any", &tags));
        assert!(!matches(&inv(|i| i.tags = vec!["c".into()]), "/any", &tags));
        assert!(matches(&inv(|i| i.all = true), "/any", &[]));
        assert!(!matches(&Invalidation::default(), "/any", &tags));
    }

    #[test]
    fn surrogate_keys_are_space_separated_over_all_fields() {
        let mut h = http::HeaderMap::new();
        h.append("surrogate-key", "a  b".parse().unwrap());
        h.append("surrogate-key", "c".parse().unwrap());
        assert_eq!(surrogate_keys(&h), vec!["a", "b", "c"]);
    }

    #[test]
    fn the_log_answers_for_purges_after_a_mark() {
        let log = PurgeLog::default();
        log.append(inv(|i| i.urls = vec!["/old".into()]));
        let m = log.mark();
        assert!(
            !log.purged_since(m, "/old", &[]),
            "purges before the mark do not count"
        );
        log.append(inv(|i| i.urls = vec!["/other".into()]));
        assert!(!log.purged_since(m, "/k", &[]));
        log.append(inv(|i| i.tags = vec!["t".into()]));
        assert!(log.purged_since(m, "/k", &["t".into()]));
        assert!(!log.purged_since(log.mark(), "/k", &["t".into()]));
    }

    #[test]
    fn a_mark_older_than_the_log_counts_as_purged() {
        let log = PurgeLog::default();
        let m = log.mark();
        for _ in 0..LOG_LEN + 1 {
            log.append(inv(|i| i.urls = vec!["/unrelated".into()]));
        }
        assert!(log.purged_since(m, "/k", &[]));
    }
}

/// The last invalidations a member applied, for its status page.
#[derive(Default)]
pub struct Recent {
    // A std mutex: a push or a copy of a few entries, never held across an await.
    list: std::sync::Mutex<std::collections::VecDeque<(u64, String, u64)>>,
}

impl Recent {
    /// Entries kept.
    pub const LEN: usize = 20;

    /// Records `inv`, which affected `entries` entries here. The same invalidation arriving
    /// again within 2 s (an edge hears each purge from every node it is linked to) is one.
    pub fn record(&self, inv: &Invalidation, entries: u64) {
        let at = unix_ms();
        let what = describe(inv);
        let mut l = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(same) = l
            .iter_mut()
            .find(|(t, w, _)| *w == what && at.saturating_sub(*t) < 2_000)
        {
            same.2 += entries;
            return;
        }
        if l.len() == Self::LEN {
            l.pop_back();
        }
        l.push_front((at, what, entries));
    }

    /// Newest first, as JSON: `[{"at_ms", "what", "entries"}]`.
    pub fn to_json(&self) -> serde_json::Value {
        let l = self.list.lock().unwrap_or_else(|p| p.into_inner());
        l.iter()
            .map(|(at, what, n)| serde_json::json!({"at_ms": at, "what": what, "entries": n}))
            .collect()
    }
}

/// One line saying what an invalidation covers.
pub fn describe(inv: &Invalidation) -> String {
    let mut parts = Vec::new();
    if inv.all {
        parts.push("everything".to_string());
    }
    for (label, list) in [
        ("url", &inv.urls),
        ("prefix", &inv.prefixes),
        ("tag", &inv.tags),
    ] {
        if !list.is_empty() {
            let shown: Vec<&str> = list.iter().take(3).map(String::as_str).collect();
            let more = if list.len() > 3 {
                format!(" (+{})", list.len() - 3)
            } else {
                String::new()
            };
            parts.push(format!("{label} {}{more}", shown.join(", ")));
        }
    }
    let kind = if inv.soft { "soft" } else { "hard" };
    format!("{kind}: {}", parts.join("; "))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
