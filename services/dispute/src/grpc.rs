//! The gRPC transport: parses each request (every bad field reported at
//! once, in [`parse`]), runs mutations through the shared pipeline (caller, key, one
//! transaction, stored answer) and the use cases in `app`, and answers in
//! proto (`views`). The proto's access option is enforced by the server's
//! auth layer; the per-claim rules (the contract's buyer, the owner of its
//! supplier, operators) are the use cases'; reads check them with
//! [`app::check_can_read`].

use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt};
use ta_objects::{Store as EvidenceStore, is_sha256_hex};
use ta_proto::{
    IdempotentRequest,
    dispute::{
        self as pb, dispute_service_server::DisputeService, download_evidence_response,
        upload_evidence_request,
    },
};
use ta_runtime::{
    ServiceError, Violations,
    auth::{self, Actor, Principal},
    money::Money,
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
        self, Flows,
        decisions::Decide,
        filing::{FileClaim, Reads},
    },
    domain::claim::{Outcome, Party, Reason, Remedy},
    storage::{
        claims::{self, ClaimRecord},
        evidence, timeline,
    },
    views::{self, evidence_proto},
};

mod parse;
mod reconciliation;

pub use reconciliation::ReconciliationApi;

use parse::{
    MAX_REASON, MAX_TEXT, claim_id, finish, parse_offer, parse_upload, references, respond,
    time_cursor, time_token, uuid_field,
};

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
            mutations: Mutations::new(pool, crate::storage::SCHEMA),
            flows,
            reads,
            store,
            feed_config,
        }
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.mutations.pool()
    }

    /// One change of one claim, answered with the claim after it: `apply`
    /// is the use case, run in the pipeline's transaction.
    async fn change<Q: IdempotentRequest, C, R: prost::Message + Default>(
        &self,
        request: Request<Q>,
        parse: impl FnOnce(&Q, &mut Violations) -> Result<C, ServiceError>,
        apply: impl AsyncFn(
            &mut sqlx::PgConnection,
            &Flows,
            &Principal,
            &C,
            OffsetDateTime,
        ) -> Result<pb::Claim, ServiceError>,
        answer: impl Fn(pb::Claim) -> R,
    ) -> Answer<R> {
        let prepared = self.mutations.prepare(request, |req, _, v| parse(req, v))?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let now = timestamps::now();
                    let principal = prepared.principal();
                    let claim = apply(tx, &self.flows, principal, &prepared.command, now).await?;
                    Ok(answer(claim))
                }
            })
            .await
    }
}

type Answer<T> = Result<Response<T>, Status>;

/// The claim in proto, with its evidence count.
async fn view(
    conn: &mut sqlx::PgConnection,
    claim: &ClaimRecord,
) -> Result<pb::Claim, ServiceError> {
    let count = evidence::count_evidence(conn, claim.claim_id).await?;
    Ok(views::claim_proto(claim, count))
}

type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<pb::DownloadEvidenceResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DisputeService for DisputeApi {
    async fn file_claim(
        &self,
        request: Request<pb::FileClaimRequest>,
    ) -> Answer<pb::FileClaimResponse> {
        // A retry after success replays before the contract and escrow are
        // read again (the contract is in dispute by then, escrow frozen).
        if let Some(answer) = self.mutations.replayed(&request).await? {
            return Ok(answer);
        }
        let prepared = self.mutations.prepare(request, |req, _, v| {
            validate_reference("contract_id", &req.contract_id, v);
            let reason = views::reason_from_proto(req.reason());
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
        let policy = &self.flows.settings.policy;
        let filing = app::filing::check(&self.reads, &principal, cmd, policy).await?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let actor = Actor::of(&principal);
                    let view =
                        app::filing::file_claim(tx, &self.flows, cmd, &filing, &actor).await?;
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
            reason: first.reason.clone(),
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
        self.mutations
            .read(async |conn| app::evidence::check_may_add(conn, &principal, cmd.claim_id).await)
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
                    let evidence =
                        app::evidence::add_evidence(tx, &self.flows, &principal, cmd, now).await?;
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
        self.mutations
            .read(async |conn| {
                let claim = claims::get_claim(conn, id).await?;
                app::check_can_read(&principal, &claim)
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
        self.mutations
            .read(async |conn| {
                let claim = claims::get_claim(conn, id).await?;
                app::check_can_read(&principal, &claim)?;
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
            .mutations
            .read(async |conn| {
                let evidence = evidence::get_evidence(conn, id).await?;
                let claim = claims::get_claim(conn, evidence.claim_id).await?;
                // Evidence of a claim the caller may not see does not exist
                // for it: answered as an evidence id that does not.
                app::check_can_read(&principal, &claim)
                    .map_err(|_| ServiceError::unseen(evidence::EVIDENCE, id))?;
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
    ) -> Answer<pb::MakeOfferResponse> {
        let parse = |req: &pb::MakeOfferRequest, v: &mut Violations| {
            parse_offer(
                &req.claim_id,
                req.kind(),
                req.refund_amount.as_ref(),
                &req.message,
                v,
            )
        };
        let propose = async |tx: &mut _, flows: &_, principal: &_, cmd: &_, now| {
            app::offers::propose(tx, flows, principal, cmd, Party::Supplier, now).await
        };
        self.change(request, parse, propose, |claim| pb::MakeOfferResponse {
            offer: claim.offers.last().cloned(),
            claim: Some(claim),
        })
        .await
    }

    async fn counter_offer(
        &self,
        request: Request<pb::CounterOfferRequest>,
    ) -> Answer<pb::CounterOfferResponse> {
        let parse = |req: &pb::CounterOfferRequest, v: &mut Violations| {
            parse_offer(
                &req.claim_id,
                req.kind(),
                req.refund_amount.as_ref(),
                &req.message,
                v,
            )
        };
        let propose = async |tx: &mut _, flows: &_, principal: &_, cmd: &_, now| {
            app::offers::propose(tx, flows, principal, cmd, Party::Buyer, now).await
        };
        self.change(request, parse, propose, |claim| pb::CounterOfferResponse {
            offer: claim.offers.last().cloned(),
            claim: Some(claim),
        })
        .await
    }

    async fn accept_offer(
        &self,
        request: Request<pb::AcceptOfferRequest>,
    ) -> Answer<pb::AcceptOfferResponse> {
        let parse = |req: &pb::AcceptOfferRequest, v: &mut Violations| {
            let id = claim_id(&req.claim_id, v);
            uuid_field("offer_id", &req.offer_id, "an offer", v);
            Ok((id, req.offer_id.clone()))
        };
        let accept =
            async |tx: &mut _, flows: &_, principal: &_, (id, offer): &(Uuid, String), now| {
                app::offers::accept_offer(tx, flows, principal, *id, offer, now).await
            };
        self.change(request, parse, accept, |claim| pb::AcceptOfferResponse {
            claim: Some(claim),
        })
        .await
    }

    async fn reject_offer(
        &self,
        request: Request<pb::RejectOfferRequest>,
    ) -> Answer<pb::RejectOfferResponse> {
        let parse = |req: &pb::RejectOfferRequest, v: &mut Violations| {
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
        };
        self.change(request, parse, app::offers::reject_offer, |claim| {
            pb::RejectOfferResponse { claim: Some(claim) }
        })
        .await
    }

    async fn reject_claim(
        &self,
        request: Request<pb::RejectClaimRequest>,
    ) -> Answer<pb::RejectClaimResponse> {
        let parse = |req: &pb::RejectClaimRequest, v: &mut Violations| {
            Ok(respond(
                &req.claim_id,
                "",
                &req.reason,
                &req.counter_evidence_ids,
                v,
            ))
        };
        self.change(request, parse, app::claims::reject_claim, |claim| {
            pb::RejectClaimResponse { claim: Some(claim) }
        })
        .await
    }

    async fn withdraw_claim(
        &self,
        request: Request<pb::WithdrawClaimRequest>,
    ) -> Answer<pb::WithdrawClaimResponse> {
        let parse = |req: &pb::WithdrawClaimRequest, v: &mut Violations| {
            let id = claim_id(&req.claim_id, v);
            Ok((id, optional_text("reason", &req.reason, MAX_REASON, v)))
        };
        let withdraw =
            async |tx: &mut _, flows: &_, principal: &_, (id, reason): &(Uuid, String), now| {
                app::claims::withdraw_claim(tx, flows, principal, *id, reason, now).await
            };
        self.change(request, parse, withdraw, |claim| {
            pb::WithdrawClaimResponse { claim: Some(claim) }
        })
        .await
    }

    async fn escalate_claim(
        &self,
        request: Request<pb::EscalateClaimRequest>,
    ) -> Answer<pb::EscalateClaimResponse> {
        let parse = |req: &pb::EscalateClaimRequest, v: &mut Violations| {
            let id = claim_id(&req.claim_id, v);
            Ok((id, require_text("reason", &req.reason, MAX_REASON, v)))
        };
        let escalate =
            async |tx: &mut _, flows: &_, principal: &_, (id, reason): &(Uuid, String), now| {
                app::claims::escalate_claim(tx, flows, principal, *id, reason, now).await
            };
        self.change(request, parse, escalate, |claim| {
            pb::EscalateClaimResponse { claim: Some(claim) }
        })
        .await
    }

    async fn decide_claim(
        &self,
        request: Request<pb::DecideClaimRequest>,
    ) -> Answer<pb::DecideClaimResponse> {
        // A new shipment deadline must be in the future: a retry after
        // success replays before it is checked against a later clock.
        if let Some(answer) = self.mutations.replayed(&request).await? {
            return Ok(answer);
        }
        let parse = |req: &pb::DecideClaimRequest, v: &mut Violations| {
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
        };
        self.change(request, parse, app::decisions::decide, |claim| {
            pb::DecideClaimResponse { claim: Some(claim) }
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
        self.mutations
            .read(async |conn| {
                let claim = claims::get_claim(conn, id).await?;
                app::check_can_read(&principal, &claim)?;
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
        let mut filter = parse::claim_filter(&req, timestamps::now(), &mut v);
        app::narrow_to_caller(&principal, &mut filter, &mut v);
        finish(v)?;
        self.mutations
            .read(async |conn| {
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
        let page = Page::parse(req.page.as_ref(), &mut v);
        finish(v)?;
        self.mutations
            .read(async |conn| {
                let claim = claims::get_claim(conn, id).await?;
                app::check_can_read(&principal, &claim)?;
                let (entries, next_page_token) = timeline::page_timeline(conn, id, page).await?;
                Ok(Response::new(pb::GetClaimTimelineResponse {
                    entries,
                    next_page_token,
                }))
            })
            .await
    }

    type StreamDisputeEventsStream = EventStream<pb::StreamDisputeEventsResponse>;

    async fn stream_dispute_events(
        &self,
        request: Request<pb::StreamDisputeEventsRequest>,
    ) -> Result<Response<Self::StreamDisputeEventsStream>, Status> {
        feed_stream::serve(
            &self.flows.feed,
            self.pool().clone(),
            &self.feed_config,
            request,
        )
    }
}
