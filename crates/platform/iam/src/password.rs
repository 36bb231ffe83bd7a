//! Argon2id password hashing. Hashing is CPU-heavy on purpose, so callers run it on
//! the blocking pool, never on an async worker thread.

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::IamError;

/// Shortest password the platform accepts for a local account.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest accepted; bounds the hashing work an attacker can ask for.
pub const MAX_PASSWORD_LEN: usize = 256;

fn hasher() -> Argon2<'static> {
    // OWASP's recommended Argon2id floor: 19 MiB, 2 passes, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn validate_new_password(password: &str) -> Result<(), IamError> {
    let length = password.chars().count();
    if length < MIN_PASSWORD_LEN {
        return Err(IamError::invalid("password", format!("must be at least {MIN_PASSWORD_LEN} characters")));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(IamError::invalid("password", format!("must be at most {MAX_PASSWORD_LEN} bytes")));
    }
    Ok(())
}

pub async fn hash(password: String) -> Result<String, IamError> {
    tokio::task::spawn_blocking(move || {
        hasher()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|error| IamError::Internal(format!("password hashing failed: {error}")))
    })
    .await
    .map_err(|error| IamError::Internal(format!("password hashing task failed: {error}")))?
}

/// Checks `password` against a stored hash. With no stored hash it still does the full
/// work against a dummy, so an unknown email takes as long as a wrong password.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, IamError> {
    tokio::task::spawn_blocking(move || {
        let argon = hasher();
        match stored {
            Some(hash) if password.len() <= MAX_PASSWORD_LEN => {
                argon.verify_password(password.as_bytes(), hash.as_str()).is_ok()
            }
            _ => {
                let _ = argon.hash_password(b"timing-equaliser");
                false
            }
        }
    })
    .await
    .map_err(|error| IamError::Internal(format!("password check task failed: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        let first = hash("correct horse battery".into()).await.unwrap_or_else(|e| panic!("{e}"));
        let second = hash("correct horse battery".into()).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(first.starts_with("$argon2id$"), "{first}");
        assert_ne!(first, second, "each hash has its own salt");
        assert!(verify("correct horse battery".into(), Some(first.clone())).await.unwrap_or(false));
        assert!(!verify("wrong horse battery".into(), Some(first)).await.unwrap_or(true));
        assert!(!verify("anything at all".into(), None).await.unwrap_or(true));
    }

    #[test]
    fn new_passwords_are_bounded() {
        assert!(validate_new_password("short").is_err());
        assert!(validate_new_password(&"x".repeat(MAX_PASSWORD_LEN + 1)).is_err());
        assert!(validate_new_password("twelve chars").is_ok());
    }
}
