//! ListContracts' request: the filter within what the caller may see, the
//! order, and page tokens that carry the order's key.

use ta_proto::contract as pb;
use ta_runtime::{
    ServiceError, Violations, auth::Principal, paging, text::validate_reference, timestamps,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::time_cursor;
use crate::{
    app::{self, drafting::check_external_reference},
    domain::negotiation::Protection,
    storage::contracts::{ContractFilter, ContractListing, ContractOrder, ContractRecord},
    views,
};

/// The token kind of a listing in `order`: a token continues only the
/// order that issued it. Newest created first keeps the kind tokens had
/// before there was a choice.
fn kind(order: ContractOrder) -> &'static str {
    match order {
        ContractOrder::CreatedDesc => "contracts",
        ContractOrder::CreatedAsc => "contracts.created_asc",
        ContractOrder::UpdatedDesc => "contracts.updated_desc",
        ContractOrder::UpdatedAsc => "contracts.updated_asc",
    }
}

/// The token of the page after `last`, in `order`.
pub(super) fn contract_token(order: ContractOrder, last: &ContractRecord) -> String {
    paging::token(
        kind(order),
        &[
            &order.key(last).unix_timestamp_nanos().to_string(),
            &last.contract_id.to_string(),
        ],
    )
}

fn order(sort: i32, v: &mut Violations) -> ContractOrder {
    match pb::ContractSort::try_from(sort) {
        Ok(pb::ContractSort::Unspecified | pb::ContractSort::CreatedDesc) => {
            ContractOrder::CreatedDesc
        }
        Ok(pb::ContractSort::CreatedAsc) => ContractOrder::CreatedAsc,
        Ok(pb::ContractSort::UpdatedDesc) => ContractOrder::UpdatedDesc,
        Ok(pb::ContractSort::UpdatedAsc) => ContractOrder::UpdatedAsc,
        Err(_) => {
            v.add("sort", "is not a contract sort");
            ContractOrder::CreatedDesc
        }
    }
}

/// `[after, before)`, each bound optional; `before` must be later.
fn range(
    (after_field, after): (&str, Option<&prost_types::Timestamp>),
    (before_field, before): (&str, Option<&prost_types::Timestamp>),
    v: &mut Violations,
) -> (Option<OffsetDateTime>, Option<OffsetDateTime>) {
    let after = timestamps::parse_optional(after_field, after, v);
    let before = timestamps::parse_optional(before_field, before, v);
    if let (Some(a), Some(b)) = (after, before)
        && b <= a
    {
        v.add(before_field, format!("must be later than {after_field}"));
    }
    (after, before)
}

/// The page of contracts a ListContracts request asks for, within those the
/// caller may see (a buyer naming another buyer is refused).
pub(super) fn contract_listing(
    req: &pb::ListContractsRequest,
    principal: &Principal,
    v: &mut Violations,
) -> Result<ContractListing, ServiceError> {
    let limit = paging::page_size(req.page.as_ref(), v);
    let order = order(req.sort, v);
    let after = paging::cursor(req.page.as_ref(), kind(order), v, time_cursor);
    let mut filter = ContractFilter::default();
    if !req.supplier_id.is_empty() {
        match Uuid::parse_str(&req.supplier_id) {
            Ok(id) => filter.supplier_id = Some(id),
            Err(_) => v.add("supplier_id", "must be a supplier id (UUID)"),
        }
    }
    if !req.buyer_principal_id.is_empty() {
        validate_reference("buyer_principal_id", &req.buyer_principal_id, v);
        filter.buyer_principal_id = Some(req.buyer_principal_id.clone());
    }
    for (i, status) in req.statuses.iter().enumerate() {
        match pb::ContractStatus::try_from(*status)
            .ok()
            .and_then(views::status_from_proto)
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
    (filter.created_after, filter.created_before) = range(
        ("created_after", req.created_after.as_ref()),
        ("created_before", req.created_before.as_ref()),
        v,
    );
    (filter.updated_after, filter.updated_before) = range(
        ("updated_after", req.updated_after.as_ref()),
        ("updated_before", req.updated_before.as_ref()),
        v,
    );
    if !req.external_reference.is_empty() {
        check_external_reference("external_reference", &req.external_reference, v);
        filter.external_reference = Some(req.external_reference.clone());
    }
    app::scope_listing(principal, &mut filter)?;
    Ok(ContractListing {
        filter,
        order,
        after,
        limit,
    })
}
