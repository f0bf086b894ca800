//! The web page: one embedded HTML shell, its script, style and icon, served with strict
//! security headers. The page talks only to the `/v1` API with the key the reader typed;
//! nothing here reads a key, a job or a cookie.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

/// No inline script or style, no third party: the page loads only its own assets and talks
/// only to its own origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The page's paths (the script routes between them with `history.pushState`) and its assets.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/jobs/{id}", get(index))
        .route("/admin/users", get(index))
        .route("/admin/keys", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/assets/favicon.svg", get(favicon))
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON_SVG)
}

/// The body with its type and the headers every page and asset carries. `no-cache`: a new
/// server's script is used at the next load, never a stale one.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    let set: [(HeaderName, &'static str); 8] = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    /// The page's routes beside a fallback standing in for the API's JSON 404, as in `router()`.
    fn app() -> Router {
        routes().fallback(crate::api::no_such_endpoint)
    }

    async fn get(path: &str) -> Response {
        app()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn check_security_headers(path: &str, response: &Response) {
        let h = response.headers();
        let expect = [
            ("content-security-policy", CSP),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("x-frame-options", "DENY"),
            ("cross-origin-opener-policy", "same-origin"),
            ("cache-control", "no-cache"),
        ];
        for (name, value) in expect {
            assert_eq!(h.get(name).unwrap(), value, "{path}: {name}");
        }
        assert!(h.get("set-cookie").is_none(), "{path} sets a cookie");
    }

    #[tokio::test]
    async fn page_paths_serve_the_html_with_the_security_headers() {
        for path in [
            "/",
            "/jobs/abc",
            "/jobs/0123456789abcdef",
            "/admin/users",
            "/admin/keys",
        ] {
            let response = get(path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            check_security_headers(path, &response);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/html; charset=utf-8"
            );
            let html = body(response).await;
            assert!(html.contains("/assets/app.js"), "{path}");
        }
    }

    #[tokio::test]
    async fn assets_have_their_types() {
        for (path, ty, needle) in [
            ("/assets/app.js", "text/javascript; charset=utf-8", "ciWeb"),
            ("/assets/app.css", "text/css; charset=utf-8", "body"),
            ("/assets/favicon.svg", "image/svg+xml", "<svg"),
        ] {
            let response = get(path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            check_security_headers(path, &response);
            assert_eq!(response.headers()[header::CONTENT_TYPE], ty, "{path}");
            assert!(body(response).await.contains(needle), "{path}");
        }
    }

    #[tokio::test]
    async fn unknown_api_paths_stay_json_404() {
        for path in ["/v1/nope", "/v1/jobs/x/nope", "/assets/other.js", "/jobs"] {
            let response = get(path).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            assert!(response.headers().get("set-cookie").is_none());
            let text = body(response).await;
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(json["error"].is_string(), "{path}: {text}");
        }
    }

    #[test]
    fn html_has_no_inline_script_or_style() {
        let html = INDEX_HTML.to_ascii_lowercase();
        assert!(!html.contains("<style"), "inline style element");
        assert!(!html.contains("style="), "inline style attribute");
        let handler = html.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(handler.is_none(), "inline event handler: on{handler:?}");
        for script in html.split("<script").skip(1) {
            let tag = &script[..script.find('>').unwrap()];
            assert!(tag.contains("src="), "inline script: {tag}");
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn the_script_never_puts_data_in_html_nor_the_key_in_a_url_or_cookie() {
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "document.cookie",
            "localStorage",
            "eval(",
        ] {
            assert!(!APP_JS.contains(bad), "app.js uses {bad}");
        }
    }
}
