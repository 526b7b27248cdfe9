//! After the schedule: faults off, the platform left to quiesce (every
//! service's outbox drained, no timer overdue), then the end state checked
//! against what the clients were told:
//!
//! - every acknowledged money movement is in escrow's statements exactly
//!   once, with its amount, between the right ledger accounts, and nothing
//!   else moved, except through a documented path: a funding answered
//!   PENDING that the gateway's webhook or escrow's status check completed
//!   later, the releases and refunds contract's and dispute's workflows make
//!   after an acknowledged acceptance, cancellation, amendment or claim
//!   outcome, a retried key ([`crate::tally`] for the direct accounts,
//!   [`super::orders`] for the orders); no account nobody was told of
//!   moved money;
//! - every payout RunSupplierPayouts answered with is paid, once; every
//!   supplier's payable and every buyer's refund payable was paid out
//!   (escrow's payout timer pays what nobody asked for);
//! - the gateway's own books took in exactly what the ledger funded (card,
//!   bank transfer, Pay Later) and paid out exactly the ledger's paid
//!   payouts and refunds, each once;
//! - the supplier's reserved cover equals its open contracts' totals (after
//!   any amendment);
//! - no account holds money without a live deadline or a freeze, and no
//!   gateway item waits for an operator;
//! - every order is in the state its client's last acknowledged step says
//!   (accepted: COMPLETED, cancelled: CANCELLED, a partial refund decided
//!   or agreed: COMPLETED, a full refund agreed: REFUNDED, funded: past
//!   AWAITING_PAYMENT), none stuck in ACTIVATING; every claim in the final
//!   state its client was told, its effects completed, or REFUSED with the
//!   contract's reason; no operation ended in an answer a correct platform
//!   does not give;
//! - `ReconcileLedger` and the cross-service `ReconcilePlatform` report
//!   nothing; no outbox row is parked.
//!
//! A violation names the entity it is about, so the report can show the
//! shortest history that leads to it: that entity's operations, in order.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use ta_proto::{
    common::PageRequest,
    tradeassurance::{
        contract::v1::{
            ContractStatus, GetContractRequest, contract_service_client::ContractServiceClient,
        },
        dispute::v1::{ClaimStatus, GetClaimRequest, dispute_service_client::DisputeServiceClient},
        escrow::v1::{
            GatewayTransfer, GatewayTransferDirection, GatewayTransferStatus,
            GetTrialBalanceRequest, LedgerAccountKind, ListEscrowAccountsRequest,
            ListGatewayTransfersRequest, ListHeldAccountsRequest, ListUnmatchedGatewayItemsRequest,
            PostingKind, ReconcileLedgerRequest, escrow_service_client::EscrowServiceClient,
        },
        ops::v1::{
            GetWorkflowBacklogRequest, ReconcilePlatformRequest,
            reconciliation_service_client::ReconciliationServiceClient,
            workflow_admin_service_client::WorkflowAdminServiceClient,
        },
        supplier::v1::{
            GetCoverRequest, supplier_registry_service_client::SupplierRegistryServiceClient,
        },
    },
};
use tonic::metadata::{Ascii, MetadataValue};

use super::{
    orders::{OrderSums, check_order},
    platform::ChaosPlatform,
    schedule::Target,
    workload::{ClaimEnd, Told},
};
use crate::{
    Result, authorized, channel, read_statement,
    tally::{self, TallyCheck},
};

/// One thing the end state should not show.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The check that found it.
    pub check: &'static str,
    pub what: String,
    /// The contract or escrow account it is about (empty: the platform).
    pub entity: String,
}

/// What the checker read and found.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub violations: Vec<Violation>,
    /// What was checked, with its figures, one line each.
    pub checked: Vec<String>,
    pub quiesced_after: Duration,
    /// Movements that came through a documented path without an
    /// acknowledgement of their own (PENDING fundings completed later).
    pub documented_path: u64,
    pub tally: TallyCheck,
    /// What the orders' statements showed.
    pub orders: OrderSums,
    /// Gateway transfers at the end: paid payouts, paid refunds (count,
    /// minor).
    pub payouts_paid: (u64, i64),
    pub refunds_paid: (u64, i64),
    /// Claims by final status.
    pub claims: BTreeMap<String, u64>,
}

impl CheckReport {
    fn violation(&mut self, check: &'static str, entity: &str, what: String) {
        self.violations.push(Violation {
            check,
            what,
            entity: entity.to_owned(),
        });
    }
}

/// A service's backlog: outbox rows pending, outbox rows parked, timers
/// overdue, feed events parked.
type Backlog = (u64, u64, u64, u64);

/// Waits until every service's outbox is drained and no timer is overdue,
/// twice in a row; parked rows are violations, not waited for.
pub async fn quiesce(
    platform: &ChaosPlatform,
    support: &MetadataValue<Ascii>,
    patience: Duration,
    report: &mut CheckReport,
) -> Result<()> {
    let started = Instant::now();
    let mut calm_rounds = 0;
    let mut last: Vec<(&'static str, Option<Backlog>)> = Vec::new();
    let mut money_note = String::new();
    while calm_rounds < 2 {
        if started.elapsed() > patience {
            report.violation(
                "quiescence",
                "",
                format!("the platform did not quiesce within {patience:?}: {last:?} {money_note}"),
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        last.clear();
        for target in [
            Target::Registry,
            Target::Escrow,
            Target::Contract,
            Target::Dispute,
        ] {
            let mut admin = WorkflowAdminServiceClient::new(channel(platform.addr(target))?);
            let backlog = admin
                .get_workflow_backlog(authorized(GetWorkflowBacklogRequest {}, support))
                .await
                .ok()
                .map(|b| {
                    let b = b.into_inner();
                    (
                        b.outbox_pending,
                        b.outbox_parked,
                        b.timers_overdue,
                        b.feed_events_parked,
                    )
                });
            last.push((target.binary(), backlog));
        }
        let calm = last.iter().all(|(_, b)| matches!(b, Some((0, _, 0, _))));
        let unsettled = if calm {
            money_unsettled(platform, support).await
        } else {
            None
        };
        if let Some(what) = &unsettled {
            last.push(("money", None));
            money_note.clone_from(what);
        }
        calm_rounds = if calm && unsettled.is_none() {
            calm_rounds + 1
        } else {
            0
        };
    }
    report.quiesced_after = started.elapsed();
    let mut lines = Vec::new();
    for (service, backlog) in &last {
        match backlog {
            Some((pending, parked, overdue, feed_parked)) => {
                lines.push(format!(
                    "{service}: outbox {pending} pending, {parked} parked, {overdue} timers overdue, {feed_parked} feed events parked"
                ));
                if *parked > 0 || *feed_parked > 0 {
                    report.violation(
                        "parked work",
                        "",
                        format!(
                            "{service}: {parked} outbox rows and {feed_parked} feed events parked"
                        ),
                    );
                }
            }
            None => lines.push(format!("{service}: no answer")),
        }
    }
    report.checked.push(format!(
        "quiescence after {:.1} s: {}",
        report.quiesced_after.as_secs_f64(),
        lines.join("; ")
    ));
    Ok(())
}

/// Whether money is still on its way out: a payable not paid out (the
/// payout timer runs every few seconds), a gateway transfer not final.
/// None when settled; an unreadable answer counts as unsettled.
async fn money_unsettled(
    platform: &ChaosPlatform,
    support: &MetadataValue<Ascii>,
) -> Option<String> {
    let mut escrow = EscrowServiceClient::new(channel(platform.addr(Target::Escrow)).ok()?);
    let trial = match escrow
        .get_trial_balance(authorized(GetTrialBalanceRequest::default(), support))
        .await
    {
        Ok(t) => t.into_inner(),
        Err(s) => return Some(format!("GetTrialBalance: {s:?}")),
    };
    let mut open = Vec::new();
    for currency in &trial.currencies {
        for line in &currency.lines {
            let of = |m: &Option<ta_proto::common::Money>| m.as_ref().map_or(0, |m| m.amount_minor);
            if matches!(
                line.kind(),
                LedgerAccountKind::SupplierPayable
                    | LedgerAccountKind::BuyerRefundPayable
                    | LedgerAccountKind::Suspense
            ) && (of(&line.posted) != 0 || of(&line.pending) != 0)
            {
                open.push(format!(
                    "{:?} {} posted {} pending",
                    line.kind(),
                    of(&line.posted),
                    of(&line.pending)
                ));
            }
        }
    }
    match gateway_transfers(&mut escrow, support).await {
        Ok(transfers) => {
            let moving = transfers
                .iter()
                .filter(|t| {
                    !matches!(
                        t.status(),
                        GatewayTransferStatus::Paid | GatewayTransferStatus::Failed
                    )
                })
                .count();
            if moving > 0 {
                open.push(format!("{moving} gateway transfers not final"));
            }
        }
        Err(e) => open.push(e.to_string()),
    }
    (!open.is_empty()).then(|| open.join(", "))
}

/// Every payout and refund sent through the gateway.
async fn gateway_transfers(
    escrow: &mut EscrowServiceClient<tonic::transport::Channel>,
    token: &MetadataValue<Ascii>,
) -> Result<Vec<GatewayTransfer>> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = escrow
            .list_gateway_transfers(authorized(
                ListGatewayTransfersRequest {
                    page: Some(PageRequest {
                        page_size: 100,
                        page_token: page_token.clone(),
                    }),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map_err(|s| format!("ListGatewayTransfers: {s:?}"))?
            .into_inner();
        all.extend(page.transfers);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// The end-state checks (after [`quiesce`]).
pub async fn check(
    platform: &ChaosPlatform,
    told: &Told,
    supplier_id: &str,
    tokens: (&MetadataValue<Ascii>, &MetadataValue<Ascii>),
    report: &mut CheckReport,
) -> Result<()> {
    let (support, finance) = tokens;
    money(platform, told, support, report).await?;
    orders_money(platform, told, support, report).await?;
    unknown_accounts(platform, told, support, report).await?;
    gateway(platform, told, support, report).await?;
    orders_and_cover(platform, told, supplier_id, support, report).await?;
    held(platform, support, report).await?;
    reconciliations(platform, finance, report).await?;
    for failure in &told.failures {
        let entity = failure
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map_or("", |(e, _)| e);
        report.violation("final answers", entity, failure.clone());
    }
    report.checked.push(format!(
        "final answers: {} operations, {} ended in an answer a correct platform does not give",
        told.operations,
        told.failures.len()
    ));
    Ok(())
}

/// Exactly once: every account the clients touched, its statement against
/// what they were told.
async fn money(
    platform: &ChaosPlatform,
    told: &Told,
    support: &MetadataValue<Ascii>,
    report: &mut CheckReport,
) -> Result<()> {
    let mut escrow = EscrowServiceClient::new(channel(platform.addr(Target::Escrow))?);
    let mut tally = told.tally.clone();
    let supplier = told
        .tally
        .accounts
        .values()
        .map(|a| a.supplier_id.clone())
        .next()
        .unwrap_or_default();
    // Accounts where nothing was acknowledged must show nothing either.
    for id in told.direct_accounts.iter().filter(|id| !id.is_empty()) {
        tally.account(id, &supplier);
    }
    let mut statements = BTreeMap::new();
    for id in tally.accounts.keys() {
        let statement = read_statement(&mut escrow, support, id)
            .await
            .map_err(|e| format!("statement of {id}: {e}"))?;
        statements.insert(id.clone(), statement);
    }
    // The documented path: a PENDING funding completed by the gateway's
    // answer after the client stopped waiting for it.
    for (id, statement) in &statements {
        for p in &statement.postings {
            if p.kind() == PostingKind::Funding
                && told.pending_attempts.contains(&p.funding_attempt_id)
                && !tally.accounts[id]
                    .fundings
                    .iter()
                    .any(|(a, _)| *a == p.funding_attempt_id)
            {
                let supplier_id = tally.accounts[id].supplier_id.clone();
                tally.funded(
                    id,
                    &supplier_id,
                    &p.funding_attempt_id,
                    p.amount.as_ref().map_or(0, |m| m.amount_minor),
                );
                report.documented_path += 1;
            }
        }
    }
    let mut check = TallyCheck {
        expected: tally.totals(),
        ..TallyCheck::default()
    };
    check.found.accounts = statements.len();
    let mut by_supplier = BTreeMap::new();
    for (id, statement) in &statements {
        let before = check.differences.len();
        tally::compare_account(
            id,
            &tally.accounts[id],
            statement,
            &mut check,
            &mut by_supplier,
        );
        for d in &check.differences[before..] {
            report.violation("exactly once", id, d.clone());
        }
    }
    let before = check.differences.len();
    tally::compare_suppliers(&tally, &by_supplier, &mut check.differences);
    for d in &check.differences[before..] {
        report.violation("exactly once", "", d.clone());
    }
    report.checked.push(format!(
        "exactly once, direct accounts: {} accounts; told {} fundings ({} minor) and {} releases ({} minor), \
         {} releases after acceptance expected; statements show {} fundings ({} minor), {} releases ({} minor), \
         {} acceptance releases; {} fundings through the documented PENDING path",
        check.expected.accounts,
        check.expected.fundings,
        check.expected.funded_minor,
        check.expected.releases,
        check.expected.released_minor,
        check.acceptances.0,
        check.found.fundings,
        check.found.funded_minor,
        check.found.releases,
        check.found.released_minor,
        check.acceptances.1,
        report.documented_path
    ));
    report.tally = check;
    Ok(())
}

/// Every order's statement against what its client was told
/// ([`check_order`]).
async fn orders_money(
    platform: &ChaosPlatform,
    told: &Told,
    support: &MetadataValue<Ascii>,
    report: &mut CheckReport,
) -> Result<()> {
    let mut escrow = EscrowServiceClient::new(channel(platform.addr(Target::Escrow))?);
    let mut sums = OrderSums::default();
    for order in told.orders.iter().filter(|o| !o.account_id.is_empty()) {
        let statement = read_statement(&mut escrow, support, &order.account_id)
            .await
            .map_err(|e| format!("statement of {}: {e}", order.account_id))?;
        let mut found = Vec::new();
        check_order(
            order,
            &statement,
            &told.pending_attempts,
            &mut sums,
            &mut |d| found.push(d),
        );
        for d in found {
            report.violation(
                "exactly once",
                &order.account_id,
                format!("order account {}: {d}", order.account_id),
            );
        }
    }
    report.checked.push(format!(
        "exactly once, orders: {} accounts; {} fundings ({} minor; {} through the documented PENDING path), \
         {} releases ({} minor), {} refunds ({} minor, {} of it back to the Pay Later partner), \
         {} refund payments to buyers ({} minor): each acknowledged or expected once, nothing else",
        sums.accounts,
        sums.fundings,
        sums.funded_minor,
        sums.documented,
        sums.releases,
        sums.released_minor,
        sums.refunds,
        sums.refunded_minor,
        sums.to_partner_minor,
        sums.refund_payments,
        sums.refund_paid_minor
    ));
    report.orders = sums;
    Ok(())
}

/// No escrow account the clients do not know of moved money (contract
/// opens one per activated order; a client that stopped before learning
/// its id would leave one unchecked).
async fn unknown_accounts(
    platform: &ChaosPlatform,
    told: &Told,
    support: &MetadataValue<Ascii>,
    report: &mut CheckReport,
) -> Result<()> {
    let known: BTreeSet<&str> = told
        .direct_accounts
        .iter()
        .map(String::as_str)
        .chain(told.orders.iter().map(|o| o.account_id.as_str()))
        .collect();
    let mut escrow = EscrowServiceClient::new(channel(platform.addr(Target::Escrow))?);
    let mut page_token = String::new();
    let (mut listed, mut unknown) = (0u64, 0u64);
    loop {
        let page = escrow
            .list_escrow_accounts(authorized(
                ListEscrowAccountsRequest {
                    page: Some(PageRequest {
                        page_size: 100,
                        page_token: page_token.clone(),
                    }),
                    ..Default::default()
                },
                support,
            ))
            .await
            .map_err(|s| format!("ListEscrowAccounts: {s:?}"))?
            .into_inner();
        for account in page.accounts {
            listed += 1;
            if known.contains(account.escrow_account_id.as_str()) {
                continue;
            }
            unknown += 1;
            let funded = account.funded_total.as_ref().map_or(0, |m| m.amount_minor);
            if funded != 0 {
                report.violation(
                    "exactly once",
                    &account.contract_id,
                    format!(
                        "account {} of contract {}, which no client knew, was funded {funded} minor",
                        account.escrow_account_id, account.contract_id
                    ),
                );
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    report.checked.push(format!(
        "accounts: {listed} in escrow, {unknown} no client knew of, none of them funded"
    ));
    Ok(())
}

/// An integer field of the gateway's books' USD line (None: no such line
/// or field). The books are flat JSON objects, one per currency, in a
/// list: the object naming USD is found between its braces.
fn books_field(books: &str, field: &str) -> Option<i64> {
    let line = books
        .split('{')
        .map(|part| part.split('}').next().unwrap_or_default())
        .find(|object| object.contains(r#""currency":"USD""#))?;
    let key = format!("\"{field}\":");
    let rest = &line[line.find(&key)? + key.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The payouts and refunds escrow sent, and the gateway's books: money in
/// is what the ledger funded (card charges, bank credits, Pay Later
/// disbursements); money out is the ledger's paid payouts and refunds, each
/// once; every payout a caller was told of is paid, once, for its amount;
/// and everything released was paid out (the payables end empty: see
/// [`quiesce`]).
async fn gateway(
    platform: &ChaosPlatform,
    told: &Told,
    support: &MetadataValue<Ascii>,
    report: &mut CheckReport,
) -> Result<()> {
    let mut escrow = EscrowServiceClient::new(channel(platform.addr(Target::Escrow))?);
    let transfers = gateway_transfers(&mut escrow, support).await?;
    let mut by_id: BTreeMap<&str, Vec<&GatewayTransfer>> = BTreeMap::new();
    let (mut payouts, mut refunds, mut buyer_refunds) = ((0u64, 0i64), (0u64, 0i64), 0i64);
    let mut failed = 0u64;
    for t in &transfers {
        by_id
            .entry(t.gateway_transfer_id.as_str())
            .or_default()
            .push(t);
        let amount = t.amount.as_ref().map_or(0, |m| m.amount_minor);
        match (t.direction(), t.status()) {
            (GatewayTransferDirection::Payout, GatewayTransferStatus::Paid) => {
                payouts.0 += 1;
                payouts.1 += amount;
            }
            (GatewayTransferDirection::BuyerRefund, GatewayTransferStatus::Paid) => {
                refunds.0 += 1;
                refunds.1 += amount;
                buyer_refunds += amount;
            }
            (GatewayTransferDirection::SuspenseRefund, GatewayTransferStatus::Paid) => {
                refunds.0 += 1;
                refunds.1 += amount;
            }
            (_, GatewayTransferStatus::Failed) => failed += 1,
            (direction, status) => report.violation(
                "gateway",
                &t.gateway_transfer_id,
                format!(
                    "{direction:?} {} of {amount} minor is {status:?} after quiescence",
                    t.gateway_transfer_id
                ),
            ),
        }
    }
    for (id, amount) in &told.payouts {
        match by_id.get(id.as_str()).map(Vec::as_slice) {
            Some([one])
                if one.status() == GatewayTransferStatus::Paid
                    && one.amount.as_ref().map_or(0, |m| m.amount_minor) == *amount => {}
            Some([one]) => report.violation(
                "payouts",
                id,
                format!(
                    "payout {id} was answered for {amount} minor; it is {:?} for {:?}",
                    one.status(),
                    one.amount
                ),
            ),
            other => report.violation(
                "payouts",
                id,
                format!(
                    "payout {id} ({amount} minor) was answered; escrow lists it {} times",
                    other.map_or(0, <[_]>::len)
                ),
            ),
        }
    }
    let released = report.orders.released_minor + report.tally.found.released_minor;
    if payouts.1 != released {
        report.violation(
            "payouts",
            "",
            format!(
                "{released} minor was released to suppliers, {} minor paid out ({} payouts)",
                payouts.1, payouts.0
            ),
        );
    }
    if buyer_refunds != report.orders.refund_paid_minor {
        report.violation(
            "gateway",
            "",
            format!(
                "the buyers' refund payments post {} minor, the paid refund transfers {buyer_refunds}",
                report.orders.refund_paid_minor
            ),
        );
    }
    report.payouts_paid = payouts;
    report.refunds_paid = refunds;

    let books = platform.gateway_books().await?;
    let field = |f: &str| books_field(&books, f).unwrap_or(0);
    let money_in = field("charges_minor") + field("bank_credits_minor") + field("pay_later_minor");
    let funded = report.tally.found.funded_minor + report.orders.funded_minor;
    let books_payouts = (field("payouts_paid") as u64, field("payouts_paid_minor"));
    let books_refunds = (field("refunds_paid") as u64, field("refunds_paid_minor"));
    let pending = field("out_pending_minor");
    if money_in != funded || books_payouts != payouts || books_refunds != refunds || pending != 0 {
        report.violation(
            "gateway",
            "",
            format!(
                "the gateway took in {money_in} minor, the ledger funded {funded}; \
                 the gateway paid {books_payouts:?} payouts and {books_refunds:?} refunds (count, minor), \
                 escrow lists {payouts:?} and {refunds:?} paid; {pending} pending at the gateway: {books}"
            ),
        );
    }
    report.checked.push(format!(
        "gateway: took in {money_in} minor (charges {}, bank credits {}, Pay Later {}), ledger funded {funded}; \
         paid {} payouts ({} minor) and {} refunds ({} minor), as escrow lists them; {} payouts answered \
         to RunSupplierPayouts, each paid once; everything released ({released} minor) paid out; \
         {failed} transfers failed (owed again), {pending} pending",
        field("charges_minor"),
        field("bank_credits_minor"),
        field("pay_later_minor"),
        payouts.0,
        payouts.1,
        refunds.0,
        refunds.1,
        told.payouts.len()
    ));
    Ok(())
}

async fn orders_and_cover(
    platform: &ChaosPlatform,
    told: &Told,
    supplier_id: &str,
    support: &MetadataValue<Ascii>,
    report: &mut CheckReport,
) -> Result<()> {
    let mut contracts = ContractServiceClient::new(channel(platform.addr(Target::Contract))?);
    let mut disputes = DisputeServiceClient::new(channel(platform.addr(Target::Dispute))?);
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_plan: BTreeMap<String, u64> = BTreeMap::new();
    let mut open_total = 0i64;
    for order in told.orders.iter().filter(|o| !o.contract_id.is_empty()) {
        let contract = contracts
            .get_contract(authorized(
                GetContractRequest {
                    contract_id: order.contract_id.clone(),
                    version: 0,
                },
                support,
            ))
            .await
            .map_err(|s| format!("GetContract {}: {s:?}", order.contract_id))?
            .into_inner()
            .contract
            .ok_or("GetContract answered no contract")?;
        let status = contract.status();
        *by_status.entry(format!("{status:?}")).or_default() += 1;
        *by_plan
            .entry(format!(
                "{} ({:?})",
                order.plan.map_or_else(String::new, |p| p.name()),
                order.method
            ))
            .or_default() += 1;
        if matches!(
            status,
            ContractStatus::AwaitingPayment
                | ContractStatus::PartiallyFunded
                | ContractStatus::Funded
                | ContractStatus::Shipped
                | ContractStatus::Delivered
                | ContractStatus::InDispute
        ) {
            open_total += contract.total.as_ref().map_or(0, |m| m.amount_minor);
        }
        let claim_end = order.claim.as_ref().map(|c| &c.end);
        let expected: &[ContractStatus] = if order.accepted {
            &[ContractStatus::Completed]
        } else if order.cancelled {
            &[ContractStatus::Cancelled]
        } else {
            match claim_end {
                Some(ClaimEnd::Decided(_) | ClaimEnd::Settled(Some(_))) => {
                    &[ContractStatus::Completed]
                }
                Some(ClaimEnd::Settled(None)) => &[ContractStatus::Refunded],
                _ => match order.last_ok.as_str() {
                    "funded" | "amended" | "received" | "claim" => &[
                        ContractStatus::Funded,
                        ContractStatus::Shipped,
                        ContractStatus::Delivered,
                        ContractStatus::InDispute,
                        ContractStatus::Completed,
                        ContractStatus::Refunded,
                    ],
                    _ => &[],
                },
            }
        };
        if status == ContractStatus::Activating
            || (!expected.is_empty() && !expected.contains(&status))
        {
            report.violation(
                "orders",
                &order.contract_id,
                format!(
                    "the client was last told `{}`{}, the contract is {status:?}",
                    order.last_ok,
                    order
                        .stopped
                        .as_ref()
                        .map_or(String::new(), |s| format!(" (it stopped: {s})"))
                ),
            );
        }
        if order.amended && contract.signed_version != 2 {
            report.violation(
                "orders",
                &order.contract_id,
                format!(
                    "both signed the amendment; the signed version is {}",
                    contract.signed_version
                ),
            );
        }
        let Some(claim_told) = &order.claim else {
            continue;
        };
        let claim = disputes
            .get_claim(authorized(
                GetClaimRequest {
                    claim_id: claim_told.claim_id.clone(),
                },
                support,
            ))
            .await
            .map_err(|s| format!("GetClaim {}: {s:?}", claim_told.claim_id))?
            .into_inner()
            .claim
            .ok_or("GetClaim answered no claim")?;
        let claim_status = claim.status();
        *report
            .claims
            .entry(match &claim_told.end {
                ClaimEnd::Refused(reason) => format!(
                    "{claim_status:?} ({})",
                    reason.split(':').next().unwrap_or_default()
                ),
                _ => format!("{claim_status:?}"),
            })
            .or_default() += 1;
        let wanted = match claim_told.end {
            ClaimEnd::Filed => None,
            ClaimEnd::Refused(_) => Some(ClaimStatus::Refused),
            ClaimEnd::Withdrawn => Some(ClaimStatus::Withdrawn),
            ClaimEnd::Settled(_) => Some(ClaimStatus::Settled),
            ClaimEnd::Decided(_) => Some(ClaimStatus::Decided),
        };
        let final_status = matches!(
            claim_status,
            ClaimStatus::Refused
                | ClaimStatus::Withdrawn
                | ClaimStatus::Settled
                | ClaimStatus::Decided
        );
        let effects_done =
            claim_status == ClaimStatus::Refused || claim.effects_completed_at.is_some();
        if wanted.is_some_and(|w| w != claim_status)
            || !effects_done
            || (!final_status && status != ContractStatus::InDispute)
        {
            report.violation(
                "claims",
                &order.contract_id,
                format!(
                    "claim {}: the client was told {:?}; it is {claim_status:?}, effects {}; the contract is {status:?}",
                    claim_told.claim_id,
                    claim_told.end,
                    if effects_done { "completed" } else { "not completed" }
                ),
            );
        }
    }
    report.checked.push(format!(
        "orders: {} placed, by plan {by_plan:?}; final states {by_status:?}",
        told.orders.len()
    ));
    report.checked.push(format!(
        "claims: {} filed, final states {:?}, each as its client was told, effects completed",
        told.orders.iter().filter(|o| o.claim.is_some()).count(),
        report.claims
    ));
    let mut registry =
        SupplierRegistryServiceClient::new(channel(platform.addr(Target::Registry))?);
    let cover = registry
        .get_cover(authorized(
            GetCoverRequest {
                supplier_id: supplier_id.to_owned(),
            },
            support,
        ))
        .await
        .map_err(|s| format!("GetCover: {s:?}"))?
        .into_inner();
    let reserved = cover.cover_reserved.map_or(0, |m| m.amount_minor);
    if reserved != open_total {
        report.violation(
            "cover",
            "",
            format!(
                "supplier {supplier_id} has {reserved} minor of cover reserved, its open contracts total {open_total}"
            ),
        );
    }
    report.checked.push(format!(
        "cover: reserved {reserved} minor, open contracts total {open_total} minor"
    ));
    Ok(())
}

async fn held(
    platform: &ChaosPlatform,
    support: &MetadataValue<Ascii>,
    report: &mut CheckReport,
) -> Result<()> {
    let mut escrow = EscrowServiceClient::new(channel(platform.addr(Target::Escrow))?);
    let mut token = String::new();
    let mut held = 0;
    loop {
        let page = escrow
            .list_held_accounts(authorized(
                ListHeldAccountsRequest {
                    page: Some(PageRequest {
                        page_size: 100,
                        page_token: token.clone(),
                    }),
                },
                support,
            ))
            .await
            .map_err(|s| format!("ListHeldAccounts: {s:?}"))?
            .into_inner();
        for h in page.accounts {
            held += 1;
            let Some(account) = h.account else { continue };
            if h.next_deadline_at.is_none() && account.active_freezes.is_empty() {
                report.violation(
                    "held money",
                    &account.escrow_account_id,
                    format!(
                        "account {} holds {:?} with no deadline and no freeze",
                        account.escrow_account_id, account.held
                    ),
                );
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let items = escrow
        .list_unmatched_gateway_items(authorized(
            ListUnmatchedGatewayItemsRequest {
                page: Some(PageRequest {
                    page_size: 100,
                    page_token: String::new(),
                }),
            },
            support,
        ))
        .await
        .map_err(|s| format!("ListUnmatchedGatewayItems: {s:?}"))?
        .into_inner()
        .items;
    for item in &items {
        report.violation(
            "gateway items",
            &item.gateway_reference,
            format!(
                "unmatched gateway item {} {} ({:?}) waits for an operator",
                item.kind, item.gateway_event_id, item.amount
            ),
        );
    }
    report.checked.push(format!(
        "held money: {held} accounts hold money, each with a live deadline or a freeze; {} unmatched gateway items",
        items.len()
    ));
    Ok(())
}

async fn reconciliations(
    platform: &ChaosPlatform,
    finance: &MetadataValue<Ascii>,
    report: &mut CheckReport,
) -> Result<()> {
    let mut escrow = EscrowServiceClient::new(channel(platform.addr(Target::Escrow))?);
    let mut request = authorized(ReconcileLedgerRequest {}, finance);
    request.set_timeout(Duration::from_secs(300));
    let ledger = escrow
        .reconcile_ledger(request)
        .await
        .map_err(|s| format!("ReconcileLedger: {s:?}"))?
        .into_inner();
    for d in &ledger.differences {
        report.violation("ReconcileLedger", "", format!("{} {}", d.kind, d.detail));
    }
    report.checked.push(format!(
        "ReconcileLedger: {} accounts, {} postings, {} holds checked; {} differences",
        ledger.accounts_checked,
        ledger.postings_checked,
        ledger.holds_checked,
        ledger.differences.len()
    ));
    let mut reconciliation =
        ReconciliationServiceClient::new(channel(platform.addr(Target::Dispute))?);
    let mut request = authorized(
        ReconcilePlatformRequest {
            settled_for: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
        },
        finance,
    );
    request.set_timeout(Duration::from_secs(300));
    let platform_report = reconciliation
        .reconcile_platform(request)
        .await
        .map_err(|s| format!("ReconcilePlatform: {s:?}"))?
        .into_inner();
    for d in &platform_report.differences {
        let entity = if d.escrow_account_id.is_empty() {
            &d.contract_id
        } else {
            &d.escrow_account_id
        };
        report.violation(
            "ReconcilePlatform",
            entity,
            format!("{:?}: {}", d.kind(), d.summary),
        );
    }
    report.checked.push(format!(
        "ReconcilePlatform: {} reservations, {} contracts, {} accounts, {} claims checked; {} differences",
        platform_report.reservations_checked,
        platform_report.contracts_checked,
        platform_report.accounts_checked,
        platform_report.claims_checked,
        platform_report.differences_total
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::books_field;

    #[test]
    fn the_books_fields_are_read_from_the_usd_line() {
        let books = r#"{"currencies":[{"charges_minor":5,"currency":"EUR"},{"charges_minor":120000,"currency":"USD","money_out_minor":0,"out_pending_minor":-3}],"object":"books"}"#;
        assert_eq!(books_field(books, "charges_minor"), Some(120_000));
        assert_eq!(books_field(books, "money_out_minor"), Some(0));
        assert_eq!(books_field(books, "out_pending_minor"), Some(-3));
        assert_eq!(books_field(books, "bank_credits_minor"), None);
    }
}
