//! Authentication and authorization of gRPC calls.
//!
//! * [`TokenVerifier`] checks bearer JWTs: RS256 against a JWK set whose keys
//!   are picked by `kid` (re-read when the file changes, so keys rotate without
//!   a restart), and HS256 with a shared secret for local runs only (off in any
//!   deployment configured with a JWK set unless explicitly allowed).
//! * Keys say who they are: a service's own key (a JWK carrying
//!   [`JWK_SERVICE_MEMBER`]) signs only that service's tokens, a people's
//!   issuer key only people's tokens, so neither kind of key can stand in for
//!   the other, and contract's key cannot say `role: finance` or
//!   `sub: dispute`.
//! * Audiences: each service has its own (`AUTH_JWT_AUDIENCE`, by default its
//!   name). A service principal's token must name the called service; a
//!   person's token may name it or the platform audience.
//! * [`MethodPolicy`] is derived from the `access` option declared on each RPC
//!   in `proto/`: the roles of people allowed, and the services allowed by name.
//! * [`AuthLayer`] answers `UNAUTHENTICATED` / `PERMISSION_DENIED` itself and
//!   hands the [`Caller`] (principal and method) to handlers through the request
//!   extensions, where [`caller`] and [`principal`] read it.
//! * [`TokenIssuer`] mints tokens for the `mint-token` CLI, tests, and services
//!   calling each other (HS256 in development, RS256 with a `kid` elsewhere).

mod config;
mod issuer;
mod keys;
mod layer;
mod policy;
mod verifier;

#[cfg(test)]
mod tests;

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

pub use config::{AuthConfig, AuthConfigError};
pub use issuer::{MintError, TokenIssuer};
pub use layer::{AuthLayer, AuthService, bearer_metadata, caller, is_public_path, principal};
pub use policy::{Decision, MethodPolicy};
pub use verifier::{AuthError, TokenVerifier};

/// Default expected `iss` claim.
pub const DEFAULT_ISSUER: &str = "trade-assurance";
/// The platform-wide audience people's tokens may carry (services' tokens
/// must name the service they call).
pub const PLATFORM_AUDIENCE: &str = "trade-assurance";
/// Default clock-skew tolerance for `exp` / `nbf` / `iat`, in seconds.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 30;
/// Default longest token lifetime (`exp - iat`), people's and services'
/// alike (`AUTH_JWT_MAX_LIFETIME`).
pub const DEFAULT_MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3_600);
/// Shortest accepted HS256 secret, in bytes.
pub const MIN_HS256_SECRET_LEN: usize = 16;
/// The HS256 secret of `make run`, `make token` and the scripts.
pub const DEV_HS256_SECRET: &str = "dev-only-secret-change-me";
/// The HS256 secret of the test suites (`ta_testkit::TEST_SECRET`).
pub const TEST_HS256_SECRET: &str = "test-secret-at-least-16-bytes";
/// The HS256 secrets published with the source code: anyone can sign any
/// token with them, so a process refuses them unless `AUTH_DEV_MODE=true`
/// says it runs for development or tests.
pub const PUBLISHED_HS256_SECRETS: [&str; 2] = [DEV_HS256_SECRET, TEST_HS256_SECRET];
/// Longest accepted `sub` claim, in bytes.
pub const MAX_SUBJECT_LEN: usize = 128;
/// The member of a JWK that binds the key to one service: `"ta_service":
/// "contract"` makes the key sign only tokens with `role: service` and
/// `sub: contract`. A key without it is a people's issuer key and signs no
/// service token.
pub const JWK_SERVICE_MEMBER: &str = "ta_service";

/// What a caller is, as carried in the `role` claim.
///
/// Staff act in one duty at a time ([`Role::is_staff`]): a token says which,
/// each method's access option names the duties it admits, and every change
/// a staff member makes is written to the service's audit trail. The one
/// all-powerful `operator` of earlier releases is gone: a token claiming it is
/// refused as an unknown role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Role {
    Buyer,
    Supplier,
    Inspector,
    /// Staff: supplier onboarding, verification, limits, restrictions.
    TrustSafety,
    /// Staff: escalations, claim decisions, freezes, cancellations.
    Arbiter,
    /// Staff: direct releases and refunds, settlements, payouts, escrow
    /// corrections, the ledger's reports, re-driving parked work.
    Finance,
    /// Staff who read what the other duties read and change nothing.
    Support,
    /// A platform back end: reads views and event feeds, changes nothing.
    Platform,
    /// Another Trade Assurance service calling on its own behalf; its subject
    /// is the service's name (`contract`, `dispute`, ...).
    Service,
}

impl Role {
    /// Every role, in declaration order.
    pub const ALL: [Role; 9] = [
        Role::Buyer,
        Role::Supplier,
        Role::Inspector,
        Role::TrustSafety,
        Role::Arbiter,
        Role::Finance,
        Role::Support,
        Role::Platform,
        Role::Service,
    ];

    /// The wire name, as in the `role` claim (`"buyer"`, `"trust_safety"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Buyer => "buyer",
            Role::Supplier => "supplier",
            Role::Inspector => "inspector",
            Role::TrustSafety => "trust_safety",
            Role::Arbiter => "arbiter",
            Role::Finance => "finance",
            Role::Support => "support",
            Role::Platform => "platform",
            Role::Service => "service",
        }
    }

    /// A person on the platform's staff, acting in one of the duties.
    pub const fn is_staff(self) -> bool {
        matches!(
            self,
            Role::TrustSafety | Role::Arbiter | Role::Finance | Role::Support
        )
    }

    /// The role as the API shows it (`Actor.role`).
    pub fn to_proto(self) -> ta_proto::common::Role {
        use ta_proto::common::Role as Pb;
        match self {
            Role::Buyer => Pb::Buyer,
            Role::Supplier => Pb::Supplier,
            Role::Inspector => Pb::Inspector,
            Role::TrustSafety => Pb::TrustSafety,
            Role::Arbiter => Pb::Arbiter,
            Role::Finance => Pb::Finance,
            Role::Support => Pb::Support,
            Role::Platform => Pb::Platform,
            Role::Service => Pb::Service,
        }
    }

    /// The role of an access declaration in `proto/` (the retired operator
    /// role admits nobody).
    pub fn from_proto(role: ta_proto::common::Role) -> Option<Role> {
        use ta_proto::common::Role as Pb;
        #[allow(deprecated)]
        match role {
            Pb::Buyer => Some(Role::Buyer),
            Pb::Supplier => Some(Role::Supplier),
            Pb::Inspector => Some(Role::Inspector),
            Pb::TrustSafety => Some(Role::TrustSafety),
            Pb::Arbiter => Some(Role::Arbiter),
            Pb::Finance => Some(Role::Finance),
            Pb::Support => Some(Role::Support),
            Pb::Platform => Some(Role::Platform),
            Pb::Service => Some(Role::Service),
            Pb::Operator | Pb::Unspecified => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not the (lowercase) name of a [`Role`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role `{0}` (expected one of buyer, supplier, inspector, trust_safety, arbiter, \
     finance, support, platform, service)"
)]
pub struct ParseRoleError(pub String);

impl FromStr for Role {
    type Err = ParseRoleError;

    /// Exact, lowercase match, as in tokens.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| ParseRoleError(s.to_owned()))
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The `sub` claim: a user, supplier or service id.
    pub subject: String,
    pub role: Role,
}

impl Principal {
    /// Narrows a listing's filter on a party (`named`, e.g. its buyer) to
    /// this principal: the filter names the caller afterwards. Answers
    /// whether the caller had named someone else, which each service
    /// refuses in its own way.
    #[must_use]
    pub fn narrow_to_self(&self, named: &mut Option<String>) -> bool {
        let named_another = named.as_ref().is_some_and(|n| *n != self.subject);
        *named = Some(self.subject.clone());
        named_another
    }

    /// Staff, platform back ends and services see every resource (its
    /// private view); buyers, suppliers and inspectors see what they are a
    /// party to or what is public. What each may change is the access
    /// options' business.
    pub fn sees_everything(&self) -> bool {
        self.role.is_staff() || matches!(self.role, Role::Platform | Role::Service)
    }
}

/// Who did something, as a timeline or an event records it: a principal in
/// the role it acted in, or a service acting on its own (a timer, another
/// service's answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub principal_id: String,
    pub role: Role,
}

impl Actor {
    pub fn of(principal: &Principal) -> Self {
        Self {
            principal_id: principal.subject.clone(),
            role: principal.role,
        }
    }

    /// The service `name` itself.
    pub fn service(name: &str) -> Self {
        Self {
            principal_id: name.to_owned(),
            role: Role::Service,
        }
    }

    /// A stored actor: its principal and the role's wire name (an unknown
    /// name reads as a service).
    pub fn stored(principal_id: String, role: &str) -> Self {
        Self {
            principal_id,
            role: role.parse().unwrap_or(Role::Service),
        }
    }

    pub fn to_proto(&self) -> ta_proto::common::Actor {
        ta_proto::common::Actor {
            principal_id: self.principal_id.clone(),
            role: self.role.to_proto() as i32,
        }
    }
}

/// Who called which method: set by [`AuthLayer`] on every authenticated call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    /// The full gRPC method path, `/package.Service/Method`: idempotency keys
    /// are scoped by it, so no two RPCs can share a key by accident.
    pub method: String,
}

/// The claims of a Trade Assurance token, as minted by [`TokenIssuer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// Not-before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
