//! The peer server side by side: Helios HFS 0.2.7 (`hfs`), started on
//! loopback with its SQLite backend and a fair configuration: its data
//! folder holds `search-parameters-r4.json` and
//! `compartment-definitions-r4.json`, collection Bundles of the official R4
//! SearchParameters and CompartmentDefinitions (without them it falls back
//! to 10 search parameters). Its FHIR base is the root, not `/fhir`.
//! HFS does no validation, consent or audit: say so beside any comparison.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Where the official R4 package may be unpacked.
const PACKAGE_DIRS: &[&str] = &[".cache/fhir-r4/package", "/tmp/fhirpkg/package"];

pub(crate) struct Peer {
    child: Child,
    pub base_url: String,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Start `bin` on a free loopback port with a fresh SQLite database.
    pub(crate) async fn start(bin: &Path, package: Option<&Path>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("carelayer-bench-hfs-")
            .tempdir()
            .context("cannot create a folder for the peer")?;
        let data = dir.path().join("data");
        let export = dir.path().join("export");
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&export)?;
        let package = match package {
            Some(p) => p.to_owned(),
            None => PACKAGE_DIRS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.join("SearchParameter-Patient-identifier.json").exists())
                .context("the official R4 package (hl7.fhir.r4.examples) is not unpacked; pass --peer-package DIR")?,
        };
        write_definitions(&package, &data)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("hfs.log"))?;
        let child = Command::new(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--data-dir",
            ])
            .arg(&data)
            .arg("--export-dir")
            .arg(&export)
            .env("HFS_DATABASE_URL", dir.path().join("hfs.db"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start the peer {}", bin.display()))?;
        let mut peer = Self {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = client
                .get(format!("{}/metadata", peer.base_url))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(peer);
            }
            if let Ok(Some(status)) = peer.child.try_wait() {
                bail!("the peer exited at start ({status}); see its log");
            }
            if Instant::now() > deadline {
                peer.stop();
                bail!("the peer did not answer /metadata within 2 minutes");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The two collection Bundles HFS reads from its data folder.
pub(crate) fn write_definitions(package: &Path, data: &Path) -> anyhow::Result<()> {
    let mut params = Vec::new();
    let mut compartments = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(package)
        .with_context(|| format!("cannot list {}", package.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    for path in names {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let into = if name.starts_with("SearchParameter-") && name.ends_with(".json") {
            &mut params
        } else if name.starts_with("CompartmentDefinition-")
            && name.ends_with(".json")
            && name != "CompartmentDefinition-example.json"
        {
            &mut compartments
        } else {
            continue;
        };
        let resource: Value = serde_json::from_slice(&std::fs::read(&path)?)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        into.push(json!({"resource": resource}));
    }
    if params.is_empty() {
        bail!("no SearchParameter-*.json in {}", package.display());
    }
    for (file, entries) in [
        ("search-parameters-r4.json", params),
        ("compartment-definitions-r4.json", compartments),
    ] {
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": entries});
        std::fs::write(data.join(file), serde_json::to_vec(&bundle)?)?;
    }
    Ok(())
}

/// CPU seconds (user + system) used so far by a process.
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Peak resident memory (`VmHWM`) of a process, MiB.
pub(crate) fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
