//! A stranger cannot tell an id it may not see from an id that does not
//! exist, against the real binaries: for a contract, its escrow account, a
//! claim and its evidence, a buyer, supplier or inspection agency that is no
//! party gets, for the existing id, the very answer an id nobody has gets
//! (the code, the message but for the id itself, the details, the same
//! metadata), for the reads and for the changes alike, whatever state the
//! resource is in.

use std::{
    fmt::Debug,
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use e2e_tests::{platform::*, scenario::*, *};
use ta_proto::{
    contract::{self as cpb, contract_service_client::ContractServiceClient},
    dispute::{self as dpb, dispute_service_client::DisputeServiceClient},
    escrow::{self as epb, escrow_service_client::EscrowServiceClient},
};
use tonic::{Code, Status, transport::Channel};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", ta_runtime::auth::bearer_metadata(token));
    request
}

/// An id nobody has: a UUID (in the shape of a version 7 one) from the clock
/// and a counter.
fn random_id() -> String {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let millis = (nanos / 1_000_000) as u64 & 0xffff_ffff_ffff;
    format!(
        "{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
        millis >> 16,
        millis & 0xffff,
        n & 0xfff,
        (nanos % 0x1000) as u32,
        (nanos as u64 ^ u64::from(n).rotate_left(32)) & 0xffff_ffff_ffff,
    )
}

/// What a caller reads in a refusal: its code, its message with the id it
/// asked for written `<id>`, its details, and which metadata came with it.
fn seen(status: &Status, id: &str) -> (Code, String, Vec<u8>, Vec<String>) {
    let mut keys: Vec<String> = status
        .metadata()
        .keys()
        .map(|k| match k {
            tonic::metadata::KeyRef::Ascii(k) => k.as_str().to_owned(),
            tonic::metadata::KeyRef::Binary(k) => k.as_str().to_owned(),
        })
        .collect();
    keys.sort();
    (
        status.code(),
        status.message().replace(id, "<id>"),
        status.details().to_vec(),
        keys,
    )
}

/// `call` with the existing id and with a random one answers the same
/// NOT_FOUND.
fn same_answer<T: Debug>(
    what: &str,
    existing: &str,
    mut call: impl FnMut(&str) -> Result<T, Status>,
) {
    let random = random_id();
    let hidden = call(existing).expect_err(&format!("{what}: a stranger was answered"));
    let missing = call(&random).expect_err(&format!("{what}: a random id was answered"));
    assert_eq!(hidden.code(), Code::NotFound, "{what}: {hidden:?}");
    assert!(
        hidden.message().contains(existing),
        "{what}: the message names the id asked for: {hidden:?}"
    );
    assert_eq!(
        seen(&hidden, existing),
        seen(&missing, &random),
        "{what}: a stranger tells the existing id from a random one"
    );
}

#[test]
fn a_stranger_is_answered_for_an_existing_id_as_for_a_random_one() {
    let store = TempDir::new("strangers-store");
    let dir = store.path().display().to_string();
    let platform = Platform::start(&[("CONTRACT_TERM_DAY", "1s"), ("EVIDENCE_STORE", &dir)]);
    let dispute = platform.spawn_dispute(store.path(), &[]);
    let owner = "supplier-strangers";
    let buyer = mint("buyer-strangers", Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let (contract_id, account_id) =
        platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    let claim_id = open_claim(
        &dispute,
        &buyer,
        "strangers-claim",
        &json!({ "contract_id": contract_id, "reason": "CLAIM_REASON_DAMAGE",
                 "amount_claimed": usd(50_000), "description": "12 cartons crushed" }),
    );
    let photo: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let evidence_id = upload_evidence(
        &dispute,
        &buyer,
        &EvidenceFile {
            key: "strangers-photo",
            claim_id: &claim_id,
            kind: dpb::EvidenceKind::Photo,
            filename: "cartons.jpg",
            content_type: "image/jpeg",
            description: "crushed cartons",
            quality_criterion_ids: &[],
            bytes: &photo,
        },
    )
    .expect("the buyer's evidence")
    .evidence_id;
    // The contract is in dispute now: a stranger must not learn that either
    // (a party cancelling it would be told the state it is in).
    assert_eq!(
        platform.get_contract(&contract_id)["status"],
        "CONTRACT_STATUS_IN_DISPUTE"
    );

    let strange_buyer = mint("buyer-stranger", Role::Buyer);
    let strange_supplier = mint("supplier-stranger", Role::Supplier);
    let strange_agency = mint("agency-stranger", Role::Inspector);
    let rt = runtime();
    let connect = |addr: String| {
        rt.block_on(
            Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect(),
        )
        .expect("connect")
    };
    let contract = ContractServiceClient::new(connect(platform.contract.addr()));
    let escrow = EscrowServiceClient::new(connect(platform.escrow.addr()));
    let claims = DisputeServiceClient::new(connect(dispute.addr()));
    let key = |what: &str, id: &str| format!("stranger-{what}-{id}");

    // ---- The contract ----------------------------------------------------------
    for (who, token) in [
        ("buyer", &strange_buyer),
        ("supplier", &strange_supplier),
        ("agency", &strange_agency),
    ] {
        same_answer(
            &format!("GetContract by a stranger {who}"),
            &contract_id,
            |id| {
                let request = cpb::GetContractRequest {
                    contract_id: id.into(),
                    ..Default::default()
                };
                rt.block_on(contract.clone().get_contract(authorized(request, token)))
            },
        );
        same_answer(
            &format!("ListInspectionReports by a stranger {who}"),
            &contract_id,
            |id| {
                let request = cpb::ListInspectionReportsRequest {
                    contract_id: id.into(),
                    ..Default::default()
                };
                rt.block_on(
                    contract
                        .clone()
                        .list_inspection_reports(authorized(request, token)),
                )
            },
        );
    }
    for (who, token) in [("buyer", &strange_buyer), ("supplier", &strange_supplier)] {
        same_answer(
            &format!("GetContractTimeline by a stranger {who}"),
            &contract_id,
            |id| {
                let request = cpb::GetContractTimelineRequest {
                    contract_id: id.into(),
                    ..Default::default()
                };
                rt.block_on(
                    contract
                        .clone()
                        .get_contract_timeline(authorized(request, token)),
                )
            },
        );
        same_answer(
            &format!("CancelContract by a stranger {who}"),
            &contract_id,
            |id| {
                let request = cpb::CancelContractRequest {
                    idempotency_key: key(&format!("cancel-{who}"), id),
                    contract_id: id.into(),
                    reason: "changed my mind".into(),
                };
                rt.block_on(contract.clone().cancel_contract(authorized(request, token)))
            },
        );
        same_answer(
            &format!("SignContract by a stranger {who}"),
            &contract_id,
            |id| {
                let request = cpb::SignContractRequest {
                    idempotency_key: key(&format!("sign-{who}"), id),
                    contract_id: id.into(),
                    version: 1,
                };
                rt.block_on(contract.clone().sign_contract(authorized(request, token)))
            },
        );
    }
    same_answer("AcceptGoods by a stranger buyer", &contract_id, |id| {
        let request = cpb::AcceptGoodsRequest {
            idempotency_key: key("accept", id),
            contract_id: id.into(),
            ..Default::default()
        };
        rt.block_on(
            contract
                .clone()
                .accept_goods(authorized(request, &strange_buyer)),
        )
    });
    same_answer(
        "RecordShipment by a stranger supplier",
        &contract_id,
        |id| {
            let request = cpb::RecordShipmentRequest {
                idempotency_key: key("ship", id),
                contract_id: id.into(),
                carrier: "DHL".into(),
                tracking_number: "JD0001".into(),
                r#final: true,
                ..Default::default()
            };
            rt.block_on(
                contract
                    .clone()
                    .record_shipment(authorized(request, &strange_supplier)),
            )
        },
    );
    same_answer(
        "SubmitInspectionReport by an agency not named",
        &contract_id,
        |id| {
            let request = cpb::SubmitInspectionReportRequest {
                idempotency_key: key("report", id),
                contract_id: id.into(),
                agency_reference: "SGS-1".into(),
                inspected_at: Some(Default::default()),
                results: vec![cpb::CriterionResult {
                    criterion_id: "QC-1".into(),
                    outcome: cpb::CriterionOutcome::Pass as i32,
                    measured_value: "4.0".into(),
                    ..Default::default()
                }],
                summary: String::new(),
            };
            rt.block_on(
                contract
                    .clone()
                    .submit_inspection_report(authorized(request, &strange_agency)),
            )
        },
    );

    // ---- The escrow account ----------------------------------------------------
    for (who, token) in [("buyer", &strange_buyer), ("supplier", &strange_supplier)] {
        same_answer(
            &format!("GetEscrowAccount by a stranger {who}"),
            &account_id,
            |id| {
                let request = epb::GetEscrowAccountRequest {
                    escrow_account_id: id.into(),
                    contract_id: String::new(),
                };
                rt.block_on(
                    escrow
                        .clone()
                        .get_escrow_account(authorized(request, token)),
                )
            },
        );
        same_answer(
            &format!("GetEscrowAccount by contract by a stranger {who}"),
            &contract_id,
            |id| {
                let request = epb::GetEscrowAccountRequest {
                    escrow_account_id: String::new(),
                    contract_id: id.into(),
                };
                rt.block_on(
                    escrow
                        .clone()
                        .get_escrow_account(authorized(request, token)),
                )
            },
        );
        same_answer(
            &format!("GetEscrowStatement by a stranger {who}"),
            &account_id,
            |id| {
                let request = epb::GetEscrowStatementRequest {
                    escrow_account_id: id.into(),
                    page: None,
                };
                rt.block_on(
                    escrow
                        .clone()
                        .get_escrow_statement(authorized(request, token)),
                )
            },
        );
    }
    same_answer("FundEscrow by a stranger buyer", &account_id, |id| {
        let request = epb::FundEscrowRequest {
            idempotency_key: key("fund", id),
            escrow_account_id: id.into(),
            milestone_id: "full".into(),
            amount: Some(ta_proto::common::Money {
                currency_code: "USD".into(),
                amount_minor: 310_000,
            }),
            method: Some(epb::fund_escrow_request::Method::Card(epb::CardPayment {
                card_token: "tok_visa".into(),
            })),
        };
        rt.block_on(
            escrow
                .clone()
                .fund_escrow(authorized(request, &strange_buyer)),
        )
    });

    // ---- The claim and its evidence ----------------------------------------------
    same_answer("FileClaim by a stranger buyer", &contract_id, |id| {
        let request = dpb::FileClaimRequest {
            idempotency_key: key("file", id),
            contract_id: id.into(),
            reason: ta_proto::common::ClaimReason::Damage as i32,
            amount_claimed: Some(ta_proto::common::Money {
                currency_code: "USD".into(),
                amount_minor: 1_000,
            }),
            description: "never bought it".into(),
            ..Default::default()
        };
        rt.block_on(
            claims
                .clone()
                .file_claim(authorized(request, &strange_buyer)),
        )
    });
    for (who, token) in [("buyer", &strange_buyer), ("supplier", &strange_supplier)] {
        same_answer(&format!("GetClaim by a stranger {who}"), &claim_id, |id| {
            let request = dpb::GetClaimRequest {
                claim_id: id.into(),
            };
            rt.block_on(claims.clone().get_claim(authorized(request, token)))
        });
        same_answer(
            &format!("GetClaimTimeline by a stranger {who}"),
            &claim_id,
            |id| {
                let request = dpb::GetClaimTimelineRequest {
                    claim_id: id.into(),
                    ..Default::default()
                };
                rt.block_on(
                    claims
                        .clone()
                        .get_claim_timeline(authorized(request, token)),
                )
            },
        );
        same_answer(
            &format!("ListEvidence by a stranger {who}"),
            &claim_id,
            |id| {
                let request = dpb::ListEvidenceRequest {
                    claim_id: id.into(),
                    ..Default::default()
                };
                rt.block_on(claims.clone().list_evidence(authorized(request, token)))
            },
        );
        same_answer(
            &format!("GetUploadProgress by a stranger {who}"),
            &claim_id,
            |id| {
                let request = dpb::GetUploadProgressRequest {
                    claim_id: id.into(),
                    sha256_hex: hex(&sha256(&photo)),
                };
                rt.block_on(
                    claims
                        .clone()
                        .get_upload_progress(authorized(request, token)),
                )
            },
        );
        same_answer(
            &format!("DownloadEvidence by a stranger {who}"),
            &evidence_id,
            |id| download_evidence(&dispute, token, id).map(|(evidence, _)| evidence),
        );
        same_answer(
            &format!("UploadEvidence by a stranger {who}"),
            &claim_id,
            |id| {
                let key = key(&format!("upload-{who}"), id);
                upload_evidence(
                    &dispute,
                    token,
                    &EvidenceFile {
                        key: &key,
                        claim_id: id,
                        kind: dpb::EvidenceKind::Photo,
                        filename: "cartons.jpg",
                        content_type: "image/jpeg",
                        description: "",
                        quality_criterion_ids: &[],
                        bytes: &photo,
                    },
                )
            },
        );
        same_answer(
            &format!("AcceptOffer by a stranger {who}"),
            &claim_id,
            |id| {
                let request = dpb::AcceptOfferRequest {
                    idempotency_key: key(&format!("accept-offer-{who}"), id),
                    claim_id: id.into(),
                    offer_id: random_id(),
                };
                rt.block_on(claims.clone().accept_offer(authorized(request, token)))
            },
        );
    }
    same_answer("MakeOffer by a stranger supplier", &claim_id, |id| {
        let request = dpb::MakeOfferRequest {
            idempotency_key: key("offer", id),
            claim_id: id.into(),
            kind: dpb::OfferKind::FullRefund as i32,
            ..Default::default()
        };
        rt.block_on(
            claims
                .clone()
                .make_offer(authorized(request, &strange_supplier)),
        )
    });
    same_answer("WithdrawClaim by a stranger buyer", &claim_id, |id| {
        let request = dpb::WithdrawClaimRequest {
            idempotency_key: key("withdraw", id),
            claim_id: id.into(),
            reason: String::new(),
        };
        rt.block_on(
            claims
                .clone()
                .withdraw_claim(authorized(request, &strange_buyer)),
        )
    });
    same_answer("EscalateClaim by a stranger buyer", &claim_id, |id| {
        let request = dpb::EscalateClaimRequest {
            idempotency_key: key("escalate", id),
            claim_id: id.into(),
            reason: "no agreement".into(),
        };
        rt.block_on(
            claims
                .clone()
                .escalate_claim(authorized(request, &strange_buyer)),
        )
    });

    // A party is still told why it may not: the contract's supplier
    // cancelling it learns the state it is in.
    let refused = rt
        .block_on(contract.clone().cancel_contract(authorized(
            cpb::CancelContractRequest {
                idempotency_key: "supplier-cancels".into(),
                contract_id: contract_id.clone(),
                reason: "changed my mind".into(),
            },
            &supplier,
        )))
        .expect_err("in dispute");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // Nothing a stranger sent changed anything.
    let claim = get_claim(&dispute, &buyer, &claim_id);
    assert_eq!(claim["status"], "CLAIM_STATUS_NEGOTIATING", "{claim:#}");
    assert_eq!(int(&claim["evidenceCount"]), 1, "{claim:#}");
    assert_eq!(
        platform.get_contract(&contract_id)["status"],
        "CONTRACT_STATUS_IN_DISPUTE"
    );
}
