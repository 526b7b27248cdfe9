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
use ta_proto::{contract, dispute, escrow};
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
/// [`Feed::stream_events`]).
///
/// # Errors
/// None today; the `Result` is the handler's, so a service returns it as is.
pub fn serve<Q: FeedRequest>(
    feed: &Feed,
    pool: PgPool,
    config: &FeedConfig,
    request: Request<Q>,
) -> Result<Response<EventStream<Q::Response>>, Status> {
    let after = request.get_ref().after_sequence();
    Ok(Response::new(feed.stream_events(
        pool,
        after,
        config,
        Q::respond,
        Q::Response::default,
    )))
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
