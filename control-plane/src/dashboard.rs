//! The technician dashboard: a static single-page app (plain HTML, CSS and JavaScript, no build
//! step) embedded in the binary and served at `/app/` (`/` redirects there).
//!
//! The shell and its files are public; every piece of data comes from `/v1` with the session
//! cookie (and `X-CSRF-Token` on changes), so the page shows nothing before a login. The files
//! load nothing from elsewhere (the product runs in closed networks) and follow the API's
//! Content-Security-Policy ([`crate::web::CSP`]): no inline scripts or styles, no `eval`;
//! charts are SVG drawn by the script.
//!
//! Caching: the HTML shell is revalidated on every load (`no-cache`, with an `ETag`), the
//! script, style sheet and icon are cached for five minutes and then revalidated by `ETag`, so a
//! new binary's files reach every browser within minutes.

use crate::http::{ApiError, AppState};
use axum::{
    Router,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// Where the dashboard lives.
pub const APP_PATH: &str = "/app/";

/// One embedded file.
#[derive(Debug)]
struct Asset {
    name: &'static str,
    content_type: &'static str,
    cache: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        cache: "no-cache",
        body: include_bytes!("../assets/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        cache: "public, max-age=300",
        body: include_bytes!("../assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        cache: "public, max-age=300",
        body: include_bytes!("../assets/app.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        cache: "public, max-age=300",
        body: include_bytes!("../assets/icon.svg"),
    },
];

/// Strong `ETag`s of the files, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let h = Sha256::digest(a.body);
            let hex: String = h.iter().take(12).map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

/// The dashboard's routes (outside `/v1`, so public).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to(APP_PATH) }))
        .route("/app", get(|| async { Redirect::to(APP_PATH) }))
        .route(
            "/app/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/app/{*file}",
            get(|Path(file): Path<String>, h: HeaderMap| async move { serve(&file, &h) }),
        )
        .route(
            "/favicon.ico",
            get(|h: HeaderMap| async move { serve("icon.svg", &h) }),
        )
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    // Client-side routes (`/app/devices`) get the shell too.
    let name = if name.contains('.') {
        name
    } else {
        "index.html"
    };
    let Some((i, a)) = ASSETS.iter().enumerate().find(|(_, a)| a.name == name) else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file").into_response();
    };
    let etag = &ETAGS[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(a.cache));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: &str) -> &'static str {
        let a = ASSETS.iter().find(|a| a.name == name).unwrap();
        std::str::from_utf8(a.body).unwrap()
    }

    #[test]
    fn files_are_served_with_their_type_and_caching() {
        let r = serve("app.js", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "public, max-age=300");
        let etag = r.headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve("app.js", &h).status(), StatusCode::NOT_MODIFIED);
        let shell = serve("devices", &HeaderMap::new());
        assert_eq!(shell.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(
            serve("../Cargo.toml", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            serve("nope.js", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn the_files_keep_to_the_content_security_policy() {
        let html = text("index.html");
        // No inline script or style, no handler attributes, nothing from elsewhere.
        assert!(
            !html.contains("<script>") && !html.contains("<style"),
            "inline code"
        );
        assert!(
            !html.contains(" style=") && !html.contains(" onclick="),
            "inline"
        );
        for name in ["index.html", "app.js", "app.css"] {
            let t = text(name).replace("http://www.w3.org/2000/svg", "");
            assert!(
                !t.contains("http://") && !t.contains("https://"),
                "{name} loads from elsewhere"
            );
            assert!(
                !t.contains("eval(") && !t.contains("new Function"),
                "{name} evaluates code"
            );
        }
        let js = text("app.js");
        assert!(
            !js.contains("innerHTML"),
            "the script builds the DOM, never markup strings"
        );
        assert!(
            !js.contains("setAttribute('style'"),
            "styles through CSSOM only"
        );
    }
}
