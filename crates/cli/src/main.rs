//! The `carelayer` binary: the composition root. It alone picks a storage
//! backend (from the database URL), builds the record service on it, and
//! hands that to the HTTP layer. Subcommands call only `records`.
//!
//! Map:
//! - `config`: command-line and environment configuration (clap).
//! - `backend`: database URL → a `Store`.
//! - `serve`: run the FHIR server (optionally loading the demo record set).
//! - `demo`: the demo record set.

mod backend;
mod config;
mod demo;
mod serve;

use clap::Parser;

use crate::config::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CARELAYER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
        }
    })
}
