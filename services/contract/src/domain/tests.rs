//! The terms' validation and computed figures.

use ta_proto::{common, contract as pb};
use ta_runtime::{Violations, timestamps};
use time::{Duration, OffsetDateTime, macros::datetime};

use super::{
    quality::Outcome,
    terms::{Inspection, Scheme, Terms, Trigger},
};

/// A Monday.
const NOW: OffsetDateTime = datetime!(2026-11-30 09:00 UTC);

fn usd(amount_minor: i64) -> Option<common::Money> {
    Some(common::Money {
        currency_code: "USD".into(),
        amount_minor,
    })
}

fn at(offset: Duration) -> Option<prost_types::Timestamp> {
    Some(timestamps::to_proto(NOW + offset))
}

fn milestone(
    id: &str,
    share: u32,
    trigger: pb::PaymentTrigger,
    due_days: u32,
) -> pb::PaymentMilestone {
    pb::PaymentMilestone {
        milestone_id: id.into(),
        share_basis_points: share,
        trigger: trigger.into(),
        due_days,
        amount: None,
        lot: 0,
    }
}

/// 1,000 mugs at 3.33 USD and 7 cartons at 12.50 USD, 30 % deposit.
fn terms() -> pb::ContractTerms {
    pb::ContractTerms {
        title: "Ceramic mugs, spring collection".into(),
        line_items: vec![
            pb::LineItem {
                sku: "MUG-350".into(),
                description: "350 ml stoneware mug".into(),
                quantity: 1_000,
                unit: "pcs".into(),
                unit_price: usd(333),
                line_total: None,
            },
            pb::LineItem {
                sku: "BOX-24".into(),
                description: "Shipping carton for 24 mugs".into(),
                quantity: 7,
                unit: "carton".into(),
                unit_price: usd(1_250),
                line_total: None,
            },
        ],
        specifications: vec![pb::ProductSpecification {
            sku: "MUG-350".into(),
            name: "glaze".into(),
            value: "lead-free, food safe".into(),
        }],
        quality_criteria: vec![pb::QualityCriterion {
            criterion_id: "QC-1".into(),
            name: "Wall thickness".into(),
            sku: "MUG-350".into(),
            metric: "wall thickness".into(),
            method: "micrometer, 5 points, ISO 2859-1 AQL 2.5".into(),
            comparator: pb::Comparator::WithinTolerance.into(),
            target_value: "4.0".into(),
            tolerance: "0.3".into(),
            unit: "mm".into(),
        }],
        shipment_deadline: at(Duration::days(30)),
        delivery_deadline: at(Duration::days(60)),
        delivery_terms: Some(pb::DeliveryTerms {
            incoterm: pb::Incoterm::Fob.into(),
            named_place: "Shanghai port".into(),
            destination_country_code: "DE".into(),
        }),
        inspection: Some(pb::InspectionRequirement {
            kind: pb::InspectionKind::PreShipmentThirdParty.into(),
            agency_name: "SGS".into(),
            agency_principal_id: "agency-sgs".into(),
        }),
        payment_terms: Some(pb::PaymentTerms {
            scheme: pb::PaymentScheme::DepositAndBalance.into(),
            milestones: vec![
                milestone("deposit", 3_000, pb::PaymentTrigger::AfterSigning, 3),
                milestone(
                    "balance",
                    7_000,
                    pb::PaymentTrigger::BeforeShipmentDeadline,
                    5,
                ),
            ],
            pay_later: None,
        }),
        inspection_period_days: 7,
        claim_window_days: 0,
        protection: pb::Protection::TradeAssurance.into(),
    }
}

fn validate(terms: &pb::ContractTerms) -> Result<Terms, String> {
    let mut violations = Violations::new();
    let parsed = Terms::validate(
        Some(terms),
        "terms",
        NOW,
        Some(Duration::DAY),
        &mut violations,
    );
    match (parsed, violations.finish(())) {
        (Some(parsed), Ok(())) => Ok(parsed),
        (None, Err(error)) => Err(error.to_string()),
        (parsed, result) => panic!("validation disagrees with itself: {parsed:?} {result:?}"),
    }
}

#[test]
fn valid_terms_get_their_totals_and_schedule_computed() {
    let terms = validate(&terms()).expect("valid");
    assert_eq!(terms.line_items[0].line_total.amount_minor, 333_000);
    assert_eq!(terms.line_items[1].line_total.amount_minor, 8_750);
    assert_eq!(terms.total.amount_minor, 341_750);
    assert_eq!(terms.total.currency.as_str(), "USD");
    assert_eq!(terms.scheme, Scheme::DepositAndBalance);
    // 30 % rounded down; the balance takes the remainder, so they sum exactly.
    let amounts: Vec<i64> = terms
        .milestones
        .iter()
        .map(|m| m.amount.amount_minor)
        .collect();
    assert_eq!(amounts, [102_525, 239_225]);
    assert_eq!(amounts.iter().sum::<i64>(), terms.total.amount_minor);
    assert_eq!(terms.claim_window_days, 30, "0 means the default");
    assert!(matches!(
        terms.inspection,
        Inspection::PreShipmentThirdParty { .. }
    ));
    let balance = &terms.milestones[1];
    assert_eq!(balance.trigger, Trigger::BeforeShipmentDeadline);
    assert_eq!(
        balance.due_at(NOW, terms.shipment_deadline, Duration::days(1)),
        terms.shipment_deadline - Duration::days(5)
    );
    let criterion = terms.criterion("QC-1").expect("criterion");
    let measured = super::quality::Decimal::parse("4.31").unwrap();
    assert_eq!(criterion.requirement.judge(measured), Outcome::Fail);
}

#[test]
fn an_uneven_share_still_sums_to_the_total_exactly() {
    let mut t = terms();
    t.line_items.truncate(1);
    t.line_items[0].quantity = 1;
    t.line_items[0].unit_price = usd(100);
    t.payment_terms.as_mut().unwrap().milestones = vec![
        milestone("a", 3_333, pb::PaymentTrigger::AfterSigning, 1),
        milestone("b", 3_333, pb::PaymentTrigger::AfterSigning, 2),
        milestone("c", 3_334, pb::PaymentTrigger::BeforeShipmentDeadline, 1),
    ];
    let terms = validate(&t).expect("valid");
    let amounts: Vec<i64> = terms
        .milestones
        .iter()
        .map(|m| m.amount.amount_minor)
        .collect();
    assert_eq!(amounts, [33, 33, 34]);
}

#[test]
fn every_bad_field_is_named_at_once() {
    let mut t = terms();
    t.title = " ".into();
    t.line_items[1].sku = "MUG-350".into();
    t.line_items[1].unit_price = Some(common::Money {
        currency_code: "EUR".into(),
        amount_minor: 100,
    });
    t.line_items[0].quantity = 0;
    t.specifications[0].sku = "NOPE".into();
    t.quality_criteria[0].tolerance = "-1".into();
    t.quality_criteria.push(pb::QualityCriterion {
        criterion_id: "QC-1".into(),
        comparator: pb::Comparator::AtLeast.into(),
        target_value: "1,5".into(),
        tolerance: "0.1".into(),
        ..t.quality_criteria[0].clone()
    });
    t.delivery_deadline = at(Duration::days(10));
    t.delivery_terms = Some(pb::DeliveryTerms {
        incoterm: pb::Incoterm::Unspecified.into(),
        named_place: String::new(),
        destination_country_code: "XX".into(),
    });
    t.payment_terms.as_mut().unwrap().milestones[1].share_basis_points = 6_000;
    t.inspection_period_days = 31;
    t.claim_window_days = 400;
    t.protection = pb::Protection::Unspecified.into();
    let message = validate(&t).unwrap_err();
    for field in [
        "terms.title",
        "terms.line_items[1].sku",
        "terms.line_items[1].unit_price.currency_code",
        "terms.line_items[0].quantity",
        "terms.specifications[0].sku",
        "terms.quality_criteria[0].tolerance",
        "terms.quality_criteria[1].criterion_id",
        "terms.quality_criteria[1].target_value",
        "terms.quality_criteria[1].tolerance",
        "terms.delivery_deadline",
        "terms.delivery_terms.incoterm",
        "terms.delivery_terms.named_place",
        "terms.delivery_terms.destination_country_code",
        "terms.payment_terms.milestones",
        "terms.inspection_period_days",
        "terms.claim_window_days",
        "terms.protection",
    ] {
        assert!(
            message.contains(&format!("{field}:")),
            "{field} missing from: {message}"
        );
    }
}

#[test]
fn schemes_constrain_their_milestones_and_pay_later_terms() {
    let mut full = terms();
    full.payment_terms.as_mut().unwrap().scheme = pb::PaymentScheme::FullPrepayment.into();
    let message = validate(&full).unwrap_err();
    assert!(message.contains("exactly one milestone"), "{message}");

    let mut pay_later = terms();
    pay_later.payment_terms = Some(pb::PaymentTerms {
        scheme: pb::PaymentScheme::PayLater.into(),
        milestones: vec![milestone(
            "all",
            10_000,
            pb::PaymentTrigger::AfterSigning,
            2,
        )],
        pay_later: None,
    });
    let message = validate(&pay_later).unwrap_err();
    assert!(
        message.contains("terms.payment_terms.pay_later: is required"),
        "{message}"
    );
    pay_later.payment_terms.as_mut().unwrap().pay_later = Some(pb::PayLaterTerms {
        financing_partner_id: "fin-partner-1".into(),
        repayment_months: 7,
    });
    let message = validate(&pay_later).unwrap_err();
    assert!(message.contains("repayment_months"), "{message}");
    pay_later
        .payment_terms
        .as_mut()
        .unwrap()
        .pay_later
        .as_mut()
        .unwrap()
        .repayment_months = 6;
    let parsed = validate(&pay_later).expect("valid pay later");
    assert_eq!(parsed.scheme, Scheme::PayLater);
    assert_eq!(parsed.pay_later.unwrap().repayment_months, 6);

    let mut stray = terms();
    stray.payment_terms.as_mut().unwrap().pay_later = Some(pb::PayLaterTerms {
        financing_partner_id: "fin-partner-1".into(),
        repayment_months: 3,
    });
    assert!(
        validate(&stray)
            .unwrap_err()
            .contains("only for PAYMENT_SCHEME_PAY_LATER")
    );
}

#[test]
fn a_pre_shipment_inspection_needs_seven_working_days() {
    let mut t = terms();
    // Monday to the next Tuesday: 6 working days.
    t.shipment_deadline = at(Duration::days(8));
    t.delivery_deadline = at(Duration::days(20));
    let message = validate(&t).unwrap_err();
    assert!(message.contains("7 working days"), "{message}");
    // To the next Wednesday: 7.
    t.shipment_deadline = at(Duration::days(9));
    validate(&t).expect("seven working days suffice");
    t.shipment_deadline = at(Duration::days(2));
    t.inspection = Some(pb::InspectionRequirement {
        kind: pb::InspectionKind::None.into(),
        agency_name: String::new(),
        agency_principal_id: String::new(),
    });
    validate(&t).expect("no inspection, no booking lead time");
}

#[test]
fn amounts_that_overflow_are_refused_not_wrapped() {
    let mut t = terms();
    t.line_items[0].quantity = u64::MAX;
    let message = validate(&t).unwrap_err();
    assert!(message.contains("too large"), "{message}");
    let mut t = terms();
    t.line_items[0].quantity = 2;
    t.line_items[0].unit_price = usd(i64::MAX / 2 + 1);
    assert!(validate(&t).unwrap_err().contains("too large"));
}

#[test]
fn deadlines_must_lie_ahead() {
    let mut t = terms();
    t.shipment_deadline = at(-Duration::days(1));
    t.delivery_deadline = None;
    let message = validate(&t).unwrap_err();
    assert!(
        message.contains("terms.shipment_deadline: must be in the future"),
        "{message}"
    );
    assert!(
        message.contains("terms.delivery_deadline: is required"),
        "{message}"
    );
    assert!(validate(&pb::ContractTerms::default()).is_err());
    let mut violations = Violations::new();
    assert!(Terms::validate(None, "terms", NOW, Some(Duration::DAY), &mut violations).is_none());
    assert!(!violations.is_empty());
}

mod fulfilment {
    use super::*;
    use crate::domain::{
        fulfilment::{
            ClaimFacts, ClaimReason, check_claim, check_inspection_results, check_shipment,
        },
        negotiation::Protection,
        status::Status,
    };
    use ta_runtime::ServiceError;

    fn result(id: &str, outcome: pb::CriterionOutcome, measured: &str) -> pb::CriterionResult {
        pb::CriterionResult {
            criterion_id: id.into(),
            outcome: outcome.into(),
            measured_value: measured.into(),
            note: String::new(),
            evidence_sha256: vec![],
        }
    }

    fn reason_of(error: ServiceError) -> &'static str {
        match error {
            ServiceError::Refused { reason, .. } => reason,
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn a_report_has_one_result_per_criterion_that_agrees_with_its_measurement() {
        let terms = validate(&terms()).unwrap();
        let mut v = Violations::new();
        let report = check_inspection_results(
            &[result("QC-1", pb::CriterionOutcome::Pass, "4.2")],
            &terms,
            &mut v,
        )
        .expect("valid report");
        assert!(report.passed);
        let failed = check_inspection_results(
            &[result("QC-1", pb::CriterionOutcome::Fail, "4.5")],
            &terms,
            &mut v,
        )
        .expect("valid failing report");
        assert!(!failed.passed);
        assert!(v.is_empty());

        // A pass that its own measurement contradicts, an unknown criterion,
        // a duplicate: all named.
        let mut v = Violations::new();
        let refused = check_inspection_results(
            &[
                result("QC-1", pb::CriterionOutcome::Pass, "4.5"),
                result("QC-9", pb::CriterionOutcome::Pass, "1"),
            ],
            &terms,
            &mut v,
        );
        assert!(refused.is_none());
        let message = v.finish(()).unwrap_err().to_string();
        assert!(
            message.contains("results[0].outcome: contradicts"),
            "{message}"
        );
        assert!(message.contains("results[1].criterion_id"), "{message}");
        let mut v = Violations::new();
        assert!(check_inspection_results(&[], &terms, &mut v).is_none());
        assert!(
            v.finish(())
                .unwrap_err()
                .to_string()
                .contains("missing: QC-1")
        );
    }

    #[test]
    fn shipment_waits_for_a_passing_inspection_and_records_lateness() {
        let terms = validate(&terms()).unwrap();
        let before = terms.shipment_deadline - Duration::days(1);
        let after = terms.shipment_deadline + Duration::hours(1);
        assert_eq!(
            reason_of(check_shipment(&terms, None, before).unwrap_err()),
            "INSPECTION_REQUIRED"
        );
        assert_eq!(
            reason_of(check_shipment(&terms, Some(false), before).unwrap_err()),
            "INSPECTION_FAILED"
        );
        assert!(!check_shipment(&terms, Some(true), before).unwrap());
        assert!(check_shipment(&terms, Some(true), after).unwrap(), "late");
    }

    #[test]
    fn claims_open_only_when_protected_held_and_in_their_window() {
        let terms = validate(&terms()).unwrap();
        let received = terms.shipment_deadline + Duration::days(10);
        let facts = ClaimFacts {
            protection: Protection::TradeAssurance,
            status: Status::Delivered,
            open_claim_id: None,
            terms: &terms,
            shipped_at: Some(terms.shipment_deadline - Duration::days(2)),
            received_at: Some(received),
            lot_release_pending: None,
            day: Duration::days(1),
        };
        let within = received + Duration::days(30);
        let after_window = received + Duration::days(31);
        check_claim(&facts, ClaimReason::QualityMismatch, within).expect("within the window");
        assert_eq!(
            reason_of(check_claim(&facts, ClaimReason::Damaged, after_window).unwrap_err()),
            "CLAIM_WINDOW_CLOSED"
        );
        assert_eq!(
            reason_of(check_claim(&facts, ClaimReason::LateShipment, within).unwrap_err()),
            "NOT_LATE"
        );
        let open = ClaimFacts {
            open_claim_id: Some("claim-1"),
            ..facts.clone()
        };
        assert_eq!(
            reason_of(check_claim(&open, ClaimReason::Damaged, within).unwrap_err()),
            "CLAIM_ALREADY_OPEN"
        );
        let unprotected = ClaimFacts {
            protection: Protection::None,
            ..facts.clone()
        };
        assert_eq!(
            reason_of(check_claim(&unprotected, ClaimReason::Damaged, within).unwrap_err()),
            "NOT_PROTECTED"
        );
        let completed = ClaimFacts {
            status: Status::Completed,
            ..facts.clone()
        };
        assert_eq!(
            reason_of(check_claim(&completed, ClaimReason::Damaged, within).unwrap_err()),
            "NOTHING_HELD"
        );
        let releasing = ClaimFacts {
            lot_release_pending: Some(1),
            ..facts.clone()
        };
        assert_eq!(
            reason_of(check_claim(&releasing, ClaimReason::Damaged, within).unwrap_err()),
            "LOT_RELEASE_PENDING"
        );

        // Before shipment: late shipment once the deadline passed unshipped;
        // non-delivery only after the delivery deadline.
        let unshipped = ClaimFacts {
            status: Status::Funded,
            shipped_at: None,
            received_at: None,
            ..facts.clone()
        };
        let past_shipment = terms.shipment_deadline + Duration::days(1);
        check_claim(&unshipped, ClaimReason::LateShipment, past_shipment).expect("late");
        assert_eq!(
            reason_of(
                check_claim(&unshipped, ClaimReason::NotReceived, past_shipment).unwrap_err()
            ),
            "DELIVERY_NOT_OVERDUE"
        );
        check_claim(
            &unshipped,
            ClaimReason::NotReceived,
            terms.delivery_deadline + Duration::days(1),
        )
        .expect("not delivered in time");
        assert_eq!(
            reason_of(
                check_claim(&unshipped, ClaimReason::QualityMismatch, past_shipment).unwrap_err()
            ),
            "NOT_RECEIVED_YET"
        );
    }
}

#[test]
fn the_booking_rule_counts_working_days_of_the_terms_calendar() {
    let validate_with_day = |t: &pb::ContractTerms, day: Duration| {
        let mut violations = Violations::new();
        let parsed = Terms::validate(Some(t), "terms", NOW, Some(day), &mut violations);
        violations
            .finish(())
            .map(|()| parsed)
            .map_err(|e| e.to_string())
    };
    let mut t = terms();
    // With a 10 s term day, 90 s are nine term days: Monday to the next
    // Wednesday on the terms' calendar, seven working days.
    t.shipment_deadline = at(Duration::seconds(90));
    t.delivery_deadline = at(Duration::seconds(300));
    validate_with_day(&t, Duration::seconds(10)).expect("nine 10 s days suffice");
    // 80 s are eight: to the next Tuesday, six working days.
    t.shipment_deadline = at(Duration::seconds(80));
    let message = validate_with_day(&t, Duration::seconds(10)).unwrap_err();
    assert!(message.contains("7 working days"), "{message}");
    // On real days, 90 s are not even one.
    t.shipment_deadline = at(Duration::seconds(90));
    let message = validate_with_day(&t, Duration::DAY).unwrap_err();
    assert!(message.contains("7 working days"), "{message}");
    // Stored terms are re-read without the rule: it held when written.
    let mut violations = Violations::new();
    assert!(Terms::validate(Some(&t), "terms", NOW, None, &mut violations).is_some());
}

#[test]
fn a_payment_due_after_escrow_must_have_paid_out_is_refused_at_drafting() {
    // Delivery in 60 days, 7 days of inspection, a 30-day claim window:
    // escrow must have released or refunded everything 97 days from now.
    let mut t = terms();
    let with_deposit_due = |t: &mut pb::ContractTerms, due_days: u32| {
        t.payment_terms.as_mut().expect("payment terms").milestones[0].due_days = due_days;
    };
    with_deposit_due(&mut t, 97);
    let message = validate(&t).unwrap_err();
    assert!(
        message.contains("terms.payment_terms.milestones[0].due_days: falls due after escrow"),
        "{message}"
    );
    with_deposit_due(&mut t, 96);
    let parsed = validate(&t).expect("due a day before the hold ends");
    assert_eq!(
        parsed.hold_until(Duration::DAY),
        NOW + Duration::days(97),
        "the delivery deadline, then the inspection period and the claim window"
    );
    // Stored terms are re-read without the rule: it held when written.
    with_deposit_due(&mut t, 97);
    let mut violations = Violations::new();
    assert!(Terms::validate(Some(&t), "terms", NOW, None, &mut violations).is_some());
}

/// Stored terms are read as they were signed: a rule tightened since (a
/// shorter claim window, a longer title than today's maximum, a deadline
/// long past) does not make them unreadable, and the stamped figures stay.
#[test]
fn stored_terms_read_back_without_todays_request_rules() {
    let mut sent = terms();
    let signed = validate(&sent).expect("valid when signed");
    signed.stamp(&mut sent);
    // Rules tightened after signing, and the clock moved past the deadlines.
    sent.claim_window_days = 120;
    sent.title = "x".repeat(500);
    sent.shipment_deadline = Some(timestamps::to_proto(NOW - Duration::days(400)));
    sent.delivery_deadline = Some(timestamps::to_proto(NOW - Duration::days(300)));
    assert!(
        validate(&sent).is_err(),
        "today's request rules refuse them"
    );

    let stored = Terms::stored(&sent, signed.total).expect("still readable");
    assert_eq!(stored.total, signed.total);
    assert_eq!(stored.claim_window_days, 120);
    assert_eq!(stored.line_items, signed.line_items);
    assert_eq!(stored.milestones, signed.milestones);
    assert_eq!(stored.quality_criteria, signed.quality_criteria);
    assert_eq!(stored.inspection, signed.inspection);
    assert_eq!(
        stored.shipment_deadline,
        NOW - Duration::days(400),
        "the deadline as signed, past or not"
    );

    // What no reaction can do without is still required.
    let mut broken = sent.clone();
    broken.payment_terms = None;
    assert!(Terms::stored(&broken, signed.total).is_err());
}

mod lot_terms {
    use super::*;
    use crate::domain::lots::{lot_release, milestones_of};

    /// 40 % with lot 1, 60 % with lot 2 (the final shipment).
    fn in_two_lots(first: u32, second: u32) -> pb::ContractTerms {
        let mut t = terms();
        let payment = t.payment_terms.as_mut().unwrap();
        payment.milestones = vec![
            pb::PaymentMilestone {
                lot: first,
                ..milestone("first-lot", 4_000, pb::PaymentTrigger::AfterSigning, 3)
            },
            pb::PaymentMilestone {
                lot: second,
                ..milestone(
                    "second-lot",
                    6_000,
                    pb::PaymentTrigger::BeforeShipmentDeadline,
                    2,
                )
            },
        ];
        t
    }

    #[test]
    fn milestones_tied_to_lots_are_validated_with_the_terms() {
        let terms = validate(&in_two_lots(1, 2)).expect("valid");
        assert_eq!(terms.lots(), 2);
        assert_eq!(terms.milestones[0].lot, 1);
        assert_eq!(validate(&in_two_lots(1, 0)).unwrap().lots(), 1);
        assert_eq!(validate(&in_two_lots(0, 0)).unwrap().lots(), 0);
        let gap = validate(&in_two_lots(1, 3)).unwrap_err();
        assert!(
            gap.contains("terms.payment_terms.milestones: the lots must be numbered 1..3"),
            "{gap}"
        );
        let far = validate(&in_two_lots(1, 12)).unwrap_err();
        assert!(
            far.contains("terms.payment_terms.milestones[1].lot"),
            "{far}"
        );
    }

    #[test]
    fn a_lot_releases_its_funded_milestones_and_leaves_the_rest_to_the_final() {
        let terms = validate(&in_two_lots(1, 2)).expect("valid");
        let release = lot_release(&terms, 1, |_| true).unwrap();
        assert_eq!(
            release.milestones,
            vec![("first-lot".to_owned(), terms.milestones[0].amount)]
        );
        assert_eq!(release.total, terms.milestones[0].amount);
        assert_eq!(
            release.total.amount_minor * 10_000 / terms.total.amount_minor,
            4_000,
            "40 % of the total"
        );
        let unfunded = lot_release(&terms, 1, |_| false).unwrap();
        assert!(unfunded.milestones.is_empty());
        assert_eq!(unfunded.unfunded, vec!["first-lot".to_owned()]);
        assert_eq!(unfunded.total.amount_minor, 0);
        assert_eq!(milestones_of(&terms, 2).count(), 1);
    }

    #[test]
    fn stored_terms_keep_their_lots() {
        let mut sent = in_two_lots(1, 2);
        let terms = validate(&sent).expect("valid");
        terms.stamp(&mut sent);
        let stored = Terms::stored(&sent, terms.total).expect("stored");
        assert_eq!(stored.lots(), 2);
        assert_eq!(stored.milestones[1].lot, 2);
    }
}
