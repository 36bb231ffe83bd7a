//! Password sign-in with lockout, session tokens (a short-lived signed access token
//! and a rotating opaque refresh token), refresh, logout, and admin user management.

use std::time::Duration;

use gpuaas_audit::AuditResult;
use gpuaas_kernel::{ResourceType, Timestamp, new_id};
use gpuaas_policy::keys;
use gpuaas_store::sqlx::{self, Row as _};
use serde::Serialize;
use utoipa::ToSchema;

use crate::accounts::{self, NewUser, User, UserStatus};
use crate::roles::{ActorType, GlobalRole};
use crate::{AuthContext, Iam, IamError, audit, password, random_secret, secret_hash};

/// What a successful sign-in, refresh or OIDC exchange returns.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionTokens {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Seconds until the refresh token expires. Left out of the JSON answer, whose
    /// shape clients already rely on; a browser session gives its cookie this lifetime.
    #[serde(skip)]
    pub refresh_expires_in: u64,
}

/// Longest refresh token text accepted; ours are 43 characters.
const MAX_REFRESH_TOKEN_LEN: usize = 128;

impl Iam {
    /// The canonical id of a user: tenant-scoped, like everything a tenant owns.
    pub(crate) fn user_resource(&self, user: &User) -> String {
        self.resource_id(Some(&user.tenant_id), None, ResourceType::User, &user.id)
    }

    /// Signs an access token for `claims` with the active key of the built-in issuer.
    pub(crate) async fn sign(
        &self,
        mut claims: serde_json::Map<String, serde_json::Value>,
        ttl: Duration,
    ) -> Result<String, IamError> {
        let key = self.inner.keys.active().await?;
        let now = Timestamp::now().as_micros() / 1_000_000;
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        claims.insert("iss".into(), self.inner.config.issuer_url.clone().into());
        claims.insert("aud".into(), self.inner.config.audience.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), now.into());
        claims.insert("exp".into(), now.saturating_add(ttl).into());
        claims.insert("jti".into(), new_id().to_string().into());
        let mut header = jsonwebtoken::Header::new(key.algorithm);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map_err(|e| IamError::Internal(format!("signing failed: {e}")))
    }

    pub(crate) async fn issue_session_for(&self, user: &User) -> Result<SessionTokens, IamError> {
        let access_ttl = self.inner.policy.get_duration_secs(keys::AUTH_ACCESS_TOKEN_TTL_SECONDS).await?;
        let refresh_ttl = self.inner.policy.get_duration_secs(keys::AUTH_REFRESH_TOKEN_TTL_SECONDS).await?;
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), user.id.clone().into());
        claims.insert("actor_type".into(), ActorType::User.as_str().into());
        claims.insert("tenant_id".into(), user.tenant_id.clone().into());
        claims.insert("role".into(), user.role.as_str().into());
        claims.insert("email".into(), user.email.clone().into());
        let access_token = self.sign(claims, access_ttl).await?;
        let refresh_token = random_secret();
        let now = Timestamp::now();
        sqlx::query(
            "INSERT INTO refresh_tokens (id, user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new_id().to_string())
        .bind(&user.id)
        .bind(secret_hash(&refresh_token))
        .bind(now.as_micros())
        .bind(now.saturating_add(refresh_ttl).as_micros())
        .execute(self.store().pool())
        .await?;
        Ok(SessionTokens {
            access_token,
            refresh_token,
            token_type: "Bearer".into(),
            expires_in: access_ttl.as_secs(),
            refresh_expires_in: refresh_ttl.as_secs(),
        })
    }

    /// Whether password sign-in is enabled by policy (the portal hides the form if not).
    pub async fn password_login_enabled(&self) -> Result<bool, IamError> {
        Ok(self.inner.policy.get(keys::AUTH_PERSONAL_LOGIN_ENABLED).await?)
    }

    /// Email + password sign-in. Consecutive failures lock the account per policy;
    /// every attempt is audited.
    pub async fn login(&self, email: &str, password: &str, correlation_id: &str) -> Result<SessionTokens, IamError> {
        if !self.inner.policy.get(keys::AUTH_PERSONAL_LOGIN_ENABLED).await? {
            return Err(IamError::FeatureDisabled("password sign-in is disabled on this platform".into()));
        }
        let email = accounts::normalize_email(email)?;
        if password.is_empty() {
            return Err(IamError::invalid("password", "must not be empty"));
        }
        let store = self.store();
        let found = accounts::credentials_by_email(store, &email).await?;
        let now = Timestamp::now();
        if let Some(credentials) = &found
            && let Some(until) = credentials.locked_until
            && until > now
        {
            let target = self.user_resource(&credentials.user);
            gpuaas_audit::record_standalone(
                store,
                &audit::anonymous(&email, "auth.login", target, AuditResult::Denied, correlation_id),
            )
            .await?;
            return Err(IamError::AccountLocked { retry_after: until.since(now).max(Duration::from_secs(1)) });
        }
        let hash = found.as_ref().and_then(|c| c.password_hash.clone());
        if !password::verify(password.to_owned(), hash).await? {
            return Err(self.failed_login(found.map(|c| c.user), &email, correlation_id).await?);
        }
        let Some(credentials) = found else { return Err(IamError::InvalidCredentials) };
        let user = credentials.user;
        if user.status == UserStatus::Disabled {
            gpuaas_audit::record_standalone(
                store,
                &audit::anonymous(&email, "auth.login", self.user_resource(&user), AuditResult::Denied, correlation_id),
            )
            .await?;
            return Err(IamError::AccountDisabled);
        }
        let mut tx = store.begin().await?;
        // Clear only a lock that has lapsed. A lock that concurrent failures set while
        // this password was being checked stands; otherwise guessing in parallel would
        // sidestep the lockout.
        let cleared = sqlx::query(
            "UPDATE users SET failed_logins = 0, locked_until = NULL \
             WHERE id = $1 AND (locked_until IS NULL OR locked_until <= $2)",
        )
        .bind(&user.id)
        .bind(Timestamp::now().as_micros())
        .execute(&mut *tx)
        .await?;
        if cleared.rows_affected() == 0 {
            tx.rollback().await?;
            let until: Option<i64> = sqlx::query("SELECT locked_until FROM users WHERE id = $1")
                .bind(&user.id)
                .fetch_one(store.pool())
                .await?
                .try_get("locked_until")?;
            gpuaas_audit::record_standalone(
                store,
                &audit::anonymous(&email, "auth.login", self.user_resource(&user), AuditResult::Denied, correlation_id),
            )
            .await?;
            let retry_after =
                until.map_or(Duration::ZERO, |until| Timestamp::from_micros(until).since(Timestamp::now()));
            return Err(IamError::AccountLocked { retry_after: retry_after.max(Duration::from_secs(1)) });
        }
        let mut entry =
            audit::anonymous(&user.id, "auth.login", self.user_resource(&user), AuditResult::Success, correlation_id);
        entry.actor_type = gpuaas_audit::ActorType::User;
        entry.actor_role = user.role.as_str().into();
        entry.tenant_id = Some(user.tenant_id.clone());
        gpuaas_audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        self.issue_session_for(&user).await
    }

    async fn failed_login(&self, user: Option<User>, email: &str, correlation_id: &str) -> Result<IamError, IamError> {
        let store = self.store();
        let Some(user) = user else {
            let entry =
                audit::anonymous(email, "auth.login", "user:unknown".into(), AuditResult::Failure, correlation_id);
            gpuaas_audit::record_standalone(store, &entry).await?;
            return Ok(IamError::InvalidCredentials);
        };
        let max_failures = self.inner.policy.get(keys::AUTH_LOCKOUT_MAX_FAILURES).await?;
        let lock_for = self.inner.policy.get_duration_secs(keys::AUTH_LOCKOUT_SECONDS).await?;
        let mut tx = store.begin().await?;
        // The increment happens in the database so concurrent guesses all count.
        let row =
            sqlx::query("UPDATE users SET failed_logins = failed_logins + 1 WHERE id = $1 RETURNING failed_logins")
                .bind(&user.id)
                .fetch_one(&mut *tx)
                .await?;
        let failures: i64 = row.try_get("failed_logins")?;
        let target = self.user_resource(&user);
        gpuaas_audit::record(
            &mut tx,
            &audit::anonymous(email, "auth.login", target.clone(), AuditResult::Failure, correlation_id),
        )
        .await?;
        let outcome = if max_failures > 0 && failures >= max_failures {
            let until = Timestamp::now().saturating_add(lock_for);
            sqlx::query("UPDATE users SET failed_logins = 0, locked_until = $1 WHERE id = $2")
                .bind(until.as_micros())
                .bind(&user.id)
                .execute(&mut *tx)
                .await?;
            let mut entry = audit::anonymous(email, "auth.lockout", target, AuditResult::Denied, correlation_id);
            entry.details = serde_json::json!({"failures": failures, "locked_seconds": lock_for.as_secs()});
            gpuaas_audit::record(&mut tx, &entry).await?;
            tracing::warn!(user_id = %user.id, failures, "account locked after repeated failed sign-ins");
            IamError::AccountLocked { retry_after: lock_for }
        } else {
            IamError::InvalidCredentials
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Exchanges a refresh token for a new session; the old refresh token is revoked.
    /// Presenting a revoked one again revokes every session of that user: it means
    /// the token was copied.
    pub async fn refresh(&self, refresh_token: &str, correlation_id: &str) -> Result<SessionTokens, IamError> {
        if refresh_token.is_empty() || refresh_token.len() > MAX_REFRESH_TOKEN_LEN {
            return Err(IamError::InvalidCredentials);
        }
        let store = self.store();
        let now = Timestamp::now().as_micros();
        let mut tx = store.begin().await?;
        let row = sqlx::query("SELECT id, user_id, expires_at, revoked_at FROM refresh_tokens WHERE token_hash = $1")
            .bind(secret_hash(refresh_token))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Err(IamError::InvalidCredentials) };
        let token_id: String = row.try_get("id")?;
        let user_id: String = row.try_get("user_id")?;
        let revoked_at: Option<i64> = row.try_get("revoked_at")?;
        let expires_at: i64 = row.try_get("expires_at")?;
        if revoked_at.is_some() {
            sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(&user_id)
                .execute(&mut *tx)
                .await?;
            gpuaas_audit::record(
                &mut tx,
                &audit::anonymous(
                    &user_id,
                    "auth.refresh_reuse",
                    match accounts::user_by_id(store, &user_id).await? {
                        Some(user) => self.user_resource(&user),
                        None => self.resource_id(None, None, ResourceType::User, &user_id),
                    },
                    AuditResult::Denied,
                    correlation_id,
                ),
            )
            .await?;
            tx.commit().await?;
            return Err(IamError::InvalidCredentials);
        }
        if expires_at <= now {
            return Err(IamError::InvalidCredentials);
        }
        // Revoke first, guarded on still-unrevoked, so two concurrent refreshes with the
        // same token cannot both succeed.
        let revoked = sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(&token_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if revoked.rows_affected() != 1 {
            return Err(IamError::InvalidCredentials);
        }
        let user = accounts::user_by_id(store, &user_id).await?.ok_or(IamError::InvalidCredentials)?;
        if user.status == UserStatus::Disabled {
            return Err(IamError::AccountDisabled);
        }
        self.issue_session_for(&user).await
    }

    /// Revokes the refresh token. Unknown or already revoked tokens answer 401 so a
    /// client learns its logout did nothing.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), IamError> {
        if refresh_token.is_empty() || refresh_token.len() > MAX_REFRESH_TOKEN_LEN {
            return Err(IamError::InvalidCredentials);
        }
        let revoked =
            sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL")
                .bind(Timestamp::now().as_micros())
                .bind(secret_hash(refresh_token))
                .execute(self.store().pool())
                .await?;
        if revoked.rows_affected() == 0 {
            return Err(IamError::InvalidCredentials);
        }
        Ok(())
    }

    /// Creates the first admin when the platform has none. Returns the user when one
    /// was created.
    pub async fn bootstrap_admin(&self, email: &str, password: &str) -> Result<Option<User>, IamError> {
        if accounts::admin_exists(self.store()).await? {
            return Ok(None);
        }
        let email = accounts::normalize_email(email)?;
        password::validate_new_password(password)?;
        let hash = password::hash(password.to_owned()).await?;
        let mut tx = self.store().begin().await?;
        let user = accounts::create_user(
            &mut tx,
            NewUser {
                email: email.clone(),
                display_name: "Administrator".into(),
                password_hash: Some(hash),
                role: GlobalRole::Admin,
                oidc: None,
            },
        )
        .await?;
        gpuaas_audit::record(&mut tx, &audit::system("user.bootstrap_admin", self.user_resource(&user))).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    /// An admin creates a local account (with its personal tenant and default project).
    pub async fn admin_create_user(
        &self,
        ctx: &AuthContext,
        email: &str,
        display_name: Option<&str>,
        password: &str,
        role: GlobalRole,
        correlation_id: &str,
    ) -> Result<User, IamError> {
        let email = accounts::normalize_email(email)?;
        let display_name = match display_name {
            Some(name) => accounts::validate_name("display_name", name)?,
            None => email.split('@').next().unwrap_or_default().to_owned(),
        };
        password::validate_new_password(password)?;
        let hash = password::hash(password.to_owned()).await?;
        let mut tx = self.store().begin().await?;
        let user = accounts::create_user(
            &mut tx,
            NewUser { email, display_name, password_hash: Some(hash), role, oidc: None },
        )
        .await?;
        let mut entry = audit::by(ctx, "user.create", self.user_resource(&user), correlation_id);
        entry.details = serde_json::json!({"role": role.as_str()});
        gpuaas_audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(user)
    }

    /// Disables or re-enables a user. Disabling revokes every refresh token at once.
    pub async fn admin_set_user_status(
        &self,
        ctx: &AuthContext,
        user_id: &str,
        status: UserStatus,
        correlation_id: &str,
    ) -> Result<User, IamError> {
        if status == UserStatus::Disabled && user_id == ctx.actor_id {
            return Err(IamError::Conflict("an administrator cannot disable their own account".into()));
        }
        let user = accounts::user_by_id(self.store(), user_id).await?.ok_or(IamError::NotFound("user"))?;
        let mut tx = self.store().begin().await?;
        if !accounts::set_user_status(&mut tx, user_id, status).await? {
            return Err(IamError::NotFound("user"));
        }
        let action = match status {
            UserStatus::Disabled => "user.disable",
            UserStatus::Active => "user.enable",
        };
        gpuaas_audit::record(&mut tx, &audit::by(ctx, action, self.user_resource(&user), correlation_id)).await?;
        tx.commit().await?;
        accounts::user_by_id(self.store(), user_id).await?.ok_or(IamError::NotFound("user"))
    }

    /// Rotates the built-in issuer's signing key; old tokens stay valid until expiry.
    pub async fn rotate_signing_key(&self, ctx: &AuthContext, correlation_id: &str) -> Result<String, IamError> {
        let access = self.inner.policy.get_duration_secs(keys::AUTH_ACCESS_TOKEN_TTL_SECONDS).await?;
        let service = self.inner.policy.get_duration_secs(keys::AUTH_SERVICE_ACCOUNT_TOKEN_TTL_SECONDS).await?;
        let kid = self.inner.keys.rotate(access.max(service)).await?;
        gpuaas_audit::record_standalone(
            self.store(),
            &audit::by(
                ctx,
                "auth.signing_key.rotate",
                self.resource_id(None, None, ResourceType::SigningKey, &kid),
                correlation_id,
            ),
        )
        .await?;
        Ok(kid)
    }
}
