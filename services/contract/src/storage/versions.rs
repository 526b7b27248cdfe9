//! The terms' immutable versions, and their terms read back as signed.

use prost::Message;
use sqlx::{FromRow, PgConnection};
use ta_proto::contract as pb;
use ta_runtime::{OrConflict, ServiceError, money::Money};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{db_version, money, version_number};
use crate::domain::terms::Terms;

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

/// A version's terms: as stored (proto) and as the domain reads them.
pub struct LoadedTerms {
    pub version: VersionRecord,
    pub proto: pb::ContractTerms,
    pub terms: Terms,
}

/// The terms of `version` of a contract, as stored: they were validated
/// when they were written, and are read back without today's request rules
/// (see [`Terms::stored`]), so a rule tightened since never breaks the
/// reactions of a contract signed before.
pub async fn load_terms(
    conn: &mut PgConnection,
    contract_id: Uuid,
    version: u32,
) -> Result<LoadedTerms, ServiceError> {
    let version = self::version(conn, contract_id, version).await?;
    let proto = pb::ContractTerms::decode(version.terms.as_slice())
        .map_err(|_| ServiceError::internal("stored terms do not decode"))?;
    let terms = Terms::stored(&proto, version.total).map_err(|why| {
        ServiceError::internal(format!(
            "stored terms of contract {contract_id} v{} are unreadable: {why}",
            version.version
        ))
    })?;
    Ok(LoadedTerms {
        version,
        proto,
        terms,
    })
}
