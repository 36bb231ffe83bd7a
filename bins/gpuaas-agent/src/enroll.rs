//! Enrollment: a fresh key pair that never leaves the node, a CSR for it, and the
//! one-time token exchanged for a certificate, the CA and the task-signing key.

use gpuaas_kernel::Timestamp;
use gpuaas_nodeagent_protocol::wire::{EnrollRequest, EnrollResponse};
use gpuaas_nodeagent_protocol::{PROTOCOL_VERSION, is_valid_id, paths, signing};
use reqwest::{Client, StatusCode};

use crate::http::{self, CallError};
use crate::state::{AgentState, Credentials, StateDir, StateError};

/// A new private key (PKCS#8 PEM) and a CSR for it.
pub struct NewKey {
    pub key_pem: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("csr_pem", &self.csr_pem).finish_non_exhaustive()
    }
}

/// Generates a P-256 key and a CSR naming `common_name`. The control plane takes only
/// the public key from the CSR and decides the certificate's names itself.
pub fn new_key_and_csr(common_name: &str) -> Result<NewKey, rcgen::Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = name;
    let csr_pem = params.serialize_request(&key)?.pem()?;
    Ok(NewKey { key_pem: key.serialize_pem(), csr_pem })
}

pub struct EnrollOptions {
    /// The control plane's public URL.
    pub server_url: String,
    pub token: String,
    pub hostname: String,
    /// Enroll again even when the state directory already holds an enrollment.
    pub force: bool,
}

impl std::fmt::Debug for EnrollOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollOptions")
            .field("server_url", &self.server_url)
            .field("token", &"<redacted>")
            .field("hostname", &self.hostname)
            .field("force", &self.force)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("enrollment refused: {code}: {message}")]
    Refused { status: u16, code: String, message: String },
    #[error("enrollment failed: could not reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("enrollment failed: {0}")]
    Invalid(String),
    #[error("{state} already holds the enrollment of node {node_id}; pass --force to enroll again")]
    AlreadyEnrolled { state: String, node_id: String },
    #[error("enrollment failed: {0}")]
    State(#[from] StateError),
}

/// Enrolls and stores the result in `state`. The state directory is checked and
/// created before the token is spent, so a token is not burnt on a directory the
/// agent cannot write.
pub async fn enroll(client: &Client, state: &StateDir, options: &EnrollOptions) -> Result<AgentState, EnrollError> {
    let server =
        reqwest::Url::parse(&options.server_url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| EnrollError::Invalid(format!("--server {:?} is not an http(s) URL", options.server_url)))?;
    if options.token.trim().is_empty() {
        return Err(EnrollError::Invalid("the enrollment token is empty".into()));
    }
    if state.is_enrolled() && !options.force {
        let node_id = state.load_agent().map(|agent| agent.node_id).unwrap_or_else(|_| "?".into());
        return Err(EnrollError::AlreadyEnrolled { state: state.path().display().to_string(), node_id });
    }
    state.create()?;

    let key = new_key_and_csr(&options.hostname)
        .map_err(|error| EnrollError::Invalid(format!("could not generate a key: {error}")))?;
    let request = EnrollRequest {
        token: options.token.trim().to_owned(),
        csr_pem: key.csr_pem.clone(),
        hostname: options.hostname.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_version: PROTOCOL_VERSION,
    };
    let url = http::join(server.as_str(), paths::ENROLL);
    let response = http::send(client.post(&url).json(&request)).await.map_err(|error| match error {
        CallError::Unauthorized { status, code, message } | CallError::Rejected { status, code, message } => {
            EnrollError::Refused { status, code, message }
        }
        CallError::Transient(detail) => EnrollError::Unreachable { url: url.clone(), detail },
    })?;
    if response.status() != StatusCode::CREATED {
        tracing::warn!(status = response.status().as_u16(), "enrollment answered with an unexpected success status");
    }
    let answer: EnrollResponse =
        http::read_json(response).await.map_err(|error| EnrollError::Invalid(error.to_string()))?;
    validate(&answer)?;
    if answer.protocol_version != PROTOCOL_VERSION {
        tracing::warn!(
            control_plane = answer.protocol_version,
            agent = PROTOCOL_VERSION,
            "the control plane speaks another protocol version"
        );
    }

    let agent = AgentState {
        node_id: answer.node_id,
        server_url: server.as_str().trim_end_matches('/').to_owned(),
        internal_url: answer.internal_url.trim_end_matches('/').to_owned(),
        task_signing_public_key: answer.task_signing_public_key,
        certificate_expires_at: answer.certificate_expires_at,
        certificate_issued_at: Timestamp::now(),
    };
    let credentials =
        Credentials { key_pem: key.key_pem, cert_pem: answer.certificate_pem, ca_pem: answer.ca_certificate_pem };
    state.save_enrollment(&credentials, &agent)?;
    Ok(agent)
}

/// Checks what the agent will rely on later, before anything is stored: a node that
/// enrolled but cannot build its mTLS client or verify tasks would only fail at `run`.
fn validate(answer: &EnrollResponse) -> Result<(), EnrollError> {
    let invalid = |message: String| Err(EnrollError::Invalid(format!("the control plane's answer: {message}")));
    if !is_valid_id(&answer.node_id) {
        return invalid("node_id is not a valid id".into());
    }
    if !reqwest::Url::parse(&answer.internal_url).is_ok_and(|url| url.scheme() == "https") {
        return invalid(format!("internal_url {:?} is not an https URL", answer.internal_url));
    }
    if let Err(error) = signing::verifying_key_from_base64(&answer.task_signing_public_key) {
        return invalid(format!("task_signing_public_key: {error}"));
    }
    if answer.certificate_expires_at <= Timestamp::now() {
        return invalid("the certificate has already expired".into());
    }
    if reqwest::Certificate::from_pem(answer.ca_certificate_pem.as_bytes()).is_err() {
        return invalid("ca_certificate_pem is not a PEM certificate".into());
    }
    if !answer.certificate_pem.contains("-----BEGIN CERTIFICATE-----") {
        return invalid("certificate_pem is not a PEM certificate".into());
    }
    Ok(())
}

/// This host's name, for the CSR and the operator's records.
pub fn detect_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| text.trim().to_owned())
        .find(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|name| !name.trim().is_empty()))
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_comes_with_a_csr() {
        let key = new_key_and_csr("gpu-01").unwrap_or_else(|e| panic!("{e}"));
        assert!(key.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(key.csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(!format!("{key:?}").contains("PRIVATE KEY"));
        let other = new_key_and_csr("gpu-01").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(key.key_pem, other.key_pem);
    }
}
