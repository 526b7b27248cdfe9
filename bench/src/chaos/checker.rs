//! After the schedule: faults off, the platform left to quiesce (every
//! service's outbox drained, no timer overdue), then the end state checked
//! against what the clients were told:
//!
//! - every acknowledged money movement is in escrow's statements exactly
//!   once, with its amount, between the right ledger accounts, and nothing
//!   else moved, except through a documented path: a funding answered
//!   PENDING that the gateway's webhook or escrow's status check completed
//!   later, the release contract's workflow makes after an acknowledged
//!   acceptance, a retried key ([`crate::tally`]);
//! - the gateway's own books took in exactly what the ledger funded;
//! - the supplier's reserved cover equals its open contracts' totals;
//! - no account holds money without a live deadline or a freeze, and no
//!   gateway item waits for an operator;
//! - every order is in the state its client's last acknowledged step says
//!   (accepted: COMPLETED, cancelled: CANCELLED, funded: past
//!   AWAITING_PAYMENT), none stuck in ACTIVATING, and no operation ended
//!   in an answer a correct platform does not give;
//! - `ReconcileLedger` and the cross-service `ReconcilePlatform` report
//!   nothing; no outbox row is parked.
//!
//! A violation names the entity it is about, so the report can show the
//! shortest history that leads to it: that entity's operations, in order.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use ta_proto::{
    common::PageRequest,
    tradeassurance::{
        contract::v1::{
            ContractStatus, GetContractRequest, contract_service_client::ContractServiceClient,
        },
        escrow::v1::{
            ListHeldAccountsRequest, ListUnmatchedGatewayItemsRequest, PostingKind,
            ReconcileLedgerRequest, escrow_service_client::EscrowServiceClient,
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

use super::{platform::ChaosPlatform, schedule::Target, workload::Told};
use crate::{
    ORDER_TOTAL_MINOR, Result, authorized, channel, read_statement,
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
    while calm_rounds < 2 {
        if started.elapsed() > patience {
            report.violation(
                "quiescence",
                "",
                format!("the platform did not quiesce within {patience:?}: {last:?}"),
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
        calm_rounds = if calm { calm_rounds + 1 } else { 0 };
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
    gateway(platform, report).await?;
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
    for id in told
        .direct_accounts
        .iter()
        .chain(told.orders.iter().map(|o| &o.account_id))
        .filter(|id| !id.is_empty())
    {
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
        "exactly once: {} accounts; told {} fundings ({} minor) and {} releases ({} minor), \
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

/// The gateway's books: charged exactly what the ledger funded, paid
/// nothing out (the run makes no payout), nothing pending.
async fn gateway(platform: &ChaosPlatform, report: &mut CheckReport) -> Result<()> {
    let books = platform.gateway_books().await?;
    let charged = books_field(&books, "charges_minor").unwrap_or(0);
    let credits = books_field(&books, "bank_credits_minor").unwrap_or(0);
    let out = books_field(&books, "money_out_minor").unwrap_or(0);
    let pending = books_field(&books, "out_pending_minor").unwrap_or(0);
    let funded = report.tally.found.funded_minor;
    if charged + credits != funded || out != 0 || pending != 0 {
        report.violation(
            "gateway",
            "",
            format!(
                "the gateway charged {charged} and credited {credits} minor, paid out {out}, \
                 {pending} pending; the ledger funded {funded}: {books}"
            ),
        );
    }
    report.checked.push(format!(
        "gateway books: charged {charged} minor, ledger funded {funded} minor, money out {out}, pending {pending}"
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
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
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
        if matches!(
            status,
            ContractStatus::AwaitingPayment
                | ContractStatus::PartiallyFunded
                | ContractStatus::Funded
                | ContractStatus::Shipped
                | ContractStatus::Delivered
        ) {
            open_total += ORDER_TOTAL_MINOR;
        }
        let expected: &[ContractStatus] = match order.last_ok.as_str() {
            "accepted" => &[ContractStatus::Completed],
            "cancelled" => &[ContractStatus::Cancelled],
            "funded" => &[
                ContractStatus::Funded,
                ContractStatus::Shipped,
                ContractStatus::Delivered,
                ContractStatus::Completed,
            ],
            _ => &[],
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
    }
    report.checked.push(format!(
        "orders: {} placed, final states {by_status:?}",
        told.orders.len()
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
