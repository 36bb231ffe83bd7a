//! A JSON extractor whose rejections are envelope errors that name the problem.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use gpuaas_kernel::ErrCode;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// Like `axum::Json`, but every rejection is a clear 4xx in the envelope: 415 without a
/// JSON content type, 413 over the body limit, 400 `malformed_json` for syntax errors,
/// 400 `unknown_field` or `validation_error` (with the field) for shape errors. Request
/// types should use `#[serde(deny_unknown_fields)]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(map_rejection(rejection)),
        }
    }
}

fn map_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::new(ErrCode::UnsupportedMediaType, "send the body as application/json")
        }
        JsonRejection::JsonSyntaxError(error) => {
            ApiError::new(ErrCode::MalformedJson, format!("body is not valid JSON: {}", source_text(&error)))
        }
        JsonRejection::JsonDataError(error) => {
            let text = source_text(&error);
            match unknown_field_name(&text) {
                Some(field) => ApiError::new(ErrCode::UnknownField, format!("unknown field `{field}`"))
                    .with_details(serde_json::json!({ "field": field })),
                None => {
                    // serde names a missing top-level field only inside its message
                    // ("missing field `reason` at line 1 column 9"); nested errors
                    // start with their path ("items[0].name: ...").
                    let field = match missing_field_name(&text) {
                        Some(field) if !text.contains(": missing field") => field,
                        _ => text.split(':').next().unwrap_or_default().trim().to_owned(),
                    };
                    let mut error = ApiError::new(ErrCode::ValidationError, format!("invalid body: {text}"));
                    if !field.is_empty() && !field.contains(' ') {
                        error = error.with_details(serde_json::json!({ "field": field }));
                    }
                    error
                }
            }
        }
        JsonRejection::BytesRejection(error) => {
            if error.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrCode::PayloadTooLarge, "request body is larger than this endpoint accepts")
            } else {
                ApiError::new(ErrCode::ValidationError, "request body could not be read")
            }
        }
        other => ApiError::new(ErrCode::ValidationError, other.body_text()),
    }
}

/// The innermost cause, which carries serde's message with the field path.
fn source_text(error: &dyn std::error::Error) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

fn missing_field_name(text: &str) -> Option<String> {
    let rest = text.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

fn unknown_field_name(text: &str) -> Option<String> {
    let rest = text.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_owned())
}
