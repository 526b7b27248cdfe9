//! Escrow's reads of its own workflow timers.

use sqlx::PgConnection;
use ta_runtime::ServiceError;

/// Whether a timer of `kind` for `subject_id` is scheduled.
pub async fn is_scheduled(
    conn: &mut PgConnection,
    kind: &str,
    subject_id: &str,
) -> Result<bool, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM escrow.workflow_timers \
         WHERE kind = $1 AND subject_id = $2 AND status = 'scheduled')",
    )
    .bind(kind)
    .bind(subject_id)
    .fetch_one(&mut *conn)
    .await?)
}
