//! Latency by percentile, the way HdrHistogram plots it: the x axis is "number of nines"
//! (log10 of 1/(1-p)), so the tail gets as much room as the median. SVG only: the SVG
//! backend needs no font files.

use std::path::Path;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::report::Report;

/// The furthest percentile on the x axis: 99.9999%.
const MAX_NINES: f64 = 6.0;
const WIDTH_PX: u32 = 1024;
const HEIGHT_PX: u32 = 640;

/// Points (nines, latency ms) of a histogram's percentile curve.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    h.iter_quantiles(5)
        .filter_map(|v| {
            let q = v.quantile_iterated_to();
            let nines = if q >= 1.0 {
                MAX_NINES
            } else {
                (-(1.0 - q).log10()).min(MAX_NINES)
            };
            Some((nines, v.value_iterated_to() as f64 / 1e6))
        })
        .collect()
}

fn nines_label(x: &f64) -> String {
    // 0 → 0%, 1 → 90%, 2 → 99%, 3 → 99.9% ...
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as usize).saturating_sub(2);
    format!("{p:.decimals$}%")
}

/// Writes the plot of every latency curve in the report to `path` (must end in `.svg`).
pub fn write_plot(report: &Report, path: &Path) -> anyhow::Result<()> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        bail!("--plot writes SVG: give a file name ending in .svg");
    }
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
        .build_cartesian_2d(0.0..MAX_NINES, 0.0..y_max.max(0.001))?;
    chart
        .configure_mesh()
        .x_labels(MAX_NINES as usize + 1)
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
        assert_eq!(nines_label(&0.0), "0%");
        assert_eq!(nines_label(&1.0), "90%");
        assert_eq!(nines_label(&2.0), "99%");
        assert_eq!(nines_label(&3.0), "99.9%");
        assert_eq!(nines_label(&5.0), "99.999%");
    }
}
