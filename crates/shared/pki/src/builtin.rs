//! The built-in CA: an ECDSA P-256 key and self-signed certificate kept on local disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;
use x509_parser::x509::AlgorithmIdentifier;

use crate::files::{self, PUBLIC_FILE_MODE, SECRET_FILE_MODE};
use crate::names::{node_san_uri, validate_node_id};
use crate::{
    CaClient, IssuedCertificate, PkiError, ServerIdentity, fingerprint, timestamp_from, timestamp_from_unix_seconds,
};

const CA_KEY_FILE: &str = "ca.key";
const CA_CERT_FILE: &str = "ca.crt";
const CA_LOCK_FILE: &str = ".ca.lock";
const CA_COMMON_NAME: &str = "gpuaas node CA";
const SERVER_COMMON_NAME: &str = "gpuaas control plane";
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// Backdating absorbs clocks that run slightly behind the control plane's, so a fresh
/// certificate is not "not yet valid" on the node that asked for it.
const CLOCK_SKEW_ALLOWANCE: time::Duration = time::Duration::minutes(5);
/// A P-256 or Ed25519 CSR is well under 1 KiB; anything near this limit is not one.
const MAX_CSR_PEM_BYTES: usize = 16 * 1024;
/// X.509 GeneralizedTime cannot express later years.
const LAST_REPRESENTABLE_YEAR: i32 = 9999;

/// The control plane's own CA, stored as `ca.key` (PEM, mode 0600) and `ca.crt` in one
/// directory (mode 0700).
pub struct BuiltinCa {
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
    fingerprint: String,
    dir: PathBuf,
}

impl std::fmt::Debug for BuiltinCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinCa")
            .field("dir", &self.dir)
            .field("ca_fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl BuiltinCa {
    /// Loads the CA from `dir`, creating a new one when neither file exists.
    ///
    /// Safe to call from several processes at once on a fresh directory: exactly one
    /// creates the CA and the others load it. When only one of the two files exists this
    /// fails instead of regenerating, since a new CA would invalidate every node
    /// certificate already issued.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        files::create_private_dir(dir)?;
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        // Held until the CA is loaded, so nobody can observe the key without its
        // certificate while a creator is between the two writes.
        let _lock = files::lock_exclusive(&dir.join(CA_LOCK_FILE))?;
        match (files::exists(&key_path)?, files::exists(&cert_path)?) {
            (true, true) => {}
            (false, false) => create_ca(&key_path, &cert_path)?,
            (true, false) => {
                return Err(PkiError::IncompleteCa { present: key_path, missing: cert_path });
            }
            (false, true) => {
                return Err(PkiError::IncompleteCa { present: cert_path, missing: key_path });
            }
        }
        Self::load(dir, &key_path, &cert_path)
    }

    fn load(dir: &Path, key_path: &Path, cert_path: &Path) -> Result<Self, PkiError> {
        files::warn_if_exposed(key_path);
        // Parse errors are replaced by fixed reasons: a parser's message may quote the
        // bytes it choked on, and these bytes are a private key.
        let key = KeyPair::from_pem(&files::read_to_string(key_path)?)
            .map_err(|_| corrupt(key_path, "not a PEM-encoded PKCS#8 private key"))?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(corrupt(key_path, "not an ECDSA P-256 key"));
        }

        let certificate_pem = files::read_to_string(cert_path)?;
        let certificate_der = CertificateDer::from_pem_slice(certificate_pem.as_bytes())
            .map_err(|_| corrupt(cert_path, "not a PEM certificate"))?;
        check_ca_certificate(&certificate_der, &key, cert_path)?;

        let issuer = Issuer::from_ca_cert_der(&certificate_der, key)
            .map_err(|error| corrupt(cert_path, &format!("unusable CA certificate: {error}")))?;
        let ca = Self { issuer, fingerprint: fingerprint(&certificate_der), certificate_pem, dir: dir.to_path_buf() };
        tracing::debug!(dir = %ca.dir.display(), fingerprint = %ca.fingerprint, "loaded node CA");
        Ok(ca)
    }
}

#[async_trait::async_trait]
impl CaClient for BuiltinCa {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn ca_certificate_pem(&self) -> String {
        self.certificate_pem.clone()
    }

    async fn sign_node_csr(
        &self,
        node_id: &str,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<IssuedCertificate, PkiError> {
        validate_node_id(node_id)?;
        let public_key = csr_public_key(csr_pem)?;
        let (not_before, not_after) = validity_window(validity)?;
        let serial = random_serial();

        // Everything is chosen here; the CSR contributes its public key and nothing else.
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(node_id);
        let uri =
            Ia5String::try_from(node_san_uri(node_id)).map_err(|error| PkiError::Generation(error.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = not_before;
        params.not_after = not_after;

        let certificate =
            params.signed_by(&public_key, &self.issuer).map_err(|error| PkiError::Generation(error.to_string()))?;
        let issued = IssuedCertificate {
            certificate_pem: certificate.pem(),
            fingerprint: fingerprint(certificate.der()),
            serial: hex::encode(serial),
            not_before: timestamp_from(not_before),
            not_after: timestamp_from(not_after),
        };
        tracing::info!(
            node_id,
            serial = %issued.serial,
            fingerprint = %issued.fingerprint,
            not_after = %issued.not_after,
            "signed node certificate"
        );
        Ok(issued)
    }

    async fn issue_server_certificate(&self, names: &[String], validity: Duration) -> Result<ServerIdentity, PkiError> {
        validate_server_names(names)?;
        let (not_before, not_after) = validity_window(validity)?;
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|error| PkiError::InvalidServerName(error.to_string()))?;
        params.distinguished_name = common_name(SERVER_COMMON_NAME);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        params.not_before = not_before;
        params.not_after = not_after;

        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|error| PkiError::Generation(error.to_string()))?;
        let certificate =
            params.signed_by(&key, &self.issuer).map_err(|error| PkiError::Generation(error.to_string()))?;

        let mut certificate_chain_pem = certificate.pem();
        if !certificate_chain_pem.ends_with('\n') {
            certificate_chain_pem.push('\n');
        }
        certificate_chain_pem.push_str(&self.certificate_pem);
        tracing::info!(
            ?names,
            fingerprint = %fingerprint(certificate.der()),
            not_after = %timestamp_from(not_after),
            "issued server certificate"
        );
        Ok(ServerIdentity {
            certificate_chain_pem,
            private_key_pem: key.serialize_pem(),
            not_after: timestamp_from(not_after),
        })
    }
}

fn create_ca(key_path: &Path, cert_path: &Path) -> Result<(), PkiError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|error| PkiError::Generation(error.to_string()))?;
    let now = now_whole_second();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    // Path length 0: this CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + CA_VALIDITY;
    let certificate = params.self_signed(&key).map_err(|error| PkiError::Generation(error.to_string()))?;

    // The key goes first: a crash between the two writes then leaves a key without a
    // certificate, which the next start reports instead of silently replacing.
    if !files::create_once(key_path, key.serialize_pem().as_bytes(), SECRET_FILE_MODE)? {
        // Someone outside the lock got there first; loading decides whether their files
        // form a usable CA.
        return Ok(());
    }
    files::create_once(cert_path, certificate.pem().as_bytes(), PUBLIC_FILE_MODE)?;
    tracing::info!(
        path = %cert_path.display(),
        fingerprint = %fingerprint(certificate.der()),
        "created a new node CA"
    );
    Ok(())
}

/// Refuses a certificate that is not a CA or does not belong to the CA key: signing with a
/// key that does not match `ca.crt` would issue certificates nobody can verify.
fn check_ca_certificate(der: &[u8], key: &KeyPair, path: &Path) -> Result<(), PkiError> {
    let (rest, certificate) =
        X509Certificate::from_der(der).map_err(|_| corrupt(path, "not a DER-encoded X.509 certificate"))?;
    if !rest.is_empty() {
        return Err(corrupt(path, "trailing data after the certificate"));
    }
    if !certificate.is_ca() {
        return Err(corrupt(path, "not a CA certificate"));
    }
    if certificate.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(key).as_slice() {
        return Err(corrupt(path, "certificate does not match the CA private key"));
    }
    let not_after = certificate.validity().not_after.timestamp();
    if not_after <= OffsetDateTime::now_utc().unix_timestamp() {
        tracing::error!(
            path = %path.display(),
            not_after = %timestamp_from_unix_seconds(not_after),
            "the node CA certificate has expired; agents will refuse the control plane"
        );
    }
    Ok(())
}

/// Extracts the public key of a well-formed, self-consistent CSR.
fn csr_public_key(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo, PkiError> {
    if csr_pem.len() > MAX_CSR_PEM_BYTES {
        return Err(PkiError::InvalidCsr(format!("larger than {MAX_CSR_PEM_BYTES} bytes")));
    }
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|_| invalid_csr("not a PEM `CERTIFICATE REQUEST`"))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|_| invalid_csr("not a DER-encoded PKCS#10 request"))?;
    if !rest.is_empty() {
        return Err(invalid_csr("trailing data after the request"));
    }
    // Proves the requester holds the private key, and catches any alteration in transit.
    csr.verify_signature().map_err(|_| invalid_csr("signature does not verify with the request's public key"))?;
    let subject_key = &csr.certification_request_info.subject_pki;
    if !is_accepted_key_algorithm(&subject_key.algorithm) {
        return Err(invalid_csr("public key must be ECDSA P-256 or Ed25519"));
    }
    rcgen::SubjectPublicKeyInfo::from_der(subject_key.raw).map_err(|_| invalid_csr("unsupported public key encoding"))
}

fn is_accepted_key_algorithm(algorithm: &AlgorithmIdentifier<'_>) -> bool {
    if algorithm.algorithm == OID_SIG_ED25519 {
        return algorithm.parameters.is_none();
    }
    algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && algorithm
            .parameters
            .as_ref()
            .and_then(|parameters| parameters.as_oid().ok())
            .is_some_and(|curve| curve == OID_EC_P256)
}

fn validate_server_names(names: &[String]) -> Result<(), PkiError> {
    if names.is_empty() {
        return Err(PkiError::InvalidServerName("at least one name is required".to_owned()));
    }
    for name in names {
        if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(PkiError::InvalidServerName(format!("{name:?}")));
        }
    }
    Ok(())
}

/// Whole seconds, because that is all X.509 records: the returned timestamps then equal
/// the certificate's own.
fn now_whole_second() -> OffsetDateTime {
    OffsetDateTime::now_utc().truncate_to_second()
}

fn validity_window(validity: Duration) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    if validity < Duration::from_secs(1) {
        return Err(PkiError::Generation("validity must be at least one second".to_owned()));
    }
    let now = now_whole_second();
    let not_after = time::Duration::try_from(validity)
        .ok()
        .and_then(|validity| now.checked_add(validity))
        .filter(|not_after| not_after.year() <= LAST_REPRESENTABLE_YEAR)
        .ok_or_else(|| PkiError::Generation("validity is too long".to_owned()))?;
    Ok((now - CLOCK_SKEW_ALLOWANCE, not_after))
}

/// 16 random bytes with the top bit cleared so the DER INTEGER is positive, and the next
/// bit set so no leading zero is trimmed: always exactly 16 bytes, 126 of them random.
fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f) | 0x40;
    serial
}

fn common_name(name: &str) -> DistinguishedName {
    let mut distinguished_name = DistinguishedName::new();
    distinguished_name.push(DnType::CommonName, name);
    distinguished_name
}

fn invalid_csr(reason: &str) -> PkiError {
    PkiError::InvalidCsr(reason.to_owned())
}

fn corrupt(path: &Path, reason: &str) -> PkiError {
    PkiError::CorruptFile { path: path.to_path_buf(), reason: reason.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_and_sixteen_bytes() {
        for _ in 0..256 {
            let serial = random_serial();
            assert_eq!(serial[0] & 0x80, 0);
            assert_ne!(serial[0], 0);
        }
        assert_ne!(random_serial(), random_serial());
    }

    #[test]
    fn validity_window_backdates_and_refuses_nonsense() -> Result<(), PkiError> {
        let (not_before, not_after) = validity_window(Duration::from_secs(3600))?;
        assert_eq!(not_after - not_before, time::Duration::minutes(65));
        assert!(validity_window(Duration::ZERO).is_err());
        assert!(validity_window(Duration::from_secs(u64::MAX)).is_err());
        Ok(())
    }

    #[test]
    fn server_names_must_be_present_and_printable() {
        assert!(validate_server_names(&[]).is_err());
        assert!(validate_server_names(&[String::new()]).is_err());
        assert!(validate_server_names(&["a b".to_owned()]).is_err());
        assert!(validate_server_names(&["cp.example".to_owned(), "10.0.0.1".to_owned()]).is_ok());
    }
}
