//! The escrow account: opening it, moving money out of what it holds
//! (release, refund), freezing it for a claim and closing it. Each runs in
//! the caller's transaction under the account's row lock.

use sqlx::PgConnection;
use ta_proto::escrow as pb;
use ta_runtime::{ServiceError, money::Money, timestamps};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{
        AccountKey, Action, EscrowAccount, Leg, NewAccount, Posting, Settles, TransferRequest,
        account::split_refund,
    },
    storage::{
        accounts::{self, Terms},
        attempts, ledger,
    },
    views::EventFacts,
};

use super::{context::Flows, events::account_view};

/// The reason a release or refund of "everything held" finds nothing.
pub const NOTHING_HELD: &str = "NOTHING_HELD";
/// The reason money cannot move in or out of a closed account.
pub const ACCOUNT_CLOSED: &str = "ACCOUNT_CLOSED";

fn refuse_if_closed(account: &EscrowAccount, action: &str) -> Result<(), ServiceError> {
    if account.status == crate::domain::Status::Closed {
        return Err(ServiceError::Refused {
            reason: ACCOUNT_CLOSED,
            subject: format!("escrowAccounts/{}", account.id),
            message: format!("cannot {action}: the account is closed"),
        });
    }
    Ok(())
}

/// Opens the escrow account of a contract; idempotent per contract: opening
/// again returns the existing account.
pub async fn open_account(
    conn: &mut PgConnection,
    new: NewAccount,
    supplier_owner: &str,
    now: OffsetDateTime,
) -> Result<EscrowAccount, ServiceError> {
    let contract_id = new.contract_id.clone();
    let account = EscrowAccount::open(Uuid::now_v7(), new, now)?;
    if accounts::insert_account(conn, &account, supplier_owner).await? {
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

/// Releases money held to the supplier's payable: `amount_minor`, or all
/// that is held. `account` is locked by the caller (read with
/// `lock_account` in this transaction) and saved here.
pub async fn release(
    conn: &mut PgConnection,
    account: &mut EscrowAccount,
    amount_minor: Option<i64>,
    settles: &Settles,
    now: OffsetDateTime,
) -> Result<Vec<Posting>, ServiceError> {
    refuse_if_closed(account, "release")?;
    let purpose = account.authorize_outflow(Action::Release, settles)?;
    let amount = outflow_amount(conn, account, amount_minor).await?;
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
    accounts::save_account(conn, account, now).await?;
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
            0 => Err(ServiceError::Refused {
                reason: NOTHING_HELD,
                subject: format!("escrowAccounts/{}", account.id),
                message: "cannot move money: the account holds nothing".into(),
            }),
            all => Ok(all),
        },
    }
}

/// Refunds money held, the way it came: to the financing partner up to the
/// loan still outstanding for this account, the rest to the buyer (owed
/// until the gateway pays it out), as one linked transfer. `account` is
/// locked by the caller and saved here.
pub async fn refund(
    conn: &mut PgConnection,
    account: &mut EscrowAccount,
    amount_minor: Option<i64>,
    settles: &Settles,
    now: OffsetDateTime,
) -> Result<Vec<Posting>, ServiceError> {
    refuse_if_closed(account, "refund")?;
    let purpose = account.authorize_outflow(Action::Refund, settles)?;
    let amount = outflow_amount(conn, account, amount_minor).await?;
    let legs = refund_legs(conn, account, amount).await?;
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
    accounts::save_account(conn, account, now).await?;
    Ok(postings)
}

/// The legs of a refund of `amount` out of what the account holds, the way
/// the money came: to each financing partner up to the loan still
/// outstanding for this account, the rest to the buyer's refund payable.
pub async fn refund_legs(
    conn: &mut PgConnection,
    account: &EscrowAccount,
    amount: i64,
) -> Result<Vec<Leg>, ServiceError> {
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
    Ok(legs)
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
    if !account.freezes.contains(claim_id)
        && held(conn, &account).await? == 0
        && attempts::pending_attempts(conn, account.id)
            .await?
            .is_empty()
    {
        return Err(ServiceError::FailedPrecondition(format!(
            "cannot freeze: the account holds nothing and no payment is on its way (status {})",
            account.status.as_str()
        )));
    }
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
    if account.status == crate::domain::Status::Closed {
        // Closing again (the contract's close after an emptying release
        // closed it, a retry) changes nothing.
        return Ok(account);
    }
    let held = held(conn, &account).await?;
    account.close(held, now)?;
    super::funding::fail_pending_of(conn, account.id, "account_closed", now).await?;
    accounts::save_account(conn, &account, now).await?;
    Ok(account)
}

/// Checks what a direct release or refund (not a claim's settlement) may
/// name: a milestone of the schedule; a claim only once it froze this
/// account and its freeze was lifted: while the freeze is active the claim's
/// money moves only through its outcome (SettleClaim), so an operator's
/// refund under the claim cannot pre-empt the arbiter's decision.
pub async fn check_direct_purpose(
    conn: &mut PgConnection,
    account: &EscrowAccount,
    settles: &Settles,
) -> Result<(), ServiceError> {
    match settles {
        Settles::Milestone(milestone) => {
            if account.payment(milestone).is_err() {
                return Err(ServiceError::invalid(
                    "purpose.milestone_id",
                    format!(
                        "is not a payment of the account's schedule ({})",
                        account
                            .schedule
                            .iter()
                            .map(|p| p.milestone_id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            Ok(())
        }
        Settles::Claim(claim) => match accounts::freeze_of(conn, account.id, claim).await? {
            None => Err(ServiceError::FailedPrecondition(format!(
                "cannot move money for claim {claim}: it never froze this account"
            ))),
            Some(active) if active => Err(ServiceError::FailedPrecondition(format!(
                "cannot move money for claim {claim} directly: the account is frozen for it, and its outcome moves the money (SettleClaim)"
            ))),
            Some(_) => Ok(()),
        },
        Settles::Acceptance | Settles::Cancellation => Ok(()),
    }
}

/// Closes a fully funded account once a release or refund has emptied it
/// (nothing held, nothing on its way, no freeze): nothing can come in or go
/// out any more. `account` is locked in this transaction and current. Returns
/// the closed account, or `None` when it stays open.
pub async fn close_if_emptied(
    conn: &mut PgConnection,
    account: &EscrowAccount,
    now: OffsetDateTime,
) -> Result<Option<EscrowAccount>, ServiceError> {
    if account.status != crate::domain::Status::Funded
        || !account.freezes.is_empty()
        || held(conn, account).await? != 0
        || !attempts::pending_attempts(conn, account.id)
            .await?
            .is_empty()
    {
        return Ok(None);
    }
    close(conn, account.id, now).await.map(Some)
}

/// A parsed OpenEscrowAccount request.
pub struct Open {
    pub new: NewAccount,
    pub terms: Terms,
}

/// OpenEscrowAccount: the account and its terms, its deadlines scheduled and
/// ACCOUNT_OPENED announced; opening again answers the account as it is.
pub async fn open_escrow_account(
    conn: &mut PgConnection,
    flows: &Flows,
    cmd: &Open,
) -> Result<pb::OpenEscrowAccountResponse, ServiceError> {
    let now = timestamps::now();
    let account = open_account(
        conn,
        cmd.new.clone(),
        &cmd.terms.supplier_owner_principal_id,
        now,
    )
    .await?;
    if !accounts::terms_exist(conn, account.id).await? {
        accounts::insert_terms(conn, account.id, &cmd.terms).await?;
        flows.sync_deadlines(conn, &account).await?;
        flows.sync_hold_deadline(conn, &account).await?;
        let view = flows
            .emit(
                conn,
                pb::EscrowEventType::AccountOpened,
                account.id,
                EventFacts::default(),
            )
            .await?;
        return Ok(pb::OpenEscrowAccountResponse {
            account: Some(view),
        });
    }
    Ok(pb::OpenEscrowAccountResponse {
        account: Some(account_view(conn, &account).await?),
    })
}

/// A parsed FreezeEscrow or UnfreezeEscrow request.
pub struct ClaimCommand {
    pub account_id: Uuid,
    pub claim_id: String,
    pub reason: String,
}

/// FreezeEscrow: the freeze, the hold deadline paused, FROZEN announced when
/// it froze anything.
pub async fn freeze_escrow(
    conn: &mut PgConnection,
    flows: &Flows,
    cmd: &ClaimCommand,
) -> Result<pb::FreezeEscrowResponse, ServiceError> {
    let before = accounts::lock_account(conn, cmd.account_id).await?;
    let account = freeze(
        conn,
        cmd.account_id,
        &cmd.claim_id,
        &cmd.reason,
        timestamps::now(),
    )
    .await?;
    let facts = EventFacts {
        claim_id: &cmd.claim_id,
        ..Default::default()
    };
    let changed = !before.freezes.contains(&cmd.claim_id);
    if changed {
        flows.sync_hold_deadline(conn, &account).await?;
    }
    let view = flows
        .emit_if_changed(conn, changed, pb::EscrowEventType::Frozen, &account, facts)
        .await?;
    Ok(pb::FreezeEscrowResponse {
        account: Some(view),
    })
}

/// UnfreezeEscrow: the freeze lifted, the hold deadline resumed, UNFROZEN
/// announced when it lifted anything.
pub async fn unfreeze_escrow(
    conn: &mut PgConnection,
    flows: &Flows,
    cmd: &ClaimCommand,
) -> Result<pb::UnfreezeEscrowResponse, ServiceError> {
    let before = accounts::lock_account(conn, cmd.account_id).await?;
    let account = unfreeze(conn, cmd.account_id, &cmd.claim_id, timestamps::now()).await?;
    let facts = EventFacts {
        claim_id: &cmd.claim_id,
        ..Default::default()
    };
    let changed = before.freezes.contains(&cmd.claim_id);
    if changed {
        flows.sync_hold_deadline(conn, &account).await?;
    }
    let view = flows
        .emit_if_changed(
            conn,
            changed,
            pb::EscrowEventType::Unfrozen,
            &account,
            facts,
        )
        .await?;
    Ok(pb::UnfreezeEscrowResponse {
        account: Some(view),
    })
}

/// An amount a request names, in the account's currency.
pub fn check_currency(account: &EscrowAccount, field: &str, m: Money) -> Result<i64, ServiceError> {
    if m.currency != account.currency {
        return Err(ServiceError::invalid(
            format!("{field}.currency_code"),
            format!("must be the account's currency, {}", account.currency),
        ));
    }
    Ok(m.amount_minor)
}
