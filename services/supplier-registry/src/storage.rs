//! Postgres storage of the registry. Every table is qualified with the
//! service's own schema, `supplier_registry`.
//!
//! Mutations run in the caller's transaction and lock the supplier row first
//! (`lock_supplier`), so concurrent changes to one supplier serialize and can
//! never over-reserve its limit. ReserveCover, the hot one (50 reservations
//! at once on a popular supplier, say), instead reads without a lock and
//! writes with one guarded statement ([`reserve_if_unchanged`]), which the
//! database serializes on the row just as well.

use sqlx::{FromRow, PgConnection, PgPool, Postgres, QueryBuilder, migrate::Migrator, types::Json};
use ta_runtime::{
    OrConflict, ServiceError,
    idempotency::IdempotencyKeys,
    money::{Currency, Money},
    timestamps,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{Contact, Status, Supplier, Verification};

pub const SCHEMA: &str = "supplier_registry";

pub static MIGRATOR: Migrator = sqlx::migrate!();

/// The service's schema, as the workflow machinery (the event feed)
/// addresses it.
pub fn schema() -> ta_workflow::Schema {
    // A constant that is a plain identifier.
    ta_workflow::Schema::new(SCHEMA).unwrap_or_else(|_| unreachable!())
}

pub fn idempotency_keys() -> IdempotencyKeys {
    IdempotencyKeys::new(SCHEMA)
}

const SUPPLIER_COLUMNS: &str = "id, owner_principal_id, legal_name, country_code, \
    business_licence_number, contacts, verification, verification_rejection_reason, status, \
    status_reason, ta_limit_currency, ta_limit_minor, cover_reserved_minor, rating_sum, \
    review_count, inquiry_count, replied_inquiry_count, penalty_points, verification_submitted_at, \
    created_at, updated_at";

#[derive(FromRow)]
struct SupplierRow {
    id: Uuid,
    owner_principal_id: String,
    legal_name: String,
    country_code: String,
    business_licence_number: String,
    contacts: Json<Vec<Contact>>,
    verification: String,
    verification_rejection_reason: String,
    status: String,
    status_reason: String,
    ta_limit_currency: Option<String>,
    ta_limit_minor: i64,
    cover_reserved_minor: i64,
    rating_sum: i64,
    review_count: i64,
    inquiry_count: i64,
    replied_inquiry_count: i64,
    penalty_points: i32,
    verification_submitted_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<SupplierRow> for Supplier {
    type Error = ServiceError;

    fn try_from(row: SupplierRow) -> Result<Self, ServiceError> {
        let corrupt =
            |what: &str| ServiceError::internal(format!("supplier {}: bad {what}", row.id));
        let ta_limit = match &row.ta_limit_currency {
            Some(code) => Some(Money::new(
                row.ta_limit_minor,
                Currency::parse(code).ok_or_else(|| corrupt("currency"))?,
            )),
            None => None,
        };
        Ok(Supplier {
            verification: Verification::parse(&row.verification)
                .ok_or_else(|| corrupt("verification"))?,
            status: Status::parse(&row.status).ok_or_else(|| corrupt("status"))?,
            id: row.id,
            owner_principal_id: row.owner_principal_id,
            legal_name: row.legal_name,
            country_code: row.country_code,
            business_licence_number: row.business_licence_number,
            contacts: row.contacts.0,
            verification_rejection_reason: row.verification_rejection_reason,
            status_reason: row.status_reason,
            ta_limit,
            cover_reserved_minor: row.cover_reserved_minor,
            rating_sum: row.rating_sum,
            review_count: row.review_count,
            inquiry_count: row.inquiry_count,
            replied_inquiry_count: row.replied_inquiry_count,
            penalty_points: row.penalty_points,
            verification_submitted_at: row.verification_submitted_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

pub async fn insert_supplier(tx: &mut PgConnection, s: &Supplier) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO supplier_registry.suppliers (id, owner_principal_id, legal_name, country_code, \
         business_licence_number, contacts, verification, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
    )
    .bind(s.id)
    .bind(&s.owner_principal_id)
    .bind(&s.legal_name)
    .bind(&s.country_code)
    .bind(&s.business_licence_number)
    .bind(Json(&s.contacts))
    .bind(s.verification.as_str())
    .bind(s.status.as_str())
    .bind(s.created_at)
    .execute(tx)
    .await
    .or_conflict(|| {
        ServiceError::AlreadyExists(format!(
            "a supplier with business licence {} in {} is already registered",
            s.business_licence_number, s.country_code
        ))
    })?;
    Ok(())
}

/// Writes back every mutable field of a supplier read with [`lock_supplier`].
pub async fn update_supplier(tx: &mut PgConnection, s: &mut Supplier) -> Result<(), ServiceError> {
    s.updated_at = timestamps::now();
    sqlx::query(
        "UPDATE supplier_registry.suppliers SET contacts = $2, verification = $3, \
         verification_rejection_reason = $4, status = $5, status_reason = $6, enrolled = $7, \
         ta_limit_currency = $8, ta_limit_minor = $9, cover_reserved_minor = $10, rating_sum = $11, \
         review_count = $12, inquiry_count = $13, replied_inquiry_count = $14, penalty_points = $15, \
         updated_at = $16, verification_submitted_at = $17 WHERE id = $1",
    )
    .bind(s.id)
    .bind(Json(&s.contacts))
    .bind(s.verification.as_str())
    .bind(&s.verification_rejection_reason)
    .bind(s.status.as_str())
    .bind(&s.status_reason)
    .bind(s.ta_limit.is_some())
    .bind(s.ta_limit.map(|m| m.currency.to_string()))
    .bind(s.ta_limit.map_or(0, |m| m.amount_minor))
    .bind(s.cover_reserved_minor)
    .bind(s.rating_sum)
    .bind(s.review_count)
    .bind(s.inquiry_count)
    .bind(s.replied_inquiry_count)
    .bind(s.penalty_points)
    .bind(s.updated_at)
    .bind(s.verification_submitted_at)
    .execute(tx)
    .await?;
    Ok(())
}

/// Reads a supplier and holds its row lock until the transaction ends.
pub async fn lock_supplier(tx: &mut PgConnection, id: Uuid) -> Result<Supplier, ServiceError> {
    let sql = format!(
        "SELECT {SUPPLIER_COLUMNS} FROM supplier_registry.suppliers WHERE id = $1 FOR UPDATE"
    );
    fetch_supplier(tx, &sql, id).await
}

pub async fn get_supplier(pool: &PgPool, id: Uuid) -> Result<Supplier, ServiceError> {
    let mut conn = pool.acquire().await?;
    let sql = format!("SELECT {SUPPLIER_COLUMNS} FROM supplier_registry.suppliers WHERE id = $1");
    fetch_supplier(&mut conn, &sql, id).await
}

async fn fetch_supplier(
    conn: &mut PgConnection,
    sql: &str,
    id: Uuid,
) -> Result<Supplier, ServiceError> {
    sqlx::query_as::<_, SupplierRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ServiceError::not_found("supplier", id))?
        .try_into()
}

/// The order of a supplier search; every order ends with the supplier id, so
/// it is total and a page continues it exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SupplierSort {
    /// By id (registration order: ids are UUIDv7).
    #[default]
    Id,
    /// Highest average rating first.
    AverageRating,
    /// Highest response rate first.
    ResponseRate,
    /// Most remaining cover first, in the filter's currency.
    CoverRemaining,
    /// Oldest verification submission first; never-submitted left out.
    SubmittedAt,
}

/// A supplier's value of the sort key (the id aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// [`SupplierSort::Id`]: the id is the key.
    Id,
    /// Ratings, rates and cover amounts.
    Number(i64),
    /// A submission time.
    Time(OffsetDateTime),
}

impl SupplierSort {
    /// `supplier`'s key in this order; the columns the search sorts on hold
    /// the same figures (see migration 0004).
    pub fn key_of(self, supplier: &Supplier) -> SortKey {
        match self {
            Self::Id => SortKey::Id,
            Self::AverageRating => SortKey::Number(i64::from(supplier.average_rating_centi())),
            Self::ResponseRate => SortKey::Number(i64::from(supplier.response_rate_basis_points())),
            Self::CoverRemaining => {
                SortKey::Number(supplier.cover().map_or(0, |c| c.remaining.amount_minor))
            }
            Self::SubmittedAt => supplier
                .verification_submitted_at
                .map_or(SortKey::Id, SortKey::Time),
        }
    }
}

/// Where a search page continues: after the supplier with this key and id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchCursor {
    pub key: SortKey,
    pub id: Uuid,
}

/// Filters of a supplier search; `None` and empty mean "any".
#[derive(Default, Debug)]
pub struct SearchFilter {
    pub has_badge: Option<bool>,
    pub verified: Option<bool>,
    pub country_code: Option<String>,
    pub min_average_rating_centi: Option<i64>,
    pub min_cover_remaining: Option<Money>,
    pub min_response_rate_basis_points: Option<i64>,
    /// Words every one of which starts a word of the legal name.
    pub name_words: Vec<String>,
    pub verifications: Vec<Verification>,
    pub statuses: Vec<Status>,
    /// Only suppliers this principal owns.
    pub owner_principal_id: Option<String>,
    pub sort: SupplierSort,
    pub after: Option<SearchCursor>,
    pub limit: i64,
}

/// The full-text query of `words`: each a prefix of a word of the name. The
/// words hold letters and digits only (see the transport's parsing), so
/// nothing in them is tsquery syntax.
fn name_tsquery(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("{}:*", w.to_lowercase()))
        .collect::<Vec<_>>()
        .join(" & ")
}

/// The search as one statement after `prefix` (the select list, or an
/// EXPLAIN of it): only the conditions the filter sets, so each shape of
/// search is a statement of its own and its plan (also a cached generic one)
/// uses the index that serves it.
fn search_query(prefix: &str, f: &SearchFilter) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::new(prefix);
    q.push(format!(
        " {SUPPLIER_COLUMNS} FROM supplier_registry.suppliers s WHERE true"
    ));
    if let Some(badge) = f.has_badge {
        q.push(" AND (s.verification = 'verified' AND s.enrolled AND s.status = 'active') = ")
            .push_bind(badge);
    }
    if let Some(verified) = f.verified {
        q.push(" AND (s.verification = 'verified') = ")
            .push_bind(verified);
    }
    if let Some(country) = &f.country_code {
        q.push(" AND s.country_code = ").push_bind(country);
    }
    // The minimum rating is compared with the average as shown
    // ([`Supplier::average_rating_centi`], rounded half up), so a supplier
    // shown with 467 is found by a minimum of 467.
    if let Some(rating) = f.min_average_rating_centi {
        q.push(" AND s.review_count > 0 AND s.average_rating_centi >= ")
            .push_bind(rating);
    }
    if let Some(cover) = f.min_cover_remaining {
        q.push(" AND s.ta_limit_currency = ")
            .push_bind(cover.currency.to_string())
            .push(" AND s.cover_remaining_minor >= ")
            .push_bind(cover.amount_minor);
    }
    if let Some(rate) = f.min_response_rate_basis_points {
        q.push(" AND s.inquiry_count > 0 AND s.response_rate_basis_points >= ")
            .push_bind(rate);
    }
    if !f.name_words.is_empty() {
        q.push(" AND to_tsvector('simple', s.legal_name) @@ to_tsquery('simple', ")
            .push_bind(name_tsquery(&f.name_words))
            .push(")");
    }
    // One value is an equality, so an index on the column and the order
    // (the verification queue) returns rows in order, with no sort.
    match f.verifications.as_slice() {
        [] => {}
        [one] => {
            q.push(" AND s.verification = ").push_bind(one.as_str());
        }
        many => {
            let names: Vec<&str> = many.iter().map(|v| v.as_str()).collect();
            q.push(" AND s.verification = ANY(")
                .push_bind(names)
                .push(")");
        }
    }
    match f.statuses.as_slice() {
        [] => {}
        [one] => {
            q.push(" AND s.status = ").push_bind(one.as_str());
        }
        many => {
            let names: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
            q.push(" AND s.status = ANY(").push_bind(names).push(")");
        }
    }
    if let Some(owner) = &f.owner_principal_id {
        q.push(" AND s.owner_principal_id = ").push_bind(owner);
    }
    let (key_column, descending) = match f.sort {
        SupplierSort::Id => ("", false),
        SupplierSort::AverageRating => ("s.average_rating_centi", true),
        SupplierSort::ResponseRate => ("s.response_rate_basis_points", true),
        SupplierSort::CoverRemaining => ("s.cover_remaining_minor", true),
        SupplierSort::SubmittedAt => ("s.verification_submitted_at", false),
    };
    if f.sort == SupplierSort::SubmittedAt {
        q.push(" AND s.verification_submitted_at IS NOT NULL");
    }
    let after = if descending { " < " } else { " > " };
    match f.after.map(|c| (c.key, c.id)) {
        None => {}
        Some((SortKey::Id, id)) => {
            q.push(" AND s.id").push(after).push_bind(id);
        }
        Some((SortKey::Number(key), id)) => {
            q.push(format!(" AND ({key_column}, s.id){after}("))
                .push_bind(key)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        Some((SortKey::Time(key), id)) => {
            q.push(format!(" AND ({key_column}, s.id){after}("))
                .push_bind(key)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
    }
    match (f.sort, descending) {
        (SupplierSort::Id, _) => q.push(" ORDER BY s.id"),
        (_, true) => q.push(format!(" ORDER BY {key_column} DESC, s.id DESC")),
        (_, false) => q.push(format!(" ORDER BY {key_column}, s.id")),
    };
    q.push(" LIMIT ").push_bind(f.limit);
    q
}

/// Suppliers matching `f`, in its order, from its cursor on.
pub async fn search_suppliers(
    pool: &PgPool,
    f: &SearchFilter,
) -> Result<Vec<Supplier>, ServiceError> {
    let rows: Vec<SupplierRow> = search_query("SELECT", f)
        .build_query_as()
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(Supplier::try_from).collect()
}

/// The plan Postgres makes for [`search_suppliers`] of `f`, as `EXPLAIN
/// (FORMAT JSON)` tells it: for checking that an index serves each shape.
pub async fn explain_search(
    pool: &PgPool,
    f: &SearchFilter,
) -> Result<serde_json::Value, ServiceError> {
    explain(pool, search_query("EXPLAIN (FORMAT JSON) SELECT", f)).await
}

async fn explain(
    pool: &PgPool,
    mut query: QueryBuilder<Postgres>,
) -> Result<serde_json::Value, ServiceError> {
    let (plan,): (Json<serde_json::Value>,) = query.build_query_as().fetch_one(pool).await?;
    Ok(plan.0)
}

#[derive(Clone, Debug, PartialEq, FromRow)]
pub struct Reservation {
    pub contract_id: String,
    pub supplier_id: Uuid,
    pub currency: String,
    pub amount_minor: i64,
    pub status: String,
    pub reserved_at: OffsetDateTime,
    pub released_at: Option<OffsetDateTime>,
    pub contract_version: i32,
}

impl Reservation {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }

    pub fn amount(&self) -> Result<Money, ServiceError> {
        Currency::parse(&self.currency)
            .map(|currency| Money::new(self.amount_minor, currency))
            .ok_or_else(|| {
                ServiceError::internal(format!("reservation {}: bad currency", self.contract_id))
            })
    }
}

const RESERVATION_COLUMNS: &str = "contract_id, supplier_id, currency, amount_minor, status, \
     reserved_at, released_at, contract_version";

pub async fn find_reservation(
    tx: &mut PgConnection,
    contract_id: &str,
) -> Result<Option<Reservation>, ServiceError> {
    let sql = format!(
        "SELECT {RESERVATION_COLUMNS} FROM supplier_registry.cover_reservations WHERE contract_id = $1"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(contract_id)
        .fetch_optional(tx)
        .await?)
}

pub async fn insert_reservation(
    tx: &mut PgConnection,
    r: &Reservation,
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO supplier_registry.cover_reservations \
         (contract_id, supplier_id, currency, amount_minor, status, reserved_at) \
         VALUES ($1, $2, $3, $4, 'active', $5)",
    )
    .bind(&r.contract_id)
    .bind(r.supplier_id)
    .bind(&r.currency)
    .bind(r.amount_minor)
    .bind(r.reserved_at)
    .execute(tx)
    .await
    // Another supplier's reservation of this contract committed after our
    // lookup (one supplier's reservations serialize on its row lock).
    .or_conflict(|| {
        ServiceError::AlreadyExists(format!(
            "contract {} already holds cover with another supplier",
            r.contract_id
        ))
    })?;
    Ok(())
}

/// What ReserveCover decides on, read in one statement and without a lock:
/// the supplier as it stands and the contract's reservation, if any (with
/// whichever supplier). [`reserve_if_unchanged`] then writes only if what
/// was read still holds.
pub async fn supplier_and_reservation(
    tx: &mut PgConnection,
    supplier_id: Uuid,
    contract_id: &str,
) -> Result<(Supplier, Option<Reservation>), ServiceError> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        supplier: SupplierRow,
        r_contract_id: Option<String>,
        r_supplier_id: Option<Uuid>,
        r_currency: Option<String>,
        r_amount_minor: Option<i64>,
        r_status: Option<String>,
        r_reserved_at: Option<OffsetDateTime>,
        r_released_at: Option<OffsetDateTime>,
        r_contract_version: Option<i32>,
    }
    let sql = format!(
        "SELECT s.*, r.* FROM \
         (SELECT {SUPPLIER_COLUMNS} FROM supplier_registry.suppliers WHERE id = $1) s \
         LEFT JOIN (SELECT contract_id AS r_contract_id, supplier_id AS r_supplier_id, \
                    currency AS r_currency, amount_minor AS r_amount_minor, status AS r_status, \
                    reserved_at AS r_reserved_at, released_at AS r_released_at, \
                    contract_version AS r_contract_version \
                    FROM supplier_registry.cover_reservations WHERE contract_id = $2) r ON true"
    );
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(supplier_id)
        .bind(contract_id)
        .fetch_optional(tx)
        .await?
        .ok_or_else(|| ServiceError::not_found("supplier", supplier_id))?;
    let reservation = match (
        row.r_contract_id,
        row.r_supplier_id,
        row.r_currency,
        row.r_amount_minor,
        row.r_status,
        row.r_reserved_at,
        row.r_contract_version,
    ) {
        (
            Some(contract_id),
            Some(supplier_id),
            Some(currency),
            Some(amount_minor),
            Some(status),
            Some(reserved_at),
            Some(contract_version),
        ) => Some(Reservation {
            contract_id,
            supplier_id,
            currency,
            amount_minor,
            status,
            reserved_at,
            released_at: row.r_released_at,
            contract_version,
        }),
        _ => None,
    };
    Ok((row.supplier.try_into()?, reservation))
}

/// How [`reserve_if_unchanged`] ended.
pub enum Reserved {
    /// Written: the supplier's reserved cover is now this.
    Done { cover_reserved_minor: i64 },
    /// The contract's reservation was committed by another transaction
    /// after the read: nothing was written.
    ContractTaken,
    /// The reservation row is written but the supplier no longer matches
    /// what the decision read (limit, currency, badge) or its remaining
    /// limit no longer covers the amount: decide again under its lock.
    SupplierChanged,
}

/// Writes a reservation decided on `seen` in one statement: inserts it, then
/// adds its amount to the supplier's reserved cover only if the fields the
/// decision read are unchanged and the remaining limit still covers it. The
/// supplier's row lock is taken by this last write and held only until the
/// commit that follows it.
pub async fn reserve_if_unchanged(
    tx: &mut PgConnection,
    seen: &Supplier,
    r: &Reservation,
) -> Result<Reserved, ServiceError> {
    let (inserted, reserved): (bool, Option<i64>) = sqlx::query_as(
        "WITH inserted AS ( \
             INSERT INTO supplier_registry.cover_reservations \
             (contract_id, supplier_id, currency, amount_minor, status, reserved_at) \
             VALUES ($1, $2, $3, $4, 'active', $5) \
             ON CONFLICT (contract_id) DO NOTHING RETURNING contract_id \
         ), guarded AS ( \
             UPDATE supplier_registry.suppliers \
             SET cover_reserved_minor = cover_reserved_minor + $4, updated_at = $5 \
             WHERE id = $2 AND EXISTS (SELECT 1 FROM inserted) \
               AND verification = $6 AND status = $7 \
               AND ta_limit_currency = $3 AND ta_limit_minor = $8 \
               AND ta_limit_minor - cover_reserved_minor >= $4 \
             RETURNING cover_reserved_minor \
         ) \
         SELECT EXISTS (SELECT 1 FROM inserted), (SELECT cover_reserved_minor FROM guarded)",
    )
    .bind(&r.contract_id)
    .bind(r.supplier_id)
    .bind(&r.currency)
    .bind(r.amount_minor)
    .bind(r.reserved_at)
    .bind(seen.verification.as_str())
    .bind(seen.status.as_str())
    .bind(seen.ta_limit.map_or(0, |m| m.amount_minor))
    .fetch_one(tx)
    .await?;
    Ok(match (inserted, reserved) {
        (false, _) => Reserved::ContractTaken,
        (true, None) => Reserved::SupplierChanged,
        (true, Some(cover_reserved_minor)) => Reserved::Done {
            cover_reserved_minor,
        },
    })
}

/// Marks an active reservation released; at most once (the status guard).
/// Moves an active reservation to `amount_minor` for `contract_version`;
/// false when it is no longer active.
pub async fn adjust_reservation(
    tx: &mut PgConnection,
    contract_id: &str,
    amount_minor: i64,
    contract_version: i32,
) -> Result<bool, ServiceError> {
    let adjusted = sqlx::query(
        "UPDATE supplier_registry.cover_reservations SET amount_minor = $2, contract_version = $3 \
         WHERE contract_id = $1 AND status = 'active'",
    )
    .bind(contract_id)
    .bind(amount_minor)
    .bind(contract_version)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(adjusted == 1)
}

pub async fn release_reservation(
    tx: &mut PgConnection,
    contract_id: &str,
    at: OffsetDateTime,
) -> Result<bool, ServiceError> {
    let released = sqlx::query(
        "UPDATE supplier_registry.cover_reservations SET status = 'released', released_at = $2 \
         WHERE contract_id = $1 AND status = 'active'",
    )
    .bind(contract_id)
    .bind(at)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(released == 1)
}

pub async fn list_active_reservations(
    pool: &PgPool,
    supplier_id: Uuid,
) -> Result<Vec<Reservation>, ServiceError> {
    let sql = format!(
        "SELECT {RESERVATION_COLUMNS} FROM supplier_registry.cover_reservations \
         WHERE supplier_id = $1 AND status = 'active' ORDER BY reserved_at, contract_id"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(supplier_id)
        .fetch_all(pool)
        .await?)
}

/// Filters of a listing of cover reservations; `None` means "any".
#[derive(Default, Debug)]
pub struct ReservationFilter {
    pub supplier_id: Option<Uuid>,
    pub contract_id: Option<String>,
    /// Active (true) or released (false) only.
    pub active: Option<bool>,
    /// The page continues after (`reserved_at`, `contract_id`).
    pub after: Option<(OffsetDateTime, String)>,
    pub limit: i64,
}

fn reservations_query(prefix: &str, f: &ReservationFilter) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::new(prefix);
    q.push(format!(
        " {RESERVATION_COLUMNS} FROM supplier_registry.cover_reservations WHERE true"
    ));
    if let Some(supplier) = f.supplier_id {
        q.push(" AND supplier_id = ").push_bind(supplier);
    }
    if let Some(contract) = &f.contract_id {
        q.push(" AND contract_id = ").push_bind(contract);
    }
    if let Some(active) = f.active {
        q.push(" AND status = ")
            .push_bind(if active { "active" } else { "released" });
    }
    if let Some((at, contract)) = &f.after {
        q.push(" AND (reserved_at, contract_id) < (")
            .push_bind(*at)
            .push(", ")
            .push_bind(contract)
            .push(")");
    }
    q.push(" ORDER BY reserved_at DESC, contract_id DESC LIMIT ")
        .push_bind(f.limit);
    q
}

/// Cover reservations matching `f`, newest first.
pub async fn list_cover_reservations(
    pool: &PgPool,
    f: &ReservationFilter,
) -> Result<Vec<Reservation>, ServiceError> {
    Ok(reservations_query("SELECT", f)
        .build_query_as()
        .fetch_all(pool)
        .await?)
}

/// The plan of [`list_cover_reservations`] of `f` (`EXPLAIN (FORMAT JSON)`).
pub async fn explain_cover_reservations(
    pool: &PgPool,
    f: &ReservationFilter,
) -> Result<serde_json::Value, ServiceError> {
    explain(pool, reservations_query("EXPLAIN (FORMAT JSON) SELECT", f)).await
}

/// Records a completed contract; false when it was already recorded.
pub async fn insert_completed_contract(
    tx: &mut PgConnection,
    contract_id: &str,
    supplier_id: Uuid,
    buyer_principal_id: &str,
) -> Result<bool, ServiceError> {
    let conflict = || {
        ServiceError::AlreadyExists(format!(
            "contract {contract_id} is already recorded as completed with another supplier or buyer"
        ))
    };
    let existing: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT supplier_id, buyer_principal_id FROM supplier_registry.completed_contracts \
         WHERE contract_id = $1",
    )
    .bind(contract_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((supplier, buyer)) = existing {
        if supplier != supplier_id || buyer != buyer_principal_id {
            return Err(conflict());
        }
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO supplier_registry.completed_contracts \
         (contract_id, supplier_id, buyer_principal_id, completed_at) VALUES ($1, $2, $3, now())",
    )
    .bind(contract_id)
    .bind(supplier_id)
    .bind(buyer_principal_id)
    .execute(tx)
    .await
    // Another supplier's completion of this contract committed after our
    // lookup (one supplier's calls serialize on its row lock).
    .or_conflict(conflict)?;
    Ok(true)
}

/// The supplier and buyer of a completed contract.
pub async fn completed_contract(
    tx: &mut PgConnection,
    contract_id: &str,
) -> Result<Option<(Uuid, String)>, ServiceError> {
    Ok(sqlx::query_as(
        "SELECT supplier_id, buyer_principal_id FROM supplier_registry.completed_contracts \
         WHERE contract_id = $1",
    )
    .bind(contract_id)
    .fetch_optional(tx)
    .await?)
}

#[derive(Clone, Debug, PartialEq, FromRow)]
pub struct ReviewRow {
    pub contract_id: String,
    pub supplier_id: Uuid,
    pub buyer_principal_id: String,
    pub rating: i16,
    pub comment: String,
    pub created_at: OffsetDateTime,
}

/// Inserts a review; false when the contract was already reviewed.
pub async fn insert_review(tx: &mut PgConnection, r: &ReviewRow) -> Result<bool, ServiceError> {
    let inserted = sqlx::query(
        "INSERT INTO supplier_registry.reviews \
         (contract_id, supplier_id, buyer_principal_id, rating, comment, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (contract_id) DO NOTHING",
    )
    .bind(&r.contract_id)
    .bind(r.supplier_id)
    .bind(&r.buyer_principal_id)
    .bind(r.rating)
    .bind(&r.comment)
    .bind(r.created_at)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Reviews newest first; the page continues after (`created_at`, `contract_id`).
pub async fn list_reviews(
    pool: &PgPool,
    supplier_id: Uuid,
    after: Option<(OffsetDateTime, String)>,
    limit: i64,
) -> Result<Vec<ReviewRow>, ServiceError> {
    let (after_at, after_contract) = after.unzip();
    Ok(sqlx::query_as(
        "SELECT contract_id, supplier_id, buyer_principal_id, rating, comment, created_at \
         FROM supplier_registry.reviews WHERE supplier_id = $1 \
         AND ($2::timestamptz IS NULL OR (created_at, contract_id) < ($2, $3)) \
         ORDER BY created_at DESC, contract_id DESC LIMIT $4",
    )
    .bind(supplier_id)
    .bind(after_at)
    .bind(after_contract)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Records an inquiry; false when it was already recorded.
pub async fn insert_inquiry(
    tx: &mut PgConnection,
    supplier_id: Uuid,
    inquiry_id: &str,
) -> Result<bool, ServiceError> {
    let inserted = sqlx::query(
        "INSERT INTO supplier_registry.inquiries (supplier_id, inquiry_id, received_at) \
         VALUES ($1, $2, now()) ON CONFLICT DO NOTHING",
    )
    .bind(supplier_id)
    .bind(inquiry_id)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Marks an inquiry replied. `None`: no such inquiry; `Some(false)`: already replied.
pub async fn mark_inquiry_replied(
    tx: &mut PgConnection,
    supplier_id: Uuid,
    inquiry_id: &str,
) -> Result<Option<bool>, ServiceError> {
    let marked = sqlx::query(
        "UPDATE supplier_registry.inquiries SET replied_at = now() \
         WHERE supplier_id = $1 AND inquiry_id = $2 AND replied_at IS NULL",
    )
    .bind(supplier_id)
    .bind(inquiry_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if marked == 1 {
        return Ok(Some(true));
    }
    let exists: Option<(i32,)> = sqlx::query_as(
        "SELECT 1 FROM supplier_registry.inquiries WHERE supplier_id = $1 AND inquiry_id = $2",
    )
    .bind(supplier_id)
    .bind(inquiry_id)
    .fetch_optional(tx)
    .await?;
    Ok(exists.map(|_| false))
}

/// Records a claim's penalty once. Returns the supplier already penalised for
/// this claim, if any, with the points recorded then.
pub async fn insert_penalty(
    tx: &mut PgConnection,
    claim_id: &str,
    supplier_id: Uuid,
    points: i32,
    reason: &str,
) -> Result<Option<(Uuid, i32)>, ServiceError> {
    let inserted = sqlx::query(
        "INSERT INTO supplier_registry.penalties (claim_id, supplier_id, points, reason, recorded_at) \
         VALUES ($1, $2, $3, $4, now()) ON CONFLICT (claim_id) DO NOTHING",
    )
    .bind(claim_id)
    .bind(supplier_id)
    .bind(points)
    .bind(reason)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(None);
    }
    Ok(sqlx::query_as(
        "SELECT supplier_id, points FROM supplier_registry.penalties WHERE claim_id = $1",
    )
    .bind(claim_id)
    .fetch_optional(tx)
    .await?)
}
