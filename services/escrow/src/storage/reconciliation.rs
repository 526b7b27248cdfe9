//! What reconciliation reads beside the ledger's own checks: money held
//! that nothing will move, gateway items only an operator can settle, and
//! how much it looked at.

use sqlx::PgConnection;
use ta_runtime::{ServiceError, money::Currency};
use uuid::Uuid;

use crate::domain::{AccountKey, Discrepancy};

use super::ledger;

/// How much reconciliation looked at: accounts, postings, holds.
pub async fn count_checked(conn: &mut PgConnection) -> Result<(i64, i64, i64), ServiceError> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM escrow.ledger_accounts), \
           (SELECT count(*) FROM escrow.postings), (SELECT count(*) FROM escrow.holds)",
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// Escrow accounts holding money that nothing will move: a positive
/// `escrow_held` balance, no scheduled timer of their own (hold deadline,
/// payment deadline) and no active freeze.
pub async fn list_held_without_deadline(
    conn: &mut PgConnection,
) -> Result<Vec<Discrepancy>, ServiceError> {
    let rows: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT e.id, l.currency, l.balance_minor FROM escrow.escrow_accounts e \
         JOIN escrow.ledger_accounts l ON l.kind = 'escrow_held' AND l.owner = e.id::text \
         WHERE l.balance_minor > 0 \
           AND NOT EXISTS (SELECT 1 FROM escrow.freezes f \
             WHERE f.escrow_account_id = e.id AND f.lifted_at IS NULL) \
           AND NOT EXISTS (SELECT 1 FROM escrow.workflow_timers t WHERE t.status = 'scheduled' \
             AND ((t.kind = 'hold_deadline' AND t.subject_id = e.id::text) \
               OR (t.kind = 'payment_due' AND t.subject_id LIKE e.id::text || '/%'))) \
         ORDER BY e.created_at, e.id",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, currency, held)| {
            Currency::parse(&currency).map(|c| Discrepancy::HeldWithoutDeadline {
                account: AccountKey::escrow_held(id, c),
                held,
            })
        })
        .collect())
}

/// The gateway items only an operator can settle (see
/// [`Discrepancy::GatewayItem`]), oldest first.
pub async fn list_gateway_items(conn: &mut PgConnection) -> Result<Vec<Discrepancy>, ServiceError> {
    let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT kind, currency, amount, detail FROM ( \
           SELECT 'TRANSFER_UNKNOWN' AS kind, currency, amount_minor AS amount, \
             direction || ' ' || id::text || ' (gateway key ' || gateway_key || '): ' || last_error AS detail, \
             created_at AS at FROM escrow.gateway_transfers WHERE status = 'unknown' \
           UNION ALL \
           SELECT 'SUSPENSE_REFUND_FAILED', currency, amount_minor, \
             'refund ' || id::text || ' of a credit in suspense failed: ' || failure_code, created_at \
             FROM escrow.gateway_transfers WHERE direction = 'suspense_refund' AND status = 'failed' \
               AND NOT EXISTS (SELECT 1 FROM escrow.gateway_transfers r \
                 WHERE r.direction = 'suspense_refund' AND r.funding_attempt_id = gateway_transfers.funding_attempt_id \
                   AND r.created_at > gateway_transfers.created_at AND r.status <> 'failed') \
           UNION ALL \
           SELECT unmatched, currency, amount_minor, \
             'gateway event ' || event_id || ' for ' || gateway_reference, received_at \
             FROM escrow.gateway_events \
             WHERE unmatched IN ('PAID_AFTER_FAILURE', 'UNKNOWN_REFERENCE') \
               AND amount_minor IS NOT NULL AND currency IS NOT NULL \
         ) items ORDER BY at",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(kind, currency, amount, detail)| {
            let kind = match kind.as_str() {
                "TRANSFER_UNKNOWN" => "TRANSFER_UNKNOWN",
                "SUSPENSE_REFUND_FAILED" => "SUSPENSE_REFUND_FAILED",
                "PAID_AFTER_FAILURE" => "PAID_AFTER_FAILURE",
                _ => "UNKNOWN_REFERENCE",
            };
            Currency::parse(&currency).map(|currency| Discrepancy::GatewayItem {
                kind,
                currency,
                amount,
                detail,
            })
        })
        .collect())
}

/// Everything reconciliation finds: the ledger's own differences (see
/// [`ledger::reconcile`]), then money held that nothing will move, then the
/// gateway items for operators.
pub async fn read_discrepancies(conn: &mut PgConnection) -> Result<Vec<Discrepancy>, ServiceError> {
    let mut found = ledger::reconcile(conn).await?;
    found.extend(list_held_without_deadline(conn).await?);
    found.extend(list_gateway_items(conn).await?);
    Ok(found)
}
