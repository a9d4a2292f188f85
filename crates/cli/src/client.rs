//! `carelayer client`: register SMART Backend Services clients (stored in
//! `<key dir>/clients.json`, read by the running server on each token
//! request, so no restart is needed).

use std::path::PathBuf;

use anyhow::Context;
use carelayer_http::auth::clients::{self, CLIENTS_FILE, RegisteredClient};
use clap::{Args, Subcommand};

use crate::config::DatabaseArgs;

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClientCommand {
    /// Register (or replace) a client.
    Add(ClientAddArgs),
    /// List registered clients (ids, scopes, organisations).
    List(ClientListArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ClientAddArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Folder of the issuer key and client registry (default: next to the
    /// SQLite file; required for PostgreSQL).
    #[arg(long, env = "CARELAYER_KEY_DIR")]
    pub key_dir: Option<PathBuf>,
    /// The client id (its assertions' `iss` and `sub`).
    #[arg(long)]
    pub id: String,
    /// The client's public keys as a JWKS file.
    #[arg(
        long,
        conflicts_with = "public_key",
        required_unless_present = "public_key"
    )]
    pub jwks: Option<PathBuf>,
    /// The client's public key as a PEM file (RSA or P-256).
    #[arg(long)]
    pub public_key: Option<PathBuf>,
    /// Scopes it may be granted, space-separated `system/` scopes.
    #[arg(long)]
    pub scope: String,
    /// ODS code of the organisation the client acts for.
    #[arg(long)]
    pub org: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ClientListArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[arg(long, env = "CARELAYER_KEY_DIR")]
    pub key_dir: Option<PathBuf>,
}

/// Run `carelayer client …`.
///
/// # Errors
/// Unreadable key files, invalid keys or scopes, I/O.
pub fn run(args: &ClientArgs) -> anyhow::Result<()> {
    match &args.command {
        ClientCommand::Add(a) => {
            let dir =
                crate::backend::key_dir(&a.db.database, a.key_dir.as_deref(), "the clients file")?;
            let jwks = a
                .jwks
                .as_ref()
                .map(|p| -> anyhow::Result<_> {
                    let bytes =
                        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                    serde_json::from_slice(&bytes)
                        .with_context(|| format!("{} is not a JWKS", p.display()))
                })
                .transpose()?;
            let public_key_pem = a
                .public_key
                .as_ref()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))
                })
                .transpose()?;
            let client = RegisteredClient {
                client_id: a.id.clone(),
                scopes: a.scope.split_whitespace().map(str::to_owned).collect(),
                org: a.org.clone(),
                jwks,
                public_key_pem,
            };
            let file = dir.join(CLIENTS_FILE);
            clients::add(&file, client)?;
            eprintln!("registered client '{}' in {}", a.id, file.display());
            Ok(())
        }
        ClientCommand::List(a) => {
            let dir =
                crate::backend::key_dir(&a.db.database, a.key_dir.as_deref(), "the clients file")?;
            for c in clients::load(&dir.join(CLIENTS_FILE))? {
                println!(
                    "{}\t{}\t{}",
                    c.client_id,
                    c.scopes.join(" "),
                    c.org.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
    }
}
