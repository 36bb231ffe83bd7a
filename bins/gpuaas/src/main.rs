use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    gpuaas::cli::main(gpuaas::cli::Cli::parse())
}
