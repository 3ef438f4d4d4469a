//! The operations view: where every rider and every open order is, node-wide, for the live
//! dispatch map (`GET /ops`, fed by the `/v1/ops/live` socket).
//!
//! It is fed by what already reaches this node's hub, so it works the same on a single node and
//! in a cluster (where the events feed republishes every node's events into every hub):
//! - order changes, through [`super::publish_order`] (status, rider, pickup point, timestamps);
//! - offers and their withdrawal, as the hub publishes them to a rider's topic;
//! - riders' own reports ([`RiderSeen`]): a rider actor sends one when it goes online or
//!   offline, takes or leaves an order, and (at most once per `realtime.location_interval_ms`)
//!   when it moves. In a cluster they travel as live events of kind [`RIDER_KIND`].
//!
//! Clients get one full snapshot, then *deltas*: every `realtime.ops_interval_ms` a single
//! ticker collects what changed since the last tick (riders and orders as compact arrays
//! `[id, lat, lng, state]`, plus the ids that left the map), serialises it once and broadcasts
//! the same text to every watcher. At 10,000 riders a full frame is about half a megabyte,
//! while a tick's delta holds only the riders that moved in that tick, so deltas keep both the
//! node (one serialisation per tick, not per client) and the operators' links cheap. Entries are
//! absolute values, so applying one twice is harmless; a watcher that falls behind the broadcast
//! gets a fresh snapshot instead of the deltas it missed.
//!
//! Nothing is tracked for the map while nobody watches beyond the entries themselves and the
//! counters: the ticker runs only while at least one socket is open.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::actors::order_machine::{OrderStatus, ALL_STATUSES};
use crate::domain::{now_ms, Location};
use crate::metrics;
use crate::model::Order;

/// The live-event kind a rider's report travels as between nodes.
pub const RIDER_KIND: &str = "ops_rider";

/// Rider states on the wire (the fourth element of a rider entry).
pub const RIDER_STATES: [&str; 3] = ["idle", "offered", "carrying"];
/// Order states on the wire (the fourth element of an order entry).
pub const ORDER_STATES: [&str; 3] = ["waiting", "assigned", "carried"];

/// Frames kept for watchers that are a little behind; further behind, they get a snapshot.
const BACKLOG: usize = 16;
/// Window of the orders-per-second figure, seconds.
const RATE_WINDOW_S: i64 = 10;
/// Window of the time-to-assign percentile, ms, and the most samples kept in it.
const ASSIGN_WINDOW_MS: i64 = 60_000;
const ASSIGN_SAMPLES: usize = 4096;

/// What a rider actor reports about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiderSeen {
    /// The rider.
    pub rider_id: String,
    /// Its last known position.
    pub location: Option<Location>,
    /// Offline riders leave the map.
    pub online: bool,
    /// The order it carries.
    pub order_id: Option<String>,
}

/// One frame for watchers: its tick number and its JSON text.
#[derive(Debug)]
pub struct Frame {
    /// The tick that produced it (a snapshot carries the last tick it includes).
    pub version: u64,
    /// The JSON sent to clients.
    pub text: String,
}

/// A rider on the map.
#[derive(Debug, Default)]
struct RiderDot {
    /// Rounded position, if known.
    at: Option<(f64, f64)>,
    /// The order it carries.
    order: Option<String>,
    /// The order it is offered.
    offered: Option<String>,
}

impl RiderDot {
    fn state(&self) -> u8 {
        if self.order.is_some() {
            2
        } else if self.offered.is_some() {
            1
        } else {
            0
        }
    }
}

/// An order not yet terminal.
#[derive(Debug)]
struct OrderDot {
    /// Its status as last seen.
    status: OrderStatus,
    /// Its version as last seen (older events are ignored).
    version: i64,
    /// Rounded pickup point, if known.
    pickup: Option<(f64, f64)>,
    /// Its rider.
    rider: Option<String>,
    /// When it entered `accepted` (for time-to-assign).
    accepted_at: Option<i64>,
}

impl OrderDot {
    /// The map state, for the statuses shown on the map.
    fn state(&self) -> Option<u8> {
        match self.status {
            OrderStatus::Accepted if self.rider.is_none() => Some(0),
            OrderStatus::RiderAssigned => Some(1),
            OrderStatus::PickedUp => Some(2),
            _ => None,
        }
    }
}

/// Ids changed or gone since the last tick (tracked only while someone watches).
#[derive(Default)]
struct Changes {
    riders: HashSet<String>,
    riders_gone: HashSet<String>,
    orders: HashSet<String>,
    orders_gone: HashSet<String>,
}

/// How many maps hold the open orders (`OpenOrders`).
const ORDER_PARTS: usize = 64;

/// Every open order, spread over `ORDER_PARTS` maps by a hash of its id. In one map, each
/// doubling rehashed every open order at once, under the view's lock that every order change
/// takes: at 229,376 open orders that took about 250 ms of a core (mostly page faults on the
/// new table), and every actor publishing an order change waited behind it, so each `create`
/// run had one such stall at p99.9 (issue 10). A part doubles a 64th of the orders at a time.
struct OpenOrders {
    parts: Vec<HashMap<String, OrderDot>>,
}

impl Default for OpenOrders {
    fn default() -> Self {
        OpenOrders {
            parts: (0..ORDER_PARTS).map(|_| HashMap::new()).collect(),
        }
    }
}

impl OpenOrders {
    fn part(&self, id: &str) -> usize {
        crate::cluster::shard_of(id, ORDER_PARTS as u32) as usize
    }

    fn get(&self, id: &str) -> Option<&OrderDot> {
        self.parts[self.part(id)].get(id)
    }

    fn contains_key(&self, id: &str) -> bool {
        self.parts[self.part(id)].contains_key(id)
    }

    fn insert(&mut self, id: String, dot: OrderDot) {
        let part = self.part(&id);
        self.parts[part].insert(id, dot);
    }

    fn remove(&mut self, id: &str) -> Option<OrderDot> {
        let part = self.part(id);
        self.parts[part].remove(id)
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &OrderDot)> {
        self.parts.iter().flat_map(|p| p.iter())
    }

    fn values(&self) -> impl Iterator<Item = &OrderDot> {
        self.parts.iter().flat_map(|p| p.values())
    }
}

#[derive(Default)]
struct State {
    riders: HashMap<String, RiderDot>,
    orders: OpenOrders,
    /// Orders per status as seen by this node (terminal ones since it started).
    counts: [u64; ALL_STATUSES.len()],
    /// Orders created per second: (unix second, count), oldest first.
    created: VecDeque<(i64, u64)>,
    /// When this view saw its first creation, unix seconds.
    first_created: Option<i64>,
    /// Time-to-assign samples: (when, ms), oldest first.
    assign: VecDeque<(i64, i64)>,
    /// Last tick.
    version: u64,
    /// Some while a ticker runs.
    changes: Option<Changes>,
    /// The store's open orders were read in (by the first watcher).
    seeded: bool,
}

fn round(l: Location) -> (f64, f64) {
    ((l.lat * 1e5).round() / 1e5, (l.lng * 1e5).round() / 1e5)
}

fn status_index(s: OrderStatus) -> usize {
    ALL_STATUSES.iter().position(|x| *x == s).unwrap_or(0)
}

impl State {
    fn rider_changed(&mut self, id: &str) {
        if let Some(c) = &mut self.changes {
            c.riders_gone.remove(id);
            c.riders.insert(id.to_string());
        }
    }

    fn rider_gone(&mut self, id: &str) {
        if let Some(c) = &mut self.changes {
            c.riders.remove(id);
            c.riders_gone.insert(id.to_string());
        }
    }

    fn order_changed(&mut self, id: &str) {
        if let Some(c) = &mut self.changes {
            c.orders_gone.remove(id);
            c.orders.insert(id.to_string());
        }
    }

    fn order_gone(&mut self, id: &str) {
        if let Some(c) = &mut self.changes {
            c.orders.remove(id);
            c.orders_gone.insert(id.to_string());
        }
    }

    /// An order's map entry, if it is shown: `[id, lat, lng, state]`.
    fn order_entry<'a>(&self, id: &'a str, o: &OrderDot) -> Option<(&'a str, f64, f64, u8)> {
        let state = o.state()?;
        let carried_at = o
            .rider
            .as_ref()
            .filter(|_| state == 2)
            .and_then(|r| self.riders.get(r))
            .and_then(|r| r.at);
        let (lat, lng) = carried_at.or(o.pickup)?;
        Some((id, lat, lng, state))
    }

    fn stats(&self, now: i64) -> Value {
        let status: serde_json::Map<String, Value> = ALL_STATUSES
            .iter()
            .zip(self.counts.iter())
            .map(|(s, n)| (s.as_str().to_string(), Value::from(*n)))
            .collect();
        let sec = now.div_euclid(1000);
        let window = self
            .first_created
            .map_or(RATE_WINDOW_S, |f| (sec - f).clamp(1, RATE_WINDOW_S));
        let recent: u64 = self
            .created
            .iter()
            .filter(|(s, _)| *s < sec && *s >= sec - window)
            .map(|(_, n)| n)
            .sum();
        let mut samples: Vec<i64> = self
            .assign
            .iter()
            .filter(|(at, _)| *at >= now - ASSIGN_WINDOW_MS)
            .map(|(_, ms)| *ms)
            .collect();
        samples.sort_unstable();
        let p99 = (!samples.is_empty()).then(|| {
            let rank = ((samples.len() as f64) * 0.99).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        });
        let mut riders = [0u64; 3];
        for r in self.riders.values().filter(|r| r.at.is_some()) {
            riders[r.state() as usize] += 1;
        }
        let mut orders = [0u64; 3];
        for o in self.orders.values() {
            if let Some(s) = o.state() {
                orders[s as usize] += 1;
            }
        }
        json!({
            "status": status,
            "orders_per_s": (recent as f64 / window as f64 * 100.0).round() / 100.0,
            "p99_assign_ms": p99,
            "assign_samples": samples.len(),
            "riders": riders,
            "orders": orders,
        })
    }

    fn snapshot(&self) -> Frame {
        let now = now_ms();
        let riders: Vec<(&str, f64, f64, u8)> = self
            .riders
            .iter()
            .filter_map(|(id, r)| r.at.map(|(lat, lng)| (id.as_str(), lat, lng, r.state())))
            .collect();
        let orders: Vec<(&str, f64, f64, u8)> = self
            .orders
            .iter()
            .filter_map(|(id, o)| self.order_entry(id, o))
            .collect();
        let text = json!({
            "type": "snapshot", "v": self.version, "ts": now,
            "legend": {
                "rider": RIDER_STATES, "order": ORDER_STATES,
                "status": ALL_STATUSES.map(OrderStatus::as_str),
            },
            "riders": riders, "orders": orders, "stats": self.stats(now),
        })
        .to_string();
        metrics::OPS_FRAME_BYTES
            .with_label_values(&["snapshot"])
            .observe(text.len() as f64);
        Frame {
            version: self.version,
            text,
        }
    }

    /// Ends a tick: what changed since the last one.
    fn delta(&mut self) -> Frame {
        self.version += 1;
        let now = now_ms();
        let c = self.changes.replace(Changes::default()).unwrap_or_default();
        let mut riders_gone: Vec<&str> = c.riders_gone.iter().map(String::as_str).collect();
        let mut riders = Vec::with_capacity(c.riders.len());
        for id in &c.riders {
            match self.riders.get(id) {
                Some(
                    r @ RiderDot {
                        at: Some((lat, lng)),
                        ..
                    },
                ) => riders.push((id.as_str(), *lat, *lng, r.state())),
                _ => riders_gone.push(id.as_str()),
            }
        }
        let mut orders_gone: Vec<&str> = c.orders_gone.iter().map(String::as_str).collect();
        let mut orders = Vec::with_capacity(c.orders.len());
        for id in &c.orders {
            match self.orders.get(id).and_then(|o| self.order_entry(id, o)) {
                Some(entry) => orders.push(entry),
                None => orders_gone.push(id.as_str()),
            }
        }
        let text = json!({
            "type": "delta", "v": self.version, "ts": now,
            "riders": riders, "orders": orders,
            "gone": { "riders": riders_gone, "orders": orders_gone },
            "stats": self.stats(now),
        })
        .to_string();
        metrics::OPS_FRAME_BYTES
            .with_label_values(&["delta"])
            .observe(text.len() as f64);
        Frame {
            version: self.version,
            text,
        }
    }
}

struct Inner {
    state: Mutex<State>,
    /// The running ticker's generation and channel, while one runs.
    ticker: Mutex<Option<(u64, broadcast::Sender<Arc<Frame>>)>>,
    generation: std::sync::atomic::AtomicU64,
}

/// The node's operations view. Cheap to clone.
#[derive(Clone)]
pub struct OpsView {
    inner: Arc<Inner>,
}

impl Default for OpsView {
    fn default() -> Self {
        Self::new()
    }
}

/// One watcher: its snapshot, then the deltas after it.
pub struct Watch {
    /// The full view when the watch began.
    pub snapshot: Frame,
    /// Deltas, one per tick (skip those at or below the snapshot's version).
    pub frames: broadcast::Receiver<Arc<Frame>>,
    view: OpsView,
}

impl Watch {
    /// A fresh snapshot (after falling behind), and from then on the deltas after it.
    pub fn resync(&mut self) -> Frame {
        self.frames = self.frames.resubscribe();
        self.view.lock().snapshot()
    }
}

impl OpsView {
    /// An empty view.
    pub fn new() -> Self {
        OpsView {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                ticker: Mutex::new(None),
                generation: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a few map operations that leave the maps consistent on a panic.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A rider reported itself.
    pub fn rider(&self, seen: RiderSeen) {
        let mut st = self.lock();
        if !seen.online {
            if st.riders.remove(&seen.rider_id).is_some() {
                st.rider_gone(&seen.rider_id);
            }
            return;
        }
        let r = st.riders.entry(seen.rider_id.clone()).or_default();
        if let Some(l) = seen.location {
            r.at = Some(round(l));
        }
        if seen.order_id.is_some() {
            r.offered = None;
        }
        r.order = seen.order_id;
        let carried = r.order.clone();
        st.rider_changed(&seen.rider_id);
        if let Some(order) = carried {
            if st.orders.get(&order).is_some_and(|o| o.state() == Some(2)) {
                st.order_changed(&order);
            }
        }
    }

    /// A rider was offered `order` (`Some`) or its offer was withdrawn (`None`).
    pub fn offer(&self, rider_id: &str, order: Option<&str>) {
        let mut st = self.lock();
        let r = st.riders.entry(rider_id.to_string()).or_default();
        r.offered = order.map(str::to_string);
        st.rider_changed(rider_id);
    }

    /// An order changed from `from` (`None`: created) to `after`.
    pub fn order(&self, from: Option<OrderStatus>, after: &Order) {
        let mut st = self.lock();
        let now = now_ms();
        let known = st.orders.get(&after.id);
        if known.is_some_and(|o| o.version >= after.version) {
            return; // an older or repeated event (cluster feed)
        }
        let prev = known.map(|o| o.status);
        let accepted_at = known.and_then(|o| o.accepted_at);
        if let Some(p) = prev {
            let i = status_index(p);
            st.counts[i] = st.counts[i].saturating_sub(1);
        }
        st.counts[status_index(after.status)] += 1;
        if from.is_none() {
            let sec = now.div_euclid(1000);
            st.first_created.get_or_insert(sec);
            match st.created.back_mut() {
                Some((s, n)) if *s == sec => *n += 1,
                _ => st.created.push_back((sec, 1)),
            }
            while st
                .created
                .front()
                .is_some_and(|(s, _)| *s < sec - RATE_WINDOW_S - 1)
            {
                st.created.pop_front();
            }
        }
        let accepted_at = match after.status {
            OrderStatus::Accepted => Some(after.updated_at),
            _ => accepted_at,
        };
        if after.status == OrderStatus::RiderAssigned && prev != Some(OrderStatus::RiderAssigned) {
            if let Some(t) = accepted_at {
                st.assign.push_back((now, (after.updated_at - t).max(0)));
                while st.assign.len() > ASSIGN_SAMPLES
                    || st
                        .assign
                        .front()
                        .is_some_and(|(at, _)| *at < now - ASSIGN_WINDOW_MS)
                {
                    st.assign.pop_front();
                }
            }
        }
        if after.status.is_terminal() {
            if st.orders.remove(&after.id).is_some() {
                st.order_gone(&after.id);
            }
            return;
        }
        st.orders.insert(
            after.id.clone(),
            OrderDot {
                status: after.status,
                version: after.version,
                pickup: after.pickup.map(round),
                rider: after.rider_id.clone(),
                accepted_at,
            },
        );
        st.order_changed(&after.id);
    }

    /// True until [`OpsView::seed`] ran: orders opened before this node started (or joined)
    /// are known only once they change, so the first watcher reads them from the store.
    pub fn needs_seed(&self) -> bool {
        !self.lock().seeded
    }

    /// Adds open orders read from the store that the view has not seen (newer events win).
    pub fn seed(&self, orders: Vec<Order>) {
        let mut st = self.lock();
        st.seeded = true;
        for o in orders {
            if o.status.is_terminal() || st.orders.contains_key(&o.id) {
                continue;
            }
            st.counts[status_index(o.status)] += 1;
            st.orders.insert(
                o.id.clone(),
                OrderDot {
                    status: o.status,
                    version: o.version,
                    pickup: o.pickup.map(round),
                    rider: o.rider_id.clone(),
                    accepted_at: (o.status == OrderStatus::Accepted).then_some(o.updated_at),
                },
            );
            st.order_changed(&o.id);
        }
    }

    /// Starts watching: a snapshot now, and a delta every `interval` after it. The first watcher
    /// starts the ticker (on the current tokio runtime); it stops once nobody watches.
    pub fn watch(&self, interval: Duration) -> Watch {
        let frames = {
            let mut ticker = self.inner.ticker.lock().unwrap_or_else(|p| p.into_inner());
            match &*ticker {
                Some((_, tx)) if tx.receiver_count() > 0 => tx.subscribe(),
                _ => {
                    let (tx, rx) = broadcast::channel(BACKLOG);
                    let generation = self
                        .inner
                        .generation
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    *ticker = Some((generation, tx.clone()));
                    self.lock().changes = Some(Changes::default());
                    tokio::spawn(tick(Arc::downgrade(&self.inner), generation, tx, interval));
                    rx
                }
            }
        };
        let snapshot = self.lock().snapshot();
        Watch {
            snapshot,
            frames,
            view: self.clone(),
        }
    }
}

/// The ticker: one delta per interval while anyone watches.
async fn tick(
    inner: Weak<Inner>,
    generation: u64,
    tx: broadcast::Sender<Arc<Frame>>,
    interval: Duration,
) {
    let mut every = tokio::time::interval(interval.max(Duration::from_millis(10)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let view = OpsView { inner };
        {
            let mut ticker = view.inner.ticker.lock().unwrap_or_else(|p| p.into_inner());
            if tx.receiver_count() == 0 {
                if ticker.as_ref().is_some_and(|(g, _)| *g == generation) {
                    *ticker = None;
                    view.lock().changes = None;
                }
                return;
            }
        }
        let frame = view.lock().delta();
        let _ = tx.send(Arc::new(frame));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, status: OrderStatus, version: i64, rider: Option<&str>) -> Order {
        Order {
            id: id.into(),
            customer_id: "c".into(),
            merchant_id: "m".into(),
            rider_id: rider.map(str::to_string),
            status,
            items: vec![],
            total_cents: 100,
            deliver_to: Location {
                lat: 31.0,
                lng: 121.0,
            },
            pickup: Some(Location {
                lat: 31.2,
                lng: 121.4,
            }),
            version,
            created_at: 1_000,
            updated_at: 1_000 + version * 100,
            request_hash: None,
        }
    }

    fn seen(id: &str, lat: f64, order: Option<&str>) -> RiderSeen {
        RiderSeen {
            rider_id: id.into(),
            location: Some(Location { lat, lng: 121.5 }),
            online: true,
            order_id: order.map(str::to_string),
        }
    }

    fn parse(f: &Frame) -> Value {
        serde_json::from_str(&f.text).unwrap_or_default()
    }

    /// No map ever holds every open order: they spread over all the parts (so each doubling
    /// moves a 64th of them), and each is still found, replaced and removed where it lives.
    #[test]
    fn open_orders_spread_over_every_part() {
        const N: usize = 64 * 100;
        let view = OpsView::new();
        let ids: Vec<String> = (0..N).map(|_| crate::domain::new_id()).collect();
        for id in &ids {
            view.order(None, &order(id, OrderStatus::PendingPayment, 1, None));
            view.order(
                Some(OrderStatus::PendingPayment),
                &order(id, OrderStatus::Accepted, 3, None),
            );
            // An older event (the cluster feed repeats them) changes nothing.
            view.order(None, &order(id, OrderStatus::Paid, 2, None));
        }
        {
            let st = view.lock();
            let sizes: Vec<usize> = st.orders.parts.iter().map(HashMap::len).collect();
            assert_eq!(sizes.iter().sum::<usize>(), N);
            let (least, most) = (sizes.iter().min(), sizes.iter().max());
            assert!(least > Some(&50) && most < Some(&200), "{sizes:?}");
            assert!(ids
                .iter()
                .all(|id| st.orders.get(id).map(|o| o.version) == Some(3)));
            let stats = st.stats(now_ms());
            assert_eq!(stats["status"]["accepted"], N);
            assert_eq!(stats["status"]["paid"], 0);
            assert_eq!(stats["orders"][0], N, "all waiting for a rider");
        }
        for id in &ids {
            view.order(
                Some(OrderStatus::Accepted),
                &order(id, OrderStatus::Cancelled, 4, None),
            );
        }
        assert_eq!(view.lock().orders.iter().count(), 0);
    }

    #[tokio::test]
    async fn snapshot_then_deltas_carry_states_positions_and_departures() {
        let view = OpsView::new();
        view.rider(seen("r1", 31.1, None));
        view.rider(seen("r2", 31.2, None));
        view.order(None, &order("o1", OrderStatus::PendingPayment, 1, None));
        view.order(
            Some(OrderStatus::Paid),
            &order("o1", OrderStatus::Accepted, 3, None),
        );
        // The ticker never fires during this test: it ticks by hand.
        let w = view.watch(Duration::from_secs(3600));
        let snap = parse(&w.snapshot);
        assert_eq!(snap["type"], "snapshot");
        assert_eq!(snap["riders"].as_array().map(Vec::len), Some(2));
        assert_eq!(snap["orders"], json!([["o1", 31.2, 121.4, 0]]));
        assert_eq!(snap["stats"]["status"]["accepted"], 1);

        view.offer("r1", Some("o1"));
        view.rider(RiderSeen {
            online: false,
            ..seen("r2", 31.2, None)
        });
        let d = parse(&view.lock().delta());
        assert_eq!(d["type"], "delta");
        assert_eq!(d["riders"], json!([["r1", 31.1, 121.5, 1]]));
        assert_eq!(d["gone"]["riders"], json!(["r2"]));

        view.order(
            Some(OrderStatus::Accepted),
            &order("o1", OrderStatus::RiderAssigned, 4, Some("r1")),
        );
        view.rider(seen("r1", 31.15, Some("o1")));
        view.order(
            Some(OrderStatus::RiderAssigned),
            &order("o1", OrderStatus::PickedUp, 5, Some("r1")),
        );
        let d = parse(&view.lock().delta());
        assert_eq!(d["riders"], json!([["r1", 31.15, 121.5, 2]]));
        assert_eq!(
            d["orders"],
            json!([["o1", 31.15, 121.5, 2]]),
            "carried: at its rider"
        );
        assert_eq!(
            d["stats"]["p99_assign_ms"], 100,
            "accepted at v3, assigned at v4"
        );

        // A stale event changes nothing; a terminal one takes the order off the map.
        view.order(None, &order("o1", OrderStatus::Accepted, 2, None));
        view.order(
            Some(OrderStatus::Delivered),
            &order("o1", OrderStatus::Completed, 7, Some("r1")),
        );
        let d = parse(&view.lock().delta());
        assert_eq!(d["gone"]["orders"], json!(["o1"]));
        assert_eq!(d["stats"]["status"]["completed"], 1);
        assert_eq!(d["stats"]["status"]["picked_up"], 0);
        assert_eq!(d["stats"]["status"]["accepted"], 0);
        drop(w);
    }

    #[tokio::test]
    async fn at_ten_thousand_riders_a_delta_carries_only_what_moved() {
        let view = OpsView::new();
        let ids: Vec<String> = (0..10_000).map(|_| crate::domain::new_id()).collect();
        for (i, id) in ids.iter().enumerate() {
            view.rider(RiderSeen {
                rider_id: id.clone(),
                location: Some(Location {
                    lat: 31.1 + (i % 100) as f64 * 0.0031,
                    lng: 121.3 + (i / 100) as f64 * 0.0047,
                }),
                online: true,
                order_id: None,
            });
        }
        let w = view.watch(Duration::from_secs(3600));
        let full = w.snapshot.text.len();
        assert_eq!(
            parse(&w.snapshot)["riders"].as_array().map(Vec::len),
            Some(10_000)
        );
        // A 250 ms tick when every rider reports about every 5 s: one in twenty moved.
        for id in ids.iter().step_by(20) {
            view.rider(RiderSeen {
                location: Some(Location {
                    lat: 31.2,
                    lng: 121.4,
                }),
                ..seen(id, 0.0, None)
            });
        }
        let delta = view.lock().delta();
        assert_eq!(parse(&delta)["riders"].as_array().map(Vec::len), Some(500));
        println!(
            "10,000 riders: snapshot {full} bytes, delta of 500 moves {} bytes",
            delta.text.len()
        );
        assert!(
            delta.text.len() * 10 < full,
            "a delta is a fraction of a snapshot"
        );
        drop(w);
    }

    #[tokio::test]
    async fn in_a_cluster_a_riders_report_reaches_the_view_of_the_hub_that_reads_it() {
        // What a rider actor's node produces (`Fanout::rider_seen` through the live sink) and
        // the events feed of every node reads back (`LiveEvent::publish`).
        let report = seen("r1", 31.1, Some("o1"));
        let event = crate::realtime::LiveEvent {
            topic: crate::realtime::Topic::Rider("r1".into()),
            kind: RIDER_KIND.into(),
            order_id: None,
            fields: serde_json::to_value(&report).unwrap_or_default(),
        };
        let wire = serde_json::to_string(&event).unwrap_or_default();
        let read: crate::realtime::LiveEvent =
            serde_json::from_str(&wire).expect("a live event reads back");
        let hub = crate::realtime::Hub::new(8);
        let mut feed = hub.subscribe(crate::realtime::Topic::Rider("r1".into()));
        read.publish(&hub);
        let snap = parse(&hub.ops().watch(Duration::from_secs(3600)).snapshot);
        assert_eq!(snap["riders"], json!([["r1", 31.1, 121.5, 2]]));
        assert!(
            feed.rx.try_recv().is_err(),
            "the rider's own feed does not get it"
        );
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_gets_a_snapshot_and_the_deltas_after_it() {
        let view = OpsView::new();
        let mut w = view.watch(Duration::from_millis(5));
        view.rider(seen("r1", 31.1, None));
        // Read nothing while more than the backlog of ticks go by.
        let lagged = loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if view.lock().version > BACKLOG as u64 + 2 {
                break w.frames.recv().await;
            }
        };
        assert!(
            matches!(lagged, Err(broadcast::error::RecvError::Lagged(_))),
            "{lagged:?}"
        );
        let snap = w.resync();
        assert_eq!(parse(&snap)["riders"], json!([["r1", 31.1, 121.5, 0]]));
        let next = w.frames.recv().await.expect("a delta after the snapshot");
        assert!(
            next.version > snap.version,
            "{} after {}",
            next.version,
            snap.version
        );
    }

    #[tokio::test]
    async fn the_ticker_broadcasts_while_watched_and_stops_after() {
        let view = OpsView::new();
        let mut w = view.watch(Duration::from_millis(10));
        view.rider(seen("r1", 31.1, None));
        let mut moved = false;
        for _ in 0..50 {
            let f = w.frames.recv().await.expect("a delta");
            assert!(f.version > w.snapshot.version);
            if parse(&f)["riders"] == json!([["r1", 31.1, 121.5, 0]]) {
                moved = true;
                break;
            }
        }
        assert!(moved, "the rider's report reached a delta");
        drop(w);
        for _ in 0..200 {
            if view
                .inner
                .ticker
                .lock()
                .map(|t| t.is_none())
                .unwrap_or(false)
            {
                assert!(
                    view.lock().changes.is_none(),
                    "nothing tracked while unwatched"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the ticker kept running with nobody watching");
    }
}
