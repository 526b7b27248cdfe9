//! The one `Stream...Events(after_sequence)` handler every feed serves.
//!
//! The feed RPCs differ only in their messages: each request carries
//! `after_sequence`, each event a `sequence` the stream sets from the feed's
//! numbering (the stored event's is meaningless, see [`Feed::append`]), and
//! each response wraps one event (escrow's also the appending transaction's
//! trace context); a heartbeat is an empty response. [`FeedRequest`] names
//! those messages for each feed, and [`serve`] is the handler.

use prost::Message;
use sqlx::PgPool;
use ta_proto::{contract, dispute, escrow, supplier};
use tonic::{Request, Response, Status};

use crate::{
    config::FeedConfig,
    feed::{EventStream, Feed},
};

/// The request of a feed's streaming RPC, and the messages it streams.
pub trait FeedRequest {
    /// The event the service appends to the feed.
    type Event: Message + Default + 'static;
    /// One message of the stream; its default is the heartbeat.
    type Response: Default + Send + 'static;

    /// The last sequence the consumer processed.
    fn after_sequence(&self) -> u64;

    /// The response carrying `event`, numbered `sequence`, appended under
    /// the trace context `traceparent`.
    fn respond(event: Self::Event, sequence: u64, traceparent: Option<String>) -> Self::Response;
}

/// Serves a feed's `Stream...Events` RPC over `feed`: every event after the
/// request's `after_sequence`, then live ones, with heartbeats (see
/// [`Feed::stream_events`]), within the feed's limits of open streams
/// ([`Feed::open_stream`]).
///
/// # Errors
/// A limit of open streams is reached, or the request has no caller.
pub fn serve<Q: FeedRequest>(
    feed: &Feed,
    pool: PgPool,
    config: &FeedConfig,
    request: Request<Q>,
) -> Result<Response<EventStream<Q::Response>>, Status> {
    let principal = ta_runtime::auth::principal(&request)?;
    let open = feed.open_stream(&format!("{}:{}", principal.role, principal.subject), config)?;
    let after = request.get_ref().after_sequence();
    Ok(Response::new(
        feed.stream_events(pool, after, config, Q::respond, Q::Response::default)
            .holding(open),
    ))
}

impl FeedRequest for escrow::StreamEscrowEventsRequest {
    type Event = escrow::EscrowEvent;
    type Response = escrow::StreamEscrowEventsResponse;

    fn after_sequence(&self) -> u64 {
        self.after_sequence
    }

    fn respond(
        mut event: Self::Event,
        sequence: u64,
        traceparent: Option<String>,
    ) -> Self::Response {
        event.sequence = sequence;
        escrow::StreamEscrowEventsResponse {
            event: Some(event),
            traceparent: traceparent.unwrap_or_default(),
        }
    }
}

impl FeedRequest for contract::StreamContractEventsRequest {
    type Event = contract::ContractEvent;
    type Response = contract::StreamContractEventsResponse;

    fn after_sequence(&self) -> u64 {
        self.after_sequence
    }

    fn respond(mut event: Self::Event, sequence: u64, _: Option<String>) -> Self::Response {
        event.sequence = sequence;
        contract::StreamContractEventsResponse { event: Some(event) }
    }
}

impl FeedRequest for dispute::StreamDisputeEventsRequest {
    type Event = dispute::DisputeEvent;
    type Response = dispute::StreamDisputeEventsResponse;

    fn after_sequence(&self) -> u64 {
        self.after_sequence
    }

    fn respond(mut event: Self::Event, sequence: u64, _: Option<String>) -> Self::Response {
        event.sequence = sequence;
        dispute::StreamDisputeEventsResponse { event: Some(event) }
    }
}

impl FeedRequest for supplier::StreamSupplierEventsRequest {
    type Event = supplier::SupplierEvent;
    type Response = supplier::StreamSupplierEventsResponse;

    fn after_sequence(&self) -> u64 {
        self.after_sequence
    }

    fn respond(mut event: Self::Event, sequence: u64, _: Option<String>) -> Self::Response {
        event.sequence = sequence;
        supplier::StreamSupplierEventsResponse { event: Some(event) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use ta_runtime::auth::{Caller, Principal, Role};
    use tonic::Code;

    use super::*;
    use crate::Schema;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        feed: FeedConfig,
    }

    fn limits(per_caller: &str, total: &str) -> FeedConfig {
        Cli::try_parse_from([
            "test",
            "--workflow-feed-max-streams-per-caller",
            per_caller,
            "--workflow-feed-max-streams",
            total,
        ])
        .expect("valid limits")
        .feed
    }

    fn request(subject: &str, role: Role) -> Request<escrow::StreamEscrowEventsRequest> {
        let mut request = Request::new(escrow::StreamEscrowEventsRequest { after_sequence: 0 });
        request.extensions_mut().insert(Caller {
            principal: Principal {
                subject: subject.to_owned(),
                role,
            },
            method: "/tradeassurance.escrow.v1.EscrowService/StreamEscrowEvents".to_owned(),
        });
        request
    }

    fn code<T>(answer: Result<T, Status>) -> Option<Code> {
        answer.err().map(|status| status.code())
    }

    /// No database is reached: a refused stream is refused before it starts,
    /// and an admitted one is dropped before its first read.
    #[tokio::test]
    async fn open_streams_are_bounded_per_caller_and_per_process() {
        let feed = Feed::new(Schema::new("escrow").unwrap(), "escrow");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(10))
            .connect_lazy("postgres://nobody@127.0.0.1:9/none")
            .unwrap();
        let config = limits("2", "3");
        let open = |subject, role| serve(&feed, pool.clone(), &config, request(subject, role));

        let first = open("contract", Role::Service).expect("first stream");
        let second = open("contract", Role::Service).expect("second stream");
        let third = open("contract", Role::Service);
        assert_eq!(
            code(third),
            Some(Code::ResourceExhausted),
            "the caller's quota"
        );
        // The same subject in another role is another caller.
        let platform = open("contract", Role::Platform).expect("another caller");
        assert_eq!(
            code(open("ops-1", Role::Platform)),
            Some(Code::Unavailable),
            "the process's limit"
        );

        drop(second);
        let again = open("contract", Role::Service).expect("a place freed by a closed stream");
        drop((first, again, platform));
        for _ in 0..2 {
            std::mem::forget(open("ops-1", Role::Platform).expect("all places free again"));
        }
        assert!(
            open("ops-1", Role::Platform).is_err(),
            "forgotten streams stay counted"
        );
    }

    #[test]
    fn a_call_without_a_caller_is_unauthenticated() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _guard = runtime.enter();
        let feed = Feed::new(Schema::new("escrow").unwrap(), "escrow");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:9/none")
            .unwrap();
        let request = Request::new(escrow::StreamEscrowEventsRequest { after_sequence: 0 });
        assert_eq!(
            code(serve(&feed, pool, &limits("2", "3"), request)),
            Some(Code::Unauthenticated)
        );
    }
}
