//! `wegweiser-agent`: the agent that runs on every managed device. Everything lives in the
//! library; see [`wegweiser_agent::cli`].
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    wegweiser_agent::cli::main(wegweiser_agent::cli::Cli::parse())
}
