use gpuaas_kernel::ErrCode;

/// Everything the node plane can refuse or fail with. Each variant says its code once.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("the node still holds {0} allocated GPUs; release its allocations first")]
    NodeInUse(i64),
    #[error("the node is retired")]
    NodeRetired,
    #[error("the enrollment token is not valid")]
    EnrollmentTokenInvalid,
    #[error("the enrollment token has expired")]
    EnrollmentTokenExpired,
    #[error("the enrollment token was already used")]
    EnrollmentTokenUsed,
    #[error("the client certificate is not a current certificate of a node")]
    CertificateInvalid,
    #[error("the client certificate was revoked")]
    CertificateRevoked,
    #[error(transparent)]
    Pki(#[from] gpuaas_pki::PkiError),
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

impl InventoryError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }

    pub fn code(&self) -> ErrCode {
        match self {
            InventoryError::Invalid { .. } => ErrCode::ValidationError,
            InventoryError::NotFound(_) => ErrCode::NotFound,
            InventoryError::Conflict(_) => ErrCode::Conflict,
            InventoryError::NodeInUse(_) => ErrCode::NodeInUse,
            InventoryError::NodeRetired => ErrCode::NodeRetired,
            InventoryError::EnrollmentTokenInvalid => ErrCode::EnrollmentTokenInvalid,
            InventoryError::EnrollmentTokenExpired => ErrCode::EnrollmentTokenExpired,
            InventoryError::EnrollmentTokenUsed => ErrCode::EnrollmentTokenUsed,
            InventoryError::CertificateInvalid => ErrCode::NodeCertificateInvalid,
            InventoryError::CertificateRevoked => ErrCode::CertificateRevoked,
            InventoryError::Pki(error) if error.is_client_error() => ErrCode::ValidationError,
            InventoryError::Pki(_)
            | InventoryError::Store(_)
            | InventoryError::Database(_)
            | InventoryError::Audit(_)
            | InventoryError::Outbox(_)
            | InventoryError::Policy(_)
            | InventoryError::Corrupt(_) => ErrCode::InternalError,
        }
    }

    /// The request field a validation error is about, for `details.field`.
    pub fn field(&self) -> Option<&str> {
        match self {
            InventoryError::Invalid { field, .. } => Some(field),
            InventoryError::Pki(error) if error.is_client_error() => Some("csr_pem"),
            _ => None,
        }
    }
}

impl From<gpuaas_kernel::PageError> for InventoryError {
    fn from(error: gpuaas_kernel::PageError) -> Self {
        match error {
            gpuaas_kernel::PageError::InvalidCursor => InventoryError::invalid("cursor", error.to_string()),
            gpuaas_kernel::PageError::InvalidLimit => InventoryError::invalid("limit", error.to_string()),
        }
    }
}
