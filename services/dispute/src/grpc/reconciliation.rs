//! `tradeassurance.ops.v1.ReconciliationService`: parses the request, runs
//! `app::reconciliation` and answers in proto. Staff only (the access option).

use std::time::Duration;

use sqlx::PgPool;
use ta_proto::ops::{
    ReconcilePlatformRequest, ReconcilePlatformResponse,
    reconciliation_service_server::ReconciliationService,
};
use ta_runtime::{ServiceError, Violations};
use tonic::{Request, Response, Status};

use crate::{app::filing::Reads, app::reconciliation, views};

/// The longest `settled_for` a caller may ask.
const MAX_SETTLED_FOR: Duration = Duration::from_secs(86_400);

pub struct ReconciliationApi {
    pool: PgPool,
    reads: Reads,
    settled_for: Duration,
}

impl ReconciliationApi {
    /// `settled_for`: the default of a request that names none.
    pub fn new(pool: PgPool, reads: Reads, settled_for: Duration) -> Self {
        Self {
            pool,
            reads,
            settled_for,
        }
    }
}

fn settled_for(
    request: &ReconcilePlatformRequest,
    default: Duration,
) -> Result<Duration, ServiceError> {
    let Some(given) = &request.settled_for else {
        return Ok(default);
    };
    let mut violations = Violations::new();
    let parsed = u64::try_from(given.seconds)
        .ok()
        .zip(
            u32::try_from(given.nanos)
                .ok()
                .filter(|n| *n < 1_000_000_000),
        )
        .map(|(seconds, nanos)| Duration::new(seconds, nanos))
        .filter(|d| *d <= MAX_SETTLED_FOR);
    if parsed.is_none() {
        violations.add("settled_for", "must be between 0 and 1 day");
    }
    violations.finish_some("settled_for", parsed)
}

#[tonic::async_trait]
impl ReconciliationService for ReconciliationApi {
    async fn reconcile_platform(
        &self,
        request: Request<ReconcilePlatformRequest>,
    ) -> Result<Response<ReconcilePlatformResponse>, Status> {
        let settled_for = settled_for(request.get_ref(), self.settled_for)?;
        let outcome = reconciliation::run(&self.reads, &self.pool, settled_for).await?;
        Ok(Response::new(views::reconciliation_proto(&outcome)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking(seconds: i64, nanos: i32) -> ReconcilePlatformRequest {
        ReconcilePlatformRequest {
            settled_for: Some(prost_types::Duration { seconds, nanos }),
        }
    }

    #[test]
    fn settled_for_defaults_and_is_bounded() {
        let default = Duration::from_secs(60);
        let none = ReconcilePlatformRequest::default();
        assert_eq!(settled_for(&none, default).unwrap(), default);
        assert_eq!(settled_for(&asking(0, 0), default).unwrap(), Duration::ZERO);
        assert_eq!(
            settled_for(&asking(5, 500_000_000), default).unwrap(),
            Duration::from_millis(5_500)
        );
        for (seconds, nanos) in [(-1, 0), (86_401, 0), (1, -5)] {
            let refused = settled_for(&asking(seconds, nanos), default).unwrap_err();
            assert!(refused.to_string().contains("settled_for"), "{refused}");
        }
    }
}
