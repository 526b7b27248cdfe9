//! The contract's row and its signatures: created with its first version,
//! locked and saved by every change, listed and looked up.

use sqlx::{FromRow, PgConnection};
use ta_runtime::{OrConflict, ServiceError, money::Money};
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
    agreed_shipment_deadline, shipment_overdue, paused_at, inspection_agency";

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
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

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
         pending_amendment, currency, total_minor, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
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
    .execute(&mut *tx)
    .await
    .or_conflict(|| {
        ServiceError::AlreadyExists(format!("contract {} already exists", contract.contract_id))
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

/// Which contracts a listing wants.
#[derive(Clone, Debug, Default)]
pub struct ContractFilter {
    pub buyer_principal_id: Option<String>,
    pub supplier_id: Option<Uuid>,
    /// The supplier owner's contracts (a supplier caller sees only these).
    pub supplier_principal_id: Option<String>,
    pub statuses: Vec<Status>,
    pub protection: Option<Protection>,
}

/// Contracts newest first, after the cursor `(created_at, contract_id)`.
pub async fn list_contracts(
    conn: &mut PgConnection,
    filter: &ContractFilter,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<ContractRecord>, ServiceError> {
    let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
    let (after_at, after_id) = after.unwrap_or((
        OffsetDateTime::now_utc() + time::Duration::days(36_500),
        Uuid::max(),
    ));
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT contract_id FROM contract.contracts \
         WHERE ($1::text IS NULL OR buyer_principal_id = $1) \
           AND ($2::uuid IS NULL OR supplier_id = $2) \
           AND (cardinality($3::text[]) = 0 OR status = ANY($3)) \
           AND ($4::text IS NULL OR protection = $4) \
           AND ($8::text IS NULL OR supplier_principal_id = $8) \
           AND (created_at, contract_id) < ($5, $6) \
         ORDER BY created_at DESC, contract_id DESC LIMIT $7",
    )
    .bind(&filter.buyer_principal_id)
    .bind(filter.supplier_id)
    .bind(&statuses)
    .bind(filter.protection.map(protection_name))
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .bind(&filter.supplier_principal_id)
    .fetch_all(&mut *conn)
    .await?;
    load_each(conn, ids).await
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
