//! Clear answers at the gateway's edges (issue "clear answers at the
//! edges"): a webhook's fields are checked as fields (a lowercase currency is
//! not an ISO 4217 code, whatever the attempt's currency) before they are
//! compared with the attempt they name.

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
    let before = Snapshot::take(&escrow.pool).await;

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
        Snapshot::take(&escrow.pool).await,
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
