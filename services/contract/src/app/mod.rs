//! The contract's use cases, one module per stage: `drafting` (draft,
//! revise, sign), `activation` (cover and escrow after both signed),
//! `amendments`, `funding` (escrow's payments), `fulfilment` (inspection,
//! shipment, receipt, acceptance, the deadlines), `lots` (lots before the
//! final shipment and their releases), `cancellation`, `claims`
//! (dispute's calls), `settlement` (escrow's answers about the money it
//! holds) and `reactions` (outbox answers, escrow's feed, timers). Each runs
//! in the caller's transaction on a contract it locked: it applies the state
//! machine, writes the calls to other services into the outbox, moves the
//! timers, and tells the step in the timeline and the feed.

pub mod activation;
pub mod amendments;
pub mod cancellation;
pub mod claims;
pub mod drafting;
pub mod fulfilment;
pub mod funding;
pub mod lots;
pub mod reactions;
pub mod settlement;

use sqlx::PgConnection;
use ta_proto::contract as pb;
use ta_runtime::{
    ServiceError, Violations,
    auth::{Actor, Principal, Role},
    money::Money,
    text::validate_reference,
};
use ta_workflow::timeline::TimelineEntry;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::{
    domain::{negotiation::Party, terms::Terms},
    effects,
    storage::{
        contracts::{
            CONTRACT, ContractFilter, ContractRecord, current_version, get_contract, save_contract,
        },
        fulfilment::{latest_report, shipments},
        payments::{Payment, payments},
        timeline::{append_timeline, timeline_table},
        versions::load_terms,
    },
    views::{self, ContractFacts},
};

/// The contract's event feed.
pub const FEED: &str = "contract";
/// The shipment deadline of a signed contract: subject the contract id.
pub const SHIPMENT_DUE: &str = "shipment_due";
/// Nothing shipped within the claim window after the shipment deadline: the
/// contract is cancelled and the buyer refunded. Subject the contract id.
pub const UNSHIPPED_CANCEL: &str = "unshipped_cancel";
/// When the goods count as accepted: subject the contract id.
pub const ACCEPTANCE_DUE: &str = "acceptance_due";
/// A claim recorded but not yet confirmed by dispute: subject the contract id.
pub const CLAIM_CONFIRMATION: &str = "claim_confirmation";
/// When the earliest received lot before the final one counts as accepted
/// (see [`lots`]): subject the contract id.
pub const LOT_ACCEPTANCE_DUE: &str = "lot_acceptance_due";

/// Durations the contract's timers use.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long one day of the terms lasts: a day, except in tests and demos.
    pub day: Duration,
    /// How long a recorded claim waits for dispute's confirmation.
    pub claim_confirmation: Duration,
}

/// The contract service acting on its own (a timer, another service's answer).
pub fn system() -> Actor {
    Actor::service("contract")
}

/// What every use case tells and asks through: the feed, the timers, the
/// outbox, and the durations they run on ([`Settings`]).
pub type Flows = ta_workflow::Flows<Settings>;

/// One step of a contract's story.
pub type Step<'a> = ta_workflow::Step<'a, pb::ContractEventType>;

/// The contract's steps and timers on its [`Flows`]. Dispute declares its
/// own (`ClaimFlows`) in the same shape over its claim records and views:
/// the shared part is `ta_workflow::Flows`, the steps are each service's.
#[allow(async_fn_in_trait)] // called on `Flows` itself, whose futures are `Send`
pub trait ContractFlows {
    /// Saves the locked contract and tells its story: a timeline entry and a
    /// feed event carrying the contract after the step. Returns the view.
    async fn record(
        &self,
        tx: &mut PgConnection,
        contract: &mut ContractRecord,
        actor: &Actor,
        step: Step<'_>,
        now: OffsetDateTime,
    ) -> Result<pb::Contract, ServiceError>;

    /// Schedules (or moves) the timer `kind` of a contract to fire at `at`.
    async fn schedule_at(
        &self,
        tx: &mut PgConnection,
        kind: &str,
        contract_id: Uuid,
        at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError>;

    /// Cancels every timer of a contract.
    async fn cancel_timers(
        &self,
        tx: &mut PgConnection,
        contract_id: Uuid,
    ) -> Result<(), ServiceError>;
}

impl ContractFlows for Flows {
    async fn record(
        &self,
        tx: &mut PgConnection,
        contract: &mut ContractRecord,
        actor: &Actor,
        step: Step<'_>,
        now: OffsetDateTime,
    ) -> Result<pb::Contract, ServiceError> {
        save_contract(tx, contract, now).await?;
        let view = contract_view(tx, contract, self.settings.day).await?;
        let event = views::contract_event(step.event, actor, now, view.clone());
        let kind = step.event.as_str_name();
        let entry = step.entry(now, actor);
        self.tell_step(
            tx,
            timeline_table(),
            contract.contract_id,
            &entry,
            kind,
            &event,
        )
        .await?;
        Ok(view)
    }

    async fn schedule_at(
        &self,
        tx: &mut PgConnection,
        kind: &str,
        contract_id: Uuid,
        at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError> {
        self.timers
            .schedule_at(tx, kind, &contract_id.to_string(), at, now)
            .await?;
        Ok(())
    }

    async fn cancel_timers(
        &self,
        tx: &mut PgConnection,
        contract_id: Uuid,
    ) -> Result<(), ServiceError> {
        let subject = contract_id.to_string();
        for kind in [
            SHIPMENT_DUE,
            UNSHIPPED_CANCEL,
            ACCEPTANCE_DUE,
            CLAIM_CONFIRMATION,
            LOT_ACCEPTANCE_DUE,
        ] {
            self.timers.cancel(tx, kind, &subject).await?;
        }
        Ok(())
    }
}

/// The contract as the API shows it: what its view shows, loaded, then
/// built by [`views::contract_proto`].
pub async fn contract_view(
    conn: &mut PgConnection,
    contract: &ContractRecord,
    day: Duration,
) -> Result<pb::Contract, ServiceError> {
    let loaded = load_terms(conn, contract.contract_id, current_version(contract)).await?;
    let facts = ContractFacts {
        terms: loaded.terms,
        payments: payments(conn, contract.contract_id).await?,
        latest_report: latest_report(conn, contract.contract_id).await?,
        shipments: shipments(conn, contract.contract_id).await?,
    };
    views::contract_proto(contract, &facts, day)
}

/// When each payment milestone of `terms` is due, for a contract signed at
/// `signed_at`.
pub fn schedule(terms: &Terms, signed_at: OffsetDateTime, day: Duration) -> Vec<Payment> {
    terms
        .milestones
        .iter()
        .map(|m| Payment {
            milestone_id: m.milestone_id.clone(),
            amount_minor: m.amount.amount_minor,
            due_at: m.due_at(signed_at, terms.shipment_deadline, day),
            funded_at: None,
            overdue: false,
        })
        .collect()
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

/// A timeline entry from escrow's side that changes nothing of the
/// contract's state (an operator item, a deadline that passed early).
pub async fn note(
    tx: &mut PgConnection,
    contract: &ContractRecord,
    action: &str,
    detail: String,
    money: Option<Money>,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    append_timeline(
        tx,
        contract.contract_id,
        &TimelineEntry {
            entry: 0,
            occurred_at: now,
            actor_principal_id: effects::ESCROW.into(),
            actor_role: "service".into(),
            kind: action.into(),
            description: detail,
            money,
        },
    )
    .await
    .map(|_| ())
}

/// Escrow, as the actor of what its answers and its feed change.
fn escrow_actor() -> Actor {
    Actor {
        principal_id: effects::ESCROW.into(),
        role: Role::Service,
    }
}

// ---- Reads --------------------------------------------------------------------

/// The contracts of a listing's page, as the API shows them.
pub async fn contract_views(
    conn: &mut PgConnection,
    rows: &[ContractRecord],
    day: Duration,
) -> Result<Vec<pb::Contract>, ServiceError> {
    let mut contracts = Vec::with_capacity(rows.len());
    for row in rows {
        contracts.push(contract_view(conn, row, day).await?);
    }
    Ok(contracts)
}

/// A contract `principal` may read, with version `version` of its terms (0:
/// the version in force).
pub async fn read_contract(
    conn: &mut PgConnection,
    principal: &Principal,
    contract_id: Uuid,
    version: u32,
    day: Duration,
) -> Result<(pb::Contract, pb::ContractVersion), ServiceError> {
    let contract = get_contract(conn, contract_id).await?;
    check_can_read(principal, &contract)?;
    let version = match version {
        0 => current_version(&contract),
        n if n <= contract.negotiation.latest_version => n,
        n => return Err(ServiceError::not_found("version of the contract", n)),
    };
    let loaded = load_terms(conn, contract_id, version).await?;
    Ok((
        contract_view(conn, &contract, day).await?,
        views::version_proto(&loaded),
    ))
}

// ---- Who may do what ---------------------------------------------------------

/// A caller who may see the contract but is neither of its parties (the
/// named agency, an operator) on a step only a party takes.
pub fn not_party() -> ServiceError {
    ServiceError::PermissionDenied("the caller is not a party to this contract".into())
}

/// The caller's side of the contract, if it is a party. A caller who may not
/// see it is told it does not exist ([`check_can_read`]).
pub fn party_of(principal: &Principal, contract: &ContractRecord) -> Result<Party, ServiceError> {
    check_can_read(principal, contract)?;
    match principal.role {
        Role::Buyer if principal.subject == contract.buyer_principal_id => Ok(Party::Buyer),
        Role::Supplier if principal.subject == contract.supplier_principal_id => {
            Ok(Party::Supplier)
        }
        _ => Err(not_party()),
    }
}

fn require_party(
    principal: &Principal,
    contract: &ContractRecord,
    wanted: Party,
) -> Result<(), ServiceError> {
    let party = party_of(principal, contract)?;
    if party != wanted {
        return Err(ServiceError::PermissionDenied(format!(
            "only the contract's {} may do this",
            wanted.as_str()
        )));
    }
    Ok(())
}

/// Who may see a contract's listing: a buyer its own, a supplier its
/// owner's, staff, back ends and services any.
pub fn scope_listing(
    principal: &Principal,
    filter: &mut ContractFilter,
) -> Result<(), ServiceError> {
    match principal.role {
        Role::Buyer => {
            let named_another = principal.narrow_to_self(&mut filter.buyer_principal_id);
            if named_another {
                return Err(ServiceError::PermissionDenied(
                    "a buyer lists only its own contracts".into(),
                ));
            }
        }
        Role::Supplier => filter.supplier_principal_id = Some(principal.subject.clone()),
        _ => {}
    }
    Ok(())
}

/// Whose inspection assignments a listing shows: an inspector its own
/// agency's, others the agency they name (`requested`).
pub fn assignments_agency(
    principal: &Principal,
    requested: &str,
    v: &mut Violations,
) -> Result<String, ServiceError> {
    match principal.role {
        Role::Inspector => {
            if !requested.is_empty() && requested != principal.subject {
                return Err(ServiceError::PermissionDenied(
                    "an inspector lists only its own agency's assignments".into(),
                ));
            }
            Ok(principal.subject.clone())
        }
        _ => {
            validate_reference("agency_principal_id", requested, v);
            Ok(requested.to_owned())
        }
    }
}

/// The parties, the agency named for inspection, staff, platform back
/// ends and services see
/// the contract; anyone else is told what an id that does not exist is told
/// ("contract <id> not found"), so that asking cannot tell which ids exist.
pub fn check_can_read(
    principal: &Principal,
    contract: &ContractRecord,
) -> Result<(), ServiceError> {
    match principal.role {
        _ if principal.sees_everything() => Ok(()),
        Role::Inspector
            if !contract.progress.inspection_agency.is_empty()
                && contract.progress.inspection_agency == principal.subject =>
        {
            Ok(())
        }
        Role::Buyer if principal.subject == contract.buyer_principal_id => Ok(()),
        Role::Supplier if principal.subject == contract.supplier_principal_id => Ok(()),
        _ => Err(ServiceError::unseen(CONTRACT, contract.contract_id)),
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
