//! HTTP plumbing shared by enrollment, the run loops and the simulator: clients,
//! the platform's error envelope, and how each answer is classified.

use std::time::Duration;

use reqwest::{Certificate, Client, Identity, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::state::Credentials;

/// Longer than the longest pull wait ([`gpuaas_nodeagent_protocol::wire::MAX_PULL_WAIT_SECONDS`])
/// plus the server's own slack, so a long-poll is never cut short by the client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest error body kept for messages when it is not the platform's envelope.
const MAX_BODY_ECHO: usize = 200;

/// How a call went wrong, which decides what the caller does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// 401 or 403: the control plane no longer accepts this node's identity (revoked
    /// certificate, retired node). Retrying cannot help; the node needs enrolling again.
    #[error("refused with {status} {code}: {message}")]
    Unauthorized { status: u16, code: String, message: String },
    /// Any other 4xx: this request is wrong and repeating it will not fix it.
    #[error("rejected with {status} {code}: {message}")]
    Rejected { status: u16, code: String, message: String },
    /// Network failures, timeouts, 5xx, 429, unreadable answers: worth retrying later.
    #[error("{0}")]
    Transient(String),
}

impl CallError {
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Unauthorized { code, .. } | CallError::Rejected { code, .. } => Some(code),
            CallError::Transient(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    error: EnvelopeBody,
}

#[derive(Deserialize)]
struct EnvelopeBody {
    code: String,
    #[serde(default)]
    message: String,
}

/// The `code` and `message` of an error answer; for a body that is not the platform's
/// envelope (a proxy's page, say) a code derived from the status and the start of the body.
pub fn error_code_and_message(status: StatusCode, body: &str) -> (String, String) {
    match serde_json::from_str::<Envelope>(body) {
        Ok(envelope) => (envelope.error.code, envelope.error.message),
        Err(_) => {
            let mut echo: String = body.chars().filter(|c| !c.is_control()).take(MAX_BODY_ECHO).collect();
            if echo.is_empty() {
                echo = status.canonical_reason().unwrap_or("no reason given").to_owned();
            }
            (format!("http_{}", status.as_u16()), echo)
        }
    }
}

/// The whole `source()` chain of an error on one line: reqwest's own message alone
/// ("error sending request") hides whether DNS, TCP or TLS failed.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Sends a request and sorts the answer: 2xx comes back as the response, anything else
/// as a [`CallError`].
pub async fn send(request: reqwest::RequestBuilder) -> Result<Response, CallError> {
    // The caller names the URL in its own message; reqwest's copy would repeat it.
    let response = request.send().await.map_err(|error| CallError::Transient(error_chain(&error.without_url())))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let (code, message) = error_code_and_message(status, &body);
    Err(classify(status, code, message))
}

pub fn classify(status: StatusCode, code: String, message: String) -> CallError {
    let numeric = status.as_u16();
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => CallError::Unauthorized { status: numeric, code, message },
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
            CallError::Transient(format!("{numeric} {code}: {message}"))
        }
        status if status.is_client_error() => CallError::Rejected { status: numeric, code, message },
        _ => CallError::Transient(format!("{numeric} {code}: {message}")),
    }
}

pub async fn read_json<T: DeserializeOwned>(response: Response) -> Result<T, CallError> {
    let bytes = response.bytes().await.map_err(|error| CallError::Transient(error_chain(&error)))?;
    serde_json::from_slice(&bytes)
        .map_err(|error| CallError::Transient(format!("the control plane's answer is not understood: {error}")))
}

/// The client for the public listener (enrollment): the system's roots, plus `extra_ca`
/// for a control plane whose public certificate a private CA issued.
pub fn public_client(extra_ca_pem: Option<&[u8]>) -> Result<Client, String> {
    let mut builder = Client::builder()
        .use_rustls_tls()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(user_agent());
    if let Some(pem) = extra_ca_pem {
        for certificate in Certificate::from_pem_bundle(pem).map_err(|error| format!("CA file: {error}"))? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|error| error_chain(&error))
}

/// The mTLS client for the internal listener: it trusts only the platform's CA (a
/// public CA must not be able to impersonate the control plane) and presents the
/// node certificate.
pub fn internal_client(credentials: &Credentials) -> Result<Client, String> {
    let ca = Certificate::from_pem(credentials.ca_pem.as_bytes()).map_err(|error| format!("ca.crt: {error}"))?;
    let mut identity_pem = credentials.cert_pem.clone().into_bytes();
    if !identity_pem.ends_with(b"\n") {
        identity_pem.push(b'\n');
    }
    identity_pem.extend_from_slice(credentials.key_pem.as_bytes());
    // The error never echoes the PEM, so the key cannot leak through it.
    let identity = Identity::from_pem(&identity_pem).map_err(|error| format!("node.crt or node.key: {error}"))?;
    Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(identity)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(user_agent())
        .build()
        .map_err(|error| error_chain(&error))
}

pub fn user_agent() -> String {
    format!("gpuaas-agent/{}", env!("CARGO_PKG_VERSION"))
}

/// `base` without trailing slashes, then `path`.
pub fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_status() {
        let body = r#"{"error":{"code":"certificate_revoked","message":"revoked","correlation_id":"c","details":{}}}"#;
        let (code, message) = error_code_and_message(StatusCode::FORBIDDEN, body);
        assert_eq!((code.as_str(), message.as_str()), ("certificate_revoked", "revoked"));
        assert!(matches!(classify(StatusCode::FORBIDDEN, code, message), CallError::Unauthorized { status: 403, .. }));
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, "x".into(), "y".into()),
            CallError::Unauthorized { status: 401, .. }
        ));
        assert!(matches!(classify(StatusCode::BAD_REQUEST, "x".into(), "y".into()), CallError::Rejected { .. }));
        assert!(matches!(classify(StatusCode::TOO_MANY_REQUESTS, "x".into(), "y".into()), CallError::Transient(_)));
        assert!(matches!(classify(StatusCode::BAD_GATEWAY, "x".into(), "y".into()), CallError::Transient(_)));

        let (code, message) = error_code_and_message(StatusCode::BAD_GATEWAY, "<html>\nbad gateway</html>");
        assert_eq!(code, "http_502");
        assert_eq!(message, "<html>bad gateway</html>");
    }
}
