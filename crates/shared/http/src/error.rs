//! The one mapping from errors to HTTP responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gpuaas_kernel::{ErrCode, ErrorResponse};

use crate::correlation::current_correlation_id;

/// An error on its way to the client. Domain crates convert their own error enums into
/// this with `From`, choosing a code; the message must be safe to show.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: ErrCode,
    pub message: String,
    pub details: serde_json::Value,
}

impl ApiError {
    pub fn new(code: ErrCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: serde_json::json!({}) }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// A 400 naming the offending field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrCode::ValidationError, message).with_details(serde_json::json!({ "field": field }))
    }

    /// A 500 whose cause is logged with the correlation id and never sent to the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrCode::InternalError, "internal error; quote the correlation id to support")
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<gpuaas_store::StoreError> for ApiError {
    fn from(error: gpuaas_store::StoreError) -> Self {
        ApiError::internal(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorResponse::new(self.code, self.message, current_correlation_id()).with_details(self.details);
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, bytes).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// Last line of defence: any error response that did not come from [`ApiError`] (a
/// framework rejection, a layer's bare status) is rewritten into the envelope, so
/// clients only ever see one error shape.
pub async fn envelope_guard(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return response;
    }
    let code = match status {
        StatusCode::NOT_FOUND => ErrCode::RouteNotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrCode::UnsupportedMediaType,
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => ErrCode::ValidationError,
        StatusCode::TOO_MANY_REQUESTS => ErrCode::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => ErrCode::ServiceUnavailable,
        StatusCode::CONFLICT => ErrCode::Conflict,
        StatusCode::FORBIDDEN => ErrCode::Forbidden,
        StatusCode::UNAUTHORIZED => ErrCode::TokenInvalid,
        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => ErrCode::ServiceUnavailable,
        status if status.is_server_error() => ErrCode::InternalError,
        _ => ErrCode::ValidationError,
    };
    let (parts, _body) = response.into_parts();
    let message = status.canonical_reason().unwrap_or("request failed").to_ascii_lowercase();
    let mut rewritten = ApiError::new(code, message).into_response();
    // Keep headers such as Allow or Retry-After that the original response set.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    *rewritten.status_mut() = status;
    rewritten
}
