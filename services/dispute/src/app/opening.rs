//! A filed claim opens in steps, each driven by the answer of the call
//! before: the contract records it (or refuses), escrow freezes the account
//! (or refuses: the contract resumes), the contract confirms and the claim
//! negotiates. The opening is an inquiry to the supplier, for its response
//! rate.

use sqlx::PgConnection;
use ta_proto::dispute as pb;
use ta_runtime::{
    ServiceError,
    money::{Money, readable},
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ClaimFlows, Flows, Step, system};
use crate::{
    domain::status::Status,
    effects::{self, completion},
    storage::{
        claims::{self, ClaimRecord},
        timeline,
    },
};

type Event = pb::DisputeEventType;

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
            &system(),
            Step::new(
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
    if claim.claim.status != Status::Opening {
        return Ok(());
    }
    match answer {
        Recorded::Refused(why) => refuse(tx, flows, &mut claim, &why, now).await,
        Recorded::Accepted { goods_shipped } => {
            if let Some(shipped) = goods_shipped.filter(|s| *s != claim.goods_shipped) {
                claim.goods_shipped = shipped;
                claims::save_claim(tx, &mut claim, now).await?;
            }
            flows.outbox.write(tx, effects::freeze(&claim)).await
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
    if claim.claim.status != Status::Opening {
        return Ok(());
    }
    match outcome {
        // Money left the account between filing's read and the freeze (a
        // lot's release landing): the claim asks more than is held now, so
        // it is refused, the freeze lifted and the buyer may file again for
        // at most what is held.
        Ok(Some(held))
            if held.currency == claim.currency()
                && held.amount_minor < claim.claim.amount_claimed.amount_minor =>
        {
            let why = format!(
                "HELD_BELOW_CLAIM: escrow holds {}, less than the {} claimed; file again for at most what it holds",
                readable(held),
                readable(claim.claim.amount_claimed)
            );
            flows
                .outbox
                .write(
                    tx,
                    effects::unfreeze(
                        &claim,
                        "the claim asks more than is held",
                        completion::NOTHING,
                    ),
                )
                .await?;
            flows
                .outbox
                .write(tx, effects::abandon_opening(&claim, &why))
                .await?;
            refuse(tx, flows, &mut claim, &why, now).await
        }
        Ok(held) => {
            if let Some(held) = held.filter(|h| h.currency == claim.currency()) {
                claim.claim.held = held;
                claims::save_claim(tx, &mut claim, now).await?;
            }
            flows
                .outbox
                .write(tx, effects::confirm_opened(&claim))
                .await
        }
        Err(why) => {
            let why = format!("ESCROW_NOT_FROZEN: {why}");
            flows
                .outbox
                .write(tx, effects::abandon_opening(&claim, &why))
                .await?;
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
    if claim.claim.status != Status::Opening {
        return Ok(());
    }
    if let Some(why) = refusal {
        flows
            .outbox
            .write(
                tx,
                effects::unfreeze(
                    &claim,
                    "the contract dropped the claim",
                    completion::NOTHING,
                ),
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
            &system(),
            Step::new(Event::ClaimOpened, "claim.opened", detail),
            now,
        )
        .await?;
    Ok(())
}

/// supplier-registry recorded the claim as an inquiry. A reply sent before
/// its inquiry was recorded was refused: send it again now, under a key of
/// its own.
pub async fn inquiry_recorded(
    tx: &mut PgConnection,
    flows: &Flows,
    claim_id: Uuid,
) -> Result<(), ServiceError> {
    if timeline::supplier_answered(tx, claim_id).await? {
        let claim = claims::get_claim(tx, claim_id).await?;
        flows
            .outbox
            .write(
                tx,
                effects::record_inquiry_reply(&claim, "inquiry-reply-after-inquiry"),
            )
            .await?;
    }
    Ok(())
}
