//! Filing a claim: the contract and what its escrow account holds are read
//! from their services (before the transaction opens: no pooled connection
//! is held across the calls), the claim is checked against them, then
//! written OPENING with the contract asked first.

use std::{sync::Arc, time::Duration as StdDuration};

use sqlx::PgConnection;
use ta_proto::{
    contract::{self as contract_pb, contract_service_client::ContractServiceClient},
    dispute as pb,
    escrow::{self as escrow_pb, escrow_service_client::EscrowServiceClient},
};
use ta_runtime::{
    ServiceError, Violations,
    auth::{Actor, Principal, Role},
    money::{Currency, Money, readable},
};
use ta_workflow::{credentials::ServiceCredentials, peers::Peers};
use time::OffsetDateTime;
use tonic::{Request, Status};
use uuid::Uuid;

use super::{ClaimFlows, Flows, Step};
use crate::{
    domain::claim::{Claim, Policy, Reason, Remedy},
    effects,
    storage::claims::{self, ClaimRecord},
};

type Event = pb::DisputeEventType;

/// What NOT_FOUND calls the contract a claim is filed on: "contract <id> not
/// found", as the caller sent the id, for a contract that does not exist and
/// for one the caller may not see.
const CONTRACT: &str = "contract";

/// Reads of other services with dispute's own service token: the contract
/// and its escrow account when a claim is filed, and every side of the
/// cross-service reconciliation.
#[derive(Clone)]
pub struct Reads {
    pub peers: Peers,
    pub credentials: Arc<ServiceCredentials>,
    pub timeout: StdDuration,
}

impl Reads {
    pub(crate) fn request<T>(&self, target: &str, message: T) -> Result<Request<T>, ServiceError> {
        let bearer = self
            .credentials
            .bearer(target)
            .map_err(|e| ServiceError::internal(format!("no service token: {e}")))?;
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request.metadata_mut().insert("authorization", bearer);
        ta_runtime::telemetry::inject_trace_context(request.metadata_mut());
        Ok(request)
    }

    pub(crate) fn channel(&self, target: &str) -> Result<tonic::transport::Channel, ServiceError> {
        self.peers.channel(target).ok_or_else(|| {
            ServiceError::Unavailable(format!("{target}'s address is not configured"))
        })
    }

    fn failed(target: &str, status: &Status) -> ServiceError {
        tracing::warn!(target, code = ?status.code(), message = status.message(), "read failed");
        ServiceError::Unavailable(format!(
            "{target} cannot be reached to read the claim's facts; retry"
        ))
    }

    /// The contract and its signed version (the terms a claim is about).
    async fn contract(
        &self,
        contract_id: &str,
    ) -> Result<(contract_pb::Contract, contract_pb::ContractVersion), ServiceError> {
        let mut client = ContractServiceClient::new(ta_runtime::client::traced(
            self.channel(effects::CONTRACT)?,
        ));
        let request = self.request(
            effects::CONTRACT,
            contract_pb::GetContractRequest {
                contract_id: contract_id.to_owned(),
                ..Default::default()
            },
        )?;
        match client.get_contract(request).await {
            Ok(response) => {
                let response = response.into_inner();
                response
                    .contract
                    .zip(response.version)
                    .ok_or_else(|| ServiceError::internal("contract answered no contract"))
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                Err(ServiceError::not_found(CONTRACT, contract_id))
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                Err(ServiceError::invalid("contract_id", "is not a contract id"))
            }
            Err(status) => Err(Self::failed(effects::CONTRACT, &status)),
        }
    }

    async fn escrow_account(
        &self,
        escrow_account_id: &str,
    ) -> Result<escrow_pb::EscrowAccount, ServiceError> {
        let mut client =
            EscrowServiceClient::new(ta_runtime::client::traced(self.channel(effects::ESCROW)?));
        let request = self.request(
            effects::ESCROW,
            escrow_pb::GetEscrowAccountRequest {
                escrow_account_id: escrow_account_id.to_owned(),
                contract_id: String::new(),
            },
        )?;
        match client.get_escrow_account(request).await {
            Ok(response) => response
                .into_inner()
                .account
                .ok_or_else(|| ServiceError::internal("escrow answered no account")),
            Err(status) => Err(Self::failed(effects::ESCROW, &status)),
        }
    }
}

pub struct FileClaim {
    pub contract_id: String,
    pub reason: Reason,
    pub remedy: Remedy,
    pub quality_criterion_ids: Vec<String>,
    pub amount: Money,
    pub description: String,
}

/// A claim checked against the contract and what escrow holds, ready to be
/// written.
pub struct Filing {
    contract: contract_pb::Contract,
    claim: Claim,
    goods_shipped: bool,
    now: OffsetDateTime,
}

/// Reads the contract and its escrow account and checks the claim against
/// them: only the contract's buyer files, on criteria of the signed terms,
/// on a Trade Assurance contract whose escrow holds money.
pub async fn check(
    reads: &Reads,
    principal: &Principal,
    cmd: &FileClaim,
    policy: &Policy,
) -> Result<Filing, ServiceError> {
    let (contract, signed) = reads.contract(&cmd.contract_id).await?;
    if principal.role != Role::Buyer || contract.buyer_principal_id != principal.subject {
        // Who may see the contract (its supplier's owner, staff) is
        // refused; anyone else is answered as for a contract that does not
        // exist, as `Reads::contract` answers it.
        let sees = principal.sees_everything()
            || (principal.role == Role::Supplier
                && contract.supplier_principal_id == principal.subject);
        return Err(if sees {
            ServiceError::PermissionDenied("only the contract's buyer files a claim on it".into())
        } else {
            ServiceError::unseen(CONTRACT, &cmd.contract_id)
        });
    }
    let criteria: Vec<&str> = signed
        .terms
        .as_ref()
        .map(|t| {
            t.quality_criteria
                .iter()
                .map(|c| c.criterion_id.as_str())
                .collect()
        })
        .unwrap_or_default();
    let mut v = Violations::new();
    for (i, id) in cmd.quality_criterion_ids.iter().enumerate() {
        if !criteria.contains(&id.as_str()) {
            v.add(
                format!("quality_criterion_ids[{i}]"),
                format!(
                    "`{id}` is not a quality criterion of the signed contract (it has: {})",
                    if criteria.is_empty() {
                        "none".to_owned()
                    } else {
                        criteria.join(", ")
                    }
                ),
            );
        }
    }
    v.finish(())?;
    if contract.protection() != contract_pb::Protection::TradeAssurance
        || contract.escrow_account_id.is_empty()
    {
        return Err(ServiceError::Refused {
            reason: "NOT_PROTECTED",
            subject: format!("contracts/{}", cmd.contract_id),
            message: "only a Trade Assurance contract with an escrow account can be claimed".into(),
        });
    }
    let account = reads.escrow_account(&contract.escrow_account_id).await?;
    let held = account
        .held
        .as_ref()
        .and_then(|h| Currency::parse(&h.currency_code).map(|c| Money::new(h.amount_minor, c)))
        .filter(|h| h.amount_minor > 0)
        .ok_or_else(|| ServiceError::Refused {
            reason: "NOTHING_HELD",
            subject: format!("contracts/{}", cmd.contract_id),
            message: "escrow holds nothing for this contract".into(),
        })?;
    let now = ta_runtime::timestamps::now();
    let claim = Claim::file(cmd.amount, held, now, policy)?;
    let goods_shipped = matches!(
        contract.status(),
        contract_pb::ContractStatus::Shipped | contract_pb::ContractStatus::Delivered
    );
    Ok(Filing {
        contract,
        claim,
        goods_shipped,
        now,
    })
}

/// A new claim, OPENING: the contract is asked first.
pub async fn file_claim(
    tx: &mut PgConnection,
    flows: &Flows,
    cmd: &FileClaim,
    filing: &Filing,
    actor: &Actor,
) -> Result<pb::Claim, ServiceError> {
    let Filing {
        contract,
        claim,
        goods_shipped,
        now,
    } = filing;
    let now = *now;
    let mut record = ClaimRecord {
        claim_id: Uuid::now_v7(),
        contract_id: cmd.contract_id.clone(),
        escrow_account_id: contract.escrow_account_id.clone(),
        buyer_principal_id: contract.buyer_principal_id.clone(),
        supplier_id: contract.supplier_id.clone(),
        supplier_principal_id: contract.supplier_principal_id.clone(),
        reason: cmd.reason,
        remedy: cmd.remedy,
        quality_criterion_ids: cmd.quality_criterion_ids.clone(),
        description: cmd.description.clone(),
        goods_shipped: *goods_shipped,
        claim: claim.clone(),
        supplier_rejected_at: None,
        supplier_rejection_reason: String::new(),
        supplier_counter_evidence_ids: Vec::new(),
        escalated_by: None,
        escalation_reason: String::new(),
        decision_due_at: None,
        accepted_offer_id: String::new(),
        resolved_by: None,
        resolved_at: None,
        withdrawn_at: None,
        withdrawal_reason: String::new(),
        refusal_reason: String::new(),
        effects_completed_at: None,
        new_shipment_deadline: None,
        updated_at: now,
    };
    let claim = &mut record;
    if claims::withdrawn_before(tx, &claim.contract_id, claim.reason).await? {
        return Err(ServiceError::Refused {
            reason: "CLAIM_WITHDRAWN",
            subject: format!("contracts/{}", claim.contract_id),
            message: format!(
                "a {} claim on contract {} was withdrawn and cannot be filed again",
                claim.reason.as_str(),
                claim.contract_id
            ),
        });
    }
    claims::insert_claim(tx, claim).await?;
    flows
        .outbox
        .write(tx, effects::record_claim_opened(claim))
        .await?;
    let detail = format!(
        "claim filed by the buyer ({}): {} claimed; asking the contract",
        claim.reason.as_str(),
        readable(claim.claim.amount_claimed)
    );
    let amount = claim.claim.amount_claimed;
    flows
        .tell(
            tx,
            claim,
            actor,
            Step::new(Event::ClaimFiled, "claim.filed", detail).with_money(amount),
            String::new(),
            now,
        )
        .await
}
