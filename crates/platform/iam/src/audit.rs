//! Audit rows for identity events, built in one place so every row names its actor
//! the same way.

use gpuaas_audit::{AuditResult, NewAuditLog};

use crate::AuthContext;
use crate::roles::ActorType;

pub(crate) fn by(ctx: &AuthContext, action: &str, target: String, correlation_id: &str) -> NewAuditLog {
    NewAuditLog {
        actor_id: ctx.actor_id.clone(),
        actor_type: match ctx.actor_type {
            ActorType::User => gpuaas_audit::ActorType::User,
            ActorType::ServiceAccount => gpuaas_audit::ActorType::ServiceAccount,
        },
        actor_role: ctx.role_name().into(),
        action: action.into(),
        target,
        tenant_id: Some(ctx.tenant_id.clone()),
        result: AuditResult::Success,
        correlation_id: correlation_id.into(),
        details: serde_json::Value::Null,
    }
}

/// A row for something a not-yet-authenticated caller did (sign-in attempts).
pub(crate) fn anonymous(
    actor_id: &str,
    action: &str,
    target: String,
    result: AuditResult,
    correlation_id: &str,
) -> NewAuditLog {
    NewAuditLog {
        actor_id: actor_id.into(),
        actor_type: gpuaas_audit::ActorType::Anonymous,
        actor_role: "none".into(),
        action: action.into(),
        target,
        tenant_id: None,
        result,
        correlation_id: correlation_id.into(),
        details: serde_json::Value::Null,
    }
}

pub(crate) fn system(action: &str, target: String) -> NewAuditLog {
    NewAuditLog {
        actor_id: "system".into(),
        actor_type: gpuaas_audit::ActorType::System,
        actor_role: "system".into(),
        action: action.into(),
        target,
        tenant_id: None,
        result: AuditResult::Success,
        correlation_id: String::new(),
        details: serde_json::Value::Null,
    }
}
