//! The web portal served from a directory: files with the right type and caching, the
//! client-side-route fallback that never covers the API, no way out of the directory,
//! and a page that says how to build the portal when it is missing. The database
//! plays no part here, so these run on SQLite only.

use gpuaas_testkit::Backend;

use crate::helpers::{TestApp, envelope};

const INDEX: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>portal</title>\
    <script type=\"module\" src=\"/assets/app-abc.js\"></script></head><body><div id=\"root\"></div></body></html>\n";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'";
const SECRET: &str = "outside the portal directory";

/// `<tmp>/dist` holds a built portal; `<tmp>/secret.txt` sits next to it, where no
/// request may reach.
fn built_portal() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dist = root.path().join("dist");
    std::fs::create_dir_all(dist.join("assets")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dist.join("index.html"), INDEX).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dist.join("assets/app-abc.js"), script()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(root.path().join("secret.txt"), SECRET).unwrap_or_else(|e| panic!("{e}"));
    root
}

/// Long enough to be worth compressing.
fn script() -> String {
    "console.log(\"the portal starts here\");\n".repeat(40)
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|value| value.to_str().ok()).unwrap_or("")
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.client.get(app.url(path)).send().await.unwrap_or_else(|e| panic!("{e}"))
}

/// A GET sent byte for byte, so the path reaches the server without the client
/// normalising `..` away. Returns the status and the whole raw response.
async fn raw_get(app: &TestApp, target: &str) -> (u16, String) {
    let address = app.base.trim_start_matches("http://").to_owned();
    let request = format!("GET {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let raw = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(&address)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(response)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_default();
    (status, text)
}

fn assert_portal_html(response: &reqwest::Response) {
    assert_eq!(response.status().as_u16(), 200);
    assert!(header(response, "content-type").starts_with("text/html"), "{:?}", response.headers());
    assert_eq!(header(response, "content-security-policy"), CSP);
    assert_eq!(header(response, "x-content-type-options"), "nosniff");
    assert_eq!(header(response, "referrer-policy"), "no-referrer");
    assert_eq!(header(response, "cache-control"), "no-cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_portal_is_served_with_a_client_side_route_fallback() {
    let root = built_portal();
    let app = TestApp::spawn_with_portal(Backend::Sqlite, &root.path().join("dist")).await;

    let index = get(&app, "/").await;
    assert_portal_html(&index);
    assert_eq!(index.text().await.unwrap_or_default(), INDEX);

    let asset = get(&app, "/assets/app-abc.js").await;
    assert_eq!(asset.status().as_u16(), 200);
    assert!(header(&asset, "content-type").contains("javascript"), "{:?}", asset.headers());
    assert_eq!(header(&asset, "cache-control"), "public, max-age=31536000, immutable");
    assert_eq!(header(&asset, "x-content-type-options"), "nosniff");
    assert_eq!(header(&asset, "content-encoding"), "", "not compressed unless asked");
    assert_eq!(asset.text().await.unwrap_or_default(), script());
    let gzipped = app
        .client
        .get(app.url("/assets/app-abc.js"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(header(&gzipped, "content-encoding"), "gzip");
    assert_eq!(header(&gzipped, "cache-control"), "public, max-age=31536000, immutable");
    let bytes = gzipped.bytes().await.unwrap_or_default();
    assert_eq!(bytes.get(..2), Some(&[0x1f, 0x8b][..]), "a gzip stream");
    assert!(bytes.len() < script().len(), "smaller than the file");

    // Client-side routes get index.html, so a reload or a shared link works.
    for route in ["/allocations/0192f3a0-xyz", "/billing/top-up/success?session_id=cs_1", "/index.html"] {
        let page = get(&app, route).await;
        assert_portal_html(&page);
        assert_eq!(page.text().await.unwrap_or_default(), INDEX, "{route}");
    }

    // The API, metrics and discovery never fall back to the portal.
    envelope(get(&app, "/api/v1/nope").await, 404, "route_not_found").await;
    envelope(get(&app, "/api").await, 404, "route_not_found").await;
    envelope(get(&app, "/.well-known/nope").await, 404, "route_not_found").await;
    let contract = get(&app, "/api/v1/openapi.json").await;
    assert!(header(&contract, "content-type").starts_with("application/json"));
    // A missing asset is a 404, not index.html under a script's name.
    let missing = envelope(get(&app, "/assets/app-old.js").await, 404, "route_not_found").await;
    assert!(missing["error"]["message"].as_str().is_some_and(|m| m.contains("portal")), "{missing}");
    // Only reads are the portal's.
    let post = app.client.post(app.url("/allocations")).json(&serde_json::json!({})).send().await;
    envelope(post.unwrap_or_else(|e| panic!("{e}")), 404, "route_not_found").await;
    // Credentials in the URL are refused here as everywhere.
    envelope(get(&app, "/?access_token=x").await, 400, "validation_error").await;

    let head = app.client.head(app.url("/")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_portal_html(&head);
    assert_eq!(head.bytes().await.unwrap_or_default().len(), 0);
    let head = app.client.head(app.url("/assets/app-abc.js")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(head.status().as_u16(), 200);
    assert!(header(&head, "content-type").contains("javascript"));
    assert_eq!(head.bytes().await.unwrap_or_default().len(), 0);

    for target in [
        "/../secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/assets/..%2f..%2fsecret.txt",
        "/..%2fCargo.toml",
        "/../x",
        "/..\\secret.txt",
    ] {
        let (status, response) = raw_get(&app, target).await;
        assert!(!response.contains(SECRET) && !response.contains("[package]"), "{target} escaped: {response}");
        assert!(status == 200 || status == 400 || status == 404, "{target}: {response}");
        if status == 200 {
            assert!(response.contains(INDEX.trim_end()), "{target} answers the portal, nothing else: {response}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_portal_says_how_to_build_it() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dist = root.path().join("dist");
    let app = TestApp::spawn_with_portal(Backend::Sqlite, &dist).await;
    for path in ["/", "/allocations/xyz"] {
        let page = get(&app, path).await;
        assert_portal_html(&page);
        let text = page.text().await.unwrap_or_default();
        for needle in [
            "not built",
            "npm --prefix web install &amp;&amp; npm --prefix web run build",
            "./scripts/up",
            "/api/v1/openapi.json",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
    }
    envelope(get(&app, "/api/v1/nope").await, 404, "route_not_found").await;

    // Building the portal while the platform runs is picked up without a restart.
    std::fs::create_dir_all(&dist).unwrap_or_else(|e| panic!("{e}"));
    let empty = get(&app, "/").await;
    assert!(empty.text().await.unwrap_or_default().contains("not built"), "a directory without index.html");
    std::fs::write(dist.join("index.html"), INDEX).unwrap_or_else(|e| panic!("{e}"));
    let built = get(&app, "/").await;
    assert_portal_html(&built);
    assert_eq!(built.text().await.unwrap_or_default(), INDEX);
}
