use ta_runtime::money::Currency;

use super::*;

fn usd(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::parse("USD").unwrap())
}

fn supplier() -> Supplier {
    Supplier::register(
        NewSupplier {
            legal_name: "Shenzhen Widgets Ltd".into(),
            country_code: "CN".into(),
            business_licence_number: "91440300MA5".into(),
            contacts: vec![],
        },
        "supplier-1".into(),
        OffsetDateTime::UNIX_EPOCH,
    )
}

fn badged(limit: i64) -> Supplier {
    let mut s = supplier();
    s.submit_verification(OffsetDateTime::UNIX_EPOCH).unwrap();
    s.verify().unwrap();
    s.enroll(usd(limit)).unwrap();
    s
}

const POLICY: PenaltyPolicy = PenaltyPolicy {
    restriction_threshold: 24,
    limit_reduction_percent: 50,
};

#[test]
fn verification_transition_table_covers_every_pair() {
    use Verification::*;
    use VerificationAction::*;
    let expected = [
        (Unverified, Submit, Some(Submitted)),
        (Unverified, Verify, None),
        (Unverified, Reject, None),
        (Submitted, Submit, None),
        (Submitted, Verify, Some(Verified)),
        (Submitted, Reject, Some(Rejected)),
        (Verified, Submit, None),
        (Verified, Verify, None),
        (Verified, Reject, None),
        (Rejected, Submit, Some(Submitted)),
        (Rejected, Verify, None),
        (Rejected, Reject, None),
    ];
    assert_eq!(expected.len(), Verification::ALL.len() * 3);
    for (from, action, to) in expected {
        assert_eq!(from.after(action), to, "{from:?} --{action:?}-->");
    }
}

#[test]
fn refused_transitions_name_the_current_state() {
    let mut s = supplier();
    let error = s.verify().unwrap_err().to_string();
    assert_eq!(error, "cannot verify: verification is unverified");
    assert_eq!(s.verification, Verification::Unverified);
}

#[test]
fn rejection_keeps_the_reason_until_resubmission() {
    let mut s = supplier();
    let first = OffsetDateTime::UNIX_EPOCH;
    let second = first + time::Duration::days(2);
    assert_eq!(s.verification_submitted_at, None);
    s.submit_verification(first).unwrap();
    assert_eq!(s.verification_submitted_at, Some(first));
    s.reject_verification("licence expired".into()).unwrap();
    assert_eq!(s.verification_rejection_reason, "licence expired");
    s.submit_verification(second).unwrap();
    assert_eq!(s.verification_rejection_reason, "");
    assert_eq!(
        s.verification_submitted_at,
        Some(second),
        "the queue orders by the latest submission"
    );
    // A refused submission changes nothing, its time neither.
    assert!(s.submit_verification(first).is_err(), "already submitted");
    assert_eq!(s.verification_submitted_at, Some(second));
}

#[test]
fn badge_needs_verified_enrolled_and_active() {
    let mut s = supplier();
    assert!(!s.has_badge());
    assert!(
        s.enroll(usd(1_000)).is_err(),
        "enrolment needs verification"
    );
    s.submit_verification(OffsetDateTime::UNIX_EPOCH).unwrap();
    s.verify().unwrap();
    assert!(!s.has_badge(), "not enrolled yet");
    s.enroll(usd(1_000)).unwrap();
    assert!(s.has_badge());
    s.set_status(Status::Suspended, "fraud review".into());
    assert!(!s.has_badge());
}

#[test]
fn cover_is_reserved_only_within_the_remaining_limit() {
    let mut s = badged(10_000);
    s.reserve_cover(usd(6_000)).unwrap();
    assert_eq!(s.cover().unwrap().remaining, usd(4_000));
    let error = s.reserve_cover(usd(4_001)).unwrap_err().to_string();
    assert!(error.contains("exceeds the remaining TA limit"), "{error}");
    assert_eq!(s.cover_reserved_minor, 6_000, "a refusal changes nothing");
    s.reserve_cover(usd(4_000)).unwrap();
    assert_eq!(s.cover().unwrap().remaining, usd(0));
    s.release_cover(usd(6_000)).unwrap();
    assert_eq!(s.cover().unwrap().remaining, usd(6_000));
}

#[test]
fn releasing_more_than_is_reserved_is_drift_not_zero() {
    let mut s = badged(10_000);
    s.reserve_cover(usd(1_000)).unwrap();
    let error = s.release_cover(usd(1_001)).unwrap_err();
    assert!(matches!(error, ServiceError::Internal(_)), "{error:?}");
    assert_eq!(s.cover_reserved_minor, 1_000, "nothing was changed");
}

#[test]
fn cover_in_another_currency_is_a_field_violation() {
    let mut s = badged(10_000);
    let eur = Money::new(100, Currency::parse("EUR").unwrap());
    let error = s.reserve_cover(eur).unwrap_err();
    assert!(
        matches!(error, ServiceError::InvalidArgument(_)),
        "{error:?}"
    );
}

#[test]
fn a_lowered_limit_leaves_reservations_but_no_room() {
    let mut s = badged(10_000);
    s.reserve_cover(usd(8_000)).unwrap();
    s.set_limit(usd(5_000)).unwrap();
    assert_eq!(s.cover().unwrap().remaining, usd(0));
    assert!(s.reserve_cover(usd(1)).is_err());
}

#[test]
fn penalties_restrict_at_the_threshold_and_halve_the_limit() {
    let mut s = badged(10_001);
    assert!(!s.record_penalty(12, POLICY));
    assert_eq!(s.status, Status::Active);
    assert!(
        s.record_penalty(12, POLICY),
        "24 points cross the threshold"
    );
    assert_eq!(s.status, Status::Restricted);
    assert_eq!(s.ta_limit, Some(usd(5_000)));
    assert!(!s.has_badge());
    assert!(
        !s.record_penalty(6, POLICY),
        "already restricted; only the crossing lowers the limit"
    );
    assert_eq!(s.ta_limit, Some(usd(5_000)));
    assert_eq!(s.penalty_points, 30);
}

#[test]
fn a_supplier_reactivated_above_the_threshold_is_restricted_by_its_next_penalty() {
    let mut s = badged(10_000);
    assert!(s.record_penalty(30, POLICY));
    s.set_status(Status::Active, "appeal granted".into());
    assert!(
        s.record_penalty(1, POLICY),
        "31 points are above the threshold: restricted again"
    );
    assert_eq!(s.status, Status::Restricted);
    assert_eq!(s.ta_limit, Some(usd(5_000)), "the limit is lowered once");
}

#[test]
fn a_suspended_supplier_stays_suspended_but_loses_limit() {
    let mut s = badged(10_000);
    s.set_status(Status::Suspended, "fraud review".into());
    assert!(
        !s.record_penalty(30, POLICY),
        "not restricted: it is suspended"
    );
    assert_eq!(s.status, Status::Suspended);
    assert_eq!(s.status_reason, "fraud review");
    assert_eq!(s.ta_limit, Some(usd(5_000)));
}

#[test]
fn ratings_and_response_rate_are_integers() {
    let mut s = supplier();
    assert_eq!(s.average_rating_centi(), 0);
    for rating in [5, 4, 4] {
        s.record_review(rating);
    }
    assert_eq!(s.average_rating_centi(), 433);
    s.record_inquiry();
    s.record_inquiry();
    s.record_inquiry();
    s.record_inquiry_reply();
    s.record_inquiry_reply();
    assert_eq!(s.response_rate_basis_points(), 6_666);
}

#[test]
fn registration_input_is_validated_field_by_field() {
    let request = pb::RegisterSupplierRequest {
        legal_name: " ".into(),
        country_code: "XX".into(),
        business_licence_number: "no spaces allowed".into(),
        contacts: vec![pb::Contact {
            name: "Li Wei".into(),
            email: "not-an-email".into(),
            phone: "12345".into(),
        }],
        ..Default::default()
    };
    let mut v = ta_runtime::Violations::new();
    NewSupplier::validate(&request, &mut v);
    let message = v.finish(()).unwrap_err().to_string();
    for field in [
        "legal_name",
        "country_code",
        "business_licence_number",
        "contacts[0].email",
        "contacts[0].phone",
    ] {
        assert!(message.contains(field), "{field} missing from {message}");
    }
}

use ta_proto::supplier as pb;

#[test]
fn licence_numbers_are_compared_without_case() {
    let request = pb::RegisterSupplierRequest {
        legal_name: "Acme".into(),
        country_code: "CN".into(),
        business_licence_number: " lic-42/a ".into(),
        contacts: vec![pb::Contact {
            name: "Li".into(),
            email: "li@acme.example".into(),
            phone: String::new(),
        }],
        ..Default::default()
    };
    let mut v = ta_runtime::Violations::new();
    let new = NewSupplier::validate(&request, &mut v);
    assert!(v.is_empty());
    assert_eq!(new.business_licence_number, "LIC-42/A");
}
