//! The registry's event feed (`StreamSupplierEvents`): one event per change
//! others follow, appended in the change's transaction, telling facts (ids,
//! the new values, the actor) in commit order, from any cursor, then live.

mod common;

use std::time::Duration;

use common::*;
use sqlx::PgPool;
use ta_proto::{
    common::{Actor, Role as ProtoRole},
    supplier::{self as pb, SupplierEventType as Type},
};
use ta_runtime::auth::Role;
use tonic::Code;

/// How long a test waits for an event it expects before it fails (a guard
/// against hanging, not a measurement: events arrive in milliseconds).
const PATIENCE: Duration = Duration::from_secs(30);

/// The back end reading the feed.
const BACK_END: &str = "data-pipeline";

async fn open(
    client: &mut Client,
    after: u64,
) -> tonic::Streaming<pb::StreamSupplierEventsResponse> {
    client
        .stream_supplier_events(as_role(
            pb::StreamSupplierEventsRequest {
                after_sequence: after,
            },
            BACK_END,
            Role::Platform,
        ))
        .await
        .expect("the platform role reads the feed")
        .into_inner()
}

/// The next `n` events of `stream` (heartbeats skipped).
async fn next(
    stream: &mut tonic::Streaming<pb::StreamSupplierEventsResponse>,
    n: usize,
) -> Vec<pb::SupplierEvent> {
    let mut events = Vec::new();
    while events.len() < n {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events came: {events:#?}", events.len()))
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        events.extend(message.event);
    }
    events
}

/// The `n` events after `after`, from a stream of their own.
async fn events(client: &mut Client, after: u64, n: usize) -> Vec<pb::SupplierEvent> {
    next(&mut open(client, after).await, n).await
}

/// Events appended to the feed so far (numbered or not).
async fn appended(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM supplier_registry.workflow_feed_events WHERE feed = 'supplier-registry'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

fn actor(subject: &str, role: ProtoRole) -> Option<Actor> {
    Some(Actor {
        principal_id: subject.into(),
        role: role as i32,
    })
}

fn types(events: &[pb::SupplierEvent]) -> Vec<Type> {
    events.iter().map(|e| e.r#type()).collect()
}

async fn penalty(client: &mut Client, id: &str, claim: &str, key: &str, points: u32) {
    client
        .record_penalty(service(pb::RecordPenaltyRequest {
            idempotency_key: key.into(),
            supplier_id: id.into(),
            claim_id: claim.into(),
            points,
            reason: "late shipment upheld".into(),
        }))
        .await
        .expect("penalty");
}

#[sqlx::test(migrations = false)]
async fn every_change_is_told_once_as_facts_in_commit_order(pool: PgPool) {
    let Registry { server, mut client } =
        start_with(pool.clone(), &["--penalty-restriction-threshold", "10"]).await;
    let id = register(&mut client, "LIC-FEED").await;
    // Contacts are no event.
    client
        .update_supplier_contacts(as_role(
            pb::UpdateSupplierContactsRequest {
                idempotency_key: "contacts".into(),
                supplier_id: id.clone(),
                contacts: vec![contact()],
                reason: String::new(),
            },
            SUPPLIER,
            Role::Supplier,
        ))
        .await
        .unwrap();
    let submit = |key: &str| {
        as_role(
            pb::SubmitVerificationRequest {
                idempotency_key: key.into(),
                supplier_id: id.clone(),
                reason: String::new(),
            },
            SUPPLIER,
            Role::Supplier,
        )
    };
    client
        .submit_verification(submit("submit-1"))
        .await
        .unwrap();
    client
        .reject_verification(trust_safety(pb::RejectVerificationRequest {
            idempotency_key: "reject".into(),
            supplier_id: id.clone(),
            reason: "licence scan unreadable".into(),
        }))
        .await
        .unwrap();
    client
        .submit_verification(submit("submit-2"))
        .await
        .unwrap();
    client
        .verify_supplier(trust_safety(pb::VerifySupplierRequest {
            idempotency_key: "verify".into(),
            supplier_id: id.clone(),
            reason: "licence checked".into(),
        }))
        .await
        .unwrap();
    client
        .enroll_trade_assurance(trust_safety(pb::EnrollTradeAssuranceRequest {
            idempotency_key: "enrol".into(),
            supplier_id: id.clone(),
            ta_limit: usd(100_000),
            reason: "clean history".into(),
        }))
        .await
        .unwrap();
    let raise = pb::SetTradeAssuranceLimitRequest {
        idempotency_key: "limit".into(),
        supplier_id: id.clone(),
        ta_limit: usd(200_000),
        reason: "credit review".into(),
    };
    client
        .set_trade_assurance_limit(trust_safety(raise.clone()))
        .await
        .unwrap();
    // A retry replays the answer and tells nothing again.
    client
        .set_trade_assurance_limit(trust_safety(raise))
        .await
        .unwrap();
    // Cover is no event.
    client
        .reserve_cover(service(pb::ReserveCoverRequest {
            idempotency_key: "reserve".into(),
            supplier_id: id.clone(),
            contract_id: "contract-1".into(),
            amount: usd(50_000),
        }))
        .await
        .unwrap();
    for (key, status, reason) in [
        (
            "restrict",
            pb::SupplierStatus::Restricted,
            "documents expired",
        ),
        (
            "reactivate",
            pb::SupplierStatus::Active,
            "documents renewed",
        ),
    ] {
        client
            .set_supplier_status(trust_safety(pb::SetSupplierStatusRequest {
                idempotency_key: key.into(),
                supplier_id: id.clone(),
                status: status as i32,
                reason: reason.into(),
            }))
            .await
            .unwrap();
    }
    penalty(&mut client, &id, "claim-1", "penalty-1", 6).await;
    // The second penalty crosses the threshold of 10: restricted, limit halved.
    penalty(&mut client, &id, "claim-2", "penalty-2", 5).await;
    // The same claim's penalty again, under another key: recorded once.
    penalty(&mut client, &id, "claim-2", "penalty-2-again", 5).await;

    let told = events(&mut client, 0, 13).await;
    assert_eq!(
        types(&told),
        [
            Type::Registered,
            Type::VerificationSubmitted,
            Type::VerificationRejected,
            Type::VerificationSubmitted,
            Type::Verified,
            Type::Enrolled,
            Type::LimitSet,
            Type::StatusChanged,
            Type::StatusChanged,
            Type::PenaltyRecorded,
            Type::PenaltyRecorded,
            Type::StatusChanged,
            Type::LimitSet,
        ]
    );
    assert_eq!(appended(&pool).await, 13, "nothing else was appended");
    let sequences: Vec<u64> = told.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=13).collect::<Vec<u64>>(), "dense, in order");
    for event in &told {
        assert_eq!(event.supplier_id, id);
        assert!(event.occurred_at.is_some());
    }
    let owner = actor(SUPPLIER, ProtoRole::Supplier);
    let staff = actor(OPERATOR, ProtoRole::TrustSafety);
    let dispute = actor("dispute", ProtoRole::Service);

    // Registered: who owns it, where, in which states; nothing else.
    let registered = &told[0];
    assert_eq!(registered.actor, owner);
    assert_eq!(
        (
            registered.owner_principal_id.as_str(),
            registered.country_code.as_str()
        ),
        (SUPPLIER, "CN")
    );
    assert_eq!(
        registered.verification_status(),
        pb::VerificationStatus::Unverified
    );
    assert_eq!(registered.status(), pb::SupplierStatus::Active);
    assert_eq!(registered.ta_limit, None);

    assert_eq!(told[1].actor, owner);
    assert_eq!(
        told[1].verification_status(),
        pb::VerificationStatus::Submitted
    );
    assert_eq!(told[2].actor, staff);
    assert_eq!(
        told[2].verification_status(),
        pb::VerificationStatus::Rejected
    );
    assert_eq!(told[2].reason, "licence scan unreadable");
    assert_eq!(told[4].actor, staff);
    assert_eq!(
        told[4].verification_status(),
        pb::VerificationStatus::Verified
    );
    assert_eq!(told[5].ta_limit, usd(100_000));
    assert_eq!(
        (&told[6].ta_limit, &told[6].previous_ta_limit),
        (&usd(200_000), &usd(100_000))
    );
    assert_eq!(told[7].status(), pb::SupplierStatus::Restricted);
    assert_eq!(told[7].previous_status(), pb::SupplierStatus::Active);
    assert_eq!(told[7].reason, "documents expired");
    assert_eq!(told[8].status(), pb::SupplierStatus::Active);
    assert_eq!(told[8].previous_status(), pb::SupplierStatus::Restricted);

    // The penalties, by the dispute service, and what the second changed.
    let first = &told[9];
    assert_eq!(first.actor, dispute);
    assert_eq!(
        (
            first.claim_id.as_str(),
            first.penalty_points,
            first.total_penalty_points
        ),
        ("claim-1", 6, 6)
    );
    assert_eq!(first.reason, "late shipment upheld");
    assert_eq!(
        (
            told[10].claim_id.as_str(),
            told[10].penalty_points,
            told[10].total_penalty_points
        ),
        ("claim-2", 5, 11)
    );
    let restricted = &told[11];
    assert_eq!(restricted.actor, dispute);
    assert_eq!(restricted.status(), pb::SupplierStatus::Restricted);
    assert_eq!(restricted.previous_status(), pb::SupplierStatus::Active);
    assert!(
        restricted.reason.contains("restriction threshold of 10"),
        "{}",
        restricted.reason
    );
    let lowered = &told[12];
    assert_eq!(lowered.actor, dispute);
    assert_eq!(
        (&lowered.ta_limit, &lowered.previous_ta_limit),
        (&usd(100_000), &usd(200_000))
    );
    // The supplier as the registry tells it agrees with the last events.
    let now = supplier(&mut client, &id).await;
    assert_eq!(now.status(), pb::SupplierStatus::Restricted);
    assert_eq!(now.ta_limit, usd(100_000));
    assert_eq!(now.penalty_points, 11);

    // From a cursor: only what follows it.
    let after = events(&mut client, 10, 3).await;
    assert_eq!(
        after.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [11, 12, 13]
    );
    assert_eq!(after, told[10..]);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_refused_or_rolled_back_change_tells_nothing(pool: PgPool) {
    let Registry { server, mut client } =
        start_with(pool.clone(), &["--request-timeout", "500ms"]).await;
    let id = register(&mut client, "LIC-FEED-ROLLBACK").await;
    assert_eq!(appended(&pool).await, 1, "the registration");

    // Refused by the rules, by validation, by the access options.
    let refused = client
        .verify_supplier(trust_safety(pb::VerifySupplierRequest {
            idempotency_key: "verify-too-early".into(),
            supplier_id: id.clone(),
            reason: "licence checked".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let unexplained = client
        .set_supplier_status(trust_safety(pb::SetSupplierStatusRequest {
            idempotency_key: "suspend".into(),
            supplier_id: id.clone(),
            status: pb::SupplierStatus::Suspended as i32,
            reason: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(unexplained.code(), Code::InvalidArgument);
    let stranger = client
        .submit_verification(as_role(
            pb::SubmitVerificationRequest {
                idempotency_key: "submit-stranger".into(),
                supplier_id: id.clone(),
                reason: String::new(),
            },
            "supplier-stranger",
            Role::Supplier,
        ))
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), Code::PermissionDenied);
    assert_eq!(appended(&pool).await, 1, "refusals tell nothing");

    // A change whose event cannot be written does not happen either: while
    // the feed's table is locked the submission runs out of time and rolls
    // back whole.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE supplier_registry.workflow_feed_events IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let submit = pb::SubmitVerificationRequest {
        idempotency_key: "submit".into(),
        supplier_id: id.clone(),
        reason: String::new(),
    };
    let timed_out = client
        .submit_verification(as_role(submit.clone(), SUPPLIER, Role::Supplier))
        .await
        .unwrap_err();
    assert_eq!(timed_out.code(), Code::DeadlineExceeded, "{timed_out:?}");
    blocker.rollback().await.unwrap();
    assert_eq!(
        supplier(&mut client, &id).await.verification_status(),
        pb::VerificationStatus::Unverified,
        "the change rolled back with its event"
    );
    assert_eq!(appended(&pool).await, 1);

    // The retry under the same key does both, once.
    client
        .submit_verification(as_role(submit, SUPPLIER, Role::Supplier))
        .await
        .expect("the retry");
    let told = events(&mut client, 0, 2).await;
    assert_eq!(
        types(&told),
        [Type::Registered, Type::VerificationSubmitted]
    );
    assert_eq!(appended(&pool).await, 2);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn an_open_stream_gets_the_backlog_then_live_events(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let first = register(&mut client, "LIC-LIVE-1").await;
    let mut stream = open(&mut client, 0).await;
    let backlog = next(&mut stream, 1).await;
    assert_eq!(backlog[0].supplier_id, first);

    let second = register(&mut client, "LIC-LIVE-2").await;
    let live = next(&mut stream, 1).await;
    assert_eq!(live[0].supplier_id, second);
    assert_eq!(live[0].r#type(), Type::Registered);
    assert_eq!(live[0].sequence, 2);

    // Staff and back ends read the feed; parties and services do not.
    for role in [
        Role::TrustSafety,
        Role::Arbiter,
        Role::Finance,
        Role::Support,
    ] {
        let mut theirs = client
            .stream_supplier_events(as_role(
                pb::StreamSupplierEventsRequest { after_sequence: 1 },
                OPERATOR,
                role,
            ))
            .await
            .unwrap_or_else(|s| panic!("{role}: {s:?}"))
            .into_inner();
        assert_eq!(next(&mut theirs, 1).await, live, "{role}");
    }
    for (subject, role) in [
        (BUYER, Role::Buyer),
        (SUPPLIER, Role::Supplier),
        ("inspector-1", Role::Inspector),
        ("dispute", Role::Service),
    ] {
        let status = client
            .stream_supplier_events(as_role(
                pb::StreamSupplierEventsRequest { after_sequence: 0 },
                subject,
                role,
            ))
            .await
            .expect_err("not a reader of the feed");
        assert_eq!(status.code(), Code::PermissionDenied, "{role}");
    }
    drop(stream);
    server.stop().await.unwrap();
}
