//! The mutating calls: purge, push and prewarm, each sent as the admin API takes it and its
//! report printed readably.

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;

use crate::cli::{PrewarmArgs, PurgeArgs, PushArgs};
use crate::client::{success, Admin, Answer, Error};
use crate::fmt::{bytes, list, path_of};

/// Most URLs the admin API takes in one prewarm call.
const PREWARM_BATCH: usize = 1000;

/// `POST /purge`'s answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PurgeReport {
    acked: Vec<String>,
    missing: Vec<String>,
    elapsed_ms: u64,
}

/// `PUT /objects/…`'s answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PushReport {
    stored: Vec<String>,
    edges: Vec<String>,
    missing: Vec<String>,
    error: Option<String>,
}

/// One URL of `POST /prewarm`'s answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PrewarmResult {
    url: String,
    result: String,
    status: Option<u16>,
    detail: Option<String>,
    edges: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PrewarmAnswer {
    results: Vec<PrewarmResult>,
}

/// `cdnctl purge`.
pub async fn purge(admin: &Admin, addr: &str, args: PurgeArgs) -> Result<(), Error> {
    let urls = args
        .urls
        .iter()
        .map(|u| path_of(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Usage(format!("purge: {e}")))?;
    if let Some(bad) = args.prefix.iter().find(|p| !p.starts_with('/')) {
        return Err(Error::Usage(format!(
            "purge: --prefix `{bad}` must be a path starting with /"
        )));
    }
    let body = serde_json::json!({
        "urls": urls,
        "prefixes": args.prefix,
        "tags": args.tag,
        "all": args.all,
        "soft": args.soft,
    });
    let a = admin.post_json("purge", addr, "/purge", &body).await?;
    // 503 carries the report too: strict consistency and a member that did not acknowledge.
    let a = report_or_error("purge", addr, a)?;
    if args.json {
        print_body(&a.body);
    }
    let r: PurgeReport = a.json("purge")?;
    let total = r.acked.len() + r.missing.len();
    let how = if args.soft { "marked stale" } else { "purged" };
    if !args.json {
        if r.missing.is_empty() {
            println!(
                "{how}: acknowledged by all {total} members in {} ms",
                r.elapsed_ms
            );
        } else {
            println!(
                "{how}: NOT acknowledged by {} of {total} members (gave up after {} ms)",
                r.missing.len(),
                r.elapsed_ms
            );
        }
        println!("  acknowledged: {}", list(&r.acked));
        println!("  missing:      {}", list(&r.missing));
    }
    if r.missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Incomplete(format!(
            "purge: not acknowledged by {}",
            r.missing.join(", ")
        )))
    }
}

/// `cdnctl push`.
pub async fn push(admin: &Admin, addr: &str, args: PushArgs) -> Result<(), Error> {
    let key = path_of(&args.path).map_err(|e| Error::Usage(format!("push: {e}")))?;
    let body = read_input(&args.file).map_err(|e| Error::Usage(format!("push: {e}")))?;
    let mut headers = HeaderMap::new();
    let mut set = |name: HeaderName, value: &str, flag: &str| -> Result<(), Error> {
        let v = HeaderValue::from_str(value).map_err(|_| {
            Error::Usage(format!(
                "push: {flag} `{value}` cannot be sent as a header value"
            ))
        })?;
        headers.append(name, v);
        Ok(())
    };
    if let Some(ct) = &args.content_type {
        set(header::CONTENT_TYPE, ct, "--content-type")?;
    }
    if let Some(secs) = args.max_age {
        set(
            header::CACHE_CONTROL,
            &format!("max-age={secs}"),
            "--max-age",
        )?;
    }
    if let Some(cc) = &args.cache_control {
        set(header::CACHE_CONTROL, cc, "--cache-control")?;
    }
    if !args.tag.is_empty() {
        set(
            HeaderName::from_static("surrogate-key"),
            &args.tag.join(" "),
            "--tag",
        )?;
    }
    for h in &args.header {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| Error::Usage(format!("push: --header `{h}` is not `Name: value`")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| Error::Usage(format!("push: --header `{h}`: bad field name")))?;
        set(name, value.trim(), "--header")?;
    }
    let target = match (&args.edges, key.contains('?')) {
        (None, _) => format!("/objects{key}"),
        (Some(_), false) => format!("/objects{key}?edges=all"),
        (Some(_), true) => format!("/objects{key}&edges=all"),
    };
    let size = body.len() as u64;
    let a = admin
        .send("push", addr, Method::PUT, &target, headers, body)
        .await?;
    // 503 carries the report: stored on no node, or strict and a member missing.
    let a = report_or_error("push", addr, a)?;
    if args.json {
        print_body(&a.body);
    }
    let r: PushReport = a.json("push")?;
    if !args.json {
        println!("pushed {key} ({})", bytes(size));
        println!("  stored on nodes: {}", list(&r.stored));
        if args.edges.is_some() || !r.edges.is_empty() {
            println!("  in edges' L1:    {}", list(&r.edges));
        }
        println!("  missing:         {}", list(&r.missing));
    }
    if r.stored.is_empty() {
        return Err(Error::Server {
            what: "push".into(),
            addr: addr.into(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: format!(
                "stored on no node{}",
                r.error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        });
    }
    if !r.missing.is_empty() {
        return Err(Error::Incomplete(format!(
            "push: not acknowledged by {}",
            r.missing.join(", ")
        )));
    }
    Ok(())
}

/// `cdnctl prewarm`.
pub async fn prewarm(admin: &Admin, addr: &str, args: PrewarmArgs) -> Result<(), Error> {
    let mut urls = Vec::new();
    for u in &args.urls {
        urls.push(path_of(u).map_err(|e| Error::Usage(format!("prewarm: {e}")))?);
    }
    if let Some(file) = &args.from {
        let text = read_input(file).map_err(|e| Error::Usage(format!("prewarm: {e}")))?;
        let text = String::from_utf8_lossy(&text);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            urls.push(path_of(line).map_err(|e| {
                Error::Usage(format!("prewarm: {}:{}: {e}", file.display(), n + 1))
            })?);
        }
    }
    if urls.is_empty() {
        return Err(Error::Usage("prewarm: no URLs given".into()));
    }
    let mut results = Vec::new();
    for batch in urls.chunks(PREWARM_BATCH) {
        let body = serde_json::json!({ "urls": batch, "edges": args.edges });
        let a = admin.post_json("prewarm", addr, "/prewarm", &body).await?;
        let a = success("prewarm", addr, a)?;
        if args.json {
            print_body(&a.body);
        }
        let answer: PrewarmAnswer = a.json("prewarm")?;
        results.extend(answer.results);
    }
    if !args.json {
        let mut rows = vec![vec![
            "RESULT".to_string(),
            "STATUS".into(),
            "URL".into(),
            "EDGES / DETAIL".into(),
        ]];
        for r in &results {
            let extra = match (&r.detail, r.edges.is_empty()) {
                (Some(d), _) => d.clone(),
                (None, false) => r.edges.join(", "),
                (None, true) => String::new(),
            };
            rows.push(vec![
                r.result.clone(),
                r.status.map(|s| s.to_string()).unwrap_or("-".into()),
                r.url.clone(),
                extra,
            ]);
        }
        for line in crate::fmt::table(&rows, &[1]) {
            println!("{line}");
        }
    }
    let failed = results.iter().filter(|r| r.result != "stored").count();
    if failed > 0 {
        return Err(Error::Incomplete(format!(
            "prewarm: {failed} of {} URLs not stored",
            results.len()
        )));
    }
    Ok(())
}

/// A success, or a 503 that carries a JSON report (printed and judged by the caller); any
/// other status is an error.
fn report_or_error(what: &str, addr: &str, a: Answer) -> Result<Answer, Error> {
    if a.status == StatusCode::SERVICE_UNAVAILABLE
        && serde_json::from_slice::<serde_json::Value>(&a.body).is_ok_and(|v| v.is_object())
    {
        return Ok(a);
    }
    success(what, addr, a)
}

/// A file's bytes, or standard input's for `-`.
fn read_input(path: &Path) -> Result<Bytes, String> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("reading standard input: {e}"))?;
        return Ok(buf.into());
    }
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| format!("reading `{}`: {e}", path.display()))
}

/// A JSON body as it came, ending with a newline.
pub fn print_body(body: &[u8]) {
    let s = String::from_utf8_lossy(body);
    if s.ends_with('\n') {
        print!("{s}");
    } else {
        println!("{s}");
    }
}
