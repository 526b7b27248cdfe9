//! Capped exponential backoff with jitter, shared by the relay, the timer
//! worker and the consumer, and the polling loop of the first two.

use std::{future::Future, time::Duration};

use ta_runtime::ServiceError;

use crate::{Shutdown, wait_for_shutdown, wake::Wake};

/// How a polling worker paces itself.
pub(crate) struct Pace {
    pub poll_interval: Duration,
    pub backoff_cap: Duration,
    pub batch_size: usize,
}

/// Runs `step` (one batch; returns how many items it claimed) until
/// `shutdown`: again at once after a full batch (more is probably due), after
/// the poll interval or at `wake`'s next wake-up otherwise, and with backoff
/// while it fails. `what` names the worker in the warning logged on a failure.
pub(crate) async fn poll_until_shutdown<F, Fut>(
    mut shutdown: Shutdown,
    pace: Pace,
    mut wake: Wake,
    what: &str,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, ServiceError>>,
{
    let mut failures = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        wake.mark_seen();
        let (pause, wakeable) = match step().await {
            Ok(done) => {
                failures = 0;
                if done == pace.batch_size {
                    (Duration::ZERO, false)
                } else {
                    (pace.poll_interval, true)
                }
            }
            Err(error) => {
                failures += 1;
                let pause = backoff(failures, pace.poll_interval, pace.backoff_cap);
                tracing::warn!(%error, retry_in = ?pause, "{what}");
                // A failing database is given its backoff, wake-ups or not.
                (pause, false)
            }
        };
        if !pause.is_zero() {
            let woken = async {
                if wakeable {
                    wake.woken().await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = woken => {}
                () = wait_for_shutdown(&mut shutdown) => return,
            }
        }
    }
}

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
