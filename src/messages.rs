//! Every message an entity actor takes from outside itself, and what it answers: the one
//! vocabulary that handlers, actors and other nodes share.
//!
//! Actors never import one another: an order actor reserves stock by sending [`ReserveStock`]
//! through the router, which delivers it to the merchant's actor on this node or on the node
//! that owns the merchant's shard. So every message here is plain data with a wire form
//! (serde), and each actor file says which of them it handles (`impl Routed`). Messages that
//! never leave a node (a shard's bookkeeping, timers, the lock actor) stay beside their actor.

use actix::Message;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::actors::order_machine::OrderEvent;
use crate::domain::{Caller, Location};
use crate::error::Result;
use crate::model::{MenuItem, Merchant, Order, OrderLine};

// ---- orders ----

/// Places the order this actor stands for (the id is new, or derived from an idempotency key).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<Placed>")]
pub struct PlaceOrder {
    /// The customer.
    pub caller: Caller,
    /// Where to order from.
    pub merchant_id: String,
    /// (sku, qty) pairs.
    pub items: Vec<(String, i64)>,
    /// Where to deliver.
    pub deliver_to: Location,
    /// Hash of the request: a retry with the same hash is answered with the order it made.
    pub request_hash: Option<String>,
    /// The id was made for this request (it came without an `Idempotency-Key`): no earlier
    /// attempt can have written it, so a refusal needs no look at the store.
    #[serde(default)]
    pub new_id: bool,
}

/// The outcome of `PlaceOrder`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placed {
    /// The order (shared with the order actor's state).
    pub order: Arc<Order>,
    /// True when an earlier request with the same idempotency key created it.
    pub replayed: bool,
}

/// Reads the order.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<Arc<Order>>")]
pub struct GetOrder {
    /// Who asks.
    pub caller: Caller,
}

/// Moves the order by `event`.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<Arc<Order>>")]
pub struct ChangeOrder {
    /// Who asks.
    pub caller: Caller,
    /// What happens.
    pub event: OrderEvent,
    /// The merchant or rider named in the request path, or the rider to assign.
    pub party: Option<String>,
    /// Refuse (with `Conflict`) unless the order is at this version: timers use it so a
    /// deadline never fires on an order that has moved on.
    pub expected_version: Option<i64>,
}

/// Starts paying for the order: creates a payment intent with the provider (or returns the one
/// already under way or taken: never a second charge). The provider's callback moves the order.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<PaymentStarted>")]
pub struct StartPayment {
    /// The customer.
    pub caller: Caller,
    /// The payment method (for the simulated provider, its test behaviour).
    pub method: String,
}

/// The answer to `StartPayment`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentStarted {
    /// The intent as the provider holds it.
    pub intent: crate::payments::Intent,
    /// The order as it was when the payment started.
    pub order: Arc<Order>,
}

/// A verified event from the payment provider (its callback, or the reconciler asking it).
/// Replies whether it changed anything (false for an event already applied).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<bool>")]
pub struct PaymentNotice {
    /// The event.
    pub event: crate::payments::ProviderEvent,
}

/// Test hook: makes the actor panic inside its handler, as a bug would.
#[doc(hidden)]
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<Arc<Order>>")]
pub struct CrashOrder;

// ---- merchants ----

/// Creates the merchant (admin).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<MerchantView>")]
pub struct RegisterMerchant {
    /// Who asks.
    pub caller: Caller,
    /// Display name.
    pub name: String,
    /// Pickup point.
    pub location: Location,
}

/// Replaces the menu (stock included).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<MerchantView>")]
pub struct SetMenu {
    /// Who asks.
    pub caller: Caller,
    /// The whole new menu.
    pub items: Vec<MenuItem>,
}

/// Opens or closes the merchant.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<MerchantView>")]
pub struct SetOpen {
    /// Who asks.
    pub caller: Caller,
    /// Open for orders?
    pub open: bool,
}

/// Reads the merchant with its menu and stock.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<MerchantView>")]
pub struct GetMerchant;

/// Reserves stock for an order (from the order actor).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<Reservation>")]
pub struct ReserveStock {
    /// (sku, qty) pairs.
    pub lines: Vec<(String, i64)>,
}

/// Reserves stock for a new order and commits the order's creating transaction (order row,
/// stock decrement fenced with the merchant's lease, `order_created` event), in one step on the
/// merchant's node: one round trip from the order's actor instead of a reservation, a commit
/// and a settlement. The transaction is fenced with the order's own shard epoch.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<PlaceOutcome>")]
pub struct ReserveAndPlace {
    /// The order as its actor knows it before any stock is reserved.
    pub draft: OrderDraft,
    /// (sku, qty) pairs.
    pub lines: Vec<(String, i64)>,
    /// The order's shard epoch (cluster).
    pub fence: Option<crate::store::ShardEpoch>,
}

/// What the order's actor decides about a new order; the merchant adds lines, prices, pickup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderDraft {
    /// The order's id.
    pub id: String,
    /// The customer.
    pub customer_id: String,
    /// The merchant.
    pub merchant_id: String,
    /// Where to deliver.
    pub deliver_to: Location,
    /// Hash of the creating request.
    pub request_hash: Option<String>,
}

/// The outcome of `ReserveAndPlace` once stock was reserved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PlaceOutcome {
    /// Committed: the new order.
    Placed(Arc<Order>),
    /// The store refused the creating transaction (the reservation was given back).
    Refused(crate::store::Refusal),
}

/// Gives an unwritten reservation back (its order was not persisted).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<()>")]
pub struct UnreserveStock {
    /// The reserved lines.
    pub lines: Vec<OrderLine>,
    /// The store disagreed with memory: reload the stock from the store.
    pub resync: bool,
}

/// A reservation was written by its order: no longer in flight.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<()>")]
pub struct SettleReservation;

/// The fencing token to release stock with (from an order actor about to cancel).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<i64>")]
pub struct StockFence;

/// Stock was given back in the store by a cancelled order: add it to memory.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<()>")]
pub struct RestockItems {
    /// The released lines.
    pub lines: Vec<OrderLine>,
}

/// Commits a change that moves this merchant's stock, on the node that owns the merchant, on
/// behalf of an order actor elsewhere: every change to one merchant's SKU rows then goes
/// through one writer queue in the whole cluster, so nodes never wait on one another's row
/// locks. The change is still fenced with the order's own shard epoch.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<Option<crate::store::Refusal>>")]
pub struct CommitWrites {
    /// The order's shard epoch.
    pub fence: Option<crate::store::ShardEpoch>,
    /// The change.
    pub writes: Vec<crate::store::Write>,
}

/// A merchant with its menu, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MerchantView {
    /// The profile.
    #[serde(flatten)]
    pub merchant: Merchant,
    /// The menu with current available stock.
    pub menu: Vec<MenuItem>,
}

/// Reserved stock, priced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    /// The priced lines (one per SKU).
    pub lines: Vec<OrderLine>,
    /// Sum over the lines.
    pub total_cents: i64,
    /// The fencing token the order must write the stock decrement with.
    pub fence: i64,
    /// Where the order will be picked up (the merchant's location).
    pub pickup: Location,
}

// ---- riders ----

/// Creates the rider (admin).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<crate::model::Rider>")]
pub struct RegisterRider {
    /// Who asks.
    pub caller: Caller,
    /// Display name.
    pub name: String,
}

/// The rider starts taking work at `location`.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<crate::model::Rider>")]
pub struct GoOnline {
    /// Who asks.
    pub caller: Caller,
    /// Where the rider is.
    pub location: Location,
}

/// The rider stops taking work (refused while carrying an order).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<crate::model::Rider>")]
pub struct GoOffline {
    /// Who asks.
    pub caller: Caller,
}

/// A position update.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<crate::model::Rider>")]
pub struct UpdateLocation {
    /// Who asks.
    pub caller: Caller,
    /// Where the rider is now.
    pub location: Location,
}

/// Reads the rider.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<crate::model::Rider>")]
pub struct GetRider;

/// Makes the rider busy with an order (from the order actor, when assigning).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<crate::model::Rider>")]
pub struct ClaimRider {
    /// The order.
    pub order_id: String,
}

/// Frees the rider from an order (delivered, released or cancelled).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<()>")]
pub struct FreeRider {
    /// The order.
    pub order_id: String,
}

/// A rider answers an offer (REST or the rider's socket). The rider's actor passes it on to
/// the dispatch zone the rider is in, which made the offer.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<Arc<Order>>")]
pub struct AnswerOffer {
    /// Who answers.
    pub caller: Caller,
    /// The rider.
    pub rider_id: String,
    /// The offered order.
    pub order_id: String,
    /// Accept (true) or decline.
    pub accept: bool,
}

/// The offer a rider holds now, if any (for the rider feed's snapshot); asked of the rider,
/// which asks its zone.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<Option<Offer>>")]
pub struct CurrentOffer {
    /// The rider.
    pub rider_id: String,
}

/// A zone asks a rider to tell it where it is (a zone that just started rebuilds its index).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<()>")]
pub struct ReportToZone;

// ---- dispatch zones ----

/// A rider's dispatch-relevant state changed (from the rider actor, to its zone).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<()>")]
pub struct RiderState {
    /// The rider.
    pub rider_id: String,
    /// Taking work (false also when the rider left this zone).
    pub online: bool,
    /// Carrying an order.
    pub busy: bool,
    /// Last known position.
    pub location: Option<Location>,
    /// The orders the rider carries or is fetching (`stacked` may add to them).
    #[serde(default)]
    pub orders: Vec<String>,
}

/// An order entered or left `accepted`, or (under `stacked`) was picked up (from the order
/// actor, after the commit, to the zone of its pickup point).
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<()>")]
pub struct OrderChanged {
    /// The order after the change (shared with the order actor's state).
    pub order: Arc<Order>,
    /// The rider it had before the change (a release puts it back without that rider).
    pub previous_rider: Option<String>,
}

/// `AnswerOffer` as the rider's actor hands it to its zone.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<Arc<Order>>")]
pub struct ZoneAnswer(pub AnswerOffer);

/// `CurrentOffer` as the rider's actor hands it to its zone.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<Option<Offer>>")]
pub struct ZoneOffer {
    /// The rider.
    pub rider_id: String,
}

/// Counts for tests and the status page.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Result<ZoneStats>")]
pub struct DispatchStats;

/// What `DispatchStats` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneStats {
    /// Accepted orders waiting for a rider.
    pub waiting: usize,
    /// Riders available for offers.
    pub available: usize,
}

/// An offer as riders see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Offer {
    /// The order.
    pub order_id: String,
    /// Where to pick up (the merchant).
    pub pickup: Location,
    /// Where to deliver.
    pub dropoff: Location,
    /// Answer before this, ms since the epoch.
    pub expires_at: i64,
    /// Straight-line distance from the rider to the pickup when offered, metres.
    pub distance_m: f64,
    /// The rider's whole route if they accept, stop by stop: the stops they already have (a
    /// `stacked` offer to a rider carrying orders) plus this order's pickup and drop-off.
    #[serde(default)]
    pub route: Vec<crate::dispatch::Stop>,
}
