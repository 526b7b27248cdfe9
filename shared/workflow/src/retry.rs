//! The polling loop of the relay and the timer worker: a batch at a time,
//! woken early on commit, with backoff (see [`crate::backoff`]) while failing.

use std::{future::Future, time::Duration};

use ta_runtime::ServiceError;

use crate::{Shutdown, backoff::backoff, wait_for_shutdown, wake::Wake};

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
