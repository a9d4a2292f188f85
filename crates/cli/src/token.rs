//! `carelayer token`: mint a token from the built-in issuer, and the
//! server's authentication settings (`serve --trusted-issuer …`).
//!
//! The issuer's key is `<key dir>/issuer-key.pem`; the key directory is the
//! SQLite file's folder (so `--database` alone finds it, exactly as `serve`
//! does), or `--key-dir` (required for PostgreSQL URLs, where there is no
//! database folder). Registered backend clients are in
//! `<key dir>/clients.json` (see `carelayer client`).
//!
//! Only the token itself is printed: it is a bearer credential, meant for
//! a pipe or a variable (`TOKEN=$(carelayer token …)`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use carelayer_http::auth::clients::CLIENTS_FILE;
use carelayer_http::auth::{
    AuthConfig, BuiltinIssuer, DEFAULT_AUDIENCE, JwksSource, TokenSubject, TrustedIssuer,
};
use clap::Args;

use crate::config::DatabaseArgs;

/// Authentication flags of `serve`.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Trust another token issuer: `ISSUER=JWKS`, where JWKS is a file path
    /// or an http(s) URL (refetched when a token names an unknown key).
    /// Repeatable, or comma-separated in the environment.
    #[arg(
        long = "trusted-issuer",
        env = "CARELAYER_TRUSTED_ISSUERS",
        value_delimiter = ','
    )]
    pub trusted_issuers: Vec<String>,
    /// Token audience(s) accepted (default: `carelayer`; the --base-url is
    /// always accepted too).
    #[arg(long = "audience", env = "CARELAYER_AUDIENCE", value_delimiter = ',')]
    pub audiences: Vec<String>,
}

/// `carelayer token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Folder of the issuer key (default: next to the SQLite file; required
    /// for PostgreSQL).
    #[arg(long, env = "CARELAYER_KEY_DIR")]
    pub key_dir: Option<PathBuf>,
    /// A practitioner's SDS user id (with --role and --org).
    #[arg(long, requires_all = ["role", "org"], conflicts_with_all = ["patient", "client"])]
    pub user: Option<String>,
    /// SDS role code: R8000 clinical practitioner, R8001 nurse, R8003 health
    /// professional, R8004 student, R0001 privacy officer, R5105 Caldicott
    /// Guardian, R8008 admin, R8009 receptionist, R8010 clerical.
    #[arg(long, requires = "user")]
    pub role: Option<String>,
    /// ODS code of the organisation (practitioners; optional for clients).
    #[arg(long)]
    pub org: Option<String>,
    /// A patient's NHS number.
    #[arg(long, conflicts_with = "client")]
    pub patient: Option<String>,
    /// The patient's Patient resource id, if known.
    #[arg(long, requires = "patient")]
    pub patient_id: Option<String>,
    /// A backend client id (with --scope).
    #[arg(long, requires = "scope")]
    pub client: Option<String>,
    /// The server's operator: full access, audited as the operator (for
    /// administration scripts; keep the token short-lived).
    #[arg(long, conflicts_with_all = ["user", "patient", "client"])]
    pub operator: bool,
    /// SMART scopes, space-separated (`system/*.cruds`, `patient/*.rs`…).
    #[arg(long)]
    pub scope: Option<String>,
    /// Lifetime: `90s`, `15m`, `1h`, `1d` or seconds.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// The `aud` claim.
    #[arg(long, default_value = DEFAULT_AUDIENCE)]
    pub audience: String,
}

/// The server's authentication settings: the built-in issuer from the key
/// directory, the registered-clients file, and the flags.
///
/// # Errors
/// The key directory cannot be found or the key cannot be loaded; a
/// malformed `--trusted-issuer`.
pub fn auth_config(
    database: &str,
    explicit_key_dir: Option<&Path>,
    args: &AuthArgs,
) -> anyhow::Result<AuthConfig> {
    let dir = crate::backend::key_dir(database, explicit_key_dir, "the token issuer key")?;
    let issuer = BuiltinIssuer::load_or_create(&dir)?;
    let mut issuers = Vec::new();
    for spec in &args.trusted_issuers {
        let Some((issuer, jwks)) = spec.split_once('=') else {
            bail!("--trusted-issuer must be ISSUER=JWKS (a file path or URL), got '{spec}'");
        };
        issuers.push(TrustedIssuer {
            issuer: issuer.to_owned(),
            jwks: JwksSource::parse(jwks),
        });
    }
    Ok(AuthConfig {
        audiences: args.audiences.clone(),
        issuers,
        builtin: Some(Arc::new(issuer)),
        clients_file: Some(dir.join(CLIENTS_FILE)),
        access_token_ttl_secs: 300,
    })
}

/// `90s`, `15m`, `1h`, `2d`, or plain seconds.
///
/// # Errors
/// Anything else, or zero.
pub fn parse_ttl(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("--ttl '{text}': expected e.g. 90s, 15m, 1h, 1d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => bail!("--ttl '{text}': the unit must be s, m, h or d"),
    };
    let secs = n.saturating_mul(unit);
    if secs == 0 {
        bail!("--ttl must be more than zero");
    }
    Ok(secs)
}

/// Mint the token `args` describe.
///
/// # Errors
/// No subject given, or the key cannot be loaded.
pub fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    let subject = match (&args.user, &args.patient, &args.client) {
        _ if args.operator => TokenSubject::Operator {
            name: "operator".into(),
        },
        (Some(user), None, None) => TokenSubject::Practitioner {
            user_id: user.clone(),
            role: args.role.clone().unwrap_or_default(),
            org: args.org.clone().unwrap_or_default(),
        },
        (None, Some(nhs), None) => TokenSubject::Patient {
            nhs_number: carelayer_fhir::nhs_number::NhsNumber::parse(nhs)
                .map_err(|e| anyhow::anyhow!("--patient '{nhs}': {e}"))?
                .into_string(),
            patient_id: args.patient_id.clone(),
        },
        (None, None, Some(client)) => TokenSubject::Client {
            client_id: client.clone(),
            org: args.org.clone(),
        },
        _ => bail!(
            "say who the token is for: --user ID --role CODE --org ODS, --patient NHS_NUMBER, --client ID --scope SCOPES, or --operator"
        ),
    };
    let ttl = parse_ttl(&args.ttl)?;
    let dir = crate::backend::key_dir(
        &args.db.database,
        args.key_dir.as_deref(),
        "the token issuer key",
    )?;
    let issuer = BuiltinIssuer::load_or_create(&dir)?;
    Ok(issuer.mint(&subject, args.scope.as_deref(), &args.audience, ttl)?)
}

/// `carelayer token`: print the token.
///
/// # Errors
/// See [`mint`].
pub fn run(args: &TokenArgs) -> anyhow::Result<()> {
    println!("{}", mint(args)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::key_dir;

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("90").ok(), Some(90));
        assert_eq!(parse_ttl("90s").ok(), Some(90));
        assert_eq!(parse_ttl("15m").ok(), Some(900));
        assert_eq!(parse_ttl("1h").ok(), Some(3600));
        assert_eq!(parse_ttl("2d").ok(), Some(172_800));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn key_dir_from_database_url() {
        assert_eq!(
            key_dir("sqlite://data/x.db", None, "k").ok(),
            Some(PathBuf::from("data"))
        );
        assert_eq!(
            key_dir("sqlite://x.db", None, "k").ok(),
            Some(PathBuf::from("."))
        );
        assert!(key_dir("postgres://u@h/db", None, "k").is_err());
        assert_eq!(
            key_dir("postgres://u@h/db", Some(Path::new("/k")), "k").ok(),
            Some(PathBuf::from("/k"))
        );
    }
}
