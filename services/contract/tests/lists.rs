//! ListContracts: every filter shape is planned on an index (EXPLAIN of the
//! listing's own statement over a few thousand contracts), filters, the four
//! orders and their page tokens return every contract once in order, and
//! through the API: who sees which contracts, and the buyer's
//! `external_reference` (checked, unique per buyer, replayed, searchable).

use contract::{
    domain::status::Status,
    storage::{
        MIGRATOR,
        contracts::{
            ContractFilter, ContractListing, ContractOrder, explain_list_contracts, list_contracts,
        },
    },
};
use sqlx::{PgConnection, PgPool};
use ta_proto::{
    common::PageRequest,
    contract::{self as pb, contract_service_client::ContractServiceClient},
};
use ta_runtime::auth::Role;
use ta_testkit::{RunningService, authorized};
use ta_workflow::testing::FakePeer;
use time::{OffsetDateTime, macros::datetime};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

mod support;

use support::{BUYER, OWNER, Peers, TempDir, at, pb_usd, serve};

static MIGRATOR_REF: &sqlx::migrate::Migrator = &MIGRATOR;

// ---- A few thousand contracts, seeded by SQL ----------------------------------

const SEEDED: i64 = 3_000;
const BUYERS: i64 = 60;
const OWNERS: i64 = 40;
const BASE: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);
const STATUSES: [&str; 8] = [
    "draft",
    "awaiting_signatures",
    "awaiting_payment",
    "funded",
    "shipped",
    "completed",
    "cancelled",
    "in_dispute",
];

/// Contract `i` (1..=3000): id `i`, buyer `buyer-{i % 60}`, supplier and
/// owner `i % 40`, status `STATUSES[i % 8]`, unprotected when `i % 3 == 0`,
/// created `i` hours after `BASE`, changed a pseudo-random while later, and
/// the reference `PO-{i}` on even `i`.
async fn seed(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO contract.contracts (contract_id, buyer_principal_id, supplier_id, \
         supplier_principal_id, protection, status, latest_version, currency, total_minor, \
         created_at, updated_at, external_reference) \
         SELECT lpad(to_hex(i), 32, '0')::uuid, 'buyer-' || (i % $2), \
                lpad(to_hex(1000000 + i % $3), 32, '0')::uuid, 'owner-' || (i % $3), \
                CASE WHEN i % 3 = 0 THEN 'none' ELSE 'trade_assurance' END, \
                ($4::text[])[1 + i % 8], 1, 'USD', 1000 + i, \
                $5 + i * interval '1 hour', \
                $5 + i * interval '1 hour' + ((i * 7919) % 5000) * interval '1 minute', \
                CASE WHEN i % 2 = 0 THEN 'PO-' || i END \
         FROM generate_series(1, $1::bigint) AS i",
    )
    .bind(SEEDED)
    .bind(BUYERS)
    .bind(OWNERS)
    .bind(STATUSES.to_vec())
    .bind(BASE)
    .execute(pool)
    .await
    .expect("seed contracts");
    sqlx::query("ANALYZE contract.contracts")
        .execute(pool)
        .await
        .expect("analyze");
}

fn seeded_id(i: i64) -> Uuid {
    Uuid::from_u128(u128::try_from(i).expect("positive"))
}

fn seeded_created(i: i64) -> OffsetDateTime {
    BASE + time::Duration::hours(i)
}

fn seeded_updated(i: i64) -> OffsetDateTime {
    seeded_created(i) + time::Duration::minutes((i * 7919) % 5000)
}

fn listing(filter: ContractFilter, order: ContractOrder) -> ContractListing {
    ContractListing {
        filter,
        order,
        after: None,
        limit: 21,
    }
}

const ORDERS: [ContractOrder; 4] = [
    ContractOrder::CreatedDesc,
    ContractOrder::CreatedAsc,
    ContractOrder::UpdatedDesc,
    ContractOrder::UpdatedAsc,
];

#[sqlx::test(migrator = "MIGRATOR_REF")]
async fn every_filter_shape_and_order_is_planned_on_an_index(pool: PgPool) {
    seed(&pool).await;
    let buyer = || Some("buyer-7".to_owned());
    let owner = || Some("owner-5".to_owned());
    let march = Some(datetime!(2026-03-01 00:00 UTC));
    let april = Some(datetime!(2026-04-01 00:00 UTC));
    let mut shapes: Vec<(String, ContractListing)> = Vec::new();
    for order in ORDERS {
        // Staff and the platform, nothing named.
        shapes.push((
            format!("all, {order:?}"),
            listing(ContractFilter::default(), order),
        ));
        // What a buyer and a supplier caller are narrowed to.
        shapes.push((
            format!("a buyer's, {order:?}"),
            listing(
                ContractFilter {
                    buyer_principal_id: buyer(),
                    ..Default::default()
                },
                order,
            ),
        ));
        shapes.push((
            format!("an owner's, {order:?}"),
            listing(
                ContractFilter {
                    supplier_principal_id: owner(),
                    ..Default::default()
                },
                order,
            ),
        ));
        shapes.push((
            format!("one supplier's, {order:?}"),
            listing(
                ContractFilter {
                    supplier_id: Some(seeded_id(1_000_005)),
                    ..Default::default()
                },
                order,
            ),
        ));
        shapes.push((
            format!("one status, {order:?}"),
            listing(
                ContractFilter {
                    statuses: vec![Status::Funded],
                    ..Default::default()
                },
                order,
            ),
        ));
        shapes.push((
            format!("created in March, {order:?}"),
            listing(
                ContractFilter {
                    created_after: march,
                    created_before: april,
                    ..Default::default()
                },
                order,
            ),
        ));
        shapes.push((
            format!("changed in March, {order:?}"),
            listing(
                ContractFilter {
                    updated_after: march,
                    updated_before: april,
                    ..Default::default()
                },
                order,
            ),
        ));
        // A later page: the cursor continues in the index.
        shapes.push((
            format!("a buyer's second page, {order:?}"),
            ContractListing {
                after: Some((seeded_created(1_507), seeded_id(1_507))),
                ..listing(
                    ContractFilter {
                        buyer_principal_id: buyer(),
                        ..Default::default()
                    },
                    order,
                )
            },
        ));
    }
    for (name, filter) in [
        (
            "two statuses",
            ContractFilter {
                statuses: vec![Status::Funded, Status::Shipped],
                ..Default::default()
            },
        ),
        (
            "unprotected",
            ContractFilter {
                protection: Some(contract::domain::negotiation::Protection::None),
                ..Default::default()
            },
        ),
        (
            "a reference",
            ContractFilter {
                external_reference: Some("PO-1024".into()),
                ..Default::default()
            },
        ),
        (
            "a buyer's reference",
            ContractFilter {
                buyer_principal_id: Some("buyer-4".into()),
                external_reference: Some("PO-1024".into()),
                ..Default::default()
            },
        ),
        (
            "an owner's reference",
            ContractFilter {
                supplier_principal_id: Some("owner-24".into()),
                external_reference: Some("PO-1024".into()),
                ..Default::default()
            },
        ),
        (
            "a buyer's, by status, created in March",
            ContractFilter {
                buyer_principal_id: buyer(),
                statuses: vec![Status::Draft, Status::Cancelled],
                created_after: march,
                created_before: april,
                ..Default::default()
            },
        ),
        (
            "an owner's, changed in March",
            ContractFilter {
                supplier_principal_id: owner(),
                updated_after: march,
                updated_before: april,
                ..Default::default()
            },
        ),
    ] {
        shapes.push((name.to_owned(), listing(filter, ContractOrder::CreatedDesc)));
    }

    let mut conn = pool.acquire().await.unwrap();
    for (name, shape) in &shapes {
        let plan = explain_list_contracts(&mut conn, shape).await.unwrap();
        assert!(
            !plan.contains("Seq Scan"),
            "{name}: the listing scans the table:\n{plan}"
        );
        assert!(
            plan.contains("\"Index Name\": \"contracts_"),
            "{name}: no index of the contracts serves it:\n{plan}"
        );
    }
}

/// Every page of `listing`, `page` contracts at a time, through the cursor
/// the API's token carries: the ids in the order listed.
async fn all_pages(conn: &mut PgConnection, mut listing: ContractListing, page: i64) -> Vec<Uuid> {
    listing.limit = page;
    let mut ids = Vec::new();
    loop {
        let rows = list_contracts(conn, &listing).await.unwrap();
        ids.extend(rows.iter().map(|c| c.contract_id));
        match rows.last() {
            Some(last) if i64::try_from(rows.len()).unwrap() == page => {
                listing.after = Some((listing.order.key(last), last.contract_id));
            }
            _ => return ids,
        }
    }
}

/// The seeded contracts `wanted` keeps, in `order`, worked out from how
/// they were seeded (not by the database).
fn expected(order: ContractOrder, wanted: impl Fn(i64) -> bool) -> Vec<Uuid> {
    let mut rows: Vec<(OffsetDateTime, i64)> = (1..=SEEDED)
        .filter(|&i| wanted(i))
        .map(|i| {
            let key = match order {
                ContractOrder::CreatedDesc | ContractOrder::CreatedAsc => seeded_created(i),
                ContractOrder::UpdatedDesc | ContractOrder::UpdatedAsc => seeded_updated(i),
            };
            (key, i)
        })
        .collect();
    rows.sort();
    if matches!(
        order,
        ContractOrder::CreatedDesc | ContractOrder::UpdatedDesc
    ) {
        rows.reverse();
    }
    rows.into_iter().map(|(_, i)| seeded_id(i)).collect()
}

#[sqlx::test(migrator = "MIGRATOR_REF")]
async fn filters_orders_and_cursors_list_every_contract_once_in_order(pool: PgPool) {
    seed(&pool).await;
    let mut conn = pool.acquire().await.unwrap();
    let march = datetime!(2026-03-01 00:00 UTC);
    let april = datetime!(2026-04-01 00:00 UTC);
    for order in ORDERS {
        // A buyer's: 50 contracts, 7 a page.
        let got = all_pages(
            &mut conn,
            listing(
                ContractFilter {
                    buyer_principal_id: Some("buyer-7".into()),
                    ..Default::default()
                },
                order,
            ),
            7,
        )
        .await;
        let want = expected(order, |i| i % BUYERS == 7);
        assert_eq!(want.len(), 50);
        assert_eq!(got, want, "buyer-7, {order:?}");

        // An owner's contracts created in March (bounds: at or after, before).
        let got = all_pages(
            &mut conn,
            listing(
                ContractFilter {
                    supplier_principal_id: Some("owner-5".into()),
                    created_after: Some(march),
                    created_before: Some(april),
                    ..Default::default()
                },
                order,
            ),
            4,
        )
        .await;
        let want = expected(order, |i| {
            i % OWNERS == 5 && (march..april).contains(&seeded_created(i))
        });
        assert!(!want.is_empty());
        assert_eq!(got, want, "owner-5 created in March, {order:?}");

        // Changed in March, by status, unprotected.
        let got = all_pages(
            &mut conn,
            listing(
                ContractFilter {
                    statuses: vec![Status::Funded, Status::Shipped],
                    protection: Some(contract::domain::negotiation::Protection::None),
                    updated_after: Some(march),
                    updated_before: Some(april),
                    ..Default::default()
                },
                order,
            ),
            5,
        )
        .await;
        let want = expected(order, |i| {
            matches!(i % 8, 3 | 4) && i % 3 == 0 && (march..april).contains(&seeded_updated(i))
        });
        assert!(!want.is_empty());
        assert_eq!(
            got, want,
            "funded or shipped, unprotected, changed in March, {order:?}"
        );
    }

    // A reference: exactly its contract, for its buyer only.
    let by_reference = |buyer: Option<&str>| ContractFilter {
        buyer_principal_id: buyer.map(str::to_owned),
        external_reference: Some("PO-1024".into()),
        ..Default::default()
    };
    let found = all_pages(
        &mut conn,
        listing(by_reference(None), ContractOrder::CreatedDesc),
        5,
    )
    .await;
    assert_eq!(found, [seeded_id(1024)]);
    let record = &list_contracts(
        &mut conn,
        &listing(by_reference(Some("buyer-4")), ContractOrder::CreatedDesc),
    )
    .await
    .unwrap()[0];
    assert_eq!(record.external_reference.as_deref(), Some("PO-1024"));
    assert!(
        list_contracts(
            &mut conn,
            &listing(by_reference(Some("buyer-5")), ContractOrder::CreatedDesc)
        )
        .await
        .unwrap()
        .is_empty()
    );
}

// ---- Through the API ------------------------------------------------------------

const OTHER_BUYER: &str = "buyer-2";

struct Harness {
    _server: RunningService,
    _registry: FakePeer,
    _escrow: FakePeer,
    client: ContractServiceClient<Channel>,
    supplier_id: Uuid,
    _store: TempDir,
}

/// The contract service with the fake peers of `support`.
async fn start(pool: &PgPool) -> Harness {
    let peers = Peers::start().await;
    let (server, store) = serve(pool, &peers, &[]).await;
    Harness {
        client: ContractServiceClient::new(server.channel.clone()),
        _server: server,
        _registry: peers.registry,
        _escrow: peers.escrow,
        supplier_id: Uuid::now_v7(),
        _store: store,
    }
}

/// 1,000 mugs at 3.00 USD: 30 % deposit after signing, the balance before
/// shipment.
fn terms() -> pb::ContractTerms {
    pb::ContractTerms {
        title: "Stoneware mugs".into(),
        line_items: vec![pb::LineItem {
            sku: "MUG-350".into(),
            description: "350 ml stoneware mug".into(),
            quantity: 1_000,
            unit: "pcs".into(),
            unit_price: pb_usd(300),
            line_total: None,
        }],
        shipment_deadline: at(time::Duration::days(20)),
        delivery_deadline: at(time::Duration::days(45)),
        delivery_terms: Some(pb::DeliveryTerms {
            incoterm: pb::Incoterm::Fob.into(),
            named_place: "Shanghai port".into(),
            destination_country_code: "DE".into(),
        }),
        inspection: Some(pb::InspectionRequirement {
            kind: pb::InspectionKind::None.into(),
            ..Default::default()
        }),
        payment_terms: Some(pb::PaymentTerms {
            scheme: pb::PaymentScheme::DepositAndBalance.into(),
            milestones: vec![
                pb::PaymentMilestone {
                    milestone_id: "deposit".into(),
                    share_basis_points: 3_000,
                    trigger: pb::PaymentTrigger::AfterSigning.into(),
                    due_days: 3,
                    ..Default::default()
                },
                pb::PaymentMilestone {
                    milestone_id: "balance".into(),
                    share_basis_points: 7_000,
                    trigger: pb::PaymentTrigger::BeforeShipmentDeadline.into(),
                    due_days: 2,
                    ..Default::default()
                },
            ],
            pay_later: None,
        }),
        inspection_period_days: 7,
        claim_window_days: 0,
        protection: pb::Protection::TradeAssurance.into(),
        ..Default::default()
    }
}

impl Harness {
    fn draft(&self, key: &str, reference: &str) -> pb::CreateContractDraftRequest {
        pb::CreateContractDraftRequest {
            idempotency_key: key.into(),
            supplier_id: self.supplier_id.to_string(),
            terms: Some(terms()),
            external_reference: reference.into(),
            ..Default::default()
        }
    }

    async fn create(
        &mut self,
        request: pb::CreateContractDraftRequest,
        who: &str,
        role: Role,
    ) -> Result<pb::Contract, tonic::Status> {
        Ok(self
            .client
            .create_contract_draft(authorized(request, who, role))
            .await?
            .into_inner()
            .contract
            .expect("contract"))
    }

    async fn list(
        &mut self,
        request: pb::ListContractsRequest,
        who: &str,
        role: Role,
    ) -> Result<pb::ListContractsResponse, tonic::Status> {
        Ok(self
            .client
            .list_contracts(authorized(request, who, role))
            .await?
            .into_inner())
    }

    async fn ids(
        &mut self,
        request: pb::ListContractsRequest,
        who: &str,
        role: Role,
    ) -> Vec<String> {
        let mut request = request;
        let mut ids = Vec::new();
        loop {
            let page = self.list(request.clone(), who, role).await.expect("listed");
            ids.extend(page.contracts.into_iter().map(|c| c.contract_id));
            if page.next_page_token.is_empty() {
                return ids;
            }
            request.page = Some(PageRequest {
                page_size: request.page.as_ref().map_or(0, |p| p.page_size),
                page_token: page.next_page_token,
            });
        }
    }
}

fn by_reference(reference: &str) -> pb::ListContractsRequest {
    pb::ListContractsRequest {
        external_reference: reference.into(),
        ..Default::default()
    }
}

#[sqlx::test(migrator = "MIGRATOR_REF")]
async fn a_buyers_reference_is_checked_unique_per_buyer_replayed_and_found(pool: PgPool) {
    let mut h = start(&pool).await;

    let request = h.draft("draft-1", "SHOP-1001");
    let first = h
        .create(request.clone(), BUYER, Role::Buyer)
        .await
        .expect("drafted with a reference");
    assert_eq!(first.external_reference, "SHOP-1001");

    // The same request again (same key): the first answer.
    let replayed = h
        .create(request, BUYER, Role::Buyer)
        .await
        .expect("replayed");
    assert_eq!(replayed.contract_id, first.contract_id);

    // Another draft of the same buyer with it: ALREADY_EXISTS naming the first.
    let taken = h
        .create(h.draft("draft-2", "SHOP-1001"), BUYER, Role::Buyer)
        .await
        .expect_err("a buyer's reference is unique");
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    assert!(
        taken.message().contains(&first.contract_id),
        "{}",
        taken.message()
    );

    // Another buyer may use the same reference; a draft without one is fine.
    let other = h
        .create(h.draft("draft-3", "SHOP-1001"), OTHER_BUYER, Role::Buyer)
        .await
        .expect("another buyer's same reference");
    assert_ne!(other.contract_id, first.contract_id);
    let plain = h
        .create(h.draft("draft-4", ""), BUYER, Role::Buyer)
        .await
        .expect("no reference");
    assert_eq!(plain.external_reference, "");
    // 128 characters, not bytes.
    let long: String = "é".repeat(128);
    let longest = h
        .create(h.draft("draft-5", &long), BUYER, Role::Buyer)
        .await
        .expect("128 characters");
    assert_eq!(longest.external_reference, long);

    // Bad references, and a supplier setting the buyer's: INVALID_ARGUMENT.
    for (key, reference) in [
        ("bad-1", "x".repeat(129)),
        ("bad-2", "SHOP\n1002".to_owned()),
        ("bad-3", "SHOP\u{7f}".to_owned()),
    ] {
        let refused = h
            .create(h.draft(key, &reference), BUYER, Role::Buyer)
            .await
            .expect_err("a bad reference");
        assert_eq!(refused.code(), Code::InvalidArgument, "{reference:?}");
        assert!(
            refused.message().contains("external_reference"),
            "{refused:?}"
        );
    }
    let mut by_supplier = h.draft("bad-4", "SHOP-2000");
    by_supplier.buyer_principal_id = BUYER.into();
    let refused = h
        .create(by_supplier, OWNER, Role::Supplier)
        .await
        .expect_err("only the buyer sets it");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("external_reference"),
        "{refused:?}"
    );

    // GetContract shows it.
    let read = h
        .client
        .get_contract(authorized(
            pb::GetContractRequest {
                contract_id: first.contract_id.clone(),
                version: 0,
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect("read")
        .into_inner()
        .contract
        .expect("contract");
    assert_eq!(read.external_reference, "SHOP-1001");

    // Found by exact match, each party its own, staff and the platform all.
    let (first_id, other_id) = (first.contract_id.clone(), other.contract_id.clone());
    let mut both = vec![first_id.clone(), other_id.clone()];
    both.sort();
    for (who, role, want) in [
        (BUYER, Role::Buyer, vec![first_id.clone()]),
        (OTHER_BUYER, Role::Buyer, vec![other_id.clone()]),
        (OWNER, Role::Supplier, both.clone()),
        ("ops-1", Role::Arbiter, both.clone()),
        ("shop-backend", Role::Platform, both.clone()),
        ("buyer-3", Role::Buyer, Vec::new()),
        ("owner-2", Role::Supplier, Vec::new()),
    ] {
        let mut got = h.ids(by_reference("SHOP-1001"), who, role).await;
        got.sort();
        assert_eq!(got, want, "{who} ({role:?})");
    }
    assert!(
        h.ids(by_reference("SHOP-100"), "ops-1", Role::Arbiter)
            .await
            .is_empty()
    );
    let staff_for_one_buyer = pb::ListContractsRequest {
        buyer_principal_id: OTHER_BUYER.into(),
        ..by_reference("SHOP-1001")
    };
    assert_eq!(
        h.ids(staff_for_one_buyer, "ops-1", Role::Support).await,
        [other_id]
    );
    let bad = h
        .list(by_reference(&"x".repeat(129)), BUYER, Role::Buyer)
        .await
        .expect_err("a bad reference");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("external_reference"));
}

#[sqlx::test(migrator = "MIGRATOR_REF")]
async fn listings_sort_page_and_show_each_party_only_its_own(pool: PgPool) {
    let mut h = start(&pool).await;
    let mut mine = Vec::new();
    for n in 0..3 {
        let c = h
            .create(h.draft(&format!("mine-{n}"), ""), BUYER, Role::Buyer)
            .await
            .expect("drafted");
        mine.push(c.contract_id);
    }
    let theirs = h
        .create(h.draft("theirs", ""), OTHER_BUYER, Role::Buyer)
        .await
        .expect("drafted")
        .contract_id;
    // The oldest is changed last: a signature.
    h.client
        .sign_contract(authorized(
            pb::SignContractRequest {
                idempotency_key: "sign-0".into(),
                contract_id: mine[0].clone(),
                version: 1,
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect("signed");

    let sorted = |sort: pb::ContractSort| pb::ListContractsRequest {
        sort: sort.into(),
        page: Some(PageRequest {
            page_size: 2,
            page_token: String::new(),
        }),
        ..Default::default()
    };
    let newest_first: Vec<String> = mine.iter().rev().cloned().collect();
    assert_eq!(
        h.ids(sorted(pb::ContractSort::Unspecified), BUYER, Role::Buyer)
            .await,
        newest_first
    );
    assert_eq!(
        h.ids(sorted(pb::ContractSort::CreatedDesc), BUYER, Role::Buyer)
            .await,
        newest_first
    );
    assert_eq!(
        h.ids(sorted(pb::ContractSort::CreatedAsc), BUYER, Role::Buyer)
            .await,
        mine
    );
    assert_eq!(
        h.ids(sorted(pb::ContractSort::UpdatedDesc), BUYER, Role::Buyer)
            .await,
        [mine[0].clone(), mine[2].clone(), mine[1].clone()]
    );
    assert_eq!(
        h.ids(sorted(pb::ContractSort::UpdatedAsc), BUYER, Role::Buyer)
            .await,
        [mine[1].clone(), mine[2].clone(), mine[0].clone()]
    );

    // Who sees what: the supplier's owner and staff all four, a stranger none.
    let mut all: Vec<String> = mine.iter().rev().cloned().collect();
    all.insert(0, theirs.clone());
    for (who, role) in [
        (OWNER, Role::Supplier),
        ("ops-1", Role::TrustSafety),
        ("ops-2", Role::Finance),
        ("shop-backend", Role::Platform),
    ] {
        assert_eq!(
            h.ids(sorted(pb::ContractSort::CreatedDesc), who, role)
                .await,
            all,
            "{who}"
        );
    }
    assert_eq!(
        h.ids(
            sorted(pb::ContractSort::CreatedDesc),
            OTHER_BUYER,
            Role::Buyer
        )
        .await,
        [theirs]
    );
    for (who, role) in [("buyer-3", Role::Buyer), ("owner-2", Role::Supplier)] {
        assert!(
            h.ids(sorted(pb::ContractSort::CreatedDesc), who, role)
                .await
                .is_empty(),
            "{who}"
        );
    }
    let naming_another = pb::ListContractsRequest {
        buyer_principal_id: BUYER.into(),
        ..Default::default()
    };
    let denied = h
        .list(naming_another, OTHER_BUYER, Role::Buyer)
        .await
        .expect_err("another buyer's contracts");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Date ranges: created from the second of mine on, changed before now.
    let second = h
        .list(
            pb::ListContractsRequest {
                sort: pb::ContractSort::CreatedAsc.into(),
                ..Default::default()
            },
            BUYER,
            Role::Buyer,
        )
        .await
        .unwrap()
        .contracts[1]
        .created_at;
    let from_second = pb::ListContractsRequest {
        created_after: second,
        sort: pb::ContractSort::CreatedAsc.into(),
        ..Default::default()
    };
    assert_eq!(
        h.ids(from_second.clone(), BUYER, Role::Buyer).await,
        mine[1..]
    );
    let before_second = pb::ListContractsRequest {
        created_before: second,
        ..Default::default()
    };
    assert_eq!(h.ids(before_second, BUYER, Role::Buyer).await, mine[..1]);
    let changed_since_signing = pb::ListContractsRequest {
        updated_after: h
            .list(
                pb::ListContractsRequest {
                    sort: pb::ContractSort::UpdatedDesc.into(),
                    ..Default::default()
                },
                BUYER,
                Role::Buyer,
            )
            .await
            .unwrap()
            .contracts[0]
            .updated_at,
        updated_before: at(time::Duration::minutes(1)),
        ..Default::default()
    };
    assert_eq!(
        h.ids(changed_since_signing, BUYER, Role::Buyer).await,
        mine[..1]
    );

    // Bad requests: an empty range, an unknown sort, a token of another order.
    let empty_range = pb::ListContractsRequest {
        created_after: second,
        created_before: second,
        ..Default::default()
    };
    let refused = h.list(empty_range, BUYER, Role::Buyer).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("created_before"), "{refused:?}");
    let unknown_sort = pb::ListContractsRequest {
        sort: 99,
        ..Default::default()
    };
    let refused = h.list(unknown_sort, BUYER, Role::Buyer).await.unwrap_err();
    assert!(refused.message().contains("sort"), "{refused:?}");
    let token = h
        .list(sorted(pb::ContractSort::CreatedDesc), BUYER, Role::Buyer)
        .await
        .unwrap()
        .next_page_token;
    assert!(!token.is_empty());
    let mixed = pb::ListContractsRequest {
        sort: pb::ContractSort::UpdatedDesc.into(),
        page: Some(PageRequest {
            page_size: 2,
            page_token: token,
        }),
        ..Default::default()
    };
    let refused = h.list(mixed, BUYER, Role::Buyer).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("page.page_token"), "{refused:?}");
}
