//! The web dashboard at `/`: a static page, its script and its style sheet,
//! compiled into the binary (`include_str!`), so the analyzer serves it with
//! no network, CDN or build step.
//!
//! The page holds no data: its script reads `GET /v1/rollout` and
//! `GET /v1/series` and posts the rollout actions with the token the user
//! types in, so the assets are served without a token. The
//! Content-Security-Policy allows only this origin's script, style and API,
//! and no inline script, which keeps an injected string (a rollout name, a
//! decision reason) from ever running.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Every asset's policy: same-origin script, style, images and API calls;
/// no inline script, no framing, no form posts elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// An embedded file and how it is served.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The dashboard's files, by the path they are served at.
pub const ASSETS: [Asset; 4] = [
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_str!("../assets/dashboard/index.html") },
    Asset {
        path: "/dashboard/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/dashboard/app.js"),
    },
    Asset {
        path: "/dashboard/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/dashboard/style.css"),
    },
    Asset {
        path: "/dashboard/icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../assets/dashboard/icon.svg"),
    },
];

/// Adds a route for every asset to `router`.
pub fn routes<S: Clone + Send + Sync + 'static>(router: axum::Router<S>) -> axum::Router<S> {
    ASSETS.iter().fold(router, |router, asset| {
        let asset = *asset;
        router.route(asset.path, axum::routing::get(move |headers: HeaderMap| async move { serve(asset, &headers) }))
    })
}

/// Answers with `asset`, or 304 when the client's copy is current.
///
/// The assets change only with the binary, but a cached script from an
/// older analyzer must not drive a newer API: `no-cache` makes the browser
/// revalidate every load, and the ETag (a hash of the content) turns that
/// into a 304 with no body.
pub fn serve(asset: Asset, request_headers: &HeaderMap) -> Response {
    let etag = etag(asset.body);
    let not_modified = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response = if not_modified { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

/// A strong ETag from the 64-bit FNV-1a hash of `body`: stable across
/// builds of the same content, unlike `std`'s randomly seeded hasher.
fn etag(body: &str) -> String {
    let hash = body
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("\"{hash:016x}\"")
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let router = routes(axum::Router::new());
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        router.oneshot(request.body(Body::empty()).expect("request")).await.expect("infallible")
    }

    fn header_of(response: &Response, name: header::HeaderName) -> &str {
        response.headers().get(&name).and_then(|value| value.to_str().ok()).unwrap_or_default()
    }

    #[tokio::test]
    async fn serves_every_asset_with_its_type_policy_and_cache_headers() {
        for (path, content_type, marker) in [
            ("/", "text/html; charset=utf-8", "<script src=\"/dashboard/app.js\""),
            ("/dashboard/app.js", "text/javascript; charset=utf-8", "/v1/series"),
            ("/dashboard/style.css", "text/css; charset=utf-8", "@media"),
            ("/dashboard/icon.svg", "image/svg+xml", "<svg"),
        ] {
            let response = get(path, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header_of(&response, header::CONTENT_TYPE), content_type, "{path}");
            assert_eq!(header_of(&response, header::CONTENT_SECURITY_POLICY), CONTENT_SECURITY_POLICY, "{path}");
            assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-cache", "{path}");
            assert_eq!(header_of(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
            let etag = header_of(&response, header::ETAG).to_owned();
            assert!(etag.starts_with('"') && etag.len() == 18, "{path}: etag {etag}");
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
            let body = String::from_utf8(body.to_vec()).expect("utf-8");
            assert!(body.contains(marker), "{path} lacks {marker:?}");
        }
    }

    #[tokio::test]
    async fn a_current_copy_gets_304_without_a_body() {
        let first = get("/dashboard/app.js", None).await;
        let etag = header_of(&first, header::ETAG).to_owned();
        let again = get("/dashboard/app.js", Some(&format!("\"0000000000000000\", {etag}"))).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let body = axum::body::to_bytes(again.into_body(), usize::MAX).await.expect("body");
        assert!(body.is_empty());
        let stale = get("/dashboard/app.js", Some("\"0000000000000000\"")).await;
        assert_eq!(stale.status(), StatusCode::OK);
    }

    #[test]
    fn the_policy_names_no_external_source_and_allows_no_inline_script() {
        for directive in CONTENT_SECURITY_POLICY.split(';') {
            let sources: Vec<&str> = directive.split_whitespace().skip(1).collect();
            assert!(
                sources.iter().all(|source| ["'self'", "'none'"].contains(source)),
                "directive {directive:?} allows more than this origin"
            );
        }
    }

    #[test]
    fn assets_load_nothing_from_elsewhere_and_have_no_inline_script() {
        for asset in ASSETS {
            for forbidden in ["http://", "https://", "//cdn", "<script>", "onclick=", "style=\""] {
                // The SVG's XML namespace is a name, not a fetch.
                let body = asset.body.replace("http://www.w3.org/2000/svg", "");
                assert!(!body.contains(forbidden), "{} contains {forbidden:?}", asset.path);
            }
        }
    }
}
