//! Negotiation: the supplier offers, the buyer counter-offers (each
//! replaces the open offer), the party that did not make the open offer
//! accepts it (the claim settles) or rejects it with its counter-evidence.

use sqlx::PgConnection;
use ta_proto::dispute as pb;
use ta_runtime::{
    ServiceError,
    auth::{Actor, Principal},
    money::readable,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    ClaimFlows, Flows, Respond, Step, check_counter_evidence, decisions, party_of, require_buyer,
    require_supplier,
};
use crate::{
    domain::claim::{Outcome, Party},
    storage::claims,
};

/// An offer (the supplier's) or a counter-offer (the buyer's).
pub struct Proposal {
    pub claim_id: Uuid,
    pub outcome: Outcome,
    pub message: String,
}

/// An offer (the supplier's) or a counter-offer (the buyer's).
pub async fn propose(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Proposal,
    by: Party,
    now: OffsetDateTime,
) -> Result<pb::Claim, ServiceError> {
    let mut claim = claims::lock_claim(tx, cmd.claim_id).await?;
    match by {
        Party::Supplier => require_supplier(principal, &claim)?,
        Party::Buyer => require_buyer(principal, &claim)?,
    }
    let offer_id = Uuid::now_v7().to_string();
    match by {
        Party::Supplier => claim.claim.make_offer(&offer_id, cmd.outcome, now)?,
        Party::Buyer => claim.claim.counter_offer(&offer_id, cmd.outcome, now)?,
    }
    if let Some(offer) = claim.claim.offers.last_mut() {
        offer.message = cmd.message.clone();
    }
    let refund = match cmd.outcome {
        Outcome::PartialRefund(m) => m,
        _ => claim.claim.held,
    };
    let mut s = Step::new(
        pb::DisputeEventType::OfferMade,
        match by {
            Party::Supplier => "offer.made",
            Party::Buyer => "offer.countered",
        },
        format!(
            "the {} {} {} {}{}",
            by.as_str(),
            match by {
                Party::Supplier => "offers",
                Party::Buyer => "counter-offers",
            },
            if matches!(cmd.outcome, Outcome::FullRefund) {
                "a full refund of"
            } else {
                "a partial refund of"
            },
            readable(refund),
            if cmd.message.is_empty() {
                String::new()
            } else {
                format!(": {}", cmd.message)
            }
        ),
    );
    s.money = Some(refund);
    flows
        .record(tx, &mut claim, &Actor::of(principal), s, now)
        .await
}

/// The party that did not make the open offer accepts it: the claim settles
/// on its terms.
pub async fn accept_offer(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    claim_id: Uuid,
    offer_id: &str,
    now: OffsetDateTime,
) -> Result<pb::Claim, ServiceError> {
    let mut claim = claims::lock_claim(tx, claim_id).await?;
    let by = party_of(principal, &claim)?;
    claim.claim.accept_offer(offer_id, by, now)?;
    claim.accepted_offer_id = offer_id.to_owned();
    decisions::resolve(
        tx,
        flows,
        &mut claim,
        &Actor::of(principal),
        pb::DisputeEventType::Settled,
        now,
    )
    .await
}

/// The party that did not make the open offer rejects it, with its
/// counter-evidence.
pub async fn reject_offer(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Respond,
    now: OffsetDateTime,
) -> Result<pb::Claim, ServiceError> {
    let mut claim = claims::lock_claim(tx, cmd.claim_id).await?;
    let by = party_of(principal, &claim)?;
    check_counter_evidence(tx, &claim, "counter_evidence_ids", &cmd.counter_evidence).await?;
    claim
        .claim
        .reject_offer(&cmd.offer_id, by, &cmd.reason, now)?;
    if let Some(offer) = claim
        .claim
        .offers
        .iter_mut()
        .find(|o| o.offer_id == cmd.offer_id)
    {
        offer.counter_evidence_ids = cmd.counter_evidence.iter().map(Uuid::to_string).collect();
    }
    flows
        .record(
            tx,
            &mut claim,
            &Actor::of(principal),
            Step::new(
                pb::DisputeEventType::OfferRejected,
                "offer.rejected",
                format!(
                    "the {} rejected offer {}: {} ({} counter-evidence)",
                    by.as_str(),
                    cmd.offer_id,
                    cmd.reason,
                    cmd.counter_evidence.len()
                ),
            ),
            now,
        )
        .await
}
