//! Webhook signature verification against headers built the way Stripe documents:
//! `t=TIMESTAMP,v1=HMAC_SHA256(secret, "{t}.{body}")`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use gpuaas_payments::{SignatureError, verify_signature};
use support::{OLD_WEBHOOK_SECRET, WEBHOOK_SECRET, stripe_signature, v1};

const BODY: &[u8] = br#"{"id":"evt_1","object":"event","type":"checkout.session.completed"}"#;
const NOW: i64 = 1_700_000_000;
const TOLERANCE: i64 = 300;

fn secrets() -> Vec<String> {
    vec![WEBHOOK_SECRET.to_owned()]
}

fn check(body: &[u8], header: Option<&str>, secrets: &[String]) -> Result<(), SignatureError> {
    verify_signature(body, header, secrets, NOW, TOLERANCE)
}

#[test]
fn a_valid_signature_is_accepted() {
    let header = stripe_signature(BODY, WEBHOOK_SECRET, NOW);
    assert_eq!(check(BODY, Some(&header), &secrets()), Ok(()));
    // Within the tolerance either way.
    let header = stripe_signature(BODY, WEBHOOK_SECRET, NOW - 299);
    assert_eq!(check(BODY, Some(&header), &secrets()), Ok(()));
    let header = stripe_signature(BODY, WEBHOOK_SECRET, NOW + 299);
    assert_eq!(check(BODY, Some(&header), &secrets()), Ok(()));
}

#[test]
fn a_header_signed_with_the_previous_secret_passes_during_rotation() {
    let rotated = vec![WEBHOOK_SECRET.to_owned(), OLD_WEBHOOK_SECRET.to_owned()];
    let header = stripe_signature(BODY, OLD_WEBHOOK_SECRET, NOW);
    assert_eq!(check(BODY, Some(&header), &rotated), Ok(()));
    // Once the old secret is dropped, the old signature no longer passes.
    assert_eq!(check(BODY, Some(&header), &secrets()), Err(SignatureError::NoMatch));
}

#[test]
fn any_of_several_v1_signatures_may_match() {
    // Stripe sends one v1 per active endpoint secret while it rolls one; a v0 test
    // signature is ignored.
    let header = format!(
        "t={NOW},v1={},v1={},v0={}",
        v1(BODY, "whsec_unknown_to_us", NOW),
        v1(BODY, WEBHOOK_SECRET, NOW),
        v1(BODY, "whsec_v0", NOW)
    );
    assert_eq!(check(BODY, Some(&header), &secrets()), Ok(()));
}

#[test]
fn a_v0_signature_alone_is_not_enough() {
    let header = format!("t={NOW},v0={}", v1(BODY, WEBHOOK_SECRET, NOW));
    assert_eq!(check(BODY, Some(&header), &secrets()), Err(SignatureError::NoV1Signature));
}

#[test]
fn stale_and_future_timestamps_are_refused() {
    let stale = stripe_signature(BODY, WEBHOOK_SECRET, NOW - 301);
    assert_eq!(check(BODY, Some(&stale), &secrets()), Err(SignatureError::TimestampOutsideTolerance));
    let future = stripe_signature(BODY, WEBHOOK_SECRET, NOW + 301);
    assert_eq!(check(BODY, Some(&future), &secrets()), Err(SignatureError::TimestampOutsideTolerance));
}

#[test]
fn a_tampered_body_is_refused() {
    let header = stripe_signature(BODY, WEBHOOK_SECRET, NOW);
    let tampered = br#"{"id":"evt_1","object":"event","type":"checkout.session.completed" }"#;
    assert_eq!(check(tampered, Some(&header), &secrets()), Err(SignatureError::NoMatch));
}

#[test]
fn a_changed_timestamp_is_refused() {
    // The timestamp is signed too: moving it to dodge the tolerance breaks the MAC.
    let signature = v1(BODY, WEBHOOK_SECRET, NOW - 1000);
    let header = format!("t={NOW},v1={signature}");
    assert_eq!(check(BODY, Some(&header), &secrets()), Err(SignatureError::NoMatch));
}

#[test]
fn a_missing_header_is_refused() {
    assert_eq!(check(BODY, None, &secrets()), Err(SignatureError::MissingHeader));
    assert_eq!(check(BODY, Some("   "), &secrets()), Err(SignatureError::MissingHeader));
}

#[test]
fn malformed_headers_are_refused() {
    let signature = v1(BODY, WEBHOOK_SECRET, NOW);
    let no_timestamp = format!("v1={signature}");
    assert_eq!(check(BODY, Some(&no_timestamp), &secrets()), Err(SignatureError::MalformedHeader));
    let non_numeric = format!("t=yesterday,v1={signature}");
    assert_eq!(check(BODY, Some(&non_numeric), &secrets()), Err(SignatureError::MalformedHeader));
    let negative = format!("t=-{NOW},v1={signature}");
    assert_eq!(check(BODY, Some(&negative), &secrets()), Err(SignatureError::MalformedHeader));
    let twice = format!("t={NOW},t={NOW},v1={signature}");
    assert_eq!(check(BODY, Some(&twice), &secrets()), Err(SignatureError::MalformedHeader));
    assert_eq!(check(BODY, Some("garbage"), &secrets()), Err(SignatureError::MalformedHeader));
    assert_eq!(check(BODY, Some("t=1,,v1=ab"), &secrets()), Err(SignatureError::MalformedHeader));
    let no_v1 = format!("t={NOW}");
    assert_eq!(check(BODY, Some(&no_v1), &secrets()), Err(SignatureError::NoV1Signature));
    let not_hex = format!("t={NOW},v1=zz{signature}");
    assert_eq!(check(BODY, Some(&not_hex), &secrets()), Err(SignatureError::NoMatch));
}

#[test]
fn a_wrong_secret_is_refused() {
    let header = stripe_signature(BODY, "whsec_attacker", NOW);
    assert_eq!(check(BODY, Some(&header), &secrets()), Err(SignatureError::NoMatch));
    // No secrets at all never verifies anything.
    let header = stripe_signature(BODY, WEBHOOK_SECRET, NOW);
    assert_eq!(check(BODY, Some(&header), &[]), Err(SignatureError::NoMatch));
    // An unset (empty) secret must not turn into an HMAC key anyone can guess.
    let empty_key = stripe_signature(BODY, "", NOW);
    assert_eq!(check(BODY, Some(&empty_key), &[String::new()]), Err(SignatureError::NoMatch));
}

#[test]
fn a_truncated_signature_is_refused() {
    let signature = v1(BODY, WEBHOOK_SECRET, NOW);
    let header = format!("t={NOW},v1={}", &signature[..32]);
    assert_eq!(check(BODY, Some(&header), &secrets()), Err(SignatureError::NoMatch));
}
