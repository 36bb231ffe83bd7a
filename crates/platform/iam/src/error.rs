use std::time::Duration;

use gpuaas_kernel::ErrCode;
use gpuaas_store::StoreError;

/// Everything identity and access can refuse or fail with. Messages are safe to show:
/// they never carry a token, password or secret.
#[derive(Debug, thiserror::Error)]
pub enum IamError {
    #[error("no bearer token was presented")]
    TokenMissing,
    #[error("the token has expired")]
    TokenExpired,
    #[error("the token is not valid: {0}")]
    TokenInvalid(String),
    #[error("the credentials were not accepted")]
    InvalidCredentials,
    #[error("too many failed sign-ins; try again later")]
    AccountLocked { retry_after: Duration },
    #[error("the account is disabled")]
    AccountDisabled,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("{0}")]
    FeatureDisabled(String),
    #[error("{0}")]
    OidcFlowInvalid(String),
    #[error("identity provider: {0}")]
    Provider(String),
    #[error(transparent)]
    Policy(#[from] gpuaas_policy::PolicyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Database(#[from] gpuaas_store::sqlx::Error),
    #[error(transparent)]
    Audit(#[from] gpuaas_audit::AuditError),
    #[error("{0}")]
    Internal(String),
}

impl IamError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        IamError::Invalid { field, message: message.into() }
    }

    /// The envelope code this error answers with.
    pub fn code(&self) -> ErrCode {
        match self {
            IamError::TokenMissing => ErrCode::TokenMissing,
            IamError::TokenExpired => ErrCode::TokenExpired,
            IamError::TokenInvalid(_) => ErrCode::TokenInvalid,
            IamError::InvalidCredentials => ErrCode::InvalidCredentials,
            IamError::AccountLocked { .. } => ErrCode::AccountLocked,
            IamError::AccountDisabled => ErrCode::AccountDisabled,
            IamError::Forbidden(_) => ErrCode::Forbidden,
            IamError::NotFound(_) => ErrCode::NotFound,
            IamError::Conflict(_) => ErrCode::Conflict,
            IamError::Invalid { .. } => ErrCode::ValidationError,
            IamError::FeatureDisabled(_) => ErrCode::FeatureDisabled,
            IamError::OidcFlowInvalid(_) => ErrCode::OidcFlowInvalid,
            IamError::Provider(_) => ErrCode::IdentityProviderError,
            IamError::Policy(_)
            | IamError::Audit(_)
            | IamError::Store(_)
            | IamError::Database(_)
            | IamError::Internal(_) => ErrCode::InternalError,
        }
    }
}

impl From<gpuaas_kernel::PageError> for IamError {
    fn from(error: gpuaas_kernel::PageError) -> Self {
        match error {
            gpuaas_kernel::PageError::InvalidCursor => IamError::invalid("cursor", error.to_string()),
            gpuaas_kernel::PageError::InvalidLimit => IamError::invalid("limit", error.to_string()),
        }
    }
}
