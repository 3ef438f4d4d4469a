//! What a policy reads and what it answers. Every type is serde so that it can travel between
//! nodes (or to a dispatch service) later; sets are `BTreeSet` so the encoding is stable.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::domain::Location;

/// An order waiting for a rider, without an offer out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitingOrder {
    /// The order id.
    pub id: String,
    /// Where the rider collects it (the merchant).
    pub pickup: Location,
    /// Where the rider delivers it.
    pub dropoff: Location,
    /// When it started waiting for a rider (merchant accepted), ms since the epoch: greedy
    /// serves the oldest first.
    pub waiting_since_ms: i64,
    /// When the food is expected to be ready, ms since the epoch: a rider arriving earlier waits.
    pub ready_at_ms: i64,
    /// When the customer was promised delivery, ms since the epoch.
    pub promised_at_ms: i64,
    /// Riders who declined it (or let an offer expire): never offered this order again.
    #[serde(default)]
    pub declined: BTreeSet<String>,
}

/// What a rider does at a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopKind {
    /// Collect the order at the merchant.
    Pickup,
    /// Hand it to the customer.
    Dropoff,
}

/// One stop of a rider's route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stop {
    /// The order the stop serves.
    pub order_id: String,
    /// Pickup or drop-off.
    pub kind: StopKind,
    /// Where.
    pub location: Location,
    /// The order's ready time, ms since the epoch: a pickup cannot finish before it.
    pub ready_at_ms: i64,
    /// The order's promised delivery time, ms since the epoch: the drop-off's deadline.
    pub promised_at_ms: i64,
}

/// A rider who can take an offer now: online, no offer out. `route` is empty for an idle rider;
/// `stacked` may add to a non-empty one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvailableRider {
    /// The rider id.
    pub id: String,
    /// Last known position.
    pub position: Location,
    /// Stops still ahead, in the order the rider will make them; an order whose pickup is done
    /// appears by its drop-off only.
    #[serde(default)]
    pub route: Vec<Stop>,
}

impl AvailableRider {
    /// Orders on the rider's route (carried or still to collect).
    pub fn load(&self) -> usize {
        let mut ids: Vec<&str> = self.route.iter().map(|s| s.order_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }
}

/// An offer to make: `rider_id` is asked to take `order_id` and then ride `route`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// The order.
    pub order_id: String,
    /// The rider.
    pub rider_id: String,
    /// The rider's whole route if the offer is accepted: the stops they already had plus this
    /// order's pickup and drop-off.
    pub route: Vec<Stop>,
    /// What the policy minimised for this pair (its cost model's unit: ms of travel or
    /// ms-equivalents); comparable within one policy only.
    pub cost: i64,
    /// Great-circle distance from the rider to the pickup when offered, metres.
    pub distance_m: f64,
    /// Predicted arrival at the pickup, ms since the epoch.
    pub pickup_eta_ms: i64,
    /// Predicted arrival at the drop-off, ms since the epoch.
    pub dropoff_eta_ms: i64,
}

/// The pickup and drop-off stops of an order, in that order.
pub(crate) fn stops_of(order: &WaitingOrder) -> [Stop; 2] {
    let stop = |kind, location| Stop {
        order_id: order.id.clone(),
        kind,
        location,
        ready_at_ms: order.ready_at_ms,
        promised_at_ms: order.promised_at_ms,
    };
    [
        stop(StopKind::Pickup, order.pickup),
        stop(StopKind::Dropoff, order.dropoff),
    ]
}

/// True when the location is finite and on the globe.
pub(crate) fn on_globe(l: Location) -> bool {
    l.validate().is_ok()
}
