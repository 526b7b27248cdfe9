//! After both parties signed: a Trade Assurance contract reserves cover with
//! supplier-registry, then opens its escrow account; each answer continues
//! here (through the outbox's completions), and a refusal puts it back to
//! draft. An unprotected contract is in force at once.

use sqlx::PgConnection;
use ta_proto::{contract as pb, escrow as escrow_pb};
use ta_runtime::{ServiceError, auth::Actor, money::readable};
use ta_workflow::timeline::TimelineEntry;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ContractFlows, Flows, SHIPMENT_DUE, Step, schedule, system};
use crate::{
    domain::{negotiation::Protection, status::Status, terms::cover_refusal_reason},
    effects,
    storage::{
        contracts::{ContractRecord, Progress, lock_contract},
        payments::{payments, replace_payments},
        timeline::append_timeline,
        versions::load_terms,
    },
    views::readable_time,
};

/// Both parties signed `contract`'s latest version (already applied to its
/// negotiation): a Trade Assurance contract asks supplier-registry for cover
/// (the outbox's answer continues in [`cover_reserved`]); an unprotected one
/// is in force at once.
pub async fn both_signed(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let loaded = load_terms(
        tx,
        contract.contract_id,
        contract.negotiation.signed_version,
    )
    .await?;
    let terms = &loaded.terms;
    contract.progress.signed_at = Some(now);
    contract.progress.shipment_deadline = Some(terms.shipment_deadline);
    contract.progress.inspection_agency = terms.inspection_agency().to_owned();
    contract.activation_refusal.clear();
    let version = contract.negotiation.signed_version;
    if contract.negotiation.protection == Protection::TradeAssurance {
        flows
            .outbox
            .write(tx, effects::reserve_cover(contract))
            .await?;
        return flows
            .record(
                tx,
                contract,
                actor,
                Step::new(
                    pb::ContractEventType::Signed,
                    "contract.signed",
                    format!(
                        "both parties signed version {version}; reserving {} of cover with supplier-registry before escrow opens",
                        readable(contract.total)
                    ),
                ),
                now,
            )
            .await;
    }
    flows
        .schedule_at(
            tx,
            SHIPMENT_DUE,
            contract.contract_id,
            terms.shipment_deadline,
            now,
        )
        .await?;
    flows
        .record(
            tx,
            contract,
            actor,
            Step::new(
                pb::ContractEventType::Activated,
                "contract.signed_unprotected",
                format!(
                    "both parties signed version {version}; the order is NOT protected: paid outside the platform, no cover, no escrow, no claims"
                ),
            ),
            now,
        )
        .await
}

/// Supplier-registry answered the cover reservation.
pub async fn cover_reserved(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    refusal: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = lock_contract(tx, contract_id).await?;
    if contract.negotiation.status != Status::Activating {
        tracing::info!(%contract_id, "cover answer for a contract no longer activating");
        return Ok(());
    }
    if let Some(refusal) = refusal {
        let reason = cover_refusal_reason(refusal, contract.total.currency);
        return activation_refused(tx, flows, &mut contract, &reason, now).await;
    }
    let loaded = load_terms(tx, contract_id, contract.negotiation.signed_version).await?;
    let signed_at = contract.progress.signed_at.unwrap_or(now);
    let payments = schedule(&loaded.terms, signed_at, flows.settings.day);
    replace_payments(tx, contract_id, &payments).await?;
    flows
        .outbox
        .write(
            tx,
            effects::open_escrow(&contract, &loaded.terms, &payments, flows.settings.day),
        )
        .await?;
    append_timeline(
        tx,
        contract_id,
        &TimelineEntry {
            entry: 0,
            occurred_at: now,
            actor_principal_id: effects::SUPPLIER_REGISTRY.into(),
            actor_role: "service".into(),
            kind: "cover.reserved".into(),
            description: format!(
                "supplier-registry reserved {} of the supplier's Trade Assurance limit; opening the escrow account",
                readable(contract.total)
            ),
            money: Some(contract.total),
        },
    )
    .await?;
    Ok(())
}

/// Escrow answered the account opening.
pub async fn escrow_opened(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    answer: Result<escrow_pb::OpenEscrowAccountResponse, String>,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = lock_contract(tx, contract_id).await?;
    if contract.negotiation.status != Status::Activating {
        tracing::info!(%contract_id, "escrow answer for a contract no longer activating");
        return Ok(());
    }
    let account = match answer {
        Ok(response) => response.account.map(|a| a.escrow_account_id),
        Err(refusal) => {
            // Cover was reserved for an activation that cannot finish.
            flows
                .outbox
                .write(tx, effects::release_cover(&contract))
                .await?;
            return activation_refused(
                tx,
                flows,
                &mut contract,
                &format!("ESCROW_REFUSED: {refusal}"),
                now,
            )
            .await;
        }
    };
    contract.escrow_account_id = account;
    contract.negotiation.activated()?;
    let loaded = load_terms(tx, contract_id, contract.negotiation.signed_version).await?;
    flows
        .schedule_at(
            tx,
            SHIPMENT_DUE,
            contract_id,
            loaded.terms.shipment_deadline,
            now,
        )
        .await?;
    let first_due = payments(tx, contract_id).await?.first().map(|p| p.due_at);
    let account = contract.escrow_account_id.clone().unwrap_or_default();
    flows
        .record(
            tx,
            &mut contract,
            &system(),
            Step::new(
                pb::ContractEventType::Activated,
                "contract.activated",
                format!(
                    "cover reserved and escrow account {} opened; the buyer pays into escrow{}",
                    account,
                    first_due.map_or(String::new(), |d| format!(
                        ", first payment due {}",
                        readable_time(d)
                    ))
                ),
            ),
            now,
        )
        .await?;
    Ok(())
}

async fn activation_refused(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    reason: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    contract.negotiation.activation_refused()?;
    contract.activation_refusal = reason.to_owned();
    contract.progress = Progress::default();
    flows
        .record(
            tx,
            contract,
            &system(),
            Step::new(
                pb::ContractEventType::ActivationRefused,
                "contract.activation_refused",
                format!("activation refused, back to draft (both must sign again): {reason}"),
            ),
            now,
        )
        .await?;
    Ok(())
}
