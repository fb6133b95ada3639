//! SVG charts of benchmark results, drawn with `plotters`.
//!
//! SVG only: the bitmap backend needs system fonts and a font-rendering
//! stack, while an SVG names its font and lets the viewer draw the text, so
//! the charts build on any machine and stay sharp in a README. Each function
//! takes plain numbers, so a chart can be redrawn from a result's JSON.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const SIZE_PX: (u32, u32) = (800, 480);
const FONT: &str = "sans-serif";

/// Distinguishable on white and for the common colour-vision deficiencies
/// (Okabe–Ito).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(0, 0, 0),
];

/// One bar: the summary value (a median) and the spread over rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub min: f64,
    pub max: f64,
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A vertical or horizontal reference line, e.g. a target.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub label: String,
    pub value: f64,
}

fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {error}")
}

fn canvas(path: &Path) -> DrawingArea<SVGBackend<'_>, Shift> {
    let root = SVGBackend::new(path, SIZE_PX).into_drawing_area();
    // Filling cannot fail on an in-memory SVG document.
    let _ = root.fill(&WHITE);
    root
}

/// Bars with min–max whiskers, e.g. CPU per request per variant.
pub fn bars_with_range(path: &Path, title: &str, y_label: &str, bars: &[Bar]) -> anyhow::Result<()> {
    if bars.is_empty() {
        return Err(anyhow!("no bars to draw for {title:?}"));
    }
    let root = canvas(path);
    let y_max = bars.iter().map(|bar| bar.max.max(bar.value)).fold(0.0_f64, f64::max) * 1.15;
    let count = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5_f64..count as f64 - 0.5, 0.0..y_max.max(f64::MIN_POSITIVE))
        .map_err(plot_error)?;
    let labels: Vec<String> = bars.iter().map(|bar| bar.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(count)
        .x_label_formatter(&|x| {
            let index = x.round();
            // Label only the bar centres, where the formatter is asked for
            // integral positions.
            if (x - index).abs() < 1e-6 && index >= 0.0 {
                labels.get(index as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .draw()
        .map_err(plot_error)?;
    for (index, bar) in bars.iter().enumerate() {
        let x = index as f64;
        let colour = PALETTE[index % PALETTE.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new([(x - 0.35, 0.0), (x + 0.35, bar.value)], colour.filled())))
            .map_err(plot_error)?;
        let whisker = [
            vec![(x, bar.min), (x, bar.max)],
            vec![(x - 0.12, bar.min), (x + 0.12, bar.min)],
            vec![(x - 0.12, bar.max), (x + 0.12, bar.max)],
        ];
        chart
            .draw_series(whisker.into_iter().map(|points| PathElement::new(points, BLACK.stroke_width(2))))
            .map_err(plot_error)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{:.1}", bar.value),
                (x - 0.3, bar.max.max(bar.value) + y_max * 0.02),
                (FONT, 14),
            )))
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)
}

/// How the x axis is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XScale {
    Linear,
    /// For quantities that span decades, such as proxy counts.
    Log10,
}

/// Where a chart's legend goes: where its lines leave room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Legend {
    /// For lines that rise to the right (CDFs, latency percentiles).
    LowerRight,
    /// For lines that rise at the right end, such as offered load against
    /// fleet size.
    UpperLeft,
}

/// Lines through points, with optional vertical reference lines (targets).
#[derive(Debug)]
pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub x_scale: XScale,
    pub series: &'a [Series],
    pub vertical_markers: &'a [Marker],
    pub horizontal_markers: &'a [Marker],
    pub legend: Legend,
}

impl LineChart<'_> {
    pub fn draw(&self, path: &Path) -> anyhow::Result<()> {
        let points = self.series.iter().flat_map(|series| series.points.iter());
        let (mut x_min, mut x_max, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY, 0.0_f64);
        for &(x, y) in points {
            x_min = x_min.min(x);
            x_max = x_max.max(x);
            y_max = y_max.max(y);
        }
        for marker in self.vertical_markers {
            x_min = x_min.min(marker.value);
            x_max = x_max.max(marker.value);
        }
        for marker in self.horizontal_markers {
            y_max = y_max.max(marker.value);
        }
        if !x_min.is_finite() || !x_max.is_finite() {
            return Err(anyhow!("no points to draw for {:?}", self.title));
        }
        if x_max <= x_min {
            x_max = x_min + 1.0;
        }
        let y_range = 0.0..(y_max * 1.1).max(f64::MIN_POSITIVE);
        let root = canvas(path);
        let mut builder = ChartBuilder::on(&root);
        builder.caption(self.title, (FONT, 22)).margin(14).x_label_area_size(44).y_label_area_size(70);
        match self.x_scale {
            XScale::Linear => {
                let chart = builder.build_cartesian_2d(x_min..x_max, y_range).map_err(plot_error)?;
                self.fill(chart)?;
            }
            XScale::Log10 => {
                let low = x_min.max(f64::MIN_POSITIVE);
                let chart = builder
                    .build_cartesian_2d((low..x_max.max(low * 10.0)).log_scale(), y_range)
                    .map_err(plot_error)?;
                self.fill(chart)?;
            }
        }
        root.present().map_err(plot_error)
    }

    fn fill<'b, X>(
        &self,
        mut chart: ChartContext<'b, SVGBackend<'b>, Cartesian2d<X, RangedCoordf64>>,
    ) -> anyhow::Result<()>
    where
        X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        chart.configure_mesh().x_desc(self.x_label).y_desc(self.y_label).draw().map_err(plot_error)?;
        for (index, series) in self.series.iter().enumerate() {
            let colour = PALETTE[index % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(series.points.iter().copied(), colour.stroke_width(2)))
                .map_err(plot_error)?
                .label(&series.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            chart
                .draw_series(series.points.iter().map(|&point| Circle::new(point, 3, colour.filled())))
                .map_err(plot_error)?;
        }
        let (x_range, y_range) = (chart.x_range(), chart.y_range());
        for marker in self.vertical_markers {
            let line = vec![(marker.value, y_range.start), (marker.value, y_range.end)];
            chart
                .draw_series(std::iter::once(PathElement::new(line, RED.stroke_width(1))))
                .map_err(plot_error)?
                .label(&marker.label)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        }
        for marker in self.horizontal_markers {
            let line = vec![(x_range.start, marker.value), (x_range.end, marker.value)];
            chart
                .draw_series(std::iter::once(PathElement::new(line, RED.stroke_width(1))))
                .map_err(plot_error)?
                .label(&marker.label)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        }
        chart
            .configure_series_labels()
            .position(match self.legend {
                Legend::LowerRight => SeriesLabelPosition::LowerRight,
                Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
            })
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)
    }
}

/// The empirical CDF of `values` as (value, cumulative share in percent)
/// steps, ready for a [`LineChart`]. NaNs are left out.
pub fn cdf_points(values: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|value| !value.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let count = sorted.len() as f64;
    sorted.iter().enumerate().map(|(index, &value)| (value, 100.0 * (index + 1) as f64 / count)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_reaches_one_hundred_percent_in_order() {
        let points = cdf_points(&[3.0, 1.0, f64::NAN, 2.0, 2.0]);
        assert_eq!(points, vec![(1.0, 25.0), (2.0, 50.0), (2.0, 75.0), (3.0, 100.0)]);
        assert!(cdf_points(&[]).is_empty());
    }

    #[test]
    fn charts_are_written_as_svg() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let bars = [
            Bar { label: "(a) native".into(), value: 50.0, min: 48.0, max: 53.0 },
            Bar { label: "(d) ours".into(), value: 60.0, min: 57.0, max: 66.0 },
        ];
        let bars_path = dir.path().join("bars.svg");
        bars_with_range(&bars_path, "CPU per request", "µs", &bars)?;
        let svg = std::fs::read_to_string(&bars_path)?;
        assert!(svg.starts_with("<svg") && svg.contains("(d) ours") && svg.contains("CPU per request"));

        let series = [Series { label: "concurrency 2".into(), points: cdf_points(&[4.0, 5.0, 7.5]) }];
        for (name, x_scale) in [("linear.svg", XScale::Linear), ("log.svg", XScale::Log10)] {
            let path = dir.path().join(name);
            LineChart {
                title: "Rollback propagation",
                x_label: "ms",
                y_label: "% of rollbacks",
                x_scale,
                series: &series,
                vertical_markers: &[Marker { label: "target 20 ms".into(), value: 20.0 }],
                horizontal_markers: &[],
                legend: Legend::LowerRight,
            }
            .draw(&path)?;
            let svg = std::fs::read_to_string(&path)?;
            assert!(svg.contains("concurrency 2") && svg.contains("target 20 ms"), "{name}");
        }
        assert!(bars_with_range(&dir.path().join("none.svg"), "empty", "µs", &[]).is_err());
        Ok(())
    }
}
