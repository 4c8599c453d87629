//! `curves.png`: the training curves drawn from the rows of `metrics.jsonl`, loss per epoch
//! beside accuracy per epoch. plotters draws into an RGB buffer, with DejaVu Sans embedded for
//! the text (no system fonts needed), and `image` encodes the PNG.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::EpochMetrics;
use crate::card::write_atomic;
use crate::{Error, Result};

/// Width and height of the picture, in pixels.
pub const SIZE: (u32, u32) = (1000, 400);

/// The family that plotters' axis labels and legends ask for.
const FONT: &str = "sans-serif";

// Tableau's first colours, as matplotlib draws them: training, validation, validation top-5.
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const VAL_TOP5: RGBColor = RGBColor(44, 160, 44);

/// The two panels, left to right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Panel {
    Loss,
    Accuracy,
}

impl Panel {
    /// Caption, y-axis description, the factor values are shown at, and the least top of the
    /// y axis.
    fn axis(self) -> (&'static str, &'static str, f64, f64) {
        match self {
            Panel::Loss => ("Loss", "cross-entropy loss", 1.0, 0.0),
            Panel::Accuracy => ("Accuracy", "accuracy (%)", 100.0, 100.0),
        }
    }

    /// Where the legend goes: away from where the curves start (loss falls, accuracy rises).
    fn legend(self) -> SeriesLabelPosition {
        match self {
            Panel::Loss => SeriesLabelPosition::UpperRight,
            Panel::Accuracy => SeriesLabelPosition::LowerRight,
        }
    }
}

/// One line: its panel, legend label, colour and value per row (`None`: not measured).
struct Series {
    panel: Panel,
    label: &'static str,
    color: RGBColor,
    value: Value,
}

/// A row's value of one series.
type Value = fn(&EpochMetrics) -> Option<f64>;

/// A [`Series`] (a constructor short enough for one table row each).
const fn line(panel: Panel, label: &'static str, color: RGBColor, value: Value) -> Series {
    Series {
        panel,
        label,
        color,
        value,
    }
}

/// Every line that can be drawn, in legend order.
const SERIES: [Series; 5] = [
    line(Panel::Loss, "train loss", TRAIN, |m| Some(m.train_loss)),
    line(Panel::Loss, "val loss", VAL, |m| m.val_loss),
    line(Panel::Accuracy, "train top-1", TRAIN, |m| {
        Some(m.train_top1)
    }),
    line(Panel::Accuracy, "val top-1", VAL, |m| m.val_top1),
    line(Panel::Accuracy, "val top-5", VAL_TOP5, |m| m.val_top5),
];

/// Draws `rows` (one per epoch) to the PNG `path` ([`SIZE`]): loss on the left (training and,
/// when present, validation), accuracy in percent on the right (training top-1, validation top-1
/// and top-5 when present), `title` above both. Each epoch is a point, consecutive epochs are
/// joined by lines; values that are not finite (NaN, inf) are left out. The file is written
/// through a temporary file and a rename.
pub fn draw(path: &Path, rows: &[EpochMetrics], title: &str) -> Result<()> {
    register_font()?;
    let (width, height) = SIZE;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    render(&mut rgb, rows, title).map_err(|e| Error::file(path, format!("cannot draw: {e}")))?;
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &rgb,
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| Error::file(path, format!("cannot encode PNG: {e}")))?;
    write_atomic(path, &png)
}

/// Registers the embedded DejaVu Sans as plotters' `sans-serif`, once per process.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            "font",
            "the embedded DejaVu Sans does not parse",
        ))
    }
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn render(rgb: &mut [u8], rows: &[EpochMetrics], title: &str) -> DrawResult {
    let root = BitMapBackend::with_buffer(rgb, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 22))?;
    let panels = root.split_evenly((1, 2));
    let epochs = epoch_range(rows);
    panel(&panels[0], Panel::Loss, rows, epochs.clone())?;
    panel(&panels[1], Panel::Accuracy, rows, epochs)?;
    root.present()?;
    Ok(())
}

/// The x axis: the epochs the rows cover, widened by one on each side for a single epoch.
fn epoch_range(rows: &[EpochMetrics]) -> std::ops::Range<i64> {
    let first = rows.iter().map(|m| m.epoch).min().unwrap_or(1);
    let last = rows.iter().map(|m| m.epoch).max().unwrap_or(1);
    if first == last {
        first - 1..last + 1
    } else {
        first..last
    }
}

/// Consecutive points of a series, `(epoch, value)`.
type Run = Vec<(i64, f64)>;

/// The finite points of one series, `(epoch, value × scale)`, split where a value is missing so
/// that a line never bridges a gap.
fn runs(rows: &[EpochMetrics], series: &Series, scale: f64) -> Vec<Run> {
    let mut runs = vec![Vec::new()];
    for m in rows {
        match (series.value)(m)
            .map(|v| v * scale)
            .filter(|v| v.is_finite())
        {
            Some(v) => runs.last_mut().expect("never empty").push((m.epoch, v)),
            None if runs.last().is_some_and(|r| !r.is_empty()) => runs.push(Vec::new()),
            None => {}
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

/// The y axis: from 0 (or the lowest value, when negative) to a little above the highest value
/// or `top`.
fn value_range(points: impl Iterator<Item = f64>, top: f64) -> std::ops::Range<f64> {
    let (lo, hi) = points.fold((0.0f64, top), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi > lo {
        lo..hi + 0.03 * (hi - lo)
    } else {
        lo..lo + 1.0
    }
}

/// A tick label: at most 3 decimals, without trailing zeros (`2`, `1.5`, `0.125`).
fn tick(v: &f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    panel: Panel,
    rows: &[EpochMetrics],
    epochs: std::ops::Range<i64>,
) -> DrawResult {
    let (caption, y_desc, scale, top) = panel.axis();
    let lines: Vec<(&Series, Vec<Run>)> = SERIES
        .iter()
        .filter(|s| s.panel == panel)
        .map(|s| (s, runs(rows, s, scale)))
        .filter(|(_, runs)| !runs.is_empty())
        .collect();
    let values = lines
        .iter()
        .flat_map(|(_, r)| r.iter().flatten().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(epochs, value_range(values, top))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(10)
        .y_label_formatter(&tick)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (series, runs) in &lines {
        let color = series.color;
        for run in runs {
            chart.draw_series(LineSeries::new(run.iter().copied(), color.stroke_width(2)))?;
        }
        chart
            .draw_series(
                runs.iter()
                    .flatten()
                    .map(|&p| Circle::new(p, 3, color.filled())),
            )?
            .label(series.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if !lines.is_empty() {
        chart
            .configure_series_labels()
            .position(panel.legend())
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 13))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: i64, val: bool) -> EpochMetrics {
        let e = epoch as f64;
        EpochMetrics {
            epoch,
            lr: 0.01,
            train_loss: 2.3 / e,
            train_top1: 0.1 * e,
            val_loss: val.then_some(2.5 / e),
            val_top1: val.then_some(0.09 * e),
            val_top5: val.then_some(0.3 + 0.1 * e),
            images_per_s: 100.0,
            seconds: 1.0,
            skipped_files: 0,
        }
    }

    /// Draws `rows` to a temporary file and returns the decoded picture.
    fn drawn(name: &str, rows: &[EpochMetrics]) -> image::RgbImage {
        let path = std::env::temp_dir().join(format!("mobilenet-{}-{name}", std::process::id()));
        draw(&path, rows, "mobilenet_v2 on digits").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: not a PNG");
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8()
    }

    /// The picture has the expected size and holds the series' colours besides black and white.
    fn check(name: &str, rows: &[EpochMetrics], colours: &[RGBColor]) {
        let img = drawn(name, rows);
        assert_eq!(img.dimensions(), SIZE, "{name}");
        let distinct: std::collections::HashSet<_> = img.pixels().map(|p| p.0).collect();
        assert!(distinct.len() > 10, "{name}: {} colours", distinct.len());
        for c in colours {
            let rgb = [c.0, c.1, c.2];
            let n = img.pixels().filter(|p| p.0 == rgb).count();
            assert!(n > 20, "{name}: {n} pixels of {rgb:?}");
        }
    }

    #[test]
    fn one_epoch_draws_points() {
        check("one.png", &[row(1, true)], &[TRAIN, VAL, VAL_TOP5]);
    }

    #[test]
    fn five_epochs_draw_lines() {
        let rows: Vec<_> = (1..=5).map(|e| row(e, true)).collect();
        check("five.png", &rows, &[TRAIN, VAL, VAL_TOP5]);
    }

    #[test]
    fn no_validation_and_nan_values_draw() {
        let mut rows: Vec<_> = (1..=4).map(|e| row(e, false)).collect();
        rows[1].train_loss = f64::NAN;
        rows[2].train_top1 = f64::INFINITY;
        check("nan.png", &rows, &[TRAIN]);
        let mut all_nan = row(1, true);
        all_nan.train_loss = f64::NAN;
        all_nan.val_loss = Some(f64::NAN);
        check("all-nan.png", &[all_nan], &[TRAIN, VAL, VAL_TOP5]);
        check("empty.png", &[], &[]);
    }

    #[test]
    fn runs_split_at_gaps() {
        let mut rows: Vec<_> = (1..=5).map(|e| row(e, false)).collect();
        rows[2].train_loss = f64::NAN;
        let r = runs(&rows, &SERIES[0], 1.0);
        assert_eq!(r.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
        assert!(runs(&rows, &SERIES[1], 1.0).is_empty());
    }

    #[test]
    fn tick_labels_drop_trailing_zeros() {
        let labels: Vec<_> = [2.0, 1.5, 0.125, 0.0, 100.0].iter().map(tick).collect();
        assert_eq!(labels, ["2", "1.5", "0.125", "0", "100"]);
    }
}
