//! Authentication and authorisation of gRPC calls.
//!
//! * [`TokenVerifier`] checks bearer JWTs (HS256 with a shared secret for
//!   local use, RS256 with one or more RSA public keys elsewhere) and turns
//!   them into a [`Principal`].
//! * [`MethodPolicy`] maps every gRPC method to the [`Role`]s allowed to call
//!   it; anything not listed is denied.
//! * [`AuthLayer`] is the tower layer installed with
//!   `tonic::transport::Server::builder().layer(...)`: it answers
//!   `UNAUTHENTICATED` / `PERMISSION_DENIED` itself and hands the
//!   [`Principal`] to the handlers through the request extensions, where
//!   [`principal`] reads it.
//! * [`TokenIssuer`] mints HS256 tokens for the `mint-token` CLI and tests.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::metadata::{Ascii, MetadataValue};

/// Default expected `iss` claim.
pub const DEFAULT_ISSUER: &str = "trade-assurance";
/// Default expected `aud` claim.
pub const DEFAULT_AUDIENCE: &str = "trade-assurance";
/// Default clock-skew tolerance for `exp` / `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 30;
/// Shortest accepted HS256 secret, in bytes.
pub const MIN_HS256_SECRET_LEN: usize = 16;
/// Longest accepted `sub` claim, in bytes.
pub const MAX_SUBJECT_LEN: usize = 128;

const ENV_ISSUER: &str = "AUTH_JWT_ISSUER";
const ENV_AUDIENCE: &str = "AUTH_JWT_AUDIENCE";
const ENV_HS256_SECRET: &str = "AUTH_JWT_HS256_SECRET";
const ENV_RS256_KEYS_FILE: &str = "AUTH_JWT_RS256_PUBLIC_KEYS_FILE";

/// GRPC path prefixes that never require a token.
const PUBLIC_PATH_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

// ---------------------------------------------------------------------------
// Roles and principals
// ---------------------------------------------------------------------------

/// What a caller is, as carried in the `role` claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Buyer,
    Supplier,
    Inspector,
    Operator,
    /// Another Trade Assurance service calling on its own behalf.
    Service,
}

impl Role {
    /// Every role, in declaration order.
    pub const ALL: [Role; 5] = [
        Role::Buyer,
        Role::Supplier,
        Role::Inspector,
        Role::Operator,
        Role::Service,
    ];

    /// The wire name, as in the `role` claim (`"buyer"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Buyer => "buyer",
            Role::Supplier => "supplier",
            Role::Inspector => "inspector",
            Role::Operator => "operator",
            Role::Service => "service",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not the (lowercase) name of a [`Role`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}` (expected one of buyer, supplier, inspector, operator, service)")]
pub struct ParseRoleError(pub String);

impl FromStr for Role {
    type Err = ParseRoleError;

    /// Exact, lowercase match, as in tokens.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| ParseRoleError(s.to_owned()))
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The `sub` claim: a user, supplier or service id.
    pub subject: String,
    pub role: Role,
}

/// The claims of a Trade Assurance token, as minted by [`TokenIssuer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// Not-before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Token verification settings, flattened into each service's configuration.
///
/// At least one of `--auth-jwt-hs256-secret` and
/// `--auth-jwt-rs256-public-keys-file` must be given; with both, either kind
/// of token is accepted. `Debug` never prints the secret.
#[derive(clap::Args, Clone)]
pub struct AuthConfig {
    /// Expected `iss` (issuer) claim of bearer tokens.
    #[arg(
        long = "auth-jwt-issuer",
        env = "AUTH_JWT_ISSUER",
        value_name = "AUTH_JWT_ISSUER",
        default_value = DEFAULT_ISSUER
    )]
    pub issuer: String,

    /// Expected `aud` (audience) claim of bearer tokens.
    #[arg(
        long = "auth-jwt-audience",
        env = "AUTH_JWT_AUDIENCE",
        value_name = "AUTH_JWT_AUDIENCE",
        default_value = DEFAULT_AUDIENCE
    )]
    pub audience: String,

    /// Shared secret for HS256 tokens, at least 16 bytes. For local
    /// development and tests; deployed environments should use RS256 keys.
    #[arg(
        long = "auth-jwt-hs256-secret",
        env = "AUTH_JWT_HS256_SECRET",
        hide_env_values = true,
        value_name = "AUTH_JWT_HS256_SECRET"
    )]
    pub hs256_secret: Option<String>,

    /// PEM file with one or more RSA public keys (`PUBLIC KEY` or
    /// `RSA PUBLIC KEY` blocks) accepted for RS256 tokens; every key is
    /// tried, so old and new keys can overlap during a rotation.
    #[arg(
        long = "auth-jwt-rs256-public-keys-file",
        env = "AUTH_JWT_RS256_PUBLIC_KEYS_FILE",
        value_name = "AUTH_JWT_RS256_PUBLIC_KEYS_FILE"
    )]
    pub rs256_public_keys_file: Option<PathBuf>,

    /// Clock-skew tolerance, in seconds, when checking `exp` and `nbf`.
    #[arg(
        long = "auth-jwt-leeway-seconds",
        env = "AUTH_JWT_LEEWAY_SECONDS",
        default_value_t = DEFAULT_LEEWAY_SECONDS,
        value_name = "AUTH_JWT_LEEWAY_SECONDS"
    )]
    pub leeway_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            hs256_secret: None,
            rs256_public_keys_file: None,
            leeway_seconds: DEFAULT_LEEWAY_SECONDS,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("rs256_public_keys_file", &self.rs256_public_keys_file)
            .field("leeway_seconds", &self.leeway_seconds)
            .finish()
    }
}

/// Invalid [`AuthConfig`]; the message names the environment variable at fault
/// and never contains the secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    #[error(
        "no token verification key configured: set {ENV_HS256_SECRET} or {ENV_RS256_KEYS_FILE}"
    )]
    NoVerificationKey,
    #[error("{ENV_HS256_SECRET} is not set (it is required here)")]
    MissingSecret,
    #[error("{ENV_HS256_SECRET} must be at least {MIN_HS256_SECRET_LEN} bytes long")]
    SecretTooShort,
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{ENV_RS256_KEYS_FILE}: cannot read {}: {source}", path.display())]
    KeyFileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{ENV_RS256_KEYS_FILE}: {} is not a valid RSA public key file: {reason}", path.display())]
    KeyFileInvalid { path: PathBuf, reason: String },
}

fn checked_secret(secret: Option<&str>) -> Result<Option<&[u8]>, AuthConfigError> {
    match secret {
        None => Ok(None),
        Some(s) if s.len() < MIN_HS256_SECRET_LEN => Err(AuthConfigError::SecretTooShort),
        Some(s) => Ok(Some(s.as_bytes())),
    }
}

fn non_empty<'a>(value: &'a str, variable: &'static str) -> Result<&'a str, AuthConfigError> {
    if value.trim().is_empty() {
        Err(AuthConfigError::Empty(variable))
    } else {
        Ok(value)
    }
}

// ---------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------

/// Why a request was not authenticated. The `Display` text is sent to the
/// client in the `UNAUTHENTICATED` status, so it never contains the token,
/// a secret or key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("authorization header must be `Bearer <token>`")]
    InvalidAuthorizationHeader,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm {0} is not accepted")]
    UnsupportedAlgorithm(String),
    #[error("invalid token signature")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("token claim `{0}` is invalid")]
    InvalidClaim(String),
    #[error("unknown role `{0}` in token")]
    UnknownRole(String),
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        tonic::Status::unauthenticated(err.to_string())
    }
}

fn map_jwt_error(err: &jsonwebtoken::errors::Error) -> AuthError {
    match err.kind() {
        JwtErrorKind::InvalidSignature => AuthError::BadSignature,
        JwtErrorKind::ExpiredSignature => AuthError::Expired,
        JwtErrorKind::ImmatureSignature => AuthError::NotYetValid,
        JwtErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        JwtErrorKind::InvalidAudience => AuthError::WrongAudience,
        JwtErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
        JwtErrorKind::InvalidClaimFormat(claim) => AuthError::InvalidClaim(claim.clone()),
        // Whatever else (bad base64/JSON, wrong shape, ...) is a malformed
        // token; the details stay in the debug log.
        _ => AuthError::Malformed,
    }
}

/// The claims read by [`TokenVerifier::verify`]; `exp`, `nbf`, `iss` and `aud`
/// are checked by jsonwebtoken itself (it accepts `aud` as string or array).
/// Lenient so that a missing or unknown role gets its own error.
#[derive(Deserialize)]
struct VerifiedClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

/// Checks bearer tokens. Build it once with [`TokenVerifier::from_config`]
/// and share it (`Arc`).
pub struct TokenVerifier {
    hs256: Option<DecodingKey>,
    rs256: Vec<DecodingKey>,
    hs256_validation: Validation,
    rs256_validation: Validation,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("rs256_keys", &self.rs256.len())
            .field("issuer", &self.hs256_validation.iss)
            .field("audience", &self.hs256_validation.aud)
            .field("leeway", &self.hs256_validation.leeway)
            .finish()
    }
}

impl TokenVerifier {
    /// Loads the keys named by `config`.
    ///
    /// Fails when neither `AUTH_JWT_HS256_SECRET` nor
    /// `AUTH_JWT_RS256_PUBLIC_KEYS_FILE` is set, when the secret is shorter
    /// than 16 bytes, when issuer or audience is empty, or when the key file
    /// cannot be read or holds anything but RSA public keys.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let issuer = non_empty(&config.issuer, ENV_ISSUER)?;
        let audience = non_empty(&config.audience, ENV_AUDIENCE)?;
        let hs256 = checked_secret(config.hs256_secret.as_deref())?.map(DecodingKey::from_secret);
        let rs256 = match &config.rs256_public_keys_file {
            Some(path) => load_rsa_public_keys(path)?,
            None => Vec::new(),
        };
        if hs256.is_none() && rs256.is_empty() {
            return Err(AuthConfigError::NoVerificationKey);
        }
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = config.leeway_seconds;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.validate_aud = true;
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.set_issuer(&[issuer]);
            v.set_audience(&[audience]);
            v
        };
        Ok(Self {
            hs256,
            rs256,
            hs256_validation: validation(Algorithm::HS256),
            rs256_validation: validation(Algorithm::RS256),
        })
    }

    /// Verifies `token` (without the `Bearer ` prefix): signature (HS256 or
    /// RS256 only, whichever is configured), `exp`/`nbf` with leeway, `iss`,
    /// `aud`, a non-empty `sub` and a known `role`.
    ///
    /// The RS256 keys are tried in file order; the `kid` header is ignored
    /// since PEM files carry no key ids.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        // `alg: none` and unknown algorithms fail to parse here.
        let header = jsonwebtoken::decode_header(token).map_err(|err| {
            tracing::debug!(error = %err, "unparseable token header");
            AuthError::Malformed
        })?;
        let claims = match (header.alg, &self.hs256) {
            (Algorithm::HS256, Some(key)) => decode(token, key, &self.hs256_validation)?,
            (Algorithm::RS256, _) if !self.rs256.is_empty() => self.decode_rs256(token)?,
            (alg, _) => return Err(AuthError::UnsupportedAlgorithm(format!("{alg:?}"))),
        };
        let subject = match claims.sub {
            // Subjects are stored (owners, idempotency scopes): printable and bounded.
            Some(sub)
                if !sub.trim().is_empty()
                    && sub.len() <= MAX_SUBJECT_LEN
                    && !sub.chars().any(char::is_control) =>
            {
                sub
            }
            _ => return Err(AuthError::InvalidClaim("sub".to_owned())),
        };
        let role = match claims.role {
            None => return Err(AuthError::MissingClaim("role".to_owned())),
            Some(role) => role.parse().map_err(|_| AuthError::UnknownRole(role))?,
        };
        Ok(Principal { subject, role })
    }

    fn decode_rs256(&self, token: &str) -> Result<VerifiedClaims, AuthError> {
        for key in &self.rs256 {
            match decode(token, key, &self.rs256_validation) {
                Err(AuthError::BadSignature) => {} // try the next key
                other => return other,
            }
        }
        Err(AuthError::BadSignature)
    }
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<VerifiedClaims, AuthError> {
    jsonwebtoken::decode::<VerifiedClaims>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|err| {
            if !matches!(err.kind(), JwtErrorKind::InvalidSignature) {
                tracing::debug!(error = %err, "token rejected");
            }
            map_jwt_error(&err)
        })
}

fn load_rsa_public_keys(path: &Path) -> Result<Vec<DecodingKey>, AuthConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| AuthConfigError::KeyFileUnreadable {
            path: path.to_owned(),
            source,
        })?;
    let invalid = |reason: String| AuthConfigError::KeyFileInvalid {
        path: path.to_owned(),
        reason,
    };
    let blocks = pem_blocks(&text);
    if blocks.is_empty() {
        return Err(invalid("no PEM block found".to_owned()));
    }
    blocks
        .iter()
        .enumerate()
        .map(|(i, block)| {
            if !block.starts_with("-----BEGIN PUBLIC KEY-----")
                && !block.starts_with("-----BEGIN RSA PUBLIC KEY-----")
            {
                return Err(invalid(format!("key #{}: not an RSA public key", i + 1)));
            }
            DecodingKey::from_rsa_pem(block.as_bytes())
                .map_err(|e| invalid(format!("key #{}: {e}", i + 1)))
        })
        .collect()
}

/// The `-----BEGIN` ... `-----END` blocks of a PEM file, in order; a file may
/// hold several keys during a rotation.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
            if line.starts_with("-----END ") {
                blocks.extend(current.take());
            }
        }
    }
    blocks
}

// ---------------------------------------------------------------------------
// Minting
// ---------------------------------------------------------------------------

/// Minting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    #[error("subject must not be empty")]
    EmptySubject,
    #[error("token lifetime is out of range")]
    TtlOutOfRange,
    #[error("cannot sign token: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
}

/// Mints HS256 tokens, for the `mint-token` CLI and tests.
pub struct TokenIssuer {
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// No checks on the secret: use [`TokenIssuer::from_config`] for that.
    pub fn new(
        secret: impl AsRef<[u8]>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_ref()),
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    /// Uses the HS256 secret, issuer and audience of `config`, with the same
    /// checks as [`TokenVerifier::from_config`]; the secret is required.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let issuer = non_empty(&config.issuer, ENV_ISSUER)?;
        let audience = non_empty(&config.audience, ENV_AUDIENCE)?;
        let secret = checked_secret(config.hs256_secret.as_deref())?
            .ok_or(AuthConfigError::MissingSecret)?;
        Ok(Self::new(secret, issuer, audience))
    }

    /// A token for `subject` with `role`, valid from now for `ttl`.
    pub fn mint(&self, subject: &str, role: Role, ttl: Duration) -> Result<String, MintError> {
        let exp = unix_now()
            .checked_add(ttl.as_secs())
            .ok_or(MintError::TtlOutOfRange)?;
        self.mint_expiring_at(subject, role, exp)
    }

    /// A token expiring at `exp_unix_secs`, which may be in the past (to test
    /// expiry). `iat` is now, or `exp` if that is earlier.
    pub fn mint_expiring_at(
        &self,
        subject: &str,
        role: Role,
        exp_unix_secs: u64,
    ) -> Result<String, MintError> {
        if subject.trim().is_empty() {
            return Err(MintError::EmptySubject);
        }
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: exp_unix_secs,
            iat: unix_now().min(exp_unix_secs),
            nbf: None,
        };
        self.sign(&claims)
    }

    /// Signs arbitrary `claims` as they are.
    pub fn sign(&self, claims: &Claims) -> Result<String, MintError> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.key,
        )?)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------
// Method policy
// ---------------------------------------------------------------------------

/// Whether `path` (`/package.Service/Method`) may be called without a token:
/// gRPC health checking and server reflection.
pub fn is_public_path(path: &str) -> bool {
    PUBLIC_PATH_PREFIXES
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// Which roles may call which gRPC method; methods not listed are denied.
#[derive(Clone, Debug, Default)]
pub struct MethodPolicy {
    methods: HashMap<String, Vec<Role>>,
}

impl MethodPolicy {
    /// An empty policy, denying everything.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows `roles` to call `path`, the full method path
    /// (`"/tradeassurance.supplier.v1.SupplierRegistryService/GetSupplier"`).
    /// Calling it again for the same path adds roles.
    ///
    /// # Panics
    ///
    /// If `path` is not of the form `/package.Service/Method`: a typo would
    /// otherwise silently deny the method.
    #[must_use]
    pub fn allow(mut self, path: impl Into<String>, roles: &[Role]) -> Self {
        let path = path.into();
        assert!(
            is_method_path(&path),
            "MethodPolicy::allow: `{path}` is not a gRPC method path (/package.Service/Method)"
        );
        let allowed = self.methods.entry(path).or_default();
        for role in roles {
            if !allowed.contains(role) {
                allowed.push(*role);
            }
        }
        self
    }

    /// The roles allowed to call `path`, or `None` if the policy does not
    /// list it.
    pub fn allowed(&self, path: &str) -> Option<&[Role]> {
        self.methods.get(path).map(Vec::as_slice)
    }

    /// Whether `role` may call `path`.
    pub fn permits(&self, path: &str, role: Role) -> bool {
        self.allowed(path)
            .is_some_and(|roles| roles.contains(&role))
    }
}

fn is_method_path(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, method)| {
            !service.is_empty() && !method.is_empty() && !method.contains('/')
        })
}

/// `/pkg.v1.SupplierRegistryService/VerifySupplier` →
/// `SupplierRegistryService/VerifySupplier`.
fn short_method_name(path: &str) -> &str {
    let path = path.strip_prefix('/').unwrap_or(path);
    match path.split_once('/') {
        Some((service, _)) => match service.rfind('.') {
            Some(dot) => &path[dot + 1..],
            None => path,
        },
        None => path,
    }
}

// ---------------------------------------------------------------------------
// Tower layer
// ---------------------------------------------------------------------------

/// Authenticates and authorises every gRPC call; see the module docs.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
    policy: Arc<MethodPolicy>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<TokenVerifier>, policy: Arc<MethodPolicy>) -> Self {
        Self { verifier, policy }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: Arc::clone(&self.verifier),
            policy: Arc::clone(&self.policy),
        }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Arc<TokenVerifier>,
    policy: Arc<MethodPolicy>,
}

/// Why [`AuthService`] answers a call itself.
enum Rejection {
    Unauthenticated(AuthError),
    PermissionDenied(String),
}

impl Rejection {
    fn into_response(self) -> http::Response<tonic::body::Body> {
        match self {
            Rejection::Unauthenticated(err) => tonic::Status::from(err),
            Rejection::PermissionDenied(message) => tonic::Status::permission_denied(message),
        }
        .into_http()
    }
}

impl<S> AuthService<S> {
    /// The principal for a call to `path` with these headers.
    fn authorize(&self, path: &str, headers: &http::HeaderMap) -> Result<Principal, Rejection> {
        let principal = bearer_token(headers)
            .and_then(|token| self.verifier.verify(token))
            .map_err(|err| {
                tracing::debug!(method = path, reason = %err, "unauthenticated call rejected");
                Rejection::Unauthenticated(err)
            })?;
        if self.policy.permits(path, principal.role) {
            return Ok(principal);
        }
        tracing::info!(
            method = path,
            subject = %principal.subject,
            role = %principal.role,
            listed = self.policy.allowed(path).is_some(),
            "call denied by method policy"
        );
        let method = short_method_name(path);
        Err(Rejection::PermissionDenied(
            if self.policy.allowed(path).is_some() {
                format!("role {} may not call {method}", principal.role)
            } else {
                // Deny by default, and say why: no role may call it here.
                format!("{method} is not served by this server")
            },
        ))
    }
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = crate::server::ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if !is_public_path(path) {
            match self.authorize(path, request.headers()) {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                }
                // The inner service stays ready (and unused) for the next call.
                Err(rejection) => {
                    return Box::pin(std::future::ready(Ok(rejection.into_response())));
                }
            }
        }
        // The decision is synchronous, so the inner service polled ready in
        // `poll_ready` is called right here: no clone-and-swap is needed
        // (that pattern is for calls made later, from inside a future).
        Box::pin(self.inner.call(request))
    }
}

/// The token of the single `authorization: Bearer <token>` header.
fn bearer_token(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingToken)?;
    if values.next().is_some() {
        return Err(AuthError::InvalidAuthorizationHeader);
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::InvalidAuthorizationHeader)?;
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if token.is_empty() || token.contains(char::is_whitespace) {
                Err(AuthError::InvalidAuthorizationHeader)
            } else {
                Ok(token)
            }
        }
        _ => Err(AuthError::InvalidAuthorizationHeader),
    }
}

// ---------------------------------------------------------------------------
// Handler and client helpers
// ---------------------------------------------------------------------------

/// The [`Principal`] that [`AuthLayer`] attached to `request`.
///
/// Returns `UNAUTHENTICATED` when there is none, e.g. when the layer is
/// missing from the server or the method is public.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("request is not authenticated"))
}

/// The `authorization` metadata value `Bearer <token>`, for clients and tests:
/// `request.metadata_mut().insert("authorization", bearer_metadata(&token))`.
///
/// # Panics
///
/// If `token` contains characters not allowed in a header value; JWTs never do.
pub fn bearer_metadata(token: &str) -> MetadataValue<Ascii> {
    MetadataValue::try_from(format!("Bearer {token}"))
        .expect("a bearer token must be printable ASCII")
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use tower::{Layer, ServiceExt};

    use super::*;

    const SECRET: &str = "0123456789abcdef-test-secret";
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    const GET_SUPPLIER: &str = "/tradeassurance.supplier.v1.SupplierRegistryService/GetSupplier";
    const VERIFY_SUPPLIER: &str =
        "/tradeassurance.supplier.v1.SupplierRegistryService/VerifySupplier";

    fn fixture(name: &str) -> PathBuf {
        Path::new(FIXTURES).join(name)
    }

    fn hs256_config() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some(SECRET.to_owned()),
            ..AuthConfig::default()
        }
    }

    fn rs256_config() -> AuthConfig {
        AuthConfig {
            rs256_public_keys_file: Some(fixture("rs256_public_keys.pem")),
            ..AuthConfig::default()
        }
    }

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(SECRET, DEFAULT_ISSUER, DEFAULT_AUDIENCE)
    }

    fn hs256_verifier() -> TokenVerifier {
        TokenVerifier::from_config(&hs256_config()).unwrap()
    }

    fn in_one_hour() -> u64 {
        unix_now() + 3600
    }

    fn claims_json(role: &str) -> serde_json::Value {
        serde_json::json!({
            "sub": "user-1",
            "role": role,
            "iss": DEFAULT_ISSUER,
            "aud": DEFAULT_AUDIENCE,
            "exp": in_one_hour(),
            "iat": unix_now(),
        })
    }

    /// An RS256 token signed with the private key of fixture `key` (a, b, c).
    fn rs256_token(key: &str, claims: &serde_json::Value) -> String {
        let pem = std::fs::read(fixture(&format!("rs256_{key}_private.pem"))).unwrap();
        let key = EncodingKey::from_rsa_pem(&pem).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
    }

    fn hs256_token(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    // --- roles -------------------------------------------------------------

    #[test]
    fn role_round_trips_through_str_and_serde() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
            assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), role);
        }
        assert!("Buyer".parse::<Role>().is_err());
        assert!("admin".parse::<Role>().is_err());
    }

    // --- verification --------------------------------------------------------

    #[test]
    fn hs256_happy_path() {
        let token = issuer()
            .mint("buyer-42", Role::Buyer, Duration::from_secs(600))
            .unwrap();
        assert_eq!(
            hs256_verifier().verify(&token),
            Ok(Principal {
                subject: "buyer-42".to_owned(),
                role: Role::Buyer,
            })
        );
    }

    #[test]
    fn rs256_happy_path_with_every_key_of_the_file() {
        let verifier = TokenVerifier::from_config(&rs256_config()).unwrap();
        for (key, role) in [("a", "inspector"), ("b", "service")] {
            let principal = verifier
                .verify(&rs256_token(key, &claims_json(role)))
                .unwrap();
            assert_eq!(principal.subject, "user-1");
            assert_eq!(principal.role.as_str(), role);
        }
    }

    #[test]
    fn rs256_token_from_unknown_key_is_a_bad_signature() {
        let verifier = TokenVerifier::from_config(&rs256_config()).unwrap();
        let token = rs256_token("c", &claims_json("buyer"));
        assert_eq!(verifier.verify(&token), Err(AuthError::BadSignature));
    }

    #[test]
    fn both_algorithms_when_both_are_configured() {
        let config = AuthConfig {
            hs256_secret: Some(SECRET.to_owned()),
            ..rs256_config()
        };
        let verifier = TokenVerifier::from_config(&config).unwrap();
        assert!(verifier.verify(&hs256_token(&claims_json("buyer"))).is_ok());
        assert!(
            verifier
                .verify(&rs256_token("a", &claims_json("buyer")))
                .is_ok()
        );
    }

    #[test]
    fn expired_token_is_rejected() {
        let token = issuer()
            .mint_expiring_at("buyer-42", Role::Buyer, unix_now() - 3600)
            .unwrap();
        assert_eq!(hs256_verifier().verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn expiry_within_leeway_is_accepted() {
        let token = issuer()
            .mint_expiring_at("buyer-42", Role::Buyer, unix_now() - 5)
            .unwrap();
        assert!(hs256_verifier().verify(&token).is_ok());
        let strict = TokenVerifier::from_config(&AuthConfig {
            leeway_seconds: 0,
            ..hs256_config()
        })
        .unwrap();
        assert_eq!(strict.verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn future_nbf_is_rejected() {
        let mut claims = claims_json("buyer");
        claims["nbf"] = (unix_now() + 3600).into();
        assert_eq!(
            hs256_verifier().verify(&hs256_token(&claims)),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn wrong_issuer_is_rejected() {
        let token = TokenIssuer::new(SECRET, "someone-else", DEFAULT_AUDIENCE)
            .mint("buyer-42", Role::Buyer, Duration::from_secs(600))
            .unwrap();
        assert_eq!(hs256_verifier().verify(&token), Err(AuthError::WrongIssuer));
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let token = TokenIssuer::new(SECRET, DEFAULT_ISSUER, "another-platform")
            .mint("buyer-42", Role::Buyer, Duration::from_secs(600))
            .unwrap();
        assert_eq!(
            hs256_verifier().verify(&token),
            Err(AuthError::WrongAudience)
        );
    }

    #[test]
    fn audience_array_containing_ours_is_accepted() {
        let mut claims = claims_json("buyer");
        claims["aud"] = serde_json::json!(["other", DEFAULT_AUDIENCE]);
        assert!(hs256_verifier().verify(&hs256_token(&claims)).is_ok());
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let token = TokenIssuer::new(
            "another-secret-of-enough-length",
            DEFAULT_ISSUER,
            DEFAULT_AUDIENCE,
        )
        .mint("buyer-42", Role::Buyer, Duration::from_secs(600))
        .unwrap();
        assert_eq!(
            hs256_verifier().verify(&token),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_is_a_bad_signature() {
        let token = hs256_token(&claims_json("buyer"));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64url(claims_json("operator").to_string().as_bytes());
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(
            hs256_verifier().verify(&tampered),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_rejected() {
        let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64url(claims_json("operator").to_string().as_bytes());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert_eq!(hs256_verifier().verify(&token), Err(AuthError::Malformed));
        }
    }

    #[test]
    fn hs256_token_is_rejected_by_rs256_only_verifier() {
        let verifier = TokenVerifier::from_config(&rs256_config()).unwrap();
        let token = hs256_token(&claims_json("operator"));
        assert_eq!(
            verifier.verify(&token),
            Err(AuthError::UnsupportedAlgorithm("HS256".to_owned()))
        );
    }

    #[test]
    fn rs256_token_is_rejected_by_hs256_only_verifier() {
        let token = rs256_token("a", &claims_json("operator"));
        assert_eq!(
            hs256_verifier().verify(&token),
            Err(AuthError::UnsupportedAlgorithm("RS256".to_owned()))
        );
    }

    #[test]
    fn other_algorithms_are_rejected() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims_json("buyer"),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            hs256_verifier().verify(&token),
            Err(AuthError::UnsupportedAlgorithm("HS512".to_owned()))
        );
    }

    #[test]
    fn unknown_or_missing_role_is_rejected() {
        let verifier = hs256_verifier();
        assert_eq!(
            verifier.verify(&hs256_token(&claims_json("admin"))),
            Err(AuthError::UnknownRole("admin".to_owned()))
        );
        let mut claims = claims_json("buyer");
        claims.as_object_mut().unwrap().remove("role");
        assert_eq!(
            verifier.verify(&hs256_token(&claims)),
            Err(AuthError::MissingClaim("role".to_owned()))
        );
    }

    #[test]
    fn unprintable_or_overlong_subjects_are_rejected() {
        let verifier = hs256_verifier();
        for bad in [
            "ops\u{0}1".to_owned(),
            "line\nbreak".to_owned(),
            "x".repeat(129),
        ] {
            let mut claims = claims_json("buyer");
            claims["sub"] = bad.into();
            assert_eq!(
                verifier.verify(&hs256_token(&claims)),
                Err(AuthError::InvalidClaim("sub".to_owned()))
            );
        }
    }

    #[test]
    fn missing_or_empty_subject_is_rejected() {
        let verifier = hs256_verifier();
        let mut claims = claims_json("buyer");
        claims["sub"] = "".into();
        assert_eq!(
            verifier.verify(&hs256_token(&claims)),
            Err(AuthError::InvalidClaim("sub".to_owned()))
        );
        claims.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            verifier.verify(&hs256_token(&claims)),
            Err(AuthError::MissingClaim("sub".to_owned()))
        );
    }

    #[test]
    fn missing_exp_issuer_or_audience_is_rejected() {
        for claim in ["exp", "iss", "aud"] {
            let mut claims = claims_json("buyer");
            claims.as_object_mut().unwrap().remove(claim);
            assert_eq!(
                hs256_verifier().verify(&hs256_token(&claims)),
                Err(AuthError::MissingClaim(claim.to_owned())),
                "{claim}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed() {
        for token in ["", "abc", "a.b.c", "...."] {
            assert_eq!(hs256_verifier().verify(token), Err(AuthError::Malformed));
        }
    }

    #[test]
    fn error_messages_do_not_leak_the_token_or_secret() {
        let token = TokenIssuer::new(
            "another-secret-of-enough-length",
            DEFAULT_ISSUER,
            DEFAULT_AUDIENCE,
        )
        .mint("buyer-42", Role::Buyer, Duration::from_secs(600))
        .unwrap();
        let message = hs256_verifier().verify(&token).unwrap_err().to_string();
        assert_eq!(message, "invalid token signature");
        assert!(!message.contains(SECRET) && !message.contains(&token));
    }

    // --- configuration -------------------------------------------------------

    fn config_error(config: AuthConfig) -> String {
        TokenVerifier::from_config(&config).unwrap_err().to_string()
    }

    #[test]
    fn config_without_any_key_names_both_variables() {
        let message = config_error(AuthConfig::default());
        assert!(message.contains("AUTH_JWT_HS256_SECRET"), "{message}");
        assert!(
            message.contains("AUTH_JWT_RS256_PUBLIC_KEYS_FILE"),
            "{message}"
        );
    }

    #[test]
    fn short_secret_names_the_variable_without_its_value() {
        let message = config_error(AuthConfig {
            hs256_secret: Some("short-secret".to_owned()),
            ..AuthConfig::default()
        });
        assert!(message.contains("AUTH_JWT_HS256_SECRET"), "{message}");
        assert!(!message.contains("short-secret"), "{message}");
    }

    #[test]
    fn unreadable_key_file_names_the_variable() {
        let message = config_error(AuthConfig {
            rs256_public_keys_file: Some(fixture("does-not-exist.pem")),
            ..AuthConfig::default()
        });
        assert!(
            message.contains("AUTH_JWT_RS256_PUBLIC_KEYS_FILE"),
            "{message}"
        );
        assert!(message.contains("does-not-exist.pem"), "{message}");
    }

    #[test]
    fn invalid_key_files_name_the_variable() {
        let dir = std::env::temp_dir().join(format!("ta-runtime-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let private = std::fs::read_to_string(fixture("rs256_a_private.pem")).unwrap();
        let public = std::fs::read_to_string(fixture("rs256_a_public.pem")).unwrap();
        let cases = [
            ("empty.pem", String::new(), "no PEM block"),
            ("private.pem", private, "not an RSA public key"),
            (
                "garbage.pem",
                "-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n".to_owned(),
                "key #1",
            ),
            (
                "truncated.pem",
                public.replace("-----END PUBLIC KEY-----", ""),
                "no PEM block",
            ),
        ];
        for (name, content, expected) in cases {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            let message = config_error(AuthConfig {
                rs256_public_keys_file: Some(path),
                ..AuthConfig::default()
            });
            assert!(
                message.contains("AUTH_JWT_RS256_PUBLIC_KEYS_FILE"),
                "{message}"
            );
            assert!(message.contains(expected), "{name}: {message}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_issuer_names_the_variable() {
        let message = config_error(AuthConfig {
            issuer: " ".to_owned(),
            ..hs256_config()
        });
        assert!(message.contains("AUTH_JWT_ISSUER"), "{message}");
    }

    #[test]
    fn pkcs1_public_keys_verify_like_spki_ones() {
        let verifier = TokenVerifier::from_config(&AuthConfig {
            rs256_public_keys_file: Some(fixture("rs256_a_public_pkcs1.pem")),
            ..AuthConfig::default()
        })
        .unwrap();
        let principal = verifier
            .verify(&rs256_token("a", &claims_json("operator")))
            .unwrap();
        assert_eq!(principal.role, Role::Operator);
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let config = hs256_config();
        assert!(!format!("{config:?}").contains(SECRET));
        assert!(!format!("{:?}", issuer()).contains(SECRET));
        assert!(!format!("{:?}", hs256_verifier()).contains(SECRET));
    }

    #[test]
    fn clap_reads_the_environment_names_and_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            auth: AuthConfig,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "svc",
            "--auth-jwt-hs256-secret",
            SECRET,
            "--auth-jwt-leeway-seconds",
            "5",
        ])
        .unwrap();
        assert_eq!(cli.auth.issuer, DEFAULT_ISSUER);
        assert_eq!(cli.auth.audience, DEFAULT_AUDIENCE);
        assert_eq!(cli.auth.leeway_seconds, 5);
        assert_eq!(cli.auth.hs256_secret.as_deref(), Some(SECRET));
        let command = <Cli as clap::CommandFactory>::command();
        let envs: Vec<_> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
            .collect();
        for env in [
            ENV_ISSUER,
            ENV_AUDIENCE,
            ENV_HS256_SECRET,
            ENV_RS256_KEYS_FILE,
            "AUTH_JWT_LEEWAY_SECONDS",
        ] {
            assert!(envs.iter().any(|e| e == env), "{env} missing");
        }
    }

    // --- mint ----------------------------------------------------------------

    #[test]
    fn minted_claims_are_complete() {
        let token = issuer()
            .mint("supplier-7", Role::Supplier, Duration::from_secs(3600))
            .unwrap();
        let claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
        assert_eq!(claims.sub, "supplier-7");
        assert_eq!(claims.role, Role::Supplier);
        assert_eq!(claims.iss, DEFAULT_ISSUER);
        assert_eq!(claims.aud, DEFAULT_AUDIENCE);
        assert_eq!(claims.exp - claims.iat, 3600);
        assert_eq!(claims.nbf, None);
        assert!(matches!(
            issuer().mint(" ", Role::Buyer, Duration::from_secs(1)),
            Err(MintError::EmptySubject)
        ));
    }

    #[test]
    fn issuer_from_config_requires_a_long_enough_secret() {
        assert!(matches!(
            TokenIssuer::from_config(&AuthConfig::default()),
            Err(AuthConfigError::MissingSecret)
        ));
        assert!(matches!(
            TokenIssuer::from_config(&AuthConfig {
                hs256_secret: Some("short".to_owned()),
                ..AuthConfig::default()
            }),
            Err(AuthConfigError::SecretTooShort)
        ));
        assert!(TokenIssuer::from_config(&hs256_config()).is_ok());
    }

    // --- policy --------------------------------------------------------------

    fn policy() -> MethodPolicy {
        MethodPolicy::new()
            .allow(GET_SUPPLIER, &[Role::Buyer, Role::Supplier])
            .allow(VERIFY_SUPPLIER, &[Role::Inspector])
            .allow(GET_SUPPLIER, &[Role::Buyer, Role::Operator])
    }

    #[test]
    fn policy_is_deny_by_default_and_merges_roles() {
        let policy = policy();
        assert_eq!(
            policy.allowed(GET_SUPPLIER),
            Some(&[Role::Buyer, Role::Supplier, Role::Operator][..])
        );
        assert!(policy.permits(VERIFY_SUPPLIER, Role::Inspector));
        assert!(!policy.permits(VERIFY_SUPPLIER, Role::Buyer));
        assert_eq!(
            policy.allowed("/tradeassurance.supplier.v1.SupplierRegistryService/Nope"),
            None
        );
        assert!(!MethodPolicy::new().permits(GET_SUPPLIER, Role::Operator));
    }

    #[test]
    #[should_panic(expected = "not a gRPC method path")]
    fn policy_rejects_malformed_paths() {
        let _ = MethodPolicy::new().allow("SupplierRegistryService.GetSupplier", &[Role::Buyer]);
    }

    #[test]
    fn public_paths() {
        assert!(is_public_path("/grpc.health.v1.Health/Check"));
        assert!(is_public_path("/grpc.health.v1.Health/Watch"));
        assert!(is_public_path(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(is_public_path(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_public_path("/grpc.health.v1.HealthX/Check"));
        assert!(!is_public_path(GET_SUPPLIER));
        assert_eq!(
            short_method_name(VERIFY_SUPPLIER),
            "SupplierRegistryService/VerifySupplier"
        );
    }

    // --- layer ---------------------------------------------------------------

    /// What the inner service saw: `None` if it was not called, else the
    /// principal in the request extensions (if any).
    type Seen = Arc<Mutex<Option<Option<Principal>>>>;

    fn service(
        seen: Seen,
    ) -> AuthService<
        impl tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future = impl Send,
        > + Clone,
    > {
        let inner = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
            let seen = Arc::clone(&seen);
            async move {
                *seen.lock().unwrap() = Some(request.extensions().get::<Principal>().cloned());
                Ok::<_, Infallible>(http::Response::new(tonic::body::Body::default()))
            }
        });
        AuthLayer::new(Arc::new(hs256_verifier()), Arc::new(policy())).layer(inner)
    }

    fn request(path: &str, authorization: Option<&str>) -> http::Request<tonic::body::Body> {
        let mut builder = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc");
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        builder.body(tonic::body::Body::default()).unwrap()
    }

    async fn call(
        authorization: Option<&str>,
        path: &str,
    ) -> (http::Response<tonic::body::Body>, Option<Option<Principal>>) {
        let seen = Seen::default();
        let response = service(Arc::clone(&seen))
            .oneshot(request(path, authorization))
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        (response, seen)
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap())
    }

    fn status(response: &http::Response<tonic::body::Body>) -> tonic::Status {
        tonic::Status::from_header_map(response.headers()).expect("a grpc-status header")
    }

    fn bearer(role: Role) -> String {
        let token = issuer()
            .mint("user-1", role, Duration::from_secs(600))
            .unwrap();
        format!("Bearer {token}")
    }

    #[tokio::test]
    async fn public_path_passes_without_token() {
        let (response, seen) = call(None, "/grpc.health.v1.Health/Check").await;
        assert_eq!(grpc_status(&response), None);
        assert_eq!(seen, Some(None));
    }

    #[tokio::test]
    async fn missing_token_is_unauthenticated_and_inner_not_called() {
        let (response, seen) = call(None, GET_SUPPLIER).await;
        assert_eq!(grpc_status(&response), Some("16"));
        assert_eq!(status(&response).message(), "missing bearer token");
        assert_eq!(seen, None);
    }

    #[tokio::test]
    async fn malformed_header_or_bad_token_is_unauthenticated() {
        let expired = issuer()
            .mint_expiring_at("user-1", Role::Buyer, unix_now() - 3600)
            .unwrap();
        let cases = [
            (
                "Basic dXNlcjpwYXNz".to_owned(),
                "authorization header must be `Bearer <token>`",
            ),
            (
                "Bearer".to_owned(),
                "authorization header must be `Bearer <token>`",
            ),
            (
                "Bearer ".to_owned(),
                "authorization header must be `Bearer <token>`",
            ),
            ("Bearer not-a-jwt".to_owned(), "malformed token"),
            (format!("Bearer {expired}"), "token has expired"),
        ];
        for (authorization, message) in cases {
            let (response, seen) = call(Some(&authorization), GET_SUPPLIER).await;
            assert_eq!(grpc_status(&response), Some("16"), "{authorization}");
            assert_eq!(status(&response).message(), message);
            assert_eq!(seen, None);
        }
    }

    #[tokio::test]
    async fn scheme_is_case_insensitive() {
        let token = issuer()
            .mint("user-1", Role::Buyer, Duration::from_secs(600))
            .unwrap();
        let (response, seen) = call(Some(&format!("bEaReR {token}")), GET_SUPPLIER).await;
        assert_eq!(grpc_status(&response), None);
        assert!(matches!(seen, Some(Some(_))));
    }

    #[tokio::test]
    async fn wrong_role_is_permission_denied() {
        let (response, seen) = call(Some(&bearer(Role::Buyer)), VERIFY_SUPPLIER).await;
        assert_eq!(grpc_status(&response), Some("7"));
        assert_eq!(
            status(&response).message(),
            "role buyer may not call SupplierRegistryService/VerifySupplier"
        );
        assert_eq!(seen, None);
    }

    #[tokio::test]
    async fn unknown_method_is_permission_denied() {
        let path = "/tradeassurance.supplier.v1.SupplierRegistryService/DeleteEverything";
        let (response, seen) = call(Some(&bearer(Role::Operator)), path).await;
        assert_eq!(grpc_status(&response), Some("7"));
        assert_eq!(
            status(&response).message(),
            "SupplierRegistryService/DeleteEverything is not served by this server"
        );
        assert_eq!(seen, None);
    }

    #[tokio::test]
    async fn unknown_method_without_token_is_unauthenticated() {
        let path = "/tradeassurance.supplier.v1.SupplierRegistryService/DeleteEverything";
        let (response, seen) = call(None, path).await;
        assert_eq!(grpc_status(&response), Some("16"));
        assert_eq!(seen, None);
    }

    #[tokio::test]
    async fn allowed_call_reaches_inner_with_principal() {
        let (response, seen) = call(Some(&bearer(Role::Supplier)), GET_SUPPLIER).await;
        assert_eq!(grpc_status(&response), None);
        assert_eq!(
            seen,
            Some(Some(Principal {
                subject: "user-1".to_owned(),
                role: Role::Supplier,
            }))
        );
    }

    #[test]
    fn principal_helper_reads_extensions() {
        let mut request = tonic::Request::new(());
        assert_eq!(
            principal(&request).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let expected = Principal {
            subject: "svc".to_owned(),
            role: Role::Service,
        };
        request.extensions_mut().insert(expected.clone());
        assert_eq!(principal(&request).unwrap(), expected);

        // The layer inserts into the http extensions; tonic carries them over.
        let mut http_request = http::Request::new(());
        http_request.extensions_mut().insert(expected.clone());
        assert_eq!(
            principal(&tonic::Request::from_http(http_request)).unwrap(),
            expected
        );
    }

    #[test]
    fn bearer_metadata_round_trips() {
        let token = issuer()
            .mint("user-1", Role::Buyer, Duration::from_secs(600))
            .unwrap();
        let value = bearer_metadata(&token);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(value.to_str().unwrap()).unwrap(),
        );
        assert_eq!(bearer_token(&headers), Ok(token.as_str()));
    }

    /// Compile-time check that the layer satisfies `Server::layer` + `serve`.
    #[test]
    fn layer_fits_tonic_server() {
        let layer = AuthLayer::new(Arc::new(hs256_verifier()), Arc::new(policy()));
        let router = tonic::transport::Server::builder()
            .layer(layer)
            .add_routes(tonic::service::Routes::default());
        // Never polled: only the bounds matter.
        drop(router.serve("127.0.0.1:0".parse().unwrap()));
    }
}
