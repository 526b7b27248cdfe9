//! Escrow's use cases. Each runs in the caller's transaction (the shared
//! pipeline's, once the API serves them): it locks the escrow account row
//! first, applies the domain rules, moves money through the ledger and
//! saves. Every movement names its purpose, so a retried or concurrent
//! request for the same milestone, claim or cancellation moves money once.

use sqlx::PgConnection;
use ta_runtime::{ServiceError, money::Currency};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{
        AccountKey, Action, EscrowAccount, Hold, HoldRequest, Leg, NewAccount, Posting, Purpose,
        Settles, TransferRequest,
        account::split_refund,
        funding::{AttemptStatus, CreditOutcome, FundingAttempt, FundingMethod},
        ledger::LedgerError,
    },
    storage::{accounts, ledger},
};

/// How many due attempts or holds one expiry pass resolves at most.
pub const EXPIRY_BATCH: i64 = 200;

/// Opens the escrow account of a contract; idempotent per contract: opening
/// again returns the existing account.
pub async fn open_account(
    conn: &mut PgConnection,
    new: NewAccount,
    now: OffsetDateTime,
) -> Result<EscrowAccount, ServiceError> {
    let contract_id = new.contract_id.clone();
    let account = EscrowAccount::open(Uuid::now_v7(), new, now)?;
    if accounts::insert_account(conn, &account).await? {
        return Ok(account);
    }
    accounts::find_by_contract(conn, &contract_id)
        .await?
        .ok_or_else(|| ServiceError::internal(format!("contract {contract_id}: account vanished")))
}

/// What the account's `escrow_held` has available: its posted balance
/// (no hold debits it today, but a reservation would count).
pub async fn held(conn: &mut PgConnection, account: &EscrowAccount) -> Result<i64, ServiceError> {
    Ok(
        ledger::balance(conn, &AccountKey::escrow_held(account.id, account.currency))
            .await?
            .available(),
    )
}

#[derive(Clone, Debug)]
pub struct StartFunding {
    pub account_id: Uuid,
    pub milestone_id: String,
    pub attempt_id: Uuid,
    pub method: FundingMethod,
    /// Must equal what is still due of the payment.
    pub amount_minor: i64,
    /// When a pending attempt fails and its hold is voided.
    pub expires_at: OffsetDateTime,
}

/// Starts paying one scheduled payment. A card settles here (approved:
/// money moves from the gateway's clearing account into escrow; declined:
/// the attempt fails); a bank transfer or Pay Later places a hold that the
/// confirmation posts or the expiry voids.
pub async fn start_funding(
    conn: &mut PgConnection,
    command: &StartFunding,
    now: OffsetDateTime,
) -> Result<FundingAttempt, ServiceError> {
    let mut account = accounts::lock_account(conn, command.account_id).await?;
    let due = account.due_for(&command.milestone_id)?;
    if command.amount_minor != due {
        return Err(ServiceError::invalid(
            "amount.amount_minor",
            format!(
                "must be {due}, what is due of payment {}",
                command.milestone_id
            ),
        ));
    }
    // Checked for every method, a declined card too: a payment with a
    // pending attempt waits for that attempt's answer.
    if accounts::has_pending_attempt(conn, account.id, &command.milestone_id).await? {
        return Err(ServiceError::FailedPrecondition(format!(
            "cannot fund: payment {} has a pending attempt",
            command.milestone_id
        )));
    }
    if command.expires_at <= now {
        return Err(ServiceError::invalid("expires_at", "must be in the future"));
    }
    let currency = account.currency;
    let held = AccountKey::escrow_held(account.id, currency);
    let purpose = Purpose::funding(account.id, command.attempt_id);
    let mut attempt = FundingAttempt {
        id: command.attempt_id,
        escrow_account_id: account.id,
        milestone_id: command.milestone_id.clone(),
        method: command.method.as_str().into(),
        amount_minor: due,
        status: AttemptStatus::Pending,
        received_minor: None,
        financing_partner_id: None,
        hold_id: None,
        failure_code: String::new(),
        credit_reference: None,
        expires_at: command.expires_at,
    };
    let source = match &command.method {
        FundingMethod::Card { approved: true } => {
            ledger::transfer(
                conn,
                &TransferRequest {
                    id: Uuid::now_v7(),
                    purpose,
                    escrow_account: Some(account.id),
                    legs: vec![Leg {
                        debit: AccountKey::gateway_clearing(currency),
                        credit: held,
                        amount_minor: due,
                    }],
                },
            )
            .await?;
            account.record_funding(&command.milestone_id, due)?;
            accounts::save_account(conn, &account, now).await?;
            attempt.status = AttemptStatus::Succeeded;
            attempt.received_minor = Some(due);
            accounts::insert_attempt(conn, &attempt, now).await?;
            return Ok(attempt);
        }
        FundingMethod::Card { approved: false } => {
            attempt.status = AttemptStatus::Failed;
            attempt.failure_code = "card_declined".into();
            accounts::insert_attempt(conn, &attempt, now).await?;
            return Ok(attempt);
        }
        FundingMethod::BankTransfer => AccountKey::gateway_clearing(currency),
        FundingMethod::PayLater { partner_id } => {
            attempt.financing_partner_id = Some(partner_id.clone());
            AccountKey::financing_partner(partner_id, currency)
        }
    };
    let hold = ledger::hold(
        conn,
        &HoldRequest {
            id: Uuid::now_v7(),
            purpose,
            escrow_account: Some(account.id),
            debit: source,
            credit: held,
            amount_minor: due,
            expires_at: command.expires_at,
        },
    )
    .await?;
    attempt.hold_id = Some(hold.id);
    accounts::insert_attempt(conn, &attempt, now).await?;
    Ok(attempt)
}

fn suspense_leg(currency: Currency, amount_minor: i64) -> Leg {
    Leg {
        debit: AccountKey::gateway_clearing(currency),
        credit: AccountKey::suspense(currency),
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
        legs: vec![suspense_leg(account.currency, amount_minor)],
    };
    match ledger::transfer(conn, &request).await {
        Ok(_) => Ok(true),
        Err(LedgerError::PurposeUsed(_)) => Ok(false),
        Err(other) => Err(other.into()),
    }
}

/// The gateway confirmed `received_minor` for an attempt (a bank credit, a
/// partner's disbursement). A pending attempt posts its hold for what came,
/// up to what it reserved (less is fine: the rest of the payment stays due);
/// any excess, and any credit for an attempt that has ended (expired,
/// failed, the account closed), lands in suspense to be refunded.
pub async fn confirm_funding(
    conn: &mut PgConnection,
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
    let account_id = accounts::get_attempt(conn, attempt_id, false)
        .await?
        .escrow_account_id;
    let mut account = accounts::lock_account(conn, account_id).await?;
    let mut attempt = accounts::get_attempt(conn, attempt_id, true).await?;
    if attempt.status == AttemptStatus::Pending && now >= attempt.expires_at {
        expire_attempt(conn, &mut attempt, "expired", now).await?;
    }
    match attempt.status {
        AttemptStatus::Pending => {
            let hold_id = attempt.hold_id.ok_or_else(|| {
                ServiceError::internal(format!("pending attempt {attempt_id} has no hold"))
            })?;
            let take = received_minor.min(attempt.amount_minor);
            ledger::post_hold(conn, hold_id, Some(take), now).await?;
            account.record_funding(&attempt.milestone_id, take)?;
            accounts::save_account(conn, &account, now).await?;
            attempt.status = AttemptStatus::Succeeded;
            attempt.received_minor = Some(take);
            attempt.credit_reference = Some(credit_id.to_owned());
            accounts::resolve_attempt(conn, &attempt, now).await?;
            let excess = received_minor - take;
            if excess > 0 {
                park(conn, &account, &attempt, credit_id, excess).await?;
            }
            Ok(CreditOutcome::Applied {
                posted: take,
                to_suspense: excess,
            })
        }
        AttemptStatus::Succeeded if attempt.credit_reference.as_deref() == Some(credit_id) => {
            Ok(CreditOutcome::Duplicate)
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
        ledger::void_hold(conn, hold, now).await?;
    }
    attempt.status = AttemptStatus::Failed;
    attempt.failure_code = code.into();
    accounts::resolve_attempt(conn, attempt, now).await
}

/// The gateway reported a pending attempt failed: its hold is voided.
/// Returns false when the attempt had already resolved (nothing changed).
pub async fn fail_funding(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    code: &str,
    now: OffsetDateTime,
) -> Result<bool, ServiceError> {
    let account_id = accounts::get_attempt(conn, attempt_id, false)
        .await?
        .escrow_account_id;
    accounts::lock_account(conn, account_id).await?;
    let mut attempt = accounts::get_attempt(conn, attempt_id, true).await?;
    if attempt.status != AttemptStatus::Pending {
        return Ok(false);
    }
    expire_attempt(conn, &mut attempt, code, now).await?;
    Ok(true)
}

/// What a timer handler calls: fails the funding attempts due at `now` and
/// voids their holds, then voids the other due holds (payouts). Each pass
/// takes at most [`EXPIRY_BATCH`]; returns the holds voided.
pub async fn expire_due(
    conn: &mut PgConnection,
    now: OffsetDateTime,
) -> Result<Vec<Uuid>, ServiceError> {
    let mut voided = Vec::new();
    for mut attempt in accounts::claim_due_attempts(conn, now, EXPIRY_BATCH).await? {
        expire_attempt(conn, &mut attempt, "expired", now).await?;
        voided.extend(attempt.hold_id);
    }
    voided.extend(accounts::expire_unattached_holds(conn, now, EXPIRY_BATCH).await?);
    Ok(voided)
}

/// Releases money held to the supplier's payable: `amount_minor`, or all
/// that is held.
pub async fn release(
    conn: &mut PgConnection,
    account_id: Uuid,
    amount_minor: Option<i64>,
    settles: &Settles,
    now: OffsetDateTime,
) -> Result<Vec<Posting>, ServiceError> {
    let mut account = accounts::lock_account(conn, account_id).await?;
    let purpose = account.authorize_outflow(Action::Release, settles)?;
    let amount = outflow_amount(conn, &account, amount_minor).await?;
    let postings = ledger::transfer(
        conn,
        &TransferRequest {
            id: Uuid::now_v7(),
            purpose,
            escrow_account: Some(account.id),
            legs: vec![Leg {
                debit: AccountKey::escrow_held(account.id, account.currency),
                credit: AccountKey::supplier_payable(&account.supplier_id, account.currency),
                amount_minor: amount,
            }],
        },
    )
    .await?;
    accounts::save_account(conn, &account, now).await?;
    Ok(postings)
}

async fn outflow_amount(
    conn: &mut PgConnection,
    account: &EscrowAccount,
    amount_minor: Option<i64>,
) -> Result<i64, ServiceError> {
    match amount_minor {
        Some(amount) => Ok(amount),
        None => match held(conn, account).await? {
            0 => Err(ServiceError::FailedPrecondition(
                "cannot move money: the account holds nothing".into(),
            )),
            all => Ok(all),
        },
    }
}

/// Refunds money held, the way it came: to the financing partner up to the
/// loan still outstanding for this account, the rest to the buyer (owed
/// until the gateway pays it out), as one linked transfer.
pub async fn refund(
    conn: &mut PgConnection,
    account_id: Uuid,
    amount_minor: Option<i64>,
    settles: &Settles,
    now: OffsetDateTime,
) -> Result<Vec<Posting>, ServiceError> {
    let mut account = accounts::lock_account(conn, account_id).await?;
    let purpose = account.authorize_outflow(Action::Refund, settles)?;
    let amount = outflow_amount(conn, &account, amount_minor).await?;
    let held = AccountKey::escrow_held(account.id, account.currency);
    let outstanding = ledger::loan_outstanding(conn, account.id).await?;
    let (partners, buyer) = split_refund(amount, &outstanding);
    let mut legs: Vec<Leg> = partners
        .into_iter()
        .map(|(partner, share)| Leg {
            debit: held.clone(),
            credit: partner,
            amount_minor: share,
        })
        .collect();
    if buyer > 0 || legs.is_empty() {
        legs.push(Leg {
            debit: held.clone(),
            credit: AccountKey::buyer_refund_payable(account.id, account.currency),
            amount_minor: buyer,
        });
    }
    let postings = ledger::transfer(
        conn,
        &TransferRequest {
            id: Uuid::now_v7(),
            purpose,
            escrow_account: Some(account.id),
            legs,
        },
    )
    .await?;
    accounts::save_account(conn, &account, now).await?;
    Ok(postings)
}

/// Freezes the account for a claim; idempotent per claim. The first active
/// freeze pauses the hold deadline.
pub async fn freeze(
    conn: &mut PgConnection,
    account_id: Uuid,
    claim_id: &str,
    reason: &str,
    now: OffsetDateTime,
) -> Result<EscrowAccount, ServiceError> {
    let mut account = accounts::lock_account(conn, account_id).await?;
    if account.freeze(claim_id, now)? {
        accounts::insert_freeze(conn, account.id, claim_id, reason, now).await?;
        accounts::save_account(conn, &account, now).await?;
    }
    Ok(account)
}

/// Lifts a claim's freeze; idempotent. Lifting the last one resumes the
/// hold deadline, moved later by the time spent frozen.
pub async fn unfreeze(
    conn: &mut PgConnection,
    account_id: Uuid,
    claim_id: &str,
    now: OffsetDateTime,
) -> Result<EscrowAccount, ServiceError> {
    let mut account = accounts::lock_account(conn, account_id).await?;
    if account.unfreeze(claim_id, now)? {
        accounts::lift_freeze(conn, account.id, claim_id, now).await?;
        accounts::save_account(conn, &account, now).await?;
    }
    Ok(account)
}

/// Closes an account that holds nothing and is not frozen; its pending
/// attempts fail and their holds are voided (a credit arriving for one later
/// lands in suspense and is refunded).
pub async fn close(
    conn: &mut PgConnection,
    account_id: Uuid,
    now: OffsetDateTime,
) -> Result<EscrowAccount, ServiceError> {
    let mut account = accounts::lock_account(conn, account_id).await?;
    let held = held(conn, &account).await?;
    account.close(held, now)?;
    for mut attempt in accounts::pending_attempts(conn, account.id).await? {
        expire_attempt(conn, &mut attempt, "account_closed", now).await?;
    }
    accounts::save_account(conn, &account, now).await?;
    Ok(account)
}

/// Starts paying a supplier what it is owed across its contracts: a hold on
/// its payable, posted when the gateway reports the payout paid and voided
/// when it fails or expires.
pub async fn start_payout(
    conn: &mut PgConnection,
    supplier_id: &str,
    currency: Currency,
    payout_id: Uuid,
    amount_minor: i64,
    expires_at: OffsetDateTime,
) -> Result<Hold, ServiceError> {
    Ok(ledger::hold(
        conn,
        &HoldRequest {
            id: payout_id,
            purpose: Purpose::payout(supplier_id, payout_id),
            escrow_account: None,
            debit: AccountKey::supplier_payable(supplier_id, currency),
            credit: AccountKey::gateway_clearing(currency),
            amount_minor,
            expires_at,
        },
    )
    .await?)
}

/// Starts paying out a refund owed to the buyer: a hold on the account's
/// `buyer_refund_payable`, settled like a payout.
pub async fn start_buyer_refund_payout(
    conn: &mut PgConnection,
    account_id: Uuid,
    refund_id: Uuid,
    amount_minor: i64,
    expires_at: OffsetDateTime,
) -> Result<Hold, ServiceError> {
    let account = accounts::lock_account(conn, account_id).await?;
    Ok(ledger::hold(
        conn,
        &HoldRequest {
            id: refund_id,
            purpose: Purpose::buyer_refund_payout(account.id, refund_id),
            escrow_account: Some(account.id),
            debit: AccountKey::buyer_refund_payable(account.id, account.currency),
            credit: AccountKey::gateway_clearing(account.currency),
            amount_minor,
            expires_at,
        },
    )
    .await?)
}

/// The gateway's word on a payout hold: paid posts it, failed voids it.
pub async fn settle_payout(
    conn: &mut PgConnection,
    hold_id: Uuid,
    paid: bool,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    if paid {
        ledger::post_hold(conn, hold_id, None, now).await?;
    } else {
        ledger::void_hold(conn, hold_id, now).await?;
    }
    Ok(())
}

/// Refunds a credit parked in suspense back out through the gateway.
pub async fn refund_suspended_credit(
    conn: &mut PgConnection,
    attempt_id: Uuid,
    credit_id: &str,
    amount_minor: i64,
) -> Result<Vec<Posting>, ServiceError> {
    let attempt = accounts::get_attempt(conn, attempt_id, false).await?;
    let account = accounts::lock_account(conn, attempt.escrow_account_id).await?;
    Ok(ledger::transfer(
        conn,
        &TransferRequest {
            id: Uuid::now_v7(),
            purpose: Purpose::suspense_refund(account.id, attempt.id, credit_id),
            escrow_account: Some(account.id),
            legs: vec![Leg {
                debit: AccountKey::suspense(account.currency),
                credit: AccountKey::gateway_clearing(account.currency),
                amount_minor,
            }],
        },
    )
    .await?)
}
