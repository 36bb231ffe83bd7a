//! Redaction of secrets in structured values and in free text.

use std::sync::OnceLock;

use regex::Regex;

pub const REDACTED: &str = "[REDACTED]";

/// Field names whose values are secrets. Matching ignores case and `-`/`_`, and any name
/// *containing* one of these fragments is covered (`refresh_token`, `X-Api-Key`,
/// `stripe_webhook_secret`, `ssh_private_key_pem`).
const SENSITIVE_FRAGMENTS: &[&str] =
    &["password", "passwd", "token", "secret", "authorization", "cookie", "apikey", "sshprivatekey", "privatekey"];

pub fn is_sensitive_key(key: &str) -> bool {
    let folded: String = key.chars().filter(|c| *c != '_' && *c != '-').collect::<String>().to_ascii_lowercase();
    SENSITIVE_FRAGMENTS.iter().any(|fragment| folded.contains(fragment))
}

/// Returns `value` with every sensitive field's value replaced, recursively through
/// nested objects and arrays. Non-sensitive fields are left as they are.
pub fn sanitize(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(key, inner)| {
                    let clean = if is_sensitive_key(key) {
                        serde_json::Value::String(REDACTED.to_owned())
                    } else {
                        sanitize(inner)
                    };
                    (key.clone(), clean)
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(sanitize).collect()),
        serde_json::Value::String(text) => serde_json::Value::String(scrub_text(text)),
        other => other.clone(),
    }
}

fn text_patterns() -> &'static [(Regex, &'static str)] {
    static PATTERNS: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        [
            // Bearer / Basic credentials anywhere.
            (r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}", "${1} [REDACTED]"),
            // key=value / key: value / "key":"value" pairs with a sensitive key.
            (
                r#"(?i)("?[a-z0-9_\-]*(?:password|passwd|token|secret|authorization|cookie|api[_\-]?key|private[_\-]?key)[a-z0-9_\-]*"?\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;&}]+)"#,
                "${1}\"[REDACTED]\"",
            ),
            // PEM private key blocks.
            (
                r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
                "[REDACTED PRIVATE KEY]",
            ),
        ]
        .into_iter()
        .filter_map(|(pattern, replacement)| Regex::new(pattern).ok().map(|regex| (regex, replacement)))
        .collect()
    })
}

/// Redacts secrets in free text: `password=…`, `"token":"…"`, `Authorization: Bearer …`,
/// PEM private keys.
pub fn scrub_text(text: &str) -> String {
    let mut clean = text.to_owned();
    for (regex, replacement) in text_patterns() {
        if regex.is_match(&clean) {
            clean = regex.replace_all(&clean, *replacement).into_owned();
        }
    }
    clean
}

/// Scrubs one formatted log line: a JSON line is sanitized structurally (so nested
/// fields are covered), anything else as text.
pub fn scrub_line(line: &str) -> String {
    let trimmed = line.trim_end_matches('\n');
    if trimmed.starts_with('{')
        && let Ok(value) = serde_json::from_str::<serde_json::Value>(trimmed)
    {
        let mut out = sanitize(&value).to_string();
        out.push('\n');
        return out;
    }
    scrub_text(line)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn redacts_every_blocked_field_recursively() {
        let input = json!({
            "email": "a@example.com",
            "password": "hunter2",
            "nested": {"refresh_token": "r", "list": [{"api_key": "k"}, {"note": "fine"}]},
            "Authorization": "Bearer abc",
            "cookie": "session=1",
            "ssh_private_key_pem": "-----BEGIN",
            "stripe_webhook_secret": "whsec_1",
            "client_secret": "s",
        });
        let clean = sanitize(&input);
        assert_eq!(clean["email"], "a@example.com");
        assert_eq!(clean["nested"]["list"][1]["note"], "fine");
        for pointer in [
            "/password",
            "/nested/refresh_token",
            "/nested/list/0/api_key",
            "/Authorization",
            "/cookie",
            "/ssh_private_key_pem",
            "/stripe_webhook_secret",
            "/client_secret",
        ] {
            assert_eq!(clean.pointer(pointer), Some(&json!(REDACTED)), "{pointer}");
        }
    }

    #[test]
    fn scrubs_secrets_out_of_text_lines() {
        let line = "login failed password=hunter2 user=bob token: abc.def.ghi Authorization: Bearer eyJhbGciOi.xyz";
        let clean = scrub_line(line);
        assert!(!clean.contains("hunter2"), "{clean}");
        assert!(!clean.contains("abc.def.ghi"), "{clean}");
        assert!(!clean.contains("eyJhbGciOi"), "{clean}");
        assert!(clean.contains("user=bob"), "{clean}");
    }

    #[test]
    fn scrubs_json_log_lines_structurally() {
        let line = r#"{"fields":{"message":"request","body":"{\"password\":\"p4ss\"}","secret":"s"}}"#;
        let clean = scrub_line(line);
        assert!(!clean.contains("p4ss"), "{clean}");
        assert!(!clean.contains("\"s\""), "{clean}");
    }

    #[test]
    fn scrubs_pem_private_keys() {
        let text = "key -----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY----- done";
        let clean = scrub_text(text);
        assert!(!clean.contains("AAAA"));
        assert!(clean.ends_with("done"));
    }

    proptest::proptest! {
        #[test]
        fn never_leaks_a_password_value(secret in "[A-Za-z0-9]{6,20}") {
            let value = json!({"outer": {"password": secret.clone()}});
            let clean = sanitize(&value).to_string();
            proptest::prop_assert!(!clean.contains(&secret));
        }
    }
}
