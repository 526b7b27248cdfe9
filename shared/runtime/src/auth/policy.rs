//! Per-method authorization, derived from the `access` option declared on
//! each RPC in `proto/` (see `tradeassurance/common/v1/access.proto`).

use std::collections::HashMap;

use super::{Principal, Role};

/// Who may call one method.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Access {
    roles: Vec<Role>,
    /// Service principals allowed, by name (a `service` token's subject).
    services: Vec<String>,
}

/// Which callers may call which gRPC method; methods not listed are denied.
#[derive(Clone, Debug, Default)]
pub struct MethodPolicy {
    methods: HashMap<String, Access>,
}

/// The policy's answer for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// The method is served, but not to this role (or this service).
    Denied,
    /// No method of that name is served here.
    NotServed,
}

impl MethodPolicy {
    /// An empty policy, denying everything.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The declared access of every RPC of the gRPC services named (full
    /// names, e.g. `tradeassurance.escrow.v1.EscrowService`).
    #[must_use]
    pub fn declared_for(services: &[&str]) -> Self {
        Self::new().with_declared(services)
    }

    /// Adds the declared access of the gRPC services named.
    #[must_use]
    pub fn with_declared(self, services: &[&str]) -> Self {
        let mut policy = self;
        for service in services {
            for declared in ta_proto::access::of_service(service) {
                let access = policy.methods.entry(declared.path.to_owned()).or_default();
                access
                    .roles
                    .extend(declared.roles.iter().copied().filter_map(Role::from_proto));
                access
                    .services
                    .extend(declared.services.iter().map(|s| (*s).to_owned()));
            }
        }
        policy
    }

    /// Allows `roles` to call `path` (`/package.Service/Method`); adds to what
    /// is already allowed. `Role::Service` here allows every service: prefer
    /// [`MethodPolicy::allow_services`].
    ///
    /// # Panics
    ///
    /// If `path` is not of the form `/package.Service/Method`: a typo would
    /// otherwise silently deny the method.
    #[must_use]
    pub fn allow(mut self, path: impl Into<String>, roles: &[Role]) -> Self {
        let access = self.entry(path.into());
        for role in roles {
            if !access.roles.contains(role) {
                access.roles.push(*role);
            }
        }
        self
    }

    /// Allows the service principals named to call `path`.
    ///
    /// # Panics
    ///
    /// As [`MethodPolicy::allow`].
    #[must_use]
    pub fn allow_services(mut self, path: impl Into<String>, services: &[&str]) -> Self {
        let access = self.entry(path.into());
        access
            .services
            .extend(services.iter().map(|s| (*s).to_owned()));
        self
    }

    fn entry(&mut self, path: String) -> &mut Access {
        assert!(
            is_method_path(&path),
            "MethodPolicy: `{path}` is not a gRPC method path (/package.Service/Method)"
        );
        self.methods.entry(path).or_default()
    }

    /// Every method path the policy lists.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(String::as_str)
    }

    /// Whether `principal` may call `path`. A service principal is allowed
    /// only by name; `Role::Service` in the roles allows any service.
    pub fn decide(&self, path: &str, principal: &Principal) -> Decision {
        let Some(access) = self.methods.get(path) else {
            return Decision::NotServed;
        };
        let allowed = access.roles.contains(&principal.role)
            || (principal.role == Role::Service && access.services.contains(&principal.subject));
        if allowed {
            Decision::Allowed
        } else {
            Decision::Denied
        }
    }
}

fn is_method_path(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, method)| {
            !service.is_empty() && !method.is_empty() && !method.contains('/')
        })
}

/// `/pkg.v1.SupplierRegistryService/VerifySupplier` →
/// `SupplierRegistryService/VerifySupplier`.
pub(super) fn short_method_name(path: &str) -> &str {
    let path = path.strip_prefix('/').unwrap_or(path);
    match path.split_once('/') {
        Some((service, _)) => match service.rfind('.') {
            Some(dot) => &path[dot + 1..],
            None => path,
        },
        None => path,
    }
}
