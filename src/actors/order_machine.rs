//! The order state machine: a plain enum and a pure `transition` function, free of actors and I/O,
//! so that property tests can hammer it directly.

use serde::{Deserialize, Serialize};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Created with stock reserved, waiting for the customer to pay.
    PendingPayment,
    /// Paid; waiting for the merchant to accept.
    Paid,
    /// The merchant is preparing it; waiting for a rider.
    Accepted,
    /// A rider is on the way to the merchant.
    RiderAssigned,
    /// The rider has the food.
    PickedUp,
    /// Handed to the customer; waiting for confirmation.
    Delivered,
    /// Confirmed by the customer. Terminal.
    Completed,
    /// Cancelled before payment (by the customer or payment timeout). Terminal.
    Cancelled,
    /// Paid, then rejected or cancelled: the money is on its way back.
    Refunding,
    /// The refund went through. Terminal.
    Refunded,
}

/// Every status, for tests and metrics.
pub const ALL_STATUSES: [OrderStatus; 10] = [
    OrderStatus::PendingPayment,
    OrderStatus::Paid,
    OrderStatus::Accepted,
    OrderStatus::RiderAssigned,
    OrderStatus::PickedUp,
    OrderStatus::Delivered,
    OrderStatus::Completed,
    OrderStatus::Cancelled,
    OrderStatus::Refunding,
    OrderStatus::Refunded,
];

impl OrderStatus {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Accepted => "accepted",
            OrderStatus::RiderAssigned => "rider_assigned",
            OrderStatus::PickedUp => "picked_up",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Completed => "completed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Refunding => "refunding",
            OrderStatus::Refunded => "refunded",
        }
    }

    /// Parses the database name.
    pub fn parse(s: &str) -> Option<Self> {
        ALL_STATUSES.iter().copied().find(|st| st.as_str() == s)
    }

    /// Terminal statuses never move again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Completed | OrderStatus::Cancelled | OrderStatus::Refunded
        )
    }

    /// True while a rider is attached to the order.
    pub fn has_rider(self) -> bool {
        matches!(self, OrderStatus::RiderAssigned | OrderStatus::PickedUp)
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happens to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderEvent {
    /// The customer paid.
    Pay,
    /// The customer cancelled.
    Cancel,
    /// Nobody paid in time.
    PaymentTimeout,
    /// The merchant accepted.
    Accept,
    /// The merchant rejected.
    Reject,
    /// The merchant did not answer in time.
    AcceptTimeout,
    /// Dispatch gave the order to a rider.
    AssignRider,
    /// The rider gave the order back.
    ReleaseRider,
    /// The rider picked the food up.
    PickUp,
    /// The rider handed the food over.
    Deliver,
    /// The customer confirmed delivery.
    Confirm,
    /// The payment provider confirmed the refund.
    RefundCompleted,
}

/// Every event, for tests.
pub const ALL_EVENTS: [OrderEvent; 12] = [
    OrderEvent::Pay,
    OrderEvent::Cancel,
    OrderEvent::PaymentTimeout,
    OrderEvent::Accept,
    OrderEvent::Reject,
    OrderEvent::AcceptTimeout,
    OrderEvent::AssignRider,
    OrderEvent::ReleaseRider,
    OrderEvent::PickUp,
    OrderEvent::Deliver,
    OrderEvent::Confirm,
    OrderEvent::RefundCompleted,
];

impl OrderEvent {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderEvent::Pay => "pay",
            OrderEvent::Cancel => "cancel",
            OrderEvent::PaymentTimeout => "payment_timeout",
            OrderEvent::Accept => "accept",
            OrderEvent::Reject => "reject",
            OrderEvent::AcceptTimeout => "accept_timeout",
            OrderEvent::AssignRider => "assign_rider",
            OrderEvent::ReleaseRider => "release_rider",
            OrderEvent::PickUp => "pick_up",
            OrderEvent::Deliver => "deliver",
            OrderEvent::Confirm => "confirm",
            OrderEvent::RefundCompleted => "refund_completed",
        }
    }
}

impl std::fmt::Display for OrderEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transition table: the one place that says which event moves which status where.
pub fn transition(from: OrderStatus, event: OrderEvent) -> Result<OrderStatus, crate::Error> {
    use OrderEvent as E;
    use OrderStatus as S;
    let to = match (from, event) {
        (S::PendingPayment, E::Pay) => S::Paid,
        (S::PendingPayment, E::Cancel | E::PaymentTimeout) => S::Cancelled,
        (S::Paid, E::Accept) => S::Accepted,
        (S::Paid, E::Reject | E::AcceptTimeout | E::Cancel) => S::Refunding,
        (S::Accepted | S::RiderAssigned, E::Cancel) => S::Refunding,
        (S::Accepted, E::AssignRider) => S::RiderAssigned,
        (S::RiderAssigned, E::ReleaseRider) => S::Accepted,
        (S::RiderAssigned, E::PickUp) => S::PickedUp,
        (S::PickedUp, E::Deliver) => S::Delivered,
        (S::Delivered, E::Confirm) => S::Completed,
        (S::Refunding, E::RefundCompleted) => S::Refunded,
        (status, event) => return Err(crate::Error::IllegalTransition { status, event }),
    };
    Ok(to)
}

/// Whether moving `from` by `event` gives the reserved stock back to the merchant: only orders the
/// merchant never accepted return their stock.
pub fn releases_stock(from: OrderStatus, event: OrderEvent) -> bool {
    matches!(from, OrderStatus::PendingPayment | OrderStatus::Paid)
        && matches!(
            transition(from, event),
            Ok(OrderStatus::Cancelled | OrderStatus::Refunding)
        )
}

/// Whether moving `from` by `event` frees the order's rider.
pub fn frees_rider(from: OrderStatus, event: OrderEvent) -> bool {
    from.has_rider()
        && transition(from, event)
            .map(|to| !to.has_rider())
            .unwrap_or(false)
}
