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
/// The service principal that reserves cover: the contract service.
pub const SERVICE: &str = "contract";
/// The registry's own name: the audience service principals' tokens name.
pub const REGISTRY: &str = "supplier-registry";
pub const REGISTRY_SERVICE: &str = "tradeassurance.supplier.v1.SupplierRegistryService";
pub const BUYER: &str = "buyer-1";

pub struct Registry {
    pub server: RunningService,
    pub client: Client,
}

/// Starts the registry over `pool`'s database (migrations run by the server).
pub async fn start(pool: PgPool) -> Registry {
    start_with(pool, &[]).await
}

/// Like [`start`], with more configuration flags (e.g. `--request-timeout 1s`).
pub async fn start_with(pool: PgPool, flags: &[&str]) -> Registry {
    let args = ta_testkit::command_line("supplier-registry", &pool, flags);
    let config = Config::try_parse_from(args).expect("config");
    let common = config.common.clone();
    let service_api = api(&config, pool.clone());
    let server = RunningService::start(&SPEC, common, pool, service_api).await;
    let client = SupplierRegistryServiceClient::new(server.channel.clone());
    Registry { server, client }
}

#[allow(unused_imports)] // each test file uses part of it
pub use ta_testkit::{Snapshot, usd, violated_fields};

pub fn as_role<T>(message: T, subject: &str, role: Role) -> tonic::Request<T> {
    if role == Role::Service {
        ta_testkit::from_service(message, subject, REGISTRY)
    } else {
        authorized(message, subject, role)
    }
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
        // Only staff must give one; a supplier's is not recorded anywhere.
        reason: "onboarding review".into(),
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
                reason: String::new(),
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
                reason: "licence checked against the registry".into(),
                idempotency_key: format!("ver-{id}"),
                supplier_id: id.clone(),
            },
            OPERATOR,
            Role::TrustSafety,
        ))
        .await
        .expect("verify");
    client
        .enroll_trade_assurance(as_role(
            pb::EnrollTradeAssuranceRequest {
                reason: "enrolled after review".into(),
                idempotency_key: format!("enr-{id}"),
                supplier_id: id.clone(),
                ta_limit: usd(limit_minor),
            },
            OPERATOR,
            Role::TrustSafety,
        ))
        .await
        .expect("enrol");
    id
}

/// The tables of the registry's schema, for "nothing was written" checks:
/// its own and the feed's events.
pub const TABLES: [&str; 8] = [
    "suppliers",
    "cover_reservations",
    "completed_contracts",
    "reviews",
    "inquiries",
    "penalties",
    "idempotency_keys",
    "workflow_feed_events",
];

/// Row counts and digests of every registry table (see [`TABLES`]).
pub async fn snapshot(pool: &PgPool) -> Snapshot {
    // An event's sequence is given after its commit, by whichever stream
    // reads the feed first: what was appended is the rest.
    Snapshot::take(pool, "supplier_registry", &TABLES, |table| {
        if table == "workflow_feed_events" {
            "(t.id, t.feed, t.kind, t.subject_id, t.payload)::text"
        } else {
            "t::text"
        }
    })
    .await
}

/// How a raw request authenticates.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    /// No `authorization` header at all.
    Missing,
    /// A valid token for this subject and role (for `Role::Service`, the
    /// subject is the calling service and the token names the registry).
    Valid(&'a str, Role),
    /// A correctly signed token that expired an hour ago.
    Expired(&'a str, Role),
    /// This exact `authorization` header value.
    Header(&'a str),
}

impl Auth<'_> {
    pub fn request<T>(self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let value = match self {
            Auth::Missing => return request,
            Auth::Valid(subject, Role::Service) => ta_testkit::service_bearer(subject, REGISTRY),
            Auth::Valid(subject, role) => ta_testkit::bearer(subject, role),
            Auth::Expired(subject, role) => ta_testkit::expired_bearer(subject, role),
            Auth::Header(value) => value.parse().expect("ascii header"),
        };
        request.metadata_mut().insert("authorization", value);
        request
    }
}

macro_rules! calls {
    ($($rpc:ident($request:ident) => $method:ident),+ $(,)?) => {
        /// One call of any RPC of the registry, for table-driven tests.
        #[derive(Clone, Debug)]
        pub enum Call {
            $($rpc(pb::$request)),+
        }

        /// Every RPC of `SupplierRegistryService`.
        pub const RPCS: &[&str] = &[$(stringify!($rpc)),+];

        impl Call {
            /// The RPC's name, as in the proto.
            pub fn rpc(&self) -> &'static str {
                match self {
                    $(Call::$rpc(_) => stringify!($rpc)),+
                }
            }

            /// Sends the call; the response itself is dropped.
            pub async fn send(self, client: &mut Client, auth: Auth<'_>) -> Result<(), tonic::Status> {
                match self {
                    $(Call::$rpc(message) => client.$method(auth.request(message)).await.map(drop)),+
                }
            }
        }
    };
}

calls! {
    RegisterSupplier(RegisterSupplierRequest) => register_supplier,
    GetSupplier(GetSupplierRequest) => get_supplier,
    UpdateSupplierContacts(UpdateSupplierContactsRequest) => update_supplier_contacts,
    SubmitVerification(SubmitVerificationRequest) => submit_verification,
    VerifySupplier(VerifySupplierRequest) => verify_supplier,
    RejectVerification(RejectVerificationRequest) => reject_verification,
    EnrollTradeAssurance(EnrollTradeAssuranceRequest) => enroll_trade_assurance,
    SetTradeAssuranceLimit(SetTradeAssuranceLimitRequest) => set_trade_assurance_limit,
    SetSupplierStatus(SetSupplierStatusRequest) => set_supplier_status,
    SearchSuppliers(SearchSuppliersRequest) => search_suppliers,
    ReserveCover(ReserveCoverRequest) => reserve_cover,
    AdjustCover(AdjustCoverRequest) => adjust_cover,
    ReleaseCover(ReleaseCoverRequest) => release_cover,
    ReleaseStrandedCover(ReleaseStrandedCoverRequest) => release_stranded_cover,
    GetCover(GetCoverRequest) => get_cover,
    ListCoverReservations(ListCoverReservationsRequest) => list_cover_reservations,
    RecordCompletedContract(RecordCompletedContractRequest) => record_completed_contract,
    SubmitReview(SubmitReviewRequest) => submit_review,
    ListReviews(ListReviewsRequest) => list_reviews,
    RecordInquiry(RecordInquiryRequest) => record_inquiry,
    RecordInquiryReply(RecordInquiryReplyRequest) => record_inquiry_reply,
    RecordPenalty(RecordPenaltyRequest) => record_penalty,
    StreamSupplierEvents(StreamSupplierEventsRequest) => stream_supplier_events,
}

impl Call {
    /// A caller the protos admit to the call, for tests about what the service
    /// answers rather than who may ask: the service the platform has make a
    /// service-only call, a buyer for reviews, an operator for the rest.
    pub fn admitted_caller(&self) -> Auth<'static> {
        match self {
            Call::ReserveCover(_)
            | Call::AdjustCover(_)
            | Call::ReleaseCover(_)
            | Call::RecordCompletedContract(_) => Auth::Valid("contract", Role::Service),
            Call::RecordInquiry(_) | Call::RecordInquiryReply(_) | Call::RecordPenalty(_) => {
                Auth::Valid("dispute", Role::Service)
            }
            Call::SubmitReview(_) => Auth::Valid(BUYER, Role::Buyer),
            _ => Auth::Valid(OPERATOR, Role::TrustSafety),
        }
    }
}

/// A contact that passes validation.
pub fn contact() -> pb::Contact {
    pb::Contact {
        name: "Wang Fang".into(),
        email: "wang.fang@acme.example".into(),
        phone: String::new(),
    }
}

/// One well-formed call of every RPC, in proto order, naming `supplier_id`
/// wherever a supplier is named; idempotency keys start with `key`.
pub fn every_call(supplier_id: &str, key: &str) -> Vec<Call> {
    let id = || supplier_id.to_string();
    let key = |rpc: &str| format!("{key}-{rpc}");
    vec![
        Call::RegisterSupplier(pb::RegisterSupplierRequest {
            owner_principal_id: SUPPLIER.into(),
            reason: "trust and safety review".into(),
            ..registration(&key("register"), &format!("LIC-{}", key("register")))
        }),
        Call::GetSupplier(pb::GetSupplierRequest { supplier_id: id() }),
        Call::UpdateSupplierContacts(pb::UpdateSupplierContactsRequest {
            reason: "trust and safety review".into(),
            idempotency_key: key("contacts"),
            supplier_id: id(),
            contacts: vec![contact()],
        }),
        Call::SubmitVerification(pb::SubmitVerificationRequest {
            reason: "trust and safety review".into(),
            idempotency_key: key("submit"),
            supplier_id: id(),
        }),
        Call::VerifySupplier(pb::VerifySupplierRequest {
            reason: "licence checked against the registry".into(),
            idempotency_key: key("verify"),
            supplier_id: id(),
        }),
        Call::RejectVerification(pb::RejectVerificationRequest {
            idempotency_key: key("reject"),
            supplier_id: id(),
            reason: "licence scan unreadable".into(),
        }),
        Call::EnrollTradeAssurance(pb::EnrollTradeAssuranceRequest {
            reason: "enrolled after review".into(),
            idempotency_key: key("enrol"),
            supplier_id: id(),
            ta_limit: usd(100_000),
        }),
        Call::SetTradeAssuranceLimit(pb::SetTradeAssuranceLimitRequest {
            reason: "credit review".into(),
            idempotency_key: key("limit"),
            supplier_id: id(),
            ta_limit: usd(200_000),
        }),
        Call::SetSupplierStatus(pb::SetSupplierStatusRequest {
            idempotency_key: key("status"),
            supplier_id: id(),
            status: pb::SupplierStatus::Suspended as i32,
            reason: "fraud investigation".into(),
        }),
        Call::SearchSuppliers(pb::SearchSuppliersRequest::default()),
        Call::ReserveCover(pb::ReserveCoverRequest {
            idempotency_key: key("reserve"),
            supplier_id: id(),
            contract_id: "contract-1".into(),
            amount: usd(1_000),
        }),
        Call::AdjustCover(pb::AdjustCoverRequest {
            idempotency_key: key("adjust"),
            supplier_id: id(),
            contract_id: "contract-1".into(),
            amount: usd(2_000),
            contract_version: 2,
        }),
        Call::ReleaseCover(pb::ReleaseCoverRequest {
            idempotency_key: key("release"),
            supplier_id: id(),
            contract_id: "contract-1".into(),
        }),
        Call::ReleaseStrandedCover(pb::ReleaseStrandedCoverRequest {
            idempotency_key: key("release-stranded"),
            supplier_id: id(),
            contract_id: "contract-1".into(),
            reason: "reconciliation: COVER_WITHOUT_CONTRACT".into(),
        }),
        Call::GetCover(pb::GetCoverRequest { supplier_id: id() }),
        Call::ListCoverReservations(pb::ListCoverReservationsRequest {
            supplier_id: id(),
            ..Default::default()
        }),
        Call::RecordCompletedContract(pb::RecordCompletedContractRequest {
            idempotency_key: key("completed"),
            supplier_id: id(),
            contract_id: "contract-1".into(),
            buyer_principal_id: BUYER.into(),
        }),
        Call::SubmitReview(pb::SubmitReviewRequest {
            idempotency_key: key("review"),
            supplier_id: id(),
            contract_id: "contract-1".into(),
            rating: 5,
            comment: "on time".into(),
        }),
        Call::ListReviews(pb::ListReviewsRequest {
            supplier_id: id(),
            page: None,
        }),
        Call::RecordInquiry(pb::RecordInquiryRequest {
            idempotency_key: key("inquiry"),
            supplier_id: id(),
            inquiry_id: "inquiry-1".into(),
        }),
        Call::RecordInquiryReply(pb::RecordInquiryReplyRequest {
            idempotency_key: key("reply"),
            supplier_id: id(),
            inquiry_id: "inquiry-1".into(),
        }),
        Call::RecordPenalty(pb::RecordPenaltyRequest {
            idempotency_key: key("penalty"),
            supplier_id: id(),
            claim_id: "dispute-1".into(),
            points: 3,
            reason: "quality mismatch upheld".into(),
        }),
        Call::StreamSupplierEvents(pb::StreamSupplierEventsRequest { after_sequence: 0 }),
    ]
}

/// Reads a supplier as trust and safety.
pub async fn supplier(client: &mut Client, id: &str) -> pb::Supplier {
    client
        .get_supplier(as_role(
            pb::GetSupplierRequest {
                supplier_id: id.into(),
            },
            OPERATOR,
            Role::TrustSafety,
        ))
        .await
        .expect("get supplier")
        .into_inner()
        .supplier
        .expect("supplier")
}

/// `message` from a member of staff on trust and safety duty.
pub fn trust_safety<T>(message: T) -> tonic::Request<T> {
    as_role(message, OPERATOR, Role::TrustSafety)
}

/// `message` from the service the access declaration in the proto names
/// for its RPC (the contract service reserves cover, the dispute service
/// records penalties, ...).
pub fn service<T>(message: T) -> tonic::Request<T> {
    let rpc = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .and_then(|name| name.strip_suffix("Request"))
        .expect("a request message");
    let caller = ta_testkit::access::declared_services(REGISTRY_SERVICE, rpc)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no service may call {rpc}"));
    as_role(message, caller, Role::Service)
}

pub fn money(currency: &str, amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: currency.into(),
        amount_minor,
    })
}

pub fn page(page_size: i32, page_token: &str) -> Option<ta_proto::common::PageRequest> {
    Some(ta_proto::common::PageRequest {
        page_size,
        page_token: page_token.into(),
    })
}
