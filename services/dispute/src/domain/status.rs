//! The claim's life as a state machine.
//!
//! Each action, by the state it is taken in; `-` is refused with
//! FAILED_PRECONDITION naming the current state. Refused, settled, decided
//! and withdrawn are final: a withdrawn claim cannot be reopened.
//!
//! A claim is filed `opening`: the contract is asked (it decides, so a claim
//! and an acceptance never both win) and escrow frozen; then it negotiates, or
//! is refused with the contract's reason.
//!
//! | action                        | opening     | negotiating | escalated | refused | settled | decided | withdrawn |
//! |-------------------------------|-------------|-------------|-----------|---------|---------|---------|-----------|
//! | opened (contract, escrow)     | negotiating | -           | -         | -       | -       | -       | -         |
//! | refuse (contract)             | refused     | -           | -         | -       | -       | -       | -         |
//! | make offer (supplier)         | -           | negotiating | -         | -       | -       | -       | -         |
//! | reject claim (supplier)       | -           | negotiating | -         | -       | -       | -       | -         |
//! | reject offer (buyer)          | -           | negotiating | -         | -       | -       | -       | -         |
//! | accept offer (buyer)          | -           | settled     | -         | -       | -       | -       | -         |
//! | escalate (buyer, after window)| -           | escalated   | -         | -       | -       | -       | -         |
//! | escalate (operator, any time) | -           | escalated   | -         | -       | -       | -       | -         |
//! | escalate (timer)              | -           | escalated   | -         | -       | -       | -       | -         |
//! | decide (arbiter)              | -           | -           | decided   | -       | -       | -       | -         |
//! | withdraw (buyer)              | -           | withdrawn   | withdrawn | -       | -       | -       | -         |
//!
//! Whether the buyer's escalation is due yet is the claim's rule (see
//! `claim::Claim::escalate`), not the table's: the table says where an
//! escalation may happen at all.

use ta_runtime::ServiceError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Opening,
    Negotiating,
    Escalated,
    Settled,
    Decided,
    Withdrawn,
    Refused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Opened,
    Refuse,
    MakeOffer,
    RejectClaim,
    RejectOffer,
    AcceptOffer,
    Escalate,
    Decide,
    Withdraw,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Opening,
        Status::Negotiating,
        Status::Escalated,
        Status::Settled,
        Status::Decided,
        Status::Withdrawn,
        Status::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Opening => "opening",
            Status::Negotiating => "negotiating",
            Status::Escalated => "escalated",
            Status::Settled => "settled",
            Status::Decided => "decided",
            Status::Withdrawn => "withdrawn",
            Status::Refused => "refused",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Settled | Status::Decided | Status::Withdrawn | Status::Refused
        )
    }

    /// The state an action leads to, or why it is refused here.
    pub fn next(self, action: Action) -> Result<Status, ServiceError> {
        use Action as A;
        use Status as S;
        match (action, self) {
            (A::Opened, S::Opening) => Ok(S::Negotiating),
            (A::Refuse, S::Opening) => Ok(S::Refused),
            (A::MakeOffer | A::RejectClaim | A::RejectOffer, S::Negotiating) => Ok(S::Negotiating),
            (A::AcceptOffer, S::Negotiating) => Ok(S::Settled),
            (A::Escalate, S::Negotiating) => Ok(S::Escalated),
            (A::Decide, S::Escalated) => Ok(S::Decided),
            (A::Withdraw, S::Negotiating | S::Escalated) => Ok(S::Withdrawn),
            (action, from) => Err(ServiceError::FailedPrecondition(format!(
                "the claim is {}: {} is not possible in that state",
                from.as_str(),
                action.describe()
            ))),
        }
    }
}

impl Action {
    pub const ALL: [Action; 9] = [
        Action::Opened,
        Action::Refuse,
        Action::MakeOffer,
        Action::RejectClaim,
        Action::RejectOffer,
        Action::AcceptOffer,
        Action::Escalate,
        Action::Decide,
        Action::Withdraw,
    ];

    fn describe(self) -> &'static str {
        match self {
            Action::Opened => "opening",
            Action::Refuse => "refusing",
            Action::MakeOffer => "making an offer",
            Action::RejectClaim => "rejecting the claim",
            Action::RejectOffer => "rejecting the offer",
            Action::AcceptOffer => "accepting the offer",
            Action::Escalate => "escalating",
            Action::Decide => "deciding",
            Action::Withdraw => "withdrawing",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Action as A, Status as S, *};

    /// The module doc's table, as data: (action, from, to).
    const ALLOWED: &[(A, S, S)] = &[
        (A::Opened, S::Opening, S::Negotiating),
        (A::Refuse, S::Opening, S::Refused),
        (A::MakeOffer, S::Negotiating, S::Negotiating),
        (A::RejectClaim, S::Negotiating, S::Negotiating),
        (A::RejectOffer, S::Negotiating, S::Negotiating),
        (A::AcceptOffer, S::Negotiating, S::Settled),
        (A::Escalate, S::Negotiating, S::Escalated),
        (A::Decide, S::Escalated, S::Decided),
        (A::Withdraw, S::Negotiating, S::Withdrawn),
        (A::Withdraw, S::Escalated, S::Withdrawn),
    ];

    #[test]
    fn every_action_in_every_state_follows_the_table() {
        for action in A::ALL {
            for from in S::ALL {
                let want = ALLOWED
                    .iter()
                    .find(|(a, f, _)| *a == action && *f == from)
                    .map(|(_, _, to)| *to);
                match (from.next(action), want) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{action:?} from {from:?}"),
                    (Err(ServiceError::FailedPrecondition(message)), None) => {
                        assert!(message.contains(from.as_str()), "{message}");
                    }
                    (got, want) => panic!("{action:?} from {from:?}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn final_states_take_no_action_and_names_round_trip() {
        for from in S::ALL {
            assert_eq!(S::parse(from.as_str()), Some(from));
            if from.is_final() {
                assert!(
                    A::ALL.into_iter().all(|a| from.next(a).is_err()),
                    "{from:?}"
                );
            }
        }
    }
}
