//! After a claim ends, its outcome is carried out call by call: escrow
//! settles (or lifts a withdrawal's freeze), the contract records how the
//! claim closed, supplier-registry records the penalty; then the claim's
//! effects are complete. A refused step stops the chain on the timeline and
//! goes to the operators' queue.

use sqlx::PgConnection;
use ta_proto::dispute as pb;
use ta_runtime::ServiceError;
use ta_workflow::{Handled, timeline::TimelineEntry};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ClaimFlows, Flows, Step, system};
use crate::{
    effects,
    storage::{
        claims::{self, ClaimRecord},
        timeline,
    },
};

type Event = pb::DisputeEventType;

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
    flows
        .outbox
        .write(tx, effects::record_closed(&claim))
        .await?;
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
                .outbox
                .write(
                    tx,
                    effects::record_penalty(&claim, r.penalty_points, &reason),
                )
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
            &system(),
            Step::new(
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
        &TimelineEntry::step(
            now,
            &system(),
            "claim.effect_refused",
            format!("{service} refused the claim's effect: {why}; it waits for an operator"),
            None,
        ),
    )
    .await?;
    Ok(Handled::Escalate(format!(
        "{service} refused an effect of claim {}: {why}",
        claim.claim_id
    )))
}
