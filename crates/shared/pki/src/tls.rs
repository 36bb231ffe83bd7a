use std::sync::Arc;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::{PkiError, ServerIdentity};

/// A TLS server configuration that admits only clients presenting a certificate issued by
/// the CA in `ca_certificate_pem`, and serves `server`'s certificate chain. ALPN offers
/// `http/1.1`.
///
/// Certificates are verified, not interpreted: read the node id with
/// [`crate::peer_certificate`] on the handshake's first peer certificate.
pub fn mtls_server_config(ca_certificate_pem: &str, server: &ServerIdentity) -> Result<Arc<ServerConfig>, PkiError> {
    // The tree carries only the ring provider; an explicit provider keeps this working
    // whether or not some other crate installed a process default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_certificate_pem.as_bytes()) {
        let certificate =
            certificate.map_err(|_| PkiError::InvalidCertificate("CA certificate is not valid PEM".to_owned()))?;
        roots
            .add(certificate)
            .map_err(|error| PkiError::InvalidCertificate(format!("unusable CA certificate: {error}")))?;
    }
    if roots.is_empty() {
        return Err(PkiError::InvalidCertificate("no CA certificate in the PEM".to_owned()));
    }
    let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|error| PkiError::Tls(error.to_string()))?;

    let chain = CertificateDer::pem_slice_iter(server.certificate_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| PkiError::InvalidCertificate("server certificate chain is not valid PEM".to_owned()))?;
    if chain.is_empty() {
        return Err(PkiError::InvalidCertificate("no certificate in the server chain".to_owned()));
    }
    // A fixed message: the PEM parser's error could quote the secret it failed on.
    let key = PrivateKeyDer::from_pem_slice(server.private_key_pem.as_bytes())
        .map_err(|_| PkiError::InvalidCertificate("server private key is not a PEM private key".to_owned()))?;

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| PkiError::Tls(error.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(|error| PkiError::Tls(error.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
