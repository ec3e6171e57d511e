//! `--plot FILE.svg`: the latency curve of each run (or phase) by percentile, and throughput
//! over time with the phases one after another.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::Report;

/// Where a quantile sits on the percentile axis: 1 / (1 - q), so that 90 %, 99 %, 99.9 % are
/// equally spaced on a log scale; the maximum is drawn at [`MAX_X`].
fn x_of(q: f64) -> f64 {
    if q >= 1.0 {
        MAX_X
    } else {
        1.0 / (1.0 - q)
    }
}

const MAX_X: f64 = 1e5;

fn percentile_label(x: f64) -> String {
    if x >= MAX_X * 0.999 {
        return "max".into();
    }
    let p = (1.0 - 1.0 / x) * 100.0;
    let s = format!("{p:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// `v` with up to three decimals, no trailing zeros.
fn trimmed(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Draws `runs` (name, report) into an SVG file at `path`.
pub fn svg(runs: &[(String, Report)], path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!runs.is_empty(), "nothing to plot");
    draw(runs, path).with_context(|| format!("drawing {}", path.display()))
}

fn draw(runs: &[(String, Report)], path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);

    let max_ms = runs
        .iter()
        .map(|(_, r)| r.max_us as f64 / 1000.0)
        .fold(0.01, f64::max);
    let mut latency = ChartBuilder::on(&left)
        .caption("Latency by percentile", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..MAX_X).log_scale(), 0f64..max_ms * 1.05)?;
    latency
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .y_label_formatter(&|v| trimmed(*v))
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()?;
    for (i, (name, r)) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = r
            .percentiles
            .iter()
            .map(|(q, us)| (x_of(*q), *us as f64 / 1000.0))
            .collect();
        latency
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(format!(
                "{name}: p50 {:.2} ms, p99 {:.2} ms",
                r.p50_us as f64 / 1000.0,
                r.p99_us as f64 / 1000.0
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        latency.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    latency
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;

    // Throughput: each run's seconds after the previous run's.
    let mut offset = 0u64;
    let mut segments = Vec::new();
    for (_, r) in runs {
        // The last second is cut short by the end of the run: scaled to a rate, or left
        // out when too short to say one.
        let points: Vec<(u64, f64, f64)> = r
            .timeline
            .iter()
            .filter_map(|s| {
                let covered = (r.seconds - s.second as f64).min(1.0);
                let rate = |n: u64| n as f64 / covered;
                (covered >= 0.5).then(|| (offset + s.second, rate(s.requests), rate(s.errors)))
            })
            .collect();
        offset += points.len().max(1) as u64;
        segments.push(points);
    }
    let max_rps = segments
        .iter()
        .flatten()
        .map(|(_, n, _)| *n)
        .fold(1.0, f64::max);
    let mut throughput = ChartBuilder::on(&right)
        .caption("Throughput over time", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0u64..offset.max(1), 0f64..max_rps * 1.1)?;
    throughput
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("requests / s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let mut any_errors = false;
    for (i, ((name, _), points)) in runs.iter().zip(&segments).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        throughput
            .draw_series(LineSeries::new(
                points.iter().map(|(t, n, _)| (*t, *n)),
                color.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        any_errors |= points.iter().any(|(_, _, e)| *e > 0.0);
    }
    if any_errors {
        throughput
            .draw_series(LineSeries::new(
                segments.iter().flatten().map(|(t, _, e)| (*t, *e)),
                RED.stroke_width(2),
            ))?
            .label("errors / s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    }
    throughput
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Second, Tiers};

    fn report(p50: u64, p99: u64, per_second: &[(u64, u64)]) -> Report {
        Report {
            requests: per_second.iter().map(|s| s.0).sum(),
            errors: per_second.iter().map(|s| s.1).sum(),
            errors_by_kind: Default::default(),
            seconds: per_second.len() as f64,
            rps: 0.0,
            bytes_per_sec: 0.0,
            p50_us: p50,
            p90_us: p99,
            p99_us: p99,
            p999_us: p99,
            max_us: p99 * 2,
            edge_hit_ratio: 1.0,
            tiers: Tiers::default(),
            ops: Default::default(),
            origin_requests: None,
            percentiles: vec![(0.5, p50), (0.9, p99), (0.99, p99), (1.0, p99 * 2)],
            timeline: per_second
                .iter()
                .enumerate()
                .map(|(i, (requests, errors))| Second {
                    second: i as u64,
                    requests: *requests,
                    errors: *errors,
                })
                .collect(),
        }
    }

    #[test]
    fn the_percentile_axis_is_labelled_in_nines() {
        assert_eq!(percentile_label(x_of(0.5)), "50%");
        assert_eq!(percentile_label(x_of(0.99)), "99%");
        assert_eq!(percentile_label(x_of(0.999)), "99.9%");
        assert_eq!(percentile_label(x_of(1.0)), "max");
    }

    #[test]
    fn a_phased_run_draws_each_phase_and_its_throughput() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        let runs = vec![
            (
                "1000/s".to_string(),
                report(400, 900, &[(1000, 0), (1000, 0)]),
            ),
            (
                "2000/s".to_string(),
                report(500, 3_000, &[(2000, 0), (1900, 7)]),
            ),
        ];
        svg(&runs, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(80)]);
        for want in [
            "Latency by percentile",
            "Throughput over time",
            "1000/s: p50 0.40 ms, p99 0.90 ms",
            "2000/s: p50 0.50 ms, p99 3.00 ms",
            "errors / s",
            "99.9%",
        ] {
            assert!(text.contains(want), "the chart lacks `{want}`");
        }
        // A marker at every measured percentile of both phases.
        assert_eq!(text.matches("<circle").count(), 8);
    }
}
