//! The rider actor: online/offline, position and the order it carries. Position updates stay in
//! memory (they arrive every few seconds); status changes are persisted with the latest position.

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, Message,
    ResponseActFuture, Supervised, WrapFuture,
};

use super::dispatcher::RiderState;
use super::shard::{Shard, Slot};
use super::{Deps, Entity, Idleness, Loaded, Stop};
use crate::cluster::Routed;
use crate::domain::{now_ms, Caller, Location, Role};
use crate::error::{Error, Result};
use crate::metrics;
use crate::model::{OutboxEvent, Rider};
use crate::realtime::Topic;
use crate::store::{StoreError, Write};

// ---- messages ----

/// Creates the rider (admin).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Rider>")]
pub struct RegisterRider {
    /// Who asks.
    pub caller: Caller,
    /// Display name.
    pub name: String,
}

/// The rider starts taking work at `location`.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Rider>")]
pub struct GoOnline {
    /// Who asks.
    pub caller: Caller,
    /// Where the rider is.
    pub location: Location,
}

/// The rider stops taking work (refused while carrying an order).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Rider>")]
pub struct GoOffline {
    /// Who asks.
    pub caller: Caller,
}

/// A position update.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Rider>")]
pub struct UpdateLocation {
    /// Who asks.
    pub caller: Caller,
    /// Where the rider is now.
    pub location: Location,
}

/// Reads the rider.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Rider>")]
pub struct GetRider;

/// Makes the rider busy with an order (from the order actor, when assigning).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Rider>")]
pub struct ClaimRider {
    /// The order.
    pub order_id: String,
}

/// Frees the rider from an order (delivered, released or cancelled).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<()>")]
pub struct FreeRider {
    /// The order.
    pub order_id: String,
}

macro_rules! routed {
    ($($msg:ty => $reply:ty),* $(,)?) => {$(
        impl Routed for $msg {
            type Reply = $reply;
            type Actor = RiderActor;
        }
    )*};
}

routed! {
    RegisterRider => Rider,
    GoOnline => Rider,
    GoOffline => Rider,
    UpdateLocation => Rider,
    GetRider => Rider,
    ClaimRider => Rider,
    FreeRider => (),
}

// ---- actor ----

/// One rider.
pub struct RiderActor {
    /// Rider id.
    id: String,
    /// Node services.
    deps: Deps,
    /// Persisted state once loaded (location may be newer than the store's).
    state: Loaded<Rider>,
    /// Passivation bookkeeping.
    idle: Idleness,
    /// When trackers last got this rider's position.
    last_push: Option<std::time::Instant>,
    /// A position arrived inside the throttle interval and a push of the latest one is
    /// scheduled for the interval's end (so the last position before a pause is not lost).
    trailing: bool,
}

impl Entity for RiderActor {
    const KIND: &'static str = "rider";

    fn fresh(id: String, deps: Deps) -> Self {
        RiderActor {
            id,
            deps,
            state: Loaded::Loading,
            idle: Idleness::new(),
            last_push: None,
            trailing: false,
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
        ctx.wait(
            async move { store.load_rider(&id).await }
                .into_actor(self)
                .map(|res, act, _| {
                    act.state = match res {
                        Ok(Some(r)) => Loaded::Present(r),
                        Ok(None) => Loaded::Absent,
                        Err(e) => Loaded::Failed(e.to_string()),
                    };
                    act.tell_dispatch();
                }),
        );
    }

    /// Tells the dispatcher where this rider is and whether it can take work.
    fn tell_dispatch(&self) {
        if !self.deps.settings.dispatch {
            return;
        }
        if let Loaded::Present(r) = &self.state {
            self.deps.dispatcher.do_send(RiderState {
                rider_id: r.id.clone(),
                online: r.online,
                busy: r.current_order.is_some(),
                location: r.location,
            });
        }
    }

    /// Sends the position to whoever tracks the order this rider carries, at most once per
    /// configured interval.
    fn push_location(&mut self, ctx: &mut Context<Self>) {
        let Loaded::Present(r) = &self.state else {
            return;
        };
        let (Some(order), Some(loc)) = (&r.current_order, r.location) else {
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
        self.deps.hub.publish(
            Topic::Order(order.clone()),
            "rider_location",
            Some((order.as_str(), None, None)),
            || {
                serde_json::json!({
                    "order_id": order, "rider_id": r.id, "lat": loc.lat, "lng": loc.lng,
                })
            },
        );
    }

    fn current(&mut self, ctx: &mut Context<Self>) -> Result<Rider> {
        match &self.state {
            Loaded::Present(r) => Ok(r.clone()),
            Loaded::Absent => Err(Error::not_found("rider", self.id.clone())),
            Loaded::Loading => Err(Error::Unavailable("rider is loading".into())),
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
            }),
            created_at: now_ms(),
        });
        let store = self.deps.store.clone();
        Box::pin(
            async move { store.commit(vec![first, ev]).await }
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(()) => {
                        act.state = Loaded::Present(next.clone());
                        act.tell_dispatch();
                        Ok(next)
                    }
                    Err(e) => {
                        if matches!(e, StoreError::VersionConflict { .. }) {
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
            if r.current_order.as_deref() == Some(msg.order_id.as_str()) {
                return ready(Ok(r.clone()));
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
        let carrying = matches!(&self.state, Loaded::Present(r) if r.current_order.as_deref() == Some(msg.order_id.as_str()));
        if !carrying {
            return ready(Ok(()));
        }
        let fut = self.change(ctx, None, "rider_freed", |r| {
            r.current_order = None;
            Ok(())
        });
        AtomicResponse::new(Box::pin(fut.map(|r, _, _| r.map(|_| ()))))
    }
}

impl Handler<Stop> for RiderActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
