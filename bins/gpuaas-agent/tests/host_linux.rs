//! The Linux host driver against a throwaway root: real `useradd`/`userdel` with
//! `--prefix`, fake GPU device files, systemd drop-ins written but never loaded.
//! Nothing here touches the real `/etc`. Tests that need root (or a `useradd` with
//! `--prefix`, or `setpriv`) say what they skip and why, and return early.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use gpuaas_agent::host::inventory::{self, InventoryOptions};
use gpuaas_agent::host::linux::{LinuxHostConfig, LinuxHostDriver};
use gpuaas_agent::host::{HostDriver, HostError, NoopDriver};
use gpuaas_nodeagent_protocol::{GpuHealth, InventorySource, ProvisionUserParams, RevokeUserParams};
use serde_json::Value;

const RANGE: (u32, u32) = (200_000, 299_999);
const DEVICES: u32 = 4;
const WORLD_OPEN: u32 = 0o666;
const SKEL_PROFILE: &str = "# skeleton profile\nPATH=\"$HOME/bin:$PATH\"";

/// A throwaway root with copies of the account databases and four fake GPUs.
struct Host {
    dir: tempfile::TempDir,
    driver: LinuxHostDriver,
}

impl Host {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn etc(&self, name: &str) -> String {
        fs::read_to_string(self.root().join("etc").join(name)).unwrap_or_default()
    }

    /// `(uid, gid, gecos, home, shell)` from the throwaway passwd.
    fn user(&self, name: &str) -> Option<(u32, u32, String, String, String)> {
        self.etc("passwd").lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() == 7 && fields[0] == name).then(|| {
                (
                    fields[2].parse().unwrap_or(0),
                    fields[3].parse().unwrap_or(0),
                    fields[4].to_owned(),
                    fields[5].to_owned(),
                    fields[6].to_owned(),
                )
            })
        })
    }

    fn group_gid(&self, name: &str) -> Option<u32> {
        self.etc("group").lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() == 4 && fields[0] == name).then(|| fields[2].parse().unwrap_or(0))
        })
    }

    fn home(&self, name: &str) -> PathBuf {
        self.root().join("home").join(name)
    }

    fn device(&self, index: u32) -> PathBuf {
        self.root().join("dev").join(format!("nvidia{index}"))
    }

    fn drop_in(&self, uid: u32) -> PathBuf {
        self.root().join(format!("etc/systemd/system/user-{uid}.slice.d/50-gpuaas.conf"))
    }

    /// `useradd --prefix` for accounts the driver did not create.
    fn add_foreign_user(&self, name: &str, uid: u32) {
        let status = Command::new("useradd")
            .arg("--prefix")
            .arg(self.root())
            .args(["-K", &format!("UID_MIN={uid}"), "-K", &format!("UID_MAX={uid}"), "-M", "-s", "/bin/bash", name])
            .status();
        assert!(status.is_ok_and(|status| status.success()), "useradd {name} in the throwaway root");
        assert_eq!(self.user(name).map(|user| user.0), Some(uid));
    }
}

/// `(owner uid, group gid, permission bits)` of a path, not following symlinks.
fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn useradd_has_prefix() -> bool {
    Command::new("useradd")
        .arg("--help")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("--prefix"))
}

fn throwaway(test: &str) -> Option<Host> {
    throwaway_in_range(test, RANGE)
}

/// A throwaway root whose driver uses `uid_range` (a part of the default range).
fn throwaway_in_range(test: &str, uid_range: (u32, u32)) -> Option<Host> {
    if !running_as_root() {
        println!("skipping {test}: creating users (even in a throwaway root) needs root");
        return None;
    }
    if !useradd_has_prefix() {
        println!("skipping {test}: this useradd has no --prefix, so users cannot go to a throwaway root");
        return None;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let etc = dir.path().join("etc");
    let dev = dir.path().join("dev");
    for path in [&etc, &dev, &dir.path().join("home")] {
        fs::create_dir_all(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for name in ["passwd", "group", "shadow", "gshadow", "login.defs"] {
        fs::copy(Path::new("/etc").join(name), etc.join(name)).unwrap_or_else(|e| panic!("copy /etc/{name}: {e}"));
    }
    // A skeleton like Debian's, to see it copied and `.profile` extended, not replaced.
    let skel = etc.join("skel");
    fs::create_dir_all(&skel).unwrap_or_else(|e| panic!("{e}"));
    fs::write(skel.join(".profile"), SKEL_PROFILE).unwrap_or_else(|e| panic!("{e}"));
    fs::write(skel.join(".bashrc"), "# skeleton bashrc\n").unwrap_or_else(|e| panic!("{e}"));
    for index in 0..DEVICES {
        let path = dev.join(format!("nvidia{index}"));
        fs::write(&path, b"").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(WORLD_OPEN)).unwrap_or_else(|e| panic!("{e}"));
    }
    let config = LinuxHostConfig::throwaway(dir.path());
    assert_eq!(config.uid_range, RANGE);
    assert!(!config.reload_systemd);
    let config = LinuxHostConfig { uid_range, ..config };
    let driver = LinuxHostDriver::try_new(config).unwrap_or_else(|e| panic!("{e}"));
    Some(Host { dir, driver })
}

/// A syntactically valid ed25519 public key line; `seed` makes it distinct.
fn key(seed: u8, comment: &str) -> String {
    let mut blob = Vec::new();
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(&[seed; 32]);
    format!("ssh-ed25519 {} {comment}", base64::engine::general_purpose::STANDARD.encode(blob))
}

fn provision(username: &str, allocation_id: &str, keys: &[String], gpus: &[u32]) -> ProvisionUserParams {
    ProvisionUserParams {
        allocation_id: allocation_id.into(),
        username: username.into(),
        authorized_keys: keys.to_vec(),
        gpu_indices: gpus.to_vec(),
        cpu_millicores: 1500,
        memory_bytes: 2 << 30,
    }
}

fn revoke(username: &str, allocation_id: &str, remove_home: bool) -> RevokeUserParams {
    RevokeUserParams { allocation_id: allocation_id.into(), username: username.into(), remove_home }
}

fn ok(result: Result<Value, HostError>) -> Value {
    result.unwrap_or_else(|e| panic!("host operation failed: {e}"))
}

/// Contents and ownership of every file the driver writes for a user, to compare runs.
fn snapshot(host: &Host, username: &str, uid: u32) -> BTreeMap<String, (String, (u32, u32, u32))> {
    let home = host.home(username);
    let mut paths = vec![
        home.clone(),
        home.join(".ssh"),
        home.join(".ssh/authorized_keys"),
        home.join(".gpuaas_env"),
        home.join(".profile"),
        host.drop_in(uid),
    ];
    paths.extend((0..DEVICES).map(|index| host.device(index)));
    let mut files: BTreeMap<String, (String, (u32, u32, u32))> = paths
        .into_iter()
        .map(|path| (path.display().to_string(), (fs::read_to_string(&path).unwrap_or_default(), owner_mode(&path))))
        .collect();
    for name in ["passwd", "group", "shadow", "gshadow"] {
        files.insert(name.into(), (host.etc(name), (0, 0, 0)));
    }
    files
}

#[test]
fn provision_creates_the_user_keys_gpu_access_and_limits() {
    let Some(host) = throwaway("provision_creates_the_user_keys_gpu_access_and_limits") else { return };
    let keys = [key(1, "alice@laptop"), key(2, "alice@desktop")];
    let report = ok(host.driver.provision_user(&provision("ga_alpha", "alloc-1", &keys, &[0, 2])));

    let (uid, gid, _, home, shell) = host.user("ga_alpha").unwrap_or_else(|| panic!("ga_alpha not in passwd"));
    assert!((RANGE.0..=RANGE.1).contains(&uid), "uid {uid}");
    assert_eq!(host.group_gid("ga_alpha"), Some(gid));
    assert!((RANGE.0..=RANGE.1).contains(&gid), "gid {gid}");
    assert_eq!((home.as_str(), shell.as_str()), ("/home/ga_alpha", "/bin/bash"));
    assert!(!fs::read_to_string("/etc/passwd").unwrap_or_default().contains("ga_alpha"), "real /etc untouched");
    assert_eq!(report["uid"], uid);
    assert_eq!(report["created_user"], true);
    // Key-only and not locked: sshd without PAM refuses a "!" password as a locked account.
    let shadow = host.etc("shadow");
    assert!(shadow.lines().any(|line| line.starts_with("ga_alpha:*:")), "{shadow}");

    let home = host.home("ga_alpha");
    assert_eq!(owner_mode(&home), (uid, gid, 0o700));
    assert_eq!(owner_mode(&home.join(".ssh")), (uid, gid, 0o700));
    assert_eq!(owner_mode(&home.join(".ssh/authorized_keys")), (uid, gid, 0o600));
    assert_eq!(
        fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap_or_default(),
        format!("{}\n{}\n", keys[0], keys[1])
    );

    for index in [0, 2] {
        assert_eq!(owner_mode(&host.device(index)), (0, gid, 0o660), "assigned nvidia{index}");
    }
    for index in [1, 3] {
        assert_eq!(owner_mode(&host.device(index)), (0, 0, WORLD_OPEN), "unassigned nvidia{index} untouched");
    }
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("nvidia1") && warnings.contains("nvidia3"), "{warnings}");

    let environment = fs::read_to_string(home.join(".gpuaas_env")).unwrap_or_default();
    assert!(environment.contains("export CUDA_VISIBLE_DEVICES=0,2\n"), "{environment}");
    assert!(environment.contains("export NVIDIA_VISIBLE_DEVICES=0,2\n"), "{environment}");
    assert_eq!(owner_mode(&home.join(".gpuaas_env")).0, uid);
    let profile = fs::read_to_string(home.join(".profile")).unwrap_or_default();
    assert!(profile.starts_with(&format!("{SKEL_PROFILE}\n")), "skeleton content kept: {profile}");
    assert!(profile.lines().any(|line| line.contains(". \"$HOME/.gpuaas_env\"")), "{profile}");
    assert_eq!(owner_mode(&home.join(".profile")), (uid, gid, 0o644));
    assert_eq!(fs::read_to_string(home.join(".bashrc")).unwrap_or_default(), "# skeleton bashrc\n");
    assert_eq!(owner_mode(&home.join(".bashrc")).0, uid);

    let drop_in = fs::read_to_string(host.drop_in(uid)).unwrap_or_default();
    assert!(drop_in.contains("[Slice]\nCPUQuota=150%\nMemoryMax=2147483648\n"), "{drop_in}");
    assert_eq!(report["limits"]["cpu_quota_percent"], 150);
    assert_eq!(report["skipped"], serde_json::json!([]));
}

#[test]
fn provisioning_twice_changes_nothing() {
    let Some(host) = throwaway("provisioning_twice_changes_nothing") else { return };
    let params = provision("ga_twice", "alloc-2", &[key(3, "bob")], &[1]);
    ok(host.driver.provision_user(&params));
    let (uid, ..) = host.user("ga_twice").unwrap_or_else(|| panic!("ga_twice not in passwd"));
    let before = snapshot(&host, "ga_twice", uid);

    let report = ok(host.driver.provision_user(&params));
    assert_eq!(report["created_user"], false);
    assert_eq!(report["created_group"], false);
    assert_eq!(report["uid"], uid);
    assert_eq!(report["limits"]["changed"], false);
    assert_eq!(snapshot(&host, "ga_twice", uid), before);
    let profile = fs::read_to_string(host.home("ga_twice").join(".profile")).unwrap_or_default();
    assert_eq!(profile.matches(".gpuaas_env").count(), 2, "one hook line (test and source): {profile}");
}

#[test]
fn reprovisioning_converges_keys_gpus_and_limits() {
    let Some(host) = throwaway("reprovisioning_converges_keys_gpus_and_limits") else { return };
    ok(host.driver.provision_user(&provision("ga_conv", "alloc-3", &[key(4, "old-a"), key(5, "old-b")], &[0, 1])));
    let (uid, gid, ..) = host.user("ga_conv").unwrap_or_else(|| panic!("ga_conv not in passwd"));

    let mut params = provision("ga_conv", "alloc-3", &[key(6, "new")], &[1, 3]);
    params.cpu_millicores = 4000;
    let report = ok(host.driver.provision_user(&params));

    let home = host.home("ga_conv");
    assert_eq!(
        fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap_or_default(),
        format!("{}\n", key(6, "new"))
    );
    assert_eq!(owner_mode(&home.join(".ssh/authorized_keys")), (uid, gid, 0o600));
    assert_eq!(owner_mode(&host.device(0)), (0, 0, 0o600), "no longer assigned: closed");
    assert_eq!(owner_mode(&host.device(1)), (0, gid, 0o660));
    assert_eq!(owner_mode(&host.device(3)), (0, gid, 0o660));
    assert_eq!(owner_mode(&host.device(2)), (0, 0, WORLD_OPEN));
    assert_eq!(report["gpu_devices_closed"].as_array().map(Vec::len), Some(1));
    let environment = fs::read_to_string(home.join(".gpuaas_env")).unwrap_or_default();
    assert!(environment.contains("CUDA_VISIBLE_DEVICES=1,3\n"), "{environment}");
    let drop_in = fs::read_to_string(host.drop_in(uid)).unwrap_or_default();
    assert!(drop_in.contains("CPUQuota=400%\n"), "{drop_in}");
}

#[test]
fn missing_device_files_are_skipped_and_reported() {
    let Some(host) = throwaway("missing_device_files_are_skipped_and_reported") else { return };
    let report = ok(host.driver.provision_user(&provision("ga_nodev", "alloc-4", &[key(7, "c")], &[2, 9])));
    let (_, gid, ..) = host.user("ga_nodev").unwrap_or_else(|| panic!("ga_nodev not in passwd"));
    assert_eq!(owner_mode(&host.device(2)), (0, gid, 0o660));
    assert!(!host.device(9).exists());
    let skipped = report["skipped"].as_array().cloned().unwrap_or_default();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["step"], "gpu_device");
    assert!(skipped[0]["target"].as_str().is_some_and(|target| target.ends_with("/dev/nvidia9")));
}

/// What NVML does as root on a host with `ModifyDeviceFiles=1`: every device file back
/// to the driver's `root:root 0666`.
fn reset_like_the_nvidia_driver(host: &Host) {
    for index in 0..DEVICES {
        let path = host.device(index);
        std::os::unix::fs::lchown(&path, Some(0), Some(0)).unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&path, fs::Permissions::from_mode(WORLD_OPEN)).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn grants_undone_by_the_nvidia_driver_are_restored_and_only_while_they_last() {
    let Some(host) = throwaway("grants_undone_by_the_nvidia_driver_are_restored_and_only_while_they_last") else {
        return;
    };
    let params_file = host.root().join("proc/driver/nvidia/params");
    fs::create_dir_all(params_file.parent().unwrap_or(host.root())).unwrap_or_else(|e| panic!("{e}"));
    fs::write(&params_file, "ResmanDebugLevel: 4294967295\nModifyDeviceFiles: 1\nDeviceFileMode: 438\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let report = ok(host.driver.provision_user(&provision("ga_kept", "alloc-k", &[key(9, "k")], &[1, 2])));
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("ModifyDeviceFiles=1"), "{warnings}");
    let (_, gid, ..) = host.user("ga_kept").unwrap_or_else(|| panic!("ga_kept not in passwd"));
    assert_eq!(ok_list(host.driver.enforce_gpu_grants()), Vec::<String>::new(), "nothing to repair yet");

    reset_like_the_nvidia_driver(&host);
    let repaired = ok_list(host.driver.enforce_gpu_grants());
    assert_eq!(repaired, [host.device(1), host.device(2)].map(|path| path.display().to_string()));
    for index in [1, 2] {
        assert_eq!(owner_mode(&host.device(index)), (0, gid, 0o660), "nvidia{index} granted again");
    }
    for index in [0, 3] {
        assert_eq!(owner_mode(&host.device(index)), (0, 0, WORLD_OPEN), "unassigned nvidia{index} left alone");
    }
    // The inventory reads NVML, so it restores the grants too.
    reset_like_the_nvidia_driver(&host);
    let options = InventoryOptions { declared_file: None, hostname: Some("gpu-test".into()) };
    inventory::collect(&options, &host.driver).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(owner_mode(&host.device(1)), (0, gid, 0o660));

    ok(host.driver.revoke_user(&revoke("ga_kept", "alloc-k", true)));
    reset_like_the_nvidia_driver(&host);
    assert_eq!(ok_list(host.driver.enforce_gpu_grants()), Vec::<String>::new(), "a revoked grant stays gone");
    assert_eq!(owner_mode(&host.device(1)), (0, 0, WORLD_OPEN));
}

#[test]
fn a_grant_whose_group_is_gone_is_dropped_not_restored() {
    let Some(host) = throwaway("a_grant_whose_group_is_gone_is_dropped_not_restored") else { return };
    ok(host.driver.provision_user(&provision("ga_stale", "alloc-s", &[key(10, "s")], &[0])));
    // Someone removed the account behind the driver's back.
    for program in ["userdel", "groupdel"] {
        let status = Command::new(program).arg("--prefix").arg(host.root()).arg("ga_stale").status();
        assert!(status.is_ok_and(|status| status.success() || status.code() == Some(6)), "{program}");
    }
    reset_like_the_nvidia_driver(&host);
    assert_eq!(ok_list(host.driver.enforce_gpu_grants()), Vec::<String>::new());
    assert_eq!(owner_mode(&host.device(0)), (0, 0, WORLD_OPEN), "no device handed to a gid nobody owns");
    assert!(!host.root().join("var/lib/gpuaas-agent/gpu-grants/ga_stale").exists());
}

fn ok_list(result: Result<Vec<String>, HostError>) -> Vec<String> {
    result.unwrap_or_else(|e| panic!("host operation failed: {e}"))
}

#[test]
fn revoke_removes_user_group_gpu_access_limits_and_home() {
    let Some(host) = throwaway("revoke_removes_user_group_gpu_access_limits_and_home") else { return };
    ok(host.driver.provision_user(&provision("ga_gone", "alloc-5", &[key(8, "d")], &[0, 3])));
    let (uid, ..) = host.user("ga_gone").unwrap_or_else(|| panic!("ga_gone not in passwd"));
    assert!(host.drop_in(uid).exists());

    let report = ok(host.driver.revoke_user(&revoke("ga_gone", "alloc-5", true)));
    assert_eq!(report["user_existed"], true);
    assert_eq!(host.user("ga_gone"), None);
    assert_eq!(host.group_gid("ga_gone"), None);
    assert!(!host.etc("shadow").contains("ga_gone:"));
    for index in [0, 3] {
        assert_eq!(owner_mode(&host.device(index)), (0, 0, 0o600), "nvidia{index} closed");
    }
    assert_eq!(owner_mode(&host.device(1)), (0, 0, WORLD_OPEN));
    assert!(!host.drop_in(uid).exists());
    assert!(!host.drop_in(uid).parent().is_some_and(Path::exists), "empty drop-in directory removed");
    assert!(!host.home("ga_gone").exists());

    let again = ok(host.driver.revoke_user(&revoke("ga_gone", "alloc-5", true)));
    assert_eq!(again["user_existed"], false);
}

#[test]
fn revoke_keeps_the_home_locked_to_root_when_asked() {
    let Some(host) = throwaway("revoke_keeps_the_home_locked_to_root_when_asked") else { return };
    ok(host.driver.provision_user(&provision("ga_kept", "alloc-6", &[key(9, "e")], &[1])));
    let report = ok(host.driver.revoke_user(&revoke("ga_kept", "alloc-6", false)));
    assert_eq!(report["home_removed"], false);
    assert_eq!(host.user("ga_kept"), None);
    assert_eq!(host.group_gid("ga_kept"), None);
    let home = host.home("ga_kept");
    // A later allocation may reuse the uid; only root may enter the kept home.
    assert_eq!(owner_mode(&home), (0, 0, 0o700));
    assert!(home.join(".ssh/authorized_keys").exists(), "contents kept for forensics");
    assert_eq!(owner_mode(&host.device(1)), (0, 0, 0o600));

    let again = ok(host.driver.revoke_user(&revoke("ga_kept", "alloc-6", false)));
    assert_eq!(again["user_existed"], false);
    assert!(home.exists());
}

fn setpriv_available() -> bool {
    Command::new("setpriv").arg("--version").output().is_ok_and(|output| output.status.success())
}

/// A `sleep 300` under another uid; killed and reaped when dropped, so a failing test
/// leaves nothing running.
struct Sleeper(Child);

impl Sleeper {
    fn spawn_as(uid: u32, gid: u32) -> Self {
        let child = Command::new("setpriv")
            .args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()])
            .args(["sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("setpriv: {e}"));
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Its exit status if it exits within `limit` (reaping it), `None` otherwise.
    fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `pid` runs `sleep` under `uid`, so the kill cannot race the exec.
fn wait_until_running_as(pid: u32, uid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid_line = status.lines().find(|line| line.starts_with("Uid:")).unwrap_or_default();
        if status.starts_with("Name:\tsleep") && uid_line.split_whitespace().nth(1) == Some(&uid.to_string()) {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} never ran sleep as {uid}: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn revoke_terminates_the_users_processes_and_no_one_elses() {
    // Its own uid range: every other test's users get uids from 200000 up, and their
    // revokes kill by uid, which would hide a revoke here that kills nothing.
    let range = (290_000, 290_999);
    let Some(host) = throwaway_in_range("revoke_terminates_the_users_processes_and_no_one_elses", range) else {
        return;
    };
    if !setpriv_available() {
        println!("skipping revoke_terminates_the_users_processes_and_no_one_elses: setpriv is not installed");
        return;
    }
    ok(host.driver.provision_user(&provision("ga_busy", "alloc-7", &[key(10, "f")], &[0])));
    let (uid, gid, ..) = host.user("ga_busy").unwrap_or_else(|| panic!("ga_busy not in passwd"));
    assert!((range.0..=range.1).contains(&uid), "uid {uid}");

    let mut victim = Sleeper::spawn_as(uid, gid);
    // A process of a uid outside the range must survive the revoke.
    let mut bystander = Sleeper::spawn_as(1500, 1500);
    let victim_pid = victim.pid();
    wait_until_running_as(victim_pid, uid);
    wait_until_running_as(bystander.pid(), 1500);
    // Reaped on another thread while revoke runs, so the killed child does not linger
    // as a zombie that revoke would wait for.
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(victim.exit_within(Duration::from_secs(15)));
    });

    let report = ok(host.driver.revoke_user(&revoke("ga_busy", "alloc-7", true)));
    assert_eq!(report["processes_killed"], true);
    let status = receiver.recv_timeout(Duration::from_secs(20)).ok().flatten();
    let status = status.unwrap_or_else(|| panic!("process {victim_pid} of the revoked user still running"));
    assert_eq!(status.signal(), Some(9), "killed with SIGKILL: {status:?}");
    assert_eq!(bystander.exit_within(Duration::from_millis(200)), None, "a process of uid 1500 was killed");
}

#[test]
fn accounts_the_driver_did_not_create_are_refused() {
    let Some(host) = throwaway("accounts_the_driver_did_not_create_are_refused") else { return };
    host.add_foreign_user("hostuser", 1500);
    // Inside the range but without the driver's marker: also someone else's.
    host.add_foreign_user("ga_rogue", 250_000);
    let before: Vec<String> = ["passwd", "group", "shadow"].iter().map(|name| host.etc(name)).collect();

    for name in ["hostuser", "ga_rogue"] {
        let provisioned = host.driver.provision_user(&provision(name, "alloc-8", &[key(11, "g")], &[0]));
        assert!(matches!(provisioned, Err(HostError::Refused { .. })), "provision {name}: {provisioned:?}");
        let revoked = host.driver.revoke_user(&revoke(name, "alloc-8", true));
        assert!(matches!(revoked, Err(HostError::Refused { .. })), "revoke {name}: {revoked:?}");
        assert!(!host.home(name).exists());
    }
    let error = host.driver.revoke_user(&revoke("hostuser", "alloc-8", true)).err().map(|e| e.to_string());
    assert!(error.as_deref().is_some_and(|e| e.contains("hostuser") && e.contains("1500")), "{error:?}");
    let after: Vec<String> = ["passwd", "group", "shadow"].iter().map(|name| host.etc(name)).collect();
    assert_eq!(after, before, "account databases unchanged");
    assert_eq!(owner_mode(&host.device(0)), (0, 0, WORLD_OPEN));
}

#[test]
fn a_user_of_another_allocation_is_not_taken_over() {
    let Some(host) = throwaway("a_user_of_another_allocation_is_not_taken_over") else { return };
    ok(host.driver.provision_user(&provision("ga_mine", "alloc-a", &[key(12, "h")], &[0])));
    let (_, gid, ..) = host.user("ga_mine").unwrap_or_else(|| panic!("ga_mine not in passwd"));
    let other = host.driver.provision_user(&provision("ga_mine", "alloc-b", &[key(13, "i")], &[0]));
    assert!(matches!(other, Err(HostError::Conflict(_))), "{other:?}");
    let revoked = host.driver.revoke_user(&revoke("ga_mine", "alloc-b", true));
    assert!(matches!(revoked, Err(HostError::Conflict(_))), "{revoked:?}");
    assert!(host.user("ga_mine").is_some());
    // Another allocation may not be given a GPU this one holds.
    let grab = host.driver.provision_user(&provision("ga_thief", "alloc-c", &[key(14, "j")], &[0]));
    assert!(matches!(grab, Err(HostError::Conflict(_))), "{grab:?}");
    assert_eq!(host.user("ga_thief"), None, "refused before creating anything");
    assert_eq!(owner_mode(&host.device(0)), (0, gid, 0o660));
}

#[test]
fn allocation_users_lists_exactly_the_drivers_users() {
    let Some(host) = throwaway("allocation_users_lists_exactly_the_drivers_users") else { return };
    assert_eq!(host.driver.allocation_users().ok(), Some(vec![]));
    host.add_foreign_user("hostuser", 1500);
    host.add_foreign_user("ga_rogue", 250_000);
    ok(host.driver.provision_user(&provision("ga_b", "alloc-9", &[key(15, "k")], &[1])));
    ok(host.driver.provision_user(&provision("ga_a", "alloc-10", &[key(16, "l")], &[2])));
    assert_eq!(host.driver.allocation_users().ok(), Some(vec!["ga_a".to_owned(), "ga_b".to_owned()]));
    ok(host.driver.revoke_user(&revoke("ga_a", "alloc-10", true)));
    assert_eq!(host.driver.allocation_users().ok(), Some(vec!["ga_b".to_owned()]));
}

fn noop_driver_with(user: &str) -> NoopDriver {
    let driver = NoopDriver::new();
    ok(driver.provision_user(&provision(user, "alloc-inv", &[key(17, "m")], &[0])));
    driver
}

#[test]
fn inventory_from_a_declared_file_is_marked_declared() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let file = dir.path().join("inventory.json");
    let declared = r#"{"gpu_model": "NVIDIA H100 80GB HBM3", "gpu_memory_mib": 81559, "gpu_count": 4,
                      "driver_version": "550.54.15", "cuda_version": "12.4"}"#;
    fs::write(&file, declared).unwrap_or_else(|e| panic!("{e}"));
    let options = InventoryOptions { declared_file: Some(file.clone()), hostname: Some("gpu-test-01".into()) };
    let driver = noop_driver_with("ga_inv");

    let report = inventory::collect(&options, &driver).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.source, InventorySource::Declared);
    assert_eq!(report.hostname, "gpu-test-01");
    assert_eq!(report.gpus.len(), 4);
    assert_eq!(report.gpus.iter().map(|gpu| gpu.index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert!(report.gpus.iter().all(|gpu| gpu.model == "NVIDIA H100 80GB HBM3" && gpu.memory_mib == 81559));
    assert!(report.gpus.iter().all(|gpu| gpu.health == GpuHealth::Unknown));
    assert_eq!(report.gpus[0].cuda_version.as_deref(), Some("12.4"));
    assert_eq!(report.allocation_users, vec!["ga_inv".to_owned()]);
    assert!(report.cpu_cores > 0 && report.memory_bytes > 0 && report.disk_bytes > 0);

    let health = inventory::health(&options, &driver);
    assert_eq!(health["source"], "declared");
    assert_eq!(health["gpu_count"], 4);

    fs::write(&file, r#"{"gpu_model": "x", "gpu_memory_mib": 1, "gpu_count": 1, "extra": true}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(inventory::collect(&options, &driver).is_err(), "a malformed declaration is an error, not zero GPUs");
}

fn nvidia_driver_present() -> bool {
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"]
        .iter()
        .any(|dir| Path::new(dir).join("libnvidia-ml.so.1").exists())
}

#[test]
fn inventory_without_a_declaration_detects_this_machine() {
    let driver = noop_driver_with("ga_det");
    let options = InventoryOptions::default();
    let report = inventory::collect(&options, &driver).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.source, InventorySource::Detected);
    assert!(report.cpu_cores > 0, "cpu cores");
    assert!(report.memory_bytes > 64 << 20, "memory {}", report.memory_bytes);
    assert!(report.disk_bytes > 0, "disk");
    assert!(!report.hostname.is_empty());
    assert_eq!(report.allocation_users, vec!["ga_det".to_owned()]);

    let health = inventory::health(&options, &driver);
    assert!(health["memory_available_bytes"].as_u64().is_some_and(|bytes| bytes > 0), "{health}");
    assert!(health["load_average"]["1m"].is_number(), "{health}");
    assert_eq!(health["errors"], serde_json::json!([]));

    if nvidia_driver_present() {
        println!("skipping the zero-GPU check: this machine has an NVIDIA driver ({} GPUs found)", report.gpus.len());
        return;
    }
    assert!(report.gpus.is_empty(), "no NVIDIA driver, yet GPUs: {:?}", report.gpus);
    assert_eq!(health["gpu_count"], 0);
    assert_eq!(health["status"], "ok");
}
