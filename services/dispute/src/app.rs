//! Use cases: each runs in the caller's transaction on a locked claim, applies
//! the domain's rules, saves, tells the story (timeline and feed) and writes
//! the calls that follow to the outbox. The API's handlers and the reactions
//! to answers and timers share them.

use sqlx::PgConnection;
use ta_proto::dispute as pb;
use ta_runtime::{ServiceError, money::Money};
use ta_workflow::Handled;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::claim::{Escalator, Outcome},
    flows::{self, Actor, Flows, Step, completion, readable, step},
    storage::{
        claims::{self, ClaimRecord},
        timeline,
    },
};

type Event = pb::DisputeEventType;

fn with_money(mut s: Step<'_>, money: Money) -> Step<'_> {
    s.money = Some(money);
    s
}

/// A new claim, OPENING: the contract is asked first.
pub async fn file_claim(
    tx: &mut PgConnection,
    flows: &Flows,
    claim: &mut ClaimRecord,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<pb::Claim, ServiceError> {
    if claims::withdrawn_before(tx, &claim.contract_id, claim.reason).await? {
        return Err(ServiceError::Refused {
            reason: "CLAIM_WITHDRAWN",
            subject: format!("contracts/{}", claim.contract_id),
            message: format!(
                "a {} claim on contract {} was withdrawn and cannot be filed again",
                claim.reason.as_str(),
                claim.contract_id
            ),
        });
    }
    claims::insert_claim(tx, claim).await?;
    flows.record_claim_opened(tx, claim).await?;
    let detail = format!(
        "claim filed by the buyer ({}): {} claimed; asking the contract",
        claim.reason.as_str(),
        readable(claim.claim.amount_claimed)
    );
    let amount = claim.claim.amount_claimed;
    flows
        .tell(
            tx,
            claim,
            actor,
            with_money(step(Event::ClaimFiled, "claim.filed", detail), amount),
            now,
        )
        .await
}

async fn refuse(
    tx: &mut PgConnection,
    flows: &Flows,
    claim: &mut ClaimRecord,
    why: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    claim.claim.refuse()?;
    claim.refusal_reason = why.chars().take(1000).collect();
    flows
        .record(
            tx,
            claim,
            &flows::system(),
            step(
                Event::ClaimRefused,
                "claim.refused",
                format!("claim refused: {why}"),
            ),
            now,
        )
        .await?;
    Ok(())
}

/// How the contract answered RecordClaimOpened.
pub enum Recorded {
    /// It recorded the claim; whether the goods had shipped when it did (the
    /// status the claim interrupted), if it said.
    Accepted {
        goods_shipped: Option<bool>,
    },
    Refused(String),
}

/// The contract answered RecordClaimOpened: freeze escrow, or the claim is
/// refused with the contract's reason. The contract decided the claim under
/// its lock, and nothing ships while it is in dispute, so its word on the
/// shipment replaces what dispute read when the claim was filed (the goods
/// may have shipped in between): the settlement releases the rest by it.
pub async fn claim_recorded(
    tx: &mut PgConnection,
    flows: &Flows,
    claim_id: Uuid,
    answer: Recorded,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut claim = claims::lock_claim(tx, claim_id).await?;
    if claim.claim.status != crate::domain::status::Status::Opening {
        return Ok(());
    }
    match answer {
        Recorded::Refused(why) => refuse(tx, flows, &mut claim, &why, now).await,
        Recorded::Accepted { goods_shipped } => {
            if let Some(shipped) = goods_shipped.filter(|s| *s != claim.goods_shipped) {
                claim.goods_shipped = shipped;
                claims::save_claim(tx, &mut claim, now).await?;
            }
            flows.freeze(tx, &claim).await
        }
    }
}

/// Escrow answered FreezeEscrow (with what it holds): confirm on the
/// contract; if it refused, the claim is refused and the contract resumes.
pub async fn escrow_frozen(
    tx: &mut PgConnection,
    flows: &Flows,
    claim_id: Uuid,
    outcome: Result<Option<Money>, &str>,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut claim = claims::lock_claim(tx, claim_id).await?;
    if claim.claim.status != crate::domain::status::Status::Opening {
        return Ok(());
    }
    match outcome {
        Ok(held) => {
            if let Some(held) = held.filter(|h| {
                h.currency == claim.currency()
                    && h.amount_minor >= claim.claim.amount_claimed.amount_minor
            }) {
                claim.claim.held = held;
                claims::save_claim(tx, &mut claim, now).await?;
            }
            flows.confirm_opened(tx, &claim).await
        }
        Err(why) => {
            let why = format!("ESCROW_NOT_FROZEN: {why}");
            flows.abandon_opening(tx, &claim, &why).await?;
            refuse(tx, flows, &mut claim, &why, now).await
        }
    }
}

/// The contract confirmed the claim: negotiation starts and the automatic
/// escalation is scheduled. If it had dropped the claim meanwhile, the claim
/// is refused and the freeze lifted.
pub async fn claim_confirmed(
    tx: &mut PgConnection,
    flows: &Flows,
    claim_id: Uuid,
    refusal: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut claim = claims::lock_claim(tx, claim_id).await?;
    if claim.claim.status != crate::domain::status::Status::Opening {
        return Ok(());
    }
    if let Some(why) = refusal {
        flows
            .unfreeze(
                tx,
                &claim,
                "the contract dropped the claim",
                completion::NOTHING,
            )
            .await?;
        return refuse(tx, flows, &mut claim, why, now).await;
    }
    let held = claim.claim.held;
    claim.claim.opened(held, now, &flows.settings.policy)?;
    flows.schedule_escalation(tx, &claim, now).await?;
    let detail = format!(
        "claim opened: the contract is in dispute and escrow frozen ({} held); negotiation until {}, automatic escalation at {}",
        readable(held),
        claim.claim.negotiation_ends_at,
        claim.claim.auto_escalate_at
    );
    flows
        .record(
            tx,
            &mut claim,
            &flows::system(),
            step(Event::ClaimOpened, "claim.opened", detail),
            now,
        )
        .await?;
    Ok(())
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
    claim.escalated_by = Some(flows::stored(actor));
    claim.escalation_reason = reason.to_owned();
    claim.decision_due_at = Some(now + flows.settings.decision_target);
    flows.cancel_escalation(tx, claim).await?;
    let who = match by {
        Escalator::Buyer => "the buyer",
        Escalator::Operator => "an operator",
        Escalator::Timer => "itself (the negotiation ran out)",
    };
    flows
        .record(
            tx,
            claim,
            actor,
            step(
                Event::Escalated,
                "claim.escalated",
                format!("escalated by {who}: {reason}"),
            ),
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
    claim.resolved_by = Some(flows::stored(actor));
    claim.resolved_at = Some(now);
    flows.cancel_escalation(tx, claim).await?;
    flows.settle(tx, claim).await?;
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
    let s = with_money(step(event, action, detail), resolution.refund);
    flows.record(tx, claim, actor, s, now).await
}

/// The buyer withdrew: the freeze is lifted, then the contract told.
pub async fn withdraw(
    tx: &mut PgConnection,
    flows: &Flows,
    claim: &mut ClaimRecord,
    actor: &Actor,
    reason: &str,
    now: OffsetDateTime,
) -> Result<pb::Claim, ServiceError> {
    claim.claim.withdraw(now)?;
    claim.withdrawn_at = Some(now);
    claim.withdrawal_reason = reason.to_owned();
    flows.cancel_escalation(tx, claim).await?;
    flows
        .unfreeze(
            tx,
            claim,
            &format!("claim {} withdrawn", claim.claim_id),
            completion::UNFROZEN,
        )
        .await?;
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
            step(Event::Withdrawn, "claim.withdrawn", detail),
            now,
        )
        .await
}

/// Escrow settled, or lifted a withdrawal's freeze: tell the contract. A
/// refusal leaves the money frozen: it goes to the operators' queue.
pub async fn money_done(
    tx: &mut PgConnection,
    flows: &Flows,
    claim_id: Uuid,
    refusal: Option<&str>,
    now: OffsetDateTime,
) -> Result<Handled, ServiceError> {
    let mut claim = claims::lock_claim(tx, claim_id).await?;
    if let Some(why) = refusal {
        return effect_refused(tx, &mut claim, "escrow", why, now).await;
    }
    flows.record_closed(tx, &claim).await?;
    Ok(Handled::Done)
}

/// Escrow refused to lift the freeze of a claim the contract dropped: the
/// account stays frozen for a claim that never opened.
pub async fn freeze_not_lifted(
    tx: &mut PgConnection,
    claim_id: Uuid,
    why: &str,
    now: OffsetDateTime,
) -> Result<Handled, ServiceError> {
    let mut claim = claims::lock_claim(tx, claim_id).await?;
    effect_refused(tx, &mut claim, "escrow", why, now).await
}

/// The contract recorded the end of the claim: the penalty follows, if any.
pub async fn contract_closed(
    tx: &mut PgConnection,
    flows: &Flows,
    claim_id: Uuid,
    refusal: Option<&str>,
    now: OffsetDateTime,
) -> Result<Handled, ServiceError> {
    let mut claim = claims::lock_claim(tx, claim_id).await?;
    if let Some(why) = refusal {
        return effect_refused(tx, &mut claim, "contract", why, now).await;
    }
    match claim.claim.resolution.clone() {
        Some(r) if r.penalty_points > 0 => {
            let reason: String = format!(
                "claim {} ({}): {}",
                claim.claim_id,
                claim.reason.as_str(),
                r.reason
            )
            .chars()
            .take(500)
            .collect();
            flows
                .record_penalty(tx, &claim, r.penalty_points, &reason)
                .await?;
        }
        _ => effects_completed(tx, flows, &mut claim, now).await?,
    }
    Ok(Handled::Done)
}

pub async fn penalty_recorded(
    tx: &mut PgConnection,
    flows: &Flows,
    claim_id: Uuid,
    refusal: Option<&str>,
    now: OffsetDateTime,
) -> Result<Handled, ServiceError> {
    let mut claim = claims::lock_claim(tx, claim_id).await?;
    if let Some(why) = refusal {
        return effect_refused(tx, &mut claim, "supplier-registry", why, now).await;
    }
    effects_completed(tx, flows, &mut claim, now).await?;
    Ok(Handled::Done)
}

async fn effects_completed(
    tx: &mut PgConnection,
    flows: &Flows,
    claim: &mut ClaimRecord,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    if claim.effects_completed_at.is_some() {
        return Ok(());
    }
    claim.effects_completed_at = Some(now);
    flows
        .record(
            tx,
            claim,
            &flows::system(),
            step(
                Event::EffectsCompleted,
                "claim.effects_completed",
                "escrow, the contract and supplier-registry acknowledged the outcome".into(),
            ),
            now,
        )
        .await?;
    Ok(())
}

/// A step of the claim's outcome was refused: the chain stops there, on the
/// timeline, and the refused call goes to the operators' queue (parked with
/// the refusal, counted in the backlog; re-driving it calls again and the
/// chain goes on from its answer).
async fn effect_refused(
    tx: &mut PgConnection,
    claim: &mut ClaimRecord,
    service: &str,
    why: &str,
    now: OffsetDateTime,
) -> Result<Handled, ServiceError> {
    tracing::error!(claim_id = %claim.claim_id, service, why, "a claim's effect was refused; it goes to the operators' queue");
    timeline::append_timeline(
        tx,
        claim.claim_id,
        &timeline::TimelineEntry {
            entry: 0,
            occurred_at: now,
            actor_principal_id: "dispute".into(),
            actor_role: "service".into(),
            kind: "claim.effect_refused".into(),
            description: format!(
                "{service} refused the claim's effect: {why}; it waits for an operator"
            ),
            money: None,
        },
    )
    .await?;
    Ok(Handled::Escalate(format!(
        "{service} refused an effect of claim {}: {why}",
        claim.claim_id
    )))
}
