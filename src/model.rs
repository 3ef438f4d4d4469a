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
    pub payload: Payload,
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

/// An outbox event's JSON payload, kept as the text the store writes: serialized once, straight
/// from the entity, when the event is made. (As a `serde_json::Value` it was built as a tree of
/// maps, written out as text in the commit and dropped: about 7% of a node's CPU in
/// `lifecycle`.) `value` parses it back where a reader needs the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(String);

impl Payload {
    /// `v` as JSON.
    pub fn of<T: Serialize + ?Sized>(v: &T) -> Payload {
        // Serializing the plain data types of this crate into a string cannot fail; were it to,
        // `null` says so rather than a half-written text.
        Payload(serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
    }

    /// A payload read back from the store, checked to be JSON.
    pub fn from_text(text: String) -> Result<Payload, serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        Ok(Payload(text))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The payload as a JSON tree.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

impl From<serde_json::Value> for Payload {
    fn from(v: serde_json::Value) -> Payload {
        Payload(v.to_string())
    }
}

impl PartialEq<serde_json::Value> for Payload {
    fn eq(&self, other: &serde_json::Value) -> bool {
        self.value() == *other
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        serde_json::Value::deserialize(d).map(Payload::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_keeps_the_json_text_it_was_made_with() {
        let p = Payload::of(&serde_json::json!({"to": "paid", "version": 2}));
        assert_eq!(p.as_str(), r#"{"to":"paid","version":2}"#);
        assert_eq!(p, serde_json::json!({"version": 2, "to": "paid"}));
        assert_eq!(p.value()["to"], "paid");
        // Read back from a store: kept as it is when it is JSON, refused when it is not.
        let back = Payload::from_text(p.as_str().to_string()).expect("json");
        assert_eq!(back, p);
        assert!(Payload::from_text("{\"to\":".into()).is_err());
        // On the wire (an `OutboxEvent` serialized) it is the JSON itself, not a string of it.
        let wire = serde_json::to_value(&p).expect("serialize");
        assert_eq!(wire["version"], 2);
        let again: Payload = serde_json::from_value(wire).expect("deserialize");
        assert_eq!(again, p);
    }
}
