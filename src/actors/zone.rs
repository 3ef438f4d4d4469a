//! A dispatch zone: matches the zone's accepted orders with its riders. A zone is an entity like
//! an order or a rider, owned by the shard of its id, so exactly one runs in the whole cluster;
//! orders reach it by their pickup point, riders by their position (`Zones::of`). Riders that
//! are online, idle and not holding an offer live in an R-tree (`rstar`) keyed by their
//! position, so finding the nearest one is a tree walk, not a scan. A zone keeps its state in
//! memory only: when it starts (or moves to another node) it rebuilds it, asking the online
//! riders to report in and re-queueing the accepted orders that have no rider.
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
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, ResponseActFuture,
    Supervised, WrapFuture,
};
use rstar::primitives::GeomWithData;
use rstar::RTree;

use super::order_machine::{OrderEvent, OrderStatus};
use super::shard::{Shard, Slot};
use super::{Deps, Entity, Stop};
use crate::config::DispatchConfig;
use crate::domain::{now_ms, Caller, Location, Role};
use crate::error::{Error, Result};
use crate::messages::{
    AnswerOffer, ChangeOrder, DispatchStats, GetMerchant, GetOrder, Offer, OrderChanged,
    ReportToZone, RiderState, ZoneAnswer, ZoneOffer, ZoneStats,
};
use crate::metrics;
use crate::model::Order;
use crate::realtime::{messages as wire, Topic};
use crate::store::ShardEpoch;

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

/// One zone's dispatcher.
pub struct ZoneActor {
    /// The zone id.
    id: String,
    /// Node services.
    deps: Deps,
    cfg: DispatchConfig,
    riders: HashMap<String, RiderEntry>,
    tree: RTree<Point>,
    pending: HashMap<String, Waiting>,
    /// Orders in arrival order (may hold ids that left `pending`; skipped lazily).
    queue: VecDeque<String>,
    merchants: HashMap<String, Location>,
    serial: u64,
}

impl Entity for ZoneActor {
    const KIND: &'static str = "zone";

    fn fresh(id: String, deps: Deps, _fence: Option<ShardEpoch>) -> Self {
        let cfg = deps.settings.dispatch_cfg.clone();
        ZoneActor {
            id,
            deps,
            cfg,
            riders: HashMap::new(),
            tree: RTree::new(),
            pending: HashMap::new(),
            queue: VecDeque::new(),
            merchants: HashMap::new(),
            serial: 0,
        }
    }

    fn registry(shard: &mut Shard) -> &mut HashMap<String, Slot<Self>> {
        &mut shard.zones
    }
}

impl ZoneActor {
    /// Rebuilds the zone's view from the store: every online rider is asked to report where
    /// it is (those in this zone do), and accepted orders without a rider are queued again.
    /// Offers are not persisted; they are simply made again.
    fn rebuild(&mut self, ctx: &mut Context<Self>) {
        if !self.deps.settings.dispatch {
            return;
        }
        let deps = self.deps.clone();
        ctx.spawn(
            async move {
                let riders = deps.store.online_riders().await?;
                for id in &riders {
                    deps.router.notify(id, ReportToZone);
                }
                let accepted = deps.store.orders_in(&[OrderStatus::Accepted], None).await?;
                Ok::<_, crate::store::StoreError>((riders.len(), accepted))
            }
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok((riders, accepted)) => {
                    let zones = &act.deps.settings.zones;
                    let mine: Vec<Order> = accepted
                        .into_iter()
                        .filter(|o| o.rider_id.is_none())
                        .filter(|o| o.pickup.map_or(zones.fallback(), |p| zones.of(p)) == act.id)
                        .collect();
                    if riders + mine.len() > 0 {
                        tracing::info!(zone = %act.id, riders, orders = mine.len(), "dispatch zone rebuilt");
                    }
                    for o in mine {
                        act.order_changed(o, None, ctx);
                    }
                }
                Err(e) => {
                    tracing::warn!(zone = %act.id, error = %e, "dispatch zone could not rebuild; retrying");
                    ctx.run_later(Duration::from_secs(1), |act, ctx| act.rebuild(ctx));
                }
            }),
        );
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
        self.deps.events.live(
            Topic::Rider(rider.clone()),
            "offer",
            Some((order_id, None, None)),
            || {
                wire::fields(&wire::OfferMade {
                    rider_id: rider.clone(),
                    offer: offer.clone(),
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
        self.deps.events.live(
            Topic::Rider(out.rider.clone()),
            "offer_withdrawn",
            Some((order_id, None, None)),
            || {
                wire::fields(&wire::OfferWithdrawn {
                    rider_id: out.rider.clone(),
                    order_id: order_id.to_string(),
                    reason: reason.to_string(),
                })
            },
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

impl Actor for ZoneActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(usize::MAX >> 4);
        let every = Duration::from_millis(self.cfg.retry_ms.max(10));
        ctx.run_interval(every, |act, ctx| act.offer_waiting(None, ctx));
        self.rebuild(ctx);
    }
}

impl Supervised for ZoneActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        metrics::ACTOR_RESTARTS
            .with_label_values(&[Self::KIND])
            .inc();
        self.riders.clear();
        self.tree = RTree::new();
        self.pending.clear();
        self.queue.clear();
    }
}

impl Handler<Stop> for ZoneActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<RiderState> for ZoneActor {
    type Result = Result<()>;

    fn handle(&mut self, msg: RiderState, ctx: &mut Context<Self>) -> Result<()> {
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
            return Ok(());
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
        Ok(())
    }
}

impl Handler<OrderChanged> for ZoneActor {
    type Result = Result<()>;

    fn handle(&mut self, msg: OrderChanged, ctx: &mut Context<Self>) -> Result<()> {
        self.order_changed(msg.order, msg.previous_rider, ctx);
        Ok(())
    }
}

impl ZoneActor {
    /// An order entered `accepted` (queue it) or left it (withdraw its offer).
    fn order_changed(&mut self, o: Order, previous_rider: Option<String>, ctx: &mut Context<Self>) {
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
        let asked: HashSet<String> = previous_rider.into_iter().collect();
        if let Some(pickup) = o
            .pickup
            .or_else(|| self.merchants.get(&o.merchant_id).copied())
        {
            self.enqueue(&o, pickup, asked, ctx);
            return;
        }
        let router = self.deps.router.clone();
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

impl Handler<ZoneAnswer> for ZoneActor {
    type Result = ResponseActFuture<Self, Result<Order>>;

    fn handle(&mut self, ZoneAnswer(msg): ZoneAnswer, ctx: &mut Context<Self>) -> Self::Result {
        self.answer(msg, ctx)
    }
}

impl ZoneActor {
    fn answer(
        &mut self,
        msg: AnswerOffer,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<Order>> {
        let refuse = |e: Error| -> ResponseActFuture<Self, Result<Order>> {
            Box::pin(actix::fut::ready(Err(e)))
        };
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
            let router = self.deps.router.clone();
            let oid = msg.order_id.clone();
            return Box::pin(
                async move {
                    router
                        .send(
                            &oid,
                            GetOrder {
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
        let router = self.deps.router.clone();
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

impl Handler<ZoneOffer> for ZoneActor {
    type Result = Result<Option<Offer>>;

    fn handle(&mut self, msg: ZoneOffer, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(order) = self.riders.get(&msg.rider_id).and_then(|r| r.offer.clone()) else {
            return Ok(None);
        };
        Ok(self
            .pending
            .get(&order)
            .and_then(|w| w.offer.as_ref())
            .filter(|o| o.rider == msg.rider_id)
            .map(|o| o.offer.clone()))
    }
}

impl Handler<DispatchStats> for ZoneActor {
    type Result = Result<ZoneStats>;

    fn handle(&mut self, _: DispatchStats, _ctx: &mut Context<Self>) -> Self::Result {
        Ok(ZoneStats {
            waiting: self.pending.len(),
            available: self.tree.size(),
        })
    }
}
