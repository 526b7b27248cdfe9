//! Outgoing calls to other services: every call carries the caller's W3C trace
//! context and, when given, a bearer token.

use std::time::Duration;

use tonic::{
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
    transport::{Channel, Endpoint},
};

use crate::telemetry::inject_trace_context;

/// Adds `traceparent` (and `authorization` when a token is set) to each call.
/// Use with a generated client's `with_interceptor`.
#[derive(Clone, Default)]
pub struct OutgoingCall {
    authorization: Option<MetadataValue<Ascii>>,
}

impl OutgoingCall {
    pub fn with_bearer(token: &str) -> Result<Self, String> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not valid header text".to_string())?;
        Ok(Self {
            authorization: Some(value),
        })
    }
}

impl Interceptor for OutgoingCall {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_trace_context(request.metadata_mut());
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that connects on first use and reconnects by itself.
pub fn lazy_channel(url: &str, request_timeout: Duration) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("`{url}` is not a valid endpoint URL: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_calls_carry_the_bearer_token() {
        let mut call = OutgoingCall::with_bearer("abc.def.ghi").unwrap();
        let request = call.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer abc.def.ghi"
        );
    }

    #[test]
    fn endpoints_are_validated() {
        assert!(lazy_channel("not a url", Duration::from_secs(1)).is_err());
    }
}
