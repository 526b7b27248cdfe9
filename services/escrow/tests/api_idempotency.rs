//! One idempotency key, one effect: the same request sent 100 times at once
//! funds once, releases once and settles a webhook once; concurrent
//! releases of one purpose under different keys move money once.

mod support;

use futures_util::future::join_all;
use sqlx::PgPool;
use support::*;
use ta_proto::escrow as pb;

async fn postings(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM escrow.postings")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_same_card_payment_sent_100_times_at_once_is_charged_and_recorded_once(pool: PgPool) {
    let Escrow {
        client,
        server: _server,
        gateway: sandbox,
        pool,
        ..
    } = start(pool).await;
    let mut c = client.clone();
    let id = open(&mut c, "c-100", 4_200).await.escrow_account_id;
    let answers = join_all((0..100).map(|_| {
        let mut client = client.clone();
        let request = card(&id, "full", 4_200, "tok_visa", "same-key");
        async move { client.fund_escrow(buyer(request)).await }
    }))
    .await;
    let mut attempt_ids = Vec::new();
    for answer in answers {
        let attempt = answer
            .expect("every call answers")
            .into_inner()
            .funding_attempt
            .unwrap();
        assert_eq!(attempt.status, pb::FundingStatus::Succeeded as i32);
        attempt_ids.push(attempt.funding_attempt_id);
    }
    attempt_ids.sort();
    attempt_ids.dedup();
    assert_eq!(
        attempt_ids.len(),
        1,
        "one attempt, replayed to every caller"
    );
    assert_eq!(sandbox.money_movements(), 1, "charged once");
    assert_eq!(postings(&pool).await, 1);
    let acc = account(&mut c, &id).await;
    assert_eq!(acc.funding_attempts.len(), 1);
    assert_eq!(minor(&acc.account.unwrap().held), 4_200);
    assert_sound(&mut c).await;
}

#[sqlx::test(migrations = false)]
async fn a_release_and_a_webhook_sent_100_times_at_once_apply_once(pool: PgPool) {
    let Escrow {
        client,
        server: _server,
        pool,
        ..
    } = start(pool).await;
    let mut c = client.clone();
    // A bank transfer confirmed by one webhook delivered 100 times at once.
    let id = open(&mut c, "c-hooks", 9_000).await.escrow_account_id;
    let attempt = c
        .fund_escrow(buyer(bank(&id, "full", 9_000, "bank-1")))
        .await
        .unwrap()
        .into_inner()
        .funding_attempt
        .unwrap();
    let event = webhook(
        "evt-once",
        "bank_transfer.credited",
        &attempt.gateway_reference,
        Some(9_000),
    );
    let outcomes = join_all((0..100).map(|_| {
        let mut client = client.clone();
        let event = event.clone();
        async move { client.handle_gateway_webhook(gateway(event)).await }
    }))
    .await;
    for outcome in outcomes {
        assert_eq!(
            outcome.expect("answered").into_inner().outcome,
            pb::WebhookOutcome::Applied as i32
        );
    }
    assert_eq!(postings(&pool).await, 1, "credited once");

    // The same release under one key, 50 times, and the same purpose under
    // 50 other keys: one release.
    let release = |key: String| pb::ReleaseToSupplierRequest {
        idempotency_key: key,
        escrow_account_id: id.clone(),
        amount: None,
        reason: "goods accepted".into(),
        purpose: Some(pb::Purpose {
            purpose: Some(pb::purpose::Purpose::Acceptance(true)),
        }),
    };
    let answers = join_all((0..100).map(|n| {
        let mut client = client.clone();
        let key = if n % 2 == 0 {
            "rel-same".to_owned()
        } else {
            format!("rel-{n}")
        };
        let request = release(key);
        async move { client.release_to_supplier(contract(request)).await }
    }))
    .await;
    let mut released: Vec<String> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|a| a.get_ref().posting.as_ref().unwrap().posting_id.clone())
        .collect();
    released.sort();
    released.dedup();
    assert_eq!(released.len(), 1, "every success is the one release");
    for answer in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert!(
            matches!(
                answer.code(),
                tonic::Code::FailedPrecondition | tonic::Code::Aborted
            ),
            "{answer:?}"
        );
    }
    assert_eq!(postings(&pool).await, 2, "released once");
    let acc = account(&mut c, &id).await.account.unwrap();
    assert_eq!(minor(&acc.released_total), 9_000);
    assert_eq!(minor(&acc.held), 0);
    assert_sound(&mut c).await;
}
