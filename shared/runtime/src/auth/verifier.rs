//! Checking bearer tokens.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind as JwtErrorKind};
use serde::Deserialize;

use super::{
    MAX_SUBJECT_LEN, Principal, Role,
    config::{
        AuthConfig, AuthConfigError, ENV_AUDIENCE, ENV_ISSUER, ENV_PLATFORM_AUDIENCE,
        checked_secret, non_empty,
    },
    keys::KeySet,
    unix_now,
};

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
    #[error("token key id (kid) is missing or unknown")]
    UnknownKey,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token was issued in the future")]
    IssuedInTheFuture,
    #[error("token lifetime exceeds the maximum of {0} seconds")]
    LifetimeTooLong(u64),
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
    /// A service's key signing for another principal or role, or a people's
    /// key (or, beside a JWK set, the HS256 secret) signing a service token.
    #[error("token key may not sign for this subject and role")]
    KeyNotForPrincipal,
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
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(aud) => aud == wanted,
            Audience::Many(auds) => auds.iter().any(|aud| aud == wanted),
            Audience::None => false,
        }
    }
}

/// Checks bearer tokens. Build it once with [`TokenVerifier::from_config`]
/// and share it (`Arc`).
pub struct TokenVerifier {
    hs256: Option<DecodingKey>,
    rs256: Option<KeySet>,
    own_audience: String,
    leeway_seconds: u64,
    max_lifetime_seconds: u64,
    hs256_validation: Validation,
    rs256_validation: Validation,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("rs256_keys", &self.rs256.as_ref().map_or(0, KeySet::len))
            .field("own_audience", &self.own_audience)
            .field("max_lifetime_seconds", &self.max_lifetime_seconds)
            .field("issuer", &self.rs256_validation.iss)
            .finish()
    }
}

impl TokenVerifier {
    /// Loads the keys named by `config` for the service `service_name` (its
    /// default audience).
    ///
    /// Fails, naming the variable, when no key is configured, when the secret
    /// is shorter than 16 bytes, when it is one published with the source code
    /// and `AUTH_DEV_MODE` is not set, when HS256 is configured beside a JWK set
    /// without `AUTH_JWT_ALLOW_HS256`, when issuer or audience is empty, or
    /// when the JWK set cannot be read or holds an unusable key.
    pub fn from_config(config: &AuthConfig, service_name: &str) -> Result<Self, AuthConfigError> {
        let issuer = non_empty(&config.issuer, ENV_ISSUER)?;
        let own_audience = non_empty(config.own_audience(service_name), ENV_AUDIENCE)?;
        let platform_audience = non_empty(&config.platform_audience, ENV_PLATFORM_AUDIENCE)?;
        let rs256 = config.jwks_file.as_deref().map(KeySet::load).transpose()?;
        let hs256 = checked_secret(config.hs256_secret.as_deref())?.map(DecodingKey::from_secret);
        config.check_development_secret()?;
        if config.uses_published_secret() {
            tracing::warn!(
                "AUTH_DEV_MODE=true: accepting tokens signed with a development secret published \
                 with the source code; never do this in a deployment"
            );
        }
        if hs256.is_some() && rs256.is_some() && !config.allow_hs256 {
            return Err(AuthConfigError::Hs256BesideJwks);
        }
        if hs256.is_none() && rs256.is_none() {
            return Err(AuthConfigError::NoVerificationKey);
        }
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = config.leeway_seconds;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.validate_aud = true;
            // `iat` is required too, and checked below with the lifetime.
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.set_issuer(&[issuer]);
            // Either audience passes here; who may use which is checked after.
            v.set_audience(&[own_audience, platform_audience]);
            v
        };
        Ok(Self {
            hs256,
            rs256,
            own_audience: own_audience.to_owned(),
            leeway_seconds: config.leeway_seconds,
            max_lifetime_seconds: config.max_lifetime.as_secs(),
            hs256_validation: validation(Algorithm::HS256),
            rs256_validation: validation(Algorithm::RS256),
        })
    }

    /// Verifies `token` (without the `Bearer ` prefix): signature (HS256, or
    /// RS256 with the key its `kid` names), `exp`/`nbf` with leeway, `iat`
    /// (required, not in the future beyond the leeway, at most the maximum
    /// lifetime before `exp`), `iss`, `aud`, a non-empty `sub` and a known
    /// `role`. The key must be one that
    /// may sign for that subject and role (a service's key: only its own
    /// service tokens; a people's key: no service token). A service
    /// principal's token must name this service's own audience.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        // `alg: none` and unknown algorithms fail to parse here.
        let header = jsonwebtoken::decode_header(token).map_err(|err| {
            tracing::debug!(error = %err, "unparseable token header");
            AuthError::Malformed
        })?;
        let (claims, signer) = match (header.alg, &self.hs256, &self.rs256) {
            (Algorithm::HS256, Some(key), _) => (
                decode(token, key, &self.hs256_validation)?,
                Signer::SharedSecret,
            ),
            (Algorithm::RS256, _, Some(keys)) => {
                let key = header
                    .kid
                    .as_deref()
                    .and_then(|kid| keys.get(kid))
                    .ok_or(AuthError::UnknownKey)?;
                let claims = decode(token, &key.key, &self.rs256_validation)?;
                (claims, key.service.map_or(Signer::People, Signer::Service))
            }
            (alg, _, _) => return Err(AuthError::UnsupportedAlgorithm(format!("{alg:?}"))),
        };
        // A stolen token is worth its lifetime: bounded, and counted from an
        // issue time that is not in the future.
        let iat = claims
            .iat
            .ok_or_else(|| AuthError::MissingClaim("iat".to_owned()))?;
        if iat > unix_now().saturating_add(self.leeway_seconds) {
            return Err(AuthError::IssuedInTheFuture);
        }
        let exp = claims
            .exp
            .ok_or_else(|| AuthError::MissingClaim("exp".to_owned()))?;
        let lifetime = exp
            .checked_sub(iat)
            .ok_or_else(|| AuthError::InvalidClaim("iat".to_owned()))?;
        if lifetime > self.max_lifetime_seconds {
            return Err(AuthError::LifetimeTooLong(self.max_lifetime_seconds));
        }
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
        let role: Role = match claims.role {
            None => return Err(AuthError::MissingClaim("role".to_owned())),
            Some(role) => role.parse().map_err(|_| AuthError::UnknownRole(role))?,
        };
        // A key says only who it is: a service's key signs that service's
        // own tokens and nothing else; a people's key signs no service token;
        // the shared HS256 secret, which has no identity, signs service
        // tokens only where no JWK set is configured (local runs and tests).
        let allowed = match &signer {
            Signer::Service(service) => role == Role::Service && subject == *service,
            Signer::People => role != Role::Service,
            Signer::SharedSecret => role != Role::Service || self.rs256.is_none(),
        };
        if !allowed {
            tracing::debug!(
                signer = ?signer, %role, subject = %subject,
                "token refused: its key may not sign for this principal"
            );
            return Err(AuthError::KeyNotForPrincipal);
        }
        // A token one service got for calling another must not work here.
        if role == Role::Service && !claims.aud.contains(&self.own_audience) {
            return Err(AuthError::WrongAudience);
        }
        Ok(Principal { subject, role })
    }
}

/// Who signed a token, as far as its key tells.
#[derive(Debug)]
enum Signer {
    /// The HS256 secret: whoever holds it.
    SharedSecret,
    /// A people's issuer key (a JWK without [`super::JWK_SERVICE_MEMBER`]).
    People,
    /// The service's own key.
    Service(String),
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
