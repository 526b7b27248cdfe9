//! The gateway's use cases over storage: acting calls by idempotency key,
//! the status query, settlements (by the control API and by the worker),
//! the faults, the books. The HTTP layer (`api`) only translates.

use std::{sync::Mutex, time::Duration};

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;

use crate::{
    domain::{
        self, BankTransferRequest, CardDecision, ChargeRequest, FailNth, FaultSettings, Kind,
        PayLaterRequest, PayoutRequest, RefundRequest, Refusal, Request, Rng, Status,
    },
    storage::{self, FaultsRow, NewEvent, NewOperation, OperationRow},
};

/// The answer to an acting call.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub body: Value,
    /// The first answer, replayed to the same key and body.
    pub replayed: bool,
    /// Acted and committed, but the answer is held this long (a time-out
    /// fault): the client gives up first.
    pub hang: Option<Duration>,
}

/// The sandbox gateway over its database.
pub struct Gateway {
    pub pool: PgPool,
    defaults: FaultSettings,
    rng: Mutex<Rng>,
    settle_after: Duration,
    auto_credit_after: Option<Duration>,
    /// Woken when an event is written, so delivery need not wait for its poll.
    pub new_events: Notify,
    /// Woken when an operation with a settlement date is written.
    pub new_settlements: Notify,
}

fn internal(error: sqlx::Error) -> Refusal {
    tracing::error!(%error, "database error");
    Refusal::Internal
}

impl Gateway {
    pub fn new(
        pool: PgPool,
        defaults: FaultSettings,
        seed: Option<u64>,
        settle_after: Duration,
        auto_credit_after: Option<Duration>,
    ) -> Self {
        Self {
            pool,
            defaults,
            rng: Mutex::new(seed.map_or_else(Rng::from_entropy, Rng::seeded)),
            settle_after,
            auto_credit_after,
            new_events: Notify::new(),
            new_settlements: Notify::new(),
        }
    }

    fn draw<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut rng)
    }

    // --- faults ---------------------------------------------------------------------

    /// The faults in force: as last PUT (with the counters left), else the defaults.
    pub async fn faults(&self) -> Result<FaultSettings, Refusal> {
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        self.faults_on(&mut conn).await
    }

    async fn faults_on(&self, conn: &mut PgConnection) -> Result<FaultSettings, Refusal> {
        let Some(row) = storage::load_faults(conn).await.map_err(internal)? else {
            return Ok(self.defaults.clone());
        };
        let mut faults: FaultSettings =
            serde_json::from_value(row.settings).unwrap_or_else(|_| self.defaults.clone());
        faults.fail_nth = match row.fail_nth_kind {
            Some(kind) if row.fail_nth_remaining > 0 => Some(FailNth {
                kind,
                n: row.fail_nth_remaining.unsigned_abs(),
            }),
            _ => None,
        };
        faults.lose_next = row.lose_next.unsigned_abs();
        Ok(faults)
    }

    /// Replaces the faults with `body` over the defaults; answers the faults now in force.
    pub async fn put_faults(&self, body: &[u8]) -> Result<FaultSettings, Refusal> {
        let faults = FaultSettings::overlay(&self.defaults, body)?;
        if let Some(seed) = faults.seed {
            self.draw(|rng| *rng = Rng::seeded(seed));
        }
        let counters = (faults.fail_nth.clone(), faults.lose_next);
        let settings = FaultSettings {
            fail_nth: None,
            lose_next: 0,
            seed: None,
            ..faults
        };
        let row = FaultsRow {
            settings: serde_json::to_value(&settings).unwrap_or(Value::Null),
            fail_nth_kind: counters.0.as_ref().map(|n| n.kind.clone()),
            fail_nth_remaining: counters
                .0
                .map_or(0, |n| i32::try_from(n.n).unwrap_or(i32::MAX)),
            lose_next: i32::try_from(counters.1).unwrap_or(i32::MAX),
        };
        storage::store_faults(&self.pool, &row)
            .await
            .map_err(internal)?;
        // Settlement held or released: let the worker look again.
        self.new_settlements.notify_one();
        self.faults().await
    }

    /// What every `/v1` call goes through first: the latency, then a failure
    /// before acting.
    pub async fn enter(&self) -> Result<FaultSettings, Refusal> {
        let faults = self.faults().await?;
        let latency = self.draw(|rng| faults.latency(rng));
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if self.draw(|rng| faults.fails(rng)) {
            return Err(unavailable("the gateway failed (injected failure_rate)"));
        }
        Ok(faults)
    }

    // --- acting calls ---------------------------------------------------------------

    /// A charge, bank transfer, Pay Later application, payout or refund under
    /// `key`: the same key and body replay the first answer and move nothing;
    /// the same key with another body is refused.
    pub async fn act(&self, kind: Kind, key: &str, body: &[u8]) -> Result<Answer, Refusal> {
        let faults = self.enter().await?;
        let request = Request::parse(kind, body)?;
        if storage::fail_nth_hit(&self.pool, kind)
            .await
            .map_err(internal)?
        {
            return Err(unavailable(&format!(
                "the gateway failed (injected fail_nth for {})",
                kind.as_str()
            )));
        }
        let card = match &request {
            Request::Charge(charge) => Some(domain::card_decision(&charge.card_token)),
            _ => None,
        };
        match (&card, &request) {
            (Some(CardDecision::GatewayError), _) => {
                return Err(unavailable("the card network failed: nothing was charged"));
            }
            (_, Request::PayLater(pay_later))
                if pay_later.partner_id == domain::UNAVAILABLE_PARTNER =>
            {
                return Err(unavailable("the financing partner does not answer"));
            }
            _ => {}
        }
        let Some(mut answer) = self.record(key, &request, card, &faults).await? else {
            // Another call with the key committed first: answer as it did.
            let mut conn = self.pool.acquire().await.map_err(internal)?;
            let existing = storage::find_by_key(&mut conn, key)
                .await
                .map_err(internal)?
                .ok_or(Refusal::Internal)?;
            return replay(&existing, &request);
        };
        let hangs = matches!(card, Some(CardDecision::ApproveThenHang));
        if !answer.replayed && (hangs || self.draw(|rng| faults.times_out(rng))) {
            answer.hang = Some(faults.hang());
        }
        Ok(answer)
    }

    /// Stores the operation (and its first webhook) in one transaction. None
    /// when a concurrent call with the same key won.
    async fn record(
        &self,
        key: &str,
        request: &Request,
        card: Option<CardDecision>,
        faults: &FaultSettings,
    ) -> Result<Option<Answer>, Refusal> {
        let mut tx = self.pool.begin().await.map_err(internal)?;
        // A refund locks its source first: refunds against one source, and
        // concurrent retries of one refund, are decided one at a time, the
        // retry seeing the refund it repeats.
        let source = match request {
            Request::Refund(refund) => storage::lock(&mut tx, &refund.source)
                .await
                .map_err(internal)?,
            _ => None,
        };
        storage::lock_key(&mut tx, key).await.map_err(internal)?;
        if let Some(existing) = storage::find_by_key(&mut tx, key).await.map_err(internal)? {
            return replay(&existing, request).map(Some);
        }
        if storage::is_voided(&mut tx, key).await.map_err(internal)? {
            return Err(Refusal::voided(key));
        }
        let new = match request {
            Request::Charge(charge) => charge_operation(key, charge, card),
            Request::BankTransfer(transfer) => {
                bank_transfer_operation(key, transfer, self.auto_credit_after)
            }
            Request::PayLater(pay_later) => {
                pay_later_operation(key, pay_later, self.auto_credit_after)
            }
            Request::Payout(payout) => payout_operation(key, payout, self.settle_after),
            Request::Refund(refund) => {
                let source = refundable_source(&mut tx, refund, source).await?;
                refund_operation(key, refund, &source, self.settle_after)
            }
        };
        if !storage::insert_operation(&mut tx, &new)
            .await
            .map_err(internal)?
        {
            return Ok(None);
        }
        let row = new.row();
        if row.kind() == Kind::Charge {
            let succeeded = row.status() == Status::Succeeded;
            self.emit(&mut tx, faults, &row, succeeded, row.amount_minor)
                .await?;
        }
        tx.commit().await.map_err(internal)?;
        if new.settle_after.is_some() {
            self.new_settlements.notify_one();
        }
        Ok(Some(Answer {
            body: new.response,
            replayed: false,
            hang: None,
        }))
    }

    /// Writes the webhook about `operation` settling, with its delivery faults.
    async fn emit(
        &self,
        conn: &mut PgConnection,
        faults: &FaultSettings,
        operation: &OperationRow,
        succeeded: bool,
        amount_minor: i64,
    ) -> Result<(), Refusal> {
        let delivery = self.draw(|rng| faults.delivery(rng));
        let lost = storage::take_lose_next(conn).await.map_err(internal)?;
        storage::insert_event(
            conn,
            NewEvent {
                operation,
                event_type: operation.kind().event_type(succeeded),
                amount_minor,
                failure_code: operation.failure_code.as_deref(),
                delay: delivery.delay,
                lost,
                duplicate: delivery.duplicate,
            },
        )
        .await
        .map_err(internal)?;
        self.new_events.notify_one();
        Ok(())
    }

    /// What the gateway did under `key`.
    pub async fn operation(&self, key: &str) -> Result<Value, Refusal> {
        self.enter().await?;
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        storage::find_by_key(&mut conn, key)
            .await
            .map_err(internal)?
            .map(|row| row.view())
            .ok_or_else(|| Refusal::NotFound(format!("no operation has the key {key}")))
    }

    /// What the gateway did under `key`, or, when nothing, the key voided so
    /// that nothing ever will be (a hosted gateway's "technical cancel"): a
    /// client that gave up on an unanswered call learns for good whether it
    /// acted. Waits for a call under the key that is being recorded.
    pub async fn void(&self, key: &str) -> Result<Value, Refusal> {
        self.enter().await?;
        let mut tx = self.pool.begin().await.map_err(internal)?;
        storage::lock_key(&mut tx, key).await.map_err(internal)?;
        if let Some(row) = storage::find_by_key(&mut tx, key).await.map_err(internal)? {
            return Ok(row.view());
        }
        storage::void_key(&mut tx, key).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(json!({ "idempotency_key": key, "status": "voided" }))
    }

    // --- settlement -----------------------------------------------------------------

    /// Settles the pending operation `id` of one of `kinds` (the control API).
    pub async fn settle(&self, id: &str, kinds: &[Kind], how: Settle) -> Result<Value, Refusal> {
        let faults = self.faults().await?;
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let current = storage::lock(&mut tx, id)
            .await
            .map_err(internal)?
            .filter(|row| kinds.contains(&row.kind()))
            .ok_or_else(|| {
                let names: Vec<_> = kinds.iter().map(|k| k.as_str()).collect();
                Refusal::NotFound(format!("no {} has the id {id}", names.join(" or ")))
            })?;
        if !current.status().can_become(how.status()) {
            return Err(Refusal::NotPending(format!(
                "{id} is {} already",
                current.status
            )));
        }
        let (settled_minor, failure) = match &how {
            Settle::Credit(amount) => {
                let amount = amount.unwrap_or(current.amount_minor);
                if amount <= 0 {
                    return Err(Refusal::invalid(
                        "amount_minor must be a positive number of minor units",
                    ));
                }
                (Some(amount), None)
            }
            Settle::Succeed if current.kind().is_outgoing() => (None, None),
            Settle::Succeed => (Some(current.amount_minor), None),
            Settle::Fail { code, message } => (None, Some((code.as_str(), message.as_str()))),
        };
        let row = storage::settle(&mut tx, id, how.status(), settled_minor, failure)
            .await
            .map_err(internal)?;
        let amount = settled_minor.unwrap_or(row.amount_minor);
        self.emit(
            &mut tx,
            &faults,
            &row,
            how.status() == Status::Succeeded,
            amount,
        )
        .await?;
        tx.commit().await.map_err(internal)?;
        Ok(row.view())
    }

    /// Settles what is due (payouts and refunds after the settlement delay,
    /// bank transfers and Pay Later after the automatic credit's): how many.
    pub async fn settle_due(&self) -> Result<usize, Refusal> {
        let faults = self.faults().await?;
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let settled = storage::settle_due(&mut tx, faults.hold_settlement, 100)
            .await
            .map_err(internal)?;
        for row in &settled {
            let amount = row.settled_minor.unwrap_or(row.amount_minor);
            self.emit(&mut tx, &faults, row, true, amount).await?;
        }
        tx.commit().await.map_err(internal)?;
        Ok(settled.len())
    }

    // --- reports --------------------------------------------------------------------

    /// Per currency: money in (approved charges, bank credits, Pay Later
    /// disbursed), money out (payouts and refunds paid), out pending, held.
    pub async fn books(&self) -> Result<Value, Refusal> {
        let rows = storage::books(&self.pool).await.map_err(internal)?;
        let currencies: Vec<Value> = rows
            .into_iter()
            .map(|r| {
                let money_in = r.charges_minor + r.bank_credits_minor + r.pay_later_minor;
                let money_out = r.payouts_paid_minor + r.refunds_paid_minor;
                json!({
                    "currency": r.currency,
                    "money_in_minor": money_in,
                    "charges_minor": r.charges_minor,
                    "bank_credits_minor": r.bank_credits_minor,
                    "pay_later_minor": r.pay_later_minor,
                    "money_out_minor": money_out,
                    "payouts_paid_minor": r.payouts_paid_minor,
                    "refunds_paid_minor": r.refunds_paid_minor,
                    "payouts_paid": r.payouts_paid,
                    "refunds_paid": r.refunds_paid,
                    "out_pending_minor": r.out_pending_minor,
                    "held_minor": money_in - money_out,
                })
            })
            .collect();
        Ok(json!({ "object": "books", "currencies": currencies }))
    }

    pub async fn operations(&self) -> Result<Value, Refusal> {
        let rows = storage::list_operations(&self.pool)
            .await
            .map_err(internal)?;
        Ok(json!({ "operations": rows.iter().map(OperationRow::view).collect::<Vec<_>>() }))
    }

    pub async fn events(&self) -> Result<Value, Refusal> {
        let events = storage::list_events(&self.pool).await.map_err(internal)?;
        Ok(json!({ "events": events }))
    }

    pub async fn redeliver(&self, event_id: &str) -> Result<Value, Refusal> {
        if !storage::redeliver(&self.pool, event_id)
            .await
            .map_err(internal)?
        {
            return Err(Refusal::NotFound(format!("no event has the id {event_id}")));
        }
        self.new_events.notify_one();
        Ok(json!({ "id": event_id, "redelivery": "scheduled" }))
    }
}

/// How the control API settles an operation.
#[derive(Clone, Debug)]
pub enum Settle {
    /// A bank transfer credited with this amount (its own, when None).
    Credit(Option<i64>),
    /// Disbursed, paid.
    Succeed,
    /// Rejected, failed.
    Fail { code: String, message: String },
}

impl Settle {
    fn status(&self) -> Status {
        match self {
            Settle::Fail { .. } => Status::Failed,
            _ => Status::Succeeded,
        }
    }
}

fn unavailable(message: &str) -> Refusal {
    Refusal::Unavailable(format!(
        "{message}; nothing was done, retry with the same key"
    ))
}

/// The stored answer for a retry of the same request, or the refusal of a
/// key reused for another.
fn replay(existing: &OperationRow, request: &Request) -> Result<Answer, Refusal> {
    if existing.kind() != request.kind() || existing.request != request.to_json() {
        return Err(Refusal::key_reused());
    }
    Ok(Answer {
        body: existing.response.clone(),
        replayed: true,
        hang: None,
    })
}

fn operation(key: &str, request: &Request, id: String, response: Value) -> NewOperation {
    let (client_reference, amount_minor, currency) = request.money();
    NewOperation {
        id,
        key: key.to_owned(),
        kind: request.kind(),
        request: request.to_json(),
        response,
        client_reference: client_reference.to_owned(),
        amount_minor,
        currency: currency.to_owned(),
        status: Status::Pending,
        failure_code: None,
        failure_message: None,
        source_id: None,
        counterparty: None,
        settle_after: None,
    }
}

fn charge_operation(key: &str, charge: &ChargeRequest, card: Option<CardDecision>) -> NewOperation {
    let id = domain::new_id(Kind::Charge.prefix());
    let (status, code, message) = match card {
        Some(CardDecision::Decline { code, message }) => (
            Status::Failed,
            Some(code.to_owned()),
            Some(message.to_owned()),
        ),
        _ => (Status::Succeeded, None, None),
    };
    let response = json!({
        "id": id,
        "object": "charge",
        "status": status.as_str(),
        "failure_code": code,
        "failure_message": message,
        "client_reference": charge.client_reference,
        "amount_minor": charge.amount_minor,
        "currency": charge.currency,
    });
    NewOperation {
        status,
        failure_code: code,
        failure_message: message,
        ..operation(key, &Request::Charge(charge.clone()), id, response)
    }
}

fn bank_transfer_operation(
    key: &str,
    transfer: &BankTransferRequest,
    auto_credit_after: Option<Duration>,
) -> NewOperation {
    let id = domain::new_id(Kind::BankTransfer.prefix());
    let response = json!({
        "id": id,
        "object": "bank_transfer",
        "status": "pending",
        "client_reference": transfer.client_reference,
        "amount_minor": transfer.amount_minor,
        "currency": transfer.currency,
        "instructions": {
            "beneficiary_name": domain::BENEFICIARY_NAME,
            "iban": domain::IBAN,
            "bic": domain::BIC,
            "payment_reference": domain::payment_reference(&id),
        },
    });
    NewOperation {
        counterparty: Some(transfer.payer_name.clone()),
        settle_after: auto_credit_after,
        ..operation(key, &Request::BankTransfer(transfer.clone()), id, response)
    }
}

fn pay_later_operation(
    key: &str,
    pay_later: &PayLaterRequest,
    auto_credit_after: Option<Duration>,
) -> NewOperation {
    let id = domain::new_id(Kind::PayLater.prefix());
    let response = json!({
        "id": id,
        "object": "pay_later",
        "status": "pending",
        "loan_reference": domain::new_id("loan"),
        "client_reference": pay_later.client_reference,
        "amount_minor": pay_later.amount_minor,
        "currency": pay_later.currency,
        "partner_id": pay_later.partner_id,
        "repayment_months": pay_later.repayment_months,
    });
    NewOperation {
        counterparty: Some(pay_later.partner_id.clone()),
        settle_after: auto_credit_after,
        ..operation(key, &Request::PayLater(pay_later.clone()), id, response)
    }
}

fn payout_operation(key: &str, payout: &PayoutRequest, settle_after: Duration) -> NewOperation {
    let id = domain::new_id(Kind::Payout.prefix());
    let response = json!({
        "id": id,
        "object": "payout",
        "status": "pending",
        "client_reference": payout.client_reference,
        "amount_minor": payout.amount_minor,
        "currency": payout.currency,
        "beneficiary": payout.beneficiary,
    });
    NewOperation {
        counterparty: Some(payout.beneficiary.clone()),
        settle_after: Some(settle_after),
        ..operation(key, &Request::Payout(payout.clone()), id, response)
    }
}

fn refund_operation(
    key: &str,
    refund: &RefundRequest,
    source: &OperationRow,
    settle_after: Duration,
) -> NewOperation {
    let id = domain::new_id(Kind::Refund.prefix());
    let response = json!({
        "id": id,
        "object": "refund",
        "status": "pending",
        "client_reference": refund.client_reference,
        "amount_minor": refund.amount_minor,
        "currency": refund.currency,
        "source": refund.source,
    });
    NewOperation {
        source_id: Some(source.id.clone()),
        counterparty: source.counterparty.clone(),
        settle_after: Some(settle_after),
        ..operation(key, &Request::Refund(refund.clone()), id, response)
    }
}

/// The refund's source (locked by the caller), once it is known to have
/// collected enough.
async fn refundable_source(
    conn: &mut PgConnection,
    refund: &RefundRequest,
    source: Option<OperationRow>,
) -> Result<OperationRow, Refusal> {
    let unknown = || Refusal::Unprocessable {
        code: "source_unknown",
        message: format!(
            "{} is not a charge, bank transfer or Pay Later operation of this gateway",
            refund.source
        ),
    };
    let source = source
        .filter(|s| s.kind().is_refundable_source())
        .ok_or_else(unknown)?;
    if source.currency != refund.currency {
        return Err(Refusal::Unprocessable {
            code: "currency_mismatch",
            message: format!(
                "{} was paid in {}, not {}",
                source.id, source.currency, refund.currency
            ),
        });
    }
    let collected = domain::collected(
        source.kind(),
        source.status(),
        source.amount_minor,
        source.settled_minor,
    );
    let refunded = storage::refunded_against(conn, &source.id)
        .await
        .map_err(internal)?;
    domain::check_refund(collected, refunded, refund.amount_minor)?;
    Ok(source)
}
