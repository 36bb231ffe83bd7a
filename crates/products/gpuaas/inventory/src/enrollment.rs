//! How a node proves who it is: a one-time enrollment token buys a certificate from
//! the CA for a key that never leaves the node; every internal request is then
//! authenticated by that certificate's fingerprint, so a revocation bites at once.

use std::time::Duration;

use gpuaas_kernel::{ResourceType, Timestamp, new_id};
use gpuaas_nodeagent_protocol::PROTOCOL_VERSION;
use gpuaas_nodeagent_protocol::wire::{EnrollRequest, EnrollResponse, MAX_CSR_PEM_BYTES, RenewRequest, RenewResponse};
use gpuaas_pki::PeerCertificate;
use gpuaas_policy::keys;
use gpuaas_store::Connection;
use gpuaas_store::sqlx::{self, Row as _};

use crate::nodes::{EnrollmentTicket, NODE_ENROLLED_SUBJECT, NodeStatus, lock_status, publish};
use crate::skus::check_text;
use crate::{Actor, InventoryError, NodePlane, random_token, secret_hash};

/// Prefix of enrollment tokens, so a leaked one is recognisable in a secret scanner.
pub const TOKEN_PREFIX: &str = "gpe_";
const MAX_TOKEN_LEN: usize = 128;

pub(crate) async fn insert_token(
    connection: &mut Connection,
    node_id: &str,
    created_by: &str,
    ttl: Duration,
) -> Result<EnrollmentTicket, InventoryError> {
    let token = random_token(TOKEN_PREFIX);
    let now = Timestamp::now();
    let expires_at = now.saturating_add(ttl);
    sqlx::query(
        "INSERT INTO node_enrollment_tokens (id, node_id, token_hash, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id().to_string())
    .bind(node_id)
    .bind(secret_hash(&token))
    .bind(created_by)
    .bind(now.as_micros())
    .bind(expires_at.as_micros())
    .execute(&mut *connection)
    .await?;
    Ok(EnrollmentTicket { token, expires_at })
}

/// Revokes every current certificate and unused token of a node.
pub(crate) async fn revoke_all(
    connection: &mut Connection,
    node_id: &str,
    reason: &str,
    now: i64,
) -> Result<u64, InventoryError> {
    let revoked = sqlx::query(
        "UPDATE node_certificates SET revoked_at = $2, revoke_reason = $3 WHERE node_id = $1 AND revoked_at IS NULL",
    )
    .bind(node_id)
    .bind(now)
    .bind(reason)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE node_enrollment_tokens SET revoked_at = $2 WHERE node_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(node_id)
    .bind(now)
    .execute(&mut *connection)
    .await?;
    Ok(revoked)
}

fn check_csr(csr_pem: &str) -> Result<(), InventoryError> {
    if csr_pem.is_empty() || csr_pem.len() > MAX_CSR_PEM_BYTES {
        return Err(InventoryError::invalid("csr_pem", format!("1 to {MAX_CSR_PEM_BYTES} bytes of PEM")));
    }
    Ok(())
}

/// The node a verified client certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedNode {
    pub node_id: String,
    pub status: NodeStatus,
    /// The certificate it authenticated with, to check again during a long wait.
    pub certificate: PeerCertificate,
}

impl NodePlane {
    /// A fresh enrollment token for a node (re-enrollment of a reinstalled host, or a
    /// lost token); earlier unused tokens stop working.
    pub async fn issue_enrollment_token(
        &self,
        actor: &Actor,
        node_id: &str,
    ) -> Result<EnrollmentTicket, InventoryError> {
        let ttl = self.policy().get_duration_secs(keys::NODES_ENROLLMENT_TOKEN_TTL_SECONDS).await?;
        let now = Timestamp::now().as_micros();
        let mut tx = self.store().begin().await?;
        if lock_status(&mut tx, self.store().dialect(), node_id).await? == NodeStatus::Retired {
            return Err(InventoryError::NodeRetired);
        }
        sqlx::query(
            "UPDATE node_enrollment_tokens SET revoked_at = $2 WHERE node_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(node_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let ticket = insert_token(&mut tx, node_id, &actor.id, ttl).await?;
        let entry = actor.entry(
            "node.enrollment_token.issue",
            self.resource_id(ResourceType::Node, node_id),
            serde_json::json!({"expires_at": ticket.expires_at}),
        );
        gpuaas_audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(ticket)
    }

    /// Spends a one-time token on a certificate for the CSR's key. A malformed CSR
    /// leaves the token unspent; a second use of the same token is refused.
    pub async fn enroll(
        &self,
        request: &EnrollRequest,
        correlation_id: &str,
    ) -> Result<EnrollResponse, InventoryError> {
        if request.token.is_empty() || request.token.len() > MAX_TOKEN_LEN {
            return Err(InventoryError::EnrollmentTokenInvalid);
        }
        check_csr(&request.csr_pem)?;
        check_text("hostname", &request.hostname, 253)?;
        check_text("agent_version", &request.agent_version, 64)?;
        if request.protocol_version != PROTOCOL_VERSION {
            return Err(InventoryError::invalid(
                "protocol_version",
                format!("this control plane speaks protocol {PROTOCOL_VERSION}"),
            ));
        }
        let hash = secret_hash(&request.token);
        let row = sqlx::query(
            "SELECT id, node_id, expires_at, used_at, revoked_at FROM node_enrollment_tokens WHERE token_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(self.store().pool())
        .await?
        .ok_or(InventoryError::EnrollmentTokenInvalid)?;
        let token_id: String = row.try_get("id")?;
        let node_id: String = row.try_get("node_id")?;
        let now = Timestamp::now();
        if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            return Err(InventoryError::EnrollmentTokenUsed);
        }
        if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
            return Err(InventoryError::EnrollmentTokenInvalid);
        }
        if row.try_get::<i64, _>("expires_at")? <= now.as_micros() {
            return Err(InventoryError::EnrollmentTokenExpired);
        }
        let validity = self.policy().get_duration_secs(keys::NODES_CERTIFICATE_TTL_SECONDS).await?;
        // Sign before spending the token: a CSR the CA refuses must not burn it.
        let issued = self.inner.ca.sign_node_csr(&node_id, &request.csr_pem, validity).await?;
        let interval = self.policy().get(keys::NODES_HEARTBEAT_INTERVAL_SECONDS).await?;

        let mut tx = self.store().begin().await?;
        let spent = sqlx::query(
            "UPDATE node_enrollment_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(&token_id)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if spent != 1 {
            return Err(InventoryError::EnrollmentTokenUsed);
        }
        let status = lock_status(&mut tx, self.store().dialect(), &node_id).await?;
        if status == NodeStatus::Retired {
            return Err(InventoryError::EnrollmentTokenInvalid);
        }
        // A node enrolls again when its host was reinstalled: the old identity ends.
        sqlx::query(
            "UPDATE node_certificates SET revoked_at = $2, revoke_reason = 're-enrolled' \
             WHERE node_id = $1 AND revoked_at IS NULL",
        )
        .bind(&node_id)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        insert_certificate(&mut tx, &node_id, &issued, now).await?;
        // A node drained before it enrolled keeps the operator's intent.
        sqlx::query(
            "UPDATE nodes SET status = CASE WHEN status <> 'pending_enrollment' THEN status \
             WHEN drain_requested = 1 THEN 'draining' ELSE 'active' END, \
             enrolled_at = $2, reported_hostname = $3, agent_version = $4, last_heartbeat_at = $2, updated_at = $2 \
             WHERE id = $1",
        )
        .bind(&node_id)
        .bind(now.as_micros())
        .bind(&request.hostname)
        .bind(&request.agent_version)
        .execute(&mut *tx)
        .await?;
        let target = self.resource_id(ResourceType::Node, &node_id);
        let actor = Actor::node(&node_id, correlation_id);
        let entry = actor.entry(
            "node.enroll",
            target.clone(),
            serde_json::json!({"certificate_fingerprint": issued.fingerprint, "not_after": issued.not_after, "agent_version": request.agent_version}),
        );
        gpuaas_audit::record(&mut tx, &entry).await?;
        publish(
            &mut tx,
            NODE_ENROLLED_SUBJECT,
            correlation_id,
            serde_json::json!({"node_id": node_id, "resource": target}),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(node_id, fingerprint = %issued.fingerprint, "node enrolled");
        Ok(EnrollResponse {
            node_id,
            certificate_pem: issued.certificate_pem,
            certificate_expires_at: issued.not_after,
            ca_certificate_pem: self.ca_certificate_pem(),
            internal_url: self.internal_url().to_owned(),
            task_signing_public_key: self.task_signing_public_key(),
            heartbeat_interval_seconds: u64::try_from(interval).unwrap_or(15),
            protocol_version: PROTOCOL_VERSION,
        })
    }

    /// A new certificate for an authenticated node; the current one stays valid until
    /// it expires, so the agent can switch without a gap.
    pub async fn renew_certificate(
        &self,
        node_id: &str,
        request: &RenewRequest,
    ) -> Result<RenewResponse, InventoryError> {
        check_csr(&request.csr_pem)?;
        let validity = self.policy().get_duration_secs(keys::NODES_CERTIFICATE_TTL_SECONDS).await?;
        let issued = self.inner.ca.sign_node_csr(node_id, &request.csr_pem, validity).await?;
        let now = Timestamp::now();
        let mut tx = self.store().begin().await?;
        if lock_status(&mut tx, self.store().dialect(), node_id).await? == NodeStatus::Retired {
            return Err(InventoryError::NodeRetired);
        }
        insert_certificate(&mut tx, node_id, &issued, now).await?;
        let entry = Actor::node(node_id, "").entry(
            "node.certificate.renew",
            self.resource_id(ResourceType::Node, node_id),
            serde_json::json!({"certificate_fingerprint": issued.fingerprint, "not_after": issued.not_after}),
        );
        gpuaas_audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(RenewResponse { certificate_pem: issued.certificate_pem, certificate_expires_at: issued.not_after })
    }

    /// Maps a client certificate the TLS layer verified against our CA to its node.
    /// Refuses certificates we never issued or revoked, certificates whose embedded
    /// node id differs from the one recorded at issuance, and retired nodes.
    pub async fn authenticate_node(&self, peer: &PeerCertificate) -> Result<AuthenticatedNode, InventoryError> {
        let row = sqlx::query(
            "SELECT c.node_id, c.revoked_at, c.not_after, n.status FROM node_certificates c \
             JOIN nodes n ON n.id = c.node_id WHERE c.fingerprint = $1",
        )
        .bind(&peer.fingerprint)
        .fetch_optional(self.store().pool())
        .await?
        .ok_or(InventoryError::CertificateInvalid)?;
        let node_id: String = row.try_get("node_id")?;
        if node_id != peer.node_id {
            return Err(InventoryError::CertificateInvalid);
        }
        if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
            return Err(InventoryError::CertificateRevoked);
        }
        if row.try_get::<i64, _>("not_after")? <= Timestamp::now().as_micros() {
            return Err(InventoryError::CertificateInvalid);
        }
        let status: String = row.try_get("status")?;
        let status = NodeStatus::parse(&status).ok_or(InventoryError::Corrupt(status))?;
        if status == NodeStatus::Retired {
            return Err(InventoryError::NodeRetired);
        }
        Ok(AuthenticatedNode { node_id, status, certificate: peer.clone() })
    }

    /// Revokes every certificate of a node: its agent is refused on its next request.
    pub async fn revoke_certificates(&self, actor: &Actor, node_id: &str, reason: &str) -> Result<u64, InventoryError> {
        check_text("reason", reason, 512)?;
        let now = Timestamp::now().as_micros();
        let mut tx = self.store().begin().await?;
        lock_status(&mut tx, self.store().dialect(), node_id).await?;
        let revoked = revoke_all(&mut tx, node_id, reason, now).await?;
        let entry = actor.entry(
            "node.certificate.revoke",
            self.resource_id(ResourceType::Node, node_id),
            serde_json::json!({"reason": reason, "certificates_revoked": revoked}),
        );
        gpuaas_audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(revoked)
    }
}

async fn insert_certificate(
    connection: &mut Connection,
    node_id: &str,
    issued: &gpuaas_pki::IssuedCertificate,
    now: Timestamp,
) -> Result<(), InventoryError> {
    sqlx::query(
        "INSERT INTO node_certificates (fingerprint, node_id, serial, not_before, not_after, issued_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&issued.fingerprint)
    .bind(node_id)
    .bind(&issued.serial)
    .bind(issued.not_before.as_micros())
    .bind(issued.not_after.as_micros())
    .bind(now.as_micros())
    .execute(&mut *connection)
    .await?;
    Ok(())
}
