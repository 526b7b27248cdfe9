//! The bearer token a service presents as itself (role `service`, subject its
//! own name, audience the called service's name), from one of:
//!
//! * its own RS256 key (`SERVICE_SIGNING_KEY_FILE` + `SERVICE_SIGNING_KEY_ID`):
//!   tokens are minted here and reused until shortly before they expire. The
//!   JWK set publishes the key bound to this service (`"ta_service": "<name>"`),
//!   so the key signs for this service and nothing else;
//! * a directory of ready-made tokens, one file per audience
//!   (`SERVICE_TOKEN_DIR/<audience>`), re-read when a file changes, as a
//!   Kubernetes projected service-account token is rotated in place;
//! * for local runs only, the shared HS256 dev secret (`AUTH_JWT_HS256_SECRET`),
//!   refused when the process verifies tokens against a JWK set (a deployment),
//!   even with `AUTH_JWT_ALLOW_HS256`: the secret has no identity to bind.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use ta_runtime::auth::{AuthConfig, Role, TokenIssuer};
use tonic::metadata::{Ascii, MetadataValue};

use crate::config::CredentialsConfig;

/// How long before expiry a minted token is replaced.
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(60);
/// How often a token file's metadata is looked at.
const TOKEN_FILE_RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("no token for audience `{audience}` in {}: {reason}", dir.display())]
    TokenFile {
        audience: String,
        dir: PathBuf,
        reason: String,
    },
    #[error("cannot sign a token for `{audience}`: {reason}")]
    Signing { audience: String, reason: String },
}

/// Tokens of one service for the services it calls.
pub struct ServiceCredentials {
    service: String,
    source: Source,
}

enum Source {
    Signing {
        // Boxed: an encoding key is far larger than a path.
        issuer: Box<TokenIssuer>,
        ttl: Duration,
        minted: Mutex<HashMap<String, (MetadataValue<Ascii>, Instant)>>,
    },
    TokenDir {
        dir: PathBuf,
        files: Mutex<HashMap<String, TokenFile>>,
    },
}

struct TokenFile {
    checked_at: Instant,
    modified: Option<SystemTime>,
    len: u64,
    bearer: MetadataValue<Ascii>,
}

impl std::fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Signing { issuer, .. } => format!("{issuer:?}"),
            Source::TokenDir { dir, .. } => format!("token dir {}", dir.display()),
        };
        f.debug_struct("ServiceCredentials")
            .field("service", &self.service)
            .field("source", &source)
            .finish()
    }
}

impl ServiceCredentials {
    /// Picks the source the configuration names (see the module docs).
    /// `service` is this service's name, the subject of its tokens.
    ///
    /// # Errors
    /// A message naming the variables at fault.
    pub fn from_config(
        service: &str,
        config: &CredentialsConfig,
        auth: &AuthConfig,
    ) -> Result<Self, String> {
        if config.token_ttl > auth.max_lifetime {
            return Err(format!(
                "SERVICE_TOKEN_TTL ({:?}) is longer than AUTH_JWT_MAX_LIFETIME ({:?}): the called \
                 services would refuse the tokens",
                config.token_ttl, auth.max_lifetime
            ));
        }
        if let (Some(file), Some(kid)) = (&config.signing_key_file, &config.signing_key_id) {
            let issuer = TokenIssuer::rs256_from_file(file, kid.clone(), auth.issuer.clone())
                .map_err(|e| format!("SERVICE_SIGNING_KEY_FILE: {e}"))?;
            return Ok(Self::signing(service, issuer, config.token_ttl));
        }
        if let Some(dir) = &config.token_dir {
            if !dir.is_dir() {
                return Err(format!(
                    "SERVICE_TOKEN_DIR: {} is not a directory",
                    dir.display()
                ));
            }
            return Ok(Self::token_dir(service, dir.clone()));
        }
        // Beside a JWK set, a service token must come from the service's own
        // key (the verifiers refuse one signed with the shared secret, even
        // with AUTH_JWT_ALLOW_HS256).
        if auth.jwks_file.is_some() {
            return Err(
                "AUTH_JWT_JWKS_FILE is set (production tokens): set SERVICE_SIGNING_KEY_FILE \
                 or SERVICE_TOKEN_DIR, the dev secret AUTH_JWT_HS256_SECRET signs service \
                 tokens in local runs only"
                    .into(),
            );
        }
        let issuer = TokenIssuer::from_config(auth).map_err(|e| {
            format!(
                "no service credentials: set SERVICE_SIGNING_KEY_FILE, SERVICE_TOKEN_DIR \
                 or, locally, AUTH_JWT_HS256_SECRET ({e})"
            )
        })?;
        Ok(Self::signing(service, issuer, config.token_ttl))
    }

    /// Tokens `issuer` signs for `service`, each valid for `ttl`.
    pub fn signing(service: &str, issuer: TokenIssuer, ttl: Duration) -> Self {
        Self {
            service: service.to_owned(),
            source: Source::Signing {
                issuer: Box::new(issuer),
                ttl,
                minted: Mutex::new(HashMap::new()),
            },
        }
    }

    /// Tokens read from `dir/<audience>`.
    pub fn token_dir(service: &str, dir: PathBuf) -> Self {
        Self {
            service: service.to_owned(),
            source: Source::TokenDir {
                dir,
                files: Mutex::new(HashMap::new()),
            },
        }
    }

    /// This service's name, the subject of its tokens.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// `Bearer <jwt>` for a call to the service `audience`.
    ///
    /// # Errors
    /// No token can be had for `audience` now (a missing file, a key that
    /// cannot sign); the call should be retried later.
    pub fn bearer(&self, audience: &str) -> Result<MetadataValue<Ascii>, CredentialError> {
        match &self.source {
            Source::Signing {
                issuer,
                ttl,
                minted,
            } => {
                let mut minted = minted.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((bearer, renew_at)) = minted.get(audience)
                    && Instant::now() < *renew_at
                {
                    return Ok(bearer.clone());
                }
                let signing_error = |reason: String| CredentialError::Signing {
                    audience: audience.to_owned(),
                    reason,
                };
                let token = issuer
                    .mint(&self.service, Role::Service, audience, *ttl)
                    .map_err(|e| signing_error(e.to_string()))?;
                let bearer = bearer_value(&token).map_err(signing_error)?;
                let renew_at =
                    Instant::now() + ttl.saturating_sub(RENEW_BEFORE_EXPIRY).max(*ttl / 2);
                minted.insert(audience.to_owned(), (bearer.clone(), renew_at));
                Ok(bearer)
            }
            Source::TokenDir { dir, files } => {
                let mut files = files.lock().unwrap_or_else(|p| p.into_inner());
                read_token_file(dir, audience, &mut files)
            }
        }
    }
}

fn bearer_value(token: &str) -> Result<MetadataValue<Ascii>, String> {
    MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| "the token is not printable ASCII".to_string())
}

/// The cached token of `audience`, re-read when the file's size or time
/// changed; a file that turned unreadable or empty keeps the last good token.
fn read_token_file(
    dir: &Path,
    audience: &str,
    files: &mut HashMap<String, TokenFile>,
) -> Result<MetadataValue<Ascii>, CredentialError> {
    if audience.is_empty() || audience.contains(['/', '\\']) || audience.starts_with('.') {
        return Err(CredentialError::TokenFile {
            audience: audience.to_owned(),
            dir: dir.to_owned(),
            reason: "not a plain audience name".into(),
        });
    }
    let now = Instant::now();
    let cached = files.get_mut(audience);
    if let Some(cached) = &cached
        && now.duration_since(cached.checked_at) < TOKEN_FILE_RECHECK
    {
        return Ok(cached.bearer.clone());
    }
    match (
        changed_token(&dir.join(audience), cached.as_deref(), now),
        cached,
    ) {
        (Ok(None), Some(cached)) => {
            cached.checked_at = now;
            Ok(cached.bearer.clone())
        }
        (Ok(Some(fresh)), _) => {
            let bearer = fresh.bearer.clone();
            files.insert(audience.to_owned(), fresh);
            Ok(bearer)
        }
        (Err(reason), Some(cached)) => {
            tracing::warn!(%reason, audience, "token file unusable; keeping the last good token");
            cached.checked_at = now;
            Ok(cached.bearer.clone())
        }
        (Err(reason), None) => Err(CredentialError::TokenFile {
            audience: audience.to_owned(),
            dir: dir.to_owned(),
            reason,
        }),
        // "Unchanged" needs a cached token to compare with; without one the
        // file is always read.
        (Ok(None), None) => Err(CredentialError::TokenFile {
            audience: audience.to_owned(),
            dir: dir.to_owned(),
            reason: "not read yet".into(),
        }),
    }
}

/// The token at `path` if it differs from `cached` (by size or time), `None`
/// if it is unchanged.
fn changed_token(
    path: &Path,
    cached: Option<&TokenFile>,
    now: Instant,
) -> Result<Option<TokenFile>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let modified = meta.modified().ok();
    if cached.is_some_and(|c| c.modified == modified && c.len == meta.len()) {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Some(TokenFile {
        checked_at: now,
        modified,
        len: meta.len(),
        bearer: bearer_value(token)?,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ta_runtime::auth::TokenVerifier;

    use super::*;

    /// The runtime's RS256 test key pair.
    const PRIVATE_KEY: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../runtime/tests/fixtures/rs256_a_private.pem"
    );

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ta-workflow-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn no_credentials() -> CredentialsConfig {
        CredentialsConfig {
            signing_key_file: None,
            signing_key_id: None,
            token_dir: None,
            token_ttl: Duration::from_secs(600),
        }
    }

    /// A JWK set publishing the fixture key's public half under `kid`, bound
    /// to `service` (or a people's key).
    fn jwks_with(dir: &Path, kid: &str, service: Option<&str>) -> PathBuf {
        let pem = std::fs::read(PRIVATE_KEY).unwrap();
        let jwk = TokenIssuer::rs256(&pem, kid, "trade-assurance")
            .unwrap()
            .public_jwk(service)
            .unwrap();
        let path = dir.join("jwks.json");
        std::fs::write(&path, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
        path
    }

    #[test]
    fn the_services_own_key_signs_tokens_the_called_service_accepts() {
        let dir = scratch("rs256");
        let jwks = jwks_with(&dir, "contract-2026", Some("contract"));
        let config = CredentialsConfig {
            signing_key_file: Some(PRIVATE_KEY.into()),
            signing_key_id: Some("contract-2026".into()),
            ..no_credentials()
        };
        let verifying = AuthConfig {
            jwks_file: Some(jwks),
            ..AuthConfig::default()
        };
        let credentials = ServiceCredentials::from_config("contract", &config, &verifying).unwrap();
        let bearer = credentials.bearer("escrow").unwrap();
        let token = bearer.to_str().unwrap().strip_prefix("Bearer ").unwrap();

        let escrow = TokenVerifier::from_config(&verifying, "escrow").unwrap();
        let principal = escrow.verify(token).unwrap();
        assert_eq!(
            (principal.subject.as_str(), principal.role),
            ("contract", Role::Service)
        );
        let registry = TokenVerifier::from_config(&verifying, "supplier-registry").unwrap();
        assert!(
            registry.verify(token).is_err(),
            "the audience is the called service"
        );

        // The key published for dispute (or as a people's key) signs no
        // token of contract's.
        for service in [Some("dispute"), None] {
            let jwks = jwks_with(&dir, "contract-2026", service);
            let verifying = AuthConfig {
                jwks_file: Some(jwks),
                ..AuthConfig::default()
            };
            let escrow = TokenVerifier::from_config(&verifying, "escrow").unwrap();
            assert!(escrow.verify(token).is_err(), "{service:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_dev_secret_signs_only_where_tokens_are_not_verified_by_a_jwk_set() {
        let dir = scratch("dev-secret");
        let local = AuthConfig::hs256("test-secret-at-least-16-bytes");
        assert!(ServiceCredentials::from_config("contract", &no_credentials(), &local).is_ok());

        let deployed = AuthConfig {
            jwks_file: Some(jwks_with(&dir, "k", None)),
            ..local.clone()
        };
        let error =
            ServiceCredentials::from_config("contract", &no_credentials(), &deployed).unwrap_err();
        assert!(error.contains("SERVICE_SIGNING_KEY_FILE"), "{error}");
        // Allowing HS256 beside the key set (for people's tokens) does not
        // let the shared secret speak for a service.
        let allowed = AuthConfig {
            allow_hs256: true,
            ..deployed
        };
        let error =
            ServiceCredentials::from_config("contract", &no_credentials(), &allowed).unwrap_err();
        assert!(error.contains("SERVICE_SIGNING_KEY_FILE"), "{error}");

        let error =
            ServiceCredentials::from_config("contract", &no_credentials(), &AuthConfig::default())
                .unwrap_err();
        assert!(error.contains("AUTH_JWT_HS256_SECRET"), "{error}");

        let too_long = CredentialsConfig {
            token_ttl: Duration::from_secs(7_200),
            ..no_credentials()
        };
        let error = ServiceCredentials::from_config("contract", &too_long, &local).unwrap_err();
        assert!(
            error.contains("SERVICE_TOKEN_TTL") && error.contains("AUTH_JWT_MAX_LIFETIME"),
            "{error}"
        );

        let missing_dir = CredentialsConfig {
            token_dir: Some(dir.join("absent")),
            ..no_credentials()
        };
        let error = ServiceCredentials::from_config("contract", &missing_dir, &local).unwrap_err();
        assert!(error.contains("SERVICE_TOKEN_DIR"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn token_files_are_re_read_when_they_change() {
        let dir = scratch("tokens");
        let credentials = ServiceCredentials::token_dir("contract", dir.clone());
        assert!(credentials.bearer("escrow").is_err(), "no file yet");

        std::fs::write(dir.join("escrow"), "first.token.value\n").unwrap();
        assert_eq!(
            credentials.bearer("escrow").unwrap(),
            "Bearer first.token.value"
        );

        std::fs::write(dir.join("escrow"), "second.token.value.longer\n").unwrap();
        // The file is looked at again once the recheck interval passed.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let bearer = credentials.bearer("escrow").unwrap();
            if bearer == "Bearer second.token.value.longer" {
                break;
            }
            assert!(Instant::now() < deadline, "the new token was never read");
            std::thread::sleep(Duration::from_millis(100));
        }

        std::fs::write(dir.join("escrow"), "").unwrap();
        std::thread::sleep(TOKEN_FILE_RECHECK);
        assert_eq!(
            credentials.bearer("escrow").unwrap(),
            "Bearer second.token.value.longer",
            "an emptied file keeps the last good token"
        );
        assert!(credentials.bearer("../etc").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn signed_tokens_name_the_service_and_the_audience() {
        let issuer = TokenIssuer::hs256("test-secret-at-least-16-bytes", "trade-assurance");
        let credentials = ServiceCredentials::signing("contract", issuer, Duration::from_secs(600));
        let first = credentials.bearer("escrow").unwrap();
        assert_eq!(
            first,
            credentials.bearer("escrow").unwrap(),
            "reused while fresh"
        );
        assert_ne!(first, credentials.bearer("supplier-registry").unwrap());
    }
}
