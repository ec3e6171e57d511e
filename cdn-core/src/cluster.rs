//! The cluster view (`GET /cluster` on every admin port): every member's status, gathered
//! over the QUIC links the members already hold and merged into one document with rates,
//! ratios and a total.
//!
//! Who asks whom, so that any member sees every other: an edge knows only nodes (it links to
//! them), a node knows its peers and the edges linked to it. So the gathering member asks each
//! node it knows for its status and its linked edges' (`StatusRequest { linked: true }`), and a
//! gathering node asks its own linked edges too. A node answers with its own document and
//! those of its linked edges, which it asks (`linked: false`); an edge answers with its own and
//! asks no one. Two hops at most, never a loop.
//!
//! Bounds: a node has [`ASK_NODE`] to answer (it gives its edges [`ASK_EDGE`] of that), so a
//! gather takes at most about a second whatever fails; a member that does not answer is shown
//! `unreachable` with the numbers it last reported. Documents are summaries (the lists left
//! out) of at most `cdn_net::status::MAX_DOC` bytes. One gather runs at a time per member and
//! its result serves every caller for [`FRESH_FOR`]; a node's answer about its edges is
//! cached the same way, so however many pages poll, each link carries at most one exchange a
//! second.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cdn_net::peers::PeerPool;
use cdn_proto::{Member, MemberState};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Time a node has to answer a gathering member (its own status and its edges').
pub const ASK_NODE: Duration = Duration::from_millis(1000);
/// Time an edge has to answer the node asking it: well inside [`ASK_NODE`], so one hung edge
/// does not make its node look unreachable.
pub const ASK_EDGE: Duration = Duration::from_millis(500);
/// How long one gather's result serves every caller.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// How long a member no one reports any more is still shown (as unreachable): the time a node
/// remembers a disconnected edge (`cache_node::links::REMEMBER`).
pub const FORGET_AFTER: Duration = Duration::from_secs(300);
/// Keys of `/status` left out of the documents members exchange: lists that grow with the
/// cluster and that the view does not show.
const LISTS: &[&str] = &["members", "recent_purges", "edges"];

/// What one member says about one member (itself, or an edge linked to it): the document a
/// `Status` frame carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The member's id.
    pub id: String,
    /// `edge` or `node`.
    pub role: String,
    /// Its state as the reporter sees it (`alive`, `down`, `left`); absent when it reports
    /// itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Its `/status` summary, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    /// Why there is no status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// A member's report of itself, from its `/status` document.
    pub fn own(status: &Value) -> Self {
        Self {
            id: status["id"].as_str().unwrap_or_default().to_string(),
            role: role_of(status).to_string(),
            state: None,
            status: Some(summary(status)),
            error: None,
        }
    }

    /// A report without a status: the member could not be asked, or did not answer.
    pub fn without_status(id: &str, role: &str, state: &str, error: impl Into<String>) -> Self {
        Self {
            id: id.to_string(),
            role: role.to_string(),
            state: Some(state.to_string()),
            status: None,
            error: Some(error.into()),
        }
    }

    /// The report as a `Status` frame's document, at most `cdn_net::status::MAX_DOC` bytes:
    /// a status over it is replaced by an error saying so.
    pub fn encode(&self) -> Bytes {
        let doc = serde_json::to_vec(self).unwrap_or_default();
        if doc.len() <= cdn_net::status::MAX_DOC {
            return Bytes::from(doc);
        }
        let shrunk = Self {
            status: None,
            error: Some(format!(
                "status document of {} bytes, over the {} byte limit",
                doc.len(),
                cdn_net::status::MAX_DOC
            )),
            ..self.clone()
        };
        Bytes::from(serde_json::to_vec(&shrunk).unwrap_or_default())
    }

    /// A report from a `Status` frame's document; `None` when it is not one.
    pub fn decode(doc: &[u8]) -> Option<Self> {
        let r: Self = serde_json::from_slice(doc).ok()?;
        (!r.id.is_empty() && (r.role == "edge" || r.role == "node")).then_some(r)
    }
}

/// A `/status` document without its lists (`members`, `recent_purges`, `edges`): what a member
/// sends of itself for the cluster view.
pub fn summary(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(m) = s.as_object_mut() {
        for k in LISTS {
            m.remove(*k);
        }
    }
    s
}

/// `edge` or `node` from a `/status` document's `role` (`edge`, `cache-node`).
fn role_of(status: &Value) -> &'static str {
    match status["role"].as_str() {
        Some("edge") => "edge",
        _ => "node",
    }
}

/// One value shared by every caller for a while, computed by one of them at a time: the
/// gather's cache and its single flight in one lock.
pub struct Cached<T> {
    // An async mutex, held across the computation on purpose: callers arriving meanwhile wait
    // for its result instead of starting another.
    slot: tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<T>)>>,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Self {
            slot: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T> Cached<T> {
    /// The value, computed by `compute` unless one finished less than `fresh_for` ago.
    pub async fn get<F, Fut>(&self, fresh_for: Duration, compute: F) -> Arc<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((at, v)) = &*slot {
            if at.elapsed() < fresh_for {
                return v.clone();
            }
        }
        let v = Arc::new(compute().await);
        *slot = Some((tokio::time::Instant::now(), v.clone()));
        v
    }
}

/// What one gather collected, before it is merged.
#[derive(Debug, Clone)]
pub struct Collected {
    /// The gathering member's report of itself.
    pub me: Report,
    /// The nodes as the gathering member knows them (its roster).
    pub nodes: Vec<Member>,
    /// Each node asked, by id: its reports (itself, then its linked edges), or why not.
    pub answers: Vec<(String, Result<Vec<Report>, String>)>,
    /// The edges linked to the gathering member (a node), as it asked them.
    pub edges: Vec<Report>,
}

/// Asks every node in `pool`'s roster but `me` for its status and its linked edges' (each
/// within [`ASK_NODE`]), while `own_edges` asks the edges linked to us. Nodes that left, and
/// nodes declared down to which no link is open, are not asked: they are shown from what they
/// last said.
pub async fn collect(
    me: Report,
    pool: &PeerPool,
    own_edges: impl Future<Output = Vec<Report>>,
) -> Collected {
    let nodes = pool.roster().as_ref().clone();
    let asks = nodes
        .iter()
        .filter(|m| m.id != me.id && m.state != MemberState::Left)
        .filter(|m| {
            m.state != MemberState::Down || m.addr.parse().is_ok_and(|a| pool.is_connected(a))
        })
        .map(|m| async move {
            let answer = cdn_net::status::ask_node(pool, m, true, ASK_NODE)
                .await
                .map(|docs| docs.iter().filter_map(|d| Report::decode(d)).collect())
                .map_err(|e| e.to_string());
            (m.id.clone(), answer)
        });
    let (answers, edges) = tokio::join!(futures::future::join_all(asks), own_edges);
    Collected {
        me,
        nodes,
        answers,
        edges,
    }
}

/// What the view remembers of each member between gathers: its last summary (shown while it
/// does not answer) and the counter sample its rates are computed from.
#[derive(Debug, Default)]
pub struct Memory {
    seen: HashMap<String, Seen>,
}

#[derive(Debug, Clone)]
struct Seen {
    role: String,
    state: String,
    summary: Value,
    // Our clock (ms since the epoch) when a fresh status last came.
    seen_ms: u64,
    // The member's clock and counters when the current rates' window started.
    sample: (u64, u64, u64),
    // Requests and bytes sent per second over the last window of at least `MIN_WINDOW_MS`.
    rates: Option<(f64, f64)>,
}

/// Shortest window a rate is computed over: a document cached at its node for up to a second
/// may come twice; rates then keep their previous value.
const MIN_WINDOW_MS: u64 = 500;

impl Memory {
    /// Records a fresh summary of `id` at `now_ms` (our clock), updating its rates from its
    /// counters over the member's own clock (`now_ms` in its document).
    fn fresh(&mut self, id: &str, role: &str, state: &str, summary: &Value, now_ms: u64) {
        let sample = (
            count(summary, "now_ms"),
            count(summary, "requests"),
            count(summary, "bytes_sent"),
        );
        let seen = self.seen.entry(id.to_string()).or_insert_with(|| Seen {
            role: role.to_string(),
            state: state.to_string(),
            summary: Value::Null,
            seen_ms: now_ms,
            sample,
            rates: None,
        });
        let (t0, r0, b0) = seen.sample;
        let (t1, r1, b1) = sample;
        if t1 >= t0 + MIN_WINDOW_MS && r1 >= r0 && b1 >= b0 {
            let dt = (t1 - t0) as f64 / 1000.0;
            seen.rates = Some(((r1 - r0) as f64 / dt, (b1 - b0) as f64 / dt));
            seen.sample = sample;
        } else if t1 < t0 || r1 < r0 || b1 < b0 {
            // Restarted (counters went back) or a clock jump: start a new window.
            seen.rates = None;
            seen.sample = sample;
        }
        seen.role = role.to_string();
        seen.state = state.to_string();
        seen.summary = summary.clone();
        seen.seen_ms = now_ms;
    }
}

fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// One line of the view while it is built.
struct Line {
    role: String,
    region: String,
    state: String,
    link: &'static str,
    status: Option<Value>,
    error: Option<String>,
}

/// How alive a state is, to combine what several nodes say of one edge: alive beats down
/// beats left.
fn liveness(state: &str) -> u8 {
    match state {
        "alive" => 3,
        "suspect" => 2,
        "down" => 1,
        _ => 0,
    }
}

/// Merges a gather into the view's document (pure but for `memory`, which it updates; `now_ms`
/// is our clock): `{gathered_by, now_ms, members: [line], total}`, where each member's line is
/// its summary (fresh, or the last one seen) with `role` (`edge`, `node`), `state`, `link`
/// (`self`, `up`, `unreachable`), `requests_per_s`, `bytes_per_s`, `hit_ratio`,
/// `origin_offload`, and `error` and `last_seen_ms` when it did not answer. Edges come first,
/// then nodes, each by id.
pub fn merge(memory: &mut Memory, c: Collected, now_ms: u64) -> Value {
    let mut lines: BTreeMap<String, Line> = BTreeMap::new();
    let me = c.me.id.clone();
    lines.insert(
        me.clone(),
        Line {
            role: c.me.role.clone(),
            region: String::new(),
            state: "alive".into(),
            link: "self",
            status: c.me.status.clone(),
            error: None,
        },
    );
    let answers: HashMap<&str, &Result<Vec<Report>, String>> =
        c.answers.iter().map(|(id, a)| (id.as_str(), a)).collect();
    for m in c.nodes.iter().filter(|m| m.id != me) {
        let (status, error) = match answers.get(m.id.as_str()) {
            Some(Ok(reports)) => match reports.iter().find(|r| r.id == m.id) {
                Some(r) => (r.status.clone(), r.error.clone()),
                None => (None, Some("its answer did not include itself".into())),
            },
            Some(Err(e)) => (None, Some(e.clone())),
            None => (None, Some(format!("not asked: {}", m.state.as_str()))),
        };
        lines.insert(
            m.id.clone(),
            Line {
                role: "node".into(),
                region: m.region.clone(),
                state: m.state.as_str().into(),
                link: if status.is_some() {
                    "up"
                } else {
                    "unreachable"
                },
                status,
                error,
            },
        );
    }
    // Edges, as every node that knows one reports it (and as we asked ours): the most alive
    // state, and the newest status.
    let edge_reports = c
        .edges
        .iter()
        .chain(
            c.answers
                .iter()
                .filter_map(|(_, a)| a.as_ref().ok())
                .flatten(),
        )
        .filter(|r| r.role == "edge" && r.id != me);
    for r in edge_reports {
        let state = r.state.clone().unwrap_or_else(|| "alive".into());
        let line = lines.entry(r.id.clone()).or_insert_with(|| Line {
            role: "edge".into(),
            region: String::new(),
            state: state.clone(),
            link: "unreachable",
            status: None,
            error: None,
        });
        if liveness(&state) > liveness(&line.state) {
            line.state = state;
        }
        let newer = |s: &Value| {
            line.status
                .as_ref()
                .is_none_or(|cur| count(s, "now_ms") > count(cur, "now_ms"))
        };
        match &r.status {
            Some(s) if newer(s) => {
                line.status = Some(s.clone());
                line.link = "up";
                line.error = None;
            }
            Some(_) => {}
            None if line.status.is_none() && line.error.is_none() => {
                line.error = r.error.clone();
            }
            None => {}
        }
    }
    // Members we knew that no one reports now: shown from memory until forgotten.
    memory
        .seen
        .retain(|_, s| now_ms.saturating_sub(s.seen_ms) < FORGET_AFTER.as_millis() as u64);
    for (id, s) in &memory.seen {
        lines.entry(id.clone()).or_insert_with(|| Line {
            role: s.role.clone(),
            region: String::new(),
            state: s.state.clone(),
            link: "unreachable",
            status: None,
            error: Some("no member reports it".into()),
        });
    }
    let mut rows: Vec<(String, Value)> = Vec::new();
    for (id, line) in lines {
        if let Some(s) = &line.status {
            memory.fresh(&id, &line.role, &line.state, s, now_ms);
        }
        rows.push((id.clone(), row(&id, line, memory.seen.get(&id))));
    }
    rows.sort_by(|(a, ra), (b, rb)| {
        let rank = |r: &Value| u8::from(r["role"] != "edge");
        (rank(ra), a).cmp(&(rank(rb), b))
    });
    let rows: Vec<Value> = rows.into_iter().map(|(_, r)| r).collect();
    json!({
        "gathered_by": me,
        "now_ms": now_ms,
        "total": total(&rows),
        "members": rows,
    })
}

/// A member's line: its summary (fresh, or the last one seen), with what the view adds.
fn row(id: &str, line: Line, seen: Option<&Seen>) -> Value {
    let fresh = line.status.is_some();
    let mut r = line
        .status
        .or_else(|| seen.map(|s| s.summary.clone()))
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let requests = count(&r, "requests");
    let ratio = |part: u64| (requests > 0).then(|| part as f64 / requests as f64);
    let hit_ratio = ratio(count(&r, "hits"));
    let offload = ratio(requests.saturating_sub(count(&r, "origin_fetches")));
    let rates = seen.and_then(|s| s.rates).filter(|_| fresh);
    let region = r["region"]
        .as_str()
        .map(str::to_string)
        .unwrap_or(line.region);
    r["id"] = id.into();
    r["role"] = line.role.into();
    r["region"] = region.into();
    r["state"] = line.state.into();
    r["link"] = line.link.into();
    r["hit_ratio"] = json!(hit_ratio);
    r["origin_offload"] = json!(offload);
    r["requests_per_s"] = json!(rates.map(|(q, _)| q));
    r["bytes_per_s"] = json!(rates.map(|(_, b)| b));
    if !fresh {
        r["last_seen_ms"] = json!(seen.map(|s| s.seen_ms));
    }
    if let Some(e) = line.error {
        r["error"] = e.into();
    }
    r
}

/// The total line: client requests are the edges' (nodes answer edges, not clients), unless
/// no edge is shown; the origin offload counts every member's origin fetches against them.
fn total(rows: &[Value]) -> Value {
    let has_numbers = |r: &&Value| r.get("requests").is_some();
    let edges_shown = rows.iter().filter(has_numbers).any(|r| r["role"] == "edge");
    let front: Vec<&Value> = rows
        .iter()
        .filter(has_numbers)
        .filter(|r| !edges_shown || r["role"] == "edge")
        .collect();
    let sum = |rs: &[&Value], k: &str| rs.iter().map(|r| count(r, k)).sum::<u64>();
    let sum_rate = |k: &str| {
        let v: Vec<f64> = front.iter().filter_map(|r| r[k].as_f64()).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>())
    };
    let all: Vec<&Value> = rows.iter().collect();
    let requests = sum(&front, "requests");
    let hits = sum(&front, "hits");
    let origin = sum(&all, "origin_fetches");
    let ratio = |part: u64| (requests > 0).then(|| part as f64 / requests as f64);
    let evictions = |cause: &str| {
        rows.iter()
            .map(|r| count(&r["evictions"], cause))
            .sum::<u64>()
    };
    let purge_max = rows
        .iter()
        .filter_map(|r| r["purge_latency"]["max_ms"].as_f64())
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let mut versions: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for r in rows {
        if let Some(v) = r["config_version"].as_str() {
            versions
                .entry(r["role"].as_str().unwrap_or("?").to_string())
                .or_default()
                .insert(v.to_string());
        }
    }
    json!({
        "members": rows.len(),
        "unreachable": rows.iter().filter(|r| r["link"] == "unreachable").count(),
        "requests_from": if edges_shown { "edges" } else { "members" },
        "requests": requests,
        "requests_per_s": sum_rate("requests_per_s"),
        "hits": hits,
        "hit_ratio": ratio(hits),
        "origin_fetches": origin,
        "origin_offload": ratio(requests.saturating_sub(origin)),
        "bytes_sent": sum(&front, "bytes_sent"),
        "bytes_per_s": sum_rate("bytes_per_s"),
        "entries": sum(&all, "entries"),
        "bytes": sum(&all, "bytes"),
        "evictions": {"size": evictions("size"), "expiry": evictions("expiry"), "purge": evictions("purge")},
        "purge_latency_max_ms": purge_max,
        "config_versions": versions,
    })
}

/// A member's cluster view: the gather's cache and single flight, and what it remembers
/// between gathers.
#[derive(Default)]
pub struct ClusterView {
    latest: Cached<Value>,
    // A std mutex: updated once per gather, after the asking is done; never held across an
    // await.
    memory: std::sync::Mutex<Memory>,
}

impl ClusterView {
    /// The view: the last one if it is less than [`FRESH_FOR`] old, else a new gather by
    /// `collect` (one at a time; callers meanwhile wait for it).
    pub async fn get<F, Fut>(&self, collect: F) -> Arc<Value>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Collected>,
    {
        self.latest
            .get(FRESH_FOR, || async {
                let collected = collect().await;
                let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
                merge(&mut memory, collected, cdn_store::purge::unix_ms())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, role: &str, now_ms: u64, requests: u64, hits: u64) -> Value {
        json!({
            "id": id, "role": role, "region": "", "now_ms": now_ms,
            "requests": requests, "hits": hits, "origin_fetches": requests - hits,
            "bytes_sent": requests * 100, "entries": 1,
            "evictions": {"size": 1, "expiry": 0, "purge": 0},
            "config_version": if role == "edge" { "e1" } else { "n1" },
            "members": [{"id": "x"}], "recent_purges": [],
        })
    }

    fn node(id: &str, state: MemberState) -> Member {
        Member {
            state,
            ..Member::alive(id, "127.0.0.1:1", "")
        }
    }

    fn edge_report(id: &str, now_ms: u64, requests: u64) -> Report {
        Report::own(&status(id, "edge", now_ms, requests, requests / 2))
    }

    fn by_id<'a>(view: &'a Value, id: &str) -> &'a Value {
        view["members"]
            .as_array()
            .and_then(|m| m.iter().find(|r| r["id"] == id))
            .unwrap_or_else(|| panic!("no {id} in {view}"))
    }

    /// A gather at an edge: two nodes, one answering with itself and both edges.
    fn gathered_at_edge(t: u64, requests: u64, node_1: Result<Vec<Report>, String>) -> Collected {
        Collected {
            me: edge_report("edge-0", t, requests),
            nodes: vec![
                node("node-0", MemberState::Alive),
                node("node-1", MemberState::Alive),
            ],
            answers: vec![
                (
                    "node-0".into(),
                    Ok(vec![
                        Report::own(&status("node-0", "cache-node", t, 10, 8)),
                        edge_report("edge-0", t - 10, requests),
                        edge_report("edge-1", t, 4),
                    ]),
                ),
                ("node-1".into(), node_1),
            ],
            edges: vec![],
        }
    }

    #[test]
    fn every_member_gets_one_line_with_ratios_and_the_edges_make_the_total() {
        let mut memory = Memory::default();
        let n1 = Ok(vec![
            Report::own(&status("node-1", "cache-node", 1_000, 6, 3)),
            edge_report("edge-1", 900, 4),
        ]);
        let v = merge(&mut memory, gathered_at_edge(1_000, 20, n1), 5_000);
        let ids: Vec<&str> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["edge-0", "edge-1", "node-0", "node-1"]);
        let e0 = by_id(&v, "edge-0");
        assert_eq!(e0["link"], "self");
        assert_eq!(e0["role"], "edge");
        assert_eq!(e0["hit_ratio"], 0.5);
        assert!(e0.get("members").is_none(), "lists are left out");
        assert_eq!(by_id(&v, "node-0")["role"], "node");
        assert_eq!(by_id(&v, "node-0")["hit_ratio"], 0.8);
        assert_eq!(by_id(&v, "edge-1")["link"], "up");
        assert_eq!(by_id(&v, "edge-1")["requests"], 4);
        assert_eq!(v["total"]["requests"], 24, "the edges' requests");
        assert_eq!(v["total"]["origin_fetches"], 10 + 2 + 2 + 3);
        assert_eq!(v["total"]["requests_from"], "edges");
        assert_eq!(v["total"]["evictions"]["size"], 4);
        assert_eq!(
            v["total"]["config_versions"],
            json!({"edge": ["e1"], "node": ["n1"]})
        );
        assert_eq!(e0["requests_per_s"], Value::Null, "no rate from one sample");
    }

    #[test]
    fn rates_come_from_two_samples_over_the_members_clock() {
        let mut memory = Memory::default();
        let ok = |t: u64| Ok(vec![Report::own(&status("node-1", "cache-node", t, 6, 3))]);
        merge(&mut memory, gathered_at_edge(1_000, 20, ok(1_000)), 5_000);
        let v = merge(&mut memory, gathered_at_edge(3_000, 60, ok(3_000)), 7_000);
        let e0 = by_id(&v, "edge-0");
        assert_eq!(e0["requests_per_s"], 20.0);
        assert_eq!(e0["bytes_per_s"], 2_000.0);
        assert_eq!(by_id(&v, "node-1")["requests_per_s"], 0.0);
        // The same document again (cached at its node) keeps the rate.
        let v = merge(&mut memory, gathered_at_edge(3_100, 62, ok(3_000)), 7_100);
        assert_eq!(by_id(&v, "edge-0")["requests_per_s"], 20.0);
        assert_eq!(v["total"]["requests_per_s"], 20.0 + 0.0);
    }

    #[test]
    fn a_node_that_does_not_answer_is_unreachable_with_its_last_numbers() {
        let mut memory = Memory::default();
        let ok = Ok(vec![Report::own(&status(
            "node-1",
            "cache-node",
            1_000,
            6,
            3,
        ))]);
        merge(&mut memory, gathered_at_edge(1_000, 20, ok), 5_000);
        let mut c = gathered_at_edge(2_000, 30, Err("no status within 1s".into()));
        c.nodes[1].state = MemberState::Suspect;
        let v = merge(&mut memory, c, 6_000);
        let n1 = by_id(&v, "node-1");
        assert_eq!(n1["link"], "unreachable");
        assert_eq!(n1["state"], "suspect");
        assert_eq!(n1["error"], "no status within 1s");
        assert_eq!(n1["requests"], 6, "the last numbers it reported");
        assert_eq!(n1["last_seen_ms"], 5_000);
        assert_eq!(n1["requests_per_s"], Value::Null);
        assert_eq!(v["total"]["unreachable"], 1);
    }

    #[test]
    fn an_edge_is_as_alive_as_the_most_alive_report_and_members_no_one_reports_fade() {
        let mut memory = Memory::default();
        let mut c = gathered_at_edge(1_000, 20, Ok(vec![]));
        // node-0 lost its link to edge-1; node-1 still has one.
        c.answers[0].1 = Ok(vec![
            Report::own(&status("node-0", "cache-node", 1_000, 1, 1)),
            Report::without_status("edge-1", "edge", "down", "link closed"),
        ]);
        c.answers[1].1 = Ok(vec![
            Report::own(&status("node-1", "cache-node", 1_000, 1, 1)),
            edge_report("edge-1", 1_000, 3),
        ]);
        let v = merge(&mut memory, c, 5_000);
        assert_eq!(by_id(&v, "edge-1")["state"], "alive");
        assert_eq!(by_id(&v, "edge-1")["link"], "up");
        // Then no one mentions edge-1: it stays, unreachable, until forgotten.
        let without_edges = |t: u64| {
            let mut c = gathered_at_edge(t, 20, Ok(vec![]));
            c.answers[0].1 = Ok(vec![Report::own(&status("node-0", "cache-node", t, 1, 1))]);
            c
        };
        let v = merge(&mut memory, without_edges(2_000), 6_000);
        let e1 = by_id(&v, "edge-1");
        assert_eq!(e1["link"], "unreachable");
        assert_eq!(e1["state"], "alive", "its last known state");
        assert_eq!(e1["requests"], 3);
        assert_eq!(e1["error"], "no member reports it");
        let later = 5_000 + FORGET_AFTER.as_millis() as u64 + 1;
        let v = merge(&mut memory, without_edges(3_000), later);
        assert!(
            v["members"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["id"] != "edge-1"),
            "{v}"
        );
    }

    #[test]
    fn reports_round_trip_and_an_oversized_status_becomes_an_error() {
        let r = edge_report("edge-0", 1, 2);
        assert_eq!(Report::decode(&r.encode()), Some(r.clone()));
        assert_eq!(Report::decode(b"{\"id\":\"\",\"role\":\"edge\"}"), None);
        assert_eq!(Report::decode(b"not json"), None);
        let mut big = r.clone();
        big.status = Some(json!({"pad": "x".repeat(cdn_net::status::MAX_DOC)}));
        let doc = big.encode();
        assert!(doc.len() <= cdn_net::status::MAX_DOC);
        let back = Report::decode(&doc).unwrap();
        assert!(back.status.is_none());
        assert!(back.error.unwrap().contains("over the"));
    }

    #[tokio::test(start_paused = true)]
    async fn one_computation_at_a_time_and_its_result_is_shared_while_fresh() {
        let cached: Arc<Cached<u32>> = Arc::default();
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let get = |c: Arc<Cached<u32>>, runs: Arc<std::sync::atomic::AtomicU32>| async move {
            c.get(FRESH_FOR, || async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
            })
            .await
        };
        let (a, b) = tokio::join!(
            get(cached.clone(), runs.clone()),
            get(cached.clone(), runs.clone())
        );
        assert_eq!((*a, *b), (1, 1), "the second caller waited for the first's");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(*get(cached.clone(), runs.clone()).await, 1, "still fresh");
        tokio::time::advance(FRESH_FOR).await;
        assert_eq!(*get(cached.clone(), runs.clone()).await, 2);
    }
}
