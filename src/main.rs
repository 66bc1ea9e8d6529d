//! `pgvault`: the custom handler (`pgvault serve`) and the operator CLI.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pgvault::cli::run(pgvault::cli::Cli::parse()).await
}
