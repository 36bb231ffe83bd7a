use std::path::Path;

use ed25519_dalek::SigningKey;
use rand::TryRngCore;
use rand::rngs::OsRng;

use crate::PkiError;
use crate::files::{self, SECRET_FILE_MODE};

/// Loads the control plane's Ed25519 task-signing key from `path`, creating it (a 32-byte
/// seed in hex, mode 0600) if the file does not exist.
///
/// Safe against concurrent first starts: the file is published once and every caller
/// ends up with the same key.
pub fn load_or_create_signing_key(path: &Path) -> Result<SigningKey, PkiError> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        files::create_private_dir(parent)?;
    }
    if !files::exists(path)? {
        let mut seed = [0u8; 32];
        // The key lives for years; take it straight from the OS rather than a user-space
        // generator.
        OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|_| PkiError::Generation("the OS random number generator failed".to_owned()))?;
        let mut contents = hex::encode(seed);
        contents.push('\n');
        if files::create_once(path, contents.as_bytes(), SECRET_FILE_MODE)? {
            tracing::info!(
                path = %path.display(),
                public_key = %hex::encode(SigningKey::from_bytes(&seed).verifying_key().as_bytes()),
                "created a new task-signing key"
            );
        }
    }
    load(path)
}

fn load(path: &Path) -> Result<SigningKey, PkiError> {
    files::warn_if_exposed(path);
    let contents = files::read_to_string(path)?;
    let mut seed = [0u8; 32];
    // A fixed reason: the decoder's own message quotes the offending character, and this
    // text is the secret key.
    hex::decode_to_slice(contents.trim(), &mut seed).map_err(|_| PkiError::CorruptFile {
        path: path.to_path_buf(),
        reason: "not a hex-encoded 32-byte Ed25519 seed".to_owned(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}
