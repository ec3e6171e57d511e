//! `cdnctl status`: a member's `/status`, summarised (or as it came, with `--json`).

use serde_json::Value;

use crate::cli::StatusArgs;
use crate::client::{Admin, Error};
use crate::doc::{count, edges, members, role, text, Counters};
use crate::fmt::{bytes, list, percent, table};
use crate::ops::print_body;

/// `cdnctl status`.
pub async fn status(admin: &Admin, addr: &str, args: StatusArgs) -> Result<(), Error> {
    let a = admin.get("status", addr, "/status").await?;
    if args.json {
        print_body(&a.body);
        return Ok(());
    }
    let doc: Value = a.json("status")?;
    for line in summary(addr, &doc) {
        println!("{line}");
    }
    Ok(())
}

/// The readable summary of a `/status` document.
pub fn summary(addr: &str, doc: &Value) -> Vec<String> {
    let c = Counters::of(doc);
    let mut out = Vec::new();
    let region = match text(doc, "region") {
        "" => String::new(),
        r => format!(", region {r}"),
    };
    out.push(format!(
        "{} ({}{region}), admin {addr}",
        text(doc, "id"),
        match role(doc) {
            "edge" => "edge",
            "node" => "cache node",
            _ => "unknown role",
        }
    ));
    out.push(format!(
        "  requests {}: hits {} ({}), misses {}, stale {}, passes {}, coalesced {}",
        c.requests,
        c.hits,
        percent(c.hits, c.requests),
        c.misses,
        count(doc, "stale"),
        count(doc, "passes"),
        count(doc, "coalesced"),
    ));
    out.push(format!(
        "  fetches: nodes {}, parent {}, origin {} (origin offload {}); node failures {}, errors {}",
        count(doc, "node_fetches"),
        count(doc, "parent_fetches"),
        c.origin_fetches,
        percent(c.offloaded(), c.requests),
        count(doc, "node_failures"),
        count(doc, "errors"),
    ));
    let ev = doc.get("evictions").unwrap_or(&Value::Null);
    out.push(format!(
        "  store: {} entries, {} of {}; evictions: size {}, expiry {}, purge {}",
        c.entries,
        bytes(c.bytes),
        bytes(c.capacity),
        count(ev, "size"),
        count(ev, "expiry"),
        count(ev, "purge"),
    ));
    out.push(format!(
        "  sent {}; purges applied {} ({} entries), recent {}",
        bytes(c.bytes_sent),
        count(doc, "purges"),
        count(doc, "purged"),
        doc.get("recent_purges")
            .and_then(Value::as_array)
            .map_or(0, Vec::len),
    ));
    if role(doc) == "node" {
        out.push(format!(
            "  in flight {}; edges linked: {}",
            count(doc, "inflight"),
            list(&edges(doc)),
        ));
    }
    let known = members(doc);
    if known.is_empty() {
        out.push("  cache nodes known: none".into());
        return out;
    }
    out.push(format!("  cache nodes known ({}):", known.len()));
    let mut rows = vec![vec![
        "ID".to_string(),
        "ADDR".into(),
        "REGION".into(),
        "STATE".into(),
        "LINK".into(),
        "ANSWERS".into(),
        "HIT%".into(),
    ]];
    for m in &known {
        let link = if m.id == text(doc, "id") {
            "self".to_string()
        } else {
            m.link.clone()
        };
        rows.push(vec![
            m.id.clone(),
            m.addr.clone(),
            if m.region.is_empty() {
                "-".into()
            } else {
                m.region.clone()
            },
            m.state.clone(),
            link,
            m.answers.map_or("-".into(), |a| a.to_string()),
            match (m.hits, m.answers) {
                (Some(h), Some(a)) => percent(h, a),
                _ => "-".into(),
            },
        ]);
    }
    out.extend(
        table(&rows, &[5, 6])
            .into_iter()
            .map(|l| format!("    {l}")),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_an_edge() {
        let doc = serde_json::json!({
            "id": "edge-0", "role": "edge", "requests": 4, "hits": 3, "bytes_sent": 2048,
            "members": [{"id": "node-0", "addr": "127.0.0.1:4433", "region": "", "state": "alive",
                         "link": "up", "answers": 1, "hits": 0}],
        });
        let s = summary("127.0.0.1:9000", &doc).join("\n");
        assert!(s.starts_with("edge-0 (edge), admin 127.0.0.1:9000"), "{s}");
        assert!(s.contains("hits 3 (75.0%)"), "{s}");
        assert!(s.contains("sent 2.0 KiB"), "{s}");
        assert!(
            s.contains("node-0  127.0.0.1:4433  -       alive  up"),
            "{s}"
        );
    }
}
