//! The rider actor: online/offline, position and the order it carries. Position updates stay in
//! memory (they arrive every few seconds); status changes are persisted with the latest position.
//! Under the `stacked` dispatch policy a rider may carry up to `max_stack` orders: the first is
//! the persisted `current_order`, the others are kept in memory (each order's row names its
//! rider, so a rider actor that starts again reads them back) and move up as orders are done.

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler,
    ResponseActFuture, ResponseFuture, Supervised, WrapFuture,
};
use tracing::Instrument as _;

use super::order_machine::OrderStatus;
use super::shard::{Shard, Slot};
use super::{Deps, Entity, Idleness, Loaded, Stop};
use crate::dispatch::PolicyKind;
use crate::domain::{now_ms, Caller, Role};
use crate::error::{Error, Result};
use crate::messages::{
    AnswerOffer, ClaimRider, CurrentOffer, FreeRider, GetRider, GoOffline, GoOnline, Offer,
    RegisterRider, ReportToZone, RiderState, UpdateLocation, ZoneAnswer, ZoneOffer,
};
use crate::metrics;
use crate::model::{Order, OutboxEvent, Rider};
use crate::realtime::{messages as wire, RiderSeen, Topic};
use crate::store::{ShardEpoch, StoreError, Write};

// ---- actor ----

/// One rider.
pub struct RiderActor {
    /// Rider id.
    id: String,
    /// Node services.
    deps: Deps,
    /// The shard epoch every write carries (cluster).
    fence: Option<ShardEpoch>,
    /// Persisted state once loaded (location may be newer than the store's).
    state: Loaded<Rider>,
    /// The dispatch zone last told about this rider (the one that may hold its offer).
    zone: Option<String>,
    /// Orders stacked after `current_order` (`stacked` policy), oldest first.
    stacked: Vec<String>,
    /// Passivation bookkeeping.
    idle: Idleness,
    /// When trackers last got this rider's position.
    last_push: Option<std::time::Instant>,
    /// A position arrived inside the throttle interval and a push of the latest one is
    /// scheduled for the interval's end (so the last position before a pause is not lost).
    trailing: bool,
    /// What the operations view was last told: online, and the order carried.
    shown: Option<(bool, Option<String>)>,
}

impl Entity for RiderActor {
    const KIND: &'static str = "rider";

    fn fresh(id: String, deps: Deps, fence: Option<ShardEpoch>) -> Self {
        RiderActor {
            id,
            deps,
            fence,
            state: Loaded::Loading,
            zone: None,
            stacked: Vec::new(),
            idle: Idleness::new(),
            last_push: None,
            trailing: false,
            shown: None,
        }
    }

    fn registry(shard: &mut Shard) -> &mut std::collections::HashMap<String, Slot<Self>> {
        &mut shard.riders
    }
}

impl Actor for RiderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(usize::MAX >> 4);
        self.load(ctx);
        ctx.run_interval(self.deps.settings.idle_check(), |act, _ctx| {
            // A rider carrying an order stays resident so dispatch and tracking stay cheap.
            let busy = matches!(&act.state, Loaded::Present(r) if r.current_order.is_some());
            if !busy && act.idle.due(act.deps.settings.idle) {
                super::ask_passivation::<Self>(&act.deps, &act.id);
            }
        });
    }
}

impl Supervised for RiderActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        metrics::ACTOR_RESTARTS
            .with_label_values(&[Self::KIND])
            .inc();
        self.state = Loaded::Loading;
    }
}

type Reply<T> = AtomicResponse<RiderActor, Result<T>>;

fn ready<T: 'static>(v: Result<T>) -> Reply<T> {
    AtomicResponse::new(Box::pin(actix::fut::ready(v)))
}

type Fut<T> = ResponseActFuture<RiderActor, Result<T>>;

impl RiderActor {
    /// Reads the state from the store; the mailbox waits until it is loaded.
    fn load(&mut self, ctx: &mut Context<Self>) {
        self.state = Loaded::Loading;
        let store = self.deps.store.clone();
        let id = self.id.clone();
        let stacking = self.deps.live.current().dispatch.settings.policy == PolicyKind::Stacked;
        ctx.wait(
            async move {
                let rider = store.load_rider(&id).await?;
                // Orders stacked after the current one name this rider in their rows (a scan
                // of the orders with riders, so only where stacking is on).
                let mut stacked = Vec::new();
                let current = rider.as_ref().and_then(|r| r.current_order.clone());
                if let Some(current) = current.filter(|_| stacking) {
                    let with_riders = [OrderStatus::RiderAssigned, OrderStatus::PickedUp];
                    for o in store.orders_in(&with_riders, None).await? {
                        if o.rider_id.as_deref() == Some(id.as_str()) && o.id != current {
                            stacked.push(o.id);
                        }
                    }
                }
                Ok::<_, StoreError>((rider, stacked))
            }
            .into_actor(self)
            .map(|res, act, _| {
                act.state = match res {
                    Ok((Some(r), stacked)) => {
                        act.stacked = stacked;
                        Loaded::Present(r)
                    }
                    Ok((None, _)) => Loaded::Absent,
                    Err(e) => Loaded::Failed(e.to_string()),
                };
                act.tell_dispatch();
            }),
        );
    }

    /// Every order the rider carries or is fetching, the current one first.
    fn orders(&self) -> Vec<String> {
        match &self.state {
            Loaded::Present(r) => r
                .current_order
                .iter()
                .chain(&self.stacked)
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Tells the rider's dispatch zone where it is and whether it can take work (and the zone
    /// it just left, that it is gone from there), and the operations view when its state
    /// changed (its moves go there with `push_location`).
    fn tell_dispatch(&mut self) {
        self.show_state();
        if !self.deps.settings.dispatch {
            return;
        }
        let orders = self.orders();
        let Loaded::Present(r) = &self.state else {
            return;
        };
        let zone = r
            .location
            .map(|l| self.deps.settings.zones.of(l).to_string());
        if let Some(old) = self.zone.as_ref().filter(|old| Some(*old) != zone.as_ref()) {
            self.deps.router.notify(
                old,
                RiderState {
                    rider_id: r.id.clone(),
                    online: false,
                    busy: r.current_order.is_some(),
                    location: r.location,
                    orders: Vec::new(),
                },
            );
        }
        if let Some(zone) = &zone {
            self.deps.router.notify(
                zone,
                RiderState {
                    rider_id: r.id.clone(),
                    online: r.online,
                    busy: r.current_order.is_some(),
                    location: r.location,
                    orders,
                },
            );
        }
        self.zone = zone;
    }

    /// Tells the operations view that the rider went online or offline, or took or left an
    /// order (at once, unthrottled: these are rare).
    fn show_state(&mut self) {
        let Loaded::Present(r) = &self.state else {
            return;
        };
        let now = (r.online, r.current_order.clone());
        if self.shown.as_ref() == Some(&now) {
            return;
        }
        if self.shown.as_ref().map(|s| &s.1) != Some(&now.1) {
            // A new order's trackers get the first position at once, as if none went before.
            self.last_push = None;
        }
        self.deps.events.rider_seen(RiderSeen {
            rider_id: r.id.clone(),
            location: r.location,
            online: r.online,
            order_id: r.current_order.clone(),
        });
        self.shown = Some(now);
    }

    /// Sends the position to the operations view and to whoever tracks the order this rider
    /// carries, at most once per configured interval.
    fn push_location(&mut self, ctx: &mut Context<Self>) {
        let Loaded::Present(r) = &self.state else {
            return;
        };
        let Some(loc) = r.location else {
            return;
        };
        let every = self.deps.settings.location_interval;
        if let Some(since) = self.last_push.map(|t| t.elapsed()).filter(|e| *e < every) {
            // Throttled: the latest position goes out when the interval ends.
            if !self.trailing {
                self.trailing = true;
                ctx.run_later(every - since, |act, ctx| {
                    act.trailing = false;
                    act.push_location(ctx);
                });
            }
            return;
        }
        self.last_push = Some(std::time::Instant::now());
        if r.online {
            self.deps.events.rider_seen(RiderSeen {
                rider_id: r.id.clone(),
                location: Some(loc),
                online: true,
                order_id: r.current_order.clone(),
            });
        }
        for order in r.current_order.iter().chain(&self.stacked) {
            self.deps.events.live(
                Topic::Order(order.clone()),
                "rider_location",
                Some((order.as_str(), None, None)),
                || wire::RiderLocation {
                    order_id: order.clone(),
                    rider_id: r.id.clone(),
                    lat: loc.lat,
                    lng: loc.lng,
                },
            );
        }
    }

    fn current(&mut self, ctx: &mut Context<Self>) -> Result<Rider> {
        match &self.state {
            Loaded::Present(r) => Ok(r.clone()),
            Loaded::Absent => Err(Error::not_found("rider", self.id.clone())),
            Loaded::Loading | Loaded::Unchecked => {
                Err(Error::Unavailable("rider is loading".into()))
            }
            Loaded::Failed(e) => {
                let e = e.clone();
                self.load(ctx); // try again; the next message waits for it
                Err(Error::Unavailable(format!(
                    "store unavailable, rider could not be loaded: {e}"
                )))
            }
        }
    }

    fn owned(&mut self, caller: &Caller, ctx: &mut Context<Self>) -> Result<Rider> {
        let r = self.current(ctx)?;
        if !caller.is(Role::Rider, &self.id) {
            return Err(Error::Forbidden(
                "only this rider or an admin may do that".into(),
            ));
        }
        Ok(r)
    }

    /// Persists `next` (insert when `expected` is None) with an outbox event, then adopts it.
    fn save(&mut self, next: Rider, event: &'static str, expected: Option<i64>) -> Fut<Rider> {
        let first = match expected {
            None => Write::InsertRider(next.clone()),
            Some(v) => Write::UpdateRider {
                rider: next.clone(),
                expected_version: v,
            },
        };
        let ev = Write::Event(OutboxEvent {
            aggregate_type: "rider".into(),
            aggregate_id: next.id.clone(),
            event_type: event.into(),
            payload: serde_json::json!({
                "online": next.online, "current_order": next.current_order, "version": next.version
            })
            .into(),
            created_at: now_ms(),
            traceparent: None,
        });
        let (deps, shard) = (self.deps.clone(), self.fence);
        Box::pin(
            async move {
                let res = deps.store.commit_fenced(shard, vec![first, ev]).await;
                if let Err(e) = &res {
                    super::on_fenced(&deps, e);
                }
                res
            }
            .in_current_span()
            .into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok(()) => {
                    act.state = Loaded::Present(next.clone());
                    act.tell_dispatch();
                    Ok(next)
                }
                Err(e) => {
                    if matches!(
                        e,
                        StoreError::VersionConflict { .. } | StoreError::Fenced { .. }
                    ) {
                        ctx.stop();
                    }
                    Err(e.into())
                }
            }),
        )
    }

    fn change(
        &mut self,
        ctx: &mut Context<Self>,
        caller: Option<&Caller>,
        event: &'static str,
        f: impl FnOnce(&mut Rider) -> Result<()>,
    ) -> Fut<Rider> {
        let cur = match caller {
            Some(c) => self.owned(c, ctx),
            None => self.current(ctx),
        };
        let mut next = match cur {
            Ok(r) => r,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        let expected = next.version;
        if let Err(e) = f(&mut next) {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        next.version += 1;
        self.save(next, event, Some(expected))
    }
}

impl Handler<RegisterRider> for RiderActor {
    type Result = Reply<Rider>;

    fn handle(&mut self, msg: RegisterRider, _ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        if !msg.caller.is_admin() {
            return ready(Err(Error::Forbidden(
                "only an admin may create riders".into(),
            )));
        }
        if !matches!(self.state, Loaded::Absent) {
            return ready(Err(Error::Conflict(format!(
                "rider {} already exists",
                self.id
            ))));
        }
        let r = Rider {
            id: self.id.clone(),
            name: msg.name,
            online: false,
            location: None,
            current_order: None,
            version: 1,
        };
        AtomicResponse::new(self.save(r, "rider_created", None))
    }
}

impl Handler<GoOnline> for RiderActor {
    type Result = Reply<Rider>;

    fn handle(&mut self, msg: GoOnline, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        AtomicResponse::new(self.change(ctx, Some(&msg.caller), "rider_online", |r| {
            r.online = true;
            r.location = Some(msg.location);
            Ok(())
        }))
    }
}

impl Handler<GoOffline> for RiderActor {
    type Result = Reply<Rider>;

    fn handle(&mut self, msg: GoOffline, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        AtomicResponse::new(self.change(ctx, Some(&msg.caller), "rider_offline", |r| {
            if let Some(o) = &r.current_order {
                return Err(Error::Conflict(format!("rider is carrying order {o}")));
            }
            r.online = false;
            Ok(())
        }))
    }
}

impl Handler<UpdateLocation> for RiderActor {
    type Result = Result<Rider>;

    fn handle(&mut self, msg: UpdateLocation, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        self.owned(&msg.caller, ctx)?;
        let r = match &mut self.state {
            Loaded::Present(r) => {
                r.location = Some(msg.location);
                r.clone()
            }
            _ => return Err(Error::not_found("rider", self.id.clone())),
        };
        self.tell_dispatch();
        self.push_location(ctx);
        Ok(r)
    }
}

impl Handler<GetRider> for RiderActor {
    type Result = Result<Rider>;

    fn handle(&mut self, _: GetRider, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        self.current(ctx)
    }
}

impl Handler<ClaimRider> for RiderActor {
    type Result = Reply<Rider>;

    fn handle(&mut self, msg: ClaimRider, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        if let Loaded::Present(r) = &self.state {
            if r.current_order.as_deref() == Some(msg.order_id.as_str())
                || self.stacked.contains(&msg.order_id)
            {
                return ready(Ok(r.clone()));
            }
            // Under `stacked`, a rider carrying orders may take one more, up to `max_stack`.
            // (The policy and `max_stack` change live: read them from the config in effect.)
            let live = self.deps.live.current();
            let cfg = &live.dispatch.settings;
            let load = 1 + self.stacked.len();
            if r.current_order.is_some()
                && r.online
                && cfg.policy == PolicyKind::Stacked
                && load < cfg.max_stack
            {
                let r = r.clone();
                self.stacked.push(msg.order_id);
                self.tell_dispatch();
                return ready(Ok(r));
            }
        }
        AtomicResponse::new(self.change(ctx, None, "rider_assigned", |r| {
            if !r.online {
                return Err(Error::Conflict("rider is offline".into()));
            }
            if let Some(o) = &r.current_order {
                return Err(Error::Conflict(format!("rider is busy with order {o}")));
            }
            r.current_order = Some(msg.order_id);
            Ok(())
        }))
    }
}

impl Handler<FreeRider> for RiderActor {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, msg: FreeRider, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        if let Some(i) = self.stacked.iter().position(|o| *o == msg.order_id) {
            self.stacked.remove(i);
            self.tell_dispatch();
            return ready(Ok(()));
        }
        let carrying = matches!(&self.state, Loaded::Present(r) if r.current_order.as_deref() == Some(msg.order_id.as_str()));
        if !carrying {
            return ready(Ok(()));
        }
        // The next stacked order, if any, becomes the current one (once persisted).
        let next = self.stacked.first().cloned();
        let fut = self.change(ctx, None, "rider_freed", |r| {
            r.current_order = next;
            Ok(())
        });
        let fut = fut.map(|res, act: &mut Self, _| {
            if let Ok(r) = &res {
                if let Some(current) = &r.current_order {
                    act.stacked.retain(|o| o != current);
                    act.tell_dispatch();
                }
            }
            res
        });
        AtomicResponse::new(Box::pin(fut.map(|r, _, _| r.map(|_| ()))))
    }
}

impl RiderActor {
    /// The zone that holds this rider's offers, or an error naming why there is none.
    fn zone_or_refuse(&mut self, ctx: &mut Context<Self>, caller: &Caller) -> Result<String> {
        self.current(ctx)?;
        if !caller.is(Role::Rider, &self.id) {
            return Err(Error::Forbidden(
                "only the rider the offer was made to may answer it".into(),
            ));
        }
        self.zone
            .clone()
            .ok_or_else(|| Error::Conflict(format!("rider {} holds no open offer", self.id)))
    }
}

impl Handler<AnswerOffer> for RiderActor {
    // Not atomic: accepting assigns the order, which claims this very rider.
    type Result = ResponseFuture<Result<std::sync::Arc<Order>>>;

    fn handle(&mut self, msg: AnswerOffer, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        let zone = match self.zone_or_refuse(ctx, &msg.caller) {
            Ok(z) => z,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let router = self.deps.router.clone();
        Box::pin(async move { router.send(&zone, ZoneAnswer(msg)).await })
    }
}

impl Handler<CurrentOffer> for RiderActor {
    type Result = ResponseFuture<Result<Option<Offer>>>;

    fn handle(&mut self, msg: CurrentOffer, ctx: &mut Context<Self>) -> Self::Result {
        self.idle.touch();
        if let Err(e) = self.current(ctx) {
            return Box::pin(async move { Err(e) });
        }
        let Some(zone) = self.zone.clone() else {
            return Box::pin(async { Ok(None) });
        };
        let router = self.deps.router.clone();
        Box::pin(async move {
            router
                .send(
                    &zone,
                    ZoneOffer {
                        rider_id: msg.rider_id,
                    },
                )
                .await
        })
    }
}

impl Handler<ReportToZone> for RiderActor {
    type Result = Result<()>;

    fn handle(&mut self, _: ReportToZone, ctx: &mut Context<Self>) -> Self::Result {
        self.current(ctx)?;
        self.tell_dispatch();
        Ok(())
    }
}

impl Handler<Stop> for RiderActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
