//! `traffic.svg`: routed requests per second served by each datacenter, errors per second,
//! and a vertical marker for every step, drawn with plotters.

use std::path::Path;

use plotters::prelude::*;

use crate::record::{Sample, StepRun};

/// Per-second series: `served[dc][s]` and `errors[s]`.
pub struct Series {
    pub served: Vec<Vec<u64>>,
    pub errors: Vec<u64>,
}

/// Buckets samples by the second they were due.
pub fn series(samples: &[Sample], dcs: usize, seconds: usize) -> Series {
    let mut served = vec![vec![0u64; seconds]; dcs];
    let mut errors = vec![0u64; seconds];
    for s in samples {
        let sec = (s.sent_ms / 1e3).floor();
        if sec < 0.0 || sec as usize >= seconds {
            continue;
        }
        let sec = sec as usize;
        if s.is_error() {
            errors[sec] += 1;
        } else if s.kind.is_routed() {
            if let Some(d) = s.dc {
                if d < dcs {
                    served[d][sec] += 1;
                }
            }
        }
    }
    Series { served, errors }
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Draws the chart into `path`.
pub fn draw(
    path: &Path,
    title: &str,
    dc_names: &[String],
    s: &Series,
    steps: &[StepRun],
) -> Result<(), String> {
    let seconds = s.errors.len().max(1);
    let ymax = s
        .served
        .iter()
        .flatten()
        .chain(s.errors.iter())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.15;
    let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..seconds as f64, 0f64..ymax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("requests per second")
        .draw()
        .map_err(|e| err(&e))?;
    // One line per datacenter for what it served, and one for the errors.
    let served = dc_names.iter().enumerate().map(|(d, name)| {
        let color = COLORS[d % COLORS.len()];
        (format!("served by {name}"), color, &s.served[d][..])
    });
    let errors = std::iter::once(("errors".to_string(), RED, &s.errors[..]));
    for (label, color, per_second) in served.chain(errors) {
        let pts: Vec<(f64, f64)> = per_second
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64 + 0.5, *v as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    for st in steps {
        let x = st.started_ms / 1e3;
        let color = if st.ok { BLACK } else { RED };
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, 0.0), (x, ymax)],
                color.stroke_width(1),
            )))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(Text::new(
                st.label.clone(),
                (x, ymax * 0.97),
                ("sans-serif", 12).into_font().color(&color),
            )))
            .map_err(|e| err(&e))?;
        if st.ended_ms > st.started_ms + 1.0 {
            let x2 = st.ended_ms / 1e3;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x, 0.0), (x2, ymax * 0.02)],
                    color.mix(0.4).filled(),
                )))
                .map_err(|e| err(&e))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
