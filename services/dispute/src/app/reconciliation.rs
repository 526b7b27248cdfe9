//! Cross-service reconciliation: reads what supplier-registry, contract and
//! escrow record through their APIs (dispute's own service token, every page
//! of each listing) and dispute's claims from its own tables, then lets
//! `domain::reconciliation` compare them. The operator RPC and the periodic
//! job (`ta.reconciliation.differences`) share it.

use std::{collections::BTreeSet, future::Future, time::Duration as StdDuration};

use sqlx::PgPool;
use ta_proto::{
    common::{Money as MoneyProto, PageRequest},
    contract::{self as contract_pb, contract_service_client::ContractServiceClient},
    escrow::{self as escrow_pb, escrow_service_client::EscrowServiceClient},
    supplier::{
        self as supplier_pb, supplier_registry_service_client::SupplierRegistryServiceClient,
    },
};
use ta_runtime::{
    ServiceError,
    money::{Currency, Money},
    timestamps,
};
use time::OffsetDateTime;
use tonic::Status;

use super::filing::Reads;
use crate::{
    domain::{
        reconciliation::{
            Account, Books, Claim, ClaimStage, Contract, Reconciled, Reservation, Stage, reconcile,
        },
        status::Status as ClaimStatus,
    },
    effects,
    storage::reconciliation as stored,
    views,
};

/// Items per page read: the listings' maximum.
const PAGE: i32 = 100;

/// Reads every side and compares, leaving out rows changed within
/// `settled_for`. UNAVAILABLE when a service cannot be read.
pub async fn run(
    reads: &Reads,
    pool: &PgPool,
    settled_for: StdDuration,
) -> Result<Reconciled, ServiceError> {
    let checked_at = timestamps::now();
    let books = read_books(reads, pool).await?;
    let settled_before = checked_at
        - time::Duration::try_from(settled_for)
            .map_err(|_| ServiceError::invalid("settled_for", "is too long"))?;
    Ok(Reconciled {
        checked_at,
        report: reconcile(&books, settled_before),
        reservations: books.reservations.len(),
        contracts: books.contracts.len(),
        accounts: books.accounts.len(),
        claims: books.claims.len(),
    })
}

async fn read_books(reads: &Reads, pool: &PgPool) -> Result<Books, ServiceError> {
    let reservations = active_reservations(reads).await?;
    let mut contracts = signed_contracts(reads).await?;
    let accounts = accounts(reads).await?;
    // Contracts a reservation or an account names that the listing of
    // signed ones did not bring (drafts again after a refused activation,
    // or none at all), one by one: there are few.
    let known: BTreeSet<String> = contracts.iter().map(|c| c.contract_id.clone()).collect();
    let named: BTreeSet<&str> = reservations
        .iter()
        .map(|r| r.contract_id.as_str())
        .chain(accounts.iter().map(|a| a.contract_id.as_str()))
        .filter(|id| !known.contains(*id))
        .collect();
    for contract_id in named {
        if let Some(contract) = contract(reads, contract_id).await? {
            contracts.push(contract);
        }
    }
    let frozen_for: Vec<String> = accounts
        .iter()
        .flat_map(|a| a.frozen_for.iter().cloned())
        .collect();
    let claims = stored::claims_to_compare(pool, &frozen_for)
        .await?
        .into_iter()
        .map(claim)
        .collect();
    Ok(Books {
        reservations,
        contracts,
        accounts,
        claims,
    })
}

/// Every page of one listing: `fetch` gets a page token and answers the
/// page's items and the next token (empty after the last page).
async fn every_page<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, ServiceError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), ServiceError>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

fn page(token: String) -> Option<PageRequest> {
    Some(PageRequest {
        page_size: PAGE,
        page_token: token,
    })
}

fn unreadable(service: &str, status: &Status) -> ServiceError {
    tracing::warn!(
        service,
        code = ?status.code(),
        message = status.message(),
        "reconciliation read failed"
    );
    ServiceError::Unavailable(format!(
        "{service} cannot be read for the reconciliation; retry"
    ))
}

fn money(field: &str, money: Option<&MoneyProto>) -> Result<Money, ServiceError> {
    money
        .and_then(|m| Currency::parse(&m.currency_code).map(|c| Money::new(m.amount_minor, c)))
        .ok_or_else(|| ServiceError::internal(format!("a peer answered no valid {field}")))
}

fn at(timestamp: Option<&prost_types::Timestamp>) -> OffsetDateTime {
    // A row without a time reads as changed now: left out until it settles.
    timestamp
        .and_then(timestamps::from_proto)
        .unwrap_or_else(timestamps::now)
}

async fn active_reservations(reads: &Reads) -> Result<Vec<Reservation>, ServiceError> {
    let target = effects::SUPPLIER_REGISTRY;
    let client =
        SupplierRegistryServiceClient::new(ta_runtime::client::traced(reads.channel(target)?));
    let listed = every_page(|token| {
        let request = reads.request(
            target,
            supplier_pb::ListCoverReservationsRequest {
                status: supplier_pb::CoverReservationStatus::Active as i32,
                page: page(token),
                ..Default::default()
            },
        );
        let mut client = client.clone();
        async move {
            let response = client
                .list_cover_reservations(request?)
                .await
                .map_err(|s| unreadable(target, &s))?
                .into_inner();
            Ok((response.reservations, response.next_page_token))
        }
    })
    .await?;
    listed
        .into_iter()
        .map(|r| {
            Ok(Reservation {
                amount: money("reservation amount", r.amount.as_ref())?,
                changed_at: at(r.reserved_at.as_ref()),
                contract_id: r.contract_id,
                supplier_id: r.supplier_id,
            })
        })
        .collect()
}

/// Contracts past their signatures: the ones cover, accounts and claims
/// are about.
async fn signed_contracts(reads: &Reads) -> Result<Vec<Contract>, ServiceError> {
    use contract_pb::ContractStatus as S;
    let target = effects::CONTRACT;
    let client = ContractServiceClient::new(ta_runtime::client::traced(reads.channel(target)?));
    let statuses: Vec<i32> = [
        S::Activating,
        S::AwaitingPayment,
        S::PartiallyFunded,
        S::Funded,
        S::SignedUnprotected,
        S::Shipped,
        S::Delivered,
        S::Completed,
        S::InDispute,
        S::Cancelled,
        S::Refunded,
    ]
    .map(|s| s as i32)
    .to_vec();
    let listed = every_page(|token| {
        let request = reads.request(
            target,
            contract_pb::ListContractsRequest {
                statuses: statuses.clone(),
                page: page(token),
                ..Default::default()
            },
        );
        let mut client = client.clone();
        async move {
            let response = client
                .list_contracts(request?)
                .await
                .map_err(|s| unreadable(target, &s))?
                .into_inner();
            Ok((response.contracts, response.next_page_token))
        }
    })
    .await?;
    listed.into_iter().map(contract_facts).collect()
}

/// One contract by id; `None` when contract does not know it.
async fn contract(reads: &Reads, contract_id: &str) -> Result<Option<Contract>, ServiceError> {
    let target = effects::CONTRACT;
    let mut client = ContractServiceClient::new(ta_runtime::client::traced(reads.channel(target)?));
    let request = reads.request(
        target,
        contract_pb::GetContractRequest {
            contract_id: contract_id.to_owned(),
            ..Default::default()
        },
    )?;
    match client.get_contract(request).await {
        Ok(response) => response
            .into_inner()
            .contract
            .map(contract_facts)
            .transpose(),
        // A malformed id no contract can have is as unknown as a missing one.
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::NotFound | tonic::Code::InvalidArgument
            ) =>
        {
            Ok(None)
        }
        Err(status) => Err(unreadable(target, &status)),
    }
}

fn contract_facts(contract: contract_pb::Contract) -> Result<Contract, ServiceError> {
    use contract_pb::ContractStatus as S;
    let status = contract.status();
    let protected = contract.protection() == contract_pb::Protection::TradeAssurance;
    let stage = match status {
        S::Unspecified | S::Draft | S::AwaitingSignatures => Stage::Unsigned,
        S::Activating => Stage::Activating,
        S::AwaitingPayment
        | S::PartiallyFunded
        | S::Funded
        | S::Shipped
        | S::Delivered
        | S::InDispute
            if protected =>
        {
            Stage::Live
        }
        S::Completed | S::Cancelled | S::Refunded => Stage::Ended,
        S::SignedUnprotected
        | S::AwaitingPayment
        | S::PartiallyFunded
        | S::Funded
        | S::Shipped
        | S::Delivered
        | S::InDispute => Stage::Unprotected,
    };
    Ok(Contract {
        total: money("contract total", contract.total.as_ref())?,
        state: status.as_str_name().to_owned(),
        stage,
        amendment_pending: contract.pending_amendment_version != 0,
        changed_at: at(contract.updated_at.as_ref()),
        contract_id: contract.contract_id,
        supplier_id: contract.supplier_id,
    })
}

/// Open accounts, and closed ones that still hold money (there should be
/// none).
async fn accounts(reads: &Reads) -> Result<Vec<Account>, ServiceError> {
    use escrow_pb::EscrowAccountStatus as S;
    let target = effects::ESCROW;
    let client = EscrowServiceClient::new(ta_runtime::client::traced(reads.channel(target)?));
    let mut listed = Vec::new();
    for (statuses, holding_money) in [
        (
            vec![S::AwaitingFunding, S::PartiallyFunded, S::Funded],
            None,
        ),
        (vec![S::Closed], Some(true)),
    ] {
        let statuses: Vec<i32> = statuses.into_iter().map(|s| s as i32).collect();
        listed.extend(
            every_page(|token| {
                let request = reads.request(
                    target,
                    escrow_pb::ListEscrowAccountsRequest {
                        statuses: statuses.clone(),
                        holding_money,
                        page: page(token),
                        ..Default::default()
                    },
                );
                let mut client = client.clone();
                async move {
                    let response = client
                        .list_escrow_accounts(request?)
                        .await
                        .map_err(|s| unreadable(target, &s))?
                        .into_inner();
                    Ok((response.accounts, response.next_page_token))
                }
            })
            .await?,
        );
    }
    listed
        .into_iter()
        .map(|a| {
            let status = a.status();
            Ok(Account {
                expected_total: money("account total", a.expected_total.as_ref())?,
                held: money("amount held", a.held.as_ref())?,
                frozen_for: a.active_freezes.into_iter().map(|f| f.claim_id).collect(),
                changed_at: at(a.updated_at.as_ref()),
                state: status.as_str_name().to_owned(),
                open: status != S::Closed,
                escrow_account_id: a.escrow_account_id,
                contract_id: a.contract_id,
                supplier_id: a.supplier_id,
            })
        })
        .collect()
}

fn claim(row: stored::ClaimFacts) -> Claim {
    let stage = match row.status {
        ClaimStatus::Opening => ClaimStage::Opening,
        ClaimStatus::Negotiating | ClaimStatus::Escalated => ClaimStage::Open,
        ClaimStatus::Refused
        | ClaimStatus::Settled
        | ClaimStatus::Decided
        | ClaimStatus::Withdrawn => ClaimStage::Ended,
    };
    Claim {
        state: views::status_proto(row.status).as_str_name().to_owned(),
        stage,
        // A refused claim asks nothing more of the others.
        effects_done: row.effects_done || row.status == ClaimStatus::Refused,
        claim_id: row.claim_id,
        contract_id: row.contract_id,
        escrow_account_id: row.escrow_account_id,
        supplier_id: row.supplier_id,
        changed_at: row.updated_at,
    }
}
