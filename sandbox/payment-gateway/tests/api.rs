//! The sandbox gateway over real Postgres, through its HTTP API: idempotent
//! replays, reused keys, validation, card tokens, refunds' bound, injected
//! faults, webhooks (redelivery, loss, duplicates), settlement, the books,
//! and two processes over one schema.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use support::*;

fn charge(reference: &str, amount: i64, token: &str) -> Value {
    json!({ "client_reference": reference, "amount_minor": amount, "currency": "USD", "card_token": token })
}

fn payout(reference: &str, amount: i64) -> Value {
    json!({ "client_reference": reference, "amount_minor": amount, "currency": "USD", "beneficiary": "supplier-1" })
}

fn refund(reference: &str, amount: i64, source: &str) -> Value {
    json!({ "client_reference": reference, "amount_minor": amount, "currency": "USD", "source": source })
}

fn bank_transfer(reference: &str, amount: i64) -> Value {
    json!({ "client_reference": reference, "amount_minor": amount, "currency": "USD", "payer_name": "Buyer GmbH" })
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_key_replays_its_first_answer_and_moves_money_once(pool: PgPool) {
    let sandbox = Sandbox::start(pool, options()).await;
    let first = sandbox
        .post(
            "/v1/charges",
            "k-1",
            &charge("attempt-1", 1_000, "tok_visa"),
        )
        .await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["status"], "succeeded");
    assert_eq!(first.body["object"], "charge");
    assert!(first.body["id"].as_str().unwrap().starts_with("ch_"));
    assert!(!first.replayed);

    let again = sandbox
        .post(
            "/v1/charges",
            "k-1",
            &charge("attempt-1", 1_000, "tok_visa"),
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body);
    assert!(again.replayed);

    let reused = sandbox
        .post(
            "/v1/charges",
            "k-1",
            &charge("attempt-1", 2_000, "tok_visa"),
        )
        .await;
    assert_eq!(reused.status, 422, "{reused:?}");
    assert_eq!(reused.error_code(), "idempotency_key_reused");
    let other_kind = sandbox
        .post("/v1/payouts", "k-1", &payout("attempt-1", 1_000))
        .await;
    assert_eq!(other_kind.error_code(), "idempotency_key_reused");

    let books = sandbox.books("USD").await;
    assert_eq!(books["charges_minor"], 1_000, "{books}");

    let operation = sandbox.operation("k-1").await;
    assert_eq!(operation.status, 200);
    assert_eq!(operation.body["kind"], "charge");
    assert_eq!(operation.body["id"], first.body["id"]);
    assert_eq!(operation.body["client_reference"], "attempt-1");
    assert_eq!(operation.body["status"], "succeeded");
    let unseen = sandbox.operation("never-sent").await;
    assert_eq!(unseen.status, 404);
    assert_eq!(unseen.error_code(), "resource_missing");
    assert_eq!(sandbox.get("/livez").await.unwrap().status, 200);
    let no_route = sandbox.get("/v2/whatever").await.unwrap();
    assert_eq!(no_route.status, 404);
    assert_eq!(no_route.error_code(), "no_such_route");
    sandbox.stop().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn malformed_calls_are_refused_with_400(pool: PgPool) {
    let sandbox = Sandbox::start(pool, options()).await;
    let no_key = sandbox
        .post_with("/v1/charges", None, &charge("a", 5, "tok_visa"), None)
        .await
        .unwrap();
    assert_eq!(no_key.status, 400);
    assert_eq!(no_key.error_code(), "idempotency_key_missing");
    for body in [
        json!({ "client_reference": "a", "amount_minor": 5, "currency": "usd", "card_token": "tok_visa" }),
        json!({ "client_reference": "a", "amount_minor": 0, "currency": "USD", "card_token": "tok_visa" }),
        json!({ "client_reference": "a", "amount_minor": 5, "currency": "USD" }),
        json!("not an object"),
    ] {
        let refused = sandbox.post("/v1/charges", "bad", &body).await;
        assert_eq!(refused.status, 400, "{body}: {refused:?}");
        assert_eq!(refused.error_code(), "invalid_request");
        assert!(refused.body["error"]["message"].is_string());
    }
    // Nothing was recorded under the key used by the refused calls.
    assert_eq!(sandbox.operation("bad").await.status, 404);
    sandbox.stop().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn card_tokens_decline_fail_and_time_out(pool: PgPool) {
    let sandbox = Sandbox::start(pool, options()).await;
    for (token, code) in [
        ("tok_declined", "card_declined"),
        ("tok_insufficient_funds", "insufficient_funds"),
        ("4242424242424242", "invalid_token"),
    ] {
        let declined = sandbox
            .post("/v1/charges", token, &charge(token, 500, token))
            .await;
        assert_eq!(declined.status, 200);
        assert_eq!(declined.body["status"], "failed");
        assert_eq!(declined.body["failure_code"], code);
    }
    let failed = sandbox
        .post("/v1/charges", "gw", &charge("a", 500, "tok_gateway_error"))
        .await;
    assert_eq!(failed.status, 503);
    assert_eq!(failed.error_code(), "gateway_unavailable");
    assert_eq!(sandbox.operation("gw").await.status, 404, "nothing done");

    // The charge goes through, the answer never comes in time.
    let lost = sandbox
        .post_with(
            "/v1/charges",
            Some("slow"),
            &charge("a-slow", 700, "tok_timeout"),
            Some(Duration::from_millis(300)),
        )
        .await;
    assert!(lost.unwrap_err().is_timeout());
    let operation = sandbox.operation("slow").await;
    assert_eq!(operation.body["status"], "succeeded");
    assert_eq!(operation.body["amount_minor"], 700);
    let retried = sandbox
        .post("/v1/charges", "slow", &charge("a-slow", 700, "tok_timeout"))
        .await;
    assert!(retried.replayed);
    assert_eq!(retried.body["id"], operation.body["id"]);
    assert_eq!(sandbox.books("USD").await["charges_minor"], 700);

    let partner = sandbox
        .post(
            "/v1/pay_later",
            "pl",
            &json!({ "client_reference": "a", "amount_minor": 5, "currency": "USD",
                     "partner_id": "partner_unavailable", "repayment_months": 3 }),
        )
        .await;
    assert_eq!(partner.status, 503);
    assert_eq!(sandbox.operation("pl").await.status, 404);
    sandbox.stop().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn refunds_are_bounded_by_what_their_source_collected(pool: PgPool) {
    let sandbox = Sandbox::start(
        pool,
        payment_gateway_sandbox::config::Options {
            // Refunds stay pending, so one can be failed by hand.
            settle_after: Duration::from_secs(3_600),
            ..options()
        },
    )
    .await;
    let paid = sandbox
        .post("/v1/charges", "c", &charge("a", 1_000, "tok_visa"))
        .await;
    let charge_id = paid.body["id"].as_str().unwrap().to_owned();
    let first = sandbox
        .post("/v1/refunds", "r1", &refund("t1", 600, &charge_id))
        .await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["status"], "pending");
    assert_eq!(first.body["source"], charge_id.as_str());
    let too_much = sandbox
        .post("/v1/refunds", "r2", &refund("t2", 401, &charge_id))
        .await;
    assert_eq!(too_much.status, 422);
    assert_eq!(too_much.error_code(), "refund_exceeds_collected");
    // A replay of the first is not counted against the bound.
    assert!(
        sandbox
            .post("/v1/refunds", "r1", &refund("t1", 600, &charge_id))
            .await
            .replayed
    );
    let rest = sandbox
        .post("/v1/refunds", "r3", &refund("t3", 400, &charge_id))
        .await;
    assert_eq!(rest.status, 200);

    // A failed refund gives its amount back to the bound.
    let refund_id = first.body["id"].as_str().unwrap();
    let failed = sandbox
        .control(
            &format!("/sandbox/transfers/{refund_id}/fail"),
            &json!({ "failure_code": "account_closed" }),
        )
        .await;
    assert_eq!(failed.status, 200, "{failed:?}");
    assert_eq!(failed.body["status"], "failed");
    assert_eq!(
        sandbox
            .post("/v1/refunds", "r4", &refund("t4", 600, &charge_id))
            .await
            .status,
        200
    );

    let unknown = sandbox
        .post("/v1/refunds", "r5", &refund("t5", 1, "ch_nope"))
        .await;
    assert_eq!(unknown.status, 422);
    assert_eq!(unknown.error_code(), "source_unknown");
    let declined = sandbox
        .post("/v1/charges", "d", &charge("a", 1_000, "tok_declined"))
        .await;
    let from_decline = sandbox
        .post(
            "/v1/refunds",
            "r6",
            &refund("t6", 1, declined.body["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(from_decline.error_code(), "refund_exceeds_collected");

    // A bank transfer collects what was credited, once it was.
    let transfer = sandbox
        .post("/v1/bank_transfers", "b", &bank_transfer("a", 900))
        .await;
    let transfer_id = transfer.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        transfer.body["instructions"]["iban"],
        "DE89370400440532013000"
    );
    assert_eq!(
        sandbox.operation("b").await.body["instructions"],
        transfer.body["instructions"],
        "the instructions can be asked for again by key"
    );
    let early = sandbox
        .post("/v1/refunds", "r7", &refund("t7", 1, &transfer_id))
        .await;
    assert_eq!(early.error_code(), "refund_exceeds_collected");
    let credited = sandbox
        .control(
            &format!("/sandbox/bank_transfers/{transfer_id}/credit"),
            &json!({ "amount_minor": 800 }),
        )
        .await;
    assert_eq!(credited.body["settled_minor"], 800);
    assert_eq!(
        sandbox
            .post("/v1/refunds", "r8", &refund("t8", 801, &transfer_id))
            .await
            .status,
        422
    );
    assert_eq!(
        sandbox
            .post("/v1/refunds", "r9", &refund("t9", 800, &transfer_id))
            .await
            .status,
        200
    );
    sandbox.stop().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_nth_call_of_a_kind_fails_before_acting(pool: PgPool) {
    let sandbox = Sandbox::start(pool, options()).await;
    let set = sandbox
        .put_faults(&json!({ "fail_nth": { "kind": "payout", "n": 3 } }))
        .await;
    assert_eq!(set.body["fail_nth"], json!({ "kind": "payout", "n": 3 }));
    // Other kinds do not count.
    sandbox
        .post("/v1/charges", "c", &charge("a", 5, "tok_visa"))
        .await;
    for n in 1..=2 {
        let sent = sandbox
            .post(
                "/v1/payouts",
                &format!("p{n}"),
                &payout(&format!("t{n}"), 100),
            )
            .await;
        assert_eq!(sent.status, 200, "payout {n}");
    }
    let third = sandbox.post("/v1/payouts", "p3", &payout("t3", 100)).await;
    assert_eq!(third.status, 503, "{third:?}");
    assert_eq!(sandbox.operation("p3").await.status, 404, "nothing done");
    assert_eq!(
        sandbox.get("/sandbox/faults").await.unwrap().body["fail_nth"],
        Value::Null
    );
    let retried = sandbox.post("/v1/payouts", "p3", &payout("t3", 100)).await;
    assert_eq!(retried.status, 200);
    assert!(!retried.replayed, "the failed call had done nothing");
    wait_until("three payouts paid", || async {
        sandbox.books("USD").await["payouts_paid"] == 3
    })
    .await;
    assert_eq!(sandbox.books("USD").await["payouts_paid_minor"], 300);
    sandbox.stop().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_timeout_fault_acts_commits_then_holds_the_answer(pool: PgPool) {
    let sandbox = Sandbox::start(pool, options()).await;
    sandbox
        .put_faults(&json!({ "timeout_rate": 1.0, "hang_ms": 60_000 }))
        .await;
    let lost = sandbox
        .post_with(
            "/v1/payouts",
            Some("p"),
            &payout("t", 250),
            Some(Duration::from_millis(300)),
        )
        .await;
    assert!(lost.unwrap_err().is_timeout());
    let operation = sandbox.operation("p").await;
    assert_eq!(operation.status, 200);
    assert_eq!(operation.body["kind"], "payout");
    assert_eq!(operation.body["client_reference"], "t");
    // The same key answers at once with the operation it made.
    let replayed = sandbox.post("/v1/payouts", "p", &payout("t", 250)).await;
    assert!(replayed.replayed);
    assert_eq!(replayed.body["id"], operation.body["id"]);
    sandbox.put_faults(&json!({})).await;
    // A server holding an answer still stops at once when asked.
    sandbox.stop().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn failure_rate_and_latency_come_before_acting(pool: PgPool) {
    let sandbox = Sandbox::start(pool, options()).await;
    sandbox
        .put_faults(&json!({ "failure_rate": 1.0, "latency_ms": 20, "latency_jitter_ms": 10 }))
        .await;
    let failed = sandbox.post("/v1/payouts", "p", &payout("t", 1)).await;
    assert_eq!(failed.status, 503);
    assert_eq!(sandbox.operation("p").await.status, 503);
    sandbox.put_faults(&json!({ "latency_ms": 20 })).await;
    assert_eq!(sandbox.operation("p").await.status, 404);
    let faults = sandbox.get("/sandbox/faults").await.unwrap().body;
    assert_eq!(faults["failure_rate"], 0.0);
    assert_eq!(faults["latency_ms"], 20);
    let bad = sandbox
        .client
        .put(format!("{}/sandbox/faults", sandbox.base))
        .body(r#"{"failure_rate": 3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    sandbox.stop().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn webhooks_are_redelivered_until_accepted_each_signed_anew(pool: PgPool) {
    let receiver = Receiver::start(2).await;
    let mut options = options_to(&receiver);
    if let Some(target) = &mut options.webhook {
        target.retry_base = Duration::from_secs(1);
    }
    let sandbox = Sandbox::start(pool, options).await;
    let paid = sandbox
        .post("/v1/charges", "c", &charge("attempt-9", 1_234, "tok_visa"))
        .await;
    let id = paid.body["id"].as_str().unwrap().to_owned();
    wait_until("an accepted delivery", || async {
        receiver.about(&id).iter().any(|r| r.answered == 200)
    })
    .await;
    let deliveries = receiver.about(&id);
    assert_eq!(
        deliveries.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [503, 503, 200]
    );
    let event = &deliveries[0].event;
    assert_eq!(event["type"], "payment.succeeded");
    assert_eq!(event["data"]["reference"], id.as_str());
    assert_eq!(event["data"]["client_reference"], "attempt-9");
    assert_eq!(event["data"]["amount_minor"], 1_234);
    assert_eq!(event["data"]["currency_code"], "USD");
    let mut stamps = Vec::new();
    for delivery in &deliveries {
        assert_eq!(delivery.body, deliveries[0].body, "the same event");
        secret()
            .verify(&delivery.signature, &delivery.body, delivery.at, 60)
            .unwrap();
        let t: i64 = delivery.signature[2..delivery.signature.find(',').unwrap()]
            .parse()
            .unwrap();
        stamps.push(t);
    }
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "each delivery is signed at its own time: {stamps:?}"
    );
    let listed = sandbox.events().await;
    let listed = listed
        .iter()
        .find(|e| e["operation_id"] == id.as_str())
        .unwrap();
    let codes: Vec<_> = listed["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, [json!(503), json!(503), json!(200)]);
    assert!(listed["delivered_at"].is_string());
    sandbox.stop().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn lost_events_wait_for_a_redrive_and_duplicates_arrive_twice(pool: PgPool) {
    let receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start(pool, options_to(&receiver)).await;
    sandbox.put_faults(&json!({ "lose_next": 1 })).await;
    let lost = sandbox
        .post("/v1/charges", "a", &charge("a", 10, "tok_visa"))
        .await;
    let lost_id = lost.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        sandbox.get("/sandbox/faults").await.unwrap().body["lose_next"],
        0
    );
    sandbox.put_faults(&json!({ "duplicate_rate": 1.0 })).await;
    let twice = sandbox
        .post("/v1/charges", "b", &charge("b", 20, "tok_visa"))
        .await;
    let twice_id = twice.body["id"].as_str().unwrap().to_owned();
    wait_until("the duplicate", || async {
        receiver.about(&twice_id).len() == 2
    })
    .await;
    let both = receiver.about(&twice_id);
    assert_eq!(both[0].event["id"], both[1].event["id"], "one event, twice");
    assert!(receiver.about(&lost_id).is_empty());

    let events = sandbox.events().await;
    let event = events
        .iter()
        .find(|e| e["operation_id"] == lost_id.as_str())
        .unwrap();
    assert_eq!(event["lost"], true);
    assert_eq!(event["attempts"], json!([]));
    let event_id = event["id"].as_str().unwrap();
    sandbox.put_faults(&json!({})).await;
    let redrive = sandbox
        .control(
            &format!("/sandbox/webhooks/redeliver/{event_id}"),
            &json!({}),
        )
        .await;
    assert_eq!(redrive.status, 202);
    wait_until("the re-driven event", || async {
        !receiver.about(&lost_id).is_empty()
    })
    .await;
    assert_eq!(receiver.about(&lost_id)[0].event["id"], event_id);
    assert_eq!(
        sandbox
            .control("/sandbox/webhooks/redeliver/evt_nope", &json!({}))
            .await
            .status,
        404
    );
    sandbox.stop().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_books_count_money_in_and_out_per_currency(pool: PgPool) {
    let receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start(pool, options_to(&receiver)).await;
    let charged = sandbox
        .post("/v1/charges", "c", &charge("a", 1_000, "tok_visa"))
        .await;
    let transfer = sandbox
        .post("/v1/bank_transfers", "b", &bank_transfer("a", 500))
        .await;
    let loan = sandbox
        .post(
            "/v1/pay_later",
            "l",
            &json!({ "client_reference": "a", "amount_minor": 300, "currency": "EUR",
                     "partner_id": "partner-1", "repayment_months": 6 }),
        )
        .await;
    assert!(loan.body["loan_reference"].is_string());
    let transfer_id = transfer.body["id"].as_str().unwrap();
    let credited = sandbox
        .control(
            &format!("/sandbox/bank_transfers/{transfer_id}/credit"),
            &json!({ "amount_minor": 450 }),
        )
        .await;
    assert_eq!(credited.body["status"], "succeeded");
    let again = sandbox
        .control(
            &format!("/sandbox/bank_transfers/{transfer_id}/credit"),
            &json!({}),
        )
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.error_code(), "not_pending");
    let loan_id = loan.body["id"].as_str().unwrap();
    sandbox
        .control(
            &format!("/sandbox/pay_later/{loan_id}/disburse"),
            &json!({}),
        )
        .await;
    let wrong_kind = sandbox
        .control(&format!("/sandbox/transfers/{loan_id}/pay"), &json!({}))
        .await;
    assert_eq!(wrong_kind.status, 404);

    sandbox
        .post("/v1/payouts", "p", &payout("payout-1", 200))
        .await;
    wait_until("the payout paid", || async {
        sandbox.books("USD").await["payouts_paid"] == 1
    })
    .await;
    sandbox
        .put_faults(&json!({ "hold_settlement": true }))
        .await;
    let held = sandbox
        .post(
            "/v1/refunds",
            "r",
            &refund("refund-1", 100, charged.body["id"].as_str().unwrap()),
        )
        .await;
    let usd = sandbox.books("USD").await;
    assert_eq!(usd["money_in_minor"], 1_450, "{usd}");
    assert_eq!(usd["charges_minor"], 1_000);
    assert_eq!(usd["bank_credits_minor"], 450);
    assert_eq!(usd["money_out_minor"], 200);
    assert_eq!(usd["out_pending_minor"], 100, "the refund is held");
    assert_eq!(usd["held_minor"], 1_250);
    assert_eq!(sandbox.books("EUR").await["pay_later_minor"], 300);

    let refund_id = held.body["id"].as_str().unwrap();
    sandbox
        .control(&format!("/sandbox/transfers/{refund_id}/pay"), &json!({}))
        .await;
    let usd = sandbox.books("USD").await;
    assert_eq!(usd["refunds_paid_minor"], 100);
    assert_eq!(usd["out_pending_minor"], 0);

    wait_until("every webhook", || async { receiver.received().len() == 5 }).await;
    let mut kinds: Vec<_> = receiver
        .received()
        .iter()
        .map(|r| {
            (
                r.event["type"].as_str().unwrap().to_owned(),
                r.event["data"]["client_reference"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                r.event["data"]["amount_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("bank_transfer.credited".into(), "a".into(), 450),
            ("pay_later.disbursed".into(), "a".into(), 300),
            ("payment.succeeded".into(), "a".into(), 1_000),
            ("payout.paid".into(), "payout-1".into(), 200),
            ("refund.paid".into(), "refund-1".into(), 100),
        ]
    );
    sandbox.stop().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn two_processes_settle_and_deliver_each_thing_once(pool: PgPool) {
    let receiver = Receiver::start(0).await;
    // Each process with its own pool, as two processes have.
    let other_pool = sqlx::postgres::PgPoolOptions::new()
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let one = Sandbox::start(pool, options_to(&receiver)).await;
    let two = Sandbox::start(other_pool, options_to(&receiver)).await;
    for n in 0..20 {
        let sandbox = if n % 2 == 0 { &one } else { &two };
        let sent = sandbox
            .post(
                "/v1/payouts",
                &format!("p{n}"),
                &payout(&format!("t{n}"), 10),
            )
            .await;
        assert_eq!(sent.status, 200);
    }
    wait_until("twenty payouts paid and reported", || async {
        let events = one.events().await;
        events.len() == 20 && events.iter().all(|e| e["delivered_at"].is_string())
    })
    .await;
    assert_eq!(one.books("USD").await["payouts_paid"], 20);
    for event in two.events().await {
        assert_eq!(event["type"], "payout.paid");
        assert_eq!(
            event["attempts"].as_array().unwrap().len(),
            1,
            "delivered once: {event}"
        );
    }
    let mut ids: Vec<_> = receiver
        .received()
        .iter()
        .map(|r| r.event["data"]["reference"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 20, "no event delivered twice");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_api_key_is_required_when_set(pool: PgPool) {
    let sandbox = Sandbox::start(
        pool,
        payment_gateway_sandbox::config::Options {
            api_key: Some("sk_test_123".into()),
            ..options()
        },
    )
    .await;
    let refused = sandbox.post("/v1/payouts", "p", &payout("t", 1)).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.error_code(), "unauthorized");
    assert_eq!(sandbox.get("/sandbox/books").await.unwrap().status, 401);
    let allowed = sandbox
        .client
        .post(format!("{}/v1/payouts", sandbox.base))
        .header("authorization", "Bearer sk_test_123")
        .header("idempotency-key", "p")
        .body(payout("t", 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    sandbox.stop().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn concurrent_retries_of_one_refund_answer_the_same_refund(pool: PgPool) {
    let sandbox = Sandbox::start(pool, options()).await;
    let paid = sandbox
        .post("/v1/charges", "c", &charge("a", 1_000, "tok_visa"))
        .await;
    let body = refund("t", 1_000, paid.body["id"].as_str().unwrap());
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url, body) = (
            sandbox.client.clone(),
            format!("{}/v1/refunds", sandbox.base),
            body.to_string(),
        );
        calls.spawn(async move {
            let answer = client
                .post(url)
                .header("idempotency-key", "r")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            (status, answer.json_text().await)
        });
    }
    let mut ids = Vec::new();
    while let Some(done) = calls.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!(status, 200, "{body}");
        ids.push(body["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one refund: {ids:?}");
    sandbox.stop().await.unwrap();
}

/// The body of an answer as JSON.
trait JsonText {
    async fn json_text(self) -> Value;
}

impl JsonText for reqwest::Response {
    async fn json_text(self) -> Value {
        serde_json::from_str(&self.text().await.unwrap()).unwrap()
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_voided_key_never_acts_and_a_used_one_answers_its_operation(pool: PgPool) {
    let sandbox = Sandbox::start(pool, options()).await;
    // A client gave up on a call that never arrived: the key is voided, and
    // the call arriving late (or a retry) moves nothing.
    let voided = sandbox
        .control("/v1/operations/late-1/void", &serde_json::json!({}))
        .await;
    assert_eq!(voided.status, 200, "{voided:?}");
    assert_eq!(voided.body["status"], "voided");
    let late = sandbox
        .post(
            "/v1/charges",
            "late-1",
            &charge("attempt-9", 1_000, "tok_visa"),
        )
        .await;
    assert_eq!(late.status, 422, "{late:?}");
    assert_eq!(late.error_code(), "operation_voided");
    let again = sandbox
        .control("/v1/operations/late-1/void", &serde_json::json!({}))
        .await;
    assert_eq!(again.body["status"], "voided");
    assert_eq!(sandbox.operation("late-1").await.status, 404);
    let books = sandbox.books("USD").await;
    assert_eq!(books["charges_minor"].as_i64().unwrap_or(0), 0, "{books}");

    // Voiding a key the gateway acted under answers what it did instead.
    let charged = sandbox
        .post(
            "/v1/charges",
            "done-1",
            &charge("attempt-10", 2_000, "tok_visa"),
        )
        .await;
    assert_eq!(charged.status, 200);
    let found = sandbox
        .control("/v1/operations/done-1/void", &serde_json::json!({}))
        .await;
    assert_eq!(found.status, 200, "{found:?}");
    assert_eq!(found.body["status"], "succeeded");
    assert_eq!(found.body["id"], charged.body["id"]);
    assert_eq!(sandbox.books("USD").await["charges_minor"], 2_000);
    sandbox.stop().await.unwrap();
}
