//! The user-facing CLI verbs: `login`, `logout`, `whoami`, `admin …`,
//! `service-accounts …` and `ssh-key …`. They talk to a running platform over its HTTP API, with the
//! session kept in the user's config dir (mode 0600) and refreshed when it expires.

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;

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
        for attempt in 0..2 {
            let mut request = self.http.request(method.clone(), self.url(path)).bearer_auth(&self.session.access_token);
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

/// An id placed in a URL path: refuse anything that could change the path.
fn segment(id: &str) -> anyhow::Result<&str> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("{id:?} is not an id");
    }
    Ok(id)
}
