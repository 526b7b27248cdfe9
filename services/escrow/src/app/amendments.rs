//! AmendEscrowSchedule: a signed amendment's schedule replaces the account's.
//! Each payment keeps what it received, up to its new amount; what was
//! funded beyond the new schedule is refunded the way it came; the status
//! follows what is funded of the new schedule.

use std::collections::HashSet;

use sqlx::PgConnection;
use ta_proto::escrow as pb;
use ta_runtime::{ServiceError, auth::Principal, money::Money, timestamps};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{
        Purpose, ScheduledPayment, Status as AccountStatus, TransferRequest, account::checked_total,
    },
    storage::{accounts, attempts, ledger},
    views::EventFacts,
};

use super::{
    accounts::{check_currency, held, refund_legs},
    context::Flows,
    events::account_view,
    settlement::noted_postings,
};

/// A parsed AmendEscrowSchedule request.
pub struct Amend {
    pub account_id: Uuid,
    pub schedule: Vec<(String, Money, OffsetDateTime)>,
    /// Unset keeps the current hold deadline.
    pub hold_until: Option<OffsetDateTime>,
    pub version: i32,
}

/// AmendEscrowSchedule, once per contract version: a version not newer than
/// the account's answers the account as it is.
pub async fn amend(
    conn: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Amend,
) -> Result<pb::AmendEscrowScheduleResponse, ServiceError> {
    let now = timestamps::now();
    let account = accounts::lock_account(conn, cmd.account_id).await?;
    let terms = accounts::get_terms(conn, account.id).await?;
    if cmd.version <= terms.contract_version {
        return Ok(pb::AmendEscrowScheduleResponse {
            account: Some(account_view(conn, &account).await?),
            postings: Vec::new(),
        });
    }
    if account.status == AccountStatus::Closed {
        return Err(ServiceError::FailedPrecondition(
            "cannot amend: the account is closed".into(),
        ));
    }
    let last_due = cmd.schedule.iter().map(|(_, _, due)| *due).max();
    if cmd.hold_until.is_none()
        && let Some(due) = last_due
        && account.hold_until <= due
    {
        return Err(ServiceError::invalid(
            "hold_until",
            format!(
                "is required: the current hold deadline, {}, is not after the amended schedule's last due date, {due}",
                account.hold_until
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut new_schedule = Vec::new();
    for (i, (milestone, amount, due)) in cmd.schedule.iter().enumerate() {
        let amount = check_currency(&account, &format!("schedule[{i}].amount"), *amount)?;
        if !seen.insert(milestone.clone()) {
            return Err(ServiceError::invalid(
                format!("schedule[{i}].milestone_id"),
                "appears twice",
            ));
        }
        let funded = account
            .payment(milestone)
            .map(|p| p.funded_minor.min(amount))
            .unwrap_or(0);
        new_schedule.push(ScheduledPayment {
            milestone_id: milestone.clone(),
            amount_minor: amount,
            due_at: *due,
            funded_minor: funded,
        });
    }
    let with_attempts = attempts::milestones_with_attempts(conn, account.id).await?;
    for old in &account.schedule {
        if !seen.contains(&old.milestone_id) && with_attempts.contains(&old.milestone_id) {
            return Err(ServiceError::FailedPrecondition(format!(
                "cannot amend: payment {} has funding attempts and must stay in the schedule",
                old.milestone_id
            )));
        }
    }
    if checked_total(new_schedule.iter().map(|p| p.amount_minor)).is_none() {
        return Err(ServiceError::invalid(
            "schedule",
            "the payments add up to more than an amount can hold",
        ));
    }
    let old_funded = account.funded_total()?;
    // Each at most its payment's amount, whose total fits.
    let new_funded = checked_total(new_schedule.iter().map(|p| p.funded_minor))
        .ok_or_else(|| ServiceError::internal("the amended funded total overflows an i64"))?;
    let excess = (old_funded - new_funded).min(held(conn, &account).await?);
    let mut postings = Vec::new();
    if excess > 0 {
        if !account.freezes.is_empty() {
            return Err(ServiceError::FailedPrecondition(
                "cannot amend: the account is frozen; its claim's outcome moves the money first"
                    .into(),
            ));
        }
        let legs = refund_legs(conn, &account, excess).await?;
        postings = ledger::transfer(
            conn,
            &TransferRequest {
                id: Uuid::now_v7(),
                purpose: Purpose::refund_amendment(account.id, cmd.version),
                escrow_account: Some(account.id),
                legs,
            },
        )
        .await?;
    }
    let mut amended = account.clone();
    amended.amend(new_schedule);
    if let Some(at) = cmd.hold_until {
        amended.set_hold_until(at, now);
    }
    accounts::replace_schedule(conn, account.id, &amended.schedule).await?;
    accounts::save_account(conn, &amended, now).await?;
    accounts::set_contract_version(conn, account.id, cmd.version).await?;
    for old in &account.schedule {
        if !seen.contains(&old.milestone_id) {
            flows
                .cancel_deadline(conn, account.id, &old.milestone_id)
                .await?;
        }
    }
    let amended = accounts::get_account(conn, account.id).await?;
    flows.sync_deadlines(conn, &amended).await?;
    if cmd.hold_until.is_some() {
        flows.sync_hold_deadline(conn, &amended).await?;
    }
    let reason = format!("schedule amended to contract version {}", cmd.version);
    let protos = noted_postings(conn, account.id, &postings, &reason, principal).await?;
    if excess > 0 {
        flows
            .emit(
                conn,
                pb::EscrowEventType::Refunded,
                account.id,
                EventFacts {
                    amount_minor: Some(excess),
                    ..Default::default()
                },
            )
            .await?;
    }
    if amended.status == AccountStatus::Funded && account.status != AccountStatus::Funded {
        flows
            .emit(
                conn,
                pb::EscrowEventType::Funded,
                account.id,
                EventFacts::default(),
            )
            .await?;
    }
    Ok(pb::AmendEscrowScheduleResponse {
        account: Some(flows.view(conn, account.id).await?),
        postings: protos,
    })
}
