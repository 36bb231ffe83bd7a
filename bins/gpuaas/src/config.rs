//! Layered configuration: defaults < TOML file (`--config`) < environment < CLI flags,
//! validated once, with every problem reported together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `gpuaas up`: one process, embedded engines.
    Embedded,
    /// `gpuaas serve`: production engines, roles chosen per process.
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The public HTTP API.
    Api,
    /// Background workers (event consumers, housekeeping).
    Workers,
    /// The outbox relay.
    Relay,
    /// All of the above.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatSetting {
    Json,
    Text,
}

/// The fields a TOML file may set; unknown keys are refused so typos do not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    nats_url: Option<String>,
    redis_url: Option<String>,
    log_filter: Option<String>,
    log_format: Option<String>,
    roles: Option<Vec<String>>,
    shutdown_grace_seconds: Option<u64>,
    public_url: Option<String>,
    region: Option<String>,
    resource_id_prefix: Option<String>,
    oidc: Option<FileOidc>,
    internal_listen: Option<String>,
    internal_url: Option<String>,
    pki_dir: Option<PathBuf>,
    stripe: Option<FileStripe>,
    portal_dir: Option<PathBuf>,
}

/// `[stripe]` in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStripe {
    secret_key: Option<String>,
    /// Comma-separated: a rotated secret and its successor both verify.
    webhook_secret: Option<String>,
    api_base: Option<String>,
}

/// Card payments through Stripe. Secrets: never printed.
#[derive(Clone)]
pub struct StripeSettings {
    pub secret_key: String,
    pub webhook_secrets: Vec<String>,
    pub api_base: String,
}

/// `[oidc]` in the TOML file. The client secret is only read from the environment.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOidc {
    issuer_url: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    roles_claim: Option<String>,
    scopes: Option<String>,
}

/// An external OIDC provider to sign in through.
#[derive(Clone)]
pub struct OidcSettings {
    pub issuer_url: String,
    pub client_id: String,
    /// Secret: never printed.
    pub client_secret: Option<String>,
    pub redirect_uri: String,
    pub roles_claim: String,
    pub scopes: String,
}

/// The first administrator, when given by the operator. Secret: never printed.
#[derive(Clone)]
pub struct AdminBootstrap {
    pub email: String,
    pub password: String,
}

/// Values given on the command line (highest precedence).
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub roles: Vec<Role>,
    pub internal_listen: Option<String>,
    pub portal_dir: Option<PathBuf>,
}

#[derive(Clone)]
pub struct Config {
    pub mode: Mode,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Contains credentials: never print it; use [`redact_url`].
    pub database_url: String,
    pub nats_url: Option<String>,
    pub redis_url: Option<String>,
    pub log_filter: String,
    pub log_format: LogFormatSetting,
    pub roles: Vec<Role>,
    pub shutdown_grace_seconds: u64,
    /// The platform's public base URL; the built-in issuer's `iss`.
    pub public_url: String,
    pub oidc: Option<OidcSettings>,
    pub admin: Option<AdminBootstrap>,
    /// Prefix and region of canonical resource ids (`gpuaas:{region}:…`).
    pub resource_ids: gpuaas_kernel::ResourceIdFormat,
    /// Address of the mTLS listener node agents connect to.
    pub internal_listen: SocketAddr,
    /// That listener's URL as agents reach it; told to them at enrollment.
    pub internal_url: String,
    /// Where the node CA's key and certificate and the task-signing key live. Every
    /// process of one installation must see the same files.
    pub pki_dir: PathBuf,
    /// None: payment endpoints answer 503 `payments_not_configured`.
    pub stripe: Option<StripeSettings>,
    /// The built web portal (`index.html` and its assets), served at `/`. A missing
    /// directory is not an error: `/` then explains how to build the portal.
    pub portal_dir: PathBuf,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("mode", &self.mode)
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact_url(&self.database_url))
            .field("nats_url", &self.nats_url.as_deref().map(redact_url))
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("log_filter", &self.log_filter)
            .field("log_format", &self.log_format)
            .field("roles", &self.roles)
            .field("public_url", &self.public_url)
            .field("oidc_issuer", &self.oidc.as_ref().map(|o| o.issuer_url.as_str()))
            .field("admin_email", &self.admin.as_ref().map(|a| a.email.as_str()))
            .field("internal_listen", &self.internal_listen)
            .field("internal_url", &self.internal_url)
            .field("pki_dir", &self.pki_dir)
            .field("stripe_api_base", &self.stripe.as_ref().map(|s| s.api_base.as_str()))
            .field("portal_dir", &self.portal_dir)
            .finish()
    }
}

/// All configuration problems found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    pub const DEFAULT_DATA_DIR: &'static str = "./.gpuaas";
    pub const DEFAULT_INTERNAL_LISTEN: &'static str = "127.0.0.1:8443";
    pub const DEFAULT_STRIPE_API_BASE: &'static str = "https://api.stripe.com";
    /// Where `npm --prefix web run build` writes the portal, relative to the working
    /// directory (the repository root for `./scripts/up`).
    pub const DEFAULT_PORTAL_DIR: &'static str = "web/dist";

    /// Loads from the real process environment.
    pub fn load(mode: Mode, cli: &CliOverrides) -> Result<Self, ConfigError> {
        Self::load_from(mode, cli, |name| std::env::var(name).ok())
    }

    /// Loads with an explicit environment lookup (tests pass a map).
    pub fn load_from(
        mode: Mode,
        cli: &CliOverrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let file = match &cli.config_file {
            Some(path) => read_file(path).unwrap_or_else(|problem| {
                problems.push(problem);
                FileConfig::default()
            }),
            None => FileConfig::default(),
        };
        let env_or = |names: &[&str]| names.iter().find_map(|name| env(name).filter(|v| !v.is_empty()));

        let listen_text = cli
            .listen
            .clone()
            .or_else(|| env_or(&["GPUAAS_LISTEN"]))
            .or(file.listen)
            .unwrap_or_else(|| Self::DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
            problems.push(format!("listen: {listen_text:?} is not an address like 127.0.0.1:8080"));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });

        let data_dir = cli
            .data_dir
            .clone()
            .or_else(|| env_or(&["GPUAAS_DATA_DIR"]).map(PathBuf::from))
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(Self::DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            problems.push("data_dir: must not be empty".to_owned());
        }

        // `up` is the embedded default by definition: it never picks up a production
        // DATABASE_URL or NATS_URL that happens to be exported in the shell.
        let database_url = match mode {
            Mode::Embedded => None,
            Mode::Production => env_or(&["GPUAAS_DATABASE_URL", "DATABASE_URL"]).or(file.database_url),
        };
        let database_url = match (mode, database_url) {
            (_, Some(url)) => {
                if gpuaas_store::Dialect::from_url(&url).is_err() {
                    problems.push(format!(
                        "database_url: {} must start with sqlite:, postgres:// or postgresql://",
                        redact_url(&url)
                    ));
                }
                url
            }
            (Mode::Embedded, None) => sqlite_url(&data_dir),
            (Mode::Production, None) => {
                problems.push("database_url: required by `gpuaas serve` (set DATABASE_URL=postgres://…)".to_owned());
                String::new()
            }
        };

        let nats_url = match mode {
            Mode::Embedded => None,
            Mode::Production => env_or(&["GPUAAS_NATS_URL", "NATS_URL"]).or(file.nats_url),
        };
        if let Some(url) = &nats_url
            && !(url.starts_with("nats://") || url.starts_with("tls://"))
        {
            problems.push(format!("nats_url: {} must start with nats:// or tls://", redact_url(url)));
        }
        let redis_url = env_or(&["GPUAAS_REDIS_URL", "REDIS_URL"]).or(file.redis_url);
        if let Some(url) = &redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            problems.push(format!("redis_url: {} must start with redis:// or rediss://", redact_url(url)));
        }

        let log_filter = env_or(&["GPUAAS_LOG", "RUST_LOG"]).or(file.log_filter).unwrap_or_else(|| "info".to_owned());
        let log_format = match env_or(&["GPUAAS_LOG_FORMAT"]).or(file.log_format).as_deref() {
            None => match mode {
                Mode::Embedded => LogFormatSetting::Text,
                Mode::Production => LogFormatSetting::Json,
            },
            Some("json") => LogFormatSetting::Json,
            Some("text") => LogFormatSetting::Text,
            Some(other) => {
                problems.push(format!("log_format: {other:?} is not one of json, text"));
                LogFormatSetting::Text
            }
        };

        let mut roles = cli.roles.clone();
        if roles.is_empty() {
            let named = env_or(&["GPUAAS_ROLES"])
                .map(|text| text.split(',').map(|s| s.trim().to_owned()).collect::<Vec<_>>())
                .or(file.roles)
                .unwrap_or_default();
            for name in named {
                match <Role as clap::ValueEnum>::from_str(&name, true) {
                    Ok(role) => roles.push(role),
                    Err(_) => problems.push(format!("roles: {name:?} is not one of api, workers, relay, all")),
                }
            }
        }
        if roles.is_empty() || mode == Mode::Embedded {
            roles = vec![Role::All];
        }
        if roles.contains(&Role::All) {
            roles = vec![Role::Api, Role::Workers, Role::Relay];
        }
        roles.sort();
        roles.dedup();

        let shutdown_grace_seconds = match env_or(&["GPUAAS_SHUTDOWN_GRACE_SECONDS"]) {
            Some(text) => text.parse().unwrap_or_else(|_| {
                problems.push(format!("shutdown_grace_seconds: {text:?} is not a whole number"));
                8
            }),
            None => file.shutdown_grace_seconds.unwrap_or(8),
        };
        if shutdown_grace_seconds > 60 {
            problems.push("shutdown_grace_seconds: at most 60".to_owned());
        }

        let public_url = env_or(&["GPUAAS_PUBLIC_URL"])
            .or(file.public_url)
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://"))
            || url::Url::parse(&public_url).is_err()
        {
            problems.push(format!("public_url: {public_url:?} must be an http:// or https:// URL"));
        }

        let region = env_or(&["GPUAAS_REGION"]).or(file.region).unwrap_or_else(|| "local".to_owned());
        let prefix =
            env_or(&["GPUAAS_RESOURCE_ID_PREFIX"]).or(file.resource_id_prefix).unwrap_or_else(|| "gpuaas".to_owned());
        let resource_ids = gpuaas_kernel::ResourceIdFormat::new(prefix, region).unwrap_or_else(|error| {
            problems.push(format!("region / resource_id_prefix: {error}"));
            gpuaas_kernel::ResourceIdFormat::default()
        });

        let file_oidc = file.oidc.unwrap_or_default();
        let oidc_issuer = env_or(&["GPUAAS_OIDC_ISSUER_URL"]).or(file_oidc.issuer_url);
        let oidc = match oidc_issuer {
            None => None,
            Some(issuer_url) => {
                if url::Url::parse(&issuer_url).is_err() {
                    problems.push(format!("oidc.issuer_url: {issuer_url:?} is not a URL"));
                }
                let client_id = env_or(&["GPUAAS_OIDC_CLIENT_ID"]).or(file_oidc.client_id).unwrap_or_else(|| {
                    problems.push("oidc.client_id: required when oidc.issuer_url is set".to_owned());
                    String::new()
                });
                Some(OidcSettings {
                    issuer_url,
                    client_id,
                    client_secret: env_or(&["GPUAAS_OIDC_CLIENT_SECRET"]),
                    redirect_uri: env_or(&["GPUAAS_OIDC_REDIRECT_URI"])
                        .or(file_oidc.redirect_uri)
                        .unwrap_or_else(|| format!("{public_url}/auth/callback")),
                    roles_claim: env_or(&["GPUAAS_OIDC_ROLES_CLAIM"])
                        .or(file_oidc.roles_claim)
                        .unwrap_or_else(|| "realm_access.roles".to_owned()),
                    scopes: file_oidc.scopes.unwrap_or_else(|| "openid email profile".to_owned()),
                })
            }
        };

        let admin = match (env_or(&["GPUAAS_ADMIN_EMAIL"]), env_or(&["GPUAAS_ADMIN_PASSWORD"])) {
            (Some(email), Some(password)) => Some(AdminBootstrap { email, password }),
            (None, None) => None,
            _ => {
                problems.push("GPUAAS_ADMIN_EMAIL and GPUAAS_ADMIN_PASSWORD must be set together".to_owned());
                None
            }
        };

        let internal_text = cli
            .internal_listen
            .clone()
            .or_else(|| env_or(&["GPUAAS_INTERNAL_LISTEN"]))
            .or(file.internal_listen)
            .unwrap_or_else(|| Self::DEFAULT_INTERNAL_LISTEN.to_owned());
        let internal_listen = internal_text.parse::<SocketAddr>().unwrap_or_else(|_| {
            problems.push(format!("internal_listen: {internal_text:?} is not an address like 127.0.0.1:8443"));
            SocketAddr::from(([127, 0, 0, 1], 8443))
        });
        let internal_url = env_or(&["GPUAAS_INTERNAL_URL"])
            .or(file.internal_url)
            .unwrap_or_else(|| {
                // An unspecified bind address is no place to connect to; agents on the
                // same host reach it on loopback, others need GPUAAS_INTERNAL_URL.
                let host = if internal_listen.ip().is_unspecified() {
                    std::net::IpAddr::from([127, 0, 0, 1])
                } else {
                    internal_listen.ip()
                };
                format!("https://{}", SocketAddr::new(host, internal_listen.port()))
            })
            .trim_end_matches('/')
            .to_owned();
        match url::Url::parse(&internal_url) {
            Ok(url) if url.scheme() == "https" && url.host_str().is_some() => {}
            _ => problems.push(format!("internal_url: {internal_url:?} must be an https:// URL with a host")),
        }
        let pki_dir =
            env_or(&["GPUAAS_PKI_DIR"]).map(PathBuf::from).or(file.pki_dir).unwrap_or_else(|| data_dir.join("pki"));

        let file_stripe = file.stripe.unwrap_or_default();
        let stripe_key = env_or(&["GPUAAS_STRIPE_SECRET_KEY"]).or(file_stripe.secret_key);
        let webhook_secrets: Vec<String> = env_or(&["GPUAAS_STRIPE_WEBHOOK_SECRET"])
            .or(file_stripe.webhook_secret)
            .map(|text| text.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let stripe_base = env_or(&["GPUAAS_STRIPE_API_BASE"])
            .or(file_stripe.api_base)
            .unwrap_or_else(|| Self::DEFAULT_STRIPE_API_BASE.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let stripe = match (stripe_key, webhook_secrets.is_empty()) {
            (None, true) => None,
            (Some(secret_key), false) => {
                match url::Url::parse(&stripe_base) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                    _ => problems.push(format!("stripe.api_base: {stripe_base:?} must be an http(s) URL")),
                }
                Some(StripeSettings { secret_key, webhook_secrets, api_base: stripe_base })
            }
            (Some(_), true) => {
                problems.push(
                    "stripe.webhook_secret (GPUAAS_STRIPE_WEBHOOK_SECRET): required with the secret key, or no payment could ever be credited"
                        .to_owned(),
                );
                None
            }
            (None, false) => {
                problems
                    .push("stripe.secret_key (GPUAAS_STRIPE_SECRET_KEY): required with the webhook secret".to_owned());
                None
            }
        };

        let portal_dir = cli
            .portal_dir
            .clone()
            .or_else(|| env_or(&["GPUAAS_PORTAL_DIR"]).map(PathBuf::from))
            .or(file.portal_dir)
            .unwrap_or_else(|| PathBuf::from(Self::DEFAULT_PORTAL_DIR));
        if portal_dir.as_os_str().is_empty() {
            problems.push("portal_dir: must not be empty".to_owned());
        }

        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Self {
            mode,
            listen,
            data_dir,
            database_url,
            nats_url,
            redis_url,
            log_filter,
            log_format,
            roles,
            shutdown_grace_seconds,
            public_url,
            oidc,
            admin,
            resource_ids,
            internal_listen,
            internal_url,
            pki_dir,
            stripe,
            portal_dir,
        })
    }

    pub fn runs(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("config file {}: cannot read ({error})", path.display()))?;
    toml::from_str(&text).map_err(|error| format!("config file {}: {}", path.display(), error.message()))
}

pub fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("gpuaas.db").display())
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(index) => rest.split_at(index),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            if credentials.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://***@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(mode: Mode, cli: &CliOverrides, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::load_from(mode, cli, |name| env.get(name).cloned())
    }

    #[test]
    fn embedded_defaults_need_nothing() {
        let config = load(Mode::Embedded, &CliOverrides::default(), &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("./.gpuaas"));
        assert!(config.database_url.starts_with("sqlite://"));
        assert_eq!(config.roles, vec![Role::Api, Role::Workers, Role::Relay]);
        assert_eq!(config.log_format, LogFormatSetting::Text);
        let exported = [("DATABASE_URL", "postgres://u:pw@db/prod"), ("NATS_URL", "nats://prod:4222")];
        let config = load(Mode::Embedded, &CliOverrides::default(), &exported).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.database_url.starts_with("sqlite://"), "up never touches a production database");
        assert_eq!(config.nats_url, None);
    }

    #[test]
    fn file_then_env_then_cli_take_precedence() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("gpuaas.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nlog_filter = \"debug\"\nroles = [\"relay\"]\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cli = CliOverrides { config_file: Some(path), ..Default::default() };
        let env = [("DATABASE_URL", "postgres://u:pw@db/gpuaas"), ("GPUAAS_LOG", "warn")];
        let config = load(Mode::Production, &cli, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(config.log_filter, "warn");
        assert_eq!(config.roles, vec![Role::Relay]);
        cli.listen = Some("127.0.0.1:9100".into());
        cli.roles = vec![Role::Api];
        let config = load(Mode::Production, &cli, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(config.roles, vec![Role::Api]);
    }

    #[test]
    fn every_problem_is_listed_at_once_and_secrets_are_not() {
        let env = [
            ("GPUAAS_LISTEN", "not-an-address"),
            ("DATABASE_URL", "mysql://root:hunter2@db/x"),
            ("NATS_URL", "http://nats"),
            ("GPUAAS_LOG_FORMAT", "xml"),
            ("GPUAAS_ROLES", "api,cook"),
        ];
        let error = load(Mode::Production, &CliOverrides::default(), &env).err().unwrap_or_else(|| panic!("accepted"));
        assert_eq!(error.0.len(), 5, "{error}");
        let text = error.to_string();
        for field in ["listen", "database_url", "nats_url", "log_format", "roles"] {
            assert!(text.contains(field), "{text}");
        }
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn stripe_needs_key_and_webhook_secret_together_and_takes_several_secrets() {
        let config = load(Mode::Embedded, &CliOverrides::default(), &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.stripe.is_none(), "payments are off unless configured");
        let env = [("GPUAAS_STRIPE_SECRET_KEY", "sk_test_1"), ("GPUAAS_STRIPE_WEBHOOK_SECRET", "whsec_new, whsec_old")];
        let config = load(Mode::Embedded, &CliOverrides::default(), &env).unwrap_or_else(|e| panic!("{e}"));
        let stripe = config.stripe.unwrap_or_else(|| panic!("stripe not configured"));
        assert_eq!(stripe.webhook_secrets, ["whsec_new", "whsec_old"]);
        assert_eq!(stripe.api_base, Config::DEFAULT_STRIPE_API_BASE);
        assert!(!format!("{:?}", load(Mode::Embedded, &CliOverrides::default(), &env)).contains("sk_test_1"));

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("gpuaas.toml");
        std::fs::write(&path, "[stripe]\nsecret_key = \"sk_file\"\nwebhook_secret = \"whsec_file\"\napi_base = \"http://127.0.0.1:12111/\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let cli = CliOverrides { config_file: Some(path), ..Default::default() };
        let from_file = load(Mode::Embedded, &cli, &[]).unwrap_or_else(|e| panic!("{e}"));
        let stripe = from_file.stripe.unwrap_or_else(|| panic!("stripe from file"));
        assert_eq!((stripe.secret_key.as_str(), stripe.api_base.as_str()), ("sk_file", "http://127.0.0.1:12111"));

        let only_key = load(Mode::Embedded, &CliOverrides::default(), &[("GPUAAS_STRIPE_SECRET_KEY", "sk_test_1")]);
        let text = only_key.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("webhook_secret") && !text.contains("sk_test_1"), "{text}");
        let bad_base = [
            ("GPUAAS_STRIPE_SECRET_KEY", "sk"),
            ("GPUAAS_STRIPE_WEBHOOK_SECRET", "wh"),
            ("GPUAAS_STRIPE_API_BASE", "ftp://x"),
        ];
        assert!(load(Mode::Embedded, &CliOverrides::default(), &bad_base).is_err());
    }

    #[test]
    fn admin_bootstrap_needs_both_values_and_oidc_needs_a_client() {
        let env = [("GPUAAS_ADMIN_EMAIL", "root@example.com"), ("GPUAAS_OIDC_ISSUER_URL", "https://idp.example.com")];
        let error = load(Mode::Embedded, &CliOverrides::default(), &env).err().unwrap_or_else(|| panic!("accepted"));
        let text = error.to_string();
        assert!(text.contains("GPUAAS_ADMIN_PASSWORD") && text.contains("oidc.client_id"), "{text}");
    }

    #[test]
    fn portal_dir_comes_from_file_then_env_then_flag() {
        let config = load(Mode::Embedded, &CliOverrides::default(), &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.portal_dir, PathBuf::from("web/dist"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("gpuaas.toml");
        std::fs::write(&path, "portal_dir = \"/srv/file-portal\"\n").unwrap_or_else(|e| panic!("{e}"));
        let mut cli = CliOverrides { config_file: Some(path), ..Default::default() };
        let from_file = load(Mode::Production, &cli, &[("DATABASE_URL", "postgres://db/x")]);
        assert_eq!(from_file.map(|c| c.portal_dir).ok(), Some(PathBuf::from("/srv/file-portal")));
        let env = [("DATABASE_URL", "postgres://db/x"), ("GPUAAS_PORTAL_DIR", "/srv/env-portal")];
        let from_env = load(Mode::Production, &cli, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_env.portal_dir, PathBuf::from("/srv/env-portal"));
        cli.portal_dir = Some(PathBuf::from("/srv/flag-portal"));
        let from_flag = load(Mode::Production, &cli, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_flag.portal_dir, PathBuf::from("/srv/flag-portal"));
        cli.portal_dir = Some(PathBuf::new());
        let error = load(Mode::Production, &cli, &env).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("portal_dir"), "{error}");
    }

    #[test]
    fn serve_requires_a_database_url() {
        let error = load(Mode::Production, &CliOverrides::default(), &[]).err().unwrap_or_else(|| panic!("accepted"));
        assert!(error.to_string().contains("DATABASE_URL"));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("gpuaas.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9000\"\n").unwrap_or_else(|e| panic!("{e}"));
        let cli = CliOverrides { config_file: Some(path), ..Default::default() };
        let error = load(Mode::Embedded, &cli, &[]).err().unwrap_or_else(|| panic!("accepted"));
        assert!(error.to_string().contains("lisen"), "{error}");
    }

    #[test]
    fn debug_output_hides_credentials() {
        let env = [
            ("DATABASE_URL", "postgres://u:hunter2@db/x"),
            ("GPUAAS_ADMIN_EMAIL", "root@example.com"),
            ("GPUAAS_ADMIN_PASSWORD", "admin-hunter3"),
            ("GPUAAS_OIDC_ISSUER_URL", "https://idp.example.com/realms/x"),
            ("GPUAAS_OIDC_CLIENT_ID", "gpuaas"),
            ("GPUAAS_OIDC_CLIENT_SECRET", "oidc-hunter4"),
        ];
        let config = load(Mode::Production, &CliOverrides::default(), &env).unwrap_or_else(|e| panic!("{e}"));
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"));
        assert!(!debug.contains("hunter3") && !debug.contains("hunter4"), "{debug}");
        assert_eq!(config.oidc.as_ref().map(|o| o.redirect_uri.as_str()), Some("http://127.0.0.1:8080/auth/callback"));
        assert!(debug.contains("postgres://u:***@db/x"));
    }
}
