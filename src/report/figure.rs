//! The figure of a report, like the thesis's Figures 5–11: two panels side by
//! side, FID against r % (left) and time relative to r = 0 against r % (right),
//! one line per configuration in its colour, with a legend. PNG (bitmap backend,
//! encoded by the `image` crate) and SVG; text in DejaVu Sans, embedded through
//! the `dejavu` crate, so no system font is needed.

use std::ops::Range;
use std::path::Path;
use std::sync::Once;

use super::ReportError;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::model::ReportModel;

/// Figure size in pixels (both formats).
pub const SIZE: (u32, u32) = (1200, 500);

/// The family every text of a report is drawn in.
pub(crate) const FONT: &str = "sans-serif";

/// Registers DejaVu Sans (from the `dejavu` crate) as plotters' `sans-serif`.
pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            let bytes = match style {
                FontStyle::Bold => dejavu::sans::bold(),
                _ => dejavu::sans::regular(),
            };
            // The font is a valid TTF carried by the dejavu crate.
            let _ = plotters::style::register_font(FONT, style, bytes);
        }
    });
}

/// `#rrggbb` to a colour (grey when malformed).
pub fn parse_color(s: &str) -> RGBColor {
    let hex = s.trim_start_matches('#');
    let byte = |i: usize| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("80"), 16).unwrap_or(128);
    if hex.len() == 6 {
        RGBColor(byte(0), byte(2), byte(4))
    } else {
        RGBColor(128, 128, 128)
    }
}

/// One panel's series: (label, colour, points (r %, value)).
type Series = Vec<(String, RGBColor, Vec<(f64, f64)>)>;

fn series(model: &ReportModel, value: impl Fn(&super::model::CellStats) -> Option<f64>) -> Series {
    model
        .configs
        .iter()
        .map(|c| {
            let pts = model
                .ratios
                .iter()
                .filter_map(|&r| model.cell(&c.name, r))
                .filter(|cell| cell.possible)
                .filter_map(|cell| value(cell).map(|v| (cell.ratio * 100.0, v)))
                .collect();
            (c.label.clone(), parse_color(&c.color), pts)
        })
        .collect()
}

fn y_range(s: &Series, floor: Option<f64>) -> Range<f64> {
    let vals: Vec<f64> = s
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(_, v)| *v))
        .collect();
    if vals.is_empty() {
        // Nothing measured: a range that reads as FID's or a percentage's.
        return 0.0..100.0;
    }
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.08).max(1.0);
    let lo = floor.map_or(lo - pad, |f| f.min(lo - pad).max(f));
    lo..hi + pad
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    s: &Series,
    x: Range<f64>,
    y: Range<f64>,
    legend: SeriesLabelPosition,
) -> Result<(), ReportError>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| ReportError::Draw {
        what: "the figure",
        message: format!("{e:?}"),
    };
    // Whole numbers unless the range is too narrow for them to differ.
    let y_decimals = if y.end - y.start >= 5.0 { 0 } else { 2 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22))
        .margin(12)
        .margin_right(28)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("r %")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.y_decimals$}"))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    let mut any = false;
    for (label, color, pts) in s {
        if pts.is_empty() {
            continue;
        }
        any = true;
        let color = *color;
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    if any {
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 14))
            .draw()
            .map_err(err)?;
    } else {
        area.draw(&Text::new(
            "n/a (not measured yet)",
            (
                area.dim_in_pixel().0 as i32 / 2 - 80,
                area.dim_in_pixel().1 as i32 / 2,
            ),
            (FONT, 18).into_font().color(&BLACK.mix(0.6)),
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// Draws the two panels of `model` onto `root`.
pub fn draw<DB: DrawingBackend>(
    model: &ReportModel,
    root: DrawingArea<DB, Shift>,
) -> Result<(), ReportError>
where
    DB::ErrorType: 'static,
{
    register_font();
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| ReportError::Draw {
        what: "the figure",
        message: format!("{e:?}"),
    };
    root.fill(&WHITE).map_err(err)?;
    let x_hi = model.ratios.iter().copied().fold(0.0, f64::max) * 100.0;
    let x = 0.0..x_hi.max(1.0);
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let fid = series(model, |c| c.fid);
    let fid_label = model.fid_label();
    panel(
        &left,
        &fid_label,
        &fid_label,
        &fid,
        x.clone(),
        y_range(&fid, Some(0.0)),
        // FID rises with r and time falls: each legend goes where its lines are not.
        SeriesLabelPosition::LowerRight,
    )?;
    let time = series(model, |c| c.rel_time_pct);
    panel(
        &right,
        "Time relative to r = 0",
        "time (% of r = 0)",
        &time,
        x,
        y_range(&time, None),
        SeriesLabelPosition::UpperRight,
    )?;
    root.present().map_err(err)?;
    Ok(())
}

/// Writes the figure as SVG.
pub fn write_svg(model: &ReportModel, path: &Path) -> Result<(), ReportError> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
        draw(model, root)?;
    }
    crate::fsx::write_atomic(path, text.as_bytes()).map_err(|e| ReportError::writing(path, e))
}

/// The figure as an RGB image.
pub fn figure_image(model: &ReportModel) -> Result<image::RgbImage, ReportError> {
    let mut buf = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        draw(model, root)?;
    }
    Ok(image::RgbImage::from_raw(SIZE.0, SIZE.1, buf).expect("a buffer of SIZE's pixels"))
}

/// Writes the figure as PNG.
pub fn write_png(model: &ReportModel, path: &Path) -> Result<(), ReportError> {
    crate::fsx::write_png(path, &figure_image(model)?).map_err(|e| ReportError::writing(path, e))
}
