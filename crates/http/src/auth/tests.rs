//! Token verification: every rejection is a 401 with a reason; valid
//! tokens map to the right principal.

use std::sync::Arc;

use carelayer_policy::{Principal, Scope, SdsRole};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::clients::{self, RegisteredClient};
use super::keys::{JwksSource, KeySet};
use super::*;

const RSA_KEY: &str = include_str!("testdata/rsa-test-key.pem");
const RSA_PUB: &str = include_str!("testdata/rsa-test-key.pub.pem");
const RSA_N: &str = include_str!("testdata/rsa-test-key.n.txt");
const RSA_ISSUER: &str = "https://idp.example.nhs.uk";

fn rsa_jwks(kid: &str) -> Value {
    json!({"keys": [{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                     "n": RSA_N.trim(), "e": "AQAB"}]})
}

struct Fixture {
    _dir: tempfile::TempDir,
    issuer: Arc<BuiltinIssuer>,
    auth: Authenticator,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let issuer =
        Arc::new(BuiltinIssuer::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}")));
    let jwks_path = dir.path().join("idp-jwks.json");
    std::fs::write(&jwks_path, rsa_jwks("rsa1").to_string()).unwrap_or_else(|e| panic!("{e}"));
    let auth = Authenticator::new(
        AuthConfig {
            builtin: Some(Arc::clone(&issuer)),
            issuers: vec![TrustedIssuer {
                issuer: RSA_ISSUER.into(),
                jwks: JwksSource::File(jwks_path),
            }],
            ..AuthConfig::default()
        },
        Some("https://carelayer.example/fhir"),
    );
    Fixture {
        _dir: dir,
        issuer,
        auth,
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn practitioner_claims() -> Value {
    json!({"iss": BUILTIN_ISSUER, "aud": "carelayer", "exp": now() + 600,
           "sub": "u1", "carelayer_role": "R8000", "carelayer_org": "RX1"})
}

fn sign_rsa(claims: &Value, kid: &str) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &key).unwrap_or_else(|e| panic!("{e}"))
}

/// A second, unrelated ES256 key: signs tokens that claim the built-in
/// issuer's kid (a forgery).
fn forger() -> (tempfile::TempDir, BuiltinIssuer) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let issuer = BuiltinIssuer::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    (dir, issuer)
}

fn reason(result: Result<carelayer_records::Caller, AuthError>) -> String {
    match result {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(AuthError::Invalid(r)) => r,
        Err(AuthError::Missing) => "missing".into(),
    }
}

#[tokio::test]
async fn valid_tokens_map_to_principals() {
    let f = fixture();
    let mint = |s: TokenSubject, scope: Option<&str>| {
        f.issuer
            .mint(&s, scope, "carelayer", 60)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let t = mint(
        TokenSubject::Practitioner {
            user_id: "u1".into(),
            role: "R8000".into(),
            org: "RX1".into(),
        },
        None,
    );
    let caller = f.auth.verify(&t).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        caller.principal,
        Principal::Practitioner {
            user_id: "u1".into(),
            role: SdsRole::ClinicalPractitioner,
            org: "RX1".into(),
            scopes: None
        }
    );
    let t = mint(
        TokenSubject::Patient {
            nhs_number: "9000000009".into(),
            patient_id: Some("p1".into()),
        },
        Some("patient/*.rs"),
    );
    let caller = f.auth.verify(&t).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        caller.principal,
        Principal::Patient {
            nhs_number: "9000000009".into(),
            patient_id: Some("p1".into()),
            scopes: Some(Scope::parse_list("patient/*.rs"))
        }
    );
    let t = mint(
        TokenSubject::Client {
            client_id: "lab".into(),
            org: Some("RX1".into()),
        },
        Some("system/Observation.cruds openid"),
    );
    let caller = f.auth.verify(&t).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        caller.principal,
        Principal::System {
            client_id: "lab".into(),
            scopes: Scope::parse_list("system/Observation.cruds"),
            org: Some("RX1".into())
        }
    );
}

#[tokio::test]
async fn rs256_from_a_jwks_file_and_alternate_claim_names() {
    let f = fixture();
    let claims = json!({"iss": RSA_ISSUER, "aud": "https://carelayer.example/fhir",
        "exp": now() + 600, "nbf": now() - 10, "sub": "u2", "sds_role": "R0001", "ods": "A12345"});
    let caller = f
        .auth
        .verify(&sign_rsa(&claims, "rsa1"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        caller.principal,
        Principal::Practitioner {
            user_id: "u2".into(),
            role: SdsRole::PrivacyOfficer,
            org: "A12345".into(),
            scopes: None
        }
    );
}

#[tokio::test]
async fn rejections() {
    let f = fixture();
    let (_d, forger) = forger();
    let good = practitioner_claims();
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        if let Some(o) = c.as_object_mut() {
            o.insert(k.into(), v);
        }
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        if let Some(o) = c.as_object_mut() {
            o.remove(k);
        }
        c
    };
    // Sign arbitrary claims with `key`, labelling them with `kid`.
    let es = |claims: &Value, kid: &str, key: &BuiltinIssuer| sign_with(key, claims, kid);
    let kid = f.issuer.kid().to_owned();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            es(&with("exp", json!(now() - 120)), &kid, &f.issuer),
            "expired",
        ),
        (
            "not yet valid",
            es(&with("nbf", json!(now() + 600)), &kid, &f.issuer),
            "not valid yet",
        ),
        ("forged signature", es(&good, &kid, &forger), "signature"),
        (
            "wrong audience",
            es(&with("aud", json!("https://elsewhere")), &kid, &f.issuer),
            "aud",
        ),
        (
            "wrong issuer",
            es(&with("iss", json!("https://evil.example")), &kid, &f.issuer),
            "not trusted",
        ),
        ("issuer/key mismatch", sign_rsa(&good, "rsa1"), "kid"),
        ("unknown kid", es(&good, "nope", &f.issuer), "kid"),
        ("no exp", es(&without("exp"), &kid, &f.issuer), "exp"),
        ("no aud", es(&without("aud"), &kid, &f.issuer), "aud"),
        (
            "no role, patient or client",
            es(&without("carelayer_role"), &kid, &f.issuer),
            "names no",
        ),
        (
            "role without org",
            es(&without("carelayer_org"), &kid, &f.issuer),
            "carelayer_org",
        ),
        (
            "bad NHS number",
            es(
                &json!({"iss": BUILTIN_ISSUER, "aud": "carelayer", "exp": now() + 60, "nhs_number": "9434765918"}),
                &kid,
                &f.issuer,
            ),
            "NHS number",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&good.to_string())
            ),
            "malformed",
        ),
        ("HS256", hs256(&good), "not accepted"),
        ("garbage", "not.a.jwt".into(), "malformed"),
    ];
    for (name, token, want) in cases {
        let got = reason(f.auth.verify(&token).await);
        assert!(got.contains(want), "{name}: {got}");
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(b"guessable"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Sign arbitrary claims with an issuer's private key.
fn sign_with(issuer: &BuiltinIssuer, claims: &Value, kid: &str) -> String {
    issuer
        .sign_raw(claims, kid)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn jwks_file_rotation_refetches_on_unknown_kid() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, rsa_jwks("old").to_string()).unwrap_or_else(|e| panic!("{e}"));
    let keys = KeySet::with_interval(JwksSource::File(path.clone()), std::time::Duration::ZERO);
    let http = reqwest::Client::new();
    assert!(keys.key_for(Some("old"), &http).await.is_ok());
    assert!(keys.key_for(Some("new"), &http).await.is_err());
    std::fs::write(&path, rsa_jwks("new").to_string()).unwrap_or_else(|e| panic!("{e}"));
    assert!(keys.key_for(Some("new"), &http).await.is_ok());
}

#[tokio::test]
async fn jwks_url_is_fetched_and_cached() {
    use axum::routing::get;
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = axum::Router::new().route(
        "/jwks.json",
        get(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { axum::Json(rsa_jwks("k1")) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let keys = KeySet::new(JwksSource::Url(format!("http://{addr}/jwks.json")));
    let http = reqwest::Client::new();
    assert!(keys.key_for(Some("k1"), &http).await.is_ok());
    assert!(keys.key_for(Some("k1"), &http).await.is_ok());
    // Unknown kid right after a fetch: refused without hammering the issuer.
    assert!(keys.key_for(Some("k2"), &http).await.is_err());
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn issuer_key_is_private_and_stable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let a = BuiltinIssuer::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join(issuer::KEY_FILE);
    let mode = std::fs::metadata(&path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or_default();
    assert_eq!(mode, 0o600);
    let b = BuiltinIssuer::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.kid(), b.kid());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        BuiltinIssuer::load_or_create(dir.path()),
        Err(issuer::IssuerError::Permissions(_))
    ));
}

#[test]
fn client_assertions() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join(clients::CLIENTS_FILE);
    let client = RegisteredClient {
        client_id: "lab".into(),
        scopes: vec![
            "system/Observation.cruds".into(),
            "system/Patient.rs".into(),
        ],
        org: Some("RX1".into()),
        jwks: None,
        public_key_pem: Some(RSA_PUB.into()),
    };
    clients::add(&file, client.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(clients::load(&file).ok(), Some(vec![client.clone()]));
    let bad_scope = RegisteredClient {
        scopes: vec!["patient/*.rs".into()],
        ..client.clone()
    };
    assert!(clients::add(&file, bad_scope).is_err());

    let url = "http://127.0.0.1:8080/oauth/token".to_owned();
    let assertion = |claims: Value| sign_rsa(&claims, "any");
    let base = json!({"iss": "lab", "sub": "lab", "aud": url, "exp": now() + 240, "jti": "j1"});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        if let Some(o) = c.as_object_mut() {
            o.insert(k.into(), v);
        }
        c
    };
    let urls = [url.clone()];
    assert!(clients::verify_assertion(&client, &assertion(base.clone()), &urls).is_ok());
    for (name, claims) in [
        ("too long-lived", with("exp", json!(now() + 3600))),
        ("expired", with("exp", json!(now() - 120))),
        (
            "wrong aud",
            with("aud", json!("http://elsewhere/oauth/token")),
        ),
        ("sub differs", with("sub", json!("other"))),
        ("iss differs", with("iss", json!("other"))),
    ] {
        assert!(
            clients::verify_assertion(&client, &assertion(claims), &urls).is_err(),
            "{name}"
        );
    }
    let mut no_jti = base.clone();
    if let Some(o) = no_jti.as_object_mut() {
        o.remove("jti");
    }
    assert!(clients::verify_assertion(&client, &assertion(no_jti), &urls).is_err());

    assert_eq!(
        clients::grant(&client, Some("system/Observation.rs")),
        Some(vec!["system/Observation.rs".into()])
    );
    assert_eq!(clients::grant(&client, Some("system/Patient.cruds")), None);
    assert_eq!(clients::grant(&client, Some("system/*.rs")), None);
    assert_eq!(clients::grant(&client, None), Some(client.scopes.clone()));
}

#[test]
fn jti_replay_is_refused() {
    let f = fixture();
    let exp = now() + 60;
    assert!(f.auth.remember_jti("lab", "j1", exp));
    assert!(!f.auth.remember_jti("lab", "j1", exp));
    assert!(f.auth.remember_jti("other", "j1", exp));
}
