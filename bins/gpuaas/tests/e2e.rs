//! The real `gpuaas` binary, started as a process.

use std::time::{Duration, Instant};

use gpuaas_testkit::{Backend, NatsServer, RedisServer, TestDatabase, free_port};

mod process;

use process::{Running, cli, gpuaas, start, terminate};

/// Opens the embedded database of a stopped `up`, as an operator's tool would.
async fn open_embedded_store(data_dir: &std::path::Path) -> gpuaas_store::Store {
    let url = format!("sqlite://{}?mode=rw", data_dir.join("gpuaas.db").display());
    gpuaas_store::Store::connect(&url, &gpuaas_store::PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_stops_cleanly_and_keeps_data_across_restarts() {
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data_dir = data.path().join("data");
    let up = || {
        let mut command = gpuaas();
        command.args(["up", "--data-dir"]).arg(&data_dir).args(["--listen", &format!("127.0.0.1:{}", free_port())]);
        command
    };
    let Running { child, url, .. } = start(up()).await;
    let (status, ready) = get_json(&format!("{url}/api/v1/readyz")).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["database"]["backend"], "sqlite");
    assert_eq!(ready["event_bus"]["backend"], "embedded");
    let (exit, took) = terminate(child).await;
    assert!(exit.success(), "exit status {exit:?}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");

    // The first start created an administrator with a generated password, kept only in
    // a file its owner alone can read.
    let credentials_path = data_dir.join("admin-credentials");
    let credentials = std::fs::read_to_string(&credentials_path).unwrap_or_else(|e| panic!("{e}"));
    assert!(credentials.contains("email=admin@gpuaas.local") && credentials.contains("password="), "{credentials}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&credentials_path).unwrap_or_else(|e| panic!("{e}")).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "admin-credentials mode {mode:o}");
    }

    // Write through the store while stopped, as an operator changing policy would.
    let store = open_embedded_store(&data_dir).await;
    gpuaas_policy::PolicyClient::new(store.clone(), Duration::ZERO)
        .set(gpuaas_policy::keys::OUTBOX_MAX_ATTEMPTS, &7)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store.close().await;

    let Running { child, url, .. } = start(up()).await;
    let (status, _) = get_json(&format!("{url}/api/v1/healthz")).await;
    assert_eq!(status, 200);
    let (exit, _) = terminate(child).await;
    assert!(exit.success());
    let store = open_embedded_store(&data_dir).await;
    let kept =
        gpuaas_policy::PolicyClient::new(store, Duration::ZERO).get(gpuaas_policy::keys::OUTBOX_MAX_ATTEMPTS).await;
    assert_eq!(kept.ok(), Some(7), "data survived the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_postgres_and_nats_after_migrate() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let nats = NatsServer::start().await;
    let mut redis = RedisServer::start().await;

    // Before `migrate`, serve refuses to start on an empty schema.
    let refused = gpuaas()
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("DATABASE_URL", &database.url)
        .env("NATS_URL", nats.url())
        .output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("gpuaas migrate"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    for _ in 0..2 {
        let migrated =
            gpuaas().arg("migrate").env("DATABASE_URL", &database.url).output().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    }

    let mut command = gpuaas();
    command
        .args(["serve", "--role", "api", "--role", "relay", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("DATABASE_URL", &database.url)
        .env("NATS_URL", nats.url())
        .env("REDIS_URL", redis.url())
        .env("GPUAAS_ADMIN_EMAIL", "ops@example.com")
        .env("GPUAAS_ADMIN_PASSWORD", "a long operator password");
    let Running { child, url, .. } = start(command).await;
    let (status, ready) = get_json(&format!("{url}/api/v1/readyz")).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["database"]["backend"], "postgres");
    assert_eq!(ready["event_bus"]["backend"], "nats");
    // Sign-in works against PostgreSQL, and the rate limiter answers from Redis.
    let login = reqwest::Client::new()
        .post(format!("{url}/api/v1/auth/personal/login"))
        .json(&serde_json::json!({"email": "ops@example.com", "password": "a long operator password"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(login.status().as_u16(), 200);
    assert!(login.headers().get("x-ratelimit-remaining").is_some(), "rate-limit headers");
    // With Redis gone the limiter fails open: requests still pass, without limit headers
    // (an in-process limiter would still send them, so this proves Redis was in use).
    redis.stop().await;
    let health = reqwest::get(format!("{url}/api/v1/healthz")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(health.status().as_u16(), 200);
    assert!(health.headers().get("x-ratelimit-remaining").is_none(), "Redis limiter fails open");
    let (exit, took) = terminate(child).await;
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(10));
}

#[tokio::test]
async fn serve_with_an_unreachable_database_fails_fast_and_clearly() {
    let started = Instant::now();
    let output = gpuaas()
        .arg("serve")
        .env("DATABASE_URL", format!("postgres://nobody:hunter2@127.0.0.1:{}/gpuaas", free_port()))
        .output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("database"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");
}

#[tokio::test]
async fn invalid_configuration_lists_every_problem_and_exits_2() {
    let output = gpuaas()
        .args(["serve", "--listen", "nowhere"])
        .env("DATABASE_URL", "mysql://root:hunter2@db/x")
        .env("GPUAAS_LOG_FORMAT", "xml")
        .output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for field in ["listen", "database_url", "log_format"] {
        assert!(stderr.contains(field), "{stderr}");
    }
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_signs_in_manages_users_exports_audit_and_signs_out() {
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config_dir = data.path().join("config");
    let mut command = gpuaas();
    command
        .args(["up", "--data-dir"])
        .arg(data.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env("GPUAAS_ADMIN_EMAIL", "ops@example.com")
        .env("GPUAAS_ADMIN_PASSWORD", "a long operator password");
    let Running { child, url, .. } = start(command).await;
    assert!(!data.path().join("data/admin-credentials").exists(), "no generated password when one is given");

    let (ok, _, stderr) =
        cli(&config_dir, &url, &["login", "--email", "ops@example.com"], &[("GPUAAS_PASSWORD", "wrong password")])
            .await;
    assert!(!ok && stderr.contains("invalid_credentials"), "{stderr}");
    let (ok, _, stderr) = cli(
        &config_dir,
        &url,
        &["login", "--email", "ops@example.com"],
        &[("GPUAAS_PASSWORD", "a long operator password")],
    )
    .await;
    assert!(ok, "{stderr}");
    let saved = std::fs::read_to_string(config_dir.join("credentials.json")).unwrap_or_else(|e| panic!("{e}"));
    assert!(saved.contains("refresh_token"));

    let (ok, me, stderr) = cli(&config_dir, &url, &["whoami"], &[]).await;
    assert!(ok && me.contains("ops@example.com") && me.contains("\"admin\""), "{me}{stderr}");
    let (ok, created, stderr) = cli(
        &config_dir,
        &url,
        &["admin", "users", "create", "--email", "dev@example.com"],
        &[("GPUAAS_NEW_USER_PASSWORD", "a long developer password")],
    )
    .await;
    assert!(ok, "{stderr}");
    let created: serde_json::Value = serde_json::from_str(&created).unwrap_or_else(|e| panic!("{e}: {created}"));
    let user_id = created["id"].as_str().unwrap_or_default().to_owned();
    let (ok, listed, _) = cli(&config_dir, &url, &["admin", "users", "list", "--limit", "10"], &[]).await;
    assert!(ok && listed.contains("dev@example.com"), "{listed}");
    let (ok, _, stderr) = cli(&config_dir, &url, &["admin", "users", "disable", &user_id], &[]).await;
    assert!(ok, "{stderr}");
    let (ok, csv, stderr) =
        cli(&config_dir, &url, &["admin", "audit", "export", "--action", "user.disable"], &[]).await;
    assert!(ok && csv.contains("user.disable") && csv.contains(&user_id), "{csv}{stderr}");

    let (ok, _, _) = cli(&config_dir, &url, &["logout"], &[]).await;
    assert!(ok);
    assert!(!config_dir.join("credentials.json").exists());
    let (ok, _, stderr) = cli(&config_dir, &url, &["whoami"], &[]).await;
    assert!(!ok && stderr.contains("gpuaas login"), "{stderr}");
    let (exit, _) = terminate(child).await;
    assert!(exit.success());
}
