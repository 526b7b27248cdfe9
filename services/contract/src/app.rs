//! The contract's use cases after signing, shared by the API, the outbox
//! completions, the escrow feed and the timers. Each runs in the caller's
//! transaction on a contract it locked: it applies the state machine, writes
//! the calls to other services into the outbox, moves the timers, and tells
//! the step in the timeline and the feed.

use sqlx::PgConnection;
use ta_proto::{contract as pb, escrow as escrow_pb};
use ta_runtime::{
    ServiceError,
    money::{Money, readable},
    timestamps,
};
use ta_workflow::Handled;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{
        fulfilment::{ClaimFacts, ClaimReason, check_claim},
        negotiation::Protection,
        status::{Action, Status},
    },
    flows::{
        self, ACCEPTANCE_DUE, Actor, CLAIM_CONFIRMATION, Flows, SHIPMENT_DUE, Step,
        UNSHIPPED_CANCEL, completion, load_terms, readable_time,
    },
    storage::{self, ContractRecord, Payment, VersionRecord},
};

fn step(event: pb::ContractEventType, action: &'static str, detail: String) -> Step<'static> {
    Step {
        event,
        action,
        detail,
        money: None,
    }
}

/// What the funded payments add up to; a sum beyond `i64` (never, for
/// amounts that sum to the contract's total) is an error, not a panic.
fn funded_minor(payments: &[Payment]) -> Result<i64, ServiceError> {
    payments
        .iter()
        .filter(|p| p.funded_at.is_some())
        .try_fold(0_i64, |sum, p| sum.checked_add(p.amount_minor))
        .ok_or_else(|| ServiceError::internal("the funded payments' sum overflows an i64"))
}

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
        flows.reserve_cover(tx, contract).await?;
        return flows
            .record(
                tx,
                contract,
                actor,
                step(
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
            step(
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
    let mut contract = storage::lock_contract(tx, contract_id).await?;
    if contract.negotiation.status != Status::Activating {
        tracing::info!(%contract_id, "cover answer for a contract no longer activating");
        return Ok(());
    }
    if let Some(reason) = refusal {
        return activation_refused(tx, flows, &mut contract, reason, now).await;
    }
    let loaded = load_terms(tx, contract_id, contract.negotiation.signed_version).await?;
    let signed_at = contract.progress.signed_at.unwrap_or(now);
    let payments = flows::schedule(&loaded.terms, signed_at, flows.settings.day);
    storage::replace_payments(tx, contract_id, &payments).await?;
    flows
        .open_escrow(tx, &contract, &loaded.terms, &payments)
        .await?;
    storage::append_timeline(
        tx,
        contract_id,
        &storage::TimelineEntry {
            entry: 0,
            occurred_at: now,
            actor_principal_id: flows::SUPPLIER_REGISTRY.into(),
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
    let mut contract = storage::lock_contract(tx, contract_id).await?;
    if contract.negotiation.status != Status::Activating {
        tracing::info!(%contract_id, "escrow answer for a contract no longer activating");
        return Ok(());
    }
    let account = match answer {
        Ok(response) => response.account.map(|a| a.escrow_account_id),
        Err(refusal) => {
            // Cover was reserved for an activation that cannot finish.
            flows.release_cover(tx, &contract).await?;
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
    let first_due = storage::payments(tx, contract_id)
        .await?
        .first()
        .map(|p| p.due_at);
    let account = contract.escrow_account_id.clone().unwrap_or_default();
    flows
        .record(
            tx,
            &mut contract,
            &flows::system(),
            step(
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
    contract.progress = storage::Progress::default();
    flows
        .record(
            tx,
            contract,
            &flows::system(),
            step(
                pb::ContractEventType::ActivationRefused,
                "contract.activation_refused",
                format!("activation refused, back to draft (both must sign again): {reason}"),
            ),
            now,
        )
        .await?;
    Ok(())
}

/// The status a funding change applies to: the contract's, or the one a
/// claim interrupted.
fn funding_target(contract: &mut ContractRecord) -> &mut Status {
    if contract.negotiation.status == Status::InDispute
        && let Some(prior) = contract.status_before_dispute.as_mut()
    {
        return prior;
    }
    &mut contract.negotiation.status
}

/// Money escrow received for a payment milestone (from its feed).
pub struct ReceivedPayment<'a> {
    pub milestone_id: &'a str,
    pub amount: Option<Money>,
    /// Whether the milestone is now paid in full; a short credit is not.
    pub milestone_paid: bool,
}

/// Escrow received money for a payment milestone (from its feed).
pub async fn payment_received(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    payment: &ReceivedPayment<'_>,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let milestone_id = payment.milestone_id;
    let mut contract = storage::lock_contract(tx, contract_id).await?;
    let escrow = Actor {
        principal_id: flows::ESCROW.into(),
        role: ta_runtime::auth::Role::Service,
    };
    if contract.negotiation.status == Status::Cancelled {
        // A credit that overtook the cancellation: escrow refunds it (the
        // cancellation closes the account refunding what it holds, and a
        // closed account refunds late credits at once); the parties see why.
        let received = payment.amount.map_or_else(|| "money".to_owned(), readable);
        flows
            .record(
                tx,
                &mut contract,
                &escrow,
                Step {
                    event: pb::ContractEventType::PaymentReceived,
                    action: "payment.after_cancellation",
                    detail: format!(
                        "{received} for payment {milestone_id} reached escrow after the cancellation: escrow refunds it to the buyer"
                    ),
                    money: payment.amount,
                },
                now,
            )
            .await?;
        return Ok(());
    }
    if payment.milestone_paid {
        if !storage::mark_funded(tx, contract_id, milestone_id, now).await? {
            return Ok(());
        }
    } else if !matches!(
        funding_target(&mut contract),
        Status::AwaitingPayment | Status::PartiallyFunded
    ) {
        return Ok(());
    }
    let payments = storage::payments(tx, contract_id).await?;
    let all_funded = payments.iter().all(|p| p.funded_at.is_some());
    let action = if all_funded {
        Action::FullyFunded
    } else {
        Action::PaymentReceived
    };
    let target = funding_target(&mut contract);
    match target.next(action) {
        Ok(next) => *target = next,
        Err(_) => {
            tracing::warn!(%contract_id, status = target.as_str(), "payment for a contract not awaiting it");
        }
    }
    let funded = readable(Money::new(
        funded_minor(&payments)?,
        contract.total.currency,
    ));
    let detail = if all_funded {
        format!(
            "payment {milestone_id} received in escrow; fully funded ({funded}): the supplier can produce and ship"
        )
    } else if payment.milestone_paid {
        format!(
            "payment {milestone_id} received in escrow; {funded} of {} funded",
            readable(contract.total)
        )
    } else {
        let received = payment.amount.map_or_else(|| "money".to_owned(), readable);
        format!(
            "{received} received in escrow toward payment {milestone_id}, short of its amount: the rest is still due"
        )
    };
    flows
        .record(
            tx,
            &mut contract,
            &escrow,
            Step {
                event: if all_funded {
                    pb::ContractEventType::Funded
                } else {
                    pb::ContractEventType::PaymentReceived
                },
                action: "payment.received",
                detail,
                money: payment.amount,
            },
            now,
        )
        .await?;
    Ok(())
}

/// Escrow's payment deadline passed unpaid: an unfunded contract is
/// cancelled (cover released, anything funded refunded, escrow closed).
pub async fn payment_overdue(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    milestone_id: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = storage::lock_contract(tx, contract_id).await?;
    if !storage::mark_overdue(tx, contract_id, milestone_id).await? {
        return Ok(());
    }
    if !matches!(
        contract.negotiation.status,
        Status::AwaitingPayment | Status::PartiallyFunded
    ) {
        return Ok(());
    }
    cancel(
        tx,
        flows,
        &mut contract,
        &flows::system(),
        &format!("the payment deadline of {milestone_id} passed unfunded"),
        now,
    )
    .await?;
    Ok(())
}

/// Cancels before shipment: timers stop, the cover is released, anything
/// funded goes back to the buyer and the escrow account closes.
pub async fn cancel(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    reason: &str,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let had_cover = matches!(
        contract.negotiation.status,
        Status::AwaitingPayment | Status::PartiallyFunded | Status::Funded
    );
    contract.negotiation.status = contract.negotiation.status.next(Action::Cancel)?;
    contract.cancellation_reason = reason.to_owned();
    flows.cancel_timers(tx, contract.contract_id).await?;
    let payments = storage::payments(tx, contract.contract_id).await?;
    let funded = funded_minor(&payments)?;
    if had_cover {
        flows.release_cover(tx, contract).await?;
        flows
            .close_escrow(tx, contract, &format!("contract cancelled: {reason}"), true)
            .await?;
    }
    let detail = if funded > 0 {
        format!(
            "cancelled: {reason}; {} refunded from escrow, cover released",
            readable(Money::new(funded, contract.total.currency))
        )
    } else if had_cover {
        format!(
            "cancelled: {reason}; nothing was funded; cover released, escrow closed (money credited meanwhile goes back to the buyer)"
        )
    } else {
        format!("cancelled: {reason}")
    };
    flows
        .record(
            tx,
            contract,
            actor,
            Step {
                event: pb::ContractEventType::Cancelled,
                action: "contract.cancelled",
                detail,
                money: (funded > 0).then(|| Money::new(funded, contract.total.currency)),
            },
            now,
        )
        .await
}

/// The goods are accepted (explicitly, automatically, or by a claim's
/// outcome): the money held goes to the supplier, the cover is freed, and the
/// completed contract lets the buyer review.
pub async fn accept(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    kind: &'static str,
    note: &str,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    contract.negotiation.status = contract.negotiation.status.next(Action::Accept)?;
    contract.progress.accepted_at = Some(now);
    contract.progress.acceptance = Some(kind.into());
    if contract.progress.received_at.is_none() {
        contract.progress.received_at = Some(now);
    }
    flows.cancel_timers(tx, contract.contract_id).await?;
    let payments = storage::payments(tx, contract.contract_id).await?;
    let held = Money::new(funded_minor(&payments)?, contract.total.currency);
    let protected = contract.negotiation.protection == Protection::TradeAssurance;
    if protected {
        flows.release_all(tx, contract, "goods accepted").await?;
        flows.release_cover(tx, contract).await?;
    }
    flows.record_completed(tx, contract).await?;
    let how = match kind {
        "automatic" => {
            "accepted automatically: the inspection period and claim window lapsed without a claim"
        }
        _ => "the buyer accepted the goods",
    };
    let note = if note.is_empty() {
        String::new()
    } else {
        format!(" (\"{note}\")")
    };
    let detail = if protected {
        format!(
            "{how}{note}; {} released to the supplier, cover freed, completed",
            readable(held)
        )
    } else {
        format!("{how}{note}; completed")
    };
    flows
        .record(
            tx,
            contract,
            actor,
            Step {
                event: pb::ContractEventType::Accepted,
                action: "goods.accepted",
                detail,
                money: protected.then_some(held),
            },
            now,
        )
        .await
}

/// The shipment deadline passed: an unshipped contract is marked late (the
/// buyer may now cancel with a full refund, or claim).
pub async fn shipment_due(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = storage::lock_contract(tx, contract_id).await?;
    if !matches!(
        contract.negotiation.status,
        Status::AwaitingPayment
            | Status::PartiallyFunded
            | Status::Funded
            | Status::SignedUnprotected
    ) || contract.progress.shipment_overdue
    {
        return Ok(());
    }
    contract.progress.shipment_overdue = true;
    let protected = contract.negotiation.protection == Protection::TradeAssurance;
    let detail = if protected {
        let loaded = load_terms(tx, contract_id, flows::current_version(&contract)).await?;
        let give_up = now + flows.settings.day * loaded.terms.claim_window_days;
        flows
            .schedule_at(tx, UNSHIPPED_CANCEL, contract_id, give_up, now)
            .await?;
        format!(
            "the shipment deadline passed unshipped: late; the buyer may cancel with a full refund or claim; unless the goods ship by {}, the contract is cancelled and the buyer refunded",
            readable_time(give_up)
        )
    } else {
        "the shipment deadline passed unshipped: late".to_owned()
    };
    flows
        .record(
            tx,
            &mut contract,
            &flows::system(),
            step(
                pb::ContractEventType::DeadlinePassed,
                "deadline.shipment_passed",
                detail,
            ),
            now,
        )
        .await?;
    Ok(())
}

/// A claim window after the shipment deadline, the goods still have not
/// shipped: the order is given up, the buyer refunded.
pub async fn unshipped_cancel(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = storage::lock_contract(tx, contract_id).await?;
    if !matches!(
        contract.negotiation.status,
        Status::AwaitingPayment | Status::PartiallyFunded | Status::Funded
    ) || !contract.progress.shipment_overdue
    {
        return Ok(());
    }
    cancel(
        tx,
        flows,
        &mut contract,
        &flows::system(),
        "nothing shipped within the claim window after the shipment deadline",
        now,
    )
    .await?;
    Ok(())
}

/// The acceptance deadline passed without a claim.
pub async fn acceptance_due(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = storage::lock_contract(tx, contract_id).await?;
    if !matches!(
        contract.negotiation.status,
        Status::Shipped | Status::Delivered
    ) {
        return Ok(());
    }
    accept(
        tx,
        flows,
        &mut contract,
        &flows::system(),
        "automatic",
        "",
        now,
    )
    .await?;
    Ok(())
}

pub fn claim_reason(reason: ta_proto::common::ClaimReason) -> Option<ClaimReason> {
    use ta_proto::common::ClaimReason as P;
    Some(match reason {
        P::LateShipment => ClaimReason::LateShipment,
        P::NonDelivery => ClaimReason::NotReceived,
        P::QualityMismatch => ClaimReason::QualityMismatch,
        P::Damage => ClaimReason::Damaged,
        P::ShortQuantity => ClaimReason::ShortQuantity,
        P::Other => ClaimReason::Other,
        P::Unspecified => return None,
    })
}

/// Phase one of opening a claim: decides it (so a claim and an acceptance
/// never both win), pauses the timers and waits for dispute's confirmation.
pub async fn record_claim_opened(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    claim_id: &str,
    reason: ClaimReason,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    if contract.open_claim_id.as_deref() == Some(claim_id) {
        return flows::contract_proto(tx, contract, flows.settings.day).await;
    }
    let mut loaded = load_terms(tx, contract.contract_id, flows::current_version(contract)).await?;
    if let Some(deadline) = contract.progress.shipment_deadline {
        loaded.terms.shipment_deadline = deadline;
    }
    let shipments = storage::shipments(tx, contract.contract_id).await?;
    check_claim(
        &ClaimFacts {
            protection: contract.negotiation.protection,
            status: contract.negotiation.status,
            open_claim_id: contract.open_claim_id.as_deref(),
            terms: &loaded.terms,
            shipped_at: shipments.iter().find(|s| s.r#final).map(|s| s.shipped_at),
            received_at: contract.progress.received_at,
            day: flows.settings.day,
        },
        reason,
        now,
    )?;
    contract.status_before_dispute = Some(contract.negotiation.status);
    contract.negotiation.status = contract.negotiation.status.next(Action::OpenClaim)?;
    contract.open_claim_id = Some(claim_id.to_owned());
    contract.progress.claim_pending = true;
    contract.progress.claim_reason = Some(format!("{reason:?}"));
    contract.progress.paused_at = Some(now);
    let subject = contract.contract_id.to_string();
    flows.timers.cancel(tx, SHIPMENT_DUE, &subject).await?;
    flows.timers.cancel(tx, UNSHIPPED_CANCEL, &subject).await?;
    flows.timers.cancel(tx, ACCEPTANCE_DUE, &subject).await?;
    flows
        .schedule_at(
            tx,
            CLAIM_CONFIRMATION,
            contract.contract_id,
            now + flows.settings.claim_confirmation,
            now,
        )
        .await?;
    flows
        .record(
            tx,
            contract,
            actor,
            step(
                pb::ContractEventType::ClaimOpened,
                "claim.recorded",
                format!(
                    "claim {claim_id} ({}) recorded: timers paused, money stays held; awaiting dispute's confirmation",
                    reason.label()
                ),
            ),
            now,
        )
        .await
}

pub async fn confirm_claim_opened(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    claim_id: &str,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    require_open_claim(contract, claim_id)?;
    if !contract.progress.claim_pending {
        return flows::contract_proto(tx, contract, flows.settings.day).await;
    }
    contract.progress.claim_pending = false;
    flows
        .timers
        .cancel(tx, CLAIM_CONFIRMATION, &contract.contract_id.to_string())
        .await?;
    flows
        .record(
            tx,
            contract,
            actor,
            step(
                pb::ContractEventType::ClaimOpened,
                "claim.opened",
                format!("claim {claim_id} opened by dispute; escrow frozen for it"),
            ),
            now,
        )
        .await
}

fn require_open_claim(contract: &ContractRecord, claim_id: &str) -> Result<(), ServiceError> {
    match contract.open_claim_id.as_deref() {
        Some(open) if open == claim_id => Ok(()),
        Some(open) => Err(ServiceError::FailedPrecondition(format!(
            "claim {claim_id} is not the open claim of this contract ({open} is)"
        ))),
        None => Err(ServiceError::FailedPrecondition(format!(
            "the contract is {}: no claim is open",
            contract.negotiation.status.as_str()
        ))),
    }
}

/// The claim ends without a decision on the goods: the contract resumes where
/// the claim interrupted it and its timers run again, moved forward by the
/// time they were paused.
async fn resume(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let prior = contract
        .status_before_dispute
        .ok_or_else(|| ServiceError::internal("a claim without the status it interrupted"))?;
    contract.negotiation.status = contract.negotiation.status.next(Action::Resume { prior })?;
    end_claim(contract);
    let paused = contract
        .progress
        .paused_at
        .take()
        .map_or(time::Duration::ZERO, |at| now - at);
    flows
        .timers
        .cancel(tx, CLAIM_CONFIRMATION, &contract.contract_id.to_string())
        .await?;
    match contract.negotiation.status {
        Status::Shipped | Status::Delivered => {
            if let Some(due) = contract.progress.acceptance_due_at.as_mut() {
                *due += paused;
                let due = *due;
                flows
                    .schedule_at(tx, ACCEPTANCE_DUE, contract.contract_id, due, now)
                    .await?;
            }
        }
        _ if contract.progress.shipment_overdue => {
            // Still unshipped after a claim about it: a whole claim window
            // more before the order is given up.
            let loaded =
                load_terms(tx, contract.contract_id, flows::current_version(contract)).await?;
            let give_up = now + flows.settings.day * loaded.terms.claim_window_days;
            flows
                .schedule_at(tx, UNSHIPPED_CANCEL, contract.contract_id, give_up, now)
                .await?;
        }
        _ => {
            if let Some(deadline) = contract.progress.shipment_deadline {
                flows
                    .schedule_at(tx, SHIPMENT_DUE, contract.contract_id, deadline, now)
                    .await?;
            }
        }
    }
    Ok(())
}

fn end_claim(contract: &mut ContractRecord) {
    contract.status_before_dispute = None;
    contract.open_claim_id = None;
    contract.progress.claim_pending = false;
    contract.progress.claim_reason = None;
}

pub async fn abandon_claim_opening(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    claim_id: &str,
    reason: &str,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    require_open_claim(contract, claim_id)?;
    if !contract.progress.claim_pending {
        return Err(ServiceError::FailedPrecondition(format!(
            "claim {claim_id} was confirmed: it ends with RecordClaimClosed"
        )));
    }
    resume(tx, flows, contract, now).await?;
    flows
        .record(
            tx,
            contract,
            actor,
            step(
                pb::ContractEventType::ClaimClosed,
                "claim.abandoned",
                format!("claim {claim_id} was not opened ({reason}); the contract resumes"),
            ),
            now,
        )
        .await
}

/// How a claim ended, as dispute reports it.
pub struct ClaimClosed<'a> {
    pub claim_id: &'a str,
    pub closure: pb::ClaimClosure,
    pub refunded: Option<Money>,
    pub new_shipment_deadline: Option<OffsetDateTime>,
}

pub async fn record_claim_closed(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    closed: &ClaimClosed<'_>,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    require_open_claim(contract, closed.claim_id)?;
    let prior = contract
        .status_before_dispute
        .ok_or_else(|| ServiceError::internal("a claim without the status it interrupted"))?;
    let claim_id = closed.claim_id;
    let on_goods = matches!(prior, Status::Shipped | Status::Delivered);
    if let Some(deadline) = closed.new_shipment_deadline {
        if on_goods {
            return Err(ServiceError::invalid(
                "new_shipment_deadline",
                "only for goods not shipped yet",
            ));
        }
        if deadline <= now {
            return Err(ServiceError::invalid(
                "new_shipment_deadline",
                "must be in the future",
            ));
        }
    }
    let refunded = closed.refunded.filter(|m| m.amount_minor > 0);
    let (event, action, detail) = match closed.closure {
        pb::ClaimClosure::Withdrawn => {
            resume(tx, flows, contract, now).await?;
            (
                pb::ContractEventType::ClaimClosed,
                "claim.withdrawn",
                format!("claim {claim_id} withdrawn by the buyer; the contract resumes"),
            )
        }
        pb::ClaimClosure::FullRefund => {
            contract.negotiation.status = contract.negotiation.status.next(Action::FullRefund)?;
            end_claim(contract);
            contract.progress.paused_at = None;
            flows.cancel_timers(tx, contract.contract_id).await?;
            flows.release_cover(tx, contract).await?;
            // Escrow refunded the claim as dispute decided it; whatever it
            // holds beyond that (money credited after the freeze) goes back
            // too, decided by escrow with what it holds when it closes.
            flows
                .close_escrow(
                    tx,
                    contract,
                    &format!("claim {claim_id} refunded in full"),
                    true,
                )
                .await?;
            (
                pb::ContractEventType::Refunded,
                "claim.refunded",
                format!("claim {claim_id} decided: full refund to the buyer; cover released"),
            )
        }
        pb::ClaimClosure::PartialRefund | pb::ClaimClosure::ReleaseToSupplier if on_goods => {
            contract.negotiation.status = contract
                .negotiation
                .status
                .next(Action::ClaimSettledOnGoods { prior })?;
            end_claim(contract);
            contract.progress.paused_at = None;
            contract.progress.accepted_at = Some(now);
            contract.progress.acceptance = Some("claim_outcome".into());
            flows.cancel_timers(tx, contract.contract_id).await?;
            flows.release_cover(tx, contract).await?;
            flows.record_completed(tx, contract).await?;
            flows
                .close_escrow(tx, contract, &format!("claim {claim_id} settled"), false)
                .await?;
            (
                pb::ContractEventType::ClaimClosed,
                "claim.settled",
                match refunded {
                    Some(m) => format!(
                        "claim {claim_id} decided: {} refunded, the rest released to the supplier; goods accepted, completed",
                        readable(m)
                    ),
                    None => format!(
                        "claim {claim_id} decided for the supplier: everything released; goods accepted, completed"
                    ),
                },
            )
        }
        pb::ClaimClosure::PartialRefund | pb::ClaimClosure::ReleaseToSupplier => {
            resume(tx, flows, contract, now).await?;
            if let Some(deadline) = closed.new_shipment_deadline {
                contract.progress.agreed_shipment_deadline = Some(deadline);
                contract.progress.shipment_deadline = Some(deadline);
                contract.progress.shipment_overdue = false;
                flows
                    .schedule_at(tx, SHIPMENT_DUE, contract.contract_id, deadline, now)
                    .await?;
            }
            (
                pb::ContractEventType::ClaimClosed,
                "claim.settled",
                format!(
                    "claim {claim_id} decided{}{}; the contract resumes",
                    refunded.map_or(String::new(), |m| format!(": {} refunded", readable(m))),
                    closed
                        .new_shipment_deadline
                        .map_or(String::new(), |d| format!(
                            ", new shipment deadline {}",
                            readable_time(d)
                        ))
                ),
            )
        }
        pb::ClaimClosure::Unspecified => {
            return Err(ServiceError::invalid("closure", "is required"));
        }
    };
    flows
        .record(
            tx,
            contract,
            actor,
            Step {
                event,
                action,
                detail,
                money: refunded,
            },
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
    let mut contract = storage::lock_contract(tx, contract_id).await?;
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
                &flows::system(),
                step(
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
    let payments = flows::schedule(&loaded.terms, signed_at, flows.settings.day);
    flows
        .amend_escrow_schedule(tx, &contract, version, &loaded.terms, &payments)
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
        storage::replace_payments(tx, contract.contract_id, &payments).await?;
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
            step(
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

// ---- Escrow's answers and its hold deadline ------------------------------

fn escrow_actor() -> Actor {
    Actor {
        principal_id: flows::ESCROW.into(),
        role: ta_runtime::auth::Role::Service,
    }
}

/// A timeline entry from escrow's side that changes nothing of the
/// contract's state (an operator item, a deadline that passed early).
async fn note(
    tx: &mut PgConnection,
    contract: &ContractRecord,
    action: &str,
    detail: String,
    money: Option<Money>,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    storage::append_timeline(
        tx,
        contract.contract_id,
        &storage::TimelineEntry {
            entry: 0,
            occurred_at: now,
            actor_principal_id: flows::ESCROW.into(),
            actor_role: "service".into(),
            kind: action.into(),
            description: detail,
            money,
        },
    )
    .await
    .map(|_| ())
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
    let Some(mut contract) = storage::find_by_escrow_account(tx, escrow_account_id).await? else {
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
            apply_amendment(
                tx,
                flows,
                &mut contract,
                &flows::system(),
                Some(schedule),
                now,
            )
            .await?;
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
    let signed = storage::version(tx, contract.contract_id, in_force).await?;
    let amended = storage::version(tx, contract.contract_id, version).await?;
    let restore = contract.negotiation.amendment_undone();
    storage::insert_version(
        tx,
        &VersionRecord {
            contract_id: contract.contract_id,
            version: restore,
            terms: signed.terms.clone(),
            total: signed.total,
            created_by_principal_id: flows::system().principal_id,
            created_by_role: "service".into(),
            change_note: format!(
                "escrow refused amendment {version}: version {in_force}'s terms restored, with its cover"
            ),
            created_at: now,
        },
    )
    .await?;
    flows
        .adjust_cover(tx, contract, restore, signed.total, completion::NOTHING)
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

/// Whether a refused release had nothing to move: escrow held nothing more
/// (what the acceptance would have released went with a claim's settlement
/// or refund). Escrow names it `NOTHING_HELD`; older answers say so in words.
fn nothing_held(refusal: &str) -> bool {
    refusal.starts_with("NOTHING_HELD") || refusal.contains("holds nothing")
}

/// Escrow answered the release of everything held on acceptance: the
/// account closes. A refusal with money still held goes to the operators'
/// queue (with a timeline entry): nobody else would move that money.
pub async fn released_on_acceptance(
    tx: &mut PgConnection,
    flows: &Flows,
    escrow_account_id: &str,
    refusal: Option<&str>,
    now: OffsetDateTime,
) -> Result<Handled, ServiceError> {
    let Some(contract) = storage::find_by_escrow_account(tx, escrow_account_id).await? else {
        return Err(ServiceError::internal("money moved for an unknown account"));
    };
    match refusal {
        Some(refusal) if !nothing_held(refusal) => {
            let why = format!(
                "escrow refused to release account {escrow_account_id} to the supplier on acceptance: {refusal}"
            );
            note(
                tx,
                &contract,
                "escrow.release_refused",
                format!("{why}; the money stays held until an operator resolves it"),
                None,
                now,
            )
            .await?;
            Ok(Handled::Escalate(why))
        }
        _ => {
            flows
                .close_escrow(tx, &contract, "goods accepted", false)
                .await?;
            Ok(Handled::Done)
        }
    }
}

/// Escrow answered CloseEscrowAccount: a refusal leaves the account open
/// with money nobody moves, so it goes to the operators' queue.
pub async fn escrow_closed(
    tx: &mut PgConnection,
    request: &escrow_pb::CloseEscrowAccountRequest,
    refusal: Option<&str>,
    now: OffsetDateTime,
) -> Result<Handled, ServiceError> {
    let Some(refusal) = refusal else {
        return Ok(Handled::Done);
    };
    let account = &request.escrow_account_id;
    if refusal.starts_with("ACCOUNT_CLOSED") || refusal.contains("the account is closed") {
        // Closed already (an emptying release closes it; a closed account
        // refunds late credits at once): what this close was for is done.
        tracing::info!(account, "escrow account already closed");
        return Ok(Handled::Done);
    }
    let why = format!(
        "escrow refused to close account {account}{} ({}): {refusal}",
        if request.refund_held {
            ", refunding what it holds"
        } else {
            ""
        },
        request.reason
    );
    if let Some(contract) = storage::find_by_escrow_account(tx, account).await? {
        note(
            tx,
            &contract,
            "escrow.close_refused",
            format!("{why}; an operator resolves it"),
            None,
            now,
        )
        .await?;
    }
    Ok(Handled::Escalate(why))
}

/// Escrow's hold deadline for the account passed with money held and no
/// freeze: the latest time the contract promised to have released or
/// refunded it. What the contract's state implies:
///
/// | contract | decision |
/// |---|---|
/// | shipped or delivered, its acceptance deadline passed | the goods count as accepted: everything held goes to the supplier |
/// | shipped or delivered, its acceptance deadline ahead (received late) | nothing yet: the contract's own acceptance timer releases it |
/// | signed, not shipped | the order cannot arrive in time any more: cancelled, everything held refunded |
/// | cancelled or refunded | the close refunding what is held is written again |
/// | completed, in dispute, or anything else | an operator decides (the acceptance's release is spent; a dispute freezes) |
pub async fn hold_deadline_passed(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    held: Option<Money>,
    sequence: u64,
    now: OffsetDateTime,
) -> Result<Handled, ServiceError> {
    let mut contract = storage::lock_contract(tx, contract_id).await?;
    let held_text = held.map_or_else(|| "money".to_owned(), readable);
    let status = contract.negotiation.status;
    match status {
        Status::Shipped | Status::Delivered
            if contract
                .progress
                .acceptance_due_at
                .is_none_or(|due| due <= now) =>
        {
            accept(
                tx,
                flows,
                &mut contract,
                &flows::system(),
                "automatic",
                "escrow's hold deadline passed with the acceptance deadline",
                now,
            )
            .await?;
            Ok(Handled::Done)
        }
        Status::Shipped | Status::Delivered => {
            let due = contract
                .progress
                .acceptance_due_at
                .map_or_else(String::new, readable_time);
            note(
                tx,
                &contract,
                "escrow.hold_deadline_passed",
                format!(
                    "escrow's hold deadline passed holding {held_text}: the goods were received late, so the contract's own acceptance deadline ({due}) comes later and releases it then"
                ),
                held,
                now,
            )
            .await?;
            Ok(Handled::Done)
        }
        Status::AwaitingPayment | Status::PartiallyFunded | Status::Funded => {
            cancel(
                tx,
                flows,
                &mut contract,
                &flows::system(),
                "escrow's hold deadline passed before the goods shipped",
                now,
            )
            .await?;
            Ok(Handled::Done)
        }
        Status::Cancelled | Status::Refunded => {
            flows
                .close_escrow_as(
                    tx,
                    &contract,
                    &format!("close-escrow-after-deadline-{sequence}"),
                    &format!(
                        "contract {}: escrow's hold deadline passed",
                        status.as_str()
                    ),
                    true,
                )
                .await?;
            note(
                tx,
                &contract,
                "escrow.hold_deadline_passed",
                format!(
                    "escrow's hold deadline passed holding {held_text} for a {} contract: escrow is asked again to refund it and close",
                    status.as_str()
                ),
                held,
                now,
            )
            .await?;
            Ok(Handled::Done)
        }
        _ => {
            let why = format!(
                "escrow's hold deadline passed holding {held_text} for contract {contract_id}, which is {}: {}",
                status.as_str(),
                match status {
                    Status::Completed =>
                        "the acceptance's release is spent; an operator releases or refunds the rest",
                    Status::InDispute =>
                        "a claim should have frozen the account; an operator looks into it",
                    _ => "the contract holds no money in this state; an operator looks into it",
                }
            );
            note(
                tx,
                &contract,
                "escrow.hold_deadline_passed",
                format!("{why}; until then the money stays held"),
                held,
                now,
            )
            .await?;
            Ok(Handled::Escalate(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(amount_minor: i64, funded: bool) -> Payment {
        Payment {
            milestone_id: format!("m{amount_minor}"),
            amount_minor,
            due_at: OffsetDateTime::UNIX_EPOCH,
            funded_at: funded.then_some(OffsetDateTime::UNIX_EPOCH),
            overdue: false,
        }
    }

    #[test]
    fn the_funded_sum_is_checked_never_wrapped() {
        let payments = [payment(300, true), payment(700, false), payment(5, true)];
        assert_eq!(funded_minor(&payments).unwrap(), 305);
        let absurd = [payment(i64::MAX, true), payment(1, true)];
        assert!(matches!(
            funded_minor(&absurd),
            Err(ServiceError::Internal(_))
        ));
    }
}
