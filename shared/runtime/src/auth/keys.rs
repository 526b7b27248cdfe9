//! The RS256 verification keys: a JWK set file, keys picked by `kid`, re-read
//! when the file changes so keys rotate without a restart.
//!
//! A key is either a people's issuer key or one service's own key: a key
//! carrying the member `"ta_service": "<name>"` ([`JWK_SERVICE_MEMBER`]) signs
//! only that service's tokens (role `service`, subject `<name>`); a key
//! without it signs only people's tokens. The verifier enforces both.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use jsonwebtoken::{
    DecodingKey,
    jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse},
};

use super::{JWK_SERVICE_MEMBER, MAX_SUBJECT_LEN, config::AuthConfigError};

/// How often, at most, the file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// One verification key and whom it may sign for.
#[derive(Clone)]
pub(super) struct VerificationKey {
    pub(super) key: DecodingKey,
    /// The service whose own key this is; `None`: a people's issuer key.
    pub(super) service: Option<String>,
}

/// The keys of one JWK set file, by `kid`.
pub(super) struct KeySet {
    path: PathBuf,
    keys: RwLock<Arc<HashMap<String, VerificationKey>>>,
    /// When the file was last looked at, and its version (mtime, length) then.
    seen: Mutex<(Instant, Option<(SystemTime, u64)>)>,
}

impl KeySet {
    /// Loads `path`; a missing, unreadable or invalid file fails start-up.
    pub(super) fn load(path: &Path) -> Result<Self, AuthConfigError> {
        let version = file_version(path);
        let keys = read_keys(path)?;
        Ok(Self {
            path: path.to_owned(),
            keys: RwLock::new(Arc::new(keys)),
            seen: Mutex::new((Instant::now(), version)),
        })
    }

    pub(super) fn len(&self) -> usize {
        self.current().len()
    }

    /// The key named `kid`, after picking up a changed file (looked at no
    /// more than once a second).
    pub(super) fn get(&self, kid: &str) -> Option<VerificationKey> {
        self.reload_if_changed();
        self.current().get(kid).cloned()
    }

    fn current(&self) -> Arc<HashMap<String, VerificationKey>> {
        match self.keys.read() {
            Ok(keys) => Arc::clone(&keys),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// A file that became invalid keeps the last good keys (and says so): a
    /// half-written rotation must not lock everyone out.
    fn reload_if_changed(&self) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.0.elapsed() < RECHECK {
            return;
        }
        seen.0 = Instant::now();
        let version = file_version(&self.path);
        if version == seen.1 {
            return;
        }
        match read_keys(&self.path) {
            Ok(keys) => {
                tracing::info!(path = %self.path.display(), keys = keys.len(), "JWK set reloaded");
                seen.1 = version;
                if let Ok(mut current) = self.keys.write() {
                    *current = Arc::new(keys);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "JWK set changed but cannot be used; keeping the previous keys");
            }
        }
    }
}

fn file_version(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

fn read_keys(path: &Path) -> Result<HashMap<String, VerificationKey>, AuthConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| AuthConfigError::KeyFileUnreadable {
            path: path.to_owned(),
            source,
        })?;
    let invalid = |reason: String| AuthConfigError::KeyFileInvalid {
        path: path.to_owned(),
        reason,
    };
    // Read as JSON first: the service binding is a member of our own, which
    // `Jwk` does not keep (RFC 7517 lets other implementations ignore it).
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let services: Vec<Option<serde_json::Value>> = raw
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .map(|keys| {
            keys.iter()
                .map(|key| key.get(JWK_SERVICE_MEMBER).cloned())
                .collect()
        })
        .unwrap_or_default();
    let set: JwkSet = serde_json::from_value(raw).map_err(|e| invalid(e.to_string()))?;
    let mut keys = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk
            .common
            .key_id
            .as_deref()
            .filter(|kid| !kid.trim().is_empty())
            .ok_or_else(|| invalid(format!("key #{} has no `kid`", i + 1)))?;
        if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
            return Err(invalid(format!("key `{kid}` is not an RSA key")));
        }
        if jwk
            .common
            .key_algorithm
            .is_some_and(|alg| alg != KeyAlgorithm::RS256)
        {
            return Err(invalid(format!("key `{kid}` is not for RS256")));
        }
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            return Err(invalid(format!("key `{kid}` is not a signing key")));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key `{kid}`: {e}")))?;
        let service = match services.get(i).cloned().flatten() {
            None => None,
            Some(serde_json::Value::String(name))
                if !name.trim().is_empty()
                    && name.len() <= MAX_SUBJECT_LEN
                    && !name.chars().any(char::is_control) =>
            {
                Some(name)
            }
            Some(_) => {
                return Err(invalid(format!(
                    "key `{kid}`: `{JWK_SERVICE_MEMBER}` must be a service's name"
                )));
            }
        };
        if keys
            .insert(kid.to_owned(), VerificationKey { key, service })
            .is_some()
        {
            return Err(invalid(format!("`kid` {kid} appears twice")));
        }
    }
    if keys.is_empty() {
        return Err(invalid("it holds no key".to_owned()));
    }
    Ok(keys)
}
