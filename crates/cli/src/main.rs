//! `carelayer`: see the library crate root for the map.

use carelayer_cli::config::Cli;
use clap::Parser;

// mimalloc, not glibc's malloc: the request path allocates on the runtime's
// threads and the SQLite writer frees (audit entries moved into the ledger in
// bulk), and glibc serialises such cross-thread frees on arena locks. Measured
// (docs/benchmarks.md, session 5): reads +35% with audit on, +25% off; import +10%.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    runtime.block_on(carelayer_cli::run(cli))
}
