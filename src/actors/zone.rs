//! A dispatch zone: matches the zone's accepted orders with its riders. A zone is an entity like
//! an order or a rider, owned by the shard of its id, so exactly one runs in the whole cluster;
//! orders reach it by their pickup point, riders by their position (`Zones::of`). A zone keeps
//! its state in memory only: when it starts (or moves to another node) it rebuilds it, asking
//! the online riders to report in and re-queueing the accepted orders that have no rider.
//!
//! The choice of who gets which order is the configured policy's (`dispatch.policy`), the very
//! code the simulator runs (`crate::dispatch`). The zone runs *rounds*: it turns its waiting
//! orders (those with no offer out) and its available riders (online, located, holding no
//! offer; idle, or for `stacked` carrying fewer than `max_stack` orders whose route it knows)
//! into the policy's input, calls `Policy::plan`, and makes the offers it gets back. `greedy`
//! runs a round on every event that may allow an offer (an order waiting, a rider freed, a
//! decline or expiry; events arriving together share one round) and every `retry_ms`; `batch`
//! and `stacked` run one every `batch_ms`. A round with `offload_at` or more orders plus riders
//! is computed on a blocking thread: the zone's mailbox keeps being served, the result comes
//! back to the actor tagged with its round id (a result from before a restart is dropped), and
//! each offer is checked again against the zone's state before it is made.
//!
//! An order waits in `pending` from the moment its merchant accepts it until a rider accepts its
//! offer. Each order has at most one offer out and each rider at most one offer, so two orders
//! never hold the same rider; an offer expires after `offer_ttl`; a rider who declined or let an
//! offer expire is never offered that order again. Assignment itself is an ordinary
//! `AssignRider` change on the order actor, which claims the rider actor first; the
//! dispatcher's view is advisory and the actors have the last word. Under `stacked` the zone
//! remembers the route of each rider it stacked (the accepted offer's stops, less pickups done
//! and orders the rider no longer carries); the offer a rider sees carries that whole route.

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, ResponseActFuture,
    Supervised, WrapFuture,
};

use super::order_machine::{OrderEvent, OrderStatus};
use super::shard::{Shard, Slot};
use super::{Deps, Entity, Stop};
use crate::config::DispatchConfig;
use crate::dispatch::{
    self, AvailableRider, DispatchSettings, Haversine, Policy, PolicyKind, StopKind, WaitingOrder,
};
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

#[derive(Debug, Default)]
struct RiderEntry {
    online: bool,
    /// Carrying at least one order.
    busy: bool,
    location: Option<Location>,
    /// The orders the rider carries (as its actor last said).
    orders: Vec<String>,
    /// The order offered to this rider, if any.
    offer: Option<String>,
}

impl RiderEntry {
    /// Online, located and holding no offer.
    fn free(&self) -> bool {
        self.online && self.offer.is_none() && self.location.is_some()
    }

    /// Free and carrying nothing.
    fn idle(&self) -> bool {
        self.free() && !self.busy
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
    /// `since` in ms since the epoch (the policy's `waiting_since_ms`).
    since_ms: i64,
    /// When the food should be ready, ms since the epoch.
    ready_at_ms: i64,
    /// When delivery was promised, ms since the epoch.
    promised_at_ms: i64,
}

/// One zone's dispatcher.
pub struct ZoneActor {
    /// The zone id.
    id: String,
    /// Node services.
    deps: Deps,
    cfg: DispatchConfig,
    riders: HashMap<String, RiderEntry>,
    pending: HashMap<String, Waiting>,
    /// Orders in arrival order (may hold ids that left `pending`; skipped lazily).
    queue: VecDeque<String>,
    merchants: HashMap<String, Location>,
    serial: u64,
    /// The policy's settings (from `cfg`).
    settings: DispatchSettings,
    /// The policy; `None` while a round computes it off the actor.
    policy: Option<Box<dyn Policy>>,
    /// The id of the last round started; a result with another id is stale.
    round: u64,
    /// A round is computing off the actor.
    running: bool,
    /// Something happened while a round ran: run another when it is applied (greedy).
    again: bool,
    /// A round is scheduled to run on this actor's next turn (greedy).
    scheduled: bool,
    /// The configuration the zone last took its dispatch keys from (a reload replaces it).
    seen: Arc<crate::config::Config>,
    /// The round timer (rescheduled when a reload changes its period).
    tick: Option<actix::SpawnHandle>,
    /// `stacked`: the stops still ahead of riders this zone stacked orders on.
    routes: HashMap<String, Vec<dispatch::Stop>>,
    /// When each offer made expires (`serial` tells a live offer from one since answered).
    expiries: BinaryHeap<Reverse<(Instant, u64, String)>>,
    /// The one timer that fires at the earliest expiry, and when. One timer per offer made an
    /// actix context poll thousands of them on every message to a busy zone (each poll of a
    /// `Sleep` re-registers its waker): in `lifecycle` that was the hottest code of the node.
    expiry_timer: Option<(Instant, actix::SpawnHandle)>,
}

/// The policy `settings` names. The settings were validated when the node started, so this
/// only fails if they were changed unchecked; the zone then makes no offers and says why.
fn build_policy(settings: &DispatchSettings) -> Option<Box<dyn Policy>> {
    let built =
        Haversine::new(settings.speed_mps).and_then(|eta| dispatch::build(settings, Arc::new(eta)));
    match built {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(error = %e, "dispatch settings refused; this zone makes no offers");
            None
        }
    }
}

impl Entity for ZoneActor {
    const KIND: &'static str = "zone";

    fn fresh(id: String, deps: Deps, _fence: Option<ShardEpoch>) -> Self {
        let cfg = deps.settings.dispatch_cfg.clone();
        let settings = cfg.settings.clone();
        let seen = deps.live.current();
        ZoneActor {
            seen,
            tick: None,
            id,
            deps,
            policy: build_policy(&settings),
            settings,
            cfg,
            riders: HashMap::new(),
            pending: HashMap::new(),
            queue: VecDeque::new(),
            merchants: HashMap::new(),
            serial: 0,
            round: 0,
            running: false,
            again: false,
            scheduled: false,
            routes: HashMap::new(),
            expiries: BinaryHeap::new(),
            expiry_timer: None,
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
                        act.order_changed(Arc::new(o), None, ctx);
                    }
                }
                Err(e) => {
                    tracing::warn!(zone = %act.id, error = %e, "dispatch zone could not rebuild; retrying");
                    ctx.run_later(Duration::from_secs(1), |act, ctx| act.rebuild(ctx));
                }
            }),
        );
    }

    /// Something happened that may allow an offer: `greedy` runs a round (once for all the
    /// events of this turn); `batch` and `stacked` wait for their next round.
    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.settings.policy != PolicyKind::Greedy {
            return;
        }
        if self.running {
            self.again = true;
            return;
        }
        if !self.scheduled {
            self.scheduled = true;
            ctx.run_later(Duration::ZERO, |act, ctx| {
                act.scheduled = false;
                act.run_round(ctx);
            });
        }
    }

    /// The policy's view of the orders waiting without an offer, oldest first.
    fn round_orders(&mut self) -> Vec<WaitingOrder> {
        self.queue.retain(|id| self.pending.contains_key(id));
        self.queue
            .iter()
            .filter_map(|id| {
                let w = self.pending.get(id).filter(|w| w.offer.is_none())?;
                Some(WaitingOrder {
                    id: id.clone(),
                    pickup: w.pickup,
                    dropoff: w.dropoff,
                    waiting_since_ms: w.since_ms,
                    ready_at_ms: w.ready_at_ms,
                    promised_at_ms: w.promised_at_ms,
                    declined: w.asked.iter().cloned().collect::<BTreeSet<_>>(),
                })
            })
            .collect()
    }

    /// The route the zone knows for a rider carrying orders (`stacked` only): the stops of the
    /// accepted offer still ahead, if it covers every order the rider carries.
    fn known_route(&self, rider: &str, e: &RiderEntry) -> Option<Vec<dispatch::Stop>> {
        let route = self.routes.get(rider)?;
        let covered = e
            .orders
            .iter()
            .all(|o| route.iter().any(|s| &s.order_id == o));
        covered.then(|| route.clone())
    }

    /// The policy's view of the riders who may get an offer: idle ones, and under `stacked`
    /// riders with fewer than `max_stack` orders whose route the zone knows.
    fn round_riders(&self) -> Vec<AvailableRider> {
        let stacking = self.settings.policy == PolicyKind::Stacked;
        let mut out: Vec<AvailableRider> = self
            .riders
            .iter()
            .filter(|(_, e)| e.free())
            .filter_map(|(id, e)| {
                let position = e.location?;
                if !e.busy {
                    return Some(AvailableRider {
                        id: id.clone(),
                        position,
                        route: Vec::new(),
                    });
                }
                if !stacking || e.orders.len() >= self.settings.max_stack {
                    return None;
                }
                Some(AvailableRider {
                    id: id.clone(),
                    position,
                    route: self.known_route(id, e)?,
                })
            })
            .collect();
        // Deterministic input (the map's order is not): ties then break the same way each run.
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Takes the dispatch keys of a reloaded configuration: a new policy or settings rebuild
    /// the policy (a round computing elsewhere keeps the old one, and its result still
    /// applies); a new period restarts the round timer. Refused settings change nothing.
    fn refresh(&mut self, ctx: &mut Context<Self>) {
        let now = self.deps.live.current();
        if Arc::ptr_eq(&now, &self.seen) {
            return;
        }
        self.seen = now.clone();
        let next = now.dispatch.clone();
        if let Err(e) = next.settings.validate() {
            tracing::error!(zone = %self.id, error = %e, "reloaded dispatch settings refused; keeping the old ones");
            return;
        }
        let old_period = self.period();
        if next.settings != self.settings {
            self.settings = next.settings.clone();
            if let Some(p) = build_policy(&self.settings) {
                self.policy = Some(p);
            }
        }
        self.cfg = next;
        if self.period() != old_period {
            self.schedule(ctx);
        }
        tracing::info!(zone = %self.id, policy = self.settings.policy.name(), "dispatch settings reloaded");
    }

    /// How often rounds run.
    fn period(&self) -> Duration {
        let every = match self.settings.policy {
            PolicyKind::Greedy => self.cfg.retry_ms,
            PolicyKind::Batch | PolicyKind::Stacked => self.settings.batch_ms,
        };
        Duration::from_millis(every.max(10))
    }

    /// (Re)starts the round timer.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.tick.take() {
            ctx.cancel_future(h);
        }
        self.tick = Some(ctx.run_interval(self.period(), |act, ctx| act.run_round(ctx)));
    }

    /// One round: the policy's offers for the waiting orders and available riders, computed
    /// here when small and on a blocking thread when large.
    fn run_round(&mut self, ctx: &mut Context<Self>) {
        self.refresh(ctx);
        if self.running {
            self.again = true;
            return;
        }
        let orders = self.round_orders();
        if orders.is_empty() {
            return;
        }
        let riders = self.round_riders();
        if riders.is_empty() {
            return;
        }
        let Some(mut policy) = self.policy.take() else {
            return;
        };
        self.round += 1;
        let round = self.round;
        let name = self.settings.policy.name();
        metrics::DISPATCH_ROUND_ORDERS
            .with_label_values(&[name])
            .observe(orders.len() as f64);
        let now = now_ms();
        if orders.len() + riders.len() < self.cfg.offload_at {
            let t = Instant::now();
            let offers = policy.plan(now, &orders, &riders);
            metrics::DISPATCH_ROUND_SECONDS
                .with_label_values(&[name, "inline"])
                .observe(t.elapsed().as_secs_f64());
            self.policy = Some(policy);
            self.apply(round, offers, ctx);
            return;
        }
        self.running = true;
        let work = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let offers = policy.plan(now, &orders, &riders);
            (policy, offers, t.elapsed())
        });
        let settings = self.settings.clone();
        ctx.spawn(work.into_actor(self).map(move |res, act, ctx| {
            // A result from before a restart does not end the round running now.
            if round == act.round {
                act.running = false;
            }
            match res {
                Ok((policy, offers, took)) => {
                    metrics::DISPATCH_ROUND_SECONDS
                        .with_label_values(&[name, "offloaded"])
                        .observe(took.as_secs_f64());
                    if act.policy.is_none() {
                        act.policy = Some(policy);
                    }
                    act.apply(round, offers, ctx);
                }
                Err(e) => {
                    tracing::error!(zone = %act.id, error = %e, "dispatch round failed; rebuilding the policy");
                    if act.policy.is_none() {
                        act.policy = build_policy(&settings);
                    }
                }
            }
            if std::mem::take(&mut act.again) {
                act.kick(ctx);
            }
        }));
    }

    /// Makes a round's offers that still hold: the order still waits with no offer out and
    /// was not declined by the rider, and the rider is still as the round saw it (free; idle,
    /// or for a stacked offer carrying exactly the orders of the route it was given).
    fn apply(&mut self, round: u64, offers: Vec<dispatch::Offer>, ctx: &mut Context<Self>) {
        if round != self.round {
            tracing::debug!(zone = %self.id, round, "stale dispatch round dropped");
            return;
        }
        for o in offers {
            let order_ok = self
                .pending
                .get(&o.order_id)
                .is_some_and(|w| w.offer.is_none() && !w.asked.contains(&o.rider_id));
            let rider_ok = self.riders.get(&o.rider_id).is_some_and(|e| {
                if !e.free() {
                    return false;
                }
                let others: BTreeSet<&str> = o
                    .route
                    .iter()
                    .map(|s| s.order_id.as_str())
                    .filter(|id| *id != o.order_id)
                    .collect();
                let carried: BTreeSet<&str> = e.orders.iter().map(String::as_str).collect();
                others == carried && (others.is_empty() || e.orders.len() < self.settings.max_stack)
            });
            if order_ok && rider_ok {
                self.make_offer(o, ctx);
            }
        }
    }

    /// Offers `o.order_id` to `o.rider_id` and tells the rider.
    fn make_offer(&mut self, o: dispatch::Offer, ctx: &mut Context<Self>) {
        let Some(w) = self.pending.get_mut(&o.order_id) else {
            return;
        };
        self.serial += 1;
        let serial = self.serial;
        let ttl = Duration::from_millis(self.cfg.offer_ttl_ms);
        let rider = o.rider_id;
        let offer = Offer {
            order_id: o.order_id.clone(),
            pickup: w.pickup,
            dropoff: w.dropoff,
            expires_at: now_ms() + self.cfg.offer_ttl_ms as i64,
            distance_m: o.distance_m.round(),
            route: o.route,
        };
        w.asked.insert(rider.clone());
        w.offer = Some(OutOffer {
            rider: rider.clone(),
            serial,
            offer: offer.clone(),
            accepting: false,
        });
        if let Some(r) = self.riders.get_mut(&rider) {
            r.offer = Some(offer.order_id.clone());
        }
        self.deps.events.live(
            Topic::Rider(rider.clone()),
            "offer",
            Some((offer.order_id.as_str(), None, None)),
            || wire::OfferMade {
                rider_id: rider.clone(),
                offer: offer.clone(),
            },
        );
        metrics::DISPATCH_OFFERS
            .with_label_values(&["offered"])
            .inc();
        self.expiries
            .push(Reverse((Instant::now() + ttl, serial, o.order_id)));
        self.arm_expiry(ctx);
    }

    /// Makes the expiry timer fire at the earliest expiry still queued.
    fn arm_expiry(&mut self, ctx: &mut Context<Self>) {
        let Some(Reverse((due, _, _))) = self.expiries.peek() else {
            return;
        };
        let due = *due;
        if self.expiry_timer.as_ref().is_some_and(|(at, _)| *at <= due) {
            return;
        }
        if let Some((_, h)) = self.expiry_timer.take() {
            ctx.cancel_future(h);
        }
        let wait = due.saturating_duration_since(Instant::now());
        let h = ctx.run_later(wait, |act, ctx| act.expire_due(ctx));
        self.expiry_timer = Some((due, h));
    }

    /// Expires every offer whose time has come, then waits for the next.
    fn expire_due(&mut self, ctx: &mut Context<Self>) {
        self.expiry_timer = None;
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(next) = self.expiries.peek_mut() {
            if next.0 .0 > now {
                break;
            }
            let Reverse((_, serial, order)) = PeekMut::pop(next);
            due.push((order, serial));
        }
        for (order, serial) in due {
            self.expire(&order, serial, ctx);
        }
        self.arm_expiry(ctx);
    }

    /// Withdraws the offer out for `order_id` (if any), freeing its rider, and tells the rider.
    fn withdraw(&mut self, order_id: &str, reason: &str) -> Option<String> {
        let out = self.pending.get_mut(order_id)?.offer.take()?;
        self.release_rider(&out.rider, order_id);
        self.deps.events.live(
            Topic::Rider(out.rider.clone()),
            "offer_withdrawn",
            Some((order_id, None, None)),
            || wire::OfferWithdrawn {
                rider_id: out.rider.clone(),
                order_id: order_id.to_string(),
                reason: reason.to_string(),
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
        self.withdraw(order_id, "expired");
        self.kick(ctx);
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
        let since_ms = now_ms();
        self.pending.insert(
            order.id.clone(),
            Waiting {
                pickup,
                dropoff: order.deliver_to,
                asked,
                offer: None,
                since: Instant::now(),
                since_ms,
                ready_at_ms: since_ms + self.cfg.prep_ms,
                promised_at_ms: order.created_at + self.cfg.promise_ms,
            },
        );
        self.queue.push_back(order.id.clone());
        self.kick(ctx);
    }

    /// Number of riders who could take an idle rider's offer now.
    fn idle_riders(&self) -> usize {
        self.riders.values().filter(|e| e.idle()).count()
    }
}

impl Actor for ZoneActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(usize::MAX >> 4);
        self.schedule(ctx);
        self.rebuild(ctx);
    }
}

impl Supervised for ZoneActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        metrics::ACTOR_RESTARTS
            .with_label_values(&[Self::KIND])
            .inc();
        self.riders.clear();
        self.pending.clear();
        self.queue.clear();
        self.routes.clear();
        // The offers are gone with `pending`; the restart dropped the context's timers too.
        self.expiries.clear();
        self.expiry_timer = None;
        // A round still computing belongs to the old state: its result is dropped.
        self.round += 1;
        self.running = false;
        self.again = false;
        self.scheduled = false;
        if self.policy.is_none() {
            self.policy = build_policy(&self.settings);
        }
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
        let was = e.free();
        let (had, was_busy) = (e.orders.len(), e.busy);
        e.online = msg.online;
        e.busy = msg.busy || !msg.orders.is_empty();
        e.orders = msg.orders;
        if msg.location.is_some() {
            e.location = msg.location;
        }
        let now = e.free();
        let (load, got_busy) = (e.orders.len(), e.busy && !was_busy);
        let offered = e.offer.clone();
        // The route keeps only the orders the rider still carries.
        if load == 0 {
            self.routes.remove(&msg.rider_id);
        } else if let Some(route) = self.routes.get_mut(&msg.rider_id) {
            let carried = &self.riders[&msg.rider_id].orders;
            route.retain(|s| carried.contains(&s.order_id));
        }
        if !msg.online && offered.is_none() {
            self.riders.remove(&msg.rider_id);
            self.routes.remove(&msg.rider_id);
            return Ok(());
        }
        // A rider who went offline or took an order elsewhere cannot keep an offer (a stacked
        // offer was made for the route the rider had then).
        if let Some(order) = offered {
            if !msg.online || load != had || got_busy {
                let accepting = self
                    .pending
                    .get(&order)
                    .and_then(|w| w.offer.as_ref())
                    .is_some_and(|o| o.accepting);
                if !accepting {
                    self.withdraw(&order, "rider unavailable");
                    self.kick(ctx);
                }
            }
        }
        if (now && !was) || load < had {
            self.kick(ctx);
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
    fn order_changed(
        &mut self,
        o: Arc<Order>,
        previous_rider: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        if o.status == OrderStatus::PickedUp {
            // A stacked rider's route loses the pickup it just made.
            if let Some(route) = o.rider_id.as_ref().and_then(|r| self.routes.get_mut(r)) {
                route.retain(|s| !(s.order_id == o.id && s.kind == StopKind::Pickup));
            }
            return;
        }
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
    type Result = ResponseActFuture<Self, Result<Arc<Order>>>;

    fn handle(&mut self, ZoneAnswer(msg): ZoneAnswer, ctx: &mut Context<Self>) -> Self::Result {
        self.answer(msg, ctx)
    }
}

impl ZoneActor {
    fn answer(
        &mut self,
        msg: AnswerOffer,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<Arc<Order>>> {
        let refuse = |e: Error| -> ResponseActFuture<Self, Result<Arc<Order>>> {
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
            self.kick(ctx);
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
                            // Under `stacked` the offer's route is the rider's from now on.
                            let stacking = act.settings.policy == PolicyKind::Stacked;
                            if let Some(out) = w.offer.filter(|_| stacking) {
                                act.routes.insert(rid.clone(), out.offer.route);
                            }
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
                        act.kick(ctx);
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
            available: self.idle_riders(),
        })
    }
}
