//! What the API, the outbox completions and the timers share: the dispute
//! feed and the claim timeline, the claim's view in proto, the calls to
//! contract, escrow and supplier-registry written to the outbox, and the
//! automatic escalation timer. Everything here runs in the caller's
//! transaction, so an event, a call and a timer change with the claim.

use sqlx::PgConnection;
use ta_proto::{
    common::{Actor as PbActor, ClaimReason as PbReason},
    contract as contract_pb, dispute as pb, escrow as escrow_pb, supplier as supplier_pb,
};
use ta_runtime::{ServiceError, money::Money, timestamps};
use ta_workflow::{
    feed::Feed,
    outbox::{Callee, Outbox},
    timers::Timers,
};
use time::{Duration, OffsetDateTime};

use crate::{
    domain::{
        claim::{Offer, OfferStatus, Outcome, Party, Policy, Reason, Remedy},
        status::Status,
    },
    storage::{
        self, StoredActor,
        claims::{self, ClaimRecord},
        evidence,
        timeline::{self, TimelineEntry},
    },
};

/// The supplier-registry inquiry a claim is (its response rate counts it).
pub fn inquiry_id(claim: &ClaimRecord) -> String {
    format!("dispute:{}", claim.claim_id)
}

/// Whether this step is the supplier answering the claim.
pub fn is_supplier_answer(actor: &Actor, event: pb::DisputeEventType) -> bool {
    actor.role == ta_runtime::auth::Role::Supplier
        && matches!(
            event,
            pb::DisputeEventType::OfferMade
                | pb::DisputeEventType::OfferRejected
                | pb::DisputeEventType::ClaimRejectedBySupplier
                | pb::DisputeEventType::Settled
        )
}

/// The dispute event feed.
pub const FEED: &str = "dispute";
/// A negotiating claim escalates by itself: subject the claim id.
pub const AUTO_ESCALATION: &str = "auto_escalation";

pub const CONTRACT: &str = "contract";
pub const ESCROW: &str = "escrow";
pub const SUPPLIER_REGISTRY: &str = "supplier-registry";
const CONTRACT_CALLS: Callee = Callee {
    name: CONTRACT,
    service: "tradeassurance.contract.v1.ContractService",
};
const ESCROW_CALLS: Callee = Callee {
    name: ESCROW,
    service: "tradeassurance.escrow.v1.EscrowService",
};
const REGISTRY_CALLS: Callee = Callee {
    name: SUPPLIER_REGISTRY,
    service: "tradeassurance.supplier.v1.SupplierRegistryService",
};

/// Completions of the outbox calls, by name; each names the next step.
pub mod completion {
    /// RecordClaimOpened answered: freeze escrow, or the claim is refused.
    pub const CLAIM_RECORDED: &str = "claim_recorded";
    /// FreezeEscrow answered: confirm on the contract, or abandon it.
    pub const ESCROW_FROZEN: &str = "escrow_frozen";
    /// ConfirmClaimOpened answered: the claim negotiates.
    pub const CLAIM_CONFIRMED: &str = "claim_confirmed";
    /// SettleClaim answered: tell the contract.
    pub const SETTLED: &str = "settled";
    /// UnfreezeEscrow of a withdrawal answered: tell the contract.
    pub const UNFROZEN: &str = "unfrozen";
    /// RecordClaimClosed answered: record the penalty, if any.
    pub const CLAIM_CLOSED: &str = "claim_closed";
    /// RecordPenalty answered: every effect is done.
    pub const PENALTY_RECORDED: &str = "penalty_recorded";
    /// RecordInquiry answered: if the supplier answered the claim already,
    /// its reply follows.
    pub const INQUIRY_RECORDED: &str = "inquiry_recorded";
    /// RecordInquiryReply answered: nothing follows (a reply that overtook
    /// its inquiry is sent again once the inquiry is recorded).
    pub const INQUIRY_REPLIED: &str = "inquiry_replied";
    /// Nothing follows; a refusal is logged for operators.
    pub const NOTHING: &str = "nothing";
}

pub fn schema() -> ta_workflow::Schema {
    // A constant that is a plain identifier.
    ta_workflow::Schema::new(storage::SCHEMA).unwrap_or_else(|_| unreachable!())
}

/// Durations and points the claims follow.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub policy: Policy,
    /// How long an arbiter has for an escalated claim (a target).
    pub decision_target: Duration,
}

/// Who did something: see [`ta_runtime::auth::Actor`]; the dispute service
/// itself acts as [`system`].
pub use ta_runtime::auth::Actor;

/// The dispute service acting on its own (a timer, another service's answer).
pub fn system() -> Actor {
    Actor::service("dispute")
}

/// An actor as a claim row keeps it.
pub fn stored(actor: &Actor) -> StoredActor {
    StoredActor {
        principal_id: actor.principal_id.clone(),
        role: actor.role.as_str().into(),
    }
}

fn stored_actor_proto(actor: &StoredActor) -> PbActor {
    Actor::stored(actor.principal_id.clone(), &actor.role).to_proto()
}

pub fn reason_proto(reason: Reason) -> PbReason {
    match reason {
        Reason::LateShipment => PbReason::LateShipment,
        Reason::NonDelivery => PbReason::NonDelivery,
        Reason::QualityMismatch => PbReason::QualityMismatch,
        Reason::Damage => PbReason::Damage,
        Reason::ShortQuantity => PbReason::ShortQuantity,
        Reason::Other => PbReason::Other,
    }
}

pub fn reason_from_proto(reason: PbReason) -> Option<Reason> {
    Reason::ALL.into_iter().find(|r| reason_proto(*r) == reason)
}

pub fn remedy_proto(remedy: Remedy) -> pb::Remedy {
    match remedy {
        Remedy::Refund => pb::Remedy::Refund,
        Remedy::ReturnAndRefund => pb::Remedy::ReturnAndRefund,
        Remedy::Reshipment => pb::Remedy::Reshipment,
    }
}

pub fn status_proto(status: Status) -> pb::ClaimStatus {
    use pb::ClaimStatus as P;
    match status {
        Status::Opening => P::Opening,
        Status::Negotiating => P::Negotiating,
        Status::Escalated => P::Escalated,
        Status::Settled => P::Settled,
        Status::Decided => P::Decided,
        Status::Withdrawn => P::Withdrawn,
        Status::Refused => P::Refused,
    }
}

pub fn status_from_proto(status: pb::ClaimStatus) -> Option<Status> {
    Status::ALL.into_iter().find(|s| status_proto(*s) == status)
}

fn outcome_proto(outcome: Outcome) -> pb::ClaimOutcome {
    match outcome {
        Outcome::FullRefund => pb::ClaimOutcome::FullRefund,
        Outcome::PartialRefund(_) => pb::ClaimOutcome::PartialRefund,
        Outcome::ReleaseToSupplier => pb::ClaimOutcome::ReleaseToSupplier,
    }
}

fn offer_proto(offer: &Offer, held: Money) -> pb::Offer {
    let (kind, refund) = match offer.outcome {
        Outcome::PartialRefund(amount) => (pb::OfferKind::PartialRefund, amount),
        _ => (pb::OfferKind::FullRefund, held),
    };
    pb::Offer {
        offer_id: offer.offer_id.clone(),
        kind: kind as i32,
        refund_amount: Some(refund.to_proto()),
        message: offer.message.clone(),
        status: match offer.status {
            OfferStatus::Open => pb::OfferStatus::Open,
            OfferStatus::Accepted => pb::OfferStatus::Accepted,
            OfferStatus::Rejected => pb::OfferStatus::Rejected,
            OfferStatus::Superseded => pb::OfferStatus::Superseded,
            OfferStatus::Lapsed => pb::OfferStatus::Lapsed,
        } as i32,
        made_at: Some(timestamps::to_proto(offer.made_at)),
        responded_at: offer.responded_at.map(timestamps::to_proto),
        rejection_reason: offer.rejection_reason.clone(),
        counter_evidence_ids: offer.counter_evidence_ids.clone(),
        made_by: match offer.made_by {
            Party::Supplier => pb::OfferParty::Supplier,
            Party::Buyer => pb::OfferParty::Buyer,
        } as i32,
    }
}

/// The claim as the API shows it.
pub fn claim_proto(c: &ClaimRecord, evidence_count: u32) -> pb::Claim {
    let claim = &c.claim;
    let ts = |at: Option<OffsetDateTime>| at.map(timestamps::to_proto);
    let negotiating = !matches!(claim.status, Status::Opening | Status::Refused);
    pb::Claim {
        claim_id: c.claim_id.to_string(),
        contract_id: c.contract_id.clone(),
        escrow_account_id: c.escrow_account_id.clone(),
        buyer_principal_id: c.buyer_principal_id.clone(),
        supplier_id: c.supplier_id.clone(),
        reason: reason_proto(c.reason) as i32,
        quality_criterion_ids: c.quality_criterion_ids.clone(),
        amount_claimed: Some(claim.amount_claimed.to_proto()),
        description: c.description.clone(),
        status: status_proto(claim.status) as i32,
        offers: claim
            .offers
            .iter()
            .map(|o| offer_proto(o, claim.held))
            .collect(),
        evidence_count,
        filed_at: Some(timestamps::to_proto(claim.filed_at)),
        negotiation_ends_at: negotiating.then(|| timestamps::to_proto(claim.negotiation_ends_at)),
        auto_escalate_at: negotiating.then(|| timestamps::to_proto(claim.auto_escalate_at)),
        supplier_rejected_at: ts(c.supplier_rejected_at),
        supplier_rejection_reason: c.supplier_rejection_reason.clone(),
        supplier_counter_evidence_ids: c.supplier_counter_evidence_ids.clone(),
        escalated_at: ts(claim.escalated_at),
        escalated_by: c.escalated_by.as_ref().map(stored_actor_proto),
        escalation_reason: c.escalation_reason.clone(),
        decision_due_at: ts(c.decision_due_at),
        resolution: claim.resolution.as_ref().map(|r| pb::ClaimResolution {
            outcome: outcome_proto(r.outcome) as i32,
            refund_amount: Some(r.refund.to_proto()),
            reason: r.reason.clone(),
            penalty_points: r.penalty_points,
            accepted_offer_id: c.accepted_offer_id.clone(),
            resolved_by: c.resolved_by.as_ref().map(stored_actor_proto),
            resolved_at: ts(c.resolved_at),
            new_shipment_deadline: ts(c.new_shipment_deadline),
        }),
        withdrawn_at: ts(c.withdrawn_at),
        withdrawal_reason: c.withdrawal_reason.clone(),
        effects_completed_at: ts(c.effects_completed_at),
        updated_at: Some(timestamps::to_proto(c.updated_at)),
        refusal_reason: c.refusal_reason.clone(),
        supplier_principal_id: c.supplier_principal_id.clone(),
        remedy: remedy_proto(c.remedy) as i32,
    }
}

/// Readable money: `USD 1234.50`.
pub fn readable(money: Money) -> String {
    let exponent = u32::from(money.currency.minor_unit_exponent());
    if exponent == 0 {
        return format!("{} {}", money.currency, money.amount_minor);
    }
    let scale = 10_i64.pow(exponent);
    format!(
        "{} {}.{:0width$}",
        money.currency,
        money.amount_minor / scale,
        (money.amount_minor % scale).abs(),
        width = exponent as usize
    )
}

pub struct Flows {
    pub feed: Feed,
    pub timers: Timers,
    pub outbox: Outbox,
    pub settings: Settings,
}

/// One step of a claim's story.
pub struct Step<'a> {
    pub event: pb::DisputeEventType,
    /// Machine-readable action, e.g. `claim.filed`.
    pub action: &'a str,
    /// Readable: who did what and why.
    pub detail: String,
    pub money: Option<Money>,
    /// For evidence events.
    pub evidence_id: String,
}

pub fn step(event: pb::DisputeEventType, action: &str, detail: String) -> Step<'_> {
    Step {
        event,
        action,
        detail,
        money: None,
        evidence_id: String::new(),
    }
}

impl Flows {
    /// Saves the locked claim and tells its story: a timeline entry and a
    /// feed event carrying the claim after the step. Returns the view.
    pub async fn record(
        &self,
        tx: &mut PgConnection,
        claim: &mut ClaimRecord,
        actor: &Actor,
        step: Step<'_>,
        now: OffsetDateTime,
    ) -> Result<pb::Claim, ServiceError> {
        claims::save_claim(tx, claim, now).await?;
        self.tell(tx, claim, actor, step, now).await
    }

    /// The timeline entry and feed event of a step whose claim row is saved,
    /// and the supplier's response rate: the claim opening is an inquiry to
    /// the supplier, its first answer the reply (see [`is_supplier_answer`]).
    pub async fn tell(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
        actor: &Actor,
        step: Step<'_>,
        now: OffsetDateTime,
    ) -> Result<pb::Claim, ServiceError> {
        timeline::append_timeline(
            tx,
            claim.claim_id,
            &TimelineEntry {
                entry: 0,
                occurred_at: now,
                actor_principal_id: actor.principal_id.clone(),
                actor_role: actor.role.as_str().into(),
                kind: step.action.into(),
                description: step.detail,
                money: step.money,
            },
        )
        .await?;
        let count = evidence::evidence_count(tx, claim.claim_id).await?;
        let view = claim_proto(claim, count);
        let event = pb::DisputeEvent {
            sequence: 0,
            r#type: step.event as i32,
            occurred_at: Some(timestamps::to_proto(now)),
            actor: Some(actor.to_proto()),
            claim: Some(view.clone()),
            evidence_id: step.evidence_id,
        };
        self.feed
            .append(
                tx,
                step.event.as_str_name(),
                &claim.claim_id.to_string(),
                &event,
            )
            .await?;
        if step.event == pb::DisputeEventType::ClaimOpened {
            self.record_inquiry(tx, claim).await?;
        } else if is_supplier_answer(actor, step.event) {
            self.record_inquiry_reply(tx, claim, "inquiry-reply")
                .await?;
        }
        Ok(view)
    }

    /// Schedules the automatic escalation of a claim that opened.
    pub async fn schedule_escalation(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError> {
        let after =
            std::time::Duration::try_from(claim.claim.auto_escalate_at - now).unwrap_or_default();
        self.timers
            .schedule_after(tx, AUTO_ESCALATION, &claim.claim_id.to_string(), after, &[])
            .await?;
        Ok(())
    }

    pub async fn cancel_escalation(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
    ) -> Result<(), ServiceError> {
        self.timers
            .cancel(tx, AUTO_ESCALATION, &claim.claim_id.to_string())
            .await?;
        Ok(())
    }

    // ---- Calls through the outbox (keys derive from the claim, so a repeated
    // step writes the same call once) -------------------------------------

    fn key(claim: &ClaimRecord, step: &str) -> String {
        format!("dispute:{}:{step}", claim.claim_id)
    }

    pub async fn record_claim_opened(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
    ) -> Result<(), ServiceError> {
        let request = contract_pb::RecordClaimOpenedRequest {
            idempotency_key: Self::key(claim, "record-opened"),
            contract_id: claim.contract_id.clone(),
            claim_id: claim.claim_id.to_string(),
            reason: reason_proto(claim.reason) as i32,
        };
        self.outbox
            .call(
                tx,
                &CONTRACT_CALLS,
                "RecordClaimOpened",
                &request,
                completion::CLAIM_RECORDED,
            )
            .await
    }

    pub async fn freeze(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
    ) -> Result<(), ServiceError> {
        let request = escrow_pb::FreezeEscrowRequest {
            idempotency_key: Self::key(claim, "freeze"),
            escrow_account_id: claim.escrow_account_id.clone(),
            claim_id: claim.claim_id.to_string(),
            reason: format!("claim {} ({}) filed", claim.claim_id, claim.reason.as_str()),
        };
        self.outbox
            .call(
                tx,
                &ESCROW_CALLS,
                "FreezeEscrow",
                &request,
                completion::ESCROW_FROZEN,
            )
            .await
    }

    pub async fn confirm_opened(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
    ) -> Result<(), ServiceError> {
        let request = contract_pb::ConfirmClaimOpenedRequest {
            idempotency_key: Self::key(claim, "confirm-opened"),
            contract_id: claim.contract_id.clone(),
            claim_id: claim.claim_id.to_string(),
        };
        self.outbox
            .call(
                tx,
                &CONTRACT_CALLS,
                "ConfirmClaimOpened",
                &request,
                completion::CLAIM_CONFIRMED,
            )
            .await
    }

    pub async fn abandon_opening(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
        reason: &str,
    ) -> Result<(), ServiceError> {
        let request = contract_pb::AbandonClaimOpeningRequest {
            idempotency_key: Self::key(claim, "abandon-opening"),
            contract_id: claim.contract_id.clone(),
            claim_id: claim.claim_id.to_string(),
            reason: reason.into(),
        };
        self.outbox
            .call(
                tx,
                &CONTRACT_CALLS,
                "AbandonClaimOpening",
                &request,
                completion::NOTHING,
            )
            .await
    }

    /// Lifts the claim's freeze; `then` names what follows (the contract is
    /// told of a withdrawal, or nothing).
    pub async fn unfreeze(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
        reason: &str,
        then: &str,
    ) -> Result<(), ServiceError> {
        let request = escrow_pb::UnfreezeEscrowRequest {
            idempotency_key: Self::key(claim, "unfreeze"),
            escrow_account_id: claim.escrow_account_id.clone(),
            claim_id: claim.claim_id.to_string(),
            reason: reason.into(),
        };
        self.outbox
            .call(tx, &ESCROW_CALLS, "UnfreezeEscrow", &request, then)
            .await
    }

    /// The resolution's money, atomically in escrow: the refund, the rest
    /// released when the goods had shipped, the freeze lifted.
    pub async fn settle(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
    ) -> Result<(), ServiceError> {
        let Some(resolution) = &claim.claim.resolution else {
            return Err(ServiceError::internal(
                "settling a claim without a resolution",
            ));
        };
        let request = escrow_pb::SettleClaimRequest {
            idempotency_key: Self::key(claim, "settle"),
            escrow_account_id: claim.escrow_account_id.clone(),
            claim_id: claim.claim_id.to_string(),
            refund: Some(resolution.refund.to_proto()),
            release_rest: claim.goods_shipped && resolution.outcome != Outcome::FullRefund,
            // Escrow keeps at most 500 characters of a reason.
            reason: format!("claim {}: {}", claim.claim_id, resolution.reason)
                .chars()
                .take(500)
                .collect(),
        };
        self.outbox
            .call(
                tx,
                &ESCROW_CALLS,
                "SettleClaim",
                &request,
                completion::SETTLED,
            )
            .await
    }

    /// Tells the contract how the claim ended.
    pub async fn record_closed(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
    ) -> Result<(), ServiceError> {
        let (closure, refunded) = match &claim.claim.resolution {
            None => (contract_pb::ClaimClosure::Withdrawn, None),
            Some(r) => (
                match r.outcome {
                    Outcome::FullRefund => contract_pb::ClaimClosure::FullRefund,
                    Outcome::PartialRefund(_) => contract_pb::ClaimClosure::PartialRefund,
                    Outcome::ReleaseToSupplier => contract_pb::ClaimClosure::ReleaseToSupplier,
                },
                Some(r.refund).filter(|m| m.amount_minor > 0),
            ),
        };
        let request = contract_pb::RecordClaimClosedRequest {
            idempotency_key: Self::key(claim, "record-closed"),
            contract_id: claim.contract_id.clone(),
            claim_id: claim.claim_id.to_string(),
            closure: closure as i32,
            refunded: refunded.map(Money::to_proto),
            new_shipment_deadline: claim.new_shipment_deadline.map(timestamps::to_proto),
        };
        self.outbox
            .call(
                tx,
                &CONTRACT_CALLS,
                "RecordClaimClosed",
                &request,
                completion::CLAIM_CLOSED,
            )
            .await
    }

    /// The claim, as an inquiry to its supplier (once: the key and the
    /// inquiry id are the claim's).
    pub async fn record_inquiry(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
    ) -> Result<(), ServiceError> {
        let request = supplier_pb::RecordInquiryRequest {
            idempotency_key: Self::key(claim, "inquiry"),
            supplier_id: claim.supplier_id.clone(),
            inquiry_id: inquiry_id(claim),
        };
        self.outbox
            .call(
                tx,
                &REGISTRY_CALLS,
                "RecordInquiry",
                &request,
                completion::INQUIRY_RECORDED,
            )
            .await
    }

    /// The supplier answered the claim. Written at each answer under one key
    /// per `step`, so only the first is sent; supplier-registry counts one
    /// reply per inquiry whatever arrives.
    pub async fn record_inquiry_reply(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
        step: &str,
    ) -> Result<(), ServiceError> {
        let request = supplier_pb::RecordInquiryReplyRequest {
            idempotency_key: Self::key(claim, step),
            supplier_id: claim.supplier_id.clone(),
            inquiry_id: inquiry_id(claim),
        };
        self.outbox
            .call(
                tx,
                &REGISTRY_CALLS,
                "RecordInquiryReply",
                &request,
                completion::INQUIRY_REPLIED,
            )
            .await
    }

    pub async fn record_penalty(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
        points: u32,
        reason: &str,
    ) -> Result<(), ServiceError> {
        let request = supplier_pb::RecordPenaltyRequest {
            idempotency_key: Self::key(claim, "penalty"),
            supplier_id: claim.supplier_id.clone(),
            claim_id: claim.claim_id.to_string(),
            points,
            reason: reason.into(),
        };
        self.outbox
            .call(
                tx,
                &REGISTRY_CALLS,
                "RecordPenalty",
                &request,
                completion::PENALTY_RECORDED,
            )
            .await
    }
}
