//! Statuses tonic produces itself before a handler runs, answered the way our
//! API promises. tonic reports an undecodable request (bad wire bytes, invalid
//! UTF-8 in a string field) as INTERNAL carrying the decoder's text, and an
//! oversized one as OUT_OF_RANGE; both are the caller's fault, not ours. They
//! become INVALID_ARGUMENT and RESOURCE_EXHAUSTED with a short message, and the
//! detail goes to the log. This wraps every service of the process (health and
//! reflection too), so no service can forget it.

use tonic::Code;

use super::{Middleware, ResponseFuture, layer_of_middleware};

/// prost's `DecodeError` display starts so; tonic-prost puts it in INTERNAL.
const DECODE_ERROR_PREFIX: &str = "failed to decode Protobuf message";
/// tonic's decoder reports a frame above the size limit so.
const TOO_LARGE_PREFIX: &str = "Error, decoded message length too large";

#[derive(Clone, Copy, Debug, Default)]
pub struct StatusHygieneLayer;

layer_of_middleware!(StatusHygieneLayer);

impl<S, B> Middleware<S, B> for StatusHygieneLayer
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    fn call(&self, inner: &mut S, request: http::Request<B>) -> ResponseFuture<S::Error> {
        let method = request.uri().path().to_owned();
        let work = inner.call(request);
        Box::pin(async move {
            let response = work.await?;
            Ok(match rewrite(&response) {
                Some(status) => {
                    tracing::warn!(
                        %method,
                        code = ?status.code(),
                        detail = original_message(&response),
                        "request refused before its handler ran"
                    );
                    status.into_http()
                }
                None => response,
            })
        })
    }
}

/// The status to answer instead of the one in `response`'s headers, if any.
/// Only trailers-only answers (status in the headers) can come from tonic's
/// request decoding, which happens before any response message.
fn rewrite(response: &http::Response<tonic::body::Body>) -> Option<tonic::Status> {
    let code = response.headers().get("grpc-status")?.to_str().ok()?;
    let message = original_message(response);
    match code.parse::<i32>().ok().map(Code::from) {
        Some(Code::Internal) if message.starts_with(DECODE_ERROR_PREFIX) => {
            Some(tonic::Status::invalid_argument(
                "the request is not a valid protobuf encoding of the method's request message",
            ))
        }
        Some(Code::OutOfRange) if message.starts_with(TOO_LARGE_PREFIX) => {
            Some(tonic::Status::resource_exhausted(
                "the request message is larger than this server accepts (GRPC_MAX_MESSAGE_BYTES)",
            ))
        }
        _ => None,
    }
}

/// The `grpc-message` header, percent-decoded as far as the prefixes need
/// (they contain no escaped characters).
fn original_message(response: &http::Response<tonic::body::Body>) -> String {
    response
        .headers()
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, ServiceExt};

    use super::*;

    async fn answer_with(status: tonic::Status) -> http::Response<tonic::body::Body> {
        let inner = tower::service_fn(move |_request: http::Request<()>| {
            let status = status.clone();
            async move { Ok::<_, Infallible>(status.into_http()) }
        });
        StatusHygieneLayer
            .layer(inner)
            .oneshot(http::Request::new(()))
            .await
            .unwrap()
    }

    fn code_of(response: &http::Response<tonic::body::Body>) -> &str {
        response.headers()["grpc-status"].to_str().unwrap()
    }

    #[tokio::test]
    async fn a_decode_error_is_invalid_argument_without_the_decoder_text() {
        let response = answer_with(tonic::Status::internal(
            "failed to decode Protobuf message: SupplierId.value: invalid string value: data is not UTF-8 encoded",
        ))
        .await;
        assert_eq!(code_of(&response), "3");
        assert!(!original_message(&response).contains("SupplierId"));
    }

    #[tokio::test]
    async fn an_oversized_request_is_resource_exhausted() {
        let response = answer_with(tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        ))
        .await;
        assert_eq!(code_of(&response), "8");
    }

    #[tokio::test]
    async fn other_statuses_pass_untouched() {
        for status in [
            tonic::Status::internal("internal error; trace id 0af7651916cd43dd8448eb211c80319c"),
            tonic::Status::out_of_range("page 9 is past the end"),
            tonic::Status::not_found("supplier s-1 not found"),
        ] {
            let code = status.code();
            let response = answer_with(status).await;
            assert_eq!(code_of(&response), (code as i32).to_string());
        }
    }
}
