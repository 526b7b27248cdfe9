//! The ledger as a party or an operator reads it: an account's statement
//! (postings with their notes, holds, balances) and the trial balance.

use sqlx::{FromRow, PgConnection, Row, postgres::PgRow};
use ta_runtime::{ServiceError, money::Currency};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::HoldStatus;

/// A ledger account a posting or hold names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegAccount {
    pub id: Uuid,
    pub kind: String,
    pub owner: String,
}

/// The two ledger accounts of a posting or hold, read from its row's
/// `debit_id, debit_kind, debit_owner, credit_id, credit_kind, credit_owner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegRow {
    pub debit: LegAccount,
    pub credit: LegAccount,
}

impl<'r> FromRow<'r, PgRow> for LegRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let side = |prefix: &str| {
            Ok::<_, sqlx::Error>(LegAccount {
                id: row.try_get(format!("{prefix}_id").as_str())?,
                kind: row.try_get(format!("{prefix}_kind").as_str())?,
                owner: row.try_get(format!("{prefix}_owner").as_str())?,
            })
        };
        Ok(Self {
            debit: side("debit")?,
            credit: side("credit")?,
        })
    }
}

#[derive(Clone, Debug, FromRow)]
pub struct PostingRow {
    pub seq: i64,
    pub id: Uuid,
    pub transfer_id: Uuid,
    pub escrow_account_id: Option<Uuid>,
    #[sqlx(flatten)]
    pub leg: LegRow,
    pub currency: String,
    pub amount_minor: i64,
    pub hold_id: Option<Uuid>,
    pub posted_at: OffsetDateTime,
    pub purpose: String,
    pub funding_attempt_id: Option<Uuid>,
    pub reason: Option<String>,
    pub actor_principal_id: Option<String>,
    pub actor_role: Option<String>,
}

/// A posting with its two ledger accounts, its transfer's purpose and note,
/// and the funding attempt it came from (by its hold, or named in the
/// purpose `funding:attempt:<id>`, read as the id so the primary key serves
/// the join).
const POSTINGS_SELECT: &str = "SELECT p.seq, p.id, p.transfer_id, p.escrow_account_id, \
       d.id AS debit_id, d.kind AS debit_kind, d.owner AS debit_owner, \
       c.id AS credit_id, c.kind AS credit_kind, c.owner AS credit_owner, \
       p.currency, p.amount_minor, p.hold_id, p.posted_at, t.purpose, \
       coalesce(fa.id, fh.id) AS funding_attempt_id, \
       n.reason, n.actor_principal_id, n.actor_role \
     FROM escrow.postings p \
     JOIN escrow.transfers t ON t.id = p.transfer_id \
     JOIN escrow.ledger_accounts d ON d.id = p.debit_account_id \
     JOIN escrow.ledger_accounts c ON c.id = p.credit_account_id \
     LEFT JOIN escrow.transfer_notes n ON n.transfer_id = p.transfer_id \
     LEFT JOIN escrow.funding_attempts fh ON p.hold_id IS NOT NULL AND fh.hold_id = p.hold_id \
     LEFT JOIN escrow.funding_attempts fa ON fa.id = CASE \
       WHEN t.purpose ~ '^funding:attempt:[0-9a-f-]{36}$' THEN substr(t.purpose, 17)::uuid END";

/// An account's postings oldest first, after sequence `after`.
pub async fn page_postings(
    conn: &mut PgConnection,
    account_id: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<PostingRow>, ServiceError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{POSTINGS_SELECT} WHERE p.escrow_account_id = $1 AND p.seq > $2 ORDER BY p.seq LIMIT $3"
    )))
    .bind(account_id)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await?)
}

/// The postings of the given transfers of an account, in order: only those
/// rows are joined, not the account's whole statement.
pub async fn postings_of_transfers(
    conn: &mut PgConnection,
    account_id: Uuid,
    transfers: &[Uuid],
) -> Result<Vec<PostingRow>, ServiceError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{POSTINGS_SELECT} WHERE p.escrow_account_id = $1 AND p.transfer_id = ANY($2) \
         ORDER BY p.seq"
    )))
    .bind(account_id)
    .bind(transfers)
    .fetch_all(&mut *conn)
    .await?)
}

/// Per ledger account touched by the escrow account: the net of its postings
/// (posted) and of its pending holds (pending).
#[derive(Clone, Debug, FromRow)]
pub struct BalanceRow {
    pub id: Uuid,
    pub kind: String,
    pub owner: String,
    pub currency: String,
    pub posted: i64,
    pub pending: i64,
}

pub async fn read_balances(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Vec<BalanceRow>, ServiceError> {
    Ok(sqlx::query_as(
        "WITH flows AS ( \
           SELECT credit_account_id AS id, amount_minor AS posted, 0::bigint AS pending \
             FROM escrow.postings WHERE escrow_account_id = $1 \
           UNION ALL SELECT debit_account_id, -amount_minor, 0 FROM escrow.postings \
             WHERE escrow_account_id = $1 \
           UNION ALL SELECT credit_account_id, 0, amount_minor FROM escrow.holds \
             WHERE escrow_account_id = $1 AND status = 'pending' \
           UNION ALL SELECT debit_account_id, 0, -amount_minor FROM escrow.holds \
             WHERE escrow_account_id = $1 AND status = 'pending') \
         SELECT a.id, a.kind, a.owner, a.currency, sum(f.posted)::bigint AS posted, \
           sum(f.pending)::bigint AS pending \
         FROM flows f JOIN escrow.ledger_accounts a ON a.id = f.id \
         GROUP BY a.id, a.kind, a.owner, a.currency ORDER BY a.kind, a.owner",
    )
    .bind(account_id)
    .fetch_all(&mut *conn)
    .await?)
}

#[derive(Clone, Debug, FromRow)]
pub struct HoldRow {
    pub id: Uuid,
    #[sqlx(flatten)]
    pub leg: LegRow,
    pub currency: String,
    pub amount_minor: i64,
    pub status: String,
    pub posted_minor: Option<i64>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub resolved_at: Option<OffsetDateTime>,
    pub funding_attempt_id: Option<Uuid>,
    pub gateway_transfer_id: Option<Uuid>,
}

pub async fn list_holds(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Vec<HoldRow>, ServiceError> {
    Ok(sqlx::query_as(
        "SELECT h.id, d.id AS debit_id, d.kind AS debit_kind, d.owner AS debit_owner, \
           c.id AS credit_id, c.kind AS credit_kind, c.owner AS credit_owner, h.currency, \
           h.amount_minor, h.status, h.posted_minor, h.created_at, h.expires_at, h.resolved_at, \
           f.id AS funding_attempt_id, g.id AS gateway_transfer_id \
         FROM escrow.holds h \
         JOIN escrow.ledger_accounts d ON d.id = h.debit_account_id \
         JOIN escrow.ledger_accounts c ON c.id = h.credit_account_id \
         LEFT JOIN escrow.funding_attempts f ON f.hold_id = h.id \
         LEFT JOIN escrow.gateway_transfers g ON g.id = h.id \
         WHERE h.escrow_account_id = $1 ORDER BY h.created_at, h.id",
    )
    .bind(account_id)
    .fetch_all(&mut *conn)
    .await?)
}

pub fn hold_status(text: &str) -> HoldStatus {
    HoldStatus::parse(text).unwrap_or(HoldStatus::Pending)
}

/// Kept balance (posted) and net pending holds per (kind, currency).
pub async fn read_trial_balance(
    conn: &mut PgConnection,
    currency: Option<Currency>,
) -> Result<Vec<(String, String, i64, i64)>, ServiceError> {
    Ok(sqlx::query_as(
        "WITH deltas AS (SELECT account_id, sum(amount_minor) AS total FROM escrow.balance_deltas \
           GROUP BY account_id), \
         pending AS (SELECT id, sum(net) AS net FROM ( \
           SELECT credit_account_id AS id, amount_minor AS net FROM escrow.holds \
             WHERE status = 'pending' \
           UNION ALL SELECT debit_account_id, -amount_minor FROM escrow.holds \
             WHERE status = 'pending') n GROUP BY id) \
         SELECT a.kind, a.currency, \
           sum(a.balance_minor + coalesce(d.total, 0))::bigint AS posted, \
           coalesce(sum(p.net), 0)::bigint AS pending \
         FROM escrow.ledger_accounts a LEFT JOIN deltas d ON d.account_id = a.id \
         LEFT JOIN pending p ON p.id = a.id \
         WHERE ($1::text IS NULL OR a.currency = $1) \
         GROUP BY a.kind, a.currency ORDER BY a.currency, a.kind",
    )
    .bind(currency.map(|c| c.as_str()))
    .fetch_all(&mut *conn)
    .await?)
}
