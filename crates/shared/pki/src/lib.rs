//! The control plane's certificate authority for node agents.
//!
//! This crate owns the CA key material on disk, the issuance of node (client) and
//! control-plane (server) certificates, the mTLS server configuration that admits only
//! certificates from this CA, and the reading of a node's identity back out of a verified
//! peer certificate. It also keeps the control plane's Ed25519 task-signing key.
//!
//! It must never put a private key in a database, a log line, an error message or `Debug`
//! output, and it must never trust the names a CSR asks for: a node certificate carries
//! the node id the control plane chose, nothing the requester wrote.
//!
//! The built-in CA sits behind [`CaClient`] so an external CA (step-ca, Vault PKI) can
//! replace it without touching callers.

mod builtin;
mod files;
mod names;
mod peer;
mod signing_key;
mod tls;

use std::path::PathBuf;
use std::time::Duration;

use gpuaas_kernel::Timestamp;
pub use rustls;
use sha2::{Digest, Sha256};

pub use builtin::BuiltinCa;
pub use names::node_san_uri;
pub use peer::{PeerCertificate, peer_certificate};
pub use signing_key::load_or_create_signing_key;
pub use tls::mtls_server_config;

/// A certificate signed for a node. Public material only: the node kept its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub certificate_pem: String,
    /// Lowercase hex SHA-256 of the certificate's DER encoding.
    pub fingerprint: String,
    /// Lowercase hex of the serial number's big-endian bytes.
    pub serial: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

/// A server certificate chain together with its freshly generated private key.
#[derive(Clone)]
pub struct ServerIdentity {
    /// The leaf first, then the CA that signed it.
    pub certificate_chain_pem: String,
    /// PKCS#8 PEM. Secret: hand it to the TLS stack, never to a log or a database.
    pub private_key_pem: String,
    pub not_after: Timestamp,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("certificate_chain_pem", &self.certificate_chain_pem)
            .field("private_key_pem", &"[redacted]")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A certificate authority the control plane can ask for certificates.
#[async_trait::async_trait]
pub trait CaClient: Send + Sync + 'static {
    /// A short stable name for logs and metrics, e.g. `"builtin"`.
    fn name(&self) -> &'static str;

    /// The CA certificate (PEM) that node agents must trust and that client certificates
    /// are verified against.
    fn ca_certificate_pem(&self) -> String;

    /// Signs a node's CSR. Only the CSR's public key is used: the certificate names
    /// `node_id` whatever subject or extensions the CSR requests.
    async fn sign_node_csr(
        &self,
        node_id: &str,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<IssuedCertificate, PkiError>;

    /// Issues a TLS server certificate for `names` (IP addresses become IP SANs, anything
    /// else a DNS SAN) with a fresh key.
    async fn issue_server_certificate(&self, names: &[String], validity: Duration) -> Result<ServerIdentity, PkiError>;
}

/// Errors from this crate. None of them ever carries key material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The CSR is malformed, oversized, tampered with or uses an unsupported key: the
    /// requester's fault.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// The node id cannot be put in a certificate: the requester's fault.
    #[error("invalid node id: {0}")]
    InvalidNodeId(String),
    /// A name asked for in a server certificate is neither an IP address nor a DNS name.
    #[error("invalid server name: {0}")]
    InvalidServerName(String),
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Only one of the CA's two files exists. Regenerating would silently orphan every
    /// node certificate issued so far, so an operator has to look.
    #[error(
        "incomplete CA: {} exists but {} is missing; restore the missing file or remove both to create a new CA",
        present.display(),
        missing.display()
    )]
    IncompleteCa { present: PathBuf, missing: PathBuf },
    /// A key or certificate file exists but its contents are unusable.
    #[error("unusable file {}: {reason}", path.display())]
    CorruptFile { path: PathBuf, reason: String },
    #[error("certificate or key generation failed: {0}")]
    Generation(String),
    #[error("TLS configuration failed: {0}")]
    Tls(String),
}

impl PkiError {
    /// Whether the error is the requester's fault (an HTTP 400) rather than the server's.
    pub fn is_client_error(&self) -> bool {
        matches!(self, Self::InvalidCsr(_) | Self::InvalidNodeId(_))
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// Lowercase hex SHA-256 of a certificate's DER encoding.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// X.509 times have whole-second precision.
pub(crate) fn timestamp_from(instant: time::OffsetDateTime) -> Timestamp {
    timestamp_from_unix_seconds(instant.unix_timestamp())
}

pub(crate) fn timestamp_from_unix_seconds(seconds: i64) -> Timestamp {
    Timestamp::from_micros(seconds.saturating_mul(1_000_000))
}
