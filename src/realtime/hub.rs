//! The hub: topic -> subscribers, each a bounded queue. Publishing never blocks: a subscriber
//! whose queue is full is cut off and marked slow, and its socket closes with that reason.
//! The hub also owns the node's operations view (`ops`), and hands it every offer it publishes.

use std::hash::{Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hashbrown::{Equivalent, HashMap};
use tokio::sync::mpsc;

use crate::actors::order_machine::OrderStatus;
use crate::domain::now_ms;

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// One order: `status` and `rider_location`.
    Order(String),
    /// One merchant's orders: `new_order`, `order_updated`, `order_cancelled`.
    Merchant(String),
    /// One rider: `offer`, `offer_withdrawn`, `assigned`, `order_updated`.
    Rider(String),
}

/// A topic named by borrowed ids: what a publisher looks its subscribers up with, so that
/// publishing an order's change to its followers allocates no keys (the hub's maps find a
/// [`Topic`] by it: the two hash alike and compare equal for the same ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRef<'a> {
    /// One order.
    Order(&'a str),
    /// One merchant's orders.
    Merchant(&'a str),
    /// One rider.
    Rider(&'a str),
}

impl Topic {
    /// The same topic, borrowed.
    pub fn key(&self) -> TopicRef<'_> {
        match self {
            Topic::Order(id) => TopicRef::Order(id),
            Topic::Merchant(id) => TopicRef::Merchant(id),
            Topic::Rider(id) => TopicRef::Rider(id),
        }
    }
}

impl Hash for TopicRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (kind, id) = match self {
            TopicRef::Order(id) => (0u8, id),
            TopicRef::Merchant(id) => (1, id),
            TopicRef::Rider(id) => (2, id),
        };
        kind.hash(state);
        id.hash(state);
    }
}

/// A topic hashes as its borrowed form, so that maps keyed by `Topic` find it by `TopicRef`.
impl Hash for Topic {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl Equivalent<Topic> for TopicRef<'_> {
    fn equivalent(&self, key: &Topic) -> bool {
        *self == key.key()
    }
}

/// One published event, shared by every subscriber.
#[derive(Debug)]
pub struct Event {
    /// Node-wide publication number.
    pub seq: u64,
    /// When it was published (for the event-to-socket latency histogram).
    pub published: Instant,
    /// The order it is about, if any.
    pub order_id: Option<String>,
    /// The order's version after the change, for status events (dedupe against snapshots).
    pub version: Option<i64>,
    /// The order's status after the change, for status events.
    pub status: Option<OrderStatus>,
    /// The JSON text sent to clients.
    pub text: String,
}

struct Sub {
    id: u64,
    tx: mpsc::Sender<Arc<Event>>,
    slow: Arc<AtomicBool>,
}

const SLOTS: usize = 32;

/// One slot's topics. hashbrown's map for `Equivalent` lookups by [`TopicRef`], with std's
/// randomly keyed SipHash as before (ids in topics come from clients: no weaker hash for them).
type Topics = HashMap<Topic, Vec<Sub>, RandomState>;

struct Inner {
    slots: Vec<Mutex<Topics>>,
    seq: AtomicU64,
    next_sub: AtomicU64,
    buffer: usize,
    /// The operations view, which sees every publication (watched or not).
    ops: super::ops::OpsView,
}

/// The node's event hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    /// Events in publication order.
    pub rx: mpsc::Receiver<Arc<Event>>,
    slow: Arc<AtomicBool>,
    topic: Topic,
    id: u64,
    hub: Hub,
}

impl Subscription {
    /// True when the hub cut this subscription off because its queue was full.
    pub fn was_slow(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.topic, self.id);
    }
}

impl Hub {
    /// A hub whose subscribers may each have `buffer` events queued.
    pub fn new(buffer: usize) -> Self {
        Hub {
            inner: Arc::new(Inner {
                slots: (0..SLOTS)
                    .map(|_| Mutex::new(HashMap::with_hasher(RandomState::new())))
                    .collect(),
                seq: AtomicU64::new(0),
                next_sub: AtomicU64::new(1),
                buffer: buffer.max(1),
                ops: super::ops::OpsView::new(),
            }),
        }
    }

    /// The slot of `topic`'s subscribers. Its hash is SipHash with fixed keys, each map's own
    /// is SipHash with random keys: independent, so the topics of one slot do not share the
    /// low bits a map places them by.
    fn slot(&self, topic: TopicRef<'_>) -> &Mutex<Topics> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        topic.hash(&mut h);
        &self.inner.slots[h.finish() as usize % SLOTS]
    }

    fn lock(m: &Mutex<Topics>) -> std::sync::MutexGuard<'_, Topics> {
        // A panic while holding the lock cannot leave the map inconsistent (single operations).
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node-wide operations view (the live dispatch map's source).
    pub fn ops(&self) -> &super::ops::OpsView {
        &self.inner.ops
    }

    /// The number of the last event published.
    pub fn last_seq(&self) -> u64 {
        self.inner.seq.load(Ordering::Acquire)
    }

    /// Follows `topic` from now on.
    pub fn subscribe(&self, topic: Topic) -> Subscription {
        let (tx, rx) = mpsc::channel(self.inner.buffer);
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        let slow = Arc::new(AtomicBool::new(false));
        Self::lock(self.slot(topic.key()))
            .entry(topic.clone())
            .or_default()
            .push(Sub {
                id,
                tx,
                slow: slow.clone(),
            });
        Subscription {
            rx,
            slow,
            topic,
            id,
            hub: self.clone(),
        }
    }

    fn unsubscribe(&self, topic: &Topic, id: u64) {
        let mut map = Self::lock(self.slot(topic.key()));
        if let Some(subs) = map.get_mut(topic) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                map.remove(topic);
            }
        }
    }

    /// Whether anyone follows `topic` (lets publishers skip building events nobody reads).
    pub fn has_subscribers(&self, topic: &Topic) -> bool {
        Self::lock(self.slot(topic.key())).contains_key(topic)
    }

    /// Publishes a message of `kind` with `fields` (an object) to `topic`. `order` names the
    /// order, its version and status when the event reflects a committed order change. `fields`
    /// is only called when someone follows the topic, so unwatched entities pay nothing.
    pub fn publish<F: serde::Serialize>(
        &self,
        topic: TopicRef<'_>,
        kind: &str,
        order: Option<(&str, Option<i64>, Option<OrderStatus>)>,
        fields: impl FnOnce() -> F,
    ) {
        if let TopicRef::Rider(rider) = topic {
            match kind {
                "offer" => self.inner.ops.offer(rider, order.map(|o| o.0)),
                "offer_withdrawn" => self.inner.ops.offer(rider, None),
                _ => {}
            }
        }
        let mut map = Self::lock(self.slot(topic));
        let Some(subs) = map.get_mut(&topic) else {
            return;
        };
        let seq = self.inner.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let event = Arc::new(Event {
            seq,
            published: Instant::now(),
            order_id: order.map(|o| o.0.to_string()),
            version: order.and_then(|o| o.1),
            status: order.and_then(|o| o.2),
            text: super::messages::text(kind, &fields(), Some((seq, now_ms()))),
        });
        subs.retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.slow.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if subs.is_empty() {
            map.remove(&topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::messages;
    use serde_json::Value;

    /// A publisher names its topic borrowed; the map holds it owned. The two must hash alike
    /// and match only the same kind and id, or events go nowhere (or to the wrong feed).
    #[tokio::test]
    async fn a_borrowed_topic_finds_the_subscribers_of_the_same_topic_only() {
        use std::hash::BuildHasher;
        let owned = [
            Topic::Order("x1".into()),
            Topic::Merchant("x1".into()),
            Topic::Rider("x1".into()),
            Topic::Rider("x2".into()),
        ];
        let state = RandomState::new();
        for t in &owned {
            assert_eq!(state.hash_one(t), state.hash_one(t.key()), "{t:?}");
            for other in &owned {
                assert_eq!(t.key().equivalent(other), t == other, "{t:?} vs {other:?}");
            }
        }
        let hub = Hub::new(8);
        let mut rider = hub.subscribe(Topic::Rider("x1".into()));
        let mut merchant = hub.subscribe(Topic::Merchant("x1".into()));
        hub.publish(TopicRef::Rider("x1"), "a", None, || serde_json::json!({}));
        hub.publish(TopicRef::Order("x1"), "b", None, || serde_json::json!({}));
        hub.publish(TopicRef::Rider("x2"), "c", None, || serde_json::json!({}));
        let got = rider.rx.recv().await.expect("the rider's event");
        assert!(got.text.contains("\"type\":\"a\""), "{}", got.text);
        assert!(rider.rx.try_recv().is_err(), "only its own topic's events");
        assert!(
            merchant.rx.try_recv().is_err(),
            "same id, another kind: not its topic"
        );
        drop(rider);
        assert!(!hub.has_subscribers(&Topic::Rider("x1".into())));
        assert!(hub.has_subscribers(&Topic::Merchant("x1".into())));
    }

    #[tokio::test]
    async fn events_reach_subscribers_in_order_and_a_full_queue_cuts_off() {
        let hub = Hub::new(2);
        let t = Topic::Order("o1".into());
        let mut fast = hub.subscribe(t.clone());
        let slow = hub.subscribe(t.clone());
        hub.publish(t.key(), "a", None, || serde_json::json!({}));
        hub.publish(t.key(), "b", None, || serde_json::json!({}));
        assert!(fast.rx.recv().await.is_some_and(|e| e.seq == 1));
        assert!(fast.rx.recv().await.is_some_and(|e| e.seq == 2));
        hub.publish(t.key(), "c", None, || serde_json::json!({}));
        assert!(slow.was_slow(), "third event overflows a queue of two");
        assert!(!fast.was_slow());
        let e = fast.rx.recv().await;
        assert!(e.is_some_and(|e| e.text.contains("\"type\":\"c\"") && e.seq == 3));
        drop(fast);
        drop(slow);
        assert!(!hub.has_subscribers(&t));
    }

    #[test]
    fn a_message_is_its_fields_with_type_seq_and_ts() {
        #[derive(serde::Serialize)]
        struct Moved {
            order_id: &'static str,
            rider_id: Option<&'static str>,
            lat: f64,
        }
        let text = messages::text(
            "rider_location",
            &Moved {
                order_id: "o1",
                rider_id: None,
                lat: 31.5,
            },
            Some((7, 1_700)),
        );
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"order_id": "o1", "rider_id": null, "lat": 31.5,
                "type": "rider_location", "seq": 7, "ts": 1_700})
        );
        // An object built as a `Value` frames the same way; anything else goes under `data`.
        let text = messages::text("x", &serde_json::json!({"a": 1}), Some((1, 2)));
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"a": 1, "type": "x", "seq": 1, "ts": 2})
        );
        let text = messages::text("x", &vec![1, 2], Some((1, 2)));
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"data": [1, 2], "type": "x", "seq": 1, "ts": 2})
        );
    }
}
