//! The gRPC transport: parses each request into a command (every bad field
//! reported at once), hands mutations to the shared pipeline (caller, key,
//! one transaction, stored answer) and the use cases in `app`, and answers
//! with the protobuf `views` in the view the caller may see. Who may call what
//! is declared on each RPC in `proto/` and enforced by the server's auth layer.

mod parse;

use ta_proto::supplier::{self as pb, supplier_registry_service_server::SupplierRegistryService};
use ta_runtime::{
    ServiceError, Violations,
    auth::{self, Role},
    group_commit::GroupCommitConfig,
    money::Money,
    paging,
    pipeline::Mutations,
    text::require_text,
};
use ta_workflow::{
    config::FeedConfig,
    feed::{EventStream, Feed},
    feed_stream,
};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    app::{
        self, AdjustCover, CompletedContract, Inquiry, NewReview, Penalty, Register, ReleaseCover,
        ReserveCover, SupplierChange,
    },
    domain::{
        NewSupplier, PenaltyPolicy, Status as SupplierStatus, is_storable, validate_contacts,
        validate_reference,
    },
    storage,
    views::{reservation_to_proto, review_to_proto, supplier_for, supplier_to_proto},
};

pub struct RegistryService {
    mutations: Mutations,
    registry: app::Registry,
    feed_config: FeedConfig,
}

impl RegistryService {
    /// The registry over `pool`, telling its changes to `feed` (served with
    /// `feed_config`'s limits), its concurrent changes sharing transactions
    /// as `group` says.
    pub fn new(
        pool: sqlx::PgPool,
        penalty_policy: PenaltyPolicy,
        feed: Feed,
        feed_config: FeedConfig,
        group: GroupCommitConfig,
    ) -> Self {
        Self {
            mutations: Mutations::new(pool, storage::SCHEMA).grouped(group),
            registry: app::Registry {
                penalty_policy,
                feed,
            },
            feed_config,
        }
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.mutations.pool()
    }

    /// One change to one supplier, answered with the supplier (private view:
    /// only its owner, operators and services may change it).
    async fn change<Q: ta_proto::IdempotentRequest>(
        &self,
        request: Request<Q>,
        supplier_id: impl FnOnce(&Q) -> &str,
        parse: impl FnOnce(&Q, &mut Violations) -> Result<SupplierChange, ServiceError>,
    ) -> Result<pb::Supplier, Status> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let id = parse_id("supplier_id", supplier_id(req), v);
            Ok((id, parse(req, v)?))
        })?;
        let answer = self
            .mutations
            .execute(&prepared, || {
                async |tx| {
                    let principal = prepared.principal();
                    let (id, change) = &prepared.command;
                    let supplier = self.registry.change(tx, principal, *id, change).await?;
                    Ok(pb::GetSupplierResponse {
                        supplier: Some(supplier_to_proto(&supplier, true)),
                    })
                }
            })
            .await?;
        answer
            .into_inner()
            .supplier
            .ok_or_else(|| ServiceError::internal("stored response without supplier").into())
    }
}

fn parse_id(field: &str, value: &str, violations: &mut Violations) -> Uuid {
    Uuid::parse_str(value).unwrap_or_else(|_| {
        violations.add(field, "must be a supplier id (UUID)");
        Uuid::nil()
    })
}

fn reference(field: &str, value: &str, violations: &mut Violations) -> String {
    validate_reference(field, value, violations);
    value.to_string()
}

/// A positive amount in a known currency. When invalid, the violations are
/// recorded in `violations` and the command is not built: the pipeline
/// reports them with every other bad field.
fn positive_money(
    field: &str,
    money: Option<&ta_proto::common::Money>,
    violations: &mut Violations,
) -> Result<Money, ServiceError> {
    Money::positive_from_proto(field, money, violations)
        .ok_or(ServiceError::InvalidArgument(Vec::new()))
}

fn inquiry(supplier_id: &str, inquiry_id: &str, violations: &mut Violations) -> Inquiry {
    Inquiry {
        supplier_id: parse_id("supplier_id", supplier_id, violations),
        inquiry_id: reference("inquiry_id", inquiry_id, violations),
    }
}

const REVIEW_PAGES: &str = "reviews";

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl SupplierRegistryService for RegistryService {
    async fn register_supplier(
        &self,
        request: Request<pb::RegisterSupplierRequest>,
    ) -> Answer<pb::RegisterSupplierResponse> {
        let prepared = self.mutations.prepare(request, |req, principal, v| {
            let supplier = NewSupplier::validate(req, v);
            let owner_principal_id = match principal.role {
                Role::Supplier
                    if req.owner_principal_id.is_empty()
                        || req.owner_principal_id == principal.subject =>
                {
                    principal.subject.clone()
                }
                Role::Supplier => {
                    return Err(ServiceError::PermissionDenied(
                        "a supplier registers only itself; leave owner_principal_id empty".into(),
                    ));
                }
                _ => require_text("owner_principal_id", &req.owner_principal_id, 128, v),
            };
            Ok(Register {
                supplier,
                owner_principal_id,
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let command = &prepared.command;
                    let principal = prepared.principal();
                    let supplier = self.registry.register(tx, principal, command).await?;
                    Ok(pb::RegisterSupplierResponse {
                        supplier: Some(supplier_to_proto(&supplier, true)),
                    })
                }
            })
            .await
    }

    async fn get_supplier(
        &self,
        request: Request<pb::GetSupplierRequest>,
    ) -> Answer<pb::GetSupplierResponse> {
        let principal = auth::principal(&request)?;
        let mut v = Violations::new();
        let id = parse_id("supplier_id", &request.get_ref().supplier_id, &mut v);
        v.finish(())?;
        let supplier = storage::get_supplier(self.pool(), id).await?;
        Ok(Response::new(pb::GetSupplierResponse {
            supplier: Some(supplier_for(&principal, &supplier)),
        }))
    }

    async fn update_supplier_contacts(
        &self,
        request: Request<pb::UpdateSupplierContactsRequest>,
    ) -> Answer<pb::UpdateSupplierContactsResponse> {
        let supplier = self
            .change(
                request,
                |r| &r.supplier_id,
                |r, v| Ok(SupplierChange::Contacts(validate_contacts(&r.contacts, v))),
            )
            .await?;
        Ok(Response::new(pb::UpdateSupplierContactsResponse {
            supplier: Some(supplier),
        }))
    }

    async fn submit_verification(
        &self,
        request: Request<pb::SubmitVerificationRequest>,
    ) -> Answer<pb::SubmitVerificationResponse> {
        let supplier = self
            .change(
                request,
                |r| &r.supplier_id,
                |_, _| Ok(SupplierChange::SubmitVerification),
            )
            .await?;
        Ok(Response::new(pb::SubmitVerificationResponse {
            supplier: Some(supplier),
        }))
    }

    async fn verify_supplier(
        &self,
        request: Request<pb::VerifySupplierRequest>,
    ) -> Answer<pb::VerifySupplierResponse> {
        let supplier = self
            .change(
                request,
                |r| &r.supplier_id,
                |_, _| Ok(SupplierChange::Verify),
            )
            .await?;
        Ok(Response::new(pb::VerifySupplierResponse {
            supplier: Some(supplier),
        }))
    }

    async fn reject_verification(
        &self,
        request: Request<pb::RejectVerificationRequest>,
    ) -> Answer<pb::RejectVerificationResponse> {
        let supplier = self
            .change(
                request,
                |r| &r.supplier_id,
                |r, v| {
                    Ok(SupplierChange::RejectVerification {
                        reason: require_text("reason", &r.reason, 1000, v),
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::RejectVerificationResponse {
            supplier: Some(supplier),
        }))
    }

    async fn enroll_trade_assurance(
        &self,
        request: Request<pb::EnrollTradeAssuranceRequest>,
    ) -> Answer<pb::EnrollTradeAssuranceResponse> {
        let supplier = self
            .change(
                request,
                |r| &r.supplier_id,
                |r, v| {
                    Ok(SupplierChange::Enroll {
                        limit: positive_money("ta_limit", r.ta_limit.as_ref(), v)?,
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::EnrollTradeAssuranceResponse {
            supplier: Some(supplier),
        }))
    }

    async fn set_trade_assurance_limit(
        &self,
        request: Request<pb::SetTradeAssuranceLimitRequest>,
    ) -> Answer<pb::SetTradeAssuranceLimitResponse> {
        let supplier = self
            .change(
                request,
                |r| &r.supplier_id,
                |r, v| {
                    Ok(SupplierChange::SetLimit {
                        limit: positive_money("ta_limit", r.ta_limit.as_ref(), v)?,
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::SetTradeAssuranceLimitResponse {
            supplier: Some(supplier),
        }))
    }

    async fn set_supplier_status(
        &self,
        request: Request<pb::SetSupplierStatusRequest>,
    ) -> Answer<pb::SetSupplierStatusResponse> {
        let supplier = self
            .change(
                request,
                |r| &r.supplier_id,
                |r, v| {
                    let status = match pb::SupplierStatus::try_from(r.status) {
                        Ok(pb::SupplierStatus::Active) => SupplierStatus::Active,
                        Ok(pb::SupplierStatus::Restricted) => SupplierStatus::Restricted,
                        Ok(pb::SupplierStatus::Suspended) => SupplierStatus::Suspended,
                        _ => {
                            v.add("status", "must be ACTIVE, RESTRICTED or SUSPENDED");
                            SupplierStatus::Active
                        }
                    };
                    Ok(SupplierChange::SetStatus {
                        status,
                        reason: require_text("reason", &r.reason, 1000, v),
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::SetSupplierStatusResponse {
            supplier: Some(supplier),
        }))
    }

    async fn search_suppliers(
        &self,
        request: Request<pb::SearchSuppliersRequest>,
    ) -> Answer<pb::SearchSuppliersResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let filter = parse::search(&req, &principal, &mut v)?;
        v.finish(())?;
        let found = storage::search_suppliers(self.pool(), &filter).await?;
        let (found, next_page_token) = paging::split_page(found, filter.limit - 1, |s| {
            parse::supplier_token(filter.sort, filter.sort.key_of(s), s.id)
        });
        Ok(Response::new(pb::SearchSuppliersResponse {
            suppliers: found.iter().map(|s| supplier_for(&principal, s)).collect(),
            next_page_token,
        }))
    }

    async fn reserve_cover(
        &self,
        request: Request<pb::ReserveCoverRequest>,
    ) -> Answer<pb::ReserveCoverResponse> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(ReserveCover {
                supplier_id: parse_id("supplier_id", &req.supplier_id, v),
                contract_id: reference("contract_id", &req.contract_id, v),
                amount: positive_money("amount", req.amount.as_ref(), v)?,
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let command = &prepared.command;
                    let (reservation, supplier) = self.registry.reserve_cover(tx, command).await?;
                    Ok(pb::ReserveCoverResponse {
                        reservation: Some(reservation_to_proto(&reservation)?),
                        cover_remaining: supplier.cover().map(|c| c.remaining.to_proto()),
                    })
                }
            })
            .await
    }

    async fn adjust_cover(
        &self,
        request: Request<pb::AdjustCoverRequest>,
    ) -> Answer<pb::AdjustCoverResponse> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            v.require(
                req.contract_version >= 2,
                "contract_version",
                "must be the signed amendment's version (2 or more)",
            );
            Ok(AdjustCover {
                supplier_id: parse_id("supplier_id", &req.supplier_id, v),
                contract_id: reference("contract_id", &req.contract_id, v),
                amount: positive_money("amount", req.amount.as_ref(), v)?,
                contract_version: req.contract_version,
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let command = &prepared.command;
                    let (reservation, supplier) = self.registry.adjust_cover(tx, command).await?;
                    Ok(pb::AdjustCoverResponse {
                        reservation: Some(reservation_to_proto(&reservation)?),
                        cover_remaining: supplier.cover().map(|c| c.remaining.to_proto()),
                    })
                }
            })
            .await
    }

    async fn release_cover(
        &self,
        request: Request<pb::ReleaseCoverRequest>,
    ) -> Answer<pb::ReleaseCoverResponse> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(ReleaseCover {
                supplier_id: parse_id("supplier_id", &req.supplier_id, v),
                contract_id: reference("contract_id", &req.contract_id, v),
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let command = &prepared.command;
                    let (reservation, supplier) = self.registry.release_cover(tx, command).await?;
                    Ok(pb::ReleaseCoverResponse {
                        reservation: Some(reservation_to_proto(&reservation)?),
                        cover_remaining: supplier.cover().map(|c| c.remaining.to_proto()),
                    })
                }
            })
            .await
    }

    async fn release_stranded_cover(
        &self,
        request: Request<pb::ReleaseStrandedCoverRequest>,
    ) -> Answer<pb::ReleaseStrandedCoverResponse> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(ReleaseCover {
                supplier_id: parse_id("supplier_id", &req.supplier_id, v),
                contract_id: reference("contract_id", &req.contract_id, v),
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let command = &prepared.command;
                    let (reservation, supplier) =
                        self.registry.release_stranded_cover(tx, command).await?;
                    Ok(pb::ReleaseStrandedCoverResponse {
                        reservation: Some(reservation_to_proto(&reservation)?),
                        cover_remaining: supplier.cover().map(|c| c.remaining.to_proto()),
                    })
                }
            })
            .await
    }

    async fn get_cover(
        &self,
        request: Request<pb::GetCoverRequest>,
    ) -> Answer<pb::GetCoverResponse> {
        let principal = auth::principal(&request)?;
        let mut v = Violations::new();
        let id = parse_id("supplier_id", &request.get_ref().supplier_id, &mut v);
        v.finish(())?;
        let supplier = storage::get_supplier(self.pool(), id).await?;
        app::ensure_may_act(&principal, &supplier)?;
        let active = storage::list_active_reservations(self.pool(), id).await?;
        let cover = supplier.cover();
        Ok(Response::new(pb::GetCoverResponse {
            ta_limit: cover.map(|c| c.limit.to_proto()),
            cover_reserved: cover.map(|c| c.reserved.to_proto()),
            cover_remaining: cover.map(|c| c.remaining.to_proto()),
            active_reservations: active
                .iter()
                .map(reservation_to_proto)
                .collect::<Result<_, _>>()?,
        }))
    }

    async fn list_cover_reservations(
        &self,
        request: Request<pb::ListCoverReservationsRequest>,
    ) -> Answer<pb::ListCoverReservationsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let filter = parse::reservations(&req, &mut v);
        v.finish(())?;
        let found = storage::list_cover_reservations(self.pool(), &filter).await?;
        let (found, next_page_token) = paging::split_page(found, filter.limit - 1, |r| {
            parse::reservation_token(r.reserved_at, &r.contract_id)
        });
        Ok(Response::new(pb::ListCoverReservationsResponse {
            reservations: found
                .iter()
                .map(reservation_to_proto)
                .collect::<Result<_, _>>()?,
            next_page_token,
        }))
    }

    async fn record_completed_contract(
        &self,
        request: Request<pb::RecordCompletedContractRequest>,
    ) -> Answer<pb::RecordCompletedContractResponse> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(CompletedContract {
                supplier_id: parse_id("supplier_id", &req.supplier_id, v),
                contract_id: reference("contract_id", &req.contract_id, v),
                buyer_principal_id: require_text(
                    "buyer_principal_id",
                    &req.buyer_principal_id,
                    128,
                    v,
                ),
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let command = &prepared.command;
                    self.registry.record_completed_contract(tx, command).await?;
                    Ok(pb::RecordCompletedContractResponse {
                        supplier_id: command.supplier_id.to_string(),
                        contract_id: command.contract_id.clone(),
                    })
                }
            })
            .await
    }

    async fn submit_review(
        &self,
        request: Request<pb::SubmitReviewRequest>,
    ) -> Answer<pb::SubmitReviewResponse> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            let rating = u8::try_from(req.rating)
                .ok()
                .filter(|r| (1..=5).contains(r))
                .unwrap_or_else(|| {
                    v.add("rating", "must be 1-5");
                    1
                });
            v.require(
                req.comment.chars().count() <= 2000 && is_storable(&req.comment),
                "comment",
                "must be at most 2000 characters, no NUL",
            );
            Ok(NewReview {
                supplier_id: parse_id("supplier_id", &req.supplier_id, v),
                contract_id: reference("contract_id", &req.contract_id, v),
                rating,
                comment: req.comment.trim().to_string(),
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let principal = prepared.principal();
                    let command = &prepared.command;
                    let (review, supplier) =
                        self.registry.submit_review(tx, principal, command).await?;
                    Ok(pb::SubmitReviewResponse {
                        review: Some(review_to_proto(principal, &review)),
                        supplier: Some(supplier_for(principal, &supplier)),
                    })
                }
            })
            .await
    }

    async fn list_reviews(
        &self,
        request: Request<pb::ListReviewsRequest>,
    ) -> Answer<pb::ListReviewsResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = parse_id("supplier_id", &req.supplier_id, &mut v);
        let limit = paging::page_size(req.page.as_ref(), &mut v);
        let after = paging::cursor(req.page.as_ref(), REVIEW_PAGES, &mut v, |fields| {
            let [nanos, contract] = fields else {
                return None;
            };
            // A time Postgres cannot represent would otherwise fail as INTERNAL.
            let nanos = nanos.parse::<u64>().ok()?;
            let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).ok()?;
            Some((at, (*contract).to_string()))
        });
        v.finish(())?;
        storage::get_supplier(self.pool(), id).await?;
        let reviews = storage::list_reviews(self.pool(), id, after, limit + 1).await?;
        let (reviews, next_page_token) = paging::split_page(reviews, limit, |r| {
            paging::token(
                REVIEW_PAGES,
                &[
                    &r.created_at.unix_timestamp_nanos().to_string(),
                    &r.contract_id,
                ],
            )
        });
        Ok(Response::new(pb::ListReviewsResponse {
            reviews: reviews
                .iter()
                .map(|r| review_to_proto(&principal, r))
                .collect(),
            next_page_token,
        }))
    }

    async fn record_inquiry(
        &self,
        request: Request<pb::RecordInquiryRequest>,
    ) -> Answer<pb::RecordInquiryResponse> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(inquiry(&req.supplier_id, &req.inquiry_id, v))
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let principal = prepared.principal();
                    let command = &prepared.command;
                    let supplier = self.registry.record_inquiry(tx, command).await?;
                    Ok(pb::RecordInquiryResponse {
                        supplier: Some(supplier_for(principal, &supplier)),
                    })
                }
            })
            .await
    }

    async fn record_inquiry_reply(
        &self,
        request: Request<pb::RecordInquiryReplyRequest>,
    ) -> Answer<pb::RecordInquiryReplyResponse> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            Ok(inquiry(&req.supplier_id, &req.inquiry_id, v))
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let principal = prepared.principal();
                    let command = &prepared.command;
                    let supplier = self
                        .registry
                        .record_inquiry_reply(tx, principal, command)
                        .await?;
                    Ok(pb::RecordInquiryReplyResponse {
                        supplier: Some(supplier_for(principal, &supplier)),
                    })
                }
            })
            .await
    }

    async fn record_penalty(
        &self,
        request: Request<pb::RecordPenaltyRequest>,
    ) -> Answer<pb::RecordPenaltyResponse> {
        let prepared = self.mutations.prepare(request, |req, _, v| {
            v.require((1..=100).contains(&req.points), "points", "must be 1-100");
            Ok(Penalty {
                supplier_id: parse_id("supplier_id", &req.supplier_id, v),
                claim_id: reference("claim_id", &req.claim_id, v),
                points: req.points,
                reason: require_text("reason", &req.reason, 1000, v),
            })
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let principal = prepared.principal();
                    let command = &prepared.command;
                    let (supplier, restricted) =
                        self.registry.record_penalty(tx, principal, command).await?;
                    Ok(pb::RecordPenaltyResponse {
                        supplier: Some(supplier_for(principal, &supplier)),
                        restricted_by_this_penalty: restricted,
                    })
                }
            })
            .await
    }

    type StreamSupplierEventsStream = EventStream<pb::StreamSupplierEventsResponse>;

    async fn stream_supplier_events(
        &self,
        request: Request<pb::StreamSupplierEventsRequest>,
    ) -> Result<Response<Self::StreamSupplierEventsStream>, Status> {
        feed_stream::serve(
            &self.registry.feed,
            self.pool().clone(),
            &self.feed_config,
            request,
        )
    }
}
