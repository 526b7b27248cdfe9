//! Load shedding: at most `limit` requests are served at once by the whole
//! process (not per connection: one busy client and a hundred idle ones share
//! one budget). A request above it is answered at once with UNAVAILABLE, the
//! code gRPC clients and our outbox relay treat as "retry, maybe elsewhere";
//! RESOURCE_EXHAUSTED would say the caller ran out of a quota, which is not so.
//! Health and reflection are not counted, so probes still answer under load.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::Semaphore;

use super::{ResponseFuture, answer};

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

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            permits: self.permits.clone(),
            limit: self.limit,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Admission<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
}

/// Probes and tooling, never shed.
fn is_exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

impl<S, B> tower::Service<http::Request<B>> for Admission<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if is_exempt(request.uri().path()) {
            return Box::pin(self.inner.call(request));
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
        let work = self.inner.call(request);
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
