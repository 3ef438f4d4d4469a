//! The persisted shape of orders, merchants and riders: what the store loads and the API returns.

use serde::{Deserialize, Serialize};

use crate::actors::order_machine::OrderStatus;
use crate::domain::Location;

/// One line of an order, priced at the moment the stock was reserved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderLine {
    /// The merchant's SKU code.
    pub sku: String,
    /// The item's name when ordered.
    pub name: String,
    /// How many, at least 1.
    pub qty: i64,
    /// Unit price when ordered.
    pub price_cents: i64,
}

/// An order as stored and as returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Order {
    /// Order id (UUID; derived from the idempotency key when one is given).
    pub id: String,
    /// The customer who placed it.
    pub customer_id: String,
    /// The merchant it was placed with.
    pub merchant_id: String,
    /// The rider delivering it, once assigned.
    pub rider_id: Option<String>,
    /// Where it is in its life.
    pub status: OrderStatus,
    /// What was ordered.
    pub items: Vec<OrderLine>,
    /// Sum of qty * price over the lines.
    pub total_cents: i64,
    /// Where to deliver.
    pub deliver_to: Location,
    /// Where to pick up: the merchant's location when the order was placed (unknown for orders
    /// placed before it was recorded).
    #[serde(default)]
    pub pickup: Option<Location>,
    /// Optimistic-lock version: 1 on creation, +1 per persisted change.
    pub version: i64,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Last change, ms since the epoch.
    pub updated_at: i64,
    /// Hash of the creating request, to answer idempotent retries (never shown to clients,
    /// nor sent between nodes: only the order's own actor compares it).
    #[serde(skip)]
    pub request_hash: Option<String>,
}

/// A merchant's profile (its menu lives in `MenuItem` rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Merchant {
    /// Merchant id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Where riders pick up.
    pub location: Location,
    /// Whether it takes orders.
    pub open: bool,
    /// Optimistic-lock version of the profile row.
    pub version: i64,
}

/// One SKU on a merchant's menu.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MenuItem {
    /// SKU code, unique per merchant.
    #[schema(min_length = 1, max_length = 64)]
    pub sku: String,
    /// Display name.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Unit price.
    #[schema(minimum = 0, maximum = 100_000_000)]
    #[serde(deserialize_with = "crate::domain::whole_i64")]
    pub price_cents: i64,
    /// Units available.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "crate::domain::whole_i64")]
    pub stock: i64,
}

/// A rider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rider {
    /// Rider id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Whether the rider takes work.
    pub online: bool,
    /// Last known position.
    pub location: Option<Location>,
    /// The order the rider is carrying, if any.
    pub current_order: Option<String>,
    /// Optimistic-lock version.
    pub version: i64,
}

/// An event for the transactional outbox, written in the same transaction as the change it reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// `order`, `merchant` or `rider`.
    pub aggregate_type: String,
    /// The entity's id.
    pub aggregate_id: String,
    /// What happened, e.g. `order_created`, `order_status_changed`.
    pub event_type: String,
    /// JSON payload.
    pub payload: serde_json::Value,
    /// When, ms since the epoch.
    pub created_at: i64,
    /// The W3C trace context of the command that wrote it (set by the store at commit; the
    /// relay sends it as the Kafka record's `traceparent` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A stored outbox row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRow {
    /// Monotonic sequence number assigned by the store.
    pub seq: i64,
    /// The event.
    pub event: OutboxEvent,
}
