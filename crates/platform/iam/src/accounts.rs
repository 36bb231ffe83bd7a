//! Users, tenants, projects and memberships: who exists and who owns what.

use gpuaas_kernel::{Cursor, Timestamp, new_id};
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Connection, Store};
use serde::Serialize;
use utoipa::ToSchema;

use crate::roles::{GlobalRole, ProjectRole, TenantRole};
use crate::{IamError, is_unique_violation};

pub const MAX_EMAIL_LEN: usize = 254;
pub const MAX_NAME_LEN: usize = 128;
pub const DEFAULT_PROJECT_NAME: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
}

impl UserStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(UserStatus::Active),
            "disabled" => Some(UserStatus::Disabled),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub display_name: String,
    #[schema(value_type = String)]
    pub role: GlobalRole,
    pub status: UserStatus,
    pub tenant_id: String,
    /// `local` for a password account, otherwise the OIDC issuer.
    pub identity_source: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// What sign-in needs that the public user view must never carry.
pub(crate) struct Credentials {
    pub user: User,
    pub password_hash: Option<String>,
    pub locked_until: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Project {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// The caller's role in this project.
    #[schema(value_type = String)]
    pub role: ProjectRole,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    #[schema(value_type = String)]
    pub role: TenantRole,
}

pub struct NewUser {
    pub email: String,
    pub display_name: String,
    pub password_hash: Option<String>,
    pub role: GlobalRole,
    pub oidc: Option<(String, String)>,
}

/// Normalises and checks an email: trimmed, lower-cased, one `@`, no spaces.
pub fn normalize_email(email: &str) -> Result<String, IamError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= MAX_EMAIL_LEN
        && email.split('@').count() == 2
        && email.split('@').all(|part| !part.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid { Ok(email) } else { Err(IamError::invalid("email", "must be a valid email address")) }
}

pub fn validate_name(field: &'static str, name: &str) -> Result<String, IamError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(IamError::invalid(field, format!("must be 1 to {MAX_NAME_LEN} printable characters")));
    }
    Ok(name.to_owned())
}

const USER_COLUMNS: &str = "u.id, u.email, u.display_name, u.global_role, u.status, u.oidc_issuer, u.created_at, \
     u.password_hash, u.locked_until, m.tenant_id";

fn user_from_row(row: &gpuaas_store::Row) -> Result<Credentials, IamError> {
    let role: String = row.try_get("global_role")?;
    let status: String = row.try_get("status")?;
    let issuer: Option<String> = row.try_get("oidc_issuer")?;
    let locked_until: Option<i64> = row.try_get("locked_until")?;
    Ok(Credentials {
        user: User {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            display_name: row.try_get("display_name")?,
            role: GlobalRole::parse(&role).ok_or_else(|| IamError::Internal(format!("unknown role {role}")))?,
            status: UserStatus::parse(&status).ok_or_else(|| IamError::Internal(format!("unknown status {status}")))?,
            tenant_id: row.try_get("tenant_id")?,
            identity_source: issuer.unwrap_or_else(|| "local".into()),
            created_at: Timestamp::from_micros(row.try_get("created_at")?),
        },
        password_hash: row.try_get("password_hash")?,
        locked_until: locked_until.map(Timestamp::from_micros),
    })
}

pub(crate) async fn credentials_by_email(store: &Store, email: &str) -> Result<Option<Credentials>, IamError> {
    let sql =
        format!("SELECT {USER_COLUMNS} FROM users u JOIN tenant_memberships m ON m.user_id = u.id WHERE u.email = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(email).fetch_optional(store.pool()).await?;
    row.as_ref().map(user_from_row).transpose()
}

pub async fn user_by_id(store: &Store, id: &str) -> Result<Option<User>, IamError> {
    let sql =
        format!("SELECT {USER_COLUMNS} FROM users u JOIN tenant_memberships m ON m.user_id = u.id WHERE u.id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(store.pool()).await?;
    Ok(row.as_ref().map(user_from_row).transpose()?.map(|c| c.user))
}

pub async fn user_by_oidc(store: &Store, issuer: &str, subject: &str) -> Result<Option<User>, IamError> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users u JOIN tenant_memberships m ON m.user_id = u.id \
         WHERE u.oidc_issuer = $1 AND u.oidc_subject = $2"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(issuer).bind(subject).fetch_optional(store.pool()).await?;
    Ok(row.as_ref().map(user_from_row).transpose()?.map(|c| c.user))
}

pub async fn tenant_role(store: &Store, user_id: &str) -> Result<Option<(String, TenantRole)>, IamError> {
    let row = sqlx::query("SELECT tenant_id, role FROM tenant_memberships WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(store.pool())
        .await?;
    let Some(row) = row else { return Ok(None) };
    let role: String = row.try_get("role")?;
    Ok(Some((row.try_get("tenant_id")?, TenantRole::parse(&role).unwrap_or(TenantRole::Member))))
}

/// Creates a user with a personal tenant (they own it) and a default project (they
/// administer it), inside the caller's transaction.
pub async fn create_user(conn: &mut Connection, new: NewUser) -> Result<User, IamError> {
    let now = Timestamp::now();
    let user_id = new_id().to_string();
    let tenant_id = new_id().to_string();
    let project_id = new_id().to_string();
    let (issuer, subject) = new.oidc.clone().unzip();
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, display_name, password_hash, oidc_issuer, oidc_subject, global_role, status, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $8)",
    )
    .bind(&user_id)
    .bind(&new.email)
    .bind(&new.display_name)
    .bind(&new.password_hash)
    .bind(&issuer)
    .bind(&subject)
    .bind(new.role.as_str())
    .bind(now.as_micros())
    .execute(&mut *conn)
    .await;
    if let Err(error) = inserted {
        return Err(if is_unique_violation(&error) {
            IamError::Conflict("a user with this email already exists".into())
        } else {
            error.into()
        });
    }
    sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&tenant_id)
        .bind(format!("{}'s organisation", new.display_name))
        .bind(now.as_micros())
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO tenant_memberships (tenant_id, user_id, role, created_at) VALUES ($1, $2, 'owner', $3)")
        .bind(&tenant_id)
        .bind(&user_id)
        .bind(now.as_micros())
        .execute(&mut *conn)
        .await?;
    insert_project(conn, &tenant_id, &project_id, DEFAULT_PROJECT_NAME, &user_id, now).await?;
    Ok(User {
        id: user_id,
        email: new.email,
        display_name: new.display_name,
        role: new.role,
        status: UserStatus::Active,
        tenant_id,
        identity_source: issuer.unwrap_or_else(|| "local".into()),
        created_at: now,
    })
}

async fn insert_project(
    conn: &mut Connection,
    tenant_id: &str,
    project_id: &str,
    name: &str,
    admin_user_id: &str,
    now: Timestamp,
) -> Result<(), IamError> {
    let inserted = sqlx::query("INSERT INTO projects (id, tenant_id, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(project_id)
        .bind(tenant_id)
        .bind(name)
        .bind(now.as_micros())
        .execute(&mut *conn)
        .await;
    if let Err(error) = inserted {
        return Err(if is_unique_violation(&error) {
            IamError::Conflict("a project with this name already exists in the tenant".into())
        } else {
            error.into()
        });
    }
    sqlx::query("INSERT INTO project_memberships (project_id, user_id, role, created_at) VALUES ($1, $2, 'admin', $3)")
        .bind(project_id)
        .bind(admin_user_id)
        .bind(now.as_micros())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Creates a project in `tenant_id`; the creator administers it.
pub async fn create_project(
    conn: &mut Connection,
    tenant_id: &str,
    name: &str,
    creator_user_id: &str,
) -> Result<Project, IamError> {
    let name = validate_name("name", name)?;
    let now = Timestamp::now();
    let id = new_id().to_string();
    insert_project(conn, tenant_id, &id, &name, creator_user_id, now).await?;
    Ok(Project { id, tenant_id: tenant_id.to_owned(), name, role: ProjectRole::Admin, created_at: now })
}

fn project_from_row(row: &gpuaas_store::Row) -> Result<Project, IamError> {
    let role: String = row.try_get("role")?;
    Ok(Project {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        role: ProjectRole::parse(&role).unwrap_or(ProjectRole::Viewer),
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
    })
}

/// Projects the user is a member of, oldest first.
pub async fn projects_of_user(store: &Store, user_id: &str) -> Result<Vec<Project>, IamError> {
    let rows = sqlx::query(
        "SELECT p.id, p.tenant_id, p.name, p.created_at, pm.role FROM projects p \
         JOIN project_memberships pm ON pm.project_id = p.id WHERE pm.user_id = $1 ORDER BY p.created_at, p.id",
    )
    .bind(user_id)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(project_from_row).collect()
}

/// The project as the user sees it, or `None` when they are not a member: callers
/// answer 404 either way, so another tenant's project is indistinguishable from none.
pub async fn project_for_user(store: &Store, user_id: &str, project_id: &str) -> Result<Option<Project>, IamError> {
    let row = sqlx::query(
        "SELECT p.id, p.tenant_id, p.name, p.created_at, pm.role FROM projects p \
         JOIN project_memberships pm ON pm.project_id = p.id WHERE pm.user_id = $1 AND p.id = $2",
    )
    .bind(user_id)
    .bind(project_id)
    .fetch_optional(store.pool())
    .await?;
    row.as_ref().map(project_from_row).transpose()
}

pub async fn tenant_of_user(store: &Store, user_id: &str) -> Result<Option<Tenant>, IamError> {
    let row = sqlx::query(
        "SELECT t.id, t.name, m.role FROM tenants t JOIN tenant_memberships m ON m.tenant_id = t.id \
         WHERE m.user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let role: String = row.try_get("role")?;
    Ok(Some(Tenant {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: TenantRole::parse(&role).unwrap_or(TenantRole::Member),
    }))
}

#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    pub status: Option<UserStatus>,
    /// Case-insensitive email prefix.
    pub email_prefix: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub items: Vec<User>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Users, newest first, keyset-paginated.
pub async fn list_users(
    store: &Store,
    filter: &UserFilter,
    cursor: Option<&str>,
    limit: u32,
) -> Result<UserPage, IamError> {
    let cursor = cursor.map(Cursor::decode).transpose()?;
    let mut sql =
        format!("SELECT {USER_COLUMNS} FROM users u JOIN tenant_memberships m ON m.user_id = u.id WHERE 1 = 1");
    let mut next = 1;
    let mut placeholder = || {
        let p = format!("${next}");
        next += 1;
        p
    };
    if filter.status.is_some() {
        sql.push_str(&format!(" AND u.status = {}", placeholder()));
    }
    if filter.email_prefix.is_some() {
        sql.push_str(&format!(" AND u.email LIKE {} ESCAPE '\\'", placeholder()));
    }
    if cursor.is_some() {
        let (a, b, c) = (placeholder(), placeholder(), placeholder());
        sql.push_str(&format!(" AND (u.created_at < {a} OR (u.created_at = {b} AND u.id < {c}))"));
    }
    sql.push_str(&format!(" ORDER BY u.created_at DESC, u.id DESC LIMIT {}", placeholder()));
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    if let Some(status) = filter.status {
        query = query.bind(status.as_str());
    }
    if let Some(prefix) = &filter.email_prefix {
        let escaped = prefix.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        query = query.bind(format!("{escaped}%"));
    }
    if let Some(cursor) = &cursor {
        query = query.bind(cursor.sort_key).bind(cursor.sort_key).bind(cursor.id.clone());
    }
    let rows = query.bind(i64::from(limit) + 1).fetch_all(store.pool()).await?;
    let mut items = rows.iter().map(|row| user_from_row(row).map(|c| c.user)).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| Cursor::new(last.created_at.as_micros(), last.id.clone()).encode())
    } else {
        None
    };
    Ok(UserPage { items, next_cursor })
}

/// Sets a user's status; returns false when there is no such user.
pub async fn set_user_status(conn: &mut Connection, user_id: &str, status: UserStatus) -> Result<bool, IamError> {
    let now = Timestamp::now().as_micros();
    let updated = sqlx::query("UPDATE users SET status = $1, updated_at = $2 WHERE id = $3")
        .bind(status.as_str())
        .bind(now)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    if updated.rows_affected() == 0 {
        return Ok(false);
    }
    if status == UserStatus::Disabled {
        sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(user_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(true)
}

pub async fn admin_exists(store: &Store) -> Result<bool, IamError> {
    let row =
        sqlx::query("SELECT COUNT(*) AS n FROM users WHERE global_role = 'admin'").fetch_one(store.pool()).await?;
    Ok(row.try_get::<i64, _>("n")? > 0)
}
