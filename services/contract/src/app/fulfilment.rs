//! Fulfilment: the named agency's inspection (its files and its report),
//! the supplier's shipments, the buyer's receipt and acceptance, and the
//! deadlines that decide when nobody acts (shipment due, nothing shipped,
//! acceptance due).

use prost::Message;
use sqlx::PgConnection;
use ta_proto::contract as pb;
use ta_runtime::{
    ServiceError, Violations,
    auth::{Actor, Principal},
    money::{Money, readable},
    timestamps,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    ACCEPTANCE_DUE, ContractFlows, Flows, SHIPMENT_DUE, Step, UNSHIPPED_CANCEL,
    cancellation::cancel, check_can_read, funded_minor, lots, require_party, system,
};
use crate::{
    domain::{
        fulfilment::{check_inspection_results, check_shipment},
        lots::{LotTarget, check_lot_shipment, target},
        negotiation::{Party, Protection},
        quality::Outcome,
        status::{Action, Status},
    },
    effects,
    storage::{
        contracts::{ContractRecord, current_version, get_contract, lock_contract},
        fulfilment::{
            NewShipment, ReportRecord, accept_remaining_lots, insert_report, insert_shipment,
            latest_report, shipments,
        },
        payments::payments,
        versions::load_terms,
    },
    views::readable_time,
};

/// An inspection report as the agency files it.
pub struct Inspect {
    pub contract_id: Uuid,
    pub agency_reference: String,
    pub inspected_at: OffsetDateTime,
    pub results: Vec<pb::CriterionResult>,
    pub summary: String,
}

/// A shipment (or, for a receipt, when the goods arrived: `shipped_at`).
pub struct Ship {
    pub contract_id: Uuid,
    pub carrier: String,
    pub tracking_number: String,
    pub shipped_at: OffsetDateTime,
    pub r#final: bool,
    /// The lot the request names (0: whichever is next).
    pub lot: u32,
}

/// When the buyer received the goods (`lot`: a lot before the final one,
/// 0 for the final shipment).
#[derive(Clone, Copy)]
pub struct Receipt {
    pub contract_id: Uuid,
    pub received_at: OffsetDateTime,
    pub lot: u32,
}

/// The buyer accepts the goods: the whole order (`lot` 0, or the final
/// lot), or a lot before the final one; a note is optional.
pub struct Accept {
    pub contract_id: Uuid,
    pub lot: u32,
    pub note: String,
}

/// The states in which goods have not shipped yet but the contract is signed.
pub fn before_shipment(status: Status) -> bool {
    matches!(
        status,
        Status::AwaitingPayment
            | Status::PartiallyFunded
            | Status::Funded
            | Status::SignedUnprotected
    )
}

/// An inspection file about to be uploaded: the contract, its size and hash.
pub struct InspectionFile {
    pub contract_id: Uuid,
    pub size: u64,
    pub sha256_hex: String,
}

/// The file an upload's metadata (its first message) announces: a
/// contract, and a size, media type and hash the store takes.
pub fn inspection_file(
    meta: Option<&pb::InspectionFileMetadata>,
    store: &ta_objects::Store,
) -> Result<InspectionFile, ServiceError> {
    let Some(meta) = meta else {
        return Err(ServiceError::invalid(
            "metadata",
            "the first message carries the file's metadata",
        ));
    };
    let mut v = Violations::new();
    let contract_id = Uuid::parse_str(meta.contract_id.trim()).ok();
    if contract_id.is_none() {
        v.add("metadata.contract_id", "must be a contract id (a UUID)");
    }
    let kind = ta_objects::Kind::InspectionReport;
    let content_type = meta.content_type.trim().to_ascii_lowercase();
    if !kind.content_types().contains(&content_type.as_str()) {
        v.add(
            "metadata.content_type",
            format!(
                "an inspection report's file is one of {}",
                kind.content_types().join(", ")
            ),
        );
    }
    let max = store.limits.max_bytes(kind);
    if meta.size_bytes == 0 || meta.size_bytes > max {
        v.add(
            "metadata.size_bytes",
            format!("must be 1 to {max} bytes for an inspection report's file"),
        );
    }
    if !ta_objects::is_sha256_hex(&meta.sha256_hex) {
        v.add(
            "metadata.sha256_hex",
            "must be the file's SHA-256 in 64 lower-case hex digits",
        );
    }
    match contract_id {
        Some(contract_id) if v.is_empty() => Ok(InspectionFile {
            contract_id,
            size: meta.size_bytes,
            sha256_hex: meta.sha256_hex.clone(),
        }),
        _ => Err(v.into_error()),
    }
}

/// Only the agency the signed terms name, and only between signing and
/// shipment, uploads an inspection file for a contract; another agency is
/// told the contract does not exist.
pub async fn check_inspection_upload(
    conn: &mut PgConnection,
    principal: &Principal,
    contract_id: Uuid,
) -> Result<(), ServiceError> {
    let contract = get_contract(conn, contract_id).await?;
    check_can_read(principal, &contract)?;
    if contract.progress.inspection_agency.is_empty()
        || contract.progress.inspection_agency != principal.subject
    {
        return Err(ServiceError::PermissionDenied(
            "only the inspection agency named in the signed terms uploads this contract's inspection files"
                .into(),
        ));
    }
    if !before_shipment(contract.negotiation.status) {
        return Err(ServiceError::FailedPrecondition(format!(
            "the contract is {}: inspection files are uploaded between signing and shipment",
            contract.negotiation.status.as_str()
        )));
    }
    Ok(())
}

/// Every file a report's results name is in the store: a report cannot
/// point at evidence nobody can download.
async fn check_report_files(
    store: Option<&ta_objects::Store>,
    results: &[pb::CriterionResult],
) -> Result<(), ServiceError> {
    let mut v = Violations::new();
    for (i, result) in results.iter().enumerate() {
        for (j, reference) in result.evidence_sha256.iter().enumerate() {
            let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
            let stored = match store {
                Some(store) => store.contains(hex).await?,
                None => false,
            };
            if !stored {
                v.add(
                    format!("results[{i}].evidence_sha256[{j}]"),
                    "no file with this SHA-256 is stored: upload it with UploadInspectionFile first",
                );
            }
        }
    }
    v.finish(())
}

/// The named agency files its report between signing and shipment (another
/// agency is told the contract does not exist); a failed criterion holds the
/// shipment until a passing re-inspection.
pub async fn submit_inspection_report(
    tx: &mut PgConnection,
    flows: &Flows,
    store: Option<&ta_objects::Store>,
    principal: &Principal,
    cmd: &Inspect,
    now: OffsetDateTime,
) -> Result<(pb::InspectionReport, pb::Contract), ServiceError> {
    let mut contract = lock_contract(tx, cmd.contract_id).await?;
    check_can_read(principal, &contract)?;
    if contract.progress.inspection_agency.is_empty()
        || contract.progress.inspection_agency != principal.subject
    {
        return Err(ServiceError::PermissionDenied(
            "only the inspection agency named in the signed terms reports on this contract".into(),
        ));
    }
    if !before_shipment(contract.negotiation.status) {
        return Err(ServiceError::FailedPrecondition(format!(
            "the contract is {}: inspection reports are filed between signing and shipment",
            contract.negotiation.status.as_str()
        )));
    }
    check_report_files(store, &cmd.results).await?;
    let version = contract.negotiation.signed_version;
    let loaded = load_terms(tx, cmd.contract_id, version).await?;
    let mut v = Violations::new();
    let checked = check_inspection_results(&cmd.results, &loaded.terms, &mut v);
    let checked = v.finish_some("results", checked)?;
    let report_id = Uuid::now_v7();
    let report = pb::InspectionReport {
        report_id: report_id.to_string(),
        contract_id: cmd.contract_id.to_string(),
        contract_version: version,
        agency_reference: cmd.agency_reference.clone(),
        inspected_at: Some(timestamps::to_proto(cmd.inspected_at)),
        results: cmd.results.clone(),
        passed: checked.passed,
        summary: cmd.summary.clone(),
        submitted_by: Some(Actor::of(principal).to_proto()),
        submitted_at: Some(timestamps::to_proto(now)),
    };
    insert_report(
        tx,
        cmd.contract_id,
        &ReportRecord {
            report_id,
            contract_version: version,
            report: report.encode_to_vec(),
            passed: checked.passed,
            submitted_at: now,
        },
    )
    .await?;
    let failed: Vec<&str> = checked
        .results
        .iter()
        .filter(|r| r.outcome == Outcome::Fail)
        .map(|r| r.criterion_id.as_str())
        .collect();
    let detail = if checked.passed {
        format!(
            "inspection report {} by {}: passed every criterion; the goods may ship",
            cmd.agency_reference, principal.subject
        )
    } else {
        format!(
            "inspection report {} by {}: FAILED {}; shipment waits for a passing re-inspection",
            cmd.agency_reference,
            principal.subject,
            failed.join(", ")
        )
    };
    let view = flows
        .record(
            tx,
            &mut contract,
            &Actor::of(principal),
            Step::new(
                pb::ContractEventType::InspectionReported,
                "inspection.reported",
                detail,
            ),
            now,
        )
        .await?;
    Ok((report, view))
}

/// The supplier ships (in parts; the final one starts the acceptance
/// deadline), checked against the shipment deadline in force and the
/// inspection the terms require.
pub async fn record_shipment(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Ship,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let mut contract = lock_contract(tx, cmd.contract_id).await?;
    require_party(principal, &contract, Party::Supplier)?;
    let next = contract.negotiation.status.next(Action::Ship)?;
    let mut loaded = load_terms(tx, cmd.contract_id, contract.negotiation.signed_version).await?;
    if let Some(deadline) = contract.progress.shipment_deadline {
        loaded.terms.shipment_deadline = deadline;
    }
    let recorded = shipments(tx, cmd.contract_id).await?.len();
    let next_lot = u32::try_from(recorded)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    let lots = loaded.terms.lots();
    check_lot_shipment(lots, next_lot, cmd.lot, cmd.r#final)?;
    let latest = latest_report(tx, cmd.contract_id).await?;
    let late = check_shipment(&loaded.terms, latest.map(|r| r.passed), cmd.shipped_at)?;
    let lot = insert_shipment(
        tx,
        cmd.contract_id,
        &NewShipment {
            carrier: cmd.carrier.clone(),
            tracking_number: cmd.tracking_number.clone(),
            shipped_at: cmd.shipped_at,
            late,
            r#final: cmd.r#final,
        },
    )
    .await?;
    let lateness = if late {
        " LATE (after the shipment deadline)"
    } else {
        ""
    };
    let which = if lots == 0 {
        String::new()
    } else {
        format!("lot {lot} of {lots} ")
    };
    let detail = if cmd.r#final {
        contract.negotiation.status = next;
        flows
            .timers
            .cancel(tx, SHIPMENT_DUE, &cmd.contract_id.to_string())
            .await?;
        let due = loaded.terms.delivery_deadline
            + flows.settings.day * loaded.terms.inspection_period_days;
        contract.progress.acceptance_due_at = Some(due);
        flows
            .schedule_at(tx, ACCEPTANCE_DUE, cmd.contract_id, due, now)
            .await?;
        format!(
            "{which}shipped{lateness} with {} ({}); the goods must arrive by {}",
            cmd.carrier,
            cmd.tracking_number,
            readable_time(loaded.terms.delivery_deadline)
        )
    } else if lots == 0 {
        format!(
            "part shipment{lateness} with {} ({}); more follow",
            cmd.carrier, cmd.tracking_number
        )
    } else {
        format!(
            "{which}shipped{lateness} with {} ({}); its acceptance releases the milestones the terms tie to it",
            cmd.carrier, cmd.tracking_number
        )
    };
    flows
        .record(
            tx,
            &mut contract,
            &Actor::of(principal),
            Step::new(pb::ContractEventType::Shipped, "goods.shipped", detail),
            now,
        )
        .await
}

/// The buyer confirms receipt at `received_at`: the claim window runs from
/// it, and the goods count as accepted at its end unless claimed.
pub async fn confirm_receipt(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Receipt,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let Receipt {
        contract_id,
        received_at,
        lot,
    } = *cmd;
    let mut contract = lock_contract(tx, contract_id).await?;
    require_party(principal, &contract, Party::Buyer)?;
    let loaded = load_terms(tx, contract_id, contract.negotiation.signed_version).await?;
    if let LotTarget::Lot(lot) = target(loaded.terms.lots(), lot)? {
        let actor = Actor::of(principal);
        let on = lots::OnLot {
            terms: &loaded.terms,
            actor: &actor,
            lot,
            now,
        };
        return lots::receive_lot(tx, flows, &mut contract, &on, received_at).await;
    }
    contract.negotiation.status = contract.negotiation.status.next(Action::ConfirmReceipt)?;
    let shipped_at = shipments(tx, contract_id)
        .await?
        .into_iter()
        .find(|s| s.r#final)
        .map(|s| s.shipped_at);
    if shipped_at.is_some_and(|s| received_at < s) {
        return Err(ServiceError::invalid(
            "received_at",
            "must not be before the shipment",
        ));
    }
    let day = flows.settings.day;
    let due = loaded.terms.acceptance_after_receipt(received_at, day);
    contract.progress.received_at = Some(received_at);
    contract.progress.acceptance_due_at = Some(due);
    flows
        .schedule_at(tx, ACCEPTANCE_DUE, contract_id, due, now)
        .await?;
    let window_ends = received_at + day * loaded.terms.claim_window_days;
    flows
        .record(
            tx,
            &mut contract,
            &Actor::of(principal),
            Step::new(
                pb::ContractEventType::ReceiptConfirmed,
                "goods.received",
                format!(
                    "the buyer confirmed receipt; claims about the goods are possible until {}, and the goods count as accepted at {} unless claimed",
                    readable_time(window_ends),
                    readable_time(due)
                ),
            ),
            now,
        )
        .await
}

/// The buyer accepts the goods explicitly: the whole order, or a lot
/// before the final one (its milestones released, the contract goes on).
pub async fn accept_goods(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Accept,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let mut contract = lock_contract(tx, cmd.contract_id).await?;
    require_party(principal, &contract, Party::Buyer)?;
    let actor = Actor::of(principal);
    let loaded = load_terms(tx, cmd.contract_id, contract.negotiation.signed_version).await?;
    if let LotTarget::Lot(lot) = target(loaded.terms.lots(), cmd.lot)? {
        let on = lots::OnLot {
            terms: &loaded.terms,
            actor: &actor,
            lot,
            now,
        };
        return lots::accept_lot(tx, flows, &mut contract, &on, "explicit", &cmd.note).await;
    }
    accept(tx, flows, &mut contract, &actor, "explicit", &cmd.note, now).await
}

/// The goods are accepted (explicitly, automatically, or by a claim's
/// outcome): the money held goes to the supplier (what lots accepted before
/// released is gone already; the release takes whatever escrow still
/// holds), the lots not accepted on their own are accepted with it, the
/// cover is freed, and the completed contract lets the buyer review.
pub async fn accept(
    tx: &mut PgConnection,
    flows: &Flows,
    contract: &mut ContractRecord,
    actor: &Actor,
    kind: &'static str,
    note: &str,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    contract.negotiation.status = contract.negotiation.status.next(Action::Accept)?;
    contract.progress.accepted_at = Some(now);
    contract.progress.acceptance = Some(kind.into());
    if contract.progress.received_at.is_none() {
        contract.progress.received_at = Some(now);
    }
    flows.cancel_timers(tx, contract.contract_id).await?;
    let payments = payments(tx, contract.contract_id).await?;
    let lot_shipments = shipments(tx, contract.contract_id).await?;
    let by_lots = lots::released_by_lots(&lot_shipments)?;
    let held = Money::new(
        funded_minor(&payments)?.saturating_sub(by_lots).max(0),
        contract.total.currency,
    );
    accept_remaining_lots(tx, contract.contract_id, kind, false, now).await?;
    let protected = contract.negotiation.protection == Protection::TradeAssurance;
    if protected {
        flows
            .outbox
            .write(tx, effects::release_all(contract, "goods accepted"))
            .await?;
        flows
            .outbox
            .write(tx, effects::release_cover(contract))
            .await?;
    }
    flows
        .outbox
        .write(tx, effects::record_completed(contract))
        .await?;
    let how = match kind {
        "automatic" => {
            "accepted automatically: the inspection period and claim window lapsed without a claim"
        }
        _ => "the buyer accepted the goods",
    };
    let note = if note.is_empty() {
        String::new()
    } else {
        format!(" (\"{note}\")")
    };
    let detail = if protected && by_lots > 0 {
        format!(
            "{how}{note}; {} released to the supplier ({} released earlier with accepted lots), cover freed, completed",
            readable(held),
            readable(Money::new(by_lots, contract.total.currency))
        )
    } else if protected {
        format!(
            "{how}{note}; {} released to the supplier, cover freed, completed",
            readable(held)
        )
    } else {
        format!("{how}{note}; completed")
    };
    flows
        .record(
            tx,
            contract,
            actor,
            Step {
                event: pb::ContractEventType::Accepted,
                action: "goods.accepted",
                detail,
                money: protected.then_some(held),
            },
            now,
        )
        .await
}

/// The shipment deadline passed: an unshipped contract is marked late (the
/// buyer may now cancel with a full refund, or claim).
pub async fn shipment_due(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = lock_contract(tx, contract_id).await?;
    if !matches!(
        contract.negotiation.status,
        Status::AwaitingPayment
            | Status::PartiallyFunded
            | Status::Funded
            | Status::SignedUnprotected
    ) || contract.progress.shipment_overdue
    {
        return Ok(());
    }
    contract.progress.shipment_overdue = true;
    let protected = contract.negotiation.protection == Protection::TradeAssurance;
    let detail = if protected {
        let loaded = load_terms(tx, contract_id, current_version(&contract)).await?;
        let give_up = now + flows.settings.day * loaded.terms.claim_window_days;
        flows
            .schedule_at(tx, UNSHIPPED_CANCEL, contract_id, give_up, now)
            .await?;
        format!(
            "the shipment deadline passed unshipped: late; the buyer may cancel with a full refund or claim; unless the goods ship by {}, the contract is cancelled and the buyer refunded",
            readable_time(give_up)
        )
    } else {
        "the shipment deadline passed unshipped: late".to_owned()
    };
    flows
        .record(
            tx,
            &mut contract,
            &system(),
            Step::new(
                pb::ContractEventType::DeadlinePassed,
                "deadline.shipment_passed",
                detail,
            ),
            now,
        )
        .await?;
    Ok(())
}

/// A claim window after the shipment deadline, the goods still have not
/// shipped: the order is given up, the buyer refunded.
pub async fn unshipped_cancel(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = lock_contract(tx, contract_id).await?;
    if !matches!(
        contract.negotiation.status,
        Status::AwaitingPayment | Status::PartiallyFunded | Status::Funded
    ) || !contract.progress.shipment_overdue
    {
        return Ok(());
    }
    cancel(
        tx,
        flows,
        &mut contract,
        &system(),
        "nothing shipped within the claim window after the shipment deadline",
        now,
    )
    .await?;
    Ok(())
}

/// The acceptance deadline passed without a claim.
pub async fn acceptance_due(
    tx: &mut PgConnection,
    flows: &Flows,
    contract_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let mut contract = lock_contract(tx, contract_id).await?;
    if !matches!(
        contract.negotiation.status,
        Status::Shipped | Status::Delivered
    ) {
        return Ok(());
    }
    accept(tx, flows, &mut contract, &system(), "automatic", "", now).await?;
    Ok(())
}
