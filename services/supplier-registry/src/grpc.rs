//! The gRPC transport: validates requests, checks who may act on which
//! supplier, runs domain changes in one transaction under the caller's
//! idempotency key, and converts domain types to protobuf.

use sqlx::{PgConnection, PgPool};
use ta_proto::supplier::{self as pb, supplier_registry_service_server::SupplierRegistryService};
use ta_runtime::{
    ServiceError, Violations,
    auth::{self, MethodPolicy, Principal, Role},
    idempotency::{IdempotencyKeys, KeyScope, validate_key},
    money::{Currency, Money, is_country_code},
    timestamps,
};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    domain::{
        NewSupplier, PenaltyPolicy, Status as SupplierStatus, Supplier, Verification, is_storable,
        validate_contacts, validate_reference,
    },
    storage::{self, Reservation, ReviewRow, SearchFilter},
};

const SERVICE: &str = "tradeassurance.supplier.v1.SupplierRegistryService";
const DEFAULT_PAGE_SIZE: i64 = 20;
const MAX_PAGE_SIZE: i32 = 100;

/// Who may call what. Ownership (a supplier acts only on its own profile) is
/// checked per request, once the supplier is loaded.
pub fn method_policy() -> MethodPolicy {
    use Role::*;
    const ALL: &[Role] = &[Buyer, Supplier, Inspector, Operator, Service];
    [
        ("RegisterSupplier", &[Supplier, Operator][..]),
        ("GetSupplier", ALL),
        ("UpdateSupplierContacts", &[Supplier, Operator]),
        ("SubmitVerification", &[Supplier, Operator]),
        ("VerifySupplier", &[Operator]),
        ("RejectVerification", &[Operator]),
        ("EnrollTradeAssurance", &[Operator]),
        ("SetTradeAssuranceLimit", &[Operator]),
        ("SetSupplierStatus", &[Operator]),
        ("SearchSuppliers", ALL),
        ("ReserveCover", &[Service, Operator]),
        ("ReleaseCover", &[Service, Operator]),
        ("GetCover", &[Supplier, Service, Operator]),
        ("RecordCompletedContract", &[Service, Operator]),
        ("SubmitReview", &[Buyer]),
        ("ListReviews", ALL),
        ("RecordInquiry", &[Service, Operator]),
        ("RecordInquiryReply", &[Supplier, Service, Operator]),
        ("RecordPenalty", &[Service, Operator]),
    ]
    .into_iter()
    .fold(MethodPolicy::new(), |policy, (method, roles)| {
        policy.allow(format!("/{SERVICE}/{method}"), roles)
    })
}

pub struct Registry {
    pool: PgPool,
    keys: IdempotencyKeys,
    penalty_policy: PenaltyPolicy,
}

impl Registry {
    pub fn new(pool: PgPool, penalty_policy: PenaltyPolicy) -> Self {
        Self {
            pool,
            keys: storage::idempotency_keys(),
            penalty_policy,
        }
    }

    /// Runs `work` once under the request's idempotency key.
    async fn once<Q: prost::Message, R: prost::Message + Default>(
        &self,
        principal: &Principal,
        method: &'static str,
        key: &str,
        request: &Q,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<R, ServiceError>,
    ) -> Result<R, ServiceError> {
        let scope = KeyScope {
            principal_id: &principal.subject,
            method,
            key,
        };
        self.keys.run(&self.pool, &scope, request, work).await
    }

    /// The common shape of a change to one supplier: lock it, check the caller
    /// may act on it, apply the domain change, save.
    async fn change_supplier<Q: prost::Message>(
        &self,
        principal: &Principal,
        method: &'static str,
        key: &str,
        request: &Q,
        supplier_id: Uuid,
        change: impl FnOnce(&mut Supplier) -> Result<(), ServiceError>,
    ) -> Result<pb::Supplier, ServiceError> {
        let envelope = self
            .once(principal, method, key, request, async |tx| {
                let mut supplier = storage::lock_supplier(tx, supplier_id).await?;
                ensure_may_act(principal, &supplier)?;
                change(&mut supplier)?;
                storage::update_supplier(tx, &mut supplier).await?;
                Ok(pb::GetSupplierResponse {
                    supplier: Some(supplier_to_proto(&supplier)),
                })
            })
            .await?;
        envelope
            .supplier
            .ok_or_else(|| ServiceError::internal("stored response without supplier"))
    }
}

/// Suppliers act only on what they own; every other permitted role may act on any supplier.
fn ensure_may_act(principal: &Principal, supplier: &Supplier) -> Result<(), ServiceError> {
    if principal.role == Role::Supplier && principal.subject != supplier.owner_principal_id {
        return Err(ServiceError::PermissionDenied(format!(
            "supplier {} belongs to another account",
            supplier.id
        )));
    }
    Ok(())
}

/// Starts validating a mutation of one supplier: its idempotency key and id.
fn keyed_supplier_request(key: &str, supplier_id: &str) -> (Violations, Uuid) {
    let mut violations = Violations::new();
    validate_key(key, &mut violations);
    let id = parse_id("supplier_id", supplier_id, &mut violations);
    (violations, id)
}

fn parse_id(field: &str, value: &str, violations: &mut Violations) -> Uuid {
    Uuid::parse_str(value).unwrap_or_else(|_| {
        violations.add(field, "must be a supplier id (UUID)");
        Uuid::nil()
    })
}

fn require_text(field: &str, value: &str, max: usize, violations: &mut Violations) -> String {
    let value = value.trim();
    violations.require(
        !value.is_empty() && value.chars().count() <= max && is_storable(value),
        field,
        &format!("is required, at most {max} characters, no NUL"),
    );
    value.to_string()
}

fn page_size(page: Option<&ta_proto::common::PageRequest>, violations: &mut Violations) -> i64 {
    match page.map_or(0, |p| p.page_size) {
        0 => DEFAULT_PAGE_SIZE,
        n @ 1..=MAX_PAGE_SIZE => i64::from(n),
        _ => {
            violations.add("page.page_size", "must be 0 (default 20) to 100");
            DEFAULT_PAGE_SIZE
        }
    }
}

fn page_token(page: Option<&ta_proto::common::PageRequest>) -> &str {
    page.map_or("", |p| p.page_token.as_str())
}

fn supplier_to_proto(s: &Supplier) -> pb::Supplier {
    let cover = s.cover();
    pb::Supplier {
        supplier_id: s.id.to_string(),
        owner_principal_id: s.owner_principal_id.clone(),
        legal_name: s.legal_name.clone(),
        country_code: s.country_code.clone(),
        business_licence_number: s.business_licence_number.clone(),
        contacts: s
            .contacts
            .iter()
            .map(|c| pb::Contact {
                name: c.name.clone(),
                email: c.email.clone(),
                phone: c.phone.clone(),
            })
            .collect(),
        verification_status: match s.verification {
            Verification::Unverified => pb::VerificationStatus::Unverified,
            Verification::Submitted => pb::VerificationStatus::Submitted,
            Verification::Verified => pb::VerificationStatus::Verified,
            Verification::Rejected => pb::VerificationStatus::Rejected,
        } as i32,
        verification_rejection_reason: s.verification_rejection_reason.clone(),
        status: status_to_proto(s.status) as i32,
        status_reason: s.status_reason.clone(),
        enrolled: s.enrolled(),
        trade_assurance_badge: s.has_badge(),
        ta_limit: cover.map(|c| c.limit.to_proto()),
        cover_reserved: cover.map(|c| c.reserved.to_proto()),
        cover_remaining: cover.map(|c| c.remaining.to_proto()),
        review_count: u32::try_from(s.review_count).unwrap_or(u32::MAX),
        average_rating_centi: s.average_rating_centi(),
        inquiry_count: u32::try_from(s.inquiry_count).unwrap_or(u32::MAX),
        response_rate_basis_points: s.response_rate_basis_points(),
        penalty_points: u32::try_from(s.penalty_points).unwrap_or(0),
        created_at: Some(timestamps::to_proto(s.created_at)),
        updated_at: Some(timestamps::to_proto(s.updated_at)),
    }
}

fn status_to_proto(status: SupplierStatus) -> pb::SupplierStatus {
    match status {
        SupplierStatus::Active => pb::SupplierStatus::Active,
        SupplierStatus::Restricted => pb::SupplierStatus::Restricted,
        SupplierStatus::Suspended => pb::SupplierStatus::Suspended,
    }
}

fn reservation_to_proto(r: &Reservation) -> Result<pb::CoverReservation, ServiceError> {
    Ok(pb::CoverReservation {
        supplier_id: r.supplier_id.to_string(),
        contract_id: r.contract_id.clone(),
        amount: Some(r.amount()?.to_proto()),
        status: if r.is_active() {
            pb::CoverReservationStatus::Active
        } else {
            pb::CoverReservationStatus::Released
        } as i32,
        reserved_at: Some(timestamps::to_proto(r.reserved_at)),
        released_at: r.released_at.map(timestamps::to_proto),
    })
}

fn review_to_proto(r: &ReviewRow) -> pb::Review {
    pb::Review {
        supplier_id: r.supplier_id.to_string(),
        contract_id: r.contract_id.clone(),
        buyer_principal_id: r.buyer_principal_id.clone(),
        rating: u32::try_from(r.rating).unwrap_or(0),
        comment: r.comment.clone(),
        created_at: Some(timestamps::to_proto(r.created_at)),
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl SupplierRegistryService for Registry {
    async fn register_supplier(
        &self,
        request: Request<pb::RegisterSupplierRequest>,
    ) -> Answer<pb::RegisterSupplierResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        validate_key(&req.idempotency_key, &mut v);
        let new = NewSupplier::validate(&req, &mut v);
        let owner = match principal.role {
            Role::Supplier
                if req.owner_principal_id.is_empty()
                    || req.owner_principal_id == principal.subject =>
            {
                principal.subject.clone()
            }
            Role::Supplier => {
                return Err(ServiceError::PermissionDenied(
                    "a supplier registers only itself; leave owner_principal_id empty".into(),
                )
                .into());
            }
            _ => require_text("owner_principal_id", &req.owner_principal_id, 128, &mut v),
        };
        v.finish(())?;
        let response = self
            .once(
                &principal,
                "RegisterSupplier",
                &req.idempotency_key,
                &req,
                async |tx| {
                    let supplier = Supplier::register(new, owner, timestamps::now());
                    storage::insert_supplier(tx, &supplier).await?;
                    tracing::info!(supplier_id = %supplier.id, "supplier registered");
                    Ok(pb::RegisterSupplierResponse {
                        supplier: Some(supplier_to_proto(&supplier)),
                    })
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn get_supplier(
        &self,
        request: Request<pb::GetSupplierRequest>,
    ) -> Answer<pb::GetSupplierResponse> {
        let mut v = Violations::new();
        let id = parse_id("supplier_id", &request.get_ref().supplier_id, &mut v);
        v.finish(())?;
        let supplier = storage::get_supplier(&self.pool, id).await?;
        Ok(Response::new(pb::GetSupplierResponse {
            supplier: Some(supplier_to_proto(&supplier)),
        }))
    }

    async fn update_supplier_contacts(
        &self,
        request: Request<pb::UpdateSupplierContactsRequest>,
    ) -> Answer<pb::UpdateSupplierContactsResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (mut v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        let contacts = validate_contacts(&req.contacts, &mut v);
        v.finish(())?;
        let supplier = self
            .change_supplier(
                &principal,
                "UpdateSupplierContacts",
                &req.idempotency_key,
                &req,
                id,
                |s| {
                    s.contacts = contacts;
                    Ok(())
                },
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
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        v.finish(())?;
        let supplier = self
            .change_supplier(
                &principal,
                "SubmitVerification",
                &req.idempotency_key,
                &req,
                id,
                |s| s.submit_verification(),
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
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        v.finish(())?;
        let supplier = self
            .change_supplier(
                &principal,
                "VerifySupplier",
                &req.idempotency_key,
                &req,
                id,
                |s| s.verify(),
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
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (mut v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        let reason = require_text("reason", &req.reason, 1000, &mut v);
        v.finish(())?;
        let supplier = self
            .change_supplier(
                &principal,
                "RejectVerification",
                &req.idempotency_key,
                &req,
                id,
                |s| s.reject_verification(reason),
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
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (mut v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        let limit = Money::positive_from_proto("ta_limit", req.ta_limit.as_ref(), &mut v);
        let limit = v.finish_some("ta_limit", limit)?;
        let supplier = self
            .change_supplier(
                &principal,
                "EnrollTradeAssurance",
                &req.idempotency_key,
                &req,
                id,
                |s| s.enroll(limit),
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
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (mut v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        let limit = Money::positive_from_proto("ta_limit", req.ta_limit.as_ref(), &mut v);
        let limit = v.finish_some("ta_limit", limit)?;
        let supplier = self
            .change_supplier(
                &principal,
                "SetTradeAssuranceLimit",
                &req.idempotency_key,
                &req,
                id,
                |s| s.set_limit(limit),
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
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (mut v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        let status = match pb::SupplierStatus::try_from(req.status) {
            Ok(pb::SupplierStatus::Active) => Some(SupplierStatus::Active),
            Ok(pb::SupplierStatus::Restricted) => Some(SupplierStatus::Restricted),
            Ok(pb::SupplierStatus::Suspended) => Some(SupplierStatus::Suspended),
            _ => {
                v.add("status", "must be ACTIVE, RESTRICTED or SUSPENDED");
                None
            }
        };
        let reason = require_text("reason", &req.reason, 1000, &mut v);
        let status = v.finish_some("status", status)?;
        let supplier = self
            .change_supplier(
                &principal,
                "SetSupplierStatus",
                &req.idempotency_key,
                &req,
                id,
                |s| {
                    s.set_status(status, reason);
                    Ok(())
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
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = page_size(req.page.as_ref(), &mut v);
        let token = page_token(req.page.as_ref());
        let after_id = if token.is_empty() {
            None
        } else {
            Uuid::try_parse(token)
                .map_err(|_| v.add("page.page_token", "is not a token this search returned"))
                .ok()
        };
        if !req.country_code.is_empty() && !is_country_code(&req.country_code) {
            v.add(
                "country_code",
                "must be an ISO 3166-1 alpha-2 code such as CN",
            );
        }
        let min_rating = match req.min_average_rating_centi {
            0 => None,
            n @ 100..=500 => Some(i64::from(n)),
            _ => {
                v.add("min_average_rating_centi", "must be 0 (any) or 100-500");
                None
            }
        };
        let min_response_rate = match req.min_response_rate_basis_points {
            0 => None,
            n @ 1..=10_000 => Some(i64::from(n)),
            _ => {
                v.add(
                    "min_response_rate_basis_points",
                    "must be 0 (any) or 1-10000",
                );
                None
            }
        };
        let min_cover = req.min_cover_remaining.as_ref().and_then(|m| {
            let currency = Currency::parse(&m.currency_code);
            if currency.is_none() {
                v.add(
                    "min_cover_remaining.currency_code",
                    "must be an ISO 4217 currency code such as USD",
                );
            }
            if m.amount_minor < 0 {
                v.add("min_cover_remaining.amount_minor", "must not be negative");
            }
            currency.map(|c| Money::new(m.amount_minor, c))
        });
        v.finish(())?;
        let filter = SearchFilter {
            has_badge: req.has_trade_assurance_badge,
            verified: req.verified,
            country_code: (!req.country_code.is_empty()).then(|| req.country_code.clone()),
            min_average_rating_centi: min_rating,
            min_cover_remaining: min_cover,
            min_response_rate_basis_points: min_response_rate,
            after_id,
            limit: limit + 1,
        };
        let mut found = storage::search_suppliers(&self.pool, &filter).await?;
        let next_page_token = if found.len() as i64 > limit {
            found.truncate(limit as usize);
            found.last().map(|s| s.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::SearchSuppliersResponse {
            suppliers: found.iter().map(supplier_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn reserve_cover(
        &self,
        request: Request<pb::ReserveCoverRequest>,
    ) -> Answer<pb::ReserveCoverResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (mut v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        validate_reference("contract_id", &req.contract_id, &mut v);
        let amount = Money::positive_from_proto("amount", req.amount.as_ref(), &mut v);
        let amount = v.finish_some("amount", amount)?;
        let response = self
            .once(
                &principal,
                "ReserveCover",
                &req.idempotency_key,
                &req,
                async |tx| {
                    let mut supplier = storage::lock_supplier(tx, id).await?;
                    let reservation = match storage::find_reservation(tx, &req.contract_id).await? {
                        // Idempotent per contract, whatever the idempotency key.
                        Some(existing) => same_reservation(existing, id, amount)?,
                        None => {
                            supplier.reserve_cover(amount)?;
                            let reservation = Reservation {
                                contract_id: req.contract_id.clone(),
                                supplier_id: id,
                                currency: amount.currency.to_string(),
                                amount_minor: amount.amount_minor,
                                status: "active".into(),
                                reserved_at: timestamps::now(),
                                released_at: None,
                            };
                            storage::insert_reservation(tx, &reservation).await?;
                            storage::update_supplier(tx, &mut supplier).await?;
                            reservation
                        }
                    };
                    Ok(pb::ReserveCoverResponse {
                        reservation: Some(reservation_to_proto(&reservation)?),
                        cover_remaining: supplier.cover().map(|c| c.remaining.to_proto()),
                    })
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn release_cover(
        &self,
        request: Request<pb::ReleaseCoverRequest>,
    ) -> Answer<pb::ReleaseCoverResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (mut v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        validate_reference("contract_id", &req.contract_id, &mut v);
        v.finish(())?;
        let response = self
            .once(
                &principal,
                "ReleaseCover",
                &req.idempotency_key,
                &req,
                async |tx| {
                    let mut supplier = storage::lock_supplier(tx, id).await?;
                    let mut reservation = storage::find_reservation(tx, &req.contract_id)
                        .await?
                        .filter(|r| r.supplier_id == id)
                        .ok_or_else(|| {
                            ServiceError::not_found(
                                "cover reservation for contract",
                                &req.contract_id,
                            )
                        })?;
                    // A hold resolves at most once: releasing again returns it unchanged.
                    let now = timestamps::now();
                    if storage::release_reservation(tx, &req.contract_id, now).await? {
                        supplier.release_cover(reservation.amount()?);
                        storage::update_supplier(tx, &mut supplier).await?;
                        reservation.status = "released".into();
                        reservation.released_at = Some(now);
                    }
                    Ok(pb::ReleaseCoverResponse {
                        reservation: Some(reservation_to_proto(&reservation)?),
                        cover_remaining: supplier.cover().map(|c| c.remaining.to_proto()),
                    })
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn get_cover(
        &self,
        request: Request<pb::GetCoverRequest>,
    ) -> Answer<pb::GetCoverResponse> {
        let principal = auth::principal(&request)?;
        let mut v = Violations::new();
        let id = parse_id("supplier_id", &request.get_ref().supplier_id, &mut v);
        v.finish(())?;
        let supplier = storage::get_supplier(&self.pool, id).await?;
        ensure_may_act(&principal, &supplier)?;
        let active = storage::active_reservations(&self.pool, id).await?;
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

    async fn record_completed_contract(
        &self,
        request: Request<pb::RecordCompletedContractRequest>,
    ) -> Answer<pb::RecordCompletedContractResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (mut v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        validate_reference("contract_id", &req.contract_id, &mut v);
        let buyer = require_text("buyer_principal_id", &req.buyer_principal_id, 128, &mut v);
        v.finish(())?;
        let response = self
            .once(
                &principal,
                "RecordCompletedContract",
                &req.idempotency_key,
                &req,
                async |tx| {
                    storage::lock_supplier(tx, id).await?;
                    storage::insert_completed_contract(tx, &req.contract_id, id, &buyer).await?;
                    Ok(pb::RecordCompletedContractResponse {
                        supplier_id: id.to_string(),
                        contract_id: req.contract_id.clone(),
                    })
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn submit_review(
        &self,
        request: Request<pb::SubmitReviewRequest>,
    ) -> Answer<pb::SubmitReviewResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (mut v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        validate_reference("contract_id", &req.contract_id, &mut v);
        let rating = u8::try_from(req.rating)
            .ok()
            .filter(|r| (1..=5).contains(r));
        if rating.is_none() {
            v.add("rating", "must be 1-5");
        }
        v.require(
            req.comment.chars().count() <= 2000 && is_storable(&req.comment),
            "comment",
            "must be at most 2000 characters, no NUL",
        );
        let rating = v.finish_some("rating", rating)?;
        let response = self
            .once(
                &principal,
                "SubmitReview",
                &req.idempotency_key,
                &req,
                async |tx| {
                    let mut supplier = storage::lock_supplier(tx, id).await?;
                    let (supplier_of_contract, buyer) =
                        storage::completed_contract(tx, &req.contract_id)
                            .await?
                            .filter(|(supplier_id, _)| *supplier_id == id)
                            .ok_or_else(|| {
                                ServiceError::not_found("completed contract", &req.contract_id)
                            })?;
                    if buyer != principal.subject {
                        return Err(ServiceError::PermissionDenied(format!(
                            "only the buyer of contract {} may review it",
                            req.contract_id
                        )));
                    }
                    let review = ReviewRow {
                        contract_id: req.contract_id.clone(),
                        supplier_id: supplier_of_contract,
                        buyer_principal_id: buyer,
                        rating: i16::from(rating),
                        comment: req.comment.trim().to_string(),
                        created_at: timestamps::now(),
                    };
                    if !storage::insert_review(tx, &review).await? {
                        return Err(ServiceError::AlreadyExists(format!(
                            "contract {} has already been reviewed",
                            req.contract_id
                        )));
                    }
                    supplier.record_review(rating);
                    storage::update_supplier(tx, &mut supplier).await?;
                    Ok(pb::SubmitReviewResponse {
                        review: Some(review_to_proto(&review)),
                        supplier: Some(supplier_to_proto(&supplier)),
                    })
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn list_reviews(
        &self,
        request: Request<pb::ListReviewsRequest>,
    ) -> Answer<pb::ListReviewsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = parse_id("supplier_id", &req.supplier_id, &mut v);
        let limit = page_size(req.page.as_ref(), &mut v);
        let token = page_token(req.page.as_ref());
        let after = if token.is_empty() {
            None
        } else {
            let parsed = token.split_once('.').and_then(|(nanos, contract)| {
                // Unsigned: a review is never older than 1970, and a forged time
                // Postgres cannot represent would otherwise fail as INTERNAL.
                let nanos = nanos.parse::<u64>().ok()?;
                let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).ok()?;
                Some((at, contract.to_string()))
            });
            if parsed.is_none() {
                v.add("page.page_token", "is not a token this listing returned");
            }
            parsed
        };
        v.finish(())?;
        storage::get_supplier(&self.pool, id).await?;
        let mut reviews = storage::list_reviews(&self.pool, id, after, limit + 1).await?;
        let next_page_token = if reviews.len() as i64 > limit {
            reviews.truncate(limit as usize);
            reviews
                .last()
                .map(|r| format!("{}.{}", r.created_at.unix_timestamp_nanos(), r.contract_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListReviewsResponse {
            reviews: reviews.iter().map(review_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn record_inquiry(
        &self,
        request: Request<pb::RecordInquiryRequest>,
    ) -> Answer<pb::RecordInquiryResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (mut v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        validate_reference("inquiry_id", &req.inquiry_id, &mut v);
        v.finish(())?;
        let response = self
            .once(
                &principal,
                "RecordInquiry",
                &req.idempotency_key,
                &req,
                async |tx| {
                    let mut supplier = storage::lock_supplier(tx, id).await?;
                    if storage::insert_inquiry(tx, id, &req.inquiry_id).await? {
                        supplier.record_inquiry();
                        storage::update_supplier(tx, &mut supplier).await?;
                    }
                    Ok(pb::RecordInquiryResponse {
                        supplier: Some(supplier_to_proto(&supplier)),
                    })
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn record_inquiry_reply(
        &self,
        request: Request<pb::RecordInquiryReplyRequest>,
    ) -> Answer<pb::RecordInquiryReplyResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (mut v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        validate_reference("inquiry_id", &req.inquiry_id, &mut v);
        v.finish(())?;
        let response = self
            .once(
                &principal,
                "RecordInquiryReply",
                &req.idempotency_key,
                &req,
                async |tx| {
                    let mut supplier = storage::lock_supplier(tx, id).await?;
                    ensure_may_act(&principal, &supplier)?;
                    match storage::mark_inquiry_replied(tx, id, &req.inquiry_id).await? {
                        None => return Err(ServiceError::not_found("inquiry", &req.inquiry_id)),
                        Some(true) => {
                            supplier.record_inquiry_reply();
                            storage::update_supplier(tx, &mut supplier).await?;
                        }
                        Some(false) => {}
                    }
                    Ok(pb::RecordInquiryReplyResponse {
                        supplier: Some(supplier_to_proto(&supplier)),
                    })
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn record_penalty(
        &self,
        request: Request<pb::RecordPenaltyRequest>,
    ) -> Answer<pb::RecordPenaltyResponse> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let (mut v, id) = keyed_supplier_request(&req.idempotency_key, &req.supplier_id);
        validate_reference("dispute_id", &req.dispute_id, &mut v);
        v.require((1..=100).contains(&req.points), "points", "must be 1-100");
        let reason = require_text("reason", &req.reason, 1000, &mut v);
        v.finish(())?;
        let policy = self.penalty_policy;
        let response = self
            .once(&principal, "RecordPenalty", &req.idempotency_key, &req, async |tx| {
                let mut supplier = storage::lock_supplier(tx, id).await?;
                let points = i32::try_from(req.points).unwrap_or(i32::MAX);
                let restricted = match storage::insert_penalty(tx, &req.dispute_id, id, points, &reason).await? {
                    None => {
                        let restricted = supplier.record_penalty(req.points, policy);
                        storage::update_supplier(tx, &mut supplier).await?;
                        if restricted {
                            tracing::warn!(supplier_id = %id, points = supplier.penalty_points, "supplier restricted by penalty points");
                        }
                        restricted
                    }
                    // Once per dispute: the same penalty again changes nothing.
                    Some((same_supplier, same_points)) if same_supplier == id && same_points == points => false,
                    Some(_) => {
                        return Err(ServiceError::AlreadyExists(format!(
                            "dispute {} already has a different penalty recorded",
                            req.dispute_id
                        )));
                    }
                };
                Ok(pb::RecordPenaltyResponse {
                    supplier: Some(supplier_to_proto(&supplier)),
                    restricted_by_this_penalty: restricted,
                })
            })
            .await?;
        Ok(Response::new(response))
    }
}

/// A contract already holding cover: the same request again is answered with
/// it; anything else about it is a conflict.
fn same_reservation(
    existing: Reservation,
    supplier_id: Uuid,
    amount: Money,
) -> Result<Reservation, ServiceError> {
    if existing.supplier_id != supplier_id
        || existing.amount_minor != amount.amount_minor
        || existing.currency != amount.currency.as_str()
    {
        return Err(ServiceError::AlreadyExists(format!(
            "contract {} already holds cover of {} {} minor units with supplier {}",
            existing.contract_id, existing.currency, existing.amount_minor, existing.supplier_id
        )));
    }
    if !existing.is_active() {
        return Err(ServiceError::FailedPrecondition(format!(
            "cannot reserve cover: the cover of contract {} was released",
            existing.contract_id
        )));
    }
    Ok(existing)
}
