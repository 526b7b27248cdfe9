//! ListClaims: every filter shape is planned on an index (EXPLAIN of the
//! listing's own statement over a few thousand claims), the filters
//! (decision overdue, filing range, party, reason, status) and the cursor
//! return every claim once, newest filed first, and through the API each
//! party sees only its own while arbiters and the platform see all.

use clap::Parser;
use dispute::{
    Links, SPEC, api,
    config::Config,
    domain::{claim::Reason, status::Status},
    storage::{
        self,
        claims::{self, ClaimFilter, DecisionOverdue},
    },
};
use sqlx::{PgConnection, PgPool};
use ta_proto::{
    common::PageRequest,
    dispute::{self as pb, dispute_service_client::DisputeServiceClient},
};
use ta_runtime::{auth::Role, timestamps};
use ta_testkit::{RunningService, authorized};
use time::{Duration, OffsetDateTime, macros::datetime};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

static MIGRATOR: &sqlx::migrate::Migrator = &storage::MIGRATOR;

const BUYERS: i64 = 50;
const OWNERS: i64 = 30;
const STATUSES: [&str; 6] = [
    "negotiating",
    "escalated",
    "withdrawn",
    "refused",
    "escalated",
    "negotiating",
];
const REASONS: [&str; 5] = [
    "late_shipment",
    "non_delivery",
    "quality_mismatch",
    "damage",
    "short_quantity",
];

/// Claim `i` (1..=`count`): id `i`, its own contract, buyer `buyer-{i % 50}`,
/// supplier and owner `i % 30`, status `STATUSES[i % 6]`, reason
/// `REASONS[i % 5]` (1: non-delivery), filed `i` hours after `base`;
/// escalated ones escalated 4 days after filing with the decision due
/// [`due_after_filing`] after filing.
async fn seed(pool: &PgPool, base: OffsetDateTime, count: i64) {
    sqlx::query(
        "INSERT INTO dispute.claims (claim_id, contract_id, escrow_account_id, \
         buyer_principal_id, supplier_id, supplier_principal_id, reason, currency, \
         amount_claimed_minor, held_minor, description, status, goods_shipped, filed_at, \
         negotiation_ends_at, auto_escalate_at, escalated_at, decision_due_at, updated_at) \
         SELECT lpad(to_hex(i), 32, '0')::uuid, 'contract-' || i, 'account-' || i, \
                'buyer-' || (i % $3), 'supplier-' || (i % $4), 'owner-' || (i % $4), \
                ($6::text[])[1 + i % 5], 'USD', 100, 1000, 'seeded', \
                ($5::text[])[1 + i % 6], true, filed, filed + interval '3 days', \
                filed + interval '7 days', \
                CASE WHEN i % 6 IN (1, 4) THEN filed + interval '4 days' END, \
                CASE WHEN i % 6 IN (1, 4) THEN filed + CASE WHEN i % 4 = 1 \
                    THEN interval '60 days' ELSE interval '9 days' END END, \
                filed \
         FROM generate_series(1, $1::bigint) AS i, \
              LATERAL (SELECT $2 + i * interval '1 hour' AS filed) AS f",
    )
    .bind(count)
    .bind(base)
    .bind(BUYERS)
    .bind(OWNERS)
    .bind(STATUSES.to_vec())
    .bind(REASONS.to_vec())
    .execute(pool)
    .await
    .expect("seed claims");
    sqlx::query("ANALYZE dispute.claims")
        .execute(pool)
        .await
        .expect("analyze");
}

fn due_after_filing(i: i64) -> Duration {
    if i % 4 == 1 {
        Duration::days(60)
    } else {
        Duration::days(9)
    }
}

fn id(i: i64) -> Uuid {
    Uuid::from_u128(u128::try_from(i).expect("positive"))
}

fn filed(base: OffsetDateTime, i: i64) -> OffsetDateTime {
    base + Duration::hours(i)
}

/// Escalated, and its decision was due before `now`.
fn overdue(base: OffsetDateTime, i: i64, now: OffsetDateTime) -> bool {
    matches!(i % 6, 1 | 4) && filed(base, i) + due_after_filing(i) < now
}

/// The ids of the seeded claims `wanted` keeps, newest filed first.
fn expected(count: i64, wanted: impl Fn(i64) -> bool) -> Vec<Uuid> {
    (1..=count).rev().filter(|&i| wanted(i)).map(id).collect()
}

const BASE: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);
const SEEDED: i64 = 3_000;

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_filter_shape_is_planned_on_an_index(pool: PgPool) {
    seed(&pool, BASE, SEEDED).await;
    let now = BASE + Duration::days(60);
    let march = Some(datetime!(2026-03-01 00:00 UTC));
    let april = Some(datetime!(2026-04-01 00:00 UTC));
    let buyer = || Some("buyer-7".to_owned());
    let owner = || Some("owner-5".to_owned());
    let overdue = |overdue| Some(DecisionOverdue { overdue, now });
    let shapes: Vec<(&str, ClaimFilter)> = vec![
        ("all", ClaimFilter::default()),
        (
            "a buyer's",
            ClaimFilter {
                buyer_principal_id: buyer(),
                ..Default::default()
            },
        ),
        (
            "an owner's",
            ClaimFilter {
                supplier_principal_id: owner(),
                ..Default::default()
            },
        ),
        (
            "one supplier's",
            ClaimFilter {
                supplier_id: Some("supplier-5".into()),
                ..Default::default()
            },
        ),
        (
            "one contract's",
            ClaimFilter {
                contract_id: Some("contract-77".into()),
                ..Default::default()
            },
        ),
        (
            "escalated",
            ClaimFilter {
                statuses: vec![Status::Escalated],
                ..Default::default()
            },
        ),
        (
            "in progress",
            ClaimFilter {
                statuses: vec![Status::Negotiating, Status::Escalated],
                ..Default::default()
            },
        ),
        (
            "one reason",
            ClaimFilter {
                reason: Some(Reason::Damage),
                ..Default::default()
            },
        ),
        (
            "filed in March",
            ClaimFilter {
                filed_after: march,
                filed_before: april,
                ..Default::default()
            },
        ),
        (
            "filed before March",
            ClaimFilter {
                filed_before: march,
                ..Default::default()
            },
        ),
        (
            "decision overdue",
            ClaimFilter {
                decision_overdue: overdue(true),
                ..Default::default()
            },
        ),
        (
            "decision not overdue",
            ClaimFilter {
                decision_overdue: overdue(false),
                ..Default::default()
            },
        ),
        (
            "a buyer's overdue",
            ClaimFilter {
                buyer_principal_id: buyer(),
                decision_overdue: overdue(true),
                ..Default::default()
            },
        ),
        (
            "an owner's by reason filed in March",
            ClaimFilter {
                supplier_principal_id: owner(),
                reason: Some(Reason::NonDelivery),
                filed_after: march,
                filed_before: april,
                ..Default::default()
            },
        ),
    ];
    let mut conn = pool.acquire().await.unwrap();
    for (name, filter) in &shapes {
        for after in [None, Some((filed(BASE, 1_507), id(1_507)))] {
            let plan = claims::explain_list_claims(&mut conn, filter, after, 21)
                .await
                .unwrap();
            assert!(
                !plan.contains("Seq Scan"),
                "{name} (after {after:?}): the listing scans the table:\n{plan}"
            );
            assert!(
                plan.contains("\"Index Name\": \"claims_"),
                "{name}: no index of the claims serves it:\n{plan}"
            );
        }
    }
}

/// Every page of a listing, `page` claims at a time, through the cursor.
async fn all_pages(conn: &mut PgConnection, filter: &ClaimFilter, page: i64) -> Vec<Uuid> {
    let mut after = None;
    let mut ids = Vec::new();
    loop {
        let rows = claims::list_claims(conn, filter, after, page)
            .await
            .unwrap();
        ids.extend(rows.iter().map(|c| c.claim_id));
        match rows.last() {
            Some(last) if i64::try_from(rows.len()).unwrap() == page => {
                after = Some((last.claim.filed_at, last.claim_id));
            }
            _ => return ids,
        }
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn filters_and_the_cursor_list_every_claim_once_newest_first(pool: PgPool) {
    seed(&pool, BASE, SEEDED).await;
    let now = BASE + Duration::days(60);
    let mut conn = pool.acquire().await.unwrap();

    // Overdue decisions: escalated, due before now (not the 60-day ones).
    let got = all_pages(
        &mut conn,
        &ClaimFilter {
            decision_overdue: Some(DecisionOverdue { overdue: true, now }),
            ..Default::default()
        },
        25,
    )
    .await;
    let want = expected(SEEDED, |i| overdue(BASE, i, now));
    assert!(want.len() > 100);
    assert_eq!(got, want);

    // A buyer's others: every status, escalated ones not yet due included.
    let got = all_pages(
        &mut conn,
        &ClaimFilter {
            buyer_principal_id: Some("buyer-7".into()),
            decision_overdue: Some(DecisionOverdue {
                overdue: false,
                now,
            }),
            ..Default::default()
        },
        7,
    )
    .await;
    let want = expected(SEEDED, |i| i % BUYERS == 7 && !overdue(BASE, i, now));
    assert!(want.iter().any(|c| {
        let i = i64::try_from(c.as_u128()).unwrap();
        matches!(i % 6, 1 | 4)
    }));
    assert_eq!(got, want);

    // An owner's, one reason, filed in March (at or after, before).
    let (march, april) = (
        datetime!(2026-03-01 00:00 UTC),
        datetime!(2026-04-01 00:00 UTC),
    );
    let got = all_pages(
        &mut conn,
        &ClaimFilter {
            supplier_principal_id: Some("owner-6".into()),
            reason: Some(Reason::NonDelivery),
            filed_after: Some(march),
            filed_before: Some(april),
            ..Default::default()
        },
        2,
    )
    .await;
    let want = expected(SEEDED, |i| {
        i % OWNERS == 6 && i % 5 == 1 && (march..april).contains(&filed(BASE, i))
    });
    assert!(!want.is_empty());
    assert_eq!(got, want);

    // Escalated or withdrawn claims filed before a time.
    let got = all_pages(
        &mut conn,
        &ClaimFilter {
            statuses: vec![Status::Escalated, Status::Withdrawn],
            filed_before: Some(filed(BASE, 100)),
            ..Default::default()
        },
        10,
    )
    .await;
    let want = expected(99, |i| matches!(i % 6, 1 | 2 | 4));
    assert_eq!(got, want);
}

// ---- Through the API ------------------------------------------------------------

struct Dispute {
    _server: RunningService,
    client: DisputeServiceClient<Channel>,
    evidence_dir: std::path::PathBuf,
}

impl Drop for Dispute {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.evidence_dir);
    }
}

async fn start(pool: &PgPool) -> Dispute {
    let evidence_dir = std::env::temp_dir().join(format!("dispute-lists-{}", Uuid::now_v7()));
    let dir = evidence_dir.display().to_string();
    let config = Config::try_parse_from(ta_testkit::command_line(
        "dispute",
        pool,
        &["--evidence-store", &dir],
    ))
    .expect("config");
    let links = Links::from_config(&config).expect("links");
    let service_api = api(&config, pool.clone(), links);
    let server =
        RunningService::start(&SPEC, config.common.clone(), pool.clone(), service_api).await;
    Dispute {
        client: DisputeServiceClient::new(server.channel.clone()),
        _server: server,
        evidence_dir,
    }
}

impl Dispute {
    async fn list(
        &mut self,
        request: pb::ListClaimsRequest,
        who: &str,
        role: Role,
    ) -> Result<pb::ListClaimsResponse, tonic::Status> {
        Ok(self
            .client
            .list_claims(authorized(request, who, role))
            .await?
            .into_inner())
    }

    /// Every page, 4 claims at a time: the ids in the order listed.
    async fn ids(
        &mut self,
        mut request: pb::ListClaimsRequest,
        who: &str,
        role: Role,
    ) -> Vec<Uuid> {
        request.page = Some(PageRequest {
            page_size: 4,
            page_token: String::new(),
        });
        let mut ids = Vec::new();
        loop {
            let page = self.list(request.clone(), who, role).await.expect("listed");
            ids.extend(
                page.claims
                    .iter()
                    .map(|c| Uuid::parse_str(&c.claim_id).expect("claim id")),
            );
            if page.next_page_token.is_empty() {
                return ids;
            }
            if let Some(p) = request.page.as_mut() {
                p.page_token = page.next_page_token;
            }
        }
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn overdue_decisions_and_filing_ranges_each_caller_sees_its_own(pool: PgPool) {
    // 120 claims filed over the last 30 days: escalated ones with the
    // decision due 9 days after filing are overdue unless filed in the last
    // 9 days; those due 60 days after are not.
    let count = 120;
    let now = timestamps::now();
    let base = now - Duration::days(30);
    seed(&pool, base, count).await;
    let mut d = start(&pool).await;
    let overdue_request = pb::ListClaimsRequest {
        decision_overdue: Some(true),
        ..Default::default()
    };
    // `now` of the call is later than `now` here: nothing changes in between
    // (the nearest decision falls due hours away).
    let all_overdue = expected(count, |i| overdue(base, i, now));
    assert!(all_overdue.len() > 5);
    for (who, role) in [("ops-1", Role::Arbiter), ("shop-backend", Role::Platform)] {
        assert_eq!(
            d.ids(overdue_request.clone(), who, role).await,
            all_overdue,
            "{who}"
        );
    }
    let not_overdue = pb::ListClaimsRequest {
        decision_overdue: Some(false),
        ..Default::default()
    };
    assert_eq!(
        d.ids(not_overdue, "ops-1", Role::Arbiter).await,
        expected(count, |i| !overdue(base, i, now))
    );
    // Parties: their own only; strangers nothing.
    assert_eq!(
        d.ids(overdue_request.clone(), "buyer-7", Role::Buyer).await,
        expected(count, |i| i % BUYERS == 7 && overdue(base, i, now))
    );
    assert_eq!(
        d.ids(overdue_request.clone(), "owner-3", Role::Supplier)
            .await,
        expected(count, |i| i % OWNERS == 3 && overdue(base, i, now))
    );
    for (who, role) in [("buyer-x", Role::Buyer), ("owner-x", Role::Supplier)] {
        assert!(
            d.ids(overdue_request.clone(), who, role).await.is_empty(),
            "{who}"
        );
        assert!(
            d.ids(pb::ListClaimsRequest::default(), who, role)
                .await
                .is_empty(),
            "{who}"
        );
    }

    // A filing range with reason and status, for staff.
    let ranged = pb::ListClaimsRequest {
        filed_after: Some(timestamps::to_proto(filed(base, 20))),
        filed_before: Some(timestamps::to_proto(filed(base, 80))),
        statuses: vec![pb::ClaimStatus::Escalated.into()],
        reason: ta_proto::common::ClaimReason::NonDelivery.into(),
        ..Default::default()
    };
    let want = expected(79, |i| i >= 20 && matches!(i % 6, 1 | 4) && i % 5 == 1);
    assert!(!want.is_empty());
    assert_eq!(d.ids(ranged, "ops-2", Role::Support).await, want);

    // Bad requests.
    let empty_range = pb::ListClaimsRequest {
        filed_after: Some(timestamps::to_proto(filed(base, 20))),
        filed_before: Some(timestamps::to_proto(filed(base, 20))),
        ..Default::default()
    };
    let refused = d
        .list(empty_range, "ops-1", Role::Arbiter)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("filed_before"), "{refused:?}");
    let another_buyer = pb::ListClaimsRequest {
        buyer_principal_id: "buyer-8".into(),
        ..Default::default()
    };
    let refused = d
        .list(another_buyer, "buyer-7", Role::Buyer)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let forged = pb::ListClaimsRequest {
        page: Some(PageRequest {
            page_size: 4,
            page_token: "bm90IGEgdG9rZW4".into(),
        }),
        ..Default::default()
    };
    let refused = d.list(forged, "ops-1", Role::Arbiter).await.unwrap_err();
    assert!(refused.message().contains("page.page_token"), "{refused:?}");
}
