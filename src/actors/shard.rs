//! The shard supervisor: owns the entity actors whose id hashes to its shard, starts them on demand
//! (they load themselves from the store), supervises them (a panicking actor is restarted from its
//! persisted state with its mailbox intact) and passivates the idle ones.

use std::collections::HashMap;
use std::time::Instant;

use actix::{
    Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message, MessageResult,
    ResponseFuture, Supervisor,
};

use super::merchant::MerchantActor;
use super::order::OrderActor;
use super::rider::RiderActor;
use super::{Deps, Entity, Stop};
use crate::cluster::Routed;
use crate::error::Result;
use crate::metrics;

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
}

/// A message for entity `id`, as the router hands it to the shard.
pub struct Envelope<M> {
    /// The entity.
    pub id: String,
    /// The message.
    pub msg: M,
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
    /// A shard with no live actors.
    pub fn new(index: u32, deps: Deps) -> Self {
        Shard {
            index,
            deps,
            orders: HashMap::new(),
            merchants: HashMap::new(),
            riders: HashMap::new(),
        }
    }

    fn get_or_start<A: Entity>(&mut self, id: &str) -> Addr<A> {
        if let Some(slot) = A::registry(self).get_mut(id) {
            if slot.addr.connected() {
                slot.last = Instant::now();
                return slot.addr.clone();
            }
        }
        let deps = self.deps.clone();
        let owned = id.to_string();
        let addr = Supervisor::start(move |_| A::fresh(owned, deps));
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
        let addr: Addr<M::Actor> = self.get_or_start(&env.id);
        let reply = addr.send(env.msg);
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

impl Handler<Drain> for Shard {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        let orders: Vec<_> = self
            .orders
            .drain()
            .map(|(_, s)| s.addr.send(Stop))
            .collect();
        let merchants: Vec<_> = self
            .merchants
            .drain()
            .map(|(_, s)| s.addr.send(Stop))
            .collect();
        let riders: Vec<_> = self
            .riders
            .drain()
            .map(|(_, s)| s.addr.send(Stop))
            .collect();
        ctx.stop();
        Box::pin(async move {
            futures::future::join_all(orders).await;
            futures::future::join_all(merchants).await;
            futures::future::join_all(riders).await;
        })
    }
}

impl Handler<CountActors> for Shard {
    type Result = MessageResult<CountActors>;

    fn handle(&mut self, _: CountActors, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult((self.orders.len(), self.merchants.len(), self.riders.len()))
    }
}
