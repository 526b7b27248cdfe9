//! The gRPC transport: parses each request into a command (every bad field
//! reported at once), runs mutations through the shared pipeline (caller,
//! key, one transaction, stored answer) and the use cases in `app` (which
//! append the feed's events in the same transaction), and answers in proto. Who may
//! call which RPC is the proto's access option, enforced by the server's
//! auth layer; here only the per-resource checks (a buyer or supplier
//! reaches only accounts it is a party to; any other account is answered as
//! one that does not exist, `app::may_see`). Gateway calls are the use
//! cases' (see `app::funding` and `app::transfers`).

use std::sync::Arc;

use ta_proto::escrow::{self as pb, escrow_service_server::EscrowService};
use ta_runtime::{
    ServiceError, Violations,
    auth::{self, Role},
    group_commit::GroupCommitConfig,
    paging,
    pipeline::Mutations,
    text::validate_reference,
    timestamps,
};
use ta_workflow::{config::FeedConfig, feed::EventStream, feed_stream};
use tonic::{Request, Response, Status};

use crate::{
    app::{self, context::Flows, events::account_view, settlement::Outflow},
    storage::{
        self, accounts, attempts, gateway_events, reconciliation, statement,
        transfers::{self, TransferFilter},
    },
    views,
};

mod parse;

use parse::{
    claim_command, finish, optional_currency, page_after_seq, parse_id, time_cursor, time_token,
    uuid_cursor,
};

pub struct EscrowApi {
    mutations: Mutations,
    flows: Arc<Flows>,
    feed_config: FeedConfig,
}

impl EscrowApi {
    /// Keyed calls answered by one transaction share it with concurrent
    /// ones as `group` says (group commit).
    pub fn new(
        pool: sqlx::PgPool,
        flows: Arc<Flows>,
        feed_config: FeedConfig,
        group: GroupCommitConfig,
    ) -> Self {
        Self {
            mutations: Mutations::new(pool, storage::SCHEMA).grouped(group),
            flows,
            feed_config,
        }
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.mutations.pool()
    }

    /// ReleaseToSupplier (`release`) or RefundToBuyer, answered by `answer`
    /// with the postings made and the account after them.
    async fn outflow<Q, R>(
        &self,
        request: Request<Q>,
        release: bool,
        parse: fn(&Q, &mut Violations) -> Result<Outflow, ServiceError>,
        answer: fn(Vec<pb::Posting>, pb::EscrowAccount) -> R,
    ) -> Result<Response<R>, Status>
    where
        Q: ta_proto::IdempotentRequest + Send + Sync + 'static,
        R: prost::Message + Default,
    {
        let prepared = self.mutations.prepare(request, |req, _, v| parse(req, v))?;
        let (flows, who, cmd) = (&*self.flows, prepared.principal(), &prepared.command);
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let (postings, account) =
                        app::settlement::outflow(tx, flows, who, cmd, release, true).await?;
                    Ok(answer(postings, account))
                }
            })
            .await
    }
}

#[tonic::async_trait]
impl EscrowService for EscrowApi {
    async fn open_escrow_account(
        &self,
        request: Request<pb::OpenEscrowAccountRequest>,
    ) -> Result<Response<pb::OpenEscrowAccountResponse>, Status> {
        let prepared = self
            .mutations
            .prepare(request, |req, _, v| parse::open(req, v))?;
        let (flows, cmd) = (&*self.flows, &prepared.command);
        self.mutations
            .execute(&prepared, || {
                async |tx| app::accounts::open_escrow_account(tx, flows, cmd).await
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
        // What an account that does not exist is answered, as it was asked
        // for; an account the caller may not see is answered the same.
        let missing = || match by_id {
            Some(id) => ServiceError::unseen(accounts::ACCOUNT, id),
            None => ServiceError::unseen("escrow account of contract", &req.contract_id),
        };
        self.mutations
            .read(async |conn| {
                let account = match by_id {
                    Some(id) => accounts::get_account(conn, id).await?,
                    None => accounts::find_by_contract(conn, &req.contract_id)
                        .await?
                        .ok_or_else(missing)?,
                };
                if !app::may_see(conn, &principal, &account).await? {
                    return Err(missing());
                }
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
        let prepared = self
            .mutations
            .prepare(request, |req, _, v| parse::amend(req, v))?;
        let (flows, who, cmd) = (&*self.flows, prepared.principal(), &prepared.command);
        self.mutations
            .execute(&prepared, || {
                async |tx| app::amendments::amend(tx, flows, who, cmd).await
            })
            .await
    }

    async fn fund_escrow(
        &self,
        request: Request<pb::FundEscrowRequest>,
    ) -> Result<Response<pb::FundEscrowResponse>, Status> {
        let prepared = self
            .mutations
            .prepare(request, |req, _, v| parse::fund(req, v))?;
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
        self.outflow(request, true, parse::release, |mut postings, account| {
            pb::ReleaseToSupplierResponse {
                posting: postings.pop(),
                account: Some(account),
            }
        })
        .await
    }

    async fn refund_to_buyer(
        &self,
        request: Request<pb::RefundToBuyerRequest>,
    ) -> Result<Response<pb::RefundToBuyerResponse>, Status> {
        self.outflow(request, false, parse::refund, |postings, account| {
            pb::RefundToBuyerResponse {
                postings,
                account: Some(account),
            }
        })
        .await
    }

    async fn settle_claim(
        &self,
        request: Request<pb::SettleClaimRequest>,
    ) -> Result<Response<pb::SettleClaimResponse>, Status> {
        let prepared = self
            .mutations
            .prepare(request, |req, _, v| parse::settle(req, v))?;
        let (flows, who, cmd) = (&*self.flows, prepared.principal(), &prepared.command);
        self.mutations
            .execute(&prepared, || {
                async |tx| app::settlement::settle_claim(tx, flows, who, cmd).await
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
        let (flows, cmd) = (&*self.flows, &prepared.command);
        self.mutations
            .execute(&prepared, || {
                async |tx| app::accounts::freeze_escrow(tx, flows, cmd).await
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
        let (flows, cmd) = (&*self.flows, &prepared.command);
        self.mutations
            .execute(&prepared, || {
                async |tx| app::accounts::unfreeze_escrow(tx, flows, cmd).await
            })
            .await
    }

    async fn close_escrow_account(
        &self,
        request: Request<pb::CloseEscrowAccountRequest>,
    ) -> Result<Response<pb::CloseEscrowAccountResponse>, Status> {
        let prepared = self
            .mutations
            .prepare(request, |req, _, v| parse::close(req, v))?;
        let (flows, who, cmd) = (&*self.flows, prepared.principal(), &prepared.command);
        self.mutations
            .execute(&prepared, || {
                async |tx| app::settlement::close_escrow_account(tx, flows, who, cmd).await
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
        self.mutations
            .read(async |conn| {
                let account = accounts::get_account(conn, id).await?;
                if !app::may_see(conn, &principal, &account).await? {
                    return Err(ServiceError::unseen(accounts::ACCOUNT, id));
                }
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
        let prepared = self
            .mutations
            .prepare(request, |req, _, v| parse::payouts(req, v))?;
        Ok(Response::new(
            app::transfers::run_supplier_payouts(&self.flows, &self.mutations, &prepared).await?,
        ))
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
        let (direction, status, kinds) = parse::transfer_filter(&req, &mut v);
        finish(v)?;
        self.mutations
            .read(async |conn| {
                if principal.role == Role::Supplier
                    && !accounts::read_owns_supplier(conn, &principal.subject, &req.supplier_id)
                        .await?
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
                        kinds,
                        reference: (!req.reference.is_empty()).then(|| req.reference.clone()),
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

    async fn list_escrow_accounts(
        &self,
        request: Request<pb::ListEscrowAccountsRequest>,
    ) -> Result<Response<pb::ListEscrowAccountsResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = time_cursor(req.page.as_ref(), "accounts", &mut v);
        let after = uuid_cursor(after, &mut v);
        let mut filter = parse::account_filter(&req, &mut v);
        finish(v)?;
        app::scope_accounts(&principal, &mut filter)?;
        self.mutations
            .read(async |conn| {
                let rows = accounts::list_accounts(conn, &filter, after, limit + 1).await?;
                let (rows, next) = paging::split_page(rows, limit, |(a, _)| {
                    time_token("accounts", a.created_at, &a.id.to_string())
                });
                let accounts = rows
                    .iter()
                    .map(|(account, details)| views::account_proto(account, details))
                    .collect::<Result<_, _>>()?;
                Ok(Response::new(pb::ListEscrowAccountsResponse {
                    accounts,
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
        self.mutations
            .read(async |conn| {
                let found = reconciliation::read_discrepancies(conn).await?;
                let (accounts_checked, postings, holds) =
                    reconciliation::count_checked(conn).await?;
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
        let currency = optional_currency(&req.currency_code, &mut v);
        finish(v)?;
        self.mutations
            .read(async |conn| {
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
        self.mutations
            .read(async |conn| {
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
        self.mutations
            .read(async |conn| {
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
