use gpuaas_kernel::{ErrCode, PageError};

/// Everything billing can refuse or fail with. Each variant says its code once.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("the billing account is kept in {account}; an amount in {given} cannot be posted to it")]
    CurrencyMismatch { account: String, given: String },
    #[error("{0}")]
    IdempotencyConflict(String),
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error(transparent)]
    Store(#[from] gpuaas_store::StoreError),
    #[error(transparent)]
    Database(#[from] gpuaas_store::sqlx::Error),
    #[error(transparent)]
    Outbox(#[from] gpuaas_outbox::OutboxError),
    #[error("stored billing data is corrupt: {0}")]
    Corrupt(String),
}

impl BillingError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }

    pub fn code(&self) -> ErrCode {
        match self {
            BillingError::Invalid { .. } => ErrCode::ValidationError,
            BillingError::CurrencyMismatch { .. } => ErrCode::CurrencyMismatch,
            BillingError::IdempotencyConflict(_) => ErrCode::Conflict,
            BillingError::NotFound(_) => ErrCode::NotFound,
            BillingError::Store(_) | BillingError::Database(_) | BillingError::Outbox(_) | BillingError::Corrupt(_) => {
                ErrCode::InternalError
            }
        }
    }

    /// The request field an error is about, for `details.field`.
    pub fn field(&self) -> Option<&str> {
        match self {
            BillingError::Invalid { field, .. } => Some(field),
            BillingError::CurrencyMismatch { .. } => Some("currency"),
            BillingError::IdempotencyConflict(_) => Some("idempotency_key"),
            _ => None,
        }
    }
}

impl From<PageError> for BillingError {
    fn from(error: PageError) -> Self {
        match error {
            PageError::InvalidCursor => BillingError::invalid("cursor", error.to_string()),
            PageError::InvalidLimit => BillingError::invalid("limit", error.to_string()),
        }
    }
}
