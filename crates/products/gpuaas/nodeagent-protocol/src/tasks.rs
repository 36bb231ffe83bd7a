//! The task catalog: every operation the control plane may ask of a node, with typed
//! parameters validated the same way on both sides.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Most public keys one allocation user may get.
pub const MAX_AUTHORIZED_KEYS: usize = 32;
/// Longest OpenSSH public key line accepted (RSA 16384 fits).
pub const MAX_PUBLIC_KEY_LEN: usize = 16 * 1024;
/// Most GPUs one allocation may be given on a node.
pub const MAX_GPU_INDICES: usize = 16;
/// Smallest memory limit a provisioned user may get.
pub const MIN_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

/// Names the agent refuses to create or remove: system accounts that exist on every
/// host. An allocation user is always a fresh account.
const RESERVED_USERNAMES: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "systemd-network",
    "systemd-resolve",
    "messagebus",
    "sshd",
    "postgres",
    "admin",
    "ubuntu",
    "debian",
    "nvidia-persistenced",
    "gpuaas",
    "gpuaas-agent",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum TaskType {
    #[serde(rename = "node.inventory")]
    NodeInventory,
    #[serde(rename = "node.health")]
    NodeHealth,
    #[serde(rename = "allocation.provision_user")]
    ProvisionUser,
    #[serde(rename = "allocation.revoke_user")]
    RevokeUser,
}

impl TaskType {
    pub const ALL: &'static [TaskType] =
        &[TaskType::NodeInventory, TaskType::NodeHealth, TaskType::ProvisionUser, TaskType::RevokeUser];

    pub const fn as_str(self) -> &'static str {
        match self {
            TaskType::NodeInventory => "node.inventory",
            TaskType::NodeHealth => "node.health",
            TaskType::ProvisionUser => "allocation.provision_user",
            TaskType::RevokeUser => "allocation.revoke_user",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        TaskType::ALL.iter().copied().find(|kind| kind.as_str() == text)
    }
}

impl std::fmt::Display for TaskType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `allocation.provision_user`: create the allocation's POSIX user, install its public
/// keys, give it the assigned GPUs only and put it under CPU and memory limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionUserParams {
    pub allocation_id: String,
    pub username: String,
    /// OpenSSH public key lines (`type base64 [comment]`), no options.
    pub authorized_keys: Vec<String>,
    /// Indices of the GPUs the user may open; all others stay closed to them.
    pub gpu_indices: Vec<u32>,
    /// CPU limit in thousandths of a core (8000 = 8 cores).
    pub cpu_millicores: u32,
    pub memory_bytes: u64,
}

/// `allocation.revoke_user`: end the user's processes, remove their keys and account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeUserParams {
    pub allocation_id: String,
    pub username: String,
    /// Remove the home directory too (policy decides; kept for forensics otherwise).
    pub remove_home: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// A task with its parameters, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    NodeInventory,
    NodeHealth,
    ProvisionUser(ProvisionUserParams),
    RevokeUser(RevokeUserParams),
}

impl Task {
    pub fn task_type(&self) -> TaskType {
        match self {
            Task::NodeInventory => TaskType::NodeInventory,
            Task::NodeHealth => TaskType::NodeHealth,
            Task::ProvisionUser(_) => TaskType::ProvisionUser,
            Task::RevokeUser(_) => TaskType::RevokeUser,
        }
    }

    /// The parameters as they travel.
    pub fn params(&self) -> Value {
        let value = match self {
            Task::NodeInventory | Task::NodeHealth => serde_json::to_value(NoParams {}),
            Task::ProvisionUser(params) => serde_json::to_value(params),
            Task::RevokeUser(params) => serde_json::to_value(params),
        };
        value.unwrap_or(Value::Null)
    }

    /// Parses and validates; the agent calls this before any host action and the
    /// control plane before it queues anything.
    pub fn parse(task_type: &str, params: &Value) -> Result<Task, Refusal> {
        let Some(kind) = TaskType::parse(task_type) else {
            return Err(Refusal::new(RefusalCode::UnknownType, format!("unknown task type {task_type:?}")));
        };
        let invalid = |error: String| Refusal::new(RefusalCode::InvalidParams, error);
        let task = match kind {
            TaskType::NodeInventory | TaskType::NodeHealth => {
                let NoParams {} = serde_json::from_value(params.clone()).map_err(|e| invalid(e.to_string()))?;
                if kind == TaskType::NodeInventory { Task::NodeInventory } else { Task::NodeHealth }
            }
            TaskType::ProvisionUser => {
                Task::ProvisionUser(serde_json::from_value(params.clone()).map_err(|e| invalid(e.to_string()))?)
            }
            TaskType::RevokeUser => {
                Task::RevokeUser(serde_json::from_value(params.clone()).map_err(|e| invalid(e.to_string()))?)
            }
        };
        task.validate().map_err(invalid)?;
        Ok(task)
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            Task::NodeInventory | Task::NodeHealth => Ok(()),
            Task::ProvisionUser(params) => params.validate(),
            Task::RevokeUser(params) => params.validate(),
        }
    }
}

impl ProvisionUserParams {
    pub fn validate(&self) -> Result<(), String> {
        if !crate::is_valid_id(&self.allocation_id) {
            return Err("allocation_id: 1 to 64 characters of [A-Za-z0-9-]".into());
        }
        if !is_valid_username(&self.username) {
            return Err("username: not an allowed POSIX user name".into());
        }
        if self.authorized_keys.is_empty() || self.authorized_keys.len() > MAX_AUTHORIZED_KEYS {
            return Err(format!("authorized_keys: 1 to {MAX_AUTHORIZED_KEYS} keys"));
        }
        for key in &self.authorized_keys {
            validate_public_key_line(key).map_err(|error| format!("authorized_keys: {error}"))?;
        }
        if self.gpu_indices.is_empty() || self.gpu_indices.len() > MAX_GPU_INDICES {
            return Err(format!("gpu_indices: 1 to {MAX_GPU_INDICES} indices"));
        }
        let mut sorted = self.gpu_indices.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err("gpu_indices: indices must be unique".into());
        }
        if sorted.iter().any(|&index| index as usize >= crate::inventory::MAX_GPUS) {
            return Err(format!("gpu_indices: each below {}", crate::inventory::MAX_GPUS));
        }
        if self.cpu_millicores == 0 {
            return Err("cpu_millicores: must be positive".into());
        }
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return Err(format!("memory_bytes: at least {MIN_MEMORY_BYTES}"));
        }
        Ok(())
    }
}

impl RevokeUserParams {
    pub fn validate(&self) -> Result<(), String> {
        if !crate::is_valid_id(&self.allocation_id) {
            return Err("allocation_id: 1 to 64 characters of [A-Za-z0-9-]".into());
        }
        if !is_valid_username(&self.username) {
            return Err("username: not an allowed POSIX user name".into());
        }
        Ok(())
    }
}

/// A portable POSIX user name (`[a-z_][a-z0-9_-]{0,31}`) that is not a system account.
pub fn is_valid_username(name: &str) -> bool {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else { return false };
    name.len() <= 32
        && (first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !RESERVED_USERNAMES.contains(&name)
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// One `authorized_keys` line: a known key type, a base64 body, an optional comment;
/// no options (`command=…`, `from=…`), no line breaks. The body must decode and name
/// the same key type, so a mangled paste is refused here rather than on the host.
pub fn validate_public_key_line(line: &str) -> Result<(), String> {
    use base64::Engine as _;
    if line.is_empty() || line.len() > MAX_PUBLIC_KEY_LEN {
        return Err(format!("a key must be 1 to {MAX_PUBLIC_KEY_LEN} bytes"));
    }
    if line.chars().any(char::is_control) {
        return Err("a key must be one line without control characters".into());
    }
    let mut parts = line.split(' ');
    let key_type = parts.next().unwrap_or_default();
    if !KEY_TYPES.contains(&key_type) {
        return Err("unsupported key type or key options present".into());
    }
    let body = parts.next().unwrap_or_default();
    let decoded =
        base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| "key body is not base64".to_owned())?;
    // The blob starts with the key type as an SSH string: u32 length, then the name.
    let named = decoded
        .get(..4)
        .and_then(|len| usize::try_from(u32::from_be_bytes([len[0], len[1], len[2], len[3]])).ok())
        .and_then(|len| decoded.get(4..4 + len));
    if named != Some(key_type.as_bytes()) {
        return Err("key body does not match its type".into());
    }
    Ok(())
}

/// Why an agent refused a task before doing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    BadSignature,
    WrongNode,
    NotYetValid,
    Expired,
    Replayed,
    UnsupportedVersion,
    UnknownType,
    InvalidParams,
}

impl RefusalCode {
    pub const ALL: &'static [RefusalCode] = &[
        RefusalCode::BadSignature,
        RefusalCode::WrongNode,
        RefusalCode::NotYetValid,
        RefusalCode::Expired,
        RefusalCode::Replayed,
        RefusalCode::UnsupportedVersion,
        RefusalCode::UnknownType,
        RefusalCode::InvalidParams,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RefusalCode::BadSignature => "bad_signature",
            RefusalCode::WrongNode => "wrong_node",
            RefusalCode::NotYetValid => "not_yet_valid",
            RefusalCode::Expired => "expired",
            RefusalCode::Replayed => "replayed",
            RefusalCode::UnsupportedVersion => "unsupported_version",
            RefusalCode::UnknownType => "unknown_type",
            RefusalCode::InvalidParams => "invalid_params",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        RefusalCode::ALL.iter().copied().find(|code| code.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    Succeeded,
    Failed,
    /// Refused before any host action (see [`Refusal`]).
    Refused,
}

/// What the agent reports for one delivered task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    pub outcome: TaskOutcome,
    /// Task-specific output: an [`crate::Inventory`] for `node.inventory`, a health
    /// report for `node.health`, `{}` otherwise.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub output: Value,
    /// Why it failed, for `failed`.
    pub error: Option<String>,
    /// Why it was refused, for `refused`.
    pub refusal: Option<Refusal>,
}

impl TaskResult {
    pub fn succeeded(output: Value) -> Self {
        Self { outcome: TaskOutcome::Succeeded, output, error: None, refusal: None }
    }

    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            outcome: TaskOutcome::Failed,
            output: Value::Object(Default::default()),
            error: Some(error.into()),
            refusal: None,
        }
    }

    pub fn refused(refusal: Refusal) -> Self {
        Self {
            outcome: TaskOutcome::Refused,
            output: Value::Object(Default::default()),
            error: None,
            refusal: Some(refusal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const ED25519_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@laptop";

    fn provision() -> ProvisionUserParams {
        ProvisionUserParams {
            allocation_id: "0193a5c4-5e2b-7c1d-9f0e-3b6a2d8c4e11".into(),
            username: "ga_0193a5c4".into(),
            authorized_keys: vec![ED25519_KEY.into()],
            gpu_indices: vec![0, 3],
            cpu_millicores: 8000,
            memory_bytes: 16 << 30,
        }
    }

    #[test]
    fn every_type_round_trips_through_parse() {
        let tasks = [
            Task::NodeInventory,
            Task::NodeHealth,
            Task::ProvisionUser(provision()),
            Task::RevokeUser(RevokeUserParams {
                allocation_id: "a-1".into(),
                username: "ga_1".into(),
                remove_home: true,
            }),
        ];
        for task in tasks {
            let parsed = Task::parse(task.task_type().as_str(), &task.params());
            assert_eq!(parsed, Ok(task));
        }
    }

    #[test]
    fn unknown_types_and_bad_params_are_refused_with_their_codes() {
        let unknown = Task::parse("node.exec", &serde_json::json!({"command": "rm -rf /"}));
        assert_eq!(unknown.map_err(|r| r.code), Err(RefusalCode::UnknownType));
        let extra = Task::parse("node.inventory", &serde_json::json!({"command": "id"}));
        assert_eq!(extra.map_err(|r| r.code), Err(RefusalCode::InvalidParams));

        type Mutation = Box<dyn Fn(&mut ProvisionUserParams)>;
        let cases: Vec<Mutation> = vec![
            Box::new(|p| p.username = "root".into()),
            Box::new(|p| p.username = "a;b".into()),
            Box::new(|p| p.username = "Upper".into()),
            Box::new(|p| p.allocation_id = "../etc".into()),
            Box::new(|p| p.authorized_keys.clear()),
            Box::new(|p| p.authorized_keys = vec![format!("command=\"sh\" {ED25519_KEY}")]),
            Box::new(|p| p.authorized_keys = vec![format!("{ED25519_KEY}\nssh-ed25519 AAAA")]),
            Box::new(|p| {
                p.authorized_keys =
                    vec!["ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl".into()]
            }),
            Box::new(|p| p.authorized_keys = vec!["-----BEGIN OPENSSH PRIVATE KEY-----".into()]),
            Box::new(|p| p.gpu_indices.clear()),
            Box::new(|p| p.gpu_indices = vec![1, 1]),
            Box::new(|p| p.gpu_indices = vec![64]),
            Box::new(|p| p.cpu_millicores = 0),
            Box::new(|p| p.memory_bytes = 1024),
        ];
        for (index, mutate) in cases.iter().enumerate() {
            let mut params = provision();
            mutate(&mut params);
            let value = serde_json::to_value(&params).unwrap_or_default();
            let parsed = Task::parse("allocation.provision_user", &value);
            assert_eq!(parsed.map_err(|r| r.code), Err(RefusalCode::InvalidParams), "case {index}");
        }
    }
}
