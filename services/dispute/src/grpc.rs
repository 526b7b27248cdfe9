//! The gRPC transport: parses each request (every bad field reported at
//! once), checks who may reach the claim (the proto's access option is
//! enforced by the server's auth layer; here the per-claim rules: the
//! contract's buyer, the owner of its supplier, operators), runs mutations
//! through the shared pipeline (caller, key, one transaction, stored answer)
//! and the use cases in `app`, and answers in proto.

use std::{pin::Pin, sync::Arc, time::Duration as StdDuration};

use futures_util::{Stream, StreamExt};
use sqlx::PgConnection;
use ta_objects::{Kind, Store as EvidenceStore, is_sha256_hex};
use ta_proto::{
    common::TimelineEntry as PbTimelineEntry,
    contract::{self as contract_pb, contract_service_client::ContractServiceClient},
    dispute::{
        self as pb, dispute_service_server::DisputeService, download_evidence_response,
        upload_evidence_request,
    },
    escrow::{self as escrow_pb, escrow_service_client::EscrowServiceClient},
};
use ta_runtime::{
    ServiceError, Violations,
    auth::{self, Principal, Role},
    money::{Currency, Money},
    paging,
    pipeline::Mutations,
    text::{optional_text, require_text, validate_reference},
    timestamps,
};
use ta_workflow::{
    config::FeedConfig, credentials::ServiceCredentials, feed::EventStream, peers::Peers,
};
use time::OffsetDateTime;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::{
    app,
    domain::{
        claim::{Claim, Escalator, Outcome, Party, Policy, Reason, Remedy},
        status::Status as ClaimState,
    },
    flows::{self, Actor, Flows, claim_proto, readable, step},
    storage::{
        self,
        claims::{self, ClaimFilter, ClaimRecord},
        evidence::{self, EvidenceRecord},
        timeline,
    },
};

const MAX_TEXT: usize = 4000;
const MAX_REASON: usize = 2000;
const MAX_IDS: usize = 50;

/// Reads of the contract and its escrow account when a claim is filed, with
/// dispute's own service token.
pub struct Reads {
    pub peers: Peers,
    pub credentials: Arc<ServiceCredentials>,
    pub timeout: StdDuration,
}

impl Reads {
    fn request<T>(&self, target: &str, message: T) -> Result<Request<T>, ServiceError> {
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

    fn channel(&self, target: &str) -> Result<tonic::transport::Channel, ServiceError> {
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
        let mut client =
            ContractServiceClient::new(ta_runtime::client::traced(self.channel(flows::CONTRACT)?));
        let request = self.request(
            flows::CONTRACT,
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
                Err(ServiceError::not_found("contract", contract_id))
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                Err(ServiceError::invalid("contract_id", "is not a contract id"))
            }
            Err(status) => Err(Self::failed(flows::CONTRACT, &status)),
        }
    }

    async fn escrow_account(
        &self,
        escrow_account_id: &str,
    ) -> Result<escrow_pb::EscrowAccount, ServiceError> {
        let mut client =
            EscrowServiceClient::new(ta_runtime::client::traced(self.channel(flows::ESCROW)?));
        let request = self.request(
            flows::ESCROW,
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
            Err(status) => Err(Self::failed(flows::ESCROW, &status)),
        }
    }
}

pub struct DisputeApi {
    mutations: Mutations,
    flows: Arc<Flows>,
    reads: Reads,
    store: EvidenceStore,
    feed_config: FeedConfig,
}

impl DisputeApi {
    pub fn new(
        pool: sqlx::PgPool,
        flows: Arc<Flows>,
        reads: Reads,
        store: EvidenceStore,
        feed_config: FeedConfig,
    ) -> Self {
        Self {
            mutations: Mutations::new(pool, storage::SCHEMA),
            flows,
            reads,
            store,
            feed_config,
        }
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.mutations.pool()
    }

    fn policy(&self) -> &Policy {
        &self.flows.settings.policy
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

fn uuid_field(field: &str, value: &str, what: &str, v: &mut Violations) -> Uuid {
    Uuid::parse_str(value).unwrap_or_else(|_| {
        v.add(field, format!("must be {what} id (UUID)"));
        Uuid::nil()
    })
}

fn claim_id(value: &str, v: &mut Violations) -> Uuid {
    uuid_field("claim_id", value, "a claim", v)
}

fn references(field: &str, values: &[String], v: &mut Violations) -> Vec<String> {
    if values.len() > MAX_IDS {
        v.add(field, format!("at most {MAX_IDS}"));
    }
    for (i, value) in values.iter().enumerate() {
        validate_reference(&format!("{field}[{i}]"), value, v);
    }
    let mut out = values.to_vec();
    out.dedup();
    out
}

fn evidence_ids(field: &str, values: &[String], v: &mut Violations) -> Vec<Uuid> {
    if values.len() > MAX_IDS {
        v.add(field, format!("at most {MAX_IDS}"));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, value)| uuid_field(&format!("{field}[{i}]"), value, "an evidence", v))
        .collect()
}

fn finish(v: Violations) -> Result<(), ServiceError> {
    v.finish(())
}

fn time_cursor(fields: &[&str]) -> Option<(OffsetDateTime, Uuid)> {
    let [nanos, id] = fields else { return None };
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?;
    Some((at, Uuid::parse_str(id).ok()?))
}

fn time_token(kind: &str, at: OffsetDateTime, id: Uuid) -> String {
    paging::token(
        kind,
        &[&at.unix_timestamp_nanos().to_string(), &id.to_string()],
    )
}

// ---- Who may see what ------------------------------------------------------

fn not_party() -> ServiceError {
    ServiceError::PermissionDenied("the caller is not a party to this claim".into())
}

/// The claim's buyer, the owner of its supplier, operators and services.
fn check_can_read(principal: &Principal, claim: &ClaimRecord) -> Result<(), ServiceError> {
    match principal.role {
        Role::Operator | Role::Service => Ok(()),
        Role::Buyer if principal.subject == claim.buyer_principal_id => Ok(()),
        Role::Supplier if principal.subject == claim.supplier_principal_id => Ok(()),
        _ => Err(not_party()),
    }
}

fn require_buyer(principal: &Principal, claim: &ClaimRecord) -> Result<(), ServiceError> {
    if principal.role == Role::Buyer && principal.subject == claim.buyer_principal_id {
        Ok(())
    } else {
        Err(ServiceError::PermissionDenied(
            "only the claim's buyer may do this".into(),
        ))
    }
}

fn require_supplier(principal: &Principal, claim: &ClaimRecord) -> Result<(), ServiceError> {
    if principal.role == Role::Supplier && principal.subject == claim.supplier_principal_id {
        Ok(())
    } else {
        Err(ServiceError::PermissionDenied(
            "only the claim's supplier may do this".into(),
        ))
    }
}

fn is_open(claim: &ClaimRecord) -> bool {
    matches!(
        claim.claim.status,
        ClaimState::Negotiating | ClaimState::Escalated
    )
}

async fn check_counter_evidence(
    tx: &mut PgConnection,
    claim: &ClaimRecord,
    field: &str,
    ids: &[Uuid],
) -> Result<(), ServiceError> {
    let unknown = evidence::unknown_evidence(tx, claim.claim_id, ids).await?;
    match unknown.first() {
        None => Ok(()),
        Some(id) => Err(ServiceError::invalid(
            field,
            format!("{id} is not evidence of this claim"),
        )),
    }
}

async fn view(conn: &mut PgConnection, claim: &ClaimRecord) -> Result<pb::Claim, ServiceError> {
    let count = evidence::evidence_count(conn, claim.claim_id).await?;
    Ok(claim_proto(claim, count))
}

fn kind_proto(kind: &str) -> pb::EvidenceKind {
    match Kind::parse(kind) {
        Some(Kind::Photo) => pb::EvidenceKind::Photo,
        Some(Kind::Video) => pb::EvidenceKind::Video,
        Some(Kind::InspectionReport) => pb::EvidenceKind::InspectionReport,
        Some(Kind::Document) | None => pb::EvidenceKind::Document,
    }
}

fn evidence_proto(e: &EvidenceRecord) -> pb::Evidence {
    pb::Evidence {
        evidence_id: e.evidence_id.to_string(),
        metadata: Some(pb::EvidenceMetadata {
            claim_id: e.claim_id.to_string(),
            kind: kind_proto(&e.kind) as i32,
            filename: e.filename.clone(),
            content_type: e.content_type.clone(),
            size_bytes: u64::try_from(e.size_bytes).unwrap_or(0),
            sha256_hex: e.sha256_hex.clone(),
            description: e.description.clone(),
            quality_criterion_ids: e.quality_criterion_ids.clone(),
            resumable: false,
            resume_from: 0,
        }),
        uploaded_by: Some(
            Actor::stored(e.uploaded_by_principal_id.clone(), &e.uploaded_by_role).to_proto(),
        ),
        uploaded_at: Some(timestamps::to_proto(e.uploaded_at)),
    }
}

// ---- Commands ----------------------------------------------------------------

struct FileClaim {
    contract_id: String,
    reason: Reason,
    remedy: Remedy,
    quality_criterion_ids: Vec<String>,
    amount: Money,
    description: String,
}

struct Upload {
    claim_id: Uuid,
    kind: Kind,
    filename: String,
    content_type: String,
    size: u64,
    sha256_hex: String,
    description: String,
    quality_criterion_ids: Vec<String>,
    resumable: bool,
    resume_from: u64,
}

struct Respond {
    claim_id: Uuid,
    offer_id: String,
    reason: String,
    counter_evidence: Vec<Uuid>,
}

struct Decide {
    claim_id: Uuid,
    outcome: Outcome,
    reason: String,
    penalty_points: u32,
    new_shipment_deadline: Option<OffsetDateTime>,
}

/// An upload's metadata, checked against the kind's limits.
fn parse_upload(
    meta: Option<&pb::EvidenceMetadata>,
    store: &EvidenceStore,
    v: &mut Violations,
) -> Result<Upload, ServiceError> {
    let Some(meta) = meta else {
        v.add("metadata", "the first message carries the file's metadata");
        return Err(ServiceError::InvalidArgument(Vec::new()));
    };
    let claim_id = uuid_field("metadata.claim_id", &meta.claim_id, "a claim", v);
    let kind = match meta.kind() {
        pb::EvidenceKind::Photo => Some(Kind::Photo),
        pb::EvidenceKind::Video => Some(Kind::Video),
        pb::EvidenceKind::InspectionReport => Some(Kind::InspectionReport),
        pb::EvidenceKind::Document => Some(Kind::Document),
        pb::EvidenceKind::Unspecified => {
            v.add("metadata.kind", "is required");
            None
        }
    };
    let filename = require_text("metadata.filename", &meta.filename, 255, v);
    if filename.contains(['/', '\\']) {
        v.add("metadata.filename", "is a name, without a directory");
    }
    let content_type = meta.content_type.trim().to_ascii_lowercase();
    if let Some(kind) = kind {
        if !kind.content_types().contains(&content_type.as_str()) {
            v.add(
                "metadata.content_type",
                format!(
                    "a {} is one of {}",
                    kind.as_str(),
                    kind.content_types().join(", ")
                ),
            );
        }
        let max = store.limits.max_bytes(kind);
        if meta.size_bytes == 0 || meta.size_bytes > max {
            v.add(
                "metadata.size_bytes",
                format!("must be 1 to {max} bytes for a {}", kind.as_str()),
            );
        }
    }
    if !is_sha256_hex(&meta.sha256_hex) {
        v.add(
            "metadata.sha256_hex",
            "must be the file's SHA-256 in 64 lower-case hex digits",
        );
    }
    let description = optional_text("metadata.description", &meta.description, MAX_TEXT, v);
    let quality_criterion_ids = references(
        "metadata.quality_criterion_ids",
        &meta.quality_criterion_ids,
        v,
    );
    if meta.resume_from > 0 && (!meta.resumable || meta.resume_from >= meta.size_bytes) {
        v.add(
            "metadata.resume_from",
            "is for a resumable upload, below its size",
        );
    }
    let kind = kind.ok_or_else(|| ServiceError::InvalidArgument(Vec::new()))?;
    Ok(Upload {
        claim_id,
        kind,
        filename,
        content_type,
        size: meta.size_bytes,
        sha256_hex: meta.sha256_hex.clone(),
        description,
        quality_criterion_ids,
        resumable: meta.resumable,
        resume_from: meta.resume_from,
    })
}

fn respond(
    claim: &str,
    offer: &str,
    reason: &str,
    counter: &[String],
    v: &mut Violations,
) -> Respond {
    let claim_id = claim_id(claim, v);
    if !offer.is_empty() {
        uuid_field("offer_id", offer, "an offer", v);
    }
    Respond {
        claim_id,
        offer_id: offer.to_owned(),
        reason: require_text("reason", reason, MAX_REASON, v),
        counter_evidence: evidence_ids("counter_evidence_ids", counter, v),
    }
}

struct Proposal {
    claim_id: Uuid,
    outcome: Outcome,
    message: String,
}

fn parse_offer(
    claim: &str,
    kind: pb::OfferKind,
    refund_amount: Option<&ta_proto::common::Money>,
    message: &str,
    v: &mut Violations,
) -> Result<Proposal, ServiceError> {
    let claim_id = claim_id(claim, v);
    let message = optional_text("message", message, MAX_REASON, v);
    let outcome = match kind {
        pb::OfferKind::FullRefund => {
            if refund_amount.is_some() {
                v.add("refund_amount", "must be unset for a full refund");
            }
            Some(Outcome::FullRefund)
        }
        pb::OfferKind::PartialRefund => {
            Money::positive_from_proto("refund_amount", refund_amount, v)
                .map(Outcome::PartialRefund)
        }
        pb::OfferKind::Unspecified => {
            v.add("kind", "is required");
            None
        }
    };
    let outcome = outcome.ok_or_else(|| ServiceError::InvalidArgument(Vec::new()))?;
    Ok(Proposal {
        claim_id,
        outcome,
        message,
    })
}

/// The caller's side of the claim: its buyer or its supplier's owner.
fn party_of(principal: &Principal, claim: &ClaimRecord) -> Result<Party, ServiceError> {
    match principal.role {
        Role::Buyer if principal.subject == claim.buyer_principal_id => Ok(Party::Buyer),
        Role::Supplier if principal.subject == claim.supplier_principal_id => Ok(Party::Supplier),
        _ => Err(not_party()),
    }
}

impl DisputeApi {
    /// An offer (the supplier's) or a counter-offer (the buyer's).
    async fn propose(
        &self,
        tx: &mut PgConnection,
        principal: &Principal,
        cmd: &Proposal,
        by: Party,
    ) -> Result<(Option<pb::Claim>, Option<pb::Offer>), ServiceError> {
        let now = timestamps::now();
        let mut claim = claims::lock_claim(tx, cmd.claim_id).await?;
        match by {
            Party::Supplier => require_supplier(principal, &claim)?,
            Party::Buyer => require_buyer(principal, &claim)?,
        }
        let offer_id = Uuid::now_v7().to_string();
        match by {
            Party::Supplier => claim.claim.make_offer(&offer_id, cmd.outcome, now)?,
            Party::Buyer => claim.claim.counter_offer(&offer_id, cmd.outcome, now)?,
        }
        if let Some(offer) = claim.claim.offers.last_mut() {
            offer.message = cmd.message.clone();
        }
        let refund = match cmd.outcome {
            Outcome::PartialRefund(m) => m,
            _ => claim.claim.held,
        };
        let mut s = step(
            pb::DisputeEventType::OfferMade,
            match by {
                Party::Supplier => "offer.made",
                Party::Buyer => "offer.countered",
            },
            format!(
                "the {} {} {} {}{}",
                by.as_str(),
                match by {
                    Party::Supplier => "offers",
                    Party::Buyer => "counter-offers",
                },
                if matches!(cmd.outcome, Outcome::FullRefund) {
                    "a full refund of"
                } else {
                    "a partial refund of"
                },
                readable(refund),
                if cmd.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", cmd.message)
                }
            ),
        );
        s.money = Some(refund);
        let view = self
            .flows
            .record(tx, &mut claim, &Actor::of(principal), s, now)
            .await?;
        let offer = view.offers.last().cloned();
        Ok((Some(view), offer))
    }
}

type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<pb::DownloadEvidenceResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DisputeService for DisputeApi {
    async fn file_claim(
        &self,
        request: Request<pb::FileClaimRequest>,
    ) -> Result<Response<pb::FileClaimResponse>, Status> {
        // A retry after success replays before the contract and escrow are
        // read again (the contract is in dispute by then, escrow frozen).
        if let Some(answer) = self.mutations.replayed(&request).await? {
            return Ok(answer);
        }
        let prepared = self.mutations.prepare(request, |req, _, v| {
            validate_reference("contract_id", &req.contract_id, v);
            let reason = flows::reason_from_proto(req.reason());
            if reason.is_none() {
                v.add("reason", "is required");
            }
            let quality_criterion_ids =
                references("quality_criterion_ids", &req.quality_criterion_ids, v);
            if reason == Some(Reason::QualityMismatch) && quality_criterion_ids.is_empty() {
                v.add(
                    "quality_criterion_ids",
                    "a quality mismatch names at least one criterion of the contract",
                );
            }
            let amount =
                Money::positive_from_proto("amount_claimed", req.amount_claimed.as_ref(), v);
            let description = require_text("description", &req.description, MAX_TEXT, v);
            let remedy = match req.remedy() {
                pb::Remedy::Unspecified | pb::Remedy::Refund => Remedy::Refund,
                pb::Remedy::ReturnAndRefund => Remedy::ReturnAndRefund,
                pb::Remedy::Reshipment => Remedy::Reshipment,
            };
            if remedy == Remedy::Reshipment && reason.is_some_and(Reason::about_the_goods) {
                v.add(
                    "remedy",
                    "reshipment is asked for late shipment or non-delivery, not for goods received",
                );
            }
            let (Some(reason), Some(amount)) = (reason, amount) else {
                return Err(ServiceError::InvalidArgument(Vec::new()));
            };
            Ok(FileClaim {
                contract_id: req.contract_id.clone(),
                reason,
                remedy,
                quality_criterion_ids,
                amount,
                description,
            })
        })?;
        let principal = prepared.principal().clone();
        let cmd = &prepared.command;
        // Reads of other services, before the transaction (a new key only:
        // a retry after success replayed above).
        let (contract, signed) = self.reads.contract(&cmd.contract_id).await?;
        if principal.role != Role::Buyer || contract.buyer_principal_id != principal.subject {
            return Err(ServiceError::PermissionDenied(
                "only the contract's buyer files a claim on it".into(),
            )
            .into());
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
        finish(v)?;
        if contract.protection() != contract_pb::Protection::TradeAssurance
            || contract.escrow_account_id.is_empty()
        {
            return Err(ServiceError::Refused {
                reason: "NOT_PROTECTED",
                subject: format!("contracts/{}", cmd.contract_id),
                message: "only a Trade Assurance contract with an escrow account can be claimed"
                    .into(),
            }
            .into());
        }
        let account = self
            .reads
            .escrow_account(&contract.escrow_account_id)
            .await?;
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
        let now = timestamps::now();
        let domain_claim = Claim::file(cmd.amount, held, now, self.policy())?;
        let goods_shipped = matches!(
            contract.status(),
            contract_pb::ContractStatus::Shipped | contract_pb::ContractStatus::Delivered
        );
        self.mutations
            .execute(&prepared, || {
                async |tx| {
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
                        goods_shipped,
                        claim: domain_claim.clone(),
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
                    let view =
                        app::file_claim(tx, &self.flows, &mut record, &Actor::of(&principal), now)
                            .await?;
                    Ok(pb::FileClaimResponse { claim: Some(view) })
                }
            })
            .await
    }

    async fn upload_evidence(
        &self,
        request: Request<Streaming<pb::UploadEvidenceRequest>>,
    ) -> Result<Response<pb::UploadEvidenceResponse>, Status> {
        let caller = auth::caller(&request)?;
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(ServiceError::invalid("metadata", "the upload sent no message").into());
        };
        let metadata = match &first.part {
            Some(upload_evidence_request::Part::Metadata(m)) => Some(m.clone()),
            _ => None,
        };
        let mut unary = Request::new(pb::UploadEvidenceRequest {
            idempotency_key: first.idempotency_key.clone(),
            part: metadata
                .clone()
                .map(upload_evidence_request::Part::Metadata),
        });
        unary.extensions_mut().insert(caller);
        // A retry after success replays before the claim's state is checked
        // (it may be decided by now) and before any byte is taken.
        if let Some(answer) = self.mutations.replayed(&unary).await? {
            return Ok(answer);
        }
        let prepared = self.mutations.prepare(unary, |_, _, v| {
            parse_upload(metadata.as_ref(), &self.store, v)
        })?;
        let principal = prepared.principal().clone();
        let cmd = &prepared.command;
        // Who may add evidence, before any byte is taken.
        self.read(async |conn| {
            let claim = claims::get_claim(conn, cmd.claim_id).await?;
            check_can_read(&principal, &claim)?;
            if !is_open(&claim) {
                return Err(ServiceError::FailedPrecondition(format!(
                    "the claim is {}: evidence is added only while it is negotiating or escalated",
                    claim.claim.status.as_str()
                )));
            }
            Ok(())
        })
        .await?;
        let upload = if cmd.resumable {
            self.store
                .begin_resumable(
                    &cmd.claim_id.to_string(),
                    &cmd.sha256_hex,
                    &principal.subject,
                    cmd.size,
                    cmd.resume_from,
                )
                .await?
        } else {
            self.store.begin(cmd.size, &cmd.sha256_hex).await?
        };
        // Cut off mid-stream, nothing stays unless the upload is resumable.
        upload
            .receive(&mut stream, |message| match message.part {
                Some(upload_evidence_request::Part::Chunk(bytes)) => Some(bytes),
                _ => None,
            })
            .await?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let mut claim = claims::lock_claim(tx, cmd.claim_id).await?;
                    if !is_open(&claim) {
                        return Err(ServiceError::FailedPrecondition(format!(
                            "the claim is {}: evidence is added only while it is open",
                            claim.claim.status.as_str()
                        )));
                    }
                    let (evidence, new) = evidence::insert_evidence(
                        tx,
                        &EvidenceRecord {
                            evidence_id: Uuid::now_v7(),
                            claim_id: cmd.claim_id,
                            kind: cmd.kind.as_str().into(),
                            filename: cmd.filename.clone(),
                            content_type: cmd.content_type.clone(),
                            size_bytes: i64::try_from(cmd.size).unwrap_or(i64::MAX),
                            sha256_hex: cmd.sha256_hex.clone(),
                            description: cmd.description.clone(),
                            quality_criterion_ids: cmd.quality_criterion_ids.clone(),
                            uploaded_by_principal_id: principal.subject.clone(),
                            uploaded_by_role: principal.role.as_str().into(),
                            uploaded_at: now,
                        },
                    )
                    .await?;
                    if new {
                        let mut s = step(
                            pb::DisputeEventType::EvidenceAdded,
                            "evidence.added",
                            format!(
                                "{} added by the {}: {} ({}, {} bytes, sha256 {})",
                                cmd.kind.as_str(),
                                principal.role,
                                cmd.filename,
                                cmd.content_type,
                                cmd.size,
                                cmd.sha256_hex
                            ),
                        );
                        s.evidence_id = evidence.evidence_id.to_string();
                        self.flows
                            .record(tx, &mut claim, &Actor::of(&principal), s, now)
                            .await?;
                    }
                    Ok(pb::UploadEvidenceResponse {
                        evidence: Some(evidence_proto(&evidence)),
                    })
                }
            })
            .await
    }

    async fn get_upload_progress(
        &self,
        request: Request<pb::GetUploadProgressRequest>,
    ) -> Result<Response<pb::GetUploadProgressResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = claim_id(&req.claim_id, &mut v);
        if !is_sha256_hex(&req.sha256_hex) {
            v.add(
                "sha256_hex",
                "must be the file's SHA-256 in 64 lower-case hex digits",
            );
        }
        finish(v)?;
        self.read(async |conn| {
            let claim = claims::get_claim(conn, id).await?;
            check_can_read(&principal, &claim)
        })
        .await?;
        let received_bytes = self
            .store
            .progress(&id.to_string(), &req.sha256_hex, &principal.subject)
            .await?;
        Ok(Response::new(pb::GetUploadProgressResponse {
            received_bytes,
        }))
    }

    async fn list_evidence(
        &self,
        request: Request<pb::ListEvidenceRequest>,
    ) -> Result<Response<pb::ListEvidenceResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = claim_id(&req.claim_id, &mut v);
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = paging::cursor(req.page.as_ref(), "evidence", &mut v, time_cursor);
        finish(v)?;
        self.read(async |conn| {
            let claim = claims::get_claim(conn, id).await?;
            check_can_read(&principal, &claim)?;
            let rows = evidence::list_evidence(conn, id, after, limit + 1).await?;
            let (rows, next) = paging::split_page(rows, limit, |e| {
                time_token("evidence", e.uploaded_at, e.evidence_id)
            });
            Ok(Response::new(pb::ListEvidenceResponse {
                evidence: rows.iter().map(evidence_proto).collect(),
                next_page_token: next,
            }))
        })
        .await
    }

    type DownloadEvidenceStream = DownloadStream;

    async fn download_evidence(
        &self,
        request: Request<pb::DownloadEvidenceRequest>,
    ) -> Result<Response<Self::DownloadEvidenceStream>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = uuid_field("evidence_id", &req.evidence_id, "an evidence", &mut v);
        finish(v)?;
        let evidence = self
            .read(async |conn| {
                let evidence = evidence::get_evidence(conn, id).await?;
                let claim = claims::get_claim(conn, evidence.claim_id).await?;
                check_can_read(&principal, &claim)?;
                Ok(evidence)
            })
            .await?;
        let bytes = self.store.read(&evidence.sha256_hex).await?;
        let first = futures_util::stream::once(async move {
            Ok(pb::DownloadEvidenceResponse {
                part: Some(download_evidence_response::Part::Evidence(evidence_proto(
                    &evidence,
                ))),
            })
        });
        let rest = bytes.map(|chunk| {
            chunk
                .map(|bytes| pb::DownloadEvidenceResponse {
                    part: Some(download_evidence_response::Part::Chunk(bytes)),
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(first.chain(rest))))
    }

    async fn make_offer(
        &self,
        request: Request<pb::MakeOfferRequest>,
    ) -> Result<Response<pb::MakeOfferResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            parse_offer(
                &req.claim_id,
                req.kind(),
                req.refund_amount.as_ref(),
                &req.message,
                v,
            )
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let (claim, offer) = self
                        .propose(tx, prepared.principal(), &prepared.command, Party::Supplier)
                        .await?;
                    Ok(pb::MakeOfferResponse { claim, offer })
                }
            })
            .await
    }

    async fn counter_offer(
        &self,
        request: Request<pb::CounterOfferRequest>,
    ) -> Result<Response<pb::CounterOfferResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            parse_offer(
                &req.claim_id,
                req.kind(),
                req.refund_amount.as_ref(),
                &req.message,
                v,
            )
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let (claim, offer) = self
                        .propose(tx, prepared.principal(), &prepared.command, Party::Buyer)
                        .await?;
                    Ok(pb::CounterOfferResponse { claim, offer })
                }
            })
            .await
    }

    async fn accept_offer(
        &self,
        request: Request<pb::AcceptOfferRequest>,
    ) -> Result<Response<pb::AcceptOfferResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let id = claim_id(&req.claim_id, v);
            uuid_field("offer_id", &req.offer_id, "an offer", v);
            Ok((id, req.offer_id.clone()))
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let (id, offer_id) = &prepared.command;
                    let principal = prepared.principal();
                    let mut claim = claims::lock_claim(tx, *id).await?;
                    let by = party_of(principal, &claim)?;
                    claim.claim.accept_offer(offer_id, by, now)?;
                    claim.accepted_offer_id = offer_id.clone();
                    let view = app::resolve(
                        tx,
                        &self.flows,
                        &mut claim,
                        &Actor::of(principal),
                        pb::DisputeEventType::Settled,
                        now,
                    )
                    .await?;
                    Ok(pb::AcceptOfferResponse { claim: Some(view) })
                }
            })
            .await
    }

    async fn reject_offer(
        &self,
        request: Request<pb::RejectOfferRequest>,
    ) -> Result<Response<pb::RejectOfferResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            if req.offer_id.is_empty() {
                v.add("offer_id", "is required");
            }
            Ok(respond(
                &req.claim_id,
                &req.offer_id,
                &req.reason,
                &req.counter_evidence_ids,
                v,
            ))
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let cmd = &prepared.command;
                    let principal = prepared.principal();
                    let mut claim = claims::lock_claim(tx, cmd.claim_id).await?;
                    let by = party_of(principal, &claim)?;
                    check_counter_evidence(
                        tx,
                        &claim,
                        "counter_evidence_ids",
                        &cmd.counter_evidence,
                    )
                    .await?;
                    claim
                        .claim
                        .reject_offer(&cmd.offer_id, by, &cmd.reason, now)?;
                    if let Some(offer) = claim
                        .claim
                        .offers
                        .iter_mut()
                        .find(|o| o.offer_id == cmd.offer_id)
                    {
                        offer.counter_evidence_ids =
                            cmd.counter_evidence.iter().map(Uuid::to_string).collect();
                    }
                    let view = self
                        .flows
                        .record(
                            tx,
                            &mut claim,
                            &Actor::of(principal),
                            step(
                                pb::DisputeEventType::OfferRejected,
                                "offer.rejected",
                                format!(
                                    "the {} rejected offer {}: {} ({} counter-evidence)",
                                    by.as_str(),
                                    cmd.offer_id,
                                    cmd.reason,
                                    cmd.counter_evidence.len()
                                ),
                            ),
                            now,
                        )
                        .await?;
                    Ok(pb::RejectOfferResponse { claim: Some(view) })
                }
            })
            .await
    }

    async fn reject_claim(
        &self,
        request: Request<pb::RejectClaimRequest>,
    ) -> Result<Response<pb::RejectClaimResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(respond(
                &req.claim_id,
                "",
                &req.reason,
                &req.counter_evidence_ids,
                v,
            ))
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let cmd = &prepared.command;
                    let principal = prepared.principal();
                    let mut claim = claims::lock_claim(tx, cmd.claim_id).await?;
                    require_supplier(principal, &claim)?;
                    check_counter_evidence(
                        tx,
                        &claim,
                        "counter_evidence_ids",
                        &cmd.counter_evidence,
                    )
                    .await?;
                    claim.claim.reject_claim()?;
                    claim.supplier_rejected_at = Some(now);
                    claim.supplier_rejection_reason = cmd.reason.clone();
                    claim.supplier_counter_evidence_ids =
                        cmd.counter_evidence.iter().map(Uuid::to_string).collect();
                    let view = self
                        .flows
                        .record(
                            tx,
                            &mut claim,
                            &Actor::of(principal),
                            step(
                                pb::DisputeEventType::ClaimRejectedBySupplier,
                                "claim.rejected_by_supplier",
                                format!(
                                    "the supplier rejects the claim: {} ({} counter-evidence)",
                                    cmd.reason,
                                    cmd.counter_evidence.len()
                                ),
                            ),
                            now,
                        )
                        .await?;
                    Ok(pb::RejectClaimResponse { claim: Some(view) })
                }
            })
            .await
    }

    async fn withdraw_claim(
        &self,
        request: Request<pb::WithdrawClaimRequest>,
    ) -> Result<Response<pb::WithdrawClaimResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let id = claim_id(&req.claim_id, v);
            Ok((id, optional_text("reason", &req.reason, MAX_REASON, v)))
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let (id, reason) = &prepared.command;
                    let principal = prepared.principal();
                    let mut claim = claims::lock_claim(tx, *id).await?;
                    require_buyer(principal, &claim)?;
                    let view = app::withdraw(
                        tx,
                        &self.flows,
                        &mut claim,
                        &Actor::of(principal),
                        reason,
                        now,
                    )
                    .await?;
                    Ok(pb::WithdrawClaimResponse { claim: Some(view) })
                }
            })
            .await
    }

    async fn escalate_claim(
        &self,
        request: Request<pb::EscalateClaimRequest>,
    ) -> Result<Response<pb::EscalateClaimResponse>, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let id = claim_id(&req.claim_id, v);
            Ok((id, require_text("reason", &req.reason, MAX_REASON, v)))
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let (id, reason) = &prepared.command;
                    let principal = prepared.principal();
                    let mut claim = claims::lock_claim(tx, *id).await?;
                    let by = match principal.role {
                        Role::Operator => Escalator::Operator,
                        _ => {
                            require_buyer(principal, &claim)?;
                            Escalator::Buyer
                        }
                    };
                    let view = app::escalate(
                        tx,
                        &self.flows,
                        &mut claim,
                        &Actor::of(principal),
                        by,
                        reason,
                        now,
                    )
                    .await?;
                    Ok(pb::EscalateClaimResponse { claim: Some(view) })
                }
            })
            .await
    }

    async fn decide_claim(
        &self,
        request: Request<pb::DecideClaimRequest>,
    ) -> Result<Response<pb::DecideClaimResponse>, Status> {
        // A new shipment deadline must be in the future: a retry after
        // success replays before it is checked against a later clock.
        if let Some(answer) = self.mutations.replayed(&request).await? {
            return Ok(answer);
        }
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let id = claim_id(&req.claim_id, v);
            let reason = require_text("reason", &req.reason, MAX_TEXT, v);
            if req.penalty_points > 100 {
                v.add("penalty_points", "must be 0-100");
            }
            let outcome = match req.outcome() {
                pb::ClaimOutcome::PartialRefund => {
                    Money::positive_from_proto("refund_amount", req.refund_amount.as_ref(), v)
                        .map(Outcome::PartialRefund)
                }
                other => {
                    if req.refund_amount.is_some() {
                        v.add("refund_amount", "is set only for a partial refund");
                    }
                    match other {
                        pb::ClaimOutcome::FullRefund => Some(Outcome::FullRefund),
                        pb::ClaimOutcome::ReleaseToSupplier => Some(Outcome::ReleaseToSupplier),
                        _ => {
                            v.add("outcome", "is required");
                            None
                        }
                    }
                }
            };
            let outcome = outcome.ok_or_else(|| ServiceError::InvalidArgument(Vec::new()))?;
            let new_shipment_deadline = match req.new_shipment_deadline.as_ref() {
                None => None,
                Some(at) => {
                    let parsed = timestamps::from_proto(at);
                    if parsed.is_none_or(|at| at <= timestamps::now()) {
                        v.add("new_shipment_deadline", "must be a time in the future");
                    }
                    parsed
                }
            };
            Ok(Decide {
                claim_id: id,
                outcome,
                reason,
                penalty_points: req.penalty_points,
                new_shipment_deadline,
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let cmd = &prepared.command;
                    let principal = prepared.principal();
                    let mut claim = claims::lock_claim(tx, cmd.claim_id).await?;
                    let mut policy = self.policy().for_reason(claim.reason);
                    if cmd.penalty_points > 0 {
                        policy.full_refund_penalty_points = cmd.penalty_points;
                        policy.partial_refund_penalty_points = cmd.penalty_points;
                    }
                    if cmd.new_shipment_deadline.is_some() {
                        if claim.goods_shipped {
                            return Err(ServiceError::invalid(
                                "new_shipment_deadline",
                                "only for a claim on goods not shipped yet",
                            ));
                        }
                        if cmd.outcome == Outcome::FullRefund {
                            return Err(ServiceError::invalid(
                                "new_shipment_deadline",
                                "a full refund ends the contract: nothing is shipped",
                            ));
                        }
                    }
                    claim.claim.decide(cmd.outcome, &cmd.reason, &policy)?;
                    claim.new_shipment_deadline = cmd.new_shipment_deadline;
                    let view = app::resolve(
                        tx,
                        &self.flows,
                        &mut claim,
                        &Actor::of(principal),
                        pb::DisputeEventType::Decided,
                        now,
                    )
                    .await?;
                    Ok(pb::DecideClaimResponse { claim: Some(view) })
                }
            })
            .await
    }

    async fn get_claim(
        &self,
        request: Request<pb::GetClaimRequest>,
    ) -> Result<Response<pb::GetClaimResponse>, Status> {
        let principal = auth::principal(&request)?;
        let mut v = Violations::new();
        let id = claim_id(&request.get_ref().claim_id, &mut v);
        finish(v)?;
        self.read(async |conn| {
            let claim = claims::get_claim(conn, id).await?;
            check_can_read(&principal, &claim)?;
            Ok(Response::new(pb::GetClaimResponse {
                claim: Some(view(conn, &claim).await?),
            }))
        })
        .await
    }

    async fn list_claims(
        &self,
        request: Request<pb::ListClaimsRequest>,
    ) -> Result<Response<pb::ListClaimsResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = paging::cursor(req.page.as_ref(), "claims", &mut v, time_cursor);
        let mut filter = ClaimFilter::default();
        for (field, value, slot) in [
            ("contract_id", &req.contract_id, &mut filter.contract_id),
            ("supplier_id", &req.supplier_id, &mut filter.supplier_id),
            (
                "buyer_principal_id",
                &req.buyer_principal_id,
                &mut filter.buyer_principal_id,
            ),
        ] {
            if !value.is_empty() {
                validate_reference(field, value, &mut v);
                *slot = Some(value.clone());
            }
        }
        for (i, status) in req.statuses.iter().enumerate() {
            match pb::ClaimStatus::try_from(*status)
                .ok()
                .and_then(flows::status_from_proto)
            {
                Some(s) => filter.statuses.push(s),
                None => v.add(format!("statuses[{i}]"), "is not a claim status"),
            }
        }
        if req.reason != 0 {
            filter.reason = ta_proto::common::ClaimReason::try_from(req.reason)
                .ok()
                .and_then(flows::reason_from_proto);
            if filter.reason.is_none() {
                v.add("reason", "is not a claim reason");
            }
        }
        if let Some(at) = req.filed_after.as_ref() {
            filter.filed_after = timestamps::from_proto(at);
            if filter.filed_after.is_none() {
                v.add("filed_after", "is not a valid timestamp");
            }
        }
        match principal.role {
            Role::Buyer => {
                if filter
                    .buyer_principal_id
                    .as_ref()
                    .is_some_and(|b| *b != principal.subject)
                {
                    v.add("buyer_principal_id", "a buyer lists only its own claims");
                }
                filter.buyer_principal_id = Some(principal.subject.clone());
            }
            Role::Supplier => filter.supplier_principal_id = Some(principal.subject.clone()),
            _ => {}
        }
        finish(v)?;
        self.read(async |conn| {
            let rows = claims::list_claims(conn, &filter, after, limit + 1).await?;
            let (rows, next) = paging::split_page(rows, limit, |c| {
                time_token("claims", c.claim.filed_at, c.claim_id)
            });
            let mut claims = Vec::with_capacity(rows.len());
            for claim in &rows {
                claims.push(view(conn, claim).await?);
            }
            Ok(Response::new(pb::ListClaimsResponse {
                claims,
                next_page_token: next,
            }))
        })
        .await
    }

    async fn get_claim_timeline(
        &self,
        request: Request<pb::GetClaimTimelineRequest>,
    ) -> Result<Response<pb::GetClaimTimelineResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = claim_id(&req.claim_id, &mut v);
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = paging::cursor(req.page.as_ref(), "timeline", &mut v, |fields| {
            fields.first().and_then(|f| f.parse::<u32>().ok())
        })
        .unwrap_or(0);
        finish(v)?;
        self.read(async |conn| {
            let claim = claims::get_claim(conn, id).await?;
            check_can_read(&principal, &claim)?;
            let rows = timeline::timeline(conn, id, after, limit + 1).await?;
            let (rows, next) = paging::split_page(rows, limit, |e| {
                paging::token("timeline", &[&e.entry.to_string()])
            });
            Ok(Response::new(pb::GetClaimTimelineResponse {
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

    type StreamDisputeEventsStream = EventStream<pb::StreamDisputeEventsResponse>;

    async fn stream_dispute_events(
        &self,
        request: Request<pb::StreamDisputeEventsRequest>,
    ) -> Result<Response<Self::StreamDisputeEventsStream>, Status> {
        let after = request.into_inner().after_sequence;
        let stream = self.flows.feed.stream_events(
            self.pool().clone(),
            after,
            &self.feed_config,
            |mut event: pb::DisputeEvent, sequence, _| {
                event.sequence = sequence;
                pb::StreamDisputeEventsResponse { event: Some(event) }
            },
            pb::StreamDisputeEventsResponse::default,
        );
        Ok(Response::new(stream))
    }
}
