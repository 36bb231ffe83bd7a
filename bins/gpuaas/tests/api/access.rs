//! Authorization walks the route table: every route declares a permission, protected
//! routes refuse anonymous callers, operator routes refuse non-admins, no route takes
//! credentials in its URL, and no tenant reaches another tenant's resources.

use gpuaas::api::route_table;
use gpuaas::api::security::CREDENTIAL_QUERY_PARAMETERS;
use gpuaas_iam::Permission;
use gpuaas_testkit::Backend;
use reqwest::Method;

use crate::helpers::{TestApp, envelope, json};

fn concrete(path: &str, project: &str, account: &str) -> String {
    path.replace("{project_id}", project).replace("{service_account_id}", account).replace("{user_id}", account)
}

async fn send(
    app: &TestApp,
    method: &Method,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> reqwest::Response {
    let mut request = app.client.request(method.clone(), app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == Method::POST {
        request = request.json(&body);
    }
    request.send().await.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_route_declares_a_permission_and_is_documented() {
    let table = route_table();
    let document: serde_json::Value =
        serde_json::from_str(&gpuaas::openapi::document_json()).unwrap_or_else(|e| panic!("{e}"));
    let mut documented = Vec::new();
    for (path, operations) in document["paths"].as_object().into_iter().flatten() {
        for method in operations.as_object().into_iter().flatten().map(|(m, _)| m.to_uppercase()) {
            documented.push(format!("{method} {path}"));
        }
    }
    let mut routed: Vec<String> = table.specs().iter().map(|spec| format!("{} {}", spec.method, spec.path)).collect();
    documented.sort();
    routed.sort();
    assert_eq!(routed, documented, "the route table and the OpenAPI document list the same operations");
    for spec in table.specs() {
        if spec.path.starts_with("/api/v1/admin/") {
            assert!(spec.permission.is_operator_only(), "{} {} must be operator-only", spec.method, spec.path);
        }
        if spec.permission == Permission::Public {
            // Enrollment is authenticated by its one-time token, in the body.
            let public = spec.path.starts_with("/api/v1/auth/")
                || spec.path == "/api/v1/nodes/enroll"
                // Stripe's webhook is authenticated by its signature over the raw body.
                || spec.path == "/api/v1/payments/webhook"
                || spec.path.starts_with("/.well-known/")
                || ["/", "/metrics", "/api/v1/healthz", "/api/v1/readyz", "/api/v1/buildinfo", "/api/v1/openapi.json"]
                    .contains(&spec.path);
            assert!(public, "{} {} is public but is not a sign-in or system route", spec.method, spec.path);
        }
    }
}

async fn anonymous_and_non_admin_callers_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = app.token_for("alice").await;
    let id = gpuaas_kernel::new_id().to_string();
    for spec in route_table().specs() {
        let path = concrete(spec.path, &id, &id);
        if spec.permission != Permission::Public {
            let response = send(&app, &spec.method, &path, None, serde_json::json!({})).await;
            assert_eq!(response.status().as_u16(), 401, "{} {path} without a token", spec.method);
            envelope(response, 401, "token_missing").await;
        }
        if spec.permission.is_operator_only() {
            let response = send(&app, &spec.method, &path, Some(&user), serde_json::json!({})).await;
            assert_eq!(response.status().as_u16(), 403, "{} {path} as a plain user", spec.method);
            envelope(response, 403, "forbidden").await;
        }
    }
}

async fn credentials_in_the_url_are_refused_on_every_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    let id = gpuaas_kernel::new_id().to_string();
    for spec in route_table().specs() {
        for parameter in CREDENTIAL_QUERY_PARAMETERS {
            let path = format!("{}?{parameter}={admin}", concrete(spec.path, &id, &id));
            let response = send(&app, &spec.method, &path, None, serde_json::json!({})).await;
            assert_eq!(response.status().as_u16(), 400, "{} {path}", spec.method);
            let body = envelope(response, 400, "validation_error").await;
            assert_eq!(body["error"]["details"]["field"], *parameter);
        }
    }
    // Upper case and percent-encoding do not sneak past.
    let response = send(&app, &Method::GET, "/api/v1/users/me?Access%5FToken=x", None, serde_json::json!({})).await;
    envelope(response, 400, "validation_error").await;
}

async fn tenants_never_reach_each_other(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token_for("alice").await;
    let bob = app.token_for("bob").await;
    let alice_me = json(app.get("/api/v1/users/me", &alice).await, 200).await;
    let alice_project = alice_me["projects"][0]["id"].as_str().unwrap_or_default().to_owned();
    let issued = json(
        app.post(
            &format!("/api/v1/projects/{alice_project}/service-accounts"),
            &alice,
            serde_json::json!({"name": "robot", "scopes": ["project:read", "project:write"]}),
        )
        .await,
        201,
    )
    .await;
    let account = issued["service_account"]["id"].as_str().unwrap_or_default().to_owned();
    let bob_projects = json(app.get("/api/v1/projects", &bob).await, 200).await;
    assert!(!bob_projects.to_string().contains(&alice_project), "{bob_projects}");

    for spec in route_table().specs() {
        if !spec.path.contains("{project_id}") {
            continue;
        }
        let path = concrete(spec.path, &alice_project, &account);
        let body = serde_json::json!({"name": "intruder", "scopes": ["project:read"]});
        let response = send(&app, &spec.method, &path, Some(&bob), body).await;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(status, 404, "{} {path} as another tenant: {text}", spec.method);
        assert!(!text.contains("robot") && !text.contains(&account), "no data of tenant A leaks: {text}");
    }
    // Bob cannot point his own project's routes at Alice's service account either.
    let bob_me = json(app.get("/api/v1/users/me", &bob).await, 200).await;
    let bob_project = bob_me["projects"][0]["id"].as_str().unwrap_or_default().to_owned();
    let crossed = app
        .post(&format!("/api/v1/projects/{bob_project}/service-accounts/{account}/revoke"), &bob, serde_json::json!({}))
        .await;
    envelope(crossed, 404, "not_found").await;
    // Nor select her project as his active project.
    let selected = app
        .client
        .get(app.url("/api/v1/users/me"))
        .bearer_auth(&bob)
        .header("x-project-id", &alice_project)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    envelope(selected, 404, "not_found").await;
    let own = app
        .client
        .get(app.url("/api/v1/users/me"))
        .bearer_auth(&bob)
        .header("x-project-id", &bob_project)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(own.status().as_u16(), 200);
    // Alice's account still works: nothing Bob did changed it.
    let listed = json(app.get(&format!("/api/v1/projects/{alice_project}/service-accounts"), &alice).await, 200).await;
    assert_eq!(listed["items"][0]["status"], "active", "{listed}");
}

gpuaas_testkit::both_backends!(
    anonymous_and_non_admin_callers_are_refused,
    credentials_in_the_url_are_refused_on_every_route,
    tenants_never_reach_each_other,
);
