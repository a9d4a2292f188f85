//! JWKS key sets: from a file, a URL or in memory; cached; refetched when a
//! token names a `kid` we do not hold (the issuer rotated its keys), at most
//! once per [`REFETCH_INTERVAL`] so unknown-kid tokens cannot make us hammer
//! the issuer.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use tokio::sync::RwLock;

use super::AuthError;

/// Least time between two fetches of one key set.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// Where an issuer's public keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWKS JSON file, re-read on an unknown `kid`.
    File(PathBuf),
    /// A JWKS URL (`https://…/jwks.json`), fetched on first use and on an
    /// unknown `kid`.
    Url(String),
    /// Keys held in memory (the built-in issuer).
    Static(JwkSet),
}

impl JwksSource {
    /// `http(s)://…` is a URL, anything else a file path.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        if text.starts_with("https://") || text.starts_with("http://") {
            Self::Url(text.to_owned())
        } else {
            Self::File(PathBuf::from(text))
        }
    }
}

struct Cached {
    keys: Option<JwkSet>,
    fetched: Option<Instant>,
}

pub(crate) struct KeySet {
    source: JwksSource,
    cache: RwLock<Cached>,
    interval: Duration,
}

impl KeySet {
    pub(crate) fn new(source: JwksSource) -> Self {
        Self::with_interval(source, REFETCH_INTERVAL)
    }

    /// With a different least time between fetches (tests use zero).
    pub(crate) fn with_interval(source: JwksSource, interval: Duration) -> Self {
        let keys = match &source {
            JwksSource::Static(set) => Some(set.clone()),
            _ => None,
        };
        Self {
            source,
            cache: RwLock::new(Cached {
                keys,
                fetched: None,
            }),
            interval,
        }
    }

    /// The key a token's `kid` names (or the only key, without a `kid`).
    pub(crate) async fn key_for(
        &self,
        kid: Option<&str>,
        http: &reqwest::Client,
    ) -> Result<DecodingKey, AuthError> {
        {
            let cache = self.cache.read().await;
            if let Some(set) = &cache.keys
                && let Some(key) = pick(set, kid)?
            {
                return Ok(key);
            }
        }
        if matches!(self.source, JwksSource::Static(_)) {
            return Err(unknown(kid));
        }
        let mut cache = self.cache.write().await;
        // Another request may have refreshed while we waited.
        if let Some(set) = &cache.keys
            && let Some(key) = pick(set, kid)?
        {
            return Ok(key);
        }
        if cache.fetched.is_some_and(|t| t.elapsed() < self.interval) {
            return Err(unknown(kid));
        }
        cache.fetched = Some(Instant::now());
        let set = fetch(&self.source, http).await?;
        let key = pick(&set, kid)?;
        cache.keys = Some(set);
        key.ok_or_else(|| unknown(kid))
    }
}

fn unknown(kid: Option<&str>) -> AuthError {
    AuthError::invalid(match kid {
        Some(kid) => format!("no trusted key has kid '{kid}'"),
        None => "the token names no kid and the issuer has several keys".to_owned(),
    })
}

/// The key for `kid`; without a kid, the set's only key.
fn pick(set: &JwkSet, kid: Option<&str>) -> Result<Option<DecodingKey>, AuthError> {
    let jwk = match kid {
        Some(kid) => set.find(kid),
        None if set.keys.len() == 1 => set.keys.first(),
        None => None,
    };
    jwk.map(|j| {
        DecodingKey::from_jwk(j)
            .map_err(|e| AuthError::invalid(format!("the issuer's key is unusable: {e}")))
    })
    .transpose()
}

async fn fetch(source: &JwksSource, http: &reqwest::Client) -> Result<JwkSet, AuthError> {
    // The reasons are logged in full but sent only generically: they
    // describe our configuration, not the caller's token.
    let unavailable = |what: String| {
        tracing::warn!(error = %what, "cannot load a trusted issuer's keys");
        AuthError::invalid("the issuer's keys cannot be loaded")
    };
    match source {
        JwksSource::Static(set) => Ok(set.clone()),
        JwksSource::File(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| unavailable(format!("{}: {e}", path.display())))
        }
        JwksSource::Url(url) => {
            let response = http
                .get(url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| unavailable(format!("{url}: {e}")))?;
            response
                .json::<JwkSet>()
                .await
                .map_err(|e| unavailable(format!("{url}: {e}")))
        }
    }
}
