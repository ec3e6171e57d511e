//! What cdnctl reads from a member's `/status` document. Read leniently (a missing key is 0 or
//! empty), so a cdnctl of another version still shows what it can.

use serde_json::Value;

/// A count under `key`, 0 when absent.
pub fn count(doc: &Value, key: &str) -> u64 {
    doc.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// A string under `key`, empty when absent.
pub fn text<'a>(doc: &'a Value, key: &str) -> &'a str {
    doc.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The member's counters, as `/status` gives them (totals since it started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests received.
    pub requests: u64,
    /// Answered from the store.
    pub hits: u64,
    /// Filled from elsewhere.
    pub misses: u64,
    /// Fetches sent to the origin.
    pub origin_fetches: u64,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// Entries stored now.
    pub entries: u64,
    /// Bytes stored now.
    pub bytes: u64,
    /// Store capacity.
    pub capacity: u64,
    /// Entries removed by every cause (size, expiry, purge).
    pub evictions: u64,
}

impl Counters {
    /// The counters in a `/status` document.
    pub fn of(doc: &Value) -> Self {
        let ev = doc.get("evictions").unwrap_or(&Value::Null);
        Self {
            requests: count(doc, "requests"),
            hits: count(doc, "hits"),
            misses: count(doc, "misses"),
            origin_fetches: count(doc, "origin_fetches"),
            bytes_sent: count(doc, "bytes_sent"),
            entries: count(doc, "entries"),
            bytes: count(doc, "bytes"),
            capacity: count(doc, "capacity"),
            evictions: count(ev, "size") + count(ev, "expiry") + count(ev, "purge"),
        }
    }

    /// Requests not sent to the origin, out of all requests.
    pub fn offloaded(&self) -> u64 {
        self.requests.saturating_sub(self.origin_fetches)
    }
}

/// `edge` or `node`, from the document's `role`.
pub fn role(doc: &Value) -> &'static str {
    match text(doc, "role") {
        "edge" => "edge",
        "cache-node" | "node" => "node",
        _ => "?",
    }
}

/// A cache node the member knows (its `members` list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Its id.
    pub id: String,
    /// Its QUIC address.
    pub addr: String,
    /// Its region.
    pub region: String,
    /// What the failure detector says: alive, suspect, down, left.
    pub state: String,
    /// Whether the member's own link to it is open: up or down.
    pub link: String,
    /// Answers the member got from it (an edge; a node reports its own).
    pub answers: Option<u64>,
    /// How many of those came from its store.
    pub hits: Option<u64>,
}

/// The cache nodes a member knows.
pub fn members(doc: &Value) -> Vec<Known> {
    doc.get("members")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| Known {
                    id: text(m, "id").to_string(),
                    addr: text(m, "addr").to_string(),
                    region: text(m, "region").to_string(),
                    state: text(m, "state").to_string(),
                    link: text(m, "link").to_string(),
                    answers: m.get("answers").and_then(Value::as_u64),
                    hits: m.get("hits").and_then(Value::as_u64),
                })
                .filter(|k| !k.id.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The edges a node has a link with (empty for an edge).
pub fn edges(doc: &Value) -> Vec<String> {
    doc.get("edges")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_is_there_and_zero_for_the_rest() {
        let doc = serde_json::json!({
            "id": "edge-0", "role": "edge", "requests": 10, "hits": 7, "origin_fetches": 1,
            "evictions": {"size": 2, "expiry": 1, "purge": 3},
            "members": [{"id": "node-0", "addr": "a:1", "state": "alive", "link": "up",
                         "answers": 3, "hits": 2}, {"addr": "no-id"}],
        });
        let c = Counters::of(&doc);
        assert_eq!(
            (c.requests, c.hits, c.evictions, c.bytes_sent),
            (10, 7, 6, 0)
        );
        assert_eq!(c.offloaded(), 9);
        assert_eq!(role(&doc), "edge");
        let m = members(&doc);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].answers, Some(3));
        assert!(edges(&doc).is_empty());
    }
}
