//! Serves escrow in-process on loopback over its own test database, paying
//! through a sandbox gateway the test keeps a handle on.

#![allow(dead_code)]

pub mod faults;

use std::{sync::Arc, time::Duration};

use clap::Parser;
use escrow::{
    SPEC, api,
    app::worker::GatewayWorker,
    app::{
        context::{self as flows, Flows, Settings},
        reactions::EscrowTimers,
    },
    config::Config,
    gateway::{PaymentGateway, memory::InMemoryGateway, signature::WebhookSecret},
};
use sqlx::PgPool;
use ta_proto::{
    common::Money,
    escrow::{self as pb, escrow_service_client::EscrowServiceClient},
};
use ta_runtime::auth::Role;
use ta_testkit::RunningService;
use ta_workflow::{
    feed::Feed,
    timers::{DueTimer, TimerHandler, Timers},
};
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
    /// The gateway's own books: what it charged and sent, by key.
    pub gateway: InMemoryGateway,
    pub pool: PgPool,
    /// The gateway escrow calls (the books, or a wrapper around them).
    pub gateway_api: Arc<dyn PaymentGateway>,
    /// Escrow's settings, as configured.
    pub settings: Settings,
}

pub async fn start(pool: PgPool) -> Escrow {
    start_with(pool, &[]).await
}

/// Like [`start`], with more configuration flags (e.g. `--payout-interval 1s`).
pub async fn start_with(pool: PgPool, flags: &[&str]) -> Escrow {
    let gateway = InMemoryGateway::new();
    serve(pool, flags, gateway.clone(), Arc::new(gateway)).await
}

/// Like [`start_with`], paying through a gateway that fails, loses answers
/// or blocks when the test says (see [`faults::FaultyGateway`]).
pub async fn start_faulty(pool: PgPool, flags: &[&str]) -> (Escrow, faults::FaultyGateway) {
    let faulty = faults::FaultyGateway::new();
    let escrow = serve(pool, flags, faulty.books.clone(), Arc::new(faulty.clone())).await;
    (escrow, faulty)
}

impl Escrow {
    /// What another escrow process over the same database and gateway runs:
    /// its own flows (timers, gateway worker), as a second replica would.
    pub fn replica(&self) -> Arc<Flows> {
        Arc::new(Flows::new(
            self.gateway_api.clone(),
            Feed::new(flows::schema(), flows::FEED),
            Timers::new(flows::schema()),
            self.settings.clone(),
        ))
    }

    /// A gateway worker of another replica, for a test to run a pass.
    pub fn worker(&self) -> GatewayWorker {
        GatewayWorker {
            pool: self.pool.clone(),
            flows: self.replica(),
            poll_interval: Duration::from_secs(1),
        }
    }

    /// Fires a timer's handler now, in its own transaction, as the timer
    /// worker does when it falls due (the scheduled row stays as it is).
    pub async fn fire(&self, kind: &str, subject_id: &str) -> Result<(), ta_runtime::ServiceError> {
        let handler = EscrowTimers {
            flows: self.replica(),
        };
        let timer = DueTimer {
            id: 0,
            kind: kind.to_owned(),
            subject_id: subject_id.to_owned(),
            due_at: ta_runtime::timestamps::now(),
            payload: Vec::new(),
            failed_attempts: 0,
        };
        let mut tx = self.pool.begin().await?;
        handler.fire(&mut tx, &timer).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Makes a scheduled timer due now, so the service's timer worker fires it.
pub async fn make_due(pool: &PgPool, kind: &str, subject_id: &str) {
    sqlx::query(
        "UPDATE escrow.workflow_timers SET due_at = now(), fire_after = now() \
         WHERE kind = $1 AND subject_id = $2 AND status = 'scheduled'",
    )
    .bind(kind)
    .bind(subject_id)
    .execute(pool)
    .await
    .expect("make the timer due");
}

async fn serve(
    pool: PgPool,
    flags: &[&str],
    gateway: InMemoryGateway,
    gateway_api: Arc<dyn PaymentGateway>,
) -> Escrow {
    let mut args = ta_testkit::command_line(
        "escrow",
        &pool,
        &[
            "--webhook-secret",
            WEBHOOK_SECRET,
            "--workflow-timer-poll-interval",
            "50ms",
            "--workflow-feed-poll-interval",
            "50ms",
        ],
    );
    args.extend(flags.iter().map(|flag| (*flag).to_owned()));
    let config = Config::try_parse_from(args).expect("config");
    let service_api = api(&config, pool.clone(), gateway_api.clone());
    let server =
        RunningService::start(&SPEC, config.common.clone(), pool.clone(), service_api).await;
    let client = EscrowServiceClient::new(server.channel.clone());
    Escrow {
        server,
        client,
        gateway,
        pool,
        gateway_api,
        settings: config.settings(),
    }
}

#[allow(unused_imports)] // each test file uses part of it
pub use ta_testkit::{Snapshot, usd, violated_fields};

/// A request as `subject` in `role` (a service's token names escrow).
pub fn as_role<T>(message: T, subject: &str, role: Role) -> tonic::Request<T> {
    if role == Role::Service {
        ta_testkit::from_service(message, subject, "escrow")
    } else {
        ta_testkit::authorized(message, subject, role)
    }
}

/// A member of staff on finance duty.
pub fn finance<T>(message: T) -> tonic::Request<T> {
    as_role(message, OPERATOR, Role::Finance)
}

pub fn buyer<T>(message: T) -> tonic::Request<T> {
    as_role(message, BUYER, Role::Buyer)
}

pub fn contract<T>(message: T) -> tonic::Request<T> {
    as_role(message, "contract", Role::Service)
}

/// A member of staff on arbiter duty.
pub fn arbiter<T>(message: T) -> tonic::Request<T> {
    as_role(message, OPERATOR, Role::Arbiter)
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
        reason: String::new(),
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
        .get_escrow_account(finance(pb::GetEscrowAccountRequest {
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
        .reconcile_ledger(finance(pb::ReconcileLedgerRequest {}))
        .await
        .expect("reconcile")
        .into_inner();
    assert!(
        found.differences.is_empty(),
        "reconciliation found {:#?}",
        found.differences
    );
    let trial = client
        .get_trial_balance(finance(pb::GetTrialBalanceRequest::default()))
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

/// Row counts and digests of every escrow table (see [`TABLES`]).
pub async fn snapshot(pool: &PgPool) -> Snapshot {
    Snapshot::take(pool, "escrow", &TABLES, |_| "t::text").await
}

/// The events of the feed from the start, until `wanted` arrived (bounded).
pub async fn events_until(
    client: &mut Client,
    wanted: pb::EscrowEventType,
) -> Vec<pb::EscrowEvent> {
    use futures_util::StreamExt;
    let mut stream = client
        .stream_escrow_events(finance(pb::StreamEscrowEventsRequest { after_sequence: 0 }))
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

/// A gateway event as the gateway sends it: naming escrow's record
/// (`client_reference`) and the gateway's own id, created now unless said.
#[derive(Clone, Debug)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub reference: String,
    pub client_reference: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency_code: Option<String>,
    pub failure_code: Option<String>,
    /// Unix seconds.
    pub created: i64,
}

impl Event {
    pub fn new(id: &str, kind: &str, reference: &str) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            reference: reference.into(),
            client_reference: None,
            amount_minor: None,
            currency_code: None,
            failure_code: None,
            created: now_unix(),
        }
    }

    /// Names escrow's record: the attempt's or transfer's id.
    pub fn client(mut self, id: impl ToString) -> Self {
        self.client_reference = Some(id.to_string());
        self
    }

    /// How much arrived, in USD.
    pub fn usd(mut self, amount_minor: i64) -> Self {
        self.amount_minor = Some(amount_minor);
        self.currency_code = Some("USD".into());
        self
    }

    pub fn created(mut self, unix_seconds: i64) -> Self {
        self.created = unix_seconds;
        self
    }

    pub fn payload(&self) -> Vec<u8> {
        let mut data = serde_json::json!({ "reference": self.reference });
        if let Some(client) = &self.client_reference {
            data["client_reference"] = client.clone().into();
        }
        if let Some(amount) = self.amount_minor {
            data["amount_minor"] = amount.into();
        }
        if let Some(currency) = &self.currency_code {
            data["currency_code"] = currency.clone().into();
        }
        if let Some(code) = &self.failure_code {
            data["failure_code"] = code.clone().into();
        }
        serde_json::to_vec(&serde_json::json!({
            "id": self.id, "type": self.kind, "created": self.created, "data": data,
        }))
        .unwrap()
    }

    /// The request the webhook ingress forwards, signed now.
    pub fn signed(&self) -> pb::HandleGatewayWebhookRequest {
        let payload = self.payload();
        let signature = WebhookSecret::new(WEBHOOK_SECRET)
            .unwrap()
            .sign(now_unix(), &payload);
        pb::HandleGatewayWebhookRequest {
            idempotency_key: self.id.clone(),
            payload,
            signature,
        }
    }
}

/// Delivers `event` as the gateway does; the outcome escrow answered.
pub async fn deliver(client: &mut Client, event: &Event) -> pb::WebhookOutcome {
    let answer = client
        .handle_gateway_webhook(gateway(event.signed()))
        .await
        .unwrap_or_else(|status| panic!("{event:?}: {status:?}"))
        .into_inner();
    pb::WebhookOutcome::try_from(answer.outcome).expect("a known outcome")
}

/// The gateway transfers of `direction`, oldest first.
pub async fn transfers(
    client: &mut Client,
    direction: pb::GatewayTransferDirection,
) -> Vec<pb::GatewayTransfer> {
    let mut all = client
        .list_gateway_transfers(finance(pb::ListGatewayTransfersRequest {
            direction: direction as i32,
            page: Some(ta_proto::common::PageRequest {
                page_size: 100,
                page_token: String::new(),
            }),
            ..Default::default()
        }))
        .await
        .expect("list transfers")
        .into_inner()
        .transfers;
    all.reverse();
    all
}

/// Polls `probe` (bounded) until it returns `Some`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Settles every open transfer of `direction` as paid, by the gateway's
/// webhook (`payout.paid` or `refund.paid`), once the gateway has it.
pub async fn pay_all(client: &mut Client, direction: pb::GatewayTransferDirection) -> usize {
    let kind = if direction == pb::GatewayTransferDirection::Payout {
        "payout.paid"
    } else {
        "refund.paid"
    };
    let mut paid = 0;
    for t in transfers(client, direction).await {
        if t.status == pb::GatewayTransferStatus::Paid as i32
            || t.status == pb::GatewayTransferStatus::Failed as i32
        {
            continue;
        }
        let event = Event::new(
            &format!("evt-paid-{}", t.gateway_transfer_id),
            kind,
            &t.gateway_reference,
        )
        .client(&t.gateway_transfer_id);
        let outcome = deliver(client, &event).await;
        assert_eq!(outcome, pb::WebhookOutcome::Applied, "{t:?}");
        paid += 1;
    }
    paid
}

/// A posted balance of the trial balance, by kind, in USD.
pub async fn trial_posted(client: &mut Client, kind: pb::LedgerAccountKind) -> i64 {
    let trial = client
        .get_trial_balance(finance(pb::GetTrialBalanceRequest {
            currency_code: "USD".into(),
        }))
        .await
        .expect("trial balance")
        .into_inner();
    trial
        .currencies
        .iter()
        .flat_map(|c| c.lines.iter())
        .filter(|l| l.kind == kind as i32)
        .map(|l| minor(&l.posted))
        .sum()
}

/// The money checks after a test: the ledger is sound (reconciliation
/// finds nothing, the trial balance sums to zero), and the gateway's own
/// books agree with it: every key under which the gateway moved money is one
/// escrow recorded (an attempt's or a transfer's), a transfer the gateway
/// sent is not failed in escrow (one it never sent is not paid),
/// and what came in (card charges at the gateway, plus `credited`: bank and
/// partner money the test's webhooks reported) less what was paid out is
/// exactly what `gateway_clearing` shows escrow holds at the gateway.
pub async fn assert_money(escrow: &Escrow, credited: i64) {
    let mut client = escrow.client.clone();
    assert_sound(&mut client).await;
    let books = &escrow.gateway;
    let attempt_keys: Vec<String> = sqlx::query_scalar(
        "SELECT gateway_key FROM escrow.funding_attempts WHERE gateway_key IS NOT NULL",
    )
    .fetch_all(&escrow.pool)
    .await
    .unwrap();
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT gateway_key, status, amount_minor FROM escrow.gateway_transfers")
            .fetch_all(&escrow.pool)
            .await
            .unwrap();
    let mut keys_moved = 0;
    let mut charged = 0;
    for key in &attempt_keys {
        if let Some(money) = books.moved_under(key) {
            keys_moved += 1;
            charged += money.amount_minor;
        }
    }
    let mut paid_out = 0;
    for (key, status, amount) in &rows {
        match books.moved_under(key) {
            Some(money) => {
                keys_moved += 1;
                assert_eq!(money.amount_minor, *amount, "{key}: sent as recorded");
                // `sending`: the worker's send is in flight (the gateway
                // acted, its answer is not recorded yet).
                assert!(
                    ["sending", "pending", "unknown", "paid"].contains(&status.as_str()),
                    "{key}: the gateway sent it, escrow says {status}"
                );
            }
            None => assert!(
                ["sending", "failed"].contains(&status.as_str()),
                "{key}: never sent, escrow says {status}"
            ),
        }
        if status == "paid" {
            paid_out += amount;
        }
    }
    assert_eq!(
        keys_moved,
        books.money_movements(),
        "the gateway moved money under a key escrow never recorded"
    );
    let clearing = trial_posted(&mut client, pb::LedgerAccountKind::GatewayClearing).await;
    assert_eq!(
        charged + credited - paid_out,
        -clearing,
        "at the gateway: {charged} charged + {credited} credited - {paid_out} paid out; the ledger's clearing account says {}",
        -clearing
    );
}
