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
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
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
    activation_refusal, cancellation_reason, created_at, updated_at";

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
         activation_refusal = $11, cancellation_reason = $12, updated_at = $13 \
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
    .execute(&mut *tx)
    .await?;
    if n.signed_version == 0 && n.signatures.is_empty() {
        sqlx::query("DELETE FROM contract.signatures WHERE contract_id = $1 AND version = $2")
            .bind(contract.contract_id)
            .bind(db_version(n.latest_version))
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
