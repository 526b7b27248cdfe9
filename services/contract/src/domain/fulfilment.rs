//! Fulfilment rules: the inspection report, the shipment, and whether a claim
//! may open. Pure: the caller passes the contract's facts and the time.

use std::collections::HashSet;

use ta_proto::contract as pb;
use ta_runtime::{ServiceError, Violations};
use time::{Duration, OffsetDateTime};

use super::{
    negotiation::Protection,
    quality::{Decimal, Outcome},
    status::Status,
    terms::{Inspection, Terms},
};

/// One criterion's checked result.
#[derive(Clone, Debug, PartialEq)]
pub struct CriterionResult {
    pub criterion_id: String,
    pub outcome: Outcome,
    pub measured: Decimal,
}

/// A report over the signed terms: exactly one result per criterion, each
/// stated outcome agreeing with what its measurement implies.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedReport {
    pub results: Vec<CriterionResult>,
    pub passed: bool,
}

pub fn check_inspection_results(
    results: &[pb::CriterionResult],
    terms: &Terms,
    violations: &mut Violations,
) -> Option<CheckedReport> {
    let before = violations.len();
    let mut seen = HashSet::new();
    let mut checked = Vec::new();
    for (i, result) in results.iter().enumerate() {
        let at = |name: &str| format!("results[{i}].{name}");
        let Some(criterion) = terms.criterion(&result.criterion_id) else {
            violations.add(
                at("criterion_id"),
                "is not a quality criterion of the signed version",
            );
            continue;
        };
        if !seen.insert(result.criterion_id.as_str()) {
            violations.add(at("criterion_id"), "has another result in this report");
            continue;
        }
        let stated = match result.outcome() {
            pb::CriterionOutcome::Pass => Outcome::Pass,
            pb::CriterionOutcome::Fail => Outcome::Fail,
            pb::CriterionOutcome::Unspecified => {
                violations.add(at("outcome"), "is required");
                continue;
            }
        };
        let Some(measured) = Decimal::parse(result.measured_value.trim()) else {
            violations.add(
                at("measured_value"),
                "must be a decimal number such as 1.20",
            );
            continue;
        };
        let implied = criterion.requirement.judge(measured);
        if implied != stated {
            violations.add(
                at("outcome"),
                format!(
                    "contradicts the measurement: {} {} is a {} of {}",
                    result.measured_value.trim(),
                    criterion.unit,
                    if implied == Outcome::Pass {
                        "pass"
                    } else {
                        "fail"
                    },
                    criterion.criterion_id
                ),
            );
            continue;
        }
        checked.push(CriterionResult {
            criterion_id: result.criterion_id.clone(),
            outcome: stated,
            measured,
        });
    }
    let missing: Vec<&str> = terms
        .quality_criteria
        .iter()
        .map(|c| c.criterion_id.as_str())
        .filter(|id| !seen.contains(id))
        .collect();
    if !missing.is_empty() {
        violations.add(
            "results",
            format!(
                "needs one result per criterion; missing: {}",
                missing.join(", ")
            ),
        );
    }
    if violations.len() != before {
        return None;
    }
    let passed = checked.iter().all(|r| r.outcome == Outcome::Pass);
    Some(CheckedReport {
        results: checked,
        passed,
    })
}

/// May the goods ship now? When the terms require a pre-shipment inspection,
/// only after a report that passed every criterion. Returns whether the
/// shipment is late.
pub fn check_shipment(
    terms: &Terms,
    latest_report_passed: Option<bool>,
    shipped_at: OffsetDateTime,
) -> Result<bool, ServiceError> {
    if matches!(terms.inspection, Inspection::PreShipmentThirdParty { .. }) {
        match latest_report_passed {
            Some(true) => {}
            Some(false) => {
                return Err(ServiceError::Refused {
                    reason: "INSPECTION_FAILED",
                    subject: "inspection".into(),
                    message: "the latest inspection report failed; the goods may ship after a passing re-inspection".into(),
                });
            }
            None => {
                return Err(ServiceError::Refused {
                    reason: "INSPECTION_REQUIRED",
                    subject: "inspection".into(),
                    message: "a pre-shipment inspection is required and no report is in yet".into(),
                });
            }
        }
    }
    Ok(shipped_at > terms.shipment_deadline)
}

/// Why a buyer claims, as dispute reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimReason {
    LateShipment,
    NotReceived,
    QualityMismatch,
    Damaged,
    ShortQuantity,
    Other,
}

impl ClaimReason {
    /// As a timeline reads it.
    pub fn label(self) -> &'static str {
        match self {
            Self::LateShipment => "late shipment",
            Self::NotReceived => "not received",
            Self::QualityMismatch => "quality below the contract",
            Self::Damaged => "damaged",
            Self::ShortQuantity => "short quantity",
            Self::Other => "other",
        }
    }
}

/// What the contract knows when dispute asks to open a claim.
#[derive(Clone, Debug)]
pub struct ClaimFacts<'a> {
    pub protection: Protection,
    pub status: Status,
    pub open_claim_id: Option<&'a str>,
    pub terms: &'a Terms,
    pub shipped_at: Option<OffsetDateTime>,
    /// The final shipment's receipt, or before it the latest receipt of a
    /// lot not accepted yet (a goods claim about that lot).
    pub received_at: Option<OffsetDateTime>,
    /// A lot whose release escrow has not answered yet.
    pub lot_release_pending: Option<u32>,
    /// How long one day of the terms lasts (a day, except in tests and demos).
    pub day: Duration,
}

fn refused(reason: &'static str, message: String) -> ServiceError {
    ServiceError::Refused {
        reason,
        subject: "claim".into(),
        message,
    }
}

/// Decides whether a claim opens: Trade Assurance only, money held, one open
/// claim at a time; goods claims (quality, damage, quantity, other) only after
/// receipt and within the claim window; a late-shipment claim only once the
/// shipment deadline passed (shipped late or not at all); a non-delivery claim
/// only once the delivery deadline passed without receipt; none while a
/// lot's release is on its way to escrow.
pub fn check_claim(
    facts: &ClaimFacts<'_>,
    reason: ClaimReason,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    if facts.protection != Protection::TradeAssurance {
        return Err(refused(
            "NOT_PROTECTED",
            "the order is not under Trade Assurance: it has no escrow and no claims".into(),
        ));
    }
    if let Some(open) = facts.open_claim_id {
        return Err(refused(
            "CLAIM_ALREADY_OPEN",
            format!("claim {open} is already open on this contract"),
        ));
    }
    if let Some(lot) = facts.lot_release_pending {
        return Err(refused(
            super::lots::LOT_RELEASE_PENDING,
            format!(
                "lot {lot} was accepted and escrow is releasing its milestones: file the claim again once the release went through, against what escrow then holds"
            ),
        ));
    }
    if !facts.status.holds_money() {
        return Err(refused(
            "NOTHING_HELD",
            format!(
                "the contract is {}: no money is held in escrow to claim",
                facts.status.as_str()
            ),
        ));
    }
    let terms = facts.terms;
    match reason {
        ClaimReason::LateShipment => {
            let late = match facts.shipped_at {
                Some(shipped) => shipped > terms.shipment_deadline,
                None => now > terms.shipment_deadline,
            };
            if !late {
                return Err(refused(
                    "NOT_LATE",
                    "the goods shipped, or may still ship, by the shipment deadline".into(),
                ));
            }
        }
        ClaimReason::NotReceived => {
            if facts.received_at.is_some() || now <= terms.delivery_deadline {
                return Err(refused(
                    "DELIVERY_NOT_OVERDUE",
                    "a non-delivery claim opens once the delivery deadline passed without receipt"
                        .into(),
                ));
            }
        }
        ClaimReason::QualityMismatch
        | ClaimReason::Damaged
        | ClaimReason::ShortQuantity
        | ClaimReason::Other => {
            let Some(received) = facts.received_at else {
                return Err(refused(
                    "NOT_RECEIVED_YET",
                    "claims about the goods open after the buyer confirmed receipt".into(),
                ));
            };
            let window_ends = received + facts.day * terms.claim_window_days;
            if now > window_ends {
                return Err(refused(
                    "CLAIM_WINDOW_CLOSED",
                    format!(
                        "the claim window of {} days after receipt has closed",
                        terms.claim_window_days
                    ),
                ));
            }
        }
    }
    Ok(())
}
