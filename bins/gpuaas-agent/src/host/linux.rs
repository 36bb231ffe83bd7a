//! The driver for a real Linux GPU host: shadow-utils accounts, OpenSSH keys, NVIDIA
//! device files and systemd user-slice limits.
//!
//! Safety rules this file keeps:
//! - It only ever touches accounts it created: a uid/gid inside the configured
//!   allocation range *and* the GECOS marker written at creation. A host account with
//!   the same name is refused, never adopted.
//! - Processes are killed by uid only inside the allocation range.
//! - External commands are fixed programs with explicit argument vectors, a clean
//!   environment, and stderr captured into the error; never a shell.
//! - Files inside a user's home are written while the home (and `~/.ssh`) are
//!   temporarily owned by root, so the user's running processes cannot swap a path for
//!   a symlink between our check and our write and redirect a root write elsewhere.
//!
//! GPU isolation relies on the device files: an assigned `/dev/nvidiaN` becomes
//! `root:<allocation group> 0660`. Devices that are not assigned are left as they are,
//! so the host must not make them world-accessible (NVIDIA's default is 0666; set
//! `NVreg_DeviceFileMode=0660` and `NVreg_DeviceFileGID=0`); the provisioning report
//! warns about any it finds.
//!
//! With `NVreg_ModifyDeviceFiles=1` (the driver's default) every root process that
//! initialises NVML or CUDA (`nvidia-smi`, a monitoring exporter, this agent's own
//! inventory) resets every device file to the driver's configured owner and mode,
//! which undoes the grants. The driver therefore records each grant in a root-only
//! directory and [`LinuxHostDriver::enforce_gpu_grants`] puts them back after each of
//! its own NVML reads and on a short timer; the report warns that the host should run
//! with `NVreg_ModifyDeviceFiles=0` to close the gap between a reset and the repair.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use gpuaas_nodeagent_protocol::{ProvisionUserParams, RevokeUserParams};
use serde_json::{Value, json};

use super::{HostDriver, HostError};

/// Allocation users live far above the ids distributions hand out (1000–60000), so
/// they never collide with host accounts.
pub const DEFAULT_UID_RANGE: (u32, u32) = (200_000, 299_999);
/// Lowest start of a uid range the driver accepts: below are system and human users.
const LOWEST_RANGE_START: u32 = 1000;
const NOBODY: u32 = 65_534;
/// Written into the GECOS field at creation; together with the uid range it is how the
/// driver recognises its own users.
const GECOS_PREFIX: &str = "gpuaas allocation ";
const DROP_IN_NAME: &str = "50-gpuaas.conf";
const ENV_FILE: &str = ".gpuaas_env";
const PROFILE_LINE: &str = "[ -f \"$HOME/.gpuaas_env\" ] && . \"$HOME/.gpuaas_env\"  # added by gpuaas-agent";
const SHELL: &str = "/bin/bash";
/// Commands run with this PATH only, whatever the agent inherited, so `useradd` and
/// friends resolve to the distribution's binaries.
const COMMAND_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
const MAX_STDERR_CHARS: usize = 2000;
const MAX_PROFILE_BYTES: u64 = 1 << 20;
const MAX_SKEL_FILE_BYTES: u64 = 1 << 20;
/// How long revoke waits for killed processes to disappear before handing over to
/// `userdel`, which then decides whether the account can go.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// `userdel -r` exit status when the account was removed but the home was not.
const USERDEL_HOME_NOT_REMOVED: i32 = 12;
/// `groupdel` exit status for a group that does not exist.
const GROUPDEL_NO_SUCH_GROUP: i32 = 6;
const GRANTS_DIR_NAME: &str = "gpu-grants";
const DEFAULT_GRANTS_DIR: &str = "/var/lib/gpuaas-agent/gpu-grants";
/// Mode of a granted device file: owner root, the allocation's group, nobody else.
const GRANTED_MODE: u32 = 0o660;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxHostConfig {
    /// `/` on a real host; a throwaway root in tests. `passwd`, `group` and `shadow`
    /// live under `{root}/etc`; shadow-utils get `--prefix {root}` when it is not `/`.
    pub root: PathBuf,
    /// Where homes are created; must lie under `root`.
    pub home_base: PathBuf,
    /// Inclusive uid and gid range of allocation users and groups.
    pub uid_range: (u32, u32),
    /// GPU `i` is `{device_dir}/nvidia{i}`.
    pub device_dir: PathBuf,
    /// Where `user-{uid}.slice.d` drop-ins go; `None` applies no limits.
    pub systemd_dir: Option<PathBuf>,
    /// Run `systemctl daemon-reload` after changing a drop-in.
    pub reload_systemd: bool,
    /// Kill the user's processes on revoke.
    pub kill_processes: bool,
    /// Root-only directory holding one file per allocation user with the GPUs granted
    /// to its group, so grants can be restored when something resets the device files.
    pub grants_dir: PathBuf,
    /// The NVIDIA kernel module's parameters (`/proc/driver/nvidia/params`).
    pub nvidia_params: PathBuf,
}

impl LinuxHostConfig {
    /// Production defaults on `/`.
    pub fn for_host() -> Self {
        Self {
            root: PathBuf::from("/"),
            home_base: PathBuf::from("/home"),
            uid_range: DEFAULT_UID_RANGE,
            device_dir: PathBuf::from("/dev"),
            systemd_dir: Some(PathBuf::from("/etc/systemd/system")),
            reload_systemd: true,
            kill_processes: true,
            grants_dir: PathBuf::from(DEFAULT_GRANTS_DIR),
            nvidia_params: PathBuf::from("/proc/driver/nvidia/params"),
        }
    }

    /// Production defaults, with the grants kept in the agent's state directory.
    pub fn for_host_with_state(state_dir: &Path) -> Self {
        Self { grants_dir: state_dir.join(GRANTS_DIR_NAME), ..Self::for_host() }
    }

    /// Everything under `root` (which must hold `etc/passwd`, `etc/group`,
    /// `etc/shadow`, `etc/gshadow` and `etc/login.defs`), devices in `{root}/dev`, no
    /// `systemctl`. Processes are still killed by uid: allocation uids only exist in
    /// the throwaway passwd, so only processes started under them are affected.
    pub fn throwaway(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            home_base: root.join("home"),
            uid_range: DEFAULT_UID_RANGE,
            device_dir: root.join("dev"),
            systemd_dir: Some(root.join("etc/systemd/system")),
            reload_systemd: false,
            kill_processes: true,
            grants_dir: root.join("var/lib/gpuaas-agent").join(GRANTS_DIR_NAME),
            nvidia_params: root.join("proc/driver/nvidia/params"),
        }
    }
}

impl Default for LinuxHostConfig {
    fn default() -> Self {
        Self::for_host()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    gecos: String,
    home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
}

/// Skipped steps and warnings gathered for the report.
#[derive(Debug, Default)]
struct Notes {
    skipped: Vec<Value>,
    warnings: Vec<String>,
}

impl Notes {
    fn skip(&mut self, step: &str, target: impl std::fmt::Display, reason: impl Into<String>) {
        self.skipped.push(json!({"step": step, "target": target.to_string(), "reason": reason.into()}));
    }
}

/// The real driver. Operations are serialised: shadow-utils lock their files, but the
/// checks the driver makes before calling them must not interleave with another task.
#[derive(Debug)]
pub struct LinuxHostDriver {
    config: LinuxHostConfig,
    /// Why the configuration is unusable, if it is; every operation then fails with it.
    unusable: Option<String>,
    lock: Mutex<()>,
    warned_about_resets: std::sync::atomic::AtomicBool,
}

impl LinuxHostDriver {
    /// A driver for `config`. An unusable configuration (see [`Self::try_new`]) is not
    /// an error here but makes every operation fail, so a misconfigured agent reports
    /// failures instead of touching the host.
    pub fn new(config: LinuxHostConfig) -> Self {
        let unusable = check_config(&config).err();
        if let Some(problem) = &unusable {
            tracing::error!(problem = problem.as_str(), "host driver configuration unusable");
        }
        Self { config, unusable, lock: Mutex::new(()), warned_about_resets: Default::default() }
    }

    /// Like [`Self::new`], but refuses an unusable configuration up front: a uid range
    /// that could include root, `nobody` or ordinary users, relative paths, or a home
    /// base outside the root.
    pub fn try_new(config: LinuxHostConfig) -> Result<Self, HostError> {
        check_config(&config).map_err(HostError::Config)?;
        Ok(Self::new(config))
    }

    pub fn config(&self) -> &LinuxHostConfig {
        &self.config
    }

    /// Serialises host changes and refuses to start with an unusable configuration.
    fn begin(&self) -> Result<MutexGuard<'_, ()>, HostError> {
        self.usable()?;
        // The guarded state is on disk; a panic elsewhere does not corrupt it.
        Ok(self.lock.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn usable(&self) -> Result<(), HostError> {
        match &self.unusable {
            Some(problem) => Err(HostError::Config(problem.clone())),
            None => Ok(()),
        }
    }

    fn on_host_root(&self) -> bool {
        self.config.root == Path::new("/")
    }

    fn in_range(&self, id: u32) -> bool {
        (self.config.uid_range.0..=self.config.uid_range.1).contains(&id)
    }

    fn etc(&self, name: &str) -> PathBuf {
        self.config.root.join("etc").join(name)
    }

    fn prefix_args(&self) -> Vec<OsString> {
        if self.on_host_root() {
            Vec::new()
        } else {
            vec!["--prefix".into(), self.config.root.clone().into_os_string()]
        }
    }

    fn home_dir(&self, username: &str) -> PathBuf {
        self.config.home_base.join(username)
    }

    /// The home as written in passwd: seen from inside `root`.
    fn passwd_home(&self, username: &str) -> String {
        let relative = self.config.home_base.strip_prefix(&self.config.root).unwrap_or(Path::new(""));
        let mut home = PathBuf::from("/");
        home.push(relative);
        home.push(username);
        home.to_string_lossy().into_owned()
    }

    fn device_path(&self, index: u32) -> PathBuf {
        self.config.device_dir.join(format!("nvidia{index}"))
    }

    fn read_passwd(&self) -> Result<Vec<PasswdEntry>, HostError> {
        let path = self.etc("passwd");
        let text = fs::read_to_string(&path).map_err(|e| HostError::io(format!("reading {}", path.display()), e))?;
        parse_passwd(&text).map_err(|reason| HostError::Malformed { file: path.display().to_string(), reason })
    }

    fn read_groups(&self) -> Result<Vec<GroupEntry>, HostError> {
        let path = self.etc("group");
        let text = fs::read_to_string(&path).map_err(|e| HostError::io(format!("reading {}", path.display()), e))?;
        parse_group(&text).map_err(|reason| HostError::Malformed { file: path.display().to_string(), reason })
    }

    /// The driver's own users: in range and marked at creation.
    fn created_by_us(&self, user: &PasswdEntry) -> bool {
        self.in_range(user.uid) && user.gecos.starts_with(GECOS_PREFIX)
    }

    /// Refuses users that are not ours, and ours that belong to another allocation.
    fn check_ours(&self, user: &PasswdEntry, allocation_id: &str) -> Result<(), HostError> {
        let (low, high) = self.config.uid_range;
        if !self.in_range(user.uid) {
            return Err(HostError::Refused {
                target: format!("user {}", user.name),
                reason: format!("uid {} is outside the allocation range {low}-{high}", user.uid),
            });
        }
        if !user.gecos.starts_with(GECOS_PREFIX) {
            return Err(HostError::Refused {
                target: format!("user {}", user.name),
                reason: "it was not created by the gpuaas agent".into(),
            });
        }
        if user.gecos != gecos_marker(allocation_id) {
            return Err(HostError::Conflict(format!(
                "user {} belongs to another allocation than {allocation_id}",
                user.name
            )));
        }
        if user.home != self.passwd_home(&user.name) {
            return Err(HostError::Conflict(format!(
                "user {} has home {}, expected {}",
                user.name,
                user.home,
                self.passwd_home(&user.name)
            )));
        }
        Ok(())
    }

    fn provision(&self, params: &ProvisionUserParams) -> Result<Value, HostError> {
        params.validate().map_err(HostError::Invalid)?;
        let _serialised = self.begin()?;
        let username = params.username.as_str();
        let mut notes = Notes::default();

        // Every check that can refuse happens before the first change.
        let passwd = self.read_passwd()?;
        let groups = self.read_groups()?;
        let existing_user = passwd.iter().find(|user| user.name == username);
        let existing_group = groups.iter().find(|group| group.name == username);
        if let Some(user) = existing_user {
            self.check_ours(user, &params.allocation_id)?;
            if existing_group.map(|group| group.gid) != Some(user.gid) {
                return Err(HostError::Conflict(format!(
                    "user {username} has primary gid {}, which is not its allocation group",
                    user.gid
                )));
            }
        }
        if let Some(group) = existing_group
            && !self.in_range(group.gid)
        {
            return Err(HostError::Refused {
                target: format!("group {username}"),
                reason: format!("gid {} is outside the allocation range", group.gid),
            });
        }
        let our_gid = existing_group.map(|group| group.gid);
        let assigned: BTreeSet<u32> = params.gpu_indices.iter().copied().collect();
        for &index in &assigned {
            let path = self.device_path(index);
            if let Ok(meta) = fs::symlink_metadata(&path) {
                let holder = meta.gid();
                if holder != 0
                    && Some(holder) != our_gid
                    && self.in_range(holder)
                    && groups.iter().any(|group| group.gid == holder)
                {
                    return Err(HostError::Conflict(format!(
                        "{} is granted to another allocation's group (gid {holder})",
                        path.display()
                    )));
                }
            }
        }

        let created_group = existing_group.is_none();
        if created_group {
            self.groupadd(username)?;
        }
        let created_user = existing_user.is_none();
        if created_user {
            self.useradd(username, &gecos_marker(&params.allocation_id))?;
        }
        let user = self.read_passwd()?.into_iter().find(|user| user.name == username).ok_or_else(|| {
            HostError::Malformed { file: "passwd".into(), reason: format!("useradd left no entry for {username}") }
        })?;
        self.check_ours(&user, &params.allocation_id)?;
        let (uid, gid) = (user.uid, user.gid);

        let home = self.home_dir(username);
        let created_home = self.lock_home(&home)?;
        let written = self.write_user_files(&home, created_home, uid, gid, params, &mut notes);
        let unlocked = chown_path(&home, uid, gid).and_then(|()| chmod(&home, 0o700));
        written?;
        unlocked?;

        let mut granted = Vec::new();
        for &index in &assigned {
            let path = self.device_path(index);
            match fs::symlink_metadata(&path) {
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    notes.skip("gpu_device", path.display(), "device file absent");
                }
                Err(error) => return Err(HostError::io(format!("inspecting {}", path.display()), error)),
                Ok(meta) if meta.file_type().is_char_device() || meta.file_type().is_file() => {
                    set_owner_and_mode(&path, 0, gid, GRANTED_MODE)?;
                    granted.push(path.display().to_string());
                }
                Ok(_) => notes.skip("gpu_device", path.display(), "not a device file"),
            }
        }
        let closed = self.close_devices(gid, &assigned)?;
        self.record_grant(username, gid, &assigned)?;
        self.warn_about_open_devices(&assigned, &mut notes);
        if self.driver_resets_device_files() {
            notes.warnings.push(RESETS_DEVICE_FILES.into());
        }

        let limits = self.write_limits(uid, params, &mut notes)?;
        tracing::info!(
            username,
            uid,
            allocation_id = params.allocation_id.as_str(),
            created_user,
            gpus = granted.len(),
            "allocation user provisioned"
        );
        Ok(json!({
            "username": username,
            "allocation_id": params.allocation_id,
            "uid": uid,
            "gid": gid,
            "group": username,
            "home": user.home,
            "created_user": created_user,
            "created_group": created_group,
            "created_home": created_home,
            "authorized_keys": params.authorized_keys.len(),
            "gpu_devices": granted,
            "gpu_devices_closed": closed,
            "visible_devices": visible_devices(&assigned),
            "limits": limits,
            "skipped": notes.skipped,
            "warnings": notes.warnings,
        }))
    }

    fn groupadd(&self, name: &str) -> Result<(), HostError> {
        let (low, high) = self.config.uid_range;
        let mut args = self.prefix_args();
        args.extend(["-K".into(), format!("GID_MIN={low}").into(), "-K".into(), format!("GID_MAX={high}").into()]);
        args.push(name.into());
        run("groupadd", &args, &[0]).map(drop)
    }

    fn useradd(&self, name: &str, gecos: &str) -> Result<(), HostError> {
        let (low, high) = self.config.uid_range;
        let mut args = self.prefix_args();
        for setting in [
            format!("UID_MIN={low}"),
            format!("UID_MAX={high}"),
            format!("GID_MIN={low}"),
            format!("GID_MAX={high}"),
            // Allocation users get no subordinate ids: no user namespaces of their own.
            "SUB_UID_COUNT=0".into(),
            "SUB_GID_COUNT=0".into(),
        ] {
            args.extend(["-K".into(), setting.into()]);
        }
        args.extend([
            "-g".into(),
            name.into(),
            "-d".into(),
            self.passwd_home(name).into(),
            // The driver makes the home itself, under the same rules on / and in a
            // throwaway root.
            "-M".into(),
            // High uids would make lastlog/faillog large sparse files.
            "-l".into(),
            "-s".into(),
            SHELL.into(),
            // "*" rather than useradd's "!": no password can match either way, but sshd
            // without PAM refuses "!" accounts as locked, which would refuse the key.
            "-p".into(),
            "*".into(),
            "-c".into(),
            gecos.into(),
            name.into(),
        ]);
        run("useradd", &args, &[0]).map(drop)
    }

    /// Makes sure the home exists as a real directory owned by root, mode 0700, so the
    /// user's processes cannot change it while we write. Returns whether it was created.
    fn lock_home(&self, home: &Path) -> Result<bool, HostError> {
        match fs::symlink_metadata(home) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(home)
                    .map_err(|e| HostError::io(format!("creating {}", home.display()), e))?;
                chown_path(home, 0, 0)?;
                chmod(home, 0o700)?;
                Ok(true)
            }
            Err(error) => Err(HostError::io(format!("inspecting {}", home.display()), error)),
            Ok(meta) if meta.file_type().is_dir() => {
                chown_path(home, 0, 0)?;
                chmod(home, 0o700)?;
                Ok(false)
            }
            Ok(_) => Err(HostError::Conflict(format!("{} exists and is not a directory", home.display()))),
        }
    }

    /// Skeleton files, keys, the GPU environment and the profile hook. Runs while the
    /// home is locked (owned by root).
    fn write_user_files(
        &self,
        home: &Path,
        created_home: bool,
        uid: u32,
        gid: u32,
        params: &ProvisionUserParams,
        notes: &mut Notes,
    ) -> Result<(), HostError> {
        if created_home {
            self.copy_skeleton(home, uid, gid, notes)?;
        }

        let ssh = home.join(".ssh");
        match fs::symlink_metadata(&ssh) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(HostError::io(format!("inspecting {}", ssh.display()), error)),
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(_) => {
                // A symlink or file in its place would redirect our write; replace it.
                fs::remove_file(&ssh).map_err(|e| HostError::io(format!("removing {}", ssh.display()), e))?;
                notes.warnings.push(format!("{} was not a directory and was replaced", ssh.display()));
            }
        }
        if !ssh.exists() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&ssh)
                .map_err(|e| HostError::io(format!("creating {}", ssh.display()), e))?;
        }
        chown_path(&ssh, 0, 0)?;
        chmod(&ssh, 0o700)?;
        let mut keys = params.authorized_keys.join("\n");
        keys.push('\n');
        write_atomic(&ssh, "authorized_keys", keys.as_bytes(), uid, gid, 0o600)?;
        chown_path(&ssh, uid, gid)?;

        let visible = visible_devices(&params.gpu_indices.iter().copied().collect());
        let environment = format!(
            "# Managed by gpuaas-agent for allocation {}: the GPUs this user may open.\n\
             export CUDA_DEVICE_ORDER=PCI_BUS_ID\n\
             export CUDA_VISIBLE_DEVICES={visible}\n\
             export NVIDIA_VISIBLE_DEVICES={visible}\n",
            params.allocation_id
        );
        write_atomic(home, ENV_FILE, environment.as_bytes(), uid, gid, 0o644)?;
        self.hook_profile(home, uid, gid, notes)
    }

    fn copy_skeleton(&self, home: &Path, uid: u32, gid: u32, notes: &mut Notes) -> Result<(), HostError> {
        let skeleton = self.etc("skel");
        let entries = match fs::read_dir(&skeleton) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                notes.skip("skeleton", skeleton.display(), "no skeleton directory");
                return Ok(());
            }
            Err(error) => return Err(HostError::io(format!("reading {}", skeleton.display()), error)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| HostError::io(format!("reading {}", skeleton.display()), e))?;
            let path = entry.path();
            let meta =
                fs::symlink_metadata(&path).map_err(|e| HostError::io(format!("inspecting {}", path.display()), e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if !meta.file_type().is_file() || meta.len() > MAX_SKEL_FILE_BYTES {
                continue;
            }
            let content = fs::read(&path).map_err(|e| HostError::io(format!("reading {}", path.display()), e))?;
            write_atomic(home, &name, &content, uid, gid, meta.mode() & 0o755)?;
        }
        Ok(())
    }

    /// Makes `~/.profile` source the GPU environment, keeping what the user wrote.
    fn hook_profile(&self, home: &Path, uid: u32, gid: u32, notes: &mut Notes) -> Result<(), HostError> {
        let profile = home.join(".profile");
        let (existing, mode) = match fs::symlink_metadata(&profile) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => (String::new(), 0o644),
            Err(error) => return Err(HostError::io(format!("inspecting {}", profile.display()), error)),
            // Only the user's own regular file: anything else (a link to a root file) we
            // must not read into a file the user can read.
            Ok(meta) if meta.file_type().is_file() && meta.uid() == uid && meta.len() <= MAX_PROFILE_BYTES => {
                let mut text = String::new();
                fs::File::open(&profile)
                    .and_then(|file| file.take(MAX_PROFILE_BYTES).read_to_string(&mut text))
                    .map_err(|e| HostError::io(format!("reading {}", profile.display()), e))?;
                (text, meta.mode() & 0o755)
            }
            Ok(_) => {
                notes.skip("profile", profile.display(), "not a regular file of the user's; not changed");
                return Ok(());
            }
        };
        if existing.lines().any(|line| line == PROFILE_LINE) {
            return Ok(());
        }
        let mut updated = existing;
        if !updated.is_empty() && !updated.ends_with('\n') {
            updated.push('\n');
        }
        updated.push_str(PROFILE_LINE);
        updated.push('\n');
        write_atomic(home, ".profile", updated.as_bytes(), uid, gid, mode)
    }

    /// Returns `{device_dir}/nvidiaN` files whose group is `gid` to root:root 0600,
    /// except the indices in `keep`. Returns the paths closed.
    fn close_devices(&self, gid: u32, keep: &BTreeSet<u32>) -> Result<Vec<String>, HostError> {
        let mut closed = Vec::new();
        for (index, path) in self.gpu_device_files()? {
            if keep.contains(&index) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else { continue };
            if meta.gid() == gid && !meta.file_type().is_symlink() {
                set_owner_and_mode(&path, 0, 0, 0o600)?;
                closed.push(path.display().to_string());
            }
        }
        Ok(closed)
    }

    fn warn_about_open_devices(&self, assigned: &BTreeSet<u32>, notes: &mut Notes) {
        let Ok(devices) = self.gpu_device_files() else { return };
        for (index, path) in devices {
            if assigned.contains(&index) {
                continue;
            }
            if let Ok(meta) = fs::symlink_metadata(&path)
                && meta.mode() & 0o007 != 0
            {
                notes.warnings.push(format!(
                    "{} is accessible to every user (mode {:o}); GPU isolation needs NVreg_DeviceFileMode=0660",
                    path.display(),
                    meta.mode() & 0o777
                ));
            }
        }
    }

    /// `(index, path)` of every `nvidiaN` in the device directory, sorted.
    fn gpu_device_files(&self) -> Result<Vec<(u32, PathBuf)>, HostError> {
        let dir = &self.config.device_dir;
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(HostError::io(format!("reading {}", dir.display()), error)),
        };
        let mut devices = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| HostError::io(format!("reading {}", dir.display()), e))?;
            let name = entry.file_name();
            let Some(digits) = name.to_str().and_then(|name| name.strip_prefix("nvidia")) else { continue };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(index) = digits.parse::<u32>() {
                devices.push((index, entry.path()));
            }
        }
        devices.sort();
        Ok(devices)
    }

    fn drop_in_path(&self, uid: u32) -> Option<PathBuf> {
        self.config.systemd_dir.as_ref().map(|dir| dir.join(format!("user-{uid}.slice.d")).join(DROP_IN_NAME))
    }

    fn write_limits(&self, uid: u32, params: &ProvisionUserParams, notes: &mut Notes) -> Result<Value, HostError> {
        let Some(path) = self.drop_in_path(uid) else {
            notes.skip("limits", "systemd", "limits disabled by configuration");
            return Ok(Value::Null);
        };
        if self.config.reload_systemd && !systemd_running() {
            // A host booted without systemd (a container, a micro-VM's own init) has no
            // user slices to limit; the user still gets their GPUs, and the report says so.
            notes.warnings.push("systemd is not running: no CPU or memory limits applied".into());
            return Ok(Value::Null);
        }
        let cpu_quota_percent = (params.cpu_millicores / 10).max(1);
        let content = format!(
            "# Managed by gpuaas-agent for allocation {}; removed when the user is revoked.\n\
             [Slice]\n\
             CPUQuota={cpu_quota_percent}%\n\
             MemoryMax={}\n",
            params.allocation_id, params.memory_bytes
        );
        let changed = fs::read_to_string(&path).ok().as_deref() != Some(content.as_str());
        if changed {
            let Some(dir) = path.parent() else {
                return Err(HostError::Config("systemd drop-in has no parent directory".into()));
            };
            fs::create_dir_all(dir).map_err(|e| HostError::io(format!("creating {}", dir.display()), e))?;
            write_atomic(dir, DROP_IN_NAME, content.as_bytes(), 0, 0, 0o644)?;
        }
        let reloaded = changed && self.config.reload_systemd;
        if reloaded {
            daemon_reload()?;
        }
        Ok(json!({
            "drop_in": path.display().to_string(),
            "cpu_quota_percent": cpu_quota_percent,
            "memory_max_bytes": params.memory_bytes,
            "changed": changed,
            "reloaded": reloaded,
        }))
    }

    fn remove_limits(&self, uid: u32) -> Result<bool, HostError> {
        let Some(path) = self.drop_in_path(uid) else { return Ok(false) };
        let removed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(error) if error.kind() == io::ErrorKind::NotFound => false,
            Err(error) => return Err(HostError::io(format!("removing {}", path.display()), error)),
        };
        if let Some(dir) = path.parent() {
            // Other drop-ins may share the directory; then it stays.
            let _ = fs::remove_dir(dir);
        }
        if removed && self.config.reload_systemd && systemd_running() {
            daemon_reload()?;
        }
        Ok(removed)
    }

    /// Kills every process running as `uid` and waits for them to go. Returns whether
    /// any were found.
    fn kill_processes(&self, uid: u32) -> Result<bool, HostError> {
        if !self.in_range(uid) {
            return Err(HostError::Refused {
                target: format!("processes of uid {uid}"),
                reason: "uid is outside the allocation range".into(),
            });
        }
        let uid_text = uid.to_string();
        let deadline = Instant::now() + KILL_WAIT;
        let mut found = false;
        loop {
            // Real and effective uid: a setuid helper the user started counts too.
            // pkill exits 1 when nothing matched.
            for selector in ["-U", "-u"] {
                let code = run("pkill", &["-KILL".into(), selector.into(), uid_text.clone().into()], &[0, 1])?;
                found |= code == 0;
            }
            let alive = run("pgrep", &["-U".into(), uid_text.clone().into()], &[0, 1])? == 0;
            if !alive {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                tracing::warn!(uid, "processes still present after kill; continuing with account removal");
                return Ok(found);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn revoke(&self, params: &RevokeUserParams) -> Result<Value, HostError> {
        params.validate().map_err(HostError::Invalid)?;
        let _serialised = self.begin()?;
        let username = params.username.as_str();
        let passwd = self.read_passwd()?;
        let groups = self.read_groups()?;
        let Some(user) = passwd.iter().find(|user| user.name == username) else {
            return self.revoke_leftover_group(params, &groups);
        };
        self.check_ours(user, &params.allocation_id)?;
        let (uid, gid) = (user.uid, user.gid);
        let home = self.home_dir(username);

        let killed = if self.config.kill_processes { self.kill_processes(uid)? } else { false };
        // Forgotten first: a repair running between the close and the removal must not
        // reopen the devices.
        self.forget_grant(username)?;
        let closed = if self.in_range(gid) { self.close_devices(gid, &BTreeSet::new())? } else { Vec::new() };
        let limits_removed = self.remove_limits(uid)?;

        let mut home_locked = false;
        if !params.remove_home && fs::symlink_metadata(&home).is_ok_and(|meta| meta.file_type().is_dir()) {
            // Kept for forensics, but a later allocation may get the same uid: only
            // root may enter it from now on.
            chown_path(&home, 0, 0)?;
            chmod(&home, 0o700)?;
            home_locked = true;
        }
        let mut args = self.prefix_args();
        let mut accepted = vec![0];
        if params.remove_home {
            args.push("-r".into());
            accepted.push(USERDEL_HOME_NOT_REMOVED);
        }
        args.push(username.into());
        run("userdel", &args, &accepted)?;
        let mut home_removed = false;
        if params.remove_home {
            match fs::symlink_metadata(&home) {
                Ok(meta) if meta.file_type().is_dir() => {
                    fs::remove_dir_all(&home).map_err(|e| HostError::io(format!("removing {}", home.display()), e))?;
                    home_removed = true;
                }
                Ok(_) => {}
                Err(_) => home_removed = true,
            }
        }
        let group_removed = self.remove_group(username)?;
        tracing::info!(username, uid, allocation_id = params.allocation_id.as_str(), "allocation user revoked");
        Ok(json!({
            "username": username,
            "allocation_id": params.allocation_id,
            "user_existed": true,
            "uid": uid,
            "processes_killed": killed,
            "gpu_devices_closed": closed,
            "limits_removed": limits_removed,
            "home": user.home,
            "home_removed": home_removed,
            "home_locked": home_locked,
            "group_removed": group_removed,
        }))
    }

    /// Revoke of an absent user: a group left by an interrupted run is still closed
    /// and removed, so a retry converges.
    fn revoke_leftover_group(&self, params: &RevokeUserParams, groups: &[GroupEntry]) -> Result<Value, HostError> {
        let username = params.username.as_str();
        let mut report = json!({
            "username": username,
            "allocation_id": params.allocation_id,
            "user_existed": false,
            "reason": "no such user; nothing to revoke",
        });
        self.forget_grant(username)?;
        if let Some(group) = groups.iter().find(|group| group.name == username)
            && self.in_range(group.gid)
        {
            report["gpu_devices_closed"] = json!(self.close_devices(group.gid, &BTreeSet::new())?);
            report["group_removed"] = json!(self.remove_group(username)?);
        }
        Ok(report)
    }

    /// Removes the group named `name` if it exists and is in range (userdel often
    /// removed it already).
    fn remove_group(&self, name: &str) -> Result<bool, HostError> {
        let present = self.read_groups()?.into_iter().any(|group| group.name == name && self.in_range(group.gid));
        if !present {
            return Ok(false);
        }
        let mut args = self.prefix_args();
        args.push(name.into());
        run("groupdel", &args, &[0, GROUPDEL_NO_SUCH_GROUP]).map(|code| code == 0)
    }

    /// Writes `{grants_dir}/{username}`: the group's gid and the GPU indices it holds.
    fn record_grant(&self, username: &str, gid: u32, indices: &BTreeSet<u32>) -> Result<(), HostError> {
        let dir = &self.config.grants_dir;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| HostError::io(format!("creating {}", dir.display()), e))?;
        let grant = Grant { gid, indices: indices.clone() };
        write_atomic(dir, username, grant.to_text().as_bytes(), 0, 0, 0o600)
    }

    fn forget_grant(&self, username: &str) -> Result<(), HostError> {
        let path = self.config.grants_dir.join(username);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(HostError::io(format!("removing {}", path.display()), error)),
        }
    }

    /// Puts every recorded grant back on its device files where something changed
    /// them (see the module comment). Grants whose group no longer exists, or is not
    /// ours, are dropped. Returns the device files repaired.
    fn enforce(&self) -> Result<Vec<String>, HostError> {
        let _serialised = self.begin()?;
        let dir = &self.config.grants_dir;
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(HostError::io(format!("reading {}", dir.display()), error)),
        };
        let groups = self.read_groups()?;
        let mut repaired = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| HostError::io(format!("reading {}", dir.display()), e))?;
            let Some(username) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if username.starts_with('.') {
                continue;
            }
            let text = fs::read_to_string(entry.path())
                .map_err(|e| HostError::io(format!("reading {}", entry.path().display()), e))?;
            let grant = Grant::parse(&text)
                .map_err(|reason| HostError::Malformed { file: entry.path().display().to_string(), reason })?;
            let group_is_ours =
                groups.iter().any(|group| group.name == username && group.gid == grant.gid && self.in_range(grant.gid));
            if !group_is_ours {
                self.forget_grant(&username)?;
                continue;
            }
            for &index in &grant.indices {
                let path = self.device_path(index);
                let Ok(meta) = fs::symlink_metadata(&path) else { continue };
                if !(meta.file_type().is_char_device() || meta.file_type().is_file()) {
                    continue;
                }
                if (meta.uid(), meta.gid(), meta.mode() & 0o7777) != (0, grant.gid, GRANTED_MODE) {
                    set_owner_and_mode(&path, 0, grant.gid, GRANTED_MODE)?;
                    repaired.push(path.display().to_string());
                }
            }
        }
        if !repaired.is_empty() {
            // Expected on every NVML read where the module resets device files: say so
            // loudly once, then quietly.
            if self.warned_about_resets.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!(devices = ?repaired, "GPU grants restored");
            } else {
                tracing::warn!(
                    devices = ?repaired,
                    driver_resets_device_files = self.driver_resets_device_files(),
                    "GPU device files had been reset (the NVIDIA driver does so whenever a root process \
                     initialises NVML, this agent's inventory included, unless NVreg_ModifyDeviceFiles=0); \
                     grants restored, and restored again whenever this recurs"
                );
            }
        }
        Ok(repaired)
    }

    /// Whether the NVIDIA module runs with `ModifyDeviceFiles: 1`.
    fn driver_resets_device_files(&self) -> bool {
        fs::read_to_string(&self.config.nvidia_params).is_ok_and(|text| {
            text.lines().any(|line| {
                line.split_once(':')
                    .is_some_and(|(name, value)| name.trim() == "ModifyDeviceFiles" && value.trim() == "1")
            })
        })
    }

    fn list_users(&self) -> Result<Vec<String>, HostError> {
        self.usable()?;
        let mut users: Vec<String> =
            self.read_passwd()?.into_iter().filter(|user| self.created_by_us(user)).map(|user| user.name).collect();
        users.sort();
        users.dedup();
        Ok(users)
    }
}

impl HostDriver for LinuxHostDriver {
    fn provision_user(&self, params: &ProvisionUserParams) -> Result<Value, HostError> {
        self.provision(params)
    }

    fn revoke_user(&self, params: &RevokeUserParams) -> Result<Value, HostError> {
        self.revoke(params)
    }

    fn allocation_users(&self) -> Result<Vec<String>, HostError> {
        self.list_users()
    }

    fn enforce_gpu_grants(&self) -> Result<Vec<String>, HostError> {
        self.enforce()
    }
}

const RESETS_DEVICE_FILES: &str = "the NVIDIA driver runs with ModifyDeviceFiles=1: any root process that \
     initialises NVML or CUDA resets /dev/nvidia* to the driver's mode; the agent restores the grants after \
     its own NVML reads and every few seconds, but strict isolation needs NVreg_ModifyDeviceFiles=0";

/// What one allocation group was granted: `gid=200000 gpus=0,2`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    gid: u32,
    indices: BTreeSet<u32>,
}

impl Grant {
    fn to_text(&self) -> String {
        let gpus: Vec<String> = self.indices.iter().map(u32::to_string).collect();
        format!("gid={} gpus={}\n", self.gid, gpus.join(","))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut gid = None;
        let mut indices = BTreeSet::new();
        for field in text.split_whitespace() {
            match field.split_once('=') {
                Some(("gid", value)) => gid = Some(value.parse::<u32>().map_err(|e| format!("gid {value:?}: {e}"))?),
                Some(("gpus", "")) => {}
                Some(("gpus", value)) => {
                    for index in value.split(',') {
                        indices.insert(index.parse::<u32>().map_err(|e| format!("gpu index {index:?}: {e}"))?);
                    }
                }
                _ => return Err(format!("unexpected field {field:?}")),
            }
        }
        Ok(Self { gid: gid.ok_or("no gid")?, indices })
    }
}

/// Why `config` is unusable, if it is.
fn check_config(config: &LinuxHostConfig) -> Result<(), String> {
    let (low, high) = config.uid_range;
    if low < LOWEST_RANGE_START || low > high || high >= u32::MAX - 1 || (low..=high).contains(&NOBODY) {
        return Err(format!(
            "uid_range {low}-{high} must start at {LOWEST_RANGE_START} or above, be ordered and exclude {NOBODY}"
        ));
    }
    for (name, path) in [
        ("root", &config.root),
        ("home_base", &config.home_base),
        ("device_dir", &config.device_dir),
        ("grants_dir", &config.grants_dir),
    ] {
        if !path.is_absolute() {
            return Err(format!("{name} must be an absolute path, not {}", path.display()));
        }
    }
    if config.systemd_dir.as_ref().is_some_and(|dir| !dir.is_absolute()) {
        return Err("systemd_dir must be an absolute path".into());
    }
    let relative = config.home_base.strip_prefix(&config.root).map_err(|_| {
        format!("home_base {} must lie under root {}", config.home_base.display(), config.root.display())
    })?;
    // The passwd home field cannot hold these and we refuse to guess an encoding.
    match relative.to_str() {
        Some(text) if !text.contains([':', '\n']) => Ok(()),
        _ => Err("home_base must be UTF-8 without ':' or newlines".into()),
    }
}

fn gecos_marker(allocation_id: &str) -> String {
    format!("{GECOS_PREFIX}{allocation_id}")
}

fn visible_devices(indices: &BTreeSet<u32>) -> String {
    indices.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn parse_passwd(text: &str) -> Result<Vec<PasswdEntry>, String> {
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate() {
        // NIS compat lines (+/-) and comments name no local account.
        if line.is_empty() || line.starts_with(['#', '+', '-']) {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, gecos, home, _shell] = fields.as_slice() else {
            return Err(format!("line {} does not have 7 fields", number + 1));
        };
        let parse = |value: &str| value.parse::<u32>().map_err(|_| format!("line {}: bad id {value:?}", number + 1));
        entries.push(PasswdEntry {
            name: (*name).to_owned(),
            uid: parse(uid)?,
            gid: parse(gid)?,
            gecos: (*gecos).to_owned(),
            home: (*home).to_owned(),
        });
    }
    Ok(entries)
}

fn parse_group(text: &str) -> Result<Vec<GroupEntry>, String> {
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with(['#', '+', '-']) {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, gid, _members] = fields.as_slice() else {
            return Err(format!("line {} does not have 4 fields", number + 1));
        };
        let gid = gid.parse::<u32>().map_err(|_| format!("line {}: bad gid {gid:?}", number + 1))?;
        entries.push(GroupEntry { name: (*name).to_owned(), gid });
    }
    Ok(entries)
}

/// Runs `program` with `args` and a clean environment; returns its exit code when it
/// is one of `accepted`, an error carrying its stderr otherwise.
fn run(program: &str, args: &[OsString], accepted: &[i32]) -> Result<i32, HostError> {
    let command_line = std::iter::once(program.to_owned())
        .chain(args.iter().map(|arg| arg.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", COMMAND_PATH)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| HostError::io(format!("starting `{command_line}`"), e))?;
    match output.status.code() {
        Some(code) if accepted.contains(&code) => Ok(code),
        code => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr: String = stderr.trim().chars().take(MAX_STDERR_CHARS).collect();
            Err(HostError::Command {
                command: command_line,
                status: code.map_or_else(|| "killed by a signal".to_owned(), |code| format!("exit status {code}")),
                stderr,
            })
        }
    }
}

/// `sd_booted()`: systemd creates this directory at boot and nothing else does.
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn daemon_reload() -> Result<(), HostError> {
    run("systemctl", &["daemon-reload".into()], &[0]).map(drop)
}

/// Changes the owner of `path` itself, never of what a symlink points to.
fn chown_path(path: &Path, uid: u32, gid: u32) -> Result<(), HostError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| HostError::io(format!("changing owner of {}", path.display()), e))
}

fn chmod(path: &Path, mode: u32) -> Result<(), HostError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| HostError::io(format!("changing mode of {}", path.display()), e))
}

fn set_owner_and_mode(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), HostError> {
    chown_path(path, uid, gid)?;
    chmod(path, mode)
}

/// Replaces `dir/name` with `content` in one rename, so readers (sshd) never see a
/// partial file. `create_new` refuses to follow a symlink planted at the temporary name.
fn write_atomic(dir: &Path, name: &str, content: &[u8], uid: u32, gid: u32, mode: u32) -> Result<(), HostError> {
    let target = dir.join(name);
    let temporary = dir.join(format!(".{name}.gpuaas-tmp"));
    let context = || format!("writing {}", target.display());
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(HostError::io(context(), error)),
    }
    let written = (|| -> io::Result<()> {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temporary)?;
        file.write_all(content)?;
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        // After chown, which may clear mode bits, and past the umask.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temporary, &target)
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        return Err(HostError::io(context(), error));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_files_round_trip_and_reject_garbage() {
        let grant = Grant { gid: 200_001, indices: [0, 2, 7].into_iter().collect() };
        assert_eq!(grant.to_text(), "gid=200001 gpus=0,2,7\n");
        assert_eq!(Grant::parse(&grant.to_text()), Ok(grant));
        let none = Grant { gid: 200_002, indices: BTreeSet::new() };
        assert_eq!(Grant::parse(&none.to_text()), Ok(none));
        for garbage in ["", "gpus=1", "gid=x gpus=1", "gid=1 gpus=1,,2", "gid=1 shell=/bin/sh"] {
            assert!(Grant::parse(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn passwd_and_group_parse_and_reject_garbage() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n+::::::\nga_1:x:200000:200001:gpuaas allocation a-1:/home/ga_1:/bin/bash\n";
        let entries = parse_passwd(passwd).unwrap_or_default();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].uid, 200_000);
        assert_eq!(entries[1].gid, 200_001);
        assert_eq!(entries[1].gecos, "gpuaas allocation a-1");
        assert!(parse_passwd("root:x:zero:0:root:/root:/bin/bash\n").is_err());
        assert!(parse_passwd("root:x:0:0\n").is_err());
        let groups = parse_group("root:x:0:\nga_1:x:200001:\n").unwrap_or_default();
        assert_eq!(
            groups,
            vec![GroupEntry { name: "root".into(), gid: 0 }, GroupEntry { name: "ga_1".into(), gid: 200_001 }]
        );
        assert!(parse_group("root:x:0\n").is_err());
    }

    #[test]
    fn configuration_refuses_dangerous_ranges_and_paths() {
        let bad_ranges = [(0, 100), (500, 2000), (60_000, 70_000), (300, 200), (200_000, u32::MAX)];
        for uid_range in bad_ranges {
            let config = LinuxHostConfig { uid_range, ..LinuxHostConfig::for_host() };
            assert!(matches!(LinuxHostDriver::try_new(config.clone()), Err(HostError::Config(_))), "{uid_range:?}");
            let driver = LinuxHostDriver::new(config);
            assert!(matches!(driver.allocation_users(), Err(HostError::Config(_))), "{uid_range:?}");
        }
        let outside = LinuxHostConfig { home_base: "/home".into(), ..LinuxHostConfig::throwaway(Path::new("/tmp/x")) };
        assert!(matches!(LinuxHostDriver::try_new(outside), Err(HostError::Config(_))));
        assert!(LinuxHostDriver::try_new(LinuxHostConfig::for_host()).is_ok());
    }

    #[test]
    fn passwd_home_is_seen_from_inside_the_root() {
        let throwaway = LinuxHostDriver::new(LinuxHostConfig::throwaway(Path::new("/tmp/root-x")));
        assert_eq!(throwaway.passwd_home("ga_1"), "/home/ga_1");
        let host = LinuxHostDriver::new(LinuxHostConfig::for_host());
        assert_eq!(host.passwd_home("ga_1"), "/home/ga_1");
    }
}
