//! Audit rows for node-plane changes, built in one place so every row names its actor
//! the same way.

use gpuaas_audit::{ActorType, AuditResult, NewAuditLog};

/// Who asked for a change, as the HTTP layer authenticated them.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: String,
    pub actor_type: ActorType,
    pub role: String,
    pub tenant_id: Option<String>,
    pub correlation_id: String,
}

impl Actor {
    /// A node acting with its certificate (enrollment, refusals).
    pub fn node(node_id: &str, correlation_id: &str) -> Self {
        Self {
            id: node_id.into(),
            actor_type: ActorType::System,
            role: "node".into(),
            tenant_id: None,
            correlation_id: correlation_id.into(),
        }
    }

    /// The platform itself (offline detection, sweeps).
    pub fn system() -> Self {
        Self {
            id: "system".into(),
            actor_type: ActorType::System,
            role: "system".into(),
            tenant_id: None,
            correlation_id: String::new(),
        }
    }

    pub fn entry(&self, action: &str, target: String, details: serde_json::Value) -> NewAuditLog {
        NewAuditLog {
            actor_id: self.id.clone(),
            actor_type: self.actor_type,
            actor_role: self.role.clone(),
            action: action.into(),
            target,
            tenant_id: self.tenant_id.clone(),
            result: AuditResult::Success,
            correlation_id: self.correlation_id.clone(),
            details,
        }
    }
}
