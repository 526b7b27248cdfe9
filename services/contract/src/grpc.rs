//! The gRPC transport: parses each request (every bad field reported at
//! once), runs mutations through the shared pipeline (caller, key, one
//! transaction, stored answer) and one use case of `app` each, reads through
//! `storage` and `app`'s view, and answers in proto. Who may call which RPC
//! is declared in the proto and enforced by the server's auth layer; the
//! per-resource rules (the parties, the named agency, operators and
//! services) are `app`'s.

use std::sync::Arc;

use ta_objects::Store;
use ta_proto::contract::{
    self as pb, contract_service_server::ContractService, upload_inspection_file_request::Part,
};
use ta_runtime::{
    ServiceError, Violations,
    auth::{self, Principal, Role},
    paging,
    pipeline::Mutations,
    text::{optional_text, require_text, validate_reference},
    timestamps,
};
use ta_workflow::{config::FeedConfig, feed::EventStream, feed_stream, timeline::Page};
use time::OffsetDateTime;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::{
    app::{
        self, Flows, amendments, cancellation, check_can_read,
        claims::{self, ClaimAbandon, ClaimClose, ClaimOpen},
        drafting::{self, ById, CreateDraft, Registry, Revise},
        fulfilment::{self, Accept, Inspect, Receipt, Ship},
        not_party,
    },
    domain::terms::Terms,
    storage::{
        contracts::{get_contract, list_contracts, list_inspection_assignments},
        fulfilment::list_reports,
        timeline::page_timeline,
    },
    views::report_proto,
};

const MAX_NOTE: usize = 1000;

mod parse;

type Answer<T> = Result<Response<T>, Status>;

pub struct ContractApi {
    mutations: Mutations,
    flows: Arc<Flows>,
    registry: Registry,
    feed_config: FeedConfig,
    /// Inspection reports' files; none: UploadInspectionFile is unavailable.
    store: Option<Store>,
}

impl ContractApi {
    /// `mutations` runs over the service's pool and idempotency keys.
    pub fn new(
        mutations: Mutations,
        flows: Arc<Flows>,
        registry: Registry,
        feed_config: FeedConfig,
    ) -> Self {
        Self {
            mutations,
            flows,
            registry,
            feed_config,
            store: None,
        }
    }

    /// Where inspection reports' files go (UploadInspectionFile).
    #[must_use]
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    fn day(&self) -> time::Duration {
        self.flows.settings.day
    }
}

/// One change of one contract, answered with the contract after it:
/// `$apply` is the use case, run in the pipeline's transaction as
/// `(tx, flows, principal, &command, now)`, `$answer` the response type
/// holding the contract, and the closure makes the command (recording every
/// bad field in its violations).
macro_rules! change {
    (
        $api:expr, $request:expr, $apply:path => $answer:ident,
        |$req:ident, $v:ident| $parse:expr
    ) => {{
        let api = $api;
        let prepared = api.mutations.prepare($request, |$req, _, $v| $parse)?;
        api.mutations
            .execute(&prepared, || {
                async |tx| {
                    let (principal, command) = (prepared.principal(), &prepared.command);
                    let view =
                        $apply(tx, &api.flows, principal, command, timestamps::now()).await?;
                    Ok(pb::$answer {
                        contract: Some(view),
                    })
                }
            })
            .await
    }};
}

/// A new version of the terms (a revised draft, a proposed amendment),
/// answered with the contract and the version: `$apply` is the use case.
/// Deadlines are checked against the clock: a retry after success replays
/// before they are checked again.
macro_rules! new_version {
    ($api:expr, $request:expr, $apply:path, $answer:ident) => {{
        let api = $api;
        if let Some(answer) = api.mutations.replayed(&$request).await? {
            return Ok(answer);
        }
        let now = timestamps::now();
        let prepared = api.mutations.prepare($request, |req, _, v| {
            let (terms, note) = (req.terms.as_ref(), &req.change_note);
            revision(
                &req.contract_id,
                req.base_version,
                terms,
                note,
                (now, api.day()),
                v,
            )
        })?;
        api.mutations
            .execute(&prepared, || {
                async |tx| {
                    let (principal, cmd) = (prepared.principal(), &prepared.command);
                    let (contract, version) = $apply(tx, &api.flows, principal, cmd, now).await?;
                    Ok(pb::$answer {
                        contract: Some(contract),
                        version: Some(version),
                    })
                }
            })
            .await
    }};
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

fn time_cursor(fields: &[&str]) -> Option<(OffsetDateTime, Uuid)> {
    let [nanos, id] = fields else { return None };
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?;
    Some((at, Uuid::parse_str(id).ok()?))
}

fn terms_proto_with_figures(terms: &Terms, sent: Option<&pb::ContractTerms>) -> pb::ContractTerms {
    let mut proto = sent.cloned().unwrap_or_default();
    terms.stamp(&mut proto);
    proto
}

/// A new version's request: the contract, the version it builds on, the
/// whole terms and why they change.
fn revision(
    contract: &str,
    base_version: u32,
    sent: Option<&pb::ContractTerms>,
    change_note: &str,
    (now, day): (OffsetDateTime, time::Duration),
    v: &mut Violations,
) -> Result<Revise, ServiceError> {
    let contract_id = contract_id(contract, v);
    let base_version = version_number("base_version", base_version, v);
    let change_note = require_text("change_note", change_note, MAX_NOTE, v);
    let terms = Terms::validate(sent, "terms", now, Some(day), v).ok_or_else(recorded)?;
    Ok(Revise {
        contract_id,
        base_version,
        proto: terms_proto_with_figures(&terms, sent),
        terms,
        change_note,
    })
}

fn is_sha256_ref(value: &str) -> bool {
    value
        .strip_prefix("sha256:")
        .is_some_and(ta_objects::is_sha256_hex)
}

fn inspection(
    req: &pb::SubmitInspectionReportRequest,
    now: OffsetDateTime,
    v: &mut Violations,
) -> Inspect {
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
    Inspect {
        contract_id,
        agency_reference: req.agency_reference.clone(),
        inspected_at,
        results: req.results.clone(),
        summary,
    }
}

fn draft(
    req: &pb::CreateContractDraftRequest,
    principal: &Principal,
    (now, day): (OffsetDateTime, time::Duration),
    v: &mut Violations,
) -> Result<CreateDraft, ServiceError> {
    let supplier_id = Uuid::parse_str(&req.supplier_id).unwrap_or_else(|_| {
        v.add("supplier_id", "must be a supplier id (UUID)");
        Uuid::nil()
    });
    let buyer_principal_id = drafting::buyer_of(principal, &req.buyer_principal_id, v);
    let external_reference = drafting::external_reference(principal, &req.external_reference, v);
    let terms = Terms::validate(req.terms.as_ref(), "terms", now, Some(day), v);
    let terms = terms.ok_or_else(recorded)?;
    Ok(CreateDraft {
        supplier_id,
        buyer_principal_id,
        proto: terms_proto_with_figures(&terms, req.terms.as_ref()),
        terms,
        external_reference,
    })
}

fn claim_closing(req: &pb::RecordClaimClosedRequest, v: &mut Violations) -> ClaimClose {
    let contract_id = contract_id(&req.contract_id, v);
    validate_reference("claim_id", &req.claim_id, v);
    let closure = req.closure();
    if closure == pb::ClaimClosure::Unspecified {
        v.add("closure", "is required");
    }
    let new_shipment_deadline = timestamps::parse_optional(
        "new_shipment_deadline",
        req.new_shipment_deadline.as_ref(),
        v,
    );
    ClaimClose {
        contract_id,
        claim_id: req.claim_id.clone(),
        closure,
        refunded: req.refunded.clone(),
        new_shipment_deadline,
    }
}

#[tonic::async_trait]
impl ContractService for ContractApi {
    async fn create_contract_draft(
        &self,
        request: Request<pb::CreateContractDraftRequest>,
    ) -> Answer<pb::CreateContractDraftResponse> {
        // A retry after success replays before the supplier is read again
        // or the terms are checked against a later clock.
        if let Some(answer) = self.mutations.replayed(&request).await? {
            return Ok(answer);
        }
        let now = timestamps::now();
        let day = self.day();
        let prepared = self.mutations.prepare(request, |req, principal, v| {
            draft(req, principal, (now, day), v)
        })?;
        // A read of another service, before the transaction (a new key only:
        // a retry after success replayed above).
        let principal = prepared.principal().clone();
        let supplier_id = prepared.command.supplier_id;
        let terms = &prepared.command.terms;
        let owner =
            drafting::supplier_owner(&self.registry, &principal, supplier_id, terms).await?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let cmd = &prepared.command;
                    let (contract, version) =
                        drafting::create_draft(tx, &self.flows, &principal, cmd, &owner, now)
                            .await?;
                    Ok(pb::CreateContractDraftResponse {
                        contract: Some(contract),
                        version: Some(version),
                    })
                }
            })
            .await
    }

    async fn revise_contract_draft(
        &self,
        request: Request<pb::ReviseContractDraftRequest>,
    ) -> Answer<pb::ReviseContractDraftResponse> {
        new_version!(
            self,
            request,
            drafting::revise_draft,
            ReviseContractDraftResponse
        )
    }

    async fn get_contract(
        &self,
        request: Request<pb::GetContractRequest>,
    ) -> Answer<pb::GetContractResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = contract_id(&req.contract_id, &mut v);
        finish(v)?;
        let day = self.day();
        let answer = self
            .mutations
            .read(async |conn| {
                let (contract, version) =
                    app::read_contract(conn, &principal, id, req.version, day).await?;
                Ok(pb::GetContractResponse {
                    contract: Some(contract),
                    version: Some(version),
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn list_contracts(
        &self,
        request: Request<pb::ListContractsRequest>,
    ) -> Answer<pb::ListContractsResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let mut listing = parse::contract_listing(&req, &principal, &mut v)?;
        finish(v)?;
        let (limit, order) = (listing.limit, listing.order);
        listing.limit += 1;
        let answer = self
            .mutations
            .read(async |conn| {
                let rows = list_contracts(conn, &listing).await?;
                let (rows, next) =
                    paging::split_page(rows, limit, |c| parse::contract_token(order, c));
                Ok(pb::ListContractsResponse {
                    contracts: app::contract_views(conn, &rows, self.day()).await?,
                    next_page_token: next,
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn sign_contract(
        &self,
        request: Request<pb::SignContractRequest>,
    ) -> Answer<pb::SignContractResponse> {
        change!(self, request, drafting::sign => SignContractResponse, |req, v| Ok(ById {
            contract_id: contract_id(&req.contract_id, v),
            version: version_number("version", req.version, v),
            text: String::new(),
        }))
    }

    async fn propose_amendment(
        &self,
        request: Request<pb::ProposeAmendmentRequest>,
    ) -> Answer<pb::ProposeAmendmentResponse> {
        new_version!(self, request, amendments::propose, ProposeAmendmentResponse)
    }

    async fn sign_amendment(
        &self,
        request: Request<pb::SignAmendmentRequest>,
    ) -> Answer<pb::SignAmendmentResponse> {
        change!(self, request, amendments::sign_amendment => SignAmendmentResponse,
        |req, v| Ok(ById {
            contract_id: contract_id(&req.contract_id, v),
            version: version_number("version", req.version, v),
            text: String::new(),
        }))
    }

    async fn withdraw_amendment(
        &self,
        request: Request<pb::WithdrawAmendmentRequest>,
    ) -> Answer<pb::WithdrawAmendmentResponse> {
        change!(self, request, amendments::withdraw => WithdrawAmendmentResponse, |req, v| Ok(ById {
            contract_id: contract_id(&req.contract_id, v),
            version: version_number("version", req.version, v),
            text: require_text("reason", &req.reason, MAX_NOTE, v),
        }))
    }

    async fn cancel_contract(
        &self,
        request: Request<pb::CancelContractRequest>,
    ) -> Answer<pb::CancelContractResponse> {
        change!(self, request, cancellation::cancel_contract => CancelContractResponse,
        |req, v| Ok(ById {
            contract_id: contract_id(&req.contract_id, v),
            version: 0,
            text: require_text("reason", &req.reason, MAX_NOTE, v),
        }))
    }

    async fn submit_inspection_report(
        &self,
        request: Request<pb::SubmitInspectionReportRequest>,
    ) -> Answer<pb::SubmitInspectionReportResponse> {
        let now = timestamps::now();
        let prepared = self
            .mutations
            .prepare(request, |req, _, v| Ok(inspection(req, now, v)))?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let (principal, cmd) = (prepared.principal(), &prepared.command);
                    let store = self.store.as_ref();
                    let (report, contract) = fulfilment::submit_inspection_report(
                        tx,
                        &self.flows,
                        store,
                        principal,
                        cmd,
                        now,
                    )
                    .await?;
                    Ok(pb::SubmitInspectionReportResponse {
                        report: Some(report),
                        contract: Some(contract),
                    })
                }
            })
            .await
    }

    async fn list_inspection_assignments(
        &self,
        request: Request<pb::ListInspectionAssignmentsRequest>,
    ) -> Answer<pb::ListInspectionAssignmentsResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = paging::cursor(req.page.as_ref(), "assignments", &mut v, time_cursor);
        let agency = app::assignments_agency(&principal, &req.agency_principal_id, &mut v)?;
        finish(v)?;
        let answer = self
            .mutations
            .read(async |conn| {
                let rows = list_inspection_assignments(conn, &agency, after, limit + 1).await?;
                let (rows, next) = paging::split_page(rows, limit, |c| {
                    let due = c.progress.shipment_deadline.unwrap_or(c.created_at);
                    let due = due.unix_timestamp_nanos().to_string();
                    paging::token("assignments", &[&due, &c.contract_id.to_string()])
                });
                Ok(pb::ListInspectionAssignmentsResponse {
                    contracts: app::contract_views(conn, &rows, self.day()).await?,
                    next_page_token: next,
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn list_inspection_reports(
        &self,
        request: Request<pb::ListInspectionReportsRequest>,
    ) -> Answer<pb::ListInspectionReportsResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = contract_id(&req.contract_id, &mut v);
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = paging::cursor(req.page.as_ref(), "reports", &mut v, time_cursor);
        finish(v)?;
        let answer = self
            .mutations
            .read(async |conn| {
                let contract = get_contract(conn, id).await?;
                check_can_read(&principal, &contract)?;
                let rows = list_reports(conn, id, after, limit + 1).await?;
                let (rows, next) = paging::split_page(rows, limit, |r| {
                    let at = r.submitted_at.unix_timestamp_nanos().to_string();
                    paging::token("reports", &[&at, &r.report_id.to_string()])
                });
                Ok(pb::ListInspectionReportsResponse {
                    reports: rows.iter().map(report_proto).collect::<Result<_, _>>()?,
                    next_page_token: next,
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn record_shipment(
        &self,
        request: Request<pb::RecordShipmentRequest>,
    ) -> Answer<pb::RecordShipmentResponse> {
        let now = timestamps::now();
        change!(self, request, fulfilment::record_shipment => RecordShipmentResponse,
        |req, v| Ok(Ship {
            contract_id: contract_id(&req.contract_id, v),
            carrier: require_text("carrier", &req.carrier, 100, v),
            tracking_number: require_text("tracking_number", &req.tracking_number, 100, v),
            shipped_at: past_or_now("shipped_at", req.shipped_at.as_ref(), now, v),
            r#final: req.r#final,
            lot: req.lot,
        }))
    }

    async fn confirm_receipt(
        &self,
        request: Request<pb::ConfirmReceiptRequest>,
    ) -> Answer<pb::ConfirmReceiptResponse> {
        let now = timestamps::now();
        change!(self, request, fulfilment::confirm_receipt => ConfirmReceiptResponse,
        |req, v| Ok(Receipt {
            contract_id: contract_id(&req.contract_id, v),
            received_at: past_or_now("received_at", req.received_at.as_ref(), now, v),
            lot: req.lot,
        }))
    }

    async fn accept_goods(
        &self,
        request: Request<pb::AcceptGoodsRequest>,
    ) -> Answer<pb::AcceptGoodsResponse> {
        change!(self, request, fulfilment::accept_goods => AcceptGoodsResponse, |req, v| Ok(Accept {
            contract_id: contract_id(&req.contract_id, v),
            lot: req.lot,
            note: optional_text("note", &req.note, MAX_NOTE, v),
        }))
    }

    async fn get_contract_timeline(
        &self,
        request: Request<pb::GetContractTimelineRequest>,
    ) -> Answer<pb::GetContractTimelineResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = contract_id(&req.contract_id, &mut v);
        let page = Page::parse(req.page.as_ref(), &mut v);
        finish(v)?;
        let answer = self
            .mutations
            .read(async |conn| {
                let contract = get_contract(conn, id).await?;
                check_can_read(&principal, &contract)?;
                if principal.role == Role::Inspector {
                    return Err(not_party());
                }
                let (entries, next_page_token) = page_timeline(conn, id, page).await?;
                Ok(pb::GetContractTimelineResponse {
                    entries,
                    next_page_token,
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    /// One file, from the agency the signed terms name, between signing and
    /// shipment (as its report), streamed into the content-addressed store
    /// of `ta-objects` (the one dispute keeps evidence in) and checked while
    /// it streams (size, media type, SHA-256); a report's results then name
    /// it by `sha256:<hex>`.
    async fn upload_inspection_file(
        &self,
        request: Request<Streaming<pb::UploadInspectionFileRequest>>,
    ) -> Answer<pb::UploadInspectionFileResponse> {
        let Some(store) = &self.store else {
            return Err(Status::unavailable("this server keeps no inspection files"));
        };
        let principal = auth::principal(&request)?;
        let mut stream = request.into_inner();
        let first = stream.message().await?;
        let metadata = match first.and_then(|m| m.part) {
            Some(Part::Metadata(m)) => Some(m),
            _ => None,
        };
        let meta = fulfilment::inspection_file(metadata.as_ref(), store)?;
        self.mutations
            .read(async |conn| {
                fulfilment::check_inspection_upload(conn, &principal, meta.contract_id).await
            })
            .await?;
        let stored_now = store
            .begin(meta.size, &meta.sha256_hex)
            .await?
            .receive(&mut stream, |message| match message.part {
                Some(Part::Chunk(bytes)) => Some(bytes),
                _ => None,
            })
            .await?;
        tracing::info!(contract_id = %meta.contract_id, sha256 = %meta.sha256_hex, stored_now, "inspection file received");
        Ok(Response::new(pb::UploadInspectionFileResponse {
            evidence_sha256: format!("sha256:{}", meta.sha256_hex),
            size_bytes: meta.size,
            stored_now,
        }))
    }

    type StreamContractEventsStream = EventStream<pb::StreamContractEventsResponse>;

    async fn stream_contract_events(
        &self,
        request: Request<pb::StreamContractEventsRequest>,
    ) -> Answer<Self::StreamContractEventsStream> {
        feed_stream::serve(
            &self.flows.feed,
            self.mutations.pool().clone(),
            &self.feed_config,
            request,
        )
    }

    async fn record_claim_opened(
        &self,
        request: Request<pb::RecordClaimOpenedRequest>,
    ) -> Answer<pb::RecordClaimOpenedResponse> {
        change!(self, request, claims::open_claim => RecordClaimOpenedResponse, |req, v| {
            let contract_id = contract_id(&req.contract_id, v);
            validate_reference("claim_id", &req.claim_id, v);
            let reason = claims::claim_reason(req.reason());
            if reason.is_none() {
                v.add("reason", "is required");
            }
            Ok(ClaimOpen {
                contract_id,
                claim_id: req.claim_id.clone(),
                reason: reason.ok_or_else(recorded)?,
            })
        })
    }

    async fn confirm_claim_opened(
        &self,
        request: Request<pb::ConfirmClaimOpenedRequest>,
    ) -> Answer<pb::ConfirmClaimOpenedResponse> {
        change!(self, request, claims::confirm_claim => ConfirmClaimOpenedResponse, |req, v| {
            validate_reference("claim_id", &req.claim_id, v);
            Ok(ById {
                contract_id: contract_id(&req.contract_id, v),
                version: 0,
                text: req.claim_id.clone(),
            })
        })
    }

    async fn abandon_claim_opening(
        &self,
        request: Request<pb::AbandonClaimOpeningRequest>,
    ) -> Answer<pb::AbandonClaimOpeningResponse> {
        change!(self, request, claims::abandon_claim => AbandonClaimOpeningResponse, |req, v| {
            validate_reference("claim_id", &req.claim_id, v);
            let reason = require_text("reason", &req.reason, MAX_NOTE, v);
            Ok(ClaimAbandon {
                contract_id: contract_id(&req.contract_id, v),
                claim_id: req.claim_id.clone(),
                reason,
            })
        })
    }

    async fn record_claim_closed(
        &self,
        request: Request<pb::RecordClaimClosedRequest>,
    ) -> Answer<pb::RecordClaimClosedResponse> {
        change!(self, request, claims::close_claim => RecordClaimClosedResponse,
            |req, v| Ok(claim_closing(req, v)))
    }
}
