//! Sign-in, sessions, lockout, disabling and service accounts through the HTTP API.

use gpuaas_policy::keys;
use gpuaas_testkit::Backend;

use crate::helpers::{ADMIN_EMAIL, PASSWORD, TestApp, envelope, json};

async fn login_refresh_logout_and_me(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let session = json(app.login(ADMIN_EMAIL, PASSWORD).await, 200).await;
    assert_eq!(session["token_type"], "Bearer");
    assert!(session["expires_in"].as_u64().is_some_and(|s| s > 0));
    let access = session["access_token"].as_str().unwrap_or_default().to_owned();
    let refresh = session["refresh_token"].as_str().unwrap_or_default().to_owned();

    let me = json(app.get("/api/v1/users/me", &access).await, 200).await;
    assert_eq!(me["user"]["email"], ADMIN_EMAIL);
    assert_eq!(me["user"]["role"], "admin");
    assert_eq!(me["tenant"]["role"], "owner");
    assert_eq!(me["projects"][0]["name"], "default");
    assert_eq!(me["projects"][0]["role"], "admin");
    assert!(me["user"].get("password_hash").is_none(), "{me}");

    let renewed =
        json(app.post("/api/v1/auth/token/refresh", "", serde_json::json!({"refresh_token": refresh})).await, 200)
            .await;
    let second_refresh = renewed["refresh_token"].as_str().unwrap_or_default().to_owned();
    assert_ne!(second_refresh, refresh);
    // The old refresh token was rotated away; reusing it is refused (and burns the family).
    let reused = app.post("/api/v1/auth/token/refresh", "", serde_json::json!({"refresh_token": refresh})).await;
    envelope(reused, 401, "invalid_credentials").await;
    let after_reuse =
        app.post("/api/v1/auth/token/refresh", "", serde_json::json!({"refresh_token": second_refresh})).await;
    envelope(after_reuse, 401, "invalid_credentials").await;

    let session = json(app.login(ADMIN_EMAIL, PASSWORD).await, 200).await;
    let refresh = session["refresh_token"].as_str().unwrap_or_default().to_owned();
    let logout = app.post("/api/v1/auth/logout", "", serde_json::json!({"refresh_token": refresh})).await;
    assert_eq!(logout.status().as_u16(), 204);
    let again = app.post("/api/v1/auth/token/refresh", "", serde_json::json!({"refresh_token": refresh})).await;
    envelope(again, 401, "invalid_credentials").await;
    let logout_twice = app.post("/api/v1/auth/logout", "", serde_json::json!({"refresh_token": refresh})).await;
    envelope(logout_twice, 401, "invalid_credentials").await;
}

async fn bad_tokens_get_the_right_codes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let missing = app.client.get(app.url("/api/v1/users/me")).send().await.unwrap_or_else(|e| panic!("{e}"));
    envelope(missing, 401, "token_missing").await;
    envelope(app.get("/api/v1/users/me", "not-a-jwt").await, 401, "token_invalid").await;
    let token = app.token_for("admin").await;
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    envelope(app.get("/api/v1/users/me", &tampered).await, 401, "token_invalid").await;
    let basic = app
        .client
        .get(app.url("/api/v1/users/me"))
        .header("authorization", "Basic cm9vdDpwdw==")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    envelope(basic, 401, "token_invalid").await;
    // Public routes keep working for a client holding a broken token.
    let health = app.get("/api/v1/healthz", "garbage").await;
    assert_eq!(health.status().as_u16(), 200);
}

async fn wrong_passwords_lock_the_account_and_are_audited(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.policy.set(keys::AUTH_LOCKOUT_MAX_FAILURES, &3).await.unwrap_or_else(|e| panic!("{e}"));
    app.create_user("victim@test.local", gpuaas_iam::GlobalRole::User).await;
    for _ in 0..2 {
        envelope(app.login("victim@test.local", "wrong password!").await, 401, "invalid_credentials").await;
    }
    let locked = app.login("victim@test.local", "wrong password!").await;
    assert!(locked.headers().get("retry-after").is_some(), "Retry-After on lockout");
    envelope(locked, 429, "account_locked").await;
    // Even the right password is refused while locked.
    let refused = app.login("victim@test.local", PASSWORD).await;
    let retry: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    assert!(retry > 0);
    envelope(refused, 429, "account_locked").await;
    // Unknown accounts answer exactly like a wrong password.
    envelope(app.login("nobody@test.local", "wrong password!").await, 401, "invalid_credentials").await;

    let admin = app.token_for("admin").await;
    let failures = json(app.get("/api/v1/admin/audit-logs?action=auth.login", &admin).await, 200).await;
    let results: Vec<&str> =
        failures["items"].as_array().into_iter().flatten().filter_map(|i| i["result"].as_str()).collect();
    assert!(results.iter().filter(|r| **r == "failure").count() >= 3, "{failures}");
    assert!(results.contains(&"denied"), "the refused login while locked is audited: {failures}");
    let lockouts = json(app.get("/api/v1/admin/audit-logs?action=auth.lockout", &admin).await, 200).await;
    assert_eq!(lockouts["items"].as_array().map(Vec::len), Some(1), "{lockouts}");
    let text = failures.to_string();
    assert!(!text.contains("wrong password!") && !text.contains(PASSWORD), "no passwords in audit");
}

async fn disabled_users_lose_access_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    let created = json(
        app.post(
            "/api/v1/admin/users",
            &admin,
            serde_json::json!({"email": "Carol@Test.Local", "password": PASSWORD, "display_name": "Carol"}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(created["email"], "carol@test.local");
    assert_eq!(created["role"], "user");
    let user_id = created["id"].as_str().unwrap_or_default().to_owned();
    let tenant_id = created["tenant_id"].as_str().unwrap_or_default().to_owned();
    let session = json(app.login("carol@test.local", PASSWORD).await, 200).await;
    let access = session["access_token"].as_str().unwrap_or_default().to_owned();
    let refresh = session["refresh_token"].as_str().unwrap_or_default().to_owned();
    json(app.get("/api/v1/users/me", &access).await, 200).await;

    let disabled =
        json(app.post(&format!("/api/v1/admin/users/{user_id}/disable"), &admin, serde_json::json!({})).await, 200)
            .await;
    assert_eq!(disabled["status"], "disabled");
    envelope(app.get("/api/v1/users/me", &access).await, 403, "account_disabled").await;
    let refreshed = app.post("/api/v1/auth/token/refresh", "", serde_json::json!({"refresh_token": refresh})).await;
    envelope(refreshed, 401, "invalid_credentials").await;
    envelope(app.login("carol@test.local", PASSWORD).await, 403, "account_disabled").await;

    json(app.post(&format!("/api/v1/admin/users/{user_id}/enable"), &admin, serde_json::json!({})).await, 200).await;
    json(app.login("carol@test.local", PASSWORD).await, 200).await;
    let audit = json(
        app.get(&format!("/api/v1/admin/audit-logs?target=gpuaas:local:{tenant_id}:-:user:{user_id}"), &admin).await,
        200,
    )
    .await;
    let actions: Vec<&str> =
        audit["items"].as_array().into_iter().flatten().filter_map(|i| i["action"].as_str()).collect();
    for action in ["user.create", "user.disable", "user.enable"] {
        assert!(actions.contains(&action), "{action} audited: {actions:?}");
    }
}

async fn service_accounts_exchange_rotate_and_revoke(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token_for("alice").await;
    let me = json(app.get("/api/v1/users/me", &alice).await, 200).await;
    let project = me["projects"][0]["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/api/v1/projects/{project}/service-accounts");
    let issued =
        json(app.post(&path, &alice, serde_json::json!({"name": "ci", "scopes": ["project:read"]})).await, 201).await;
    let client_id = issued["client_id"].as_str().unwrap_or_default().to_owned();
    let secret = issued["client_secret"].as_str().unwrap_or_default().to_owned();
    let account = issued["service_account"]["id"].as_str().unwrap_or_default().to_owned();
    let listed = json(app.get(&path, &alice).await, 200).await;
    assert!(!listed.to_string().contains(&secret), "the secret is shown once only");

    let exchange = |client_id: String, secret: String| {
        let app = &app;
        async move {
            app.post(
                "/api/v1/auth/service-accounts/token",
                "",
                serde_json::json!({"client_id": client_id, "client_secret": secret}),
            )
            .await
        }
    };
    let token = json(exchange(client_id.clone(), secret.clone()).await, 200).await;
    assert_eq!(token["scope"], "project:read");
    let sa_token = token["access_token"].as_str().unwrap_or_default().to_owned();
    json(app.get(&format!("/api/v1/projects/{project}"), &sa_token).await, 200).await;
    // Read scope only: no managing, no profile, no admin.
    envelope(app.get(&path, &sa_token).await, 403, "forbidden").await;
    envelope(app.get("/api/v1/admin/users", &sa_token).await, 403, "forbidden").await;
    envelope(exchange(client_id.clone(), "wrong".into()).await, 401, "invalid_credentials").await;

    let rotated = json(app.post(&format!("{path}/{account}/rotate"), &alice, serde_json::json!({})).await, 200).await;
    envelope(exchange(client_id.clone(), secret.clone()).await, 401, "invalid_credentials").await;
    envelope(app.get(&format!("/api/v1/projects/{project}"), &sa_token).await, 401, "token_invalid").await;
    let new_id = rotated["client_id"].as_str().unwrap_or_default().to_owned();
    let new_secret = rotated["client_secret"].as_str().unwrap_or_default().to_owned();
    let fresh = json(exchange(new_id.clone(), new_secret.clone()).await, 200).await;
    let fresh_token = fresh["access_token"].as_str().unwrap_or_default().to_owned();
    json(app.get(&format!("/api/v1/projects/{project}"), &fresh_token).await, 200).await;

    json(app.post(&format!("{path}/{account}/revoke"), &alice, serde_json::json!({})).await, 200).await;
    envelope(app.get(&format!("/api/v1/projects/{project}"), &fresh_token).await, 401, "token_invalid").await;
    envelope(exchange(new_id, new_secret).await, 401, "invalid_credentials").await;
}

gpuaas_testkit::both_backends!(
    login_refresh_logout_and_me,
    bad_tokens_get_the_right_codes,
    wrong_passwords_lock_the_account_and_are_audited,
    disabled_users_lose_access_at_once,
    service_accounts_exchange_rotate_and_revoke,
);
