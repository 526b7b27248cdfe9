//! Minting tokens: for the `mint-token` CLI, tests, and services calling
//! each other as service principals.

use std::{fmt, path::Path, time::Duration};

use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, PublicKeyUse},
};

use super::{
    Claims, JWK_SERVICE_MEMBER, Role,
    config::{AuthConfig, AuthConfigError, ENV_ISSUER, checked_secret, non_empty},
    unix_now,
};

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

/// Signs tokens with an HS256 secret (local runs) or an RS256 private key
/// named by its `kid` (deployments).
pub struct TokenIssuer {
    key: EncodingKey,
    header: Header,
    issuer: String,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("alg", &self.header.alg)
            .field("kid", &self.header.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// HS256 with `secret`; no checks on it: use [`TokenIssuer::from_config`] for that.
    pub fn hs256(secret: impl AsRef<[u8]>, issuer: impl Into<String>) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_ref()),
            header: Header::new(Algorithm::HS256),
            issuer: issuer.into(),
        }
    }

    /// RS256 with the PEM private key in `pem`, published under `kid`.
    pub fn rs256(
        pem: &[u8],
        kid: impl Into<String>,
        issuer: impl Into<String>,
    ) -> Result<Self, MintError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        Ok(Self {
            key: EncodingKey::from_rsa_pem(pem)?,
            header,
            issuer: issuer.into(),
        })
    }

    /// RS256 with the PEM private key file at `path`.
    pub fn rs256_from_file(
        path: &Path,
        kid: impl Into<String>,
        issuer: impl Into<String>,
    ) -> Result<Self, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::rs256(&pem, kid, issuer)
            .map_err(|e| format!("{} is not an RSA private key: {e}", path.display()))
    }

    /// Uses the HS256 secret and issuer of `config`, with the same checks as
    /// the verifier; the secret is required.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let issuer = non_empty(&config.issuer, ENV_ISSUER)?;
        let secret = checked_secret(config.hs256_secret.as_deref())?
            .ok_or(AuthConfigError::MissingSecret)?;
        Ok(Self::hs256(secret, issuer))
    }

    /// A token for `subject` with `role` for `audience`, valid from now for `ttl`.
    pub fn mint(
        &self,
        subject: &str,
        role: Role,
        audience: &str,
        ttl: Duration,
    ) -> Result<String, MintError> {
        let exp = unix_now()
            .checked_add(ttl.as_secs())
            .ok_or(MintError::TtlOutOfRange)?;
        self.mint_expiring_at(subject, role, audience, exp)
    }

    /// A token expiring at `exp_unix_secs`, which may be in the past (to test
    /// expiry). `iat` is now, or `exp` if that is earlier.
    pub fn mint_expiring_at(
        &self,
        subject: &str,
        role: Role,
        audience: &str,
        exp_unix_secs: u64,
    ) -> Result<String, MintError> {
        if subject.trim().is_empty() {
            return Err(MintError::EmptySubject);
        }
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            iss: self.issuer.clone(),
            aud: audience.to_owned(),
            exp: exp_unix_secs,
            iat: unix_now().min(exp_unix_secs),
            nbf: None,
        };
        self.sign(&claims)
    }

    /// The public half of an RS256 key as a JWK, under its `kid`, for a JWK
    /// set: bound to `service` (the [`JWK_SERVICE_MEMBER`] member) when given,
    /// else a people's issuer key. `None` for HS256, which has no public half.
    pub fn public_jwk(&self, service: Option<&str>) -> Option<serde_json::Value> {
        if self.header.alg != Algorithm::RS256 {
            return None;
        }
        let mut jwk = Jwk::from_encoding_key(&self.key, Algorithm::RS256).ok()?;
        jwk.common.key_id.clone_from(&self.header.kid);
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let mut value = serde_json::to_value(jwk).ok()?;
        if let (Some(service), Some(members)) = (service, value.as_object_mut()) {
            members.insert(JWK_SERVICE_MEMBER.to_owned(), service.into());
        }
        Some(value)
    }

    /// Signs arbitrary `claims` as they are.
    pub fn sign(&self, claims: &Claims) -> Result<String, MintError> {
        Ok(jsonwebtoken::encode(&self.header, claims, &self.key)?)
    }
}
