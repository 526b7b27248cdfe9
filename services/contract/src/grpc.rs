//! The gRPC transport: parses each request (every bad field reported at
//! once), checks who may reach the contract (the proto's access option is
//! enforced by the server's auth layer; here only the per-resource rules: the
//! parties, the named agency, operators and services), runs mutations through
//! the shared pipeline (caller, key, one transaction, stored answer) and the
//! use cases in `app`, and answers in proto.

use std::{sync::Arc, time::Duration as StdDuration};

use prost::Message;
use sqlx::PgConnection;
use ta_proto::{
    common::TimelineEntry as PbTimelineEntry,
    contract::{self as pb, contract_service_server::ContractService},
    supplier::{
        GetSupplierRequest, supplier_registry_service_client::SupplierRegistryServiceClient,
    },
};
use ta_runtime::{
    ServiceError, Violations,
    auth::{self, Principal, Role},
    money::{Money, readable},
    paging,
    pipeline::Mutations,
    text::{optional_text, require_text, validate_reference},
    timestamps,
};
use ta_workflow::{
    config::FeedConfig, credentials::ServiceCredentials, feed::EventStream, peers::Peers,
};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    app,
    domain::{
        fulfilment::{check_inspection_results, check_shipment},
        negotiation::{Amended, Negotiation, Party, Protection, Signed},
        quality::Outcome,
        status::{Action, Status as ContractState},
        terms::Terms,
    },
    flows::{
        self, ACCEPTANCE_DUE, Actor, Flows, LoadedTerms, SHIPMENT_DUE, Step, contract_proto,
        current_version, load_terms, version_proto,
    },
    storage::{self, ContractFilter, ContractRecord, ReportRecord, ShipmentRecord, VersionRecord},
};

const MAX_NOTE: usize = 1000;

/// Reads a supplier's owner from supplier-registry when a draft is created,
/// so escrow and dispute can check ownership without calling back.
pub struct Registry {
    pub peers: Peers,
    pub credentials: Arc<ServiceCredentials>,
    pub timeout: StdDuration,
}

impl Registry {
    async fn owner_of(&self, supplier_id: Uuid) -> Result<String, ServiceError> {
        let channel = self
            .peers
            .channel(flows::SUPPLIER_REGISTRY)
            .ok_or_else(|| {
                ServiceError::Unavailable("supplier-registry's address is not configured".into())
            })?;
        let bearer = self
            .credentials
            .bearer(flows::SUPPLIER_REGISTRY)
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
                .map(|s| s.owner_principal_id)
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

pub struct ContractApi {
    mutations: Mutations,
    flows: Arc<Flows>,
    registry: Registry,
    feed_config: FeedConfig,
    /// Inspection reports' files; none: UploadInspectionFile is unavailable.
    store: Option<ta_objects::Store>,
}

impl ContractApi {
    pub fn new(
        pool: sqlx::PgPool,
        flows: Arc<Flows>,
        registry: Registry,
        feed_config: FeedConfig,
    ) -> Self {
        Self {
            mutations: Mutations::new(pool, storage::SCHEMA),
            flows,
            registry,
            feed_config,
            store: None,
        }
    }

    /// Where inspection reports' files go (UploadInspectionFile).
    #[must_use]
    pub fn with_store(mut self, store: ta_objects::Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Every file a report's results name is in the store: a report cannot
    /// point at evidence nobody can download.
    async fn check_report_files(
        &self,
        results: &[pb::CriterionResult],
    ) -> Result<(), ServiceError> {
        let mut v = Violations::new();
        for (i, result) in results.iter().enumerate() {
            for (j, reference) in result.evidence_sha256.iter().enumerate() {
                let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
                let stored = match &self.store {
                    Some(store) => store.contains(hex).await?,
                    None => false,
                };
                if !stored {
                    v.add(
                        format!("results[{i}].evidence_sha256[{j}]"),
                        "no file with this SHA-256 is stored: upload it with UploadInspectionFile first",
                    );
                }
            }
        }
        v.finish(())
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.mutations.pool()
    }

    fn day(&self) -> time::Duration {
        self.flows.settings.day
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

fn contract_id(value: &str, v: &mut Violations) -> Uuid {
    Uuid::parse_str(value).unwrap_or_else(|_| {
        v.add("contract_id", "must be a contract id (UUID)");
        Uuid::nil()
    })
}

fn version_number(field: &str, value: u32, v: &mut Violations) -> u32 {
    if value == 0 {
        v.add(field, "must be a version number (1 or more)");
    }
    value
}

fn past_or_now(
    field: &str,
    at: Option<&prost_types::Timestamp>,
    now: OffsetDateTime,
    v: &mut Violations,
) -> OffsetDateTime {
    match at {
        None => now,
        Some(at) => match timestamps::from_proto(at) {
            Some(at) if at <= now => at,
            Some(_) => {
                v.add(field, "must not be in the future");
                now
            }
            None => {
                v.add(field, "is not a valid timestamp");
                now
            }
        },
    }
}

/// The parse recorded why in its violations; the pipeline reports them.
fn recorded() -> ServiceError {
    ServiceError::InvalidArgument(Vec::new())
}

fn finish(v: Violations) -> Result<(), ServiceError> {
    v.finish(())
}

// ---- Who may see what ------------------------------------------------------

fn not_party() -> ServiceError {
    ServiceError::PermissionDenied("the caller is not a party to this contract".into())
}

/// The caller's side of the contract, if it is a party.
fn party_of(principal: &Principal, contract: &ContractRecord) -> Result<Party, ServiceError> {
    match principal.role {
        Role::Buyer if principal.subject == contract.buyer_principal_id => Ok(Party::Buyer),
        Role::Supplier if principal.subject == contract.supplier_principal_id => {
            Ok(Party::Supplier)
        }
        _ => Err(not_party()),
    }
}

fn require_party(
    principal: &Principal,
    contract: &ContractRecord,
    wanted: Party,
) -> Result<(), ServiceError> {
    let party = party_of(principal, contract)?;
    if party != wanted {
        return Err(ServiceError::PermissionDenied(format!(
            "only the contract's {} may do this",
            wanted.as_str()
        )));
    }
    Ok(())
}

/// The parties, the agency named for inspection, operators and services.
fn check_can_read(principal: &Principal, contract: &ContractRecord) -> Result<(), ServiceError> {
    match principal.role {
        Role::Operator | Role::Service => Ok(()),
        Role::Inspector
            if !contract.progress.inspection_agency.is_empty()
                && contract.progress.inspection_agency == principal.subject =>
        {
            Ok(())
        }
        Role::Buyer | Role::Supplier => party_of(principal, contract).map(|_| ()),
        Role::Inspector => Err(ServiceError::PermissionDenied(
            "only the inspection agency named in the signed terms reads this contract".into(),
        )),
    }
}

fn contract_token(c: &ContractRecord) -> String {
    paging::token(
        "contracts",
        &[
            &c.created_at.unix_timestamp_nanos().to_string(),
            &c.contract_id.to_string(),
        ],
    )
}

fn time_cursor(fields: &[&str]) -> Option<(OffsetDateTime, Uuid)> {
    let [nanos, id] = fields else { return None };
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?;
    Some((at, Uuid::parse_str(id).ok()?))
}

// ---- Commands ----------------------------------------------------------------

struct CreateDraft {
    supplier_id: Uuid,
    buyer_principal_id: Option<String>,
    proto: pb::ContractTerms,
    terms: Terms,
}

struct Revise {
    contract_id: Uuid,
    base_version: u32,
    proto: pb::ContractTerms,
    terms: Terms,
    change_note: String,
}

impl Revise {
    /// A new version's request: the contract, the version it builds on, the
    /// whole terms and why they change.
    fn parse(
        contract: &str,
        base_version: u32,
        sent: Option<&pb::ContractTerms>,
        change_note: &str,
        (now, day): (OffsetDateTime, time::Duration),
        v: &mut Violations,
    ) -> Result<Self, ServiceError> {
        let contract_id = contract_id(contract, v);
        let base_version = version_number("base_version", base_version, v);
        let change_note = require_text("change_note", change_note, MAX_NOTE, v);
        let terms = Terms::validate(sent, "terms", now, Some(day), v).ok_or_else(recorded)?;
        Ok(Self {
            contract_id,
            base_version,
            proto: terms_proto_with_figures(&terms, sent),
            terms,
            change_note,
        })
    }
}

struct ById {
    contract_id: Uuid,
    version: u32,
    text: String,
}

struct Inspect {
    contract_id: Uuid,
    agency_reference: String,
    inspected_at: OffsetDateTime,
    results: Vec<pb::CriterionResult>,
    summary: String,
}

struct Ship {
    contract_id: Uuid,
    carrier: String,
    tracking_number: String,
    shipped_at: OffsetDateTime,
    r#final: bool,
}

struct ClaimOpen {
    contract_id: Uuid,
    claim_id: String,
    reason: crate::domain::fulfilment::ClaimReason,
}

struct ClaimClose {
    contract_id: Uuid,
    claim_id: String,
    closure: pb::ClaimClosure,
    refunded: Option<ta_proto::common::Money>,
    new_shipment_deadline: Option<OffsetDateTime>,
}

fn terms_proto_with_figures(terms: &Terms, sent: Option<&pb::ContractTerms>) -> pb::ContractTerms {
    let mut proto = sent.cloned().unwrap_or_default();
    terms.stamp(&mut proto);
    proto
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

fn step(event: pb::ContractEventType, action: &'static str, detail: String) -> Step<'static> {
    Step {
        event,
        action,
        detail,
        money: None,
    }
}

/// The states in which goods have not shipped yet but the contract is signed.
pub(crate) fn before_shipment(status: ContractState) -> bool {
    matches!(
        status,
        ContractState::AwaitingPayment
            | ContractState::PartiallyFunded
            | ContractState::Funded
            | ContractState::SignedUnprotected
    )
}

#[tonic::async_trait]
impl ContractService for ContractApi {
    async fn create_contract_draft(
        &self,
        request: Request<pb::CreateContractDraftRequest>,
    ) -> Result<Response<pb::CreateContractDraftResponse>, Status> {
        // A retry after success replays before the supplier is read again
        // or the terms are checked against a later clock.
        if let Some(answer) = self.mutations.replayed(&request).await? {
            return Ok(answer);
        }
        let now = timestamps::now();
        let day = self.day();
        let prepared = self.mutations.prepare(request, |req, principal, v| {
            let supplier_id = Uuid::parse_str(&req.supplier_id).unwrap_or_else(|_| {
                v.add("supplier_id", "must be a supplier id (UUID)");
                Uuid::nil()
            });
            let buyer_principal_id = match principal.role {
                Role::Buyer => {
                    if !req.buyer_principal_id.is_empty()
                        && req.buyer_principal_id != principal.subject
                    {
                        v.add(
                            "buyer_principal_id",
                            "must be empty or the caller: a buyer creates its own contracts",
                        );
                    }
                    None
                }
                _ => {
                    validate_reference("buyer_principal_id", &req.buyer_principal_id, v);
                    Some(req.buyer_principal_id.clone())
                }
            };
            let terms = Terms::validate(req.terms.as_ref(), "terms", now, Some(day), v);
            let terms = terms.ok_or_else(recorded)?;
            Ok(CreateDraft {
                supplier_id,
                buyer_principal_id,
                proto: terms_proto_with_figures(&terms, req.terms.as_ref()),
                terms,
            })
        })?;
        // A read of another service, before the transaction (a new key only:
        // a retry after success replayed above).
        let owner = self.registry.owner_of(prepared.command.supplier_id).await?;
        let principal = prepared.principal().clone();
        if principal.role == Role::Supplier && owner != principal.subject {
            return Err(ServiceError::PermissionDenied(
                "a supplier creates drafts only for a supplier it owns".into(),
            )
            .into());
        }
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let cmd = &prepared.command;
                    let id = Uuid::now_v7();
                    let mut record = ContractRecord {
                        contract_id: id,
                        buyer_principal_id: cmd
                            .buyer_principal_id
                            .clone()
                            .unwrap_or_else(|| principal.subject.clone()),
                        supplier_id: cmd.supplier_id,
                        supplier_principal_id: owner.clone(),
                        negotiation: Negotiation::new(cmd.terms.protection),
                        status_before_dispute: None,
                        total: cmd.terms.total,
                        escrow_account_id: None,
                        open_claim_id: None,
                        activation_refusal: String::new(),
                        cancellation_reason: String::new(),
                        progress: storage::Progress::default(),
                        created_at: now,
                        updated_at: now,
                    };
                    let version = new_version(
                        id,
                        1,
                        &cmd.proto,
                        &cmd.terms,
                        &principal,
                        "first draft",
                        now,
                    );
                    storage::insert_contract(tx, &record, &version).await?;
                    let view = self
                        .flows
                        .record(
                            tx,
                            &mut record,
                            &Actor::of(&principal),
                            step(
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
                    Ok(pb::CreateContractDraftResponse {
                        contract: Some(view),
                        version: Some(version_proto(&LoadedTerms {
                            version,
                            proto: cmd.proto.clone(),
                            terms: cmd.terms.clone(),
                        })),
                    })
                }
            })
            .await
    }

    async fn revise_contract_draft(
        &self,
        request: Request<pb::ReviseContractDraftRequest>,
    ) -> Result<Response<pb::ReviseContractDraftResponse>, Status> {
        // Deadlines are checked against the clock: a retry after success
        // replays before they are checked again.
        if let Some(answer) = self.mutations.replayed(&request).await? {
            return Ok(answer);
        }
        let now = timestamps::now();
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Revise::parse(
                &req.contract_id,
                req.base_version,
                req.terms.as_ref(),
                &req.change_note,
                (now, self.day()),
                v,
            )
        })?;
        self.mutations
            .execute(&prepared, || async |tx| {
                let cmd = &prepared.command;
                let principal = prepared.principal();
                let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                party_of(principal, &contract)?;
                let version = contract.negotiation.revise(cmd.base_version)?;
                contract.negotiation.protection = cmd.terms.protection;
                contract.total = cmd.terms.total;
                let record = new_version(
                    cmd.contract_id,
                    version,
                    &cmd.proto,
                    &cmd.terms,
                    principal,
                    &cmd.change_note,
                    now,
                );
                storage::insert_version(tx, &record).await?;
                let view = self
                    .flows
                    .record(
                        tx,
                        &mut contract,
                        &Actor::of(principal),
                        step(
                            pb::ContractEventType::DraftRevised,
                            "draft.revised",
                            format!(
                                "the {} revised the draft to version {version} ({}): {}; signatures on earlier versions are void",
                                principal.role,
                                readable(cmd.terms.total),
                                cmd.change_note
                            ),
                        ),
                        now,
                    )
                    .await?;
                Ok(pb::ReviseContractDraftResponse {
                    contract: Some(view),
                    version: Some(version_proto(&LoadedTerms {
                        version: record,
                        proto: cmd.proto.clone(),
                        terms: cmd.terms.clone(),
                    })),
                })
            })
            .await
    }

    async fn get_contract(
        &self,
        request: Request<pb::GetContractRequest>,
    ) -> Result<Response<pb::GetContractResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = contract_id(&req.contract_id, &mut v);
        finish(v)?;
        let day = self.day();
        self.read(async |conn| {
            let contract = storage::get_contract(conn, id).await?;
            check_can_read(&principal, &contract)?;
            let version = match req.version {
                0 => current_version(&contract),
                n if n <= contract.negotiation.latest_version => n,
                n => return Err(ServiceError::not_found("version of the contract", n)),
            };
            let loaded = load_terms(conn, id, version).await?;
            Ok(Response::new(pb::GetContractResponse {
                contract: Some(contract_proto(conn, &contract, day).await?),
                version: Some(version_proto(&loaded)),
            }))
        })
        .await
    }

    async fn list_contracts(
        &self,
        request: Request<pb::ListContractsRequest>,
    ) -> Result<Response<pb::ListContractsResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = paging::cursor(req.page.as_ref(), "contracts", &mut v, time_cursor);
        let mut filter = ContractFilter::default();
        if !req.supplier_id.is_empty() {
            match Uuid::parse_str(&req.supplier_id) {
                Ok(id) => filter.supplier_id = Some(id),
                Err(_) => v.add("supplier_id", "must be a supplier id (UUID)"),
            }
        }
        if !req.buyer_principal_id.is_empty() {
            validate_reference("buyer_principal_id", &req.buyer_principal_id, &mut v);
            filter.buyer_principal_id = Some(req.buyer_principal_id.clone());
        }
        for (i, status) in req.statuses.iter().enumerate() {
            match pb::ContractStatus::try_from(*status)
                .ok()
                .and_then(flows::status_from_proto)
            {
                Some(s) => filter.statuses.push(s),
                None => v.add(format!("statuses[{i}]"), "is not a contract status"),
            }
        }
        filter.protection = match pb::Protection::try_from(req.protection) {
            Ok(pb::Protection::Unspecified) => None,
            Ok(pb::Protection::TradeAssurance) => Some(Protection::TradeAssurance),
            Ok(pb::Protection::None) => Some(Protection::None),
            Err(_) => {
                v.add("protection", "is not a protection");
                None
            }
        };
        match principal.role {
            Role::Buyer => {
                if filter
                    .buyer_principal_id
                    .as_ref()
                    .is_some_and(|b| *b != principal.subject)
                {
                    return Err(ServiceError::PermissionDenied(
                        "a buyer lists only its own contracts".into(),
                    )
                    .into());
                }
                filter.buyer_principal_id = Some(principal.subject.clone());
            }
            Role::Supplier => filter.supplier_principal_id = Some(principal.subject.clone()),
            _ => {}
        }
        finish(v)?;
        let day = self.day();
        self.read(async |conn| {
            let rows = storage::list_contracts(conn, &filter, after, limit + 1).await?;
            let (rows, next) = paging::split_page(rows, limit, contract_token);
            let mut contracts = Vec::with_capacity(rows.len());
            for row in &rows {
                contracts.push(contract_proto(conn, row, day).await?);
            }
            Ok(Response::new(pb::ListContractsResponse {
                contracts,
                next_page_token: next,
            }))
        })
        .await
    }

    async fn sign_contract(
        &self,
        request: Request<pb::SignContractRequest>,
    ) -> Result<Response<pb::SignContractResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(ById {
                contract_id: contract_id(&req.contract_id, v),
                version: version_number("version", req.version, v),
                text: String::new(),
            })
        })?;
        self.mutations
            .execute(&prepared, || async |tx| {
                let now = timestamps::now();
                let cmd = &prepared.command;
                let principal = prepared.principal();
                let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                let party = party_of(principal, &contract)?;
                let signed =
                    contract
                        .negotiation
                        .sign(party, &principal.subject, cmd.version, now)?;
                let actor = Actor::of(principal);
                let view = match signed {
                    Signed::First => {
                        self.flows
                            .record(
                                tx,
                                &mut contract,
                                &actor,
                                step(
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
                            .await?
                    }
                    Signed::BothProtected | Signed::BothUnprotected => {
                        app::both_signed(tx, &self.flows, &mut contract, &actor, now).await?
                    }
                };
                Ok(pb::SignContractResponse {
                    contract: Some(view),
                })
            })
            .await
    }

    async fn propose_amendment(
        &self,
        request: Request<pb::ProposeAmendmentRequest>,
    ) -> Result<Response<pb::ProposeAmendmentResponse>, Status> {
        if let Some(answer) = self.mutations.replayed(&request).await? {
            return Ok(answer);
        }
        let now = timestamps::now();
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Revise::parse(
                &req.contract_id,
                req.base_version,
                req.terms.as_ref(),
                &req.change_note,
                (now, self.day()),
                v,
            )
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let cmd = &prepared.command;
                    let principal = prepared.principal();
                    let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                    party_of(principal, &contract)?;
                    if cmd.terms.protection != contract.negotiation.protection {
                        return Err(ServiceError::invalid(
                            "terms.protection",
                            "cannot change in an amendment",
                        ));
                    }
                    if cmd.terms.total.currency != contract.total.currency {
                        return Err(ServiceError::invalid(
                            "terms.line_items",
                            format!(
                                "must stay in the contract's currency, {}",
                                contract.total.currency
                            ),
                        ));
                    }
                    let version = contract.negotiation.propose_amendment(cmd.base_version)?;
                    let old_total = contract.total;
                    let record = new_version(
                        cmd.contract_id,
                        version,
                        &cmd.proto,
                        &cmd.terms,
                        principal,
                        &cmd.change_note,
                        now,
                    );
                    storage::insert_version(tx, &record).await?;
                    let view = self
                        .flows
                        .record(
                            tx,
                            &mut contract,
                            &Actor::of(principal),
                            step(
                                pb::ContractEventType::AmendmentProposed,
                                "amendment.proposed",
                                format!(
                                    "the {} proposed amendment {version} ({} -> {}): {}",
                                    principal.role,
                                    readable(old_total),
                                    readable(cmd.terms.total),
                                    cmd.change_note
                                ),
                            ),
                            now,
                        )
                        .await?;
                    Ok(pb::ProposeAmendmentResponse {
                        contract: Some(view),
                        version: Some(version_proto(&LoadedTerms {
                            version: record,
                            proto: cmd.proto.clone(),
                            terms: cmd.terms.clone(),
                        })),
                    })
                }
            })
            .await
    }

    async fn sign_amendment(
        &self,
        request: Request<pb::SignAmendmentRequest>,
    ) -> Result<Response<pb::SignAmendmentResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(ById {
                contract_id: contract_id(&req.contract_id, v),
                version: version_number("version", req.version, v),
                text: String::new(),
            })
        })?;
        self.mutations
            .execute(&prepared, || async |tx| {
                let now = timestamps::now();
                let cmd = &prepared.command;
                let principal = prepared.principal();
                let actor = Actor::of(principal);
                let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                let party = party_of(principal, &contract)?;
                let signed = contract.negotiation.sign_amendment(
                    party,
                    &principal.subject,
                    cmd.version,
                    now,
                )?;
                let view = match signed {
                    Amended::Both if contract.negotiation.protection == Protection::None => {
                        app::apply_amendment(tx, &self.flows, &mut contract, &actor, None, now)
                            .await?
                    }
                    Amended::Both => {
                        let amended = load_terms(tx, cmd.contract_id, cmd.version).await?;
                        self.flows
                            .adjust_cover(
                                tx,
                                &contract,
                                cmd.version,
                                amended.version.total,
                                flows::completion::COVER_ADJUSTED,
                            )
                            .await?;
                        self.flows
                            .record(
                                tx,
                                &mut contract,
                                &actor,
                                step(
                                    pb::ContractEventType::Signed,
                                    "amendment.signed",
                                    format!(
                                        "both parties signed amendment {}; cover moves to {} and the escrow schedule follows",
                                        cmd.version,
                                        readable(amended.version.total)
                                    ),
                                ),
                                now,
                            )
                            .await?
                    }
                    Amended::First => {
                        self.flows
                            .record(
                                tx,
                                &mut contract,
                                &actor,
                                step(
                                    pb::ContractEventType::Signed,
                                    "amendment.signed",
                                    format!(
                                        "the {} signed amendment {}; the other party's signature is awaited",
                                        party.as_str(),
                                        cmd.version
                                    ),
                                ),
                                now,
                            )
                            .await?
                    }
                };
                Ok(pb::SignAmendmentResponse {
                    contract: Some(view),
                })
            })
            .await
    }

    async fn withdraw_amendment(
        &self,
        request: Request<pb::WithdrawAmendmentRequest>,
    ) -> Result<Response<pb::WithdrawAmendmentResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(ById {
                contract_id: contract_id(&req.contract_id, v),
                version: version_number("version", req.version, v),
                text: require_text("reason", &req.reason, MAX_NOTE, v),
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let cmd = &prepared.command;
                    let principal = prepared.principal();
                    let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                    party_of(principal, &contract)?;
                    contract.negotiation.withdraw_amendment(cmd.version)?;
                    let in_force = contract.negotiation.signed_version;
                    let view = self
                        .flows
                        .record(
                            tx,
                            &mut contract,
                            &Actor::of(principal),
                            step(
                                pb::ContractEventType::AmendmentWithdrawn,
                                "amendment.withdrawn",
                                format!(
                                    "the {} withdrew amendment {}: {}; version {} stays in force",
                                    principal.role, cmd.version, cmd.text, in_force
                                ),
                            ),
                            now,
                        )
                        .await?;
                    Ok(pb::WithdrawAmendmentResponse {
                        contract: Some(view),
                    })
                }
            })
            .await
    }

    async fn cancel_contract(
        &self,
        request: Request<pb::CancelContractRequest>,
    ) -> Result<Response<pb::CancelContractResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(ById {
                contract_id: contract_id(&req.contract_id, v),
                version: 0,
                text: require_text("reason", &req.reason, MAX_NOTE, v),
            })
        })?;
        self.mutations
            .execute(&prepared, || async |tx| {
                let now = timestamps::now();
                let cmd = &prepared.command;
                let principal = prepared.principal();
                let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                if principal.role != Role::Operator {
                    let party = party_of(principal, &contract)?;
                    if contract.negotiation.status == ContractState::Funded
                        && party == Party::Buyer
                        && !contract.progress.shipment_overdue
                    {
                        return Err(ServiceError::FailedPrecondition(
                            "the contract is funded: the buyer may cancel only once the shipment deadline passed unshipped"
                                .into(),
                        ));
                    }
                }
                let view = app::cancel(
                    tx,
                    &self.flows,
                    &mut contract,
                    &Actor::of(principal),
                    &cmd.text,
                    now,
                )
                .await?;
                Ok(pb::CancelContractResponse {
                    contract: Some(view),
                })
            })
            .await
    }

    async fn submit_inspection_report(
        &self,
        request: Request<pb::SubmitInspectionReportRequest>,
    ) -> Result<Response<pb::SubmitInspectionReportResponse>, Status> {
        let now = timestamps::now();
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let contract_id = contract_id(&req.contract_id, v);
            validate_reference("agency_reference", &req.agency_reference, v);
            if req.inspected_at.is_none() {
                v.add("inspected_at", "is required");
            }
            let inspected_at = past_or_now("inspected_at", req.inspected_at.as_ref(), now, v);
            if req.results.is_empty() {
                v.add("results", "needs one result per quality criterion");
            }
            for (i, result) in req.results.iter().enumerate() {
                optional_text(&format!("results[{i}].note"), &result.note, MAX_NOTE, v);
                for (j, hash) in result.evidence_sha256.iter().enumerate() {
                    if !is_sha256_ref(hash) {
                        v.add(
                            format!("results[{i}].evidence_sha256[{j}]"),
                            "must be sha256:<64 lowercase hex digits>",
                        );
                    }
                }
            }
            let summary = optional_text("summary", &req.summary, MAX_NOTE, v);
            Ok(Inspect {
                contract_id,
                agency_reference: req.agency_reference.clone(),
                inspected_at,
                results: req.results.clone(),
                summary,
            })
        })?;
        self.mutations
            .execute(&prepared, || async |tx| {
                let cmd = &prepared.command;
                let principal = prepared.principal();
                let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                if contract.progress.inspection_agency.is_empty()
                    || contract.progress.inspection_agency != principal.subject
                {
                    return Err(ServiceError::PermissionDenied(
                        "only the inspection agency named in the signed terms reports on this contract"
                            .into(),
                    ));
                }
                if !before_shipment(contract.negotiation.status) {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "the contract is {}: inspection reports are filed between signing and shipment",
                        contract.negotiation.status.as_str()
                    )));
                }
                self.check_report_files(&cmd.results).await?;
                let version = contract.negotiation.signed_version;
                let loaded = load_terms(tx, cmd.contract_id, version).await?;
                let mut v = Violations::new();
                let checked = check_inspection_results(&cmd.results, &loaded.terms, &mut v);
                let checked = v.finish_some("results", checked)?;
                let report_id = Uuid::now_v7();
                let report = pb::InspectionReport {
                    report_id: report_id.to_string(),
                    contract_id: cmd.contract_id.to_string(),
                    contract_version: version,
                    agency_reference: cmd.agency_reference.clone(),
                    inspected_at: Some(timestamps::to_proto(cmd.inspected_at)),
                    results: cmd.results.clone(),
                    passed: checked.passed,
                    summary: cmd.summary.clone(),
                    submitted_by: Some(Actor::of(principal).to_proto()),
                    submitted_at: Some(timestamps::to_proto(now)),
                };
                storage::insert_report(
                    tx,
                    cmd.contract_id,
                    &ReportRecord {
                        report_id,
                        contract_version: version,
                        report: report.encode_to_vec(),
                        passed: checked.passed,
                        submitted_at: now,
                    },
                )
                .await?;
                let failed: Vec<&str> = checked
                    .results
                    .iter()
                    .filter(|r| r.outcome == Outcome::Fail)
                    .map(|r| r.criterion_id.as_str())
                    .collect();
                let detail = if checked.passed {
                    format!(
                        "inspection report {} by {}: passed every criterion; the goods may ship",
                        cmd.agency_reference, principal.subject
                    )
                } else {
                    format!(
                        "inspection report {} by {}: FAILED {}; shipment waits for a passing re-inspection",
                        cmd.agency_reference,
                        principal.subject,
                        failed.join(", ")
                    )
                };
                let view = self
                    .flows
                    .record(
                        tx,
                        &mut contract,
                        &Actor::of(principal),
                        step(
                            pb::ContractEventType::InspectionReported,
                            "inspection.reported",
                            detail,
                        ),
                        now,
                    )
                    .await?;
                Ok(pb::SubmitInspectionReportResponse {
                    report: Some(report),
                    contract: Some(view),
                })
            })
            .await
    }

    async fn list_inspection_assignments(
        &self,
        request: Request<pb::ListInspectionAssignmentsRequest>,
    ) -> Result<Response<pb::ListInspectionAssignmentsResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = paging::cursor(req.page.as_ref(), "assignments", &mut v, time_cursor);
        let agency = match principal.role {
            Role::Inspector => {
                if !req.agency_principal_id.is_empty()
                    && req.agency_principal_id != principal.subject
                {
                    return Err(ServiceError::PermissionDenied(
                        "an inspector lists only its own agency's assignments".into(),
                    )
                    .into());
                }
                principal.subject.clone()
            }
            _ => {
                validate_reference("agency_principal_id", &req.agency_principal_id, &mut v);
                req.agency_principal_id.clone()
            }
        };
        finish(v)?;
        let day = self.day();
        self.read(async |conn| {
            let rows = storage::inspection_assignments(conn, &agency, after, limit + 1).await?;
            let (rows, next) = paging::split_page(rows, limit, |c| {
                paging::token(
                    "assignments",
                    &[
                        &c.progress
                            .shipment_deadline
                            .unwrap_or(c.created_at)
                            .unix_timestamp_nanos()
                            .to_string(),
                        &c.contract_id.to_string(),
                    ],
                )
            });
            let mut contracts = Vec::with_capacity(rows.len());
            for row in &rows {
                contracts.push(contract_proto(conn, row, day).await?);
            }
            Ok(Response::new(pb::ListInspectionAssignmentsResponse {
                contracts,
                next_page_token: next,
            }))
        })
        .await
    }

    async fn list_inspection_reports(
        &self,
        request: Request<pb::ListInspectionReportsRequest>,
    ) -> Result<Response<pb::ListInspectionReportsResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = contract_id(&req.contract_id, &mut v);
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = paging::cursor(req.page.as_ref(), "reports", &mut v, time_cursor);
        finish(v)?;
        self.read(async |conn| {
            let contract = storage::get_contract(conn, id).await?;
            check_can_read(&principal, &contract)?;
            let rows = storage::reports(conn, id, after, limit + 1).await?;
            let (rows, next) = paging::split_page(rows, limit, |r| {
                paging::token(
                    "reports",
                    &[
                        &r.submitted_at.unix_timestamp_nanos().to_string(),
                        &r.report_id.to_string(),
                    ],
                )
            });
            Ok(Response::new(pb::ListInspectionReportsResponse {
                reports: rows
                    .iter()
                    .map(flows::report_proto)
                    .collect::<Result<_, _>>()?,
                next_page_token: next,
            }))
        })
        .await
    }

    async fn record_shipment(
        &self,
        request: Request<pb::RecordShipmentRequest>,
    ) -> Result<Response<pb::RecordShipmentResponse>, Status> {
        let now = timestamps::now();
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(Ship {
                contract_id: contract_id(&req.contract_id, v),
                carrier: require_text("carrier", &req.carrier, 100, v),
                tracking_number: require_text("tracking_number", &req.tracking_number, 100, v),
                shipped_at: past_or_now("shipped_at", req.shipped_at.as_ref(), now, v),
                r#final: req.r#final,
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let cmd = &prepared.command;
                    let principal = prepared.principal();
                    let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                    require_party(principal, &contract, Party::Supplier)?;
                    let next = contract.negotiation.status.next(Action::Ship)?;
                    let mut loaded =
                        load_terms(tx, cmd.contract_id, contract.negotiation.signed_version)
                            .await?;
                    if let Some(deadline) = contract.progress.shipment_deadline {
                        loaded.terms.shipment_deadline = deadline;
                    }
                    let latest = storage::latest_report(tx, cmd.contract_id).await?;
                    let late =
                        check_shipment(&loaded.terms, latest.map(|r| r.passed), cmd.shipped_at)?;
                    storage::insert_shipment(
                        tx,
                        cmd.contract_id,
                        &ShipmentRecord {
                            carrier: cmd.carrier.clone(),
                            tracking_number: cmd.tracking_number.clone(),
                            shipped_at: cmd.shipped_at,
                            late,
                            r#final: cmd.r#final,
                        },
                    )
                    .await?;
                    let lateness = if late {
                        " LATE (after the shipment deadline)"
                    } else {
                        ""
                    };
                    let detail = if cmd.r#final {
                        contract.negotiation.status = next;
                        self.flows
                            .timers
                            .cancel(tx, SHIPMENT_DUE, &cmd.contract_id.to_string())
                            .await?;
                        let due = loaded.terms.delivery_deadline
                            + self.day() * loaded.terms.inspection_period_days;
                        contract.progress.acceptance_due_at = Some(due);
                        self.flows
                            .schedule_at(tx, ACCEPTANCE_DUE, cmd.contract_id, due, now)
                            .await?;
                        format!(
                            "shipped{lateness} with {} ({}); the goods must arrive by {}",
                            cmd.carrier,
                            cmd.tracking_number,
                            flows::readable_time(loaded.terms.delivery_deadline)
                        )
                    } else {
                        format!(
                            "part shipment{lateness} with {} ({}); more follow",
                            cmd.carrier, cmd.tracking_number
                        )
                    };
                    let view = self
                        .flows
                        .record(
                            tx,
                            &mut contract,
                            &Actor::of(principal),
                            step(pb::ContractEventType::Shipped, "goods.shipped", detail),
                            now,
                        )
                        .await?;
                    Ok(pb::RecordShipmentResponse {
                        contract: Some(view),
                    })
                }
            })
            .await
    }

    async fn confirm_receipt(
        &self,
        request: Request<pb::ConfirmReceiptRequest>,
    ) -> Result<Response<pb::ConfirmReceiptResponse>, Status> {
        let now = timestamps::now();
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(Ship {
                contract_id: contract_id(&req.contract_id, v),
                carrier: String::new(),
                tracking_number: String::new(),
                shipped_at: past_or_now("received_at", req.received_at.as_ref(), now, v),
                r#final: true,
            })
        })?;
        self.mutations
            .execute(&prepared, || async |tx| {
                let now = timestamps::now();
                let cmd = &prepared.command;
                let received_at = cmd.shipped_at;
                let principal = prepared.principal();
                let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                require_party(principal, &contract, Party::Buyer)?;
                contract.negotiation.status =
                    contract.negotiation.status.next(Action::ConfirmReceipt)?;
                let shipped_at = storage::shipments(tx, cmd.contract_id)
                    .await?
                    .into_iter()
                    .find(|s| s.r#final)
                    .map(|s| s.shipped_at);
                if shipped_at.is_some_and(|s| received_at < s) {
                    return Err(ServiceError::invalid(
                        "received_at",
                        "must not be before the shipment",
                    ));
                }
                let loaded =
                    load_terms(tx, cmd.contract_id, contract.negotiation.signed_version).await?;
                let due = flows::acceptance_after_receipt(&loaded.terms, received_at, self.day());
                contract.progress.received_at = Some(received_at);
                contract.progress.acceptance_due_at = Some(due);
                self.flows
                    .schedule_at(tx, ACCEPTANCE_DUE, cmd.contract_id, due, now)
                    .await?;
                let window_ends = received_at + self.day() * loaded.terms.claim_window_days;
                let view = self
                    .flows
                    .record(
                        tx,
                        &mut contract,
                        &Actor::of(principal),
                        step(
                            pb::ContractEventType::ReceiptConfirmed,
                            "goods.received",
                            format!(
                                "the buyer confirmed receipt; claims about the goods are possible until {}, and the goods count as accepted at {} unless claimed",
                                flows::readable_time(window_ends),
                                flows::readable_time(due)
                            ),
                        ),
                        now,
                    )
                    .await?;
                Ok(pb::ConfirmReceiptResponse {
                    contract: Some(view),
                })
            })
            .await
    }

    async fn accept_goods(
        &self,
        request: Request<pb::AcceptGoodsRequest>,
    ) -> Result<Response<pb::AcceptGoodsResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(ById {
                contract_id: contract_id(&req.contract_id, v),
                version: 0,
                text: optional_text("note", &req.note, MAX_NOTE, v),
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let cmd = &prepared.command;
                    let principal = prepared.principal();
                    let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                    require_party(principal, &contract, Party::Buyer)?;
                    let view = app::accept(
                        tx,
                        &self.flows,
                        &mut contract,
                        &Actor::of(principal),
                        "explicit",
                        &cmd.text,
                        now,
                    )
                    .await?;
                    Ok(pb::AcceptGoodsResponse {
                        contract: Some(view),
                    })
                }
            })
            .await
    }

    async fn get_contract_timeline(
        &self,
        request: Request<pb::GetContractTimelineRequest>,
    ) -> Result<Response<pb::GetContractTimelineResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = contract_id(&req.contract_id, &mut v);
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = paging::cursor(req.page.as_ref(), "timeline", &mut v, |fields| {
            fields.first().and_then(|f| f.parse::<u32>().ok())
        })
        .unwrap_or(0);
        finish(v)?;
        self.read(async |conn| {
            let contract = storage::get_contract(conn, id).await?;
            if principal.role == Role::Inspector {
                return Err(not_party());
            }
            check_can_read(&principal, &contract)?;
            let limit_u32 = u32::try_from(limit).unwrap_or(100);
            let rows = storage::timeline(conn, id, after, limit_u32 + 1).await?;
            let (rows, next) = paging::split_page(rows, limit, |e| {
                paging::token("timeline", &[&e.entry.to_string()])
            });
            Ok(Response::new(pb::GetContractTimelineResponse {
                entries: rows
                    .into_iter()
                    .map(|e| PbTimelineEntry {
                        occurred_at: Some(timestamps::to_proto(e.occurred_at)),
                        actor: Some(Actor::stored(e.actor_principal_id, &e.actor_role).to_proto()),
                        action: e.kind,
                        detail: e.description,
                        money: e.money.map(Money::to_proto),
                    })
                    .collect(),
                next_page_token: next,
            }))
        })
        .await
    }

    async fn upload_inspection_file(
        &self,
        request: Request<tonic::Streaming<pb::UploadInspectionFileRequest>>,
    ) -> Result<Response<pb::UploadInspectionFileResponse>, Status> {
        let Some(store) = &self.store else {
            return Err(Status::unavailable("this server keeps no inspection files"));
        };
        crate::files::upload(self.pool(), store, request)
            .await
            .map(Response::new)
    }

    type StreamContractEventsStream = EventStream<pb::StreamContractEventsResponse>;

    async fn stream_contract_events(
        &self,
        request: Request<pb::StreamContractEventsRequest>,
    ) -> Result<Response<Self::StreamContractEventsStream>, Status> {
        let after = request.into_inner().after_sequence;
        let stream = self.flows.feed.stream_events(
            self.pool().clone(),
            after,
            &self.feed_config,
            |mut event: pb::ContractEvent, sequence, _| {
                event.sequence = sequence;
                pb::StreamContractEventsResponse { event: Some(event) }
            },
            pb::StreamContractEventsResponse::default,
        );
        Ok(Response::new(stream))
    }

    async fn record_claim_opened(
        &self,
        request: Request<pb::RecordClaimOpenedRequest>,
    ) -> Result<Response<pb::RecordClaimOpenedResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let contract_id = contract_id(&req.contract_id, v);
            validate_reference("claim_id", &req.claim_id, v);
            let reason = app::claim_reason(req.reason());
            if reason.is_none() {
                v.add("reason", "is required");
            }
            let reason = reason.ok_or_else(recorded)?;
            Ok(ClaimOpen {
                contract_id,
                claim_id: req.claim_id.clone(),
                reason,
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let cmd = &prepared.command;
                    let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                    let view = app::record_claim_opened(
                        tx,
                        &self.flows,
                        &mut contract,
                        &Actor::of(prepared.principal()),
                        &cmd.claim_id,
                        cmd.reason,
                        now,
                    )
                    .await?;
                    Ok(pb::RecordClaimOpenedResponse {
                        contract: Some(view),
                    })
                }
            })
            .await
    }

    async fn confirm_claim_opened(
        &self,
        request: Request<pb::ConfirmClaimOpenedRequest>,
    ) -> Result<Response<pb::ConfirmClaimOpenedResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            validate_reference("claim_id", &req.claim_id, v);
            Ok(ById {
                contract_id: contract_id(&req.contract_id, v),
                version: 0,
                text: req.claim_id.clone(),
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let cmd = &prepared.command;
                    let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                    let view = app::confirm_claim_opened(
                        tx,
                        &self.flows,
                        &mut contract,
                        &Actor::of(prepared.principal()),
                        &cmd.text,
                        now,
                    )
                    .await?;
                    Ok(pb::ConfirmClaimOpenedResponse {
                        contract: Some(view),
                    })
                }
            })
            .await
    }

    async fn abandon_claim_opening(
        &self,
        request: Request<pb::AbandonClaimOpeningRequest>,
    ) -> Result<Response<pb::AbandonClaimOpeningResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            validate_reference("claim_id", &req.claim_id, v);
            let reason = require_text("reason", &req.reason, MAX_NOTE, v);
            Ok((
                ById {
                    contract_id: contract_id(&req.contract_id, v),
                    version: 0,
                    text: req.claim_id.clone(),
                },
                reason,
            ))
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let (cmd, reason) = &prepared.command;
                    let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                    let view = app::abandon_claim_opening(
                        tx,
                        &self.flows,
                        &mut contract,
                        &Actor::of(prepared.principal()),
                        &cmd.text,
                        reason,
                        now,
                    )
                    .await?;
                    Ok(pb::AbandonClaimOpeningResponse {
                        contract: Some(view),
                    })
                }
            })
            .await
    }

    async fn record_claim_closed(
        &self,
        request: Request<pb::RecordClaimClosedRequest>,
    ) -> Result<Response<pb::RecordClaimClosedResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let contract_id = contract_id(&req.contract_id, v);
            validate_reference("claim_id", &req.claim_id, v);
            let closure = req.closure();
            if closure == pb::ClaimClosure::Unspecified {
                v.add("closure", "is required");
            }
            let new_shipment_deadline = match req.new_shipment_deadline.as_ref() {
                None => None,
                Some(at) => {
                    let parsed = timestamps::from_proto(at);
                    if parsed.is_none() {
                        v.add("new_shipment_deadline", "is not a valid timestamp");
                    }
                    parsed
                }
            };
            Ok(ClaimClose {
                contract_id,
                claim_id: req.claim_id.clone(),
                closure,
                refunded: req.refunded.clone(),
                new_shipment_deadline,
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let cmd = &prepared.command;
                    let mut contract = storage::lock_contract(tx, cmd.contract_id).await?;
                    let refunded = match &cmd.refunded {
                        Some(m) if m.amount_minor != 0 => {
                            let mut v = Violations::new();
                            let money = Money::positive_from_proto("refunded", Some(m), &mut v);
                            let money = v.finish_some("refunded", money)?;
                            if money.currency != contract.total.currency {
                                return Err(ServiceError::invalid(
                                    "refunded.currency_code",
                                    format!(
                                        "must be the contract's currency, {}",
                                        contract.total.currency
                                    ),
                                ));
                            }
                            Some(money)
                        }
                        _ => None,
                    };
                    let view = app::record_claim_closed(
                        tx,
                        &self.flows,
                        &mut contract,
                        &Actor::of(prepared.principal()),
                        &app::ClaimClosed {
                            claim_id: &cmd.claim_id,
                            closure: cmd.closure,
                            refunded,
                            new_shipment_deadline: cmd.new_shipment_deadline,
                        },
                        now,
                    )
                    .await?;
                    Ok(pb::RecordClaimClosedResponse {
                        contract: Some(view),
                    })
                }
            })
            .await
    }
}

fn is_sha256_ref(value: &str) -> bool {
    value.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}
