//! The signature on the payment gateway's webhooks, checked before the event
//! is read.
//!
//! The signature header is `t=<unix seconds>,v1=<hex>`, where `v1` is
//! HMAC-SHA256 over `"<t>.<payload>"` with the webhook secret (the scheme
//! Stripe uses). An event is accepted only when one of its `v1` values
//! matches (compared in constant time) and `t` lies within the tolerance of
//! now, so a captured event cannot be replayed later; a replay within the
//! tolerance carries an event id already seen and changes nothing.
//! The payload is parsed only after its signature checked out.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The shortest webhook secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// Why an event was refused (all answered UNAUTHENTICATED).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the webhook is not signed")]
    Missing,
    #[error("the webhook signature header is malformed (expected t=<unix seconds>,v1=<hex>)")]
    Malformed,
    #[error("the webhook signature does not match")]
    Mismatch,
    #[error("the webhook's timestamp is outside the tolerance")]
    Stale,
}

/// The secret the gateway signs webhooks with.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// # Errors
    /// Shorter than [`MIN_SECRET_BYTES`].
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, String> {
        let secret = secret.into();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "ESCROW_WEBHOOK_SECRET must be at least {MIN_SECRET_BYTES} bytes"
            ));
        }
        Ok(Self(secret))
    }

    fn mac(&self, timestamp: i64, payload: &[u8]) -> HmacSha256 {
        // HMAC takes a key of any length.
        let mut mac = HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload);
        mac
    }

    /// The header a gateway sends with `payload` at `timestamp`.
    pub fn sign(&self, timestamp: i64, payload: &[u8]) -> String {
        let digest = self.mac(timestamp, payload).finalize().into_bytes();
        format!("t={timestamp},v1={}", hex::encode(digest))
    }

    /// Checks `header` over `payload` at `now` (Unix seconds).
    ///
    /// # Errors
    /// See [`SignatureError`].
    pub fn verify(
        &self,
        header: &str,
        payload: &[u8],
        now: i64,
        tolerance_seconds: i64,
    ) -> Result<(), SignatureError> {
        if header.trim().is_empty() {
            return Err(SignatureError::Missing);
        }
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            let (name, value) = part
                .trim()
                .split_once('=')
                .ok_or(SignatureError::Malformed)?;
            match name {
                "t" => {
                    timestamp = Some(
                        value
                            .parse::<i64>()
                            .map_err(|_| SignatureError::Malformed)?,
                    );
                }
                "v1" => signatures.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?),
                // Other schemes (v0, ...) are not ours to check.
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
        if signatures.is_empty() {
            return Err(SignatureError::Malformed);
        }
        let matches = signatures
            .iter()
            .any(|sig| self.mac(timestamp, payload).verify_slice(sig).is_ok());
        if !matches {
            return Err(SignatureError::Mismatch);
        }
        if (now - timestamp).abs() > tolerance_seconds {
            return Err(SignatureError::Stale);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> WebhookSecret {
        WebhookSecret::new("whsec_0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(WebhookSecret::new("short").is_err());
        assert!(WebhookSecret::new(vec![b'x'; 32]).is_ok());
    }

    #[test]
    fn what_it_signs_verifies() {
        let header = secret().sign(1_700_000_000, b"{\"id\":\"evt_1\"}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(
            secret().verify(&header, b"{\"id\":\"evt_1\"}", 1_700_000_100, 300),
            Ok(())
        );
    }

    #[test]
    fn a_known_vector_matches() {
        // printf '1.{}' | openssl dgst -sha256 -hmac 'whsec_0123456789abcdef0123456789abcdef'
        assert_eq!(
            secret().sign(1, b"{}"),
            "t=1,v1=87a08bd14a1cc5fc235f0712a2dfda0518e77ec4d1ae71ac98d9ea939d566479"
        );
    }

    #[test]
    fn forged_tampered_stale_and_malformed_are_refused() {
        let s = secret();
        let payload = b"{\"id\":\"evt_1\"}";
        let header = s.sign(1_000, payload);
        assert_eq!(
            s.verify(&header, b"{\"id\":\"evt_2\"}", 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        let other = WebhookSecret::new(vec![b'z'; 40]).unwrap();
        assert_eq!(
            s.verify(&other.sign(1_000, payload), payload, 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            s.verify(&header, payload, 1_301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            s.verify(&header, payload, 699, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            s.verify("", payload, 1_000, 300),
            Err(SignatureError::Missing)
        );
        for bad in ["t=1000", "v1=abcd", "t=x,v1=00", "t=1000,v1=zz", "nonsense"] {
            assert_eq!(
                s.verify(bad, payload, 1_000, 300),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        // A re-signed timestamp without the secret does not verify.
        let moved = header.replace("t=1000", "t=2000");
        assert_eq!(
            s.verify(&moved, payload, 2_000, 300),
            Err(SignatureError::Mismatch)
        );
    }
}
