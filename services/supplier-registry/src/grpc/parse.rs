//! The listings' requests as storage filters: every bad field reported at
//! once, the page tokens of each order, and who may use which filter.

use ta_proto::supplier as pb;
use ta_runtime::{
    ServiceError, Violations,
    auth::{Principal, Role},
    money::{Currency, Money, is_country_code},
    paging,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{Status, Verification, validate_reference},
    storage::{ReservationFilter, SearchCursor, SearchFilter, SortKey, SupplierSort},
};

const SUPPLIER_PAGES: &str = "suppliers";
const RESERVATION_PAGES: &str = "cover_reservations";

/// The longest `name_query`, in characters, and the most words in it.
const MAX_NAME_QUERY_CHARS: usize = 200;
const MAX_NAME_QUERY_WORDS: usize = 10;

fn sort_from_proto(sort: i32) -> Option<SupplierSort> {
    match pb::SupplierSort::try_from(sort).ok()? {
        pb::SupplierSort::Unspecified => Some(SupplierSort::Id),
        pb::SupplierSort::AverageRating => Some(SupplierSort::AverageRating),
        pb::SupplierSort::ResponseRate => Some(SupplierSort::ResponseRate),
        pb::SupplierSort::CoverRemaining => Some(SupplierSort::CoverRemaining),
        pb::SupplierSort::SubmittedAt => Some(SupplierSort::SubmittedAt),
    }
}

/// The order's name in its page tokens, so a token continues only the order
/// it was issued for. The id order keeps the tokens it always had: `[id]`.
fn sort_name(sort: SupplierSort) -> &'static str {
    match sort {
        SupplierSort::Id => "id",
        SupplierSort::AverageRating => "rating",
        SupplierSort::ResponseRate => "response_rate",
        SupplierSort::CoverRemaining => "cover_remaining",
        SupplierSort::SubmittedAt => "submitted_at",
    }
}

/// A time as a token carries it: nanoseconds since 1970. A time Postgres
/// cannot represent would otherwise fail as INTERNAL, so it is refused here.
fn time_of(nanos: &str) -> Option<OffsetDateTime> {
    let nanos = nanos.parse::<u64>().ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).ok()
}

fn nanos_of(at: OffsetDateTime) -> String {
    at.unix_timestamp_nanos().to_string()
}

/// The token continuing a search in `sort` after the supplier with `key`
/// and `id`.
pub fn supplier_token(sort: SupplierSort, key: SortKey, id: Uuid) -> String {
    let id = id.to_string();
    match key {
        SortKey::Id => paging::token(SUPPLIER_PAGES, &[&id]),
        SortKey::Number(n) => {
            paging::token(SUPPLIER_PAGES, &[sort_name(sort), &n.to_string(), &id])
        }
        SortKey::Time(at) => paging::token(SUPPLIER_PAGES, &[sort_name(sort), &nanos_of(at), &id]),
    }
}

fn supplier_cursor(sort: SupplierSort, fields: &[&str]) -> Option<SearchCursor> {
    match (sort, fields) {
        (SupplierSort::Id, [id]) => Some(SearchCursor {
            key: SortKey::Id,
            id: Uuid::try_parse(id).ok()?,
        }),
        (SupplierSort::Id, _) => None,
        (sort, [name, key, id]) if *name == sort_name(sort) => Some(SearchCursor {
            key: if sort == SupplierSort::SubmittedAt {
                SortKey::Time(time_of(key)?)
            } else {
                SortKey::Number(key.parse().ok()?)
            },
            id: Uuid::try_parse(id).ok()?,
        }),
        _ => None,
    }
}

/// The words of a name query: runs of letters and digits.
fn name_words(query: &str, v: &mut Violations) -> Vec<String> {
    if query.chars().count() > MAX_NAME_QUERY_CHARS {
        v.add(
            "name_query",
            format!("must be at most {MAX_NAME_QUERY_CHARS} characters"),
        );
        return Vec::new();
    }
    let words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    if words.is_empty() && !query.trim().is_empty() {
        v.add("name_query", "must hold a letter or a digit");
    }
    if words.len() > MAX_NAME_QUERY_WORDS {
        v.add(
            "name_query",
            format!("must be at most {MAX_NAME_QUERY_WORDS} words"),
        );
    }
    words
}

fn verification_from_proto(status: i32) -> Option<Verification> {
    match pb::VerificationStatus::try_from(status).ok()? {
        pb::VerificationStatus::Unspecified => None,
        pb::VerificationStatus::Unverified => Some(Verification::Unverified),
        pb::VerificationStatus::Submitted => Some(Verification::Submitted),
        pb::VerificationStatus::Verified => Some(Verification::Verified),
        pb::VerificationStatus::Rejected => Some(Verification::Rejected),
    }
}

fn status_from_proto(status: i32) -> Option<Status> {
    match pb::SupplierStatus::try_from(status).ok()? {
        pb::SupplierStatus::Unspecified => None,
        pb::SupplierStatus::Active => Some(Status::Active),
        pb::SupplierStatus::Restricted => Some(Status::Restricted),
        pb::SupplierStatus::Suspended => Some(Status::Suspended),
    }
}

/// A SearchSuppliers request as a filter for `principal`, one more row than
/// the page asks for (to tell whether another page follows). Bad fields go to
/// `v`; the staff filters from anyone else are PERMISSION_DENIED, as the
/// proto says, before any field is judged.
pub fn search(
    req: &pb::SearchSuppliersRequest,
    principal: &Principal,
    v: &mut Violations,
) -> Result<SearchFilter, ServiceError> {
    let sort = sort_from_proto(req.sort);
    let staff_only = !req.verification_statuses.is_empty()
        || !req.statuses.is_empty()
        || sort == Some(SupplierSort::SubmittedAt);
    if staff_only && !principal.sees_everything() {
        return Err(ServiceError::PermissionDenied(
            "verification_statuses, statuses and the SUBMITTED_AT sort are for staff and back \
             ends"
                .into(),
        ));
    }
    if sort.is_none() {
        v.add("sort", "is not a supplier sort");
    }
    let sort = sort.unwrap_or_default();
    let limit = paging::page_size(req.page.as_ref(), v);
    let after = paging::cursor(req.page.as_ref(), SUPPLIER_PAGES, v, |fields| {
        supplier_cursor(sort, fields)
    });
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
    if sort == SupplierSort::CoverRemaining && req.min_cover_remaining.is_none() {
        v.add(
            "min_cover_remaining",
            "is required by the COVER_REMAINING sort: its currency is the one sorted in \
             (amount 0 for any)",
        );
    }
    let mut verifications = Vec::new();
    for (i, status) in req.verification_statuses.iter().enumerate() {
        match verification_from_proto(*status) {
            Some(status) => verifications.push(status),
            None => v.add(
                format!("verification_statuses[{i}]"),
                "is not a verification status",
            ),
        }
    }
    let mut statuses = Vec::new();
    for (i, status) in req.statuses.iter().enumerate() {
        match status_from_proto(*status) {
            Some(status) => statuses.push(status),
            None => v.add(format!("statuses[{i}]"), "is not a supplier status"),
        }
    }
    let owner_principal_id = match (req.owned_by_me, principal.role) {
        (false, _) => None,
        (true, Role::Supplier) => Some(principal.subject.clone()),
        (true, _) => {
            v.add(
                "owned_by_me",
                "is for supplier accounts: only they own suppliers",
            );
            None
        }
    };
    Ok(SearchFilter {
        has_badge: req.has_trade_assurance_badge,
        verified: req.verified,
        country_code: (!req.country_code.is_empty()).then(|| req.country_code.clone()),
        min_average_rating_centi: min_rating,
        min_cover_remaining: min_cover,
        min_response_rate_basis_points: min_response_rate,
        name_words: name_words(&req.name_query, v),
        verifications,
        statuses,
        owner_principal_id,
        sort,
        after,
        limit: limit + 1,
    })
}

/// The token continuing a listing of reservations after (`at`, `contract_id`).
pub fn reservation_token(at: OffsetDateTime, contract_id: &str) -> String {
    paging::token(RESERVATION_PAGES, &[&nanos_of(at), contract_id])
}

/// A ListCoverReservations request as a filter, one more row than the page
/// asks for.
pub fn reservations(
    req: &pb::ListCoverReservationsRequest,
    v: &mut Violations,
) -> ReservationFilter {
    let limit = paging::page_size(req.page.as_ref(), v);
    let after = paging::cursor(
        req.page.as_ref(),
        RESERVATION_PAGES,
        v,
        |fields| match fields {
            [at, contract] => Some((time_of(at)?, (*contract).to_owned())),
            _ => None,
        },
    );
    let supplier_id = (!req.supplier_id.is_empty()).then(|| {
        Uuid::try_parse(&req.supplier_id).unwrap_or_else(|_| {
            v.add("supplier_id", "must be a supplier id (UUID)");
            Uuid::nil()
        })
    });
    let contract_id = (!req.contract_id.is_empty()).then(|| {
        validate_reference("contract_id", &req.contract_id, v);
        req.contract_id.clone()
    });
    let active = match pb::CoverReservationStatus::try_from(req.status) {
        Ok(pb::CoverReservationStatus::Unspecified) => None,
        Ok(pb::CoverReservationStatus::Active) => Some(true),
        Ok(pb::CoverReservationStatus::Released) => Some(false),
        Err(_) => {
            v.add("status", "is not a cover reservation status");
            None
        }
    };
    ReservationFilter {
        supplier_id,
        contract_id,
        active,
        after,
        limit: limit + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields_of(token: &str) -> Vec<String> {
        let mut v = Violations::new();
        let page = ta_proto::common::PageRequest {
            page_size: 0,
            page_token: token.to_owned(),
        };
        paging::cursor(Some(&page), SUPPLIER_PAGES, &mut v, |fields| {
            Some(fields.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>())
        })
        .expect("a suppliers token")
    }

    fn cursor_of(sort: SupplierSort, token: &str) -> Option<SearchCursor> {
        let fields = fields_of(token);
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        supplier_cursor(sort, &fields)
    }

    #[test]
    fn a_token_continues_exactly_the_order_it_was_issued_for() {
        let id = Uuid::now_v7();
        // Postgres keeps microseconds; a token keeps what it was given.
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_765_000_000_123_456_000).unwrap();
        let keys = [
            (SupplierSort::Id, SortKey::Id),
            (SupplierSort::AverageRating, SortKey::Number(467)),
            (SupplierSort::ResponseRate, SortKey::Number(0)),
            (SupplierSort::CoverRemaining, SortKey::Number(9_000_000_000)),
            (SupplierSort::SubmittedAt, SortKey::Time(at)),
        ];
        for (sort, key) in keys {
            let token = supplier_token(sort, key, id);
            assert_eq!(
                cursor_of(sort, &token),
                Some(SearchCursor { key, id }),
                "{sort:?}"
            );
            for (other, _) in keys.iter().filter(|(other, _)| *other != sort) {
                assert_eq!(cursor_of(*other, &token), None, "{sort:?} as {other:?}");
            }
        }
        // The id order's tokens are the ones it always issued: `[id]`.
        assert_eq!(
            fields_of(&supplier_token(SupplierSort::Id, SortKey::Id, id)),
            [id.to_string()]
        );
    }

    #[test]
    fn name_queries_are_words_of_letters_and_digits() {
        let mut v = Violations::new();
        assert_eq!(
            name_words(" Shenzhen-Acme & (ceramics:*) 3 Müller ", &mut v),
            ["Shenzhen", "Acme", "ceramics", "3", "Müller"]
        );
        assert_eq!(name_words("", &mut v), Vec::<String>::new());
        assert!(v.is_empty());
        for bad in [" &|!():* ", &"x".repeat(201), "a b c d e f g h i j k"] {
            let mut v = Violations::new();
            name_words(bad, &mut v);
            assert!(v.into_error().to_string().contains("name_query"), "{bad:?}");
        }
    }
}
