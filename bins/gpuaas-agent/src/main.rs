//! The node agent. It will enroll with the control plane and pull signed, typed tasks;
//! for now it only reports its version.

fn main() {
    let argument = std::env::args().nth(1);
    match argument.as_deref() {
        None | Some("version" | "--version" | "-V") => println!("gpuaas-agent {}", env!("CARGO_PKG_VERSION")),
        Some(other) => {
            eprintln!("gpuaas-agent: unknown command {other:?}; this build only supports `version`");
            std::process::exit(2);
        }
    }
}
