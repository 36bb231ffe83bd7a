//! What a node reports about itself.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most GPUs one node may report.
pub const MAX_GPUS: usize = 64;
/// Most allocation users one report may list.
pub const MAX_ALLOCATION_USERS: usize = 4096;
const MAX_TEXT: usize = 128;

/// Where GPU facts came from. `declared` inventories were typed in by an operator for
/// a host without NVIDIA drivers and must never be mistaken for detected hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InventorySource {
    Detected,
    Declared,
}

impl InventorySource {
    pub const fn as_str(self) -> &'static str {
        match self {
            InventorySource::Detected => "detected",
            InventorySource::Declared => "declared",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "detected" => Some(Self::Detected),
            "declared" => Some(Self::Declared),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GpuHealth {
    Ok,
    Degraded,
    Failed,
    Unknown,
}

impl GpuHealth {
    pub const fn as_str(self) -> &'static str {
        match self {
            GpuHealth::Ok => "ok",
            GpuHealth::Degraded => "degraded",
            GpuHealth::Failed => "failed",
            GpuHealth::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ok" => Some(Self::Ok),
            "degraded" => Some(Self::Degraded),
            "failed" => Some(Self::Failed),
            "unknown" => Some(Self::Unknown),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuInfo {
    /// Index as the driver numbers it (`/dev/nvidia{index}`).
    pub index: u32,
    pub uuid: Option<String>,
    pub model: String,
    pub memory_mib: u64,
    pub driver_version: Option<String>,
    pub cuda_version: Option<String>,
    pub health: GpuHealth,
}

/// A node's hardware and the allocation users present on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub source: InventorySource,
    pub hostname: String,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub gpus: Vec<GpuInfo>,
    /// POSIX users the agent created for allocations and that still exist.
    #[serde(default)]
    pub allocation_users: Vec<String>,
}

impl Inventory {
    /// Checks bounds; the control plane stores nothing that fails this.
    pub fn validate(&self) -> Result<(), String> {
        text("hostname", &self.hostname, false)?;
        if self.gpus.len() > MAX_GPUS {
            return Err(format!("gpus: at most {MAX_GPUS}"));
        }
        let mut indices: Vec<u32> = self.gpus.iter().map(|gpu| gpu.index).collect();
        indices.sort_unstable();
        if indices.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err("gpus: indices must be unique".into());
        }
        for gpu in &self.gpus {
            if gpu.index >= MAX_GPUS as u32 {
                return Err(format!("gpus: index must be below {MAX_GPUS}"));
            }
            text("gpus.model", &gpu.model, false)?;
            for (name, value) in [
                ("gpus.uuid", &gpu.uuid),
                ("gpus.driver_version", &gpu.driver_version),
                ("gpus.cuda_version", &gpu.cuda_version),
            ] {
                if let Some(value) = value {
                    text(name, value, false)?;
                }
            }
        }
        if self.allocation_users.len() > MAX_ALLOCATION_USERS {
            return Err(format!("allocation_users: at most {MAX_ALLOCATION_USERS}"));
        }
        for user in &self.allocation_users {
            if !crate::tasks::is_valid_username(user) {
                return Err("allocation_users: not a POSIX user name".into());
            }
        }
        Ok(())
    }
}

fn text(field: &str, value: &str, allow_empty: bool) -> Result<(), String> {
    if (!allow_empty && value.is_empty()) || value.chars().count() > MAX_TEXT {
        return Err(format!("{field}: 1 to {MAX_TEXT} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field}: control characters are not allowed"));
    }
    Ok(())
}

/// The inventory file of a host without NVIDIA drivers
/// (`gpuaas-agent run --inventory-file F`), JSON:
///
/// ```json
/// {"gpu_model": "NVIDIA H100 80GB HBM3", "gpu_memory_mib": 81559, "gpu_count": 8,
///  "driver_version": "550.54.15", "cuda_version": "12.4"}
/// ```
///
/// `driver_version` and `cuda_version` are optional. Reported GPUs are marked
/// `declared`, never `detected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredInventory {
    pub gpu_model: String,
    pub gpu_memory_mib: u64,
    pub gpu_count: u32,
    pub driver_version: Option<String>,
    pub cuda_version: Option<String>,
}

impl DeclaredInventory {
    pub fn parse(json: &str) -> Result<Self, String> {
        let declared: DeclaredInventory = serde_json::from_str(json).map_err(|error| error.to_string())?;
        text("gpu_model", &declared.gpu_model, false)?;
        if declared.gpu_count as usize > MAX_GPUS {
            return Err(format!("gpu_count: at most {MAX_GPUS}"));
        }
        if declared.gpu_memory_mib == 0 && declared.gpu_count > 0 {
            return Err("gpu_memory_mib: must be positive".into());
        }
        Ok(declared)
    }

    /// The GPUs this declaration stands for, health `unknown` (nothing measured it).
    pub fn gpus(&self) -> Vec<GpuInfo> {
        (0..self.gpu_count)
            .map(|index| GpuInfo {
                index,
                uuid: None,
                model: self.gpu_model.clone(),
                memory_mib: self.gpu_memory_mib,
                driver_version: self.driver_version.clone(),
                cuda_version: self.cuda_version.clone(),
                health: GpuHealth::Unknown,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_inventory_parses_and_expands() {
        let declared = DeclaredInventory::parse(r#"{"gpu_model":"NVIDIA A100","gpu_memory_mib":40960,"gpu_count":2}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let gpus = declared.gpus();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].index, 1);
        assert_eq!(gpus[1].health, GpuHealth::Unknown);
        assert!(DeclaredInventory::parse(r#"{"gpu_model":"","gpu_memory_mib":1,"gpu_count":1}"#).is_err());
        assert!(DeclaredInventory::parse(r#"{"gpu_model":"x","gpu_memory_mib":1,"gpu_count":1,"extra":1}"#).is_err());
        assert!(DeclaredInventory::parse(r#"{"gpu_model":"x","gpu_memory_mib":1,"gpu_count":65}"#).is_err());
    }

    #[test]
    fn inventory_refuses_duplicate_indices_and_bad_users() {
        let declared = DeclaredInventory {
            gpu_model: "x".into(),
            gpu_memory_mib: 1,
            gpu_count: 2,
            driver_version: None,
            cuda_version: None,
        };
        let mut inventory = Inventory {
            source: InventorySource::Declared,
            hostname: "gpu-01".into(),
            cpu_cores: 8,
            memory_bytes: 1 << 30,
            disk_bytes: 1 << 30,
            gpus: declared.gpus(),
            allocation_users: vec!["ga_1234".into()],
        };
        assert_eq!(inventory.validate(), Ok(()));
        inventory.gpus[1].index = 0;
        assert!(inventory.validate().is_err());
        inventory.gpus[1].index = 1;
        inventory.allocation_users.push("Root;rm".into());
        assert!(inventory.validate().is_err());
    }
}
