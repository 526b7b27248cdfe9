//! What the contract service's API tests share: the contract process served
//! on the test's database, against fake peers (a registry that knows
//! `OWNER`'s supplier and reserves any cover, an escrow that opens any
//! account and moves what it is asked to), and small helpers.
//!
//! Each test file uses part of it.
#![allow(dead_code)]

use clap::Parser;
use contract::{Links, SPEC, api, config::Config};
use sqlx::PgPool;
use ta_proto::{
    common::PageRequest,
    contract::{self as pb, contract_service_client::ContractServiceClient},
    escrow as escrow_pb, supplier as supplier_pb,
};
use ta_runtime::{auth::Role, timestamps};
use ta_testkit::{RunningService, authorized};
use ta_workflow::testing::{self, FakePeer};
use tonic::transport::Channel;
use uuid::Uuid;

pub const BUYER: &str = "buyer-1";
pub const OWNER: &str = "owner-1";
#[allow(unused_imports)] // each test file uses part of it
pub use ta_testkit::{WAIT, eventually, usd as pb_usd};

pub fn at(from_now: time::Duration) -> Option<prost_types::Timestamp> {
    Some(timestamps::to_proto(timestamps::now() + from_now))
}

/// A directory removed when dropped (the inspection files' store).
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fake supplier-registry and escrow the contract calls.
pub struct Peers {
    pub registry: FakePeer,
    pub escrow: FakePeer,
}

impl Peers {
    /// A registry that knows `OWNER`'s supplier and answers every cover call,
    /// an escrow that opens any account and answers releases and closings.
    pub async fn start() -> Self {
        let registry = FakePeer::start::<testing::Registry>().await;
        let escrow = FakePeer::start::<testing::Escrow>().await;
        registry.answer("GetSupplier", |r: supplier_pb::GetSupplierRequest| {
            Ok(supplier_pb::GetSupplierResponse {
                supplier: Some(supplier_pb::Supplier {
                    supplier_id: r.supplier_id,
                    owner_principal_id: OWNER.into(),
                    ..Default::default()
                }),
            })
        });
        for method in [
            "ReserveCover",
            "AdjustCover",
            "ReleaseCover",
            "RecordCompletedContract",
        ] {
            registry.answer(method, |(): ()| Ok(()));
        }
        escrow.answer(
            "OpenEscrowAccount",
            |r: escrow_pb::OpenEscrowAccountRequest| {
                Ok(escrow_pb::OpenEscrowAccountResponse {
                    account: Some(escrow_pb::EscrowAccount {
                        escrow_account_id: format!("acct-{}", r.contract_id),
                        contract_id: r.contract_id,
                        ..Default::default()
                    }),
                })
            },
        );
        for method in ["ReleaseToSupplier", "CloseEscrowAccount"] {
            escrow.answer(method, |(): ()| Ok(()));
        }
        Self { registry, escrow }
    }
}

/// Quick workflow settings: outbox and timers polled every few ms.
pub const QUICK_WORKFLOW: &[&str] = &[
    "--workflow-outbox-poll-interval",
    "20ms",
    "--workflow-outbox-backoff-base",
    "20ms",
    "--workflow-consumer-reconnect-base",
    "200ms",
    "--workflow-timer-poll-interval",
    "50ms",
];

/// The contract service on `pool`, calling `peers`, with `settings` added
/// to the configuration; serving when returned, with its files' store.
pub async fn serve(pool: &PgPool, peers: &Peers, settings: &[&str]) -> (RunningService, TempDir) {
    let store = std::env::temp_dir().join(format!("contract-tests-{}", Uuid::now_v7()));
    let (registry_url, escrow_url, store_dir) = (
        peers.registry.url(),
        peers.escrow.url(),
        store.display().to_string(),
    );
    let mut args = ta_testkit::command_line(
        "contract",
        pool,
        &[
            "--evidence-store",
            &store_dir,
            "--supplier-registry-url",
            &registry_url,
            "--escrow-url",
            &escrow_url,
        ],
    );
    args.extend(settings.iter().map(|setting| (*setting).to_owned()));
    let config = Config::try_parse_from(args).expect("config");
    let links =
        Links::from_config(SPEC.name, &config.workflow, &config.common.auth).expect("links");
    let objects = ta_objects::Store::from_config(&config.store).expect("store");
    let service = api(&config, pool.clone(), links, objects);
    let server = RunningService::start(&SPEC, config.common.clone(), pool.clone(), service).await;
    (server, TempDir(store))
}

/// The contract as its buyer reads it.
pub async fn contract(client: &mut ContractServiceClient<Channel>, id: &str) -> pb::Contract {
    client
        .get_contract(authorized(
            pb::GetContractRequest {
                contract_id: id.into(),
                version: 0,
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect("get contract")
        .into_inner()
        .contract
        .expect("contract")
}

/// The contract's timeline (action, detail), oldest first, as its buyer reads it.
pub async fn timeline(
    client: &mut ContractServiceClient<Channel>,
    id: &str,
) -> Vec<(String, String)> {
    client
        .get_contract_timeline(authorized(
            pb::GetContractTimelineRequest {
                contract_id: id.into(),
                page: Some(PageRequest {
                    page_size: 100,
                    page_token: String::new(),
                }),
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect("timeline")
        .into_inner()
        .entries
        .into_iter()
        .map(|e| (e.action, e.detail))
        .collect()
}
