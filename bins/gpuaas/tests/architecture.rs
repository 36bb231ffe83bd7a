//! The dependency rules of the architecture, read from `cargo metadata`.

use std::collections::HashMap;
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Shared,
    Platform,
    Product,
    Binary,
}

#[test]
fn crate_dependencies_follow_the_layering() {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}"));
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    let mut layers = HashMap::new();
    for package in &packages {
        let path = package["manifest_path"].as_str().unwrap_or_default();
        let layer = if path.contains("/crates/shared/") {
            Layer::Shared
        } else if path.contains("/crates/platform/") {
            Layer::Platform
        } else if path.contains("/crates/products/") {
            Layer::Product
        } else {
            Layer::Binary
        };
        layers.insert(package["name"].as_str().unwrap_or_default().to_owned(), layer);
    }
    assert!(layers.len() >= 8, "workspace not read: {layers:?}");
    let mut violations = Vec::new();
    for package in &packages {
        let name = package["name"].as_str().unwrap_or_default();
        let from = layers[name];
        for dependency in package["dependencies"].as_array().cloned().unwrap_or_default() {
            let target = dependency["name"].as_str().unwrap_or_default();
            let Some(&to) = layers.get(target) else { continue };
            let allowed = match (from, to) {
                (Layer::Shared, Layer::Shared) => true,
                (Layer::Shared, _) => false,
                (Layer::Platform, Layer::Shared | Layer::Platform) => true,
                (Layer::Platform, _) => false,
                (Layer::Product, Layer::Binary) => false,
                (Layer::Product, _) => true,
                (Layer::Binary, _) if name == "gpuaas-agent" => {
                    target == "gpuaas-kernel" || target == "gpuaas-nodeagent-protocol"
                }
                (Layer::Binary, _) => true,
            };
            if !allowed {
                violations.push(format!("{name} ({from:?}) -> {target} ({to:?})"));
            }
        }
    }
    assert!(violations.is_empty(), "dependency rules broken:\n{}", violations.join("\n"));
}
