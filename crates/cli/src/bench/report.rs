//! The bench's results: a table for people, JSON for tools, and the peak
//! resident memory of this process.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

use crate::bench::driver::{Limit, Stats};
use crate::bench::target::Target;

/// One workload's figures.
#[derive(Debug, Clone)]
pub(crate) struct WorkloadResult {
    pub server: &'static str,
    pub workload: &'static str,
    /// Resources the bench had created before this workload started.
    pub data_size: usize,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub req_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Peak RSS of this process so far (`VmHWM`), MiB.
    pub peak_rss_mib: Option<f64>,
    pub error_samples: Vec<String>,
}

impl WorkloadResult {
    pub(crate) fn new(
        workload: &'static str,
        target: &Target,
        data_size: usize,
        stats: &Stats,
    ) -> Self {
        for e in &stats.error_samples {
            eprintln!("bench: {workload}: error: {e}");
        }
        Self {
            server: target.name(),
            workload,
            data_size,
            requests: stats.requests(),
            errors: stats.errors,
            seconds: stats.elapsed.as_secs_f64(),
            req_per_s: stats.throughput(),
            p50_ms: stats.quantile_ms(0.50),
            p99_ms: stats.quantile_ms(0.99),
            max_ms: stats.max_ms(),
            peak_rss_mib: peak_rss_mib(),
            error_samples: stats.error_samples.clone(),
        }
    }
}

/// The whole run.
pub(crate) struct Report {
    clients: usize,
    limit: String,
    target: String,
    rss_includes_server: bool,
    results: Vec<WorkloadResult>,
}

impl Report {
    pub(crate) fn new(target: &Target, clients: usize, limit: &Limit) -> Self {
        Self {
            clients,
            limit: limit.describe(),
            target: target.description(),
            rss_includes_server: target.rss_includes_server(),
            results: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, result: WorkloadResult) {
        self.results.push(result);
    }

    /// The results as a text table.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "carelayer bench: {}, {} clients, {} per workload, {}",
            self.target,
            self.clients,
            self.limit,
            machine_line()
        );
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:>7} {:>8} {:>9} {:>10} {:>8} {:>8} {:>8} {:>7} {:>9}",
            "server",
            "workload",
            "clients",
            "data",
            "requests",
            "req/s",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "errors",
            "peak_MiB"
        );
        for r in &self.results {
            let _ = writeln!(
                out,
                "{:<10} {:<9} {:>7} {:>8} {:>9} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>9}",
                r.server,
                r.workload,
                self.clients,
                r.data_size,
                r.requests,
                r.req_per_s,
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                r.errors,
                r.peak_rss_mib
                    .map_or_else(|| "?".to_owned(), |m| format!("{m:.0}"))
            );
        }
        let _ = writeln!(
            out,
            "(data: resources created before the workload; peak_MiB: VmHWM of the bench process{})",
            if self.rss_includes_server {
                ", server included"
            } else {
                " only"
            }
        );
        out
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "clients": self.clients,
            "limit": self.limit,
            "machine": machine_json(),
            "peak_rss_includes_server": self.rss_includes_server,
            "workloads": self.results.iter().map(|r| json!({
                "server": r.server,
                "workload": r.workload,
                "data_size": r.data_size,
                "requests": r.requests,
                "errors": r.errors,
                "seconds": r.seconds,
                "req_per_s": r.req_per_s,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "max_ms": r.max_ms,
                "peak_rss_mib": r.peak_rss_mib,
                "error_samples": r.error_samples,
            })).collect::<Vec<_>>(),
        })
    }

    pub(crate) fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.to_json())?;
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// `VmHWM` of this process, MiB (Linux).
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn machine_line() -> String {
    format!(
        "{} CPUs ({}), {} build",
        cpus(),
        cpu_model().unwrap_or_else(|| "unknown CPU".into()),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    )
}

fn machine_json() -> Value {
    json!({
        "cpus": cpus(),
        "cpu_model": cpu_model(),
        "os": std::env::consts::OS,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peak_rss() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mib().is_some_and(|m| m > 0.0));
        }
    }
}
