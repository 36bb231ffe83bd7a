//! The life of a payment session, as one pure function so it can be tested exhaustively.
//!
//! Only `initiated` and `checkout_completed` can become `credited`; every other state is
//! terminal. A webhook that asks for an illegal move changes nothing: Stripe redelivers
//! and reorders events, and a late or repeated one must never credit twice.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Our row exists; the customer has not finished Stripe Checkout.
    Initiated,
    /// Checkout finished but the money has not arrived yet (delayed payment methods).
    CheckoutCompleted,
    /// The ledger holds the credit; terminal.
    Credited,
    /// The customer never paid before the Checkout session expired; terminal.
    Expired,
    /// Stripe could not create the session or the payment failed; terminal.
    Failed,
    /// Stripe reported an amount, currency or tenant that differs from ours; terminal,
    /// for an operator to look at.
    FailedReconcile,
}

impl SessionStatus {
    pub const ALL: &'static [SessionStatus] = &[
        SessionStatus::Initiated,
        SessionStatus::CheckoutCompleted,
        SessionStatus::Credited,
        SessionStatus::Expired,
        SessionStatus::Failed,
        SessionStatus::FailedReconcile,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Initiated => "initiated",
            SessionStatus::CheckoutCompleted => "checkout_completed",
            SessionStatus::Credited => "credited",
            SessionStatus::Expired => "expired",
            SessionStatus::Failed => "failed",
            SessionStatus::FailedReconcile => "failed_reconcile",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|status| status.as_str() == text)
    }

    pub const fn is_terminal(self) -> bool {
        !matches!(self, SessionStatus::Initiated | SessionStatus::CheckoutCompleted)
    }
}

/// What a verified webhook says happened to a session, after reconciling its amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// Checkout finished and the money is there, with our amount and currency.
    Paid,
    /// Checkout finished; payment is still pending.
    CompletedUnpaid,
    /// Stripe's amount, currency or tenant differs from the session's.
    Mismatch,
    /// The delayed payment failed, or Stripe refused to create the session.
    PaymentFailed,
    /// The Checkout session expired unpaid.
    Expired,
}

impl SessionEvent {
    pub const ALL: &'static [SessionEvent] = &[
        SessionEvent::Paid,
        SessionEvent::CompletedUnpaid,
        SessionEvent::Mismatch,
        SessionEvent::PaymentFailed,
        SessionEvent::Expired,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from:?} payment session cannot take {event:?}")]
pub struct InvalidTransition {
    pub from: SessionStatus,
    pub event: SessionEvent,
}

pub fn next_status(current: SessionStatus, event: SessionEvent) -> Result<SessionStatus, InvalidTransition> {
    use SessionEvent as E;
    use SessionStatus as S;
    match (current, event) {
        (S::Initiated | S::CheckoutCompleted, E::Paid) => Ok(S::Credited),
        (S::Initiated, E::CompletedUnpaid) => Ok(S::CheckoutCompleted),
        (S::Initiated | S::CheckoutCompleted, E::Mismatch) => Ok(S::FailedReconcile),
        (S::Initiated | S::CheckoutCompleted, E::PaymentFailed) => Ok(S::Failed),
        // A session whose checkout completed no longer expires at Stripe; an expiry
        // event for it is stale.
        (S::Initiated, E::Expired) => Ok(S::Expired),
        (from, event) => Err(InvalidTransition { from, event }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn any_status() -> impl Strategy<Value = SessionStatus> {
        proptest::sample::select(SessionStatus::ALL)
    }

    fn any_event() -> impl Strategy<Value = SessionEvent> {
        proptest::sample::select(SessionEvent::ALL)
    }

    proptest! {
        #[test]
        fn terminal_states_never_move(from in any_status(), event in any_event()) {
            if from.is_terminal() {
                prop_assert_eq!(next_status(from, event), Err(InvalidTransition { from, event }));
            }
        }

        #[test]
        fn only_a_payment_credits(from in any_status(), event in any_event()) {
            if let Ok(SessionStatus::Credited) = next_status(from, event) {
                prop_assert_eq!(event, SessionEvent::Paid);
                prop_assert!(!from.is_terminal());
            }
        }

        #[test]
        fn any_delivery_sequence_credits_at_most_once(
            events in proptest::collection::vec(any_event(), 0..40)
        ) {
            let mut status = SessionStatus::Initiated;
            let mut credits = 0;
            for event in events {
                if let Ok(next) = next_status(status, event) {
                    prop_assert_ne!(next, status, "a legal move always changes state");
                    if next == SessionStatus::Credited {
                        credits += 1;
                    }
                    status = next;
                }
            }
            prop_assert!(credits <= 1);
        }

        #[test]
        fn names_round_trip(status in any_status()) {
            prop_assert_eq!(SessionStatus::parse(status.as_str()), Some(status));
        }
    }

    #[test]
    fn open_sessions_can_be_paid_and_reconciled() {
        for from in [SessionStatus::Initiated, SessionStatus::CheckoutCompleted] {
            assert_eq!(next_status(from, SessionEvent::Paid), Ok(SessionStatus::Credited));
            assert_eq!(next_status(from, SessionEvent::Mismatch), Ok(SessionStatus::FailedReconcile));
            assert_eq!(next_status(from, SessionEvent::PaymentFailed), Ok(SessionStatus::Failed));
        }
        assert_eq!(
            next_status(SessionStatus::Initiated, SessionEvent::CompletedUnpaid),
            Ok(SessionStatus::CheckoutCompleted)
        );
        assert_eq!(next_status(SessionStatus::Initiated, SessionEvent::Expired), Ok(SessionStatus::Expired));
        assert!(next_status(SessionStatus::CheckoutCompleted, SessionEvent::Expired).is_err());
        assert!(next_status(SessionStatus::CheckoutCompleted, SessionEvent::CompletedUnpaid).is_err());
        assert!(next_status(SessionStatus::Credited, SessionEvent::Paid).is_err());
    }
}
