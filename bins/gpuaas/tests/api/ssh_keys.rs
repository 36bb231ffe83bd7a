//! SSH public keys over HTTP: registration with ssh-keygen's fingerprint, listing newest
//! first with cursors, removal, and everything refused: private keys (never echoed),
//! weak RSA, key options, duplicates, the per-user limit, other users' keys and
//! service accounts.

use gpuaas_store::sqlx;
use gpuaas_testkit::Backend;

use crate::helpers::{TestApp, envelope, json};

// Generated with OpenSSH 9.2 for these tests; each fingerprint is what `ssh-keygen -lf`
// printed for the .pub file.
const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINY6MmjpJ3fToEmN+TUJWP99pGRIjTHNu6TQbe1cxnby alice@laptop";
const ED25519_FP: &str = "SHA256:ApC8H9azXe3FK92XkNlL6BzBlHz9h25bYoqkK71O41o";
const ECDSA256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBodXtmr5JMoB7Ccnxax5+8dWZKRFNJl8nXIXaQid5nECi6J4wqBf6Olz7Flm9BHTEOZou89KqmzgphUCAna5+A= user@host-ecdsa256";
const ECDSA256_FP: &str = "SHA256:yGHpWlLLR7s1/6Gk2oxeqZKa1mYcsdagtFzChGAeSEk";
const RSA3072: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQCWITM6eIwMsM/uaVjwblcwYArxbgHjpACYTFMzpsF9WXEzPRBd3gA4cHexpC43J0xZBvwxKr5JsCzZ/aqB4CNtoC0BynpalUJDKtQFfTZY5l/IpluuvbL+q+FRQ0e8UDYp5KDTPuquFCJl0GGUKBlNftPBe5DHpTZTzIgGQT4bEyL9gXkpupHKxthqsam84K2M/ONvwpIw4nm2Fd5Uy1KFGrgYE9HzzY9rnvNw6VD84Z2zEnEPym6a3ommac+LpFplqIB8WYw5NviT3u7gj6YakvFyWC6Q1i5twZGqZfFolnAXYYyBeMd5ZGUXHfrbZ26tXIcB+35aHiDSQLrXDfIppTjuLwmHfASXHxdU5LpsVYZByOAju0omrN+0FA/Z81nI8G84l4GF2KaflBk99qZIqfZhp7x7LCT3ptQY97OBTUvKCy6qmlBkeACCf7mU4rPSlKUAfqGIOQHrgOVvMmD0LMdeLrdA0rUnfOz7gpgi+PtgaCrvfhQWdTcubcmGL4E= user@host-rsa3072";
const RSA3072_FP: &str = "SHA256:ZDnYKUghdKqRG6N1VFx/oMrhQZj0XqTSWHVAR4uJKTg";
const RSA2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCXJ52leLJAKwz9lVa2piJ1r76C/Fcq7gS+yP/2Qx+8gWiVOLBgvKrTotLsdFgXUKppVBXdKv5fSKVJtrbb06AV8qN4kC+VwGVpaaA3yT0eXZt3Ds24bhfbvVlEZ1O5/N05EKbAppr/WSCK4PESdqEq7Zp8b30DM6oAoUGCjNk1qZo1Ak6y/fuA100Ayy2M0k2FuBBg/JePy3QXJMoBY0BF2Zr8NkxMjltlQ6ISLmbW47BmSbY9VNUqOdvMRKcDRU+vXv93MNlBQ/DmxP9Ou4KdAY1Wbve1uBPGaCkddmUCAzfMrd4NUP0evt8/wUxYPtQ6Oay+/6IL5TkRfwjvQcqd user@host-rsa2048";
const PAGE_KEYS: [&str; 5] = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFTNksSSTQhCo2D7UqTu1HTS6Ip2jOUfqcwzGNn8JW1H page-1",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICX8Du4l3S2Fco4jLNbdNfo7eFPyAM13dYdCEPFKN1a9 page-2",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPmwFvWU3gTX2FRMSOlodZvGenoW4y3LR2Lrlj5cm6tS page-3",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII80MKOTlQYZxoI4cQDX6HQnRBZt4qWZU380pOOuRFv2 page-4",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIznwYI+idaXSpByT5IGBwOXYE9YnZBR1htqxZVvARJe page-5",
];

async fn add(app: &TestApp, token: &str, name: &str, public_key: &str) -> reqwest::Response {
    app.post("/api/v1/ssh-keys", token, serde_json::json!({"name": name, "public_key": public_key})).await
}

async fn delete(app: &TestApp, token: &str, key_id: &str) -> reqwest::Response {
    app.client
        .delete(app.url(&format!("/api/v1/ssh-keys/{key_id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_owned()
}

fn ids(page: &serde_json::Value) -> Vec<String> {
    page["items"].as_array().into_iter().flatten().map(|item| text(&item["id"])).collect()
}

async fn stored_keys(app: &TestApp) -> i64 {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM ssh_keys").fetch_one(app.store.pool()).await;
    sqlx::Row::try_get(&row.unwrap_or_else(|e| panic!("{e}")), "n").unwrap_or_else(|e| panic!("{e}"))
}

/// The audit rows of `action`, newest first.
async fn audited(app: &TestApp, action: &str) -> Vec<serde_json::Value> {
    let admin = app.token_for("admin").await;
    let page = json(app.get(&format!("/api/v1/admin/audit-logs?action={action}"), &admin).await, 200).await;
    page["items"].as_array().cloned().unwrap_or_default()
}

async fn keys_are_added_listed_and_deleted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token_for("alice").await;
    let alice_id = app.user_id("alice").await;

    let added = json(add(&app, &alice, "laptop", &format!("  {ED25519}\n")).await, 201).await;
    assert_eq!(added["name"], "laptop");
    assert_eq!(added["user_id"], alice_id.as_str());
    assert_eq!(added["key_type"], "ssh-ed25519");
    assert_eq!(added["public_key"], ED25519, "stored trimmed, comment kept");
    assert_eq!(added["fingerprint"], ED25519_FP, "as ssh-keygen -lf prints it");
    assert!(added["created_at"].as_str().is_some_and(|at| at.contains('T')), "{added}");
    let laptop = text(&added["id"]);
    let ecdsa = json(add(&app, &alice, "yubikey", ECDSA256).await, 201).await;
    assert_eq!(ecdsa["fingerprint"], ECDSA256_FP);
    let rsa = json(add(&app, &alice, "old workstation", RSA3072).await, 201).await;
    assert_eq!(rsa["fingerprint"], RSA3072_FP);

    let listed = json(app.get("/api/v1/ssh-keys", &alice).await, 200).await;
    assert_eq!(ids(&listed), [text(&rsa["id"]), text(&ecdsa["id"]), laptop.clone()], "newest first");
    assert_eq!(listed["items"][2], added, "the list shows what was added");
    assert!(listed["next_cursor"].is_null(), "{listed}");

    // The same key under another name (or with another comment) is the same key.
    let again = ED25519.replace("alice@laptop", "other comment");
    let body = envelope(add(&app, &alice, "desktop", &again).await, 409, "conflict").await;
    assert!(text(&body["error"]["message"]).contains("`laptop`"), "{body}");

    assert_eq!(delete(&app, &alice, &laptop).await.status().as_u16(), 204);
    let listed = json(app.get("/api/v1/ssh-keys", &alice).await, 200).await;
    assert_eq!(ids(&listed), [text(&rsa["id"]), text(&ecdsa["id"])]);
    envelope(delete(&app, &alice, &laptop).await, 404, "not_found").await;
    envelope(delete(&app, &alice, "no-such-key").await, 404, "not_found").await;
    // Once removed it may be registered again.
    json(add(&app, &alice, "laptop", ED25519).await, 201).await;

    let adds = audited(&app, "ssh_key.add").await;
    assert_eq!(adds.len(), 4, "{adds:?}");
    assert_eq!(adds[3]["actor_id"], alice_id.as_str());
    assert_eq!(adds[3]["details"]["fingerprint"], ED25519_FP);
    assert!(text(&adds[3]["target"]).ends_with(&format!(":ssh_key:{laptop}")), "{}", adds[3]);
    let deletes = audited(&app, "ssh_key.delete").await;
    assert_eq!(deletes.len(), 1, "only the delete that happened is audited: {deletes:?}");
    assert_eq!(deletes[0]["details"]["name"], "laptop");
}

/// A fresh private key in each format users paste by mistake; the key material comes
/// from rcgen at run time, so no private key sits in this file.
fn private_keys() -> Vec<String> {
    let pkcs8 = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}")).serialize_pem();
    let body: Vec<&str> = pkcs8.lines().filter(|line| !line.starts_with("-----")).collect();
    vec![
        pkcs8.clone(),
        format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n", body.join("\n")),
        format!("-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----", body.join("\n")),
        format!(
            "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\n{}\n---- END SSH2 ENCRYPTED PRIVATE KEY ----",
            body.join("\n")
        ),
        format!(
            "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: alice\nPublic-Lines: 2\n{}\nPrivate-Lines: 1\n{}\n",
            ED25519.split(' ').nth(1).unwrap_or_default(),
            body.join("\n")
        ),
        // The public line followed by the private file, as `cat id_ed25519*` prints.
        format!("{ED25519}\n{pkcs8}"),
    ]
}

async fn bad_keys_are_refused_without_echo(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token_for("alice").await;

    for private in private_keys() {
        let response = add(&app, &alice, "oops", &private).await;
        let body = envelope(response, 400, "validation_error").await;
        assert_eq!(body["error"]["details"]["field"], "public_key", "{body}");
        let message = text(&body["error"]["message"]);
        assert!(message.contains("private key") && message.contains(".pub"), "{message}");
        let shown = body.to_string();
        for line in private.lines().filter(|line| line.len() > 8) {
            assert!(!shown.contains(line), "the response quotes the key material: {shown}");
        }
    }

    let body = envelope(add(&app, &alice, "weak", RSA2048).await, 400, "validation_error").await;
    assert_eq!(body["error"]["details"]["field"], "public_key");
    assert!(text(&body["error"]["message"]).contains("3072"), "{body}");

    for (label, key) in [
        ("options", format!("command=\"/bin/sh\" {ED25519}")),
        ("two keys", format!("{ED25519}\n{ECDSA256}")),
        ("truncated", ED25519[..40].to_owned()),
        ("dsa", "ssh-dss AAAAB3NzaC1kc3MAAACBAP".to_owned()),
        ("empty", String::new()),
    ] {
        let body = envelope(add(&app, &alice, "bad", &key).await, 400, "validation_error").await;
        assert_eq!(body["error"]["details"]["field"], "public_key", "{label}: {body}");
    }

    for name in ["", "   ", &"n".repeat(65), "new\nline"] {
        let body = envelope(add(&app, &alice, name, ED25519).await, 400, "validation_error").await;
        assert_eq!(body["error"]["details"]["field"], "name", "{name:?}: {body}");
    }

    let unknown = app
        .post("/api/v1/ssh-keys", &alice, serde_json::json!({"name": "x", "public_key": ED25519, "options": "no-pty"}))
        .await;
    let body = envelope(unknown, 400, "unknown_field").await;
    assert_eq!(body["error"]["details"]["field"], "options");
    let missing = app.post("/api/v1/ssh-keys", &alice, serde_json::json!({"name": "x"})).await;
    envelope(missing, 400, "validation_error").await;

    assert_eq!(stored_keys(&app).await, 0, "nothing refused was stored");
    assert!(audited(&app, "ssh_key.add").await.is_empty());
}

async fn users_never_see_or_remove_each_others_keys(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token_for("alice").await;
    let bob = app.token_for("bob").await;
    let key = json(add(&app, &alice, "laptop", ED25519).await, 201).await;
    let key_id = text(&key["id"]);

    let bobs = json(app.get("/api/v1/ssh-keys", &bob).await, 200).await;
    assert!(ids(&bobs).is_empty(), "{bobs}");
    let body = envelope(delete(&app, &bob, &key_id).await, 404, "not_found").await;
    assert!(!body.to_string().contains(ED25519_FP), "{body}");
    // Bob may register the same public key for himself: keys are unique per user.
    let his = json(add(&app, &bob, "shared", ED25519).await, 201).await;
    assert_eq!(his["fingerprint"], ED25519_FP);
    assert_ne!(his["id"], key["id"]);

    let alices = json(app.get("/api/v1/ssh-keys", &alice).await, 200).await;
    assert_eq!(ids(&alices), [key_id], "Alice's key survived");
    let bobs = json(app.get("/api/v1/ssh-keys", &bob).await, 200).await;
    assert_eq!(ids(&bobs), [text(&his["id"])]);
}

async fn service_accounts_cannot_manage_keys(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token_for("alice").await;
    let key = json(add(&app, &alice, "laptop", ED25519).await, 201).await;
    let me = json(app.get("/api/v1/users/me", &alice).await, 200).await;
    let project = text(&me["projects"][0]["id"]);
    let issued = json(
        app.post(
            &format!("/api/v1/projects/{project}/service-accounts"),
            &alice,
            serde_json::json!({"name": "ci", "scopes": ["project:read", "project:write"]}),
        )
        .await,
        201,
    )
    .await;
    let exchanged = json(
        app.post(
            "/api/v1/auth/service-accounts/token",
            "",
            serde_json::json!({"client_id": issued["client_id"], "client_secret": issued["client_secret"]}),
        )
        .await,
        200,
    )
    .await;
    let robot = text(&exchanged["access_token"]);

    envelope(add(&app, &robot, "robot", ECDSA256).await, 403, "forbidden").await;
    envelope(delete(&app, &robot, &text(&key["id"])).await, 403, "forbidden").await;
    let listed = json(app.get("/api/v1/ssh-keys", &robot).await, 200).await;
    assert!(ids(&listed).is_empty(), "a service account has no keys and sees no one's: {listed}");
    assert_eq!(stored_keys(&app).await, 1);
}

async fn lists_page_with_cursors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token_for("alice").await;
    let mut added = Vec::new();
    for (index, key) in PAGE_KEYS.iter().enumerate() {
        added.push(text(&json(add(&app, &alice, &format!("key {index}"), key).await, 201).await["id"]));
    }
    added.reverse();

    let mut seen = Vec::new();
    let mut path = "/api/v1/ssh-keys?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = json(app.get(&path, &alice).await, 200).await;
        pages += 1;
        assert!(ids(&page).len() <= 2, "{page}");
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/ssh-keys?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, added, "every key once, newest first");
    let all = json(app.get("/api/v1/ssh-keys?limit=5", &alice).await, 200).await;
    assert_eq!(ids(&all), added);
    assert!(all["next_cursor"].is_null(), "an exactly full page is the last: {all}");

    for (query, field) in [("limit=0", "limit"), ("limit=201", "limit"), ("cursor=not-a-cursor", "cursor")] {
        let body = envelope(app.get(&format!("/api/v1/ssh-keys?{query}"), &alice).await, 400, "validation_error").await;
        assert_eq!(body["error"]["details"]["field"], field, "{query}: {body}");
    }
}

async fn a_user_holds_at_most_fifty_keys(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let carol = app.token_for("carol").await;
    let carol_id = app.user_id("carol").await;
    for n in 0..50 {
        sqlx::query(
            "INSERT INTO ssh_keys (id, user_id, name, key_type, public_key, fingerprint, created_at) \
             VALUES ($1, $2, $3, 'ssh-ed25519', $4, $5, $6)",
        )
        .bind(format!("filler-{n}"))
        .bind(&carol_id)
        .bind(format!("filler {n}"))
        .bind(PAGE_KEYS[0])
        .bind(format!("SHA256:filler{n}"))
        .bind(i64::from(n))
        .execute(app.store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let body = envelope(add(&app, &carol, "one too many", ED25519).await, 409, "conflict").await;
    assert!(text(&body["error"]["message"]).contains("50"), "{body}");
    assert_eq!(delete(&app, &carol, "filler-0").await.status().as_u16(), 204);
    json(add(&app, &carol, "room again", ED25519).await, 201).await;
    // Another user is not affected by Carol's count.
    let dave = app.token_for("dave").await;
    json(add(&app, &dave, "laptop", ED25519).await, 201).await;
}

gpuaas_testkit::both_backends!(
    keys_are_added_listed_and_deleted,
    bad_keys_are_refused_without_echo,
    users_never_see_or_remove_each_others_keys,
    service_accounts_cannot_manage_keys,
    lists_page_with_cursors,
    a_user_holds_at_most_fifty_keys,
);
