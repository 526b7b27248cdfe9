//! A claim's parties act on it as a whole: the buyer or an arbiter
//! escalates it to an arbiter (or the negotiation runs out, see
//! [`super::reactions`]), the buyer withdraws it, the supplier rejects it.

use sqlx::PgConnection;
use ta_proto::dispute as pb;
use ta_runtime::{
    ServiceError,
    auth::{Actor, Principal, Role},
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    ClaimFlows, Flows, Respond, Step, check_counter_evidence, require_buyer, require_supplier,
    stored,
};
use crate::{
    domain::claim::Escalator,
    effects::{self, completion},
    storage::claims::{self, ClaimRecord},
};

type Event = pb::DisputeEventType;

/// The buyer (after its window) or an arbiter escalates the claim.
pub async fn escalate_claim(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    claim_id: Uuid,
    reason: &str,
    now: OffsetDateTime,
) -> Result<pb::Claim, ServiceError> {
    let mut claim = claims::lock_claim(tx, claim_id).await?;
    let by = match principal.role {
        Role::Arbiter => Escalator::Arbiter,
        _ => {
            require_buyer(principal, &claim)?;
            Escalator::Buyer
        }
    };
    escalate(
        tx,
        flows,
        &mut claim,
        &Actor::of(principal),
        by,
        reason,
        now,
    )
    .await
}

/// Hands the claim to an arbiter.
pub async fn escalate(
    tx: &mut PgConnection,
    flows: &Flows,
    claim: &mut ClaimRecord,
    actor: &Actor,
    by: Escalator,
    reason: &str,
    now: OffsetDateTime,
) -> Result<pb::Claim, ServiceError> {
    claim.claim.escalate(by, now)?;
    claim.escalated_by = Some(stored(actor));
    claim.escalation_reason = reason.to_owned();
    claim.decision_due_at = Some(now + flows.settings.decision_target);
    flows.cancel_escalation(tx, claim).await?;
    let who = match by {
        Escalator::Buyer => "the buyer",
        Escalator::Arbiter => "an arbiter",
        Escalator::Timer => "itself (the negotiation ran out)",
    };
    flows
        .record(
            tx,
            claim,
            actor,
            Step::new(
                Event::Escalated,
                "claim.escalated",
                format!("escalated by {who}: {reason}"),
            ),
            now,
        )
        .await
}

/// The buyer withdrew: the freeze is lifted, then the contract told.
pub async fn withdraw_claim(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    claim_id: Uuid,
    reason: &str,
    now: OffsetDateTime,
) -> Result<pb::Claim, ServiceError> {
    let claim = &mut claims::lock_claim(tx, claim_id).await?;
    require_buyer(principal, claim)?;
    let actor = &Actor::of(principal);
    claim.claim.withdraw(now)?;
    claim.withdrawn_at = Some(now);
    claim.withdrawal_reason = reason.to_owned();
    flows.cancel_escalation(tx, claim).await?;
    let unfreeze = effects::unfreeze(
        claim,
        &format!("claim {} withdrawn", claim.claim_id),
        completion::UNFROZEN,
    );
    flows.outbox.write(tx, unfreeze).await?;
    let detail = if reason.is_empty() {
        "withdrawn by the buyer; it cannot be reopened".to_owned()
    } else {
        format!("withdrawn by the buyer ({reason}); it cannot be reopened")
    };
    flows
        .record(
            tx,
            claim,
            actor,
            Step::new(Event::Withdrawn, "claim.withdrawn", detail),
            now,
        )
        .await
}

/// The supplier rejects the claim, with its counter-evidence.
pub async fn reject_claim(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Respond,
    now: OffsetDateTime,
) -> Result<pb::Claim, ServiceError> {
    let mut claim = claims::lock_claim(tx, cmd.claim_id).await?;
    require_supplier(principal, &claim)?;
    check_counter_evidence(tx, &claim, "counter_evidence_ids", &cmd.counter_evidence).await?;
    claim.claim.reject_claim()?;
    claim.supplier_rejected_at = Some(now);
    claim.supplier_rejection_reason = cmd.reason.clone();
    claim.supplier_counter_evidence_ids =
        cmd.counter_evidence.iter().map(Uuid::to_string).collect();
    flows
        .record(
            tx,
            &mut claim,
            &Actor::of(principal),
            Step::new(
                pb::DisputeEventType::ClaimRejectedBySupplier,
                "claim.rejected_by_supplier",
                format!(
                    "the supplier rejects the claim: {} ({} counter-evidence)",
                    cmd.reason,
                    cmd.counter_evidence.len()
                ),
            ),
            now,
        )
        .await
}
