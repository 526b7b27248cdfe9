//! The tower layer that authenticates and authorizes every gRPC call, and the
//! helpers handlers and clients use with it.
//!
//! Under mutual TLS with GRPC_TLS_BIND_SERVICE_IDENTITY on, a verified token
//! is also compared with the client certificate of the call's connection
//! ([`ClientIdentity`], set by the server's TLS listener): a service's token
//! passes only from a certificate that names that service, a person's only
//! from one that names no workload or an edge gateway. Any other pair is
//! answered `UNAUTHENTICATED` (the two credentials contradict each other, so
//! who calls is not established) and logged with both identities.

use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};

use crate::{
    middleware::{Layered, Middleware, ResponseFuture, answer, layer_of_middleware},
    tls::{ClientIdentity, ServiceIdentityBinding},
};

use super::{
    Caller, Principal, Role,
    policy::{Decision, MethodPolicy, short_method_name},
    verifier::{AuthError, TokenVerifier},
};

/// gRPC path prefixes that never require a token.
const PUBLIC_PATH_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Whether `path` (`/package.Service/Method`) may be called without a token:
/// gRPC health checking and server reflection.
pub fn is_public_path(path: &str) -> bool {
    PUBLIC_PATH_PREFIXES
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// Authenticates and authorizes every gRPC call; see the module docs.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
    policy: Arc<MethodPolicy>,
    /// Some: a token must come from a client certificate that stands for
    /// its principal (GRPC_TLS_BIND_SERVICE_IDENTITY).
    binding: Option<Arc<ServiceIdentityBinding>>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<TokenVerifier>, policy: Arc<MethodPolicy>) -> Self {
        Self {
            verifier,
            policy,
            binding: None,
        }
    }

    /// Binds tokens to the client certificate of their connection (`None`:
    /// no binding, as without mutual TLS).
    #[must_use]
    pub fn binding_service_identity(mut self, binding: Option<ServiceIdentityBinding>) -> Self {
        self.binding = binding.map(Arc::new);
        self
    }
}

layer_of_middleware!(AuthLayer);

/// The service produced by [`AuthLayer`].
pub type AuthService<S> = Layered<AuthLayer, S>;

impl AuthLayer {
    /// The principal for a call to `path` with these headers, over a
    /// connection whose client is `client` (`None`: not a TLS connection),
    /// or the status that refuses it.
    fn authorize(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        client: Option<&ClientIdentity>,
    ) -> Result<Principal, tonic::Status> {
        let principal = bearer_token(headers)
            .and_then(|token| self.verifier.verify(token))
            .map_err(|err| {
                tracing::debug!(method = path, reason = %err, "unauthenticated call rejected");
                tonic::Status::from(err)
            })?;
        if let Some(binding) = &self.binding
            && let Err(reason) = certificate_carries(binding, client, &principal)
        {
            tracing::warn!(
                method = path,
                token_subject = %principal.subject,
                token_role = %principal.role,
                client = %client.map_or_else(|| "not a TLS connection".to_owned(), ToString::to_string),
                remote_addr = ?client.and_then(ClientIdentity::remote_addr),
                "the token's principal is not the client certificate's: call refused"
            );
            return Err(tonic::Status::unauthenticated(reason));
        }
        let decision = self.policy.decide(path, &principal);
        if decision == Decision::Allowed {
            return Ok(principal);
        }
        tracing::info!(
            method = path,
            subject = %principal.subject,
            role = %principal.role,
            ?decision,
            "call denied by method policy"
        );
        let method = short_method_name(path);
        Err(tonic::Status::permission_denied(match decision {
            Decision::NotServed => format!("{method} is not served by this server"),
            _ if principal.role == super::Role::Service => {
                format!("service {} may not call {method}", principal.subject)
            }
            _ => format!("role {} may not call {method}", principal.role),
        }))
    }
}

impl<S, B> Middleware<S, B> for AuthLayer
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    fn call(&self, inner: &mut S, mut request: http::Request<B>) -> ResponseFuture<S::Error> {
        let path = request.uri().path();
        if !is_public_path(path) {
            let client = request.extensions().get::<ClientIdentity>();
            match self.authorize(path, request.headers(), client) {
                Ok(principal) => {
                    let method = path.to_owned();
                    request
                        .extensions_mut()
                        .insert(Caller { principal, method });
                }
                // The inner service stays ready (and unused) for the next call.
                Err(status) => return answer(status),
            }
        }
        // The decision is synchronous, so the inner service polled ready in
        // `poll_ready` is called right here: no clone-and-swap is needed
        // (that pattern is for calls made later, from inside a future).
        Box::pin(inner.call(request))
    }
}

/// Whether the client certificate of the call's connection may carry a
/// token of `principal` (GRPC_TLS_BIND_SERVICE_IDENTITY): a service's token
/// only from a certificate naming that service, a person's token only from
/// one that names no workload or one of the edge gateways. Err: why not,
/// for the caller.
fn certificate_carries(
    binding: &ServiceIdentityBinding,
    client: Option<&ClientIdentity>,
    principal: &Principal,
) -> Result<(), String> {
    let Some(client) = client.filter(|client| client.has_certificate()) else {
        return Err("no client certificate on this connection: tokens are bound to one".into());
    };
    if principal.role == Role::Service {
        if client.names(&principal.subject) {
            return Ok(());
        }
        return Err(format!(
            "{client} does not name service {}: a service's token is accepted only from its own certificate",
            principal.subject
        ));
    }
    if !client.names_a_workload()
        || binding
            .edge_gateways()
            .iter()
            .any(|gateway| client.names(gateway))
    {
        return Ok(());
    }
    Err(format!(
        "{client} names a workload that is not an edge gateway: it may carry only its own service token, \
         not a {} token",
        principal.role
    ))
}

/// The token of the single `authorization: Bearer <token>` header.
fn bearer_token(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingToken)?;
    if values.next().is_some() {
        return Err(AuthError::InvalidAuthorizationHeader);
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::InvalidAuthorizationHeader)?;
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if token.is_empty() || token.contains(char::is_whitespace) {
                Err(AuthError::InvalidAuthorizationHeader)
            } else {
                Ok(token)
            }
        }
        _ => Err(AuthError::InvalidAuthorizationHeader),
    }
}

/// The [`Caller`] that [`AuthLayer`] attached to `request`.
///
/// Returns `UNAUTHENTICATED` when there is none, e.g. when the layer is
/// missing from the server or the method is public.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("request is not authenticated"))
}

/// The [`Principal`] of [`caller`].
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    caller(request).map(|c| c.principal)
}

/// The `authorization` metadata value `Bearer <token>`, for clients and tests:
/// `request.metadata_mut().insert("authorization", bearer_metadata(&token))`.
///
/// # Panics
///
/// If `token` contains characters not allowed in a header value; JWTs never do.
pub fn bearer_metadata(token: &str) -> MetadataValue<Ascii> {
    MetadataValue::try_from(format!("Bearer {token}"))
        .expect("a bearer token must be printable ASCII")
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, time::Duration};

    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::auth::{AuthConfig, DEFAULT_ISSUER, TokenIssuer};

    const SECRET: &str = "0123456789abcdef-binding-secret";
    const RECORD_PENALTY: &str =
        "/tradeassurance.supplier.v1.SupplierRegistryService/RecordPenalty";

    /// The identity of a client whose certificate has these URI SANs (and a
    /// DNS name, as the platform's certificates do).
    fn client(uris: &[&str]) -> ClientIdentity {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().unwrap()));
        }
        ClientIdentity::of_certificate(params.self_signed(&key).unwrap().der())
    }

    fn service(name: &str) -> Principal {
        Principal {
            subject: name.to_owned(),
            role: Role::Service,
        }
    }

    fn buyer() -> Principal {
        Principal {
            subject: "buyer-1".to_owned(),
            role: Role::Buyer,
        }
    }

    #[test]
    fn a_service_token_passes_only_from_its_own_certificate() {
        let binding = ServiceIdentityBinding::default();
        let contract = client(&["spiffe://trade-assurance/contract"]);
        let carries = |client: &ClientIdentity, principal: &Principal| {
            certificate_carries(&binding, Some(client), principal)
        };

        assert_eq!(carries(&contract, &service("contract")), Ok(()));
        let refused = carries(&contract, &service("dispute")).unwrap_err();
        assert!(
            refused.contains("spiffe://trade-assurance/contract")
                && refused.contains("does not name service dispute"),
            "{refused}"
        );
        // A certificate naming no workload (the harness's, a back end's)
        // carries no service's token.
        let anonymous = client(&[]);
        assert!(carries(&anonymous, &service("contract")).is_err());
        // Only the convention's shape names a service.
        for other in [
            "spiffe://trade-assurance/ns/prod/sa/contract",
            "spiffe://Trade-Assurance/contract",
            "SPIFFE://trade-assurance/contract",
            "spiffe:///contract",
            "spiffe://trade-assurance/contract/",
            "https://trade-assurance/contract",
        ] {
            assert!(
                carries(&client(&[other]), &service("contract")).is_err(),
                "{other}"
            );
        }
        // No certificate at all, or not a TLS connection: nothing to bind to.
        let none = ClientIdentity::of_connection(None, None);
        assert!(carries(&none, &service("contract")).is_err());
        assert!(certificate_carries(&binding, None, &service("contract")).is_err());
        assert!(certificate_carries(&binding, None, &buyer()).is_err());
    }

    #[test]
    fn a_persons_token_passes_from_a_certificate_naming_no_workload_or_an_edge_gateway() {
        let contract = client(&["spiffe://trade-assurance/contract"]);
        let ingress = client(&["spiffe://trade-assurance/ingress"]);
        let anonymous = client(&[]);
        let http_uri = client(&["https://gateway.example/"]);
        let istio = client(&["spiffe://cluster.local/ns/edge/sa/ingress"]);

        let strict = ServiceIdentityBinding::default();
        assert_eq!(
            certificate_carries(&strict, Some(&anonymous), &buyer()),
            Ok(())
        );
        assert_eq!(
            certificate_carries(&strict, Some(&http_uri), &buyer()),
            Ok(())
        );
        let refused = certificate_carries(&strict, Some(&contract), &buyer()).unwrap_err();
        assert!(refused.contains("not a buyer token"), "{refused}");
        assert!(certificate_carries(&strict, Some(&ingress), &buyer()).is_err());
        assert!(certificate_carries(&strict, Some(&istio), &buyer()).is_err());

        let edge = ServiceIdentityBinding::new(&["ingress".to_owned()]);
        assert_eq!(certificate_carries(&edge, Some(&ingress), &buyer()), Ok(()));
        assert_eq!(
            certificate_carries(&edge, Some(&ingress), &service("ingress")),
            Ok(())
        );
        assert!(certificate_carries(&edge, Some(&ingress), &service("contract")).is_err());
        assert!(certificate_carries(&edge, Some(&contract), &buyer()).is_err());
        assert!(certificate_carries(&edge, Some(&istio), &buyer()).is_err());
    }

    /// The status of a call to RecordPenalty with `token` over a connection
    /// of `client`, and whether the inner service was reached.
    async fn call(
        binding: Option<ServiceIdentityBinding>,
        client: Option<ClientIdentity>,
        token: &str,
    ) -> (tonic::Code, bool) {
        let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::clone(&reached);
        let inner = tower::service_fn(move |_: http::Request<tonic::body::Body>| {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, Infallible>(tonic::Status::ok("").into_http()) }
        });
        let verifier =
            TokenVerifier::from_config(&AuthConfig::hs256(SECRET), "supplier-registry").unwrap();
        let policy = MethodPolicy::new()
            .allow(RECORD_PENALTY, &[Role::Buyer])
            .allow_services(RECORD_PENALTY, &["contract", "dispute"]);
        let service = AuthLayer::new(Arc::new(verifier), Arc::new(policy))
            .binding_service_identity(binding)
            .layer(inner);
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{RECORD_PENALTY}"))
            .header("content-type", "application/grpc")
            .header("authorization", format!("Bearer {token}"))
            .body(tonic::body::Body::default())
            .unwrap();
        if let Some(client) = client {
            request.extensions_mut().insert(client);
        }
        let response = service.oneshot(request).await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).expect("grpc-status");
        (
            status.code(),
            reached.load(std::sync::atomic::Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn the_layer_refuses_a_token_its_connection_does_not_stand_for() {
        let issuer = TokenIssuer::hs256(SECRET, DEFAULT_ISSUER);
        let mint = |subject: &str, role| {
            issuer
                .mint(subject, role, "supplier-registry", Duration::from_secs(600))
                .unwrap()
        };
        let contract = client(&["spiffe://trade-assurance/contract"]);
        let bound = || Some(ServiceIdentityBinding::default());

        let own = mint("contract", Role::Service);
        let dispute = mint("dispute", Role::Service);
        let buyer = mint("buyer-1", Role::Buyer);
        assert_eq!(
            call(bound(), Some(contract.clone()), &own).await,
            (tonic::Code::Ok, true)
        );
        assert_eq!(
            call(bound(), Some(contract.clone()), &dispute).await,
            (tonic::Code::Unauthenticated, false)
        );
        assert_eq!(
            call(bound(), Some(contract.clone()), &buyer).await,
            (tonic::Code::Unauthenticated, false)
        );
        assert_eq!(
            call(bound(), Some(client(&[])), &buyer).await,
            (tonic::Code::Ok, true)
        );
        // Bound, but the request carries no connection identity: refused.
        assert_eq!(
            call(bound(), None, &own).await,
            (tonic::Code::Unauthenticated, false)
        );
        // The token is checked first: a bad one is refused as before.
        assert_eq!(
            call(bound(), Some(contract.clone()), "not.a.jwt").await,
            (tonic::Code::Unauthenticated, false)
        );
        // Without binding (plaintext, TLS without client certificates,
        // GRPC_TLS_BIND_SERVICE_IDENTITY=false), the certificate is not looked at.
        assert_eq!(
            call(None, Some(contract.clone()), &dispute).await,
            (tonic::Code::Ok, true)
        );
        assert_eq!(call(None, None, &dispute).await, (tonic::Code::Ok, true));
    }
}
