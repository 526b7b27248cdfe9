//! Token verification settings, flattened into each service's configuration.

use std::{fmt, path::PathBuf, time::Duration};

use super::{
    DEFAULT_ISSUER, DEFAULT_LEEWAY_SECONDS, DEFAULT_MAX_LIFETIME, MIN_HS256_SECRET_LEN,
    PLATFORM_AUDIENCE, PUBLISHED_HS256_SECRETS,
};
use crate::durations::DurationRange;

pub(super) const ENV_ISSUER: &str = "AUTH_JWT_ISSUER";
pub(super) const ENV_AUDIENCE: &str = "AUTH_JWT_AUDIENCE";
pub(super) const ENV_PLATFORM_AUDIENCE: &str = "AUTH_JWT_PLATFORM_AUDIENCE";
pub(super) const ENV_HS256_SECRET: &str = "AUTH_JWT_HS256_SECRET";
pub(super) const ENV_ALLOW_HS256: &str = "AUTH_JWT_ALLOW_HS256";
pub(super) const ENV_JWKS_FILE: &str = "AUTH_JWT_JWKS_FILE";
pub(super) const ENV_MAX_LIFETIME: &str = "AUTH_JWT_MAX_LIFETIME";
pub(super) const ENV_DEV_MODE: &str = "AUTH_DEV_MODE";

/// At least one of `AUTH_JWT_HS256_SECRET` (local runs) and
/// `AUTH_JWT_JWKS_FILE` (deployments) must be given. With a JWK set, HS256 is
/// refused unless `AUTH_JWT_ALLOW_HS256=true`: a shared secret in production
/// lets anyone who holds it mint any role. The secrets published with the
/// source code ([`super::PUBLISHED_HS256_SECRETS`]) are refused unless
/// `AUTH_DEV_MODE=true`. `Debug` never prints the secret.
#[derive(clap::Args, Clone)]
pub struct AuthConfig {
    /// Expected `iss` (issuer) claim of bearer tokens.
    #[arg(long = "auth-jwt-issuer", env = ENV_ISSUER, value_name = ENV_ISSUER,
          default_value = DEFAULT_ISSUER)]
    pub issuer: String,

    /// This service's own audience: service principals' tokens must carry it
    /// [default: the service's name, e.g. escrow].
    #[arg(long = "auth-jwt-audience", env = ENV_AUDIENCE, value_name = ENV_AUDIENCE)]
    pub audience: Option<String>,

    /// The platform audience that people's tokens (buyer, supplier,
    /// inspector, operator) may carry instead of the service's own.
    #[arg(long = "auth-jwt-platform-audience", env = ENV_PLATFORM_AUDIENCE,
          value_name = ENV_PLATFORM_AUDIENCE, default_value = PLATFORM_AUDIENCE)]
    pub platform_audience: String,

    /// Shared secret for HS256 tokens, at least 16 bytes. For local
    /// development and tests only.
    #[arg(long = "auth-jwt-hs256-secret", env = ENV_HS256_SECRET, hide_env_values = true,
          value_name = ENV_HS256_SECRET)]
    pub hs256_secret: Option<String>,

    /// This process runs for development or tests: accept the HS256 secrets
    /// published with the source code (`make run`'s, the test suites'). Never
    /// in a deployment.
    #[arg(long = "auth-dev-mode", env = ENV_DEV_MODE, value_name = ENV_DEV_MODE,
          default_value_t = false, action = clap::ArgAction::Set)]
    pub dev_mode: bool,

    /// Accept HS256 tokens even though a JWK set is configured (a migration
    /// aid; off by default).
    #[arg(long = "auth-jwt-allow-hs256", env = ENV_ALLOW_HS256, value_name = ENV_ALLOW_HS256,
          default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_hs256: bool,

    /// JSON Web Key Set file with the RS256 public keys accepted, each with a
    /// `kid`; a token names its key by `kid`. Re-read when the file changes,
    /// so keys rotate without a restart.
    #[arg(long = "auth-jwt-jwks-file", env = ENV_JWKS_FILE, value_name = ENV_JWKS_FILE)]
    pub jwks_file: Option<PathBuf>,

    /// Clock-skew tolerance, in seconds, when checking `exp` and `nbf`.
    #[arg(long = "auth-jwt-leeway-seconds", env = "AUTH_JWT_LEEWAY_SECONDS",
          value_name = "AUTH_JWT_LEEWAY_SECONDS", default_value_t = DEFAULT_LEEWAY_SECONDS,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub leeway_seconds: u64,

    /// Longest lifetime a token may have (`exp - iat`, 1m to 24h), people's
    /// and services' alike; a token issued for longer is refused, as is one
    /// without `iat` or issued in the future.
    #[arg(long = "auth-jwt-max-lifetime", env = ENV_MAX_LIFETIME, value_name = ENV_MAX_LIFETIME,
          default_value = "1h",
          value_parser = DurationRange::new(Duration::from_secs(60), Duration::from_secs(86_400)))]
    pub max_lifetime: Duration,
}

impl AuthConfig {
    /// The audience service principals must name: the configured one, or the
    /// service's name.
    pub fn own_audience<'a>(&'a self, service_name: &'a str) -> &'a str {
        self.audience.as_deref().unwrap_or(service_name)
    }

    /// Whether the HS256 secret is one published with the source code.
    pub fn uses_published_secret(&self) -> bool {
        self.hs256_secret
            .as_deref()
            .is_some_and(|secret| PUBLISHED_HS256_SECRETS.contains(&secret.trim()))
    }

    /// Refuses a secret published with the source code unless `AUTH_DEV_MODE`
    /// is set: a binary started with the README's secret in a deployment
    /// stops instead of accepting tokens anyone can sign.
    ///
    /// # Errors
    /// [`AuthConfigError::PublishedSecret`], naming the variables.
    pub fn check_development_secret(&self) -> Result<(), AuthConfigError> {
        if self.uses_published_secret() && !self.dev_mode {
            return Err(AuthConfigError::PublishedSecret);
        }
        Ok(())
    }

    /// A local-development configuration: HS256 with `secret`.
    pub fn hs256(secret: impl Into<String>) -> Self {
        Self {
            hs256_secret: Some(secret.into()),
            ..Self::default()
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: None,
            platform_audience: PLATFORM_AUDIENCE.to_owned(),
            hs256_secret: None,
            dev_mode: false,
            allow_hs256: false,
            jwks_file: None,
            leeway_seconds: DEFAULT_LEEWAY_SECONDS,
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("platform_audience", &self.platform_audience)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("dev_mode", &self.dev_mode)
            .field("allow_hs256", &self.allow_hs256)
            .field("jwks_file", &self.jwks_file)
            .field("leeway_seconds", &self.leeway_seconds)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}

/// Invalid [`AuthConfig`]; the message names the environment variable at fault
/// and never contains the secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    #[error("no token verification key configured: set {ENV_JWKS_FILE} or {ENV_HS256_SECRET}")]
    NoVerificationKey,
    #[error("{ENV_HS256_SECRET} is not set (it is required here)")]
    MissingSecret,
    #[error("{ENV_HS256_SECRET} must be at least {MIN_HS256_SECRET_LEN} bytes long")]
    SecretTooShort,
    #[error(
        "{ENV_HS256_SECRET} is a development secret published with the source code, so anyone \
         can sign any token with it: set {ENV_DEV_MODE}=true for a local run or a test, else \
         verify RS256 tokens ({ENV_JWKS_FILE})"
    )]
    PublishedSecret,
    #[error(
        "{ENV_HS256_SECRET} is set beside {ENV_JWKS_FILE}: HS256 stays off where RS256 keys are \
         configured; unset it, or set {ENV_ALLOW_HS256}=true to accept both on purpose"
    )]
    Hs256BesideJwks,
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{ENV_JWKS_FILE}: cannot read {}: {source}", path.display())]
    KeyFileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{ENV_JWKS_FILE}: {} is not a usable JWK set: {reason}", path.display())]
    KeyFileInvalid { path: PathBuf, reason: String },
}

pub(super) fn checked_secret(secret: Option<&str>) -> Result<Option<&[u8]>, AuthConfigError> {
    match secret {
        None => Ok(None),
        Some(s) if s.len() < MIN_HS256_SECRET_LEN => Err(AuthConfigError::SecretTooShort),
        Some(s) => Ok(Some(s.as_bytes())),
    }
}

pub(super) fn non_empty<'a>(
    value: &'a str,
    variable: &'static str,
) -> Result<&'a str, AuthConfigError> {
    if value.trim().is_empty() {
        Err(AuthConfigError::Empty(variable))
    } else {
        Ok(value)
    }
}
