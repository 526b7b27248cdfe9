//! Funding an escrow account through the payment gateway, in atomic phases
//! (Brandur Leach's recovery points), so that no transaction is open, and no
//! row locked, while the remote gateway is asked:
//!
//! 1. **Intent**, one transaction: the account is locked, the request
//!    checked, the attempt written with its hold (the amount reserved from
//!    the gateway's clearing account or the financing partner) and the key
//!    the gateway will see, derived from the caller's idempotency key. A
//!    retry under the same key finds this attempt and resumes it.
//! 2. **Call**, no transaction: the gateway is asked with that key and the
//!    attempt's id as its client reference (echoed by every webhook).
//! 3. **Record**, one transaction: the answer settles the attempt (a card
//!    approved posts its hold, declined voids it; a bank transfer or Pay
//!    Later records its instructions and waits for the credit webhook), and
//!    the caller's answer is stored under its key.
//!
//! A call without an answer (the gateway timed out, escrow died between the
//! phases) leaves the attempt "awaiting the gateway's answer": the caller
//! hears UNAVAILABLE and may retry with the same key, and the gateway worker
//! asks the gateway by key once the attempt's `check_at` passes: what the
//! gateway did is recorded; a key it never saw is voided there (nothing can
//! be done under it afterwards, even by a call still on its way) and fails
//! the attempt (`gateway_unreachable`), freeing the payment for another try. A webhook
//! may also settle an attempt before its answer is recorded: the webhook
//! names the attempt, which exists from phase 1 on.

use sqlx::PgConnection;
use ta_proto::escrow as pb;
use ta_runtime::{
    ServiceError,
    auth::Principal,
    db,
    money::Money,
    pipeline::{Mutations, Prepared},
    timestamps,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{
        AccountKey, EscrowAccount, HoldRequest, Leg, Purpose, TransferRequest,
        funding::{AttemptStatus, CreditOutcome, FundingAttempt, FundingMethod},
        ledger::LedgerError,
    },
    gateway::{
        BankInstructions, CardCharge, CardOutcome, GatewayError, Operation, OperationKind,
        OperationStatus, PayLaterApplication,
    },
    storage::{
        accounts::{self, Scheme},
        attempts::{self, AttemptGateway},
    },
    views::{EventFacts, attempt_proto},
};

use super::{
    context::{Flows, after},
    deadlines::ATTEMPT_EXPIRY,
    transfers,
};

/// How a buyer pays one scheduled payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Card { token: String },
    BankTransfer { payer_name: String },
    PayLater { partner_id: String, months: u32 },
}

impl Method {
    fn as_str(&self) -> &'static str {
        match self {
            Method::Card { .. } => "card",
            Method::BankTransfer { .. } => "bank_transfer",
            Method::PayLater { .. } => "pay_later",
        }
    }
}

/// A parsed FundEscrow request.
#[derive(Clone, Debug)]
pub struct Fund {
    pub account_id: Uuid,
    pub milestone_id: String,
    pub amount: Money,
    pub method: Method,
}

/// How long a card attempt waits for its charge's answer before it fails.
const CARD_ANSWER_EXPIRY: std::time::Duration = std::time::Duration::from_secs(3600);

/// What the gateway answered to the call that started an attempt.
#[derive(Clone, Debug)]
pub enum StartAnswer {
    Card(CardCharge),
    Bank(BankInstructions),
    PayLater(PayLaterApplication),
    /// The gateway refused the request itself.
    Rejected {
        code: String,
        message: String,
    },
}

/// FundEscrow, phase by phase (see the module docs).
pub async fn fund(
    flows: &Flows,
    mutations: &Mutations,
    prepared: &Prepared<pb::FundEscrowRequest, Fund>,
) -> Result<pb::FundEscrowResponse, ServiceError> {
    if let Some(answer) = mutations.replay(prepared).await? {
        return Ok(answer);
    }
    let cmd = &prepared.command;
    let principal = prepared.principal();
    let gateway_key = format!("fund:{}:{}", principal.subject, prepared.scope().key);
    let pool = mutations.pool();
    let mut tx = db::begin(pool).await?;
    let intent = open_attempt(&mut tx, flows, principal, &gateway_key, cmd).await;
    let attempt = db::finish(tx, intent).await?;
    if attempt.awaits_answer() {
        let answer = match call_start(flows, &gateway_key, attempt.id, cmd).await {
            Ok(answer) => answer,
            Err(GatewayError::Rejected { code, message }) => {
                StartAnswer::Rejected { code, message }
            }
            // The worker asks the gateway about it once `check_at` passes.
            Err(error) => return Err(error.into()),
        };
        record_start_retrying(pool, flows, attempt.id, &answer).await?;
    }
    mutations
        .answer(prepared, async |tx| {
            let view = attempts::attempt_view(tx, attempt.id).await?;
            Ok(pb::FundEscrowResponse {
                funding_attempt: Some(attempt_proto(&view)),
                account: Some(flows.view(tx, attempt.escrow_account_id).await?),
            })
        })
        .await
}

/// Phase 1: the attempt under `gateway_key`, found or written with its hold.
async fn open_attempt(
    conn: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    gateway_key: &str,
    cmd: &Fund,
) -> Result<FundingAttempt, ServiceError> {
    let now = timestamps::now();
    let account = accounts::lock_account(conn, cmd.account_id).await?;
    if principal.subject != account.buyer_principal_id {
        // Only its buyer funds it; anyone who may not see the account is
        // answered as for one that does not exist.
        if !super::may_see(conn, principal, &account).await? {
            return Err(ServiceError::unseen(accounts::ACCOUNT, cmd.account_id));
        }
        return Err(ServiceError::PermissionDenied(
            "only the account's buyer funds it".into(),
        ));
    }
    if let Some(existing) = attempts::attempt_by_gateway_key(conn, gateway_key).await? {
        let same = existing.escrow_account_id == account.id
            && existing.milestone_id == cmd.milestone_id
            && existing.amount_minor == cmd.amount.amount_minor
            && existing.method == cmd.method.as_str();
        if !same {
            return Err(ServiceError::IdempotencyKeyReused {
                key: gateway_key
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                method: "FundEscrow".into(),
            });
        }
        return Ok(existing);
    }
    check_method(conn, &account, &cmd.method).await?;
    if cmd.amount.currency != account.currency {
        return Err(ServiceError::invalid(
            "amount.currency_code",
            format!("must be the account's currency, {}", account.currency),
        ));
    }
    let due = account.due_for(&cmd.milestone_id)?;
    if cmd.amount.amount_minor != due {
        return Err(ServiceError::invalid(
            "amount.amount_minor",
            format!("must be {due}, what is due of payment {}", cmd.milestone_id),
        ));
    }
    // Checked for every method: a payment with a pending attempt waits for
    // that attempt's answer.
    if attempts::has_pending_attempt(conn, account.id, &cmd.milestone_id).await? {
        return Err(ServiceError::FailedPrecondition(format!(
            "cannot fund: payment {} has a pending attempt",
            cmd.milestone_id
        )));
    }
    let settings = &flows.settings;
    let (method, source, expiry) = match &cmd.method {
        Method::Card { .. } => (
            FundingMethod::Card,
            AccountKey::gateway_clearing(account.currency),
            CARD_ANSWER_EXPIRY,
        ),
        Method::BankTransfer { .. } => (
            FundingMethod::BankTransfer,
            AccountKey::gateway_clearing(account.currency),
            settings.bank_transfer_expiry,
        ),
        Method::PayLater { partner_id, .. } => (
            FundingMethod::PayLater {
                partner_id: partner_id.clone(),
            },
            AccountKey::financing_partner(partner_id, account.currency),
            settings.pay_later_expiry,
        ),
    };
    let attempt_id = Uuid::now_v7();
    let expires_at = after(expiry, now);
    let hold = crate::storage::ledger::hold(
        conn,
        &HoldRequest {
            id: Uuid::now_v7(),
            purpose: Purpose::funding(account.id, attempt_id),
            escrow_account: Some(account.id),
            debit: source,
            credit: AccountKey::escrow_held(account.id, account.currency),
            amount_minor: due,
            expires_at,
        },
    )
    .await?;
    let attempt = FundingAttempt {
        id: attempt_id,
        escrow_account_id: account.id,
        milestone_id: cmd.milestone_id.clone(),
        method: method.as_str().into(),
        amount_minor: due,
        status: AttemptStatus::Pending,
        received_minor: None,
        financing_partner_id: match &method {
            FundingMethod::PayLater { partner_id } => Some(partner_id.clone()),
            _ => None,
        },
        hold_id: Some(hold.id),
        failure_code: String::new(),
        credit_reference: None,
        expires_at,
        gateway_key: Some(gateway_key.to_owned()),
        answered_at: None,
    };
    let check_at = after(settings.gateway_check_after, now);
    attempts::insert_attempt(conn, &attempt, Some(check_at), now).await?;
    flows
        .timers
        .schedule_after(conn, ATTEMPT_EXPIRY, &attempt_id.to_string(), expiry, &[])
        .await?;
    Ok(attempt)
}

async fn check_method(
    conn: &mut PgConnection,
    account: &EscrowAccount,
    method: &Method,
) -> Result<(), ServiceError> {
    let terms = accounts::get_terms(conn, account.id).await?;
    match (method, terms.scheme) {
        (Method::PayLater { partner_id, .. }, Scheme::PayLater) => {
            if *partner_id != terms.financing_partner_id {
                return Err(ServiceError::invalid(
                    "pay_later.financing_partner_id",
                    format!(
                        "must be the account's financing partner, {}",
                        terms.financing_partner_id
                    ),
                ));
            }
            Ok(())
        }
        (Method::Card { .. } | Method::BankTransfer { .. }, Scheme::Direct) => Ok(()),
        (_, Scheme::PayLater) => Err(ServiceError::FailedPrecondition(
            "cannot fund: the account's payment scheme is Pay Later only".into(),
        )),
        (Method::PayLater { .. }, Scheme::Direct) => Err(ServiceError::FailedPrecondition(
            "cannot fund: the account's payment scheme takes card or bank transfer, not Pay Later"
                .into(),
        )),
    }
}

/// Phase 2: the gateway call, outside any transaction.
async fn call_start(
    flows: &Flows,
    key: &str,
    attempt_id: Uuid,
    cmd: &Fund,
) -> Result<StartAnswer, GatewayError> {
    let gateway = flows.gateway.as_ref();
    let client_reference = attempt_id.to_string();
    Ok(match &cmd.method {
        Method::Card { token } => StartAnswer::Card(
            gateway
                .charge_card(key, &client_reference, token, cmd.amount)
                .await?,
        ),
        Method::BankTransfer { payer_name } => StartAnswer::Bank(
            gateway
                .start_bank_transfer(key, &client_reference, payer_name, cmd.amount)
                .await?,
        ),
        Method::PayLater { partner_id, months } => StartAnswer::PayLater(
            gateway
                .start_pay_later(key, &client_reference, partner_id, *months, cmd.amount)
                .await?,
        ),
    })
}

/// Phase 3: records the gateway's answer to the start call, once; a second
/// answer (a retry's, the worker's, after a webhook settled the attempt)
/// adds only what the first left out.
pub async fn record_start(
    conn: &mut PgConnection,
    flows: &Flows,
    attempt_id: Uuid,
    answer: &StartAnswer,
) -> Result<(), ServiceError> {
    let now = timestamps::now();
    accounts::lock_account_of_attempt(conn, attempt_id).await?;
    let attempt = attempts::get_attempt(conn, attempt_id, true).await?;
    if !attempt.awaits_answer() {
        return Ok(());
    }
    let gateway_side = match answer {
        StartAnswer::Card(charge) => AttemptGateway {
            reference: charge.reference.clone(),
            ..Default::default()
        },
        StartAnswer::Bank(bank) => AttemptGateway {
            reference: bank.reference.clone(),
            beneficiary_name: Some(bank.beneficiary_name.clone()),
            iban: Some(bank.iban.clone()),
            bic: Some(bank.bic.clone()),
            payment_reference: Some(bank.payment_reference.clone()),
            ..Default::default()
        },
        StartAnswer::PayLater(loan) => AttemptGateway {
            reference: loan.reference.clone(),
            loan_reference: Some(loan.loan_reference.clone()),
            ..Default::default()
        },
        StartAnswer::Rejected { .. } => AttemptGateway {
            reference: format!("rejected:{}", attempt.id),
            ..Default::default()
        },
    };
    attempts::insert_attempt_gateway(conn, attempt.id, &gateway_side).await?;
    attempts::mark_answered(conn, attempt.id, now).await?;
    if attempt.status != AttemptStatus::Pending {
        // A charge approved after its attempt ended (it expired while the
        // answer was unknown): the money came in all the same and goes back
        // (a credit for an ended attempt lands in suspense, once).
        if let StartAnswer::Card(CardCharge {
            reference,
            outcome: CardOutcome::Approved,
        }) = answer
        {
            credit(
                conn,
                flows,
                attempt.id,
                reference,
                reference,
                attempt.amount_minor,
                now,
            )
            .await?;
        }
        return Ok(());
    }
    match answer {
        StartAnswer::Card(CardCharge {
            reference,
            outcome: CardOutcome::Approved,
        }) => {
            credit(
                conn,
                flows,
                attempt.id,
                reference,
                reference,
                attempt.amount_minor,
                now,
            )
            .await?;
        }
        StartAnswer::Card(CardCharge {
            outcome: CardOutcome::Declined { code, message },
            ..
        })
        | StartAnswer::Rejected { code, message } => {
            fail(conn, flows, attempt.id, code, now).await?;
            attempts::set_failure(conn, attempt.id, code, message).await?;
        }
        StartAnswer::Bank(_) | StartAnswer::PayLater(_) => {}
    }
    Ok(())
}

/// [`record_start`] in its own transaction, run again (a few times) when it
/// lost to a concurrent one (a webhook about the same attempt, a retry).
async fn record_start_retrying(
    pool: &sqlx::PgPool,
    flows: &Flows,
    attempt_id: Uuid,
    answer: &StartAnswer,
) -> Result<(), ServiceError> {
    let mut tries = 0;
    loop {
        let mut tx = db::begin(pool).await?;
        let recorded = record_start(&mut tx, flows, attempt_id, answer).await;
        match db::finish(tx, recorded).await {
            Err(ServiceError::Aborted(_)) if tries < 3 => tries += 1,
            other => return other,
        }
    }
}

/// The gateway worker's step for attempts whose start call has no recorded
/// answer past their `check_at`: asks the gateway by key and records what it
/// did; a key it never saw fails the attempt. Returns how many it resolved.
pub async fn resolve_unanswered(flows: &Flows, pool: &sqlx::PgPool) -> Result<usize, ServiceError> {
    let now = timestamps::now();
    let lease = time::Duration::try_from(flows.settings.gateway_check_after)
        .unwrap_or(time::Duration::MINUTE);
    let mut tx = pool.begin().await?;
    let due = attempts::lease_unanswered(&mut tx, now, lease, BATCH).await?;
    tx.commit().await?;
    let mut resolved = 0;
    for attempt in due {
        let Some(key) = attempt.gateway_key.as_deref() else {
            continue;
        };
        // Voided, not merely looked up: a call under the key still on its
        // way (held in a paused gateway, a client's retry in flight) would
        // otherwise take the money after the attempt was failed.
        let answer = match flows.gateway.void_unless_done(key).await {
            Ok(None) => StartAnswer::Rejected {
                code: "gateway_unreachable".into(),
                message: "the payment gateway never received the payment".into(),
            },
            Ok(Some(operation)) => match start_answer_of(&operation) {
                Some(answer) => answer,
                // A charge still in progress: asked again after the lease.
                None => continue,
            },
            Err(error) => {
                tracing::info!(attempt = %attempt.id, %error, "the gateway did not say what became of a payment; asking again later");
                continue;
            }
        };
        record_start_retrying(pool, flows, attempt.id, &answer).await?;
        resolved += 1;
    }
    Ok(resolved)
}

/// How many unanswered attempts one worker pass resolves at most.
const BATCH: i64 = 100;

/// The start call's answer as the gateway's record of the key tells it;
/// `None` while a charge is still being decided.
fn start_answer_of(operation: &Operation) -> Option<StartAnswer> {
    let failed = |code: &str, message: &str| StartAnswer::Rejected {
        code: code.to_owned(),
        message: message.to_owned(),
    };
    match (operation.kind, &operation.status) {
        (OperationKind::Charge, OperationStatus::Succeeded) => {
            Some(StartAnswer::Card(CardCharge {
                reference: operation.reference.clone(),
                outcome: CardOutcome::Approved,
            }))
        }
        (OperationKind::Charge, OperationStatus::Failed { code, message }) => {
            Some(StartAnswer::Card(CardCharge {
                reference: operation.reference.clone(),
                outcome: CardOutcome::Declined {
                    code: code.clone(),
                    message: message.clone(),
                },
            }))
        }
        (OperationKind::Charge, OperationStatus::Pending) => None,
        (OperationKind::BankTransfer, _) => Some(match &operation.bank_instructions {
            Some(instructions) => StartAnswer::Bank(instructions.clone()),
            None => failed(
                "gateway_answer_incomplete",
                "the gateway's record of the bank transfer has no instructions",
            ),
        }),
        (OperationKind::PayLater, _) => Some(StartAnswer::PayLater(PayLaterApplication {
            reference: operation.reference.clone(),
            loan_reference: operation.loan_reference.clone().unwrap_or_default(),
        })),
        (OperationKind::Payout | OperationKind::Refund, _) => Some(failed(
            "gateway_key_mismatch",
            "the gateway holds another kind of operation under the payment's key",
        )),
    }
}

/// What a credit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credited {
    pub outcome: CreditOutcome,
    /// The transfer sending back what went to suspense, if anything did.
    pub suspense_refund: Option<Uuid>,
}

/// Money arrived for an attempt (`credit_id`: the gateway's id of the credit,
/// a charge's reference or a webhook event's id; `source_reference`: the
/// gateway's payment that brought it): posts what the milestone still needs,
/// parks the rest in suspense and sends it back against that payment.
/// Announces what it did.
pub async fn credit(
    conn: &mut PgConnection,
    flows: &Flows,
    attempt_id: Uuid,
    credit_id: &str,
    source_reference: &str,
    received_minor: i64,
    now: OffsetDateTime,
) -> Result<Credited, ServiceError> {
    let account = accounts::lock_account_of_attempt(conn, attempt_id).await?;
    let (account_id, before) = (account.id, account.status);
    let outcome =
        confirm_funding(conn, account, attempt_id, credit_id, received_minor, now).await?;
    let (posted, parked) = match outcome {
        CreditOutcome::Applied {
            posted,
            to_suspense,
        } => (posted, to_suspense),
        CreditOutcome::Suspended { to_suspense } => (0, to_suspense),
        CreditOutcome::Duplicate => (0, 0),
    };
    let view = attempts::attempt_view(conn, attempt_id).await?;
    if matches!(outcome, CreditOutcome::Applied { .. }) {
        flows
            .timers
            .cancel(conn, ATTEMPT_EXPIRY, &attempt_id.to_string())
            .await?;
        if posted > 0 {
            flows.emit_funding(conn, before, &view, posted).await?;
        } else {
            flows.emit_payment_failed(conn, &view).await?;
        }
    }
    let mut suspense_refund = None;
    if parked > 0 {
        let refund =
            transfers::refund_suspended(conn, flows, &view, credit_id, source_reference, parked)
                .await?;
        suspense_refund = Some(refund.id);
        flows
            .emit(
                conn,
                pb::EscrowEventType::LateCreditSuspended,
                account_id,
                EventFacts {
                    amount_minor: Some(parked),
                    milestone_id: &view.milestone_id,
                    funding_attempt_id: Some(attempt_id),
                    ..Default::default()
                },
            )
            .await?;
    }
    Ok(Credited {
        outcome,
        suspense_refund,
    })
}

/// A pending attempt failed (declined, rejected, expired, never reached the
/// gateway): its hold is voided and the failure announced. Returns whether
/// it changed anything.
pub async fn fail(
    conn: &mut PgConnection,
    flows: &Flows,
    attempt_id: Uuid,
    code: &str,
    now: OffsetDateTime,
) -> Result<bool, ServiceError> {
    if !fail_funding(conn, attempt_id, code, now).await? {
        return Ok(false);
    }
    let view = attempts::attempt_view(conn, attempt_id).await?;
    flows.emit_payment_failed(conn, &view).await?;
    flows
        .timers
        .cancel(conn, ATTEMPT_EXPIRY, &attempt_id.to_string())
        .await?;
    // A payment whose due date passed while this attempt was on its way is
    // overdue now: its deadline timer fires at once.
    let account = accounts::get_account(conn, view.escrow_account_id).await?;
    flows.sync_deadlines(conn, &account).await?;
    Ok(true)
}

fn suspense_leg(account: &EscrowAccount, amount_minor: i64) -> Leg {
    Leg {
        debit: AccountKey::gateway_clearing(account.currency),
        credit: AccountKey::suspense(account.currency),
        amount_minor,
    }
}

/// Parks money no attempt can take in suspense, once per credit. Callers
/// hold the account's row lock, so a twin of this credit has committed
/// before the purpose is checked: it is seen by the check, never met as a
/// unique violation (which would abort the transaction under us).
async fn park(
    conn: &mut PgConnection,
    account: &EscrowAccount,
    attempt: &FundingAttempt,
    credit_id: &str,
    amount_minor: i64,
) -> Result<bool, ServiceError> {
    let request = TransferRequest {
        id: Uuid::now_v7(),
        purpose: Purpose::unmatched_credit(account.id, attempt.id, credit_id),
        escrow_account: Some(account.id),
        legs: vec![suspense_leg(account, amount_minor)],
    };
    match crate::storage::ledger::transfer(conn, &request).await {
        Ok(_) => Ok(true),
        Err(LedgerError::PurposeUsed(_)) => Ok(false),
        Err(other) => Err(other.into()),
    }
}

/// The gateway confirmed `received_minor` for an attempt (a card charge, a
/// bank credit, a partner's disbursement). A pending attempt posts its hold
/// for what came, up to what the milestone still needs now (an amendment may
/// have lowered it while the money was on its way; less is fine: the rest of
/// the payment stays due); any excess, and any credit for an attempt that
/// has ended (expired, failed, the account closed), lands in suspense to be
/// refunded. A card attempt's own charge confirmed again is a duplicate.
/// `account` is the attempt's, locked by the caller in this transaction.
pub async fn confirm_funding(
    conn: &mut PgConnection,
    mut account: EscrowAccount,
    attempt_id: Uuid,
    credit_id: &str,
    received_minor: i64,
    now: OffsetDateTime,
) -> Result<CreditOutcome, ServiceError> {
    if received_minor <= 0 {
        return Err(ServiceError::invalid(
            "amount.amount_minor",
            "must be a positive number of minor units",
        ));
    }
    let mut attempt = attempts::get_attempt(conn, attempt_id, true).await?;
    if attempt.credit_reference.as_deref() == Some(credit_id) {
        return Ok(CreditOutcome::Duplicate);
    }
    if attempt.status == AttemptStatus::Pending && now >= attempt.expires_at {
        expire_attempt(conn, &mut attempt, "expired", now).await?;
    }
    match attempt.status {
        AttemptStatus::Pending => {
            let hold_id = attempt.hold_id.ok_or_else(|| {
                ServiceError::internal(format!("pending attempt {attempt_id} has no hold"))
            })?;
            let still_due = account
                .payment(&attempt.milestone_id)
                .map(|p| {
                    if account.status == crate::domain::Status::Closed {
                        0
                    } else {
                        p.remaining_minor()
                    }
                })
                .unwrap_or(0);
            let take = received_minor.min(attempt.amount_minor).min(still_due);
            if take > 0 {
                crate::storage::ledger::post_hold(conn, hold_id, Some(take), now).await?;
                account.record_funding(&attempt.milestone_id, take)?;
                accounts::save_account(conn, &account, now).await?;
                attempt.status = AttemptStatus::Succeeded;
                attempt.received_minor = Some(take);
            } else {
                crate::storage::ledger::void_hold(conn, hold_id, now).await?;
                attempt.status = AttemptStatus::Failed;
                attempt.failure_code = "nothing_due".into();
            }
            attempt.credit_reference = Some(credit_id.to_owned());
            attempts::resolve_attempt(conn, &attempt, now).await?;
            let excess = received_minor - take;
            if excess > 0 {
                park(conn, &account, &attempt, credit_id, excess).await?;
            }
            Ok(CreditOutcome::Applied {
                posted: take,
                to_suspense: excess,
            })
        }
        AttemptStatus::Succeeded | AttemptStatus::Failed => {
            if park(conn, &account, &attempt, credit_id, received_minor).await? {
                Ok(CreditOutcome::Suspended {
                    to_suspense: received_minor,
                })
            } else {
                Ok(CreditOutcome::Duplicate)
            }
        }
    }
}

async fn expire_attempt(
    conn: &mut PgConnection,
    attempt: &mut FundingAttempt,
    code: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    if let Some(hold) = attempt.hold_id {
        crate::storage::ledger::void_hold(conn, hold, now).await?;
    }
    attempt.status = AttemptStatus::Failed;
    attempt.failure_code = code.into();
    attempts::resolve_attempt(conn, attempt, now).await
}

/// A pending attempt failed: its hold is voided. Returns false when the
/// attempt had already resolved (nothing changed).
pub async fn fail_funding(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    code: &str,
    now: OffsetDateTime,
) -> Result<bool, ServiceError> {
    accounts::lock_account_of_attempt(conn, attempt_id).await?;
    let mut attempt = attempts::get_attempt(conn, attempt_id, true).await?;
    if attempt.status != AttemptStatus::Pending {
        return Ok(false);
    }
    expire_attempt(conn, &mut attempt, code, now).await?;
    Ok(true)
}

/// Fails the pending attempts of an account being closed.
pub async fn fail_pending_of(
    conn: &mut PgConnection,
    account_id: Uuid,
    code: &str,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    for mut attempt in attempts::pending_attempts(conn, account_id).await? {
        expire_attempt(conn, &mut attempt, code, now).await?;
    }
    Ok(())
}
