use gpuaas_kernel::Timestamp;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::names::{NODE_URI_PREFIX, validate_node_id};
use crate::{PkiError, fingerprint, timestamp_from_unix_seconds};

/// The identity a node proved in an mTLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    pub node_id: String,
    /// Lowercase hex SHA-256 of the certificate's DER encoding.
    pub fingerprint: String,
    pub not_after: Timestamp,
}

/// Reads the node identity out of a client certificate.
///
/// The certificate must already have been verified against the CA (the TLS stack does
/// that with [`crate::mtls_server_config`]); this only parses. The node id comes from the
/// single `urn:gpuaas:node:` URI SAN, never from the subject.
pub fn peer_certificate(der: &[u8]) -> Result<PeerCertificate, PkiError> {
    let (rest, certificate) =
        X509Certificate::from_der(der).map_err(|_| invalid("not a DER-encoded X.509 certificate"))?;
    if !rest.is_empty() {
        return Err(invalid("trailing data after the certificate"));
    }
    let alternative_names = certificate
        .subject_alternative_name()
        .map_err(|_| invalid("malformed or repeated subjectAltName extension"))?
        .ok_or_else(|| invalid("no subjectAltName extension"))?;
    let mut node_ids = alternative_names.value.general_names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) => uri.strip_prefix(NODE_URI_PREFIX),
        _ => None,
    });
    // Two node URIs would make the identity ambiguous; picking one would let whoever
    // chose the order choose the node.
    let node_id = match (node_ids.next(), node_ids.next()) {
        (Some(node_id), None) => node_id,
        (None, _) => return Err(invalid("no urn:gpuaas:node: URI")),
        (Some(_), Some(_)) => return Err(invalid("more than one urn:gpuaas:node: URI")),
    };
    validate_node_id(node_id).map_err(|_| invalid("the node URI holds an invalid node id"))?;
    Ok(PeerCertificate {
        node_id: node_id.to_owned(),
        fingerprint: fingerprint(der),
        not_after: timestamp_from_unix_seconds(certificate.validity().not_after.timestamp()),
    })
}

fn invalid(reason: &str) -> PkiError {
    PkiError::InvalidCertificate(reason.to_owned())
}
