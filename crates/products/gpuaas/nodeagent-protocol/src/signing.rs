//! Signed task envelopes. The control plane signs every delivery of a task with its
//! Ed25519 key over canonical bytes that bind the parameters to the task id, the node,
//! a nonce and a validity window; the agent verifies all of it before any host action.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use gpuaas_kernel::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::tasks::{Refusal, RefusalCode, Task};

/// Separates task signatures from anything else the key might ever sign.
const SIGNING_CONTEXT: &str = "gpuaas-node-task";

/// One delivery of a task, as the agent receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedTask {
    pub protocol_version: u32,
    pub task_id: String,
    pub node_id: String,
    /// Kept as text so that an unknown type still verifies and is refused by name.
    pub task_type: String,
    #[schema(value_type = Object)]
    pub params: Value,
    /// Fresh for every delivery; the agent refuses one it has seen.
    pub nonce: String,
    #[schema(value_type = String, format = DateTime)]
    pub not_before: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    /// Ed25519 over [`SignedTask::signing_bytes`], base64 (standard, padded).
    pub signature: String,
}

impl SignedTask {
    /// The exact bytes signed: a context string, then every field but the signature as
    /// canonical JSON (object keys sorted, no white space), so both sides derive the
    /// same bytes whatever order the JSON arrived in.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let claims = serde_json::json!({
            "protocol_version": self.protocol_version,
            "task_id": self.task_id,
            "node_id": self.node_id,
            "task_type": self.task_type,
            "params": self.params,
            "nonce": self.nonce,
            "not_before": self.not_before.as_micros(),
            "expires_at": self.expires_at.as_micros(),
        });
        let mut bytes = format!("{SIGNING_CONTEXT}\n").into_bytes();
        canonical_json(&claims, &mut bytes);
        bytes
    }
}

/// Appends `value` as canonical JSON: object keys in byte order, no white space.
pub fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(key.clone()).to_string().as_bytes());
                out.push(b':');
                canonical_json(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

/// The control plane's side: signs deliveries.
#[derive(Clone)]
pub struct TaskSigner {
    key: SigningKey,
}

impl std::fmt::Debug for TaskSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSigner").field("public_key", &self.public_key_base64()).finish()
    }
}

/// What the control plane asks to sign.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub task_id: &'a str,
    pub node_id: &'a str,
    pub task_type: &'a str,
    pub params: &'a Value,
    pub not_before: Timestamp,
    pub expires_at: Timestamp,
}

impl TaskSigner {
    pub fn new(key: SigningKey) -> Self {
        Self { key }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key agents pin at enrollment, base64 of its 32 bytes.
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.verifying_key().as_bytes())
    }

    /// Signs one delivery with a fresh random nonce.
    pub fn sign(&self, delivery: &Delivery<'_>) -> SignedTask {
        let mut task = SignedTask {
            protocol_version: crate::PROTOCOL_VERSION,
            task_id: delivery.task_id.to_owned(),
            node_id: delivery.node_id.to_owned(),
            task_type: delivery.task_type.to_owned(),
            params: delivery.params.clone(),
            nonce: random_nonce(),
            not_before: delivery.not_before,
            expires_at: delivery.expires_at,
            signature: String::new(),
        };
        let signature = self.key.sign(&task.signing_bytes());
        task.signature = base64::engine::general_purpose::STANDARD.encode(signature.to_bytes());
        task
    }
}

fn random_nonce() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a public key pinned at enrollment.
pub fn verifying_key_from_base64(text: &str) -> Result<VerifyingKey, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| "not base64".to_owned())?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| "not 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 public key".to_owned())
}

/// Nonces of deliveries already accepted, each kept until its task expires (plus the
/// allowed clock skew); after that the time window alone refuses a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceCache {
    /// nonce -> expiry of the delivery that carried it, in microseconds.
    seen: HashMap<String, i64>,
}

impl NonceCache {
    /// Most nonces remembered at once; beyond it new deliveries are refused rather
    /// than letting old nonces fall out while still valid.
    pub const CAPACITY: usize = 100_000;

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn prune(&mut self, now: Timestamp, skew: Duration) {
        let horizon = now.saturating_sub(skew).as_micros();
        self.seen.retain(|_, expires| *expires >= horizon);
    }
}

/// The agent's side: verifies deliveries addressed to this node.
#[derive(Debug, Clone)]
pub struct TaskVerifier {
    key: VerifyingKey,
    node_id: String,
    max_clock_skew: Duration,
    nonces: NonceCache,
}

/// A delivery that passed every check, with its parsed task.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedTask {
    pub task_id: String,
    pub task: Task,
    pub expires_at: Timestamp,
}

impl TaskVerifier {
    pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(30);

    pub fn new(key: VerifyingKey, node_id: impl Into<String>, nonces: NonceCache) -> Self {
        Self { key, node_id: node_id.into(), max_clock_skew: Self::DEFAULT_CLOCK_SKEW, nonces }
    }

    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.max_clock_skew = skew;
        self
    }

    /// The nonces remembered, for the agent to persist across restarts.
    pub fn nonces(&self) -> &NonceCache {
        &self.nonces
    }

    /// Checks, in order: protocol version, signature, node binding, time window,
    /// replay, task type, parameters. Only a delivery whose signature, binding and
    /// window hold is remembered, so forged deliveries cannot fill the nonce cache.
    pub fn verify(&mut self, task: &SignedTask, now: Timestamp) -> Result<VerifiedTask, Refusal> {
        if task.protocol_version != crate::PROTOCOL_VERSION {
            return Err(Refusal::new(
                RefusalCode::UnsupportedVersion,
                format!("protocol version {} (this agent speaks {})", task.protocol_version, crate::PROTOCOL_VERSION),
            ));
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&task.signature)
            .ok()
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .map(|bytes| Signature::from_bytes(&bytes))
            .ok_or_else(|| Refusal::new(RefusalCode::BadSignature, "signature is not 64 base64-encoded bytes"))?;
        self.key
            .verify(&task.signing_bytes(), &signature)
            .map_err(|_| Refusal::new(RefusalCode::BadSignature, "signature does not verify with the pinned key"))?;
        if task.node_id != self.node_id {
            return Err(Refusal::new(RefusalCode::WrongNode, "task is bound to another node"));
        }
        if now < task.not_before.saturating_sub(self.max_clock_skew) {
            return Err(Refusal::new(RefusalCode::NotYetValid, format!("task is valid from {}", task.not_before)));
        }
        if now > task.expires_at.saturating_add(self.max_clock_skew) {
            return Err(Refusal::new(RefusalCode::Expired, format!("task expired at {}", task.expires_at)));
        }
        self.nonces.prune(now, self.max_clock_skew);
        if self.nonces.seen.contains_key(&task.nonce) {
            return Err(Refusal::new(RefusalCode::Replayed, "this delivery was already received"));
        }
        if self.nonces.seen.len() >= NonceCache::CAPACITY {
            return Err(Refusal::new(RefusalCode::Replayed, "too many unexpired deliveries remembered"));
        }
        self.nonces.seen.insert(task.nonce.clone(), task.expires_at.as_micros());
        let parsed = Task::parse(&task.task_type, &task.params)?;
        Ok(VerifiedTask { task_id: task.task_id.clone(), task: parsed, expires_at: task.expires_at })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn signer(seed: u8) -> TaskSigner {
        TaskSigner::new(SigningKey::from_bytes(&[seed; 32]))
    }

    fn delivery(signer: &TaskSigner, node: &str, task_type: &str, params: Value, now: Timestamp) -> SignedTask {
        signer.sign(&Delivery {
            task_id: "t-1",
            node_id: node,
            task_type,
            params: &params,
            not_before: now,
            expires_at: now.saturating_add(Duration::from_secs(300)),
        })
    }

    fn code(result: Result<VerifiedTask, Refusal>) -> Option<RefusalCode> {
        result.err().map(|refusal| refusal.code)
    }

    #[test]
    fn a_valid_delivery_is_accepted_once() {
        let signer = signer(1);
        let now = Timestamp::now();
        let task = delivery(&signer, "node-a", "node.inventory", serde_json::json!({}), now);
        let mut verifier = TaskVerifier::new(signer.verifying_key(), "node-a", NonceCache::default());
        assert_eq!(verifier.verify(&task, now).map(|v| v.task), Ok(Task::NodeInventory));
        assert_eq!(code(verifier.verify(&task, now)), Some(RefusalCode::Replayed));
    }

    #[test]
    fn every_refusal_has_its_code() {
        let signer = signer(1);
        let now = Timestamp::now();
        let fresh = || TaskVerifier::new(signer.verifying_key(), "node-a", NonceCache::default());
        let good = delivery(&signer, "node-a", "node.inventory", serde_json::json!({}), now);

        let mut tampered = good.clone();
        tampered.params = serde_json::json!({"extra": true});
        assert_eq!(code(fresh().verify(&tampered, now)), Some(RefusalCode::BadSignature));

        let mut garbage = good.clone();
        garbage.signature = "%%%".into();
        assert_eq!(code(fresh().verify(&garbage, now)), Some(RefusalCode::BadSignature));

        let foreign = delivery(&self::signer(2), "node-a", "node.inventory", serde_json::json!({}), now);
        assert_eq!(code(fresh().verify(&foreign, now)), Some(RefusalCode::BadSignature));

        let other_node = delivery(&signer, "node-b", "node.inventory", serde_json::json!({}), now);
        assert_eq!(code(fresh().verify(&other_node, now)), Some(RefusalCode::WrongNode));

        let later = now.saturating_add(Duration::from_secs(301 + 30));
        assert_eq!(code(fresh().verify(&good, later)), Some(RefusalCode::Expired));
        let earlier = now.saturating_sub(Duration::from_secs(31));
        assert_eq!(code(fresh().verify(&good, earlier)), Some(RefusalCode::NotYetValid));

        let unknown = delivery(&signer, "node-a", "node.exec", serde_json::json!({"cmd": "id"}), now);
        assert_eq!(code(fresh().verify(&unknown, now)), Some(RefusalCode::UnknownType));

        let invalid =
            delivery(&signer, "node-a", "allocation.revoke_user", serde_json::json!({"username": "root"}), now);
        assert_eq!(code(fresh().verify(&invalid, now)), Some(RefusalCode::InvalidParams));

        let mut version = good.clone();
        version.protocol_version = 2;
        assert_eq!(code(fresh().verify(&version, now)), Some(RefusalCode::UnsupportedVersion));
    }

    #[test]
    fn a_persisted_nonce_cache_still_refuses_replays_after_a_restart() {
        let signer = signer(1);
        let now = Timestamp::now();
        let task = delivery(&signer, "node-a", "node.health", serde_json::json!({}), now);
        let mut verifier = TaskVerifier::new(signer.verifying_key(), "node-a", NonceCache::default());
        assert!(verifier.verify(&task, now).is_ok());
        let saved = serde_json::to_string(verifier.nonces()).unwrap_or_default();
        let restored: NonceCache = serde_json::from_str(&saved).unwrap_or_default();
        let mut restarted = TaskVerifier::new(signer.verifying_key(), "node-a", restored);
        assert_eq!(code(restarted.verify(&task, now)), Some(RefusalCode::Replayed));
    }

    #[test]
    fn expired_nonces_are_forgotten() {
        let signer = signer(1);
        let now = Timestamp::now();
        let mut verifier = TaskVerifier::new(signer.verifying_key(), "node-a", NonceCache::default());
        let task = delivery(&signer, "node-a", "node.health", serde_json::json!({}), now);
        assert!(verifier.verify(&task, now).is_ok());
        let much_later = now.saturating_add(Duration::from_secs(3600));
        let next = delivery(&signer, "node-a", "node.health", serde_json::json!({}), much_later);
        assert!(verifier.verify(&next, much_later).is_ok());
        assert_eq!(verifier.nonces().len(), 1);
    }

    #[test]
    fn the_wire_form_round_trips_and_still_verifies() {
        let signer = signer(7);
        let now = Timestamp::now();
        let task = delivery(&signer, "node-a", "node.inventory", serde_json::json!({}), now);
        let json = serde_json::to_string(&task).unwrap_or_default();
        let back: SignedTask = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        let mut verifier = TaskVerifier::new(signer.verifying_key(), "node-a", NonceCache::default());
        assert!(verifier.verify(&back, now).is_ok());
    }

    proptest! {
        /// Canonical bytes do not depend on the order keys arrive in.
        #[test]
        fn canonical_json_ignores_key_order(keys in proptest::collection::btree_set("[a-z]{1,6}", 1..8)) {
            let forward: serde_json::Map<String, Value> =
                keys.iter().enumerate().map(|(i, k)| (k.clone(), Value::from(i))).collect();
            let reversed: serde_json::Map<String, Value> =
                keys.iter().enumerate().rev().map(|(i, k)| (k.clone(), Value::from(i))).collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            canonical_json(&Value::Object(forward), &mut a);
            canonical_json(&Value::Object(reversed), &mut b);
            prop_assert_eq!(a, b);
        }

        /// Changing any signed byte of the parameters breaks the signature.
        #[test]
        fn any_parameter_change_is_caught(name in "[a-z_][a-z0-9_]{0,20}", other in "[a-z_][a-z0-9_]{0,20}") {
            prop_assume!(name != other);
            let signer = signer(3);
            let now = Timestamp::now();
            let params = serde_json::json!({"allocation_id": "a-1", "username": name, "remove_home": false});
            let mut task = delivery(&signer, "node-a", "allocation.revoke_user", params, now);
            task.params["username"] = Value::String(other);
            let mut verifier = TaskVerifier::new(signer.verifying_key(), "node-a", NonceCache::default());
            prop_assert_eq!(code(verifier.verify(&task, now)), Some(RefusalCode::BadSignature));
        }
    }
}
