//! The user-facing CLI verbs: `login`, `logout`, `whoami`, `admin …`,
//! `service-accounts …`, `ssh-key …` and `alloc …`. They talk to a running platform over its HTTP API,
//! with the session kept in the user's config dir (mode 0600) and refreshed when it expires.

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

/// Default platform URL when neither `--url` nor GPUAAS_URL is given.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
const CREDENTIALS_FILE: &str = "credentials.json";

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Manage users.
    #[command(subcommand)]
    Users(AdminUsersCommand),
    /// Read the audit log.
    #[command(subcommand)]
    Audit(AdminAuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum AdminUsersCommand {
    /// List users, newest first.
    List {
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Create a local account; the password is read from GPUAAS_NEW_USER_PASSWORD or stdin.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        display_name: Option<String>,
        /// admin, billing_operator or user.
        #[arg(long, default_value = "user")]
        role: String,
    },
    /// Disable a user: their sessions end at once.
    Disable { user_id: String },
    /// Enable a disabled user.
    Enable { user_id: String },
}

#[derive(Debug, Subcommand)]
pub enum AdminAuditCommand {
    /// Stream the audit log as CSV to stdout.
    Export {
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        action: Option<String>,
        /// RFC 3339, inclusive.
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339, inclusive.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceAccountCommand {
    /// Create a service account in a project; prints the client secret once.
    Create {
        #[arg(long)]
        project: String,
        #[arg(long)]
        name: String,
        /// project:read and/or project:write.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List a project's service accounts.
    List {
        #[arg(long)]
        project: String,
    },
    /// Replace a service account's credential.
    Rotate {
        #[arg(long)]
        project: String,
        service_account_id: String,
    },
    /// Revoke a service account.
    Revoke {
        #[arg(long)]
        project: String,
        service_account_id: String,
    },
    /// Exchange client credentials for an access token (secret from GPUAAS_CLIENT_SECRET or stdin).
    Token {
        #[arg(long)]
        client_id: String,
        #[arg(long)]
        scope: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SshKeyCommand {
    /// Register a public key; it is checked here first, so a private key never leaves
    /// this machine.
    Add {
        #[arg(long)]
        name: String,
        /// The public key file (e.g. ~/.ssh/id_ed25519.pub); `-` reads stdin.
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
    },
    /// List your keys, newest first.
    List {
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Remove a key from future allocations.
    Rm { key_id: String },
}

#[derive(Debug, Subcommand)]
pub enum AllocCommand {
    /// Place an allocation and start provisioning it; prints its id and status.
    Create {
        /// SKU id or name, e.g. `h100-80gb-x8`.
        #[arg(long)]
        sku: String,
        /// GPUs on one node, 1 to the SKU's GPUs per node.
        #[arg(long, value_name = "N")]
        gpus: u32,
        /// Default: your first project.
        #[arg(long, value_name = "ID")]
        project: Option<String>,
        /// A registered key to install; repeat for several. Default: all your keys.
        #[arg(long = "ssh-key", value_name = "ID")]
        ssh_keys: Vec<String>,
        #[arg(long)]
        name: Option<String>,
        /// Wait until it is active (prints the SSH command) or failed.
        #[arg(long)]
        wait: bool,
    },
    /// List your tenant's allocations, newest first.
    List {
        /// requested, provisioning, active, releasing, released, failed or release_failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one allocation: node, GPUs, SSH access, cost and every transition.
    Show { allocation_id: String },
    /// Release an allocation (or retry a failed release); prints the new status.
    Release {
        allocation_id: String,
        /// Wait until it is released or the release failed.
        #[arg(long)]
        wait: bool,
    },
}

/// The saved session.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    url: String,
    access_token: String,
    refresh_token: String,
}

/// `$GPUAAS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/gpuaas`, else `~/.config/gpuaas`.
pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("GPUAAS_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("gpuaas"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or_else(|| anyhow!("HOME is not set"))?;
    Ok(PathBuf::from(home).join(".config").join("gpuaas"))
}

fn session_path() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join(CREDENTIALS_FILE))
}

fn save_session(session: &Session) -> anyhow::Result<()> {
    let path = session_path()?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(session)?;
    crate::runtime::write_private_file(&path, &text).with_context(|| format!("cannot write {}", path.display()))
}

fn load_session() -> anyhow::Result<Session> {
    let path = session_path()?;
    let text = std::fs::read_to_string(&path).map_err(|_| anyhow!("not signed in; run `gpuaas login` first"))?;
    serde_json::from_str(&text).with_context(|| format!("{} is damaged; run `gpuaas login` again", path.display()))
}

/// Reads a secret from the environment variable, else one line of stdin.
fn read_secret(variable: &str, prompt: &str) -> anyhow::Result<String> {
    if let Ok(value) = std::env::var(variable)
        && !value.is_empty()
    {
        return Ok(value);
    }
    eprint!("{prompt}: ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read from stdin")?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        bail!("no {prompt} given (set {variable} or type it on stdin)");
    }
    Ok(line)
}

/// Turns an error envelope into a one-line message.
async fn failure(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().unwrap_or("error");
    let message = body["error"]["message"].as_str().unwrap_or("request failed");
    anyhow!("{status}: {code}: {message}")
}

async fn expect_json(response: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    if !response.status().is_success() {
        return Err(failure(response).await);
    }
    Ok(response.json().await.unwrap_or(serde_json::Value::Null))
}

fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// An HTTP client bound to the saved session; refreshes once on an expired token.
struct Client {
    http: reqwest::Client,
    session: Session,
}

impl Client {
    fn load() -> anyhow::Result<Self> {
        Ok(Self { http: reqwest::Client::new(), session: load_session()? })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.session.url.trim_end_matches('/'))
    }

    async fn send(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<reqwest::Response> {
        self.send_with(method, path, body, &[]).await
    }

    /// `send` with extra headers, kept on the retry after a refresh (an idempotency key
    /// must be the same on both tries).
    async fn send_with(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&reqwest::header::HeaderName, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        for attempt in 0..2 {
            let mut request = self.http.request(method.clone(), self.url(path)).bearer_auth(&self.session.access_token);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.with_context(|| format!("cannot reach {}", self.session.url))?;
            if attempt == 0 && response.status() == reqwest::StatusCode::UNAUTHORIZED {
                self.refresh().await?;
                continue;
            }
            return Ok(response);
        }
        Err(anyhow!("the platform refused the refreshed session"))
    }

    async fn refresh(&mut self) -> anyhow::Result<()> {
        let response = self
            .http
            .post(self.url("/api/v1/auth/token/refresh"))
            .json(&serde_json::json!({"refresh_token": self.session.refresh_token}))
            .send()
            .await?;
        let tokens = expect_json(response).await.context("session expired; run `gpuaas login` again")?;
        self.session.access_token = tokens["access_token"].as_str().unwrap_or_default().to_owned();
        self.session.refresh_token = tokens["refresh_token"].as_str().unwrap_or_default().to_owned();
        save_session(&self.session)
    }

    async fn json(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let response = self.send(method, path, body).await?;
        expect_json(response).await
    }
}

fn store_tokens(url: &str, tokens: &serde_json::Value) -> anyhow::Result<()> {
    let access_token =
        tokens["access_token"].as_str().ok_or_else(|| anyhow!("the platform returned no access token"))?;
    let refresh_token =
        tokens["refresh_token"].as_str().ok_or_else(|| anyhow!("the platform returned no refresh token"))?;
    save_session(&Session {
        url: url.to_owned(),
        access_token: access_token.to_owned(),
        refresh_token: refresh_token.to_owned(),
    })
}

/// `gpuaas login`: email + password, or the external provider with `--oidc`.
pub async fn login(url: String, email: Option<String>, oidc: bool) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let base = url.trim_end_matches('/').to_owned();
    let tokens = if oidc {
        let started =
            expect_json_or_redirect(http.get(format!("{base}/api/v1/auth/oidc/authorize")).send().await?).await?;
        let authorization_url = started["authorization_url"].as_str().ok_or_else(|| anyhow!("no authorization URL"))?;
        eprintln!("Open this URL, sign in, then paste the address you were sent back to:\n{authorization_url}");
        let callback = read_secret("GPUAAS_OIDC_CALLBACK_URL", "callback URL")?;
        let callback = url::Url::parse(&callback).context("the callback is not a URL")?;
        let pick = |name: &str| callback.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
        let (code, state) =
            pick("code").zip(pick("state")).ok_or_else(|| anyhow!("the callback URL has no code and state"))?;
        let response = http
            .post(format!("{base}/api/v1/auth/oidc/exchange"))
            .json(&serde_json::json!({"code": code, "state": state}))
            .send()
            .await?;
        expect_json(response).await?
    } else {
        let email = match email {
            Some(email) => email,
            None => read_secret("GPUAAS_EMAIL", "email")?,
        };
        let password = read_secret("GPUAAS_PASSWORD", "password")?;
        let response = http
            .post(format!("{base}/api/v1/auth/personal/login"))
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        expect_json(response).await?
    };
    store_tokens(&base, &tokens)?;
    eprintln!("signed in to {base}; session saved in {}", session_path()?.display());
    Ok(())
}

async fn expect_json_or_redirect(response: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    if response.status().is_redirection() {
        return Ok(response.json().await.unwrap_or_default());
    }
    expect_json(response).await
}

pub async fn logout() -> anyhow::Result<()> {
    let client = Client::load()?;
    let response = client
        .http
        .post(client.url("/api/v1/auth/logout"))
        .json(&serde_json::json!({"refresh_token": client.session.refresh_token}))
        .send()
        .await;
    // The local session goes whatever the server says: the user asked to be signed out.
    std::fs::remove_file(session_path()?).ok();
    match response {
        Ok(response) if response.status().is_success() => eprintln!("signed out"),
        Ok(response) => eprintln!("signed out locally; the platform said {}", failure(response).await),
        Err(error) => eprintln!("signed out locally; the platform was unreachable: {error}"),
    }
    Ok(())
}

pub async fn whoami() -> anyhow::Result<()> {
    let mut client = Client::load()?;
    print_json(&client.json(reqwest::Method::GET, "/api/v1/users/me", None).await?);
    Ok(())
}

pub async fn admin(command: AdminCommand) -> anyhow::Result<()> {
    let mut client = Client::load()?;
    match command {
        AdminCommand::Users(AdminUsersCommand::List { limit, cursor }) => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(cursor) = cursor {
                query.append_pair("cursor", &cursor);
            }
            let path = format!("/api/v1/admin/users?{}", query.finish());
            print_json(&client.json(reqwest::Method::GET, &path, None).await?);
        }
        AdminCommand::Users(AdminUsersCommand::Create { email, display_name, role }) => {
            let password = read_secret("GPUAAS_NEW_USER_PASSWORD", "new user's password")?;
            let body =
                serde_json::json!({"email": email, "password": password, "display_name": display_name, "role": role});
            print_json(&client.json(reqwest::Method::POST, "/api/v1/admin/users", Some(&body)).await?);
        }
        AdminCommand::Users(AdminUsersCommand::Disable { user_id }) => {
            let path = format!("/api/v1/admin/users/{}/disable", segment(&user_id)?);
            print_json(&client.json(reqwest::Method::POST, &path, None).await?);
        }
        AdminCommand::Users(AdminUsersCommand::Enable { user_id }) => {
            let path = format!("/api/v1/admin/users/{}/enable", segment(&user_id)?);
            print_json(&client.json(reqwest::Method::POST, &path, None).await?);
        }
        AdminCommand::Audit(AdminAuditCommand::Export { actor, target, action, from, to }) => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in [("actor", actor), ("target", target), ("action", action), ("from", from), ("to", to)]
            {
                if let Some(value) = value {
                    query.append_pair(name, &value);
                }
            }
            let path = format!("/api/v1/admin/audit-logs/export?{}", query.finish());
            let response = client.send(reqwest::Method::GET, &path, None).await?;
            if !response.status().is_success() {
                return Err(failure(response).await);
            }
            let mut stream = response.bytes_stream();
            let mut stdout = std::io::stdout().lock();
            while let Some(chunk) = stream.next().await {
                stdout.write_all(&chunk.context("the export was cut off")?)?;
            }
            stdout.flush()?;
        }
    }
    Ok(())
}

pub async fn service_accounts(command: ServiceAccountCommand) -> anyhow::Result<()> {
    if let ServiceAccountCommand::Token { client_id, scope } = command {
        // Machines have no saved session: the platform URL comes from GPUAAS_URL.
        let base = std::env::var("GPUAAS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let secret = read_secret("GPUAAS_CLIENT_SECRET", "client secret")?;
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/auth/service-accounts/token", base.trim_end_matches('/')))
            .json(&serde_json::json!({"client_id": client_id, "client_secret": secret, "scope": scope}))
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        print_json(&expect_json(response).await?);
        return Ok(());
    }
    let mut client = Client::load()?;
    let value = match command {
        ServiceAccountCommand::Create { project, name, scopes } => {
            let body = serde_json::json!({"name": name, "scopes": scopes});
            let path = format!("/api/v1/projects/{}/service-accounts", segment(&project)?);
            client.json(reqwest::Method::POST, &path, Some(&body)).await?
        }
        ServiceAccountCommand::List { project } => {
            let path = format!("/api/v1/projects/{}/service-accounts", segment(&project)?);
            client.json(reqwest::Method::GET, &path, None).await?
        }
        ServiceAccountCommand::Rotate { project, service_account_id } => {
            let path = format!(
                "/api/v1/projects/{}/service-accounts/{}/rotate",
                segment(&project)?,
                segment(&service_account_id)?
            );
            client.json(reqwest::Method::POST, &path, None).await?
        }
        ServiceAccountCommand::Revoke { project, service_account_id } => {
            let path = format!(
                "/api/v1/projects/{}/service-accounts/{}/revoke",
                segment(&project)?,
                segment(&service_account_id)?
            );
            client.json(reqwest::Method::POST, &path, None).await?
        }
        ServiceAccountCommand::Token { .. } => serde_json::Value::Null,
    };
    print_json(&value);
    Ok(())
}

/// A `.pub` file is one line; anything this large is not one.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Reads the key file, or stdin for `-`.
fn read_key_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().lock().take(MAX_KEY_FILE_BYTES).read_to_string(&mut text).context("cannot read stdin")?;
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        file.take(MAX_KEY_FILE_BYTES)
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(text)
}

pub async fn ssh_keys(command: SshKeyCommand) -> anyhow::Result<()> {
    // Checked before signing in, so a wrong file fails fast and a private key is never
    // sent anywhere, not even to the platform that would refuse it.
    let add = match &command {
        SshKeyCommand::Add { name, file } => {
            let key = gpuaas_allocations::ssh_keys::parse_public_key(&read_key_file(file)?)?;
            Some(serde_json::json!({"name": name, "public_key": key.public_key}))
        }
        _ => None,
    };
    let mut client = Client::load()?;
    match command {
        SshKeyCommand::Add { .. } => {
            let body = add.unwrap_or_default();
            print_json(&client.json(reqwest::Method::POST, "/api/v1/ssh-keys", Some(&body)).await?);
        }
        SshKeyCommand::List { limit, cursor } => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(cursor) = cursor {
                query.append_pair("cursor", &cursor);
            }
            let path = format!("/api/v1/ssh-keys?{}", query.finish());
            print_json(&client.json(reqwest::Method::GET, &path, None).await?);
        }
        SshKeyCommand::Rm { key_id } => {
            let path = format!("/api/v1/ssh-keys/{}", segment(&key_id)?);
            client.json(reqwest::Method::DELETE, &path, None).await?;
            eprintln!("removed ssh key {key_id}");
        }
    }
    Ok(())
}

/// How long one `--wait` request may be held by the platform (a long poll), and how
/// long `--wait` goes on before giving up.
const WAIT_PER_REQUEST: Duration = Duration::from_secs(30);
/// The pause before asking again when a long poll came back early with no change.
const WAIT_RETRY_PAUSE: Duration = Duration::from_millis(500);
const WAIT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Statuses after which a created allocation will never become active.
const CREATE_WAIT_DONE: &[&str] = &["active", "failed", "releasing", "released", "release_failed"];
const RELEASE_WAIT_DONE: &[&str] = &["released", "release_failed"];
/// The SSH-key listing's largest page.
const SSH_KEY_PAGE: u32 = 200;

pub async fn allocations(command: AllocCommand) -> anyhow::Result<()> {
    let mut client = Client::load()?;
    match command {
        AllocCommand::Create { sku, gpus, project, ssh_keys, name, wait } => {
            let project = match project {
                Some(project) => project,
                None => default_project(&mut client).await?,
            };
            let ssh_keys = if ssh_keys.is_empty() { all_ssh_key_ids(&mut client).await? } else { ssh_keys };
            let body = serde_json::json!({
                "sku": sku, "gpu_count": gpus, "project_id": project, "ssh_key_ids": ssh_keys, "name": name,
            });
            // Fresh per run; the retry after a token refresh sends the same key, so that
            // retry can never place a second allocation.
            let key = gpuaas_kernel::new_id().to_string();
            let header = gpuaas_http::idempotency::HEADER;
            let response =
                client.send_with(reqwest::Method::POST, "/api/v1/allocations", Some(&body), &[(&header, &key)]).await?;
            let allocation = expect_json(response).await?;
            let id = text(&allocation["id"]).to_owned();
            println!("allocation {id}: {}", text(&allocation["status"]));
            if wait {
                let allocation = wait_for(&mut client, &id, text(&allocation["status"]), CREATE_WAIT_DONE).await?;
                match text(&allocation["status"]) {
                    "active" => match allocation["ssh"]["command"].as_str() {
                        Some(command) => println!("{command}"),
                        None => println!("active"),
                    },
                    "failed" => bail!("allocation {id} failed: {}", or_dash(&allocation["failure_reason"])),
                    status => bail!("allocation {id} is {status}; it will not become active"),
                }
            }
        }
        AllocCommand::List { status, limit, cursor } => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(status) = status {
                query.append_pair("status", &status);
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(cursor) = cursor {
                query.append_pair("cursor", &cursor);
            }
            let path = format!("/api/v1/allocations?{}", query.finish());
            let page = client.json(reqwest::Method::GET, &path, None).await?;
            let items = page["items"].as_array().map(Vec::as_slice).unwrap_or_default();
            if items.is_empty() {
                eprintln!("no allocations");
            } else {
                print!("{}", allocation_table(items));
            }
            if let Some(next) = page["next_cursor"].as_str() {
                eprintln!("more: --cursor {next}");
            }
        }
        AllocCommand::Show { allocation_id } => {
            let path = format!("/api/v1/allocations/{}", segment(&allocation_id)?);
            print!("{}", allocation_details(&client.json(reqwest::Method::GET, &path, None).await?));
        }
        AllocCommand::Release { allocation_id, wait } => {
            let path = format!("/api/v1/allocations/{}/release", segment(&allocation_id)?);
            let allocation = client.json(reqwest::Method::POST, &path, None).await?;
            let status = text(&allocation["status"]);
            println!("allocation {allocation_id}: {status}");
            if wait {
                let allocation = wait_for(&mut client, &allocation_id, status, RELEASE_WAIT_DONE).await?;
                if text(&allocation["status"]) == "release_failed" {
                    bail!("release of {allocation_id} failed: {}", or_dash(&allocation["failure_reason"]));
                }
            }
        }
    }
    Ok(())
}

/// The caller's first project, for a create without `--project`.
async fn default_project(client: &mut Client) -> anyhow::Result<String> {
    let me = client.json(reqwest::Method::GET, "/api/v1/users/me", None).await?;
    match me["projects"][0]["id"].as_str() {
        Some(id) => Ok(id.to_owned()),
        None => bail!("you are in no project; ask an admin to add you to one, or pass --project ID"),
    }
}

/// Every key the caller has registered, for a create without `--ssh-key`.
async fn all_ssh_key_ids(client: &mut Client) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("limit", &SSH_KEY_PAGE.to_string());
        if let Some(cursor) = &cursor {
            query.append_pair("cursor", cursor);
        }
        let page = client.json(reqwest::Method::GET, &format!("/api/v1/ssh-keys?{}", query.finish()), None).await?;
        let items = page["items"].as_array().map(Vec::as_slice).unwrap_or_default();
        ids.extend(items.iter().filter_map(|key| key["id"].as_str()).map(str::to_owned));
        match page["next_cursor"].as_str() {
            Some(next) if !items.is_empty() => cursor = Some(next.to_owned()),
            _ => break,
        }
    }
    if ids.is_empty() {
        bail!(
            "you have no SSH keys, so you could not log in to the allocation; \
             run `gpuaas ssh-key add --name NAME --file ~/.ssh/id_ed25519.pub` first"
        );
    }
    Ok(ids)
}

/// Follows the allocation until its status is one of `done`; reports each change on
/// stderr. Each request is a long poll that the platform answers when the status
/// moves on from the last one seen.
async fn wait_for(client: &mut Client, id: &str, current: &str, done: &[&str]) -> anyhow::Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
    let mut last = current.to_owned();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).min(WAIT_PER_REQUEST);
        let wait = Duration::from_secs(left.as_secs().max(1));
        let mut path = format!("/api/v1/allocations/{}", segment(id)?);
        // Already done (only ever the status it started from): read, do not wait.
        if !done.contains(&last.as_str()) {
            // A status is a word like an id, so it goes into the query unescaped.
            path.push_str(&format!("?while_status={}&wait_seconds={}", segment(&last)?, wait.as_secs()));
        }
        let asked = tokio::time::Instant::now();
        let allocation = client.json(reqwest::Method::GET, &path, None).await?;
        let status = text(&allocation["status"]);
        let moved = status != last;
        if moved {
            eprintln!("allocation {id}: {status}");
            status.clone_into(&mut last);
        }
        if done.contains(&status) {
            return Ok(allocation);
        }
        if !moved && asked.elapsed() < wait {
            // Answered early with nothing new (a platform that is stopping): ask again
            // after a pause, not at once.
            tokio::time::sleep(WAIT_RETRY_PAUSE).await;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "allocation {id} is still {last} after {} minutes; follow it with `gpuaas alloc show {id}`",
                WAIT_TIMEOUT.as_secs() / 60
            );
        }
    }
}

fn text(value: &serde_json::Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// A string field, or `-` where it is null or empty.
fn or_dash(value: &serde_json::Value) -> &str {
    value.as_str().filter(|text| !text.is_empty()).unwrap_or("-")
}

/// An RFC 3339 UTC time without its fraction of a second, which only clutters a terminal.
fn short_time(value: &serde_json::Value) -> String {
    let time = or_dash(value);
    match time.split_once('.') {
        Some((whole, fraction)) if fraction.ends_with('Z') => format!("{whole}Z"),
        _ => time.to_owned(),
    }
}

/// Digits after the decimal point in a currency's minor unit (ISO 4217).
fn minor_digits(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
        | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// An amount in minor units as `12.34 USD`; integer arithmetic, so no float rounding.
fn money(minor: i64, currency: &str) -> String {
    let digits = minor_digits(currency);
    let sign = if minor < 0 { "-" } else { "" };
    let amount = minor.unsigned_abs();
    if digits == 0 {
        return format!("{sign}{amount} {currency}");
    }
    let scale = 10u64.pow(digits);
    let width = digits as usize;
    format!("{sign}{}.{:0width$} {currency}", amount / scale, amount % scale)
}

/// `alloc list`: one row per allocation under a header, columns padded to fit.
fn allocation_table(items: &[serde_json::Value]) -> String {
    let mut rows = vec![["ID", "STATUS", "SKU", "GPUS", "NODE", "CREATED"].map(str::to_owned)];
    for item in items {
        rows.push([
            or_dash(&item["id"]).to_owned(),
            or_dash(&item["status"]).to_owned(),
            or_dash(&item["sku_id"]).to_owned(),
            item["gpu_count"].as_i64().map_or_else(|| "-".to_owned(), |count| count.to_string()),
            or_dash(&item["node_id"]).to_owned(),
            short_time(&item["created_at"]),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `alloc show`: the fields a user acts on, then the history.
fn allocation_details(allocation: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let currency = text(&allocation["currency"]);
    let cost = |field: &str| allocation[field].as_i64().map_or_else(|| "-".to_owned(), |minor| money(minor, currency));
    let indices: Vec<String> = allocation["gpu_indices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|index| index.to_string())
        .collect();
    let gpus = match allocation["gpu_count"].as_i64() {
        Some(count) if indices.is_empty() => count.to_string(),
        Some(count) => format!("{count} (indices {})", indices.join(", ")),
        None => "-".to_owned(),
    };
    let mut fields = vec![
        ("id", or_dash(&allocation["id"]).to_owned()),
        ("name", or_dash(&allocation["name"]).to_owned()),
        ("status", or_dash(&allocation["status"]).to_owned()),
        ("project", or_dash(&allocation["project_id"]).to_owned()),
        ("sku", or_dash(&allocation["sku_id"]).to_owned()),
        ("gpus", gpus),
        ("node", or_dash(&allocation["node_id"]).to_owned()),
    ];
    if let Some(command) = allocation["ssh"]["command"].as_str() {
        fields.push(("ssh", command.to_owned()));
    }
    fields.push(("hourly cost", cost("hourly_cost_minor")));
    fields.push(("accrued cost", cost("accrued_cost_minor")));
    if let Some(reason) = allocation["failure_reason"].as_str() {
        fields.push(("failure", reason.to_owned()));
    }
    fields.push(("created", short_time(&allocation["created_at"])));
    let mut out = String::new();
    for (label, value) in fields {
        let label = format!("{label}:");
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{label:<14}{value}");
    }
    let transitions = allocation["transitions"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !transitions.is_empty() {
        out.push_str("transitions:\n");
    }
    for transition in transitions {
        let from = transition["from"].as_str().map_or_else(String::new, |from| format!("{from} -> "));
        let _ = write!(
            out,
            "  {}  {from}{}  by {}",
            short_time(&transition["at"]),
            or_dash(&transition["to"]),
            or_dash(&transition["actor"])
        );
        if let Some(reason) = transition["reason"].as_str().filter(|reason| !reason.is_empty()) {
            let _ = write!(out, ": {reason}");
        }
        out.push('\n');
    }
    out
}

/// An id placed in a URL path: refuse anything that could change the path.
fn segment(id: &str) -> anyhow::Result<&str> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("{id:?} is not an id");
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn alloc(args: &[&str]) -> AllocCommand {
        let cli = Cli::try_parse_from(["gpuaas", "alloc"].iter().chain(args)).unwrap_or_else(|e| panic!("{e}"));
        match cli.command {
            Command::Alloc(command) => command,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_alloc_subcommands() {
        match alloc(&["create", "--sku", "h100", "--gpus", "2", "--ssh-key", "k1", "--ssh-key", "k2", "--wait"]) {
            AllocCommand::Create { sku, gpus, project, ssh_keys, name, wait } => {
                assert_eq!((sku.as_str(), gpus, project, name, wait), ("h100", 2, None, None, true));
                assert_eq!(ssh_keys, ["k1", "k2"]);
            }
            other => panic!("{other:?}"),
        }
        match alloc(&["create", "--sku", "h100", "--gpus", "1", "--project", "p1", "--name", "train"]) {
            AllocCommand::Create { project, ssh_keys, name, wait, .. } => {
                assert_eq!((project.as_deref(), name.as_deref(), wait), (Some("p1"), Some("train"), false));
                assert!(ssh_keys.is_empty(), "defaults to all keys, resolved later");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(alloc(&["list", "--status", "active"]), AllocCommand::List { status: Some(s), .. } if s == "active")
        );
        assert!(matches!(alloc(&["show", "a1"]), AllocCommand::Show { allocation_id } if allocation_id == "a1"));
        assert!(matches!(alloc(&["release", "a1", "--wait"]), AllocCommand::Release { wait: true, .. }));
        for bad in [
            &["alloc", "create", "--gpus", "1"][..],
            &["alloc", "create", "--sku", "h100"],
            &["alloc", "create", "--sku", "h100", "--gpus", "-1"],
            &["alloc", "show"],
        ] {
            assert!(Cli::try_parse_from(["gpuaas"].iter().chain(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_money_in_the_currency_minor_unit() {
        assert_eq!(money(1234, "USD"), "12.34 USD");
        assert_eq!(money(5, "EUR"), "0.05 EUR");
        assert_eq!(money(-250, "EUR"), "-2.50 EUR");
        assert_eq!(money(1234, "JPY"), "1234 JPY");
        assert_eq!(money(1234, "KWD"), "1.234 KWD");
        assert_eq!(money(i64::MIN, "USD"), "-92233720368547758.08 USD");
    }

    #[test]
    fn prints_a_table_and_details() {
        let allocation = serde_json::json!({
            "id": "a1", "name": null, "status": "active", "project_id": "p1", "sku_id": "h100-80gb-x8",
            "gpu_count": 2, "gpu_indices": [0, 1], "node_id": "n1",
            "ssh": {"command": "ssh -p 22 u@10.0.0.1"}, "hourly_cost_minor": 400, "accrued_cost_minor": 7,
            "currency": "USD", "failure_reason": null, "created_at": "2025-01-02T03:04:05.678901Z",
            "transitions": [
                {"from": null, "to": "requested", "actor": "user:u1", "reason": null, "at": "2025-01-02T03:04:05.678901Z"},
                {"from": "requested", "to": "active", "actor": "system", "reason": "node ready", "at": "2025-01-02T03:04:09Z"},
            ],
        });
        let table = allocation_table(std::slice::from_ref(&allocation));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "ID  STATUS  SKU           GPUS  NODE  CREATED");
        assert_eq!(lines[1], "a1  active  h100-80gb-x8  2     n1    2025-01-02T03:04:05Z");
        let details = allocation_details(&allocation);
        for expected in [
            "status:       active\n",
            "gpus:         2 (indices 0, 1)\n",
            "ssh:          ssh -p 22 u@10.0.0.1\n",
            "hourly cost:  4.00 USD\n",
            "accrued cost: 0.07 USD\n",
            "  2025-01-02T03:04:05Z  requested  by user:u1\n",
            "  2025-01-02T03:04:09Z  requested -> active  by system: node ready\n",
        ] {
            assert!(details.contains(expected), "{expected:?} not in\n{details}");
        }
        assert!(!details.contains("failure"), "{details}");
    }
}
