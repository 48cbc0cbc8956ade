//! The CLI's commands. `main.rs` only parses arguments; the work happens here, so tests can call
//! it. Every command returns the process exit code.

pub mod check;
pub mod heap;
pub mod run;
pub mod sample;
pub mod serving_cert;
mod serving_runtime;

use std::process::ExitCode;

/// Exit code for a problem with the input (invalid policy, failed sample).
pub const EXIT_PROBLEM: u8 = 1;
/// Exit code for a file that cannot be read.
pub const EXIT_USAGE: u8 = 2;

/// `levee crd`: the CRD YAML on stdout.
pub fn crd() -> ExitCode {
    print!("{}", crate::api::crd_yaml());
    ExitCode::SUCCESS
}

/// `levee version`.
pub fn version() -> ExitCode {
    println!("levee {}", env!("CARGO_PKG_VERSION"));
    ExitCode::SUCCESS
}

/// Reads a file, or stdin for `-`.
fn read_input(path: &str) -> Result<String, String> {
    if path == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("cannot read stdin: {e}"))
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
    }
}
