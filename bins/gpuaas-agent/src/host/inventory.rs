//! What the node reports about itself: GPUs from NVML (or from an operator's declared
//! file on hosts without NVIDIA drivers), CPU, memory, disk, and the allocation users
//! the driver knows of.
//!
//! NVML is loaded at run time (`libnvidia-ml.so.1`); a host without the NVIDIA driver
//! is normal (CPU nodes, the simulator) and reports zero detected GPUs rather than an
//! error.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gpuaas_nodeagent_protocol::inventory::MAX_GPUS;
use gpuaas_nodeagent_protocol::{DeclaredInventory, GpuHealth, GpuInfo, Inventory, InventorySource};
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use serde_json::{Value, json};

use super::{HostDriver, HostError};

/// Longest text field the protocol accepts.
const MAX_TEXT: usize = 128;
const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryOptions {
    /// A [`DeclaredInventory`] JSON file: its GPUs are reported as `declared` and NVML
    /// is not consulted.
    pub declared_file: Option<PathBuf>,
    /// Overrides `/proc/sys/kernel/hostname`.
    pub hostname: Option<String>,
}

/// The `node.inventory` report, validated as the control plane will validate it.
pub fn collect(options: &InventoryOptions, driver: &dyn HostDriver) -> Result<Inventory, HostError> {
    let (source, gpus) = gpus(options)?;
    // Reading NVML as root may just have reset the device files (ModifyDeviceFiles=1);
    // put the allocations' grants back before anyone else gets in.
    if let Err(error) = driver.enforce_gpu_grants() {
        tracing::warn!(%error, "could not restore GPU grants after reading NVML");
    }
    let mut allocation_users = driver.allocation_users()?;
    allocation_users.retain(|user| gpuaas_nodeagent_protocol::tasks::is_valid_username(user));
    let facts = host_facts()?;
    let inventory = Inventory {
        source,
        hostname: hostname(options)?,
        cpu_cores: facts.cpu_cores,
        memory_bytes: facts.memory_bytes,
        disk_bytes: facts.disk_bytes,
        gpus,
        allocation_users,
    };
    inventory.validate().map_err(HostError::Inventory)?;
    Ok(inventory)
}

/// CPU, memory and disk size of the host: they change with hardware, not between two
/// heartbeats, and measuring the disk spawns `df`. One measurement serves every agent
/// of the process (the fleet simulator runs thousands) for [`HOST_FACTS_TTL`].
#[derive(Debug, Clone, Copy)]
struct HostFacts {
    cpu_cores: u32,
    memory_bytes: u64,
    disk_bytes: u64,
}

const HOST_FACTS_TTL: std::time::Duration = std::time::Duration::from_secs(60);

fn host_facts() -> Result<HostFacts, HostError> {
    use std::sync::Mutex;
    use std::time::Instant;
    static CACHE: Mutex<Option<(Instant, HostFacts)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((measured, facts)) = *cache
        && measured.elapsed() < HOST_FACTS_TTL
    {
        return Ok(facts);
    }
    let facts =
        HostFacts { cpu_cores: cpu_cores(), memory_bytes: meminfo_bytes("MemTotal")?, disk_bytes: root_disk_bytes()? };
    *cache = Some((Instant::now(), facts));
    Ok(facts)
}

/// The `node.health` report. Never fails: what could not be measured is listed under
/// `errors` and makes the status `degraded`.
pub fn health(options: &InventoryOptions, driver: &dyn HostDriver) -> Value {
    let mut errors = Vec::new();
    let (source, gpus) = gpus(options).unwrap_or_else(|error| {
        errors.push(error.to_string());
        (InventorySource::Detected, Vec::new())
    });
    let load_average = load_average().map_err(|error| errors.push(error.to_string())).ok();
    let memory_total = meminfo_bytes("MemTotal").map_err(|error| errors.push(error.to_string())).ok();
    let memory_available = meminfo_bytes("MemAvailable").map_err(|error| errors.push(error.to_string())).ok();
    let allocation_users = driver.allocation_users().map_err(|error| errors.push(error.to_string())).ok();
    let gpu_trouble = gpus.iter().any(|gpu| matches!(gpu.health, GpuHealth::Degraded | GpuHealth::Failed));
    let status = if gpu_trouble || !errors.is_empty() { "degraded" } else { "ok" };
    json!({
        "status": status,
        "source": source.as_str(),
        "gpu_count": gpus.len(),
        "gpus": gpus
            .iter()
            .map(|gpu| json!({"index": gpu.index, "uuid": gpu.uuid, "health": gpu.health.as_str()}))
            .collect::<Vec<_>>(),
        "load_average": load_average.map(|[one, five, fifteen]| json!({"1m": one, "5m": five, "15m": fifteen})),
        "memory_total_bytes": memory_total,
        "memory_available_bytes": memory_available,
        "allocation_users": allocation_users.map(|users| users.len()),
        "errors": errors,
    })
}

fn gpus(options: &InventoryOptions) -> Result<(InventorySource, Vec<GpuInfo>), HostError> {
    match &options.declared_file {
        Some(path) => Ok((InventorySource::Declared, read_declared(path)?.gpus())),
        None => Ok((InventorySource::Detected, detect_gpus())),
    }
}

fn read_declared(path: &Path) -> Result<DeclaredInventory, HostError> {
    let text = fs::read_to_string(path).map_err(|e| HostError::io(format!("reading {}", path.display()), e))?;
    DeclaredInventory::parse(&text).map_err(|reason| HostError::Malformed { file: path.display().to_string(), reason })
}

fn detect_gpus() -> Vec<GpuInfo> {
    let nvml = match Nvml::init() {
        Ok(nvml) => nvml,
        Err(error) => {
            tracing::info!(%error, "nvml not available, reporting no detected gpus");
            return Vec::new();
        }
    };
    let driver_version = nvml.sys_driver_version().ok().map(|version| clean(&version));
    let cuda_version = nvml.sys_cuda_driver_version().ok().map(|version| {
        format!(
            "{}.{}",
            nvml_wrapper::cuda_driver_version_major(version),
            nvml_wrapper::cuda_driver_version_minor(version)
        )
    });
    let count = match nvml.device_count() {
        Ok(count) => count,
        Err(error) => {
            tracing::warn!(%error, "nvml could not count gpus, reporting none");
            return Vec::new();
        }
    };
    let mut gpus: Vec<GpuInfo> = (0..count.min(MAX_GPUS as u32))
        .map(|nvml_index| probe(&nvml, nvml_index, &driver_version, &cuda_version))
        .collect();
    // The protocol's index is the device file's number, which NVML calls the minor
    // number; should two ever collide, NVML's own order is the safer report.
    let minors: BTreeSet<u32> = gpus.iter().map(|gpu| gpu.index).collect();
    if minors.len() != gpus.len() || minors.iter().any(|&index| index as usize >= MAX_GPUS) {
        for (nvml_index, gpu) in (0u32..).zip(gpus.iter_mut()) {
            gpu.index = nvml_index;
        }
    }
    gpus
}

fn probe(nvml: &Nvml, nvml_index: u32, driver_version: &Option<String>, cuda_version: &Option<String>) -> GpuInfo {
    let unknown = |health| GpuInfo {
        index: nvml_index,
        uuid: None,
        model: "unknown".into(),
        memory_mib: 0,
        driver_version: driver_version.clone(),
        cuda_version: cuda_version.clone(),
        health,
    };
    let device = match nvml.device_by_index(nvml_index) {
        Ok(device) => device,
        Err(error) => {
            tracing::warn!(nvml_index, %error, "gpu could not be opened");
            return unknown(if matches!(error, NvmlError::GpuLost) { GpuHealth::Failed } else { GpuHealth::Unknown });
        }
    };
    let name = device.name();
    let memory = device.memory_info();
    let health = match (&name, &memory) {
        (Err(NvmlError::GpuLost), _) | (_, Err(NvmlError::GpuLost)) => GpuHealth::Failed,
        (Ok(_), Ok(_)) => device_health(&device),
        _ => GpuHealth::Unknown,
    };
    GpuInfo {
        index: device.minor_number().unwrap_or(nvml_index),
        uuid: device.uuid().ok().map(|uuid| clean(&uuid)),
        model: name.map(|name| clean(&name)).ok().filter(|name| !name.is_empty()).unwrap_or_else(|| "unknown".into()),
        memory_mib: memory.map(|memory| memory.total / MIB).unwrap_or(0),
        driver_version: driver_version.clone(),
        cuda_version: cuda_version.clone(),
        health,
    }
}

/// Degraded when memory pages wait for retirement (a reset is due) or the hardware is
/// slowing its own clocks; features a GPU does not support count as fine.
fn device_health(device: &Device<'_>) -> GpuHealth {
    let pending_retirement = matches!(device.are_pages_pending_retired(), Ok(true));
    let hardware_slowdown = device.current_throttle_reasons().is_ok_and(|reasons| {
        reasons.intersects(
            ThrottleReasons::HW_SLOWDOWN
                | ThrottleReasons::HW_THERMAL_SLOWDOWN
                | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        )
    });
    if pending_retirement || hardware_slowdown { GpuHealth::Degraded } else { GpuHealth::Ok }
}

/// Keeps a driver string inside the protocol's text rules.
fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_TEXT).collect::<String>().trim().to_owned()
}

fn hostname(options: &InventoryOptions) -> Result<String, HostError> {
    let name = match &options.hostname {
        Some(name) => name.clone(),
        None => fs::read_to_string("/proc/sys/kernel/hostname")
            .map_err(|e| HostError::io("reading /proc/sys/kernel/hostname", e))?,
    };
    let name = clean(&name);
    if name.is_empty() {
        return Err(HostError::Inventory("the hostname is empty".into()));
    }
    Ok(name)
}

/// Logical CPUs of the host, not of the agent's own cgroup or affinity mask.
fn cpu_cores() -> u32 {
    let from_cpuinfo = fs::read_to_string("/proc/cpuinfo")
        .map(|text| text.lines().filter(|line| line.split(':').next().map(str::trim) == Some("processor")).count())
        .unwrap_or(0);
    let cores = if from_cpuinfo > 0 {
        from_cpuinfo
    } else {
        std::thread::available_parallelism().map(std::num::NonZero::get).unwrap_or(1)
    };
    u32::try_from(cores).unwrap_or(u32::MAX)
}

/// A `/proc/meminfo` field, in bytes.
fn meminfo_bytes(field: &str) -> Result<u64, HostError> {
    let text = fs::read_to_string("/proc/meminfo").map_err(|e| HostError::io("reading /proc/meminfo", e))?;
    parse_meminfo(&text, field)
        .ok_or_else(|| HostError::Malformed { file: "/proc/meminfo".into(), reason: format!("no {field} line") })
}

fn parse_meminfo(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.split(':').next() == Some(field))?;
    let mut words = line.split(':').nth(1)?.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

fn load_average() -> Result<[f64; 3], HostError> {
    let text = fs::read_to_string("/proc/loadavg").map_err(|e| HostError::io("reading /proc/loadavg", e))?;
    let malformed = || HostError::Malformed { file: "/proc/loadavg".into(), reason: "expected three numbers".into() };
    let mut values = text.split_whitespace().map(str::parse::<f64>);
    let mut next = || values.next().and_then(Result::ok).ok_or_else(malformed);
    Ok([next()?, next()?, next()?])
}

/// Size of the filesystem holding `/`. `df` avoids a libc binding (the workspace
/// forbids unsafe code); it is a fixed argument vector like every other command.
fn root_disk_bytes() -> Result<u64, HostError> {
    let output = Command::new("df")
        .args(["-B1", "--output=size", "/"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HostError::io("running df", e))?;
    if !output.status.success() {
        return Err(HostError::Command {
            command: "df -B1 --output=size /".into(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().chars().take(2000).collect(),
        });
    }
    parse_df(&String::from_utf8_lossy(&output.stdout))
        .ok_or_else(|| HostError::Malformed { file: "df output".into(), reason: "no size line".into() })
}

fn parse_df(text: &str) -> Option<u64> {
    text.lines().skip(1).find_map(|line| line.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_df_and_text_parsing() {
        let meminfo = "MemTotal:       16318480 kB\nMemFree:         1000 kB\nMemAvailable:    8000000 kB\nHugePages_Total:       0\n";
        assert_eq!(parse_meminfo(meminfo, "MemTotal"), Some(16_318_480 * 1024));
        assert_eq!(parse_meminfo(meminfo, "MemAvailable"), Some(8_000_000 * 1024));
        assert_eq!(parse_meminfo(meminfo, "HugePages_Total"), Some(0));
        assert_eq!(parse_meminfo(meminfo, "Mem"), None);
        assert_eq!(parse_df("   1B-blocks\n270553174016\n"), Some(270_553_174_016));
        assert_eq!(parse_df("   1B-blocks\n"), None);
        assert_eq!(clean(" NVIDIA\u{7} H100 "), "NVIDIA H100");
        assert_eq!(clean(&"x".repeat(300)).len(), MAX_TEXT);
    }
}
