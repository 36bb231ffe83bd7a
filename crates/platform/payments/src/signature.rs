//! Stripe webhook signatures, checked before a byte of the body is parsed.
//!
//! Stripe signs `"{t}.{raw body}"` with HMAC-SHA256 under the endpoint's signing secret
//! and sends `Stripe-Signature: t=TIMESTAMP,v1=HEX[,v1=HEX…]`. Several `v1` entries
//! appear while Stripe rolls a secret, and the platform may hold several secrets while
//! an operator rotates them, so any `v1` under any secret is enough.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a signature's timestamp may be from now, either way, in seconds.
pub const DEFAULT_TOLERANCE_SECONDS: i64 = 300;

/// The header Stripe carries the signature in.
pub const SIGNATURE_HEADER: &str = "Stripe-Signature";

/// Why a webhook was refused. Deliberately says nothing about which secret or which
/// signature came close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    MissingHeader,
    #[error("the Stripe-Signature header is malformed")]
    MalformedHeader,
    #[error("the Stripe-Signature header carries no v1 signature")]
    NoV1Signature,
    #[error("the signature timestamp is outside the tolerance")]
    TimestampOutsideTolerance,
    #[error("no signature matches the body")]
    NoMatch,
}

struct ParsedHeader<'a> {
    timestamp: i64,
    timestamp_text: &'a str,
    v1: Vec<&'a str>,
}

fn parse_header(header: &str) -> Result<ParsedHeader<'_>, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let (key, value) = item.trim().split_once('=').ok_or(SignatureError::MalformedHeader)?;
        match key {
            "t" => {
                // Two timestamps would make "which one was signed" ambiguous.
                if timestamp.is_some() || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SignatureError::MalformedHeader);
                }
                let parsed = value.parse::<i64>().map_err(|_| SignatureError::MalformedHeader)?;
                timestamp = Some((parsed, value));
            }
            "v1" => v1.push(value),
            // Other schemes (v0 is Stripe's test-mode scheme) are never trusted.
            _ => {}
        }
    }
    let (timestamp, timestamp_text) = timestamp.ok_or(SignatureError::MalformedHeader)?;
    Ok(ParsedHeader { timestamp, timestamp_text, v1 })
}

/// Verifies a Stripe webhook signature over the raw request body.
///
/// `now` is the current Unix time in seconds; a timestamp more than `tolerance_seconds`
/// in the past (a replay) or in the future is refused before any HMAC is computed.
pub fn verify_signature(
    payload: &[u8],
    header: Option<&str>,
    secrets: &[String],
    now: i64,
    tolerance_seconds: i64,
) -> Result<(), SignatureError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(SignatureError::MissingHeader)?;
    let parsed = parse_header(header)?;
    if parsed.v1.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    if now.abs_diff(parsed.timestamp) > tolerance_seconds.unsigned_abs() {
        return Err(SignatureError::TimestampOutsideTolerance);
    }
    let signatures: Vec<Vec<u8>> = parsed.v1.iter().filter_map(|hex_text| hex::decode(hex_text).ok()).collect();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            continue;
        };
        mac.update(parsed.timestamp_text.as_bytes());
        mac.update(b".");
        mac.update(payload);
        // verify_slice compares in constant time, so timing says nothing about how
        // many leading bytes of a forged signature were right.
        if signatures.iter().any(|signature| mac.clone().verify_slice(signature).is_ok()) {
            return Ok(());
        }
    }
    Err(SignatureError::NoMatch)
}
