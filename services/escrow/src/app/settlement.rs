//! Money leaving what an account holds by a request: a release to the
//! supplier, a refund to the buyer, a claim's settlement, and the close that
//! refunds what is held first. Each notes its reason and actor on the
//! transfers it made, announces what it did, and closes a fully funded
//! account it emptied.

use sqlx::PgConnection;
use ta_proto::escrow as pb;
use ta_runtime::{ServiceError, auth::Principal, money::Money, timestamps};
use uuid::Uuid;

use crate::{
    domain::{EscrowAccount, Posting, Settles, Status as AccountStatus, account::checked_total},
    storage::{accounts, attempts, ledger, statement},
    views::{self, EventFacts},
};

use super::{
    accounts::{
        self as account, check_currency, check_direct_purpose, close, close_if_emptied, held,
        unfreeze,
    },
    context::Flows,
    events::account_view,
};

/// A parsed ReleaseToSupplier or RefundToBuyer request.
pub struct Outflow {
    pub account_id: Uuid,
    pub amount: Option<Money>,
    pub reason: String,
    pub settles: Settles,
}

/// A parsed SettleClaim request.
pub struct Settle {
    pub account_id: Uuid,
    pub claim_id: String,
    pub refund: Option<Money>,
    pub release_rest: bool,
    pub reason: String,
}

/// A parsed CloseEscrowAccount request.
pub struct Close {
    pub account_id: Uuid,
    pub reason: String,
    pub refund_held: bool,
}

fn sum_postings(postings: &[Posting]) -> Result<i64, ServiceError> {
    checked_total(postings.iter().map(|p| p.amount_minor))
        .ok_or_else(|| ServiceError::internal("the postings' sum overflows an i64"))
}

fn transfer_ids(postings: &[Posting]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = postings.iter().map(|p| p.transfer_id).collect();
    ids.dedup();
    ids
}

/// The postings a request made, as proto, with its reason noted.
pub async fn noted_postings(
    conn: &mut PgConnection,
    account_id: Uuid,
    postings: &[Posting],
    reason: &str,
    principal: &Principal,
) -> Result<Vec<pb::Posting>, ServiceError> {
    let ids = transfer_ids(postings);
    for id in &ids {
        ledger::note_transfer(
            conn,
            *id,
            reason,
            &principal.subject,
            principal.role.as_str(),
        )
        .await?;
    }
    Ok(statement::postings_of_transfers(conn, account_id, &ids)
        .await?
        .iter()
        .map(views::posting_proto)
        .collect())
}

/// ReleaseToSupplier (`release`) or RefundToBuyer: moves `amount`, or all
/// that is held, for the purpose the request names; closes the account when
/// `close_when_empty` and it emptied it.
pub async fn outflow(
    conn: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Outflow,
    release: bool,
    close_when_empty: bool,
) -> Result<(Vec<pb::Posting>, pb::EscrowAccount), ServiceError> {
    let now = timestamps::now();
    let mut account = accounts::lock_account(conn, cmd.account_id).await?;
    check_direct_purpose(conn, &account, &cmd.settles).await?;
    let amount = match cmd.amount {
        Some(m) => Some(check_currency(&account, "amount", m)?),
        None => None,
    };
    let postings = if release {
        account::release(conn, &mut account, amount, &cmd.settles, now).await?
    } else {
        account::refund(conn, &mut account, amount, &cmd.settles, now).await?
    };
    let protos = noted_postings(conn, account.id, &postings, &cmd.reason, principal).await?;
    let claim = match &cmd.settles {
        Settles::Claim(c) => c.as_str(),
        _ => "",
    };
    let view = flows
        .announce(
            conn,
            if release {
                pb::EscrowEventType::Released
            } else {
                pb::EscrowEventType::Refunded
            },
            &account,
            EventFacts {
                amount_minor: Some(sum_postings(&postings)?),
                claim_id: claim,
                milestone_id: match &cmd.settles {
                    Settles::Milestone(m) => m.as_str(),
                    _ => "",
                },
                ..Default::default()
            },
        )
        .await?;
    let view = if close_when_empty {
        close_and_announce_if_emptied(conn, flows, &account)
            .await?
            .unwrap_or(view)
    } else {
        view
    };
    Ok((protos, view))
}

/// Closes the account when the movement emptied it, announcing it.
/// `account` is locked in this transaction and as the movement left it.
pub async fn close_and_announce_if_emptied(
    conn: &mut PgConnection,
    flows: &Flows,
    account: &EscrowAccount,
) -> Result<Option<pb::EscrowAccount>, ServiceError> {
    let account_id = account.id;
    let Some(closed) = close_if_emptied(conn, account, timestamps::now()).await? else {
        return Ok(None);
    };
    flows.sync_deadlines(conn, &closed).await?;
    flows.sync_hold_deadline(conn, &closed).await?;
    flows
        .emit(
            conn,
            pb::EscrowEventType::Closed,
            account_id,
            EventFacts::default(),
        )
        .await
        .map(Some)
}

/// SettleClaim: the claim's refund, the rest released when asked, its freeze
/// lifted, in one transaction.
pub async fn settle_claim(
    conn: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Settle,
) -> Result<pb::SettleClaimResponse, ServiceError> {
    let now = timestamps::now();
    let mut account = accounts::lock_account(conn, cmd.account_id).await?;
    if !account.freezes.contains(&cmd.claim_id) {
        return Err(ServiceError::FailedPrecondition(format!(
            "cannot settle: the account is not frozen for claim {} (settled already, or never frozen)",
            cmd.claim_id
        )));
    }
    let settles = Settles::Claim(cmd.claim_id.clone());
    let mut postings = Vec::new();
    if let Some(refund) = cmd.refund {
        let amount = check_currency(&account, "refund", refund)?;
        if amount > 0 {
            postings
                .extend(account::refund(conn, &mut account, Some(amount), &settles, now).await?);
        }
    }
    if cmd.release_rest && held(conn, &account).await? > 0 {
        postings.extend(account::release(conn, &mut account, None, &settles, now).await?);
    }
    let unfrozen = unfreeze(conn, account.id, &cmd.claim_id, now).await?;
    flows.sync_hold_deadline(conn, &unfrozen).await?;
    let protos = noted_postings(conn, account.id, &postings, &cmd.reason, principal).await?;
    let view = flows
        .emit(
            conn,
            pb::EscrowEventType::ClaimSettled,
            account.id,
            EventFacts {
                amount_minor: Some(sum_postings(&postings)?),
                claim_id: &cmd.claim_id,
                ..Default::default()
            },
        )
        .await?;
    let view = close_and_announce_if_emptied(conn, flows, &unfrozen)
        .await?
        .unwrap_or(view);
    Ok(pb::SettleClaimResponse {
        postings: protos,
        account: Some(view),
    })
}

/// CloseEscrowAccount: refunds what is held first when asked (a
/// cancellation), then closes, failing the attempts still pending.
pub async fn close_escrow_account(
    conn: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Close,
) -> Result<pb::CloseEscrowAccountResponse, ServiceError> {
    let id = cmd.account_id;
    let before = accounts::lock_account(conn, id).await?;
    let pending = attempts::pending_attempts(conn, id).await?;
    if cmd.refund_held && before.status != AccountStatus::Closed && held(conn, &before).await? > 0 {
        let refund = Outflow {
            account_id: id,
            amount: None,
            reason: cmd.reason.clone(),
            settles: Settles::Cancellation,
        };
        outflow(conn, flows, principal, &refund, false, false).await?;
    }
    let account = close(conn, id, timestamps::now()).await?;
    flows.sync_deadlines(conn, &account).await?;
    flows.sync_hold_deadline(conn, &account).await?;
    if before.status == AccountStatus::Closed {
        return Ok(pb::CloseEscrowAccountResponse {
            account: Some(account_view(conn, &account).await?),
        });
    }
    for attempt in pending {
        let view = attempts::attempt_view(conn, attempt.id).await?;
        flows.emit_payment_failed(conn, &view).await?;
    }
    let view = flows
        .emit(conn, pb::EscrowEventType::Closed, id, EventFacts::default())
        .await?;
    Ok(pb::CloseEscrowAccountResponse {
        account: Some(view),
    })
}
