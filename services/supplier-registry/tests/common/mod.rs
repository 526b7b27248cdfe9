//! Serves the registry in-process on loopback over its own test database.

#![allow(dead_code)]

use clap::Parser;
use sqlx::PgPool;
use supplier_registry::{SPEC, api, config::Config};
use ta_proto::{
    common::Money, supplier as pb,
    supplier::supplier_registry_service_client::SupplierRegistryServiceClient,
};
use ta_runtime::auth::Role;
use ta_testkit::{RunningService, authorized};
use tonic::transport::Channel;

pub type Client = SupplierRegistryServiceClient<Channel>;

pub const OPERATOR: &str = "ops-1";
pub const SUPPLIER: &str = "supplier-acme";
pub const SERVICE: &str = "contract-service";
pub const BUYER: &str = "buyer-1";

pub struct Registry {
    pub server: RunningService,
    pub client: Client,
}

/// Starts the registry over `pool`'s database (migrations run by the server).
pub async fn start(pool: PgPool) -> Registry {
    let url = database_url(&pool);
    let config = Config::try_parse_from([
        "supplier-registry",
        "--database-url",
        &url,
        "--auth-jwt-hs256-secret",
        ta_testkit::TEST_SECRET,
        "--log-format",
        "text",
    ])
    .expect("config");
    let common = config.common.clone();
    let service_api = api(&config, pool.clone());
    let server = RunningService::start(&SPEC, common, pool, service_api).await;
    let client = SupplierRegistryServiceClient::new(server.channel.clone());
    Registry { server, client }
}

fn database_url(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}

pub fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor,
    })
}

pub fn as_role<T>(message: T, subject: &str, role: Role) -> tonic::Request<T> {
    authorized(message, subject, role)
}

pub fn registration(key: &str, licence: &str) -> pb::RegisterSupplierRequest {
    pb::RegisterSupplierRequest {
        idempotency_key: key.into(),
        legal_name: "Acme Manufacturing Co., Ltd.".into(),
        country_code: "CN".into(),
        business_licence_number: licence.into(),
        contacts: vec![pb::Contact {
            name: "Li Wei".into(),
            email: "li.wei@acme.example".into(),
            phone: "+8613800138000".into(),
        }],
        owner_principal_id: String::new(),
    }
}

/// Registers a supplier owned by [`SUPPLIER`] and returns its id.
pub async fn register(client: &mut Client, licence: &str) -> String {
    client
        .register_supplier(as_role(
            registration(&format!("reg-{licence}"), licence),
            SUPPLIER,
            Role::Supplier,
        ))
        .await
        .expect("register")
        .into_inner()
        .supplier
        .expect("supplier")
        .supplier_id
}

/// Registers, verifies and enrols a supplier with a USD limit; returns its id.
pub async fn badged_supplier(client: &mut Client, licence: &str, limit_minor: i64) -> String {
    let id = register(client, licence).await;
    client
        .submit_verification(as_role(
            pb::SubmitVerificationRequest {
                idempotency_key: format!("sub-{id}"),
                supplier_id: id.clone(),
            },
            SUPPLIER,
            Role::Supplier,
        ))
        .await
        .expect("submit");
    client
        .verify_supplier(as_role(
            pb::VerifySupplierRequest {
                idempotency_key: format!("ver-{id}"),
                supplier_id: id.clone(),
            },
            OPERATOR,
            Role::Operator,
        ))
        .await
        .expect("verify");
    client
        .enroll_trade_assurance(as_role(
            pb::EnrollTradeAssuranceRequest {
                idempotency_key: format!("enr-{id}"),
                supplier_id: id.clone(),
                ta_limit: usd(limit_minor),
            },
            OPERATOR,
            Role::Operator,
        ))
        .await
        .expect("enrol");
    id
}
