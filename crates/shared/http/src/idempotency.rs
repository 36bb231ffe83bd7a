//! `X-Idempotency-Key` for POST, PUT, PATCH and DELETE.
//!
//! The first request with a key claims it (`in_flight`) in the database, runs, and
//! stores its response; a retry with the same key and the same request replays that
//! response; the same key with a different request is 422; a retry while the first is
//! still running is 409. Keys are scoped per principal, so two callers never see each
//! other's responses, and kept for the policy's TTL. 5xx responses are not stored: the
//! key is released so the client can retry.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gpuaas_kernel::{ErrCode, Timestamp};
use gpuaas_store::Store;
use gpuaas_store::sqlx::{self, Row};
use sha2::{Digest, Sha256};

use crate::{ApiError, Principal};

pub const HEADER: HeaderName = HeaderName::from_static("x-idempotency-key");
pub const REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");
const MAX_KEY_LEN: usize = 255;
/// Responses larger than this are not stored for replay (the key is released instead).
const MAX_STORED_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct IdempotencySettings {
    pub ttl: Duration,
    /// After this an unfinished request (a crashed process) no longer blocks its key.
    pub in_flight_timeout: Duration,
    pub max_body_bytes: usize,
}

/// Where the settings come from (policy, in the running platform).
#[async_trait]
pub trait IdempotencySettingsSource: Send + Sync {
    async fn idempotency_settings(&self) -> Result<IdempotencySettings, ApiError>;
}

#[async_trait]
impl IdempotencySettingsSource for IdempotencySettings {
    async fn idempotency_settings(&self) -> Result<IdempotencySettings, ApiError> {
        Ok(*self)
    }
}

#[derive(Clone)]
pub struct IdempotencyState {
    pub store: Store,
    pub settings: Arc<dyn IdempotencySettingsSource>,
}

enum Claim {
    Proceed,
    Replay(Response),
}

pub async fn layer(State(state): State<IdempotencyState>, request: Request, next: Next) -> Response {
    match handle(state, request, next).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle(state: IdempotencyState, request: Request, next: Next) -> Result<Response, ApiError> {
    let applies = matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    let Some(raw_key) = request.headers().get(&HEADER).cloned() else {
        return Ok(next.run(request).await);
    };
    if !applies {
        return Ok(next.run(request).await);
    }
    let key = parse_key(&raw_key)?;
    let settings = state.settings.idempotency_settings().await?;
    let principal =
        request.extensions().get::<Principal>().map(|p| p.id.clone()).unwrap_or_else(|| Principal::ANONYMOUS.into());

    let (parts, body) = request.into_parts();
    let body = to_bytes(body, settings.max_body_bytes)
        .await
        .map_err(|_| ApiError::new(ErrCode::PayloadTooLarge, "request body is larger than this endpoint accepts"))?;
    let request_hash = {
        let mut hasher = Sha256::new();
        hasher.update(parts.method.as_str().as_bytes());
        hasher.update(b"\n");
        hasher.update(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("").as_bytes());
        hasher.update(b"\n");
        hasher.update(&body);
        hex::encode(hasher.finalize())
    };

    if let Claim::Replay(response) = claim(&state.store, &principal, &key, &request_hash, &settings).await? {
        return Ok(response);
    }

    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    finish(&state.store, &principal, &key, &settings, response).await
}

fn parse_key(raw: &HeaderValue) -> Result<String, ApiError> {
    let invalid =
        || ApiError::new(ErrCode::IdempotencyKeyInvalid, "X-Idempotency-Key must be 1-255 printable ASCII characters");
    let key = raw.to_str().map_err(|_| invalid())?.trim();
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(key.to_owned())
}

async fn claim(
    store: &Store,
    principal: &str,
    key: &str,
    request_hash: &str,
    settings: &IdempotencySettings,
) -> Result<Claim, ApiError> {
    let now = Timestamp::now();
    let locked_until = now.saturating_add(settings.in_flight_timeout).as_micros();
    let expires_at = now.saturating_add(settings.ttl).as_micros();
    let mut tx = store.begin().await?;
    let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT request_hash, status, response_status, response_content_type, response_body, locked_until, expires_at \
         FROM idempotency_keys WHERE principal = $1 AND idempotency_key = $2{}",
        if store.dialect() == gpuaas_store::Dialect::Postgres { " FOR UPDATE" } else { "" }
    )))
    .bind(principal)
    .bind(key)
    .fetch_optional(&mut *tx)
    .await
    .map_err(ApiError::internal)?;

    match existing {
        None => {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (principal, idempotency_key, request_hash, status, created_at, \
                 locked_until, expires_at) VALUES ($1, $2, $3, 'in_flight', $4, $5, $6) \
                 ON CONFLICT (principal, idempotency_key) DO NOTHING",
            )
            .bind(principal)
            .bind(key)
            .bind(request_hash)
            .bind(now.as_micros())
            .bind(locked_until)
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
            tx.commit().await.map_err(ApiError::internal)?;
            if inserted.rows_affected() == 0 {
                // Another request claimed the key between our read and our insert.
                return Err(in_flight());
            }
            Ok(Claim::Proceed)
        }
        Some(row) => {
            let stored_hash: String = row.try_get("request_hash").map_err(ApiError::internal)?;
            let status: String = row.try_get("status").map_err(ApiError::internal)?;
            let row_locked_until: i64 = row.try_get("locked_until").map_err(ApiError::internal)?;
            let row_expires_at: i64 = row.try_get("expires_at").map_err(ApiError::internal)?;
            let expired = row_expires_at <= now.as_micros();
            let stale = status == "in_flight" && row_locked_until <= now.as_micros();
            if expired || stale {
                if !expired && stored_hash != request_hash {
                    return Err(reused());
                }
                // The old entry no longer counts: take the key over for this request.
                sqlx::query(
                    "UPDATE idempotency_keys SET request_hash = $1, status = 'in_flight', response_status = NULL, \
                     response_content_type = NULL, response_body = NULL, created_at = $2, locked_until = $3, \
                     expires_at = $4 WHERE principal = $5 AND idempotency_key = $6",
                )
                .bind(request_hash)
                .bind(now.as_micros())
                .bind(locked_until)
                .bind(expires_at)
                .bind(principal)
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(ApiError::internal)?;
                tx.commit().await.map_err(ApiError::internal)?;
                return Ok(Claim::Proceed);
            }
            tx.commit().await.map_err(ApiError::internal)?;
            if stored_hash != request_hash {
                return Err(reused());
            }
            if status == "in_flight" {
                return Err(in_flight());
            }
            let status_code: i64 = row.try_get("response_status").map_err(ApiError::internal)?;
            let content_type: Option<String> = row.try_get("response_content_type").map_err(ApiError::internal)?;
            let body: Vec<u8> = row.try_get("response_body").map_err(ApiError::internal)?;
            let status_code = u16::try_from(status_code)
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::OK);
            let mut response = (status_code, body).into_response();
            if let Some(value) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
            Ok(Claim::Replay(response))
        }
    }
}

async fn finish(
    store: &Store,
    principal: &str,
    key: &str,
    settings: &IdempotencySettings,
    response: Response,
) -> Result<Response, ApiError> {
    let status = response.status();
    if status.is_server_error() {
        release(store, principal, key).await;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_STORED_RESPONSE_BYTES).await else {
        release(store, principal, key).await;
        return Err(ApiError::internal("response too large to store for idempotent replay"));
    };
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let expires_at = Timestamp::now().saturating_add(settings.ttl).as_micros();
    let stored = sqlx::query(
        "UPDATE idempotency_keys SET status = 'completed', response_status = $1, response_content_type = $2, \
         response_body = $3, expires_at = $4 WHERE principal = $5 AND idempotency_key = $6",
    )
    .bind(i64::from(status.as_u16()))
    .bind(content_type)
    .bind(bytes.to_vec())
    .bind(expires_at)
    .bind(principal)
    .bind(key)
    .execute(store.pool())
    .await;
    if let Err(error) = stored {
        // The work is done; failing the response now would invite a duplicate retry.
        tracing::error!(%error, "could not store idempotent response");
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

async fn release(store: &Store, principal: &str, key: &str) {
    let result = sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND idempotency_key = $2")
        .bind(principal)
        .bind(key)
        .execute(store.pool())
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "could not release idempotency key");
    }
}

/// Deletes entries past their TTL; run periodically by the workers role.
pub async fn purge_expired(store: &Store) -> Result<u64, gpuaas_store::StoreError> {
    let result = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
        .bind(Timestamp::now().as_micros())
        .execute(store.pool())
        .await?;
    Ok(result.rows_affected())
}

fn reused() -> ApiError {
    ApiError::new(ErrCode::IdempotencyKeyReused, "this idempotency key was already used with a different request")
}

fn in_flight() -> ApiError {
    ApiError::new(ErrCode::IdempotencyKeyInFlight, "a request with this idempotency key is still in progress")
}
