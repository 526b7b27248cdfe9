//! Every role and every service principal against every method of the four
//! services, through the real binaries: a call is refused by the
//! authorization layer (`PERMISSION_DENIED`, "... may not call ...") exactly
//! when the proto's access option does not name the caller. The expectation
//! is read from the protos (`ta_proto::access`), so a new RPC or a changed
//! option is covered without touching this test.
//!
//! The calls carry empty messages: an admitted caller gets whatever the
//! method answers to an empty request (usually `INVALID_ARGUMENT`), never the
//! authorization layer's refusal; a refused one never reaches the method.

use std::time::Duration;

use e2e_tests::{
    CONTRACT, DISPUTE, ESCROW, Role, SUPPLIER_REGISTRY, TempDir, mint, mint_service,
    platform::Platform,
};
use prost::bytes::Buf;
use ta_proto::{MethodAccess, access::METHOD_ACCESS, common::Role as ProtoRole};
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

/// People: every role a user token may carry (parties, inspectors, each
/// staff duty, back ends), i.e. every role but `service`.
fn people() -> impl Iterator<Item = (Role, ProtoRole)> {
    Role::ALL
        .into_iter()
        .filter(|role| *role != Role::Service)
        .map(|role| (role, role.to_proto()))
}

/// Service principals: the platform's four, the gateway the protos name,
/// and one nobody names.
const SERVICE_PRINCIPALS: [&str; 6] = [
    "contract",
    "escrow",
    "dispute",
    "supplier-registry",
    "payment-gateway",
    "crm",
];

const WORKFLOW_ADMIN: &str = "tradeassurance.ops.v1.WorkflowAdminService";
const AUDIT_TRAIL: &str = "tradeassurance.ops.v1.AuditTrailService";
const RECONCILIATION: &str = "tradeassurance.ops.v1.ReconciliationService";

/// The gRPC services each binary serves.
const SERVED: [(&str, &[&str]); 4] = [
    (
        SUPPLIER_REGISTRY,
        &[
            "tradeassurance.supplier.v1.SupplierRegistryService",
            WORKFLOW_ADMIN,
            AUDIT_TRAIL,
        ],
    ),
    (
        CONTRACT,
        &[
            "tradeassurance.contract.v1.ContractService",
            WORKFLOW_ADMIN,
            AUDIT_TRAIL,
        ],
    ),
    (
        ESCROW,
        &[
            "tradeassurance.escrow.v1.EscrowService",
            WORKFLOW_ADMIN,
            AUDIT_TRAIL,
        ],
    ),
    (
        DISPUTE,
        &[
            "tradeassurance.dispute.v1.DisputeService",
            RECONCILIATION,
            WORKFLOW_ADMIN,
            AUDIT_TRAIL,
        ],
    ),
];

/// Sends nothing and reads whatever comes back: the body of a call does not
/// matter to who may make it.
#[derive(Clone, Copy, Default)]
struct Nothing;

impl Codec for Nothing {
    type Encode = ();
    type Decode = ();
    type Encoder = Nothing;
    type Decoder = Nothing;

    fn encoder(&mut self) -> Self::Encoder {
        Nothing
    }

    fn decoder(&mut self) -> Self::Decoder {
        Nothing
    }
}

impl Encoder for Nothing {
    type Item = ();
    type Error = Status;

    fn encode(&mut self, (): (), _: &mut EncodeBuf<'_>) -> Result<(), Status> {
        Ok(())
    }
}

impl Decoder for Nothing {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// What the server answered one call: `Ok` when it began to serve it.
async fn call(channel: Channel, method: &MethodAccess, token: &str) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = method.path.parse().expect("a method path");
    match (method.client_streaming, method.server_streaming) {
        (false, false) => grpc
            .unary(authorized((), token), path, Nothing)
            .await
            .map(drop),
        (false, true) => grpc
            .server_streaming(authorized((), token), path, Nothing)
            .await
            .map(drop),
        (true, false) => grpc
            .client_streaming(
                authorized(tokio_stream::empty::<()>(), token),
                path,
                Nothing,
            )
            .await
            .map(drop),
        (true, true) => grpc
            .streaming(
                authorized(tokio_stream::empty::<()>(), token),
                path,
                Nothing,
            )
            .await
            .map(drop),
    }
}

fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}

fn refused_by_policy(answer: &Result<(), Status>) -> bool {
    matches!(answer, Err(s) if s.code() == Code::PermissionDenied && s.message().contains(" may not call "))
}

#[test]
fn every_caller_against_every_method_is_answered_as_the_protos_declare() {
    let platform = Platform::start(&[]);
    let evidence = TempDir::new("access-matrix-evidence");
    let dispute = platform.spawn_dispute(evidence.path(), &[]);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");

    let mut checked = 0;
    let mut wrong = Vec::new();
    for (service, grpc_services) in SERVED {
        let addr = match service {
            SUPPLIER_REGISTRY => platform.registry.addr(),
            CONTRACT => platform.contract.addr(),
            ESCROW => platform.escrow.addr(),
            _ => dispute.addr(),
        };
        let channel = runtime.block_on(async {
            Channel::from_shared(format!("http://{addr}"))
                .expect("a URL")
                .connect()
                .await
                .expect("connected")
        });
        for grpc_service in grpc_services {
            assert!(
                METHOD_ACCESS
                    .iter()
                    .any(|m| m.path.starts_with(&format!("/{grpc_service}/"))),
                "the protos declare no method of {grpc_service}"
            );
        }
        let methods = METHOD_ACCESS.iter().filter(|m| {
            grpc_services
                .iter()
                .any(|s| m.path.starts_with(&format!("/{s}/")))
        });
        for method in methods {
            let people = people().map(|(role, proto)| {
                (
                    format!("{role}"),
                    mint("access-matrix", role),
                    method.roles.contains(&proto),
                )
            });
            let services = SERVICE_PRINCIPALS.iter().map(|caller| {
                (
                    format!("service {caller}"),
                    mint_service(caller, service),
                    method.services.contains(caller),
                )
            });
            for (caller, token, admitted) in people.chain(services) {
                let answer = runtime.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(20),
                        call(channel.clone(), method, &token),
                    )
                    .await
                    .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in 20 s")))
                });
                checked += 1;
                // A token the layer did not accept would answer
                // UNAUTHENTICATED, never the policy's refusal: every caller
                // is refused somewhere, so a bad token fails here too.
                if refused_by_policy(&answer) == admitted {
                    wrong.push(format!(
                        "{} as {caller}: admitted by the protos: {admitted}, answered {answer:?}",
                        method.path
                    ));
                }
            }
        }
    }
    assert!(checked > 1_000, "only {checked} calls checked");
    assert!(
        wrong.is_empty(),
        "{} of {checked} calls answered against the protos:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
