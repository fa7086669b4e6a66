//! The console's static files, inside the binary: the console needs no network beyond the
//! control plane. Vendored libraries sit in `control/console/vendor/` with their licenses and
//! provenance.

/// (name, content type, body)
const FILES: [(&str, &str, &[u8]); 4] = [
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/console.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/vendor/uplot/uPlot.min.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/vendor/uplot/uPlot.iife.min.js"),
    ),
];

/// The content type and body of an asset by file name.
pub fn find(name: &str) -> Option<(&'static str, &'static [u8])> {
    FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ctype, body)| (*ctype, *body))
}
