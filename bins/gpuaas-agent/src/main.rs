//! The node agent's command line; see [`gpuaas_agent::cli`].

fn main() -> std::process::ExitCode {
    gpuaas_agent::cli::main_with_args(std::env::args_os())
}
