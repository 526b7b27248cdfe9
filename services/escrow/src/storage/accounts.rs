//! Escrow accounts: their schedule, terms and freezes, and the reads that
//! show an account (its totals, its next deadline). Every
//! change to an account runs under its row lock ([`lock_account`]), taken
//! before any ledger or attempt row, so operations on one contract
//! serialize and lock in one order.

use std::collections::BTreeSet;

use sqlx::{FromRow, PgConnection};
use ta_runtime::{ServiceError, money::Currency};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{EscrowAccount, ScheduledPayment, Status};

#[derive(FromRow)]
struct AccountRow {
    id: Uuid,
    contract_id: String,
    buyer_principal_id: String,
    supplier_id: String,
    currency: String,
    status: String,
    hold_until: OffsetDateTime,
    hold_paused_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
    closed_at: Option<OffsetDateTime>,
}

/// Inserts a new account unless its contract has one; returns whether it
/// did. `supplier_owner` (also in its terms) is kept on the account's row,
/// where a supplier's listing finds it by index.
pub async fn insert_account(
    conn: &mut PgConnection,
    account: &EscrowAccount,
    supplier_owner: &str,
) -> Result<bool, ServiceError> {
    let inserted = sqlx::query(
        "INSERT INTO escrow.escrow_accounts (id, contract_id, buyer_principal_id, supplier_id, \
         currency, status, hold_until, hold_paused_at, created_at, updated_at, \
         supplier_owner_principal_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10) \
         ON CONFLICT (contract_id) DO NOTHING",
    )
    .bind(account.id)
    .bind(&account.contract_id)
    .bind(&account.buyer_principal_id)
    .bind(&account.supplier_id)
    .bind(account.currency.as_str())
    .bind(account.status.as_str())
    .bind(account.hold_until)
    .bind(account.hold_paused_at)
    .bind(account.created_at)
    .bind(supplier_owner)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        return Ok(false);
    }
    for (position, payment) in account.schedule.iter().enumerate() {
        sqlx::query(
            "INSERT INTO escrow.scheduled_payments (escrow_account_id, milestone_id, position, \
             amount_minor, funded_minor, due_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(account.id)
        .bind(&payment.milestone_id)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(payment.amount_minor)
        .bind(payment.funded_minor)
        .bind(payment.due_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(true)
}

/// What reads an account with its schedule and active freezes (into
/// [`Loaded`]): the columns, over `escrow.escrow_accounts a`, and the joins
/// that add the schedule and the freezes.
const ACCOUNT_COLUMNS: &str = "a.id, a.contract_id, a.buyer_principal_id, a.supplier_id, \
     a.currency, a.status, a.hold_until, a.hold_paused_at, a.created_at, a.closed_at, \
     s.milestone_ids, s.amounts_minor, s.funded_minor, s.due_at, f.active_claims";
const ACCOUNT_JOINS: &str = "CROSS JOIN LATERAL ( \
         SELECT coalesce(array_agg(milestone_id ORDER BY position), '{}') AS milestone_ids, \
                coalesce(array_agg(amount_minor ORDER BY position), '{}') AS amounts_minor, \
                coalesce(array_agg(funded_minor ORDER BY position), '{}') AS funded_minor, \
                coalesce(array_agg(due_at ORDER BY position), '{}') AS due_at \
         FROM escrow.scheduled_payments WHERE escrow_account_id = a.id) s \
     CROSS JOIN LATERAL ( \
         SELECT coalesce(array_agg(claim_id), '{}') AS active_claims \
         FROM escrow.freezes WHERE escrow_account_id = a.id AND lifted_at IS NULL) f";

#[derive(FromRow)]
struct Loaded {
    #[sqlx(flatten)]
    account: AccountRow,
    milestone_ids: Vec<String>,
    amounts_minor: Vec<i64>,
    funded_minor: Vec<i64>,
    due_at: Vec<OffsetDateTime>,
    active_claims: Vec<String>,
}

impl Loaded {
    fn into_account(self) -> Result<EscrowAccount, ServiceError> {
        let row = self.account;
        let corrupt =
            |what: &str| ServiceError::internal(format!("escrow account {}: bad {what}", row.id));
        let payments = self.milestone_ids.len();
        if [
            self.amounts_minor.len(),
            self.funded_minor.len(),
            self.due_at.len(),
        ] != [payments; 3]
        {
            return Err(corrupt("schedule"));
        }
        let schedule = self
            .milestone_ids
            .into_iter()
            .zip(self.amounts_minor)
            .zip(self.funded_minor)
            .zip(self.due_at)
            .map(
                |(((milestone_id, amount_minor), funded_minor), due_at)| ScheduledPayment {
                    milestone_id,
                    amount_minor,
                    due_at,
                    funded_minor,
                },
            )
            .collect();
        Ok(EscrowAccount {
            currency: Currency::parse(&row.currency).ok_or_else(|| corrupt("currency"))?,
            status: Status::parse(&row.status).ok_or_else(|| corrupt("status"))?,
            schedule,
            freezes: self.active_claims.into_iter().collect::<BTreeSet<_>>(),
            hold_until: row.hold_until,
            hold_paused_at: row.hold_paused_at,
            id: row.id,
            contract_id: row.contract_id,
            buyer_principal_id: row.buyer_principal_id,
            supplier_id: row.supplier_id,
            created_at: row.created_at,
            closed_at: row.closed_at,
        })
    }
}

/// An account with its schedule and active freezes, in one statement (one
/// round trip, on every use case's path); `lock` holds the account's row
/// lock until the transaction ends.
async fn load(
    conn: &mut PgConnection,
    where_clause: &str,
    key: impl for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    lock: bool,
) -> Result<Option<EscrowAccount>, ServiceError> {
    if lock {
        // The lock is taken by a statement of its own, and the account read
        // by the next one. One statement that locks `a` and reads the
        // schedule and the freezes beside it reads them in the snapshot it
        // took before waiting for the lock: after the wait, `a` is the
        // holder's new version but its payments and freezes are as they
        // were, so a payment funded or a freeze placed a moment before looked
        // undone (found by the chaos run: a second funding attempt for a
        // payment already funded).
        let locked: Option<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT a.id FROM escrow.escrow_accounts a WHERE a.{where_clause} FOR UPDATE OF a"
        )))
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(id) = locked else {
            return Ok(None);
        };
        return read(conn, "id = $1", id).await;
    }
    read(conn, where_clause, key).await
}

async fn read(
    conn: &mut PgConnection,
    where_clause: &str,
    key: impl for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
) -> Result<Option<EscrowAccount>, ServiceError> {
    let sql = format!(
        "SELECT {ACCOUNT_COLUMNS} FROM escrow.escrow_accounts a {ACCOUNT_JOINS} \
         WHERE a.{where_clause}"
    );
    sqlx::query_as::<_, Loaded>(sqlx::AssertSqlSafe(sql))
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .map(Loaded::into_account)
        .transpose()
}

/// What NOT_FOUND calls an escrow account: "escrow account <id> not found",
/// for an id that does not exist and for one the caller may not see.
pub const ACCOUNT: &str = "escrow account";

/// Reads an account and holds its row lock until the transaction ends.
pub async fn lock_account(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<EscrowAccount, ServiceError> {
    load(conn, "id = $1", id, true)
        .await?
        .ok_or_else(|| ServiceError::not_found(ACCOUNT, id))
}

/// Reads the account a funding attempt pays into and holds its row lock:
/// one statement where reading the attempt first would take two.
pub async fn lock_account_of_attempt(
    conn: &mut PgConnection,
    attempt_id: Uuid,
) -> Result<EscrowAccount, ServiceError> {
    load(conn, ATTEMPT_ACCOUNT, attempt_id, true)
        .await?
        .ok_or_else(|| ServiceError::not_found("funding attempt", attempt_id))
}

const ATTEMPT_ACCOUNT: &str =
    "id = (SELECT escrow_account_id FROM escrow.funding_attempts WHERE id = $1)";

pub async fn get_account(conn: &mut PgConnection, id: Uuid) -> Result<EscrowAccount, ServiceError> {
    load(conn, "id = $1", id, false)
        .await?
        .ok_or_else(|| ServiceError::not_found(ACCOUNT, id))
}

pub async fn find_by_contract(
    conn: &mut PgConnection,
    contract_id: &str,
) -> Result<Option<EscrowAccount>, ServiceError> {
    load(conn, "contract_id = $1", contract_id.to_owned(), false).await
}

/// Writes back the status, the hold deadline and what each scheduled
/// payment received, of an account read with [`lock_account`].
pub async fn save_account(
    conn: &mut PgConnection,
    account: &EscrowAccount,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let (milestones, funded): (Vec<&str>, Vec<i64>) = account
        .schedule
        .iter()
        .map(|p| (p.milestone_id.as_str(), p.funded_minor))
        .unzip();
    // One statement: the account's row, and only the payments whose funding
    // changed.
    sqlx::query(
        "WITH account AS ( \
             UPDATE escrow.escrow_accounts SET status = $2, closed_at = $3, updated_at = $4, \
             hold_until = $5, hold_paused_at = $6 WHERE id = $1 RETURNING id \
         ) \
         UPDATE escrow.scheduled_payments p SET funded_minor = n.funded_minor, \
         funded_at = CASE WHEN n.funded_minor >= p.amount_minor \
                          THEN coalesce(p.funded_at, now()) END \
         FROM account, unnest($7::text[], $8::bigint[]) AS n(milestone_id, funded_minor) \
         WHERE p.escrow_account_id = account.id AND p.milestone_id = n.milestone_id \
           AND p.funded_minor <> n.funded_minor",
    )
    .bind(account.id)
    .bind(account.status.as_str())
    .bind(account.closed_at)
    .bind(now)
    .bind(account.hold_until)
    .bind(account.hold_paused_at)
    .bind(&milestones)
    .bind(&funded)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records an active freeze (again, if it was lifted).
pub async fn insert_freeze(
    conn: &mut PgConnection,
    account_id: Uuid,
    claim_id: &str,
    reason: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO escrow.freezes (escrow_account_id, claim_id, reason, frozen_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (escrow_account_id, claim_id) \
         DO UPDATE SET reason = excluded.reason, frozen_at = excluded.frozen_at, lifted_at = NULL \
         WHERE escrow.freezes.lifted_at IS NOT NULL",
    )
    .bind(account_id)
    .bind(claim_id)
    .bind(reason)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn lift_freeze(
    conn: &mut PgConnection,
    account_id: Uuid,
    claim_id: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE escrow.freezes SET lifted_at = $3 \
         WHERE escrow_account_id = $1 AND claim_id = $2 AND lifted_at IS NULL",
    )
    .bind(account_id)
    .bind(claim_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether `claim_id` froze the account: `Some(true)` while its freeze is
/// active, `Some(false)` once lifted, `None` if it never did.
pub async fn freeze_of(
    conn: &mut PgConnection,
    account_id: Uuid,
    claim_id: &str,
) -> Result<Option<bool>, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT lifted_at IS NULL FROM escrow.freezes WHERE escrow_account_id = $1 AND claim_id = $2",
    )
    .bind(account_id)
    .bind(claim_id)
    .fetch_optional(&mut *conn)
    .await?)
}

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

/// Stores an account's terms, once. The signature has the shape of the
/// contract's `insert_report` (a child row under its parent's id); the
/// tables, columns and conflicts are each its own, so there is nothing to
/// share.
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

/// Whether the account's terms are recorded (an account opened again finds
/// them).
pub async fn terms_exist(conn: &mut PgConnection, account_id: Uuid) -> Result<bool, ServiceError> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM escrow.account_terms WHERE escrow_account_id = $1)",
    )
    .bind(account_id)
    .fetch_one(&mut *conn)
    .await?)
}

pub async fn get_terms(conn: &mut PgConnection, account_id: Uuid) -> Result<Terms, ServiceError> {
    let row: Option<(String, String, String, i32)> = sqlx::query_as(
        "SELECT payment_scheme, financing_partner_id, supplier_owner_principal_id, contract_version \
         FROM escrow.account_terms WHERE escrow_account_id = $1",
    )
    .bind(account_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (scheme, financing_partner_id, supplier_owner_principal_id, contract_version) =
        row.ok_or_else(|| ServiceError::internal(format!("account {account_id} has no terms")))?;
    Ok(terms_from(
        &scheme,
        financing_partner_id,
        supplier_owner_principal_id,
        contract_version,
    ))
}

fn terms_from(
    scheme: &str,
    financing_partner_id: String,
    supplier_owner_principal_id: String,
    contract_version: i32,
) -> Terms {
    Terms {
        scheme: if scheme == "pay_later" {
            Scheme::PayLater
        } else {
            Scheme::Direct
        },
        financing_partner_id,
        supplier_owner_principal_id,
        contract_version,
    }
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
pub async fn read_owns_supplier(
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

/// Money in and out of an account's `escrow_held`, and its last change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub funded: i64,
    pub released: i64,
    pub refunded: i64,
    pub held: i64,
}

/// What the API shows of an account beside the account itself.
#[derive(Clone, Debug)]
pub struct AccountDetails {
    pub terms: Terms,
    pub totals: Totals,
    /// Active freezes: claim, reason, since.
    pub freezes: Vec<(String, String, OffsetDateTime)>,
    pub updated_at: OffsetDateTime,
    /// When each fully funded payment became so.
    pub funded_at: std::collections::HashMap<String, OffsetDateTime>,
}

/// What reads the API's details of an account (into [`DetailRow`]): the
/// columns, over `escrow.escrow_accounts a`, and the joins of its terms,
/// the totals of its postings, its active freezes and its funded payments.
const DETAIL_COLUMNS: &str = "t.payment_scheme, t.financing_partner_id, \
     t.supplier_owner_principal_id, t.contract_version, tot.funded, tot.released, tot.refunded, \
     a.updated_at, fz.frozen_by, fz.freeze_reasons, fz.frozen_at, fa.funded_milestones, \
     fa.funded_ats";
const DETAIL_JOINS: &str = "LEFT JOIN escrow.account_terms t ON t.escrow_account_id = a.id \
     CROSS JOIN LATERAL ( \
         SELECT \
           coalesce(sum(p.amount_minor) FILTER (WHERE c.kind = 'escrow_held'), 0)::bigint \
             AS funded, \
           coalesce(sum(p.amount_minor) FILTER (WHERE d.kind = 'escrow_held' \
             AND c.kind = 'supplier_payable'), 0)::bigint AS released, \
           coalesce(sum(p.amount_minor) FILTER (WHERE d.kind = 'escrow_held' \
             AND c.kind <> 'supplier_payable'), 0)::bigint AS refunded \
         FROM escrow.postings p \
         JOIN escrow.ledger_accounts d ON d.id = p.debit_account_id \
         JOIN escrow.ledger_accounts c ON c.id = p.credit_account_id \
         WHERE p.escrow_account_id = a.id) tot \
     CROSS JOIN LATERAL ( \
         SELECT coalesce(array_agg(claim_id ORDER BY frozen_at, claim_id), '{}') AS frozen_by, \
                coalesce(array_agg(reason ORDER BY frozen_at, claim_id), '{}') AS freeze_reasons, \
                coalesce(array_agg(frozen_at ORDER BY frozen_at, claim_id), '{}') AS frozen_at \
         FROM escrow.freezes WHERE escrow_account_id = a.id AND lifted_at IS NULL) fz \
     CROSS JOIN LATERAL ( \
         SELECT coalesce(array_agg(milestone_id), '{}') AS funded_milestones, \
                coalesce(array_agg(funded_at), '{}') AS funded_ats \
         FROM escrow.scheduled_payments \
         WHERE escrow_account_id = a.id AND funded_at IS NOT NULL) fa";

#[derive(FromRow)]
struct DetailRow {
    payment_scheme: Option<String>,
    financing_partner_id: Option<String>,
    supplier_owner_principal_id: Option<String>,
    contract_version: Option<i32>,
    funded: i64,
    released: i64,
    refunded: i64,
    updated_at: OffsetDateTime,
    frozen_by: Vec<String>,
    freeze_reasons: Vec<String>,
    frozen_at: Vec<OffsetDateTime>,
    funded_milestones: Vec<String>,
    funded_ats: Vec<OffsetDateTime>,
}

impl DetailRow {
    fn into_details(self, account_id: Uuid) -> Result<AccountDetails, ServiceError> {
        let row = self;
        let (
            Some(scheme),
            Some(financing_partner_id),
            Some(supplier_owner_principal_id),
            Some(contract_version),
        ) = (
            row.payment_scheme,
            row.financing_partner_id,
            row.supplier_owner_principal_id,
            row.contract_version,
        )
        else {
            return Err(ServiceError::internal(format!(
                "account {account_id} has no terms"
            )));
        };
        Ok(AccountDetails {
            terms: terms_from(
                &scheme,
                financing_partner_id,
                supplier_owner_principal_id,
                contract_version,
            ),
            totals: Totals {
                funded: row.funded,
                released: row.released,
                refunded: row.refunded,
                held: row.funded - row.released - row.refunded,
            },
            freezes: row
                .frozen_by
                .into_iter()
                .zip(row.freeze_reasons)
                .zip(row.frozen_at)
                .map(|((claim, reason), at)| (claim, reason, at))
                .collect(),
            updated_at: row.updated_at,
            funded_at: row
                .funded_milestones
                .into_iter()
                .zip(row.funded_ats)
                .collect(),
        })
    }
}

/// Reads what the API shows of an account beside the account itself, in
/// one statement: its terms, the totals of its postings, its active freezes,
/// its last change and when each payment was fully funded.
pub async fn read_details(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<AccountDetails, ServiceError> {
    let row: DetailRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DETAIL_COLUMNS} FROM escrow.escrow_accounts a {DETAIL_JOINS} WHERE a.id = $1"
    )))
    .bind(account_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ServiceError::not_found(ACCOUNT, account_id))?;
    row.into_details(account_id)
}

/// Which accounts a listing shows; every filter is optional and they
/// combine with AND.
#[derive(Clone, Debug, Default)]
pub struct AccountFilter {
    pub buyer_principal_id: Option<String>,
    /// The owner of the accounts' supplier (a supplier's own listing).
    pub supplier_owner_principal_id: Option<String>,
    pub supplier_id: Option<String>,
    pub contract_id: Option<String>,
    /// Any of these; empty for all.
    pub statuses: Vec<Status>,
    pub currency: Option<Currency>,
    /// Created at or after.
    pub created_after: Option<OffsetDateTime>,
    /// Created before.
    pub created_before: Option<OffsetDateTime>,
    /// Whether `escrow_held` holds money (true) or nothing (false).
    pub holding_money: Option<bool>,
}

/// The one statement of a listing's page: the page of ids, newest created
/// first after the cursor (only the filters given, so each shape is served
/// by its index), then each account with its details, as [`load`] and
/// [`read_details`] read one. `prefix` goes before it (`EXPLAIN ...`).
fn account_page_query(
    prefix: &str,
    f: &AccountFilter,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> sqlx::QueryBuilder<sqlx::Postgres> {
    let mut q = sqlx::QueryBuilder::new(format!(
        "{prefix}WITH page AS (SELECT a.id, a.created_at FROM escrow.escrow_accounts a WHERE true"
    ));
    if let Some(buyer) = &f.buyer_principal_id {
        q.push(" AND a.buyer_principal_id = ").push_bind(buyer);
    }
    if let Some(owner) = &f.supplier_owner_principal_id {
        q.push(" AND a.supplier_owner_principal_id = ")
            .push_bind(owner);
    }
    if let Some(supplier) = &f.supplier_id {
        q.push(" AND a.supplier_id = ").push_bind(supplier);
    }
    if let Some(contract) = &f.contract_id {
        q.push(" AND a.contract_id = ").push_bind(contract);
    }
    if !f.statuses.is_empty() {
        let statuses: Vec<&'static str> = f.statuses.iter().map(|s| s.as_str()).collect();
        q.push(" AND a.status = ANY(").push_bind(statuses).push(")");
    }
    if let Some(currency) = f.currency {
        q.push(" AND a.currency = ")
            .push_bind(currency.as_str().to_owned());
    }
    if let Some(at) = f.created_after {
        q.push(" AND a.created_at >= ").push_bind(at);
    }
    if let Some(at) = f.created_before {
        q.push(" AND a.created_at < ").push_bind(at);
    }
    // What is held is the balance of the account's `escrow_held` (the
    // totals the view shows sum to it). The balance has no index (every
    // posting changes it, and an index on it would make each of those a
    // non-HOT update), so the escrow_held rows are read; the accounts
    // themselves never are read whole.
    match f.holding_money {
        // The accounts holding money by primary key, however few or many.
        Some(true) => {
            q.push(
                " AND a.id = ANY(ARRAY(SELECT l.owner::uuid FROM escrow.ledger_accounts l \
                 WHERE l.kind = 'escrow_held' AND l.balance_minor > 0))",
            );
        }
        // The others in the listing's order, each checked by the (kind,
        // owner) index.
        Some(false) => {
            q.push(
                " AND NOT EXISTS (SELECT 1 FROM escrow.ledger_accounts l \
                 WHERE l.kind = 'escrow_held' AND l.owner = a.id::text AND l.balance_minor > 0)",
            );
        }
        None => {}
    }
    if let Some((at, id)) = after {
        q.push(" AND (a.created_at, a.id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY a.created_at DESC, a.id DESC LIMIT ")
        .push_bind(limit);
    q.push(format!(
        ") SELECT {ACCOUNT_COLUMNS}, {DETAIL_COLUMNS} \
         FROM page JOIN escrow.escrow_accounts a ON a.id = page.id {ACCOUNT_JOINS} {DETAIL_JOINS} \
         ORDER BY page.created_at DESC, page.id DESC"
    ));
    q
}

/// A page of accounts, newest created first (ties by id), after the
/// cursor: `limit` rows at most, each with what the API shows beside it,
/// in one statement.
pub async fn list_accounts(
    conn: &mut PgConnection,
    filter: &AccountFilter,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<(EscrowAccount, AccountDetails)>, ServiceError> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        account: Loaded,
        #[sqlx(flatten)]
        details: DetailRow,
    }
    let mut query = account_page_query("", filter, after, limit);
    let rows: Vec<Row> = query.build_query_as().fetch_all(&mut *conn).await?;
    rows.into_iter()
        .map(|row| {
            let account = row.account.into_account()?;
            let details = row.details.into_details(account.id)?;
            Ok((account, details))
        })
        .collect()
}

/// The plan Postgres makes for [`list_accounts`]' statement with these
/// arguments (`EXPLAIN (FORMAT JSON)`), for tests that check an index
/// serves each listing.
pub async fn explain_list_accounts(
    conn: &mut PgConnection,
    filter: &AccountFilter,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<serde_json::Value, ServiceError> {
    let mut query = account_page_query("EXPLAIN (FORMAT JSON) ", filter, after, limit);
    let (sqlx::types::Json(plan),): (sqlx::types::Json<serde_json::Value>,) =
        query.build_query_as().fetch_one(&mut *conn).await?;
    Ok(plan)
}

/// Escrow accounts whose `escrow_held` holds money, oldest first, after
/// (created_at, id).
pub async fn page_held_accounts(
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

/// The earliest deadline on the account's money (a scheduled payment
/// deadline or hold deadline timer, a pending hold's expiry), with its kind.
pub async fn find_next_deadline(
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

/// Replaces an account's schedule, in order.
/// Milestones not in the new schedule are removed (the caller checked they
/// have no attempts).
pub async fn replace_schedule(
    conn: &mut PgConnection,
    account_id: Uuid,
    schedule: &[ScheduledPayment],
) -> Result<(), ServiceError> {
    let ids: Vec<String> = schedule.iter().map(|p| p.milestone_id.clone()).collect();
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
    for (position, payment) in schedule.iter().enumerate() {
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
        .bind(&payment.milestone_id)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(payment.amount_minor)
        .bind(payment.funded_minor)
        .bind(payment.due_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Locks every open, unfrozen account whose hold deadline is still ahead and
/// has no scheduled timer (accounts opened before hold deadlines existed, or
/// a timer lost by hand): id and deadline.
pub async fn lock_missing_hold_deadlines(
    conn: &mut PgConnection,
    timer_kind: &str,
) -> Result<Vec<(Uuid, OffsetDateTime)>, ServiceError> {
    Ok(sqlx::query_as(
        "SELECT e.id, e.hold_until FROM escrow.escrow_accounts e \
         WHERE e.status <> 'closed' AND e.hold_paused_at IS NULL AND e.hold_until > now() \
           AND NOT EXISTS (SELECT 1 FROM escrow.workflow_timers t \
             WHERE t.kind = $1 AND t.subject_id = e.id::text AND t.status = 'scheduled') \
         FOR UPDATE OF e SKIP LOCKED",
    )
    .bind(timer_kind)
    .fetch_all(&mut *conn)
    .await?)
}
