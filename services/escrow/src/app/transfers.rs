//! Money escrow sends out through the gateway: payouts of what suppliers are
//! owed, refunds owed to buyers (against the charge or bank transfer that
//! brought the money), and refunds of credits parked in suspense.
//!
//! Each movement is one row of `gateway_transfers` with its own id and
//! gateway key, written with its hold (the amount reserved on the account it
//! leaves) and committed before the gateway is asked. Then, outside any
//! transaction, it is sent; the gateway's answer makes it `pending`, and its
//! webhook (or, once `check_at` passes without one, its answer to a status
//! query by key) posts the hold (paid) or voids it (failed: the money is owed
//! again). No answer at all keeps it `sending` and it is sent again with the
//! same key, which the gateway answers without paying twice; a report that
//! never comes makes it `unknown`, asked about until the gateway says. No
//! clock ever voids money that may have left.
//!
//! Each payout is its own transaction under its payable's row lock, so a
//! failure at one supplier leaves the others' payouts recorded and sent, and
//! two overlapping runs cannot both take the same money.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use ta_proto::escrow as pb;
use ta_runtime::{
    ServiceError, db,
    money::{Currency, Money},
    pipeline::{Mutations, Prepared},
    timestamps,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{
        AccountKey, AccountKind, HoldRequest, Leg, Purpose, TransferRequest, ledger::never_expires,
    },
    gateway::{GatewayError, OperationStatus, OutgoingTransfer},
    storage::{
        accounts,
        attempts::{self, AttemptView},
        ledger,
        transfers::{self, Direction, NewTransfer, TransferRow, TransferStatus},
    },
    views,
};

use super::context::{Flows, after};

/// How many due transfers one worker pass handles at most.
const BATCH: i64 = 100;

/// RunSupplierPayouts: [`run_payouts`] for the supplier or currency the
/// request names (none: all), answered with the payouts it started, under
/// the caller's key. The payouts are recorded and sent outside the answer's
/// transaction (each in its own, see the module docs).
pub async fn run_supplier_payouts(
    flows: &Flows,
    mutations: &Mutations,
    prepared: &Prepared<pb::RunSupplierPayoutsRequest, (Option<String>, Option<Currency>)>,
) -> Result<pb::RunSupplierPayoutsResponse, ServiceError> {
    if let Some(answer) = mutations.replay(prepared).await? {
        return Ok(answer);
    }
    let (supplier, currency) = &prepared.command;
    let payouts = run_payouts(flows, mutations.pool(), supplier.as_deref(), *currency).await?;
    let answer = pb::RunSupplierPayoutsResponse {
        payouts: payouts.iter().map(views::transfer_proto).collect(),
    };
    mutations
        .answer(prepared, async |_| Ok(answer.clone()))
        .await
}

/// Pays what suppliers are owed (all, or one supplier or currency): one
/// payout per supplier and currency, each recorded in its own transaction
/// and then sent. Returns the payouts started, as they stand after sending.
pub async fn run_payouts(
    flows: &Flows,
    pool: &PgPool,
    supplier_id: Option<&str>,
    currency: Option<Currency>,
) -> Result<Vec<TransferRow>, ServiceError> {
    let payables = {
        let mut conn = pool.acquire().await?;
        ledger::payable_accounts(
            &mut conn,
            AccountKind::SupplierPayable,
            supplier_id,
            currency,
        )
        .await?
    };
    let mut started = Vec::new();
    for payable in payables {
        let mut tx = db::begin(pool).await?;
        let outcome = start_payout(&mut tx, flows, &payable).await;
        // Sent at once, before the next payout is recorded, so its lease
        // (see `sent_at_once`) runs from its own commit.
        started.extend(
            send_all(
                flows,
                pool,
                db::finish(tx, outcome).await?.into_iter().collect(),
            )
            .await?,
        );
    }
    Ok(started)
}

async fn start_payout(
    conn: &mut PgConnection,
    flows: &Flows,
    payable: &AccountKey,
) -> Result<Option<TransferRow>, ServiceError> {
    let available = ledger::lock_available(conn, payable).await?;
    if available <= 0 {
        return Ok(None);
    }
    let id = Uuid::now_v7();
    ledger::hold(
        conn,
        &HoldRequest {
            id,
            purpose: Purpose::payout(&payable.owner, id),
            escrow_account: None,
            debit: payable.clone(),
            credit: AccountKey::gateway_clearing(payable.currency),
            amount_minor: available,
            expires_at: never_expires(),
        },
    )
    .await?;
    let row = transfers::insert(
        conn,
        &NewTransfer {
            id,
            direction: Direction::Payout,
            supplier_id: Some(&payable.owner),
            escrow_account_id: None,
            currency: payable.currency.as_str(),
            amount_minor: available,
            beneficiary: &payable.owner,
            source_reference: None,
            funding_attempt_id: None,
        },
        timestamps::now(),
        sent_at_once(flows),
    )
    .await?;
    Ok(Some(row))
}

/// Pays refunds owed to buyers back out through the gateway, each against
/// the funding attempt whose money it returns.
pub async fn run_buyer_refunds(
    flows: &Flows,
    pool: &PgPool,
) -> Result<Vec<TransferRow>, ServiceError> {
    let payables = {
        let mut conn = pool.acquire().await?;
        ledger::payable_accounts(&mut conn, AccountKind::BuyerRefundPayable, None, None).await?
    };
    let mut started = Vec::new();
    for payable in payables {
        let Ok(account_id) = Uuid::parse_str(&payable.owner) else {
            continue;
        };
        let mut tx = db::begin(pool).await?;
        let outcome = start_buyer_refunds(&mut tx, flows, account_id, &payable).await;
        started.extend(send_all(flows, pool, db::finish(tx, outcome).await?).await?);
    }
    Ok(started)
}

async fn start_buyer_refunds(
    conn: &mut PgConnection,
    flows: &Flows,
    account_id: Uuid,
    payable: &AccountKey,
) -> Result<Vec<TransferRow>, ServiceError> {
    let account = accounts::lock_account(conn, account_id).await?;
    let mut available = ledger::lock_available(conn, payable).await?;
    let mut started = Vec::new();
    if available <= 0 {
        return Ok(started);
    }
    let refunded = transfers::refunded_by_attempt(conn, account.id).await?;
    for (attempt_id, received, source) in attempts::refund_sources(conn, account.id).await? {
        let room = received - refunded.get(&attempt_id).copied().unwrap_or(0);
        let amount = room.min(available);
        if amount <= 0 {
            continue;
        }
        let id = Uuid::now_v7();
        ledger::hold(
            conn,
            &HoldRequest {
                id,
                purpose: Purpose::buyer_refund_payout(account.id, id),
                escrow_account: Some(account.id),
                debit: payable.clone(),
                credit: AccountKey::gateway_clearing(account.currency),
                amount_minor: amount,
                expires_at: never_expires(),
            },
        )
        .await?;
        started.push(
            transfers::insert(
                conn,
                &NewTransfer {
                    id,
                    direction: Direction::BuyerRefund,
                    supplier_id: None,
                    escrow_account_id: Some(account.id),
                    currency: account.currency.as_str(),
                    amount_minor: amount,
                    beneficiary: &source,
                    source_reference: Some(&source),
                    funding_attempt_id: Some(attempt_id),
                },
                timestamps::now(),
                sent_at_once(flows),
            )
            .await?,
        );
        available -= amount;
        if available == 0 {
            break;
        }
    }
    if available > 0 {
        tracing::warn!(
            escrow_account_id = %account.id,
            owed_minor = available,
            "a refund owed to the buyer exceeds what its payments brought in; it stays owed for an operator"
        );
    }
    Ok(started)
}

/// Sends back, against `source_reference` (the payment that brought it),
/// money parked in suspense for an attempt: recorded here, sent by the
/// worker (or at once by the caller's [`send_all`]).
pub async fn refund_suspended(
    conn: &mut PgConnection,
    flows: &Flows,
    attempt: &AttemptView,
    credit_id: &str,
    source_reference: &str,
    amount_minor: i64,
) -> Result<TransferRow, ServiceError> {
    let currency = Currency::parse(&attempt.currency)
        .ok_or_else(|| ServiceError::internal("attempt in an unknown currency"))?;
    let id = Uuid::now_v7();
    ledger::hold(
        conn,
        &HoldRequest {
            id,
            purpose: Purpose::suspense_refund(attempt.escrow_account_id, attempt.id, credit_id),
            escrow_account: Some(attempt.escrow_account_id),
            debit: AccountKey::suspense(currency),
            credit: AccountKey::gateway_clearing(currency),
            amount_minor,
            expires_at: never_expires(),
        },
    )
    .await?;
    let row = transfers::insert(
        conn,
        &NewTransfer {
            id,
            direction: Direction::SuspenseRefund,
            supplier_id: None,
            escrow_account_id: Some(attempt.escrow_account_id),
            currency: &attempt.currency,
            amount_minor,
            beneficiary: source_reference,
            source_reference: Some(source_reference),
            funding_attempt_id: Some(attempt.id),
        },
        timestamps::now(),
        timestamps::now(),
    )
    .await?;
    flows.wake_worker();
    Ok(row)
}

/// When the worker may pick up a transfer its run sends at once: after the
/// send had its chance, so the two never send one row at the same time.
fn sent_at_once(flows: &Flows) -> OffsetDateTime {
    after(flows.settings.gateway_check_after, timestamps::now())
}

/// Sends each freshly recorded transfer now rather than at the worker's next
/// pass; returns them as they stand afterwards.
async fn send_all(
    flows: &Flows,
    pool: &PgPool,
    started: Vec<TransferRow>,
) -> Result<Vec<TransferRow>, ServiceError> {
    let mut sent = Vec::with_capacity(started.len());
    for row in started {
        let id = row.id;
        // A failure to send is the worker's to retry: the row is recorded.
        if let Err(error) = handle(flows, pool, row).await {
            tracing::warn!(gateway_transfer_id = %id, %error, "sending a transfer failed; the worker retries it");
        }
        let mut conn = pool.acquire().await?;
        sent.push(transfers::get(&mut conn, id).await?);
    }
    Ok(sent)
}

/// The worker's pass over transfers due: sends those not yet accepted, asks
/// the gateway about those whose report is overdue. Returns how many it
/// handled.
pub async fn handle_due(flows: &Flows, pool: &PgPool) -> Result<usize, ServiceError> {
    let lease = time::Duration::try_from(flows.settings.gateway_check_after)
        .unwrap_or(time::Duration::MINUTE);
    let mut tx = pool.begin().await?;
    let due = transfers::lease_due(&mut tx, timestamps::now(), lease, BATCH).await?;
    tx.commit().await?;
    let count = due.len();
    for row in due {
        let id = row.id;
        if let Err(error) = handle(flows, pool, row).await {
            tracing::warn!(gateway_transfer_id = %id, %error, "a gateway transfer could not be handled; retried later");
        }
    }
    Ok(count)
}

/// Sends a transfer or asks about it, outside any transaction, then records
/// what the gateway said.
async fn handle(flows: &Flows, pool: &PgPool, row: TransferRow) -> Result<(), ServiceError> {
    let status = row.status()?;
    // The gateway first, with no transaction open and no connection held.
    let heard = match status {
        TransferStatus::Sending => Heard::Sent(send(flows, &row).await),
        TransferStatus::Pending | TransferStatus::Unknown => {
            Heard::Asked(Box::new(flows.gateway.operation(&row.gateway_key).await))
        }
        TransferStatus::Paid | TransferStatus::Failed => return Ok(()),
    };
    let now = timestamps::now();
    let report_due = after(flows.settings.payout_expiry, now);
    let recheck = after(recheck_interval(flows), now);
    let mut tx = db::begin(pool).await?;
    let outcome = match heard {
        Heard::Sent(Ok(accepted)) => accept(&mut tx, flows, &row, &accepted, report_due).await,
        Heard::Sent(Err(GatewayError::Rejected { code, .. })) => {
            settle(&mut tx, flows, row.id, false, &code).await.map(drop)
        }
        Heard::Sent(Err(error)) => {
            let next = after(backoff(flows, row.sends), now);
            transfers::retry_later(&mut tx, row.id, false, &error.to_string(), next).await
        }
        Heard::Asked(asked) => match *asked {
            Ok(Some(operation)) => match operation.status {
                OperationStatus::Succeeded => {
                    settle(&mut tx, flows, row.id, true, "").await.map(drop)
                }
                OperationStatus::Failed { code, .. } => {
                    settle(&mut tx, flows, row.id, false, &code).await.map(drop)
                }
                OperationStatus::Pending => {
                    transfers::retry_later(
                        &mut tx,
                        row.id,
                        true,
                        "no report by its expiry; the gateway says it is still pending",
                        recheck,
                    )
                    .await
                }
            },
            Ok(None) => {
                transfers::retry_later(
                    &mut tx,
                    row.id,
                    true,
                    "no report by its expiry, and the gateway has no record of its key: an operator must look",
                    recheck,
                )
                .await
            }
            Err(error) => {
                transfers::retry_later(&mut tx, row.id, true, &error.to_string(), recheck).await
            }
        },
    };
    db::finish(tx, outcome).await
}

/// What the gateway said about a transfer: to its send, or to the question.
enum Heard {
    Sent(Result<OutgoingTransfer, GatewayError>),
    Asked(Box<Result<Option<crate::gateway::Operation>, GatewayError>>),
}

async fn send(flows: &Flows, row: &TransferRow) -> Result<OutgoingTransfer, GatewayError> {
    let currency = Currency::parse(&row.currency).ok_or_else(|| GatewayError::Rejected {
        code: "currency".into(),
        message: format!("unknown currency {}", row.currency),
    })?;
    let amount = Money::new(row.amount_minor, currency);
    let client_reference = row.id.to_string();
    if row.direction == Direction::Payout.as_str() {
        flows
            .gateway
            .send_payout(
                &row.gateway_key,
                &client_reference,
                &row.beneficiary,
                amount,
            )
            .await
    } else {
        flows
            .gateway
            .refund(
                &row.gateway_key,
                &client_reference,
                row.source_reference.as_deref().unwrap_or(&row.beneficiary),
                amount,
            )
            .await
    }
}

async fn accept(
    conn: &mut PgConnection,
    flows: &Flows,
    row: &TransferRow,
    accepted: &OutgoingTransfer,
    report_due: OffsetDateTime,
) -> Result<(), ServiceError> {
    transfers::lock(conn, row.id).await?;
    transfers::accept(conn, row.id, &accepted.reference, report_due).await?;
    match &accepted.status {
        OperationStatus::Pending => Ok(()),
        OperationStatus::Succeeded => settle(conn, flows, row.id, true, "").await.map(drop),
        OperationStatus::Failed { code, .. } => {
            settle(conn, flows, row.id, false, code).await.map(drop)
        }
    }
}

/// How often a transfer whose report is overdue is asked about.
fn recheck_interval(flows: &Flows) -> Duration {
    flows
        .settings
        .payout_expiry
        .min(Duration::from_secs(900))
        .max(flows.settings.gateway_check_after)
}

/// Waits between sends of a transfer the gateway did not accept: doubling
/// from the check interval, at most an hour.
fn backoff(flows: &Flows, sends: i32) -> Duration {
    let base = flows.settings.gateway_check_after;
    let factor = 1u32 << sends.clamp(0, 10);
    base.saturating_mul(factor).min(Duration::from_secs(3600))
}

/// What the gateway's word did to a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Its hold posted (paid) or voided (failed).
    Applied,
    /// It had that outcome already.
    Duplicate,
    /// "Paid" after it had failed: the money left after all. A correcting
    /// entry takes it from what the payable still holds; what it cannot
    /// take is left for an operator (`PAID_AFTER_FAILURE`), with the amount.
    PaidAfterFailure { uncovered_minor: i64 },
    /// "Failed" after it was paid: the gateway contradicts itself; nothing
    /// moves and an operator must look.
    FailedAfterPaid,
}

/// Applies the gateway's final word on a transfer (from a webhook, an answer
/// or a status query), once.
pub async fn settle(
    conn: &mut PgConnection,
    flows: &Flows,
    transfer_id: Uuid,
    paid: bool,
    failure_code: &str,
) -> Result<Settled, ServiceError> {
    let now = timestamps::now();
    let row = transfers::lock(conn, transfer_id).await?;
    let status = row.status()?;
    match (status.is_open(), status, paid) {
        (true, _, true) => {
            ledger::post_hold(conn, row.id, None, now).await?;
            transfers::resolve(conn, row.id, TransferStatus::Paid, "", now).await?;
            Ok(Settled::Applied)
        }
        (true, _, false) => {
            ledger::void_hold(conn, row.id, now).await?;
            let code = if failure_code.is_empty() {
                "failed"
            } else {
                failure_code
            };
            transfers::resolve(conn, row.id, TransferStatus::Failed, code, now).await?;
            if row.direction == Direction::SuspenseRefund.as_str() {
                tracing::warn!(gateway_transfer_id = %row.id, "the refund of a credit in suspense failed; the money is back in suspense for an operator");
            }
            flows.wake_worker();
            Ok(Settled::Applied)
        }
        (false, TransferStatus::Paid, true) | (false, TransferStatus::Failed, false) => {
            Ok(Settled::Duplicate)
        }
        (false, TransferStatus::Failed, true) => {
            let uncovered = correct_paid_after_failure(conn, &row).await?;
            // The money left: paid, so the gateway saying so again is a
            // duplicate, not a second correction.
            transfers::paid_after_failure(conn, row.id).await?;
            Ok(Settled::PaidAfterFailure {
                uncovered_minor: uncovered,
            })
        }
        (false, _, _) => Ok(Settled::FailedAfterPaid),
    }
}

/// The gateway paid a transfer it had reported failed (its hold was voided
/// and the money owed again): the money left, so it leaves the ledger too,
/// from what the account it was owed from still has. Returns what that
/// account could not cover (already paid again, say).
async fn correct_paid_after_failure(
    conn: &mut PgConnection,
    row: &TransferRow,
) -> Result<i64, ServiceError> {
    let currency = Currency::parse(&row.currency)
        .ok_or_else(|| ServiceError::internal("transfer in an unknown currency"))?;
    let from = match (
        row.supplier_id.as_deref(),
        row.escrow_account_id,
        row.direction.as_str(),
    ) {
        (Some(supplier), _, "payout") => AccountKey::supplier_payable(supplier, currency),
        (_, Some(account), "buyer_refund") => AccountKey::buyer_refund_payable(account, currency),
        _ => AccountKey::suspense(currency),
    };
    let available = ledger::lock_available(conn, &from).await?;
    let covered = available.clamp(0, row.amount_minor);
    if covered > 0 {
        ledger::transfer(
            conn,
            &TransferRequest {
                id: Uuid::now_v7(),
                purpose: Purpose::correction(format!("gateway-transfer:{}", row.id), row.id),
                escrow_account: row.escrow_account_id,
                legs: vec![Leg {
                    debit: from,
                    credit: AccountKey::gateway_clearing(currency),
                    amount_minor: covered,
                }],
            },
        )
        .await?;
    }
    Ok(row.amount_minor - covered)
}

/// Whether `text` names one of escrow's own transfer or attempt ids.
pub fn client_reference(text: Option<&str>) -> Option<Uuid> {
    text.and_then(|t| Uuid::parse_str(t).ok())
}
