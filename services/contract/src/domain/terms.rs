//! The terms both parties sign, validated: every bad field is named at once,
//! and the figures the server owns (line totals, the total, each payment
//! milestone's amount) are computed here, in integer minor units.

use std::collections::HashSet;

use ta_proto::contract as pb;
use ta_runtime::{
    ServiceError, Violations,
    money::{Currency, Money, is_country_code},
    text::require_text,
    timestamps,
};
use time::{Duration, OffsetDateTime, Weekday};

use super::{
    negotiation::Protection,
    quality::{Comparator, Decimal, Requirement},
};

const MAX_LINE_ITEMS: usize = 200;
const MAX_SPECIFICATIONS: usize = 200;
const MAX_CRITERIA: usize = 100;
const BASIS_POINTS_WHOLE: u32 = 10_000;
/// The brief: an inspection is booked at least 7 working days before shipment.
pub const INSPECTION_BOOKING_WORKING_DAYS: u32 = 7;
pub const DEFAULT_CLAIM_WINDOW_DAYS: u32 = 30;
const MAX_CLAIM_WINDOW_DAYS: u32 = 90;
const MAX_PAYMENT_DUE_DAYS: u32 = 365;
/// How far ahead a deadline in the terms may lie, in real days from the
/// moment the terms are written (whatever a term day lasts). The shipment
/// and delivery deadlines decide when escrow may pay the money out (the
/// delivery deadline, then the inspection period and the claim window), so
/// a deadline in the year 9999 would hold the buyer's money and the
/// supplier's cover for ever. Two years covers the longest real production
/// and sea-freight lead times; longer orders are amended when both agree.
pub const DEADLINE_HORIZON_DAYS: i64 = 730;

/// The reason code of a Trade Assurance order in a currency the supplier's
/// TA limit is not in: supplier-registry reserves cover only in the limit's
/// currency, so the order could never be covered.
pub const CURRENCY_NOT_COVERED: &str = "CURRENCY_NOT_COVERED";

#[derive(Clone, Debug, PartialEq)]
pub struct LineItem {
    pub sku: String,
    pub description: String,
    pub quantity: u64,
    pub unit: String,
    pub unit_price: Money,
    pub line_total: Money,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QualityCriterion {
    pub criterion_id: String,
    pub name: String,
    /// Empty: all line items.
    pub sku: String,
    pub metric: String,
    pub method: String,
    pub requirement: Requirement,
    pub unit: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    FullPrepayment,
    DepositAndBalance,
    PayLater,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    AfterSigning,
    BeforeShipmentDeadline,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PaymentMilestone {
    pub milestone_id: String,
    pub share_basis_points: u32,
    pub trigger: Trigger,
    pub due_days: u32,
    pub amount: Money,
    /// The shipment lot whose acceptance releases it (1, 2, ...); 0 with the
    /// final acceptance. See [`super::lots`].
    pub lot: u32,
}

impl PaymentMilestone {
    /// When it is due, for a contract signed at `signed_at`; `day` is how
    /// long one day of the terms lasts (a day, except in tests and demos).
    pub fn due_at(
        &self,
        signed_at: OffsetDateTime,
        shipment_deadline: OffsetDateTime,
        day: Duration,
    ) -> OffsetDateTime {
        let days = day * self.due_days;
        match self.trigger {
            Trigger::AfterSigning => signed_at + days,
            Trigger::BeforeShipmentDeadline => shipment_deadline - days,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PayLater {
    pub financing_partner_id: String,
    pub repayment_months: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Inspection {
    None,
    PreShipmentThirdParty {
        agency_name: String,
        agency_principal_id: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Terms {
    pub protection: Protection,
    pub title: String,
    pub line_items: Vec<LineItem>,
    pub quality_criteria: Vec<QualityCriterion>,
    pub shipment_deadline: OffsetDateTime,
    pub delivery_deadline: OffsetDateTime,
    pub inspection: Inspection,
    pub scheme: Scheme,
    pub milestones: Vec<PaymentMilestone>,
    pub pay_later: Option<PayLater>,
    pub inspection_period_days: u32,
    pub claim_window_days: u32,
    pub total: Money,
}

impl Terms {
    /// Validates `terms` as of `now`, reporting every violation under
    /// `prefix` (e.g. `terms`). `None` when anything was violated.
    ///
    /// `day` is how long one day of the terms lasts: the inspection booking
    /// rule counts working days on the terms' calendar, so a shortened term
    /// day (tests, `make demo`) shortens it as it shortens every other
    /// period. `None` re-reads stored terms: the rule held when they were
    /// written, whatever a day lasts now.
    pub fn validate(
        terms: Option<&pb::ContractTerms>,
        prefix: &str,
        now: OffsetDateTime,
        day: Option<Duration>,
        violations: &mut Violations,
    ) -> Option<Terms> {
        let Some(terms) = terms else {
            violations.add(prefix, "is required");
            return None;
        };
        let field = |name: &str| format!("{prefix}.{name}");
        let before = violations.len();
        let protection = match terms.protection() {
            pb::Protection::TradeAssurance => Some(Protection::TradeAssurance),
            pb::Protection::None => Some(Protection::None),
            pb::Protection::Unspecified => {
                violations.add(
                    field("protection"),
                    "is required: PROTECTION_TRADE_ASSURANCE or PROTECTION_NONE",
                );
                None
            }
        };
        let title = require_text(&field("title"), &terms.title, 200, violations);
        let (line_items, total) = line_items(&terms.line_items, &field("line_items"), violations);
        let skus: HashSet<&str> = line_items.iter().map(|l| l.sku.as_str()).collect();
        specifications(
            &terms.specifications,
            &field("specifications"),
            &skus,
            violations,
        );
        let quality_criteria = criteria(
            &terms.quality_criteria,
            &field("quality_criteria"),
            &skus,
            violations,
        );
        let shipment_deadline = future_time(
            terms.shipment_deadline.as_ref(),
            &field("shipment_deadline"),
            now,
            violations,
        );
        let delivery_deadline = future_time(
            terms.delivery_deadline.as_ref(),
            &field("delivery_deadline"),
            now,
            violations,
        );
        if let (Some(ship), Some(deliver)) = (shipment_deadline, delivery_deadline) {
            violations.require(
                deliver > ship,
                &field("delivery_deadline"),
                "must be after the shipment deadline",
            );
        }
        delivery_terms(
            terms.delivery_terms.as_ref(),
            &field("delivery_terms"),
            violations,
        );
        let inspection = inspection(
            terms.inspection.as_ref(),
            &field("inspection"),
            shipment_deadline.zip(day),
            now,
            violations,
        );
        let payment = payment_terms(
            terms.payment_terms.as_ref(),
            &field("payment_terms"),
            total,
            violations,
        );
        violations.require(
            (1..=30).contains(&terms.inspection_period_days),
            &field("inspection_period_days"),
            "must be 1-30 days",
        );
        let claim_window_days = match terms.claim_window_days {
            0 => DEFAULT_CLAIM_WINDOW_DAYS,
            days => days,
        };
        violations.require(
            claim_window_days <= MAX_CLAIM_WINDOW_DAYS,
            &field("claim_window_days"),
            "must be 1-90 days (0 for the default of 30)",
        );
        if violations.len() != before {
            return None;
        }
        let (scheme, milestones, pay_later) = payment?;
        let parsed = Terms {
            protection: protection?,
            title,
            line_items,
            quality_criteria,
            shipment_deadline: shipment_deadline?,
            delivery_deadline: delivery_deadline?,
            inspection: inspection?,
            scheme,
            milestones,
            pay_later,
            inspection_period_days: terms.inspection_period_days,
            claim_window_days,
            total: total?,
        };
        // Escrow holds money only until it must have been released or
        // refunded; a payment falling due later could never be held. Signed
        // now at the earliest, so an after-signing due date is at least this.
        if let Some(day) = day {
            let hold_until = parsed.hold_until(day);
            for (i, m) in parsed.milestones.iter().enumerate() {
                if m.due_at(now, parsed.shipment_deadline, day) >= hold_until {
                    violations.add(
                        field(&format!("payment_terms.milestones[{i}].due_days")),
                        "falls due after escrow must have paid the money out (the delivery \
                         deadline, then the inspection period and the claim window): \
                         make it due earlier or the deadlines later",
                    );
                }
            }
            if violations.len() != before {
                return None;
            }
        }
        Some(parsed)
    }

    /// Terms as they were stored when a version was written: read back
    /// without today's request rules. Those rules held when the version was
    /// written (it was validated then, against that moment's clock), and a
    /// rule tightened since (a shorter maximum, a new required field) must
    /// not make a signed contract unreadable: its reactions would fail for
    /// ever. The figures the server stamped (line totals, milestone
    /// amounts) are read as stamped; `total` is the version's. Only what no
    /// reaction can do without fails: a deadline, a payment term, a
    /// criterion's comparison that is missing or unreadable.
    ///
    /// # Errors
    /// What is missing or unreadable, for the log (a corrupt row).
    pub fn stored(terms: &pb::ContractTerms, total: Money) -> Result<Terms, String> {
        let currency = total.currency;
        let money = |m: Option<&ta_proto::common::Money>| {
            m.and_then(|m| Currency::parse(&m.currency_code).map(|c| Money::new(m.amount_minor, c)))
        };
        let protection = match terms.protection() {
            pb::Protection::TradeAssurance => Protection::TradeAssurance,
            pb::Protection::None => Protection::None,
            pb::Protection::Unspecified => return Err("no protection".into()),
        };
        let line_items = terms
            .line_items
            .iter()
            .map(|item| {
                let unit_price = money(item.unit_price.as_ref())
                    .ok_or_else(|| format!("line item {} has no unit price", item.sku))?;
                let line_total = money(item.line_total.as_ref()).unwrap_or_else(|| {
                    let quantity = i64::try_from(item.quantity).unwrap_or(i64::MAX);
                    Money::new(
                        quantity.saturating_mul(unit_price.amount_minor),
                        unit_price.currency,
                    )
                });
                Ok(LineItem {
                    sku: item.sku.clone(),
                    description: item.description.clone(),
                    quantity: item.quantity,
                    unit: item.unit.clone(),
                    unit_price,
                    line_total,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let quality_criteria = terms
            .quality_criteria
            .iter()
            .map(|c| {
                let comparator = match c.comparator() {
                    pb::Comparator::AtLeast => Comparator::AtLeast,
                    pb::Comparator::AtMost => Comparator::AtMost,
                    pb::Comparator::Equal => Comparator::Equal,
                    pb::Comparator::WithinTolerance => Comparator::WithinTolerance,
                    pb::Comparator::Unspecified => {
                        return Err(format!("criterion {} has no comparator", c.criterion_id));
                    }
                };
                let target = Decimal::parse(c.target_value.trim())
                    .ok_or_else(|| format!("criterion {} has no target", c.criterion_id))?;
                let tolerance = match comparator {
                    Comparator::WithinTolerance => {
                        Some(Decimal::parse(c.tolerance.trim()).ok_or_else(|| {
                            format!("criterion {} has no tolerance", c.criterion_id)
                        })?)
                    }
                    _ => None,
                };
                Ok(QualityCriterion {
                    criterion_id: c.criterion_id.clone(),
                    name: c.name.clone(),
                    sku: c.sku.clone(),
                    metric: c.metric.clone(),
                    method: c.method.clone(),
                    requirement: Requirement {
                        comparator,
                        target,
                        tolerance,
                    },
                    unit: c.unit.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let deadline = |at: Option<&prost_types::Timestamp>, what: &str| {
            at.and_then(timestamps::from_proto)
                .ok_or_else(|| format!("no {what}"))
        };
        let inspection = match terms
            .inspection
            .as_ref()
            .map(pb::InspectionRequirement::kind)
        {
            Some(pb::InspectionKind::None) => Inspection::None,
            Some(pb::InspectionKind::PreShipmentThirdParty) => {
                let inspection = terms.inspection.as_ref().cloned().unwrap_or_default();
                Inspection::PreShipmentThirdParty {
                    agency_name: inspection.agency_name,
                    agency_principal_id: inspection.agency_principal_id,
                }
            }
            Some(pb::InspectionKind::Unspecified) | None => {
                return Err("no inspection requirement".into());
            }
        };
        let payment = terms.payment_terms.as_ref().ok_or("no payment terms")?;
        let scheme = match payment.scheme() {
            pb::PaymentScheme::FullPrepayment => Scheme::FullPrepayment,
            pb::PaymentScheme::DepositAndBalance => Scheme::DepositAndBalance,
            pb::PaymentScheme::PayLater => Scheme::PayLater,
            pb::PaymentScheme::Unspecified => return Err("no payment scheme".into()),
        };
        let computed = schedule(&payment.milestones, total).ok_or("unreadable milestones")?;
        let milestones = computed
            .into_iter()
            .zip(&payment.milestones)
            .map(|(mut milestone, sent)| {
                if let Some(stamped) =
                    money(sent.amount.as_ref()).filter(|m| m.currency == currency)
                {
                    milestone.amount = stamped;
                }
                milestone
            })
            .collect();
        let pay_later = match (scheme, payment.pay_later.as_ref()) {
            (Scheme::PayLater, Some(p)) => Some(PayLater {
                financing_partner_id: p.financing_partner_id.trim().to_owned(),
                repayment_months: p.repayment_months,
            }),
            _ => None,
        };
        Ok(Terms {
            protection,
            title: terms.title.clone(),
            line_items,
            quality_criteria,
            shipment_deadline: deadline(terms.shipment_deadline.as_ref(), "shipment deadline")?,
            delivery_deadline: deadline(terms.delivery_deadline.as_ref(), "delivery deadline")?,
            inspection,
            scheme,
            milestones,
            pay_later,
            inspection_period_days: terms.inspection_period_days,
            claim_window_days: match terms.claim_window_days {
                0 => DEFAULT_CLAIM_WINDOW_DAYS,
                days => days,
            },
            total,
        })
    }

    /// The latest moment the money can still be claimed: the goods arrive
    /// by the delivery deadline, then the inspection period and the claim
    /// window run. Escrow keeps a deadline timer for it.
    pub fn hold_until(&self, day: Duration) -> OffsetDateTime {
        self.delivery_deadline
            + day * self.inspection_period_days
            + day * self.claim_window_days.max(self.inspection_period_days)
    }

    /// When received goods (the order, or a lot before the final one) count
    /// as accepted: the later of the inspection period and the claim window,
    /// so a claim within the window is payable from escrow.
    pub fn acceptance_after_receipt(
        &self,
        received_at: OffsetDateTime,
        day: Duration,
    ) -> OffsetDateTime {
        received_at + day * self.inspection_period_days.max(self.claim_window_days)
    }

    /// How many lots the terms ship in (N, the final one's number); 0 when
    /// no milestone is tied to a lot. See [`super::lots`].
    pub fn lots(&self) -> u32 {
        self.milestones.iter().map(|m| m.lot).max().unwrap_or(0)
    }

    /// Writes the figures the server owns into the terms as sent: each line
    /// total, each milestone's amount, and the claim window's default.
    pub fn stamp(&self, terms: &mut pb::ContractTerms) {
        for (sent, line) in terms.line_items.iter_mut().zip(&self.line_items) {
            sent.line_total = Some(line.line_total.to_proto());
        }
        if let Some(payment) = terms.payment_terms.as_mut() {
            for (sent, milestone) in payment.milestones.iter_mut().zip(&self.milestones) {
                sent.amount = Some(milestone.amount.to_proto());
            }
        }
        terms.claim_window_days = self.claim_window_days;
    }

    /// Whether the supplier's Trade Assurance limit (its currency, `None`
    /// when the supplier is not enrolled) can cover these terms: a Trade
    /// Assurance order in another currency is refused before it is drafted
    /// ([`CURRENCY_NOT_COVERED`]), not after both parties signed. A supplier
    /// not enrolled yet may still enrol before activation.
    ///
    /// # Errors
    /// `Refused` with [`CURRENCY_NOT_COVERED`] on `suppliers/<id>`.
    pub fn check_cover_currency(
        &self,
        supplier: &str,
        limit: Option<Currency>,
    ) -> Result<(), ServiceError> {
        match limit {
            Some(limit)
                if self.protection == Protection::TradeAssurance
                    && limit != self.total.currency =>
            {
                Err(ServiceError::Refused {
                    reason: CURRENCY_NOT_COVERED,
                    subject: format!("suppliers/{supplier}"),
                    message: format!(
                        "the supplier's Trade Assurance limit is in {limit}: an order in {} \
                         cannot be covered; draft it in {limit} or without Trade Assurance",
                        self.total.currency
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// The agency that must inspect before shipment, if any.
    pub fn inspection_agency(&self) -> &str {
        match &self.inspection {
            Inspection::None => "",
            Inspection::PreShipmentThirdParty {
                agency_principal_id,
                ..
            } => agency_principal_id,
        }
    }

    pub fn criterion(&self, criterion_id: &str) -> Option<&QualityCriterion> {
        self.quality_criteria
            .iter()
            .find(|c| c.criterion_id == criterion_id)
    }
}

/// Supplier-registry's refusal of a cover reservation as the contract records
/// it: a refusal with a reason code (`TA_LIMIT_EXCEEDED: ...`) as given; its
/// invalid-argument answer on the amount's currency (the limit is in another
/// currency, e.g. since the supplier enrolled after the draft was checked)
/// under [`CURRENCY_NOT_COVERED`], so clients act on a code, not on a text.
pub fn cover_refusal_reason(refusal: &str, currency: Currency) -> String {
    if refusal.contains("amount.currency_code") && !refusal.starts_with(CURRENCY_NOT_COVERED) {
        format!(
            "{CURRENCY_NOT_COVERED}: the supplier's Trade Assurance limit is not in {currency}, \
             the order's currency (supplier-registry: {refusal})"
        )
    } else {
        refusal.to_owned()
    }
}

fn is_code(value: &str, max: usize) -> bool {
    (1..=max).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The line items with their totals, and the sum, all in one currency.
fn line_items(
    items: &[pb::LineItem],
    field: &str,
    violations: &mut Violations,
) -> (Vec<LineItem>, Option<Money>) {
    if items.is_empty() || items.len() > MAX_LINE_ITEMS {
        violations.add(field, format!("must list 1-{MAX_LINE_ITEMS} line items"));
    }
    let mut seen = HashSet::new();
    let mut currency: Option<Currency> = None;
    let mut total: Option<i64> = Some(0);
    let mut parsed = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = |name: &str| format!("{field}[{i}].{name}");
        if !is_code(&item.sku, 64) {
            violations.add(at("sku"), "must be 1-64 letters, digits, '-', '_' or '.'");
        } else if !seen.insert(item.sku.as_str()) {
            violations.add(at("sku"), "is used by another line item");
        }
        let description = require_text(&at("description"), &item.description, 500, violations);
        violations.require(item.quantity > 0, &at("quantity"), "must be at least 1");
        let unit = require_text(&at("unit"), &item.unit, 16, violations);
        let Some(unit_price) =
            Money::positive_from_proto(&at("unit_price"), item.unit_price.as_ref(), violations)
        else {
            total = None;
            continue;
        };
        match currency {
            None => currency = Some(unit_price.currency),
            Some(c) if c != unit_price.currency => {
                violations.add(
                    at("unit_price.currency_code"),
                    format!("must be {c}, the currency of the first line item"),
                );
                continue;
            }
            Some(_) => {}
        }
        let line_total = i64::try_from(item.quantity)
            .ok()
            .and_then(|q| q.checked_mul(unit_price.amount_minor));
        let Some(line_total) = line_total else {
            violations.add(
                at("quantity"),
                "times the unit price is too large an amount",
            );
            total = None;
            continue;
        };
        total = total.and_then(|t| t.checked_add(line_total));
        if total.is_none() {
            violations.add(field, "the total is too large an amount");
        }
        parsed.push(LineItem {
            sku: item.sku.clone(),
            description,
            quantity: item.quantity,
            unit,
            unit_price,
            line_total: Money::new(line_total, unit_price.currency),
        });
    }
    let total = match (total, currency) {
        (Some(total), Some(currency)) if total > 0 => Some(Money::new(total, currency)),
        _ => None,
    };
    (parsed, total)
}

fn sku_reference(field: &str, sku: &str, skus: &HashSet<&str>, violations: &mut Violations) {
    violations.require(
        sku.is_empty() || skus.contains(sku),
        field,
        "must be empty (all items) or the sku of a line item",
    );
}

fn specifications(
    specifications: &[pb::ProductSpecification],
    field: &str,
    skus: &HashSet<&str>,
    violations: &mut Violations,
) {
    if specifications.len() > MAX_SPECIFICATIONS {
        violations.add(field, format!("must list at most {MAX_SPECIFICATIONS}"));
    }
    for (i, spec) in specifications.iter().enumerate() {
        let at = |name: &str| format!("{field}[{i}].{name}");
        sku_reference(&at("sku"), &spec.sku, skus, violations);
        require_text(&at("name"), &spec.name, 100, violations);
        require_text(&at("value"), &spec.value, 500, violations);
    }
}

fn criteria(
    criteria: &[pb::QualityCriterion],
    field: &str,
    skus: &HashSet<&str>,
    violations: &mut Violations,
) -> Vec<QualityCriterion> {
    if criteria.len() > MAX_CRITERIA {
        violations.add(field, format!("must list at most {MAX_CRITERIA}"));
    }
    let mut seen = HashSet::new();
    let mut parsed = Vec::new();
    for (i, c) in criteria.iter().enumerate() {
        let at = |name: &str| format!("{field}[{i}].{name}");
        if !is_code(&c.criterion_id, 32) {
            violations.add(
                at("criterion_id"),
                "must be 1-32 letters, digits, '-', '_' or '.'",
            );
        } else if !seen.insert(c.criterion_id.as_str()) {
            violations.add(at("criterion_id"), "is used by another criterion");
        }
        let name = require_text(&at("name"), &c.name, 100, violations);
        sku_reference(&at("sku"), &c.sku, skus, violations);
        let metric = require_text(&at("metric"), &c.metric, 100, violations);
        let method = require_text(&at("method"), &c.method, 500, violations);
        let unit = require_text(&at("unit"), &c.unit, 16, violations);
        let comparator = match c.comparator() {
            pb::Comparator::AtLeast => Some(Comparator::AtLeast),
            pb::Comparator::AtMost => Some(Comparator::AtMost),
            pb::Comparator::Equal => Some(Comparator::Equal),
            pb::Comparator::WithinTolerance => Some(Comparator::WithinTolerance),
            pb::Comparator::Unspecified => {
                violations.add(at("comparator"), "is required");
                None
            }
        };
        let target = Decimal::parse(c.target_value.trim());
        if target.is_none() {
            violations.add(
                at("target_value"),
                "must be a decimal number such as 1.20 (at most 18 digits)",
            );
        }
        let tolerance = if comparator == Some(Comparator::WithinTolerance) {
            let tolerance = Decimal::parse(c.tolerance.trim()).filter(|t| !t.is_negative());
            if tolerance.is_none() {
                violations.add(
                    at("tolerance"),
                    "must be a non-negative decimal number for WITHIN_TOLERANCE",
                );
            }
            tolerance
        } else {
            violations.require(
                c.tolerance.trim().is_empty(),
                &at("tolerance"),
                "is only for COMPARATOR_WITHIN_TOLERANCE",
            );
            None
        };
        if let (Some(comparator), Some(target)) = (comparator, target) {
            parsed.push(QualityCriterion {
                criterion_id: c.criterion_id.clone(),
                name,
                sku: c.sku.clone(),
                metric,
                method,
                requirement: Requirement {
                    comparator,
                    target,
                    tolerance,
                },
                unit,
            });
        }
    }
    parsed
}

fn future_time(
    at: Option<&prost_types::Timestamp>,
    field: &str,
    now: OffsetDateTime,
    violations: &mut Violations,
) -> Option<OffsetDateTime> {
    let Some(at) = at else {
        violations.add(field, "is required");
        return None;
    };
    match timestamps::from_proto(at) {
        Some(at) if at > now + Duration::days(DEADLINE_HORIZON_DAYS) => {
            violations.add(
                field,
                format!("must be within {DEADLINE_HORIZON_DAYS} days from now"),
            );
            None
        }
        Some(at) if at > now => Some(at),
        Some(_) => {
            violations.add(field, "must be in the future");
            None
        }
        None => {
            violations.add(field, "is not a valid time");
            None
        }
    }
}

fn delivery_terms(terms: Option<&pb::DeliveryTerms>, field: &str, violations: &mut Violations) {
    let Some(terms) = terms else {
        violations.add(field, "is required");
        return;
    };
    violations.require(
        terms.incoterm() != pb::Incoterm::Unspecified,
        &format!("{field}.incoterm"),
        "is required: an Incoterms 2020 rule such as INCOTERM_FOB",
    );
    require_text(
        &format!("{field}.named_place"),
        &terms.named_place,
        200,
        violations,
    );
    violations.require(
        is_country_code(&terms.destination_country_code),
        &format!("{field}.destination_country_code"),
        "must be an ISO 3166-1 alpha-2 code such as DE",
    );
}

/// Working days (Monday to Friday) from `from`'s date to `to`'s date, where
/// `to` is first placed on the calendar of a term day lasting `day` (a real
/// day leaves it where it is; a 10 s day puts 10 s later one calendar day on).
fn working_days_between(from: OffsetDateTime, to: OffsetDateTime, day: Duration) -> u32 {
    let to = on_calendar(from, to, day);
    let mut date = from.date();
    let mut count = 0;
    while date < to.date() && count < INSPECTION_BOOKING_WORKING_DAYS {
        date = date.next_day().unwrap_or(date);
        if !matches!(date.weekday(), Weekday::Saturday | Weekday::Sunday) {
            count += 1;
        }
    }
    count
}

/// `to` as it falls on the calendar when one term day lasts `day`: the
/// interval from `from` stretched by a day over `day`. Far-off results are
/// capped (the count above stops at seven working days anyway).
fn on_calendar(from: OffsetDateTime, to: OffsetDateTime, day: Duration) -> OffsetDateTime {
    if day == Duration::DAY || day <= Duration::ZERO {
        return to;
    }
    let stretched = (to - from).whole_nanoseconds() * Duration::DAY.whole_nanoseconds()
        / day.whole_nanoseconds();
    let cap = Duration::days(3_650).whole_nanoseconds();
    let nanos = i64::try_from(stretched.clamp(-cap, cap)).unwrap_or(0);
    from + Duration::nanoseconds(nanos)
}

fn inspection(
    inspection: Option<&pb::InspectionRequirement>,
    field: &str,
    // The deadline and how long a term day lasts; unset for stored terms.
    shipment_deadline: Option<(OffsetDateTime, Duration)>,
    now: OffsetDateTime,
    violations: &mut Violations,
) -> Option<Inspection> {
    let Some(inspection) = inspection else {
        violations.add(field, "is required (INSPECTION_KIND_NONE for none)");
        return None;
    };
    match inspection.kind() {
        pb::InspectionKind::None => {
            violations.require(
                inspection.agency_name.is_empty() && inspection.agency_principal_id.is_empty(),
                &format!("{field}.agency_name"),
                "no agency without an inspection",
            );
            Some(Inspection::None)
        }
        pb::InspectionKind::PreShipmentThirdParty => {
            let agency_name = require_text(
                &format!("{field}.agency_name"),
                &inspection.agency_name,
                100,
                violations,
            );
            let agency_principal_id = require_text(
                &format!("{field}.agency_principal_id"),
                &inspection.agency_principal_id,
                128,
                violations,
            );
            if let Some((deadline, day)) = shipment_deadline {
                violations.require(
                    working_days_between(now, deadline, day) >= INSPECTION_BOOKING_WORKING_DAYS,
                    "terms.shipment_deadline",
                    "must leave at least 7 working days to book the pre-shipment inspection",
                );
            }
            Some(Inspection::PreShipmentThirdParty {
                agency_name,
                agency_principal_id,
            })
        }
        pb::InspectionKind::Unspecified => {
            violations.add(format!("{field}.kind"), "is required");
            None
        }
    }
}

type Payment = (Scheme, Vec<PaymentMilestone>, Option<PayLater>);

fn payment_terms(
    terms: Option<&pb::PaymentTerms>,
    field: &str,
    total: Option<Money>,
    violations: &mut Violations,
) -> Option<Payment> {
    let Some(terms) = terms else {
        violations.add(field, "is required");
        return None;
    };
    let scheme = match terms.scheme() {
        pb::PaymentScheme::FullPrepayment => Some(Scheme::FullPrepayment),
        pb::PaymentScheme::DepositAndBalance => Some(Scheme::DepositAndBalance),
        pb::PaymentScheme::PayLater => Some(Scheme::PayLater),
        pb::PaymentScheme::Unspecified => {
            violations.add(format!("{field}.scheme"), "is required");
            None
        }
    };
    let milestones_field = format!("{field}.milestones");
    let count = terms.milestones.len();
    match scheme {
        Some(Scheme::FullPrepayment | Scheme::PayLater) if count != 1 => {
            violations.add(
                &milestones_field,
                "this scheme has exactly one milestone of 100 %",
            );
        }
        Some(Scheme::DepositAndBalance) if !(2..=10).contains(&count) => {
            violations.add(
                &milestones_field,
                "a deposit and balance needs 2-10 milestones",
            );
        }
        _ => {}
    }
    let mut seen = HashSet::new();
    let mut shares: u32 = 0;
    for (i, m) in terms.milestones.iter().enumerate() {
        let at = |name: &str| format!("{milestones_field}[{i}].{name}");
        if !is_code(&m.milestone_id, 32) {
            violations.add(
                at("milestone_id"),
                "must be 1-32 letters, digits, '-', '_' or '.'",
            );
        } else if !seen.insert(m.milestone_id.as_str()) {
            violations.add(at("milestone_id"), "is used by another milestone");
        }
        violations.require(
            (1..=BASIS_POINTS_WHOLE).contains(&m.share_basis_points),
            &at("share_basis_points"),
            "must be 1-10000 (basis points of the total)",
        );
        shares = shares.saturating_add(m.share_basis_points);
        violations.require(
            m.trigger() != pb::PaymentTrigger::Unspecified,
            &at("trigger"),
            "is required",
        );
        violations.require(
            m.due_days <= MAX_PAYMENT_DUE_DAYS,
            &at("due_days"),
            "must be 0-365",
        );
    }
    violations.require(
        shares == BASIS_POINTS_WHOLE,
        &milestones_field,
        "the shares must sum to 10000 basis points (100 %)",
    );
    let lots: Vec<u32> = terms.milestones.iter().map(|m| m.lot).collect();
    check_lot_terms(&lots, &milestones_field, violations);
    let pay_later = match (scheme, terms.pay_later.as_ref()) {
        (Some(Scheme::PayLater), Some(p)) => {
            let partner = p.financing_partner_id.trim();
            violations.require(
                is_code(partner, 64),
                &format!("{field}.pay_later.financing_partner_id"),
                "must be 1-64 letters, digits, '-', '_' or '.'",
            );
            violations.require(
                (1..=6).contains(&p.repayment_months),
                &format!("{field}.pay_later.repayment_months"),
                "must be 1-6 months",
            );
            Some(PayLater {
                financing_partner_id: partner.to_owned(),
                repayment_months: p.repayment_months,
            })
        }
        (Some(Scheme::PayLater), None) => {
            violations.add(format!("{field}.pay_later"), "is required for Pay Later");
            None
        }
        (_, Some(_)) => {
            violations.add(
                format!("{field}.pay_later"),
                "is only for PAYMENT_SCHEME_PAY_LATER",
            );
            None
        }
        (_, None) => None,
    };
    let scheme = scheme?;
    let total = total?;
    let milestones = schedule(&terms.milestones, total)?;
    for (i, m) in milestones.iter().enumerate() {
        violations.require(
            m.amount.amount_minor > 0,
            &format!("{milestones_field}[{i}].share_basis_points"),
            "is too small a share of this total: its amount rounds to zero",
        );
    }
    Some((scheme, milestones, pay_later))
}

/// At most this many lots (a deposit-and-balance schedule has at most 10
/// milestones).
pub const MAX_LOTS: u32 = 10;

/// Checks the milestones' lots (`lots[i]` of `milestones[i]`) under
/// `field` (`terms.payment_terms.milestones`): each 0..=[`MAX_LOTS`], and
/// the lots named form 1..N without a gap.
pub fn check_lot_terms(lots: &[u32], field: &str, violations: &mut Violations) {
    let mut named = [false; MAX_LOTS as usize + 1];
    for (i, &lot) in lots.iter().enumerate() {
        if lot > MAX_LOTS {
            violations.add(
                format!("{field}[{i}].lot"),
                format!(
                    "must be 0 (released with the final acceptance) or a shipment lot 1-{MAX_LOTS}"
                ),
            );
        } else if let Some(slot) = usize::try_from(lot).ok().and_then(|l| named.get_mut(l)) {
            *slot = true;
        }
    }
    let last = named.iter().rposition(|n| *n).unwrap_or(0);
    let missing: Vec<String> = (1..last)
        .filter(|l| !named[*l])
        .map(|l| l.to_string())
        .collect();
    if !missing.is_empty() {
        violations.add(
            field,
            format!(
                "the lots must be numbered 1..{last} without a gap (lot {last} is the final shipment); no milestone names lot {}",
                missing.join(", ")
            ),
        );
    }
}

/// Each milestone's amount: its share of the total rounded down, the last one
/// taking the remainder, so the amounts sum to the total exactly.
fn schedule(milestones: &[pb::PaymentMilestone], total: Money) -> Option<Vec<PaymentMilestone>> {
    let mut assigned: i64 = 0;
    let last = milestones.len().checked_sub(1)?;
    milestones
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let amount = if i == last {
                total.amount_minor - assigned
            } else {
                let share = i128::from(total.amount_minor) * i128::from(m.share_basis_points)
                    / i128::from(BASIS_POINTS_WHOLE);
                i64::try_from(share).ok()?
            };
            assigned = assigned.checked_add(amount)?;
            let trigger = match m.trigger() {
                pb::PaymentTrigger::AfterSigning => Trigger::AfterSigning,
                pb::PaymentTrigger::BeforeShipmentDeadline => Trigger::BeforeShipmentDeadline,
                pb::PaymentTrigger::Unspecified => return None,
            };
            Some(PaymentMilestone {
                milestone_id: m.milestone_id.clone(),
                share_basis_points: m.share_basis_points,
                trigger,
                due_days: m.due_days,
                amount: Money::new(amount, total.currency),
                lot: m.lot,
            })
        })
        .collect()
}
