//! `cdnctl top`: one line per member, refreshed in place. Each refresh fetches `/status` from
//! the contacted member and every `--also` address ([`gather`]); what a frame shows is a pure
//! function of those documents and the previous refresh's counters ([`rows`], [`render`]).
//!
//! `/status` lists the cache nodes a member knows (state and link) and, on a node, the edges
//! linked to it, but no member's admin address: members only reached through another's list
//! show that member's view of them, and the frame says so.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde_json::Value;
use tokio::task::JoinSet;

use crate::cli::TopArgs;
use crate::client::{Admin, Error};
use crate::doc::{edges, members, role, text, Counters};
use crate::fmt::{bytes, percent, rate, table};
use crate::term::{quit_keys, Screen};

/// One refresh: the documents fetched and when.
pub struct Snapshot {
    /// When the fetches completed (rates divide by the time between two of these).
    pub at: Instant,
    /// The contacted member's admin address and `/status`.
    pub contacted: (String, Value),
    /// Each `--also` address and its `/status`, or why it could not be had.
    pub also: Vec<(String, Result<Value, String>)>,
}

/// One member's line.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Its id (its admin address when it could not be reached).
    pub id: String,
    /// `edge`, `node`, or `?`.
    pub role: &'static str,
    /// A node's state as the membership sees it; `up` for a member whose admin API answered.
    pub state: String,
    /// The contacted member's link to it (`self` for the contacted member).
    pub link: String,
    /// Its own counters, when its `/status` was fetched.
    pub counters: Option<Counters>,
}

/// Fetches the contacted member's `/status` (an error ends the command) and every `--also`
/// address's, concurrently (an error there is shown on its line).
pub async fn gather(admin: &Admin, addr: &str, also: &[String]) -> Result<Snapshot, Error> {
    let mut others = JoinSet::new();
    for (i, a) in also.iter().enumerate() {
        let (admin, a) = (admin.clone(), a.clone());
        others.spawn(async move {
            let doc = match admin.get("status", &a, "/status").await {
                Ok(answer) => answer.json::<Value>("status").map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            (i, a, doc)
        });
    }
    let contacted = admin.get("status", addr, "/status").await?;
    let contacted: Value = contacted.json("status")?;
    let mut also_docs = Vec::new();
    while let Some(done) = others.join_next().await {
        let (i, a, doc) = done.map_err(|e| Error::Other(format!("top: a fetch failed: {e}")))?;
        also_docs.push((i, a, doc));
    }
    also_docs.sort_by_key(|(i, _, _)| *i);
    Ok(Snapshot {
        at: Instant::now(),
        contacted: (addr.to_string(), contacted),
        also: also_docs.into_iter().map(|(_, a, d)| (a, d)).collect(),
    })
}

/// The lines of a snapshot, edges first, then nodes, each by id; plus notes on what is not
/// known (members seen only through another's list, addresses that did not answer).
pub fn rows(snap: &Snapshot) -> (Vec<Row>, Vec<String>) {
    let (_, main) = &snap.contacted;
    let main_id = text(main, "id").to_string();
    let mut docs: Vec<&Value> = vec![main];
    let mut notes = Vec::new();
    let mut unreachable = Vec::new();
    for (addr, doc) in &snap.also {
        match doc {
            Ok(d) => docs.push(d),
            Err(e) => {
                notes.push(format!("{addr}: {e}"));
                unreachable.push(Row {
                    id: addr.clone(),
                    role: "?",
                    state: "unreachable".into(),
                    link: "-".into(),
                    counters: None,
                });
            }
        }
    }
    let mut by_id: BTreeMap<String, Row> = BTreeMap::new();
    // Members whose own /status was fetched (the first document for an id wins).
    for d in &docs {
        let id = text(d, "id");
        if id.is_empty() || by_id.contains_key(id) {
            continue;
        }
        by_id.insert(
            id.to_string(),
            Row {
                id: id.to_string(),
                role: role(d),
                state: "up".into(),
                link: "-".into(),
                counters: Some(Counters::of(d)),
            },
        );
    }
    // Members listed by those documents: nodes from `members`, edges from a node's `edges`.
    for d in &docs {
        for m in members(d) {
            by_id.entry(m.id.clone()).or_insert_with(|| Row {
                id: m.id.clone(),
                role: "node",
                state: "-".into(),
                link: "-".into(),
                counters: None,
            });
        }
        for e in edges(d) {
            by_id.entry(e.clone()).or_insert_with(|| Row {
                id: e,
                role: "edge",
                state: "-".into(),
                link: "-".into(),
                counters: None,
            });
        }
    }
    // A node's state: the contacted member's view first, else the first that lists it.
    for d in &docs {
        for m in members(d) {
            if let Some(r) = by_id.get_mut(&m.id) {
                if r.state == "-" || r.state == "up" {
                    r.state = m.state.clone();
                }
            }
        }
    }
    // Links as the contacted member sees them.
    for m in members(main) {
        if let Some(r) = by_id.get_mut(&m.id) {
            r.link = m.link.clone();
        }
    }
    for e in edges(main) {
        if let Some(r) = by_id.get_mut(&e) {
            r.link = "up".into();
        }
    }
    if let Some(r) = by_id.get_mut(&main_id) {
        r.link = "self".into();
    }
    let mut out: Vec<Row> = by_id.into_values().collect();
    out.sort_by(|a, b| (rank(a.role), &a.id).cmp(&(rank(b.role), &b.id)));
    out.extend(unreachable);
    let blind: Vec<&str> = out
        .iter()
        .filter(|r| r.counters.is_none() && r.state != "unreachable")
        .map(|r| r.id.as_str())
        .collect();
    if !blind.is_empty() {
        notes.insert(
            0,
            format!(
                "{}: known from {}'s /status only (which lists no admin addresses); \
                 for their numbers, add --also HOST:PORT",
                blind.join(", "),
                if main_id.is_empty() {
                    "the member"
                } else {
                    &main_id
                },
            ),
        );
    }
    (out, notes)
}

fn rank(role: &str) -> u8 {
    match role {
        "edge" => 0,
        "node" => 1,
        _ => 2,
    }
}

/// The previous refresh's counters by member, and when it was taken.
pub type Previous = (HashMap<String, Counters>, Instant);

/// The counters of a frame's rows, for the next frame's rates.
pub fn previous(rows: &[Row], at: Instant) -> Previous {
    let map = rows
        .iter()
        .filter_map(|r| r.counters.map(|c| (r.id.clone(), c)))
        .collect();
    (map, at)
}

/// A frame: the header, one line per member, the totals, the notes.
pub fn render(
    header: &str,
    rows: &[Row],
    notes: &[String],
    prev: Option<&Previous>,
    now: Instant,
) -> Vec<String> {
    let per_sec = |id: &str, cur: u64, pick: fn(&Counters) -> u64| -> Option<f64> {
        let (map, at) = prev?;
        let before = map.get(id)?;
        let dt = now.checked_duration_since(*at)?.as_secs_f64();
        (dt > 0.0).then(|| cur.saturating_sub(pick(before)) as f64 / dt)
    };
    let compact = |n: u64| bytes(n).replace(' ', "");
    let mut table_rows = vec![[
        "MEMBER", "ROLE", "STATE", "LINK", "REQS", "REQ/S", "HIT%", "OFFLOAD", "OUT", "OUT/S",
        "ENTRIES", "EVICT",
    ]
    .map(String::from)
    .to_vec()];
    // Totals: what clients asked is what the edges received (nodes answer edges); the origin
    // fetches of every member shown count against it.
    let edges_shown = rows
        .iter()
        .any(|r| r.role == "edge" && r.counters.is_some());
    let mut t = Counters::default();
    let (mut t_rps, mut t_bps, mut t_origin) = (None::<f64>, None::<f64>, 0u64);
    for r in rows {
        let Some(c) = r.counters else {
            table_rows.push(vec![
                r.id.clone(),
                r.role.into(),
                r.state.clone(),
                r.link.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
            continue;
        };
        let rps = per_sec(&r.id, c.requests, |c| c.requests);
        let bps = per_sec(&r.id, c.bytes_sent, |c| c.bytes_sent);
        table_rows.push(vec![
            r.id.clone(),
            r.role.into(),
            r.state.clone(),
            r.link.clone(),
            c.requests.to_string(),
            rps.map_or("-".into(), rate),
            percent(c.hits, c.requests),
            percent(c.offloaded(), c.requests),
            compact(c.bytes_sent),
            bps.map_or("-".into(), |b| compact(b as u64)),
            c.entries.to_string(),
            c.evictions.to_string(),
        ]);
        t_origin += c.origin_fetches;
        t.entries += c.entries;
        t.evictions += c.evictions;
        if r.role == "edge" || !edges_shown {
            t.requests += c.requests;
            t.hits += c.hits;
            t.bytes_sent += c.bytes_sent;
            if let Some(v) = rps {
                t_rps = Some(t_rps.unwrap_or(0.0) + v);
            }
            if let Some(v) = bps {
                t_bps = Some(t_bps.unwrap_or(0.0) + v);
            }
        }
    }
    table_rows.push(vec![
        "TOTAL".into(),
        String::new(),
        String::new(),
        String::new(),
        t.requests.to_string(),
        t_rps.map_or("-".into(), rate),
        percent(t.hits, t.requests),
        percent(t.requests.saturating_sub(t_origin), t.requests),
        compact(t.bytes_sent),
        t_bps.map_or("-".into(), |b| compact(b as u64)),
        t.entries.to_string(),
        t.evictions.to_string(),
    ]);
    let mut out = vec![header.to_string(), String::new()];
    out.extend(table(&table_rows, &[4, 5, 6, 7, 8, 9, 10, 11]));
    out.push(String::new());
    out.push(
        "REQ/S, OUT/S: change since the last refresh; HIT%, OFFLOAD (requests not sent to the \
         origin): since start."
            .into(),
    );
    out.push(format!(
        "TOTAL: {} requests; OFFLOAD counts every shown member's origin fetches.",
        if edges_shown {
            "the edges' (nodes answer edges, not clients)"
        } else {
            "the shown members'"
        }
    ));
    out.extend(notes.iter().cloned());
    out
}

/// `cdnctl top`.
pub async fn top(admin: &Admin, addr: &str, args: TopArgs) -> Result<(), Error> {
    let header = |id: &str, n: Option<u64>| {
        let id = if id.is_empty() { "?" } else { id };
        match n {
            None => format!("cdnctl top  {addr} ({id})"),
            Some(n) => format!(
                "cdnctl top  {addr} ({id})  every {:?}  refresh {n}  (q quits)",
                args.interval
            ),
        }
    };
    // The first fetch decides whether the member is there at all: its error is the command's.
    let snap = gather(admin, addr, &args.also).await?;
    let (mut shown, mut notes) = rows(&snap);
    let mut id = text(&snap.contacted.1, "id").to_string();
    if args.once {
        for line in render(&header(&id, None), &shown, &notes, None, snap.at) {
            println!("{line}");
        }
        return Ok(());
    }
    let mut prev: Option<Previous> = None;
    let mut last = snap.at;
    let mut refresh = 1u64;
    let mut screen = Screen::enter().map_err(|e| Error::Other(format!("top: terminal: {e}")))?;
    let mut quit = quit_keys();
    let mut quit_open = true;
    let mut signals = Signals::new()?;
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let frame = render(
            &header(&id, Some(refresh)),
            &shown,
            &notes,
            prev.as_ref(),
            last,
        );
        screen
            .draw(&frame)
            .map_err(|e| Error::Other(format!("top: drawing: {e}")))?;
        tokio::select! {
            key = quit.recv(), if quit_open => match key {
                Some(()) => break,
                None => quit_open = false,
            },
            () = signals.any() => break,
            got = async { tick.tick().await; gather(admin, addr, &args.also).await } => {
                refresh += 1;
                match got {
                    Ok(snap) => {
                        prev = Some(previous(&shown, last));
                        (shown, notes) = rows(&snap);
                        id = text(&snap.contacted.1, "id").to_string();
                        last = snap.at;
                    }
                    Err(e) => {
                        // Keep the last numbers on screen and say why they are not moving.
                        notes.retain(|n| !n.starts_with("refresh failed"));
                        notes.push(format!("refresh failed, numbers are from before: {e}"));
                    }
                }
            }
        }
    }
    drop(screen);
    Ok(())
}

/// Ctrl-C (when stdin is not a terminal we took), SIGTERM and SIGHUP.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, Error> {
        use tokio::signal::unix::{signal, SignalKind};
        let sig = |k: SignalKind| {
            signal(k).map_err(|e| Error::Other(format!("top: listening for signals: {e}")))
        };
        Ok(Self {
            int: sig(SignalKind::interrupt())?,
            term: sig(SignalKind::terminate())?,
            hup: sig(SignalKind::hangup())?,
        })
    }

    async fn any(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn edge_doc(requests: u64, hits: u64, sent: u64) -> Value {
        json!({
            "id": "edge-0", "role": "edge", "requests": requests, "hits": hits,
            "origin_fetches": 0, "bytes_sent": sent, "entries": 2,
            "evictions": {"size": 1, "expiry": 0, "purge": 1},
            "members": [
                {"id": "node-0", "addr": "a:1", "state": "alive", "link": "up"},
                {"id": "node-1", "addr": "a:2", "state": "suspect", "link": "down"},
            ],
        })
    }

    fn node_doc() -> Value {
        json!({
            "id": "node-0", "role": "cache-node", "requests": 4, "hits": 1,
            "origin_fetches": 3, "bytes_sent": 100, "entries": 3,
            "members": [
                {"id": "node-0", "addr": "a:1", "state": "alive", "link": "up"},
                {"id": "node-1", "addr": "a:2", "state": "alive", "link": "up"},
            ],
            "edges": ["edge-0", "edge-1"],
        })
    }

    fn snap(at: Instant, edge: Value, also: Vec<(String, Result<Value, String>)>) -> Snapshot {
        Snapshot {
            at,
            contacted: ("127.0.0.1:9000".into(), edge),
            also,
        }
    }

    #[test]
    fn every_member_gets_a_line_with_what_is_known_of_it() {
        let s = snap(
            Instant::now(),
            edge_doc(10, 5, 2048),
            vec![
                ("127.0.0.1:9050".into(), Ok(node_doc())),
                ("127.0.0.1:1".into(), Err("cannot reach".into())),
            ],
        );
        let (rows, notes) = rows(&s);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["edge-0", "edge-1", "node-0", "node-1", "127.0.0.1:1"]);
        // The contacted edge's view of the nodes wins: node-1 is suspect and its link down.
        assert_eq!(rows[3].state, "suspect");
        assert_eq!(rows[3].link, "down");
        assert_eq!(rows[0].link, "self");
        assert_eq!(rows[2].counters.map(|c| c.requests), Some(4));
        assert!(rows[1].counters.is_none());
        assert_eq!(rows[4].state, "unreachable");
        assert!(
            notes[0].starts_with("edge-1, node-1: known from edge-0's"),
            "{notes:?}"
        );
        assert!(notes.iter().any(|n| n.contains("cannot reach")));
    }

    #[test]
    fn rates_come_from_the_change_between_refreshes() {
        let t0 = Instant::now();
        let (r0, n0) = rows(&snap(t0, edge_doc(10, 5, 0), vec![]));
        let first = render("h", &r0, &n0, None, t0);
        let line = first
            .iter()
            .find(|l| l.starts_with("edge-0"))
            .expect("edge line");
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cells[..6], ["edge-0", "edge", "up", "self", "10", "-"]);
        let t1 = t0 + Duration::from_secs(2);
        let (r1, n1) = rows(&snap(t1, edge_doc(30, 25, 4096), vec![]));
        let prev = previous(&r0, t0);
        let frame = render("h", &r1, &n1, Some(&prev), t1);
        let line = frame
            .iter()
            .find(|l| l.starts_with("edge-0"))
            .expect("edge line");
        let cells: Vec<&str> = line.split_whitespace().collect();
        // REQS, REQ/S, HIT%, OFFLOAD, OUT, OUT/S, ENTRIES, EVICT
        assert_eq!(
            &cells[4..],
            ["30", "10.0", "83.3%", "100.0%", "4.0KiB", "2.0KiB", "2", "2"]
        );
        let total = frame
            .iter()
            .find(|l| l.starts_with("TOTAL"))
            .expect("total");
        let cells: Vec<&str> = total.split_whitespace().collect();
        assert_eq!(&cells[1..5], ["30", "10.0", "83.3%", "100.0%"], "{total}");
    }
}
