//! Operator user management, audit queries and the CSV export over HTTP.

use gpuaas_testkit::Backend;

use crate::helpers::{PASSWORD, TestApp, envelope, json};

async fn admins_page_through_users(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    for index in 0..5 {
        json(
            app.post(
                "/api/v1/admin/users",
                &admin,
                serde_json::json!({"email": format!("user{index}@example.com"), "password": PASSWORD}),
            )
            .await,
            201,
        )
        .await;
    }
    let duplicate = app
        .post("/api/v1/admin/users", &admin, serde_json::json!({"email": "USER0@example.com", "password": PASSWORD}))
        .await;
    envelope(duplicate, 409, "conflict").await;
    let weak = app
        .post("/api/v1/admin/users", &admin, serde_json::json!({"email": "x@example.com", "password": "short"}))
        .await;
    assert_eq!(envelope(weak, 400, "validation_error").await["error"]["details"]["field"], "password");
    let bad_role = app
        .post(
            "/api/v1/admin/users",
            &admin,
            serde_json::json!({"email": "y@example.com", "password": PASSWORD, "role": "root"}),
        )
        .await;
    assert_eq!(envelope(bad_role, 400, "validation_error").await["error"]["details"]["field"], "role");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/admin/users?limit=2&cursor={cursor}"),
            None => "/api/v1/admin/users?limit=2".to_owned(),
        };
        let page = json(app.get(&path, &admin).await, 200).await;
        for item in page["items"].as_array().into_iter().flatten() {
            seen.push(item["email"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6, "five users and the admin, each once: {seen:?}");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 6);
    let filtered = json(app.get("/api/v1/admin/users?email=user3", &admin).await, 200).await;
    assert_eq!(filtered["items"].as_array().map(Vec::len), Some(1));
    envelope(app.get("/api/v1/admin/users?cursor=bogus", &admin).await, 400, "validation_error").await;
    envelope(app.get("/api/v1/admin/users?limit=0", &admin).await, 400, "validation_error").await;
    envelope(app.get("/api/v1/admin/users?status=zombie", &admin).await, 400, "validation_error").await;
    envelope(app.get(&format!("/api/v1/admin/users/{}", gpuaas_kernel::new_id()), &admin).await, 404, "not_found")
        .await;
}

async fn audit_log_filters_and_exports_csv(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    let created = json(
        app.post("/api/v1/admin/users", &admin, serde_json::json!({"email": "=cmd@example.com", "password": PASSWORD}))
            .await,
        201,
    )
    .await;
    let user_id = created["id"].as_str().unwrap_or_default().to_owned();
    let page = json(app.get("/api/v1/admin/audit-logs?action=user.create", &admin).await, 200).await;
    let row = &page["items"][0];
    let tenant_id = created["tenant_id"].as_str().unwrap_or_default();
    assert_eq!(row["target"], format!("gpuaas:local:{tenant_id}:-:user:{user_id}"), "canonical resource id");
    assert_eq!(row["actor_type"], "user");
    assert_eq!(row["actor_role"], "admin");
    assert_eq!(row["result"], "success");
    assert!(row["correlation_id"].as_str().is_some_and(|c| !c.is_empty()), "{row}");
    let later = json(app.get("/api/v1/admin/audit-logs?from=2999-01-01T00:00:00Z", &admin).await, 200).await;
    assert_eq!(later["items"].as_array().map(Vec::len), Some(0));
    envelope(app.get("/api/v1/admin/audit-logs?from=yesterday", &admin).await, 400, "validation_error").await;
    envelope(
        app.get("/api/v1/admin/audit-logs?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z", &admin).await,
        400,
        "validation_error",
    )
    .await;

    let export = app.get("/api/v1/admin/audit-logs/export", &admin).await;
    assert_eq!(export.status().as_u16(), 200);
    let content_type = export.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let csv = export.text().await.unwrap_or_default();
    let mut lines = csv.lines();
    assert!(lines.next().is_some_and(|header| header.contains("action") && header.contains("target")), "{csv}");
    assert!(csv.contains("user.create") && csv.contains("user.bootstrap_admin"), "{csv}");
}

gpuaas_testkit::both_backends!(admins_page_through_users, audit_log_filters_and_exports_csv);
