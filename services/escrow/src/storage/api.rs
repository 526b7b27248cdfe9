//! What the served API reads and records beside the ledger and the accounts
//! (`0004_api.sql`): account terms, the gateway's side of funding attempts,
//! gateway transfers and events, and the read models (statement, trial
//! balance, held accounts).

use sqlx::{FromRow, PgConnection, Row, postgres::PgRow};
use ta_runtime::{ServiceError, money::Currency};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{AccountKey, AccountKind, Discrepancy, HoldStatus};

/// How the contract lets the buyer pay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Direct,
    PayLater,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::PayLater => "pay_later",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    pub scheme: Scheme,
    pub financing_partner_id: String,
    pub supplier_owner_principal_id: String,
    pub contract_version: i32,
}

pub async fn insert_terms(
    conn: &mut PgConnection,
    account_id: Uuid,
    terms: &Terms,
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO escrow.account_terms (escrow_account_id, payment_scheme, financing_partner_id, \
         supplier_owner_principal_id, contract_version) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (escrow_account_id) DO NOTHING",
    )
    .bind(account_id)
    .bind(terms.scheme.as_str())
    .bind(&terms.financing_partner_id)
    .bind(&terms.supplier_owner_principal_id)
    .bind(terms.contract_version)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn terms(conn: &mut PgConnection, account_id: Uuid) -> Result<Terms, ServiceError> {
    let row: Option<(String, String, String, i32)> = sqlx::query_as(
        "SELECT payment_scheme, financing_partner_id, supplier_owner_principal_id, contract_version \
         FROM escrow.account_terms WHERE escrow_account_id = $1",
    )
    .bind(account_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (scheme, financing_partner_id, supplier_owner_principal_id, contract_version) =
        row.ok_or_else(|| ServiceError::internal(format!("account {account_id} has no terms")))?;
    Ok(Terms {
        scheme: if scheme == "pay_later" {
            Scheme::PayLater
        } else {
            Scheme::Direct
        },
        financing_partner_id,
        supplier_owner_principal_id,
        contract_version,
    })
}

pub async fn set_contract_version(
    conn: &mut PgConnection,
    account_id: Uuid,
    version: i32,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE escrow.account_terms SET contract_version = $2 WHERE escrow_account_id = $1",
    )
    .bind(account_id)
    .bind(version)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether `principal` owns `supplier_id` as recorded on any of its accounts.
pub async fn owns_supplier(
    conn: &mut PgConnection,
    principal: &str,
    supplier_id: &str,
) -> Result<bool, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM escrow.account_terms t \
           JOIN escrow.escrow_accounts a ON a.id = t.escrow_account_id \
           WHERE a.supplier_id = $1 AND t.supplier_owner_principal_id = $2)",
    )
    .bind(supplier_id)
    .bind(principal)
    .fetch_one(&mut *conn)
    .await?)
}

/// The gateway's side of a funding attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttemptGateway {
    pub reference: String,
    pub failure_message: String,
    pub beneficiary_name: Option<String>,
    pub iban: Option<String>,
    pub bic: Option<String>,
    pub payment_reference: Option<String>,
    pub loan_reference: Option<String>,
}

/// Records the gateway's side of an attempt; a second answer (the start
/// call's after a webhook's, say) fills what the first left out.
pub async fn insert_attempt_gateway(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    g: &AttemptGateway,
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO escrow.attempt_gateway (funding_attempt_id, gateway_reference, failure_message, \
         beneficiary_name, iban, bic, payment_reference, loan_reference) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (funding_attempt_id) DO UPDATE SET \
           beneficiary_name = coalesce(EXCLUDED.beneficiary_name, attempt_gateway.beneficiary_name), \
           iban = coalesce(EXCLUDED.iban, attempt_gateway.iban), \
           bic = coalesce(EXCLUDED.bic, attempt_gateway.bic), \
           payment_reference = coalesce(EXCLUDED.payment_reference, attempt_gateway.payment_reference), \
           loan_reference = coalesce(EXCLUDED.loan_reference, attempt_gateway.loan_reference)",
    )
    .bind(attempt_id)
    .bind(&g.reference)
    .bind(&g.failure_message)
    .bind(&g.beneficiary_name)
    .bind(&g.iban)
    .bind(&g.bic)
    .bind(&g.payment_reference)
    .bind(&g.loan_reference)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the gateway's code for a failed attempt.
pub async fn set_failure(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    code: &str,
    message: &str,
) -> Result<(), ServiceError> {
    sqlx::query("UPDATE escrow.funding_attempts SET failure_code = $2 WHERE id = $1")
        .bind(attempt_id)
        .bind(code)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE escrow.attempt_gateway SET failure_message = $2 WHERE funding_attempt_id = $1",
    )
    .bind(attempt_id)
    .bind(message)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn attempt_by_reference(
    conn: &mut PgConnection,
    reference: &str,
) -> Result<Option<Uuid>, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT funding_attempt_id FROM escrow.attempt_gateway WHERE gateway_reference = $1",
    )
    .bind(reference)
    .fetch_optional(&mut *conn)
    .await?)
}

/// A funding attempt as the API shows it.
#[derive(Clone, Debug, FromRow)]
pub struct AttemptView {
    pub id: Uuid,
    pub escrow_account_id: Uuid,
    pub milestone_id: String,
    pub method: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub financing_partner_id: Option<String>,
    pub hold_id: Option<Uuid>,
    pub failure_code: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub resolved_at: Option<OffsetDateTime>,
    pub gateway_reference: Option<String>,
    pub failure_message: Option<String>,
    pub beneficiary_name: Option<String>,
    pub iban: Option<String>,
    pub bic: Option<String>,
    pub payment_reference: Option<String>,
    pub loan_reference: Option<String>,
}

const ATTEMPT_VIEW: &str = "SELECT f.id, f.escrow_account_id, f.milestone_id, f.method, \
     f.amount_minor, a.currency, f.status, f.financing_partner_id, f.hold_id, f.failure_code, \
     f.created_at, f.expires_at, f.resolved_at, g.gateway_reference, g.failure_message, \
     g.beneficiary_name, g.iban, g.bic, g.payment_reference, g.loan_reference \
     FROM escrow.funding_attempts f JOIN escrow.escrow_accounts a ON a.id = f.escrow_account_id \
     LEFT JOIN escrow.attempt_gateway g ON g.funding_attempt_id = f.id";

pub async fn attempt_view(conn: &mut PgConnection, id: Uuid) -> Result<AttemptView, ServiceError> {
    sqlx::query_as::<_, AttemptView>(sqlx::AssertSqlSafe(format!(
        "{ATTEMPT_VIEW} WHERE f.id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ServiceError::not_found("funding attempt", id))
}

/// An account's attempts, newest first.
pub async fn attempts_of(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Vec<AttemptView>, ServiceError> {
    Ok(
        sqlx::query_as::<_, AttemptView>(sqlx::AssertSqlSafe(format!(
            "{ATTEMPT_VIEW} WHERE f.escrow_account_id = $1 ORDER BY f.created_at DESC, f.id DESC"
        )))
        .bind(account_id)
        .fetch_all(&mut *conn)
        .await?,
    )
}

/// Money in and out of an account's `escrow_held`, and its last change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub funded: i64,
    pub released: i64,
    pub refunded: i64,
    pub held: i64,
}

pub async fn totals(conn: &mut PgConnection, account_id: Uuid) -> Result<Totals, ServiceError> {
    let (funded, released, refunded): (i64, i64, i64) = sqlx::query_as(
        "SELECT \
           coalesce(sum(p.amount_minor) FILTER (WHERE c.kind = 'escrow_held'), 0)::bigint, \
           coalesce(sum(p.amount_minor) FILTER (WHERE d.kind = 'escrow_held' \
             AND c.kind = 'supplier_payable'), 0)::bigint, \
           coalesce(sum(p.amount_minor) FILTER (WHERE d.kind = 'escrow_held' \
             AND c.kind <> 'supplier_payable'), 0)::bigint \
         FROM escrow.postings p \
         JOIN escrow.ledger_accounts d ON d.id = p.debit_account_id \
         JOIN escrow.ledger_accounts c ON c.id = p.credit_account_id \
         WHERE p.escrow_account_id = $1",
    )
    .bind(account_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Totals {
        funded,
        released,
        refunded,
        held: funded - released - refunded,
    })
}

/// Active freezes: claim, reason, since.
pub async fn active_freezes(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Vec<(String, String, OffsetDateTime)>, ServiceError> {
    Ok(sqlx::query_as(
        "SELECT claim_id, reason, frozen_at FROM escrow.freezes \
         WHERE escrow_account_id = $1 AND lifted_at IS NULL ORDER BY frozen_at, claim_id",
    )
    .bind(account_id)
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn updated_at(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<OffsetDateTime, ServiceError> {
    Ok(
        sqlx::query_scalar("SELECT updated_at FROM escrow.escrow_accounts WHERE id = $1")
            .bind(account_id)
            .fetch_one(&mut *conn)
            .await?,
    )
}

pub async fn note_transfer(
    conn: &mut PgConnection,
    transfer_id: Uuid,
    reason: &str,
    principal: &str,
    role: &str,
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO escrow.transfer_notes (transfer_id, reason, actor_principal_id, actor_role) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (transfer_id) DO NOTHING",
    )
    .bind(transfer_id)
    .bind(reason)
    .bind(principal)
    .bind(role)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Ledger accounts of `kind` that may have money to pay out, filtered.
pub async fn payable_accounts(
    conn: &mut PgConnection,
    kind: AccountKind,
    owner: Option<&str>,
    currency: Option<Currency>,
) -> Result<Vec<AccountKey>, ServiceError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT owner, currency FROM escrow.ledger_accounts \
         WHERE kind = $1 AND ($2::text IS NULL OR owner = $2) AND ($3::text IS NULL OR currency = $3) \
         ORDER BY owner, currency",
    )
    .bind(kind.as_str())
    .bind(owner)
    .bind(currency.map(|c| c.as_str()))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(owner, currency)| {
            Currency::parse(&currency).map(|c| AccountKey::new(kind, owner, c))
        })
        .collect())
}

// ---- Gateway events ------------------------------------------------------

/// Records an event id; `false` when it was seen before.
pub async fn record_event(
    conn: &mut PgConnection,
    event_id: &str,
    kind: &str,
    reference: &str,
    client_reference: Option<&str>,
    now: OffsetDateTime,
) -> Result<bool, ServiceError> {
    Ok(sqlx::query(
        "INSERT INTO escrow.gateway_events (event_id, kind, gateway_reference, outcome, received_at, \
         client_reference) VALUES ($1, $2, $3, 'ignored', $4, $5) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(kind)
    .bind(reference)
    .bind(now)
    .bind(client_reference)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1)
}

/// What became of an event.
pub struct EventResult<'a> {
    pub outcome: &'static str,
    pub unmatched: Option<&'static str>,
    pub amount: Option<(i64, &'a str)>,
    pub funding_attempt_id: Option<Uuid>,
    pub refund_reference: Option<&'a str>,
}

pub async fn finish_event(
    conn: &mut PgConnection,
    event_id: &str,
    result: &EventResult<'_>,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE escrow.gateway_events SET outcome = $2, unmatched = $3, amount_minor = $4, \
         currency = $5, funding_attempt_id = $6, refund_reference = $7 WHERE event_id = $1",
    )
    .bind(event_id)
    .bind(result.outcome)
    .bind(result.unmatched)
    .bind(result.amount.map(|(a, _)| a))
    .bind(result.amount.map(|(_, c)| c))
    .bind(result.funding_attempt_id)
    .bind(result.refund_reference)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The attempt an earlier delivery of the event concerned.
pub async fn event_attempt(
    conn: &mut PgConnection,
    event_id: &str,
) -> Result<Option<Uuid>, ServiceError> {
    Ok(sqlx::query_scalar::<_, Option<Uuid>>(
        "SELECT funding_attempt_id FROM escrow.gateway_events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(&mut *conn)
    .await?
    .flatten())
}

#[derive(Clone, Debug, FromRow)]
pub struct UnmatchedRow {
    pub event_id: String,
    pub unmatched: String,
    pub gateway_reference: String,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub refund_reference: Option<String>,
    pub received_at: OffsetDateTime,
}

pub async fn list_unmatched(
    conn: &mut PgConnection,
    after: Option<(OffsetDateTime, String)>,
    limit: i64,
) -> Result<Vec<UnmatchedRow>, ServiceError> {
    let (at, id) = after.map_or((None, None), |(at, id)| (Some(at), Some(id)));
    Ok(sqlx::query_as(
        "SELECT event_id, unmatched, gateway_reference, amount_minor, currency, refund_reference, \
           received_at FROM escrow.gateway_events WHERE unmatched IS NOT NULL \
           AND ($1::timestamptz IS NULL OR (received_at, event_id) > ($1, $2)) \
         ORDER BY received_at, event_id LIMIT $3",
    )
    .bind(at)
    .bind(id)
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await?)
}

// ---- Statement -----------------------------------------------------------

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

/// An account's postings oldest first, after sequence `after`.
pub async fn postings_of(
    conn: &mut PgConnection,
    account_id: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<PostingRow>, ServiceError> {
    Ok(sqlx::query_as(
        "SELECT p.seq, p.id, p.transfer_id, p.escrow_account_id, \
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
         LEFT JOIN escrow.funding_attempts fa ON t.purpose = 'funding:attempt:' || fa.id::text \
         WHERE p.escrow_account_id = $1 AND p.seq > $2 ORDER BY p.seq LIMIT $3",
    )
    .bind(account_id)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await?)
}

/// The postings of the given transfers, in order.
pub async fn postings_of_transfers(
    conn: &mut PgConnection,
    account_id: Uuid,
    transfers: &[Uuid],
) -> Result<Vec<PostingRow>, ServiceError> {
    let all = postings_of(conn, account_id, 0, i64::from(i32::MAX)).await?;
    Ok(all
        .into_iter()
        .filter(|p| transfers.contains(&p.transfer_id))
        .collect())
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

pub async fn statement_balances(
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

pub async fn holds_of(
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

// ---- Operators' views ------------------------------------------------------

/// Kept balance (posted) and net pending holds per (kind, currency).
pub async fn trial_balance(
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

/// How much reconciliation looked at: accounts, postings, holds.
pub async fn ledger_counts(conn: &mut PgConnection) -> Result<(i64, i64, i64), ServiceError> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM escrow.ledger_accounts), \
           (SELECT count(*) FROM escrow.postings), (SELECT count(*) FROM escrow.holds)",
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// Escrow accounts whose `escrow_held` holds money, oldest first, after
/// (created_at, id).
pub async fn held_accounts(
    conn: &mut PgConnection,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<Uuid>, ServiceError> {
    let (at, id) = after.map_or((None, None), |(at, id)| (Some(at), Some(id)));
    Ok(sqlx::query_scalar(
        "SELECT e.id FROM escrow.escrow_accounts e \
         JOIN escrow.ledger_accounts l ON l.kind = 'escrow_held' AND l.owner = e.id::text \
         WHERE l.balance_minor > 0 \
           AND ($1::timestamptz IS NULL OR (e.created_at, e.id) > ($1, $2)) \
         ORDER BY e.created_at, e.id LIMIT $3",
    )
    .bind(at)
    .bind(id)
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await?)
}

/// Escrow accounts holding money that nothing will move: a positive
/// `escrow_held` balance, no scheduled timer of their own (hold deadline,
/// payment deadline) and no active freeze.
pub async fn held_without_deadline(
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
pub async fn gateway_items_for_operators(
    conn: &mut PgConnection,
) -> Result<Vec<Discrepancy>, ServiceError> {
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

pub async fn created_at(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<OffsetDateTime, ServiceError> {
    Ok(
        sqlx::query_scalar("SELECT created_at FROM escrow.escrow_accounts WHERE id = $1")
            .bind(account_id)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// The earliest deadline on the account's money (a scheduled payment
/// deadline or hold deadline timer, a pending hold's expiry), with its kind.
pub async fn next_deadline(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Option<(OffsetDateTime, String)>, ServiceError> {
    Ok(sqlx::query_as(
        "SELECT at, kind FROM ( \
           SELECT due_at AS at, 'payment_due' AS kind FROM escrow.workflow_timers \
             WHERE status = 'scheduled' AND kind = 'payment_due' AND subject_id LIKE $1 || '/%' \
           UNION ALL SELECT due_at, 'hold_deadline' FROM escrow.workflow_timers \
             WHERE status = 'scheduled' AND kind = 'hold_deadline' AND subject_id = $1 \
           UNION ALL SELECT expires_at, 'hold_expiry' FROM escrow.holds \
             WHERE escrow_account_id = $2 AND status = 'pending') d \
         ORDER BY at LIMIT 1",
    )
    .bind(account_id.to_string())
    .bind(account_id)
    .fetch_optional(&mut *conn)
    .await?)
}

// ---- Amendments ------------------------------------------------------------

/// Replaces an account's schedule: (milestone, amount, funded, due) in order.
/// Milestones not in the new schedule are removed (the caller checked they
/// have no attempts).
pub async fn replace_schedule(
    conn: &mut PgConnection,
    account_id: Uuid,
    schedule: &[(String, i64, i64, OffsetDateTime)],
) -> Result<(), ServiceError> {
    let ids: Vec<String> = schedule.iter().map(|(m, ..)| m.clone()).collect();
    sqlx::query(
        "DELETE FROM escrow.scheduled_payments WHERE escrow_account_id = $1 \
         AND NOT (milestone_id = ANY($2))",
    )
    .bind(account_id)
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    // Out of the way of the (account, position) unique index first.
    sqlx::query(
        "UPDATE escrow.scheduled_payments SET position = -1 - position WHERE escrow_account_id = $1",
    )
    .bind(account_id)
    .execute(&mut *conn)
    .await?;
    for (position, (milestone, amount, funded, due)) in schedule.iter().enumerate() {
        sqlx::query(
            "INSERT INTO escrow.scheduled_payments (escrow_account_id, milestone_id, position, \
             amount_minor, funded_minor, due_at, funded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $5 >= $4 THEN now() END) \
             ON CONFLICT (escrow_account_id, milestone_id) DO UPDATE SET position = EXCLUDED.position, \
             amount_minor = EXCLUDED.amount_minor, funded_minor = EXCLUDED.funded_minor, \
             due_at = EXCLUDED.due_at, \
             funded_at = CASE WHEN EXCLUDED.funded_minor >= EXCLUDED.amount_minor \
                 THEN coalesce(escrow.scheduled_payments.funded_at, now()) END"
        )
        .bind(account_id)
        .bind(milestone)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(amount)
        .bind(funded)
        .bind(due)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// When each fully funded payment of an account became so.
pub async fn funded_times(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<std::collections::HashMap<String, OffsetDateTime>, ServiceError> {
    let rows: Vec<(String, OffsetDateTime)> = sqlx::query_as(
        "SELECT milestone_id, funded_at FROM escrow.scheduled_payments \
         WHERE escrow_account_id = $1 AND funded_at IS NOT NULL",
    )
    .bind(account_id)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Milestones with any funding attempt.
pub async fn milestones_with_attempts(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Vec<String>, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT milestone_id FROM escrow.funding_attempts WHERE escrow_account_id = $1",
    )
    .bind(account_id)
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn set_status(
    conn: &mut PgConnection,
    account_id: Uuid,
    status: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    sqlx::query("UPDATE escrow.escrow_accounts SET status = $2, updated_at = $3 WHERE id = $1")
        .bind(account_id)
        .bind(status)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
