//! Capped exponential backoff with jitter, shared by the relay, the timer
//! worker, the consumer and the wake listener's reconnects. A leaf module:
//! the polling loop (`retry`) and the listener (`wake`) both use it, and
//! neither imports the other's module for it.

use std::time::Duration;

/// The delay before attempt `failures + 1`: `base * 2^(failures-1)`, capped,
/// then drawn uniformly from its upper half ("equal jitter"), so replicas that
/// failed together do not retry in step while the delay still grows.
pub(crate) fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exponent).min(cap);
    let half = full / 2;
    let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
    let random = (uuid::Uuid::new_v4().as_u128() as u64) % spread.saturating_add(1);
    half + Duration::from_micros(random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_stays_under_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(10);
        for failures in 1..40 {
            let delay = backoff(failures, base, cap);
            let full = (base * 2u32.pow(failures.saturating_sub(1).min(30))).min(cap);
            assert!(delay >= full / 2 && delay <= full, "{failures}: {delay:?}");
        }
        assert!(backoff(40, base, cap) >= cap / 2);
    }
}
