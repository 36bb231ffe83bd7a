//! The one error envelope and its stable code catalog.
//!
//! Every non-2xx answer of the platform carries
//! `{"error":{"code","message","correlation_id","details"}}`. Codes are part of the API
//! contract: clients branch on them, so a code is never renamed or reused.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! error_codes {
    ($($variant:ident => ($code:literal, $status:literal, $doc:literal)),+ $(,)?) => {
        /// Stable, machine-readable error codes; each maps to exactly one HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrCode {
            $(#[doc = $doc] $variant,)+
        }

        impl ErrCode {
            pub const ALL: &'static [ErrCode] = &[$(ErrCode::$variant,)+];

            pub const fn as_str(self) -> &'static str {
                match self { $(ErrCode::$variant => $code,)+ }
            }

            pub const fn http_status(self) -> u16 {
                match self { $(ErrCode::$variant => $status,)+ }
            }
        }
    };
}

error_codes! {
    ValidationError => ("validation_error", 400, "A field is missing, malformed or out of range; `details.field` names it."),
    MalformedJson => ("malformed_json", 400, "The body is not valid JSON."),
    UnknownField => ("unknown_field", 400, "The body has a field the endpoint does not accept."),
    IdempotencyKeyInvalid => ("idempotency_key_invalid", 400, "The X-Idempotency-Key header is empty, too long or not printable ASCII."),
    TokenMissing => ("token_missing", 401, "No bearer token was presented."),
    TokenExpired => ("token_expired", 401, "The bearer token has expired."),
    TokenInvalid => ("token_invalid", 401, "The bearer token failed verification."),
    InvalidCredentials => ("invalid_credentials", 401, "The email and password, client credentials or refresh token were not accepted."),
    EnrollmentTokenInvalid => ("enrollment_token_invalid", 401, "The node enrollment token is unknown or was withdrawn."),
    EnrollmentTokenExpired => ("enrollment_token_expired", 401, "The node enrollment token has expired; issue a new one."),
    EnrollmentTokenUsed => ("enrollment_token_used", 401, "The node enrollment token was already used; each token enrolls once."),
    NodeCertificateInvalid => ("node_certificate_invalid", 401, "The node's client certificate is unknown, expired or does not match its node."),
    CertificateRevoked => ("certificate_revoked", 401, "The node's certificate was revoked; the node must enroll again."),
    PaymentAmountOutOfRange => ("payment_amount_out_of_range", 400, "The payment amount is below the minimum or above the maximum policy allows."),
    WebhookSignatureInvalid => ("webhook_signature_invalid", 400, "The webhook's signature header is missing, malformed, stale or does not match the body."),
    OidcFlowInvalid => ("oidc_flow_invalid", 400, "The OIDC state, nonce or code did not match a flow this platform started."),
    InsufficientBalance => ("insufficient_balance", 402, "The tenant's balance is zero or below; top up or ask an operator for credit."),
    AccountDisabled => ("account_disabled", 403, "The account is disabled; an administrator can enable it again."),
    FeatureDisabled => ("feature_disabled", 403, "This feature is switched off by policy or configuration."),
    NodeRetired => ("node_retired", 403, "The node is retired and may no longer connect."),
    Forbidden => ("forbidden", 403, "The caller lacks the permission this action needs."),
    NotFound => ("not_found", 404, "No such resource, or not visible to the caller."),
    RouteNotFound => ("route_not_found", 404, "No endpoint at this path."),
    MethodNotAllowed => ("method_not_allowed", 405, "The endpoint exists but not for this HTTP method."),
    Conflict => ("conflict", 409, "The resource is not in a state that allows this action."),
    SkuUnavailable => ("sku_unavailable", 409, "No active node of that SKU has enough free GPUs right now; try fewer GPUs, another SKU or later."),
    AllocationInvalidTransition => ("allocation_invalid_transition", 409, "The allocation's current status does not allow this action."),
    NodeInUse => ("node_in_use", 409, "The node still holds allocations; release them first."),
    CurrencyMismatch => ("currency_mismatch", 409, "The amount's currency differs from the billing account's currency."),
    IdempotencyKeyInFlight => ("idempotency_key_in_flight", 409, "A request with this idempotency key is still being processed."),
    PayloadTooLarge => ("payload_too_large", 413, "The body is larger than the endpoint accepts."),
    UnsupportedMediaType => ("unsupported_media_type", 415, "The body must be sent as application/json."),
    RefundWindowExceeded => ("refund_window_exceeded", 422, "The credit is older than the refund window policy allows."),
    RefundExceedsRemainder => ("refund_exceeds_remainder", 422, "The refund is larger than what remains refundable of that credit."),
    IdempotencyKeyReused => ("idempotency_key_reused", 422, "This idempotency key was already used with a different request."),
    RateLimited => ("rate_limited", 429, "Too many requests; retry after the time in Retry-After."),
    AllocationLimitReached => ("allocation_limit_reached", 429, "A per-user, per-project or per-tenant cap on concurrent allocations is reached; release one first."),
    AccountLocked => ("account_locked", 429, "Too many failed sign-ins for this account; retry after the time in Retry-After."),
    InternalError => ("internal_error", 500, "An unexpected error; the correlation id finds it in the logs."),
    IdentityProviderError => ("identity_provider_error", 502, "The external identity provider failed or answered something unusable."),
    PaymentsNotConfigured => ("payments_not_configured", 503, "Card payments are not configured on this platform; an operator can credit accounts."),
    PaymentProviderError => ("payment_provider_error", 502, "The payment provider failed or answered something unusable; try again."),
    ServiceUnavailable => ("service_unavailable", 503, "A dependency is unavailable; `details.failing` names it."),
}

impl std::fmt::Display for ErrCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub code: ErrCode,
    /// Human-readable; safe to show to the caller (never SQL, paths or secrets).
    pub message: String,
    pub correlation_id: String,
    /// Structured context, e.g. `{"field": "gpu_count"}`; an empty object when none.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl ErrorResponse {
    pub fn new(code: ErrCode, message: impl Into<String>, correlation_id: impl Into<String>) -> Self {
        Self {
            error: ErrorBody {
                code,
                message: message.into(),
                correlation_id: correlation_id.into(),
                details: serde_json::Value::Object(serde_json::Map::new()),
            },
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.error.details = details;
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_serialize_as_their_string() {
        let mut seen = HashSet::new();
        for code in ErrCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate code {code}");
            assert!(code.as_str().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            let json = serde_json::to_value(code).unwrap_or_default();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
            assert!((400..600).contains(&code.http_status()));
        }
    }

    #[test]
    fn envelope_has_the_documented_shape() {
        let body = ErrorResponse::new(ErrCode::ValidationError, "gpu_count must be positive", "c-1")
            .with_details(serde_json::json!({"field": "gpu_count"}));
        let json = serde_json::to_value(&body).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"error": {
                "code": "validation_error",
                "message": "gpu_count must be positive",
                "correlation_id": "c-1",
                "details": {"field": "gpu_count"}
            }})
        );
    }
}
