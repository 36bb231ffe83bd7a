use gpuaas_kernel::ErrCode;

use crate::AllocationStatus;

/// Everything allocations can refuse or fail with. Each variant says its code once.
#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("the balance is {balance_minor} {currency}; top up before creating an allocation")]
    InsufficientBalance { balance_minor: i64, currency: String },
    #[error("{0}")]
    LimitReached(String),
    #[error("no active node of SKU {0} has enough free GPUs")]
    SkuUnavailable(String),
    #[error("an allocation that is {from} cannot become {to}")]
    InvalidTransition { from: AllocationStatus, to: AllocationStatus },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Inventory(#[from] gpuaas_inventory::InventoryError),
    #[error(transparent)]
    Billing(#[from] gpuaas_billing::BillingError),
    #[error(transparent)]
    Store(#[from] gpuaas_store::StoreError),
    #[error(transparent)]
    Database(#[from] gpuaas_store::sqlx::Error),
    #[error(transparent)]
    Audit(#[from] gpuaas_audit::AuditError),
    #[error(transparent)]
    Outbox(#[from] gpuaas_outbox::OutboxError),
    #[error(transparent)]
    Policy(#[from] gpuaas_policy::PolicyError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl AllocationError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }

    pub fn code(&self) -> ErrCode {
        match self {
            AllocationError::Invalid { .. } => ErrCode::ValidationError,
            AllocationError::NotFound(_) => ErrCode::NotFound,
            AllocationError::InsufficientBalance { .. } => ErrCode::InsufficientBalance,
            AllocationError::LimitReached(_) => ErrCode::AllocationLimitReached,
            AllocationError::SkuUnavailable(_) => ErrCode::SkuUnavailable,
            AllocationError::InvalidTransition { .. } => ErrCode::AllocationInvalidTransition,
            AllocationError::Conflict(_) => ErrCode::Conflict,
            AllocationError::Inventory(error) => error.code(),
            AllocationError::Billing(error) => error.code(),
            AllocationError::Store(_)
            | AllocationError::Database(_)
            | AllocationError::Audit(_)
            | AllocationError::Outbox(_)
            | AllocationError::Policy(_)
            | AllocationError::Corrupt(_) => ErrCode::InternalError,
        }
    }

    /// The request field a validation error is about, for `details.field`.
    pub fn field(&self) -> Option<&str> {
        match self {
            AllocationError::Invalid { field, .. } => Some(field),
            AllocationError::Inventory(error) => error.field(),
            AllocationError::Billing(error) => error.field(),
            _ => None,
        }
    }
}

impl From<gpuaas_kernel::PageError> for AllocationError {
    fn from(error: gpuaas_kernel::PageError) -> Self {
        match error {
            gpuaas_kernel::PageError::InvalidCursor => AllocationError::invalid("cursor", error.to_string()),
            gpuaas_kernel::PageError::InvalidLimit => AllocationError::invalid("limit", error.to_string()),
        }
    }
}
