//! Dispute's use cases, one module per stage of a claim: [`filing`] (the
//! contract and escrow read, the claim written OPENING), [`opening`] (the
//! contract's and escrow's answers until it negotiates), [`claims`]
//! (escalation, withdrawal, the supplier's rejection), [`evidence`],
//! [`offers`], [`decisions`] (an arbiter's decision; a resolution carried
//! out), [`closing`] (escrow, the contract and supplier-registry told of
//! the outcome), [`reactions`] (outbox answers, the escalation timer), and
//! [`reconciliation`] (the four services' records compared).
//!
//! Each runs in the caller's transaction on a locked claim, applies the
//! domain's rules, saves, tells the story (timeline and feed) and writes the
//! calls that follow to the outbox, so an event, a call and a timer change
//! with the claim. The API's handlers and the reactions share them.

pub mod claims;
pub mod closing;
pub mod decisions;
pub mod evidence;
pub mod filing;
pub mod offers;
pub mod opening;
pub mod reactions;
pub mod reconciliation;

use sqlx::PgConnection;
use ta_proto::dispute as pb;
use ta_runtime::{
    ServiceError, Violations,
    auth::{Actor, Principal, Role},
};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::{
    domain::{
        claim::{Party, Policy},
        status::Status,
    },
    effects,
    storage::{
        self, StoredActor,
        claims::{CLAIM, ClaimFilter, ClaimRecord},
        timeline,
    },
    views,
};

/// The dispute event feed.
pub const FEED: &str = "dispute";
/// A negotiating claim escalates by itself: subject the claim id.
pub const AUTO_ESCALATION: &str = "auto_escalation";

/// Durations and points the claims follow.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub policy: Policy,
    /// How long an arbiter has for an escalated claim (a target).
    pub decision_target: Duration,
}

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

/// Whether this step is the supplier answering the claim (the timeline's
/// [`storage::timeline::SUPPLIER_ANSWERS`]).
pub fn is_supplier_answer(actor: &Actor, event: pb::DisputeEventType) -> bool {
    actor.role == Role::Supplier
        && matches!(
            event,
            pb::DisputeEventType::OfferMade
                | pb::DisputeEventType::OfferRejected
                | pb::DisputeEventType::ClaimRejectedBySupplier
                | pb::DisputeEventType::Settled
        )
}

// ---- Who may do what ---------------------------------------------------------

/// A caller who may see the claim (an operator) but is neither of its
/// parties, on a step only a party takes.
fn not_party() -> ServiceError {
    ServiceError::PermissionDenied("the caller is not a party to this claim".into())
}

/// The claim's buyer, the owner of its supplier, staff, platform back
/// ends and services see
/// the claim; anyone else is told what an id that does not exist is told
/// ("claim <id> not found"), so that asking cannot tell which claims exist.
pub fn check_can_read(principal: &Principal, claim: &ClaimRecord) -> Result<(), ServiceError> {
    match principal.role {
        _ if principal.sees_everything() => Ok(()),
        Role::Buyer if principal.subject == claim.buyer_principal_id => Ok(()),
        Role::Supplier if principal.subject == claim.supplier_principal_id => Ok(()),
        _ => Err(ServiceError::unseen(CLAIM, claim.claim_id)),
    }
}

/// A listing narrowed to the claims the caller may see: a buyer its own
/// (naming another buyer is a bad field), a supplier's owner its own.
pub fn narrow_to_caller(principal: &Principal, filter: &mut ClaimFilter, v: &mut Violations) {
    match principal.role {
        Role::Buyer => {
            let named_another = principal.narrow_to_self(&mut filter.buyer_principal_id);
            if named_another {
                v.add("buyer_principal_id", "a buyer lists only its own claims");
            }
        }
        Role::Supplier => filter.supplier_principal_id = Some(principal.subject.clone()),
        _ => {}
    }
}

/// The claim's buyer; a party in another position is refused, anyone who
/// may not see the claim told it does not exist.
fn require_buyer(principal: &Principal, claim: &ClaimRecord) -> Result<(), ServiceError> {
    check_can_read(principal, claim)?;
    if principal.role == Role::Buyer && principal.subject == claim.buyer_principal_id {
        Ok(())
    } else {
        Err(ServiceError::PermissionDenied(
            "only the claim's buyer may do this".into(),
        ))
    }
}

/// The claim's supplier (its owner); a party in another position is
/// refused, anyone who may not see the claim told it does not exist.
fn require_supplier(principal: &Principal, claim: &ClaimRecord) -> Result<(), ServiceError> {
    check_can_read(principal, claim)?;
    if principal.role == Role::Supplier && principal.subject == claim.supplier_principal_id {
        Ok(())
    } else {
        Err(ServiceError::PermissionDenied(
            "only the claim's supplier may do this".into(),
        ))
    }
}

/// The caller's side of the claim: its buyer or its supplier's owner.
fn party_of(principal: &Principal, claim: &ClaimRecord) -> Result<Party, ServiceError> {
    check_can_read(principal, claim)?;
    match principal.role {
        Role::Buyer if principal.subject == claim.buyer_principal_id => Ok(Party::Buyer),
        Role::Supplier if principal.subject == claim.supplier_principal_id => Ok(Party::Supplier),
        _ => Err(not_party()),
    }
}

fn is_open(claim: &ClaimRecord) -> bool {
    matches!(claim.claim.status, Status::Negotiating | Status::Escalated)
}

// ---- Answers with counter-evidence -------------------------------------------

/// A rejection (of an offer, or of the claim) with its reason and the
/// claim's evidence that backs it.
pub struct Respond {
    pub claim_id: Uuid,
    pub offer_id: String,
    pub reason: String,
    pub counter_evidence: Vec<Uuid>,
}

async fn check_counter_evidence(
    tx: &mut PgConnection,
    claim: &ClaimRecord,
    field: &str,
    ids: &[Uuid],
) -> Result<(), ServiceError> {
    let unknown = storage::evidence::unknown_evidence(tx, claim.claim_id, ids).await?;
    match unknown.first() {
        None => Ok(()),
        Some(id) => Err(ServiceError::invalid(
            field,
            format!("{id} is not evidence of this claim"),
        )),
    }
}

// ---- The claim's story ---------------------------------------------------------

/// What every use case tells and asks through: the feed, the timers, the
/// outbox, and the durations and points the claims follow ([`Settings`]).
pub type Flows = ta_workflow::Flows<Settings>;

/// One step of a claim's story.
pub type Step<'a> = ta_workflow::Step<'a, pb::DisputeEventType>;

/// A claim's steps and its escalation timer on its [`Flows`]. Contract
/// declares its own (`ContractFlows`) in the same shape over its contract
/// records and views: the shared part is `ta_workflow::Flows`, the steps are
/// each service's.
#[allow(async_fn_in_trait)] // called on `Flows` itself, whose futures are `Send`
pub trait ClaimFlows {
    /// Saves the locked claim and tells its story: a timeline entry and a
    /// feed event carrying the claim after the step. Returns the view.
    async fn record(
        &self,
        tx: &mut PgConnection,
        claim: &mut ClaimRecord,
        actor: &Actor,
        step: Step<'_>,
        now: OffsetDateTime,
    ) -> Result<pb::Claim, ServiceError> {
        self.record_evidence(tx, claim, actor, step, String::new(), now)
            .await
    }

    /// [`ClaimFlows::record`] of a step whose feed event names the evidence
    /// `evidence_id` (empty for other steps).
    async fn record_evidence(
        &self,
        tx: &mut PgConnection,
        claim: &mut ClaimRecord,
        actor: &Actor,
        step: Step<'_>,
        evidence_id: String,
        now: OffsetDateTime,
    ) -> Result<pb::Claim, ServiceError>;

    /// The timeline entry and feed event (naming the evidence `evidence_id`,
    /// if any) of a step whose claim row is saved, and the supplier's
    /// response rate: the claim opening is an inquiry to the supplier, its
    /// first answer the reply (see [`is_supplier_answer`]).
    async fn tell(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
        actor: &Actor,
        step: Step<'_>,
        evidence_id: String,
        now: OffsetDateTime,
    ) -> Result<pb::Claim, ServiceError>;

    /// Schedules the automatic escalation of a claim that opened.
    async fn schedule_escalation(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError>;

    async fn cancel_escalation(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
    ) -> Result<(), ServiceError>;
}

impl ClaimFlows for Flows {
    async fn record_evidence(
        &self,
        tx: &mut PgConnection,
        claim: &mut ClaimRecord,
        actor: &Actor,
        step: Step<'_>,
        evidence_id: String,
        now: OffsetDateTime,
    ) -> Result<pb::Claim, ServiceError> {
        storage::claims::save_claim(tx, claim, now).await?;
        self.tell(tx, claim, actor, step, evidence_id, now).await
    }

    async fn tell(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
        actor: &Actor,
        step: Step<'_>,
        evidence_id: String,
        now: OffsetDateTime,
    ) -> Result<pb::Claim, ServiceError> {
        let count = storage::evidence::count_evidence(tx, claim.claim_id).await?;
        let view = views::claim_proto(claim, count);
        let event = views::event(step.event, now, actor, view.clone(), evidence_id);
        let kind = step.event.as_str_name();
        let told = step.event;
        let entry = step.entry(now, actor);
        self.tell_step(
            tx,
            timeline::timeline_table(),
            claim.claim_id,
            &entry,
            kind,
            &event,
        )
        .await?;
        if told == pb::DisputeEventType::ClaimOpened {
            self.outbox
                .write(tx, effects::record_inquiry(claim))
                .await?;
        } else if is_supplier_answer(actor, told) {
            self.outbox
                .write(tx, effects::record_inquiry_reply(claim, "inquiry-reply"))
                .await?;
        }
        Ok(view)
    }

    async fn schedule_escalation(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError> {
        let claim_id = claim.claim_id.to_string();
        self.timers
            .schedule_at(
                tx,
                AUTO_ESCALATION,
                &claim_id,
                claim.claim.auto_escalate_at,
                now,
            )
            .await?;
        Ok(())
    }

    async fn cancel_escalation(
        &self,
        tx: &mut PgConnection,
        claim: &ClaimRecord,
    ) -> Result<(), ServiceError> {
        self.timers
            .cancel(tx, AUTO_ESCALATION, &claim.claim_id.to_string())
            .await?;
        Ok(())
    }
}
