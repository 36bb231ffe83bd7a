use gpuaas_kernel::ErrCode;

use crate::SignatureError;

/// Everything payments can refuse or fail with. Each variant says its code once.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("the amount must be between {min} and {max} minor units")]
    AmountOutOfRange { min: i64, max: i64 },
    #[error("webhook refused: {0}")]
    Signature(#[from] SignatureError),
    #[error("card payments are not configured")]
    NotConfigured,
    #[error("payment provider failed: {0}")]
    Provider(String),
    #[error("the billing account is kept in {account}, not {requested}")]
    CurrencyMismatch { account: String, requested: String },
    #[error("the credit is older than the refund window of {days} days")]
    RefundWindowExceeded { days: i64 },
    #[error("only {remaining} minor units of this credit remain refundable")]
    RefundExceedsRemainder { remaining: i64 },
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

impl PaymentsError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }

    pub fn code(&self) -> ErrCode {
        match self {
            PaymentsError::Invalid { .. } => ErrCode::ValidationError,
            PaymentsError::NotFound(_) => ErrCode::NotFound,
            PaymentsError::AmountOutOfRange { .. } => ErrCode::PaymentAmountOutOfRange,
            PaymentsError::Signature(_) => ErrCode::WebhookSignatureInvalid,
            PaymentsError::NotConfigured => ErrCode::PaymentsNotConfigured,
            PaymentsError::Provider(_) => ErrCode::PaymentProviderError,
            PaymentsError::CurrencyMismatch { .. } => ErrCode::CurrencyMismatch,
            PaymentsError::RefundWindowExceeded { .. } => ErrCode::RefundWindowExceeded,
            PaymentsError::RefundExceedsRemainder { .. } => ErrCode::RefundExceedsRemainder,
            PaymentsError::Billing(error) => error.code(),
            PaymentsError::Store(_)
            | PaymentsError::Database(_)
            | PaymentsError::Audit(_)
            | PaymentsError::Outbox(_)
            | PaymentsError::Policy(_)
            | PaymentsError::Corrupt(_) => ErrCode::InternalError,
        }
    }

    /// The request field a validation error is about, for `details.field`.
    pub fn field(&self) -> Option<&str> {
        match self {
            PaymentsError::Invalid { field, .. } => Some(field),
            PaymentsError::AmountOutOfRange { .. } => Some("amount_minor"),
            PaymentsError::CurrencyMismatch { .. } => Some("currency"),
            PaymentsError::Billing(error) => error.field(),
            _ => None,
        }
    }
}

impl From<gpuaas_kernel::PageError> for PaymentsError {
    fn from(error: gpuaas_kernel::PageError) -> Self {
        match error {
            gpuaas_kernel::PageError::InvalidCursor => PaymentsError::invalid("cursor", error.to_string()),
            gpuaas_kernel::PageError::InvalidLimit => PaymentsError::invalid("limit", error.to_string()),
        }
    }
}
