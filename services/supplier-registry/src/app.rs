//! The registry's use cases: each runs in the transaction the shared pipeline
//! opened, loads what it needs with row locks, applies the domain rules and
//! saves. Business rules that need storage live here (one reservation per
//! contract, a release resolves once, one penalty per dispute, who may review),
//! not in the transport.

use sqlx::PgConnection;
use ta_runtime::{
    ServiceError,
    auth::{Actor, Principal, Role},
    money::Money,
    timestamps,
};
use ta_workflow::feed::Feed;
use uuid::Uuid;

use crate::{
    domain::{Contact, NewSupplier, PenaltyPolicy, Status, Supplier},
    storage::{self, Reservation, Reserved, ReviewRow},
    views::{self, SupplierFact},
};

/// The registry's event feed (`StreamSupplierEvents`).
pub const FEED: &str = "supplier-registry";

/// A change to one supplier's profile, verification, enrolment or status.
#[derive(Clone, Debug)]
pub enum SupplierChange {
    Contacts(Vec<Contact>),
    SubmitVerification,
    Verify,
    RejectVerification { reason: String },
    Enroll { limit: Money },
    SetLimit { limit: Money },
    SetStatus { status: Status, reason: String },
}

#[derive(Clone, Debug)]
pub struct Register {
    pub supplier: NewSupplier,
    pub owner_principal_id: String,
}

#[derive(Clone, Debug)]
pub struct ReserveCover {
    pub supplier_id: Uuid,
    pub contract_id: String,
    pub amount: Money,
}

#[derive(Clone, Debug)]
pub struct AdjustCover {
    pub supplier_id: Uuid,
    pub contract_id: String,
    pub amount: Money,
    pub contract_version: u32,
}

#[derive(Clone, Debug)]
pub struct ReleaseCover {
    pub supplier_id: Uuid,
    pub contract_id: String,
}

#[derive(Clone, Debug)]
pub struct CompletedContract {
    pub supplier_id: Uuid,
    pub contract_id: String,
    pub buyer_principal_id: String,
}

#[derive(Clone, Debug)]
pub struct NewReview {
    pub supplier_id: Uuid,
    pub contract_id: String,
    pub rating: u8,
    pub comment: String,
}

#[derive(Clone, Debug)]
pub struct Inquiry {
    pub supplier_id: Uuid,
    pub inquiry_id: String,
}

#[derive(Clone, Debug)]
pub struct Penalty {
    pub supplier_id: Uuid,
    pub claim_id: String,
    pub points: u32,
    pub reason: String,
}

/// What NOT_FOUND calls a completed contract a review names.
const COMPLETED_CONTRACT: &str = "completed contract";

/// Suppliers act only on what they own; every other role the method's
/// access declaration lets in may act on any supplier.
pub fn ensure_may_act(principal: &Principal, supplier: &Supplier) -> Result<(), ServiceError> {
    if principal.role == Role::Supplier && principal.subject != supplier.owner_principal_id {
        return Err(ServiceError::PermissionDenied(format!(
            "supplier {} belongs to another account",
            supplier.id
        )));
    }
    Ok(())
}

/// The registry's rules that depend on configuration, and its feed.
#[derive(Clone, Debug)]
pub struct Registry {
    pub penalty_policy: PenaltyPolicy,
    /// Where every change others follow is told, in its transaction.
    pub feed: Feed,
}

impl Registry {
    /// Appends the events of `facts` about `supplier` (as it is after the
    /// change) by `actor`, in the change's transaction.
    async fn tell(
        &self,
        tx: &mut PgConnection,
        actor: &Actor,
        supplier: &Supplier,
        facts: &[SupplierFact<'_>],
    ) -> Result<(), ServiceError> {
        for fact in facts {
            let (kind, event) = views::supplier_event(fact, actor, supplier);
            self.feed
                .append(tx, kind, &supplier.id.to_string(), &event)
                .await?;
        }
        Ok(())
    }

    pub async fn register(
        &self,
        tx: &mut PgConnection,
        principal: &Principal,
        command: &Register,
    ) -> Result<Supplier, ServiceError> {
        let supplier = Supplier::register(
            command.supplier.clone(),
            command.owner_principal_id.clone(),
            timestamps::now(),
        );
        storage::insert_supplier(tx, &supplier).await?;
        self.tell(
            tx,
            &Actor::of(principal),
            &supplier,
            &[SupplierFact::Registered],
        )
        .await?;
        tracing::info!(supplier_id = %supplier.id, "supplier registered");
        Ok(supplier)
    }

    /// Locks the supplier, checks the caller may act on it, applies the
    /// change and tells the feed (contacts are no event).
    pub async fn change(
        &self,
        tx: &mut PgConnection,
        principal: &Principal,
        supplier_id: Uuid,
        change: &SupplierChange,
    ) -> Result<Supplier, ServiceError> {
        let mut supplier = storage::lock_supplier(tx, supplier_id).await?;
        ensure_may_act(principal, &supplier)?;
        let fact = match change.clone() {
            SupplierChange::Contacts(contacts) => {
                supplier.contacts = contacts;
                None
            }
            SupplierChange::SubmitVerification => {
                supplier.submit_verification(timestamps::now())?;
                Some(SupplierFact::VerificationSubmitted)
            }
            SupplierChange::Verify => {
                supplier.verify()?;
                Some(SupplierFact::Verified)
            }
            SupplierChange::RejectVerification { reason } => {
                supplier.reject_verification(reason)?;
                Some(SupplierFact::VerificationRejected)
            }
            SupplierChange::Enroll { limit } => {
                supplier.enroll(limit)?;
                Some(SupplierFact::Enrolled)
            }
            SupplierChange::SetLimit { limit } => {
                let previous = supplier.ta_limit;
                supplier.set_limit(limit)?;
                Some(SupplierFact::LimitSet { previous })
            }
            SupplierChange::SetStatus { status, reason } => {
                let previous = supplier.status;
                supplier.set_status(status, reason);
                Some(SupplierFact::StatusChanged { previous })
            }
        };
        storage::update_supplier(tx, &mut supplier).await?;
        if let Some(fact) = fact {
            self.tell(tx, &Actor::of(principal), &supplier, &[fact])
                .await?;
        }
        Ok(supplier)
    }

    /// Reserves a contract's cover once: the same contract, supplier and
    /// amount again (whatever the idempotency key) answers the existing
    /// reservation; anything else about that contract is refused.
    ///
    /// The rules run on the supplier as read without a lock, and the write
    /// is one guarded statement, so the supplier's row is locked only from
    /// that write to the commit: the hot path of a popular supplier. When the
    /// supplier changed between the read and the write, the decision is made
    /// again under its lock, as every other cover change is.
    pub async fn reserve_cover(
        &self,
        tx: &mut PgConnection,
        command: &ReserveCover,
    ) -> Result<(Reservation, Supplier), ServiceError> {
        let amount = command.amount;
        let (mut supplier, existing) =
            storage::supplier_and_reservation(tx, command.supplier_id, &command.contract_id)
                .await?;
        if let Some(existing) = existing {
            return Ok((
                same_reservation(existing, command.supplier_id, amount)?,
                supplier,
            ));
        }
        let seen = supplier.clone();
        supplier.reserve_cover(amount)?;
        let reservation = Reservation {
            contract_id: command.contract_id.clone(),
            supplier_id: command.supplier_id,
            currency: amount.currency.to_string(),
            amount_minor: amount.amount_minor,
            status: "active".into(),
            reserved_at: timestamps::now(),
            released_at: None,
            contract_version: 1,
        };
        match storage::reserve_if_unchanged(tx, &seen, &reservation).await? {
            Reserved::Done {
                cover_reserved_minor,
            } => {
                supplier.cover_reserved_minor = cover_reserved_minor;
                supplier.updated_at = reservation.reserved_at;
                Ok((reservation, supplier))
            }
            Reserved::ContractTaken => {
                let supplier = storage::lock_supplier(tx, command.supplier_id).await?;
                let existing = storage::find_reservation(tx, &command.contract_id)
                    .await?
                    .ok_or_else(|| {
                        ServiceError::Aborted("a contract's reservation came and went".into())
                    })?;
                Ok((
                    same_reservation(existing, command.supplier_id, amount)?,
                    supplier,
                ))
            }
            Reserved::SupplierChanged => {
                // The reservation row is written; the supplier's side is
                // decided again on its locked state (a refusal rolls both back).
                let mut supplier = storage::lock_supplier(tx, command.supplier_id).await?;
                supplier.reserve_cover(amount)?;
                storage::update_supplier(tx, &mut supplier).await?;
                Ok((reservation, supplier))
            }
        }
    }

    /// Moves an active reservation to the amended amount: the difference is
    /// reserved (within the remaining limit, under the badge) or released, in
    /// the supplier's row lock like every cover change. A version not newer
    /// than the applied one changes nothing.
    pub async fn adjust_cover(
        &self,
        tx: &mut PgConnection,
        command: &AdjustCover,
    ) -> Result<(Reservation, Supplier), ServiceError> {
        let mut supplier = storage::lock_supplier(tx, command.supplier_id).await?;
        let mut reservation = reservation_of(tx, command.supplier_id, &command.contract_id).await?;
        if !reservation.is_active() {
            return Err(ServiceError::FailedPrecondition(format!(
                "the cover of contract {} was released; released cover is not adjusted",
                command.contract_id
            )));
        }
        let version = i32::try_from(command.contract_version).unwrap_or(i32::MAX);
        if version <= reservation.contract_version {
            return Ok((reservation, supplier));
        }
        let current = reservation.amount()?;
        if command.amount.currency != current.currency {
            return Err(ServiceError::invalid(
                "amount.currency_code",
                format!("must be {}, the reservation's currency", current.currency),
            ));
        }
        let delta = command.amount.amount_minor - current.amount_minor;
        match delta.signum() {
            1 => supplier.reserve_cover(Money::new(delta, current.currency))?,
            -1 => supplier.release_cover(Money::new(-delta, current.currency))?,
            _ => {}
        }
        storage::adjust_reservation(
            tx,
            &command.contract_id,
            command.amount.amount_minor,
            version,
        )
        .await?;
        storage::update_supplier(tx, &mut supplier).await?;
        reservation.amount_minor = command.amount.amount_minor;
        reservation.contract_version = version;
        Ok((reservation, supplier))
    }

    /// Releases a contract's cover; a hold resolves at most once, so
    /// releasing again answers the released reservation unchanged.
    pub async fn release_cover(
        &self,
        tx: &mut PgConnection,
        command: &ReleaseCover,
    ) -> Result<(Reservation, Supplier), ServiceError> {
        let mut supplier = storage::lock_supplier(tx, command.supplier_id).await?;
        let mut reservation = reservation_of(tx, command.supplier_id, &command.contract_id).await?;
        let now = timestamps::now();
        if storage::release_reservation(tx, &command.contract_id, now).await? {
            supplier.release_cover(reservation.amount()?)?;
            storage::update_supplier(tx, &mut supplier).await?;
            reservation.status = "released".into();
            reservation.released_at = Some(now);
        }
        Ok((reservation, supplier))
    }

    /// A staff correction of cover left reserved for a contract that ended
    /// or never existed: the release `release_cover` makes, refused when
    /// nothing is reserved any more, so a second correction under another
    /// key says so instead of answering as if it had released something.
    pub async fn release_stranded_cover(
        &self,
        tx: &mut PgConnection,
        command: &ReleaseCover,
    ) -> Result<(Reservation, Supplier), ServiceError> {
        // An unknown supplier is NOT_FOUND as such, as in `release_cover`.
        storage::lock_supplier(tx, command.supplier_id).await?;
        let reservation = reservation_of(tx, command.supplier_id, &command.contract_id).await?;
        if reservation.status != "active" {
            return Err(ServiceError::FailedPrecondition(format!(
                "the cover reservation for contract {} is {}: nothing to release",
                command.contract_id, reservation.status
            )));
        }
        self.release_cover(tx, command).await
    }

    pub async fn record_completed_contract(
        &self,
        tx: &mut PgConnection,
        command: &CompletedContract,
    ) -> Result<(), ServiceError> {
        storage::lock_supplier(tx, command.supplier_id).await?;
        storage::insert_completed_contract(
            tx,
            &command.contract_id,
            command.supplier_id,
            &command.buyer_principal_id,
        )
        .await?;
        Ok(())
    }

    /// Only the buyer of a completed contract reviews it, once. To another
    /// buyer the contract is answered as one that does not exist ("completed
    /// contract <id> not found"), so reviews cannot probe which contract ids
    /// a supplier completed.
    pub async fn submit_review(
        &self,
        tx: &mut PgConnection,
        principal: &Principal,
        command: &NewReview,
    ) -> Result<(ReviewRow, Supplier), ServiceError> {
        let mut supplier = storage::lock_supplier(tx, command.supplier_id).await?;
        let (supplier_of_contract, buyer) = storage::completed_contract(tx, &command.contract_id)
            .await?
            .filter(|(supplier_id, _)| *supplier_id == command.supplier_id)
            .ok_or_else(|| ServiceError::not_found(COMPLETED_CONTRACT, &command.contract_id))?;
        if buyer != principal.subject {
            return Err(ServiceError::unseen(
                COMPLETED_CONTRACT,
                &command.contract_id,
            ));
        }
        let review = ReviewRow {
            contract_id: command.contract_id.clone(),
            supplier_id: supplier_of_contract,
            buyer_principal_id: buyer,
            rating: i16::from(command.rating),
            comment: command.comment.clone(),
            created_at: timestamps::now(),
        };
        if !storage::insert_review(tx, &review).await? {
            return Err(ServiceError::AlreadyExists(format!(
                "contract {} has already been reviewed",
                command.contract_id
            )));
        }
        supplier.record_review(command.rating);
        storage::update_supplier(tx, &mut supplier).await?;
        Ok((review, supplier))
    }

    /// Counts an inquiry once per inquiry id.
    pub async fn record_inquiry(
        &self,
        tx: &mut PgConnection,
        command: &Inquiry,
    ) -> Result<Supplier, ServiceError> {
        let mut supplier = storage::lock_supplier(tx, command.supplier_id).await?;
        if storage::insert_inquiry(tx, command.supplier_id, &command.inquiry_id).await? {
            supplier.record_inquiry();
            storage::update_supplier(tx, &mut supplier).await?;
        }
        Ok(supplier)
    }

    /// Counts a reply once per inquiry.
    pub async fn record_inquiry_reply(
        &self,
        tx: &mut PgConnection,
        principal: &Principal,
        command: &Inquiry,
    ) -> Result<Supplier, ServiceError> {
        let mut supplier = storage::lock_supplier(tx, command.supplier_id).await?;
        ensure_may_act(principal, &supplier)?;
        match storage::mark_inquiry_replied(tx, command.supplier_id, &command.inquiry_id).await? {
            None => return Err(ServiceError::not_found("inquiry", &command.inquiry_id)),
            Some(true) => {
                supplier.record_inquiry_reply();
                storage::update_supplier(tx, &mut supplier).await?;
            }
            Some(false) => {}
        }
        Ok(supplier)
    }

    /// Records a dispute's penalty once: the same penalty again changes
    /// nothing; a different one for the same dispute is refused. Returns
    /// whether this penalty restricted the supplier.
    pub async fn record_penalty(
        &self,
        tx: &mut PgConnection,
        principal: &Principal,
        command: &Penalty,
    ) -> Result<(Supplier, bool), ServiceError> {
        let mut supplier = storage::lock_supplier(tx, command.supplier_id).await?;
        let (status_before, limit_before) = (supplier.status, supplier.ta_limit);
        let points = i32::try_from(command.points).unwrap_or(i32::MAX);
        let recorded = storage::insert_penalty(
            tx,
            &command.claim_id,
            command.supplier_id,
            points,
            &command.reason,
        )
        .await?;
        let restricted = match recorded {
            None => {
                let restricted = supplier.record_penalty(command.points, self.penalty_policy);
                storage::update_supplier(tx, &mut supplier).await?;
                // The penalty, then what it changed, each as its own event.
                let mut facts = vec![SupplierFact::PenaltyRecorded {
                    claim_id: &command.claim_id,
                    points: command.points,
                    reason: &command.reason,
                }];
                if supplier.status != status_before {
                    facts.push(SupplierFact::StatusChanged {
                        previous: status_before,
                    });
                }
                if supplier.ta_limit != limit_before {
                    facts.push(SupplierFact::LimitSet {
                        previous: limit_before,
                    });
                }
                self.tell(tx, &Actor::of(principal), &supplier, &facts)
                    .await?;
                if restricted {
                    tracing::warn!(supplier_id = %supplier.id, points = supplier.penalty_points,
                        "supplier restricted by penalty points");
                }
                restricted
            }
            Some((same_supplier, same_points))
                if same_supplier == command.supplier_id && same_points == points =>
            {
                false
            }
            Some(_) => {
                return Err(ServiceError::AlreadyExists(format!(
                    "claim {} already has a different penalty recorded",
                    command.claim_id
                )));
            }
        };
        Ok((supplier, restricted))
    }
}

/// The supplier's reservation for `contract_id` (NOT_FOUND for another
/// supplier's: its existence is not the caller's business).
async fn reservation_of(
    tx: &mut PgConnection,
    supplier_id: Uuid,
    contract_id: &str,
) -> Result<Reservation, ServiceError> {
    storage::find_reservation(tx, contract_id)
        .await?
        .filter(|r| r.supplier_id == supplier_id)
        .ok_or_else(|| ServiceError::not_found("cover reservation for contract", contract_id))
}

/// A contract's existing reservation: the same request again is answered with
/// it; a released one or one with other terms is refused, saying which.
fn same_reservation(
    existing: Reservation,
    supplier_id: Uuid,
    amount: Money,
) -> Result<Reservation, ServiceError> {
    if !existing.is_active() {
        return Err(ServiceError::FailedPrecondition(format!(
            "cannot reserve cover: contract {} already reserved cover with supplier {} and it \
             was released; a contract reserves cover once",
            existing.contract_id, existing.supplier_id
        )));
    }
    if existing.supplier_id != supplier_id
        || existing.amount_minor != amount.amount_minor
        || existing.currency != amount.currency.as_str()
    {
        return Err(ServiceError::AlreadyExists(format!(
            "contract {} already holds cover of {} {} minor units with supplier {}",
            existing.contract_id, existing.currency, existing.amount_minor, existing.supplier_id
        )));
    }
    Ok(existing)
}
