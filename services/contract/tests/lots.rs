//! Release per milestone, the contract against fake peers (supplier-registry
//! and escrow served in-process by `ta_workflow::testing::FakePeer`), in the
//! style of `money_effects.rs`: terms that tie milestones to lots refused at
//! drafting when the lots are not 1..N; shipments recorded as lots, lot N
//! the final one; a lot's acceptance (explicit, or by its timer) writing one
//! ReleaseToSupplier per milestone with a key derived from the contract and
//! the lot, exactly once; the final acceptance releasing what remains; a
//! claim waiting while a lot's release is on its way; a refused lot release
//! in the operators' queue.

use std::{sync::Arc, time::Duration};

use contract::{
    app::{FEED, Flows, Settings, reactions::EscrowEvents},
    storage::{MIGRATOR as CONTRACT_MIGRATOR, schema},
};
use sqlx::PgPool;
use ta_proto::{
    common::ClaimReason,
    contract::{self as pb, contract_service_client::ContractServiceClient},
    escrow as escrow_pb,
};
use ta_runtime::auth::Role;
use ta_testkit::{RunningService, authorized, from_service};
use ta_workflow::{
    consumer::EventHandler, feed::Feed, outbox::Outbox, testing::FakePeer, timers::Timers,
};
use tonic::{Code, Status as RpcStatus, transport::Channel};
use uuid::Uuid;

mod support;

use support::{BUYER, OWNER, Peers, QUICK_WORKFLOW, TempDir, WAIT, at, eventually, pb_usd, serve};

static MIGRATOR: &sqlx::migrate::Migrator = &CONTRACT_MIGRATOR;

/// 40 % with lot 1.
const FIRST: i64 = 120_000;
const SECOND: i64 = 180_000;

/// 1,000 mugs at 3.00 USD in two lots: milestone `first` (40 %) with lot
/// `first_lot`, `second` (60 %) with lot `second_lot`.
fn terms(first_lot: u32, second_lot: u32) -> pb::ContractTerms {
    pb::ContractTerms {
        title: "Stoneware mugs in two lots".into(),
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
                    milestone_id: "first".into(),
                    share_basis_points: 4_000,
                    trigger: pb::PaymentTrigger::AfterSigning.into(),
                    due_days: 1,
                    amount: None,
                    lot: first_lot,
                },
                pb::PaymentMilestone {
                    milestone_id: "second".into(),
                    share_basis_points: 6_000,
                    trigger: pb::PaymentTrigger::AfterSigning.into(),
                    due_days: 2,
                    amount: None,
                    lot: second_lot,
                },
            ],
            pay_later: None,
        }),
        inspection_period_days: 1,
        claim_window_days: 1,
        protection: pb::Protection::TradeAssurance.into(),
        ..Default::default()
    }
}

struct Harness {
    _server: RunningService,
    client: ContractServiceClient<Channel>,
    escrow: FakePeer,
    _registry: FakePeer,
    supplier_id: Uuid,
    pool: PgPool,
    _store: TempDir,
}

/// The contract service with the fake peers of `support`; one day of the
/// terms lasts `term_day`.
async fn start(pool: &PgPool, term_day: &str) -> Harness {
    let peers = Peers::start().await;
    let mut settings = QUICK_WORKFLOW.to_vec();
    settings.extend([
        "--term-day",
        term_day,
        "--workflow-outbox-backoff-cap",
        "100ms",
        "--workflow-outbox-max-attempts",
        "10000",
    ]);
    let (server, store) = serve(pool, &peers, &settings).await;
    Harness {
        client: ContractServiceClient::new(server.channel.clone()),
        _server: server,
        escrow: peers.escrow,
        _registry: peers.registry,
        supplier_id: Uuid::now_v7(),
        pool: pool.clone(),
        _store: store,
    }
}

/// Escrow's feed event for the contract, applied as the consumer applies it.
async fn escrow_paid(pool: &PgPool, sequence: u64, contract: &pb::Contract, milestone: &str) {
    let handler = EscrowEvents {
        flows: Arc::new(Flows {
            feed: Feed::new(schema(), FEED),
            timers: Timers::new(schema()),
            outbox: Outbox::new(schema()),
            settings: Settings {
                day: time::Duration::DAY,
                claim_confirmation: time::Duration::minutes(10),
            },
        }),
    };
    let amount = if milestone == "first" { FIRST } else { SECOND };
    let response = escrow_pb::StreamEscrowEventsResponse {
        event: Some(escrow_pb::EscrowEvent {
            r#type: escrow_pb::EscrowEventType::PaymentSucceeded.into(),
            escrow_account_id: contract.escrow_account_id.clone(),
            contract_id: contract.contract_id.clone(),
            amount: pb_usd(amount),
            milestone_id: milestone.into(),
            ..Default::default()
        }),
        traceparent: String::new(),
    };
    let mut tx = pool.begin().await.expect("tx");
    handler
        .apply(&mut tx, sequence, &response)
        .await
        .expect("payment applied");
    tx.commit().await.expect("commit");
}

/// The fields an INVALID_ARGUMENT names, as its message lists them
/// (`field: description; ...`).
fn field_of(status: &RpcStatus) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let listed = status.message();
    listed
        .strip_prefix("invalid request: ")
        .unwrap_or(listed)
        .split("; ")
        .filter_map(|violation| violation.split_once(": ").map(|(f, _)| f.to_owned()))
        .collect()
}

/// The reason code of a refusal (google.rpc.PreconditionFailure's type).
fn refusal_reason(status: &RpcStatus) -> Option<String> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcDetails {
        #[prost(message, repeated, tag = "3")]
        details: Vec<prost_types::Any>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Violation {
        #[prost(string, tag = "1")]
        r#type: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct PreconditionFailure {
        #[prost(message, repeated, tag = "1")]
        violations: Vec<Violation>,
    }
    use prost::Message as _;
    let details = RpcDetails::decode(status.details()).ok()?;
    let any = details
        .details
        .iter()
        .find(|a| a.type_url.ends_with("google.rpc.PreconditionFailure"))?;
    let failure = PreconditionFailure::decode(any.value.as_slice()).ok()?;
    failure.violations.into_iter().next().map(|v| v.r#type)
}

impl Harness {
    async fn contract(&mut self, id: &str) -> pb::Contract {
        support::contract(&mut self.client, id).await
    }

    async fn wait_for(
        &mut self,
        id: &str,
        what: &str,
        check: impl Fn(&pb::Contract) -> bool,
    ) -> pb::Contract {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let contract = self.contract(id).await;
            if check(&contract) {
                return contract;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}: {contract:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn timeline(&mut self, id: &str) -> Vec<(String, String)> {
        support::timeline(&mut self.client, id).await
    }

    async fn draft(&mut self, terms: pb::ContractTerms) -> Result<pb::Contract, RpcStatus> {
        self.client
            .create_contract_draft(authorized(
                pb::CreateContractDraftRequest {
                    idempotency_key: format!("draft-{}", Uuid::now_v7()),
                    supplier_id: self.supplier_id.to_string(),
                    buyer_principal_id: BUYER.into(),
                    terms: Some(terms),
                    ..Default::default()
                },
                BUYER,
                Role::Buyer,
            ))
            .await
            .map(|r| r.into_inner().contract.expect("contract"))
    }

    /// A two-lot contract signed, activated and funded: FUNDED.
    async fn funded(&mut self) -> pb::Contract {
        let created = self.draft(terms(1, 2)).await.expect("draft");
        let id = created.contract_id.clone();
        for (who, role) in [(OWNER, Role::Supplier), (BUYER, Role::Buyer)] {
            self.client
                .sign_contract(authorized(
                    pb::SignContractRequest {
                        idempotency_key: format!("sign-{who}-{id}"),
                        contract_id: id.clone(),
                        version: 1,
                    },
                    who,
                    role,
                ))
                .await
                .expect("sign");
        }
        let active = self
            .wait_for(&id, "awaiting payment", |c| {
                c.status() == pb::ContractStatus::AwaitingPayment
            })
            .await;
        let pool = self.pool.clone();
        escrow_paid(&pool, 1, &active, "first").await;
        escrow_paid(&pool, 2, &active, "second").await;
        self.wait_for(&id, "funded", |c| c.status() == pb::ContractStatus::Funded)
            .await
    }

    async fn ship(
        &mut self,
        id: &str,
        key: &str,
        lot: u32,
        r#final: bool,
    ) -> Result<pb::Contract, RpcStatus> {
        self.client
            .record_shipment(authorized(
                pb::RecordShipmentRequest {
                    idempotency_key: key.into(),
                    contract_id: id.into(),
                    carrier: "Maersk".into(),
                    tracking_number: format!("MAEU-{key}"),
                    shipped_at: None,
                    r#final,
                    lot,
                },
                OWNER,
                Role::Supplier,
            ))
            .await
            .map(|r| r.into_inner().contract.expect("contract"))
    }

    async fn receive(&mut self, id: &str, key: &str, lot: u32) -> Result<pb::Contract, RpcStatus> {
        self.client
            .confirm_receipt(authorized(
                pb::ConfirmReceiptRequest {
                    idempotency_key: key.into(),
                    contract_id: id.into(),
                    received_at: None,
                    lot,
                },
                BUYER,
                Role::Buyer,
            ))
            .await
            .map(|r| r.into_inner().contract.expect("contract"))
    }

    async fn accept(&mut self, id: &str, key: &str, lot: u32) -> Result<pb::Contract, RpcStatus> {
        self.client
            .accept_goods(authorized(
                pb::AcceptGoodsRequest {
                    idempotency_key: key.into(),
                    contract_id: id.into(),
                    note: "lot looks right".into(),
                    lot,
                },
                BUYER,
                Role::Buyer,
            ))
            .await
            .map(|r| r.into_inner().contract.expect("contract"))
    }

    fn releases(&self) -> Vec<escrow_pb::ReleaseToSupplierRequest> {
        self.escrow
            .requests::<escrow_pb::ReleaseToSupplierRequest>("ReleaseToSupplier")
    }

    async fn record_claim(&mut self, id: &str, claim: &str) -> Result<pb::Contract, RpcStatus> {
        self.client
            .record_claim_opened(from_service(
                pb::RecordClaimOpenedRequest {
                    idempotency_key: format!("claim-{claim}"),
                    contract_id: id.into(),
                    claim_id: claim.into(),
                    reason: ClaimReason::Damage.into(),
                },
                "dispute",
                "contract",
            ))
            .await
            .map(|r| r.into_inner().contract.expect("contract"))
    }
}

fn milestone_of(release: &escrow_pb::ReleaseToSupplierRequest) -> Option<&str> {
    match release.purpose.as_ref()?.purpose.as_ref()? {
        escrow_pb::purpose::Purpose::MilestoneId(m) => Some(m),
        _ => None,
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn lots_that_are_not_one_to_n_are_refused_at_drafting_naming_the_field(pool: PgPool) {
    let mut h = start(&pool, "1d").await;
    let gap = h.draft(terms(1, 3)).await.expect_err("lot 2 missing");
    assert_eq!(gap.code(), Code::InvalidArgument);
    assert_eq!(field_of(&gap), ["terms.payment_terms.milestones"]);
    assert!(gap.message().contains("without a gap"), "{}", gap.message());
    let far = h.draft(terms(1, 11)).await.expect_err("beyond 10 lots");
    assert_eq!(field_of(&far), ["terms.payment_terms.milestones[1].lot"]);
    let no_first = h.draft(terms(0, 2)).await.expect_err("lot 1 missing");
    assert_eq!(field_of(&no_first), ["terms.payment_terms.milestones"]);
    let stored = h.draft(terms(1, 2)).await.expect("1..2 is fine");
    assert_eq!(stored.status(), pb::ContractStatus::Draft);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_first_lots_acceptance_releases_its_milestone_once_and_the_final_what_remains(
    pool: PgPool,
) {
    let mut h = start(&pool, "1d").await;
    let funded = h.funded().await;
    let id = funded.contract_id.clone();

    // Lot 1 is a part shipment, lot 2 the final one.
    let wrong = h
        .ship(&id, "ship-1-final", 0, true)
        .await
        .expect_err("lot 1 not final");
    assert_eq!(wrong.code(), Code::InvalidArgument);
    assert_eq!(field_of(&wrong), ["final"]);
    let shipped = h
        .ship(&id, "ship-1", 1, false)
        .await
        .expect("lot 1 shipped");
    assert_eq!(shipped.status(), pb::ContractStatus::Funded);
    assert_eq!(shipped.shipments.len(), 1);
    assert_eq!(shipped.shipments[0].lot, 1);
    let twice = h
        .ship(&id, "ship-1-again", 1, false)
        .await
        .expect_err("lot 1 twice");
    assert_eq!(twice.code(), Code::FailedPrecondition);

    // Nothing to accept beyond the terms' lots, nor a lot not shipped.
    let beyond = h.accept(&id, "accept-3", 3).await.expect_err("no lot 3");
    assert_eq!(field_of(&beyond), ["lot"]);

    let received = h
        .receive(&id, "receive-1", 1)
        .await
        .expect("lot 1 received");
    assert!(received.shipments[0].received_at.is_some());
    assert!(received.shipments[0].acceptance_due_at.is_some());
    assert!(received.received_at_is_unset_for_the_contract());

    let accepted = h.accept(&id, "accept-1", 1).await.expect("lot 1 accepted");
    assert_eq!(
        accepted.status(),
        pb::ContractStatus::Funded,
        "the order goes on"
    );
    let lot = &accepted.shipments[0];
    assert_eq!(lot.acceptance(), pb::AcceptanceKind::Explicit);
    assert_eq!(lot.released_milestone_ids, ["first"]);
    assert_eq!(lot.released, pb_usd(FIRST));
    // The same request again replays; another key is refused.
    let replay = h.accept(&id, "accept-1", 1).await.expect("replayed");
    assert_eq!(replay.shipments[0].accepted_at, lot.accepted_at);
    let again = h
        .accept(&id, "accept-1-again", 1)
        .await
        .expect_err("accepted already");
    assert_eq!(again.code(), Code::FailedPrecondition);

    let released = h
        .wait_for(&id, "escrow answered lot 1's release", |c| {
            !c.shipments[0].release_pending
        })
        .await;
    assert_eq!(released.status(), pb::ContractStatus::Funded);
    let releases = h.releases();
    assert_eq!(releases.len(), 1, "exactly one release: {releases:?}");
    assert_eq!(milestone_of(&releases[0]), Some("first"));
    assert_eq!(releases[0].amount, pb_usd(FIRST));
    assert_eq!(
        releases[0].idempotency_key,
        format!("contract:{id}:release-lot-1:first")
    );
    let timeline = h.timeline(&id).await;
    let (_, detail) = timeline
        .iter()
        .find(|(action, _)| action == "lot.accepted")
        .expect("the lot's acceptance is on the timeline");
    assert!(detail.contains("1,200.00 USD released"), "{detail}");
    assert!(detail.contains("1,800.00 USD stays held"), "{detail}");
    assert!(
        timeline
            .iter()
            .any(|(action, detail)| action == "escrow.lot_released"
                && detail.contains("milestone first")),
        "{timeline:?}"
    );

    // An amendment keeps what lot 1 released: a higher price would change
    // the released milestone's amount.
    let mut dearer = terms(1, 2);
    dearer.line_items[0].unit_price = pb_usd(400);
    let amended = h
        .client
        .propose_amendment(authorized(
            pb::ProposeAmendmentRequest {
                idempotency_key: "amend-dearer".into(),
                contract_id: id.clone(),
                base_version: 1,
                terms: Some(dearer),
                change_note: "4.00 USD a mug".into(),
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect_err("lot 1's milestone is released");
    assert_eq!(field_of(&amended), ["terms.payment_terms.milestones"]);
    assert!(
        amended.message().contains("milestone first"),
        "{}",
        amended.message()
    );

    // Lot 2 is the final shipment: shipped as a part it is refused.
    let part = h
        .ship(&id, "ship-2-part", 0, false)
        .await
        .expect_err("lot 2 is final");
    assert_eq!(field_of(&part), ["final"]);
    let last = h.ship(&id, "ship-2", 2, true).await.expect("lot 2 shipped");
    assert_eq!(last.status(), pb::ContractStatus::Shipped);
    h.receive(&id, "receive-2", 0).await.expect("received");
    let done = h.accept(&id, "accept-all", 0).await.expect("accepted");
    assert_eq!(done.status(), pb::ContractStatus::Completed);
    assert!(done.shipments.iter().all(|s| s.accepted_at.is_some()));
    let escrow = &h.escrow;
    eventually("the final release", || async {
        escrow
            .requests::<escrow_pb::ReleaseToSupplierRequest>("ReleaseToSupplier")
            .len()
            == 2
    })
    .await;
    let last_release = &h.releases()[1];
    assert!(
        matches!(
            last_release
                .purpose
                .as_ref()
                .and_then(|p| p.purpose.as_ref()),
            Some(escrow_pb::purpose::Purpose::Acceptance(true))
        ),
        "the final acceptance releases whatever is still held: {last_release:?}"
    );
    assert_eq!(last_release.amount, None);
    let timeline = h.timeline(&id).await;
    let (_, detail) = timeline
        .iter()
        .find(|(action, _)| action == "goods.accepted")
        .expect("accepted");
    assert!(
        detail.contains("1,800.00 USD released to the supplier (1,200.00 USD released earlier"),
        "{detail}"
    );
}

trait ContractFacts {
    fn received_at_is_unset_for_the_contract(&self) -> bool;
}

impl ContractFacts for pb::Contract {
    /// A lot's receipt is not the contract's: its receipt milestone stays open.
    fn received_at_is_unset_for_the_contract(&self) -> bool {
        self.milestones
            .iter()
            .filter(|m| m.kind() == pb::MilestoneKind::Receipt)
            .all(|m| m.reached_at.is_none())
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_lot_received_and_left_is_accepted_by_its_timer_releasing_its_milestone(pool: PgPool) {
    // One day of the terms lasts a second: the lot's inspection period and
    // claim window (a day each) lapse a second after its receipt.
    let mut h = start(&pool, "1s").await;
    let funded = h.funded().await;
    let id = funded.contract_id.clone();
    h.ship(&id, "ship-1", 0, false)
        .await
        .expect("lot 1 shipped");
    h.receive(&id, "receive-1", 1)
        .await
        .expect("lot 1 received");
    let accepted = h
        .wait_for(&id, "lot 1 accepted by its timer", |c| {
            c.shipments[0].accepted_at.is_some()
        })
        .await;
    assert_eq!(
        accepted.shipments[0].acceptance(),
        pb::AcceptanceKind::Automatic
    );
    assert_eq!(accepted.status(), pb::ContractStatus::Funded);
    let escrow = &h.escrow;
    eventually("lot 1's release", || async {
        !escrow
            .requests::<escrow_pb::ReleaseToSupplierRequest>("ReleaseToSupplier")
            .is_empty()
    })
    .await;
    let releases = h.releases();
    assert_eq!(releases.len(), 1);
    assert_eq!(milestone_of(&releases[0]), Some("first"));
    assert!(
        h.timeline(&id)
            .await
            .iter()
            .any(|(action, detail)| action == "lot.accepted" && detail.contains("automatically"))
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_claim_waits_while_a_lots_release_is_on_its_way_and_a_refused_release_is_escalated(
    pool: PgPool,
) {
    let mut h = start(&pool, "1d").await;
    let funded = h.funded().await;
    let id = funded.contract_id.clone();
    h.ship(&id, "ship-1", 0, false).await.expect("lot 1");
    h.ship(&id, "ship-2", 0, true).await.expect("lot 2");
    h.receive(&id, "receive-2", 0).await.expect("received");
    // Escrow is down: lot 1's release stays on its way.
    h.escrow.answer(
        "ReleaseToSupplier",
        |_: escrow_pb::ReleaseToSupplierRequest| {
            Err::<escrow_pb::ReleaseToSupplierResponse, _>(RpcStatus::unavailable("escrow down"))
        },
    );
    let accepted = h.accept(&id, "accept-1", 1).await.expect("lot 1 accepted");
    assert_eq!(accepted.status(), pb::ContractStatus::Delivered);
    assert!(accepted.shipments[0].release_pending);
    let refused = h.record_claim(&id, "claim-1").await.expect_err("waits");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("escrow is releasing"),
        "{}",
        refused.message()
    );
    assert_eq!(
        refusal_reason(&refused).as_deref(),
        Some("LOT_RELEASE_PENDING")
    );
    assert_eq!(
        h.contract(&id).await.status(),
        pb::ContractStatus::Delivered
    );

    // Escrow refuses it (say the money is frozen elsewhere): an operator
    // item, and no longer pending, so the claim opens on what is held.
    h.escrow.answer(
        "ReleaseToSupplier",
        |_: escrow_pb::ReleaseToSupplierRequest| {
            Err::<escrow_pb::ReleaseToSupplierResponse, _>(RpcStatus::failed_precondition(
                "cannot release: the account holds 0.00 USD",
            ))
        },
    );
    h.wait_for(&id, "the release answered", |c| {
        !c.shipments[0].release_pending
    })
    .await;
    let timeline = h.timeline(&id).await;
    assert!(
        timeline
            .iter()
            .any(|(action, detail)| action == "escrow.lot_release_refused"
                && detail.contains("milestone first")),
        "{timeline:?}"
    );
    let parked: String = sqlx::query_scalar(
        "SELECT status FROM contract.workflow_outbox WHERE method LIKE '%ReleaseToSupplier'",
    )
    .fetch_one(&pool)
    .await
    .expect("the release row");
    assert_eq!(parked, "parked", "escalated for an operator");
    let claimed = h
        .record_claim(&id, "claim-2")
        .await
        .expect("claim recorded");
    assert_eq!(claimed.status(), pb::ContractStatus::InDispute);
    // A lot cannot be accepted while the claim is open.
    let blocked = h.accept(&id, "accept-2", 0).await.expect_err("in dispute");
    assert_eq!(blocked.code(), Code::FailedPrecondition);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_cancellation_waits_for_a_lots_release_and_then_refunds_only_what_is_held(pool: PgPool) {
    let mut h = start(&pool, "1d").await;
    let funded = h.funded().await;
    let id = funded.contract_id.clone();
    h.ship(&id, "ship-1", 0, false).await.expect("lot 1");
    h.escrow.answer(
        "ReleaseToSupplier",
        |_: escrow_pb::ReleaseToSupplierRequest| {
            Err::<escrow_pb::ReleaseToSupplierResponse, _>(RpcStatus::unavailable("escrow down"))
        },
    );
    h.accept(&id, "accept-1", 1).await.expect("lot 1 accepted");
    let cancel = |key: &'static str| pb::CancelContractRequest {
        idempotency_key: key.into(),
        contract_id: id.clone(),
        reason: "the factory cannot make lot 2".into(),
    };
    let waits = h
        .client
        .cancel_contract(authorized(cancel("cancel-1"), OWNER, Role::Supplier))
        .await
        .expect_err("lot 1's release first");
    assert_eq!(waits.code(), Code::FailedPrecondition);
    assert!(
        waits.message().contains("escrow is releasing"),
        "{}",
        waits.message()
    );
    assert!(
        h.escrow
            .requests::<escrow_pb::CloseEscrowAccountRequest>("CloseEscrowAccount")
            .is_empty(),
        "nothing refunds lot 1's money before its release"
    );
    h.escrow.answer("ReleaseToSupplier", |(): ()| Ok(()));
    h.wait_for(&id, "lot 1 released", |c| !c.shipments[0].release_pending)
        .await;
    let cancelled = h
        .client
        .cancel_contract(authorized(cancel("cancel-2"), OWNER, Role::Supplier))
        .await
        .expect("cancelled")
        .into_inner()
        .contract
        .expect("contract");
    assert_eq!(cancelled.status(), pb::ContractStatus::Cancelled);
    let timeline = h.timeline(&id).await;
    let (_, detail) = timeline
        .iter()
        .find(|(action, _)| action == "contract.cancelled")
        .expect("cancelled");
    assert!(
        detail.contains("1,800.00 USD refunded"),
        "lot 1's 1,200.00 USD stays the supplier's: {detail}"
    );
}
