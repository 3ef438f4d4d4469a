//! Live events: the in-process hub that carries what actors publish to the websockets that
//! follow an order, a merchant or a rider, and the wire shape of those events.
//!
//! An actor publishes right after its change is committed, from inside its own handler, so events
//! of one entity reach the hub in commit order. A socket subscribes *before* it takes its
//! snapshot and drops buffered events the snapshot already covers (by order version), so a late or
//! reconnecting client misses nothing and sees nothing twice.
//!
//! [`Fanout`] is how actors publish. On a single node it is the hub itself. In a cluster a
//! socket may be on any node, so every node's hub is fed from the events topic: order changes
//! travel as their outbox rows (shipped by the shard's owner), and live events that are not
//! persisted (offers, rider positions) are produced to the topic directly.

pub mod hub;
pub mod messages;
pub mod ops;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use hub::{Event, Hub, Subscription, Topic, TopicRef};
pub use ops::{OpsView, RiderSeen};

use crate::actors::order_machine::OrderStatus;
use crate::model::Order;

/// A live event that is not an order change (an offer, a rider's position), as it travels
/// between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveEvent {
    /// Who follows it.
    pub topic: Topic,
    /// The `type` clients see.
    pub kind: String,
    /// The order it is about, if any.
    pub order_id: Option<String>,
    /// The event's fields (an object).
    pub fields: Value,
}

impl LiveEvent {
    /// Publishes it to `hub`.
    pub fn publish(self, hub: &Hub) {
        if self.kind == ops::RIDER_KIND {
            if let Ok(seen) = serde_json::from_value::<RiderSeen>(self.fields) {
                hub.ops().rider(seen);
            }
            return;
        }
        let order = self.order_id.as_deref().map(|o| (o, None, None));
        hub.publish(self.topic.key(), &self.kind, order, || self.fields);
    }
}

/// Where live events go in a cluster (the events topic).
pub trait LiveSink: Send + Sync {
    /// Sends one event on its way to every node's hub; never blocks.
    fn send(&self, event: LiveEvent);
}

/// How actors publish (see the module docs).
#[derive(Clone)]
pub enum Fanout {
    /// One node: straight to its hub.
    Local(Hub),
    /// A cluster: through the events topic to every node's hub.
    Cluster {
        /// This node's hub (fed by the events consumer).
        hub: Hub,
        /// The producer of live events.
        live: Arc<dyn LiveSink>,
    },
}

impl Fanout {
    /// This node's hub.
    pub fn hub(&self) -> &Hub {
        match self {
            Fanout::Local(hub) | Fanout::Cluster { hub, .. } => hub,
        }
    }

    /// An order changed from `before` (`None`: it was created) to `after`, committed. In a
    /// cluster the committed outbox row carries it to every hub instead.
    pub fn order_changed(&self, before: Option<&Order>, after: &Order) {
        if let Fanout::Local(hub) = self {
            publish_order(
                hub,
                before.map(|b| b.status),
                before.and_then(|b| b.rider_id.as_deref()),
                after,
            );
        }
    }

    /// A rider's report for the operations view: this node's on a single node, every node's
    /// in a cluster (through the events topic).
    pub fn rider_seen(&self, seen: RiderSeen) {
        match self {
            Fanout::Local(hub) => hub.ops().rider(seen),
            Fanout::Cluster { live, .. } => live.send(LiveEvent {
                topic: Topic::Rider(seen.rider_id.clone()),
                kind: ops::RIDER_KIND.to_string(),
                order_id: None,
                fields: serde_json::to_value(&seen).unwrap_or_default(),
            }),
        }
    }

    /// A live event of `kind` for `topic`. `fields` is only built when it can reach someone.
    pub fn live<F: serde::Serialize>(
        &self,
        topic: Topic,
        kind: &str,
        order: Option<(&str, Option<i64>, Option<OrderStatus>)>,
        fields: impl FnOnce() -> F,
    ) {
        match self {
            Fanout::Local(hub) => hub.publish(topic.key(), kind, order, fields),
            Fanout::Cluster { live, .. } => live.send(LiveEvent {
                topic,
                kind: kind.to_string(),
                order_id: order.map(|o| o.0.to_string()),
                fields: messages::fields(&fields()),
            }),
        }
    }
}

/// Publishes what a committed order change means to each follower: a `status` to the order's
/// trackers; `new_order`, `order_updated` or `order_cancelled` to its merchant's feed; and
/// `assigned` or `order_updated` to the feed of the rider it has (or had, before the change).
pub fn publish_order(
    hub: &Hub,
    from: Option<OrderStatus>,
    previous_rider: Option<&str>,
    after: &Order,
) {
    hub.ops().order(from, after);
    let order_ref = Some((after.id.as_str(), Some(after.version), Some(after.status)));
    hub.publish(TopicRef::Order(&after.id), "status", order_ref, || {
        messages::StatusChanged {
            order_id: &after.id,
            version: after.version,
            status: after.status,
            from,
            rider_id: after.rider_id.as_deref(),
            at: after.updated_at,
        }
    });
    if from.is_some() {
        let kind = match after.status {
            OrderStatus::Paid => "new_order",
            OrderStatus::Cancelled | OrderStatus::Refunding | OrderStatus::Refunded => {
                "order_cancelled"
            }
            _ => "order_updated",
        };
        hub.publish(
            TopicRef::Merchant(&after.merchant_id),
            kind,
            order_ref,
            || messages::MerchantOrderEvent {
                order_id: &after.id,
                merchant_id: &after.merchant_id,
                version: after.version,
                status: after.status,
                from,
                rider_id: after.rider_id.as_deref(),
                order: (kind == "new_order").then_some(after),
            },
        );
    }
    let rider = after.rider_id.as_deref().or(previous_rider);
    if let Some(rider) = rider {
        let kind = if after.status == OrderStatus::RiderAssigned
            && from != Some(OrderStatus::RiderAssigned)
        {
            "assigned"
        } else {
            "order_updated"
        };
        hub.publish(TopicRef::Rider(rider), kind, order_ref, || {
            messages::RiderOrderEvent {
                order_id: &after.id,
                rider_id: rider,
                version: after.version,
                status: after.status,
                pickup_merchant_id: &after.merchant_id,
                dropoff: after.deliver_to,
            }
        });
    }
}
