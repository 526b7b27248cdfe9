//! Drafting and signing: a draft created for a supplier (its owner read
//! from supplier-registry first), revised by either party, signed by each;
//! the second signature continues in [`super::activation`].

use std::{sync::Arc, time::Duration as StdDuration};

use prost::Message;
use sqlx::PgConnection;
use ta_proto::{
    contract as pb,
    supplier::{
        GetSupplierRequest, supplier_registry_service_client::SupplierRegistryServiceClient,
    },
};
use ta_runtime::{
    ServiceError, Violations,
    auth::{Actor, Principal, Role},
    money::{Currency, readable},
    text::validate_reference,
};
use ta_workflow::{credentials::ServiceCredentials, peers::Peers};
use time::OffsetDateTime;
use tonic::Request;
use uuid::Uuid;

use super::{ContractFlows, Flows, Step, activation::both_signed, party_of};
use crate::{
    domain::{
        negotiation::{Negotiation, Protection, Signed},
        terms::Terms,
    },
    effects,
    storage::{
        contracts::{
            ContractRecord, Progress, contract_with_reference, insert_contract, lock_contract,
        },
        versions::{LoadedTerms, VersionRecord, insert_version},
    },
    views::version_proto,
};

/// Reads a supplier's owner from supplier-registry when a draft is created,
/// so escrow and dispute can check ownership without calling back.
pub struct Registry {
    pub peers: Peers,
    pub credentials: Arc<ServiceCredentials>,
    pub timeout: StdDuration,
}

/// What a draft needs to know of its supplier.
struct SupplierFacts {
    owner: String,
    /// The currency of its Trade Assurance limit; `None` when not enrolled.
    limit_currency: Option<Currency>,
}

impl Registry {
    async fn supplier(&self, supplier_id: Uuid) -> Result<SupplierFacts, ServiceError> {
        let channel = self
            .peers
            .channel(effects::SUPPLIER_REGISTRY)
            .ok_or_else(|| {
                ServiceError::Unavailable("supplier-registry's address is not configured".into())
            })?;
        let bearer = self
            .credentials
            .bearer(effects::SUPPLIER_REGISTRY)
            .map_err(|e| ServiceError::internal(format!("no service token: {e}")))?;
        let mut client = SupplierRegistryServiceClient::new(ta_runtime::client::traced(channel));
        let mut request = Request::new(GetSupplierRequest {
            supplier_id: supplier_id.to_string(),
        });
        request.set_timeout(self.timeout);
        request.metadata_mut().insert("authorization", bearer);
        ta_runtime::telemetry::inject_trace_context(request.metadata_mut());
        match client.get_supplier(request).await {
            Ok(response) => response
                .into_inner()
                .supplier
                .map(|s| SupplierFacts {
                    limit_currency: s
                        .ta_limit
                        .and_then(|limit| Currency::parse(&limit.currency_code)),
                    owner: s.owner_principal_id,
                })
                .ok_or_else(|| ServiceError::internal("supplier-registry answered no supplier")),
            Err(status) if status.code() == tonic::Code::NotFound => {
                Err(ServiceError::not_found("supplier", supplier_id))
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "supplier lookup failed");
                Err(ServiceError::Unavailable(
                    "supplier-registry cannot be reached to look the supplier up; retry".into(),
                ))
            }
        }
    }
}

/// A new contract's first terms, for a supplier.
pub struct CreateDraft {
    pub supplier_id: Uuid,
    /// Named by staff or a service; a buyer creates its own.
    pub buyer_principal_id: Option<String>,
    /// The terms as sent, with the server's figures stamped.
    pub proto: pb::ContractTerms,
    pub terms: Terms,
    /// The buyer's own order reference ([`external_reference`]).
    pub external_reference: Option<String>,
}

/// The most characters of a buyer's order reference.
pub const MAX_EXTERNAL_REFERENCE: usize = 128;

/// The buyer's order reference a draft carries: optional, 1-128 printable
/// characters kept exactly as sent (it is matched exactly), and set by the
/// buyer only (it is the buyer's shop's number, unique among its contracts).
pub fn external_reference(principal: &Principal, sent: &str, v: &mut Violations) -> Option<String> {
    if sent.is_empty() {
        return None;
    }
    if principal.role != Role::Buyer {
        v.add(
            "external_reference",
            "only the buyer sets its own order reference",
        );
    }
    check_external_reference("external_reference", sent, v);
    Some(sent.to_owned())
}

/// 1-128 printable characters (no control characters).
pub fn check_external_reference(field: &str, value: &str, v: &mut Violations) {
    let length = value.chars().count();
    v.require(
        (1..=MAX_EXTERNAL_REFERENCE).contains(&length) && !value.chars().any(char::is_control),
        field,
        "must be 1-128 printable characters",
    );
}

/// A new version of the terms: a revised draft or a proposed amendment.
pub struct Revise {
    pub contract_id: Uuid,
    pub base_version: u32,
    /// The terms as sent, with the server's figures stamped.
    pub proto: pb::ContractTerms,
    pub terms: Terms,
    pub change_note: String,
}

/// A signature (or another act) on one version of a contract.
pub struct ById {
    pub contract_id: Uuid,
    pub version: u32,
    pub text: String,
}

/// The buyer a draft names (`requested`): a buyer creates its own contracts
/// (none named: the caller), staff and services name one.
pub fn buyer_of(principal: &Principal, requested: &str, v: &mut Violations) -> Option<String> {
    match principal.role {
        Role::Buyer => {
            if !requested.is_empty() && requested != principal.subject {
                v.add(
                    "buyer_principal_id",
                    "must be empty or the caller: a buyer creates its own contracts",
                );
            }
            None
        }
        _ => {
            validate_reference("buyer_principal_id", requested, v);
            Some(requested.to_owned())
        }
    }
}

/// The supplier's owner, read from supplier-registry before the draft's
/// transaction: a supplier creates drafts only for a supplier it owns, and
/// a Trade Assurance draft only in the currency of the supplier's TA limit
/// (the only currency its cover can be reserved in).
pub async fn supplier_owner(
    registry: &Registry,
    principal: &Principal,
    supplier_id: Uuid,
    terms: &Terms,
) -> Result<String, ServiceError> {
    let supplier = registry.supplier(supplier_id).await?;
    if principal.role == Role::Supplier && supplier.owner != principal.subject {
        return Err(ServiceError::PermissionDenied(
            "a supplier creates drafts only for a supplier it owns".into(),
        ));
    }
    terms.check_cover_currency(&supplier_id.to_string(), supplier.limit_currency)?;
    Ok(supplier.owner)
}

fn new_version(
    contract_id: Uuid,
    version: u32,
    proto: &pb::ContractTerms,
    terms: &Terms,
    principal: &Principal,
    change_note: &str,
    now: OffsetDateTime,
) -> VersionRecord {
    VersionRecord {
        contract_id,
        version,
        terms: proto.encode_to_vec(),
        total: terms.total,
        created_by_principal_id: principal.subject.clone(),
        created_by_role: principal.role.as_str().into(),
        change_note: change_note.into(),
        created_at: now,
    }
}

pub async fn create_draft(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &CreateDraft,
    owner: &str,
    now: OffsetDateTime,
) -> Result<(pb::Contract, pb::ContractVersion), ServiceError> {
    let buyer = cmd
        .buyer_principal_id
        .as_deref()
        .unwrap_or(&principal.subject);
    if let Some(reference) = &cmd.external_reference
        && let Some(existing) = contract_with_reference(tx, buyer, reference).await?
    {
        return Err(ServiceError::AlreadyExists(format!(
            "contract {existing} already has the buyer's external reference {reference:?}"
        )));
    }
    let id = Uuid::now_v7();
    let mut record = ContractRecord {
        contract_id: id,
        buyer_principal_id: cmd
            .buyer_principal_id
            .clone()
            .unwrap_or_else(|| principal.subject.clone()),
        supplier_id: cmd.supplier_id,
        supplier_principal_id: owner.to_owned(),
        negotiation: Negotiation::new(cmd.terms.protection),
        status_before_dispute: None,
        total: cmd.terms.total,
        escrow_account_id: None,
        open_claim_id: None,
        activation_refusal: String::new(),
        cancellation_reason: String::new(),
        progress: Progress::default(),
        external_reference: cmd.external_reference.clone(),
        created_at: now,
        updated_at: now,
    };
    let version = new_version(id, 1, &cmd.proto, &cmd.terms, principal, "first draft", now);
    insert_contract(tx, &record, &version).await?;
    let view = flows
        .record(
            tx,
            &mut record,
            &Actor::of(principal),
            Step::new(
                pb::ContractEventType::DraftCreated,
                "draft.created",
                format!(
                    "draft \"{}\" created by the {}: {} ({})",
                    cmd.terms.title,
                    principal.role,
                    readable(cmd.terms.total),
                    match cmd.terms.protection {
                        Protection::TradeAssurance => "Trade Assurance",
                        Protection::None => "unprotected",
                    }
                ),
            ),
            now,
        )
        .await?;
    Ok((
        view,
        version_proto(&LoadedTerms {
            version,
            proto: cmd.proto.clone(),
            terms: cmd.terms.clone(),
        }),
    ))
}

/// What revising a draft and proposing an amendment share: the caller is a
/// party of the locked contract, `number` (the negotiation's number for the
/// new version) is taken, the version written, and the step `tell` says
/// (from the contract with its new number, its total still the one before)
/// is told.
pub(super) async fn write_new_version(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Revise,
    number: impl FnOnce(&mut ContractRecord) -> Result<u32, ServiceError>,
    tell: impl FnOnce(&ContractRecord, u32) -> Step<'static>,
    now: OffsetDateTime,
) -> Result<(pb::Contract, pb::ContractVersion), ServiceError> {
    let mut contract = lock_contract(tx, cmd.contract_id).await?;
    party_of(principal, &contract)?;
    let version = number(&mut contract)?;
    let told = tell(&contract, version);
    let record = new_version(
        cmd.contract_id,
        version,
        &cmd.proto,
        &cmd.terms,
        principal,
        &cmd.change_note,
        now,
    );
    insert_version(tx, &record).await?;
    let view = flows
        .record(tx, &mut contract, &Actor::of(principal), told, now)
        .await?;
    Ok((
        view,
        version_proto(&LoadedTerms {
            version: record,
            proto: cmd.proto.clone(),
            terms: cmd.terms.clone(),
        }),
    ))
}

/// A new version of the draft: signatures on earlier versions are void.
pub async fn revise_draft(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &Revise,
    now: OffsetDateTime,
) -> Result<(pb::Contract, pb::ContractVersion), ServiceError> {
    write_new_version(
        tx,
        flows,
        principal,
        cmd,
        |contract| {
            let version = contract.negotiation.revise(cmd.base_version)?;
            contract.negotiation.protection = cmd.terms.protection;
            contract.total = cmd.terms.total;
            Ok(version)
        },
        |_, version| {
            Step::new(
                pb::ContractEventType::DraftRevised,
                "draft.revised",
                format!(
                    "the {} revised the draft to version {version} ({}): {}; signatures on earlier versions are void",
                    principal.role,
                    readable(cmd.terms.total),
                    cmd.change_note
                ),
            )
        },
        now,
    )
    .await
}

/// A party signs version `cmd.version`; the second signature activates.
pub async fn sign(
    tx: &mut PgConnection,
    flows: &Flows,
    principal: &Principal,
    cmd: &ById,
    now: OffsetDateTime,
) -> Result<pb::Contract, ServiceError> {
    let mut contract = lock_contract(tx, cmd.contract_id).await?;
    let party = party_of(principal, &contract)?;
    let signed = contract
        .negotiation
        .sign(party, &principal.subject, cmd.version, now)?;
    let actor = Actor::of(principal);
    match signed {
        Signed::First => {
            flows
                .record(
                    tx,
                    &mut contract,
                    &actor,
                    Step::new(
                        pb::ContractEventType::Signed,
                        "contract.signed",
                        format!(
                            "the {} signed version {}; the other party's signature is awaited",
                            party.as_str(),
                            cmd.version
                        ),
                    ),
                    now,
                )
                .await
        }
        Signed::BothProtected | Signed::BothUnprotected => {
            both_signed(tx, flows, &mut contract, &actor, now).await
        }
    }
}
