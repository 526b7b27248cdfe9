//! The gRPC transport: parses each request into a command (every bad field
//! reported at once), runs mutations through the shared pipeline (caller,
//! key, one transaction, stored answer) and the use cases in `app` (which
//! append the feed's events in the same transaction), and answers in proto. Who may
//! call which RPC is the proto's access option, enforced by the server's
//! auth layer; here only the per-resource checks (a buyer or supplier
//! reaches only accounts it is a party to). Gateway calls are the use
//! cases' (see `app::funding` and `app::transfers`).

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
use ta_workflow::{config::FeedConfig, feed::EventStream, feed_stream};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    app::{
        self,
        accounts::{ClaimCommand, Open},
        amendments::Amend,
        context::Flows,
        events::account_view,
        funding::{Fund, Method},
        settlement::{Close, Outflow, Settle},
    },
    domain::{EscrowAccount, NewAccount, Settles, account::hold_until_problem},
    storage::{
        self,
        accounts::{self, Scheme, Terms},
        attempts, gateway_events, reconciliation, statement,
        transfers::{self, TransferFilter},
    },
    views,
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
            if accounts::get_terms(conn, account.id)
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
            .execute(&prepared, || {
                async |tx| {
                    app::accounts::open_escrow_account(tx, &self.flows, &prepared.command).await
                }
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
            let attempts = attempts::list_attempts_of(conn, account.id).await?;
            Ok(Response::new(pb::GetEscrowAccountResponse {
                account: Some(account_view(conn, &account).await?),
                funding_attempts: attempts.iter().map(views::attempt_proto).collect(),
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
                    app::amendments::amend(tx, &self.flows, prepared.principal(), &prepared.command)
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
        Ok(Response::new(
            app::gateway_events::handle(&self.flows, &self.mutations, request).await?,
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
                    let (mut postings, account) = app::settlement::outflow(
                        tx,
                        &self.flows,
                        prepared.principal(),
                        &prepared.command,
                        true,
                        true,
                    )
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
                    let (postings, account) = app::settlement::outflow(
                        tx,
                        &self.flows,
                        prepared.principal(),
                        &prepared.command,
                        false,
                        true,
                    )
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
                    app::settlement::settle_claim(
                        tx,
                        &self.flows,
                        prepared.principal(),
                        &prepared.command,
                    )
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
                async |tx| app::accounts::freeze_escrow(tx, &self.flows, &prepared.command).await
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
                async |tx| app::accounts::unfreeze_escrow(tx, &self.flows, &prepared.command).await
            })
            .await
    }

    async fn close_escrow_account(
        &self,
        request: Request<pb::CloseEscrowAccountRequest>,
    ) -> Result<Response<pb::CloseEscrowAccountResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(Close {
                account_id: parse_id("escrow_account_id", &req.escrow_account_id, v),
                reason: require_text("reason", &req.reason, MAX_REASON, v),
                refund_held: req.refund_held,
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    app::settlement::close_escrow_account(
                        tx,
                        &self.flows,
                        prepared.principal(),
                        &prepared.command,
                    )
                    .await
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
            let rows = statement::page_postings(conn, id, after, limit).await?;
            let (rows, next) = paging::split_page(rows, limit, |p| {
                paging::token("statement", &[&p.seq.to_string()])
            });
            let balances = statement::read_balances(conn, id)
                .await?
                .iter()
                .filter_map(views::balance_proto)
                .collect();
            let holds = statement::list_holds(conn, id)
                .await?
                .iter()
                .map(views::hold_proto)
                .collect();
            Ok(Response::new(pb::GetEscrowStatementResponse {
                account: Some(account_view(conn, &account).await?),
                balances,
                postings: rows.iter().map(views::posting_proto).collect(),
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
            payouts: payouts.iter().map(views::transfer_proto).collect(),
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
                && !accounts::read_owns_supplier(conn, &principal.subject, &req.supplier_id).await?
            {
                return Err(ServiceError::PermissionDenied(
                    "a supplier lists only its own transfers".into(),
                ));
            }
            let rows = transfers::list_transfers(
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
                transfers: rows.iter().map(views::transfer_proto).collect(),
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
            let found = reconciliation::read_discrepancies(conn).await?;
            let (accounts_checked, postings, holds) = reconciliation::count_checked(conn).await?;
            let differences = found.iter().map(views::difference_proto).collect();
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
            let rows = statement::read_trial_balance(conn, currency).await?;
            let currencies = views::trial_balance(rows)?;
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
            let ids = accounts::page_held_accounts(conn, after, limit).await?;
            let mut items = Vec::new();
            for id in &ids {
                let account = accounts::get_account(conn, *id).await?;
                let deadline = if account.freezes.is_empty() {
                    accounts::find_next_deadline(conn, *id).await?
                } else {
                    None
                };
                items.push((
                    account.created_at,
                    *id,
                    pb::HeldAccount {
                        account: Some(account_view(conn, &account).await?),
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
            let rows = gateway_events::list_unmatched(conn, after, limit).await?;
            let (rows, next) = paging::split_page(rows, limit, |r| {
                time_token("unmatched", r.received_at, &r.event_id)
            });
            Ok(Response::new(pb::ListUnmatchedGatewayItemsResponse {
                items: rows.into_iter().map(views::unmatched_proto).collect(),
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
        feed_stream::serve(
            &self.flows.feed,
            self.pool().clone(),
            &self.feed_config,
            request,
        )
    }
}
