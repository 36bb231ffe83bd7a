//! Files that are written once and never overwritten.
//!
//! Several control-plane processes may start together on a fresh directory. Whoever
//! publishes a key first wins; everyone else must read the winner's key, because a key
//! overwritten after it signed anything orphans those signatures.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::PkiError;

pub(crate) const SECRET_FILE_MODE: u32 = 0o600;
pub(crate) const PUBLIC_FILE_MODE: u32 = 0o644;
const PRIVATE_DIR_MODE: u32 = 0o700;

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR_MODE).create(dir).map_err(|source| PkiError::io(dir, source))
}

/// Holds an exclusive advisory lock on `path` until dropped. Serializes the "check, then
/// create" of a group of files that must appear together.
pub(crate) fn lock_exclusive(path: &Path) -> Result<File, PkiError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(SECRET_FILE_MODE)
        .open(path)
        .map_err(|source| PkiError::io(path, source))?;
    file.lock().map_err(|source| PkiError::io(path, source))?;
    Ok(file)
}

pub(crate) fn exists(path: &Path) -> Result<bool, PkiError> {
    path.try_exists().map_err(|source| PkiError::io(path, source))
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::io(path, source))
}

/// Publishes `contents` at `path` unless something already exists there.
///
/// The contents go to a private temporary file first and are linked into place, so
/// `path` never exists half-written and an existing file is never replaced. Returns
/// whether this call created the file.
pub(crate) fn create_once(path: &Path, contents: &[u8], mode: u32) -> Result<bool, PkiError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| PkiError::io(path, io::Error::new(io::ErrorKind::InvalidInput, "not a file path")))?;
    let temp = TempFile(dir.join(format!(
        ".{}.{}.{:016x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u64>()
    )));
    write_new_file(&temp.0, contents, mode)?;
    match fs::hard_link(&temp.0, path) {
        Ok(()) => {
            sync_dir(dir);
            Ok(true)
        }
        Err(source) if source.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(PkiError::io(path, source)),
    }
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let io_error = |source| PkiError::io(path, source);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io_error)?;
    // The mode given at open is filtered through the umask; set it outright so a lax
    // umask cannot leave a key readable, and before any secret byte is written.
    file.set_permissions(Permissions::from_mode(mode)).map_err(io_error)?;
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

/// Makes the new directory entry durable. A failure only weakens crash safety, so it is
/// logged rather than failing a key that is already in place.
fn sync_dir(dir: &Path) {
    if let Err(error) = File::open(dir).and_then(|handle| handle.sync_all()) {
        tracing::warn!(dir = %dir.display(), %error, "could not sync directory after creating a file");
    }
}

/// Keys are created 0600, but an operator may have restored one with a laxer mode.
pub(crate) fn warn_if_exposed(path: &Path) {
    match fs::metadata(path) {
        Ok(metadata) if metadata.mode() & 0o077 != 0 => tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", metadata.mode() & 0o777),
            "private key file is accessible to other users; it should be mode 0600"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(path = %path.display(), %error, "could not check key file permissions"),
    }
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        match fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(path = %self.0.display(), %error, "could not remove temporary file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_once_never_replaces_an_existing_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("file");
        assert!(create_once(&path, b"first", SECRET_FILE_MODE)?);
        assert!(!create_once(&path, b"second", SECRET_FILE_MODE)?);
        assert_eq!(fs::read(&path)?, b"first");
        assert_eq!(fs::metadata(&path)?.mode() & 0o777, SECRET_FILE_MODE);
        // No temporary files are left behind, winner or loser.
        let entries: Vec<_> = fs::read_dir(dir.path())?.collect::<Result<_, _>>()?;
        assert_eq!(entries.len(), 1);
        Ok(())
    }
}
