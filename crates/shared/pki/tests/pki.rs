//! The built-in CA end to end: key material on disk, node certificates bound to the node
//! id the control plane chose, and real mTLS handshakes over loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use base64::Engine;
use gpuaas_kernel::Timestamp;
use gpuaas_pki::rustls::pki_types::pem::PemObject;
use gpuaas_pki::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use gpuaas_pki::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use gpuaas_pki::{
    BuiltinCa, CaClient, PeerCertificate, PkiError, ServerIdentity, fingerprint, load_or_create_signing_key,
    mtls_server_config, node_san_uri, peer_certificate,
};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SignatureAlgorithm,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
}

fn now_seconds() -> i64 {
    Timestamp::now().as_micros() / 1_000_000
}

fn seconds(timestamp: Timestamp) -> i64 {
    timestamp.as_micros() / 1_000_000
}

/// A CSR that asks for everything a node must not get: another node's identity, a DNS
/// name, server and CA powers, and an extension nobody knows.
fn hostile_csr(algorithm: &'static SignatureAlgorithm) -> (KeyPair, String) {
    let key = KeyPair::generate_for(algorithm).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "OTHER-CN");
    params.subject_alt_names = vec![
        SanType::URI(Ia5String::try_from(node_san_uri("OTHER")).unwrap()),
        SanType::DnsName(Ia5String::try_from("evil.example").unwrap()),
    ];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.custom_extensions = vec![CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0])];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

fn plain_csr(algorithm: &'static SignatureAlgorithm) -> (KeyPair, String) {
    let key = KeyPair::generate_for(algorithm).unwrap();
    let csr = CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|line| std::str::from_utf8(line).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

fn csr_der(csr_pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).unwrap().1.contents
}

async fn node_identity(
    ca: &BuiltinCa,
    node_id: &str,
    algorithm: &'static SignatureAlgorithm,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let (key, csr) = plain_csr(algorithm);
    let issued = ca.sign_node_csr(node_id, &csr, DAY).await.unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (vec![der_of(&issued.certificate_pem)], key)
}

async fn server_identity(ca: &BuiltinCa) -> ServerIdentity {
    ca.issue_server_certificate(&["localhost".to_owned(), "127.0.0.1".to_owned()], DAY).await.unwrap()
}

fn client_config(
    trusted_ca_pem: &str,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(der_of(trusted_ca_pem)).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

struct Handshake {
    /// What the server made of the client: its identity, or why the handshake failed.
    server: Result<PeerCertificate, String>,
    /// Whether the client got through the handshake and read the server's first bytes.
    client: Result<(), String>,
}

/// One connection over loopback. The client reads a greeting so that, under TLS 1.3 where
/// the client finishes before the server has judged its certificate, a refusal still
/// reaches the client as an error.
async fn handshake(server_config: Arc<ServerConfig>, client_config: Arc<ClientConfig>) -> Handshake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|error| error.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|error| error.to_string())?;
        let (_, connection) = tls.get_ref();
        assert_eq!(connection.alpn_protocol(), Some(&b"http/1.1"[..]));
        let der = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or_else(|| "no peer certificate".to_owned())?
            .clone();
        let peer = peer_certificate(&der).map_err(|error| error.to_string())?;
        tls.write_all(b"hi").await.map_err(|error| error.to_string())?;
        tls.shutdown().await.map_err(|error| error.to_string())?;
        Ok::<_, String>(peer)
    });
    let client = async {
        let tcp = TcpStream::connect(address).await.map_err(|error| error.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(client_config).connect(name, tcp).await.map_err(|error| error.to_string())?;
        let mut greeting = [0u8; 2];
        tls.read_exact(&mut greeting).await.map_err(|error| error.to_string())?;
        assert_eq!(&greeting, b"hi");
        Ok::<_, String>(())
    };
    let (server, client) = tokio::time::timeout(Duration::from_secs(20), async {
        let client = client.await;
        (server.await.unwrap(), client)
    })
    .await
    .expect("handshake finished");
    Handshake { server, client }
}

// ---- CA key material on disk ----

#[test]
fn ca_is_created_once_then_loaded_from_disk() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("pki");
    let first = BuiltinCa::load_or_create(&dir).unwrap();
    assert_eq!(first.name(), "builtin");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert!(fs::read_to_string(dir.join("ca.key")).unwrap().contains("PRIVATE KEY"));
    assert_eq!(fs::read_to_string(dir.join("ca.crt")).unwrap(), first.ca_certificate_pem());

    let second = BuiltinCa::load_or_create(&dir).unwrap();
    assert_eq!(second.ca_certificate_pem(), first.ca_certificate_pem());

    let other = BuiltinCa::load_or_create(&root.path().join("other")).unwrap();
    assert_ne!(other.ca_certificate_pem(), first.ca_certificate_pem(), "each directory gets its own CA");
}

#[test]
fn ca_certificate_is_a_long_lived_p256_ca_that_signs_leaves_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(dir.path()).unwrap();
    let der = der_of(&ca.ca_certificate_pem());
    let (_, certificate) = X509Certificate::from_der(&der).unwrap();

    let common_names: Vec<_> = certificate.subject().iter_common_name().map(|cn| cn.as_str().unwrap()).collect();
    assert_eq!(common_names, ["gpuaas node CA"]);
    assert_eq!(certificate.subject(), certificate.issuer());
    certificate.verify_signature(None).expect("self-signed");

    let constraints = certificate.basic_constraints().unwrap().expect("basic constraints").value;
    assert!(constraints.ca);
    assert_eq!(constraints.path_len_constraint, Some(0));
    let usage = certificate.key_usage().unwrap().expect("key usage").value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    assert!(!usage.digital_signature());

    let public_key = certificate.public_key();
    assert_eq!(public_key.algorithm.algorithm, x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY);
    assert_eq!(
        public_key.algorithm.parameters.as_ref().unwrap().as_oid().unwrap(),
        x509_parser::oid_registry::OID_EC_P256
    );

    let lifetime_days = (certificate.validity().not_after.timestamp() - now_seconds()) / 86_400;
    assert!((3640..=3660).contains(&lifetime_days), "about ten years, got {lifetime_days} days");
}

#[test]
fn a_lone_ca_file_is_an_error_not_a_reason_to_regenerate() {
    let dir = tempfile::tempdir().unwrap();
    BuiltinCa::load_or_create(dir.path()).unwrap();
    let key_path = dir.path().join("ca.key");
    let cert_path = dir.path().join("ca.crt");
    let certificate = fs::read(&cert_path).unwrap();

    fs::remove_file(&cert_path).unwrap();
    let error = BuiltinCa::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(&error, PkiError::IncompleteCa { missing, .. } if *missing == cert_path), "{error:?}");
    assert!(!cert_path.exists(), "nothing regenerated");

    fs::write(&cert_path, &certificate).unwrap();
    fs::remove_file(&key_path).unwrap();
    let error = BuiltinCa::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(&error, PkiError::IncompleteCa { missing, .. } if *missing == key_path), "{error:?}");
    assert!(!key_path.exists(), "nothing regenerated");
    assert_eq!(fs::read(&cert_path).unwrap(), certificate, "the surviving file is untouched");
}

#[test]
fn a_certificate_that_does_not_match_the_key_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (dir, other) = (root.path().join("a"), root.path().join("b"));
    BuiltinCa::load_or_create(&dir).unwrap();
    BuiltinCa::load_or_create(&other).unwrap();
    fs::copy(other.join("ca.crt"), dir.join("ca.crt")).unwrap();
    let error = BuiltinCa::load_or_create(&dir).unwrap_err();
    assert!(matches!(error, PkiError::CorruptFile { .. }), "{error:?}");
}

#[test]
fn an_unreadable_ca_key_is_reported_without_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    BuiltinCa::load_or_create(dir.path()).unwrap();
    let key_path = dir.path().join("ca.key");
    let damaged = fs::read_to_string(&key_path).unwrap().replace('A', "#");
    fs::write(&key_path, &damaged).unwrap();

    let error = BuiltinCa::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(error, PkiError::CorruptFile { .. }), "{error:?}");
    let message = format!("{error} {error:?}");
    for line in damaged.lines().filter(|line| !line.starts_with("-----")) {
        assert!(!message.contains(line), "error quotes the key file: {message}");
    }
}

#[test]
fn concurrent_first_starts_agree_on_one_ca() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("fresh");
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (dir, barrier) = (dir.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                BuiltinCa::load_or_create(&dir).map(|ca| ca.ca_certificate_pem())
            })
        })
        .collect();
    let certificates: Vec<String> = handles.into_iter().map(|handle| handle.join().unwrap().unwrap()).collect();
    assert!(certificates.iter().all(|pem| *pem == certificates[0]), "every starter sees the same CA");
    assert_eq!(fs::read_to_string(dir.join("ca.crt")).unwrap(), certificates[0]);
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}

#[tokio::test]
async fn debug_output_never_shows_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(dir.path()).unwrap();
    let ca_key = fs::read_to_string(dir.path().join("ca.key")).unwrap();
    let ca_debug = format!("{ca:?} {ca:#?}");
    assert!(!ca_debug.contains("PRIVATE KEY"), "{ca_debug}");
    for line in ca_key.lines().filter(|line| !line.starts_with("-----")) {
        assert!(!ca_debug.contains(line), "{ca_debug}");
    }

    let server = server_identity(&ca).await;
    let server_debug = format!("{server:?} {server:#?}");
    assert!(!server_debug.contains("PRIVATE KEY"), "{server_debug}");
    for line in server.private_key_pem.lines().filter(|line| !line.starts_with("-----")) {
        assert!(!server_debug.contains(line), "{server_debug}");
    }
}

// ---- Node certificates ----

async fn node_certificate_names_the_given_node_only(algorithm: &'static SignatureAlgorithm) {
    let dir = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(dir.path()).unwrap();
    let (key, csr) = hostile_csr(algorithm);
    let before = now_seconds();
    let issued = ca.sign_node_csr("node-7", &csr, DAY).await.unwrap();
    let after = now_seconds();

    let der = der_of(&issued.certificate_pem);
    assert_eq!(issued.fingerprint, fingerprint(&der));
    assert_eq!(issued.fingerprint.len(), 64);
    assert!(issued.fingerprint.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    let peer = peer_certificate(&der).unwrap();
    assert_eq!(peer.node_id, "node-7");
    assert_eq!(peer.fingerprint, issued.fingerprint);
    assert_eq!(peer.not_after, issued.not_after);

    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    let ca_der = der_of(&ca.ca_certificate_pem());
    let (_, ca_certificate) = X509Certificate::from_der(&ca_der).unwrap();
    leaf.verify_signature(Some(ca_certificate.public_key())).expect("signed by the CA");
    assert_eq!(leaf.issuer(), ca_certificate.subject());
    assert_eq!(leaf.public_key().raw, rcgen::PublicKeyData::subject_public_key_info(&key).as_slice());

    let common_names: Vec<_> = leaf.subject().iter_common_name().map(|cn| cn.as_str().unwrap()).collect();
    assert_eq!(common_names, ["node-7"], "the CSR's subject is ignored");
    let names = &leaf.subject_alternative_name().unwrap().expect("SAN").value.general_names;
    assert_eq!(names, &[GeneralName::URI("urn:gpuaas:node:node-7")], "the CSR's SANs are ignored");
    let usage = leaf.extended_key_usage().unwrap().expect("EKU").value;
    assert!(usage.client_auth && !usage.server_auth && !usage.any && usage.other.is_empty());
    let key_usage = leaf.key_usage().unwrap().expect("KU").value;
    assert!(key_usage.digital_signature() && !key_usage.key_cert_sign());
    assert!(!leaf.is_ca());
    assert!(
        leaf.extensions().iter().all(|extension| extension.oid.to_id_string() != "1.3.6.1.4.1.99999.1"),
        "unknown requested extensions are not copied"
    );

    assert_eq!(leaf.raw_serial().len(), 16);
    assert_eq!(leaf.raw_serial()[0] & 0x80, 0, "positive serial");
    assert_eq!(issued.serial, hex::encode(leaf.raw_serial()));

    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    assert_eq!(seconds(issued.not_before), not_before);
    assert_eq!(seconds(issued.not_after), not_after);
    assert!((before - 300..=after - 300).contains(&not_before), "backdated five minutes for clock skew");
    assert!((before + 86_400..=after + 86_400).contains(&not_after), "valid for the requested day");
}

#[tokio::test]
async fn p256_node_certificate_names_the_given_node_only() {
    node_certificate_names_the_given_node_only(&rcgen::PKCS_ECDSA_P256_SHA256).await;
}

#[tokio::test]
async fn ed25519_node_certificate_names_the_given_node_only() {
    node_certificate_names_the_given_node_only(&rcgen::PKCS_ED25519).await;
}

#[tokio::test]
async fn every_node_certificate_gets_a_fresh_serial() {
    let dir = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(dir.path()).unwrap();
    let (_, csr) = plain_csr(&rcgen::PKCS_ED25519);
    let first = ca.sign_node_csr("node-1", &csr, DAY).await.unwrap();
    let second = ca.sign_node_csr("node-1", &csr, DAY).await.unwrap();
    assert_ne!(first.serial, second.serial);
    assert_ne!(first.fingerprint, second.fingerprint);
}

#[tokio::test]
async fn a_tampered_csr_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(dir.path()).unwrap();
    let (_, csr) = hostile_csr(&rcgen::PKCS_ECDSA_P256_SHA256);
    let der = csr_der(&csr);
    ca.sign_node_csr("node-1", &pem_encode("CERTIFICATE REQUEST", &der), DAY).await.expect("re-encoding alone is fine");

    // A changed subject still parses, so only the signature check can catch it.
    let mut altered_subject = der.clone();
    let at = altered_subject.windows(8).position(|window| window == b"OTHER-CN").expect("CN in the DER");
    altered_subject[at] ^= 0x01;
    let error =
        ca.sign_node_csr("node-1", &pem_encode("CERTIFICATE REQUEST", &altered_subject), DAY).await.unwrap_err();
    assert!(matches!(error, PkiError::InvalidCsr(_)), "{error:?}");
    assert!(error.is_client_error());

    let mut altered_signature = der.clone();
    let last = altered_signature.len() - 1;
    altered_signature[last] ^= 0x01;
    let error =
        ca.sign_node_csr("node-1", &pem_encode("CERTIFICATE REQUEST", &altered_signature), DAY).await.unwrap_err();
    assert!(matches!(error, PkiError::InvalidCsr(_)), "{error:?}");
}

#[tokio::test]
async fn malformed_oversized_and_unsupported_csrs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(dir.path()).unwrap();
    let (_, csr) = plain_csr(&rcgen::PKCS_ECDSA_P256_SHA256);
    ca.sign_node_csr("node-1", &csr, DAY).await.expect("the unpadded CSR is fine");

    let oversized = format!("{}{csr}", " ".repeat(16 * 1024));
    let (_, p384) = plain_csr(&rcgen::PKCS_ECDSA_P384_SHA384);
    let cases = [
        ("garbage", "hello, CA".to_owned()),
        ("empty", String::new()),
        ("a certificate, not a request", ca.ca_certificate_pem()),
        ("not DER inside", pem_encode("CERTIFICATE REQUEST", b"definitely not DER")),
        ("oversized", oversized),
        ("P-384 key", p384),
    ];
    for (case, pem) in cases {
        let error = ca.sign_node_csr("node-1", &pem, DAY).await.unwrap_err();
        assert!(matches!(error, PkiError::InvalidCsr(_)), "{case}: {error:?}");
    }
}

#[tokio::test]
async fn invalid_node_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(dir.path()).unwrap();
    let (_, csr) = plain_csr(&rcgen::PKCS_ED25519);
    ca.sign_node_csr(&"n".repeat(64), &csr, DAY).await.expect("64 characters are allowed");
    for node_id in ["", &"n".repeat(65), "node/1", "node 1", "node:1", "nöde"] {
        let error = ca.sign_node_csr(node_id, &csr, DAY).await.unwrap_err();
        assert!(matches!(error, PkiError::InvalidNodeId(_)), "{node_id:?}: {error:?}");
        assert!(error.is_client_error());
    }
}

// ---- Server certificates ----

#[tokio::test]
async fn server_certificate_carries_the_requested_names_and_chains_to_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(dir.path()).unwrap();
    let names = ["cp.gpuaas.test", "127.0.0.1", "::1"].map(str::to_owned);
    let before = now_seconds();
    let server = ca.issue_server_certificate(&names, DAY).await.unwrap();

    let chain: Vec<_> =
        CertificateDer::pem_slice_iter(server.certificate_chain_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    assert_eq!(chain.len(), 2, "leaf then CA");
    assert_eq!(chain[1], der_of(&ca.ca_certificate_pem()));

    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let (_, ca_certificate) = X509Certificate::from_der(&chain[1]).unwrap();
    leaf.verify_signature(Some(ca_certificate.public_key())).expect("signed by the CA");
    let sans = &leaf.subject_alternative_name().unwrap().expect("SAN").value.general_names;
    let ipv6_loopback = std::net::Ipv6Addr::LOCALHOST.octets();
    assert_eq!(
        sans,
        &[
            GeneralName::DNSName("cp.gpuaas.test"),
            GeneralName::IPAddress(&[127, 0, 0, 1]),
            GeneralName::IPAddress(&ipv6_loopback),
        ]
    );
    let usage = leaf.extended_key_usage().unwrap().expect("EKU").value;
    assert!(usage.server_auth && !usage.client_auth);
    assert!(!leaf.is_ca());
    assert_eq!(seconds(server.not_after), leaf.validity().not_after.timestamp());
    assert!(seconds(server.not_after) >= before + 86_400);

    let key = KeyPair::from_pem(&server.private_key_pem).unwrap();
    assert_eq!(leaf.public_key().raw, rcgen::PublicKeyData::subject_public_key_info(&key).as_slice());

    let again = ca.issue_server_certificate(&names, DAY).await.unwrap();
    assert_ne!(again.private_key_pem, server.private_key_pem, "a fresh key every time");

    let error = ca.issue_server_certificate(&[], DAY).await.unwrap_err();
    assert!(matches!(error, PkiError::InvalidServerName(_)), "{error:?}");
}

// ---- Peer identity ----

#[tokio::test]
async fn peer_certificate_needs_exactly_one_node_uri() {
    let dir = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(dir.path()).unwrap();
    let server = server_identity(&ca).await;
    let server_leaf = CertificateDer::pem_slice_iter(server.certificate_chain_pem.as_bytes()).next().unwrap().unwrap();
    assert!(matches!(peer_certificate(&server_leaf), Err(PkiError::InvalidCertificate(_))), "no node URI");

    let self_signed = |uris: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris.iter().map(|uri| SanType::URI(Ia5String::try_from(*uri).unwrap())).collect();
        params.self_signed(&key).unwrap().der().clone()
    };
    let one = self_signed(&["https://node.example", "urn:gpuaas:node:n-1"]);
    assert_eq!(peer_certificate(&one).unwrap().node_id, "n-1");
    for uris in [
        &["urn:gpuaas:node:n-1", "urn:gpuaas:node:n-2"][..],
        &["urn:gpuaas:node:n-1", "urn:gpuaas:node:n-1"][..],
        &["urn:gpuaas:nodes:n-1"][..],
        &["urn:gpuaas:node:"][..],
        &["urn:gpuaas:node:n/1"][..],
    ] {
        let error = peer_certificate(&self_signed(uris)).unwrap_err();
        assert!(matches!(error, PkiError::InvalidCertificate(_)), "{uris:?}: {error:?}");
    }
    assert!(matches!(peer_certificate(b"not a certificate"), Err(PkiError::InvalidCertificate(_))));
}

// ---- mTLS over loopback ----

async fn node_with_a_certificate_from_this_ca_is_admitted(algorithm: &'static SignatureAlgorithm) {
    let dir = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(dir.path()).unwrap();
    let server = mtls_server_config(&ca.ca_certificate_pem(), &server_identity(&ca).await).unwrap();
    let (chain, key) = node_identity(&ca, "node-42", algorithm).await;
    let expected_fingerprint = fingerprint(&chain[0]);

    let outcome = handshake(server, client_config(&ca.ca_certificate_pem(), Some((chain, key)))).await;
    outcome.client.expect("client connects");
    let peer = outcome.server.expect("server admits the node");
    assert_eq!(peer.node_id, "node-42");
    assert_eq!(peer.fingerprint, expected_fingerprint);
}

#[tokio::test]
async fn mtls_admits_a_p256_node_certificate_and_names_the_node() {
    node_with_a_certificate_from_this_ca_is_admitted(&rcgen::PKCS_ECDSA_P256_SHA256).await;
}

#[tokio::test]
async fn mtls_admits_an_ed25519_node_certificate_and_names_the_node() {
    node_with_a_certificate_from_this_ca_is_admitted(&rcgen::PKCS_ED25519).await;
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(dir.path()).unwrap();
    let server = mtls_server_config(&ca.ca_certificate_pem(), &server_identity(&ca).await).unwrap();
    let outcome = handshake(server, client_config(&ca.ca_certificate_pem(), None)).await;
    assert!(outcome.server.is_err(), "server admitted an anonymous client");
    assert!(outcome.client.is_err(), "client got data without a certificate");
}

#[tokio::test]
async fn mtls_refuses_a_certificate_from_another_ca() {
    let root = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(&root.path().join("ours")).unwrap();
    let stranger = BuiltinCa::load_or_create(&root.path().join("theirs")).unwrap();
    let server = mtls_server_config(&ca.ca_certificate_pem(), &server_identity(&ca).await).unwrap();
    let foreign = node_identity(&stranger, "node-42", &rcgen::PKCS_ECDSA_P256_SHA256).await;
    let outcome = handshake(server, client_config(&ca.ca_certificate_pem(), Some(foreign))).await;
    assert!(outcome.server.is_err(), "server admitted a certificate from another CA");
    assert!(outcome.client.is_err());
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_cannot_connect() {
    let root = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(&root.path().join("ours")).unwrap();
    let stranger = BuiltinCa::load_or_create(&root.path().join("theirs")).unwrap();
    let server = mtls_server_config(&ca.ca_certificate_pem(), &server_identity(&ca).await).unwrap();
    let identity = node_identity(&ca, "node-42", &rcgen::PKCS_ECDSA_P256_SHA256).await;
    let outcome = handshake(server, client_config(&stranger.ca_certificate_pem(), Some(identity))).await;
    let error = outcome.client.expect_err("client accepted a server it does not trust");
    // Both CAs are named "gpuaas node CA", so the client finds a same-named anchor whose key
    // does not verify the chain rather than no anchor at all.
    assert!(error.contains("invalid peer certificate"), "{error}");
    assert!(outcome.server.is_err());
}

#[tokio::test]
async fn mtls_server_config_refuses_unusable_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let ca = BuiltinCa::load_or_create(dir.path()).unwrap();
    let server = server_identity(&ca).await;
    assert!(mtls_server_config("", &server).is_err(), "no CA");
    let keyless = ServerIdentity { private_key_pem: String::new(), ..server.clone() };
    assert!(mtls_server_config(&ca.ca_certificate_pem(), &keyless).is_err(), "no key");
    let other = server_identity(&ca).await;
    let mismatched = ServerIdentity { private_key_pem: other.private_key_pem, ..server };
    assert!(mtls_server_config(&ca.ca_certificate_pem(), &mismatched).is_err(), "key does not match the certificate");
}

// ---- Task-signing key ----

#[test]
fn signing_key_is_created_once_and_reloaded_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys").join("task-signing.key");
    let first = load_or_create_signing_key(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let stored = fs::read_to_string(&path).unwrap();
    assert_eq!(stored.trim(), hex::encode(first.to_bytes()), "the seed, in hex");

    let second = load_or_create_signing_key(&path).unwrap();
    assert_eq!(second.to_bytes(), first.to_bytes());
    assert_eq!(fs::read_to_string(&path).unwrap(), stored, "never rewritten");

    let other = load_or_create_signing_key(&dir.path().join("other.key")).unwrap();
    assert_ne!(other.to_bytes(), first.to_bytes());
}

#[test]
fn concurrent_first_starts_agree_on_one_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task-signing.key");
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                load_or_create_signing_key(&path).map(|key| key.to_bytes())
            })
        })
        .collect();
    let keys: Vec<_> = handles.into_iter().map(|handle| handle.join().unwrap().unwrap()).collect();
    assert!(keys.iter().all(|key| *key == keys[0]));
}

#[test]
fn a_corrupt_signing_key_is_reported_without_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task-signing.key");
    let secret = "sec7".repeat(16);
    fs::write(&path, &secret).unwrap();
    let error = load_or_create_signing_key(&path).unwrap_err();
    assert!(matches!(error, PkiError::CorruptFile { .. }), "{error:?}");
    let message = format!("{error} {error:?}");
    assert!(!message.contains("sec7") && !message.contains("'s'"), "{message}");
    assert_eq!(fs::read_to_string(&path).unwrap(), secret, "never replaced");
}
