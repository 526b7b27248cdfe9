//! The access matrix of a service's tests: every kind of caller (each
//! person's role, each service principal of the platform and the outside
//! ones the protos name), what the proto's `access` option declares for an
//! RPC, and the refusal an undeclared caller gets.

use ta_runtime::auth::Role;

/// Every person's role.
pub const PEOPLE: [Role; 8] = [
    Role::Buyer,
    Role::Supplier,
    Role::Inspector,
    Role::TrustSafety,
    Role::Arbiter,
    Role::Finance,
    Role::Support,
    Role::Platform,
];

/// The staff duties and the platform: who sees everything.
pub const STAFF_AND_PLATFORM: [Role; 5] = [
    Role::TrustSafety,
    Role::Arbiter,
    Role::Finance,
    Role::Support,
    Role::Platform,
];

/// Every service principal: the platform's and the outside ones.
pub const SERVICES: [&str; 6] = [
    "contract",
    "escrow",
    "dispute",
    "supplier-registry",
    "messaging",
    "payment-gateway",
];

/// One kind of caller.
#[derive(Clone, Copy, Debug)]
pub enum Caller {
    Person(Role),
    Service(&'static str),
}

impl Caller {
    /// Every person's role, then every service principal.
    pub fn all() -> impl Iterator<Item = Caller> {
        PEOPLE
            .into_iter()
            .map(Caller::Person)
            .chain(SERVICES.into_iter().map(Caller::Service))
    }

    /// Who this caller is, as `(subject, role)`: `buyer` for the buyer role,
    /// `supplier` for the supplier role (the parties of what the test acts
    /// on, so that only the role can be what is refused), `operator` for
    /// staff and the platform, an inspector, or the service itself.
    pub fn principal(
        self,
        buyer: &'static str,
        supplier: &'static str,
        operator: &'static str,
    ) -> (&'static str, Role) {
        match self {
            Caller::Person(Role::Buyer) => (buyer, Role::Buyer),
            Caller::Person(Role::Supplier) => (supplier, Role::Supplier),
            Caller::Person(role) if role.is_staff() || role == Role::Platform => (operator, role),
            Caller::Person(role) => ("inspector-1", role),
            Caller::Service(name) => (name, Role::Service),
        }
    }

    /// Whether the access option of `rpc` of `service` (its full name) lets
    /// this caller in.
    pub fn declared_for(self, service: &str, rpc: &str) -> bool {
        match self {
            Caller::Person(role) => declared_roles(service, rpc).contains(&role),
            Caller::Service(name) => declared_services(service, rpc).contains(&name),
        }
    }

    /// The PERMISSION_DENIED message this caller gets from `rpc` of
    /// `service` (its full name) when the proto does not declare it.
    pub fn refusal(self, service: &str, rpc: &str) -> String {
        let service = service.rsplit('.').next().unwrap_or(service);
        match self {
            Caller::Person(role) => format!("role {role} may not call {service}/{rpc}"),
            Caller::Service(name) => format!("service {name} may not call {service}/{rpc}"),
        }
    }
}

fn declaration(service: &str, rpc: &str) -> &'static ta_proto::MethodAccess {
    ta_proto::access::of_service(service)
        .find(|m| m.path.ends_with(&format!("/{rpc}")))
        .unwrap_or_else(|| panic!("{rpc} is not declared"))
}

/// The service principals the proto lets call `rpc` of `service`.
pub fn declared_services(service: &str, rpc: &str) -> &'static [&'static str] {
    declaration(service, rpc).services
}

/// The people's roles the proto lets call `rpc` of `service`.
pub fn declared_roles(service: &str, rpc: &str) -> Vec<Role> {
    declaration(service, rpc)
        .roles
        .iter()
        .filter_map(|r| Role::from_proto(*r))
        .collect()
}

/// The RPCs of `service` (its full name) the proto declares, sorted.
pub fn declared_rpcs(service: &str) -> Vec<&'static str> {
    let mut rpcs: Vec<&str> = ta_proto::access::of_service(service)
        .map(|m| m.path.rsplit('/').next().unwrap_or(m.path))
        .collect();
    rpcs.sort_unstable();
    rpcs
}

/// Sends each of `calls` (named by `rpc`) as every caller the proto does not
/// declare for it, through `send`, and checks that each is PERMISSION_DENIED
/// with the caller's [`Caller::refusal`]. Returns how many were refused and
/// how many cells the matrix has (declared ones included).
pub async fn check_refusals<C: Clone>(
    service: &str,
    calls: Vec<C>,
    rpc: impl Fn(&C) -> &'static str,
    mut send: impl AsyncFnMut(C, Caller) -> Result<(), tonic::Status>,
) -> (usize, usize) {
    let (mut refused, mut cells) = (0, 0);
    for call in calls {
        let rpc = rpc(&call);
        for caller in Caller::all() {
            cells += 1;
            if caller.declared_for(service, rpc) {
                continue;
            }
            let status = send(call.clone(), caller)
                .await
                .expect_err(&format!("{caller:?} may call {rpc}"));
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{caller:?} {rpc}"
            );
            assert_eq!(
                status.message(),
                caller.refusal(service, rpc),
                "{caller:?} {rpc}"
            );
            refused += 1;
        }
    }
    (refused, cells)
}
