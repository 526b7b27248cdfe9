//! What the API, the outbox completions, the escrow feed and the timers
//! share: the contract's feed and timeline, the views in proto, the calls to
//! supplier-registry and escrow written to the outbox, and the timers.
//! Everything here runs in the caller's transaction, so an event, a call and
//! a timer change together with the contract.

use sqlx::PgConnection;
use ta_proto::{
    common::Money as PbMoney, contract as pb, escrow as escrow_pb, supplier as supplier_pb,
};
use ta_runtime::{ServiceError, money::Money, timestamps};
use ta_workflow::{
    feed::Feed,
    outbox::{Callee, Outbox},
    timers::Timers,
};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::{
    domain::{
        negotiation::{Party, Protection, Signature},
        status::Status,
        terms::{Inspection, Scheme, Terms},
    },
    storage::{self, ContractRecord, Payment, TimelineEntry, VersionRecord},
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

/// Completions of the outbox calls, by name.
pub mod completion {
    pub const COVER_RESERVED: &str = "cover_reserved";
    pub const ESCROW_OPENED: &str = "escrow_opened";
    pub const COVER_ADJUSTED: &str = "cover_adjusted";
    pub const SCHEDULE_AMENDED: &str = "schedule_amended";
    /// The acceptance's release answered: the account can close (a refusal
    /// goes to the operators' queue, unless there was nothing to release).
    pub const MONEY_MOVED: &str = "money_moved";
    /// CloseEscrowAccount answered: a refusal leaves money held that nobody
    /// moves, so it goes to the operators' queue.
    pub const ESCROW_CLOSED: &str = "escrow_closed";
    /// Nothing follows; a refusal is logged for operators.
    pub const NOTHING: &str = "nothing";
}

pub const SUPPLIER_REGISTRY: &str = "supplier-registry";
pub const ESCROW: &str = "escrow";
const REGISTRY_CALLS: Callee = Callee {
    name: SUPPLIER_REGISTRY,
    service: "tradeassurance.supplier.v1.SupplierRegistryService",
};
const ESCROW_CALLS: Callee = Callee {
    name: ESCROW,
    service: "tradeassurance.escrow.v1.EscrowService",
};

pub fn schema() -> ta_workflow::Schema {
    // A constant that is a plain identifier.
    ta_workflow::Schema::new(storage::SCHEMA).unwrap_or_else(|_| unreachable!())
}

/// Durations the contract's timers use.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long one day of the terms lasts: a day, except in tests and demos.
    pub day: Duration,
    /// How long a recorded claim waits for dispute's confirmation.
    pub claim_confirmation: Duration,
}

/// Who did something: see [`ta_runtime::auth::Actor`]; the contract service
/// itself acts as [`system`].
pub use ta_runtime::auth::Actor;

/// The contract service acting on its own (a timer, another service's answer).
pub fn system() -> Actor {
    Actor::service("contract")
}

pub struct Flows {
    pub feed: Feed,
    pub timers: Timers,
    pub outbox: Outbox,
    pub settings: Settings,
}

/// A version's terms: as stored (proto) and as the domain reads them.
pub struct LoadedTerms {
    pub version: VersionRecord,
    pub proto: pb::ContractTerms,
    pub terms: Terms,
}

/// The terms of `version` of a contract, as stored: they were validated
/// when they were written, and are read back without today's request rules
/// (see [`Terms::stored`]), so a rule tightened since never breaks the
/// reactions of a contract signed before.
pub async fn load_terms(
    conn: &mut PgConnection,
    contract_id: Uuid,
    version: u32,
) -> Result<LoadedTerms, ServiceError> {
    let version = storage::version(conn, contract_id, version).await?;
    let proto = <pb::ContractTerms as prost::Message>::decode(version.terms.as_slice())
        .map_err(|_| ServiceError::internal("stored terms do not decode"))?;
    let terms = Terms::stored(&proto, version.total).map_err(|why| {
        ServiceError::internal(format!(
            "stored terms of contract {contract_id} v{} are unreadable: {why}",
            version.version
        ))
    })?;
    Ok(LoadedTerms {
        version,
        proto,
        terms,
    })
}

/// The version in force: the signed one once signed, else the latest.
pub fn current_version(contract: &ContractRecord) -> u32 {
    match contract.negotiation.signed_version {
        0 => contract.negotiation.latest_version,
        signed => signed,
    }
}

/// A moment as people read it in the timeline: `2026-12-31 14:05 UTC`.
pub fn readable_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!("{} {:02}:{:02} UTC", at.date(), at.hour(), at.minute())
}

pub fn money(amount_minor: i64, currency: ta_runtime::money::Currency) -> PbMoney {
    Money::new(amount_minor, currency).to_proto()
}

fn ts(at: Option<OffsetDateTime>) -> Option<prost_types::Timestamp> {
    at.map(timestamps::to_proto)
}

pub fn status_proto(status: Status) -> pb::ContractStatus {
    use pb::ContractStatus as P;
    match status {
        Status::Draft => P::Draft,
        Status::AwaitingSignatures => P::AwaitingSignatures,
        Status::Activating => P::Activating,
        Status::AwaitingPayment => P::AwaitingPayment,
        Status::PartiallyFunded => P::PartiallyFunded,
        Status::Funded => P::Funded,
        Status::SignedUnprotected => P::SignedUnprotected,
        Status::Shipped => P::Shipped,
        Status::Delivered => P::Delivered,
        Status::Completed => P::Completed,
        Status::InDispute => P::InDispute,
        Status::Cancelled => P::Cancelled,
        Status::Refunded => P::Refunded,
    }
}

pub fn status_from_proto(status: pb::ContractStatus) -> Option<Status> {
    Status::ALL.into_iter().find(|s| status_proto(*s) == status)
}

fn signature_proto(s: &Signature) -> pb::Signature {
    pb::Signature {
        party: match s.party {
            Party::Buyer => pb::ContractParty::Buyer,
            Party::Supplier => pb::ContractParty::Supplier,
        } as i32,
        principal_id: s.principal_id.clone(),
        version: s.version,
        signed_at: Some(timestamps::to_proto(s.signed_at)),
    }
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

/// When received goods count as accepted: the later of the inspection period
/// and the claim window, so a claim within the window is payable from escrow.
pub fn acceptance_after_receipt(
    terms: &Terms,
    received_at: OffsetDateTime,
    day: Duration,
) -> OffsetDateTime {
    received_at + day * terms.inspection_period_days.max(terms.claim_window_days)
}

pub fn report_proto(record: &storage::ReportRecord) -> Result<pb::InspectionReport, ServiceError> {
    <pb::InspectionReport as prost::Message>::decode(record.report.as_slice())
        .map_err(|_| ServiceError::internal("a stored inspection report does not decode"))
}

fn shipment_proto(s: &storage::ShipmentRecord) -> pb::Shipment {
    pb::Shipment {
        carrier: s.carrier.clone(),
        tracking_number: s.tracking_number.clone(),
        shipped_at: Some(timestamps::to_proto(s.shipped_at)),
        late: s.late,
        r#final: s.r#final,
    }
}

fn acceptance_proto(kind: Option<&str>) -> pb::AcceptanceKind {
    match kind {
        Some("explicit") => pb::AcceptanceKind::Explicit,
        Some("automatic") => pb::AcceptanceKind::Automatic,
        Some("claim_outcome") => pb::AcceptanceKind::ClaimOutcome,
        _ => pb::AcceptanceKind::Unspecified,
    }
}

/// The contract as the API shows it, with its milestones.
pub async fn contract_proto(
    conn: &mut PgConnection,
    contract: &ContractRecord,
    day: Duration,
) -> Result<pb::Contract, ServiceError> {
    let n = &contract.negotiation;
    let p = &contract.progress;
    let loaded = load_terms(conn, contract.contract_id, current_version(contract)).await?;
    let terms = &loaded.terms;
    let payments = storage::payments(conn, contract.contract_id).await?;
    let latest_report = storage::latest_report(conn, contract.contract_id).await?;
    let shipments = storage::shipments(conn, contract.contract_id).await?;
    let shipment_deadline = p.shipment_deadline.unwrap_or(terms.shipment_deadline);

    let mut milestones: Vec<pb::Milestone> = if payments.is_empty() {
        terms
            .milestones
            .iter()
            .map(|m| pb::Milestone {
                kind: pb::MilestoneKind::Payment as i32,
                payment_milestone_id: m.milestone_id.clone(),
                due_at: p
                    .signed_at
                    .map(|s| timestamps::to_proto(m.due_at(s, terms.shipment_deadline, day))),
                reached_at: None,
            })
            .collect()
    } else {
        payments
            .iter()
            .map(|pay| pb::Milestone {
                kind: pb::MilestoneKind::Payment as i32,
                payment_milestone_id: pay.milestone_id.clone(),
                due_at: Some(timestamps::to_proto(pay.due_at)),
                reached_at: ts(pay.funded_at),
            })
            .collect()
    };
    if !matches!(terms.inspection, Inspection::None) {
        milestones.push(pb::Milestone {
            kind: pb::MilestoneKind::Inspection as i32,
            due_at: Some(timestamps::to_proto(shipment_deadline)),
            reached_at: latest_report
                .as_ref()
                .filter(|r| r.passed)
                .map(|r| timestamps::to_proto(r.submitted_at)),
            ..Default::default()
        });
    }
    let final_shipment = shipments.iter().find(|s| s.r#final);
    milestones.push(pb::Milestone {
        kind: pb::MilestoneKind::Shipment as i32,
        due_at: Some(timestamps::to_proto(shipment_deadline)),
        reached_at: final_shipment.map(|s| timestamps::to_proto(s.shipped_at)),
        ..Default::default()
    });
    milestones.push(pb::Milestone {
        kind: pb::MilestoneKind::Receipt as i32,
        due_at: Some(timestamps::to_proto(terms.delivery_deadline)),
        reached_at: ts(p.received_at),
        ..Default::default()
    });
    milestones.push(pb::Milestone {
        kind: pb::MilestoneKind::Acceptance as i32,
        due_at: ts(p.acceptance_due_at),
        reached_at: ts(p.accepted_at),
        ..Default::default()
    });

    let all_shipments: Vec<pb::Shipment> = shipments.iter().map(shipment_proto).collect();
    Ok(pb::Contract {
        contract_id: contract.contract_id.to_string(),
        buyer_principal_id: contract.buyer_principal_id.clone(),
        supplier_id: contract.supplier_id.to_string(),
        protection: match n.protection {
            Protection::TradeAssurance => pb::Protection::TradeAssurance,
            Protection::None => pb::Protection::None,
        } as i32,
        status: status_proto(n.status) as i32,
        status_before_dispute: contract
            .status_before_dispute
            .map_or(pb::ContractStatus::Unspecified, status_proto)
            as i32,
        latest_version: n.latest_version,
        signed_version: n.signed_version,
        total: Some(contract.total.to_proto()),
        signatures: n.signatures.iter().map(signature_proto).collect(),
        escrow_account_id: contract.escrow_account_id.clone().unwrap_or_default(),
        milestones,
        latest_inspection_report: latest_report.as_ref().map(report_proto).transpose()?,
        shipment: all_shipments.first().cloned(),
        acceptance: acceptance_proto(p.acceptance.as_deref()) as i32,
        claim_window_ends_at: p
            .received_at
            .map(|r| timestamps::to_proto(r + day * terms.claim_window_days)),
        open_claim_id: contract.open_claim_id.clone().unwrap_or_default(),
        cancellation_reason: contract.cancellation_reason.clone(),
        activation_refusal: contract.activation_refusal.clone(),
        supplier_principal_id: contract.supplier_principal_id.clone(),
        shipments: all_shipments,
        pending_amendment_version: n.pending_amendment,
        amendment_signatures: n.amendment_signatures.iter().map(signature_proto).collect(),
        claim_pending_confirmation: p.claim_pending,
        agreed_shipment_deadline: ts(p.agreed_shipment_deadline),
        created_at: Some(timestamps::to_proto(contract.created_at)),
        updated_at: Some(timestamps::to_proto(contract.updated_at)),
    })
}

pub fn version_proto(loaded: &LoadedTerms) -> pb::ContractVersion {
    let v = &loaded.version;
    pb::ContractVersion {
        contract_id: v.contract_id.to_string(),
        version: v.version,
        terms: Some(loaded.proto.clone()),
        total: Some(v.total.to_proto()),
        created_by: Some(
            Actor::stored(v.created_by_principal_id.clone(), &v.created_by_role).to_proto(),
        ),
        created_at: Some(timestamps::to_proto(v.created_at)),
        change_note: v.change_note.clone(),
    }
}

/// One step of a contract's story.
pub struct Step<'a> {
    pub event: pb::ContractEventType,
    /// Machine-readable action, e.g. `contract.signed`.
    pub action: &'a str,
    /// Readable: who did what and why.
    pub detail: String,
    pub money: Option<Money>,
}

impl Flows {
    /// Saves the locked contract and tells its story: a timeline entry and a
    /// feed event carrying the contract after the step. Returns the view.
    pub async fn record(
        &self,
        tx: &mut PgConnection,
        contract: &mut ContractRecord,
        actor: &Actor,
        step: Step<'_>,
        now: OffsetDateTime,
    ) -> Result<pb::Contract, ServiceError> {
        storage::save_contract(tx, contract, now).await?;
        storage::append_timeline(
            tx,
            contract.contract_id,
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
        let view = contract_proto(tx, contract, self.settings.day).await?;
        let event = pb::ContractEvent {
            sequence: 0,
            r#type: step.event as i32,
            occurred_at: Some(timestamps::to_proto(now)),
            actor: Some(actor.to_proto()),
            contract: Some(view.clone()),
        };
        self.feed
            .append(
                tx,
                step.event.as_str_name(),
                &contract.contract_id.to_string(),
                &event,
            )
            .await?;
        Ok(view)
    }

    /// Schedules (or moves) the timer `kind` of a contract to fire at `at`.
    pub async fn schedule_at(
        &self,
        tx: &mut PgConnection,
        kind: &str,
        contract_id: Uuid,
        at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError> {
        let after = std::time::Duration::try_from(at - now).unwrap_or_default();
        self.timers
            .schedule_after(tx, kind, &contract_id.to_string(), after, &[])
            .await?;
        Ok(())
    }

    pub async fn cancel_timers(
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
        ] {
            self.timers.cancel(tx, kind, &subject).await?;
        }
        Ok(())
    }

    // ---- Calls through the outbox (keys derive from the contract, so a
    // repeated step writes the same call once) ------------------------------

    pub async fn reserve_cover(
        &self,
        tx: &mut PgConnection,
        contract: &ContractRecord,
    ) -> Result<(), ServiceError> {
        let request = supplier_pb::ReserveCoverRequest {
            idempotency_key: format!(
                "contract:{}:reserve-cover:{}",
                contract.contract_id,
                activation(contract)
            ),
            supplier_id: contract.supplier_id.to_string(),
            contract_id: contract.contract_id.to_string(),
            amount: Some(contract.total.to_proto()),
        };
        self.outbox
            .call(
                tx,
                &REGISTRY_CALLS,
                "ReserveCover",
                &request,
                completion::COVER_RESERVED,
            )
            .await
    }

    pub async fn open_escrow(
        &self,
        tx: &mut PgConnection,
        contract: &ContractRecord,
        terms: &Terms,
        payments: &[Payment],
    ) -> Result<(), ServiceError> {
        let currency = contract.total.currency;
        let request = escrow_pb::OpenEscrowAccountRequest {
            idempotency_key: format!(
                "contract:{}:open-escrow:{}",
                contract.contract_id,
                activation(contract)
            ),
            contract_id: contract.contract_id.to_string(),
            buyer_principal_id: contract.buyer_principal_id.clone(),
            supplier_id: contract.supplier_id.to_string(),
            schedule: payments
                .iter()
                .map(|p| escrow_pb::ScheduledPayment {
                    milestone_id: p.milestone_id.clone(),
                    amount: Some(money(p.amount_minor, currency)),
                    due_at: Some(timestamps::to_proto(p.due_at)),
                    funded_at: None,
                })
                .collect(),
            payment_scheme: match terms.scheme {
                Scheme::PayLater => escrow_pb::EscrowPaymentScheme::PayLater,
                Scheme::FullPrepayment | Scheme::DepositAndBalance => {
                    escrow_pb::EscrowPaymentScheme::Direct
                }
            } as i32,
            financing_partner_id: terms
                .pay_later
                .as_ref()
                .map(|p| p.financing_partner_id.clone())
                .unwrap_or_default(),
            supplier_owner_principal_id: contract.supplier_principal_id.clone(),
            hold_until: Some(timestamps::to_proto(terms.hold_until(self.settings.day))),
        };
        self.outbox
            .call(
                tx,
                &ESCROW_CALLS,
                "OpenEscrowAccount",
                &request,
                completion::ESCROW_OPENED,
            )
            .await
    }

    /// Moves the cover to `total` for `version`; `completion` is
    /// [`completion::COVER_ADJUSTED`] for an amendment both signed (escrow's
    /// schedule follows), [`completion::NOTHING`] for a compensation.
    pub async fn adjust_cover(
        &self,
        tx: &mut PgConnection,
        contract: &ContractRecord,
        version: u32,
        total: Money,
        then: &str,
    ) -> Result<(), ServiceError> {
        let request = supplier_pb::AdjustCoverRequest {
            idempotency_key: format!("contract:{}:adjust-cover:v{version}", contract.contract_id),
            supplier_id: contract.supplier_id.to_string(),
            contract_id: contract.contract_id.to_string(),
            amount: Some(total.to_proto()),
            contract_version: version,
        };
        self.outbox
            .call(tx, &REGISTRY_CALLS, "AdjustCover", &request, then)
            .await
    }

    pub async fn amend_escrow_schedule(
        &self,
        tx: &mut PgConnection,
        contract: &ContractRecord,
        version: u32,
        terms: &Terms,
        payments: &[Payment],
    ) -> Result<(), ServiceError> {
        let Some(account) = &contract.escrow_account_id else {
            return Err(ServiceError::internal("amending a contract without escrow"));
        };
        let currency = contract.total.currency;
        let request = escrow_pb::AmendEscrowScheduleRequest {
            idempotency_key: format!("contract:{}:amend-escrow:v{version}", contract.contract_id),
            escrow_account_id: account.clone(),
            schedule: payments
                .iter()
                .map(|p| escrow_pb::ScheduledPayment {
                    milestone_id: p.milestone_id.clone(),
                    amount: Some(money(p.amount_minor, currency)),
                    due_at: Some(timestamps::to_proto(p.due_at)),
                    funded_at: None,
                })
                .collect(),
            contract_version: version,
            hold_until: Some(timestamps::to_proto(terms.hold_until(self.settings.day))),
        };
        self.outbox
            .call(
                tx,
                &ESCROW_CALLS,
                "AmendEscrowSchedule",
                &request,
                completion::SCHEDULE_AMENDED,
            )
            .await
    }

    pub async fn release_cover(
        &self,
        tx: &mut PgConnection,
        contract: &ContractRecord,
    ) -> Result<(), ServiceError> {
        let request = supplier_pb::ReleaseCoverRequest {
            idempotency_key: format!("contract:{}:release-cover", contract.contract_id),
            supplier_id: contract.supplier_id.to_string(),
            contract_id: contract.contract_id.to_string(),
        };
        self.outbox
            .call(
                tx,
                &REGISTRY_CALLS,
                "ReleaseCover",
                &request,
                completion::NOTHING,
            )
            .await
    }

    pub async fn record_completed(
        &self,
        tx: &mut PgConnection,
        contract: &ContractRecord,
    ) -> Result<(), ServiceError> {
        let request = supplier_pb::RecordCompletedContractRequest {
            idempotency_key: format!("contract:{}:completed", contract.contract_id),
            supplier_id: contract.supplier_id.to_string(),
            contract_id: contract.contract_id.to_string(),
            buyer_principal_id: contract.buyer_principal_id.clone(),
        };
        self.outbox
            .call(
                tx,
                &REGISTRY_CALLS,
                "RecordCompletedContract",
                &request,
                completion::NOTHING,
            )
            .await
    }

    /// Everything held goes to the supplier (the goods were accepted).
    pub async fn release_all(
        &self,
        tx: &mut PgConnection,
        contract: &ContractRecord,
        reason: &str,
    ) -> Result<(), ServiceError> {
        let Some(account) = &contract.escrow_account_id else {
            return Ok(());
        };
        let request = escrow_pb::ReleaseToSupplierRequest {
            idempotency_key: format!("contract:{}:release-on-acceptance", contract.contract_id),
            escrow_account_id: account.clone(),
            amount: None,
            reason: reason.into(),
            purpose: Some(escrow_pb::Purpose {
                purpose: Some(escrow_pb::purpose::Purpose::Acceptance(true)),
            }),
        };
        self.outbox
            .call(
                tx,
                &ESCROW_CALLS,
                "ReleaseToSupplier",
                &request,
                completion::MONEY_MOVED,
            )
            .await
    }

    /// Closes the contract's escrow account. With `refund_held` (the
    /// contract cancelled or refunded in full) escrow refunds whatever it
    /// holds in the same step: escrow, not the contract's view of it, knows
    /// what was credited meanwhile.
    pub async fn close_escrow(
        &self,
        tx: &mut PgConnection,
        contract: &ContractRecord,
        reason: &str,
        refund_held: bool,
    ) -> Result<(), ServiceError> {
        self.close_escrow_as(tx, contract, "close-escrow", reason, refund_held)
            .await
    }

    /// [`Flows::close_escrow`] under a key of its own (`step`), for a
    /// close that follows the first one (escrow's hold deadline passed).
    pub async fn close_escrow_as(
        &self,
        tx: &mut PgConnection,
        contract: &ContractRecord,
        step: &str,
        reason: &str,
        refund_held: bool,
    ) -> Result<(), ServiceError> {
        let Some(account) = &contract.escrow_account_id else {
            return Ok(());
        };
        let request = escrow_pb::CloseEscrowAccountRequest {
            idempotency_key: format!("contract:{}:{step}", contract.contract_id),
            escrow_account_id: account.clone(),
            reason: reason.into(),
            refund_held,
        };
        self.outbox
            .call(
                tx,
                &ESCROW_CALLS,
                "CloseEscrowAccount",
                &request,
                completion::ESCROW_CLOSED,
            )
            .await
    }
}

/// Names one activation in its calls' keys: the version both signed and when.
/// A refused activation voids the signatures, so signing again is a new
/// activation whose calls must not be taken for replays of the refused one.
fn activation(contract: &ContractRecord) -> String {
    let signed_at = contract
        .progress
        .signed_at
        .map_or(0, |t| t.unix_timestamp_nanos() / 1_000);
    format!("v{}-{signed_at}", contract.negotiation.signed_version)
}
