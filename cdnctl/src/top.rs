//! `cdnctl top`: one line per member, refreshed in place. Each refresh fetches the contacted
//! member's `/cluster` ([`gather`]): every member's own numbers, which that member gathers over
//! the cluster's links (at most a second old), with rates between its gathers. What a frame
//! shows is a pure function of that document ([`rows`], [`render`]).

use serde_json::Value;

use crate::cli::TopArgs;
use crate::client::{Admin, Error};
use crate::doc::{count, role, text, Counters};
use crate::fmt::{bytes, percent, rate, table};
use crate::term::{quit_keys, Screen};

/// One refresh: the document fetched.
pub struct Snapshot {
    /// The contacted member's admin address and its `/cluster`.
    pub contacted: (String, Value),
}

/// One member's line.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Its id.
    pub id: String,
    /// `edge`, `node`, or `?`.
    pub role: &'static str,
    /// Its state: a node's as the membership sees it, an edge's as its nodes see it.
    pub state: String,
    /// Whether its numbers are fresh: `self` (the contacted member), `up`, or `unreachable`
    /// (the numbers it last reported, if any).
    pub link: String,
    /// Its own counters, when it ever reported them.
    pub counters: Option<Counters>,
    /// Requests and bytes sent per second between the contacted member's last two gathers.
    pub rates: (Option<f64>, Option<f64>),
    /// The slowest of the last purges accepted there, until every member acknowledged (ms).
    pub purge_ms: Option<f64>,
    /// Its config's fingerprint.
    pub config: String,
}

/// Fetches the contacted member's `/cluster` (an error ends the command).
pub async fn gather(admin: &Admin, addr: &str) -> Result<Snapshot, Error> {
    let view: Value = admin
        .get("cluster view", addr, "/cluster")
        .await?
        .json("cluster view")?;
    Ok(Snapshot {
        contacted: (addr.to_string(), view),
    })
}

/// The lines of a snapshot (edges first, then nodes, each by id, as the view orders them),
/// and notes on what is not current (unreachable members, differing configs).
pub fn rows(snap: &Snapshot) -> (Vec<Row>, Vec<String>) {
    let view = &snap.contacted.1;
    let lines = view["members"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for l in lines {
        let id = text(l, "id").to_string();
        if id.is_empty() {
            continue;
        }
        let link = text(l, "link").to_string();
        if link == "unreachable" {
            let why = text(l, "error");
            notes.push(format!(
                "{id}: unreachable{}; {}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                },
                if l.get("requests").is_some() {
                    "its numbers are the last it reported"
                } else {
                    "no numbers from it yet"
                }
            ));
        }
        out.push(Row {
            role: role(l),
            state: text(l, "state").to_string(),
            link,
            counters: l.get("requests").map(|_| Counters::of(l)),
            rates: (l["requests_per_s"].as_f64(), l["bytes_per_s"].as_f64()),
            purge_ms: l["purge_latency"]["max_ms"].as_f64(),
            config: text(l, "config_version").to_string(),
            id,
        });
    }
    if let Some(versions) = view["total"]["config_versions"].as_object() {
        for (role, v) in versions {
            let n = v.as_array().map_or(0, Vec::len);
            if n > 1 {
                notes.push(format!("the {role}s run {n} different configs (CONFIG)"));
            }
        }
    }
    (out, notes)
}

/// A frame: the header, one line per member, the totals (from the view), the notes.
pub fn render(header: &str, rows: &[Row], total: &Value, notes: &[String]) -> Vec<String> {
    let compact = |n: u64| bytes(n).replace(' ', "");
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v}ms"));
    let mut table_rows = vec![[
        "MEMBER", "ROLE", "STATE", "LINK", "REQS", "REQ/S", "HIT%", "OFFLOAD", "OUT", "OUT/S",
        "ENTRIES", "EVICT", "PURGE", "CONFIG",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        let mut cells = vec![r.id.clone(), r.role.into(), r.state.clone(), r.link.clone()];
        match r.counters {
            Some(c) => cells.extend([
                c.requests.to_string(),
                r.rates.0.map_or("-".into(), rate),
                percent(c.hits, c.requests),
                percent(c.offloaded(), c.requests),
                compact(c.bytes_sent),
                r.rates.1.map_or("-".into(), |b| compact(b as u64)),
                c.entries.to_string(),
                c.evictions.to_string(),
                ms(r.purge_ms),
            ]),
            None => cells.extend(std::iter::repeat_n("-".to_string(), 9)),
        }
        cells.push(if r.config.is_empty() {
            "-".into()
        } else {
            r.config.clone()
        });
        table_rows.push(cells);
    }
    let requests = count(total, "requests");
    let origin = count(total, "origin_fetches");
    let ev = &total["evictions"];
    table_rows.push(vec![
        "TOTAL".into(),
        String::new(),
        String::new(),
        String::new(),
        requests.to_string(),
        total["requests_per_s"].as_f64().map_or("-".into(), rate),
        percent(count(total, "hits"), requests),
        percent(requests.saturating_sub(origin), requests),
        compact(count(total, "bytes_sent")),
        total["bytes_per_s"]
            .as_f64()
            .map_or("-".into(), |b| compact(b as u64)),
        count(total, "entries").to_string(),
        (count(ev, "size") + count(ev, "expiry") + count(ev, "purge")).to_string(),
        ms(total["purge_latency_max_ms"].as_f64()),
    ]);
    let mut out = vec![header.to_string(), String::new()];
    out.extend(table(&table_rows, &[4, 5, 6, 7, 8, 9, 10, 11, 12]));
    out.push(String::new());
    out.push(
        "REQ/S, OUT/S: between the member's last two gathers; HIT%, OFFLOAD (requests not sent \
         to the origin): since start; PURGE: slowest of the last 100 purges accepted there."
            .into(),
    );
    out.push(format!(
        "TOTAL: {} requests; OFFLOAD counts every member's origin fetches.",
        if text(total, "requests_from") == "edges" {
            "the edges' (nodes answer edges, not clients)"
        } else {
            "the members'"
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
    let id_of = |s: &Snapshot| text(&s.contacted.1, "gathered_by").to_string();
    // The first fetch decides whether the member is there at all: its error is the command's.
    let mut snap = gather(admin, addr).await?;
    let (mut shown, mut notes) = rows(&snap);
    if args.once {
        let frame = render(
            &header(&id_of(&snap), None),
            &shown,
            &snap.contacted.1["total"],
            &notes,
        );
        for line in frame {
            println!("{line}");
        }
        return Ok(());
    }
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
            &header(&id_of(&snap), Some(refresh)),
            &shown,
            &snap.contacted.1["total"],
            &notes,
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
            got = async { tick.tick().await; gather(admin, addr).await } => {
                refresh += 1;
                match got {
                    Ok(s) => {
                        snap = s;
                        (shown, notes) = rows(&snap);
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

    fn view() -> Value {
        json!({
            "gathered_by": "edge-0",
            "members": [
                {"id": "edge-0", "role": "edge", "state": "alive", "link": "self",
                 "requests": 30, "hits": 25, "origin_fetches": 0, "bytes_sent": 4096,
                 "entries": 2, "evictions": {"size": 1, "expiry": 0, "purge": 1},
                 "requests_per_s": 10.0, "bytes_per_s": 2048.0,
                 "purge_latency": {"max_ms": 2.5}, "config_version": "aaaaaaaaaaaa"},
                {"id": "edge-1", "role": "edge", "state": "alive", "link": "unreachable",
                 "error": "no status within 500ms"},
                {"id": "node-0", "role": "node", "state": "down", "link": "unreachable",
                 "error": "not asked: down", "requests": 4, "hits": 1, "origin_fetches": 3,
                 "bytes_sent": 100, "entries": 3, "config_version": "bbbbbbbbbbbb",
                 "requests_per_s": null},
            ],
            "total": {"requests": 30, "requests_per_s": 10.0, "hits": 25, "origin_fetches": 3,
                      "bytes_sent": 4096, "bytes_per_s": 2048.0, "entries": 5,
                      "evictions": {"size": 1, "expiry": 0, "purge": 1},
                      "purge_latency_max_ms": 2.5, "requests_from": "edges",
                      "config_versions": {"edge": ["aaaaaaaaaaaa", "cccccccccccc"],
                                          "node": ["bbbbbbbbbbbb"]}},
        })
    }

    fn snap() -> Snapshot {
        Snapshot {
            contacted: ("127.0.0.1:9000".into(), view()),
        }
    }

    fn cells<'a>(frame: &'a [String], id: &str) -> Vec<&'a str> {
        frame
            .iter()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no line for {id}"))
            .split_whitespace()
            .collect()
    }

    #[test]
    fn every_member_of_the_view_gets_a_line_and_the_unreachable_a_note() {
        let (rows, notes) = rows(&snap());
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["edge-0", "edge-1", "node-0"]);
        assert_eq!(rows[0].link, "self");
        assert_eq!(rows[1].counters, None);
        assert_eq!(rows[2].counters.map(|c| c.requests), Some(4));
        assert_eq!(rows[2].state, "down");
        assert_eq!(rows[0].role, "edge");
        assert_eq!(rows[2].role, "node");
        assert!(
            notes[0].starts_with("edge-1: unreachable (no status within 500ms); no numbers"),
            "{notes:?}"
        );
        assert!(notes[1].contains("the last it reported"), "{notes:?}");
        assert!(notes
            .iter()
            .any(|n| n.contains("the edges run 2 different configs")));
    }

    #[test]
    fn a_frame_shows_the_views_numbers_rates_and_totals() {
        let s = snap();
        let (rows, notes) = rows(&s);
        let frame = render("h", &rows, &s.contacted.1["total"], &notes);
        // REQS, REQ/S, HIT%, OFFLOAD, OUT, OUT/S, ENTRIES, EVICT, PURGE, CONFIG
        assert_eq!(
            &cells(&frame, "edge-0")[4..],
            [
                "30",
                "10.0",
                "83.3%",
                "100.0%",
                "4.0KiB",
                "2.0KiB",
                "2",
                "2",
                "2.5ms",
                "aaaaaaaaaaaa"
            ]
        );
        assert_eq!(&cells(&frame, "edge-1")[4..6], ["-", "-"]);
        assert_eq!(&cells(&frame, "node-0")[4..8], ["4", "-", "25.0%", "25.0%"]);
        let total = cells(&frame, "TOTAL");
        assert_eq!(&total[1..5], ["30", "10.0", "83.3%", "90.0%"]);
    }
}
