//! `wegweiser-agent`: the agent that runs on every managed device.
//!
//! This version carries the shared protocol types only; enrollment (`enroll`), the service loop
//! (`run`), `status`, `collect` and service installation are not implemented yet.
#![forbid(unsafe_code)]

use clap::Parser;

/// Wegweiser agent: reports inventory, metrics, heartbeats and events, and runs verified commands.
#[derive(Debug, Parser)]
#[command(name = "wegweiser-agent", version, about)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!(
        "wegweiser-agent {}: no commands are available in this version (enrollment is not implemented yet)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::from(64)
}
