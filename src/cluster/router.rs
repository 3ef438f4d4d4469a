//! The router: picks an entity's shard and hands the message to that shard's supervisor.

use std::sync::{Arc, OnceLock};

use actix::{Addr, Handler, Message};

use super::partition::shard_of;
use crate::actors::shard::{Envelope, Shard};
use crate::actors::Entity;
use crate::error::{Error, Result};
use crate::metrics;

/// A message addressed to one entity by id.
pub trait Routed:
    Message<Result = Result<<Self as Routed>::Reply>> + Send + Sized + 'static
{
    /// What a successful reply carries.
    type Reply: Send + 'static;
    /// The kind of actor that handles it.
    type Actor: Entity + Handler<Self>;
}

/// Routes messages to entity actors through their shard supervisors.
#[derive(Clone)]
pub struct Router {
    /// Set once the shards are started (they need the router themselves).
    shards: Arc<OnceLock<Vec<Addr<Shard>>>>,
    /// Number of shards.
    count: u32,
}

impl Router {
    /// A router over `count` shards, to be `attach`ed once they exist.
    pub fn new(count: u32) -> Self {
        Router {
            shards: Arc::new(OnceLock::new()),
            count: count.max(1),
        }
    }

    /// Installs the shard supervisors, index = shard number.
    pub fn attach(&self, shards: Vec<Addr<Shard>>) {
        let _ = self.shards.set(shards);
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.count
    }

    /// The shard supervisors, once attached.
    pub fn shards(&self) -> &[Addr<Shard>] {
        self.shards.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Sends `msg` to entity `id` and waits for its reply.
    pub async fn send<M: Routed>(&self, id: &str, msg: M) -> Result<M::Reply> {
        let shard = self.shard_for(id)?;
        let kind = <M::Actor as Entity>::KIND;
        let gauge = metrics::MAILBOX_DEPTH.with_label_values(&[kind]);
        gauge.inc();
        let out = shard
            .send(Envelope {
                id: id.to_string(),
                msg,
            })
            .await;
        gauge.dec();
        out.map_err(Error::from).and_then(|r| r)
    }

    /// Sends without waiting for a reply (notifications between actors).
    pub fn notify<M: Routed>(&self, id: &str, msg: M) {
        if let Ok(shard) = self.shard_for(id) {
            shard.do_send(Envelope {
                id: id.to_string(),
                msg,
            });
        }
    }

    /// Tells the shard that owns `id` something about that entity (an actor going idle or
    /// terminal); entity actors hold no address of their own shard.
    pub fn tell_owner<M>(&self, id: &str, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Shard: Handler<M>,
    {
        if let Ok(shard) = self.shard_for(id) {
            shard.do_send(msg);
        }
    }

    fn shard_for(&self, id: &str) -> Result<&Addr<Shard>> {
        let shards = self
            .shards
            .get()
            .ok_or_else(|| Error::Unavailable("shards are not started".into()))?;
        shards
            .get(shard_of(id, self.count) as usize)
            .ok_or_else(|| Error::Unavailable("shard missing".into()))
    }
}
