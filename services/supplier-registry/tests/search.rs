//! Supplier search (by name, the sort orders and their page tokens, the staff
//! filters and trust and safety's verification queue, a supplier account's
//! own suppliers), the listing of cover reservations, and the indexes that
//! serve each of them: on a few thousand rows, `EXPLAIN` shows no sequential
//! scan of either table for any shape.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;
use sqlx::PgPool;
use supplier_registry::{
    domain::{Status, Verification},
    storage::{self, ReservationFilter, SearchCursor, SearchFilter, SortKey, SupplierSort},
};
use ta_proto::supplier as pb;
use ta_runtime::{
    auth::Role,
    money::{Currency, Money},
};
use ta_testkit::access::STAFF_AND_PLATFORM;
use tonic::Code;

const OTHER_SUPPLIER: &str = "supplier-globex";

// --- the indexes -------------------------------------------------------------------

/// A few thousand suppliers of every kind, as a marketplace holds them: names
/// from a small vocabulary; most verified long ago, a few waiting in the
/// queue (2 %), some unverified or rejected; a few restricted or suspended;
/// ratings, response rates, enrolments in two currencies, 500 owners. Two
/// reservations per enrolled supplier. Then fresh statistics.
async fn seed(pool: &PgPool, suppliers: i32) {
    sqlx::query(
        "INSERT INTO supplier_registry.suppliers (id, owner_principal_id, legal_name, country_code, \
             business_licence_number, contacts, verification, status, enrolled, ta_limit_currency, \
             ta_limit_minor, cover_reserved_minor, rating_sum, review_count, inquiry_count, \
             replied_inquiry_count, verification_submitted_at, created_at, updated_at) \
         SELECT gen_random_uuid(), 'owner-' || (n % 500), \
             (ARRAY['Acme','Globex','Initech','Umbrella','Hooli','Stark','Wayne','Tyrell'])[n % 8 + 1] \
                 || ' ' || (ARRAY['Manufacturing','Textiles','Ceramics','Electronics','Tooling'])[n % 5 + 1] \
                 || ' Co. ' || n, \
             (ARRAY['CN','VN','IN','TR','MX'])[n % 5 + 1], 'SEED-' || n, '[]', v.verification, \
             CASE WHEN n % 47 = 0 THEN 'suspended' WHEN n % 23 = 0 THEN 'restricted' ELSE 'active' END, \
             e.enrolled, CASE WHEN e.enrolled THEN (ARRAY['USD','EUR'])[(n / 6) % 2 + 1] END, \
             CASE WHEN e.enrolled THEN 100000 * (n % 40 + 1) ELSE 0 END, \
             CASE WHEN e.enrolled THEN 1000 * (n % 17) ELSE 0 END, \
             (n % 7) * (n % 5 + 1), n % 7, n % 11, (n % 11) * (n % 3) / 2, \
             CASE WHEN v.verification <> 'unverified' THEN now() - n * interval '1 minute' END, \
             now() - n * interval '1 minute', now() \
         FROM generate_series(1, $1) AS n, \
             LATERAL (SELECT CASE WHEN n % 50 = 0 THEN 'submitted' \
                                  WHEN n % 50 < 6 THEN 'unverified' \
                                  WHEN n % 50 < 10 THEN 'rejected' \
                                  ELSE 'verified' END AS verification) v, \
             LATERAL (SELECT v.verification = 'verified' AND n % 3 = 0 AS enrolled) e",
    )
    .bind(suppliers)
    .execute(pool)
    .await
    .expect("seed suppliers");
    sqlx::query(
        "INSERT INTO supplier_registry.cover_reservations \
             (contract_id, supplier_id, currency, amount_minor, status, reserved_at, released_at) \
         SELECT 'seed-' || s.id || '-' || k, s.id, s.ta_limit_currency, 500, \
             CASE WHEN k = 1 THEN 'active' ELSE 'released' END, \
             s.created_at + k * interval '1 second', \
             CASE WHEN k = 1 THEN NULL ELSE s.created_at + interval '1 hour' END \
         FROM supplier_registry.suppliers s, generate_series(1, 2) AS k \
         WHERE s.enrolled",
    )
    .execute(pool)
    .await
    .expect("seed reservations");
    sqlx::query("ANALYZE supplier_registry.suppliers, supplier_registry.cover_reservations")
        .execute(pool)
        .await
        .expect("analyze");
}

/// Every node of a plan, depth first.
fn nodes(plan: &Value) -> Vec<&Value> {
    let mut found = vec![plan];
    if let Some(children) = plan["Plans"].as_array() {
        for child in children {
            found.extend(nodes(child));
        }
    }
    found
}

/// The scans of `table` in an `EXPLAIN (FORMAT JSON)` answer: (node type,
/// index name or "").
fn scans_of<'a>(explained: &'a Value, table: &str) -> Vec<(&'a str, &'a str)> {
    let plan = &explained[0]["Plan"];
    assert!(plan.is_object(), "not a plan: {explained}");
    let all = nodes(plan);
    let mut scans = Vec::new();
    for node in &all {
        let kind = node["Node Type"].as_str().unwrap_or_default();
        let relation = node["Relation Name"].as_str();
        let index = node["Index Name"].as_str().unwrap_or_default();
        let on_table = relation == Some(table)
            // A bitmap index scan names its index only; its heap scan names the table.
            || (kind == "Bitmap Index Scan" && index.starts_with(&table[..table.len() - 1]));
        if on_table {
            scans.push((kind, index));
        }
    }
    scans
}

/// `table` is read through `index` (alone or with other indexes), never
/// scanned whole.
fn assert_served(shape: &str, explained: &Value, table: &str, indexes: &[&str]) {
    let scans = scans_of(explained, table);
    assert!(
        scans.iter().all(|(kind, _)| *kind != "Seq Scan"),
        "{shape}: a sequential scan of {table}: {scans:?}\n{explained:#}"
    );
    let used: BTreeSet<&str> = scans
        .iter()
        .map(|(_, index)| *index)
        .filter(|i| !i.is_empty())
        .collect();
    eprintln!("{shape}: {scans:?}");
    assert!(
        indexes.iter().any(|i| used.contains(i)),
        "{shape}: none of {indexes:?} serves it, it uses {used:?}\n{explained:#}"
    );
}

fn usd(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::parse("USD").expect("USD"))
}

#[sqlx::test(migrations = false)]
async fn every_search_and_listing_shape_is_served_by_an_index(pool: PgPool) {
    let Registry { server, client: _ } = start(pool.clone()).await;
    seed(&pool, 4_000).await;
    let some_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM supplier_registry.suppliers WHERE enrolled LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let page = 21;
    let search = |f: SearchFilter| SearchFilter { limit: page, ..f };
    let acme = || vec!["acme".to_owned(), "manu".to_owned()];
    let shapes: Vec<(&str, SearchFilter, &[&str])> = vec![
        (
            "name, id order",
            search(SearchFilter {
                name_words: acme(),
                ..Default::default()
            }),
            &["suppliers_name_search_idx", "suppliers_pkey"],
        ),
        (
            "a rare name",
            search(SearchFilter {
                name_words: vec!["tyrell".into(), "3999".into()],
                ..Default::default()
            }),
            &["suppliers_name_search_idx"],
        ),
        (
            "name, by rating",
            search(SearchFilter {
                name_words: acme(),
                sort: SupplierSort::AverageRating,
                ..Default::default()
            }),
            &["suppliers_name_search_idx", "suppliers_by_rating_idx"],
        ),
        (
            "by rating",
            search(SearchFilter {
                sort: SupplierSort::AverageRating,
                ..Default::default()
            }),
            &["suppliers_by_rating_idx"],
        ),
        (
            "by rating, second page",
            search(SearchFilter {
                sort: SupplierSort::AverageRating,
                after: Some(SearchCursor {
                    key: SortKey::Number(400),
                    id: some_id,
                }),
                ..Default::default()
            }),
            &["suppliers_by_rating_idx"],
        ),
        (
            "by response rate",
            search(SearchFilter {
                sort: SupplierSort::ResponseRate,
                ..Default::default()
            }),
            &["suppliers_by_response_rate_idx"],
        ),
        (
            "by response rate, second page",
            search(SearchFilter {
                sort: SupplierSort::ResponseRate,
                after: Some(SearchCursor {
                    key: SortKey::Number(5_000),
                    id: some_id,
                }),
                ..Default::default()
            }),
            &["suppliers_by_response_rate_idx"],
        ),
        (
            "by remaining cover in USD",
            search(SearchFilter {
                sort: SupplierSort::CoverRemaining,
                min_cover_remaining: Some(usd(0)),
                ..Default::default()
            }),
            &["suppliers_by_cover_remaining_idx"],
        ),
        (
            "by remaining cover in USD, second page",
            search(SearchFilter {
                sort: SupplierSort::CoverRemaining,
                min_cover_remaining: Some(usd(100_000)),
                after: Some(SearchCursor {
                    key: SortKey::Number(1_000_000),
                    id: some_id,
                }),
                ..Default::default()
            }),
            &["suppliers_by_cover_remaining_idx"],
        ),
        (
            "the verification queue",
            search(SearchFilter {
                verifications: vec![Verification::Submitted],
                sort: SupplierSort::SubmittedAt,
                ..Default::default()
            }),
            &["suppliers_verification_queue_idx"],
        ),
        (
            "the verification queue, second page",
            search(SearchFilter {
                verifications: vec![Verification::Submitted],
                sort: SupplierSort::SubmittedAt,
                after: Some(SearchCursor {
                    key: SortKey::Time(time::OffsetDateTime::now_utc() - time::Duration::days(1)),
                    id: some_id,
                }),
                ..Default::default()
            }),
            &["suppliers_verification_queue_idx"],
        ),
        (
            "by submission",
            search(SearchFilter {
                sort: SupplierSort::SubmittedAt,
                ..Default::default()
            }),
            &["suppliers_by_submission_idx"],
        ),
        (
            "rejected or unverified",
            search(SearchFilter {
                verifications: vec![Verification::Rejected, Verification::Unverified],
                ..Default::default()
            }),
            &["suppliers_verification_queue_idx", "suppliers_pkey"],
        ),
        (
            "suspended",
            search(SearchFilter {
                statuses: vec![Status::Suspended],
                ..Default::default()
            }),
            &["suppliers_status_idx"],
        ),
        (
            "restricted or suspended, by rating",
            search(SearchFilter {
                statuses: vec![Status::Restricted, Status::Suspended],
                sort: SupplierSort::AverageRating,
                ..Default::default()
            }),
            &["suppliers_status_idx", "suppliers_by_rating_idx"],
        ),
        (
            "owned by one account",
            search(SearchFilter {
                owner_principal_id: Some("owner-7".into()),
                ..Default::default()
            }),
            &["suppliers_owner_idx"],
        ),
    ];
    for (shape, filter, indexes) in &shapes {
        let explained = storage::explain_search(&pool, filter)
            .await
            .unwrap_or_else(|e| panic!("{shape}: {e}"));
        assert_served(shape, &explained, "suppliers", indexes);
        // The statement runs, and finds what its shape promises.
        let found = storage::search_suppliers(&pool, filter).await.unwrap();
        assert!(!found.is_empty(), "{shape} found nothing in the seed");
    }

    let reservations = |f: ReservationFilter| ReservationFilter { limit: page, ..f };
    let newest: (time::OffsetDateTime, String) = sqlx::query_as(
        "SELECT reserved_at, contract_id FROM supplier_registry.cover_reservations \
         ORDER BY reserved_at DESC, contract_id DESC OFFSET 100 LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let listings: Vec<(&str, ReservationFilter, &[&str])> = vec![
        (
            "every reservation",
            reservations(ReservationFilter::default()),
            &["cover_reservations_newest_idx"],
        ),
        (
            "every reservation, a later page",
            reservations(ReservationFilter {
                after: Some(newest.clone()),
                ..Default::default()
            }),
            &["cover_reservations_newest_idx"],
        ),
        (
            "released ones",
            reservations(ReservationFilter {
                active: Some(false),
                ..Default::default()
            }),
            &["cover_reservations_newest_idx"],
        ),
        (
            "one supplier's",
            reservations(ReservationFilter {
                supplier_id: Some(some_id),
                ..Default::default()
            }),
            &[
                "cover_reservations_supplier_newest_idx",
                "cover_reservations_active_idx",
            ],
        ),
        (
            "one supplier's active ones, a later page",
            reservations(ReservationFilter {
                supplier_id: Some(some_id),
                active: Some(true),
                after: Some(newest),
                ..Default::default()
            }),
            &[
                "cover_reservations_supplier_newest_idx",
                "cover_reservations_active_idx",
            ],
        ),
        (
            "one contract's",
            reservations(ReservationFilter {
                contract_id: Some(format!("seed-{some_id}-1")),
                ..Default::default()
            }),
            &["cover_reservations_pkey"],
        ),
    ];
    for (shape, filter, indexes) in &listings {
        let explained = storage::explain_cover_reservations(&pool, filter)
            .await
            .unwrap_or_else(|e| panic!("{shape}: {e}"));
        assert_served(shape, &explained, "cover_reservations", indexes);
        storage::list_cover_reservations(&pool, filter)
            .await
            .unwrap_or_else(|e| panic!("{shape}: {e}"));
    }
    server.stop().await.unwrap();
}

// --- searching through the API ----------------------------------------------------

fn as_buyer<T>(message: T) -> tonic::Request<T> {
    as_role(message, BUYER, Role::Buyer)
}

async fn search(
    client: &mut Client,
    request: tonic::Request<pb::SearchSuppliersRequest>,
) -> pb::SearchSuppliersResponse {
    client
        .search_suppliers(request)
        .await
        .expect("search")
        .into_inner()
}

fn names(response: &pb::SearchSuppliersResponse) -> Vec<&str> {
    response
        .suppliers
        .iter()
        .map(|s| s.legal_name.as_str())
        .collect()
}

/// Registers a supplier named `name` owned by `owner`; returns its id.
async fn named(client: &mut Client, owner: &str, name: &str, licence: &str) -> String {
    client
        .register_supplier(as_role(
            pb::RegisterSupplierRequest {
                legal_name: name.into(),
                ..registration(&format!("reg-{licence}"), licence)
            },
            owner,
            Role::Supplier,
        ))
        .await
        .expect("register")
        .into_inner()
        .supplier
        .expect("supplier")
        .supplier_id
}

#[sqlx::test(migrations = false)]
async fn a_name_query_finds_the_words_of_legal_names_in_any_case_and_order(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    named(
        &mut client,
        SUPPLIER,
        "Acme Manufacturing Co., Ltd.",
        "LIC-N1",
    )
    .await;
    named(&mut client, SUPPLIER, "Shenzhen-Acme Electronics", "LIC-N2").await;
    named(&mut client, SUPPLIER, "Globex Manufacturing", "LIC-N3").await;
    named(&mut client, SUPPLIER, "Bäckerei Müller GmbH", "LIC-N4").await;
    let query = |q: &str| {
        as_buyer(pb::SearchSuppliersRequest {
            name_query: q.into(),
            ..Default::default()
        })
    };
    let cases: [(&str, &[&str]); 7] = [
        (
            "acme",
            &["Acme Manufacturing Co., Ltd.", "Shenzhen-Acme Electronics"],
        ),
        ("MANU acme", &["Acme Manufacturing Co., Ltd."]),
        (
            "manufact",
            &["Acme Manufacturing Co., Ltd.", "Globex Manufacturing"],
        ),
        ("  shenzhen,  electr ", &["Shenzhen-Acme Electronics"]),
        ("müller bäck", &["Bäckerei Müller GmbH"]),
        // Every word must match; a word inside another does not.
        ("acme globex", &[]),
        ("cme", &[]),
    ];
    for (q, expected) in cases {
        let found = search(&mut client, query(q)).await;
        assert_eq!(names(&found), expected, "name_query {q:?}");
    }
    // tsquery syntax in the query is only a separator.
    let found = search(&mut client, query("acme & (manu:* | !")).await;
    assert_eq!(names(&found), ["Acme Manufacturing Co., Ltd."]);
    server.stop().await.unwrap();
}

/// Sets a supplier's review and inquiry counters as reviews and inquiries
/// would (quicker than recording each through the API).
async fn standing(pool: &PgPool, id: &str, ratings: (i64, i64), inquiries: (i64, i64)) {
    sqlx::query(
        "UPDATE supplier_registry.suppliers SET rating_sum = $2, review_count = $3, \
         inquiry_count = $4, replied_inquiry_count = $5 WHERE id = $1::uuid",
    )
    .bind(id)
    .bind(ratings.0)
    .bind(ratings.1)
    .bind(inquiries.0)
    .bind(inquiries.1)
    .execute(pool)
    .await
    .unwrap();
}

/// Every page of `request` (pages of `size`), as `caller` sees them.
async fn every_page(
    client: &mut Client,
    request: pb::SearchSuppliersRequest,
    size: i32,
    caller: (&str, Role),
) -> Vec<pb::Supplier> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let response = search(
            client,
            as_role(
                pb::SearchSuppliersRequest {
                    page: page(size, &token),
                    ..request.clone()
                },
                caller.0,
                caller.1,
            ),
        )
        .await;
        assert!(response.suppliers.len() <= size as usize);
        all.extend(response.suppliers);
        if response.next_page_token.is_empty() {
            return all;
        }
        token = response.next_page_token;
    }
}

/// An order, the key it sorts on (highest first), and the suppliers it lists.
type SortCase<'a> = (
    pb::SupplierSort,
    fn(&pb::Supplier) -> i64,
    &'a [pb::Supplier],
);

fn ids(suppliers: &[pb::Supplier]) -> Vec<String> {
    suppliers.iter().map(|s| s.supplier_id.clone()).collect()
}

#[sqlx::test(migrations = false)]
async fn each_sort_orders_by_its_key_then_id_and_its_pages_continue_it(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    // Six badged suppliers, with ties in every key.
    let limits = [500_000, 300_000, 500_000, 100_000, 300_000, 900_000];
    let ratings = [(9, 2), (5, 1), (9, 2), (0, 0), (14, 3), (5, 1)];
    let rates = [(4, 4), (4, 2), (10, 5), (0, 0), (4, 4), (3, 1)];
    let mut suppliers = Vec::new();
    for (i, limit) in limits.iter().enumerate() {
        let id = badged_supplier(&mut client, &format!("LIC-SORT-{i}"), *limit).await;
        standing(&pool, &id, ratings[i], rates[i]).await;
        suppliers.push(id);
    }
    // One more, in euros: not in a sort by USD cover.
    let euro = register(&mut client, "LIC-SORT-EUR").await;
    let all: Vec<pb::Supplier> = every_page(
        &mut client,
        pb::SearchSuppliersRequest::default(),
        100,
        (BUYER, Role::Buyer),
    )
    .await;
    assert_eq!(all.len(), 7);
    let mut by_id = ids(&all);
    by_id.sort();
    assert_eq!(ids(&all), by_id, "the default order is the id order");
    assert!(by_id.contains(&euro));

    let badged: Vec<pb::Supplier> = all
        .iter()
        .filter(|s| suppliers.contains(&s.supplier_id))
        .cloned()
        .collect();
    let expected = |key: fn(&pb::Supplier) -> i64, among: &[pb::Supplier]| {
        let mut sorted = among.to_vec();
        sorted.sort_by(|a, b| {
            key(b)
                .cmp(&key(a))
                .then_with(|| b.supplier_id.cmp(&a.supplier_id))
        });
        ids(&sorted)
    };
    let cover = |s: &pb::Supplier| s.cover_remaining.as_ref().map_or(0, |m| m.amount_minor);
    let cases: [SortCase<'_>; 3] = [
        (
            pb::SupplierSort::AverageRating,
            |s| i64::from(s.average_rating_centi),
            all.as_slice(),
        ),
        (
            pb::SupplierSort::ResponseRate,
            |s| i64::from(s.response_rate_basis_points),
            all.as_slice(),
        ),
        (pb::SupplierSort::CoverRemaining, cover, badged.as_slice()),
    ];
    for (sort, key, among) in cases {
        let request = pb::SearchSuppliersRequest {
            sort: sort as i32,
            min_cover_remaining: (sort == pb::SupplierSort::CoverRemaining)
                .then(|| common::usd(0))
                .flatten(),
            ..Default::default()
        };
        let want = expected(key, among);
        for size in [1, 2, 4, 100] {
            let got = every_page(&mut client, request.clone(), size, (BUYER, Role::Buyer)).await;
            assert_eq!(ids(&got), want, "{sort:?} in pages of {size}");
        }
        // A token continues only the order it was issued for.
        let first = search(
            &mut client,
            as_buyer(pb::SearchSuppliersRequest {
                page: page(2, ""),
                ..request.clone()
            }),
        )
        .await;
        assert!(!first.next_page_token.is_empty());
        let other = if sort == pb::SupplierSort::AverageRating {
            pb::SupplierSort::ResponseRate
        } else {
            pb::SupplierSort::AverageRating
        };
        for wrong in [other, pb::SupplierSort::Unspecified] {
            let status = client
                .search_suppliers(as_buyer(pb::SearchSuppliersRequest {
                    sort: wrong as i32,
                    page: page(2, &first.next_page_token),
                    ..Default::default()
                }))
                .await
                .expect_err("another order's token");
            assert_eq!(status.code(), Code::InvalidArgument);
            assert_eq!(violated_fields(&status), ["page.page_token"]);
        }
    }
    // The key is what the supplier shows: 5 stars is 500, 14/3 stars 467.
    let by_rating = every_page(
        &mut client,
        pb::SearchSuppliersRequest {
            sort: pb::SupplierSort::AverageRating as i32,
            ..Default::default()
        },
        3,
        (BUYER, Role::Buyer),
    )
    .await;
    assert_eq!(
        ids(&by_rating[..3]),
        [
            suppliers[5].clone(),
            suppliers[1].clone(),
            suppliers[4].clone()
        ],
        "ties by the newer id first"
    );
    assert_eq!(
        by_rating[..3]
            .iter()
            .map(|s| s.average_rating_centi)
            .collect::<Vec<_>>(),
        [500, 500, 467]
    );
    // A sort narrows with the filters: at least USD 4,000.00 left, by cover.
    let rich = every_page(
        &mut client,
        pb::SearchSuppliersRequest {
            sort: pb::SupplierSort::CoverRemaining as i32,
            min_cover_remaining: common::usd(400_000),
            ..Default::default()
        },
        1,
        (BUYER, Role::Buyer),
    )
    .await;
    assert_eq!(
        ids(&rich),
        [
            suppliers[5].clone(),
            suppliers[2].clone().max(suppliers[0].clone()),
            suppliers[2].clone().min(suppliers[0].clone())
        ]
    );
    server.stop().await.unwrap();
}

/// Submits a supplier's verification as its owner.
async fn submit(client: &mut Client, id: &str, key: &str) {
    client
        .submit_verification(as_role(
            pb::SubmitVerificationRequest {
                idempotency_key: key.into(),
                supplier_id: id.into(),
                reason: String::new(),
            },
            SUPPLIER,
            Role::Supplier,
        ))
        .await
        .expect("submit");
}

fn queue() -> pb::SearchSuppliersRequest {
    pb::SearchSuppliersRequest {
        verification_statuses: vec![pb::VerificationStatus::Submitted as i32],
        sort: pb::SupplierSort::SubmittedAt as i32,
        ..Default::default()
    }
}

#[sqlx::test(migrations = false)]
async fn trust_and_safety_works_the_verification_queue_oldest_submission_first(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let a = register(&mut client, "LIC-Q-A").await;
    let b = register(&mut client, "LIC-Q-B").await;
    let c = register(&mut client, "LIC-Q-C").await;
    let never = register(&mut client, "LIC-Q-NEVER").await;
    submit(&mut client, &b, "sub-b").await;
    submit(&mut client, &a, "sub-a").await;
    submit(&mut client, &c, "sub-c").await;
    let staff = (OPERATOR, Role::TrustSafety);
    assert_eq!(
        ids(&every_page(&mut client, queue(), 1, staff).await),
        [b.clone(), a.clone(), c.clone()]
    );

    // B is rejected and submits again: it goes to the back of the queue.
    client
        .reject_verification(trust_safety(pb::RejectVerificationRequest {
            idempotency_key: "reject-b".into(),
            supplier_id: b.clone(),
            reason: "licence scan unreadable".into(),
        }))
        .await
        .unwrap();
    assert_eq!(
        ids(&every_page(&mut client, queue(), 2, staff).await),
        [a.clone(), c.clone()]
    );
    submit(&mut client, &b, "sub-b-again").await;
    // A is verified: out of the queue.
    client
        .verify_supplier(trust_safety(pb::VerifySupplierRequest {
            idempotency_key: "verify-a".into(),
            supplier_id: a.clone(),
            reason: "licence checked".into(),
        }))
        .await
        .unwrap();
    let queued = every_page(&mut client, queue(), 1, staff).await;
    assert_eq!(ids(&queued), [c.clone(), b.clone()]);
    assert!(
        queued.iter().all(|s| s.private_view),
        "staff see everything"
    );

    // By submission alone: everyone who ever submitted, the verified A too.
    let submitted = every_page(
        &mut client,
        pb::SearchSuppliersRequest {
            sort: pb::SupplierSort::SubmittedAt as i32,
            ..Default::default()
        },
        2,
        (OPERATOR, Role::Support),
    )
    .await;
    assert_eq!(ids(&submitted), [a.clone(), c.clone(), b.clone()]);
    assert!(!ids(&submitted).contains(&never));

    // Status filters: the suspended ones.
    client
        .set_supplier_status(trust_safety(pb::SetSupplierStatusRequest {
            idempotency_key: "suspend-c".into(),
            supplier_id: c.clone(),
            status: pb::SupplierStatus::Suspended as i32,
            reason: "fraud review".into(),
        }))
        .await
        .unwrap();
    let suspended = every_page(
        &mut client,
        pb::SearchSuppliersRequest {
            statuses: vec![pb::SupplierStatus::Suspended as i32],
            ..Default::default()
        },
        10,
        (OPERATOR, Role::Platform),
    )
    .await;
    assert_eq!(ids(&suspended), std::slice::from_ref(&c));
    let unverified_or_verified = every_page(
        &mut client,
        pb::SearchSuppliersRequest {
            verification_statuses: vec![
                pb::VerificationStatus::Unverified as i32,
                pb::VerificationStatus::Verified as i32,
            ],
            statuses: vec![
                pb::SupplierStatus::Active as i32,
                pb::SupplierStatus::Restricted as i32,
            ],
            ..Default::default()
        },
        10,
        staff,
    )
    .await;
    let mut expected = vec![a, never];
    expected.sort();
    assert_eq!(ids(&unverified_or_verified), expected);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn staff_filters_from_parties_are_permission_denied(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    register(&mut client, "LIC-STAFF-ONLY").await;
    let staff_only = [
        (
            "verification_statuses",
            pb::SearchSuppliersRequest {
                verification_statuses: vec![pb::VerificationStatus::Submitted as i32],
                ..Default::default()
            },
        ),
        (
            "statuses",
            pb::SearchSuppliersRequest {
                statuses: vec![pb::SupplierStatus::Suspended as i32],
                ..Default::default()
            },
        ),
        ("the SUBMITTED_AT sort", queue()),
    ];
    for (what, request) in &staff_only {
        for (subject, role) in [
            (BUYER, Role::Buyer),
            (SUPPLIER, Role::Supplier),
            ("inspector-1", Role::Inspector),
        ] {
            let status = client
                .search_suppliers(as_role(request.clone(), subject, role))
                .await
                .expect_err(&format!("{role} used {what}"));
            assert_eq!(status.code(), Code::PermissionDenied, "{role} {what}");
            assert_eq!(
                status.message(),
                "verification_statuses, statuses and the SUBMITTED_AT sort are for staff and \
                 back ends"
            );
        }
        for role in STAFF_AND_PLATFORM {
            client
                .search_suppliers(as_role(request.clone(), OPERATOR, role))
                .await
                .unwrap_or_else(|s| panic!("{role} {what}: {s:?}"));
        }
    }
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn owned_by_me_lists_the_calling_accounts_suppliers_only(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let mine = [
        named(&mut client, SUPPLIER, "Acme Ceramics", "LIC-MINE-1").await,
        named(&mut client, SUPPLIER, "Acme Tooling", "LIC-MINE-2").await,
    ];
    let theirs = named(&mut client, OTHER_SUPPLIER, "Globex Tooling", "LIC-THEIRS").await;
    let owned = |q: &str| pb::SearchSuppliersRequest {
        owned_by_me: true,
        name_query: q.into(),
        ..Default::default()
    };

    let found = every_page(&mut client, owned(""), 1, (SUPPLIER, Role::Supplier)).await;
    let mut expected = mine.to_vec();
    expected.sort();
    assert_eq!(ids(&found), expected);
    assert!(
        found
            .iter()
            .all(|s| s.private_view && s.owner_principal_id == SUPPLIER),
        "the owner sees its own private view"
    );
    let found = every_page(&mut client, owned(""), 10, (OTHER_SUPPLIER, Role::Supplier)).await;
    assert_eq!(ids(&found), std::slice::from_ref(&theirs));
    // With other filters: nothing of the other account's, whatever it asks.
    let found = every_page(
        &mut client,
        owned("tooling"),
        10,
        (OTHER_SUPPLIER, Role::Supplier),
    )
    .await;
    assert_eq!(ids(&found), [theirs]);
    let found = every_page(
        &mut client,
        owned("ceramics"),
        10,
        (OTHER_SUPPLIER, Role::Supplier),
    )
    .await;
    assert!(found.is_empty());
    // An account that owns nothing gets an empty page.
    let found = every_page(&mut client, owned(""), 10, ("supplier-new", Role::Supplier)).await;
    assert!(found.is_empty());

    // Only supplier accounts own suppliers.
    for role in [Role::Buyer, Role::TrustSafety, Role::Platform] {
        let status = client
            .search_suppliers(as_role(owned(""), OPERATOR, role))
            .await
            .expect_err("not a supplier account");
        assert_eq!(status.code(), Code::InvalidArgument, "{role}");
        assert_eq!(violated_fields(&status), ["owned_by_me"], "{role}");
    }
    // Without it, another supplier sees the public view of everyone's.
    let everyone = every_page(
        &mut client,
        pb::SearchSuppliersRequest::default(),
        10,
        (OTHER_SUPPLIER, Role::Supplier),
    )
    .await;
    assert_eq!(everyone.len(), 3);
    for s in &everyone {
        assert_eq!(
            s.private_view,
            !mine.contains(&s.supplier_id),
            "{}",
            s.legal_name
        );
        if mine.contains(&s.supplier_id) {
            assert!(s.owner_principal_id.is_empty() && s.contacts.is_empty());
        }
    }
    server.stop().await.unwrap();
}

// --- cover reservations --------------------------------------------------------------

async fn reserve(client: &mut Client, supplier: &str, contract: &str, amount: i64) {
    client
        .reserve_cover(service(pb::ReserveCoverRequest {
            idempotency_key: format!("reserve-{contract}"),
            supplier_id: supplier.into(),
            contract_id: contract.into(),
            amount: common::usd(amount),
        }))
        .await
        .expect("reserve");
}

async fn reservations(
    client: &mut Client,
    request: pb::ListCoverReservationsRequest,
    size: i32,
) -> Vec<pb::CoverReservation> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let response = client
            .list_cover_reservations(as_role(
                pb::ListCoverReservationsRequest {
                    page: page(size, &token),
                    ..request.clone()
                },
                OPERATOR,
                Role::Finance,
            ))
            .await
            .expect("list reservations")
            .into_inner();
        all.extend(response.reservations);
        if response.next_page_token.is_empty() {
            return all;
        }
        token = response.next_page_token;
    }
}

fn contracts(reservations: &[pb::CoverReservation]) -> Vec<&str> {
    reservations
        .iter()
        .map(|r| r.contract_id.as_str())
        .collect()
}

#[sqlx::test(migrations = false)]
async fn cover_reservations_are_listed_newest_first_by_supplier_contract_and_status(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let first = badged_supplier(&mut client, "LIC-RES-1", 1_000_000).await;
    let second = badged_supplier(&mut client, "LIC-RES-2", 1_000_000).await;
    for (supplier, contract, amount) in [
        (&first, "contract-a", 10_000),
        (&second, "contract-b", 20_000),
        (&first, "contract-c", 30_000),
        (&first, "contract-d", 40_000),
    ] {
        reserve(&mut client, supplier, contract, amount).await;
    }
    client
        .release_cover(service(pb::ReleaseCoverRequest {
            idempotency_key: "release-c".into(),
            supplier_id: first.clone(),
            contract_id: "contract-c".into(),
        }))
        .await
        .unwrap();

    let all = reservations(&mut client, Default::default(), 3).await;
    assert_eq!(
        contracts(&all),
        ["contract-d", "contract-c", "contract-b", "contract-a"]
    );
    let times: Vec<_> = all
        .iter()
        .map(|r| r.reserved_at.expect("reserved_at"))
        .map(|t| (t.seconds, t.nanos))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let c = &all[1];
    assert_eq!(c.status(), pb::CoverReservationStatus::Released);
    assert!(c.released_at.is_some());
    assert_eq!(c.amount, common::usd(30_000));
    assert_eq!(c.supplier_id, first);

    let of_first = |status: pb::CoverReservationStatus| pb::ListCoverReservationsRequest {
        supplier_id: first.clone(),
        status: status as i32,
        ..Default::default()
    };
    for (status, expected) in [
        (
            pb::CoverReservationStatus::Unspecified,
            &["contract-d", "contract-c", "contract-a"][..],
        ),
        (
            pb::CoverReservationStatus::Active,
            &["contract-d", "contract-a"][..],
        ),
        (pb::CoverReservationStatus::Released, &["contract-c"][..]),
    ] {
        for size in [1, 100] {
            let listed = reservations(&mut client, of_first(status), size).await;
            assert_eq!(
                contracts(&listed),
                expected,
                "{status:?} in pages of {size}"
            );
        }
    }
    let one = reservations(
        &mut client,
        pb::ListCoverReservationsRequest {
            contract_id: "contract-b".into(),
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(contracts(&one), ["contract-b"]);
    let mismatched = reservations(
        &mut client,
        pb::ListCoverReservationsRequest {
            contract_id: "contract-b".into(),
            supplier_id: first.clone(),
            ..Default::default()
        },
        10,
    )
    .await;
    assert!(mismatched.is_empty(), "contract-b is the second supplier's");
    let unknown = reservations(
        &mut client,
        pb::ListCoverReservationsRequest {
            supplier_id: "0190c5a2-7a2b-7c3d-8e4f-5a6b7c8d9e0f".into(),
            ..Default::default()
        },
        10,
    )
    .await;
    assert!(unknown.is_empty(), "an unknown supplier has none");

    // Parties and services are not admitted: the call is the staff's.
    for (subject, role) in [(BUYER, Role::Buyer), (SUPPLIER, Role::Supplier)] {
        let status = client
            .list_cover_reservations(as_role(
                of_first(pb::CoverReservationStatus::Active),
                subject,
                role,
            ))
            .await
            .expect_err("parties may not list reservations");
        assert_eq!(status.code(), Code::PermissionDenied, "{role}");
    }
    // A token of another listing is refused.
    let status = client
        .list_cover_reservations(as_role(
            pb::ListCoverReservationsRequest {
                page: page(
                    1,
                    "c3VwcGxpZXJzHzAxOTBjNWEyLTdhMmItN2MzZC04ZTRmLTVhNmI3YzhkOWUwZg",
                ),
                ..Default::default()
            },
            OPERATOR,
            Role::Support,
        ))
        .await
        .expect_err("a search token");
    assert_eq!(violated_fields(&status), ["page.page_token"]);
    server.stop().await.unwrap();
}
