//! The claim's resolution: an arbiter's decision on an escalated claim, and
//! any resolution (an accepted offer or a decision) carried out.

use sqlx::PgConnection;
use ta_proto::dispute as pb;
use ta_runtime::{
    ServiceError,
    auth::{Actor, Principal},
    money::readable,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ClaimFlows, Flows, Step, stored};
use crate::{
    domain::claim::Outcome,
    effects,
    storage::claims::{self, ClaimRecord},
};

type Event = pb::DisputeEventType;

pub struct Decide {
    pub claim_id: Uuid,
    pub outcome: Outcome,
    pub reason: String,
    /// Points instead of the policy's, when above 0.
    pub penalty_points: u32,
    pub new_shipment_deadline: Option<OffsetDateTime>,
}

/// An operator decides the claim; a new shipment deadline is for goods not
/// shipped yet that the contract keeps.
pub async fn decide(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Decide,
    now: OffsetDateTime,
) -> Result<pb::Claim, ServiceError> {
    let mut claim = claims::lock_claim(tx, cmd.claim_id).await?;
    let mut policy = flows.settings.policy.for_reason(claim.reason);
    if cmd.penalty_points > 0 {
        policy.full_refund_penalty_points = cmd.penalty_points;
        policy.partial_refund_penalty_points = cmd.penalty_points;
    }
    if cmd.new_shipment_deadline.is_some() {
        if claim.goods_shipped {
            return Err(ServiceError::invalid(
                "new_shipment_deadline",
                "only for a claim on goods not shipped yet",
            ));
        }
        if cmd.outcome == Outcome::FullRefund {
            return Err(ServiceError::invalid(
                "new_shipment_deadline",
                "a full refund ends the contract: nothing is shipped",
            ));
        }
    }
    claim.claim.decide(cmd.outcome, &cmd.reason, &policy)?;
    claim.new_shipment_deadline = cmd.new_shipment_deadline;
    resolve(
        tx,
        flows,
        &mut claim,
        &Actor::of(principal),
        pb::DisputeEventType::Decided,
        now,
    )
    .await
}

/// A resolution (an accepted offer or a decision) is carried out: escrow's
/// settlement first; the contract and the penalty follow its answer.
pub async fn resolve(
    tx: &mut PgConnection,
    flows: &Flows,
    claim: &mut ClaimRecord,
    actor: &Actor,
    event: Event,
    now: OffsetDateTime,
) -> Result<pb::Claim, ServiceError> {
    let Some(resolution) = claim.claim.resolution.clone() else {
        return Err(ServiceError::internal(
            "resolving a claim without a resolution",
        ));
    };
    claim.resolved_by = Some(stored(actor));
    claim.resolved_at = Some(now);
    flows.cancel_escalation(tx, claim).await?;
    flows.outbox.write(tx, effects::settle(claim)?).await?;
    let what = match resolution.outcome {
        Outcome::FullRefund => format!("full refund of {}", readable(resolution.refund)),
        Outcome::PartialRefund(m) => format!(
            "partial refund of {}{}",
            readable(m),
            if claim.goods_shipped {
                ", the rest released to the supplier"
            } else {
                ", the rest stays held for the contract"
            }
        ),
        Outcome::ReleaseToSupplier => "nothing refunded, the claim fails".to_owned(),
    };
    let (action, detail) = match event {
        Event::Settled => (
            "claim.settled",
            format!("settled: {what}; {}", resolution.reason),
        ),
        _ => (
            "claim.decided",
            format!(
                "decided: {what}; {} penalty points; reason: {}",
                resolution.penalty_points, resolution.reason
            ),
        ),
    };
    let s = Step::new(event, action, detail).with_money(resolution.refund);
    flows.record(tx, claim, actor, s, now).await
}
