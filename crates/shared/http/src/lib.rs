//! HTTP plumbing shared by every route: the error type mapped once to the envelope, the
//! JSON extractor that names bad input, correlation ids, request metrics and tracing,
//! the idempotency middleware and per-principal rate limiting.
//!
//! Handlers stay thin: parse with [`ApiJson`], call the domain, return `Result<_, ApiError>`.
//! This crate owns `idempotency_keys`; it must never hold business rules.

pub mod correlation;
pub mod error;
pub mod idempotency;
pub mod json;
pub mod principal;
pub mod ratelimit;

pub use correlation::{CorrelationId, current_correlation_id};
pub use error::ApiError;
use gpuaas_store::Migration;
pub use json::ApiJson;
pub use principal::Principal;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 2026112304,
    name: "idempotency_keys",
    sqlite: include_str!("../migrations/2026112304_idempotency_keys.sqlite.sql"),
    postgres: include_str!("../migrations/2026112304_idempotency_keys.postgres.sql"),
}];
