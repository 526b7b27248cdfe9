//! The contract against fake peers (supplier-registry and escrow served
//! in-process by `ta_workflow::testing::FakePeer`) and, for escrow's feed,
//! its reactions applied as the consumer applies them: what happens when
//! escrow refuses a call that moves money, when its hold deadline passes,
//! when it refuses an amended schedule, when stored terms no longer pass
//! today's request rules, and when a call is retried after it succeeded;
//! and the answers at the edges of drafting (deadlines beyond the horizon, a
//! currency the supplier's Trade Assurance limit is not in).

use std::sync::Arc;

use contract::{
    app::{Flows, reactions::EscrowEvents},
    domain::{
        negotiation::{Negotiation, Protection},
        status::Status,
    },
    storage::{
        contracts::{ContractRecord, Progress},
        versions::VersionRecord,
    },
};

/// The workflow pieces these tests build the contract's `Flows` from.
mod flows {
    pub use contract::{
        app::{FEED, Settings},
        storage::schema,
    };
}

/// The storage functions these tests call, from their aggregates' modules.
mod storage {
    pub use contract::storage::{
        MIGRATOR,
        contracts::{get_contract, insert_contract, save_contract},
        payments::{Payment, replace_payments},
        timeline::list_timeline as timeline,
    };
}
use sqlx::PgPool;
use ta_proto::{
    common::Money as PbMoney,
    contract::{self as pb, contract_service_client::ContractServiceClient},
    escrow as escrow_pb,
    ops::{self as ops, workflow_admin_service_client::WorkflowAdminServiceClient},
    supplier as supplier_pb,
};
use ta_runtime::{
    auth::Role,
    money::{Currency, Money},
    timestamps,
};
use ta_testkit::{RunningService, authorized, from_service, operator};
use ta_workflow::{
    Handled, consumer::EventHandler, feed::Feed, outbox::Outbox, testing::FakePeer, timers::Timers,
};
use time::OffsetDateTime;
use tonic::{Code, Status as RpcStatus, transport::Channel};
use uuid::Uuid;

mod support;

use support::{BUYER, OWNER, Peers, QUICK_WORKFLOW, TempDir, at, eventually, pb_usd, serve};

static MIGRATOR: &sqlx::migrate::Migrator = &storage::MIGRATOR;

const OPERATOR: &str = "ops-1";

fn usd(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::parse("USD").unwrap())
}

/// 1,000 mugs at 3.00 USD: 30 % deposit after signing, the balance before
/// shipment; no inspection.
fn terms(unit_price_minor: i64) -> pb::ContractTerms {
    pb::ContractTerms {
        title: "Stoneware mugs".into(),
        line_items: vec![pb::LineItem {
            sku: "MUG-350".into(),
            description: "350 ml stoneware mug".into(),
            quantity: 1_000,
            unit: "pcs".into(),
            unit_price: pb_usd(unit_price_minor),
            line_total: None,
        }],
        specifications: Vec::new(),
        quality_criteria: Vec::new(),
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
                    amount: None,
                    lot: 0,
                },
                pb::PaymentMilestone {
                    milestone_id: "balance".into(),
                    share_basis_points: 7_000,
                    trigger: pb::PaymentTrigger::BeforeShipmentDeadline.into(),
                    due_days: 2,
                    amount: None,
                    lot: 0,
                },
            ],
            pay_later: None,
        }),
        inspection_period_days: 7,
        claim_window_days: 0,
        protection: pb::Protection::TradeAssurance.into(),
    }
}

// ---- the service against fake peers ------------------------------------------

struct Harness {
    _server: RunningService,
    client: ContractServiceClient<Channel>,
    admin: WorkflowAdminServiceClient<Channel>,
    registry: FakePeer,
    escrow: FakePeer,
    supplier_id: Uuid,
    _store: TempDir,
}

/// The contract service with the fake peers of `support`.
async fn start(pool: &PgPool) -> Harness {
    let peers = Peers::start().await;
    let mut settings = QUICK_WORKFLOW.to_vec();
    settings.extend(["--workflow-outbox-backoff-cap", "200ms"]);
    let (server, store) = serve(pool, &peers, &settings).await;
    Harness {
        client: ContractServiceClient::new(server.channel.clone()),
        admin: WorkflowAdminServiceClient::new(server.channel.clone()),
        _server: server,
        registry: peers.registry,
        escrow: peers.escrow,
        supplier_id: Uuid::now_v7(),
        _store: store,
    }
}

impl Harness {
    async fn contract(&mut self, id: &str) -> pb::Contract {
        support::contract(&mut self.client, id).await
    }

    async fn wait_status(&mut self, id: &str, status: pb::ContractStatus) -> pb::Contract {
        let client = self.client.clone();
        eventually(&format!("contract {status:?}"), || {
            let mut client = client.clone();
            async move { support::contract(&mut client, id).await.status() == status }
        })
        .await;
        self.contract(id).await
    }

    async fn timeline(&mut self, id: &str) -> Vec<(String, String)> {
        support::timeline(&mut self.client, id).await
    }

    fn create_request(&self, key: &str) -> pb::CreateContractDraftRequest {
        pb::CreateContractDraftRequest {
            idempotency_key: key.into(),
            supplier_id: self.supplier_id.to_string(),
            buyer_principal_id: BUYER.into(),
            terms: Some(terms(300)),
            ..Default::default()
        }
    }

    /// A draft both parties signed (its activation under way); its id.
    async fn signed_by_both(&mut self) -> String {
        let created = self
            .client
            .create_contract_draft(authorized(
                self.create_request(&format!("draft-{}", Uuid::now_v7())),
                BUYER,
                Role::Buyer,
            ))
            .await
            .expect("draft")
            .into_inner()
            .contract
            .expect("contract");
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
        id
    }

    /// A contract both signed, its cover reserved and its escrow account
    /// opened: AWAITING_PAYMENT. Returns it.
    async fn active_contract(&mut self) -> pb::Contract {
        let id = self.signed_by_both().await;
        self.wait_status(&id, pb::ContractStatus::AwaitingPayment)
            .await
    }

    async fn parked(&mut self) -> Vec<ops::OutboxRow> {
        operator::parked(&mut self.admin, OPERATOR).await
    }
}

fn flows_for_tests() -> Flows {
    let schema = flows::schema();
    Flows {
        feed: Feed::new(schema, flows::FEED),
        timers: Timers::new(schema),
        outbox: Outbox::new(schema),
        settings: flows::Settings {
            day: time::Duration::DAY,
            claim_confirmation: time::Duration::minutes(10),
        },
    }
}

/// Escrow's feed event for the contract, applied as the consumer applies it.
async fn escrow_event(
    pool: &PgPool,
    sequence: u64,
    event: escrow_pb::EscrowEvent,
) -> Result<Handled, ta_runtime::ServiceError> {
    let handler = EscrowEvents {
        flows: Arc::new(flows_for_tests()),
    };
    let mut tx = pool.begin().await.expect("tx");
    let response = escrow_pb::StreamEscrowEventsResponse {
        event: Some(event),
        traceparent: String::new(),
    };
    let handled = handler.apply(&mut tx, sequence, &response).await?;
    tx.commit().await.expect("commit");
    Ok(handled)
}

fn payment(contract: &pb::Contract, milestone: &str, amount: i64) -> escrow_pb::EscrowEvent {
    escrow_pb::EscrowEvent {
        r#type: escrow_pb::EscrowEventType::PaymentSucceeded.into(),
        escrow_account_id: contract.escrow_account_id.clone(),
        contract_id: contract.contract_id.clone(),
        amount: pb_usd(amount),
        milestone_id: milestone.into(),
        ..Default::default()
    }
}

// ---- finding 13: retries after the fact ---------------------------------------

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_draft_retried_after_it_succeeded_replays_even_when_the_registry_is_gone(pool: PgPool) {
    let mut h = start(&pool).await;
    let request = h.create_request("draft-once");
    let first = h
        .client
        .create_contract_draft(authorized(request.clone(), OWNER, Role::Supplier))
        .await
        .expect("created")
        .into_inner();
    // supplier-registry stops answering (or the supplier changes hands).
    h.registry
        .answer("GetSupplier", |_: supplier_pb::GetSupplierRequest| {
            Err::<supplier_pb::GetSupplierResponse, _>(RpcStatus::unavailable("registry down"))
        });
    let retried = h
        .client
        .create_contract_draft(authorized(request.clone(), OWNER, Role::Supplier))
        .await
        .expect("a retry after success replays the stored answer")
        .into_inner();
    assert_eq!(retried, first);
    let lookups = h
        .registry
        .requests::<supplier_pb::GetSupplierRequest>("GetSupplier");
    assert_eq!(lookups.len(), 1, "the retry read nothing");
    // A new key still needs the registry.
    let fresh = h
        .client
        .create_contract_draft(authorized(
            h.create_request("draft-new"),
            OWNER,
            Role::Supplier,
        ))
        .await
        .expect_err("registry down");
    assert_eq!(fresh.code(), Code::Unavailable);
    // The same key with another body is still a client bug.
    let mut other = request;
    other.terms = Some(terms(301));
    let reused = h
        .client
        .create_contract_draft(authorized(other, OWNER, Role::Supplier))
        .await
        .expect_err("key reused");
    assert_eq!(reused.code(), Code::InvalidArgument);
}

// ---- finding 12: a refused AmendEscrowSchedule ---------------------------------

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_amended_schedule_escrow_refuses_moves_the_cover_back_and_voids_the_amendment(
    pool: PgPool,
) {
    let mut h = start(&pool).await;
    h.escrow.answer(
        "AmendEscrowSchedule",
        |_: escrow_pb::AmendEscrowScheduleRequest| {
            Err::<escrow_pb::AmendEscrowScheduleResponse, _>(RpcStatus::failed_precondition(
                "a bank transfer for the deposit is pending",
            ))
        },
    );
    let active = h.active_contract().await;
    let id = active.contract_id.clone();
    h.client
        .propose_amendment(authorized(
            pb::ProposeAmendmentRequest {
                idempotency_key: "amend-2".into(),
                contract_id: id.clone(),
                base_version: 1,
                terms: Some(terms(400)),
                change_note: "higher price".into(),
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect("proposed");
    for (who, role) in [(OWNER, Role::Supplier), (BUYER, Role::Buyer)] {
        h.client
            .sign_amendment(authorized(
                pb::SignAmendmentRequest {
                    idempotency_key: format!("sign-amend-{who}"),
                    contract_id: id.clone(),
                    version: 2,
                },
                who,
                role,
            ))
            .await
            .expect("signed");
    }
    let registry = &h.registry;
    eventually("the cover moved back", || async {
        registry
            .requests::<supplier_pb::AdjustCoverRequest>("AdjustCover")
            .len()
            == 2
    })
    .await;
    let adjustments: Vec<(u32, i64)> = h
        .registry
        .requests::<supplier_pb::AdjustCoverRequest>("AdjustCover")
        .into_iter()
        .map(|a| (a.contract_version, a.amount.map_or(0, |m| m.amount_minor)))
        .collect();
    assert_eq!(
        adjustments,
        [(2, 400_000), (3, 300_000)],
        "moved to the amendment's total, then back under a newer version"
    );
    let after = h.contract(&id).await;
    assert_eq!(
        (
            after.signed_version,
            after.latest_version,
            after.pending_amendment_version
        ),
        (1, 3, 0),
        "version 1 in force, the amendment void"
    );
    assert_eq!(after.total, pb_usd(300_000));
    assert_eq!(after.status(), pb::ContractStatus::AwaitingPayment);
    let timeline = h.timeline(&id).await;
    let (_, detail) = timeline
        .iter()
        .find(|(action, _)| action == "amendment.refused_by_escrow")
        .expect("the compensation is on the timeline");
    assert!(
        detail.contains("a bank transfer for the deposit is pending"),
        "{detail}"
    );
    assert!(detail.contains("3,000.00 USD"), "{detail}");
    // The void amendment cannot be signed again; a new proposal can be.
    let again = h
        .client
        .sign_amendment(authorized(
            pb::SignAmendmentRequest {
                idempotency_key: "sign-void".into(),
                contract_id: id.clone(),
                version: 2,
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect_err("void");
    assert_eq!(again.code(), Code::FailedPrecondition);
}

// ---- finding 10: refused money effects and the hold deadline --------------------

/// A funded, shipped and received contract (funding applied from escrow's feed).
async fn received_contract(h: &mut Harness, pool: &PgPool) -> pb::Contract {
    let active = h.active_contract().await;
    let id = active.contract_id.clone();
    escrow_event(pool, 1, payment(&active, "deposit", 90_000))
        .await
        .expect("deposit");
    escrow_event(pool, 2, payment(&active, "balance", 210_000))
        .await
        .expect("balance");
    h.wait_status(&id, pb::ContractStatus::Funded).await;
    h.client
        .record_shipment(authorized(
            pb::RecordShipmentRequest {
                idempotency_key: format!("ship-{id}"),
                contract_id: id.clone(),
                carrier: "Maersk".into(),
                tracking_number: "MAEU1".into(),
                shipped_at: None,
                r#final: true,
                lot: 0,
            },
            OWNER,
            Role::Supplier,
        ))
        .await
        .expect("shipped");
    h.client
        .confirm_receipt(authorized(
            pb::ConfirmReceiptRequest {
                idempotency_key: format!("receipt-{id}"),
                contract_id: id.clone(),
                received_at: None,
                lot: 0,
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect("received");
    h.contract(&id).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_refused_release_or_close_goes_to_the_operators_queue_and_is_re_driven(pool: PgPool) {
    let mut h = start(&pool).await;
    h.escrow.answer(
        "ReleaseToSupplier",
        |_: escrow_pb::ReleaseToSupplierRequest| {
            Err::<escrow_pb::ReleaseToSupplierResponse, _>(RpcStatus::failed_precondition(
                "PURPOSE_ALREADY_SETTLED: purpose release:acceptance already moved money",
            ))
        },
    );
    let received = received_contract(&mut h, &pool).await;
    let id = received.contract_id.clone();
    h.client
        .accept_goods(authorized(
            pb::AcceptGoodsRequest {
                idempotency_key: "accept".into(),
                contract_id: id.clone(),
                note: String::new(),
                lot: 0,
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect("accepted");

    let mut admin = h.admin.clone();
    let parked = operator::escalated(
        &admin,
        OPERATOR,
        "the refused release parked for an operator",
    )
    .await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert!(parked[0].method.ends_with("/ReleaseToSupplier"));
    assert!(
        parked[0].last_error.contains("PURPOSE_ALREADY_SETTLED"),
        "{parked:?}"
    );
    let backlog = operator::backlog(&mut admin, OPERATOR).await;
    assert_eq!(backlog.outbox_parked, 1);
    assert!(
        h.escrow
            .requests::<escrow_pb::CloseEscrowAccountRequest>("CloseEscrowAccount")
            .is_empty(),
        "nothing closes over money still held"
    );
    assert!(
        h.timeline(&id)
            .await
            .iter()
            .any(|(action, _)| action == "escrow.release_refused")
    );

    // The operator sorts it out at escrow and re-drives: the release runs
    // again, and the close follows; escrow refuses the close this time.
    h.escrow.answer(
        "ReleaseToSupplier",
        |_: escrow_pb::ReleaseToSupplierRequest| Ok(escrow_pb::ReleaseToSupplierResponse::default()),
    );
    h.escrow.answer(
        "CloseEscrowAccount",
        |_: escrow_pb::CloseEscrowAccountRequest| {
            Err::<escrow_pb::CloseEscrowAccountResponse, _>(RpcStatus::failed_precondition(
                "cannot close: the account holds 10.00 USD",
            ))
        },
    );
    operator::redrive(&mut admin, OPERATOR, "redrive-release", parked[0].id).await;
    eventually("the refused close parked in turn", || {
        let mut admin = admin.clone();
        async move {
            let rows = operator::parked(&mut admin, OPERATOR).await;
            rows.len() == 1 && rows[0].method.ends_with("/CloseEscrowAccount")
        }
    })
    .await;
    assert_eq!(
        h.escrow
            .requests::<escrow_pb::ReleaseToSupplierRequest>("ReleaseToSupplier")
            .len(),
        2,
        "the release was called again"
    );
    assert!(
        h.timeline(&id)
            .await
            .iter()
            .any(|(action, detail)| action == "escrow.close_refused"
                && detail.contains("holds 10.00 USD"))
    );

    // Closed already (an emptying release closes it): nothing for an operator.
    h.escrow.answer(
        "CloseEscrowAccount",
        |_: escrow_pb::CloseEscrowAccountRequest| {
            Err::<escrow_pb::CloseEscrowAccountResponse, _>(RpcStatus::failed_precondition(
                "cannot close: the account is closed",
            ))
        },
    );
    let close = h.parked().await[0].id;
    operator::redrive(&mut admin, OPERATOR, "redrive-close", close).await;
    let pool = &pool;
    eventually("the close completed", || async move {
        sqlx::query_scalar::<_, String>("SELECT status FROM contract.workflow_outbox WHERE id = $1")
            .bind(close)
            .fetch_one(pool)
            .await
            .expect("row")
            == "completed"
    })
    .await;
    assert!(h.parked().await.is_empty());
    // Each re-drive is finance's act, in the contract service's audit trail.
    let entries = ta_testkit::audit_entries(h._server.channel.clone()).await;
    let redriven: Vec<_> = entries
        .iter()
        .map(|e| (e.method.rsplit('/').next().unwrap(), e.resource_id.as_str()))
        .collect();
    assert_eq!(
        redriven,
        [
            ("RedriveOutboxRow", parked[0].id.to_string().as_str()),
            ("RedriveOutboxRow", close.to_string().as_str()),
        ]
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_arbiter_cancelling_a_contract_leaves_one_audit_entry(pool: PgPool) {
    let mut h = start(&pool).await;
    let contract = h.active_contract().await;
    let cancel = |reason: &str| {
        authorized(
            pb::CancelContractRequest {
                idempotency_key: "arbiter-cancel".into(),
                contract_id: contract.contract_id.clone(),
                reason: reason.into(),
            },
            "arbiter-1",
            Role::Arbiter,
        )
    };
    let reasonless = h
        .client
        .cancel_contract(cancel(""))
        .await
        .expect_err("a reason");
    assert_eq!(reasonless.code(), tonic::Code::InvalidArgument);
    h.client
        .cancel_contract(cancel("the supplier's licence was revoked"))
        .await
        .expect("cancelled by the arbiter");
    h.client
        .cancel_contract(cancel("the supplier's licence was revoked"))
        .await
        .expect("a retry replays");

    let entries = ta_testkit::audit_entries(h._server.channel.clone()).await;
    assert_eq!(ta_testkit::audited_methods(&entries), ["CancelContract"]);
    assert_eq!(
        ta_testkit::staff_mutations(contract::CONTRACT_SERVICE),
        ["CancelContract"],
        "every staff mutation of contract is audited here"
    );
    let entry = &entries[0];
    assert_eq!(
        (entry.resource_type.as_str(), entry.resource_id.as_str()),
        ("contract", contract.contract_id.as_str())
    );
    assert_eq!(entry.reason, "the supplier's licence was revoked");
    let actor = entry.actor.as_ref().unwrap();
    assert_eq!(actor.principal_id, "arbiter-1");
    assert_eq!(actor.role, ta_proto::common::Role::Arbiter as i32);
}

// ---- finding 9: a full refund closes refunding what escrow still holds ----------

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_full_refund_has_escrow_refund_what_it_still_holds_when_it_closes(pool: PgPool) {
    let mut h = start(&pool).await;
    let received = received_contract(&mut h, &pool).await;
    let id = received.contract_id.clone();
    let claim = Uuid::now_v7().to_string();
    let dispute = |message| from_service(message, "dispute", "contract");
    h.client
        .record_claim_opened(dispute(pb::RecordClaimOpenedRequest {
            idempotency_key: "claim-opened".into(),
            contract_id: id.clone(),
            claim_id: claim.clone(),
            reason: ta_proto::common::ClaimReason::Damage.into(),
        }))
        .await
        .expect("claim recorded");
    h.client
        .confirm_claim_opened(from_service(
            pb::ConfirmClaimOpenedRequest {
                idempotency_key: "claim-confirmed".into(),
                contract_id: id.clone(),
                claim_id: claim.clone(),
            },
            "dispute",
            "contract",
        ))
        .await
        .expect("claim confirmed");
    // Dispute refunded what escrow held at the freeze; money credited after
    // it (funding goes on under a freeze) is escrow's to see, not dispute's.
    h.client
        .record_claim_closed(from_service(
            pb::RecordClaimClosedRequest {
                idempotency_key: "claim-closed".into(),
                contract_id: id.clone(),
                claim_id: claim,
                closure: pb::ClaimClosure::FullRefund.into(),
                refunded: pb_usd(300_000),
                new_shipment_deadline: None,
            },
            "dispute",
            "contract",
        ))
        .await
        .expect("claim closed");
    let escrow = &h.escrow;
    eventually("escrow asked to close", || async {
        !escrow
            .requests::<escrow_pb::CloseEscrowAccountRequest>("CloseEscrowAccount")
            .is_empty()
    })
    .await;
    let closes = h
        .escrow
        .requests::<escrow_pb::CloseEscrowAccountRequest>("CloseEscrowAccount");
    assert!(
        closes[0].refund_held,
        "escrow refunds whatever it holds when it closes: {closes:?}"
    );
    assert_eq!(h.contract(&id).await.status(), pb::ContractStatus::Refunded);
}

// ---- escrow's hold deadline, and stored terms read as stored ---------------------

/// A contract in `status` written straight to the database, with `terms`
/// stored as its signed version 1 and its escrow account `acct-<id>`.
async fn seeded(pool: &PgPool, status: Status, stored: &pb::ContractTerms) -> ContractRecord {
    ta_workflow::install(pool, flows::schema())
        .await
        .expect("workflow tables");
    let now = timestamps::now();
    let id = Uuid::now_v7();
    let mut negotiation = Negotiation::new(Protection::TradeAssurance);
    negotiation.status = status;
    negotiation.signed_version = 1;
    let contract = ContractRecord {
        contract_id: id,
        buyer_principal_id: BUYER.into(),
        supplier_id: Uuid::now_v7(),
        supplier_principal_id: OWNER.into(),
        negotiation,
        status_before_dispute: None,
        total: usd(300_000),
        escrow_account_id: Some(format!("acct-{id}")),
        open_claim_id: None,
        activation_refusal: String::new(),
        cancellation_reason: String::new(),
        progress: Progress {
            signed_at: Some(now - time::Duration::days(60)),
            ..Progress::default()
        },
        external_reference: None,
        created_at: now,
        updated_at: now,
    };
    let version = VersionRecord {
        contract_id: id,
        version: 1,
        terms: prost::Message::encode_to_vec(stored),
        total: usd(300_000),
        created_by_principal_id: BUYER.into(),
        created_by_role: "buyer".into(),
        change_note: String::new(),
        created_at: now - time::Duration::days(60),
    };
    let mut tx = pool.begin().await.unwrap();
    storage::insert_contract(&mut tx, &contract, &version)
        .await
        .unwrap();
    let mut saved = contract.clone();
    storage::save_contract(&mut tx, &mut saved, now)
        .await
        .unwrap();
    let due = now + time::Duration::days(3);
    let payments =
        [("deposit", 90_000), ("balance", 210_000)].map(|(milestone, amount)| storage::Payment {
            milestone_id: milestone.into(),
            amount_minor: amount,
            due_at: due,
            funded_at: None,
            overdue: false,
        });
    storage::replace_payments(&mut tx, id, &payments)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    saved
}

async fn reload(pool: &PgPool, id: Uuid) -> ContractRecord {
    let mut conn = pool.acquire().await.unwrap();
    storage::get_contract(&mut conn, id).await.unwrap()
}

/// The escrow calls written to the outbox for `id`'s account, by method.
async fn escrow_calls(pool: &PgPool, id: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT regexp_replace(method, '.*/', '') FROM contract.workflow_outbox
         WHERE target = 'escrow' AND idempotency_key LIKE $1 ORDER BY id",
    )
    .bind(format!("contract:{id}:%"))
    .fetch_all(pool)
    .await
    .unwrap()
}

fn deadline_passed(contract: &ContractRecord) -> escrow_pb::EscrowEvent {
    escrow_pb::EscrowEvent {
        r#type: escrow_pb::EscrowEventType::HoldDeadlinePassed.into(),
        escrow_account_id: contract.escrow_account_id.clone().unwrap_or_default(),
        contract_id: contract.contract_id.to_string(),
        amount: pb_usd(300_000),
        ..Default::default()
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn escrow_hold_deadline_passing_does_what_the_contract_state_implies(pool: PgPool) {
    let stored = terms(300);
    // Received, acceptance deadline passed (its timer lost): accepted, released.
    let mut delivered = seeded(&pool, Status::Delivered, &stored).await;
    delivered.progress.received_at = Some(timestamps::now() - time::Duration::days(40));
    delivered.progress.acceptance_due_at = Some(timestamps::now() - time::Duration::days(10));
    {
        let mut tx = pool.begin().await.unwrap();
        storage::save_contract(&mut tx, &mut delivered, timestamps::now())
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let handled = escrow_event(&pool, 1, deadline_passed(&delivered))
        .await
        .expect("applied");
    assert_eq!(handled, Handled::Done);
    let after = reload(&pool, delivered.contract_id).await;
    assert_eq!(after.negotiation.status, Status::Completed);
    assert_eq!(
        escrow_calls(&pool, delivered.contract_id).await,
        ["ReleaseToSupplier"]
    );

    // Received late, the contract's own acceptance deadline ahead: it waits.
    let mut late = seeded(&pool, Status::Delivered, &stored).await;
    late.progress.acceptance_due_at = Some(timestamps::now() + time::Duration::days(5));
    {
        let mut tx = pool.begin().await.unwrap();
        storage::save_contract(&mut tx, &mut late, timestamps::now())
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(
        escrow_event(&pool, 2, deadline_passed(&late))
            .await
            .expect("applied"),
        Handled::Done
    );
    assert_eq!(
        reload(&pool, late.contract_id).await.negotiation.status,
        Status::Delivered
    );
    assert!(escrow_calls(&pool, late.contract_id).await.is_empty());

    // Funded, never shipped: cancelled, everything held refunded.
    let unshipped = seeded(&pool, Status::Funded, &stored).await;
    escrow_event(&pool, 3, deadline_passed(&unshipped))
        .await
        .expect("applied");
    assert_eq!(
        reload(&pool, unshipped.contract_id)
            .await
            .negotiation
            .status,
        Status::Cancelled
    );
    assert_eq!(
        escrow_calls(&pool, unshipped.contract_id).await,
        ["CloseEscrowAccount"]
    );

    // Completed: the acceptance's release is spent; an operator decides.
    let completed = seeded(&pool, Status::Completed, &stored).await;
    let handled = escrow_event(&pool, 4, deadline_passed(&completed))
        .await
        .expect("applied");
    let Handled::Escalate(why) = handled else {
        panic!("an operator item: {handled:?}");
    };
    assert!(why.contains("completed"), "{why}");
    let mut conn = pool.acquire().await.unwrap();
    let timeline = storage::timeline(&mut conn, completed.contract_id, 0, 10)
        .await
        .unwrap();
    assert!(
        timeline
            .iter()
            .any(|e| e.kind == "escrow.hold_deadline_passed")
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn reactions_read_stored_terms_that_todays_request_rules_refuse(pool: PgPool) {
    // Signed when a 120-day claim window was allowed (today's maximum is 90),
    // and long before its deadlines passed.
    let mut stored = terms(300);
    stored.claim_window_days = 120;
    stored.shipment_deadline = Some(timestamps::to_proto(
        OffsetDateTime::now_utc() - time::Duration::days(3),
    ));
    stored.delivery_deadline = at(time::Duration::days(10));
    let contract = seeded(&pool, Status::AwaitingPayment, &stored).await;
    let view = pb::Contract {
        contract_id: contract.contract_id.to_string(),
        escrow_account_id: contract.escrow_account_id.clone().unwrap_or_default(),
        ..Default::default()
    };
    let handled = escrow_event(&pool, 1, payment(&view, "deposit", 90_000))
        .await
        .expect("the payment applies to the contract as signed");
    assert_eq!(handled, Handled::Done);
    assert_eq!(
        reload(&pool, contract.contract_id).await.negotiation.status,
        Status::PartiallyFunded
    );
}

// ---- clear answers at the edges ------------------------------------------------

/// The reason code (`google.rpc.PreconditionFailure` violation type) and
/// subject a FAILED_PRECONDITION answer carries.
fn precondition_reason(status: &RpcStatus) -> Option<(String, String)> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcDetails {
        #[prost(message, repeated, tag = "3")]
        details: Vec<prost_types::Any>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Violation {
        #[prost(string, tag = "1")]
        r#type: String,
        #[prost(string, tag = "2")]
        subject: String,
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
    let first = failure.violations.into_iter().next()?;
    Some((first.r#type, first.subject))
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn deadlines_beyond_the_horizon_are_refused_at_drafting_naming_the_field(pool: PgPool) {
    let mut h = start(&pool).await;
    let mut request = h.create_request("far-off");
    let mut far = terms(300);
    far.delivery_deadline = Some(timestamps::to_proto(
        time::macros::datetime!(9999-12-31 00:00 UTC),
    ));
    request.terms = Some(far);
    let refused = h
        .client
        .create_contract_draft(authorized(request, BUYER, Role::Buyer))
        .await
        .expect_err("a delivery in the year 9999");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("terms.delivery_deadline: must be within 730 days from now"),
        "{}",
        refused.message()
    );
    // Both deadlines are named; two years less a day is still accepted.
    let mut request = h.create_request("both-far");
    let mut both = terms(300);
    both.shipment_deadline = at(time::Duration::days(731));
    both.delivery_deadline = at(time::Duration::days(800));
    request.terms = Some(both);
    let refused = h
        .client
        .create_contract_draft(authorized(request, BUYER, Role::Buyer))
        .await
        .expect_err("both beyond two years");
    assert!(
        refused
            .message()
            .contains("terms.shipment_deadline: must be within 730 days from now")
            && refused
                .message()
                .contains("terms.delivery_deadline: must be within 730 days from now"),
        "{}",
        refused.message()
    );
    let mut request = h.create_request("within");
    let mut within = terms(300);
    within.shipment_deadline = at(time::Duration::days(700));
    within.delivery_deadline = at(time::Duration::days(729));
    request.terms = Some(within);
    h.client
        .create_contract_draft(authorized(request, BUYER, Role::Buyer))
        .await
        .expect("deadlines within the horizon");
}

/// The registry's supplier, owned by `OWNER`, with a TA limit in `currency`.
fn supplier_with_limit(h: &Harness, currency: &'static str) {
    h.registry
        .answer("GetSupplier", move |r: supplier_pb::GetSupplierRequest| {
            Ok(supplier_pb::GetSupplierResponse {
                supplier: Some(supplier_pb::Supplier {
                    supplier_id: r.supplier_id,
                    owner_principal_id: OWNER.into(),
                    trade_assurance_badge: true,
                    ta_limit: Some(PbMoney {
                        currency_code: currency.into(),
                        amount_minor: 10_000_000,
                    }),
                    ..Default::default()
                }),
            })
        });
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_trade_assurance_draft_outside_the_limits_currency_is_refused_with_a_reason_code(
    pool: PgPool,
) {
    let mut h = start(&pool).await;
    supplier_with_limit(&h, "EUR");
    let refused = h
        .client
        .create_contract_draft(authorized(h.create_request("usd"), BUYER, Role::Buyer))
        .await
        .expect_err("a USD order against a EUR limit");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(
        precondition_reason(&refused),
        Some((
            "CURRENCY_NOT_COVERED".to_owned(),
            format!("suppliers/{}", h.supplier_id)
        )),
        "{refused:?}"
    );
    assert!(refused.message().contains("EUR"), "{}", refused.message());
    // Unprotected, the currency is the parties' own business.
    let mut request = h.create_request("usd-unprotected");
    let mut unprotected = terms(300);
    unprotected.protection = pb::Protection::None.into();
    request.terms = Some(unprotected);
    h.client
        .create_contract_draft(authorized(request, BUYER, Role::Buyer))
        .await
        .expect("an unprotected order in another currency");
    // In the limit's currency, it is drafted.
    supplier_with_limit(&h, "USD");
    h.client
        .create_contract_draft(authorized(h.create_request("usd-2"), BUYER, Role::Buyer))
        .await
        .expect("a USD order against a USD limit");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_activation_meeting_a_limit_in_another_currency_records_the_reason_code(pool: PgPool) {
    let mut h = start(&pool).await;
    // Drafted while the supplier was not enrolled; it enrolled in EUR since.
    h.registry
        .answer("ReserveCover", |_: supplier_pb::ReserveCoverRequest| {
            Err::<(), _>(RpcStatus::from(ta_runtime::ServiceError::invalid(
                "amount.currency_code",
                "must be EUR, the currency of the TA limit",
            )))
        });
    let id = h.signed_by_both().await;
    let client = h.client.clone();
    eventually("activation refused", || {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let c = client
                .get_contract(authorized(
                    pb::GetContractRequest {
                        contract_id: id,
                        version: 0,
                    },
                    BUYER,
                    Role::Buyer,
                ))
                .await
                .expect("get")
                .into_inner()
                .contract
                .expect("contract");
            !c.activation_refusal.is_empty()
        }
    })
    .await;
    let refused = h.contract(&id).await;
    assert_eq!(refused.status(), pb::ContractStatus::Draft);
    assert!(
        refused
            .activation_refusal
            .starts_with("CURRENCY_NOT_COVERED: "),
        "{}",
        refused.activation_refusal
    );
    let timeline = h.timeline(&id).await;
    assert!(
        timeline
            .iter()
            .any(|(action, detail)| action == "contract.activation_refused"
                && detail.contains("CURRENCY_NOT_COVERED: ")),
        "{timeline:?}"
    );
}
