//! Issue 5, reliability, at the server: PostgreSQL goes away while clients
//! create Patients over HTTP. The server reaches PostgreSQL through a TCP
//! proxy owned by this test (stopping the shared cluster would break the
//! other tests). Two faults:
//! - *stopped*: every connection is closed and new ones are refused, as when
//!   PostgreSQL is stopped or killed;
//! - *silent*: connections stay open but nothing gets through, as when the
//!   host or the network hangs (only timeouts can tell).
//!
//! Either way, requests fail with 503 and an OperationOutcome (never 500,
//! never a hang, no cause leaked); every create that got 201 is still
//! readable afterwards; and service resumes by itself once the proxy is
//! back, without restarting the server.
//!
//! Runs when `CARELAYER_TEST_POSTGRES` is set (`scripts/test` sets it); on
//! CI (`CI` set) a missing URL fails the test rather than skipping it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{FHIR_JSON, TestPgDatabase, TestServer, issue_text, nhs_number, patient};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Longest any one request may take, outage or not: longer is a hang.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// The admin URL, or `None` after a loud skip notice (never on CI).
fn admin_url() -> Option<String> {
    match std::env::var("CARELAYER_TEST_POSTGRES") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but CARELAYER_TEST_POSTGRES is not: the PostgreSQL outage test \
                 must not be skipped on CI"
            );
            eprintln!(
                "\nSKIPPED: the PostgreSQL outage test needs CARELAYER_TEST_POSTGRES \
                 (e.g. postgres://postgres@127.0.0.1:5432/postgres)\n"
            );
            None
        }
    }
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Nothing: traffic flows.
    None,
    /// Close every connection and refuse new ones.
    Stopped,
    /// Keep connections (and accept new ones) but pass nothing through.
    Silent,
}

/// A TCP proxy to `upstream` that can be faulted and restored.
struct Proxy {
    port: u16,
    state: watch::Sender<Fault>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (state, _) = watch::channel(Fault::None);
        let states = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut changes = states.subscribe();
                let fault = *changes.borrow_and_update();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    match fault {
                        Fault::Stopped => return,
                        // Held open, silent, until the fault changes.
                        Fault::Silent => {
                            let _ = changes.changed().await;
                            return;
                        }
                        Fault::None => {}
                    }
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                        _ = changes.changed() => {}
                    }
                    if *changes.borrow_and_update() == Fault::Silent {
                        let _ = changes.changed().await;
                    }
                    // Dropping both sockets closes them: to the server under
                    // test it looks like PostgreSQL went away.
                });
            }
        });
        Self { port, state }
    }

    fn fault(&self, fault: Fault) {
        self.state.send_replace(fault);
    }
}

/// What one request got.
enum Answer {
    /// 201 with the new id.
    Created(String),
    /// 503 with an OperationOutcome.
    Unavailable,
}

/// POST a Patient; 201 and 503 (with a proper OperationOutcome) are the
/// only acceptable answers, within the deadline.
async fn create(client: &reqwest::Client, base: &str, n: u64) -> Answer {
    let body = serde_json::to_vec(&patient(&nhs_number(n), "Outage")).unwrap();
    let request = client
        .post(format!("{base}/Patient"))
        .header("content-type", FHIR_JSON)
        .body(body)
        .send();
    let response = tokio::time::timeout(REQUEST_DEADLINE, request)
        .await
        .unwrap_or_else(|_| panic!("a create hung for {REQUEST_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("a create failed at the transport (server panic?): {e}"));
    let status = response.status().as_u16();
    let retry_after = retry_after(&response);
    let text = response.text().await.unwrap();
    match status {
        201 => {
            let json: Value = serde_json::from_str(&text).unwrap();
            Answer::Created(json["id"].as_str().expect("id").to_owned())
        }
        503 => {
            assert_unavailable_outcome(&text);
            assert_retry_after(retry_after.as_deref(), &text);
            Answer::Unavailable
        }
        other => panic!("a create got {other} (expected 201 or 503): {text}"),
    }
}

/// The `Retry-After` header, if any.
fn retry_after(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A 503 says when to try again: `Retry-After` with a delay in seconds.
#[track_caller]
fn assert_retry_after(value: Option<&str>, text: &str) {
    let seconds: u64 = value
        .unwrap_or_else(|| panic!("a 503 without Retry-After: {text}"))
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not seconds: {value:?}"));
    assert!(
        (1..=60).contains(&seconds),
        "Retry-After {seconds} s is not a sensible delay"
    );
}

/// A 503 body: an OperationOutcome with a `transient` issue that says what
/// to do, and nothing of the cause (hosts, driver messages).
#[track_caller]
fn assert_unavailable_outcome(text: &str) {
    let json: Value =
        serde_json::from_str(text).unwrap_or_else(|_| panic!("a 503 body is not JSON: {text}"));
    assert_eq!(json["resourceType"], "OperationOutcome", "{text}");
    let issues = json["issue"].as_array().expect("issue array");
    assert!(
        issues
            .iter()
            .any(|i| i["code"] == "transient" && issue_text(i).contains("unavailable")),
        "no transient 'unavailable' issue: {text}"
    );
    let lower = text.to_lowercase();
    for leak in [
        "postgres",
        "127.0.0.1",
        "connection",
        "db error",
        "sqlstate",
    ] {
        assert!(
            !lower.contains(leak),
            "the 503 leaks its cause ('{leak}'): {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_postgres_is_503_loses_nothing_and_recovers_without_restart() {
    // The server's own defaults (pool, timeouts): what an operator gets.
    outage(Fault::Stopped, "", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_postgres_is_503_within_the_deadline_and_recovers() {
    // Only timeouts can tell a silent server. With the defaults an operator
    // gets (5 s statement timeout, 3 s connect timeout) no request waits
    // longer than 13 s: `outage` fails any answer slower than
    // `SILENT_DEADLINE`, the 13 s plus scheduling slack.
    outage(Fault::Silent, "", Duration::from_secs(16)).await;
}

/// The slowest answer allowed while PostgreSQL is silent, on the default
/// settings: the 13 s operation deadline plus slack for a loaded machine.
const SILENT_DEADLINE: Duration = Duration::from_secs(17);

/// Writers under `fault` for `length`, then recovery and the checks.
async fn outage(fault: Fault, url_params: &str, length: Duration) {
    let Some(admin) = admin_url() else {
        return;
    };
    let database = common::create_pg_database(&admin);
    let _db = TestPgDatabase::at(&admin, &database).expect("a test database");
    let mut via_proxy = url::Url::parse(&database).unwrap();
    let upstream = format!(
        "{}:{}",
        via_proxy.host_str().unwrap(),
        via_proxy.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(upstream).await;
    via_proxy.set_host(Some("127.0.0.1")).unwrap();
    via_proxy.set_port(Some(proxy.port)).unwrap();
    let proxied = format!("{via_proxy}{url_params}");
    let s = TestServer::start_with(|c| c.database = proxied).await;
    let base = s.base.clone();

    // Eight clients create Patients continuously, each recording what it
    // was told was created and how many 503s it saw.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, base) = (s.client.clone(), base.clone());
        let (stop, next) = (Arc::clone(&stop), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let (mut created, mut unavailable, mut slowest) = (Vec::new(), 0_u32, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let answer = create(&client, &base, next.fetch_add(1, Ordering::Relaxed)).await;
                slowest = slowest.max(started.elapsed());
                match answer {
                    Answer::Created(id) => created.push(id),
                    Answer::Unavailable => {
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (created, unavailable, slowest)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = next.load(Ordering::Relaxed);
    assert!(before > 5, "the writers got going before the outage");

    proxy.fault(fault);
    let cut_at = Instant::now();
    // A read during the outage is a 503 too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = tokio::time::timeout(
        REQUEST_DEADLINE,
        s.client.get(format!("{base}/Patient/x")).send(),
    )
    .await
    .expect("a read hung during the outage")
    .expect("a read failed at the transport during the outage");
    let status = read.status().as_u16();
    let retry = retry_after(&read);
    let text = read.text().await.unwrap();
    assert_eq!(status, 503, "a read during the outage: {text}");
    assert_unavailable_outcome(&text);
    assert_retry_after(retry.as_deref(), &text);
    tokio::time::sleep(length.saturating_sub(cut_at.elapsed())).await;

    proxy.fault(Fault::None);
    let restored_at = Instant::now();
    // Service resumes by itself: a create succeeds within a bound.
    let mut n = 900_000;
    loop {
        n += 1;
        match create(&s.client, &base, n).await {
            Answer::Created(_) => break,
            Answer::Unavailable => {
                assert!(
                    restored_at.elapsed() < Duration::from_secs(30),
                    "no successful create within 30 s of PostgreSQL coming back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let recovered_in = restored_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut created, mut unavailable, mut slowest) = (Vec::new(), 0, Duration::ZERO);
    for w in workers {
        let (c, u, t) = w.await.expect("a writer panicked");
        created.extend(c);
        unavailable += u;
        slowest = slowest.max(t);
    }
    assert!(unavailable > 0, "the outage was seen as 503 by the writers");
    if fault == Fault::Silent {
        assert!(
            slowest <= SILENT_DEADLINE,
            "a request was held {slowest:?} by a silent PostgreSQL (default settings)"
        );
    }

    // Nothing acknowledged is lost: every 201 reads back, through the same
    // (never restarted) server.
    let mut missing = BTreeMap::new();
    for id in &created {
        let r = s.get(&format!("Patient/{id}")).await;
        if r.status.as_u16() != 200 {
            missing.insert(id.clone(), r.status.as_u16());
        }
    }
    assert!(
        missing.is_empty(),
        "acknowledged creates not readable: {missing:?}"
    );
    eprintln!(
        "{fault:?} outage: {} created, {unavailable} answered 503 over a {:?} outage \
         (slowest answer {slowest:?}); first create succeeded {recovered_in:?} after \
         PostgreSQL came back",
        created.len(),
        restored_at - cut_at,
    );
    s.stop().await;
}
