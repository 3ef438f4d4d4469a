//! The dispatcher: matches accepted orders with riders. One per node (a node serves a city, the
//! dispatch zone); riders that are online, idle and not holding an offer live in an R-tree
//! (`rstar`) keyed by their position, so finding the nearest one is a tree walk, not a scan.
//!
//! An order waits in `pending` from the moment its merchant accepts it until a rider accepts its
//! offer. Each order has at most one offer out and each rider at most one offer, so two orders
//! never hold the same rider; an offer expires after `offer_ttl` and moves to the next nearest
//! rider; a rider who declined or let an offer expire is not asked again for that order. Orders
//! with no rider in range wait and are retried when a rider frees up or every `retry_ms`.
//! Assignment itself is an ordinary `AssignRider` change on the order actor, which claims the
//! rider actor first; the dispatcher's view is advisory and the actors have the last word.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, MessageResult,
    ResponseActFuture, WrapFuture,
};
use rstar::primitives::GeomWithData;
use rstar::RTree;
use serde::Serialize;

use super::merchant::GetMerchant;
use super::order::ChangeOrder;
use super::order_machine::{OrderEvent, OrderStatus};
use crate::cluster::Router;
use crate::config::DispatchConfig;
use crate::domain::{now_ms, Caller, Location, Role};
use crate::error::{Error, Result};
use crate::metrics;
use crate::model::Order;
use crate::realtime::{Hub, Topic};

// ---- messages ----

/// A rider's dispatch-relevant state changed (from the rider actor).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct RiderState {
    /// The rider.
    pub rider_id: String,
    /// Taking work.
    pub online: bool,
    /// Carrying an order.
    pub busy: bool,
    /// Last known position.
    pub location: Option<Location>,
}

/// An order changed (from the order actor, after each committed change).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct OrderChanged {
    /// The order after the change.
    pub order: Order,
    /// The rider it had before the change (a release puts it back without that rider).
    pub previous_rider: Option<String>,
}

/// A rider answers an offer (REST or the rider's socket).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Order>")]
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

/// The offer a rider holds now, if any (for the rider feed's snapshot).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Option<Offer>")]
pub struct CurrentOffer {
    /// The rider.
    pub rider_id: String,
}

/// Counts for tests and the status page: (waiting orders, indexed riders).
#[derive(Message, Debug, Clone)]
#[rtype(result = "(usize, usize)")]
pub struct DispatchStats;

/// An offer as riders see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
}

// ---- actor ----

type Xyz = [f64; 3];
type Point = GeomWithData<Xyz, String>;

/// A position on the Earth's surface in metres from its centre: straight-line (chord) distance
/// between two such points ranks riders exactly like distance along the surface, anywhere.
fn project(l: Location) -> Xyz {
    const EARTH_RADIUS_M: f64 = 6_371_000.0;
    let (lat, lng) = (l.lat.to_radians(), l.lng.to_radians());
    [
        EARTH_RADIUS_M * lat.cos() * lng.cos(),
        EARTH_RADIUS_M * lat.cos() * lng.sin(),
        EARTH_RADIUS_M * lat.sin(),
    ]
}

fn distance_m(a: Xyz, b: Xyz) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[derive(Debug, Default)]
struct RiderEntry {
    online: bool,
    busy: bool,
    location: Option<Location>,
    /// The order offered to this rider, if any.
    offer: Option<String>,
    /// The point this rider has in the tree, if indexed.
    indexed: Option<Xyz>,
}

impl RiderEntry {
    fn available(&self) -> bool {
        self.online && !self.busy && self.offer.is_none() && self.location.is_some()
    }
}

#[derive(Debug)]
struct OutOffer {
    rider: String,
    serial: u64,
    offer: Offer,
    /// The rider accepted; the assignment is being committed.
    accepting: bool,
}

#[derive(Debug)]
struct Waiting {
    pickup: Location,
    dropoff: Location,
    /// Riders not to ask again for this order.
    asked: HashSet<String>,
    offer: Option<OutOffer>,
    since: Instant,
}

/// The node's dispatcher.
pub struct Dispatcher {
    router: Router,
    hub: Hub,
    cfg: DispatchConfig,
    riders: HashMap<String, RiderEntry>,
    tree: RTree<Point>,
    pending: HashMap<String, Waiting>,
    /// Orders in arrival order (may hold ids that left `pending`; skipped lazily).
    queue: VecDeque<String>,
    merchants: HashMap<String, Location>,
    serial: u64,
}

impl Dispatcher {
    /// A dispatcher that assigns through `router` and tells riders through `hub`.
    pub fn new(router: Router, hub: Hub, cfg: DispatchConfig) -> Self {
        Dispatcher {
            router,
            hub,
            cfg,
            riders: HashMap::new(),
            tree: RTree::new(),
            pending: HashMap::new(),
            queue: VecDeque::new(),
            merchants: HashMap::new(),
            serial: 0,
        }
    }

    /// Puts a rider in or out of the tree to match its state.
    fn reindex(&mut self, rider_id: &str) {
        let Some(r) = self.riders.get_mut(rider_id) else {
            return;
        };
        let want = if r.available() {
            r.location.map(project)
        } else {
            None
        };
        if r.indexed == want {
            return;
        }
        if let Some(p) = r.indexed.take() {
            self.tree.remove(&Point::new(p, rider_id.to_string()));
        }
        if let Some(p) = want {
            self.tree.insert(Point::new(p, rider_id.to_string()));
            r.indexed = Some(p);
        }
    }

    /// Offers `order_id` to the nearest available rider it has not asked yet.
    fn try_offer(&mut self, order_id: &str, ctx: &mut Context<Self>) -> bool {
        let Some(w) = self.pending.get(order_id) else {
            return false;
        };
        if w.offer.is_some() {
            return true;
        }
        let origin = project(w.pickup);
        let max = self.cfg.max_radius_m;
        let pick = self
            .tree
            .nearest_neighbor_iter(&origin)
            .take_while(|p| distance_m(*p.geom(), origin) <= max)
            .find(|p| !w.asked.contains(&p.data))
            .map(|p| (p.data.clone(), distance_m(*p.geom(), origin)));
        let Some((rider, dist)) = pick else {
            return false;
        };
        self.serial += 1;
        let serial = self.serial;
        let ttl = Duration::from_millis(self.cfg.offer_ttl_ms);
        let offer = Offer {
            order_id: order_id.to_string(),
            pickup: w.pickup,
            dropoff: w.dropoff,
            expires_at: now_ms() + self.cfg.offer_ttl_ms as i64,
            distance_m: dist.round(),
        };
        if let Some(w) = self.pending.get_mut(order_id) {
            w.asked.insert(rider.clone());
            w.offer = Some(OutOffer {
                rider: rider.clone(),
                serial,
                offer: offer.clone(),
                accepting: false,
            });
        }
        if let Some(r) = self.riders.get_mut(&rider) {
            r.offer = Some(order_id.to_string());
        }
        self.reindex(&rider);
        self.hub.publish(
            Topic::Rider(rider.clone()),
            "offer",
            Some((order_id, None, None)),
            || {
                serde_json::json!({
                    "rider_id": rider, "order_id": offer.order_id, "pickup": offer.pickup,
                    "dropoff": offer.dropoff, "expires_at": offer.expires_at,
                    "distance_m": offer.distance_m,
                })
            },
        );
        metrics::DISPATCH_OFFERS
            .with_label_values(&["offered"])
            .inc();
        let order = order_id.to_string();
        ctx.run_later(ttl, move |act, ctx| act.expire(&order, serial, ctx));
        true
    }

    /// Withdraws the offer out for `order_id` (if any), freeing its rider, and tells the rider.
    fn withdraw(&mut self, order_id: &str, reason: &str) -> Option<String> {
        let out = self.pending.get_mut(order_id)?.offer.take()?;
        self.release_rider(&out.rider, order_id);
        self.hub.publish(
            Topic::Rider(out.rider.clone()),
            "offer_withdrawn",
            Some((order_id, None, None)),
            || serde_json::json!({ "rider_id": out.rider, "order_id": order_id, "reason": reason }),
        );
        Some(out.rider)
    }

    fn release_rider(&mut self, rider: &str, order_id: &str) {
        if let Some(r) = self.riders.get_mut(rider) {
            if r.offer.as_deref() == Some(order_id) {
                r.offer = None;
            }
        }
        self.reindex(rider);
    }

    fn expire(&mut self, order_id: &str, serial: u64, ctx: &mut Context<Self>) {
        let live = self
            .pending
            .get(order_id)
            .and_then(|w| w.offer.as_ref())
            .is_some_and(|o| o.serial == serial && !o.accepting);
        if !live {
            return;
        }
        metrics::DISPATCH_OFFERS
            .with_label_values(&["expired"])
            .inc();
        if let Some(rider) = self.withdraw(order_id, "expired") {
            self.offer_waiting(Some(&rider), ctx);
        }
        self.try_offer(order_id, ctx);
    }

    /// Offers waiting orders, oldest first, while riders are available. With `freed`, only
    /// runs when that rider is actually available now.
    fn offer_waiting(&mut self, freed: Option<&str>, ctx: &mut Context<Self>) {
        if let Some(r) = freed {
            if !self.riders.get(r).is_some_and(RiderEntry::available) {
                return;
            }
        }
        self.queue.retain(|id| self.pending.contains_key(id));
        let ids: Vec<String> = self
            .queue
            .iter()
            .filter(|id| self.pending.get(*id).is_some_and(|w| w.offer.is_none()))
            .cloned()
            .collect();
        for id in ids {
            if self.tree.size() == 0 {
                break;
            }
            self.try_offer(&id, ctx);
        }
    }

    fn enqueue(
        &mut self,
        order: &Order,
        pickup: Location,
        asked: HashSet<String>,
        ctx: &mut Context<Self>,
    ) {
        if self.pending.contains_key(&order.id) {
            return;
        }
        self.pending.insert(
            order.id.clone(),
            Waiting {
                pickup,
                dropoff: order.deliver_to,
                asked,
                offer: None,
                since: Instant::now(),
            },
        );
        self.queue.push_back(order.id.clone());
        self.try_offer(&order.id, ctx);
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(usize::MAX >> 4);
        let every = Duration::from_millis(self.cfg.retry_ms.max(10));
        ctx.run_interval(every, |act, ctx| act.offer_waiting(None, ctx));
    }
}

impl Handler<RiderState> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: RiderState, ctx: &mut Context<Self>) {
        let e = self.riders.entry(msg.rider_id.clone()).or_default();
        let was = e.available();
        e.online = msg.online;
        e.busy = msg.busy;
        if msg.location.is_some() {
            e.location = msg.location;
        }
        let now = e.available();
        let offered = e.offer.clone();
        if !msg.online && offered.is_none() && e.indexed.is_none() {
            self.riders.remove(&msg.rider_id);
            return;
        }
        // A rider who went offline or got busy elsewhere cannot keep an offer.
        if let Some(order) = offered {
            if !msg.online || msg.busy {
                let accepting = self
                    .pending
                    .get(&order)
                    .and_then(|w| w.offer.as_ref())
                    .is_some_and(|o| o.accepting);
                if !accepting {
                    self.withdraw(&order, "rider unavailable");
                    self.try_offer(&order, ctx);
                }
            }
        }
        self.reindex(&msg.rider_id);
        if now && !was {
            self.offer_waiting(Some(&msg.rider_id), ctx);
        }
    }
}

impl Handler<OrderChanged> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: OrderChanged, ctx: &mut Context<Self>) {
        let o = msg.order;
        if o.status != OrderStatus::Accepted || o.rider_id.is_some() {
            if self.pending.contains_key(&o.id) {
                let accepting = self.pending[&o.id]
                    .offer
                    .as_ref()
                    .is_some_and(|x| x.accepting);
                if !accepting {
                    self.withdraw(&o.id, "order moved on");
                    self.pending.remove(&o.id);
                }
            }
            return;
        }
        let asked: HashSet<String> = msg.previous_rider.into_iter().collect();
        if let Some(pickup) = self.merchants.get(&o.merchant_id).copied() {
            self.enqueue(&o, pickup, asked, ctx);
            return;
        }
        let router = self.router.clone();
        let mid = o.merchant_id.clone();
        ctx.spawn(
            async move { router.send(&mid, GetMerchant).await }
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(m) => {
                        act.merchants
                            .insert(o.merchant_id.clone(), m.merchant.location);
                        act.enqueue(&o, m.merchant.location, asked, ctx);
                    }
                    Err(e) => {
                        tracing::warn!(order = %o.id, error = %e, "dispatch could not read the merchant; the order waits for a restart or a manual assignment");
                    }
                }),
        );
    }
}

impl Handler<AnswerOffer> for Dispatcher {
    type Result = ResponseActFuture<Self, Result<Order>>;

    fn handle(&mut self, msg: AnswerOffer, ctx: &mut Context<Self>) -> Self::Result {
        let refuse = |e: Error| -> Self::Result { Box::pin(actix::fut::ready(Err(e))) };
        if !msg.caller.is(Role::Rider, &msg.rider_id) {
            return refuse(Error::Forbidden(
                "only the rider the offer was made to may answer it".into(),
            ));
        }
        let holds = self
            .pending
            .get(&msg.order_id)
            .and_then(|w| w.offer.as_ref())
            .is_some_and(|o| o.rider == msg.rider_id && !o.accepting);
        if !holds {
            return refuse(Error::Conflict(format!(
                "rider {} holds no open offer for order {}",
                msg.rider_id, msg.order_id
            )));
        }
        if !msg.accept {
            metrics::DISPATCH_OFFERS
                .with_label_values(&["declined"])
                .inc();
            self.withdraw(&msg.order_id, "declined");
            self.try_offer(&msg.order_id, ctx);
            self.offer_waiting(Some(&msg.rider_id), ctx);
            let router = self.router.clone();
            let oid = msg.order_id.clone();
            return Box::pin(
                async move {
                    router
                        .send(
                            &oid,
                            super::order::GetOrder {
                                caller: Caller::system(),
                            },
                        )
                        .await
                }
                .into_actor(self),
            );
        }
        if let Some(o) = self
            .pending
            .get_mut(&msg.order_id)
            .and_then(|w| w.offer.as_mut())
        {
            o.accepting = true;
        }
        let router = self.router.clone();
        let (oid, rid) = (msg.order_id.clone(), msg.rider_id.clone());
        Box::pin(
            async move {
                router
                    .send(
                        &oid,
                        ChangeOrder {
                            caller: Caller::system(),
                            event: OrderEvent::AssignRider,
                            party: Some(rid),
                            expected_version: None,
                        },
                    )
                    .await
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                let (oid, rid) = (msg.order_id, msg.rider_id);
                match &res {
                    Ok(_) => {
                        metrics::DISPATCH_OFFERS.with_label_values(&["accepted"]).inc();
                        if let Some(w) = act.pending.remove(&oid) {
                            metrics::DISPATCH_TIME_TO_ASSIGN.observe(w.since.elapsed().as_secs_f64());
                        }
                        act.release_rider(&rid, &oid);
                    }
                    Err(e) => {
                        metrics::DISPATCH_OFFERS.with_label_values(&["failed"]).inc();
                        tracing::info!(order = %oid, rider = %rid, error = %e, "assignment refused; offering the order to the next rider");
                        if let Some(o) = act.pending.get_mut(&oid).and_then(|w| w.offer.as_mut()) {
                            o.accepting = false;
                        }
                        act.withdraw(&oid, "assignment failed");
                        act.try_offer(&oid, ctx);
                    }
                }
                res
            }),
        )
    }
}

impl Handler<CurrentOffer> for Dispatcher {
    type Result = Option<Offer>;

    fn handle(&mut self, msg: CurrentOffer, _ctx: &mut Context<Self>) -> Option<Offer> {
        let order = self.riders.get(&msg.rider_id)?.offer.clone()?;
        self.pending
            .get(&order)?
            .offer
            .as_ref()
            .filter(|o| o.rider == msg.rider_id)
            .map(|o| o.offer.clone())
    }
}

impl Handler<DispatchStats> for Dispatcher {
    type Result = MessageResult<DispatchStats>;

    fn handle(&mut self, _: DispatchStats, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult((self.pending.len(), self.tree.size()))
    }
}
