//! The web portal: the built single-page app served from a directory, same-origin with
//! the API. A path naming a file gets that file; any other path outside the API gets
//! `index.html`, so the portal's client-side routes survive a reload or a shared link.
//! `/api/…` never falls back: a client calling a missing endpoint must get the JSON
//! `route_not_found`, not a page of HTML with status 200.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use gpuaas_http::ApiError;
use gpuaas_kernel::ErrCode;
use tower::ServiceExt as _;
use tower_http::compression::Compression;
use tower_http::services::{ServeDir, ServeFile};

/// Only the portal's own origin may load scripts, styles, images and data. No inline
/// scripts or styles, so an injected tag cannot run; no framing, against clickjacking.
/// Top-level navigation (the Stripe Checkout redirect) is not restricted by CSP.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'";

/// The bundler puts content-hashed file names here: a changed file gets a new name, so
/// these may be cached for good. Everything else (index.html above all) is revalidated,
/// or a deploy would leave browsers on an index.html that names deleted assets.
const ASSETS_PREFIX: &str = "/assets/";

/// Paths the portal never answers: they belong to the API and the system routes.
const RESERVED_PREFIXES: [&str; 3] = ["/api", "/metrics", "/.well-known"];

/// The portal's directory; cheap to clone (one per request with the app state).
#[derive(Clone, Debug)]
pub struct Portal {
    dir: Arc<Path>,
}

impl Portal {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: Arc::from(dir.into()) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index(&self) -> PathBuf {
        self.dir.join("index.html")
    }

    /// Whether the portal has been built (its `index.html` exists). For the start-up
    /// log only: requests check again, so building while the platform runs works.
    pub fn is_built(&self) -> bool {
        self.index().is_file()
    }

    /// Whether a request is the portal's to answer: a read outside the reserved paths.
    pub fn handles(method: &Method, path: &str) -> bool {
        matches!(*method, Method::GET | Method::HEAD) && !RESERVED_PREFIXES.iter().any(|prefix| is_under(path, prefix))
    }

    /// Answers a GET or HEAD: the named file, else `index.html`, else (nothing built)
    /// a page saying how to build the portal.
    pub async fn serve(&self, request: Request) -> Response {
        let index = self.index();
        if !tokio::fs::metadata(&index).await.is_ok_and(|meta| meta.is_file()) {
            return not_built();
        }
        let (parts, _) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let file_request = || {
            let mut request = Request::new(Body::empty());
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.headers_mut() = parts.headers.clone();
            request
        };
        // ServeDir percent-decodes the path and refuses any `..`, root or prefix
        // component, so no request reaches a file outside the directory; a refused
        // path is a 404 like a missing file.
        let files = Compression::new(ServeDir::new(&*self.dir).append_index_html_on_directories(true));
        let Ok(response) = files.oneshot(file_request()).await;
        let response = response.map(Body::new);
        let response = if response.status() != StatusCode::NOT_FOUND {
            response
        } else if path.starts_with(ASSETS_PREFIX) {
            // A missing asset stays a 404: index.html under a script's URL would only
            // fail later, as a MIME-type error, in a browser holding an old index.html.
            return ApiError::new(ErrCode::RouteNotFound, "the web portal has no file at this path").into_response();
        } else {
            let Ok(fallback) = Compression::new(ServeFile::new(index)).oneshot(file_request()).await;
            fallback.map(Body::new)
        };
        decorate(&path, response)
    }
}

/// `path` is `prefix` itself or below it (`/apidocs` is not under `/api`).
fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn decorate(path: &str, mut response: Response) -> Response {
    let status = response.status();
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/html"));
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        let cache = if path.starts_with(ASSETS_PREFIX) { "public, max-age=31536000, immutable" } else { "no-cache" };
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    }
    if is_html {
        html_security_headers(headers);
    }
    response
}

fn html_security_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// Status 200: the platform itself is fine, only its web front is missing, and the
/// API and the CLI work without it. No inline style or script, so the CSP holds here too.
fn not_built() -> Response {
    let mut response = Html(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gpuaas</title></head>\
         <body><main><h1>gpuaas control plane</h1>\
         <p>The web portal is not built: its directory has no <code>index.html</code>.</p>\
         <p>Build it with <code>npm --prefix web install &amp;&amp; npm --prefix web run build</code>, \
         or start the platform with <code>./scripts/up</code>, which builds the portal and starts everything. \
         A portal built elsewhere is served from the directory named by <code>portal_dir</code> \
         (<code>--portal-dir</code>, <code>GPUAAS_PORTAL_DIR</code>).</p>\
         <p>The API is served under <code>/api/v1</code>; its contract is at \
         <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>.</p></main></body></html>\n",
    )
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    html_security_headers(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_and_system_paths_are_never_the_portal_s() {
        for path in ["/api", "/api/", "/api/v1/nope", "/metrics", "/.well-known/openid-configuration"] {
            assert!(!Portal::handles(&Method::GET, path), "{path}");
        }
        for path in ["/", "/allocations/0192", "/apidocs", "/assets/app.js", "/metrics-dashboard"] {
            assert!(Portal::handles(&Method::GET, path), "{path}");
            assert!(Portal::handles(&Method::HEAD, path), "{path}");
            assert!(!Portal::handles(&Method::POST, path), "{path}");
        }
    }
}
