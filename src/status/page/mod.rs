//! The status page: one HTML file, one style sheet and one script, compiled
//! into the binary (the box is offline: no external fonts, scripts or
//! images). The script polls `/api/status` every second and redraws; the
//! sparklines are inline SVG drawn by it.

const INDEX: &str = include_str!("index.html");
const STYLE: &str = include_str!("style.css");
const SCRIPT: &str = include_str!("app.js");

/// The asset at `path`, as `(content type, body)`, if it is one.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX)),
        "/style.css" => Some(("text/css; charset=utf-8", STYLE)),
        "/app.js" => Some(("text/javascript; charset=utf-8", SCRIPT)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_links_only_its_own_assets() {
        let (ct, html) = asset("/").unwrap();
        assert!(ct.starts_with("text/html"));
        for needle in ["/style.css", "/app.js"] {
            assert!(html.contains(needle), "{needle}");
        }
        for text in [INDEX, STYLE, SCRIPT] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(SCRIPT.contains("/api/status"));
    }
}
