//! The built-in image renderer behind `generateImage` when no image API is
//! configured: it draws the prompt's text onto a background seeded from a hash of
//! the prompt and encodes the result as an RGB8 PNG.
//!
//! Pure and deterministic: the same prompt and size always give the same bytes,
//! and nothing here touches the network, the file system or a clock. Rendering
//! goes band by band (1/[`BANDS`] of the rows each), reporting progress and
//! checking for cancellation between bands.
//!
//! Text uses an embedded 5×7 bitmap font for printable ASCII (0x20–0x7E); any
//! other character is drawn as a box. The largest scale at which the whole prompt
//! fits is chosen; if it does not fit even at the smallest scale, the text is cut
//! and ends with an ellipsis.

use std::io::Write as _;

/// The smallest accepted width or height, in pixels.
pub(crate) const MIN_SIDE: u32 = 64;
/// The largest accepted width or height, in pixels.
pub(crate) const MAX_SIDE: u32 = 1024;
/// Rows are rendered, encoded and reported in this many bands.
const BANDS: u32 = 16;
/// Glyph cell: 5×7 pixels plus one column and two rows of spacing.
const GLYPH_W: u32 = 5;
const GLYPH_H: u32 = 7;
const ADVANCE_X: u32 = GLYPH_W + 1;
const ADVANCE_Y: u32 = GLYPH_H + 2;
/// Index in [`FONT`] of the box drawn for characters outside printable ASCII.
const BOX: u8 = 95;
/// Index in [`FONT`] of the one-cell ellipsis that ends truncated text.
const ELLIPSIS: u8 = 96;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RenderError {
    #[error("image size {width}x{height} is out of range: each side must be {MIN_SIDE} to {MAX_SIDE} pixels")]
    InvalidSize { width: u32, height: u32 },
    #[error("image rendering was cancelled")]
    Cancelled,
    #[error("png encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
}

/// Renders `prompt` as a `width`×`height` RGB8 PNG.
///
/// `cancelled` is polled before each band; `progress(rows_done, total_rows)` is
/// called after each band, ending with `progress(height, height)`.
pub(crate) fn render_png(
    prompt: &str,
    width: u32,
    height: u32,
    cancelled: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(u32, u32),
) -> Result<Vec<u8>, RenderError> {
    if !(MIN_SIDE..=MAX_SIDE).contains(&width) || !(MIN_SIDE..=MAX_SIDE).contains(&height) {
        return Err(RenderError::InvalidSize { width, height });
    }
    let scene = Scene::new(prompt, width, height);
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    let mut stream = writer.stream_writer()?;
    let band_rows = height.div_ceil(BANDS);
    let mut band = Vec::with_capacity((width * band_rows * 3) as usize);
    let mut y = 0;
    while y < height {
        if cancelled() {
            return Err(RenderError::Cancelled);
        }
        let end = (y + band_rows).min(height);
        band.clear();
        for row in y..end {
            scene.paint_row(row, &mut band);
        }
        stream.write_all(&band).map_err(png::EncodingError::from)?;
        y = end;
        progress(y, height);
    }
    stream.finish()?;
    writer.finish()?;
    Ok(out)
}

/// Everything needed to paint a row: the background and the laid-out text.
struct Scene {
    width: u32,
    height: u32,
    from: [u8; 3],
    to: [u8; 3],
    /// Gradient direction weights along x and y (not both zero).
    dir: (u32, u32),
    pattern: Pattern,
    ink: [u8; 3],
    layout: Layout,
}

#[derive(Clone, Copy)]
enum Pattern {
    Stripes(u32),
    Checks(u32),
    Rings(u32),
}

struct Layout {
    lines: Vec<Vec<u8>>,
    scale: u32,
    top: u32,
}

impl Scene {
    fn new(prompt: &str, width: u32, height: u32) -> Self {
        let seed = fnv1a(prompt.as_bytes());
        let pick = |k: u64| mix(seed.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let hue = (pick(1) % 360) as u32;
        let hue2 = (hue + 30 + (pick(2) % 150) as u32) % 360;
        // Dark backgrounds (channels ≤ 95 + pattern) take white ink; light ones
        // (channels ≥ 145 − pattern) take near-black ink, so ink never occurs in
        // the background and the contrast stays high.
        let (sat, val, ink) = [(170, 95, [255; 3]), (90, 225, [24, 24, 32])][(pick(3) % 2) as usize];
        let period = 8 + (pick(5) % 24) as u32;
        let pattern = match pick(6) % 3 {
            0 => Pattern::Stripes(period),
            1 => Pattern::Checks(period),
            _ => Pattern::Rings(period),
        };
        let dir = match pick(4) % 4 {
            0 => (1, 0),
            1 => (0, 1),
            2 => (1, 1),
            _ => (2, 1),
        };
        Scene {
            width,
            height,
            from: hsv(hue, sat, val),
            to: hsv(hue2, sat, val),
            dir,
            pattern,
            ink,
            layout: Layout::new(prompt, width, height),
        }
    }

    /// Appends row `y` (RGB8) to `out`.
    fn paint_row(&self, y: u32, out: &mut Vec<u8>) {
        let start = out.len();
        for x in 0..self.width {
            out.extend_from_slice(&self.background(x, y));
        }
        let Layout { lines, scale, top } = &self.layout;
        let (scale, line_h) = (*scale, ADVANCE_Y * scale);
        let Some(dy) = y.checked_sub(*top) else { return };
        let (index, gy) = ((dy / line_h) as usize, dy % line_h / scale);
        let Some(line) = lines.get(index).filter(|_| gy < GLYPH_H) else {
            return;
        };
        let left = self.width.saturating_sub(text_width(line.len(), scale)) / 2;
        let row = &mut out[start..];
        for (i, &glyph) in line.iter().enumerate() {
            for (gx, bits) in glyph_columns(glyph).iter().enumerate() {
                if bits >> gy & 1 == 0 {
                    continue;
                }
                let x0 = left + (i as u32 * ADVANCE_X + gx as u32) * scale;
                let span = (x0 as usize * 3)..((x0 + scale) as usize * 3);
                for px in row.get_mut(span).unwrap_or_default().chunks_exact_mut(3) {
                    px.copy_from_slice(&self.ink);
                }
            }
        }
    }

    fn background(&self, x: u32, y: u32) -> [u8; 3] {
        let (ax, ay) = self.dir;
        let t = (x * ax * 256 / self.width + y * ay * 256 / self.height) / (ax + ay);
        let on = match self.pattern {
            Pattern::Stripes(p) => ((x + y) / p).is_multiple_of(2),
            Pattern::Checks(p) => (x / p + y / p).is_multiple_of(2),
            Pattern::Rings(p) => {
                let (dx, dy) = (x.abs_diff(self.width / 2), y.abs_diff(self.height / 2));
                ((dx * dx + dy * dy) / (p * p * 4)).is_multiple_of(2)
            }
        };
        let shade: i32 = if on { 10 } else { -10 };
        let mut px = [0; 3];
        for (c, out) in px.iter_mut().enumerate() {
            let (a, b) = (i32::from(self.from[c]), i32::from(self.to[c]));
            let v = a + (b - a) * t.min(256) as i32 / 256 + shade;
            *out = v.clamp(0, 255) as u8;
        }
        px
    }
}

impl Layout {
    /// Lays the prompt out at the largest scale where it fits whole, or at the
    /// smallest scale cut with an ellipsis.
    fn new(prompt: &str, width: u32, height: u32) -> Self {
        let short = width.min(height);
        let margin = short / 16;
        let (min_scale, max_scale) = ((short / 256).max(1), (short / 64).max(1));
        let mut scale = max_scale;
        loop {
            let cols = ((width - 2 * margin + scale) / (ADVANCE_X * scale)).max(2) as usize;
            let rows = ((height - 2 * margin + 2 * scale) / (ADVANCE_Y * scale)).max(1) as usize;
            let (lines, complete) = wrap(prompt, cols, rows);
            if complete || scale == min_scale {
                let block = (lines.len() as u32 * ADVANCE_Y * scale).saturating_sub(2 * scale);
                let top = height.saturating_sub(block) / 2;
                return Layout { lines, scale, top };
            }
            scale -= 1;
        }
    }
}

/// Pixel width of a line of `len` glyphs (no trailing spacing column).
fn text_width(len: usize, scale: u32) -> u32 {
    (len as u32 * ADVANCE_X).saturating_sub(1) * scale
}

/// Greedy word wrap into at most `rows` lines of at most `cols` glyphs; words
/// longer than a line are broken. Returns the lines and whether all text fit;
/// when it did not, the last line ends with an ellipsis.
fn wrap(prompt: &str, cols: usize, rows: usize) -> (Vec<Vec<u8>>, bool) {
    let mut lines: Vec<Vec<u8>> = vec![Vec::new()];
    for word in prompt.split_whitespace() {
        let glyphs: Vec<u8> = word.chars().take(cols * rows + 1).map(glyph_index).collect();
        let mut rest = glyphs.as_slice();
        let last = lines.len() - 1;
        if !lines[last].is_empty() {
            if lines[last].len() + 1 + rest.len() <= cols {
                lines[last].push(0);
            } else {
                lines.push(Vec::new());
            }
        }
        while !rest.is_empty() {
            let last = lines.len() - 1;
            let room = cols - lines[last].len();
            if room == 0 {
                lines.push(Vec::new());
                continue;
            }
            let (head, tail) = rest.split_at(room.min(rest.len()));
            lines[last].extend_from_slice(head);
            rest = tail;
        }
        if lines.len() > rows {
            lines.truncate(rows);
            if let Some(last) = lines.last_mut() {
                last.truncate(cols - 1);
                while last.last() == Some(&0) {
                    last.pop();
                }
                last.push(ELLIPSIS);
            }
            return (lines, false);
        }
    }
    (lines, true)
}

/// The five column bitmaps of a glyph (empty for an index past the table).
fn glyph_columns(index: u8) -> &'static [u8] {
    let at = usize::from(index) * 5;
    FONT.get(at..at + 5).unwrap_or_default()
}

fn glyph_index(c: char) -> u8 {
    match c {
        ' '..='~' => c as u8 - b' ',
        _ => BOX,
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The splitmix64 finaliser, to spread the hash over independent choices.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Integer HSV to RGB: `hue` in degrees, `sat` and `val` in 0..=255.
fn hsv(hue: u32, sat: u32, val: u32) -> [u8; 3] {
    let (sector, f) = (hue / 60 % 6, hue % 60 * 255 / 60);
    let p = val * (255 - sat) / 255;
    let q = val * (255 - sat * f / 255) / 255;
    let t = val * (255 - sat * (255 - f) / 255) / 255;
    let (r, g, b) = match sector {
        0 => (val, t, p),
        1 => (q, val, p),
        2 => (p, val, t),
        3 => (p, q, val),
        4 => (t, p, val),
        _ => (val, p, q),
    };
    [r as u8, g as u8, b as u8]
}

/// 5×7 font, five bytes per glyph, column by column (left to right), bit 0 the
/// top row; glyph index = character − 0x20 for printable ASCII (five glyphs per
/// source line: ` !"#$`, `%&'()`, …), then [`BOX`] and [`ELLIPSIS`].
const FONT: &[u8; 5 * 97] = b"\
    \x00\x00\x00\x00\x00\x00\x00\x5F\x00\x00\x00\x07\x00\x07\x00\x14\x7F\x14\x7F\x14\x24\x2A\x7F\x2A\x12\
    \x23\x13\x08\x64\x62\x36\x49\x55\x22\x50\x00\x05\x03\x00\x00\x00\x1C\x22\x41\x00\x00\x41\x22\x1C\x00\
    \x14\x08\x3E\x08\x14\x08\x08\x3E\x08\x08\x00\x50\x30\x00\x00\x08\x08\x08\x08\x08\x00\x60\x60\x00\x00\
    \x20\x10\x08\x04\x02\x3E\x51\x49\x45\x3E\x00\x42\x7F\x40\x00\x42\x61\x51\x49\x46\x21\x41\x45\x4B\x31\
    \x18\x14\x12\x7F\x10\x27\x45\x45\x45\x39\x3C\x4A\x49\x49\x30\x01\x71\x09\x05\x03\x36\x49\x49\x49\x36\
    \x06\x49\x49\x29\x1E\x00\x36\x36\x00\x00\x00\x56\x36\x00\x00\x08\x14\x22\x41\x00\x14\x14\x14\x14\x14\
    \x00\x41\x22\x14\x08\x02\x01\x51\x09\x06\x32\x49\x79\x41\x3E\x7E\x11\x11\x11\x7E\x7F\x49\x49\x49\x36\
    \x3E\x41\x41\x41\x22\x7F\x41\x41\x22\x1C\x7F\x49\x49\x49\x41\x7F\x09\x09\x09\x01\x3E\x41\x49\x49\x7A\
    \x7F\x08\x08\x08\x7F\x00\x41\x7F\x41\x00\x20\x40\x41\x3F\x01\x7F\x08\x14\x22\x41\x7F\x40\x40\x40\x40\
    \x7F\x02\x0C\x02\x7F\x7F\x04\x08\x10\x7F\x3E\x41\x41\x41\x3E\x7F\x09\x09\x09\x06\x3E\x41\x51\x21\x5E\
    \x7F\x09\x19\x29\x46\x46\x49\x49\x49\x31\x01\x01\x7F\x01\x01\x3F\x40\x40\x40\x3F\x1F\x20\x40\x20\x1F\
    \x3F\x40\x38\x40\x3F\x63\x14\x08\x14\x63\x07\x08\x70\x08\x07\x61\x51\x49\x45\x43\x00\x7F\x41\x41\x00\
    \x02\x04\x08\x10\x20\x00\x41\x41\x7F\x00\x04\x02\x01\x02\x04\x40\x40\x40\x40\x40\x00\x01\x02\x04\x00\
    \x20\x54\x54\x54\x78\x7F\x48\x44\x44\x38\x38\x44\x44\x44\x20\x38\x44\x44\x48\x7F\x38\x54\x54\x54\x18\
    \x08\x7E\x09\x01\x02\x0C\x52\x52\x52\x3E\x7F\x08\x04\x04\x78\x00\x44\x7D\x40\x00\x20\x40\x44\x3D\x00\
    \x7F\x10\x28\x44\x00\x00\x41\x7F\x40\x00\x7C\x04\x18\x04\x78\x7C\x08\x04\x04\x78\x38\x44\x44\x44\x38\
    \x7C\x14\x14\x14\x08\x08\x14\x14\x18\x7C\x7C\x08\x04\x04\x08\x48\x54\x54\x54\x20\x04\x3F\x44\x40\x20\
    \x3C\x40\x40\x20\x7C\x1C\x20\x40\x20\x1C\x3C\x40\x30\x40\x3C\x44\x28\x10\x28\x44\x0C\x50\x50\x50\x3C\
    \x44\x64\x54\x4C\x44\x00\x08\x36\x41\x00\x00\x00\x7F\x00\x00\x00\x41\x36\x08\x00\x08\x04\x08\x10\x08\
    \x7F\x41\x41\x41\x7F\x40\x00\x40\x00\x40";

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn render(prompt: &str, width: u32, height: u32) -> Vec<u8> {
        render_png(prompt, width, height, &|| false, &mut |_, _| {}).unwrap()
    }

    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn ink_pixels(prompt: &str, width: u32, height: u32) -> usize {
        let ink = Scene::new(prompt, width, height).ink;
        let (_, _, px) = decode(&render(prompt, width, height));
        px.chunks_exact(3).filter(|p| *p == ink).count()
    }

    #[test]
    fn decodes_to_requested_size() {
        for (w, h) in [(64, 64), (200, 100), (64, 1024), (1024, 77)] {
            let (dw, dh, px) = decode(&render("a lighthouse at dusk", w, h));
            assert_eq!((dw, dh, px.len()), (w, h, (w * h * 3) as usize));
        }
    }

    #[test]
    fn same_prompt_same_bytes_different_prompt_different_pixels() {
        assert_eq!(render("a red fox", 128, 96), render("a red fox", 128, 96));
        let (_, _, a) = decode(&render("a red fox", 128, 96));
        let (_, _, b) = decode(&render("a red fox.", 128, 96));
        let differing = a.chunks_exact(3).zip(b.chunks_exact(3)).filter(|(x, y)| x != y).count();
        assert!(
            differing > 128 * 96 / 2,
            "the backgrounds differ, not only the text: {differing}"
        );
    }

    #[test]
    fn text_is_drawn_glyph_by_glyph() {
        let (w, h) = (256, 128);
        let prompt = "Hi, mom! {x} ~ é";
        let scene = Scene::new(prompt, w, h);
        let (_, _, px) = decode(&render(prompt, w, h));
        let Layout { lines, scale, top } = &scene.layout;
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line.len(), prompt.chars().count());
        assert_eq!(line.last(), Some(&BOX));
        let left = (w - text_width(line.len(), *scale)) / 2;
        for (i, &glyph) in line.iter().enumerate() {
            for gx in 0..GLYPH_W {
                for gy in 0..GLYPH_H {
                    let x = left + (i as u32 * ADVANCE_X + gx) * scale + scale / 2;
                    let y = top + gy * scale + scale / 2;
                    let at = ((y * w + x) * 3) as usize;
                    let lit = glyph_columns(glyph)[gx as usize] >> gy & 1 == 1;
                    assert_eq!(px[at..at + 3] == scene.ink, lit, "glyph {i} at ({gx}, {gy})");
                }
            }
        }
    }

    #[test]
    fn ink_only_where_text_is() {
        assert_eq!(ink_pixels("", 128, 128), 0);
        assert_eq!(ink_pixels("   \n\t ", 128, 128), 0);
        // At a fixed scale (both fit at the largest), more glyphs mean more ink.
        let one = ink_pixels("I", 128, 128);
        let more = ink_pixels("IIII", 128, 128);
        assert!(one > 0 && more > one, "{one} {more}");
    }

    #[test]
    fn long_text_wraps_then_ends_with_ellipsis() {
        let (lines, complete) = wrap("the quick brown fox jumps", 10, 5);
        assert!(complete);
        let text: Vec<String> = lines
            .iter()
            .map(|l| l.iter().map(|&g| (g + b' ') as char).collect())
            .collect();
        assert_eq!(text, ["the quick", "brown fox", "jumps"]);
        let (lines, complete) = wrap("abcdefghijklmnopqrstuvwxyz", 10, 2);
        assert!(!complete);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].len(), 10);
        assert_eq!(lines[1].last(), Some(&ELLIPSIS));
        let long = "word ".repeat(10_000);
        let scene = Scene::new(&long, 64, 64);
        assert_eq!(scene.layout.lines.last().and_then(|l| l.last()), Some(&ELLIPSIS));
        assert_eq!(scene.layout.scale, 1);
        // A short prompt gets the largest scale.
        assert_eq!(Scene::new("ok", 1024, 1024).layout.scale, 16);
        decode(&render(&long, 1024, 1024));
    }

    #[test]
    fn size_limits() {
        for (w, h) in [(63, 64), (64, 63), (1025, 512), (512, 1025), (0, 0), (u32::MAX, 64)] {
            let err = render_png("x", w, h, &|| false, &mut |_, _| {}).unwrap_err();
            assert!(matches!(err, RenderError::InvalidSize { .. }), "{w}x{h}");
        }
        decode(&render("x", 1024, 1024));
    }

    #[test]
    fn cancellation_stops_early() {
        let polls = std::cell::Cell::new(0);
        let cancelled = || {
            polls.set(polls.get() + 1);
            polls.get() > 3
        };
        let mut last = 0;
        let err = render_png("x", 512, 512, &cancelled, &mut |done, _| last = done).unwrap_err();
        assert!(matches!(err, RenderError::Cancelled));
        assert_eq!(polls.get(), 4);
        assert_eq!(last, 3 * 512 / BANDS);
        let err = render_png("x", 512, 512, &|| true, &mut |_, _| panic!("no progress")).unwrap_err();
        assert!(matches!(err, RenderError::Cancelled));
    }

    #[test]
    fn progress_is_monotonic_up_to_total() {
        for h in [64, 100, 1000] {
            let mut seen = Vec::new();
            render_png("x", 64, h, &|| false, &mut |done, total| seen.push((done, total))).unwrap();
            assert!(seen.len() >= 8, "{seen:?}");
            assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(seen.iter().all(|&(_, total)| total == h));
            assert_eq!(seen.last(), Some(&(h, h)));
        }
    }

    #[test]
    fn non_ascii_prompts_do_not_panic() {
        for prompt in [
            "日本語のテキスト",
            "emoji 🚀🔥 mixed",
            "\u{0}\u{7f}\u{feff}",
            &"é".repeat(5000),
        ] {
            decode(&render(prompt, 96, 64));
        }
    }

    #[test]
    fn font_glyphs_are_distinct() {
        let glyphs: Vec<&[u8]> = FONT.chunks_exact(5).collect();
        assert_eq!(glyphs.len(), usize::from(ELLIPSIS) + 1);
        for (i, a) in glyphs.iter().enumerate() {
            assert_eq!(a == &[0; 5], i == 0, "only space is blank ({i})");
            assert!(a.iter().all(|c| c & 0x80 == 0), "7 rows only ({i})");
            assert!(glyphs[i + 1..].iter().all(|b| a != b), "glyph {i} is not unique");
        }
    }
}
