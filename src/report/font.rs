//! The embedded font. plotters' `ab_glyph` text needs a registered font, and
//! a machine with no fonts installed must still draw labels, so DejaVu Sans
//! (freely redistributable, licence in `assets/fonts/`) is compiled in.

use std::sync::Once;

/// The family name every plot asks for. SVG output names it in
/// `font-family`; a browser falls back to its own sans-serif if absent.
pub const FAMILY: &str = "sans-serif";

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Register the embedded font once per process.
pub fn ensure() {
    REGISTER.call_once(|| {
        for style in [
            plotters::style::FontStyle::Normal,
            plotters::style::FontStyle::Bold,
        ] {
            // The bytes are a fixed, known-good font; failure is a build defect.
            if plotters::style::register_font(FAMILY, style, FONT).is_err() {
                panic!("embedded DejaVu Sans font failed to parse");
            }
        }
    });
}
