//! The `carelayer` binary's library: the composition root. It alone picks a
//! storage backend (from the database URL), builds the record service on it,
//! and hands that to the HTTP layer. Subcommands call only `records`.
//!
//! Map:
//! - [`config`]: command-line and environment configuration (clap).
//! - [`backend`]: database URL → a `Store`.
//! - [`server`]: build and start the server on an injected listener (tests
//!   and the bench run the real thing on port 0).
//! - `serve`: the `serve` subcommand.
//! - [`demo`]: the demo record set.
//! - [`bench`]: the `bench` subcommand, a load generator.
//! - [`token`]: `carelayer token` and the server's authentication settings;
//!   [`client`]: `carelayer client` (SMART Backend Services registry).
//! - [`audit_cmd`]: `carelayer audit verify` and `audit checkpoint --export`.
//! - [`synth`]: `carelayer synth`, the synthetic UK population.
//! - [`import`]: `carelayer import`, NDJSON and Bundles into a store or server.

pub mod audit_cmd;
pub mod backend;
pub mod bench;
pub mod client;
pub mod config;
pub mod demo;
pub mod import;
mod serve;
pub mod server;
pub mod synth;
pub mod token;

use crate::config::{Cli, Command};

/// Run a parsed command line.
///
/// # Errors
/// Whatever the subcommand reports; `main` prints it.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Token(args) => token::run(&args),
        Command::Client(args) => client::run(&args),
        Command::Audit(args) => audit_cmd::run(args).await,
        Command::Synth(args) => synth::run(&args),
        Command::Import(args) => import::run(args).await,
        Command::Migrate(args) => {
            let done = backend::migrate(&args.db.database).await?;
            println!("{done}");
            Ok(())
        }
    }
}
