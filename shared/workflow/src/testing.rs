//! A stand-in for another service in a service's own tests (feature
//! `testing`): it serves every unary method of one gRPC service on loopback,
//! answers each with what the test says (UNIMPLEMENTED until told), and keeps
//! every request it received. The outbox relay and a service's reads call it
//! like the real peer, so a test drives a service through its calls, their
//! answers and its reactions without the other binaries.

use std::{
    collections::HashMap,
    marker::PhantomData,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use prost::Message;
use tokio::{net::TcpListener, sync::oneshot};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    Status,
    codegen::{BoxFuture, Service, http},
    server::NamedService,
};

use crate::raw::RawCodec;

/// The gRPC service a fake stands in for.
pub trait Named: Send + Sync + 'static {
    /// e.g. `tradeassurance.escrow.v1.EscrowService`.
    const NAME: &'static str;
}

/// escrow's `EscrowService`.
pub struct Escrow;
impl Named for Escrow {
    const NAME: &'static str = "tradeassurance.escrow.v1.EscrowService";
}

/// contract's `ContractService`.
pub struct Contract;
impl Named for Contract {
    const NAME: &'static str = "tradeassurance.contract.v1.ContractService";
}

/// supplier-registry's `SupplierRegistryService`.
pub struct Registry;
impl Named for Registry {
    const NAME: &'static str = "tradeassurance.supplier.v1.SupplierRegistryService";
}

type Answer = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, Status> + Send + Sync>;

#[derive(Default)]
struct State {
    answers: Mutex<HashMap<String, Answer>>,
    received: Mutex<Vec<(String, Vec<u8>)>>,
}

/// A fake peer serving on loopback until dropped.
pub struct FakePeer {
    pub address: SocketAddr,
    state: Arc<State>,
    _stop: oneshot::Sender<()>,
}

impl FakePeer {
    /// Serves the methods of `N` on a free loopback port.
    pub async fn start<N: Named>() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        let state = Arc::new(State::default());
        let service = FakeService::<N> {
            state: state.clone(),
            _name: PhantomData,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            address,
            state,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:<port>`, for a service's `..._URL` setting.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Answers `method` (its name alone, e.g. `ReleaseToSupplier`) with
    /// `answer`, replacing what it answered before.
    pub fn answer<Q, R>(
        &self,
        method: &str,
        answer: impl Fn(Q) -> Result<R, Status> + Send + Sync + 'static,
    ) where
        Q: Message + Default,
        R: Message,
    {
        let answer: Answer = Arc::new(move |bytes: &[u8]| {
            let request = Q::decode(bytes)
                .map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))?;
            answer(request).map(|response| response.encode_to_vec())
        });
        self.state
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(method.to_owned(), answer);
    }

    /// Every request `method` received, oldest first (retries included).
    pub fn requests<Q: Message + Default>(&self, method: &str) -> Vec<Q> {
        self.state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(m, _)| m == method)
            .filter_map(|(_, bytes)| Q::decode(bytes.as_slice()).ok())
            .collect()
    }
}

struct FakeService<N> {
    state: Arc<State>,
    _name: PhantomData<fn() -> N>,
}

impl<N> Clone for FakeService<N> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            _name: PhantomData,
        }
    }
}

impl<N: Named> NamedService for FakeService<N> {
    const NAME: &'static str = N::NAME;
}

impl<N: Named, B> Service<http::Request<B>> for FakeService<N>
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let unary = Unary {
            state: self.state.clone(),
            method,
        };
        Box::pin(async move {
            Ok(tonic::server::Grpc::new(RawCodec)
                .unary(unary, request)
                .await)
        })
    }
}

struct Unary {
    state: Arc<State>,
    method: String,
}

impl tonic::server::UnaryService<Vec<u8>> for Unary {
    type Response = Vec<u8>;
    type Future = BoxFuture<tonic::Response<Vec<u8>>, Status>;

    fn call(&mut self, request: tonic::Request<Vec<u8>>) -> Self::Future {
        let bytes = request.into_inner();
        self.state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((self.method.clone(), bytes.clone()));
        let answer = self
            .state
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&self.method)
            .cloned();
        let method = self.method.clone();
        Box::pin(async move {
            match answer {
                Some(answer) => answer(&bytes).map(tonic::Response::new),
                // Like a peer that is not there yet: the relay retries it.
                None => Err(Status::unavailable(format!(
                    "the fake peer was not told how to answer {method}"
                ))),
            }
        })
    }
}
