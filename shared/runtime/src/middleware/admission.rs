//! Load shedding: at most `limit` requests are served at once by the whole
//! process (not per connection: one busy client and a hundred idle ones share
//! one budget). A request above it is answered at once with UNAVAILABLE, the
//! code gRPC clients and our outbox relay treat as "retry, maybe elsewhere";
//! RESOURCE_EXHAUSTED would say the caller ran out of a quota, which is not so.
//! Health and reflection are not counted, so probes still answer under load.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{Middleware, ResponseFuture, answer, layer_of_middleware};

#[derive(Clone, Debug)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl AdmissionLayer {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

layer_of_middleware!(AdmissionLayer);

/// Probes and tooling, never shed.
fn is_exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

impl<S, B> Middleware<S, B> for AdmissionLayer
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    fn call(&self, inner: &mut S, request: http::Request<B>) -> ResponseFuture<S::Error> {
        if is_exempt(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::warn!(
                method = request.uri().path(),
                limit = self.limit,
                "request shed: concurrency limit reached"
            );
            return answer(tonic::Status::unavailable(format!(
                "the server is at its limit of {} requests at once; retry with backoff",
                self.limit
            )));
        };
        let work = inner.call(request);
        Box::pin(async move {
            let response = work.await;
            drop(permit);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, time::Duration};

    use tower::{Layer, Service, ServiceExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn above_the_limit_requests_are_shed_with_unavailable() {
        let (release, released) = tokio::sync::watch::channel(false);
        let inner = tower::service_fn(move |_request: http::Request<()>| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|done| *done).await;
                Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        let mut service = AdmissionLayer::new(2).layer(inner);
        let request = || {
            http::Request::builder()
                .uri("/tradeassurance.supplier.v1.SupplierRegistryService/GetSupplier")
                .body(())
                .unwrap()
        };
        let first = tokio::spawn(service.ready().await.unwrap().call(request()));
        let second = tokio::spawn(service.ready().await.unwrap().call(request()));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let shed = service
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
        assert_eq!(shed.headers()["grpc-status"], "14");
        let health = http::Request::builder()
            .uri("/grpc.health.v1.Health/Check")
            .body(())
            .unwrap();
        let probe = tokio::spawn(service.ready().await.unwrap().call(health));
        release.send(true).unwrap();
        for done in [first, second, probe] {
            let response = done.await.unwrap().unwrap();
            assert!(response.headers().get("grpc-status").is_none());
        }
        let after = service
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
        assert!(
            after.headers().get("grpc-status").is_none(),
            "permits come back"
        );
    }
}
