//! Amendments of a signed contract: proposed, signed by both, withdrawn;
//! both signatures move the cover first (supplier-registry), then escrow's
//! schedule, and the amendment is in force when escrow took it. A refused
//! schedule is compensated: the cover moves back.

use sqlx::PgConnection;
use ta_proto::{contract as pb, escrow as escrow_pb};
use ta_runtime::{
    ServiceError,
    auth::{Actor, Principal},
    money::readable,
    timestamps,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    ContractFlows, Flows, SHIPMENT_DUE, Step, UNSHIPPED_CANCEL,
    drafting::{ById, Revise, write_new_version},
    escrow_actor,
    funding::funding_target,
    party_of, schedule, system,
};
use crate::{
    domain::{
        lots::check_lot_amendment,
        negotiation::{Amended, Protection},
        status::{Action, Status},
    },
    effects::{self, completion},
    storage::{
        contracts::{ContractRecord, find_by_escrow_account, lock_contract},
        fulfilment::shipments,
        payments::{Payment, replace_payments},
        versions::{self, VersionRecord, insert_version, load_terms},
    },
};

/// A party proposes new terms for a signed contract: same protection, same
/// currency.
pub async fn propose(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Revise,
    now: OffsetDateTime,
) -> Result<(pb::Contract, pb::ContractVersion), ServiceError> {
    // Lots shipped and released stay as they are: checked under the
    // contract's lock, which write_new_version takes again.
    let contract = lock_contract(tx, cmd.contract_id).await?;
    party_of(principal, &contract)?;
    if contract.negotiation.signed_version != 0 {
        let signed = load_terms(tx, cmd.contract_id, contract.negotiation.signed_version).await?;
        let shipped = shipments(tx, cmd.contract_id).await?;
        let released: Vec<String> = shipped
            .iter()
            .flat_map(|s| s.released_milestones.iter().cloned())
            .collect();
        check_lot_amendment(
            &signed.terms,
            &cmd.terms,
            u32::try_from(shipped.len()).unwrap_or(u32::MAX),
            &released,
        )?;
    }
    write_new_version(
        tx,
        flows,
        principal,
        cmd,
        |contract| {
            if cmd.terms.protection != contract.negotiation.protection {
                return Err(ServiceError::invalid(
                    "terms.protection",
                    "cannot change in an amendment",
                ));
            }
            if cmd.terms.total.currency != contract.total.currency {
                return Err(ServiceError::invalid(
                    "terms.line_items",
                    format!(
                        "must stay in the contract's currency, {}",
                        contract.total.currency
                    ),
                ));
            }
            contract.negotiation.propose_amendment(cmd.base_version)
        },
        |contract, version| {
            Step::new(
                pb::ContractEventType::AmendmentProposed,
                "amendment.proposed",
                format!(
                    "the {} proposed amendment {version} ({} -> {}): {}",
                    principal.role,
                    readable(contract.total),
                    readable(cmd.terms.total),
                    cmd.change_note
                ),
            )
        },
        now,
    )
    .await
}

/// A party signs amendment `cmd.version`; with both signatures an
/// unprotected contract is amended at once, a protected one moves its cover
/// first (the answer continues in [`cover_adjusted`]).
pub async fn sign_amendment(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &ById,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let actor = Actor::of(principal);
    let mut contract = lock_contract(tx, cmd.contract_id).await?;
    let party = party_of(principal, &contract)?;
    let signed =
        contract
            .negotiation
            .sign_amendment(party, &principal.subject, cmd.version, now)?;
    match signed {
        Amended::Both if contract.negotiation.protection == Protection::None => {
            apply_amendment(tx, flows, &mut contract, &actor, None, now).await
        }
        Amended::Both => {
            let amended = load_terms(tx, cmd.contract_id, cmd.version).await?;
            flows
                .outbox
                .write(
                    tx,
                    effects::adjust_cover(
                        &contract,
                        cmd.version,
                        amended.version.total,
                        completion::COVER_ADJUSTED,
                    ),
                )
                .await?;
            flows
                .record(
                    tx,
                    &mut contract,
                    &actor,
                    Step::new(
                        pb::ContractEventType::Signed,
                        "amendment.signed",
                        format!(
                            "both parties signed amendment {}; cover moves to {} and the escrow schedule follows",
                            cmd.version,
                            readable(amended.version.total)
                        ),
                    ),
                    now,
                )
                .await
        }
        Amended::First => {
            flows
                .record(
                    tx,
                    &mut contract,
                    &actor,
                    Step::new(
                        pb::ContractEventType::Signed,
                        "amendment.signed",
                        format!(
                            "the {} signed amendment {}; the other party's signature is awaited",
                            party.as_str(),
                            cmd.version
                        ),
                    ),
                    now,
                )
                .await
        }
    }
}

/// A party withdraws amendment `cmd.version` (why: `cmd.text`); the signed
/// version stays in force.
pub async fn withdraw(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &ById,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let mut contract = lock_contract(tx, cmd.contract_id).await?;
    party_of(principal, &contract)?;
    contract.negotiation.withdraw_amendment(cmd.version)?;
    let in_force = contract.negotiation.signed_version;
    flows
        .record(
            tx,
            &mut contract,
            &Actor::of(principal),
            Step::new(
                pb::ContractEventType::AmendmentWithdrawn,
                "amendment.withdrawn",
                format!(
                    "the {} withdrew amendment {}: {}; version {} stays in force",
                    principal.role, cmd.version, cmd.text, in_force
                ),
            ),
            now,
        )
        .await
}

/// Supplier-registry answered the cover an amendment both signed needs.
pub async fn cover_adjusted(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    version: u32,
    refusal: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = lock_contract(tx, contract_id).await?;
    if contract.negotiation.pending_amendment != version
        || !contract.negotiation.amendment_signed_by_both()
    {
        return Ok(());
    }
    if let Some(reason) = refusal {
        contract.negotiation.amendment_refused();
        let in_force = contract.negotiation.signed_version;
        flows
            .record(
                tx,
                &mut contract,
                &system(),
                Step::new(
                    pb::ContractEventType::AmendmentRefused,
                    "amendment.refused",
                    format!(
                        "amendment {version} refused: {reason}; it stays proposed and unsigned, version {in_force} stays in force"
                    ),
                ),
                now,
            )
            .await?;
        return Ok(());
    }
    let loaded = load_terms(tx, contract_id, version).await?;
    let signed_at = contract.progress.signed_at.unwrap_or(now);
    let payments = schedule(&loaded.terms, signed_at, flows.settings.day);
    flows
        .outbox
        .write(
            tx,
            effects::amend_escrow_schedule(
                &contract,
                version,
                &loaded.terms,
                &payments,
                flows.settings.day,
            )?,
        )
        .await
}

/// The amendment is in force: cover and escrow follow it (or it is
/// unprotected). `escrow_schedule` is escrow's schedule after the amendment,
/// with what is funded.
pub async fn apply_amendment(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    escrow_schedule: Option<&[escrow_pb::ScheduledPayment]>,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let previous_total = contract.total;
    let previous = load_terms(
        tx,
        contract.contract_id,
        contract.negotiation.signed_version,
    )
    .await?;
    let version = contract.negotiation.apply_amendment()?;
    let loaded = load_terms(tx, contract.contract_id, version).await?;
    contract.total = loaded.version.total;
    let deadline = loaded.terms.shipment_deadline;
    let unshipped = matches!(
        contract.negotiation.status,
        Status::AwaitingPayment
            | Status::PartiallyFunded
            | Status::Funded
            | Status::SignedUnprotected
    );
    if unshipped && previous.terms.shipment_deadline != deadline {
        // Both agreed to a new shipment deadline: lateness counts from it
        // (also over a claim's decided date, which the amendment replaces).
        contract.progress.shipment_deadline = Some(deadline);
        contract.progress.agreed_shipment_deadline = None;
        if deadline > now {
            contract.progress.shipment_overdue = false;
            flows
                .timers
                .cancel(tx, UNSHIPPED_CANCEL, &contract.contract_id.to_string())
                .await?;
        }
        if !contract.progress.shipment_overdue {
            flows
                .schedule_at(
                    tx,
                    SHIPMENT_DUE,
                    contract.contract_id,
                    loaded.terms.shipment_deadline,
                    now,
                )
                .await?;
        }
    }
    if let Some(schedule) = escrow_schedule {
        let payments: Vec<Payment> = schedule
            .iter()
            .map(|p| Payment {
                milestone_id: p.milestone_id.clone(),
                amount_minor: p.amount.as_ref().map_or(0, |m| m.amount_minor),
                due_at: p
                    .due_at
                    .as_ref()
                    .and_then(timestamps::from_proto)
                    .unwrap_or(now),
                funded_at: p.funded_at.as_ref().and_then(timestamps::from_proto),
                overdue: false,
            })
            .filter(|p| p.amount_minor > 0)
            .collect();
        replace_payments(tx, contract.contract_id, &payments).await?;
        let all_funded = payments.iter().all(|p| p.funded_at.is_some());
        let target = funding_target(contract);
        let action = match (*target, all_funded) {
            (Status::Funded, false) => Some(Action::MoreDue),
            (Status::AwaitingPayment | Status::PartiallyFunded, true) => Some(Action::FullyFunded),
            _ => None,
        };
        if let Some(action) = action
            && let Ok(next) = target.next(action)
        {
            *target = next;
        }
    }
    flows
        .record(
            tx,
            contract,
            actor,
            Step::new(
                pb::ContractEventType::Amended,
                "contract.amended",
                format!(
                    "amendment {version} signed by both is in force (\"{}\"); total {} -> {}",
                    loaded.version.change_note,
                    readable(previous_total),
                    readable(contract.total)
                ),
            ),
            now,
        )
        .await
}

/// Escrow answered the schedule of amendment `version`, both signed and
/// its cover moved: in force, or compensated when escrow refused.
pub async fn schedule_amended(
    tx: &mut PgConnection,
    flows: &Flows,
    escrow_account_id: &str,
    version: u32,
    answer: Result<&[escrow_pb::ScheduledPayment], &str>,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let Some(mut contract) = find_by_escrow_account(tx, escrow_account_id).await? else {
        return Err(ServiceError::internal(
            "schedule amended for an unknown account",
        ));
    };
    if contract.negotiation.pending_amendment != version
        || !contract.negotiation.amendment_signed_by_both()
    {
        return Ok(());
    }
    match answer {
        Ok(schedule) => {
            apply_amendment(tx, flows, &mut contract, &system(), Some(schedule), now).await?;
        }
        Err(refusal) => {
            amendment_refused_by_escrow(tx, flows, &mut contract, version, refusal, now).await?
        }
    }
    Ok(())
}

/// Escrow refused the schedule of amendment `version` after supplier-registry
/// moved the cover to its total. The compensation: the amendment is void, a
/// new version records the signed terms restored, and the cover moves back
/// to the total in force under that version's number (supplier-registry
/// orders adjustments by version); the timeline says so.
async fn amendment_refused_by_escrow(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    version: u32,
    refusal: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let in_force = contract.negotiation.signed_version;
    let signed = versions::version(tx, contract.contract_id, in_force).await?;
    let amended = versions::version(tx, contract.contract_id, version).await?;
    let restore = contract.negotiation.amendment_undone();
    insert_version(
        tx,
        &VersionRecord {
            contract_id: contract.contract_id,
            version: restore,
            terms: signed.terms.clone(),
            total: signed.total,
            created_by_principal_id: system().principal_id,
            created_by_role: "service".into(),
            change_note: format!(
                "escrow refused amendment {version}: version {in_force}'s terms restored, with its cover"
            ),
            created_at: now,
        },
    )
    .await?;
    flows
        .outbox
        .write(
            tx,
            effects::adjust_cover(contract, restore, signed.total, completion::NOTHING),
        )
        .await?;
    tracing::warn!(
        contract_id = %contract.contract_id, version, refusal,
        "escrow refused an amended schedule; the cover moves back"
    );
    flows
        .record(
            tx,
            contract,
            &escrow_actor(),
            Step {
                event: pb::ContractEventType::AmendmentRefused,
                action: "amendment.refused_by_escrow",
                detail: format!(
                    "escrow refused the schedule of amendment {version} ({refusal}): the amendment is void and version {in_force} stays in force; the supplier's cover, moved to {} for it, goes back to {} (version {restore} restores version {in_force}'s terms); propose the amendment again",
                    readable(amended.total),
                    readable(signed.total)
                ),
                money: Some(signed.total),
            },
            now,
        )
        .await?;
    Ok(())
}
