//! The contract's row and its signatures: created with its first version,
//! locked and saved by every change, listed and looked up.

use sqlx::{FromRow, PgConnection, Postgres, QueryBuilder, Row as _};
use ta_runtime::{ServiceError, money::Money};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    corrupt, db_version, money, party_name, protection_name, version_number,
    versions::{VersionRecord, insert_version},
};
use crate::domain::{
    negotiation::{Negotiation, Party, Protection, Signature},
    status::Status,
};

/// One contract's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContractRecord {
    pub contract_id: Uuid,
    pub buyer_principal_id: String,
    pub supplier_id: Uuid,
    pub supplier_principal_id: String,
    pub negotiation: Negotiation,
    pub status_before_dispute: Option<Status>,
    pub total: Money,
    pub escrow_account_id: Option<String>,
    pub open_claim_id: Option<String>,
    pub activation_refusal: String,
    pub cancellation_reason: String,
    pub progress: Progress,
    /// The buyer's own order reference, set at drafting; unique per buyer.
    pub external_reference: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// Where a signed contract stands beyond its status: the facts its deadlines,
/// claims and acceptance are decided from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub signed_at: Option<OffsetDateTime>,
    pub claim_pending: bool,
    pub claim_reason: Option<String>,
    pub received_at: Option<OffsetDateTime>,
    pub accepted_at: Option<OffsetDateTime>,
    /// `explicit`, `automatic` or `claim_outcome`.
    pub acceptance: Option<String>,
    pub acceptance_due_at: Option<OffsetDateTime>,
    /// The shipment deadline in force.
    pub shipment_deadline: Option<OffsetDateTime>,
    pub agreed_shipment_deadline: Option<OffsetDateTime>,
    pub shipment_overdue: bool,
    pub paused_at: Option<OffsetDateTime>,
    pub inspection_agency: String,
}

const CONTRACT_COLUMNS: &str = "contract_id, buyer_principal_id, supplier_id, \
    supplier_principal_id, protection, status, status_before_dispute, latest_version, \
    signed_version, pending_amendment, currency, total_minor, escrow_account_id, open_claim_id, \
    activation_refusal, cancellation_reason, created_at, updated_at, signed_at, claim_pending, \
    claim_reason, received_at, accepted_at, acceptance, acceptance_due_at, shipment_deadline, \
    agreed_shipment_deadline, shipment_overdue, paused_at, inspection_agency, external_reference";

#[derive(FromRow)]
struct ContractRow {
    contract_id: Uuid,
    buyer_principal_id: String,
    supplier_id: Uuid,
    supplier_principal_id: String,
    protection: String,
    status: String,
    status_before_dispute: Option<String>,
    latest_version: i32,
    signed_version: i32,
    pending_amendment: i32,
    currency: String,
    total_minor: i64,
    escrow_account_id: Option<String>,
    open_claim_id: Option<String>,
    activation_refusal: String,
    cancellation_reason: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    signed_at: Option<OffsetDateTime>,
    claim_pending: bool,
    claim_reason: Option<String>,
    received_at: Option<OffsetDateTime>,
    accepted_at: Option<OffsetDateTime>,
    acceptance: Option<String>,
    acceptance_due_at: Option<OffsetDateTime>,
    shipment_deadline: Option<OffsetDateTime>,
    agreed_shipment_deadline: Option<OffsetDateTime>,
    shipment_overdue: bool,
    paused_at: Option<OffsetDateTime>,
    inspection_agency: String,
    external_reference: Option<String>,
}

#[derive(FromRow)]
struct SignatureRow {
    version: i32,
    party: String,
    principal_id: String,
    signed_at: OffsetDateTime,
}

impl SignatureRow {
    fn into_signature(self) -> Result<Signature, ServiceError> {
        let party = match self.party.as_str() {
            "buyer" => Party::Buyer,
            "supplier" => Party::Supplier,
            _ => return Err(corrupt("party")),
        };
        Ok(Signature {
            party,
            principal_id: self.principal_id,
            version: version_number(self.version)?,
            signed_at: self.signed_at,
        })
    }
}

impl ContractRow {
    fn into_record(self, signatures: Vec<Signature>) -> Result<ContractRecord, ServiceError> {
        let status = Status::parse(&self.status).ok_or_else(|| corrupt("status"))?;
        let protection = match self.protection.as_str() {
            "trade_assurance" => Protection::TradeAssurance,
            "none" => Protection::None,
            _ => return Err(corrupt("protection")),
        };
        let latest_version = version_number(self.latest_version)?;
        let pending_amendment = version_number(self.pending_amendment)?;
        // Signatures of the latest version before signing, of the pending
        // amendment after.
        let (amendment_signatures, signatures): (Vec<_>, Vec<_>) = signatures
            .into_iter()
            .partition(|s| pending_amendment != 0 && s.version == pending_amendment);
        let signed_version = version_number(self.signed_version)?;
        let current = if signed_version == 0 {
            latest_version
        } else {
            signed_version
        };
        let signatures = signatures
            .into_iter()
            .filter(|s| s.version == current)
            .collect();
        Ok(ContractRecord {
            contract_id: self.contract_id,
            buyer_principal_id: self.buyer_principal_id,
            supplier_id: self.supplier_id,
            supplier_principal_id: self.supplier_principal_id,
            negotiation: Negotiation {
                status,
                protection,
                latest_version,
                signed_version,
                signatures,
                pending_amendment,
                amendment_signatures,
            },
            status_before_dispute: match self.status_before_dispute {
                Some(s) => Some(Status::parse(&s).ok_or_else(|| corrupt("prior status"))?),
                None => None,
            },
            total: money(&self.currency, self.total_minor)?,
            escrow_account_id: self.escrow_account_id,
            open_claim_id: self.open_claim_id,
            activation_refusal: self.activation_refusal,
            cancellation_reason: self.cancellation_reason,
            progress: Progress {
                signed_at: self.signed_at,
                claim_pending: self.claim_pending,
                claim_reason: self.claim_reason,
                received_at: self.received_at,
                accepted_at: self.accepted_at,
                acceptance: self.acceptance,
                acceptance_due_at: self.acceptance_due_at,
                shipment_deadline: self.shipment_deadline,
                agreed_shipment_deadline: self.agreed_shipment_deadline,
                shipment_overdue: self.shipment_overdue,
                paused_at: self.paused_at,
                inspection_agency: self.inspection_agency,
            },
            external_reference: self.external_reference,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// The unique index of a buyer's order references (`0004_lists.sql`).
const REFERENCE_PER_BUYER: &str = "contracts_external_reference_per_buyer";

/// Creates a contract with its first version.
pub async fn insert_contract(
    tx: &mut PgConnection,
    contract: &ContractRecord,
    first: &VersionRecord,
) -> Result<(), ServiceError> {
    let n = &contract.negotiation;
    sqlx::query(
        "INSERT INTO contract.contracts (contract_id, buyer_principal_id, supplier_id, \
         supplier_principal_id, protection, status, latest_version, signed_version, \
         pending_amendment, currency, total_minor, created_at, updated_at, external_reference) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13)",
    )
    .bind(contract.contract_id)
    .bind(&contract.buyer_principal_id)
    .bind(contract.supplier_id)
    .bind(&contract.supplier_principal_id)
    .bind(protection_name(n.protection))
    .bind(n.status.as_str())
    .bind(db_version(n.latest_version))
    .bind(db_version(n.signed_version))
    .bind(db_version(n.pending_amendment))
    .bind(contract.total.currency.as_str())
    .bind(contract.total.amount_minor)
    .bind(contract.created_at)
    .bind(&contract.external_reference)
    .execute(&mut *tx)
    .await
    .map_err(|error| match &error {
        // Another draft of the buyer with this reference committed after
        // the drafting checked for one: a retry names it.
        sqlx::Error::Database(db) if db.constraint() == Some(REFERENCE_PER_BUYER) => {
            ServiceError::Aborted(format!(
                "another contract of the buyer took the external reference {:?} at the same \
                 time; retry",
                contract.external_reference.as_deref().unwrap_or_default()
            ))
        }
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            ServiceError::AlreadyExists(format!("contract {} already exists", contract.contract_id))
        }
        _ => error.into(),
    })?;
    insert_version(tx, first).await
}

async fn load(
    conn: &mut PgConnection,
    contract_id: Uuid,
    lock: bool,
) -> Result<ContractRecord, ServiceError> {
    let sql = format!(
        "SELECT {CONTRACT_COLUMNS} FROM contract.contracts WHERE contract_id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row: ContractRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(contract_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ServiceError::not_found(CONTRACT, contract_id))?;
    let signatures: Vec<SignatureRow> = sqlx::query_as(
        "SELECT version, party, principal_id, signed_at FROM contract.signatures \
         WHERE contract_id = $1 ORDER BY signed_at, party",
    )
    .bind(contract_id)
    .fetch_all(&mut *conn)
    .await?;
    let signatures = signatures
        .into_iter()
        .map(SignatureRow::into_signature)
        .collect::<Result<Vec<_>, _>>()?;
    row.into_record(signatures)
}

/// What NOT_FOUND calls a contract: "contract <id> not found", for an id
/// that does not exist and, through `app::check_can_read`, for one the caller
/// may not see.
pub const CONTRACT: &str = "contract";

/// The contract, locked for the rest of the caller's transaction.
pub async fn lock_contract(
    tx: &mut PgConnection,
    contract_id: Uuid,
) -> Result<ContractRecord, ServiceError> {
    load(tx, contract_id, true).await
}

pub async fn get_contract(
    conn: &mut PgConnection,
    contract_id: Uuid,
) -> Result<ContractRecord, ServiceError> {
    load(conn, contract_id, false).await
}

/// Saves a locked contract's state and any new signature. A revision starts a
/// new version without signatures; only a refused activation voids the
/// signatures of the version both had signed (the timeline keeps that they
/// signed and why it was undone).
pub async fn save_contract(
    tx: &mut PgConnection,
    contract: &mut ContractRecord,
    at: OffsetDateTime,
) -> Result<(), ServiceError> {
    let n = &contract.negotiation;
    sqlx::query(
        "UPDATE contract.contracts SET status = $2, status_before_dispute = $3, \
         latest_version = $4, signed_version = $5, pending_amendment = $6, currency = $7, \
         total_minor = $8, escrow_account_id = $9, open_claim_id = $10, \
         activation_refusal = $11, cancellation_reason = $12, updated_at = $13, \
         signed_at = $14, claim_pending = $15, claim_reason = $16, received_at = $17, \
         accepted_at = $18, acceptance = $19, acceptance_due_at = $20, shipment_deadline = $21, \
         agreed_shipment_deadline = $22, shipment_overdue = $23, paused_at = $24, \
         inspection_agency = $25, protection = $26 \
         WHERE contract_id = $1",
    )
    .bind(contract.contract_id)
    .bind(n.status.as_str())
    .bind(contract.status_before_dispute.map(Status::as_str))
    .bind(db_version(n.latest_version))
    .bind(db_version(n.signed_version))
    .bind(db_version(n.pending_amendment))
    .bind(contract.total.currency.as_str())
    .bind(contract.total.amount_minor)
    .bind(&contract.escrow_account_id)
    .bind(&contract.open_claim_id)
    .bind(&contract.activation_refusal)
    .bind(&contract.cancellation_reason)
    .bind(at)
    .bind(contract.progress.signed_at)
    .bind(contract.progress.claim_pending)
    .bind(&contract.progress.claim_reason)
    .bind(contract.progress.received_at)
    .bind(contract.progress.accepted_at)
    .bind(&contract.progress.acceptance)
    .bind(contract.progress.acceptance_due_at)
    .bind(contract.progress.shipment_deadline)
    .bind(contract.progress.agreed_shipment_deadline)
    .bind(contract.progress.shipment_overdue)
    .bind(contract.progress.paused_at)
    .bind(&contract.progress.inspection_agency)
    .bind(protection_name(n.protection))
    .execute(&mut *tx)
    .await?;
    if n.signed_version == 0 && n.signatures.is_empty() {
        sqlx::query("DELETE FROM contract.signatures WHERE contract_id = $1 AND version = $2")
            .bind(contract.contract_id)
            .bind(db_version(n.latest_version))
            .execute(&mut *tx)
            .await?;
    }
    if n.pending_amendment != 0 && n.amendment_signatures.is_empty() {
        sqlx::query("DELETE FROM contract.signatures WHERE contract_id = $1 AND version = $2")
            .bind(contract.contract_id)
            .bind(db_version(n.pending_amendment))
            .execute(&mut *tx)
            .await?;
    }
    for signature in n.signatures.iter().chain(&n.amendment_signatures) {
        sqlx::query(
            "INSERT INTO contract.signatures (contract_id, version, party, principal_id, signed_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(contract.contract_id)
        .bind(db_version(signature.version))
        .bind(party_name(signature.party))
        .bind(&signature.principal_id)
        .bind(signature.signed_at)
        .execute(&mut *tx)
        .await?;
    }
    contract.updated_at = at;
    Ok(())
}

/// The version in force: the signed one once signed, else the latest.
pub fn current_version(contract: &ContractRecord) -> u32 {
    match contract.negotiation.signed_version {
        0 => contract.negotiation.latest_version,
        signed => signed,
    }
}

// ---- Listings ----------------------------------------------------------------

async fn load_each(
    conn: &mut PgConnection,
    ids: Vec<Uuid>,
) -> Result<Vec<ContractRecord>, ServiceError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(get_contract(&mut *conn, id).await?);
    }
    Ok(out)
}

/// Which contracts a listing wants; every condition is optional and they
/// combine with AND.
#[derive(Clone, Debug, Default)]
pub struct ContractFilter {
    pub buyer_principal_id: Option<String>,
    pub supplier_id: Option<Uuid>,
    /// The supplier owner's contracts (a supplier caller sees only these).
    pub supplier_principal_id: Option<String>,
    pub statuses: Vec<Status>,
    pub protection: Option<Protection>,
    /// Created at or after.
    pub created_after: Option<OffsetDateTime>,
    /// Created before.
    pub created_before: Option<OffsetDateTime>,
    /// Last changed at or after.
    pub updated_after: Option<OffsetDateTime>,
    /// Last changed before.
    pub updated_before: Option<OffsetDateTime>,
    /// The buyer's order reference, matched exactly.
    pub external_reference: Option<String>,
}

/// The order of a contract listing: by creation or last change, ties broken
/// by contract id in the same direction (so the cursor is `(time, id)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContractOrder {
    #[default]
    CreatedDesc,
    CreatedAsc,
    UpdatedDesc,
    UpdatedAsc,
}

impl ContractOrder {
    fn column(self) -> &'static str {
        match self {
            Self::CreatedDesc | Self::CreatedAsc => "created_at",
            Self::UpdatedDesc | Self::UpdatedAsc => "updated_at",
        }
    }

    fn descending(self) -> bool {
        matches!(self, Self::CreatedDesc | Self::UpdatedDesc)
    }

    /// The contract's sort key in this order.
    pub fn key(self, contract: &ContractRecord) -> OffsetDateTime {
        match self {
            Self::CreatedDesc | Self::CreatedAsc => contract.created_at,
            Self::UpdatedDesc | Self::UpdatedAsc => contract.updated_at,
        }
    }
}

/// One page of a contract listing: what, in which order, after which
/// `(sort key, contract id)`, how many.
#[derive(Clone, Debug, Default)]
pub struct ContractListing {
    pub filter: ContractFilter,
    pub order: ContractOrder,
    pub after: Option<(OffsetDateTime, Uuid)>,
    pub limit: i64,
}

/// The listing's statement: only the conditions the filter sets, so that
/// each shape is planned on the index that serves it (see
/// `migrations/0004_lists.sql`), never on a condition a parameter disables.
fn listing_query(listing: &ContractListing, prefix: &str) -> QueryBuilder<Postgres> {
    let filter = &listing.filter;
    let mut q = QueryBuilder::new(format!(
        "{prefix}SELECT contract_id FROM contract.contracts WHERE true"
    ));
    if let Some(buyer) = &filter.buyer_principal_id {
        q.push(" AND buyer_principal_id = ")
            .push_bind(buyer.clone());
    }
    if let Some(owner) = &filter.supplier_principal_id {
        q.push(" AND supplier_principal_id = ")
            .push_bind(owner.clone());
    }
    if let Some(supplier) = filter.supplier_id {
        q.push(" AND supplier_id = ").push_bind(supplier);
    }
    if let Some(reference) = &filter.external_reference {
        q.push(" AND external_reference = ")
            .push_bind(reference.clone());
    }
    if !filter.statuses.is_empty() {
        let statuses: Vec<&'static str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        q.push(" AND status = ANY(").push_bind(statuses).push(")");
    }
    if let Some(protection) = filter.protection {
        q.push(" AND protection = ")
            .push_bind(protection_name(protection));
    }
    for (column, op, bound) in [
        ("created_at", ">=", filter.created_after),
        ("created_at", "<", filter.created_before),
        ("updated_at", ">=", filter.updated_after),
        ("updated_at", "<", filter.updated_before),
    ] {
        if let Some(at) = bound {
            q.push(format!(" AND {column} {op} ")).push_bind(at);
        }
    }
    let order = listing.order;
    let (column, direction) = (
        order.column(),
        if order.descending() { "DESC" } else { "ASC" },
    );
    if let Some((at, id)) = listing.after {
        let op = if order.descending() { "<" } else { ">" };
        q.push(format!(" AND ({column}, contract_id) {op} ("))
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(format!(
        " ORDER BY {column} {direction}, contract_id {direction} LIMIT "
    ))
    .push_bind(listing.limit);
    q
}

/// One page of contracts (at most `limit`).
pub async fn list_contracts(
    conn: &mut PgConnection,
    listing: &ContractListing,
) -> Result<Vec<ContractRecord>, ServiceError> {
    let ids: Vec<Uuid> = listing_query(listing, "")
        .build_query_scalar()
        .fetch_all(&mut *conn)
        .await?;
    load_each(conn, ids).await
}

/// Postgres's plan of exactly the statement [`list_contracts`] runs for
/// `listing`, as `EXPLAIN (FORMAT JSON)` gives it: for the tests that check
/// each filter shape is served by an index.
pub async fn explain_list_contracts(
    conn: &mut PgConnection,
    listing: &ContractListing,
) -> Result<String, ServiceError> {
    let row = listing_query(listing, "EXPLAIN (FORMAT JSON) ")
        .build()
        .fetch_one(&mut *conn)
        .await?;
    // `json` travels as its text.
    Ok(row.try_get_unchecked::<String, _>(0)?)
}

/// The buyer's contract with this order reference, if any.
pub async fn contract_with_reference(
    conn: &mut PgConnection,
    buyer_principal_id: &str,
    external_reference: &str,
) -> Result<Option<Uuid>, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT contract_id FROM contract.contracts \
         WHERE external_reference = $1 AND buyer_principal_id = $2",
    )
    .bind(external_reference)
    .bind(buyer_principal_id)
    .fetch_optional(conn)
    .await?)
}

/// Contracts awaiting `agency`'s passing pre-shipment inspection (signed,
/// not shipped), soonest shipment deadline first, after the cursor.
pub async fn list_inspection_assignments(
    conn: &mut PgConnection,
    agency: &str,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<ContractRecord>, ServiceError> {
    let (after_at, after_id) = after.unwrap_or((OffsetDateTime::UNIX_EPOCH, Uuid::nil()));
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT c.contract_id FROM contract.contracts c \
         WHERE c.inspection_agency = $1 \
           AND c.status IN ('awaiting_payment', 'partially_funded', 'funded', 'signed_unprotected') \
           AND NOT coalesce((SELECT r.passed FROM contract.inspection_reports r \
                    WHERE r.contract_id = c.contract_id \
                    ORDER BY r.submitted_at DESC, r.report_id DESC LIMIT 1), false) \
           AND (c.shipment_deadline, c.contract_id) > ($2, $3) \
         ORDER BY c.shipment_deadline, c.contract_id LIMIT $4",
    )
    .bind(agency)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    load_each(conn, ids).await
}

pub async fn exists(conn: &mut PgConnection, contract_id: Uuid) -> Result<bool, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM contract.contracts WHERE contract_id = $1)",
    )
    .bind(contract_id)
    .fetch_one(conn)
    .await?)
}

/// The contract of an escrow account, locked.
pub async fn find_by_escrow_account(
    tx: &mut PgConnection,
    escrow_account_id: &str,
) -> Result<Option<ContractRecord>, ServiceError> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "SELECT contract_id FROM contract.contracts WHERE escrow_account_id = $1",
    )
    .bind(escrow_account_id)
    .fetch_optional(&mut *tx)
    .await?;
    match id {
        Some(id) => Ok(Some(lock_contract(tx, id).await?)),
        None => Ok(None),
    }
}
