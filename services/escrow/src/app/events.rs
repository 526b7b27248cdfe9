//! The feed's events: each appended in the transaction of the change it
//! announces, with the account as it is after the change.

use sqlx::PgConnection;
use ta_proto::escrow as pb;
use ta_runtime::{ServiceError, timestamps};
use uuid::Uuid;

use crate::{
    domain::{EscrowAccount, Status},
    storage::{accounts, attempts::AttemptView},
    views::{self, EventFacts},
};

use super::context::Flows;

/// The account as the API shows it, read in `conn`'s transaction.
pub async fn account_view(
    conn: &mut PgConnection,
    account: &EscrowAccount,
) -> Result<pb::EscrowAccount, ServiceError> {
    let details = accounts::read_details(conn, account.id).await?;
    views::account_proto(account, &details)
}

impl Flows {
    /// The account as the API shows it.
    pub async fn view(
        &self,
        conn: &mut PgConnection,
        account_id: Uuid,
    ) -> Result<pb::EscrowAccount, ServiceError> {
        let account = accounts::get_account(conn, account_id).await?;
        account_view(conn, &account).await
    }

    /// Appends an event about `account` (re-read, as it is after the change)
    /// in the caller's transaction.
    pub async fn emit(
        &self,
        conn: &mut PgConnection,
        kind: pb::EscrowEventType,
        account_id: Uuid,
        facts: EventFacts<'_>,
    ) -> Result<pb::EscrowAccount, ServiceError> {
        let account = accounts::get_account(conn, account_id).await?;
        self.announce(conn, kind, &account, facts).await
    }

    /// Appends an event about `account` as the caller holds it, locked and
    /// saved in this transaction with nothing else changed since: one read
    /// fewer than [`Flows::emit`] on the hot path.
    pub async fn announce(
        &self,
        conn: &mut PgConnection,
        kind: pb::EscrowEventType,
        account: &EscrowAccount,
        facts: EventFacts<'_>,
    ) -> Result<pb::EscrowAccount, ServiceError> {
        let view = account_view(conn, account).await?;
        self.append(conn, kind, account, &view, facts).await?;
        Ok(view)
    }

    /// Appends the event of `kind` about `account`, shown as `view`.
    async fn append(
        &self,
        conn: &mut PgConnection,
        kind: pb::EscrowEventType,
        account: &EscrowAccount,
        view: &pb::EscrowAccount,
        facts: EventFacts<'_>,
    ) -> Result<(), ServiceError> {
        let event = views::escrow_event(kind, account, view, facts, timestamps::now());
        self.feed
            .append(
                conn,
                &views::event_name(kind),
                &account.id.to_string(),
                &event,
            )
            .await
    }

    /// The account as a call answers it: announced in the feed when the call
    /// changed it, read as it is when it did not (a repeated freeze, say).
    pub async fn emit_if_changed(
        &self,
        conn: &mut PgConnection,
        changed: bool,
        kind: pb::EscrowEventType,
        account: &EscrowAccount,
        facts: EventFacts<'_>,
    ) -> Result<pb::EscrowAccount, ServiceError> {
        if changed {
            self.emit(conn, kind, account.id, facts).await
        } else {
            account_view(conn, account).await
        }
    }

    /// Announces a funding that posted `posted_minor`, and FUNDED when the
    /// account just became fully funded.
    pub async fn emit_funding(
        &self,
        conn: &mut PgConnection,
        before: Status,
        attempt: &AttemptView,
        posted_minor: i64,
    ) -> Result<(), ServiceError> {
        // Both events show the account after the posting, read once.
        let account = accounts::get_account(conn, attempt.escrow_account_id).await?;
        let view = account_view(conn, &account).await?;
        self.append(
            conn,
            pb::EscrowEventType::PaymentSucceeded,
            &account,
            &view,
            EventFacts {
                amount_minor: Some(posted_minor),
                milestone_id: &attempt.milestone_id,
                funding_attempt_id: Some(attempt.id),
                ..Default::default()
            },
        )
        .await?;
        if account.status == Status::Funded && before != Status::Funded {
            self.append(
                conn,
                pb::EscrowEventType::Funded,
                &account,
                &view,
                EventFacts::default(),
            )
            .await?;
        }
        if account.schedule.iter().all(|p| p.is_funded()) || posted_minor > 0 {
            self.sync_deadlines(conn, &account).await?;
        }
        Ok(())
    }

    pub async fn emit_payment_failed(
        &self,
        conn: &mut PgConnection,
        attempt: &AttemptView,
    ) -> Result<(), ServiceError> {
        self.emit(
            conn,
            pb::EscrowEventType::PaymentFailed,
            attempt.escrow_account_id,
            EventFacts {
                milestone_id: &attempt.milestone_id,
                funding_attempt_id: Some(attempt.id),
                ..Default::default()
            },
        )
        .await
        .map(drop)
    }
}
