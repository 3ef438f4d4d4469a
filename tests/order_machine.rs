//! Property tests of the order state machine: random event sequences never reach an illegal
//! state, terminal states never move, stock is released at most once and only before acceptance.

use proptest::prelude::*;
use waimai::actors::order_machine::{
    frees_rider, releases_stock, transition, OrderEvent as E, OrderStatus as S, ALL_EVENTS,
    ALL_STATUSES,
};
use waimai::Error;

/// The specification, written independently of `transition`: every legal edge.
const EDGES: &[(S, E, S)] = &[
    (S::PendingPayment, E::Pay, S::Paid),
    (S::PendingPayment, E::Cancel, S::Cancelled),
    (S::PendingPayment, E::PaymentTimeout, S::Cancelled),
    (S::Paid, E::Accept, S::Accepted),
    (S::Paid, E::Reject, S::Refunding),
    (S::Paid, E::AcceptTimeout, S::Refunding),
    (S::Paid, E::Cancel, S::Refunding),
    (S::Accepted, E::AssignRider, S::RiderAssigned),
    (S::Accepted, E::Cancel, S::Refunding),
    (S::RiderAssigned, E::ReleaseRider, S::Accepted),
    (S::RiderAssigned, E::PickUp, S::PickedUp),
    (S::RiderAssigned, E::Cancel, S::Refunding),
    (S::PickedUp, E::Deliver, S::Delivered),
    (S::Delivered, E::Confirm, S::Completed),
    (S::Refunding, E::RefundCompleted, S::Refunded),
];

fn spec(from: S, ev: E) -> Option<S> {
    EDGES
        .iter()
        .find(|(f, e, _)| *f == from && *e == ev)
        .map(|(_, _, t)| *t)
}

fn event() -> impl Strategy<Value = E> {
    prop::sample::select(ALL_EVENTS.to_vec())
}

fn status() -> impl Strategy<Value = S> {
    prop::sample::select(ALL_STATUSES.to_vec())
}

#[test]
fn transition_matches_the_specification_exhaustively() {
    for from in ALL_STATUSES {
        for ev in ALL_EVENTS {
            match (spec(from, ev), transition(from, ev)) {
                (Some(to), Ok(got)) => assert_eq!(got, to, "{from} --{ev}-->"),
                (None, Err(Error::IllegalTransition { status, event })) => {
                    assert_eq!(
                        (status, event),
                        (from, ev),
                        "error names the current status"
                    );
                }
                (want, got) => panic!("{from} --{ev}--> expected {want:?}, got {got:?}"),
            }
        }
    }
}

#[test]
fn statuses_round_trip_through_their_names() {
    for s in ALL_STATUSES {
        assert_eq!(S::parse(s.as_str()), Some(s));
        let json = serde_json::to_string(&s).expect("serialize");
        assert_eq!(json, format!("\"{}\"", s.as_str()));
    }
    assert_eq!(S::parse("teleported"), None);
}

/// What the actor does with stock and riders, replayed over a sequence.
#[derive(Debug, Default)]
struct Ledger {
    reserved: bool,
    released: u32,
    accepted_ever: bool,
    rider: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// From creation, any sequence of commands only follows specified edges, terminal statuses
    /// never move, stock is released at most once and only if the merchant never accepted, and a
    /// rider is attached exactly while the status says so.
    #[test]
    fn random_sequences_stay_legal(events in prop::collection::vec(event(), 0..40)) {
        let mut st = S::PendingPayment;
        let mut ledger = Ledger { reserved: true, ..Ledger::default() };
        for ev in events {
            let before = st;
            match transition(st, ev) {
                Ok(to) => {
                    prop_assert!(!before.is_terminal(), "terminal {before} moved by {ev}");
                    prop_assert_eq!(spec(before, ev), Some(to));
                    if releases_stock(before, ev) {
                        prop_assert!(!ledger.accepted_ever, "stock released after acceptance");
                        ledger.released += 1;
                    }
                    if frees_rider(before, ev) {
                        prop_assert!(ledger.rider);
                        ledger.rider = false;
                    }
                    if ev == E::AssignRider {
                        ledger.rider = true;
                    }
                    if to == S::Accepted {
                        ledger.accepted_ever = true;
                    }
                    st = to;
                }
                Err(Error::IllegalTransition { status, event }) => {
                    prop_assert_eq!(status, before);
                    prop_assert_eq!(event, ev);
                    prop_assert_eq!(spec(before, ev), None);
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
            prop_assert_eq!(ledger.rider, st.has_rider(), "rider attachment out of sync at {}", st);
        }
        prop_assert!(ledger.released <= 1, "stock released twice");
        if ledger.reserved && matches!(st, S::Cancelled) {
            prop_assert_eq!(ledger.released, 1, "a cancelled order gives its stock back");
        }
        if st == S::Completed {
            prop_assert_eq!(ledger.released, 0, "a completed order keeps its stock");
        }
    }

    /// Terminal statuses refuse every event.
    #[test]
    fn terminal_states_never_move(s in status(), ev in event()) {
        if s.is_terminal() {
            prop_assert!(transition(s, ev).is_err());
            prop_assert!(!releases_stock(s, ev));
            prop_assert!(!frees_rider(s, ev));
        }
    }

    /// Stock goes back only from statuses before the merchant accepted.
    #[test]
    fn stock_release_only_before_acceptance(s in status(), ev in event()) {
        if releases_stock(s, ev) {
            prop_assert!(matches!(s, S::PendingPayment | S::Paid));
            prop_assert!(matches!(transition(s, ev), Ok(S::Cancelled | S::Refunding)));
        }
    }
}
