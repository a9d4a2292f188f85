//! Runs one workload with N concurrent clients until a deadline or a
//! request count, measuring each request's latency (send to the last body
//! byte).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bench::workload::Workload;

/// When a workload stops.
#[derive(Debug, Clone)]
pub(crate) enum Limit {
    Duration(Duration),
    /// Requests in total, over all clients.
    Requests(u64),
}

impl Limit {
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Duration(d) => format!("{:.1} s", d.as_secs_f64()),
            Self::Requests(n) => format!("{n} requests"),
        }
    }
}

/// What one run measured.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Latencies of successful requests, microseconds, sorted.
    pub latencies_us: Vec<u64>,
    pub errors: u64,
    /// The first few error descriptions.
    pub error_samples: Vec<String>,
    pub elapsed: Duration,
}

impl Stats {
    /// Add another run of the same workload (its requests and its time).
    pub(crate) fn absorb(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
        self.errors += other.errors;
        let room = 5usize.saturating_sub(self.error_samples.len());
        self.error_samples
            .extend(other.error_samples.into_iter().take(room));
        self.elapsed += other.elapsed;
    }

    pub(crate) fn requests(&self) -> u64 {
        self.latencies_us.len() as u64 + self.errors
    }

    /// Successful requests per second.
    pub(crate) fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.latencies_us.len() as f64 / secs
        } else {
            0.0
        }
    }

    /// The `q`-quantile (0..=1) of successful latencies, in milliseconds.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((self.latencies_us.len() as f64 * q).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        self.latencies_us[rank - 1] as f64 / 1000.0
    }

    pub(crate) fn max_ms(&self) -> f64 {
        self.latencies_us
            .last()
            .map_or(0.0, |us| *us as f64 / 1000.0)
    }
}

/// An HTTP client for `clients` concurrent clients: HTTP/1.1 keep-alive,
/// one connection per client.
/// The load generator's HTTP client, presenting `token` on every request.
pub(crate) fn client(clients: usize, token: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(clients)
        .tcp_nodelay(true)
        .build()
        .context("cannot build the HTTP client")
}

const ERROR_SAMPLES: usize = 5;

/// Run `workload` with `clients` concurrent clients until `limit`.
pub(crate) async fn run(
    client: &reqwest::Client,
    base_url: &str,
    workload: Arc<dyn Workload>,
    clients: usize,
    limit: &Limit,
) -> Stats {
    let started = Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let client = client.clone();
        let base = base_url.trim_end_matches('/').to_owned();
        let workload = Arc::clone(&workload);
        let issued = Arc::clone(&issued);
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move {
            one_client(
                &client,
                &base,
                workload.as_ref(),
                c,
                &limit,
                started,
                &issued,
            )
            .await
        }));
    }
    let mut stats = Stats::default();
    for task in tasks {
        match task.await {
            Ok(s) => {
                stats.latencies_us.extend(s.latencies_us);
                stats.errors += s.errors;
                for e in s.error_samples {
                    if stats.error_samples.len() < ERROR_SAMPLES {
                        stats.error_samples.push(e);
                    }
                }
            }
            Err(e) => {
                stats.errors += 1;
                stats.error_samples.push(format!("client task failed: {e}"));
            }
        }
    }
    stats.elapsed = started.elapsed();
    stats.latencies_us.sort_unstable();
    stats
}

async fn one_client(
    client: &reqwest::Client,
    base: &str,
    workload: &dyn Workload,
    c: usize,
    limit: &Limit,
    started: Instant,
    issued: &AtomicU64,
) -> Stats {
    let mut stats = Stats::default();
    let mut i = 0u64;
    loop {
        match limit {
            Limit::Duration(d) => {
                if started.elapsed() >= *d {
                    break;
                }
            }
            Limit::Requests(n) => {
                if issued.fetch_add(1, Ordering::Relaxed) >= *n {
                    break;
                }
            }
        }
        let request = workload.request(c, i);
        i += 1;
        let mut builder =
            client.request(request.method.clone(), format!("{base}/{}", request.path));
        if let Some(body) = &request.body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/fhir+json")
                .body(body.clone());
        }
        let sent = Instant::now();
        let outcome = match builder.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                match response.bytes().await {
                    Ok(body) if request.expect.contains(&status) => Ok((headers, body)),
                    Ok(body) => Err(format!(
                        "{} {}: {status} {}",
                        request.method,
                        request.path,
                        String::from_utf8_lossy(&body)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    )),
                    Err(e) => Err(format!(
                        "{} {}: reading the body: {e}",
                        request.method, request.path
                    )),
                }
            }
            Err(e) => Err(format!("{} {}: {e}", request.method, request.path)),
        };
        let latency = sent.elapsed();
        match outcome {
            Ok((headers, _body)) => {
                stats
                    .latencies_us
                    .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
                workload.observe(&request, &headers);
            }
            Err(e) => {
                stats.errors += 1;
                if stats.error_samples.len() < ERROR_SAMPLES {
                    stats.error_samples.push(e);
                }
            }
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let stats = Stats {
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            ..Stats::default()
        };
        assert!((stats.quantile_ms(0.5) - 50.0).abs() < 1e-9);
        assert!((stats.quantile_ms(0.99) - 99.0).abs() < 1e-9);
        assert!((stats.max_ms() - 100.0).abs() < 1e-9);
        assert_eq!(Stats::default().quantile_ms(0.5), 0.0);
    }
}
