//! Pure helpers for what the operator types and reads: paths from URLs, durations, byte sizes
//! and ratios.

use std::time::Duration;

/// The path and query the admin API keys objects by, from a path (`/a?b=1`) or a full URL
/// (`http://cdn.example/a?b=1`, as copied from a browser or a log line).
pub fn path_of(arg: &str) -> Result<String, String> {
    if arg.starts_with('/') {
        return Ok(arg.to_string());
    }
    if arg.contains("://") {
        let uri: http::Uri = arg
            .parse()
            .map_err(|e| format!("`{arg}` is not a URL: {e}"))?;
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        return Ok(if pq.is_empty() { "/".into() } else { pq.into() });
    }
    Err(format!(
        "`{arg}`: give a path starting with / (as clients request it) or a full URL"
    ))
}

/// A duration written with a unit (`500ms`, `2s`, `1m`) or a bare number of seconds (`1.5`).
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 2s, 1m)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        other => return Err(format!("`{s}`: unknown unit `{other}` (use ms, s or m)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(format!("`{s}`: must be above 0 and at most a day"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A byte count in binary units with one decimal: `512 B`, `1.5 KiB`, `64.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `part` out of `whole` as a percentage with one decimal, `-` when there is no whole.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", 100.0 * part as f64 / whole as f64)
}

/// A rate per second with one decimal.
pub fn rate(per_sec: f64) -> String {
    format!("{per_sec:.1}")
}

/// A list of ids, or `none`.
pub fn list(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(", ")
    }
}

/// Rows of cells as columns padded to their widest cell, two spaces apart; the columns in
/// `numeric` are right-aligned (numbers line up), the others left-aligned.
pub fn table(rows: &[Vec<String>], numeric: &[usize]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if numeric.contains(&i) {
                        format!("{c:>w$}", w = width[i])
                    } else {
                        format!("{c:<w$}", w = width[i])
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_come_from_paths_or_urls() {
        assert_eq!(path_of("/a?b=1").unwrap(), "/a?b=1");
        assert_eq!(path_of("http://h:8000/a/b?c=2").unwrap(), "/a/b?c=2");
        assert_eq!(path_of("https://h").unwrap(), "/");
        assert!(path_of("a/b").unwrap_err().contains("starting with /"));
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("1m").unwrap(), Duration::from_secs(60));
        assert!(duration("0s").is_err());
        assert!(duration("soon").is_err());
        assert!(duration("3h").is_err());
    }

    #[test]
    fn sizes_and_ratios_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(0, 0), "-");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &[
                vec!["ID".into(), "N".into()],
                vec!["node-10".into(), "7".into()],
            ],
            &[1],
        );
        assert_eq!(t, vec!["ID       N", "node-10  7"]);
    }
}
