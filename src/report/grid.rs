//! Image grids like the thesis's image tables: one row per prompt, one column
//! per r (ascending), for one configuration. Missing images are mid-grey tiles;
//! tiles are separated by a white gutter. A header band names each column's r
//! (DejaVu Sans, as the figures); the rows' prompts are listed in the summary.

use std::path::Path;

use super::ReportError;
use image::{imageops, Rgb, RgbImage};

use super::model::Grid;

/// White space between tiles, in pixels.
pub const GUTTER: u32 = 4;
/// Height of the header band that names the columns.
pub const HEADER: u32 = 24;
/// Tiles larger than this are scaled down (triangle filter) to keep grids small.
pub const MAX_TILE: u32 = 256;

/// The grid as one image; `None` when it has no rows or columns.
pub fn grid_image(grid: &Grid) -> Result<Option<RgbImage>, ReportError> {
    let cols = grid.ratios.len() as u32;
    let rows = grid.prompts.len() as u32;
    if cols == 0 || rows == 0 {
        return Ok(None);
    }
    let mut tiles = Vec::new();
    for cell in &grid.cells {
        // An image that does not decode (damaged) is an empty tile, as a missing one.
        let tile = cell
            .image
            .as_ref()
            .and_then(|p| image::open(p).ok())
            .map(|i| i.to_rgb8());
        tiles.push(tile);
    }
    let (w, h) = tiles
        .iter()
        .flatten()
        .map(|t| t.dimensions())
        .next()
        .unwrap_or((64, 64));
    let scale = (MAX_TILE as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    let mut out = RgbImage::from_pixel(
        cols * tw + (cols + 1) * GUTTER,
        HEADER + rows * th + (rows + 1) * GUTTER,
        Rgb([255, 255, 255]),
    );
    draw_header(&mut out, grid, tw)?;
    for (i, tile) in tiles.into_iter().enumerate() {
        let (row, col) = (i as u32 / cols, i as u32 % cols);
        let tile = match tile {
            Some(t) if t.dimensions() == (tw, th) => t,
            Some(t) => imageops::resize(&t, tw, th, imageops::FilterType::Triangle),
            None => RgbImage::from_pixel(tw, th, Rgb([128, 128, 128])),
        };
        let x = GUTTER + col * (tw + GUTTER);
        let y = HEADER + GUTTER + row * (th + GUTTER);
        imageops::replace(&mut out, &tile, x as i64, y as i64);
    }
    Ok(Some(out))
}

/// Writes `r = …%` above each column.
fn draw_header(out: &mut RgbImage, grid: &Grid, tile_w: u32) -> Result<(), ReportError> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    super::figure::register_font();
    let (w, h) = out.dimensions();
    let root = BitMapBackend::with_buffer(out.as_mut(), (w, h)).into_drawing_area();
    let style = TextStyle::from((super::figure::FONT, 15).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    for (i, r) in grid.ratios.iter().enumerate() {
        let x = GUTTER + i as u32 * (tile_w + GUTTER) + tile_w / 2;
        let text = format!("r = {}%", super::model::ratio_pct(*r));
        root.draw(&Text::new(
            text,
            (x as i32, (HEADER / 2 + 2) as i32),
            &style,
        ))
        .map_err(header_error)?;
    }
    root.present().map_err(header_error)?;
    Ok(())
}

fn header_error(e: impl std::fmt::Debug) -> ReportError {
    ReportError::Draw {
        what: "the grid header",
        message: format!("{e:?}"),
    }
}

/// Writes the grid as PNG to `path`; false when the grid is empty.
pub fn write_grid(grid: &Grid, path: &Path) -> Result<bool, ReportError> {
    match grid_image(grid)? {
        Some(img) => {
            crate::fsx::write_png(path, &img).map_err(|e| ReportError::writing(path, e))?;
            Ok(true)
        }
        None => Ok(false),
    }
}
