//! The ledger in Postgres. Every function runs in the caller's transaction.
//!
//! How balances stay right without a hot row:
//! - Only a movement that *debits* a non-negative account can break a bound,
//!   so only that movement locks the account row (`FOR NO KEY UPDATE`) and
//!   checks what is available (posted minus pending holds' debits) in one
//!   statement, after the lock, so it sees every earlier debit committed.
//!   Such debits of one account therefore serialize; nothing else does.
//! - Credits, and debits of the unbounded accounts, only insert postings. On
//!   a shared account (a supplier's payable, the platform's accounts) they
//!   also insert a signed row into `balance_deltas` instead of updating the
//!   account row, so many releases to one supplier never queue on its row;
//!   the balance is `balance_minor` plus the account's deltas, and
//!   [`roll_up`] folds committed deltas into `balance_minor` in one
//!   statement. Deltas rather than "postings after sequence N": sequence
//!   numbers are taken in start order, not commit order, so a checkpoint by
//!   sequence could skip a posting that committed late.
//! - Per-contract accounts (`AccountKind::is_eager`) keep their balance on
//!   the row in the same transaction as each posting: every operation on a
//!   contract holds its escrow account's row lock anyway.
//! - The lock is `FOR NO KEY UPDATE`, not `FOR UPDATE`: the foreign keys of
//!   concurrent postings take `KEY SHARE` locks on the accounts they name,
//!   and those must not wait for a payout checking the supplier's balance.
//! - Postings are append-only (a trigger refuses UPDATE, DELETE, TRUNCATE);
//!   [`reconcile`] recomputes every balance from them.

use std::collections::{BTreeMap, HashMap};

use sqlx::{FromRow, PgConnection, PgPool};
use ta_runtime::{ServiceError, money::Currency};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::ledger::{
    self, AccountKey, AccountKind, Balance, Discrepancy, Hold, HoldRequest, HoldStatus,
    LedgerError, LedgerStore, Leg, Posting, Purpose, TransferRequest,
};

/// A database error inside a ledger operation: the domain's `Storage` kind,
/// mapped as every storage error is (unavailable, aborted, internal).
impl From<sqlx::Error> for LedgerError {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error.into())
    }
}

/// How many due holds one expiry pass voids per statement.
const EXPIRY_BATCH: i64 = 500;

fn corrupt(what: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage(ServiceError::internal(format!("ledger row: {what}")))
}

fn key_from(kind: &str, owner: String, currency: &str) -> Result<AccountKey, LedgerError> {
    Ok(AccountKey {
        kind: AccountKind::parse(kind).ok_or_else(|| corrupt(format!("kind {kind}")))?,
        owner,
        currency: Currency::parse(currency)
            .ok_or_else(|| corrupt(format!("currency {currency}")))?,
    })
}

/// The id of a ledger account, created on first use.
pub async fn account_id(conn: &mut PgConnection, key: &AccountKey) -> Result<Uuid, LedgerError> {
    let ids = account_ids(conn, std::slice::from_ref(key)).await?;
    ids.get(key)
        .copied()
        .ok_or_else(|| corrupt(format!("account {key} was not resolved")))
}

/// The ids of ledger accounts, those never used created, in one statement:
/// the movement's accounts are resolved in one round trip, not one or three
/// per account.
pub async fn account_ids(
    conn: &mut PgConnection,
    keys: &[AccountKey],
) -> Result<HashMap<AccountKey, Uuid>, LedgerError> {
    let mut unique: Vec<&AccountKey> = Vec::with_capacity(keys.len());
    for key in keys {
        if !unique.contains(&key) {
            unique.push(key);
        }
    }
    let fresh_ids: Vec<Uuid> = unique.iter().map(|_| Uuid::now_v7()).collect();
    let kinds: Vec<&str> = unique.iter().map(|k| k.kind.as_str()).collect();
    let owners: Vec<&str> = unique.iter().map(|k| k.owner.as_str()).collect();
    let currencies: Vec<&str> = unique.iter().map(|k| k.currency.as_str()).collect();
    let non_negative: Vec<bool> = unique.iter().map(|k| k.kind.is_non_negative()).collect();
    let eager: Vec<bool> = unique.iter().map(|k| k.kind.is_eager()).collect();
    // The existing rows come from the statement's snapshot and the new ones
    // from the insert's RETURNING (the snapshot does not show them). A row a
    // concurrent first use committed after the snapshot is neither: it is
    // read again below.
    let statement = || {
        sqlx::query_as::<_, (Uuid, String, String, String)>(
            "WITH wanted AS ( \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], \
                                      $5::bool[], $6::bool[]) \
                 AS w(fresh_id, kind, owner, currency, non_negative, eager) \
             ), existing AS ( \
                 SELECT a.id, a.kind, a.owner, a.currency FROM escrow.ledger_accounts a \
                 JOIN wanted w USING (kind, owner, currency) \
             ), created AS ( \
                 INSERT INTO escrow.ledger_accounts (id, kind, owner, currency, non_negative, eager) \
                 SELECT w.fresh_id, w.kind, w.owner, w.currency, w.non_negative, w.eager \
                 FROM wanted w WHERE NOT EXISTS ( \
                     SELECT 1 FROM existing e \
                     WHERE (e.kind, e.owner, e.currency) = (w.kind, w.owner, w.currency)) \
                 ON CONFLICT (kind, owner, currency) DO NOTHING \
                 RETURNING id, kind, owner, currency \
             ) \
             SELECT id, kind, owner, currency FROM existing \
             UNION ALL SELECT id, kind, owner, currency FROM created",
        )
        .bind(&fresh_ids)
        .bind(&kinds)
        .bind(&owners)
        .bind(&currencies)
        .bind(&non_negative)
        .bind(&eager)
    };
    let mut found = HashMap::with_capacity(unique.len());
    for attempt in 0..2 {
        for (id, kind, owner, currency) in statement().fetch_all(&mut *conn).await? {
            found.insert(key_from(&kind, owner, &currency)?, id);
        }
        if unique.iter().all(|key| found.contains_key(*key)) {
            return Ok(found);
        }
        tracing::debug!(
            attempt,
            "a ledger account was created concurrently; reading again"
        );
    }
    Err(corrupt("ledger accounts vanished after their insert"))
}

/// The balance columns of ledger account `a`: posted (its row plus the
/// deltas not yet rolled up), pending debits and pending credits.
const BALANCE_COLUMNS: &str = "a.id, \
    (a.balance_minor + coalesce((SELECT sum(d.amount_minor) FROM escrow.balance_deltas d \
       WHERE d.account_id = a.id), 0))::bigint, \
    coalesce((SELECT sum(h.amount_minor) FROM escrow.holds h \
       WHERE h.debit_account_id = a.id AND h.status = 'pending'), 0)::bigint, \
    coalesce((SELECT sum(h.amount_minor) FROM escrow.holds h \
       WHERE h.credit_account_id = a.id AND h.status = 'pending'), 0)::bigint";

fn balance_of((posted, pending_debits, pending_credits): (i64, i64, i64)) -> Balance {
    Balance {
        posted,
        pending_debits,
        pending_credits,
    }
}

/// The balances of `ids`, read in one statement so that the posted balance
/// and the pending holds come from the same snapshot.
async fn balances(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Balance>, LedgerError> {
    let rows: Vec<(Uuid, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {BALANCE_COLUMNS} FROM escrow.ledger_accounts a WHERE a.id = ANY($1)"
    )))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, posted, debits, credits)| (id, balance_of((posted, debits, credits))))
        .collect())
}

/// Locks the non-negative accounts a movement debits (in id order, the same
/// for every writer) and returns what each has available.
async fn lock_and_read_available(
    conn: &mut PgConnection,
    accounts: &[(AccountKey, Uuid)],
) -> Result<HashMap<AccountKey, i64>, LedgerError> {
    let mut ids: Vec<Uuid> = accounts.iter().map(|(_, id)| *id).collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    sqlx::query(
        "SELECT id FROM escrow.ledger_accounts WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    let found = balances(conn, &ids).await?;
    Ok(accounts
        .iter()
        .map(|(key, id)| (key.clone(), found.get(id).map_or(0, Balance::available)))
        .collect())
}

/// Locks a bounded account's row and reads what it has available, for a
/// decision (how much to pay out) that a hold placed in the same transaction
/// then takes: a concurrent twin waits for the lock and sees the hold.
pub async fn lock_available(conn: &mut PgConnection, key: &AccountKey) -> Result<i64, LedgerError> {
    let id = account_id(conn, key).await?;
    Ok(lock_and_read_available(conn, &[(key.clone(), id)])
        .await?
        .get(key)
        .copied()
        .unwrap_or(0))
}

async fn purpose_used(conn: &mut PgConnection, purpose: &Purpose) -> Result<bool, LedgerError> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM escrow.transfers WHERE purpose_scope = $1 AND purpose = $2)",
    )
    .bind(&purpose.scope)
    .bind(&purpose.key)
    .fetch_one(&mut *conn)
    .await?)
}

/// Claims the purpose. The unique index decides between concurrent twins:
/// the later one waits for the first and then sees the purpose used.
async fn insert_transfer(
    conn: &mut PgConnection,
    id: Uuid,
    purpose: &Purpose,
    escrow_account: Option<Uuid>,
) -> Result<(), LedgerError> {
    sqlx::query(
        "INSERT INTO escrow.transfers (id, purpose_scope, purpose, escrow_account_id) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(&purpose.scope)
    .bind(&purpose.key)
    .bind(escrow_account)
    .execute(&mut *conn)
    .await
    .map_err(|error| match error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            LedgerError::PurposeUsed(purpose.clone())
        }
        other => other.into(),
    })?;
    Ok(())
}

struct Side<'a> {
    key: &'a AccountKey,
    id: Uuid,
}

async fn insert_posting(
    conn: &mut PgConnection,
    transfer_id: Uuid,
    debit: Side<'_>,
    credit: Side<'_>,
    amount_minor: i64,
    hold_id: Option<Uuid>,
    escrow_account: Option<Uuid>,
) -> Result<Posting, LedgerError> {
    let id = Uuid::now_v7();
    // The posting and its effect on both sides in one statement: an eager
    // account's balance is updated in place, a lazy (hot) one gets a delta
    // row that `roll_up` folds in later.
    let (mut eager_ids, mut eager_amounts, mut lazy_ids, mut lazy_amounts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (side, signed) in [(&debit, -amount_minor), (&credit, amount_minor)] {
        if side.key.kind.is_eager() {
            eager_ids.push(side.id);
            eager_amounts.push(signed);
        } else {
            lazy_ids.push(side.id);
            lazy_amounts.push(signed);
        }
    }
    sqlx::query(
        "WITH posting AS ( \
             INSERT INTO escrow.postings (id, transfer_id, debit_account_id, credit_account_id, \
             currency, amount_minor, hold_id, escrow_account_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id \
         ), eager AS ( \
             UPDATE escrow.ledger_accounts a SET balance_minor = a.balance_minor + s.amount_minor \
             FROM unnest($9::uuid[], $10::bigint[]) AS s(account_id, amount_minor) \
             WHERE a.id = s.account_id \
         ) \
         INSERT INTO escrow.balance_deltas (posting_id, account_id, amount_minor) \
         SELECT posting.id, s.account_id, s.amount_minor \
         FROM posting, unnest($11::uuid[], $12::bigint[]) AS s(account_id, amount_minor)",
    )
    .bind(id)
    .bind(transfer_id)
    .bind(debit.id)
    .bind(credit.id)
    .bind(debit.key.currency.as_str())
    .bind(amount_minor)
    .bind(hold_id)
    .bind(escrow_account)
    .bind(&eager_ids)
    .bind(&eager_amounts)
    .bind(&lazy_ids)
    .bind(&lazy_amounts)
    .execute(&mut *conn)
    .await?;
    Ok(Posting {
        id,
        transfer_id,
        debit: debit.key.clone(),
        credit: credit.key.clone(),
        amount_minor,
        hold_id,
        escrow_account,
    })
}

/// Commits a linked transfer: every leg or none.
pub async fn transfer(
    conn: &mut PgConnection,
    request: &TransferRequest,
) -> Result<Vec<Posting>, LedgerError> {
    ledger::validate_legs(&request.legs)?;
    if purpose_used(conn, &request.purpose).await? {
        return Err(LedgerError::PurposeUsed(request.purpose.clone()));
    }
    let keys: Vec<AccountKey> = request
        .legs
        .iter()
        .flat_map(|leg| [leg.debit.clone(), leg.credit.clone()])
        .collect();
    let ids = account_ids(conn, &keys).await?;
    let id_of = |key: &AccountKey| {
        ids.get(key)
            .copied()
            .ok_or_else(|| corrupt(format!("account {key} was not resolved")))
    };
    let bounded = ledger::bounded_debits(&request.legs)
        .into_iter()
        .map(|key| id_of(&key).map(|id| (key, id)))
        .collect::<Result<Vec<_>, _>>()?;
    let available = lock_and_read_available(conn, &bounded).await?;
    ledger::plan_debits(&request.legs, &available)?;
    insert_transfer(conn, request.id, &request.purpose, request.escrow_account).await?;
    let mut postings = Vec::with_capacity(request.legs.len());
    for Leg {
        debit,
        credit,
        amount_minor,
    } in &request.legs
    {
        postings.push(
            insert_posting(
                conn,
                request.id,
                Side {
                    key: debit,
                    id: id_of(debit)?,
                },
                Side {
                    key: credit,
                    id: id_of(credit)?,
                },
                *amount_minor,
                None,
                request.escrow_account,
            )
            .await?,
        );
    }
    Ok(postings)
}

/// Places a hold: reserves its amount on the debit account.
pub async fn hold(conn: &mut PgConnection, request: &HoldRequest) -> Result<Hold, LedgerError> {
    ledger::validate_leg(&request.debit, &request.credit, request.amount_minor)?;
    if purpose_used(conn, &request.purpose).await? {
        return Err(LedgerError::PurposeUsed(request.purpose.clone()));
    }
    let ids = account_ids(conn, &[request.debit.clone(), request.credit.clone()]).await?;
    let id_of = |key: &AccountKey| {
        ids.get(key)
            .copied()
            .ok_or_else(|| corrupt(format!("account {key} was not resolved")))
    };
    let (debit, credit) = (id_of(&request.debit)?, id_of(&request.credit)?);
    if request.debit.kind.is_non_negative() {
        let available = lock_and_read_available(conn, &[(request.debit.clone(), debit)]).await?;
        ledger::check_hold_funds(request, available.get(&request.debit).copied().unwrap_or(0))?;
    }
    insert_transfer(conn, request.id, &request.purpose, request.escrow_account).await?;
    sqlx::query(
        "INSERT INTO escrow.holds (id, debit_account_id, credit_account_id, currency, \
         amount_minor, status, escrow_account_id, expires_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7)",
    )
    .bind(request.id)
    .bind(debit)
    .bind(credit)
    .bind(request.debit.currency.as_str())
    .bind(request.amount_minor)
    .bind(request.escrow_account)
    .bind(request.expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(Hold {
        id: request.id,
        purpose: request.purpose.clone(),
        escrow_account: request.escrow_account,
        debit: request.debit.clone(),
        credit: request.credit.clone(),
        amount_minor: request.amount_minor,
        status: HoldStatus::Pending,
        posted_minor: None,
        expires_at: request.expires_at,
    })
}

#[derive(FromRow)]
struct HoldRow {
    id: Uuid,
    purpose_scope: String,
    purpose: String,
    escrow_account_id: Option<Uuid>,
    debit_account_id: Uuid,
    debit_kind: String,
    debit_owner: String,
    debit_currency: String,
    credit_account_id: Uuid,
    credit_kind: String,
    credit_owner: String,
    credit_currency: String,
    amount_minor: i64,
    status: String,
    posted_minor: Option<i64>,
    expires_at: OffsetDateTime,
}

impl HoldRow {
    fn into_hold(self) -> Result<(Hold, Uuid, Uuid), LedgerError> {
        let hold = Hold {
            id: self.id,
            purpose: Purpose {
                scope: self.purpose_scope,
                key: self.purpose,
            },
            escrow_account: self.escrow_account_id,
            debit: key_from(&self.debit_kind, self.debit_owner, &self.debit_currency)?,
            credit: key_from(&self.credit_kind, self.credit_owner, &self.credit_currency)?,
            amount_minor: self.amount_minor,
            status: HoldStatus::parse(&self.status)
                .ok_or_else(|| corrupt(format!("hold status {}", self.status)))?,
            posted_minor: self.posted_minor,
            expires_at: self.expires_at,
        };
        Ok((hold, self.debit_account_id, self.credit_account_id))
    }
}

const HOLD_SELECT: &str = "SELECT h.id, t.purpose_scope, t.purpose, h.escrow_account_id, \
    h.debit_account_id, d.kind AS debit_kind, d.owner AS debit_owner, d.currency AS debit_currency, \
    h.credit_account_id, c.kind AS credit_kind, c.owner AS credit_owner, c.currency AS credit_currency, \
    h.amount_minor, h.status, h.posted_minor, h.expires_at \
    FROM escrow.holds h JOIN escrow.transfers t ON t.id = h.id \
    JOIN escrow.ledger_accounts d ON d.id = h.debit_account_id \
    JOIN escrow.ledger_accounts c ON c.id = h.credit_account_id WHERE h.id = $1";

/// Reads a hold; with `lock`, holds its row lock until the transaction
/// ends, so two resolutions of one hold serialize and the second sees the
/// first's outcome.
async fn read_hold(
    conn: &mut PgConnection,
    hold_id: Uuid,
    lock: bool,
) -> Result<(Hold, Uuid, Uuid), LedgerError> {
    let sql = if lock {
        format!("{HOLD_SELECT} FOR UPDATE OF h")
    } else {
        HOLD_SELECT.to_owned()
    };
    sqlx::query_as::<_, HoldRow>(sqlx::AssertSqlSafe(sql))
        .bind(hold_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(LedgerError::HoldNotFound(hold_id))?
        .into_hold()
}

pub async fn get_hold(conn: &mut PgConnection, hold_id: Uuid) -> Result<Hold, LedgerError> {
    Ok(read_hold(conn, hold_id, false).await?.0)
}

/// Posts a pending hold, for its whole amount or less. Posting needs no
/// account lock: it lowers the debit account's posted balance by at most
/// what the hold already reserved, so what is available never shrinks.
pub async fn post_hold(
    conn: &mut PgConnection,
    hold_id: Uuid,
    amount_minor: Option<i64>,
    now: OffsetDateTime,
) -> Result<Posting, LedgerError> {
    let (hold, debit, credit) = read_hold(conn, hold_id, true).await?;
    let amount = ledger::post_amount(&hold, amount_minor, now)?;
    let resolved = sqlx::query(
        "UPDATE escrow.holds SET status = 'posted', posted_minor = $2, resolved_at = $3 \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(hold_id)
    .bind(amount)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if resolved.rows_affected() != 1 {
        return Err(corrupt(format!("hold {hold_id} changed under its lock")));
    }
    insert_posting(
        conn,
        hold.id,
        Side {
            key: &hold.debit,
            id: debit,
        },
        Side {
            key: &hold.credit,
            id: credit,
        },
        amount,
        Some(hold.id),
        hold.escrow_account,
    )
    .await
}

/// Voids a pending hold; its reservation is released.
pub async fn void_hold(
    conn: &mut PgConnection,
    hold_id: Uuid,
    now: OffsetDateTime,
) -> Result<Hold, LedgerError> {
    let (mut hold, _, _) = read_hold(conn, hold_id, true).await?;
    if hold.status != HoldStatus::Pending {
        return Err(LedgerError::HoldResolved {
            hold: hold_id,
            status: hold.status,
        });
    }
    sqlx::query(
        "UPDATE escrow.holds SET status = 'voided', resolved_at = $2 \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(hold_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    hold.status = HoldStatus::Voided;
    Ok(hold)
}

/// Voids up to `limit` holds due at `now`, skipping holds another
/// transaction is resolving (it decides them), and returns their ids: what
/// a timer handler calls, so that no hold stays pending forever.
pub async fn expire_due_holds(
    conn: &mut PgConnection,
    now: OffsetDateTime,
    limit: i64,
) -> Result<Vec<Uuid>, LedgerError> {
    Ok(sqlx::query_scalar(
        "WITH due AS (SELECT id FROM escrow.holds WHERE status = 'pending' AND expires_at <= $1 \
           ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         UPDATE escrow.holds h SET status = 'voided', resolved_at = $1 FROM due \
         WHERE h.id = due.id RETURNING h.id",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// An account's balance; zero for an account never used.
pub async fn balance(conn: &mut PgConnection, key: &AccountKey) -> Result<Balance, LedgerError> {
    let row: Option<(Uuid, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {BALANCE_COLUMNS} FROM escrow.ledger_accounts a \
         WHERE a.kind = $1 AND a.owner = $2 AND a.currency = $3"
    )))
    .bind(key.kind.as_str())
    .bind(&key.owner)
    .bind(key.currency.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(
        row.map_or_else(Balance::default, |(_, posted, debits, credits)| {
            balance_of((posted, debits, credits))
        }),
    )
}

/// Folds the committed deltas of up to `limit` shared accounts into their
/// rows, one short statement per account; returns how many it folded. Safe
/// to run at any time beside any writer: a delta is deleted and added to its
/// row in one statement, and one that commits later waits for the next run.
pub async fn roll_up(conn: &mut PgConnection, limit: i64) -> Result<usize, LedgerError> {
    let accounts: Vec<Uuid> =
        sqlx::query_scalar("SELECT DISTINCT account_id FROM escrow.balance_deltas LIMIT $1")
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
    for account in &accounts {
        sqlx::query(
            "WITH folded AS (DELETE FROM escrow.balance_deltas WHERE account_id = $1 \
               RETURNING amount_minor) \
             UPDATE escrow.ledger_accounts \
             SET balance_minor = balance_minor + (SELECT coalesce(sum(amount_minor), 0) FROM folded)::bigint \
             WHERE id = $1",
        )
        .bind(account)
        .execute(&mut *conn)
        .await?;
    }
    Ok(accounts.len())
}

#[derive(FromRow)]
struct KeptRow {
    kind: String,
    owner: String,
    currency: String,
    kept: i64,
    recomputed: i64,
    pending_debits: i64,
}

/// Recomputes every account's balance from the postings and its pending
/// reservations from the holds, and reports every difference: kept balance
/// against recomputed, currencies that do not sum to zero, non-negative
/// accounts below zero, holds whose postings disagree with their status,
/// postings whose accounts are in another currency. Empty means sound.
pub async fn reconcile(conn: &mut PgConnection) -> Result<Vec<Discrepancy>, LedgerError> {
    let rows: Vec<KeptRow> = sqlx::query_as(
        "WITH flows AS ( \
           SELECT credit_account_id AS account_id, amount_minor AS delta FROM escrow.postings \
           UNION ALL SELECT debit_account_id, -amount_minor FROM escrow.postings), \
         recomputed AS (SELECT account_id, sum(delta) AS balance FROM flows GROUP BY account_id), \
         deltas AS (SELECT account_id, sum(amount_minor) AS total FROM escrow.balance_deltas \
           GROUP BY account_id), \
         pending AS (SELECT debit_account_id AS account_id, sum(amount_minor) AS total \
           FROM escrow.holds WHERE status = 'pending' GROUP BY debit_account_id) \
         SELECT a.kind, a.owner, a.currency, \
           (a.balance_minor + coalesce(d.total, 0))::bigint AS kept, \
           coalesce(r.balance, 0)::bigint AS recomputed, \
           coalesce(p.total, 0)::bigint AS pending_debits \
         FROM escrow.ledger_accounts a \
         LEFT JOIN recomputed r ON r.account_id = a.id \
         LEFT JOIN deltas d ON d.account_id = a.id \
         LEFT JOIN pending p ON p.account_id = a.id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut found = Vec::new();
    let mut kept = BTreeMap::new();
    let mut pending = HashMap::new();
    for row in rows {
        let account = key_from(&row.kind, row.owner, &row.currency)?;
        if row.kept != row.recomputed {
            found.push(Discrepancy::BalanceMismatch {
                account: account.clone(),
                kept: row.kept,
                recomputed: row.recomputed,
            });
        }
        pending.insert(account.clone(), row.pending_debits);
        kept.insert(account, row.kept);
    }
    let holds: Vec<(Uuid, String, Option<i64>, Vec<i64>)> = sqlx::query_as(
        "SELECT h.id, h.status, h.posted_minor, \
           coalesce(array_agg(p.amount_minor) FILTER (WHERE p.id IS NOT NULL), '{}') \
         FROM escrow.holds h LEFT JOIN escrow.postings p ON p.hold_id = h.id \
         GROUP BY h.id \
         HAVING NOT ((h.status = 'posted' AND count(p.id) = 1 AND max(p.amount_minor) = h.posted_minor) \
                  OR (h.status <> 'posted' AND count(p.id) = 0))",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (hold, status, posted, postings) in holds {
        let status = HoldStatus::parse(&status).ok_or_else(|| corrupt("hold status"))?;
        let detail = ledger::hold_mismatch(status, posted, &postings)
            .unwrap_or_else(|| "its postings disagree with its status".into());
        found.push(Discrepancy::HoldMismatch { hold, detail });
    }
    let stray: Vec<Uuid> = sqlx::query_scalar(
        "SELECT p.id FROM escrow.postings p \
         JOIN escrow.ledger_accounts d ON d.id = p.debit_account_id \
         JOIN escrow.ledger_accounts c ON c.id = p.credit_account_id \
         WHERE p.currency <> d.currency OR p.currency <> c.currency",
    )
    .fetch_all(&mut *conn)
    .await?;
    found.extend(
        stray
            .into_iter()
            .map(|posting| Discrepancy::PostingCurrency { posting }),
    );
    found.extend(ledger::check_totals(&kept, &pending));
    Ok(found)
}

/// The Postgres ledger as a [`LedgerStore`]: each call is its own
/// transaction, committed when it succeeds and rolled back when it fails.
#[derive(Clone, Debug)]
pub struct PgLedger {
    pool: PgPool,
}

impl PgLedger {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut tx = ta_runtime::db::begin(&self.pool).await?;
        let outcome = work(&mut tx).await;
        match outcome {
            Ok(value) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(error) => {
                // At once, not when the pooled connection is next used: the
                // failed call's row locks must not outlive it.
                let _ = tx.rollback().await;
                Err(error)
            }
        }
    }
}

impl LedgerStore for PgLedger {
    async fn transfer(&mut self, request: &TransferRequest) -> Result<Vec<Posting>, LedgerError> {
        self.run(async |c| transfer(c, request).await).await
    }

    async fn hold(&mut self, request: &HoldRequest) -> Result<Hold, LedgerError> {
        self.run(async |c| hold(c, request).await).await
    }

    async fn post_hold(
        &mut self,
        hold_id: Uuid,
        amount_minor: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<Posting, LedgerError> {
        self.run(async |c| post_hold(c, hold_id, amount_minor, now).await)
            .await
    }

    async fn void_hold(&mut self, hold_id: Uuid) -> Result<Hold, LedgerError> {
        let now = ta_runtime::timestamps::now();
        self.run(async |c| void_hold(c, hold_id, now).await).await
    }

    async fn expire_due_holds(&mut self, now: OffsetDateTime) -> Result<Vec<Uuid>, LedgerError> {
        self.run(async |c| {
            let mut all = Vec::new();
            loop {
                let batch = expire_due_holds(c, now, EXPIRY_BATCH).await?;
                let done = batch.len() < usize::try_from(EXPIRY_BATCH).unwrap_or(usize::MAX);
                all.extend(batch);
                if done {
                    return Ok(all);
                }
            }
        })
        .await
    }

    async fn balance(&mut self, account: &AccountKey) -> Result<Balance, LedgerError> {
        self.run(async |c| balance(c, account).await).await
    }

    async fn hold_status(&mut self, hold_id: Uuid) -> Result<Hold, LedgerError> {
        self.run(async |c| get_hold(c, hold_id).await).await
    }

    async fn reconcile(&mut self) -> Result<Vec<Discrepancy>, LedgerError> {
        self.run(async |c| reconcile(c).await).await
    }
}

/// The Pay Later loan still outstanding for an escrow account, per
/// financing partner (ordered by partner): what the partner funded into it
/// minus what was refunded to the partner from it.
pub async fn loan_outstanding(
    conn: &mut PgConnection,
    escrow_account: Uuid,
) -> Result<Vec<(AccountKey, i64)>, LedgerError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT a.owner, a.currency, sum(CASE WHEN p.debit_account_id = a.id \
           THEN p.amount_minor ELSE -p.amount_minor END)::bigint \
         FROM escrow.postings p JOIN escrow.ledger_accounts a \
           ON a.kind = 'financing_partner' AND a.id IN (p.debit_account_id, p.credit_account_id) \
         WHERE p.escrow_account_id = $1 GROUP BY a.owner, a.currency ORDER BY a.owner",
    )
    .bind(escrow_account)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(owner, currency, outstanding)| {
            Ok((
                key_from(AccountKind::FinancingPartner.as_str(), owner, &currency)?,
                outstanding,
            ))
        })
        .collect()
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
