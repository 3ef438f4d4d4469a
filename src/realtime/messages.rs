//! The websocket messages' wire shapes: one type per message `type` a socket sends. Publishers
//! and `api::ws` serialize these (never ad-hoc JSON), and `api::openapi::ws_schemas` turns the
//! same types into the JSON Schemas under `docs/ws/`, so the documentation cannot drift.
//!
//! The hub adds `type`, `seq` and `ts` to every event it carries; snapshots, acks and errors
//! carry `type` and `ts` themselves (see [`with_type`]). What clients send back on a feed is a
//! [`ClientCommand`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::actors::order_machine::OrderStatus;
use crate::domain::Location;
use crate::messages::Offer;
use crate::model::{Order, Rider};

/// A command a client sends on its merchant or rider feed, tagged by `type`. `api::ws` parses
/// it; the load generator's simulated merchants and riders write it, so both sides share one
/// shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientCommand {
    /// A merchant accepts a paid order; a rider accepts an offer.
    Accept {
        /// The order.
        order_id: String,
    },
    /// A merchant rejects a paid order.
    Reject {
        /// The order.
        order_id: String,
    },
    /// A rider declines an offer.
    Decline {
        /// The order.
        order_id: String,
    },
    /// A rider's position.
    Location {
        /// Latitude.
        lat: f64,
        /// Longitude.
        lng: f64,
    },
}

/// `status` (order tracking): the order changed status.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusChanged<'a> {
    /// The order.
    pub order_id: &'a str,
    /// Its version after the change.
    pub version: i64,
    /// Its status after the change.
    pub status: OrderStatus,
    /// Its status before (null when it was just created).
    pub from: Option<OrderStatus>,
    /// The rider it has, if any.
    pub rider_id: Option<&'a str>,
    /// When it changed, ms since the epoch.
    pub at: i64,
}

/// `rider_location` (order tracking): where the order's rider is.
#[derive(Debug, Serialize, ToSchema)]
pub struct RiderLocation {
    /// The order being carried.
    pub order_id: String,
    /// The rider.
    pub rider_id: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lng: f64,
}

/// `new_order`, `order_updated`, `order_cancelled` (merchant feed): one of the merchant's
/// orders changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct MerchantOrderEvent<'a> {
    /// The order.
    pub order_id: &'a str,
    /// The merchant.
    pub merchant_id: &'a str,
    /// The order's version after the change.
    pub version: i64,
    /// Its status after the change.
    pub status: OrderStatus,
    /// Its status before.
    pub from: Option<OrderStatus>,
    /// Its rider, if any.
    pub rider_id: Option<&'a str>,
    /// The whole order (`new_order` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<&'a Order>,
}

/// `assigned`, `order_updated` (rider feed): an order the rider carries (or carried) changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RiderOrderEvent<'a> {
    /// The order.
    pub order_id: &'a str,
    /// The rider.
    pub rider_id: &'a str,
    /// The order's version after the change.
    pub version: i64,
    /// Its status after the change.
    pub status: OrderStatus,
    /// Where to pick it up (the merchant's id).
    pub pickup_merchant_id: &'a str,
    /// Where to deliver it.
    pub dropoff: Location,
}

/// `offer` (rider feed): a dispatch zone offers the rider an order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OfferMade {
    /// The rider offered.
    pub rider_id: String,
    /// The offer.
    #[serde(flatten)]
    pub offer: Offer,
}

/// `offer_withdrawn` (rider feed): the offer is gone (expired, taken back, order left).
#[derive(Debug, Serialize, ToSchema)]
pub struct OfferWithdrawn {
    /// The rider.
    pub rider_id: String,
    /// The order that was offered.
    pub order_id: String,
    /// Why.
    pub reason: String,
}

/// `snapshot` (order tracking): the order as it is when the socket opens.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrackSnapshot {
    /// The order.
    pub order_id: String,
    /// Its version.
    pub version: i64,
    /// The hub's sequence number when the snapshot was taken.
    pub seq: u64,
    /// When, ms since the epoch.
    pub ts: i64,
    /// The order.
    #[schema(value_type = Order)]
    pub order: std::sync::Arc<Order>,
}

/// `snapshot` (merchant feed): the merchant's active orders when the socket opens.
#[derive(Debug, Serialize, ToSchema)]
pub struct MerchantSnapshot {
    /// The merchant.
    pub merchant_id: String,
    /// The hub's sequence number when the snapshot was taken.
    pub seq: u64,
    /// When, ms since the epoch.
    pub ts: i64,
    /// Orders paid, accepted, assigned or picked up.
    pub orders: Vec<Order>,
}

/// `snapshot` (rider feed): the rider and its current offer when the socket opens.
#[derive(Debug, Serialize, ToSchema)]
pub struct RiderSnapshot {
    /// The rider.
    pub rider_id: String,
    /// The hub's sequence number when the snapshot was taken.
    pub seq: u64,
    /// When, ms since the epoch.
    pub ts: i64,
    /// The rider.
    pub rider: Rider,
    /// The offer it holds, if any.
    pub offer: Option<Offer>,
}

/// `ack` (merchant and rider feeds): a command was carried out.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandAck {
    /// The order the command was about.
    pub order_id: String,
    /// The order's status after it.
    pub status: Option<OrderStatus>,
    /// The order's version after it.
    pub version: Option<i64>,
    /// When, ms since the epoch.
    pub ts: i64,
}

/// `error` (merchant and rider feeds): a command was refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandError {
    /// The order the command was about, if it named one.
    pub order_id: Option<String>,
    /// Machine-readable code, as in the REST error body.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// When, ms since the epoch.
    pub ts: i64,
}

/// The JSON fields of `msg` (an object), for a live event that travels between nodes.
pub fn fields<T: Serialize>(msg: &T) -> Value {
    serde_json::to_value(msg).unwrap_or_default()
}

/// `msg` as the text of a message of `type` `kind`.
pub fn with_type<T: Serialize>(kind: &str, msg: &T) -> String {
    text(kind, msg, None)
}

/// The text of a message of `type` `kind`: the fields of `msg` (an object; anything else goes
/// under `data`), its `type`, and the hub's `seq` and `ts` when `stamp` gives them. `msg` is
/// written straight to text and the frame's fields are appended inside its closing brace: no
/// `Value` map and no `#[serde(flatten)]` (whose map-entry machinery cost ~1% of the node's CPU
/// in `lifecycle`) in between.
pub fn text<T: Serialize>(kind: &str, msg: &T, stamp: Option<(u64, i64)>) -> String {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(256);
    let object = serde_json::to_writer(&mut out, msg).is_ok()
        && out.first() == Some(&b'{')
        && out.last() == Some(&b'}');
    if !object {
        let data = serde_json::json!({ "data": fields(msg) });
        return text(kind, &data, stamp);
    }
    out.pop();
    if out.len() > 1 {
        out.push(b',');
    }
    out.extend_from_slice(b"\"type\":");
    // Writing to a `Vec` cannot fail, nor can serializing a `str` or integers.
    let _ = serde_json::to_writer(&mut out, kind);
    if let Some((seq, ts)) = stamp {
        let _ = write!(out, ",\"seq\":{seq},\"ts\":{ts}");
    }
    out.push(b'}');
    // serde_json writes valid UTF-8, and so do the lines above.
    String::from_utf8(out).unwrap_or_default()
}

/// Which socket sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    /// `GET /v1/orders/{id}/track`
    Track,
    /// `GET /v1/merchants/{id}/feed`
    MerchantFeed,
    /// `GET /v1/riders/{id}/feed`
    RiderFeed,
}

impl Socket {
    /// The name used in schema files (`docs/ws/<socket>.<type>.json`).
    pub fn as_str(self) -> &'static str {
        match self {
            Socket::Track => "track",
            Socket::MerchantFeed => "merchant_feed",
            Socket::RiderFeed => "rider_feed",
        }
    }
}

/// Every message a socket sends: its socket, its `type`, whether the hub carries it (then it
/// has `seq` and `ts` added), and the type it is serialized from.
pub struct Catalogue {
    /// The socket.
    pub socket: Socket,
    /// Its `type`.
    pub kind: &'static str,
    /// Carried by the hub (`seq`, `ts` added).
    pub hub: bool,
    /// The name of its schema (the Rust type).
    pub schema: &'static str,
}

macro_rules! catalogue {
    ($($socket:ident $kind:literal $hub:literal $ty:ident;)*) => {
        /// The catalogue of websocket messages (see [`Catalogue`]).
        pub const MESSAGES: &[Catalogue] = &[
            $(Catalogue { socket: Socket::$socket, kind: $kind, hub: $hub, schema: stringify!($ty) },)*
        ];

        /// Each message type's schema, and the schemas they refer to.
        pub fn schemas() -> Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)> {
            let mut out = Vec::new();
            $(
                out.push((stringify!($ty).to_string(), <$ty as utoipa::PartialSchema>::schema()));
                <$ty as ToSchema>::schemas(&mut out);
            )*
            out
        }
    };
}

catalogue! {
    Track "snapshot" false TrackSnapshot;
    Track "status" true StatusChanged;
    Track "rider_location" true RiderLocation;
    MerchantFeed "snapshot" false MerchantSnapshot;
    MerchantFeed "new_order" true MerchantOrderEvent;
    MerchantFeed "order_updated" true MerchantOrderEvent;
    MerchantFeed "order_cancelled" true MerchantOrderEvent;
    MerchantFeed "ack" false CommandAck;
    MerchantFeed "error" false CommandError;
    RiderFeed "snapshot" false RiderSnapshot;
    RiderFeed "assigned" true RiderOrderEvent;
    RiderFeed "order_updated" true RiderOrderEvent;
    RiderFeed "offer" true OfferMade;
    RiderFeed "offer_withdrawn" true OfferWithdrawn;
    RiderFeed "ack" false CommandAck;
    RiderFeed "error" false CommandError;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Probe {
        order_id: &'static str,
        version: i64,
    }

    #[derive(Serialize)]
    struct Nothing {}

    fn parsed(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn an_object_gets_its_type_and_stamp_after_its_own_fields() {
        let t = text(
            "status",
            &Probe {
                order_id: "o-1",
                version: 3,
            },
            Some((7, 1_700)),
        );
        assert_eq!(
            t,
            r#"{"order_id":"o-1","version":3,"type":"status","seq":7,"ts":1700}"#
        );
        let t = with_type(
            "snapshot",
            &Probe {
                order_id: "o\"2",
                version: 1,
            },
        );
        assert_eq!(
            parsed(&t),
            serde_json::json!({"order_id": "o\"2", "version": 1, "type": "snapshot"})
        );
    }

    #[test]
    fn an_empty_object_has_no_stray_comma() {
        assert_eq!(with_type("ping", &Nothing {}), r#"{"type":"ping"}"#);
        assert_eq!(
            text("ping", &Nothing {}, Some((1, 2))),
            r#"{"type":"ping","seq":1,"ts":2}"#
        );
    }

    #[test]
    fn anything_but_an_object_goes_under_data() {
        assert_eq!(
            parsed(&text("note", &vec![1, 2], Some((3, 4)))),
            serde_json::json!({"data": [1, 2], "type": "note", "seq": 3, "ts": 4})
        );
        assert_eq!(
            parsed(&with_type("note", &"a \"quoted\" string")),
            serde_json::json!({"data": "a \"quoted\" string", "type": "note"})
        );
    }

    #[test]
    fn a_kind_is_escaped() {
        assert_eq!(
            parsed(&with_type("we\"ird", &Nothing {})),
            serde_json::json!({"type": "we\"ird"})
        );
    }
}
