//! The tower layer that authenticates and authorizes every gRPC call, and the
//! helpers handlers and clients use with it.

use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};

use crate::middleware::{Layered, Middleware, ResponseFuture, answer, layer_of_middleware};

use super::{
    Caller, Principal,
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
}

impl AuthLayer {
    pub fn new(verifier: Arc<TokenVerifier>, policy: Arc<MethodPolicy>) -> Self {
        Self { verifier, policy }
    }
}

layer_of_middleware!(AuthLayer);

/// The service produced by [`AuthLayer`].
pub type AuthService<S> = Layered<AuthLayer, S>;

impl AuthLayer {
    /// The principal for a call to `path` with these headers, or the status
    /// that refuses it.
    fn authorize(&self, path: &str, headers: &http::HeaderMap) -> Result<Principal, tonic::Status> {
        let principal = bearer_token(headers)
            .and_then(|token| self.verifier.verify(token))
            .map_err(|err| {
                tracing::debug!(method = path, reason = %err, "unauthenticated call rejected");
                tonic::Status::from(err)
            })?;
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
            match self.authorize(path, request.headers()) {
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
