//! The operator's web page: one HTML page, its script and its style sheet, embedded in the
//! binary (head-ends are often offline: nothing is loaded from elsewhere, nothing is built at
//! run time). The page is a client of the same API as everyone else: it asks for the API key
//! once, keeps it in the tab's `sessionStorage` (never a cookie) and sends it as `X-API-Key`
//! with every call, so the server's rules (key on every route, same origin for changes, JSON
//! content types) hold for it unchanged.
//!
//! The files themselves are public (they hold no data); their answers carry a content
//! security policy that allows only this server's script, style and API, and forbids framing.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page.
const INDEX_HTML: &str = include_str!("web/index.html");
/// Its script (plain modern JavaScript, no build step).
const APP_JS: &str = include_str!("web/app.js");
/// Its style sheet.
const APP_CSS: &str = include_str!("web/app.css");

/// Path of the script, as the page names it.
pub const SCRIPT_PATH: &str = "/ui/app.js";
/// Path of the style sheet, as the page names it.
pub const STYLE_PATH: &str = "/ui/app.css";

/// Only this server's own script, style and API; inline script and style are refused, and
/// no other site may frame the page.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The page's routes: `/` (and `/index.html`) and the two files under `/ui/`.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route(SCRIPT_PATH, get(script))
        .route(STYLE_PATH, get(style))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    res
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `src="..."` and `href="..."` value of the page.
    fn references(html: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for attr in ["src=\"", "href=\""] {
            let mut rest = html;
            while let Some(i) = rest.find(attr) {
                rest = &rest[i + attr.len()..];
                let end = rest.find('"').expect("a closed attribute");
                out.push(&rest[..end]);
                rest = &rest[end..];
            }
        }
        out
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        let refs = references(INDEX_HTML);
        assert!(refs.contains(&SCRIPT_PATH), "{refs:?}");
        assert!(refs.contains(&STYLE_PATH), "{refs:?}");
        for r in refs {
            // a link to one of the page's own views, one of the two files, or nothing
            assert!(
                r.starts_with('#') || r == SCRIPT_PATH || r == STYLE_PATH || r == "data:,",
                "the page refers to {r:?}, which this server does not serve"
            );
        }
    }

    #[test]
    fn nothing_is_fetched_from_another_host() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            // the SVG namespace is a name, never fetched
            let text = text.replace("'http://www.w3.org/2000/svg'", "");
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                assert!(
                    !text.contains(scheme),
                    "{name} names {scheme:?}: the page must work offline"
                );
            }
        }
    }

    #[test]
    fn inline_script_and_style_are_not_used_since_the_policy_refuses_them() {
        assert!(!INDEX_HTML.contains("<script>"), "inline script");
        assert!(!INDEX_HTML.contains("<style"), "inline style");
        assert!(!INDEX_HTML.contains(" style=\""), "a style attribute");
        assert!(!INDEX_HTML.contains(" onclick="), "an inline handler");
        assert!(CSP.contains("script-src 'self'") && !CSP.contains("unsafe-inline"));
    }

    #[test]
    fn the_script_never_writes_server_data_as_html_nor_keeps_the_key_in_a_cookie() {
        // cards hold names and addresses typed by people: text nodes only
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!APP_JS.contains(bad), "app.js uses {bad}");
        }
        assert!(!APP_JS.contains("document.cookie"));
        assert!(
            !APP_JS.contains("localStorage"),
            "the key lives per tab only"
        );
        assert!(APP_JS.contains("sessionStorage"));
        assert!(APP_JS.contains("'X-API-Key'"));
    }
}
