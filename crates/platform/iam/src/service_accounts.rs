//! Service accounts: machine identities that belong to one project of one tenant.
//! Their credentials are a client id and a secret shown once and stored hashed; the
//! secret buys a short-lived token carrying `actor_type=service_account` and scopes.

use gpuaas_kernel::{Timestamp, new_id};
use gpuaas_policy::keys;
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Connection, Store};
use serde::Serialize;
use utoipa::ToSchema;

use crate::accounts::{Project, validate_name};
use crate::roles::{ActorType, Permission, ProjectRole, SERVICE_ACCOUNT_SCOPES};
use crate::{AuthContext, Iam, IamError, audit, random_secret, secret_hash};

const CLIENT_ID_PREFIX: &str = "sa_";
const MAX_CREDENTIAL_LEN: usize = 128;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServiceAccount {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// `active` or `revoked`.
    pub status: String,
    /// The client id of the current credential; absent once revoked.
    pub client_id: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A freshly issued credential. The secret is shown here once and never again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IssuedCredential {
    pub service_account: ServiceAccount,
    pub client_id: String,
    pub client_secret: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServiceAccountToken {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    pub expires_in: u64,
    /// Space-separated scopes the token carries.
    pub scope: String,
}

/// The account behind a service-account token, when it and its credential are live.
pub(crate) struct LiveAccount {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
}

pub(crate) async fn active_account(
    store: &Store,
    account_id: &str,
    credential_id: &str,
) -> Result<Option<LiveAccount>, IamError> {
    let row = sqlx::query(
        "SELECT a.id, a.tenant_id, a.project_id FROM service_accounts a \
         JOIN service_account_credentials c ON c.service_account_id = a.id \
         WHERE a.id = $1 AND c.id = $2 AND a.status = 'active' AND c.revoked_at IS NULL",
    )
    .bind(account_id)
    .bind(credential_id)
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(LiveAccount {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        project_id: row.try_get("project_id")?,
    }))
}

pub(crate) async fn project_by_id(
    store: &Store,
    project_id: &str,
    tenant_id: &str,
) -> Result<Option<Project>, IamError> {
    let row = sqlx::query("SELECT id, tenant_id, name, created_at FROM projects WHERE id = $1 AND tenant_id = $2")
        .bind(project_id)
        .bind(tenant_id)
        .fetch_optional(store.pool())
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Project {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        role: ProjectRole::Member,
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
    }))
}

fn validate_scopes(scopes: &[String]) -> Result<Vec<String>, IamError> {
    if scopes.is_empty() {
        return Err(IamError::invalid("scopes", "name at least one scope"));
    }
    let mut valid = Vec::new();
    for scope in scopes {
        if !SERVICE_ACCOUNT_SCOPES.contains(&scope.as_str()) {
            return Err(IamError::invalid(
                "scopes",
                format!("unknown scope; allowed: {}", SERVICE_ACCOUNT_SCOPES.join(", ")),
            ));
        }
        if !valid.contains(scope) {
            valid.push(scope.clone());
        }
    }
    Ok(valid)
}

fn account_from_row(row: &gpuaas_store::Row) -> Result<ServiceAccount, IamError> {
    let scopes: String = row.try_get("scopes")?;
    Ok(ServiceAccount {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        project_id: row.try_get("project_id")?,
        name: row.try_get("name")?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        status: row.try_get("status")?,
        client_id: row.try_get("client_id")?,
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
    })
}

const ACCOUNT_SELECT: &str = "SELECT a.id, a.tenant_id, a.project_id, a.name, a.scopes, a.status, a.created_at, \
     (SELECT c.client_id FROM service_account_credentials c WHERE c.service_account_id = a.id \
      AND c.revoked_at IS NULL ORDER BY c.created_at DESC LIMIT 1) AS client_id FROM service_accounts a";

async fn insert_credential(conn: &mut Connection, account_id: &str) -> Result<(String, String), IamError> {
    let client_id = format!("{CLIENT_ID_PREFIX}{}", new_id().simple());
    let secret = random_secret();
    sqlx::query(
        "INSERT INTO service_account_credentials (id, service_account_id, client_id, secret_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(new_id().to_string())
    .bind(account_id)
    .bind(&client_id)
    .bind(secret_hash(&secret))
    .bind(Timestamp::now().as_micros())
    .execute(&mut *conn)
    .await?;
    Ok((client_id, secret))
}

async fn revoke_credentials(conn: &mut Connection, account_id: &str) -> Result<(), IamError> {
    sqlx::query(
        "UPDATE service_account_credentials SET revoked_at = $1 WHERE service_account_id = $2 AND revoked_at IS NULL",
    )
    .bind(Timestamp::now().as_micros())
    .bind(account_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Iam {
    async fn audit_account(
        &self,
        conn: &mut Connection,
        ctx: &AuthContext,
        action: &str,
        account: &ServiceAccount,
        correlation_id: &str,
    ) -> Result<(), IamError> {
        let target = self.resource_id(
            Some(&account.tenant_id),
            Some(&account.project_id),
            gpuaas_kernel::ResourceType::ServiceAccount,
            &account.id,
        );
        gpuaas_audit::record(conn, &audit::by(ctx, action, target, correlation_id)).await?;
        Ok(())
    }

    async fn managed_project(&self, ctx: &AuthContext, project_id: &str) -> Result<Project, IamError> {
        if ctx.actor_type != ActorType::User {
            return Err(IamError::Forbidden("service accounts cannot manage service accounts".into()));
        }
        self.project(ctx, project_id, Permission::ProjectAdmin).await
    }

    async fn account_in_project(
        &self,
        conn: &mut Connection,
        project_id: &str,
        account_id: &str,
    ) -> Result<ServiceAccount, IamError> {
        let sql = format!("{ACCOUNT_SELECT} WHERE a.id = $1 AND a.project_id = $2");
        let row =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account_id).bind(project_id).fetch_optional(&mut *conn).await?;
        row.as_ref().map(account_from_row).transpose()?.ok_or(IamError::NotFound("service account"))
    }

    pub async fn create_service_account(
        &self,
        ctx: &AuthContext,
        project_id: &str,
        name: &str,
        scopes: &[String],
        correlation_id: &str,
    ) -> Result<IssuedCredential, IamError> {
        let project = self.managed_project(ctx, project_id).await?;
        let name = validate_name("name", name)?;
        let scopes = validate_scopes(scopes)?;
        let id = new_id().to_string();
        let now = Timestamp::now();
        let mut tx = self.store().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO service_accounts (id, tenant_id, project_id, name, scopes, status, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $7)",
        )
        .bind(&id)
        .bind(&project.tenant_id)
        .bind(&project.id)
        .bind(&name)
        .bind(scopes.join(" "))
        .bind(&ctx.actor_id)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await;
        if let Err(error) = inserted {
            return Err(if crate::is_unique_violation(&error) {
                IamError::Conflict("a service account with this name already exists in the project".into())
            } else {
                error.into()
            });
        }
        let (client_id, client_secret) = insert_credential(&mut tx, &id).await?;
        let account = self.account_in_project(&mut tx, &project.id, &id).await?;
        self.audit_account(&mut tx, ctx, "service_account.create", &account, correlation_id).await?;
        tx.commit().await?;
        Ok(IssuedCredential { service_account: account, client_id, client_secret })
    }

    pub async fn list_service_accounts(
        &self,
        ctx: &AuthContext,
        project_id: &str,
    ) -> Result<Vec<ServiceAccount>, IamError> {
        let project = self.managed_project(ctx, project_id).await?;
        let sql = format!("{ACCOUNT_SELECT} WHERE a.project_id = $1 ORDER BY a.created_at, a.id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&project.id).fetch_all(self.store().pool()).await?;
        rows.iter().map(account_from_row).collect()
    }

    /// Replaces the credential: the old secret stops working at once.
    pub async fn rotate_service_account(
        &self,
        ctx: &AuthContext,
        project_id: &str,
        account_id: &str,
        correlation_id: &str,
    ) -> Result<IssuedCredential, IamError> {
        let project = self.managed_project(ctx, project_id).await?;
        let mut tx = self.store().begin().await?;
        let account = self.account_in_project(&mut tx, &project.id, account_id).await?;
        if account.status != "active" {
            return Err(IamError::Conflict("the service account is revoked".into()));
        }
        revoke_credentials(&mut tx, &account.id).await?;
        let (client_id, client_secret) = insert_credential(&mut tx, &account.id).await?;
        let account = self.account_in_project(&mut tx, &project.id, &account.id).await?;
        self.audit_account(&mut tx, ctx, "service_account.rotate", &account, correlation_id).await?;
        tx.commit().await?;
        Ok(IssuedCredential { service_account: account, client_id, client_secret })
    }

    /// Revokes the account and every credential; its tokens stop working at once.
    pub async fn revoke_service_account(
        &self,
        ctx: &AuthContext,
        project_id: &str,
        account_id: &str,
        correlation_id: &str,
    ) -> Result<ServiceAccount, IamError> {
        let project = self.managed_project(ctx, project_id).await?;
        let mut tx = self.store().begin().await?;
        let account = self.account_in_project(&mut tx, &project.id, account_id).await?;
        sqlx::query("UPDATE service_accounts SET status = 'revoked' WHERE id = $1")
            .bind(&account.id)
            .execute(&mut *tx)
            .await?;
        revoke_credentials(&mut tx, &account.id).await?;
        let account = self.account_in_project(&mut tx, &project.id, &account.id).await?;
        self.audit_account(&mut tx, ctx, "service_account.revoke", &account, correlation_id).await?;
        tx.commit().await?;
        Ok(account)
    }

    /// Client-credentials exchange. `scope` narrows the account's scopes when given.
    pub async fn service_account_token(
        &self,
        client_id: &str,
        client_secret: &str,
        scope: Option<&str>,
        correlation_id: &str,
    ) -> Result<ServiceAccountToken, IamError> {
        if client_id.is_empty()
            || client_id.len() > MAX_CREDENTIAL_LEN
            || client_secret.is_empty()
            || client_secret.len() > MAX_CREDENTIAL_LEN
        {
            return Err(IamError::InvalidCredentials);
        }
        let row = sqlx::query(
            "SELECT c.id AS credential_id, c.secret_hash, a.id, a.tenant_id, a.project_id, a.scopes FROM service_account_credentials c \
             JOIN service_accounts a ON a.id = c.service_account_id \
             WHERE c.client_id = $1 AND c.revoked_at IS NULL AND a.status = 'active'",
        )
        .bind(client_id)
        .fetch_optional(self.store().pool())
        .await?;
        let presented = secret_hash(client_secret);
        let stored: Option<String> = row.as_ref().map(|row| row.try_get("secret_hash")).transpose()?;
        let Some(row) =
            row.filter(|_| stored.is_some_and(|hash| constant_time_eq(hash.as_bytes(), presented.as_bytes())))
        else {
            // Unknown client and wrong secret are one answer and one audit row.
            let entry = audit::anonymous(
                client_id,
                "auth.service_account_token",
                format!("client:{client_id}"),
                gpuaas_audit::AuditResult::Failure,
                correlation_id,
            );
            gpuaas_audit::record_standalone(self.store(), &entry).await?;
            return Err(IamError::InvalidCredentials);
        };
        let account_scopes: String = row.try_get("scopes")?;
        let account_scopes: Vec<&str> = account_scopes.split_whitespace().collect();
        let granted: Vec<&str> = match scope {
            None => account_scopes.clone(),
            Some(requested) => {
                let requested: Vec<&str> = requested.split_whitespace().collect();
                if requested.is_empty() || requested.iter().any(|s| !account_scopes.contains(s)) {
                    return Err(IamError::invalid("scope", "asks for a scope the service account does not hold"));
                }
                requested
            }
        };
        let ttl = self.inner.policy.get_duration_secs(keys::AUTH_SERVICE_ACCOUNT_TOKEN_TTL_SECONDS).await?;
        let account_id: String = row.try_get("id")?;
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), account_id.into());
        claims.insert("actor_type".into(), ActorType::ServiceAccount.as_str().into());
        claims.insert("tenant_id".into(), row.try_get::<String, _>("tenant_id")?.into());
        claims.insert("project_id".into(), row.try_get::<String, _>("project_id")?.into());
        claims.insert("cred".into(), row.try_get::<String, _>("credential_id")?.into());
        claims.insert("scope".into(), granted.join(" ").into());
        let access_token = self.sign(claims, ttl).await?;
        Ok(ServiceAccountToken {
            access_token,
            token_type: "Bearer".into(),
            expires_in: ttl.as_secs(),
            scope: granted.join(" "),
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
