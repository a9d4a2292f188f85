//! Shared helpers of the integration tests: a real server on port 0 over a
//! temporary SQLite file (or, with `CARELAYER_TEST_BACKEND=postgres`, a
//! fresh PostgreSQL database: see [`test_database`]), a small FHIR HTTP
//! client, store fingerprints (to show a refused write changed nothing), the
//! official examples package, and valid 999-range NHS numbers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use carelayer_cli::server::{RunningServer, ServerConfig, start};
use carelayer_http::HttpConfig;
use carelayer_http::auth::{BuiltinIssuer, TokenSubject};
use carelayer_records::RecordsOptions;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const FHIR_JSON: &str = "application/fhir+json";

/// A server running in the test process on a temporary database.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database of this server, dropped with it.
    pub pg: Option<TestPgDatabase>,
}

/// A response, its body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Panic with the body when the status is not `expected`.
    #[track_caller]
    pub fn expect_status(&self, expected: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            expected,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Assert an OperationOutcome with `status` having an issue whose code is
    /// `code` (and, when given, whose diagnostics or location contain
    /// `mentions`, case-insensitively).
    #[track_caller]
    pub fn expect_outcome(&self, status: u16, code: &str, mentions: Option<&str>) -> &Self {
        self.expect_status(status);
        assert_eq!(
            self.json["resourceType"], "OperationOutcome",
            "error body is not an OperationOutcome: {}",
            self.text
        );
        let issues = self.json["issue"].as_array().expect("issue array");
        assert!(!issues.is_empty(), "OperationOutcome without issues");
        let hit = issues.iter().any(|i| {
            i["code"] == code
                && i["severity"]
                    .as_str()
                    .is_some_and(|s| s == "error" || s == "fatal")
                && mentions.is_none_or(|m| issue_text(i).contains(&m.to_lowercase()))
        });
        assert!(
            hit,
            "no error issue with code '{code}'{} in {}",
            mentions
                .map(|m| format!(" mentioning '{m}'"))
                .unwrap_or_default(),
            self.text
        );
        self
    }

    /// Locations (`issue.expression`, or the older `issue.location`) of the
    /// outcome's issues.
    pub fn locations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for issue in self.json["issue"].as_array().into_iter().flatten() {
            for key in ["expression", "location"] {
                for l in issue[key].as_array().into_iter().flatten() {
                    if let Some(s) = l.as_str() {
                        out.push(s.to_owned());
                    }
                }
            }
        }
        out
    }
}

/// Diagnostics, details text and locations of an issue, lower-cased.
pub fn issue_text(issue: &Value) -> String {
    let mut s = String::new();
    for key in ["diagnostics"] {
        if let Some(t) = issue[key].as_str() {
            s.push_str(t);
            s.push(' ');
        }
    }
    if let Some(t) = issue["details"]["text"].as_str() {
        s.push_str(t);
        s.push(' ');
    }
    for key in ["expression", "location"] {
        for l in issue[key].as_array().into_iter().flatten() {
            if let Some(t) = l.as_str() {
                s.push_str(t);
                s.push(' ');
            }
        }
    }
    s.to_lowercase()
}

/// Server settings for tests: the defaults, on [`test_database`]`(dir)`,
/// with the audit signing key in `dir`.
pub fn test_config(dir: &Path) -> ServerConfig {
    let mut records = RecordsOptions::default();
    // A PostgreSQL URL names no folder for the key (for SQLite, `dir` is
    // where it would go anyway).
    records.audit.key_dir = Some(dir.to_path_buf());
    ServerConfig {
        database: test_database(dir),
        http: HttpConfig::default(),
        records,
        demo: false,
    }
}

// ---- the backend: SQLite, or PostgreSQL with CARELAYER_TEST_BACKEND ---------

/// The admin URL of the PostgreSQL server the tests run on, when
/// `CARELAYER_TEST_BACKEND=postgres` (which needs `CARELAYER_TEST_POSTGRES`,
/// e.g. `postgres://postgres@127.0.0.1:5432/postgres`); `None` for SQLite.
pub fn test_postgres() -> Option<String> {
    match std::env::var("CARELAYER_TEST_BACKEND").as_deref() {
        Err(_) | Ok("" | "sqlite") => None,
        Ok("postgres") => match std::env::var("CARELAYER_TEST_POSTGRES") {
            Ok(url) if !url.trim().is_empty() => Some(url),
            _ => panic!("CARELAYER_TEST_BACKEND=postgres needs CARELAYER_TEST_POSTGRES"),
        },
        Ok(other) => panic!("CARELAYER_TEST_BACKEND={other}: expected sqlite or postgres"),
    }
}

/// The database URL of a test server: `sqlite://{dir}/db.sqlite`, or on the
/// PostgreSQL backend a new, uniquely named database (dropped by the
/// [`TestPgDatabase`] guard its `TestServer` holds).
/// Tests that need the SQLite file itself skip the PostgreSQL run
/// explicitly (`audit.rs`) or build their own configuration
/// (`crash_safety.rs`, `synth_import.rs`).
pub fn test_database(dir: &Path) -> String {
    match test_postgres() {
        Some(admin) => create_pg_database(&admin),
        None => format!("sqlite://{}/db.sqlite", dir.display()),
    }
}

/// Create a new, uniquely named database on the PostgreSQL server `admin`
/// names, and return its URL (see [`TestPgDatabase`] to drop it).
pub fn create_pg_database(admin: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("carelayer_http_{}_{n}", std::process::id());
    pg_admin(
        admin,
        &[
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ],
    )
    .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
    let mut url = url::Url::parse(admin).expect("CARELAYER_TEST_POSTGRES is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A database [`test_database`] created; dropped (closing any connection
/// still open to it) when this guard drops, also on panic.
#[derive(Debug)]
pub struct TestPgDatabase {
    admin: String,
    pub name: String,
}

impl TestPgDatabase {
    /// The guard of `database` when it is one [`test_database`] created.
    pub fn of(database: &str) -> Option<Self> {
        Self::at(&test_postgres()?, database)
    }

    /// The guard of `database` when it is one [`create_pg_database`]
    /// created on the server `admin` names.
    pub fn at(admin: &str, database: &str) -> Option<Self> {
        let url = url::Url::parse(database).ok()?;
        let name = url.path().trim_start_matches('/');
        name.starts_with("carelayer_http_").then(|| Self {
            admin: admin.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl Drop for TestPgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = pg_admin(&self.admin, &[sql]) {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

/// Run statements (one at a time: `CREATE DATABASE` refuses a transaction
/// block) on the admin database, from a thread of its own (callers may be
/// inside a runtime, where blocking on another is not allowed).
pub fn pg_admin(admin: &str, statements: &[String]) -> Result<(), String> {
    let (admin, statements) = (admin.to_owned(), statements.to_vec());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let task = tokio::spawn(conn);
            let mut r = Ok(());
            for sql in &statements {
                r = client.batch_execute(sql).await.map_err(|e| e.to_string());
                if r.is_err() {
                    break;
                }
            }
            drop(client);
            let _ = task.await;
            r
        })
    })
    .join()
    .map_err(|_| "the admin thread panicked".to_owned())?
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start with settings adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        let pg = TestPgDatabase::of(&config.database);
        adjust(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = start(config, listener).await.unwrap();
        let base = server.base_url.clone();
        let operator = mint(
            &server.issuer,
            &TokenSubject::Operator {
                name: "test".into(),
            },
            None,
        );
        Self {
            server: Some(server),
            base,
            client: client_with_token(&operator),
            dir,
            pg,
        }
    }

    /// A token for `subject` from this server's built-in issuer.
    pub fn token(&self, subject: &TokenSubject, scope: Option<&str>) -> String {
        mint(&self.server.as_ref().unwrap().issuer, subject, scope)
    }

    /// A practitioner's token (`user`, SDS `role`, ODS `org`).
    pub fn practitioner_token(&self, user: &str, role: &str, org: &str) -> String {
        self.token(
            &TokenSubject::Practitioner {
                user_id: user.into(),
                role: role.into(),
                org: org.into(),
            },
            None,
        )
    }

    /// A patient's token.
    pub fn patient_token(&self, nhs_number: &str) -> String {
        self.token(
            &TokenSubject::Patient {
                nhs_number: nhs_number.into(),
                patient_id: None,
            },
            None,
        )
    }

    /// A server like this one's, as the holder of `token`.
    pub fn as_token(&self, token: &str) -> Caller<'_> {
        Caller {
            server: self,
            client: client_with_token(token),
        }
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.unwrap();
        }
    }

    /// `base/path` (path relative to the FHIR base) or an absolute URL as is.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    /// Requests as this server's operator (the verbs live on [`Caller`]).
    fn operator(&self) -> Caller<'_> {
        Caller {
            server: self,
            client: self.client.clone(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        self.operator().send(method, path, headers, body).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.operator().get(path).await
    }

    pub async fn get_h(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.operator().get_h(path, headers).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.operator().post(path, body).await
    }

    pub async fn post_h(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        self.operator().post_h(path, body, headers).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.operator().put(path, body).await
    }

    pub async fn put_h(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        self.operator().put_h(path, body, headers).await
    }

    /// A raw body with the FHIR JSON content type.
    pub async fn send_raw(&self, method: Method, path: &str, body: &[u8]) -> Resp {
        self.operator().send_raw(method, path, body).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.operator().delete(path).await
    }

    /// Every entry of a Bundle and its `next` pages, following links to
    /// the end.
    pub async fn all_pages(&self, first: &str) -> (Vec<Value>, usize) {
        follow_pages(&self.client, &self.url(first)).await
    }

    /// What the store holds, cheaply comparable: every version in system
    /// history (`Type/id/_history/n`), newest first.
    pub async fn fingerprint(&self) -> Vec<String> {
        fingerprint(&self.client, &self.base).await
    }
}

/// A client without a token.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// A client presenting `token` on every request (an explicit
/// `Authorization` header on a request wins).
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// Sign a one-hour token for `subject` with `issuer`.
pub fn mint(issuer: &BuiltinIssuer, subject: &TokenSubject, scope: Option<&str>) -> String {
    issuer
        .mint(subject, scope, carelayer_http::auth::DEFAULT_AUDIENCE, 3600)
        .unwrap()
}

/// An operator token for a server whose key folder is `key_dir` (the
/// SQLite file's folder), e.g. one started as a separate process.
pub fn operator_token(key_dir: &Path) -> String {
    let issuer = BuiltinIssuer::load_or_create(key_dir).unwrap();
    mint(
        &issuer,
        &TokenSubject::Operator {
            name: "test".into(),
        },
        None,
    )
}

/// Requests to a [`TestServer`] as another token holder.
pub struct Caller<'a> {
    pub server: &'a TestServer,
    pub client: reqwest::Client,
}

impl Caller<'_> {
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        send(&self.client, method, &self.server.url(path), headers, body).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn get_h(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(Method::GET, path, headers, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.post_h(path, body, &[]).await
    }

    pub async fn post_h(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        let mut h = vec![("content-type", FHIR_JSON)];
        h.extend_from_slice(headers);
        let body = Some(serde_json::to_vec(body).unwrap());
        self.send(Method::POST, path, &h, body).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.put_h(path, body, &[]).await
    }

    pub async fn put_h(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        let mut h = vec![("content-type", FHIR_JSON)];
        h.extend_from_slice(headers);
        let body = Some(serde_json::to_vec(body).unwrap());
        self.send(Method::PUT, path, &h, body).await
    }

    /// A raw body with the FHIR JSON content type.
    pub async fn send_raw(&self, method: Method, path: &str, body: &[u8]) -> Resp {
        let h = [("content-type", FHIR_JSON)];
        self.send(method, path, &h, Some(body.to_vec())).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, &[], None).await
    }
}

pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Resp {
    let mut request = client.request(method, url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        json,
    }
}

/// The URL of a Bundle's `next` link.
pub fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned)
}

/// All entries of a paged Bundle, and how many pages it had.
pub async fn follow_pages(client: &reqwest::Client, first: &str) -> (Vec<Value>, usize) {
    let mut entries = Vec::new();
    let mut pages = 0;
    let mut url = Some(first.to_owned());
    while let Some(u) = url {
        let r = send(client, Method::GET, &u, &[], None).await;
        r.expect_status(200);
        assert_eq!(r.json["resourceType"], "Bundle", "{}", r.text);
        pages += 1;
        assert!(pages < 10_000, "paging does not end");
        entries.extend(r.json["entry"].as_array().cloned().unwrap_or_default());
        url = next_link(&r.json);
    }
    (entries, pages)
}

/// `Type/id/_history/n` (or `Type/id/_history/n deleted`) of each version in
/// system history, newest first.
pub async fn fingerprint(client: &reqwest::Client, base: &str) -> Vec<String> {
    let (entries, _) = follow_pages(client, &format!("{base}/_history?_count=1000")).await;
    entries.iter().map(entry_version).collect()
}

/// `Type/id/_history/n` of a history entry.
pub fn entry_version(entry: &Value) -> String {
    let etag = entry["response"]["etag"].as_str().unwrap_or("?");
    let version = etag.trim_start_matches("W/").trim_matches('"');
    let url = entry["fullUrl"].as_str().unwrap_or("?");
    let reference = url.rsplit('/').take(2).collect::<Vec<_>>();
    let reference = format!("{}/{}", reference.get(1).unwrap_or(&"?"), reference[0]);
    let deleted = if entry["request"]["method"] == "DELETE" {
        " deleted"
    } else {
        ""
    };
    format!("{reference}/_history/{version}{deleted}")
}

/// Search hits (entries with `search.mode = match`) across all pages.
pub async fn search_ids(server: &TestServer, query: &str) -> Vec<String> {
    let (entries, _) = server.all_pages(query).await;
    entries
        .iter()
        .filter(|e| e["search"]["mode"] != "include")
        .map(|e| e["resource"]["id"].as_str().unwrap_or("?").to_owned())
        .collect()
}

// ---- NHS numbers -----------------------------------------------------------

/// The Modulus 11 check digit of nine digits, or `None` when it would be 10
/// (such stems have no valid NHS number).
pub fn nhs_check_digit(stem: &[u8; 9]) -> Option<u8> {
    let sum: u32 = stem
        .iter()
        .enumerate()
        .map(|(i, d)| u32::from(*d) * (10 - i as u32))
        .sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        d => Some(d as u8),
    }
}

/// The `n`-th valid NHS number of the 999 test range (distinct for distinct
/// `n` below 10^6).
pub fn nhs_number(mut n: u64) -> String {
    loop {
        let stem_num = 999_000_000 + (n % 1_000_000);
        let digits: Vec<u8> = stem_num.to_string().bytes().map(|b| b - b'0').collect();
        let stem: [u8; 9] = digits.try_into().unwrap();
        if let Some(check) = nhs_check_digit(&stem) {
            let all_same = stem.iter().all(|d| *d == check);
            if !all_same {
                return format!("{stem_num}{check}");
            }
        }
        // Stems with no check digit are skipped by moving far away, so
        // distinct inputs stay distinct (the range is only 10^6 wide, and
        // tests use far fewer).
        n += 500_000;
    }
}

pub const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// A valid Patient with an NHS number.
pub fn patient(nhs: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": NHS_SYSTEM, "value": nhs}],
        "active": true,
        "name": [{"use": "official", "family": family, "given": ["Alex"]}],
        "gender": "female",
        "birthDate": "1980-04-12",
        "address": [{"line": ["1 High Street"], "city": "Leeds", "postalCode": "LS1 4AP", "country": "GB"}]
    })
}

/// A valid body-weight Observation for `Patient/{patient_id}`.
pub fn observation(patient_id: &str, kg: &str) -> Value {
    let value: Value = serde_json::from_str(kg).unwrap();
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": "2024-05-01T09:30:00Z",
        "valueQuantity": {"value": value, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    })
}

/// A resource with `meta.versionId` and `meta.lastUpdated` removed (and
/// `meta` itself when nothing else is left in it).
pub fn without_version_meta(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        let empty = if let Some(meta) = obj.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            meta.is_empty()
        } else {
            false
        };
        if empty {
            obj.remove("meta");
        }
    }
    v
}

// ---- the official examples package ----------------------------------------

pub const PACKAGE: &str = "hl7.fhir.r4.examples@4.0.1";

/// The unpacked `hl7.fhir.r4.examples@4.0.1` package: `$CARELAYER_FHIR_PACKAGE`
/// or `<workspace>/.cache/fhir-r4/package`, fetched with `npm pack` when
/// absent. Never skips: without npm the test fails.
pub fn package_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(locate_or_fetch_package).clone()
}

fn locate_or_fetch_package() -> PathBuf {
    if let Ok(dir) = std::env::var("CARELAYER_FHIR_PACKAGE") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("package.json").is_file(),
            "CARELAYER_FHIR_PACKAGE={} has no package.json",
            dir.display()
        );
        return dir;
    }
    let cache = workspace_root().join(".cache/fhir-r4");
    let dir = cache.join("package");
    if dir.join("package.json").is_file() {
        return dir;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let status = Command::new("npm")
        .args(["pack", PACKAGE, "--silent"])
        .current_dir(&cache)
        .status()
        .expect("npm is needed to fetch the official R4 examples (or set CARELAYER_FHIR_PACKAGE)");
    assert!(status.success(), "npm pack {PACKAGE} failed");
    let tgz = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("hl7.fhir.r4.examples-") && n.ends_with(".tgz"))
        })
        .expect("npm pack produced no tarball");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&tgz)
        .current_dir(&cache)
        .status()
        .expect("tar is needed to unpack the package");
    assert!(status.success(), "tar xzf {} failed", tgz.display());
    assert!(dir.join("package.json").is_file());
    dir
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
