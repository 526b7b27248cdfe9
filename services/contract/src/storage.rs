//! Postgres storage of contracts. Every table is qualified with the service's
//! own schema, `contract`. A mutation locks the contract row first
//! (`lock_contract`), so concurrent changes to one contract serialize and the
//! timeline numbers its entries without gaps.

use sqlx::{FromRow, PgConnection, migrate::Migrator};
use ta_runtime::{
    OrConflict, ServiceError,
    idempotency::IdempotencyKeys,
    money::{Currency, Money},
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{
    negotiation::{Negotiation, Party, Protection, Signature},
    status::Status,
};

pub const SCHEMA: &str = "contract";

pub static MIGRATOR: Migrator = sqlx::migrate!();

pub fn idempotency_keys() -> IdempotencyKeys {
    IdempotencyKeys::new(SCHEMA)
}

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

/// One immutable version of the terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    pub contract_id: Uuid,
    pub version: u32,
    /// The encoded `ContractTerms`, with the computed totals.
    pub terms: Vec<u8>,
    pub total: Money,
    pub created_by_principal_id: String,
    pub created_by_role: String,
    pub change_note: String,
    pub created_at: OffsetDateTime,
}

/// One line of the readable history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    pub entry: u32,
    pub occurred_at: OffsetDateTime,
    pub actor_principal_id: String,
    pub actor_role: String,
    pub kind: String,
    pub description: String,
    pub money: Option<Money>,
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

fn corrupt(what: &str) -> ServiceError {
    ServiceError::internal(format!("contract row holds an impossible {what}"))
}

fn protection_name(p: Protection) -> &'static str {
    match p {
        Protection::TradeAssurance => "trade_assurance",
        Protection::None => "none",
    }
}

fn party_name(p: Party) -> &'static str {
    p.as_str()
}

fn version_number(v: i32) -> Result<u32, ServiceError> {
    u32::try_from(v).map_err(|_| corrupt("version"))
}

fn db_version(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn money(currency: &str, amount_minor: i64) -> Result<Money, ServiceError> {
    let currency = Currency::parse(currency.trim()).ok_or_else(|| corrupt("currency"))?;
    Ok(Money::new(amount_minor, currency))
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

pub async fn insert_version(tx: &mut PgConnection, v: &VersionRecord) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO contract.versions (contract_id, version, terms, currency, total_minor, \
         created_by_principal_id, created_by_role, change_note, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(v.contract_id)
    .bind(db_version(v.version))
    .bind(&v.terms)
    .bind(v.total.currency.as_str())
    .bind(v.total.amount_minor)
    .bind(&v.created_by_principal_id)
    .bind(&v.created_by_role)
    .bind(&v.change_note)
    .bind(v.created_at)
    .execute(tx)
    .await
    .or_conflict(|| {
        ServiceError::Aborted(format!(
            "version {} of contract {} was written concurrently; read it and retry",
            v.version, v.contract_id
        ))
    })?;
    Ok(())
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
        .ok_or_else(|| ServiceError::not_found("contract", contract_id))?;
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

#[derive(FromRow)]
struct VersionRow {
    version: i32,
    terms: Vec<u8>,
    currency: String,
    total_minor: i64,
    created_by_principal_id: String,
    created_by_role: String,
    change_note: String,
    created_at: OffsetDateTime,
}

pub async fn version(
    conn: &mut PgConnection,
    contract_id: Uuid,
    version: u32,
) -> Result<VersionRecord, ServiceError> {
    let row: VersionRow = sqlx::query_as(
        "SELECT version, terms, currency, total_minor, created_by_principal_id, created_by_role, \
         change_note, created_at FROM contract.versions WHERE contract_id = $1 AND version = $2",
    )
    .bind(contract_id)
    .bind(db_version(version))
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ServiceError::not_found("version of the contract", version))?;
    Ok(VersionRecord {
        contract_id,
        version: version_number(row.version)?,
        terms: row.terms,
        total: money(&row.currency, row.total_minor)?,
        created_by_principal_id: row.created_by_principal_id,
        created_by_role: row.created_by_role,
        change_note: row.change_note,
        created_at: row.created_at,
    })
}

/// Appends to a locked contract's timeline; returns the entry's number.
pub async fn append_timeline(
    tx: &mut PgConnection,
    contract_id: Uuid,
    entry: &TimelineEntry,
) -> Result<u32, ServiceError> {
    let number: i32 = sqlx::query_scalar(
        "INSERT INTO contract.timeline (contract_id, entry, occurred_at, actor_principal_id, \
         actor_role, kind, description, currency, amount_minor) \
         SELECT $1, coalesce(max(entry), 0) + 1, $2, $3, $4, $5, $6, $7, $8 \
         FROM contract.timeline WHERE contract_id = $1 RETURNING entry",
    )
    .bind(contract_id)
    .bind(entry.occurred_at)
    .bind(&entry.actor_principal_id)
    .bind(&entry.actor_role)
    .bind(&entry.kind)
    .bind(&entry.description)
    .bind(entry.money.map(|m| m.currency.as_str()))
    .bind(entry.money.map(|m| m.amount_minor))
    .fetch_one(tx)
    .await?;
    version_number(number)
}

#[derive(FromRow)]
struct TimelineRow {
    entry: i32,
    occurred_at: OffsetDateTime,
    actor_principal_id: String,
    actor_role: String,
    kind: String,
    description: String,
    currency: Option<String>,
    amount_minor: Option<i64>,
}

/// Entries after `after`, oldest first, at most `limit`.
pub async fn timeline(
    conn: &mut PgConnection,
    contract_id: Uuid,
    after: u32,
    limit: u32,
) -> Result<Vec<TimelineEntry>, ServiceError> {
    let rows: Vec<TimelineRow> = sqlx::query_as(
        "SELECT entry, occurred_at, actor_principal_id, actor_role, kind, description, currency, \
         amount_minor FROM contract.timeline WHERE contract_id = $1 AND entry > $2 \
         ORDER BY entry LIMIT $3",
    )
    .bind(contract_id)
    .bind(db_version(after))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(TimelineEntry {
                entry: version_number(r.entry)?,
                occurred_at: r.occurred_at,
                actor_principal_id: r.actor_principal_id,
                actor_role: r.actor_role,
                kind: r.kind,
                description: r.description,
                money: match (r.currency, r.amount_minor) {
                    (Some(c), Some(a)) => Some(money(&c, a)?),
                    _ => None,
                },
            })
        })
        .collect()
}

// ---- Funding projection, reports, shipments ---------------------------------

/// One payment milestone as the contract knows it from escrow's feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub milestone_id: String,
    pub amount_minor: i64,
    pub due_at: OffsetDateTime,
    pub funded_at: Option<OffsetDateTime>,
    pub overdue: bool,
}

/// Replaces the schedule: at activation, or with escrow's schedule (and what
/// it funded) after an amendment.
pub async fn replace_payments(
    tx: &mut PgConnection,
    contract_id: Uuid,
    payments: &[Payment],
) -> Result<(), ServiceError> {
    sqlx::query("DELETE FROM contract.payments WHERE contract_id = $1")
        .bind(contract_id)
        .execute(&mut *tx)
        .await?;
    for (position, p) in payments.iter().enumerate() {
        sqlx::query(
            "INSERT INTO contract.payments (contract_id, milestone_id, position, amount_minor, \
             due_at, funded_at, overdue) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(contract_id)
        .bind(&p.milestone_id)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(p.amount_minor)
        .bind(p.due_at)
        .bind(p.funded_at)
        .bind(p.overdue)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[derive(FromRow)]
struct PaymentRow {
    milestone_id: String,
    amount_minor: i64,
    due_at: OffsetDateTime,
    funded_at: Option<OffsetDateTime>,
    overdue: bool,
}

pub async fn payments(
    conn: &mut PgConnection,
    contract_id: Uuid,
) -> Result<Vec<Payment>, ServiceError> {
    let rows: Vec<PaymentRow> = sqlx::query_as(
        "SELECT milestone_id, amount_minor, due_at, funded_at, overdue FROM contract.payments \
         WHERE contract_id = $1 ORDER BY position",
    )
    .bind(contract_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Payment {
            milestone_id: r.milestone_id,
            amount_minor: r.amount_minor,
            due_at: r.due_at,
            funded_at: r.funded_at,
            overdue: r.overdue,
        })
        .collect())
}

/// Records a milestone funded (first time only); whether it changed anything.
pub async fn mark_funded(
    tx: &mut PgConnection,
    contract_id: Uuid,
    milestone_id: &str,
    at: OffsetDateTime,
) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "UPDATE contract.payments SET funded_at = $3, overdue = false \
         WHERE contract_id = $1 AND milestone_id = $2 AND funded_at IS NULL",
    )
    .bind(contract_id)
    .bind(milestone_id)
    .bind(at)
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn mark_overdue(
    tx: &mut PgConnection,
    contract_id: Uuid,
    milestone_id: &str,
) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "UPDATE contract.payments SET overdue = true \
         WHERE contract_id = $1 AND milestone_id = $2 AND funded_at IS NULL AND NOT overdue",
    )
    .bind(contract_id)
    .bind(milestone_id)
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One stored inspection report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRecord {
    pub report_id: Uuid,
    pub contract_version: u32,
    /// The encoded `InspectionReport`.
    pub report: Vec<u8>,
    pub passed: bool,
    pub submitted_at: OffsetDateTime,
}

pub async fn insert_report(
    tx: &mut PgConnection,
    contract_id: Uuid,
    report: &ReportRecord,
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO contract.inspection_reports (report_id, contract_id, contract_version, \
         report, passed, submitted_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(report.report_id)
    .bind(contract_id)
    .bind(db_version(report.contract_version))
    .bind(&report.report)
    .bind(report.passed)
    .bind(report.submitted_at)
    .execute(tx)
    .await?;
    Ok(())
}

#[derive(FromRow)]
struct ReportRow {
    report_id: Uuid,
    contract_version: i32,
    report: Vec<u8>,
    passed: bool,
    submitted_at: OffsetDateTime,
}

/// Reports oldest first, after the report `after` (`None` from the start).
pub async fn reports(
    conn: &mut PgConnection,
    contract_id: Uuid,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<ReportRecord>, ServiceError> {
    let (after_at, after_id) = after.unwrap_or((OffsetDateTime::UNIX_EPOCH, Uuid::nil()));
    let rows: Vec<ReportRow> = sqlx::query_as(
        "SELECT report_id, contract_version, report, passed, submitted_at \
         FROM contract.inspection_reports WHERE contract_id = $1 \
         AND (submitted_at, report_id) > ($2, $3) ORDER BY submitted_at, report_id LIMIT $4",
    )
    .bind(contract_id)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(ReportRecord {
                report_id: r.report_id,
                contract_version: version_number(r.contract_version)?,
                report: r.report,
                passed: r.passed,
                submitted_at: r.submitted_at,
            })
        })
        .collect()
}

pub async fn latest_report(
    conn: &mut PgConnection,
    contract_id: Uuid,
) -> Result<Option<ReportRecord>, ServiceError> {
    let row: Option<ReportRow> = sqlx::query_as(
        "SELECT report_id, contract_version, report, passed, submitted_at \
         FROM contract.inspection_reports WHERE contract_id = $1 \
         ORDER BY submitted_at DESC, report_id DESC LIMIT 1",
    )
    .bind(contract_id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(ReportRecord {
            report_id: r.report_id,
            contract_version: version_number(r.contract_version)?,
            report: r.report,
            passed: r.passed,
            submitted_at: r.submitted_at,
        })
    })
    .transpose()
}

#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct ShipmentRecord {
    pub carrier: String,
    pub tracking_number: String,
    pub shipped_at: OffsetDateTime,
    pub late: bool,
    pub r#final: bool,
}

pub async fn insert_shipment(
    tx: &mut PgConnection,
    contract_id: Uuid,
    shipment: &ShipmentRecord,
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO contract.shipments (contract_id, seq, carrier, tracking_number, shipped_at, \
         late, final) SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5, $6 \
         FROM contract.shipments WHERE contract_id = $1",
    )
    .bind(contract_id)
    .bind(&shipment.carrier)
    .bind(&shipment.tracking_number)
    .bind(shipment.shipped_at)
    .bind(shipment.late)
    .bind(shipment.r#final)
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn shipments(
    conn: &mut PgConnection,
    contract_id: Uuid,
) -> Result<Vec<ShipmentRecord>, ServiceError> {
    Ok(sqlx::query_as(
        "SELECT carrier, tracking_number, shipped_at, late, final AS \"final\" \
         FROM contract.shipments WHERE contract_id = $1 ORDER BY seq",
    )
    .bind(contract_id)
    .fetch_all(conn)
    .await?)
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
pub async fn inspection_assignments(
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
