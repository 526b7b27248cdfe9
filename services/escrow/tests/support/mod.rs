//! Serves escrow in-process on loopback over its own test database, paying
//! through a sandbox gateway the test keeps a handle on.

#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use clap::Parser;
use escrow::{SPEC, api, config::Config, gateway::memory::InMemoryGateway, webhook::WebhookSecret};
use sqlx::PgPool;
use ta_proto::{
    common::Money,
    escrow::{self as pb, escrow_service_client::EscrowServiceClient},
};
use ta_runtime::auth::Role;
use ta_testkit::RunningService;
use tonic::transport::Channel;

pub type Client = EscrowServiceClient<Channel>;

pub const ESCROW_SERVICE: &str = "tradeassurance.escrow.v1.EscrowService";
pub const WEBHOOK_SECRET: &str = "whsec_test_0123456789abcdef0123456789abcdef";
pub const OPERATOR: &str = "ops-1";
pub const BUYER: &str = "buyer-1";
pub const OTHER_BUYER: &str = "buyer-2";
pub const SUPPLIER_OWNER: &str = "supplier-owner-1";
pub const OTHER_SUPPLIER_OWNER: &str = "supplier-owner-2";
pub const SUPPLIER_ID: &str = "0190c5a2-0000-7000-8000-00000000aaaa";
pub const PARTNER: &str = "partner-1";

pub struct Escrow {
    pub server: RunningService,
    pub client: Client,
    pub gateway: InMemoryGateway,
    pub pool: PgPool,
}

pub async fn start(pool: PgPool) -> Escrow {
    start_with(pool, &[]).await
}

/// Like [`start`], with more configuration flags (e.g. `--payout-interval 1s`).
pub async fn start_with(pool: PgPool, flags: &[&str]) -> Escrow {
    let url = database_url(&pool);
    let mut args = vec![
        "escrow",
        "--database-url",
        &url,
        "--auth-jwt-hs256-secret",
        ta_testkit::TEST_SECRET,
        "--log-format",
        "text",
        "--webhook-secret",
        WEBHOOK_SECRET,
        "--workflow-timer-poll-interval",
        "50ms",
        "--workflow-feed-poll-interval",
        "50ms",
    ];
    args.extend_from_slice(flags);
    let config = Config::try_parse_from(args).expect("config");
    let gateway = InMemoryGateway::new();
    let service_api = api(&config, pool.clone(), Arc::new(gateway.clone()));
    let server =
        RunningService::start(&SPEC, config.common.clone(), pool.clone(), service_api).await;
    let client = EscrowServiceClient::new(server.channel.clone());
    Escrow {
        server,
        client,
        gateway,
        pool,
    }
}

use ta_testkit::database_url;

pub fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor,
    })
}

/// A request as `subject` in `role` (a service's token names escrow).
pub fn as_role<T>(message: T, subject: &str, role: Role) -> tonic::Request<T> {
    if role == Role::Service {
        ta_testkit::from_service(message, subject, "escrow")
    } else {
        ta_testkit::authorized(message, subject, role)
    }
}

pub fn operator<T>(message: T) -> tonic::Request<T> {
    as_role(message, OPERATOR, Role::Operator)
}

pub fn buyer<T>(message: T) -> tonic::Request<T> {
    as_role(message, BUYER, Role::Buyer)
}

pub fn contract<T>(message: T) -> tonic::Request<T> {
    as_role(message, "contract", Role::Service)
}

pub fn dispute<T>(message: T) -> tonic::Request<T> {
    as_role(message, "dispute", Role::Service)
}

pub fn gateway<T>(message: T) -> tonic::Request<T> {
    as_role(message, "payment-gateway", Role::Service)
}

pub fn due_in(days: i64) -> Option<prost_types::Timestamp> {
    Some(ta_runtime::timestamps::to_proto(
        ta_runtime::timestamps::now() + time::Duration::days(days),
    ))
}

pub fn payment(milestone: &str, amount_minor: i64) -> pb::ScheduledPayment {
    pb::ScheduledPayment {
        milestone_id: milestone.into(),
        amount: usd(amount_minor),
        due_at: due_in(7),
        funded_at: None,
    }
}

pub fn open_request(
    contract_id: &str,
    schedule: Vec<pb::ScheduledPayment>,
) -> pb::OpenEscrowAccountRequest {
    pb::OpenEscrowAccountRequest {
        idempotency_key: format!("open-{contract_id}"),
        contract_id: contract_id.into(),
        buyer_principal_id: BUYER.into(),
        supplier_id: SUPPLIER_ID.into(),
        schedule,
        payment_scheme: pb::EscrowPaymentScheme::Direct as i32,
        financing_partner_id: String::new(),
        supplier_owner_principal_id: SUPPLIER_OWNER.into(),
        hold_until: due_in(30),
    }
}

/// Opens a direct account with one payment "full" of `amount_minor`.
pub async fn open(client: &mut Client, contract_id: &str, amount_minor: i64) -> pb::EscrowAccount {
    open_with(
        client,
        open_request(contract_id, vec![payment("full", amount_minor)]),
    )
    .await
}

pub async fn open_with(
    client: &mut Client,
    request: pb::OpenEscrowAccountRequest,
) -> pb::EscrowAccount {
    client
        .open_escrow_account(contract(request))
        .await
        .expect("open")
        .into_inner()
        .account
        .expect("account")
}

pub fn card(
    account: &str,
    milestone: &str,
    amount_minor: i64,
    token: &str,
    key: &str,
) -> pb::FundEscrowRequest {
    pb::FundEscrowRequest {
        idempotency_key: key.into(),
        escrow_account_id: account.into(),
        milestone_id: milestone.into(),
        amount: usd(amount_minor),
        method: Some(pb::fund_escrow_request::Method::Card(pb::CardPayment {
            card_token: token.into(),
        })),
    }
}

pub fn bank(account: &str, milestone: &str, amount_minor: i64, key: &str) -> pb::FundEscrowRequest {
    pb::FundEscrowRequest {
        method: Some(pb::fund_escrow_request::Method::BankTransfer(
            pb::BankTransferPayment {
                payer_name: "Buyer GmbH".into(),
            },
        )),
        ..card(account, milestone, amount_minor, "", key)
    }
}

/// Opens and funds an account by card; returns its id.
pub async fn funded(client: &mut Client, contract_id: &str, amount_minor: i64) -> String {
    let account = open(client, contract_id, amount_minor).await;
    let id = account.escrow_account_id;
    let funded = client
        .fund_escrow(buyer(card(
            &id,
            "full",
            amount_minor,
            "tok_visa",
            &format!("fund-{contract_id}"),
        )))
        .await
        .expect("fund")
        .into_inner();
    assert_eq!(
        funded.funding_attempt.unwrap().status,
        pb::FundingStatus::Succeeded as i32
    );
    id
}

pub fn now_unix() -> i64 {
    ta_runtime::timestamps::now().unix_timestamp()
}

/// A gateway event signed with the webhook secret at `t`.
pub fn webhook_at(
    event_id: &str,
    kind: &str,
    reference: &str,
    amount_minor: Option<i64>,
    t: i64,
) -> pb::HandleGatewayWebhookRequest {
    let mut data = serde_json::json!({ "reference": reference });
    if let Some(amount) = amount_minor {
        data["amount_minor"] = amount.into();
        data["currency_code"] = "USD".into();
    }
    let payload = serde_json::to_vec(&serde_json::json!({
        "id": event_id, "type": kind, "created": 1_700_000_000, "data": data,
    }))
    .unwrap();
    let signature = WebhookSecret::new(WEBHOOK_SECRET)
        .unwrap()
        .sign(t, &payload);
    pb::HandleGatewayWebhookRequest {
        idempotency_key: event_id.into(),
        payload,
        signature,
    }
}

pub fn webhook(
    event_id: &str,
    kind: &str,
    reference: &str,
    amount_minor: Option<i64>,
) -> pb::HandleGatewayWebhookRequest {
    webhook_at(event_id, kind, reference, amount_minor, now_unix())
}

pub async fn account(client: &mut Client, id: &str) -> pb::GetEscrowAccountResponse {
    client
        .get_escrow_account(operator(pb::GetEscrowAccountRequest {
            escrow_account_id: id.into(),
            contract_id: String::new(),
        }))
        .await
        .expect("get")
        .into_inner()
}

pub fn minor(money: &Option<Money>) -> i64 {
    money.as_ref().map_or(0, |m| m.amount_minor)
}

/// Reconciliation over the API finds nothing, and each currency's trial
/// balance sums to zero.
pub async fn assert_sound(client: &mut Client) {
    let found = client
        .reconcile_ledger(operator(pb::ReconcileLedgerRequest {}))
        .await
        .expect("reconcile")
        .into_inner();
    assert!(
        found.differences.is_empty(),
        "reconciliation found {:#?}",
        found.differences
    );
    let trial = client
        .get_trial_balance(operator(pb::GetTrialBalanceRequest::default()))
        .await
        .expect("trial balance")
        .into_inner();
    for currency in trial.currencies {
        assert_eq!(minor(&currency.sum), 0, "{currency:?}");
    }
}

/// The tables of escrow's schema, for "nothing was written" checks.
pub const TABLES: [&str; 14] = [
    "escrow_accounts",
    "scheduled_payments",
    "freezes",
    "funding_attempts",
    "ledger_accounts",
    "transfers",
    "holds",
    "postings",
    "account_terms",
    "attempt_gateway",
    "gateway_transfers",
    "gateway_events",
    "idempotency_keys",
    "workflow_feed_events",
];

/// Row counts and digests of every escrow table: equal snapshots mean
/// nothing was inserted, updated or deleted in between.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot(Vec<(&'static str, i64, String)>);

impl Snapshot {
    pub async fn take(pool: &PgPool) -> Self {
        let mut tables = Vec::new();
        for table in TABLES {
            let sql = format!(
                "SELECT count(*), COALESCE(md5(string_agg(t::text, '|' ORDER BY t::text)), '') \
                 FROM escrow.{table} t"
            );
            let row: (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await
                .expect("snapshot");
            tables.push((table, row.0, row.1));
        }
        Self(tables)
    }

    pub fn rows(&self, table: &str) -> i64 {
        self.0
            .iter()
            .find(|(name, _, _)| *name == table)
            .map(|(_, count, _)| *count)
            .expect("known table")
    }
}

/// The fields named by the `google.rpc.BadRequest` details of `status`, sorted.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let bad_request = details
        .bad_request()
        .unwrap_or_else(|| panic!("no BadRequest details in {status:?}"));
    let mut fields: Vec<String> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    fields.sort();
    fields
}

/// The events of the feed from the start, until `wanted` arrived (bounded).
pub async fn events_until(
    client: &mut Client,
    wanted: pb::EscrowEventType,
) -> Vec<pb::EscrowEvent> {
    use futures_util::StreamExt;
    let mut stream = client
        .stream_escrow_events(operator(pb::StreamEscrowEventsRequest {
            after_sequence: 0,
        }))
        .await
        .expect("stream")
        .into_inner();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {wanted:?} within 20s; saw {seen:?}"));
        let Some(message) = next else {
            panic!("stream ended before {wanted:?}");
        };
        let Some(event) = message.expect("stream item").event else {
            continue;
        };
        let done = event.r#type == wanted as i32;
        seen.push(event);
        if done {
            return seen;
        }
    }
}
