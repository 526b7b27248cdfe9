//! Every request the clients sent and every answer they got, in order,
//! each under its operation (one idempotency key: the first try and its
//! retries) and the entities it touches (contract, escrow account), so a
//! violation can be shown with the operations that lead to it and nothing
//! else.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

/// One line of the history.
#[derive(Clone, Debug)]
pub struct Event {
    /// Milliseconds since the run started.
    pub at_ms: u64,
    pub client: usize,
    /// The RPC (short name) or the wait.
    pub call: String,
    pub key: String,
    /// The contract and escrow account concerned, as far as known.
    pub entities: Vec<String>,
    pub attempt: u32,
    /// What was sent (a summary).
    pub request: String,
    /// What came back (a summary): `OK ...`, a status code, or the fault
    /// that took the answer away.
    pub answer: String,
    /// Whether this answer is the client's final one for the operation.
    pub fin: bool,
}

/// The shared, append-only history of a run.
#[derive(Clone)]
pub struct History {
    started: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl History {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn record(&self, mut event: Event) {
        event.at_ms = self.now_ms();
        self.events.lock().expect("not poisoned").push(event);
    }

    pub fn len(&self) -> usize {
        self.events.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every event, in order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("not poisoned").clone()
    }

    /// The shortest history that shows a violation about `entity`: the
    /// events touching it, in order.
    pub fn about(&self, entity: &str) -> Vec<Event> {
        self.events
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|e| e.entities.iter().any(|x| x == entity))
            .cloned()
            .collect()
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>8} ms client {:>2} {:<22} key {:<40} try {} {} -> {}{}",
            self.at_ms,
            self.client,
            self.call,
            self.key,
            self.attempt,
            self.request,
            self.answer,
            if self.fin { " [final]" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(call: &str, entities: &[&str]) -> Event {
        Event {
            at_ms: 0,
            client: 0,
            call: call.into(),
            key: "k".into(),
            entities: entities.iter().map(|e| (*e).to_owned()).collect(),
            attempt: 1,
            request: String::new(),
            answer: "OK".into(),
            fin: true,
        }
    }

    #[test]
    fn the_history_of_an_entity_holds_its_events_in_order_and_no_other() {
        let h = History::new(Instant::now());
        h.record(event("FundEscrow", &["acc-1"]));
        h.record(event("FundEscrow", &["acc-2"]));
        h.record(event("ReleaseToSupplier", &["c-1", "acc-1"]));
        let about: Vec<String> = h.about("acc-1").into_iter().map(|e| e.call).collect();
        assert_eq!(about, ["FundEscrow", "ReleaseToSupplier"]);
        assert_eq!(h.len(), 3);
    }
}
