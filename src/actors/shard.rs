//! The shard supervisor: owns the entity actors whose id hashes to its shard, starts them on demand
//! (they load themselves from the store), supervises them (a panicking actor is restarted from its
//! persisted state with its mailbox intact) and passivates the idle ones.
//!
//! In a cluster every node has a supervisor for every shard, but only the owner's *serves*: it
//! is told `Assign { epoch }` when its node claimed the shard and `Revoke` when the node hands it
//! over (all its actors are stopped first, each after answering what it had queued). A message
//! reaching a supervisor that does not serve is refused with `NotOwner`, or, for notifications,
//! routed on to the owner.

use std::collections::HashMap;
use std::time::Instant;

use actix::{
    Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message, MessageResult,
    ResponseFuture, Supervisor,
};

use super::merchant::MerchantActor;
use super::order::OrderActor;
use super::rider::RiderActor;
use super::zone::ZoneActor;
use super::{Deps, Entity, Stop};
use crate::cluster::Routed;
use crate::error::{Error, Result};
use crate::metrics;
use crate::store::ShardEpoch;

/// A live actor in a shard's registry.
pub struct Slot<A: Actor> {
    /// Its address.
    pub addr: Addr<A>,
    /// When the shard last routed a message to it.
    pub last: Instant,
    /// Its order is terminal (passivated sooner).
    pub terminal: bool,
}

/// One shard's supervisor.
pub struct Shard {
    /// Shard number.
    pub index: u32,
    /// Handed to every actor it starts.
    deps: Deps,
    /// Live order actors by id.
    pub(crate) orders: HashMap<String, Slot<OrderActor>>,
    /// Live merchant actors by id.
    pub(crate) merchants: HashMap<String, Slot<MerchantActor>>,
    /// Live rider actors by id.
    pub(crate) riders: HashMap<String, Slot<RiderActor>>,
    /// Live dispatch zones by id.
    pub(crate) zones: HashMap<String, Slot<ZoneActor>>,
    /// Whether this node serves the shard (always, on a single node).
    serving: bool,
    /// The epoch this node claimed the shard under (cluster only).
    epoch: Option<i64>,
}

/// A message for entity `id`, as the router hands it to the shard.
pub struct Envelope<M> {
    /// The entity.
    pub id: String,
    /// The message.
    pub msg: M,
    /// If the shard no longer serves, route the message on instead of refusing it (for
    /// notifications, whose sender does not wait for an answer).
    pub bounce: bool,
    /// The sender's span (`Span::none()` outside any): the entity handles the message in a
    /// child of it.
    pub span: tracing::Span,
}

/// A message and the span its handler runs in (every routed message reaches its entity so).
pub struct Traced<M> {
    /// The message.
    pub msg: M,
    /// Entered while the handler runs.
    pub span: tracing::Span,
}

impl<M: Message> Message for Traced<M> {
    type Result = M::Result;
}

/// The node claimed the shard under `epoch` (`None` on a single node): start serving.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Assign {
    /// The claim's epoch.
    pub epoch: Option<i64>,
}

/// Stop serving: every actor answers what it has queued and stops; replies once all have (or
/// `grace` has passed). With `epoch`, only if the shard is still held under that epoch.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Revoke {
    /// Only revoke this claim (a fenced actor's); `None` = whatever is held.
    pub epoch: Option<i64>,
    /// The longest to wait for actors to stop.
    pub grace: std::time::Duration,
}

impl<M: Routed> Message for Envelope<M> {
    type Result = Result<M::Reply>;
}

/// An entity asks to be passivated because it has been idle.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Idle {
    /// `order`, `merchant` or `rider`.
    pub kind: &'static str,
    /// The entity.
    pub id: String,
}

/// An order actor reached a terminal status: passivate it after `terminal_idle`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Terminal {
    /// The order.
    pub id: String,
}

/// Stops every actor after it has answered what is queued; replies when all have.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Live actors in this shard (orders, merchants, riders).
#[derive(Message)]
#[rtype(result = "(usize, usize, usize)")]
pub struct CountActors;

impl Shard {
    /// A shard with no live actors, serving from the start (a single node) or not until its
    /// node claims it (a cluster).
    pub fn new(index: u32, deps: Deps, serving: bool) -> Self {
        Shard {
            index,
            deps,
            orders: HashMap::new(),
            merchants: HashMap::new(),
            riders: HashMap::new(),
            zones: HashMap::new(),
            serving,
            epoch: None,
        }
    }

    fn get_or_start<A: Entity>(&mut self, id: &str, creates: bool) -> Addr<A> {
        if let Some(slot) = A::registry(self).get_mut(id) {
            if slot.addr.connected() {
                slot.last = Instant::now();
                return slot.addr.clone();
            }
        }
        let deps = self.deps.clone();
        let owned = id.to_string();
        let fence = self.epoch.map(|epoch| ShardEpoch {
            shard: self.index,
            epoch,
        });
        let addr = Supervisor::start(move |_| {
            if creates {
                A::fresh_for_create(owned, deps, fence)
            } else {
                A::fresh(owned, deps, fence)
            }
        });
        let slot = Slot {
            addr: addr.clone(),
            last: Instant::now(),
            terminal: false,
        };
        if A::registry(self).insert(id.to_string(), slot).is_none() {
            metrics::ACTORS_ACTIVE.with_label_values(&[A::KIND]).inc();
        }
        addr
    }

    fn forget<A: Entity>(&mut self, id: &str) {
        if let Some(slot) = A::registry(self).remove(id) {
            metrics::ACTORS_ACTIVE.with_label_values(&[A::KIND]).dec();
            metrics::ACTOR_PASSIVATIONS
                .with_label_values(&[A::KIND])
                .inc();
            slot.addr.do_send(Stop);
        }
    }

    /// Passivates the order actors idle past their limit (orders have no timer of their own).
    fn sweep_orders(&mut self) {
        let (idle, terminal_idle) = (self.deps.settings.idle, self.deps.settings.terminal_idle);
        let due: Vec<String> = self
            .orders
            .iter()
            .filter(|(_, s)| {
                let limit = if s.terminal { terminal_idle } else { idle };
                s.last.elapsed() >= limit
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.forget::<OrderActor>(&id);
        }
    }
}

impl Actor for Shard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(usize::MAX >> 4);
        ctx.run_interval(self.deps.settings.idle_check(), |act, _| act.sweep_orders());
    }
}

impl<M: Routed> Handler<Envelope<M>> for Shard {
    type Result = ResponseFuture<Result<M::Reply>>;

    fn handle(&mut self, env: Envelope<M>, _ctx: &mut Context<Self>) -> Self::Result {
        if !self.serving {
            let shard = self.index;
            if env.bounce {
                // A notification for a shard that moved: send it after its entity.
                let router = self.deps.router.clone();
                if let Some(dir) = router.directory().cloned() {
                    dir.spawn(async move {
                        let _ = router.send(&env.id, env.msg).await;
                    });
                }
            }
            return Box::pin(async move { Err(Error::NotOwner(shard)) });
        }
        let addr: Addr<M::Actor> = self.get_or_start(&env.id, M::CREATES);
        // Commands that belong to a sampled trace get a span of their own in it. In a trace
        // nothing records (no exporter, or sampled out) the handler runs in the caller's span,
        // so its logs keep the trace id without the cost of a span per message (about 9% of
        // a create's CPU went to tracing; BENCHMARKS.md). Internal traffic (timers, dispatch
        // ticks) outside any span stays out of tracing.
        let span = if env.span.is_none() {
            tracing::Span::none()
        } else if !crate::telemetry::is_sampled(&env.span) {
            env.span.clone()
        } else {
            tracing::info_span!(
                target: "waimai::actor",
                parent: &env.span,
                "actor",
                otel.name = M::NAME,
                entity.kind = <M::Actor as Entity>::KIND,
                entity.id = %env.id,
            )
        };
        let reply = addr.send(Traced { msg: env.msg, span });
        Box::pin(async move { reply.await.map_err(crate::Error::from).and_then(|r| r) })
    }
}

impl Handler<Idle> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Idle, _ctx: &mut Context<Self>) {
        match msg.kind {
            OrderActor::KIND => self.forget::<OrderActor>(&msg.id),
            MerchantActor::KIND => self.forget::<MerchantActor>(&msg.id),
            RiderActor::KIND => self.forget::<RiderActor>(&msg.id),
            ZoneActor::KIND => self.forget::<ZoneActor>(&msg.id),
            _ => {}
        }
    }
}

impl Handler<Terminal> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Terminal, _ctx: &mut Context<Self>) {
        if let Some(slot) = self.orders.get_mut(&msg.id) {
            slot.terminal = true;
        }
    }
}

impl Shard {
    /// Forgets every actor and sends each `Stop` (behind what it has queued); resolves once
    /// all have stopped: orders first (their commits settle merchants' reservations), then
    /// merchants, riders and zones.
    fn stop_everyone(&mut self) -> impl std::future::Future<Output = ()> {
        fn stops<A: Entity>(
            reg: &mut HashMap<String, Slot<A>>,
        ) -> Vec<actix::dev::Request<A, Stop>> {
            let n = reg.len() as i64;
            metrics::ACTORS_ACTIVE.with_label_values(&[A::KIND]).sub(n);
            reg.drain().map(|(_, s)| s.addr.send(Stop)).collect()
        }
        let orders = stops(&mut self.orders);
        let merchants = stops(&mut self.merchants);
        let riders = stops(&mut self.riders);
        let zones = stops(&mut self.zones);
        async move {
            futures::future::join_all(orders).await;
            futures::future::join_all(merchants).await;
            futures::future::join_all(riders).await;
            futures::future::join_all(zones).await;
        }
    }
}

impl Handler<Drain> for Shard {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        let stopped = self.stop_everyone();
        ctx.stop();
        Box::pin(stopped)
    }
}

impl Handler<Assign> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Assign, _ctx: &mut Context<Self>) {
        self.serving = true;
        self.epoch = msg.epoch;
    }
}

impl Handler<Revoke> for Shard {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Revoke, _ctx: &mut Context<Self>) -> Self::Result {
        if !self.serving || (msg.epoch.is_some() && msg.epoch != self.epoch) {
            return Box::pin(async {});
        }
        self.serving = false;
        self.epoch = None;
        let stopped = self.stop_everyone();
        let (shard, grace) = (self.index, msg.grace);
        Box::pin(async move {
            if tokio::time::timeout(grace, stopped).await.is_err() {
                tracing::warn!(shard, "actors did not stop within the handoff grace");
            }
        })
    }
}

impl Handler<CountActors> for Shard {
    type Result = MessageResult<CountActors>;

    fn handle(&mut self, _: CountActors, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult((self.orders.len(), self.merchants.len(), self.riders.len()))
    }
}
