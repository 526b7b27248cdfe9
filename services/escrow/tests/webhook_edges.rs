//! Clear answers at the gateway's edges (issue "clear answers at the
//! edges"): a webhook's fields are checked as fields (a lowercase currency is
//! not an ISO 4217 code, whatever the attempt's currency) before they are
//! compared with the attempt they name, and a bank credit that brings more
//! than its attempt funds the milestone with what it needs, the excess alone
//! listed as unmatched and sent back from suspense.

mod support;

use sqlx::PgPool;
use support::*;
use ta_proto::escrow as pb;
use tonic::Code;

/// A bank transfer of `amount` started for a new account's "full" milestone
/// of `amount`: the account's id and the attempt.
async fn bank_attempt(
    client: &mut Client,
    contract_id: &str,
    amount: i64,
) -> (String, pb::FundingAttempt) {
    let id = open(client, contract_id, amount).await.escrow_account_id;
    let attempt = client
        .fund_escrow(buyer(bank(
            &id,
            "full",
            amount,
            &format!("bank-{contract_id}"),
        )))
        .await
        .expect("bank transfer started")
        .into_inner()
        .funding_attempt
        .expect("attempt");
    (id, attempt)
}

/// The bank's credit for `attempt`, naming it.
fn credit(event_id: &str, attempt: &pb::FundingAttempt) -> Event {
    Event::new(
        event_id,
        "bank_transfer.credited",
        &attempt.gateway_reference,
    )
    .client(&attempt.funding_attempt_id)
}

/// The answer to `event`, which must be refused as INVALID_ARGUMENT on
/// `field`: its description.
async fn refused_on(client: &mut Client, event: &Event, field: &str) -> String {
    let refused = client
        .handle_gateway_webhook(gateway(event.signed()))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        violated_fields(&refused),
        vec![field.to_owned()],
        "{refused:?}"
    );
    refused.message().to_owned()
}

#[sqlx::test(migrations = false)]
async fn a_lowercase_currency_is_an_invalid_field_not_a_mismatch(pool: PgPool) {
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    let (id, attempt) = bank_attempt(&mut client, "c-lowercase", 20_000).await;
    let before = snapshot(&escrow.pool).await;

    // "usd" is no ISO 4217 code: an invalid field, never compared.
    let mut lowercase = credit("evt-credit", &attempt).usd(20_000);
    lowercase.currency_code = Some("usd".into());
    let invalid = refused_on(&mut client, &lowercase, "payload.data.currency_code").await;
    assert!(invalid.contains("ISO 4217"), "{invalid}");
    assert!(!invalid.contains("payment's currency"), "{invalid}");
    // A valid code that is not the payment's: the mismatch, told apart.
    let mut euros = lowercase.clone();
    euros.currency_code = Some("EUR".into());
    let mismatch = refused_on(&mut client, &euros, "payload.data.currency_code").await;
    assert!(
        mismatch.contains("must be the payment's currency, USD"),
        "{mismatch}"
    );
    assert!(!mismatch.contains("ISO 4217"), "{mismatch}");
    // Amounts are positive, the gateway's reference is present.
    let mut negative = lowercase.clone();
    negative.currency_code = Some("USD".into());
    negative.amount_minor = Some(-20_000);
    refused_on(&mut client, &negative, "payload.data.amount_minor").await;
    let mut no_reference = negative.clone();
    no_reference.amount_minor = Some(20_000);
    no_reference.reference = String::new();
    refused_on(&mut client, &no_reference, "payload.data.reference").await;
    assert_eq!(
        snapshot(&escrow.pool).await,
        before,
        "nothing of a refused event is recorded, not even its id"
    );

    // The gateway's corrected event under the same id applies.
    let good = credit("evt-credit", &attempt).usd(20_000);
    assert_eq!(
        deliver(&mut client, &good).await,
        pb::WebhookOutcome::Applied
    );
    let acc = account(&mut client, &id).await.account.expect("account");
    assert_eq!(acc.status, pb::EscrowAccountStatus::Funded as i32);
    assert_money(&escrow, 20_000).await;
}

#[sqlx::test(migrations = false)]
async fn an_overpaid_bank_credit_funds_the_milestone_and_only_the_excess_is_unmatched(
    pool: PgPool,
) {
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    let (named, by_client) = bank_attempt(&mut client, "c-overpaid", 20_000).await;
    let (referenced, by_reference) = bank_attempt(&mut client, "c-overpaid-ref", 30_000).await;
    // 25,000 for 20,000 (naming escrow's attempt), and 31,000 for 30,000
    // (naming the gateway's payment only).
    let over = credit("evt-over", &by_client).usd(25_000);
    assert_eq!(
        deliver(&mut client, &over).await,
        pb::WebhookOutcome::Applied
    );
    let mut over_ref = Event::new(
        "evt-over-ref",
        "bank_transfer.credited",
        &by_reference.gateway_reference,
    )
    .usd(31_000);
    over_ref.client_reference = None;
    assert_eq!(
        deliver(&mut client, &over_ref).await,
        pb::WebhookOutcome::Applied
    );

    for (id, attempt, due, excess) in [
        (&named, &by_client, 20_000, 5_000),
        (&referenced, &by_reference, 30_000, 1_000),
    ] {
        let got = account(&mut client, id).await;
        let acc = got.account.expect("account");
        assert_eq!(
            acc.status,
            pb::EscrowAccountStatus::Funded as i32,
            "{acc:?}"
        );
        assert_eq!(minor(&acc.held), due, "the milestone is funded in full");
        let funded = got
            .funding_attempts
            .iter()
            .find(|a| a.funding_attempt_id == attempt.funding_attempt_id)
            .expect("the attempt");
        assert_eq!(funded.status, pb::FundingStatus::Succeeded as i32);
        let back: Vec<_> = transfers(&mut client, pb::GatewayTransferDirection::SuspenseRefund)
            .await
            .into_iter()
            .filter(|t| t.funding_attempt_id == attempt.funding_attempt_id)
            .collect();
        assert_eq!(back.len(), 1, "{back:#?}");
        assert_eq!(minor(&back[0].amount), excess, "only the excess goes back");
        assert_eq!(back[0].source_reference, attempt.gateway_reference);
    }
    let items = client
        .list_unmatched_gateway_items(finance(pb::ListUnmatchedGatewayItemsRequest::default()))
        .await
        .expect("unmatched items")
        .into_inner()
        .items;
    let mut listed: Vec<(String, i64)> = items
        .iter()
        .map(|i| (i.gateway_event_id.clone(), minor(&i.amount)))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            ("evt-over".to_owned(), 5_000),
            ("evt-over-ref".to_owned(), 1_000)
        ],
        "the excess alone is unmatched: {items:#?}"
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::Suspense).await,
        6_000,
        "the excess waits in suspense until it is sent back"
    );
    assert_sound(&mut client).await;

    // The worker sends both back; once paid, nothing stays in suspense.
    eventually("both excesses sent back", || {
        let mut client = client.clone();
        async move {
            let all = transfers(&mut client, pb::GatewayTransferDirection::SuspenseRefund).await;
            all.iter()
                .all(|t| t.status == pb::GatewayTransferStatus::Pending as i32)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        pay_all(&mut client, pb::GatewayTransferDirection::SuspenseRefund).await,
        2
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::Suspense).await,
        0
    );
    assert_money(&escrow, 25_000 + 31_000).await;
}
