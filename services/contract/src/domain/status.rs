//! The contract's life as a state machine.
//!
//! Each action, by the state it is taken in; `-` is refused with
//! FAILED_PRECONDITION naming the current state. `prior` is the state a
//! claim interrupted (kept as `status_before_dispute`).
//!
//! | action                  | from                                         | to                  |
//! |-------------------------|----------------------------------------------|---------------------|
//! | revise                  | draft, awaiting_signatures                   | draft               |
//! | sign (first party)      | draft                                        | awaiting_signatures |
//! | sign (second, protected)| awaiting_signatures                          | activating          |
//! | sign (second, unprotected)| awaiting_signatures                        | signed_unprotected  |
//! | activated               | activating                                   | awaiting_payment    |
//! | activation refused      | activating                                   | draft               |
//! | payment received        | awaiting_payment, partially_funded           | partially_funded    |
//! | fully funded            | awaiting_payment, partially_funded           | funded              |
//! | more due (amendment)    | funded                                       | partially_funded    |
//! | ship                    | funded, signed_unprotected                   | shipped             |
//! | confirm receipt         | shipped                                      | delivered           |
//! | accept                  | shipped, delivered                           | completed           |
//! | open claim              | partially_funded, funded, shipped, delivered | in_dispute          |
//! | resume                  | in_dispute                                   | prior               |
//! | claim settled on goods  | in_dispute (prior shipped or delivered)      | completed           |
//! | full refund             | in_dispute                                   | refunded            |
//! | cancel                  | draft, awaiting_signatures, awaiting_payment, partially_funded, funded, signed_unprotected | cancelled |
//!
//! `activating` is the moment between the second signature and supplier
//! registry's answer to the cover reservation (delivered by the outbox): the
//! contract is not payable until cover is really reserved, and a refusal puts
//! it back to draft with the registry's reason, so nothing stays half-done.
//! Completed, cancelled and refunded are terminal.

use ta_runtime::ServiceError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Draft,
    AwaitingSignatures,
    Activating,
    AwaitingPayment,
    PartiallyFunded,
    Funded,
    SignedUnprotected,
    Shipped,
    Delivered,
    Completed,
    InDispute,
    Cancelled,
    Refunded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Revise,
    SignFirst,
    SignSecondProtected,
    SignSecondUnprotected,
    Activated,
    ActivationRefused,
    PaymentReceived,
    FullyFunded,
    /// A signed amendment raised the total: more money is due.
    MoreDue,
    Ship,
    ConfirmReceipt,
    Accept,
    OpenClaim,
    /// A claim withdrawn, or settled before the goods were received: back to
    /// where the claim interrupted.
    Resume {
        prior: Status,
    },
    /// A claim on received goods ended in a partial refund or for the
    /// supplier: the goods count as accepted.
    ClaimSettledOnGoods {
        prior: Status,
    },
    FullRefund,
    Cancel,
}

impl Status {
    pub const ALL: [Status; 13] = [
        Status::Draft,
        Status::AwaitingSignatures,
        Status::Activating,
        Status::AwaitingPayment,
        Status::PartiallyFunded,
        Status::Funded,
        Status::SignedUnprotected,
        Status::Shipped,
        Status::Delivered,
        Status::Completed,
        Status::InDispute,
        Status::Cancelled,
        Status::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::AwaitingSignatures => "awaiting_signatures",
            Status::Activating => "activating",
            Status::AwaitingPayment => "awaiting_payment",
            Status::PartiallyFunded => "partially_funded",
            Status::Funded => "funded",
            Status::SignedUnprotected => "signed_unprotected",
            Status::Shipped => "shipped",
            Status::Delivered => "delivered",
            Status::Completed => "completed",
            Status::InDispute => "in_dispute",
            Status::Cancelled => "cancelled",
            Status::Refunded => "refunded",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Cancelled | Status::Refunded
        )
    }

    /// Money sits in escrow (a claim can freeze it).
    pub fn holds_money(self) -> bool {
        matches!(
            self,
            Status::PartiallyFunded | Status::Funded | Status::Shipped | Status::Delivered
        )
    }

    /// The state an action leads to, or why it is refused here.
    pub fn next(self, action: Action) -> Result<Status, ServiceError> {
        use Action as A;
        use Status as S;
        let to = match (action, self) {
            (A::Revise, S::Draft | S::AwaitingSignatures) => S::Draft,
            (A::SignFirst, S::Draft) => S::AwaitingSignatures,
            (A::SignSecondProtected, S::AwaitingSignatures) => S::Activating,
            (A::SignSecondUnprotected, S::AwaitingSignatures) => S::SignedUnprotected,
            (A::Activated, S::Activating) => S::AwaitingPayment,
            (A::ActivationRefused, S::Activating) => S::Draft,
            (A::PaymentReceived, S::AwaitingPayment | S::PartiallyFunded) => S::PartiallyFunded,
            (A::FullyFunded, S::AwaitingPayment | S::PartiallyFunded) => S::Funded,
            (A::MoreDue, S::Funded) => S::PartiallyFunded,
            (A::Ship, S::Funded | S::SignedUnprotected) => S::Shipped,
            (A::ConfirmReceipt, S::Shipped) => S::Delivered,
            (A::Accept, S::Shipped | S::Delivered) => S::Completed,
            (A::OpenClaim, from) if from.holds_money() => S::InDispute,
            (A::Resume { prior }, S::InDispute) if prior.holds_money() => prior,
            (
                A::ClaimSettledOnGoods {
                    prior: S::Shipped | S::Delivered,
                },
                S::InDispute,
            ) => S::Completed,
            (A::FullRefund, S::InDispute) => S::Refunded,
            (
                A::Cancel,
                S::Draft
                | S::AwaitingSignatures
                | S::AwaitingPayment
                | S::PartiallyFunded
                | S::Funded
                | S::SignedUnprotected,
            ) => S::Cancelled,
            (action, from) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "the contract is {}: {} is not possible in that state",
                    from.as_str(),
                    action.describe()
                )));
            }
        };
        Ok(to)
    }
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Action::Revise => "revising the draft",
            Action::SignFirst | Action::SignSecondProtected | Action::SignSecondUnprotected => {
                "signing"
            }
            Action::Activated | Action::ActivationRefused => "activation",
            Action::PaymentReceived | Action::FullyFunded => "receiving a payment",
            Action::MoreDue => "asking for more money",
            Action::Ship => "recording a shipment",
            Action::ConfirmReceipt => "confirming receipt",
            Action::Accept => "accepting the goods",
            Action::OpenClaim => "opening a claim",
            Action::Resume { .. } | Action::ClaimSettledOnGoods { .. } | Action::FullRefund => {
                "closing a claim"
            }
            Action::Cancel => "cancelling",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Action as A, Status as S, *};

    fn actions() -> Vec<A> {
        let mut all = vec![
            A::Revise,
            A::SignFirst,
            A::SignSecondProtected,
            A::SignSecondUnprotected,
            A::Activated,
            A::ActivationRefused,
            A::PaymentReceived,
            A::FullyFunded,
            A::MoreDue,
            A::Ship,
            A::ConfirmReceipt,
            A::Accept,
            A::OpenClaim,
            A::FullRefund,
            A::Cancel,
        ];
        for prior in S::ALL {
            all.push(A::Resume { prior });
            all.push(A::ClaimSettledOnGoods { prior });
        }
        all
    }

    /// The table of the module doc, written out once more as data.
    fn expected(action: A, from: S) -> Option<S> {
        let allowed: &[(S, S)] = match action {
            A::Revise => &[(S::Draft, S::Draft), (S::AwaitingSignatures, S::Draft)],
            A::SignFirst => &[(S::Draft, S::AwaitingSignatures)],
            A::SignSecondProtected => &[(S::AwaitingSignatures, S::Activating)],
            A::SignSecondUnprotected => &[(S::AwaitingSignatures, S::SignedUnprotected)],
            A::Activated => &[(S::Activating, S::AwaitingPayment)],
            A::ActivationRefused => &[(S::Activating, S::Draft)],
            A::PaymentReceived => &[
                (S::AwaitingPayment, S::PartiallyFunded),
                (S::PartiallyFunded, S::PartiallyFunded),
            ],
            A::FullyFunded => &[
                (S::AwaitingPayment, S::Funded),
                (S::PartiallyFunded, S::Funded),
            ],
            A::MoreDue => &[(S::Funded, S::PartiallyFunded)],
            A::Ship => &[(S::Funded, S::Shipped), (S::SignedUnprotected, S::Shipped)],
            A::ConfirmReceipt => &[(S::Shipped, S::Delivered)],
            A::Accept => &[(S::Shipped, S::Completed), (S::Delivered, S::Completed)],
            A::OpenClaim => &[
                (S::PartiallyFunded, S::InDispute),
                (S::Funded, S::InDispute),
                (S::Shipped, S::InDispute),
                (S::Delivered, S::InDispute),
            ],
            A::Resume { prior } => {
                return (from == S::InDispute
                    && matches!(
                        prior,
                        S::PartiallyFunded | S::Funded | S::Shipped | S::Delivered
                    ))
                .then_some(prior);
            }
            A::ClaimSettledOnGoods { prior } => {
                return (from == S::InDispute && matches!(prior, S::Shipped | S::Delivered))
                    .then_some(S::Completed);
            }
            A::FullRefund => &[(S::InDispute, S::Refunded)],
            A::Cancel => &[
                (S::Draft, S::Cancelled),
                (S::AwaitingSignatures, S::Cancelled),
                (S::AwaitingPayment, S::Cancelled),
                (S::PartiallyFunded, S::Cancelled),
                (S::Funded, S::Cancelled),
                (S::SignedUnprotected, S::Cancelled),
            ],
        };
        allowed.iter().find(|(f, _)| *f == from).map(|(_, to)| *to)
    }

    #[test]
    fn every_action_in_every_state_follows_the_table() {
        for action in actions() {
            for from in S::ALL {
                match (from.next(action), expected(action, from)) {
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
    fn terminal_states_take_no_action() {
        for from in S::ALL.into_iter().filter(|s| s.is_terminal()) {
            for action in actions() {
                assert!(from.next(action).is_err(), "{action:?} from {from:?}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for status in S::ALL {
            assert_eq!(S::parse(status.as_str()), Some(status));
        }
        assert_eq!(S::parse("signed"), None);
    }
}
