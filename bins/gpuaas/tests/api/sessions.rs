//! Browser sessions: the access token in the body, the refresh token in an HttpOnly,
//! SameSite=Strict cookie scoped to the session endpoints, and the header that guards
//! them against cross-site requests.

use gpuaas_policy::keys;
use gpuaas_testkit::Backend;

use crate::helpers::{ADMIN_EMAIL, PASSWORD, TestApp, envelope, json};

const LOGIN: &str = "/api/v1/auth/session/login";
const REFRESH: &str = "/api/v1/auth/session/refresh";
const LOGOUT: &str = "/api/v1/auth/session/logout";

/// A POST the way the portal sends it: with `X-Gpuaas-Client: portal`, the cookie when
/// the browser holds one, and a JSON body when there is one.
async fn portal_post(
    app: &TestApp,
    path: &str,
    cookie: Option<&str>,
    body: Option<serde_json::Value>,
) -> reqwest::Response {
    let mut request = app.client.post(app.url(path)).header("x-gpuaas-client", "portal");
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("gpuaas_refresh={cookie}"));
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap_or_else(|e| panic!("{e}"))
}

async fn portal_login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    portal_post(app, LOGIN, None, Some(serde_json::json!({"email": email, "password": password}))).await
}

/// The `gpuaas_refresh` Set-Cookie header of a response.
fn set_cookie(response: &reqwest::Response) -> String {
    let cookies: Vec<&str> =
        response.headers().get_all("set-cookie").iter().filter_map(|value| value.to_str().ok()).collect();
    assert_eq!(cookies.len(), 1, "one Set-Cookie: {cookies:?}");
    assert!(cookies[0].starts_with("gpuaas_refresh="), "{cookies:?}");
    cookies[0].to_owned()
}

/// The cookie's value and its attributes.
fn parse_cookie(header: &str) -> (String, Vec<String>) {
    let mut parts = header.split(';').map(str::trim);
    let value = parts.next().and_then(|pair| pair.strip_prefix("gpuaas_refresh=")).unwrap_or_default().to_owned();
    (value, parts.map(str::to_owned).collect())
}

fn assert_cleared(header: &str) {
    let (value, attributes) = parse_cookie(header);
    assert_eq!(value, "", "{header}");
    assert!(attributes.contains(&"Max-Age=0".to_owned()), "{header}");
    assert!(attributes.contains(&"Path=/api/v1/auth/session".to_owned()), "{header}");
}

/// Signs in through the session endpoint and returns the access token and the cookie.
async fn signed_in(app: &TestApp) -> (String, String) {
    let response = portal_login(app, ADMIN_EMAIL, PASSWORD).await;
    let (cookie, _) = parse_cookie(&set_cookie(&response));
    let body = json(response, 200).await;
    (body["access_token"].as_str().unwrap_or_default().to_owned(), cookie)
}

async fn cookie_login_keeps_the_refresh_token_out_of_reach(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = portal_login(&app, ADMIN_EMAIL, PASSWORD).await;
    let header = set_cookie(&response);
    assert_eq!(response.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    let (cookie, attributes) = parse_cookie(&header);
    assert_eq!(cookie.len(), 43, "{header}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/api/v1/auth/session", "Max-Age=2592000"] {
        assert!(attributes.contains(&attribute.to_owned()), "{attribute} in {header}");
    }
    assert!(!attributes.contains(&"Secure".to_owned()), "plain http cannot keep a Secure cookie: {header}");
    let body = json(response, 200).await;
    let mut keys: Vec<&str> = body.as_object().into_iter().flatten().map(|(key, _)| key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["access_token", "expires_in", "token_type"], "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(!body.to_string().contains(&cookie), "the refresh token never reaches the page");
    let access = body["access_token"].as_str().unwrap_or_default();
    let me = json(app.get("/api/v1/users/me", access).await, 200).await;
    assert_eq!(me["user"]["email"], ADMIN_EMAIL);

    // Behind a TLS-terminating proxy the cookie is Secure; its lifetime follows policy.
    app.policy.set(keys::AUTH_REFRESH_TOKEN_TTL_SECONDS, &3600).await.unwrap_or_else(|e| panic!("{e}"));
    let proxied = app
        .client
        .post(app.url(LOGIN))
        .header("x-gpuaas-client", "portal")
        .header("x-forwarded-proto", "https")
        .json(&serde_json::json!({"email": ADMIN_EMAIL, "password": PASSWORD}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, attributes) = parse_cookie(&set_cookie(&proxied));
    assert!(attributes.contains(&"Secure".to_owned()), "{attributes:?}");
    assert!(attributes.contains(&"Max-Age=3600".to_owned()), "{attributes:?}");

    // Without the portal's header: refused before anything else happens.
    let bare = app
        .client
        .post(app.url(LOGIN))
        .json(&serde_json::json!({"email": ADMIN_EMAIL, "password": PASSWORD}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(bare.headers().get("set-cookie").is_none());
    let body = envelope(bare, 403, "forbidden").await;
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("X-Gpuaas-Client")), "{body}");
    // The JSON endpoint the CLI uses is unchanged: both tokens in the body, no cookie.
    let cli = app.login(ADMIN_EMAIL, PASSWORD).await;
    assert!(cli.headers().get("set-cookie").is_none());
    let cli = json(cli, 200).await;
    assert!(cli["refresh_token"].as_str().is_some_and(|t| !t.is_empty()), "{cli}");
}

async fn cookie_refresh_rotates_and_refuses_the_old_cookie(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, first) = signed_in(&app).await;

    let renewed = portal_post(&app, REFRESH, Some(&first), None).await;
    let (second, attributes) = parse_cookie(&set_cookie(&renewed));
    assert_ne!(second, first, "rotated");
    assert!(attributes.contains(&"HttpOnly".to_owned()) && attributes.contains(&"Max-Age=2592000".to_owned()));
    let body = json(renewed, 200).await;
    assert!(body.get("refresh_token").is_none(), "{body}");
    json(app.get("/api/v1/users/me", body["access_token"].as_str().unwrap_or_default()).await, 200).await;
    // `{}` is as good as no body.
    let renewed = portal_post(&app, REFRESH, Some(&second), Some(serde_json::json!({}))).await;
    let (third, _) = parse_cookie(&set_cookie(&renewed));
    json(renewed, 200).await;

    // The rotated-away cookie is refused and cleared; its reuse ends the whole session
    // family, as on the JSON endpoint.
    let reused = portal_post(&app, REFRESH, Some(&first), None).await;
    assert_cleared(&set_cookie(&reused));
    envelope(reused, 401, "invalid_credentials").await;
    let after_reuse = portal_post(&app, REFRESH, Some(&third), None).await;
    assert_cleared(&set_cookie(&after_reuse));
    envelope(after_reuse, 401, "invalid_credentials").await;

    let missing = portal_post(&app, REFRESH, None, None).await;
    assert_cleared(&set_cookie(&missing));
    envelope(missing, 401, "invalid_credentials").await;
    let unknown = portal_post(&app, REFRESH, Some("never-issued"), None).await;
    assert_cleared(&set_cookie(&unknown));
    envelope(unknown, 401, "invalid_credentials").await;

    let (_, live) = signed_in(&app).await;
    let unguarded = app
        .client
        .post(app.url(REFRESH))
        .header("cookie", format!("gpuaas_refresh={live}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(unguarded.headers().get("set-cookie").is_none());
    envelope(unguarded, 403, "forbidden").await;
    let wrong_client = app
        .client
        .post(app.url(REFRESH))
        .header("x-gpuaas-client", "cli")
        .header("cookie", format!("gpuaas_refresh={live}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    envelope(wrong_client, 403, "forbidden").await;
    let body = portal_post(&app, REFRESH, Some(&live), Some(serde_json::json!({"refresh_token": live}))).await;
    envelope(body, 400, "unknown_field").await;
    let keyed = app
        .client
        .post(app.url(REFRESH))
        .header("x-gpuaas-client", "portal")
        .header("x-idempotency-key", "retry-1")
        .header("cookie", format!("gpuaas_refresh={live}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = envelope(keyed, 400, "validation_error").await;
    assert_eq!(refused["error"]["details"]["field"], "X-Idempotency-Key");
    // None of the refused requests spent the cookie.
    json(portal_post(&app, REFRESH, Some(&live), None).await, 200).await;
}

async fn cookie_logout_revokes_and_clears(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, cookie) = signed_in(&app).await;
    let unguarded = app
        .client
        .post(app.url(LOGOUT))
        .header("cookie", format!("gpuaas_refresh={cookie}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    envelope(unguarded, 403, "forbidden").await;

    let logout = portal_post(&app, LOGOUT, Some(&cookie), None).await;
    assert_eq!(logout.status().as_u16(), 204);
    assert_cleared(&set_cookie(&logout));
    let refresh = portal_post(&app, REFRESH, Some(&cookie), None).await;
    envelope(refresh, 401, "invalid_credentials").await;
    // Signing out twice, or without a cookie, still signs the browser out.
    for cookie in [Some(cookie.as_str()), None] {
        let again = portal_post(&app, LOGOUT, cookie, Some(serde_json::json!({}))).await;
        assert_eq!(again.status().as_u16(), 204);
        assert_cleared(&set_cookie(&again));
    }
}

async fn wrong_passwords_through_the_portal_are_refused_and_lock(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.policy.set(keys::AUTH_LOCKOUT_MAX_FAILURES, &3).await.unwrap_or_else(|e| panic!("{e}"));
    app.create_user("victim@test.local", gpuaas_iam::GlobalRole::User).await;
    for _ in 0..2 {
        let refused = portal_login(&app, "victim@test.local", "wrong password!").await;
        assert!(refused.headers().get("set-cookie").is_none());
        envelope(refused, 401, "invalid_credentials").await;
    }
    let locked = portal_login(&app, "victim@test.local", "wrong password!").await;
    assert!(locked.headers().get("retry-after").is_some(), "Retry-After on lockout");
    envelope(locked, 429, "account_locked").await;
    let still_locked = portal_login(&app, "victim@test.local", PASSWORD).await;
    assert!(still_locked.headers().get("set-cookie").is_none());
    envelope(still_locked, 429, "account_locked").await;
    // The CLI's endpoint shares the lock.
    envelope(app.login("victim@test.local", PASSWORD).await, 429, "account_locked").await;
    envelope(portal_login(&app, "nobody@test.local", "wrong password!").await, 401, "invalid_credentials").await;
    // Bad input is a clear 4xx here too.
    let malformed = portal_post(&app, LOGIN, None, Some(serde_json::json!({"email": ADMIN_EMAIL}))).await;
    envelope(malformed, 400, "validation_error").await;
}

async fn oidc_exchange_for_the_portal_is_guarded_and_needs_a_provider(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let path = "/api/v1/auth/session/oidc/exchange";
    let body = serde_json::json!({"code": "c", "state": "s"});
    let unguarded = app.client.post(app.url(path)).json(&body).send().await.unwrap_or_else(|e| panic!("{e}"));
    envelope(unguarded, 403, "forbidden").await;
    let disabled = portal_post(&app, path, None, Some(body)).await;
    assert!(disabled.headers().get("set-cookie").is_none());
    envelope(disabled, 403, "feature_disabled").await;
}

async fn the_sign_in_page_learns_which_methods_exist(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let providers = || async {
        let response = app.client.get(app.url("/api/v1/auth/providers")).send().await.unwrap_or_else(|e| panic!("{e}"));
        json(response, 200).await
    };
    assert_eq!(providers().await, serde_json::json!({"password": true, "oidc": false}));
    app.policy.set(keys::AUTH_PERSONAL_LOGIN_ENABLED, &false).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(providers().await, serde_json::json!({"password": false, "oidc": false}));
}

gpuaas_testkit::both_backends!(
    the_sign_in_page_learns_which_methods_exist,
    cookie_login_keeps_the_refresh_token_out_of_reach,
    cookie_refresh_rotates_and_refuses_the_old_cookie,
    cookie_logout_revokes_and_clears,
    wrong_passwords_through_the_portal_are_refused_and_lock,
    oidc_exchange_for_the_portal_is_guarded_and_needs_a_provider,
);
