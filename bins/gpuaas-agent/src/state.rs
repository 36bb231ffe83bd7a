//! The agent's state directory: its key, certificate, the CA it trusts, what it
//! learned at enrollment (`agent.json`) and the nonces of deliveries it accepted.
//!
//! Every file is written whole to a temporary file, synced and renamed over the old
//! one, so a crash or power loss leaves either the old or the new content, never a
//! torn file. The directory is 0700 and every file 0600: the key must stay private,
//! and nothing else in here is meant for other users either.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gpuaas_kernel::Timestamp;
use gpuaas_nodeagent_protocol::NonceCache;
use serde::{Deserialize, Serialize};

/// Where `enroll` and `run` keep their state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gpuaas-agent";

pub const KEY_FILE: &str = "node.key";
pub const CERT_FILE: &str = "node.crt";
pub const CA_FILE: &str = "ca.crt";
pub const AGENT_FILE: &str = "agent.json";
pub const NONCES_FILE: &str = "nonces.json";

/// A renewal writes the new pair under these names first; see [`StateDir::save_renewal`].
const NEXT_KEY_FILE: &str = "node.key.next";
const NEXT_CERT_FILE: &str = "node.crt.next";

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// What the agent learned at enrollment and keeps up to date on renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub node_id: String,
    /// The public URL enrollment went to.
    pub server_url: String,
    /// The mTLS URL every later call goes to.
    pub internal_url: String,
    /// The pinned Ed25519 key that signs tasks, base64.
    pub task_signing_public_key: String,
    pub certificate_expires_at: Timestamp,
    /// When the agent received the current certificate; with the expiry it gives the
    /// lifetime that renewal is scheduled against.
    pub certificate_issued_at: Timestamp,
}

/// The node's TLS material, PEM.
#[derive(Clone)]
pub struct Credentials {
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

/// Everything `run` needs from the state directory.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub agent: AgentState,
    pub credentials: Credentials,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no enrollment in {0}; run `gpuaas-agent enroll` first")]
    NotEnrolled(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Creates the directory (and missing parents) and makes it 0700 even when it
    /// already existed with looser permissions.
    pub fn create(&self) -> Result<(), StateError> {
        fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(&self.root).map_err(io_error(&self.root))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(DIR_MODE)).map_err(io_error(&self.root))
    }

    /// True once enrollment finished: `agent.json` is written last.
    pub fn is_enrolled(&self) -> bool {
        [AGENT_FILE, KEY_FILE, CERT_FILE, CA_FILE].iter().all(|name| self.file(name).is_file())
    }

    /// Stores a fresh enrollment. `agent.json` goes last so that a crash part-way
    /// leaves a directory that does not look enrolled.
    pub fn save_enrollment(&self, credentials: &Credentials, agent: &AgentState) -> Result<(), StateError> {
        self.create()?;
        self.write(CA_FILE, credentials.ca_pem.as_bytes())?;
        self.write(KEY_FILE, credentials.key_pem.as_bytes())?;
        self.write(CERT_FILE, credentials.cert_pem.as_bytes())?;
        // A re-enrollment starts a new node identity; its old nonces mean nothing now.
        match fs::remove_file(self.file(NONCES_FILE)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(io_error(&self.file(NONCES_FILE))(error));
            }
            _ => {}
        }
        self.save_agent(agent)
    }

    /// Stores a renewed key and certificate. Key and certificate must always match, and
    /// two renames are not one atomic step, so the pair is first written in full under
    /// `*.next` names (certificate last) and only then moved into place; [`Self::load`]
    /// finishes or discards a renewal that a crash interrupted.
    pub fn save_renewal(&self, key_pem: &str, cert_pem: &str, agent: &AgentState) -> Result<(), StateError> {
        self.write(NEXT_KEY_FILE, key_pem.as_bytes())?;
        self.write(NEXT_CERT_FILE, cert_pem.as_bytes())?;
        self.finish_renewal()?;
        self.save_agent(agent)
    }

    fn finish_renewal(&self) -> Result<(), StateError> {
        let next_key = self.file(NEXT_KEY_FILE);
        let next_cert = self.file(NEXT_CERT_FILE);
        if next_cert.is_file() {
            if next_key.is_file() {
                rename_synced(&next_key, &self.file(KEY_FILE))?;
            }
            rename_synced(&next_cert, &self.file(CERT_FILE))?;
        } else if next_key.is_file() {
            // The certificate never arrived on disk: the old pair is still whole.
            fs::remove_file(&next_key).map_err(io_error(&next_key))?;
        }
        Ok(())
    }

    pub fn save_agent(&self, agent: &AgentState) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(agent)
            .map_err(|error| StateError::Invalid { path: self.file(AGENT_FILE), message: error.to_string() })?;
        self.write(AGENT_FILE, &json)
    }

    pub fn load_agent(&self) -> Result<AgentState, StateError> {
        let path = self.file(AGENT_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotEnrolled(self.root.clone()));
            }
            Err(error) => return Err(io_error(&path)(error)),
        };
        serde_json::from_str(&text).map_err(|error| StateError::Invalid { path, message: error.to_string() })
    }

    pub fn load(&self) -> Result<Enrollment, StateError> {
        if !self.file(AGENT_FILE).is_file() {
            return Err(StateError::NotEnrolled(self.root.clone()));
        }
        self.finish_renewal()?;
        let agent = self.load_agent()?;
        let read = |name: &str| {
            let path = self.file(name);
            fs::read_to_string(&path).map_err(io_error(&path))
        };
        let credentials = Credentials { key_pem: read(KEY_FILE)?, cert_pem: read(CERT_FILE)?, ca_pem: read(CA_FILE)? };
        Ok(Enrollment { agent, credentials })
    }

    /// The nonce cache, empty when none was saved yet. A file that exists but cannot
    /// be read is an error: starting with an empty cache would accept replays.
    pub fn load_nonces(&self) -> Result<NonceCache, StateError> {
        let path = self.file(NONCES_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str(&text).map_err(|error| StateError::Invalid { path, message: error.to_string() })
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(NonceCache::default()),
            Err(error) => Err(io_error(&path)(error)),
        }
    }

    pub fn save_nonces(&self, nonces: &NonceCache) -> Result<(), StateError> {
        let json = serde_json::to_vec(nonces)
            .map_err(|error| StateError::Invalid { path: self.file(NONCES_FILE), message: error.to_string() })?;
        self.write(NONCES_FILE, &json)
    }

    /// Writes one file of the directory atomically with mode 0600.
    pub fn write(&self, name: &str, contents: &[u8]) -> Result<(), StateError> {
        let path = self.file(name);
        write_atomic(&path, contents, FILE_MODE).map_err(io_error(&path))
    }
}

/// Replaces `path` with `contents`: a temporary file in the same directory, created
/// with `mode` (never briefly world-readable), synced, renamed over `path`, and the
/// directory synced so the rename itself survives a power loss.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("state");
    let temp = dir.join(format!(".{name}.tmp.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    File::open(dir)?.sync_all()
}

fn rename_synced(from: &Path, to: &Path) -> Result<(), StateError> {
    fs::rename(from, to).map_err(io_error(to))?;
    let dir = to.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentState {
        AgentState {
            node_id: "node-1".into(),
            server_url: "https://cp.example".into(),
            internal_url: "https://cp.example:8443".into(),
            task_signing_public_key: "AAAA".into(),
            certificate_expires_at: Timestamp::from_micros(2_000_000_000_000_000),
            certificate_issued_at: Timestamp::from_micros(1_000_000_000_000_000),
        }
    }

    fn credentials(tag: &str) -> Credentials {
        Credentials { key_pem: format!("key {tag}"), cert_pem: format!("cert {tag}"), ca_pem: "ca".into() }
    }

    #[test]
    fn an_interrupted_renewal_is_finished_or_discarded_on_load() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let state = StateDir::new(temp.path().join("s"));
        state.save_enrollment(&credentials("old"), &agent()).unwrap_or_else(|e| panic!("{e}"));

        // Crash after the new key was written but before the certificate: keep the old pair.
        state.write(NEXT_KEY_FILE, b"key new").unwrap_or_else(|e| panic!("{e}"));
        let loaded = state.load().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (loaded.credentials.key_pem.as_str(), loaded.credentials.cert_pem.as_str()),
            ("key old", "cert old")
        );
        assert!(!state.file(NEXT_KEY_FILE).exists());

        // Crash after the key moved into place but before the certificate did: finish it.
        state.write(NEXT_CERT_FILE, b"cert new").unwrap_or_else(|e| panic!("{e}"));
        state.write(KEY_FILE, b"key new").unwrap_or_else(|e| panic!("{e}"));
        let loaded = state.load().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (loaded.credentials.key_pem.as_str(), loaded.credentials.cert_pem.as_str()),
            ("key new", "cert new")
        );
    }

    #[test]
    fn no_temporary_files_are_left_behind() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let state = StateDir::new(temp.path());
        for round in 0..3 {
            state.write("x", format!("{round}").as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        }
        let names: Vec<_> = fs::read_dir(temp.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|entry| entry.ok().map(|entry| entry.file_name()))
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x")]);
        assert_eq!(fs::read_to_string(state.file("x")).unwrap_or_default(), "2");
    }
}
