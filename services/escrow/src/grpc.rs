//! The gRPC transport: parses each request into a command (every bad field
//! reported at once), runs mutations through the shared pipeline (caller,
//! key, one transaction, stored answer) and the use cases in `app`, appends
//! the feed's events in the same transaction, and answers in proto. Who may
//! call which RPC is the proto's access option, enforced by the server's
//! auth layer; here only the per-resource checks (a buyer or supplier
//! reaches only accounts it is a party to).
//!
//! Gateway calls (card charges, bank transfer and Pay Later set-up, payouts)
//! run inside the transaction with a key derived from the caller's
//! idempotency key: if the gateway fails or times out, the transaction rolls
//! back and nothing is recorded, and a retry with the same key gets the
//! gateway's first answer (it is idempotent per key), so a card is charged
//! once. The account's row lock is held across the call: two payments of one
//! account wait for each other, which is what we want.

use std::sync::Arc;

use sqlx::PgConnection;
use ta_proto::escrow::{self as pb, escrow_service_server::EscrowService};
use ta_runtime::{
    ServiceError, Violations,
    auth::{self, Principal, Role},
    money::{Currency, Money},
    paging,
    pipeline::Mutations,
    text::{require_text, validate_reference},
    timestamps,
};
use ta_workflow::{config::FeedConfig, feed::EventStream};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    app::{
        self,
        funding::{Fund, Method},
    },
    domain::{
        AccountKey, EscrowAccount, Leg, NewAccount, Purpose, Settles, Status as AccountStatus,
        TransferRequest,
        account::{hold_until_problem, split_refund},
    },
    flows::{
        self, EventFacts, Flows, account_proto, attempt_proto, ledger_account, money,
        transfer_proto,
    },
    storage::{
        self, accounts,
        api::{self, Scheme, Terms},
        ledger,
        transfers::{self, TransferFilter},
    },
    webhook::GatewayEvent,
};

const MAX_REASON: usize = 500;

pub struct EscrowApi {
    mutations: Mutations,
    flows: Arc<Flows>,
    feed_config: FeedConfig,
}

impl EscrowApi {
    pub fn new(pool: sqlx::PgPool, flows: Arc<Flows>, feed_config: FeedConfig) -> Self {
        Self {
            mutations: Mutations::new(pool, storage::SCHEMA),
            flows,
            feed_config,
        }
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.mutations.pool()
    }

    async fn read<T>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, ServiceError>,
    ) -> Result<T, Status> {
        let mut conn = self.pool().acquire().await.map_err(ServiceError::from)?;
        Ok(work(&mut conn).await?)
    }
}

// ---- Parsing ---------------------------------------------------------------

fn parse_id(field: &str, value: &str, v: &mut Violations) -> Uuid {
    Uuid::parse_str(value).unwrap_or_else(|_| {
        v.add(field, "must be an escrow account id (UUID)");
        Uuid::nil()
    })
}

fn reference(field: &str, value: &str, v: &mut Violations) -> String {
    validate_reference(field, value, v);
    value.to_owned()
}

fn positive(field: &str, m: Option<&ta_proto::common::Money>, v: &mut Violations) -> Option<Money> {
    Money::positive_from_proto(field, m, v)
}

fn optional_amount(
    field: &str,
    m: Option<&ta_proto::common::Money>,
    v: &mut Violations,
) -> Option<Money> {
    m.and_then(|m| positive(field, Some(m), v))
}

fn schedule(
    field: &str,
    payments: &[pb::ScheduledPayment],
    v: &mut Violations,
) -> Vec<(String, Money, OffsetDateTime)> {
    if payments.is_empty() {
        v.add(field, "needs at least one scheduled payment");
    }
    let mut out = Vec::new();
    for (i, p) in payments.iter().enumerate() {
        let milestone = reference(&format!("{field}[{i}].milestone_id"), &p.milestone_id, v);
        let amount = positive(&format!("{field}[{i}].amount"), p.amount.as_ref(), v);
        let due = p.due_at.as_ref().and_then(timestamps::from_proto);
        if due.is_none() {
            v.add(format!("{field}[{i}].due_at"), "is required");
        }
        if let (Some(amount), Some(due)) = (amount, due) {
            out.push((milestone, amount, due));
        }
    }
    out
}

/// The hold deadline of a request: in the future and after the last due
/// date of `schedule`; `required` when unset is a violation (otherwise it
/// keeps the current one).
fn hold_until(
    at: Option<&prost_types::Timestamp>,
    schedule: &[(String, Money, OffsetDateTime)],
    required: bool,
    now: OffsetDateTime,
    v: &mut Violations,
) -> Option<OffsetDateTime> {
    let Some(at) = at else {
        if required {
            v.add("hold_until", "is required");
        }
        return None;
    };
    let Some(at) = timestamps::from_proto(at) else {
        v.add("hold_until", "is not a valid timestamp");
        return None;
    };
    let last_due = schedule.iter().map(|(_, _, due)| *due).max();
    match hold_until_problem(at, last_due, now) {
        Some(problem) => {
            v.add("hold_until", problem);
            None
        }
        None => Some(at),
    }
}

fn settles(purpose: Option<&pb::Purpose>, v: &mut Violations) -> Option<Settles> {
    use pb::purpose::Purpose as P;
    match purpose.and_then(|p| p.purpose.as_ref()) {
        None => {
            v.add("purpose", "is required");
            None
        }
        Some(P::MilestoneId(m)) => {
            Some(Settles::Milestone(reference("purpose.milestone_id", m, v)))
        }
        Some(P::Acceptance(true)) => Some(Settles::Acceptance),
        Some(P::Cancellation(true)) => Some(Settles::Cancellation),
        Some(P::ClaimId(c)) => Some(Settles::Claim(reference("purpose.claim_id", c, v))),
        Some(P::Acceptance(false)) => {
            v.add("purpose.acceptance", "must be true when set");
            None
        }
        Some(P::Cancellation(false)) => {
            v.add("purpose.cancellation", "must be true when set");
            None
        }
        Some(P::AmendmentVersion(_)) => {
            v.add(
                "purpose.amendment_version",
                "is the purpose AmendEscrowSchedule sets itself",
            );
            None
        }
    }
}

fn invalid() -> ServiceError {
    ServiceError::InvalidArgument(Vec::new())
}

fn check_currency(account: &EscrowAccount, field: &str, m: Money) -> Result<i64, ServiceError> {
    if m.currency != account.currency {
        return Err(ServiceError::invalid(
            format!("{field}.currency_code"),
            format!("must be the account's currency, {}", account.currency),
        ));
    }
    Ok(m.amount_minor)
}

// ---- Who may see what --------------------------------------------------------

/// Buyers reach their own accounts, suppliers (their owner principals) theirs;
/// operators and services every account.
async fn check_party(
    conn: &mut PgConnection,
    principal: &Principal,
    account: &EscrowAccount,
) -> Result<(), ServiceError> {
    match principal.role {
        Role::Buyer if principal.subject == account.buyer_principal_id => Ok(()),
        Role::Supplier
            if api::terms(conn, account.id)
                .await?
                .supplier_owner_principal_id
                == principal.subject =>
        {
            Ok(())
        }
        Role::Operator | Role::Service => Ok(()),
        _ => Err(app::not_party()),
    }
}

// ---- Commands ------------------------------------------------------------------

struct Open {
    new: NewAccount,
    terms: Terms,
}

struct Outflow {
    account_id: Uuid,
    amount: Option<Money>,
    reason: String,
    settles: Settles,
}

struct Settle {
    account_id: Uuid,
    claim_id: String,
    refund: Option<Money>,
    release_rest: bool,
    reason: String,
}

struct ClaimCommand {
    account_id: Uuid,
    claim_id: String,
    reason: String,
}

struct Amend {
    account_id: Uuid,
    schedule: Vec<(String, Money, OffsetDateTime)>,
    /// Unset keeps the current hold deadline.
    hold_until: Option<OffsetDateTime>,
    version: i32,
}

fn sum_postings(postings: &[crate::domain::Posting]) -> Result<i64, ServiceError> {
    crate::domain::account::checked_total(postings.iter().map(|p| p.amount_minor))
        .ok_or_else(|| ServiceError::internal("the postings' sum overflows an i64"))
}

fn transfer_ids(postings: &[crate::domain::Posting]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = postings.iter().map(|p| p.transfer_id).collect();
    ids.dedup();
    ids
}

fn kind_of_purpose(purpose: &str) -> pb::PostingKind {
    let prefix = purpose.split(':').next().unwrap_or_default();
    match prefix {
        "funding" => pb::PostingKind::Funding,
        "release" => pb::PostingKind::Release,
        "refund" => pb::PostingKind::Refund,
        "payout" => pb::PostingKind::Payout,
        "buyer-refund" => pb::PostingKind::RefundPayment,
        "unmatched-credit" | "suspense-refund" => pb::PostingKind::Suspense,
        "correction" => pb::PostingKind::Correction,
        _ => pb::PostingKind::Unspecified,
    }
}

fn purpose_proto(purpose: &str) -> Option<pb::Purpose> {
    use pb::purpose::Purpose as P;
    let parts: Vec<&str> = purpose.splitn(3, ':').collect();
    let p = match parts.as_slice() {
        ["release", "milestone", m] => P::MilestoneId((*m).to_owned()),
        ["release", "acceptance"] => P::Acceptance(true),
        ["refund", "cancellation"] => P::Cancellation(true),
        ["release" | "refund", "claim", c] => P::ClaimId((*c).to_owned()),
        ["refund", "amendment", v] => P::AmendmentVersion(v.parse().ok()?),
        _ => return None,
    };
    Some(pb::Purpose { purpose: Some(p) })
}

fn leg_account(a: &api::LegAccount, currency: &str) -> pb::LedgerAccount {
    ledger_account(a.id, &a.kind, &a.owner, currency)
}

fn posting_proto(p: &api::PostingRow) -> pb::Posting {
    let currency = Currency::parse(&p.currency);
    pb::Posting {
        posting_id: p.id.to_string(),
        escrow_account_id: p
            .escrow_account_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        kind: kind_of_purpose(&p.purpose) as i32,
        debit_account: Some(leg_account(&p.leg.debit, &p.currency)),
        credit_account: Some(leg_account(&p.leg.credit, &p.currency)),
        amount: currency.map(|c| money(p.amount_minor, c)),
        hold_id: p.hold_id.map(|h| h.to_string()).unwrap_or_default(),
        funding_attempt_id: p
            .funding_attempt_id
            .map(|h| h.to_string())
            .unwrap_or_default(),
        purpose: purpose_proto(&p.purpose),
        reason: p.reason.clone().unwrap_or_default(),
        actor: p
            .actor_principal_id
            .as_ref()
            .map(|id| ta_proto::common::Actor {
                principal_id: id.clone(),
                role: role_proto(p.actor_role.as_deref().unwrap_or_default()) as i32,
            }),
        posted_at: Some(timestamps::to_proto(p.posted_at)),
        transfer_id: p.transfer_id.to_string(),
        corrects_posting_id: String::new(),
    }
}

fn role_proto(role: &str) -> ta_proto::common::Role {
    role.parse::<Role>()
        .map_or(ta_proto::common::Role::Unspecified, Role::to_proto)
}

/// The postings a request made, as proto, with its reason noted.
async fn noted_postings(
    conn: &mut PgConnection,
    account_id: Uuid,
    postings: &[crate::domain::Posting],
    reason: &str,
    principal: &Principal,
) -> Result<Vec<pb::Posting>, ServiceError> {
    let ids = transfer_ids(postings);
    for id in &ids {
        api::note_transfer(
            conn,
            *id,
            reason,
            &principal.subject,
            principal.role.as_str(),
        )
        .await?;
    }
    Ok(api::postings_of_transfers(conn, account_id, &ids)
        .await?
        .iter()
        .map(posting_proto)
        .collect())
}

impl EscrowApi {
    async fn outflow_in_tx(
        &self,
        conn: &mut PgConnection,
        principal: &Principal,
        cmd: &Outflow,
        release: bool,
        close_when_empty: bool,
    ) -> Result<(Vec<pb::Posting>, pb::EscrowAccount), ServiceError> {
        let now = timestamps::now();
        let account = accounts::lock_account(conn, cmd.account_id).await?;
        app::check_direct_purpose(conn, &account, &cmd.settles).await?;
        let amount = match cmd.amount {
            Some(m) => Some(check_currency(&account, "amount", m)?),
            None => None,
        };
        let postings = if release {
            app::release(conn, account.id, amount, &cmd.settles, now).await?
        } else {
            app::refund(conn, account.id, amount, &cmd.settles, now).await?
        };
        let protos = noted_postings(conn, account.id, &postings, &cmd.reason, principal).await?;
        let claim = match &cmd.settles {
            Settles::Claim(c) => c.as_str(),
            _ => "",
        };
        let view = self
            .flows
            .emit(
                conn,
                if release {
                    pb::EscrowEventType::Released
                } else {
                    pb::EscrowEventType::Refunded
                },
                account.id,
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
            self.closed_if_emptied(conn, account.id)
                .await?
                .unwrap_or(view)
        } else {
            view
        };
        Ok((protos, view))
    }

    /// Closes the account when the movement emptied it, announcing it.
    async fn closed_if_emptied(
        &self,
        conn: &mut PgConnection,
        account_id: Uuid,
    ) -> Result<Option<pb::EscrowAccount>, ServiceError> {
        let Some(closed) = app::close_if_emptied(conn, account_id, timestamps::now()).await? else {
            return Ok(None);
        };
        self.flows.sync_deadlines(conn, &closed).await?;
        self.flows.sync_hold_deadline(conn, &closed).await?;
        self.flows
            .emit(
                conn,
                pb::EscrowEventType::Closed,
                account_id,
                EventFacts::default(),
            )
            .await
            .map(Some)
    }

    async fn settle_in_tx(
        &self,
        conn: &mut PgConnection,
        principal: &Principal,
        cmd: &Settle,
    ) -> Result<pb::SettleClaimResponse, ServiceError> {
        let now = timestamps::now();
        let account = accounts::lock_account(conn, cmd.account_id).await?;
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
                postings.extend(app::refund(conn, account.id, Some(amount), &settles, now).await?);
            }
        }
        if cmd.release_rest && app::held(conn, &account).await? > 0 {
            postings.extend(app::release(conn, account.id, None, &settles, now).await?);
        }
        let unfrozen = app::unfreeze(conn, account.id, &cmd.claim_id, now).await?;
        self.flows.sync_hold_deadline(conn, &unfrozen).await?;
        let protos = noted_postings(conn, account.id, &postings, &cmd.reason, principal).await?;
        let view = self
            .flows
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
        let view = self
            .closed_if_emptied(conn, account.id)
            .await?
            .unwrap_or(view);
        Ok(pb::SettleClaimResponse {
            postings: protos,
            account: Some(view),
        })
    }

    async fn amend_in_tx(
        &self,
        conn: &mut PgConnection,
        principal: &Principal,
        cmd: &Amend,
    ) -> Result<pb::AmendEscrowScheduleResponse, ServiceError> {
        let now = timestamps::now();
        let account = accounts::lock_account(conn, cmd.account_id).await?;
        let terms = api::terms(conn, account.id).await?;
        if cmd.version <= terms.contract_version {
            return Ok(pb::AmendEscrowScheduleResponse {
                account: Some(account_proto(conn, &account).await?),
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
        let mut seen = std::collections::HashSet::new();
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
            new_schedule.push((milestone.clone(), amount, funded, *due));
        }
        let with_attempts = api::milestones_with_attempts(conn, account.id).await?;
        for old in &account.schedule {
            if !seen.contains(&old.milestone_id) && with_attempts.contains(&old.milestone_id) {
                return Err(ServiceError::FailedPrecondition(format!(
                    "cannot amend: payment {} has funding attempts and must stay in the schedule",
                    old.milestone_id
                )));
            }
        }
        if crate::domain::account::checked_total(new_schedule.iter().map(|p| p.1)).is_none() {
            return Err(ServiceError::invalid(
                "schedule",
                "the payments add up to more than an amount can hold",
            ));
        }
        let old_funded = account.funded_total()?;
        // Each at most its payment's amount, whose total fits.
        let new_funded = crate::domain::account::checked_total(new_schedule.iter().map(|p| p.2))
            .ok_or_else(|| ServiceError::internal("the amended funded total overflows an i64"))?;
        let excess = (old_funded - new_funded).min(app::held(conn, &account).await?);
        let mut postings = Vec::new();
        if excess > 0 {
            if !account.freezes.is_empty() {
                return Err(ServiceError::FailedPrecondition(
                    "cannot amend: the account is frozen; its claim's outcome moves the money first"
                        .into(),
                ));
            }
            let held = AccountKey::escrow_held(account.id, account.currency);
            let outstanding = ledger::loan_outstanding(conn, account.id).await?;
            let (partners, buyer) = split_refund(excess, &outstanding);
            let mut legs: Vec<Leg> = partners
                .into_iter()
                .map(|(partner, share)| Leg {
                    debit: held.clone(),
                    credit: partner,
                    amount_minor: share,
                })
                .collect();
            if buyer > 0 {
                legs.push(Leg {
                    debit: held.clone(),
                    credit: AccountKey::buyer_refund_payable(account.id, account.currency),
                    amount_minor: buyer,
                });
            }
            postings = ledger::transfer(
                conn,
                &TransferRequest {
                    id: Uuid::now_v7(),
                    purpose: Purpose {
                        scope: format!("escrow:{}", account.id),
                        key: format!("refund:amendment:{}", cmd.version),
                    },
                    escrow_account: Some(account.id),
                    legs,
                },
            )
            .await?;
        }
        api::replace_schedule(conn, account.id, &new_schedule).await?;
        let status = if new_schedule.iter().all(|p| p.2 >= p.1) {
            "funded"
        } else if new_schedule.iter().any(|p| p.2 > 0) {
            "partially_funded"
        } else {
            "awaiting_funding"
        };
        api::set_status(conn, account.id, status, now).await?;
        api::set_contract_version(conn, account.id, cmd.version).await?;
        if let Some(at) = cmd.hold_until {
            let mut deadline = account.clone();
            deadline.set_hold_until(at, now);
            accounts::save_hold_deadline(conn, &deadline).await?;
        }
        for old in &account.schedule {
            if !seen.contains(&old.milestone_id) {
                self.flows
                    .cancel_deadline(conn, account.id, &old.milestone_id)
                    .await?;
            }
        }
        let amended = accounts::get_account(conn, account.id).await?;
        self.flows.sync_deadlines(conn, &amended).await?;
        if cmd.hold_until.is_some() {
            self.flows.sync_hold_deadline(conn, &amended).await?;
        }
        let reason = format!("schedule amended to contract version {}", cmd.version);
        let protos = noted_postings(conn, account.id, &postings, &reason, principal).await?;
        if excess > 0 {
            self.flows
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
        if status == "funded" && account.status != AccountStatus::Funded {
            self.flows
                .emit(
                    conn,
                    pb::EscrowEventType::Funded,
                    account.id,
                    EventFacts::default(),
                )
                .await?;
        }
        Ok(pb::AmendEscrowScheduleResponse {
            account: Some(self.flows.view(conn, account.id).await?),
            postings: protos,
        })
    }
}

fn claim_command(
    account: &str,
    claim: &str,
    reason: &str,
    v: &mut Violations,
) -> Result<ClaimCommand, ServiceError> {
    Ok(ClaimCommand {
        account_id: parse_id("escrow_account_id", account, v),
        claim_id: reference("claim_id", claim, v),
        reason: require_text("reason", reason, MAX_REASON, v),
    })
}

fn outflow(
    account: &str,
    amount: Option<&ta_proto::common::Money>,
    reason: &str,
    purpose: Option<&pb::Purpose>,
    v: &mut Violations,
) -> Result<Outflow, ServiceError> {
    let account_id = parse_id("escrow_account_id", account, v);
    let amount = optional_amount("amount", amount, v);
    let reason = require_text("reason", reason, MAX_REASON, v);
    let settles = settles(purpose, v).ok_or_else(invalid)?;
    Ok(Outflow {
        account_id,
        amount,
        reason,
        settles,
    })
}

fn page_after_seq(page: Option<&ta_proto::common::PageRequest>, v: &mut Violations) -> i64 {
    paging::cursor(page, "statement", v, |f| match f {
        [seq] => seq.parse().ok(),
        _ => None,
    })
    .unwrap_or(0)
}

fn time_cursor(
    page: Option<&ta_proto::common::PageRequest>,
    kind: &str,
    v: &mut Violations,
) -> Option<(OffsetDateTime, String)> {
    paging::cursor(page, kind, v, |f| match f {
        [at, id] => {
            let nanos: i128 = at.parse().ok()?;
            Some((
                OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?,
                (*id).to_owned(),
            ))
        }
        _ => None,
    })
}

fn time_token(kind: &str, at: OffsetDateTime, id: &str) -> String {
    paging::token(kind, &[&at.unix_timestamp_nanos().to_string(), id])
}

fn uuid_cursor(
    c: Option<(OffsetDateTime, String)>,
    v: &mut Violations,
) -> Option<(OffsetDateTime, Uuid)> {
    c.and_then(|(at, id)| match Uuid::parse_str(&id) {
        Ok(id) => Some((at, id)),
        Err(_) => {
            v.add("page.page_token", "is not a token this listing returned");
            None
        }
    })
}

fn finish(v: Violations) -> Result<(), Status> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(v.into_error().into())
    }
}

#[tonic::async_trait]
impl EscrowService for EscrowApi {
    async fn open_escrow_account(
        &self,
        request: Request<pb::OpenEscrowAccountRequest>,
    ) -> Result<Response<pb::OpenEscrowAccountResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let contract_id = reference("contract_id", &req.contract_id, v);
            let buyer = reference("buyer_principal_id", &req.buyer_principal_id, v);
            let supplier = reference("supplier_id", &req.supplier_id, v);
            let owner = reference(
                "supplier_owner_principal_id",
                &req.supplier_owner_principal_id,
                v,
            );
            let schedule = schedule("schedule", &req.schedule, v);
            let hold_until = hold_until(
                req.hold_until.as_ref(),
                &schedule,
                true,
                timestamps::now(),
                v,
            );
            let scheme = match pb::EscrowPaymentScheme::try_from(req.payment_scheme) {
                Ok(pb::EscrowPaymentScheme::Direct) => Some(Scheme::Direct),
                Ok(pb::EscrowPaymentScheme::PayLater) => Some(Scheme::PayLater),
                _ => {
                    v.add("payment_scheme", "must be DIRECT or PAY_LATER");
                    None
                }
            };
            match scheme {
                Some(Scheme::PayLater) => {
                    validate_reference("financing_partner_id", &req.financing_partner_id, v);
                }
                Some(Scheme::Direct) if !req.financing_partner_id.is_empty() => v.add(
                    "financing_partner_id",
                    "must be empty unless the scheme is PAY_LATER",
                ),
                _ => {}
            }
            Ok(Open {
                new: NewAccount {
                    contract_id,
                    buyer_principal_id: buyer,
                    supplier_id: supplier,
                    schedule,
                    hold_until: hold_until.ok_or_else(invalid)?,
                },
                terms: Terms {
                    scheme: scheme.ok_or_else(invalid)?,
                    financing_partner_id: req.financing_partner_id.clone(),
                    supplier_owner_principal_id: owner,
                    contract_version: 1,
                },
            })
        })?;
        self.mutations
            .execute(&prepared, || async |tx| {
                let now = timestamps::now();
                let cmd = &prepared.command;
                let account = app::open_account(tx, cmd.new.clone(), now).await?;
                let fresh = sqlx::query_scalar::<_, bool>(
                        "SELECT NOT EXISTS (SELECT 1 FROM escrow.account_terms WHERE escrow_account_id = $1)",
                    )
                    .bind(account.id)
                    .fetch_one(&mut *tx)
                    .await?;
                if fresh {
                    api::insert_terms(tx, account.id, &cmd.terms).await?;
                    self.flows.sync_deadlines(tx, &account).await?;
                    self.flows.sync_hold_deadline(tx, &account).await?;
                    let view = self
                        .flows
                        .emit(
                            tx,
                            pb::EscrowEventType::AccountOpened,
                            account.id,
                            EventFacts::default(),
                        )
                        .await?;
                    return Ok(pb::OpenEscrowAccountResponse { account: Some(view) });
                }
                Ok(pb::OpenEscrowAccountResponse {
                    account: Some(account_proto(tx, &account).await?),
                })
            })
            .await
    }

    async fn get_escrow_account(
        &self,
        request: Request<pb::GetEscrowAccountRequest>,
    ) -> Result<Response<pb::GetEscrowAccountResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let by_id = match (req.escrow_account_id.is_empty(), req.contract_id.is_empty()) {
            (false, true) => Some(parse_id(
                "escrow_account_id",
                &req.escrow_account_id,
                &mut v,
            )),
            (true, false) => {
                validate_reference("contract_id", &req.contract_id, &mut v);
                None
            }
            _ => {
                v.add(
                    "escrow_account_id",
                    "exactly one of escrow_account_id and contract_id is required",
                );
                None
            }
        };
        finish(v)?;
        self.read(async |conn| {
            let account = match by_id {
                Some(id) => accounts::get_account(conn, id).await?,
                None => accounts::find_by_contract(conn, &req.contract_id)
                    .await?
                    .ok_or_else(|| {
                        ServiceError::not_found("escrow account of contract", &req.contract_id)
                    })?,
            };
            check_party(conn, &principal, &account).await?;
            let attempts = api::attempts_of(conn, account.id).await?;
            Ok(Response::new(pb::GetEscrowAccountResponse {
                account: Some(account_proto(conn, &account).await?),
                funding_attempts: attempts.iter().map(attempt_proto).collect(),
            }))
        })
        .await
    }

    async fn amend_escrow_schedule(
        &self,
        request: Request<pb::AmendEscrowScheduleRequest>,
    ) -> Result<Response<pb::AmendEscrowScheduleResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let account_id = parse_id("escrow_account_id", &req.escrow_account_id, v);
            let schedule = schedule("schedule", &req.schedule, v);
            let hold_until = hold_until(
                req.hold_until.as_ref(),
                &schedule,
                false,
                timestamps::now(),
                v,
            );
            if req.contract_version < 2 {
                v.add(
                    "contract_version",
                    "must be 2 or more (an amendment's version)",
                );
            }
            Ok(Amend {
                account_id,
                schedule,
                hold_until,
                version: i32::try_from(req.contract_version)
                    .map_err(|_| ServiceError::invalid("contract_version", "is too large"))?,
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    self.amend_in_tx(tx, prepared.principal(), &prepared.command)
                        .await
                }
            })
            .await
    }

    async fn fund_escrow(
        &self,
        request: Request<pb::FundEscrowRequest>,
    ) -> Result<Response<pb::FundEscrowResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            use pb::fund_escrow_request::Method as M;
            let account_id = parse_id("escrow_account_id", &req.escrow_account_id, v);
            let milestone_id = reference("milestone_id", &req.milestone_id, v);
            let amount = positive("amount", req.amount.as_ref(), v);
            let method = match &req.method {
                None => {
                    v.add(
                        "method",
                        "one of card, bank_transfer or pay_later is required",
                    );
                    None
                }
                Some(M::Card(card)) => {
                    validate_reference("card.card_token", &card.card_token, v);
                    Some(Method::Card {
                        token: card.card_token.clone(),
                    })
                }
                Some(M::BankTransfer(bank)) => Some(Method::BankTransfer {
                    payer_name: require_text("bank_transfer.payer_name", &bank.payer_name, 200, v),
                }),
                Some(M::PayLater(later)) => {
                    validate_reference(
                        "pay_later.financing_partner_id",
                        &later.financing_partner_id,
                        v,
                    );
                    v.require(
                        (1..=6).contains(&later.repayment_months),
                        "pay_later.repayment_months",
                        "must be 1-6",
                    );
                    Some(Method::PayLater {
                        partner_id: later.financing_partner_id.clone(),
                        months: later.repayment_months,
                    })
                }
            };
            Ok(Fund {
                account_id,
                milestone_id,
                amount: amount.ok_or_else(invalid)?,
                method: method.ok_or_else(invalid)?,
            })
        })?;
        Ok(Response::new(
            app::funding::fund(&self.flows, &self.mutations, &prepared).await?,
        ))
    }

    async fn handle_gateway_webhook(
        &self,
        request: Request<pb::HandleGatewayWebhookRequest>,
    ) -> Result<Response<pb::HandleGatewayWebhookResponse>, Status> {
        // The signature first: nothing of an unauthenticated event is read.
        {
            let req = request.get_ref();
            self.flows
                .authenticate_webhook(
                    &req.signature,
                    &req.payload,
                    timestamps::now().unix_timestamp(),
                )
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
        }
        // A redelivery is re-signed: the stored request is the event alone,
        // so it replays the first answer instead of looking like key reuse.
        let mut request = request;
        request.get_mut().signature.clear();
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let event = match GatewayEvent::parse(&req.payload) {
                Ok(event) => event,
                Err(message) => {
                    v.add("payload", message);
                    return Err(invalid());
                }
            };
            v.require(
                event.id == req.idempotency_key,
                "idempotency_key",
                "must be the gateway event's id",
            );
            event.check(v);
            Ok(event)
        })?;
        Ok(Response::new(
            app::gateway_events::receive(&self.flows, &self.mutations, &prepared).await?,
        ))
    }

    async fn release_to_supplier(
        &self,
        request: Request<pb::ReleaseToSupplierRequest>,
    ) -> Result<Response<pb::ReleaseToSupplierResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            outflow(
                &req.escrow_account_id,
                req.amount.as_ref(),
                &req.reason,
                req.purpose.as_ref(),
                v,
            )
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let (mut postings, account) = self
                        .outflow_in_tx(tx, prepared.principal(), &prepared.command, true, true)
                        .await?;
                    Ok(pb::ReleaseToSupplierResponse {
                        posting: postings.pop(),
                        account: Some(account),
                    })
                }
            })
            .await
    }

    async fn refund_to_buyer(
        &self,
        request: Request<pb::RefundToBuyerRequest>,
    ) -> Result<Response<pb::RefundToBuyerResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            outflow(
                &req.escrow_account_id,
                req.amount.as_ref(),
                &req.reason,
                req.purpose.as_ref(),
                v,
            )
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let (postings, account) = self
                        .outflow_in_tx(tx, prepared.principal(), &prepared.command, false, true)
                        .await?;
                    Ok(pb::RefundToBuyerResponse {
                        postings,
                        account: Some(account),
                    })
                }
            })
            .await
    }

    async fn settle_claim(
        &self,
        request: Request<pb::SettleClaimRequest>,
    ) -> Result<Response<pb::SettleClaimResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let refund = match &req.refund {
                None => None,
                Some(m) if m.amount_minor == 0 => None,
                Some(m) => positive("refund", Some(m), v),
            };
            Ok(Settle {
                account_id: parse_id("escrow_account_id", &req.escrow_account_id, v),
                claim_id: reference("claim_id", &req.claim_id, v),
                refund,
                release_rest: req.release_rest,
                reason: require_text("reason", &req.reason, MAX_REASON, v),
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    self.settle_in_tx(tx, prepared.principal(), &prepared.command)
                        .await
                }
            })
            .await
    }

    async fn freeze_escrow(
        &self,
        request: Request<pb::FreezeEscrowRequest>,
    ) -> Result<Response<pb::FreezeEscrowResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            claim_command(&req.escrow_account_id, &req.claim_id, &req.reason, v)
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let cmd = &prepared.command;
                    let before = accounts::lock_account(tx, cmd.account_id).await?;
                    let account = app::freeze(
                        tx,
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
                        self.flows.sync_hold_deadline(tx, &account).await?;
                    }
                    let view = self
                        .flows
                        .emit_if_changed(tx, changed, pb::EscrowEventType::Frozen, &account, facts)
                        .await?;
                    Ok(pb::FreezeEscrowResponse {
                        account: Some(view),
                    })
                }
            })
            .await
    }

    async fn unfreeze_escrow(
        &self,
        request: Request<pb::UnfreezeEscrowRequest>,
    ) -> Result<Response<pb::UnfreezeEscrowResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            claim_command(&req.escrow_account_id, &req.claim_id, &req.reason, v)
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let cmd = &prepared.command;
                    let before = accounts::lock_account(tx, cmd.account_id).await?;
                    let account =
                        app::unfreeze(tx, cmd.account_id, &cmd.claim_id, timestamps::now()).await?;
                    let facts = EventFacts {
                        claim_id: &cmd.claim_id,
                        ..Default::default()
                    };
                    let changed = before.freezes.contains(&cmd.claim_id);
                    if changed {
                        self.flows.sync_hold_deadline(tx, &account).await?;
                    }
                    let view = self
                        .flows
                        .emit_if_changed(
                            tx,
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
            })
            .await
    }

    async fn close_escrow_account(
        &self,
        request: Request<pb::CloseEscrowAccountRequest>,
    ) -> Result<Response<pb::CloseEscrowAccountResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok((
                parse_id("escrow_account_id", &req.escrow_account_id, v),
                require_text("reason", &req.reason, MAX_REASON, v),
                req.refund_held,
            ))
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let (id, reason, refund_held) = &prepared.command;
                    let before = accounts::lock_account(tx, *id).await?;
                    let pending = accounts::pending_attempts(tx, *id).await?;
                    if *refund_held
                        && before.status != AccountStatus::Closed
                        && app::held(tx, &before).await? > 0
                    {
                        let refund = Outflow {
                            account_id: *id,
                            amount: None,
                            reason: reason.clone(),
                            settles: Settles::Cancellation,
                        };
                        self.outflow_in_tx(tx, prepared.principal(), &refund, false, false)
                            .await?;
                    }
                    let account = app::close(tx, *id, timestamps::now()).await?;
                    self.flows.sync_deadlines(tx, &account).await?;
                    self.flows.sync_hold_deadline(tx, &account).await?;
                    if before.status == AccountStatus::Closed {
                        return Ok(pb::CloseEscrowAccountResponse {
                            account: Some(account_proto(tx, &account).await?),
                        });
                    }
                    for attempt in pending {
                        let view = api::attempt_view(tx, attempt.id).await?;
                        self.flows.emit_payment_failed(tx, &view).await?;
                    }
                    let view = self
                        .flows
                        .emit(tx, pb::EscrowEventType::Closed, *id, EventFacts::default())
                        .await?;
                    Ok(pb::CloseEscrowAccountResponse {
                        account: Some(view),
                    })
                }
            })
            .await
    }

    async fn get_escrow_statement(
        &self,
        request: Request<pb::GetEscrowStatementRequest>,
    ) -> Result<Response<pb::GetEscrowStatementResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = parse_id("escrow_account_id", &req.escrow_account_id, &mut v);
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = page_after_seq(req.page.as_ref(), &mut v);
        finish(v)?;
        self.read(async |conn| {
            let account = accounts::get_account(conn, id).await?;
            check_party(conn, &principal, &account).await?;
            let rows = api::postings_of(conn, id, after, limit).await?;
            let (rows, next) = paging::split_page(rows, limit, |p| {
                paging::token("statement", &[&p.seq.to_string()])
            });
            let balances = api::statement_balances(conn, id)
                .await?
                .into_iter()
                .filter_map(|b| {
                    let c = Currency::parse(&b.currency)?;
                    Some(pb::LedgerBalance {
                        account: Some(ledger_account(b.id, &b.kind, &b.owner, &b.currency)),
                        posted: Some(money(b.posted, c)),
                        pending: Some(money(b.pending, c)),
                    })
                })
                .collect();
            let holds = api::holds_of(conn, id)
                .await?
                .iter()
                .map(|h| {
                    let c = Currency::parse(&h.currency);
                    pb::Hold {
                        hold_id: h.id.to_string(),
                        debit_account: Some(leg_account(&h.leg.debit, &h.currency)),
                        credit_account: Some(leg_account(&h.leg.credit, &h.currency)),
                        amount: c.map(|c| money(h.amount_minor, c)),
                        status: match api::hold_status(&h.status) {
                            crate::domain::HoldStatus::Pending => pb::HoldStatus::Pending,
                            crate::domain::HoldStatus::Posted => pb::HoldStatus::Posted,
                            crate::domain::HoldStatus::Voided => pb::HoldStatus::Voided,
                        } as i32,
                        funding_attempt_id: h
                            .funding_attempt_id
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                        created_at: Some(timestamps::to_proto(h.created_at)),
                        expires_at: Some(timestamps::to_proto(h.expires_at)),
                        resolved_at: h.resolved_at.map(timestamps::to_proto),
                        gateway_transfer_id: h
                            .gateway_transfer_id
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                        posted_amount: h.posted_minor.and_then(|p| c.map(|c| money(p, c))),
                    }
                })
                .collect();
            Ok(Response::new(pb::GetEscrowStatementResponse {
                account: Some(account_proto(conn, &account).await?),
                balances,
                postings: rows.iter().map(posting_proto).collect(),
                holds,
                next_page_token: next,
            }))
        })
        .await
    }

    async fn run_supplier_payouts(
        &self,
        request: Request<pb::RunSupplierPayoutsRequest>,
    ) -> Result<Response<pb::RunSupplierPayoutsResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let supplier = if req.supplier_id.is_empty() {
                None
            } else {
                Some(reference("supplier_id", &req.supplier_id, v))
            };
            let currency = if req.currency_code.is_empty() {
                None
            } else {
                let c = Currency::parse(&req.currency_code);
                if c.is_none() {
                    v.add(
                        "currency_code",
                        "must be an ISO 4217 currency code such as USD",
                    );
                }
                c
            };
            Ok((supplier, currency))
        })?;
        if let Some(answer) = self.mutations.replay(&prepared).await? {
            return Ok(Response::new(answer));
        }
        let (supplier, currency) = &prepared.command;
        let payouts =
            app::transfers::run_payouts(&self.flows, self.pool(), supplier.as_deref(), *currency)
                .await?;
        let answer = pb::RunSupplierPayoutsResponse {
            payouts: payouts.iter().map(transfer_proto).collect(),
        };
        let stored = self
            .mutations
            .answer(&prepared, async |_| Ok(answer.clone()))
            .await?;
        Ok(Response::new(stored))
    }

    async fn list_gateway_transfers(
        &self,
        request: Request<pb::ListGatewayTransfersRequest>,
    ) -> Result<Response<pb::ListGatewayTransfersResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = time_cursor(req.page.as_ref(), "transfers", &mut v);
        let after = uuid_cursor(after, &mut v);
        if !req.supplier_id.is_empty() {
            validate_reference("supplier_id", &req.supplier_id, &mut v);
        } else if principal.role == Role::Supplier {
            v.add("supplier_id", "is required for a supplier (its own)");
        }
        let direction = match pb::GatewayTransferDirection::try_from(req.direction) {
            Ok(pb::GatewayTransferDirection::Unspecified) => None,
            Ok(pb::GatewayTransferDirection::Payout) => Some("payout"),
            Ok(pb::GatewayTransferDirection::BuyerRefund) => Some("buyer_refund"),
            Ok(pb::GatewayTransferDirection::SuspenseRefund) => Some("suspense_refund"),
            Err(_) => {
                v.add("direction", "is not a transfer direction");
                None
            }
        };
        let status = match pb::GatewayTransferStatus::try_from(req.status) {
            Ok(pb::GatewayTransferStatus::Unspecified) => None,
            Ok(pb::GatewayTransferStatus::Pending) => Some("pending"),
            Ok(pb::GatewayTransferStatus::Paid) => Some("paid"),
            Ok(pb::GatewayTransferStatus::Failed) => Some("failed"),
            Ok(pb::GatewayTransferStatus::Sending) => Some("sending"),
            Ok(pb::GatewayTransferStatus::Unknown) => Some("unknown"),
            Err(_) => {
                v.add("status", "is not a transfer status");
                None
            }
        };
        finish(v)?;
        self.read(async |conn| {
            if principal.role == Role::Supplier
                && !api::owns_supplier(conn, &principal.subject, &req.supplier_id).await?
            {
                return Err(ServiceError::PermissionDenied(
                    "a supplier lists only its own transfers".into(),
                ));
            }
            let rows = transfers::list(
                conn,
                &TransferFilter {
                    supplier_id: (!req.supplier_id.is_empty()).then(|| req.supplier_id.clone()),
                    direction,
                    status,
                    after,
                    limit,
                },
            )
            .await?;
            let (rows, next) = paging::split_page(rows, limit, |t| {
                time_token("transfers", t.created_at, &t.id.to_string())
            });
            Ok(Response::new(pb::ListGatewayTransfersResponse {
                transfers: rows.iter().map(transfer_proto).collect(),
                next_page_token: next,
            }))
        })
        .await
    }

    async fn reconcile_ledger(
        &self,
        request: Request<pb::ReconcileLedgerRequest>,
    ) -> Result<Response<pb::ReconcileLedgerResponse>, Status> {
        auth::principal(&request)?;
        self.read(async |conn| {
            let mut found = ledger::reconcile(conn).await?;
            found.extend(api::held_without_deadline(conn).await?);
            found.extend(api::gateway_items_for_operators(conn).await?);
            let (accounts_checked, postings, holds) = api::ledger_counts(conn).await?;
            let differences = found.iter().map(difference_proto).collect();
            Ok(Response::new(pb::ReconcileLedgerResponse {
                differences,
                accounts_checked: u64::try_from(accounts_checked).unwrap_or(0),
                postings_checked: u64::try_from(postings).unwrap_or(0),
                holds_checked: u64::try_from(holds).unwrap_or(0),
                checked_at: Some(timestamps::to_proto(timestamps::now())),
            }))
        })
        .await
    }

    async fn get_trial_balance(
        &self,
        request: Request<pb::GetTrialBalanceRequest>,
    ) -> Result<Response<pb::GetTrialBalanceResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let currency = if req.currency_code.is_empty() {
            None
        } else {
            let c = Currency::parse(&req.currency_code);
            if c.is_none() {
                v.add(
                    "currency_code",
                    "must be an ISO 4217 currency code such as USD",
                );
            }
            c
        };
        finish(v)?;
        self.read(async |conn| {
            let rows = api::trial_balance(conn, currency).await?;
            let mut currencies: Vec<pb::CurrencyTrialBalance> = Vec::new();
            // Each currency's sum, in i128 so that no order of the lines
            // overflows on the way to what should be zero.
            let mut sums: Vec<(i128, Currency)> = Vec::new();
            for (kind, code, posted, pending) in rows {
                let Some(c) = Currency::parse(&code) else {
                    continue;
                };
                if currencies.last().map(|x| x.currency_code.as_str()) != Some(code.as_str()) {
                    currencies.push(pb::CurrencyTrialBalance {
                        currency_code: code.clone(),
                        lines: Vec::new(),
                        sum: None,
                    });
                    sums.push((0, c));
                }
                if let Some(entry) = currencies.last_mut() {
                    entry.lines.push(pb::TrialBalanceLine {
                        kind: flows::kind_to_proto(&kind) as i32,
                        posted: Some(money(posted, c)),
                        pending: Some(money(pending, c)),
                    });
                }
                if let Some((sum, _)) = sums.last_mut() {
                    *sum += i128::from(posted);
                }
            }
            for (entry, (sum, c)) in currencies.iter_mut().zip(sums) {
                let sum = i64::try_from(sum).map_err(|_| {
                    ServiceError::internal(format!(
                        "the trial balance of {} is beyond an i64: {sum}",
                        entry.currency_code
                    ))
                })?;
                entry.sum = Some(money(sum, c));
            }
            Ok(Response::new(pb::GetTrialBalanceResponse { currencies }))
        })
        .await
    }

    async fn list_held_accounts(
        &self,
        request: Request<pb::ListHeldAccountsRequest>,
    ) -> Result<Response<pb::ListHeldAccountsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = time_cursor(req.page.as_ref(), "held", &mut v);
        let after = uuid_cursor(after, &mut v);
        finish(v)?;
        self.read(async |conn| {
            let ids = api::held_accounts(conn, after, limit).await?;
            let mut items = Vec::new();
            for id in &ids {
                let account = accounts::get_account(conn, *id).await?;
                let deadline = if account.freezes.is_empty() {
                    api::next_deadline(conn, *id).await?
                } else {
                    None
                };
                items.push((
                    account.created_at,
                    *id,
                    pb::HeldAccount {
                        account: Some(account_proto(conn, &account).await?),
                        next_deadline_at: deadline
                            .as_ref()
                            .map(|(at, _)| timestamps::to_proto(*at)),
                        next_deadline_kind: deadline.map(|(_, k)| k).unwrap_or_default(),
                    },
                ));
            }
            let (items, next) = paging::split_page(items, limit, |(at, id, _)| {
                time_token("held", *at, &id.to_string())
            });
            Ok(Response::new(pb::ListHeldAccountsResponse {
                accounts: items.into_iter().map(|(_, _, a)| a).collect(),
                next_page_token: next,
            }))
        })
        .await
    }

    async fn list_unmatched_gateway_items(
        &self,
        request: Request<pb::ListUnmatchedGatewayItemsRequest>,
    ) -> Result<Response<pb::ListUnmatchedGatewayItemsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = time_cursor(req.page.as_ref(), "unmatched", &mut v);
        finish(v)?;
        self.read(async |conn| {
            let rows = api::list_unmatched(conn, after, limit).await?;
            let (rows, next) = paging::split_page(rows, limit, |r| {
                time_token("unmatched", r.received_at, &r.event_id)
            });
            Ok(Response::new(pb::ListUnmatchedGatewayItemsResponse {
                items: rows
                    .into_iter()
                    .map(|r| pb::UnmatchedGatewayItem {
                        kind: r.unmatched,
                        gateway_event_id: r.event_id,
                        gateway_reference: r.gateway_reference,
                        amount: match (
                            r.amount_minor,
                            r.currency.as_deref().and_then(Currency::parse),
                        ) {
                            (Some(a), Some(c)) => Some(money(a, c)),
                            _ => None,
                        },
                        gateway_transfer_id: r.refund_reference.unwrap_or_default(),
                        received_at: Some(timestamps::to_proto(r.received_at)),
                    })
                    .collect(),
                next_page_token: next,
            }))
        })
        .await
    }

    type StreamEscrowEventsStream = EventStream<pb::StreamEscrowEventsResponse>;

    async fn stream_escrow_events(
        &self,
        request: Request<pb::StreamEscrowEventsRequest>,
    ) -> Result<Response<Self::StreamEscrowEventsStream>, Status> {
        let after = request.into_inner().after_sequence;
        let stream = self.flows.feed.stream_events(
            self.pool().clone(),
            after,
            &self.feed_config,
            |mut event: pb::EscrowEvent, sequence, traceparent| {
                event.sequence = sequence;
                pb::StreamEscrowEventsResponse {
                    event: Some(event),
                    traceparent: traceparent.unwrap_or_default(),
                }
            },
            pb::StreamEscrowEventsResponse::default,
        );
        Ok(Response::new(stream))
    }
}

fn difference_proto(d: &crate::domain::Discrepancy) -> pb::LedgerDifference {
    use crate::domain::Discrepancy as D;
    let key_proto = |k: &AccountKey| pb::LedgerAccount {
        kind: flows::kind_to_proto(k.kind.as_str()) as i32,
        currency_code: k.currency.to_string(),
        ..ledger_account(Uuid::nil(), k.kind.as_str(), &k.owner, k.currency.as_str())
    };
    match d {
        D::BalanceMismatch {
            account,
            kept,
            recomputed,
        } => pb::LedgerDifference {
            kind: "BALANCE_MISMATCH".into(),
            account: Some(key_proto(account)),
            expected: Some(money(*recomputed, account.currency)),
            actual: Some(money(*kept, account.currency)),
            detail: format!("kept {kept}, postings say {recomputed}"),
        },
        D::CurrencyImbalance { currency, sum } => pb::LedgerDifference {
            kind: "CURRENCY_IMBALANCE".into(),
            detail: format!("{currency} sums to {sum}"),
            ..Default::default()
        },
        D::Negative { account, available } => pb::LedgerDifference {
            kind: "NEGATIVE_BALANCE".into(),
            account: Some(key_proto(account)),
            actual: Some(money(*available, account.currency)),
            detail: format!("available {available}"),
            ..Default::default()
        },
        D::HoldMismatch { hold, detail } => pb::LedgerDifference {
            kind: "HOLD_MISMATCH".into(),
            detail: format!("hold {hold}: {detail}"),
            ..Default::default()
        },
        D::PostingCurrency { posting } => pb::LedgerDifference {
            kind: "POSTING_CURRENCY".into(),
            detail: format!("posting {posting} is in another currency than its accounts"),
            ..Default::default()
        },
        D::HeldWithoutDeadline { account, held } => pb::LedgerDifference {
            kind: "HELD_WITHOUT_DEADLINE".into(),
            account: Some(key_proto(account)),
            actual: Some(money(*held, account.currency)),
            detail: format!(
                "escrow account {} holds {held} with no scheduled timer (hold_deadline or payment_due) and no active freeze",
                account.owner
            ),
            ..Default::default()
        },
        D::GatewayItem {
            kind,
            currency,
            amount,
            detail,
        } => pb::LedgerDifference {
            kind: (*kind).into(),
            actual: Some(money(*amount, *currency)),
            detail: detail.clone(),
            ..Default::default()
        },
    }
}
