//! Node enrollment and certificate authentication on both databases: a one-time token
//! buys exactly one certificate bound to the node's id, and only current certificates
//! of live nodes authenticate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use gpuaas_testkit::assert_err;

use std::time::Duration;

use gpuaas_inventory::nodes::NODE_ENROLLED_SUBJECT;
use gpuaas_inventory::{InventoryError, NodeStatus, nodes};
use gpuaas_kernel::{ErrCode, Timestamp};
use gpuaas_nodeagent_protocol::PROTOCOL_VERSION;
use gpuaas_nodeagent_protocol::wire::RenewRequest;
use gpuaas_pki::{BuiltinCa, CaClient, PeerCertificate, PkiError};
use gpuaas_policy::keys;
use gpuaas_store::sqlx;
use gpuaas_testkit::{Backend, both_backends};
use support::{CORR, csr, enroll_request, enrolled, env, node_events, operator, peer_of, register, sku};

async fn enrollment_spends_the_token_once(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let registered = register(&env, "gpu-01", "h100-x8").await;
    let node_id = registered.node.id.clone();
    let token = registered.enrollment.token.clone();

    let response = env.plane.enroll(&enroll_request(&token, "gpu-01.dc1.example"), CORR).await.unwrap();
    assert_eq!(response.node_id, node_id);
    assert_eq!(response.ca_certificate_pem, env.plane.ca_certificate_pem());
    assert_eq!(response.internal_url, support::INTERNAL_URL);
    assert_eq!(response.task_signing_public_key, env.plane.task_signing_public_key());
    assert_eq!(response.protocol_version, PROTOCOL_VERSION);
    assert_eq!(response.heartbeat_interval_seconds, 15);
    assert!(response.certificate_expires_at > Timestamp::now());

    let peer = peer_of(&response.certificate_pem);
    assert_eq!(peer.node_id, node_id, "the certificate names the node the token was issued for");
    assert_eq!(peer.not_after, response.certificate_expires_at);
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT fingerprint, node_id FROM node_certificates").fetch_all(env.store.pool()).await.unwrap();
    assert_eq!(stored, [(peer.fingerprint.clone(), node_id.clone())]);

    let view = nodes::get(&env.store, &node_id).await.unwrap();
    assert_eq!(view.status, NodeStatus::Active);
    assert!(view.enrolled_at.is_some() && view.last_heartbeat_at.is_some());
    assert_eq!(view.agent_version.as_deref(), Some(support::AGENT_VERSION));
    assert_eq!(node_events(&env.store, NODE_ENROLLED_SUBJECT, &node_id).await, 1);
    let audit = support::audit_rows(&env.store, "node.enroll").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor_id, node_id);
    assert_eq!(audit[0].actor_role, "node");
    assert_eq!(audit[0].details["certificate_fingerprint"], peer.fingerprint);
    assert!(!audit[0].details.to_string().contains(token.trim_start_matches("gpe_")));

    let used = assert_err!(
        env.plane.enroll(&enroll_request(&token, "gpu-01"), CORR).await,
        InventoryError::EnrollmentTokenUsed
    );
    assert_eq!(used.code(), ErrCode::EnrollmentTokenUsed);
    let unknown = assert_err!(
        env.plane.enroll(&enroll_request("gpe_not-a-token-anyone-issued", "gpu-01"), CORR).await,
        InventoryError::EnrollmentTokenInvalid
    );
    assert_eq!(unknown.code(), ErrCode::EnrollmentTokenInvalid);
    assert_err!(env.plane.enroll(&enroll_request("", "gpu-01"), CORR).await, InventoryError::EnrollmentTokenInvalid);
    assert_err!(
        env.plane.enroll(&enroll_request(&"x".repeat(129), "gpu-01"), CORR).await,
        InventoryError::EnrollmentTokenInvalid
    );
    let certificates: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM node_certificates").fetch_one(env.store.pool()).await.unwrap();
    assert_eq!(certificates, 1, "refused enrollments issue nothing");
}

async fn malformed_requests_leave_the_token_unspent(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let registered = register(&env, "gpu-01", "h100-x8").await;
    let token = registered.enrollment.token.clone();

    let mut garbage = enroll_request(&token, "gpu-01");
    garbage.csr_pem = "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n".into();
    let error = assert_err!(env.plane.enroll(&garbage, CORR).await, InventoryError::Pki(PkiError::InvalidCsr(_)));
    assert_eq!(error.code(), ErrCode::ValidationError, "the requester's fault, not the server's");
    assert_eq!(error.field(), Some("csr_pem"));

    // A real CSR altered in transit fails its signature check.
    let mut tampered = enroll_request(&token, "gpu-01");
    let body_start = tampered.csr_pem.find('\n').unwrap() + 20;
    let original = tampered.csr_pem.as_bytes()[body_start];
    let replacement = if original == b'A' { "B" } else { "A" };
    tampered.csr_pem.replace_range(body_start..=body_start, replacement);
    assert_err!(env.plane.enroll(&tampered, CORR).await, InventoryError::Pki(PkiError::InvalidCsr(_)));

    let mut empty = enroll_request(&token, "gpu-01");
    empty.csr_pem = String::new();
    assert_invalid!(env.plane.enroll(&empty, CORR).await, "csr_pem");
    let mut huge = enroll_request(&token, "gpu-01");
    huge.csr_pem = "A".repeat(16 * 1024 + 1);
    assert_invalid!(env.plane.enroll(&huge, CORR).await, "csr_pem");
    let mut version = enroll_request(&token, "gpu-01");
    version.protocol_version = PROTOCOL_VERSION + 1;
    assert_invalid!(env.plane.enroll(&version, CORR).await, "protocol_version");
    let mut hostname = enroll_request(&token, "gpu-01");
    hostname.hostname = "gpu\n01".into();
    assert_invalid!(env.plane.enroll(&hostname, CORR).await, "hostname");

    assert_eq!(nodes::get(&env.store, &registered.node.id).await.unwrap().status, NodeStatus::PendingEnrollment);
    let response = env.plane.enroll(&enroll_request(&token, "gpu-01"), CORR).await.expect("the token still works");
    assert_eq!(response.node_id, registered.node.id);
}

async fn expired_and_superseded_tokens_are_refused(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    env.policy.set(keys::NODES_ENROLLMENT_TOKEN_TTL_SECONDS, &0).await.unwrap();
    let registered = register(&env, "gpu-01", "h100-x8").await;
    let expired = assert_err!(
        env.plane.enroll(&enroll_request(&registered.enrollment.token, "gpu-01"), CORR).await,
        InventoryError::EnrollmentTokenExpired
    );
    assert_eq!(expired.code(), ErrCode::EnrollmentTokenExpired);

    env.policy.set(keys::NODES_ENROLLMENT_TOKEN_TTL_SECONDS, &3600).await.unwrap();
    let first = env.plane.issue_enrollment_token(&operator(), &registered.node.id).await.unwrap();
    assert!(first.token.starts_with("gpe_"));
    let second = env.plane.issue_enrollment_token(&operator(), &registered.node.id).await.unwrap();
    assert_ne!(first.token, second.token);
    assert_err!(
        env.plane.enroll(&enroll_request(&first.token, "gpu-01"), CORR).await,
        InventoryError::EnrollmentTokenInvalid
    );
    env.plane.enroll(&enroll_request(&second.token, "gpu-01"), CORR).await.expect("the newest token works");
    assert_eq!(support::audit_rows(&env.store, "node.enrollment_token.issue").await.len(), 2);
    assert_err!(env.plane.issue_enrollment_token(&operator(), "no-such-node").await, InventoryError::NotFound("node"));
}

async fn concurrent_enrollments_with_one_token_issue_one_certificate(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let registered = register(&env, "gpu-01", "h100-x8").await;

    let mut handles = Vec::new();
    for _ in 0..10 {
        let plane = env.plane.clone();
        let request = enroll_request(&registered.enrollment.token, "gpu-01");
        handles.push(tokio::spawn(async move { plane.enroll(&request, CORR).await }));
    }
    let mut winners = Vec::new();
    for handle in handles {
        match handle.await.unwrap() {
            Ok(response) => winners.push(response),
            Err(InventoryError::EnrollmentTokenUsed) => {}
            Err(other) => panic!("a losing enrollment must see the token used, not {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one enrollment spends the token");
    let live: Vec<String> = sqlx::query_scalar("SELECT fingerprint FROM node_certificates WHERE revoked_at IS NULL")
        .fetch_all(env.store.pool())
        .await
        .unwrap();
    let all: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM node_certificates").fetch_one(env.store.pool()).await.unwrap();
    assert_eq!(all, 1, "no losing enrollment stored a certificate");
    assert_eq!(live, [peer_of(&winners[0].certificate_pem).fingerprint]);
    assert_eq!(support::audit_rows(&env.store, "node.enroll").await.len(), 1);
    assert_eq!(node_events(&env.store, NODE_ENROLLED_SUBJECT, &registered.node.id).await, 1);
}

async fn only_current_certificates_of_the_named_node_authenticate(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let a = enrolled(&env, "gpu-a", "h100-x8").await;
    let b = enrolled(&env, "gpu-b", "h100-x8").await;

    let authenticated = env.plane.authenticate_node(&a.peer).await.unwrap();
    assert_eq!(authenticated.node_id, a.id);
    assert_eq!(authenticated.status, NodeStatus::Active);
    env.plane.drain(&operator(), &b.id).await.unwrap();
    assert_eq!(env.plane.authenticate_node(&b.peer).await.unwrap().status, NodeStatus::Draining);

    // A's certificate presented as B's: the recorded node differs from the named one.
    let swapped = PeerCertificate { node_id: b.id.clone(), ..a.peer.clone() };
    let invalid = assert_err!(env.plane.authenticate_node(&swapped).await, InventoryError::CertificateInvalid);
    assert_eq!(invalid.code(), ErrCode::NodeCertificateInvalid);
    let unknown = PeerCertificate { fingerprint: "00".repeat(32), ..a.peer.clone() };
    assert_err!(env.plane.authenticate_node(&unknown).await, InventoryError::CertificateInvalid);

    // A certificate for A's id from another CA was never issued here.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = BuiltinCa::load_or_create(&other_dir.path().join("ca")).unwrap();
    let foreign = other_ca.sign_node_csr(&a.id, &csr(), Duration::from_secs(3600)).await.unwrap();
    let foreign = peer_of(&foreign.certificate_pem);
    assert_eq!(foreign.node_id, a.id);
    assert_err!(env.plane.authenticate_node(&foreign).await, InventoryError::CertificateInvalid);

    // Revocation bites on the next request.
    assert_invalid!(env.plane.revoke_certificates(&operator(), &a.id, "").await, "reason");
    assert_eq!(env.plane.revoke_certificates(&operator(), &a.id, "key compromised").await.unwrap(), 1);
    let revoked = assert_err!(env.plane.authenticate_node(&a.peer).await, InventoryError::CertificateRevoked);
    assert_eq!(revoked.code(), ErrCode::CertificateRevoked);
    env.plane.authenticate_node(&b.peer).await.expect("another node's certificate is untouched");
    let audit = support::audit_rows(&env.store, "node.certificate.revoke").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].details["certificates_revoked"], 1);
    assert_eq!(audit[0].details["reason"], "key compromised");
    assert_eq!(env.plane.revoke_certificates(&operator(), &a.id, "again").await.unwrap(), 0);
    assert_err!(
        env.plane.revoke_certificates(&operator(), "no-such-node", "x").await,
        InventoryError::NotFound("node")
    );

    // A retired node is refused even with a certificate that somehow escaped revocation.
    env.plane.retire(&operator(), &b.id).await.unwrap();
    assert_err!(env.plane.authenticate_node(&b.peer).await, InventoryError::CertificateRevoked);
    sqlx::query("UPDATE node_certificates SET revoked_at = NULL WHERE node_id = $1")
        .bind(&b.id)
        .execute(env.store.pool())
        .await
        .unwrap();
    let retired = assert_err!(env.plane.authenticate_node(&b.peer).await, InventoryError::NodeRetired);
    assert_eq!(retired.code(), ErrCode::NodeRetired);
}

async fn re_enrollment_and_renewal_replace_certificates(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;

    // Renewal: a second certificate, the first stays valid until it expires.
    let renewed = env.plane.renew_certificate(&node.id, &RenewRequest { csr_pem: csr() }).await.unwrap();
    let renewed = peer_of(&renewed.certificate_pem);
    assert_eq!(renewed.node_id, node.id);
    assert_ne!(renewed.fingerprint, node.peer.fingerprint);
    env.plane.authenticate_node(&renewed).await.unwrap();
    env.plane.authenticate_node(&node.peer).await.unwrap();
    assert_eq!(support::audit_rows(&env.store, "node.certificate.renew").await.len(), 1);
    let mut bad = RenewRequest { csr_pem: "not a CSR".into() };
    assert_err!(env.plane.renew_certificate(&node.id, &bad).await, InventoryError::Pki(PkiError::InvalidCsr(_)));
    bad.csr_pem = String::new();
    assert_invalid!(env.plane.renew_certificate(&node.id, &bad).await, "csr_pem");

    // Re-enrollment (a reinstalled host): the old identity ends.
    let ticket = env.plane.issue_enrollment_token(&operator(), &node.id).await.unwrap();
    env.plane.authenticate_node(&node.peer).await.expect("issuing a token alone revokes nothing");
    let again = env.plane.enroll(&enroll_request(&ticket.token, "gpu-01"), CORR).await.unwrap();
    assert_eq!(again.node_id, node.id, "the node keeps its id");
    let fresh = peer_of(&again.certificate_pem);
    assert_eq!(env.plane.authenticate_node(&fresh).await.unwrap().node_id, node.id);
    assert_err!(env.plane.authenticate_node(&node.peer).await, InventoryError::CertificateRevoked);
    assert_err!(env.plane.authenticate_node(&renewed).await, InventoryError::CertificateRevoked);
    let reasons: Vec<Option<String>> =
        sqlx::query_scalar("SELECT revoke_reason FROM node_certificates WHERE node_id = $1 AND revoked_at IS NOT NULL")
            .bind(&node.id)
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(reasons, [Some("re-enrolled".to_owned()), Some("re-enrolled".to_owned())]);
    assert_eq!(nodes::get(&env.store, &node.id).await.unwrap().status, NodeStatus::Active);

    // A retired node can neither renew nor re-enroll.
    let ticket = env.plane.issue_enrollment_token(&operator(), &node.id).await.unwrap();
    env.plane.retire(&operator(), &node.id).await.unwrap();
    assert_err!(
        env.plane.renew_certificate(&node.id, &RenewRequest { csr_pem: csr() }).await,
        InventoryError::NodeRetired
    );
    assert_err!(
        env.plane.enroll(&enroll_request(&ticket.token, "gpu-01"), CORR).await,
        InventoryError::EnrollmentTokenInvalid
    );
}

async fn expired_certificates_do_not_authenticate(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    // The shortest certificate the CA issues: one second.
    env.policy.set(keys::NODES_CERTIFICATE_TTL_SECONDS, &1).await.unwrap();
    let node = enrolled(&env, "gpu-01", "h100-x8").await;
    let not_after = node.peer.not_after;
    assert!(not_after <= Timestamp::now().saturating_add(Duration::from_secs(2)), "a one-second certificate");
    while Timestamp::now() <= not_after {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_err!(env.plane.authenticate_node(&node.peer).await, InventoryError::CertificateInvalid);
}

both_backends!(
    enrollment_spends_the_token_once,
    malformed_requests_leave_the_token_unspent,
    expired_and_superseded_tokens_are_refused,
    concurrent_enrollments_with_one_token_issue_one_certificate,
    only_current_certificates_of_the_named_node_authenticate,
    re_enrollment_and_renewal_replace_certificates,
    expired_certificates_do_not_authenticate,
);
