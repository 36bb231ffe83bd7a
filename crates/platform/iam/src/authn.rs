//! Who is calling: turns a verified bearer token into an [`AuthContext`], re-reading
//! the account on every request so a disabled user or revoked service account stops
//! at once rather than when its token expires.

use serde::Serialize;
use utoipa::ToSchema;

use crate::accounts::{self, Project, Tenant, User, UserStatus};
use crate::roles::{ActorType, GlobalRole, Permission, TenantRole};
use crate::{Iam, IamError, service_accounts};

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub actor_type: ActorType,
    /// User id or service-account id.
    pub actor_id: String,
    pub global_role: GlobalRole,
    pub tenant_id: String,
    pub tenant_role: Option<TenantRole>,
    /// For a service account, the one project it belongs to.
    pub project_id: Option<String>,
    /// For a service account, the permissions its token carries.
    pub scopes: Vec<String>,
}

impl AuthContext {
    /// The route-level check. Project routes additionally check membership per object.
    pub fn allows(&self, permission: Permission) -> bool {
        match self.actor_type {
            ActorType::User => self.global_role.grants(permission),
            ActorType::ServiceAccount => match permission {
                Permission::Public | Permission::Authenticated => true,
                Permission::ProjectRead | Permission::ProjectWrite => {
                    self.scopes.iter().any(|scope| scope == permission.as_str())
                }
                _ => false,
            },
        }
    }

    /// The role name recorded in audit rows.
    pub fn role_name(&self) -> &'static str {
        match self.actor_type {
            ActorType::User => self.global_role.as_str(),
            ActorType::ServiceAccount => "service_account",
        }
    }

    pub fn is_admin(&self) -> bool {
        self.actor_type == ActorType::User && self.global_role == GlobalRole::Admin
    }
}

/// `GET /users/me`: the caller, their tenant, projects and roles.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub user: User,
    pub tenant: Tenant,
    pub projects: Vec<Project>,
}

impl Iam {
    /// Verifies the bearer token and loads the caller.
    pub async fn authenticate(&self, token: &str) -> Result<AuthContext, IamError> {
        let verified = self.inner.verifier.verify(token).await?;
        if verified.issuer != self.inner.config.issuer_url {
            let user = match accounts::user_by_oidc(self.store(), &verified.issuer, verified.subject()).await? {
                Some(user) => user,
                None => self.upsert_oidc_user(&verified).await?,
            };
            return self.user_context(user).await;
        }
        let actor_type = verified
            .string_claim("actor_type")
            .and_then(ActorType::parse)
            .ok_or_else(|| IamError::TokenInvalid("token names no actor type".into()))?;
        match actor_type {
            ActorType::User => {
                let user = accounts::user_by_id(self.store(), verified.subject())
                    .await?
                    .ok_or_else(|| IamError::TokenInvalid("the user no longer exists".into()))?;
                self.user_context(user).await
            }
            ActorType::ServiceAccount => {
                let credential_id = verified
                    .string_claim("cred")
                    .ok_or_else(|| IamError::TokenInvalid("token names no credential".into()))?;
                let account = service_accounts::active_account(self.store(), verified.subject(), credential_id)
                    .await?
                    .ok_or_else(|| IamError::TokenInvalid("the service account credential is revoked".into()))?;
                let scopes = verified.string_claim("scope").unwrap_or_default();
                Ok(AuthContext {
                    actor_type: ActorType::ServiceAccount,
                    actor_id: account.id,
                    global_role: GlobalRole::User,
                    tenant_id: account.tenant_id,
                    tenant_role: None,
                    project_id: Some(account.project_id),
                    scopes: scopes.split_whitespace().map(str::to_owned).collect(),
                })
            }
        }
    }

    async fn user_context(&self, user: User) -> Result<AuthContext, IamError> {
        if user.status == UserStatus::Disabled {
            return Err(IamError::AccountDisabled);
        }
        let tenant_role = accounts::tenant_role(self.store(), &user.id).await?.map(|(_, role)| role);
        Ok(AuthContext {
            actor_type: ActorType::User,
            actor_id: user.id,
            global_role: user.role,
            tenant_id: user.tenant_id,
            tenant_role,
            project_id: None,
            scopes: Vec::new(),
        })
    }

    pub async fn me(&self, ctx: &AuthContext) -> Result<Me, IamError> {
        if ctx.actor_type != ActorType::User {
            return Err(IamError::Forbidden("service accounts have no user profile".into()));
        }
        let user = accounts::user_by_id(self.store(), &ctx.actor_id).await?.ok_or(IamError::NotFound("user"))?;
        let tenant =
            accounts::tenant_of_user(self.store(), &ctx.actor_id).await?.ok_or(IamError::NotFound("tenant"))?;
        let projects = accounts::projects_of_user(self.store(), &ctx.actor_id).await?;
        Ok(Me { user, tenant, projects })
    }

    /// The project as `ctx` may see it, checked against `permission`. Anything the
    /// caller may not see answers `NotFound`, never `Forbidden`, so ids of other
    /// tenants' projects leak nothing.
    pub async fn project(
        &self,
        ctx: &AuthContext,
        project_id: &str,
        permission: Permission,
    ) -> Result<Project, IamError> {
        match ctx.actor_type {
            ActorType::ServiceAccount => {
                if ctx.project_id.as_deref() != Some(project_id) || !ctx.allows(permission) {
                    return Err(IamError::NotFound("project"));
                }
                service_accounts::project_by_id(self.store(), project_id, &ctx.tenant_id)
                    .await?
                    .ok_or(IamError::NotFound("project"))
            }
            ActorType::User => {
                let project = accounts::project_for_user(self.store(), &ctx.actor_id, project_id)
                    .await?
                    .ok_or(IamError::NotFound("project"))?;
                if project.tenant_id != ctx.tenant_id {
                    return Err(IamError::NotFound("project"));
                }
                if !project.role.grants(permission) {
                    return Err(IamError::Forbidden(format!(
                        "your project role does not allow {}",
                        permission.as_str()
                    )));
                }
                Ok(project)
            }
        }
    }

    pub async fn list_projects(&self, ctx: &AuthContext) -> Result<Vec<Project>, IamError> {
        match ctx.actor_type {
            ActorType::User => accounts::projects_of_user(self.store(), &ctx.actor_id).await,
            ActorType::ServiceAccount => {
                let Some(project_id) = ctx.project_id.as_deref() else { return Ok(Vec::new()) };
                Ok(service_accounts::project_by_id(self.store(), project_id, &ctx.tenant_id)
                    .await?
                    .into_iter()
                    .collect())
            }
        }
    }
}
