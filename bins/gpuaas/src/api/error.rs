//! The one mapping from domain errors to the HTTP error envelope.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use gpuaas_http::ApiError;
use gpuaas_iam::IamError;
use gpuaas_kernel::ErrCode;

/// What handlers return on failure: an envelope error, plus `Retry-After` when the
/// caller should wait.
#[derive(Debug)]
pub struct HandlerError {
    pub error: ApiError,
    pub retry_after_seconds: Option<u64>,
}

pub type HandlerResult<T> = Result<T, HandlerError>;

impl From<ApiError> for HandlerError {
    fn from(error: ApiError) -> Self {
        Self { error, retry_after_seconds: None }
    }
}

impl From<IamError> for HandlerError {
    fn from(error: IamError) -> Self {
        let code = error.code();
        let api = match &error {
            IamError::Invalid { field, message } => ApiError::invalid_field(field, message.clone()),
            _ if code == ErrCode::InternalError => ApiError::internal(&error),
            _ if code == ErrCode::IdentityProviderError => {
                tracing::warn!(%error, "identity provider failure");
                ApiError::new(code, "the identity provider failed; try again later")
            }
            _ => ApiError::new(code, error.to_string()),
        };
        let retry_after_seconds = match error {
            IamError::AccountLocked { retry_after } => Some(retry_after.as_secs().max(1)),
            _ => None,
        };
        Self { error: api, retry_after_seconds }
    }
}

impl From<gpuaas_audit::AuditError> for HandlerError {
    fn from(error: gpuaas_audit::AuditError) -> Self {
        use gpuaas_audit::AuditError as E;
        let api = match &error {
            E::InvalidCursor => ApiError::invalid_field("cursor", error.to_string()),
            E::InvalidLimit => ApiError::invalid_field("limit", error.to_string()),
            E::InvalidFilter(message) => ApiError::new(ErrCode::ValidationError, message.clone()),
            _ => ApiError::internal(&error),
        };
        api.into()
    }
}

impl IntoResponse for HandlerError {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        if let Some(seconds) = self.retry_after_seconds
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// The mapping shared by domain errors that name their code and, where they are
/// about one, the request field: a 500 keeps its cause in the logs, anything else
/// says what went wrong under its own code (`currency_mismatch` naming `currency`
/// stays a 409, not a `validation_error`).
fn from_domain(code: ErrCode, field: Option<&str>, error: &dyn std::fmt::Display) -> HandlerError {
    let api = match field {
        _ if code == ErrCode::InternalError => ApiError::internal(error),
        Some(field) => ApiError::new(code, error.to_string()).with_details(serde_json::json!({ "field": field })),
        None => ApiError::new(code, error.to_string()),
    };
    api.into()
}

impl From<gpuaas_inventory::InventoryError> for HandlerError {
    fn from(error: gpuaas_inventory::InventoryError) -> Self {
        from_domain(error.code(), error.field(), &error)
    }
}

impl From<gpuaas_billing::BillingError> for HandlerError {
    fn from(error: gpuaas_billing::BillingError) -> Self {
        from_domain(error.code(), error.field(), &error)
    }
}

impl From<gpuaas_payments::PaymentsError> for HandlerError {
    fn from(error: gpuaas_payments::PaymentsError) -> Self {
        from_domain(error.code(), error.field(), &error)
    }
}

impl From<gpuaas_allocations::AllocationError> for HandlerError {
    fn from(error: gpuaas_allocations::AllocationError) -> Self {
        from_domain(error.code(), error.field(), &error)
    }
}
