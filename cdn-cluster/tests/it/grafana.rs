//! The Grafana dashboard (`deploy/grafana/cdn-cluster.json`) against what a running cluster
//! exports: every metric a panel or a variable names, and every label it selects or groups
//! by, must be on some member's `/metrics`, so a renamed metric breaks this test instead of
//! leaving an operator with an empty panel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::support::{admin_purge, cluster, get};

/// Labels Prometheus adds to every series of a scrape target, not on `/metrics` itself.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// PromQL functions, by name. An identifier followed by `(` that is not here fails the parse,
/// instead of being mistaken for a metric.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// PromQL aggregation operators: `sum(x) by (l)` or `sum by (l) (x)`.
const AGGREGATIONS: &[&str] = &[
    "avg",
    "bottomk",
    "count",
    "count_values",
    "group",
    "limit_ratio",
    "limitk",
    "max",
    "min",
    "quantile",
    "stddev",
    "stdvar",
    "sum",
    "topk",
];

/// Keywords that take a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Keywords and literals that are neither metrics nor functions.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "start", "end", "inf", "nan",
];

/// Functions whose argument must be a counter (or a histogram's `_bucket`/`_sum`/`_count`).
const OVER_COUNTERS: &[&str] = &["rate", "irate", "increase", "resets"];

/// One label matcher in a selector: `name op "value"`.
#[derive(Debug, Clone, PartialEq)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// One metric named in an expression.
#[derive(Debug, Clone, PartialEq)]
struct MetricUse {
    name: String,
    matchers: Vec<Matcher>,
    /// The function whose argument list the selector sits in directly, if any.
    inside: Option<String>,
}

/// What an expression names: metrics with their selectors, and the labels its `by`,
/// `without`, `on`, `ignoring` and `group_*` clauses list.
#[derive(Debug, Default, PartialEq)]
struct Names {
    metrics: Vec<MetricUse>,
    grouping: Vec<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A small scanner over a PromQL expression (with Grafana's `$variables`).
struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).map(|&b| b as char)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn ident(&mut self) -> String {
        let start = self.i;
        while self.peek().is_some_and(is_ident) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// A quoted string starting at the cursor; returns its contents (escapes kept as written).
    fn string(&mut self) -> Result<String, String> {
        let quote = self.peek().ok_or("expected a string, found the end")?;
        if !matches!(quote, '"' | '\'' | '`') {
            return Err(format!("expected a string at byte {}", self.i));
        }
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == '\\' && quote != '`' {
                self.i += 2;
                continue;
            }
            if c == quote {
                let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                return Ok(v);
            }
            self.i += 1;
        }
        Err("unterminated string".into())
    }

    /// Skips to just past the `close` matching the `open` at the cursor (strings skipped).
    fn skip_group(&mut self, open: char, close: char) -> Result<(), String> {
        let mut depth = 0;
        while let Some(c) = self.peek() {
            match c {
                '"' | '\'' | '`' => {
                    self.string()?;
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
        Err(format!("unbalanced {open}"))
    }

    /// `{name op "value", ...}` at the cursor.
    fn matchers(&mut self) -> Result<Vec<Matcher>, String> {
        self.i += 1; // `{`
        let mut out = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                Some('}') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(',') => {
                    self.i += 1;
                    continue;
                }
                Some(c) if is_ident_start(c) => {}
                other => {
                    return Err(format!(
                        "expected a label name in a selector, got {other:?}"
                    ))
                }
            }
            let label = self.ident();
            self.skip_ws();
            let op = ["=~", "!~", "!=", "="]
                .into_iter()
                .find(|op| self.s[self.i..].starts_with(op.as_bytes()))
                .ok_or_else(|| format!("label `{label}`: expected =, !=, =~ or !~"))?;
            self.i += op.len();
            self.skip_ws();
            let value = self.string()?;
            out.push(Matcher {
                label,
                op: op.into(),
                value,
            });
        }
    }

    /// `(a, b, ...)` at the cursor: label names.
    fn label_list(&mut self) -> Result<Vec<String>, String> {
        self.i += 1; // `(`
        let mut out = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                Some(')') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(',') => self.i += 1,
                Some(c) if is_ident_start(c) => out.push(self.ident()),
                other => return Err(format!("expected a label name in a list, got {other:?}")),
            }
        }
    }
}

/// The metrics and grouping labels a PromQL expression names. Strings, range and subquery
/// brackets, numbers and durations, Grafana variables, operators, functions and keywords are
/// skipped; an identifier is a metric unless it is one of those; an unknown function is an
/// error rather than a metric.
fn promql_names(expr: &str) -> Result<Names, String> {
    let mut sc = Scanner {
        s: expr.as_bytes(),
        i: 0,
    };
    let mut names = Names::default();
    // The function each open parenthesis belongs to (`None`: plain grouping).
    let mut parens: Vec<Option<String>> = Vec::new();
    let mut pending_fn: Option<String> = None;
    while let Some(c) = sc.peek() {
        match c {
            c if c.is_ascii_whitespace() => sc.i += 1,
            '"' | '\'' | '`' => {
                sc.string()?;
            }
            '#' => {
                while sc.peek().is_some_and(|c| c != '\n') {
                    sc.i += 1;
                }
            }
            '[' => sc.skip_group('[', ']')?,
            '$' => {
                sc.i += 1;
                if sc.peek() == Some('{') {
                    sc.skip_group('{', '}')?;
                } else {
                    sc.ident();
                }
            }
            '(' => {
                parens.push(pending_fn.take());
                sc.i += 1;
            }
            ')' => {
                parens.pop().ok_or("unbalanced )")?;
                sc.i += 1;
            }
            '{' => return Err(format!("a selector without a metric name at byte {}", sc.i)),
            c if c.is_ascii_digit()
                || (c == '.' && sc.s.get(sc.i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                // A number or a duration (`0.99`, `1e3`, `5m`).
                while sc
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
                {
                    sc.i += 1;
                }
            }
            c if is_ident_start(c) => {
                let word = sc.ident();
                sc.skip_ws();
                let next = sc.peek();
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) {
                    if next == Some('(') {
                        names.grouping.extend(sc.label_list()?);
                    }
                } else if KEYWORDS.contains(&lower.as_str()) {
                } else if AGGREGATIONS.contains(&word.as_str()) {
                    // Its argument list may come after a `by (...)` or `without (...)`.
                    let grouped = ["by", "without"]
                        .iter()
                        .any(|k| sc.s[sc.i..].starts_with(k.as_bytes()));
                    if next != Some('(') && !grouped {
                        return Err(format!("`{word}` without an argument list"));
                    }
                    pending_fn = Some(word);
                } else if next == Some('(') {
                    if !FUNCTIONS.contains(&word.as_str()) {
                        return Err(format!("`{word}(`: not a PromQL function"));
                    }
                    pending_fn = Some(word);
                } else {
                    let matchers = if next == Some('{') {
                        sc.matchers()?
                    } else {
                        Vec::new()
                    };
                    names.metrics.push(MetricUse {
                        name: word,
                        matchers,
                        inside: parens.last().cloned().flatten(),
                    });
                }
            }
            // Operators, commas, `@`, `:` of a subquery outside brackets.
            _ => sc.i += 1,
        }
    }
    if !parens.is_empty() {
        return Err("unbalanced (".into());
    }
    Ok(names)
}

/// The selector and the label of a Grafana Prometheus variable query:
/// `label_values(selector, label)`, `label_values(label)` or `query_result(expr)`.
fn variable_query(q: &str) -> Result<(Option<String>, Option<String>), String> {
    let q = q.trim();
    let inner = |prefix: &str| {
        q.strip_prefix(prefix)
            .and_then(|r| r.trim_start().strip_prefix('('))
            .and_then(|r| r.strip_suffix(')'))
    };
    if let Some(args) = inner("label_values") {
        return Ok(match args.rsplit_once(',') {
            Some((sel, label)) => (Some(sel.trim().into()), Some(label.trim().into())),
            None => (None, Some(args.trim().into())),
        });
    }
    if let Some(expr) = inner("query_result") {
        return Ok((Some(expr.trim().into()), None));
    }
    Err(format!(
        "variable query `{q}`: expected label_values(...) or query_result(...)"
    ))
}

/// What the cluster exports: each sample name with the label sets of its series, and each
/// family's `# TYPE`.
#[derive(Default)]
struct Exported {
    series: BTreeMap<String, BTreeSet<Vec<(String, String)>>>,
    types: BTreeMap<String, String>,
}

impl Exported {
    /// Adds a scrape in the Prometheus text format.
    fn add(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    self.types.insert(name.into(), kind.into());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let mut labels = Vec::new();
            if line[name_end..].starts_with('{') {
                let mut sc = Scanner {
                    s: line.as_bytes(),
                    i: name_end,
                };
                // The exposition format's label set reads like a selector of `=` matchers.
                let ms = sc
                    .matchers()
                    .unwrap_or_else(|e| panic!("unparsable sample line `{line}`: {e}"));
                labels = ms.into_iter().map(|m| (m.label, m.value)).collect();
            }
            self.series.entry(name.into()).or_default().insert(labels);
        }
    }

    /// Keeps only the series of members whose id starts with `prefix` (and those without a
    /// `member` label): other tests' clusters publish into the same process-wide recorder.
    fn keep_members(&mut self, prefix: &str) {
        for sets in self.series.values_mut() {
            sets.retain(|ls| {
                ls.iter()
                    .all(|(k, v)| k != "member" || v.starts_with(prefix))
            });
        }
        self.series.retain(|_, sets| !sets.is_empty());
    }

    /// The family a sample name belongs to and its type: `X_bucket` of histogram `X` is
    /// (`X`, "histogram").
    fn family(&self, sample: &str) -> Option<(&str, &str)> {
        if let Some((k, t)) = self.types.get_key_value(sample) {
            return Some((k, t));
        }
        ["_bucket", "_sum", "_count"]
            .into_iter()
            .find_map(|suffix| {
                let fam = sample.strip_suffix(suffix)?;
                let (k, t) = self.types.get_key_value(fam)?;
                matches!(t.as_str(), "histogram" | "summary").then_some((k.as_str(), t.as_str()))
            })
    }

    fn has_label(&self, sample: &str, label: &str) -> bool {
        self.series[sample]
            .iter()
            .any(|ls| ls.iter().any(|(k, _)| k == label))
    }

    fn has_value(&self, sample: &str, label: &str, value: &str) -> bool {
        self.series[sample]
            .iter()
            .any(|ls| ls.iter().any(|(k, v)| k == label && v == value))
    }
}

/// Problems with one expression's metrics and labels against `exp`, each naming `at`.
/// `variable`: a variable query, which lists label values and so may name a counter bare.
fn check_expr(
    exp: &Exported,
    at: &str,
    expr: &str,
    variable: bool,
    problems: &mut Vec<String>,
) -> Names {
    let names = match promql_names(expr) {
        Ok(n) => n,
        Err(e) => {
            problems.push(format!("{at}: cannot read `{expr}`: {e}"));
            return Names::default();
        }
    };
    if names.metrics.is_empty() {
        problems.push(format!("{at}: `{expr}` names no metric"));
    }
    for m in &names.metrics {
        if !exp.series.contains_key(&m.name) {
            let why = match exp.types.get(&m.name).map(String::as_str) {
                Some("histogram") => ": a histogram is read as its _bucket, _sum or _count",
                _ => "",
            };
            problems.push(format!(
                "{at}: metric `{}` is not exported by any member{why}",
                m.name
            ));
            continue;
        }
        let kind = exp.family(&m.name).map_or("untyped", |(_, t)| t);
        let over_counter = m
            .inside
            .as_deref()
            .is_some_and(|f| OVER_COUNTERS.contains(&f));
        if over_counter && !matches!(kind, "counter" | "histogram") {
            problems.push(format!(
                "{at}: {}() over `{}`, a {kind}",
                m.inside.as_deref().unwrap_or_default(),
                m.name
            ));
        }
        if !over_counter && !variable && kind != "gauge" {
            problems.push(format!(
                "{at}: `{}` is a {kind}: read it through rate() or increase()",
                m.name
            ));
        }
        for mt in &m.matchers {
            if !exp.has_label(&m.name, &mt.label) {
                problems.push(format!("{at}: `{}` has no label `{}`", m.name, mt.label));
                continue;
            }
            // Literal values must exist: `outcome="hits"` would select nothing. A regex of
            // plain alternatives is checked alternative by alternative.
            let literal = |v: &str| {
                !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
            };
            let values: Vec<&str> = match mt.op.as_str() {
                "=" | "!=" if literal(&mt.value) => vec![mt.value.as_str()],
                "=~" | "!~" if mt.value.split('|').all(literal) => mt.value.split('|').collect(),
                _ => vec![],
            };
            for v in values {
                if !exp.has_value(&m.name, &mt.label, v) {
                    problems.push(format!(
                        "{at}: no `{}` series has {}=\"{v}\"",
                        m.name, mt.label
                    ));
                }
            }
        }
    }
    // Every grouping label must be on every metric the expression reads (or be added by the
    // scrape): a `sum by (tier)` over a metric without `tier` silently merges everything.
    for g in &names.grouping {
        if TARGET_LABELS.contains(&g.as_str()) {
            continue;
        }
        for m in names
            .metrics
            .iter()
            .filter(|m| exp.series.contains_key(&m.name))
        {
            if !exp.has_label(&m.name, g) {
                problems.push(format!(
                    "{at}: groups by `{g}`, which `{}` does not have",
                    m.name
                ));
            }
        }
    }
    names
}

fn dashboard_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/cdn-cluster.json")
}

/// Every panel, rows' nested panels included.
fn all_panels(panels: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in panels {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(all_panels(nested));
        }
    }
    out
}

/// Problems with the dashboard's shape as Grafana 10 imports it.
fn check_shape(d: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    if d["title"].as_str().is_none_or(str::is_empty) {
        problems.push("no dashboard title".into());
    }
    if d["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problems.push(format!(
            "schemaVersion {} is older than Grafana 10's",
            d["schemaVersion"]
        ));
    }
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => problems.push("no `datasource` variable of type datasource over prometheus".into()),
    }
    for name in ["tier", "member"] {
        if var(name).is_none_or(|v| v["type"] != "query") {
            problems.push(format!("no `{name}` query variable"));
        }
    }
    let Some(panels) = d["panels"].as_array().filter(|p| !p.is_empty()) else {
        problems.push("no `panels`".into());
        return problems;
    };
    let mut ids = BTreeSet::new();
    for p in all_panels(panels) {
        let title = p["title"].as_str().unwrap_or_default();
        match p["id"].as_u64() {
            Some(id) if !ids.insert(id) => problems.push(format!("panel id {id} used twice")),
            Some(_) => {}
            None => problems.push(format!("panel `{title}` has no numeric id")),
        }
        if title.is_empty() || p["type"].as_str().is_none() {
            problems.push(format!("panel {} lacks a title or a type", p["id"]));
        }
        let g = &p["gridPos"];
        let fits = ["h", "w", "x", "y"].iter().all(|k| g[k].is_u64())
            && g["x"].as_u64().unwrap_or(0) + g["w"].as_u64().unwrap_or(0) <= 24;
        if !fits {
            problems.push(format!("panel `{title}`: gridPos missing or wider than 24"));
        }
        if p["type"] == "row" {
            continue;
        }
        if p["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("panel `{title}` does not use ${{datasource}}"));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel `{title}` has no targets"));
        }
        let mut refs = BTreeSet::new();
        for t in &targets {
            if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!("panel `{title}`: a target without expr"));
            }
            if !t["refId"]
                .as_str()
                .is_some_and(|r| refs.insert(r.to_string()))
            {
                problems.push(format!("panel `{title}`: missing or repeated refId"));
            }
        }
    }
    problems
}

#[test]
fn the_promql_reader_finds_metrics_and_labels_and_nothing_else() {
    let n = promql_names(
        r#"sum by (tier, outcome) (rate(cdn_requests_total{tier=~"$tier", member=~"$member"}[$__rate_interval]))
           / on (tier) group_left sum without (member) (increase(x_total{a!="b,c}"}[5m:1m] offset 1h))
           > bool 0.5 and histogram_quantile(0.99, sum(rate(h_bucket[${__range}])) by (le))
           or vector(1e3) unless up"#,
    )
    .unwrap();
    let metrics: Vec<(&str, Option<&str>)> = n
        .metrics
        .iter()
        .map(|m| (m.name.as_str(), m.inside.as_deref()))
        .collect();
    assert_eq!(
        metrics,
        [
            ("cdn_requests_total", Some("rate")),
            ("x_total", Some("increase")),
            ("h_bucket", Some("rate")),
            ("up", None),
        ]
    );
    assert_eq!(
        n.metrics[0].matchers,
        [
            Matcher {
                label: "tier".into(),
                op: "=~".into(),
                value: "$tier".into()
            },
            Matcher {
                label: "member".into(),
                op: "=~".into(),
                value: "$member".into()
            },
        ]
    );
    assert_eq!(n.metrics[1].matchers[0].value, "b,c}");
    assert_eq!(
        n.grouping,
        ["tier", "outcome", "tier", "member", "le"].map(String::from)
    );
    assert!(
        promql_names("sum(rte(x_total[5m]))").is_err(),
        "a misspelt function"
    );
    assert!(promql_names("sum(rate(x_total[5m])").is_err());
    assert!(
        promql_names("sum + x").is_err(),
        "an aggregation needs its argument"
    );
    assert!(promql_names(r#"{__name__="x"}"#).is_err());
    assert_eq!(
        variable_query(r#"label_values(cdn_requests_received_total{tier=~"$tier"}, member)"#)
            .unwrap(),
        (
            Some(r#"cdn_requests_received_total{tier=~"$tier"}"#.into()),
            Some("member".into())
        )
    );
    assert_eq!(
        variable_query("label_values(tier)").unwrap(),
        (None, Some("tier".into()))
    );
}

#[tokio::test]
async fn the_grafana_dashboard_reads_only_metrics_and_labels_the_cluster_exports() {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let dash: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shape = check_shape(&dash);
    assert!(shape.is_empty(), "dashboard shape:\n{}", shape.join("\n"));

    // A node and an edge, and traffic so every event-driven series exists: a miss (an origin
    // fetch, timed), a hit, and a purge (its fan-out timed). Ids of their own: the metrics
    // recorder is the test process's, and the status page test reads `edge-0`'s series.
    let c = cluster(1, 1, |cfg| cfg.id_prefix = "grafana-".into()).await;
    let edge = &c.edges[0];
    let key = "/grafana/a?size=100";
    assert_eq!(get(edge.http_addr, key).await.edge_cache(), "MISS");
    assert_eq!(get(edge.http_addr, key).await.edge_cache(), "HIT");
    let (status, _) = admin_purge(edge.admin_addr, serde_json::json!({"urls": [key]})).await;
    assert_eq!(status, http::StatusCode::OK);
    // What Prometheus would scrape: every member's admin port.
    let mut exp = Exported::default();
    let admins = c
        .edges
        .iter()
        .map(|e| e.admin_addr)
        .chain(c.nodes.iter().flatten().map(|n| n.admin_addr));
    for admin in admins {
        let got = get(admin, "/metrics").await;
        assert_eq!(got.status, http::StatusCode::OK);
        exp.add(&String::from_utf8_lossy(&got.body));
    }
    c.stop().await;
    exp.keep_members("grafana-");

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    let mut selected_labels = BTreeSet::new();
    let mut record = |names: &Names| {
        for m in &names.metrics {
            if let Some((fam, _)) = exp.family(&m.name) {
                used.insert(fam.to_string());
            }
            selected_labels.extend(m.matchers.iter().map(|mt| mt.label.clone()));
        }
    };
    let panels = dash["panels"].as_array().expect("checked above");
    for p in all_panels(panels) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let at = format!(
                "panel `{}` target {}",
                p["title"].as_str().unwrap_or_default(),
                t["refId"].as_str().unwrap_or_default()
            );
            let names = check_expr(
                &exp,
                &at,
                t["expr"].as_str().unwrap_or_default(),
                false,
                &mut problems,
            );
            record(&names);
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let at = format!("variable `{}`", v["name"].as_str().unwrap_or_default());
        // Grafana 10 stores the Prometheus variable query as an object; older, as a string.
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_default();
        match variable_query(q) {
            Err(e) => problems.push(format!("{at}: {e}")),
            Ok((selector, label)) => {
                let names = selector
                    .map(|s| check_expr(&exp, &at, &s, true, &mut problems))
                    .unwrap_or_default();
                if let Some(label) = label {
                    let on_metric = names.metrics.iter().all(|m| {
                        !exp.series.contains_key(&m.name) || exp.has_label(&m.name, &label)
                    });
                    let anywhere = exp.series.keys().any(|s| exp.has_label(s, &label));
                    if !on_metric || !anywhere {
                        problems.push(format!("{at}: no series has the label `{label}`"));
                    }
                }
                record(&names);
            }
        }
    }
    for label in ["tier", "member"] {
        if !selected_labels.contains(label) {
            problems.push(format!("no selector filters by `{label}`"));
        }
    }
    // And the other way round: a metric the cluster exports but no panel shows is a panel
    // to add (or a metric to drop).
    for fam in exp.types.keys().filter(|f| f.starts_with("cdn_")) {
        if !used.contains(fam) {
            problems.push(format!("`{fam}` is exported but no panel reads it"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} against the cluster's /metrics:\n{}",
        path.display(),
        problems.join("\n")
    );
}
