//! Request deadlines: the caller's `grpc-timeout`, capped by the server's own
//! limit. A request past its deadline is answered DEADLINE_EXCEEDED (tonic's
//! built-in timeout answers CANCELLED, which clients do not treat as a
//! deadline) and its work is dropped, which rolls back any open transaction.
//!
//! Dropping the work is not enough for Postgres: a statement waiting on a row
//! lock would keep waiting (and keep its connection and its uncommitted rows)
//! after we stopped listening. So the deadline is also made visible to the
//! request's code ([`remaining_budget`]), and `db::begin` turns it into the
//! transaction's `statement_timeout` and `lock_timeout`.

use std::time::Duration;

use tokio::time::Instant;

use super::{Middleware, ResponseFuture, layer_of_middleware};

tokio::task_local! {
    /// When the request being served must be answered.
    static DEADLINE: Instant;
}

/// The time left before the current request's deadline; `None` outside a
/// request (background work).
pub fn remaining_budget() -> Option<Duration> {
    DEADLINE
        .try_with(|deadline| deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// Gives every request its deadline (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    limit: Duration,
}

impl DeadlineLayer {
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

layer_of_middleware!(DeadlineLayer);

impl<S, B> Middleware<S, B> for DeadlineLayer
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    fn call(&self, inner: &mut S, request: http::Request<B>) -> ResponseFuture<S::Error> {
        let budget = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(self.limit, |asked| asked.min(self.limit));
        let deadline = Instant::now() + budget;
        let work = inner.call(request);
        Box::pin(DEADLINE.scope(deadline, async move {
            match tokio::time::timeout_at(deadline, work).await {
                Ok(result) => result,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "deadline of {budget:?} exceeded"
                ))
                .into_http()),
            }
        }))
    }
}

/// `grpc-timeout` is 1-8 digits and a unit: H, M, S, m (milli), u (micro), n (nano).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3_600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, ServiceExt};

    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7_200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    /// A handler that would answer in an hour.
    async fn slow(
        _request: http::Request<()>,
    ) -> Result<http::Response<tonic::body::Body>, Infallible> {
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        Ok(http::Response::new(tonic::body::Body::empty()))
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> &str {
        response.headers()["grpc-status"].to_str().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_server_limit_ends_slow_requests_with_deadline_exceeded() {
        let service = DeadlineLayer::new(Duration::from_secs(30)).layer(tower::service_fn(slow));
        let response = service.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(grpc_status(&response), "4");
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_sees_its_remaining_budget() {
        async fn report(
            _request: http::Request<()>,
        ) -> Result<http::Response<tonic::body::Body>, Infallible> {
            let left = remaining_budget().expect("inside a request");
            let mut response = http::Response::new(tonic::body::Body::empty());
            response
                .headers_mut()
                .insert("left-ms", left.as_millis().to_string().parse().unwrap());
            Ok(response)
        }
        let service = DeadlineLayer::new(Duration::from_secs(30)).layer(tower::service_fn(report));
        let request = http::Request::builder()
            .header("grpc-timeout", "800m")
            .body(())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.headers()["left-ms"], "800");
        assert_eq!(
            remaining_budget(),
            None,
            "outside a request there is no deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_caller_deadline_wins() {
        let service = DeadlineLayer::new(Duration::from_secs(30)).layer(tower::service_fn(slow));
        let request = http::Request::builder()
            .header("grpc-timeout", "100m")
            .body(())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(grpc_status(&response), "4");
        let message = response.headers()["grpc-message"].to_str().unwrap();
        assert!(message.contains("100ms"), "{message}");
    }
}
