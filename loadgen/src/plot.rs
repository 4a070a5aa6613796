//! Latency by percentile, the way HdrHistogram plots it: the x axis is "number of nines"
//! (log10 of 1/(1-p)), so the tail gets as much room as the median, from 50% to
//! 99.9999%. Drawn with plotters' SVG backend only: SVG text needs no font files, whereas
//! a bitmap (PNG) backend would need a font stack (FreeType/fontconfig or bundled fonts).

use std::path::Path;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;

use crate::report::Report;

/// The furthest percentile on the x axis: 99.9999%.
const MAX_NINES: f64 = 6.0;
/// The first percentile on the x axis.
const MIN_QUANTILE: f64 = 0.5;
const WIDTH_PX: u32 = 1024;
const HEIGHT_PX: u32 = 640;

/// "Number of nines" of quantile `q`: 0.9 → 1, 0.99 → 2; 100% is put at the axis end.
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        MAX_NINES
    } else {
        (-(1.0 - q).log10()).min(MAX_NINES)
    }
}

/// Points (nines, latency ms) of a histogram's percentile curve, from the median to the
/// maximum.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let ms = |ns: u64| ns as f64 / 1e6;
    let median = (nines(MIN_QUANTILE), ms(h.value_at_quantile(MIN_QUANTILE)));
    std::iter::once(median)
        .chain(
            h.iter_quantiles(5)
                .filter(|v| v.quantile_iterated_to() > MIN_QUANTILE)
                .map(|v| (nines(v.quantile_iterated_to()), ms(v.value_iterated_to()))),
        )
        .collect()
}

/// Where the x axis is labelled: 50%, 90%, 99%, ... 99.9999%.
fn x_key_points() -> Vec<f64> {
    std::iter::once(nines(MIN_QUANTILE))
        .chain((1..=MAX_NINES as u32).map(f64::from))
        .collect()
}

/// The x axis: nines from the median to [`MAX_NINES`], linear in nines (so logarithmic in
/// 1 - percentile), with its grid lines and labels at each nine rather than at round
/// numbers of nines.
struct PercentileAxis;

impl Ranged for PercentileAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = (nines(MIN_QUANTILE), MAX_NINES);
        let fraction = (value - lo) / (hi - lo);
        limit.0 + (fraction * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            x_key_points()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        nines(MIN_QUANTILE)..MAX_NINES
    }
}

fn nines_label(x: &f64) -> String {
    // log10(2) → 50%, 1 → 90%, 2 → 99%, 3 → 99.9% ...
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as usize).saturating_sub(2);
    format!("{p:.decimals$}%")
}

/// Refuses a --plot file name this module cannot write (checked before the run, too).
pub fn check_plot_path(path: &Path) -> anyhow::Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => {}
        Some(e) if e.eq_ignore_ascii_case("png") => bail!(
            "--plot {}: PNG would need fonts bundled or a system font stack; give a file name ending in .svg",
            path.display()
        ),
        _ => bail!("--plot writes SVG: give a file name ending in .svg"),
    }
    Ok(())
}

/// Writes the plot of every latency curve in the report to `path` (must end in `.svg`).
pub fn write_plot(report: &Report, path: &Path) -> anyhow::Result<()> {
    check_plot_path(path)?;
    let mut series = Vec::new();
    if let Some(h) = &report.histograms.produce {
        series.push(("produce (intended send → ack)", percentile_curve(h), RED));
    }
    if let Some(h) = &report.histograms.e2e {
        series.push((
            "end to end (intended send → consumed)",
            percentile_curve(h),
            BLUE,
        ));
    }
    if series.is_empty() {
        bail!("no latencies were recorded, nothing to plot");
    }
    let y_max = series
        .iter()
        .flat_map(|(_, pts, _)| pts.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        * 1.05;
    let root = SVGBackend::new(path, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    root.fill(&WHITE)?;
    let w = &report.workload;
    let caption = format!(
        "{} latency by percentile: {} records, acks {}, {} loop{}",
        format!("{:?}", report.mode).to_lowercase(),
        w.record_size,
        w.acks,
        w.load,
        w.rate.map(|r| format!(" at {r} rec/s")).unwrap_or_default()
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(20)
        .margin_right(50)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(PercentileAxis, 0.0..y_max.max(0.001))?;
    chart
        .configure_mesh()
        .x_label_formatter(&nines_label)
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .draw()?;
    for (name, points, color) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_runs_from_the_median_side_to_the_max() {
        let mut h = crate::stats::new_histogram();
        for i in 1..=10_000u64 {
            h.record(i * 1000).unwrap();
        }
        let curve = percentile_curve(&h);
        assert!(
            curve
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
            "monotone"
        );
        let last = curve.last().unwrap();
        assert_eq!(last.0, MAX_NINES);
        assert!(
            (last.1 - 10.0).abs() < 0.02,
            "ends at the max, 10 ms: {last:?}"
        );
    }

    #[test]
    fn axis_labels_name_percentiles() {
        assert_eq!(nines_label(&nines(0.5)), "50%");
        assert_eq!(nines_label(&1.0), "90%");
        assert_eq!(nines_label(&2.0), "99%");
        assert_eq!(nines_label(&3.0), "99.9%");
        assert_eq!(nines_label(&5.0), "99.999%");
        let labels: Vec<String> = x_key_points().iter().map(nines_label).collect();
        assert_eq!(
            labels,
            ["50%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]
        );
    }

    #[test]
    fn png_is_refused_with_a_pointer_to_svg_and_svg_is_written() {
        let report = {
            let mut h = crate::stats::new_histogram();
            for i in 1..=1000u64 {
                h.record(i * 10_000).unwrap();
            }
            let mut stats = crate::stats::Stats::new();
            stats.produce_latency = h;
            stats.produced_records = 1000;
            let args = <crate::cli::Args as clap::Parser>::parse_from(["wharf-loadgen", "produce"]);
            let layout = crate::admin::TopicLayout {
                topic: "t".into(),
                leaders: [(0, "127.0.0.1:9092".parse().unwrap())]
                    .into_iter()
                    .collect(),
            };
            let machine = crate::report::Machine {
                cpus: 1,
                cpu_model: String::new(),
                kernel: String::new(),
                load_average_start: None,
                load_average_end: None,
            };
            Report::new(&args, &layout, machine, 1.0, &stats, Vec::new())
        };
        let dir = tempfile::tempdir().unwrap();
        let png = write_plot(&report, &dir.path().join("p.png")).unwrap_err();
        let message = format!("{png:#}");
        assert!(
            message.contains(".svg") && !message.contains('\n'),
            "{message}"
        );
        let svg_path = dir.path().join("p.svg");
        write_plot(&report, &svg_path).unwrap();
        let svg = std::fs::read_to_string(svg_path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for text in ["99.99%", "50%", "latency (ms)", "produce (intended send"] {
            assert!(svg.contains(text), "the plot shows {text}");
        }
    }
}
