//! The router: picks an entity's shard and hands the message to that shard's supervisor, on
//! this node or, in a cluster, on the node that owns the shard.
//!
//! Single node: every shard is local and `send` is one actor message. Cluster: the directory
//! says where the shard is served. A local shard gets the message directly; a remote one gets
//! it over the peer link; a shard that is moving (or whose owner cannot be reached) is asked
//! again after a short pause, with the directory refreshed, until `cluster.forward_wait_ms`
//! has passed. A message whose outcome is unknown (the owner went away after it was sent) is
//! only sent again when delivering it twice is harmless (`Routed::RETRY_SAFE`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::{Addr, Handler, Message};
use tracing::Instrument;

use super::directory::{Directory, Placement};
use super::link::LinkError;
use super::partition::shard_of;
pub use super::wire::Routed;
use crate::actors::shard::{Envelope, Shard};
use crate::actors::Entity;
use crate::error::{Error, Result};
use crate::metrics;

/// Routes messages to entity actors through their shard supervisors.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    /// Set once the shards are started (they need the router themselves).
    shards: OnceLock<Vec<Addr<Shard>>>,
    /// Number of shards.
    count: u32,
    /// Where shards are served, in a cluster; unset on a single node.
    directory: OnceLock<Arc<Directory>>,
    /// Requests delivered to each local shard and not yet answered (admission control reads it).
    depths: Vec<AtomicI64>,
}

impl Router {
    /// A router over `count` shards, to be `attach`ed once they exist.
    pub fn new(count: u32) -> Self {
        Router {
            inner: Arc::new(Inner {
                shards: OnceLock::new(),
                count: count.max(1),
                directory: OnceLock::new(),
                depths: (0..count.max(1)).map(|_| AtomicI64::new(0)).collect(),
            }),
        }
    }

    /// Installs the shard supervisors, index = shard number.
    pub fn attach(&self, shards: Vec<Addr<Shard>>) {
        let _ = self.inner.shards.set(shards);
    }

    /// Makes this a cluster router: shards are served where `directory` says.
    pub fn attach_directory(&self, directory: Arc<Directory>) {
        let _ = self.inner.directory.set(directory);
    }

    /// The cluster directory, if this node is part of a cluster.
    pub fn directory(&self) -> Option<&Arc<Directory>> {
        self.inner.directory.get()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.inner.count
    }

    /// The shard of an entity id.
    pub fn shard_of(&self, id: &str) -> u32 {
        shard_of(id, self.inner.count)
    }

    /// Requests delivered to `shard` on this node and not yet answered.
    pub fn depth(&self, shard: u32) -> i64 {
        self.inner
            .depths
            .get(shard as usize)
            .map_or(0, |d| d.load(Ordering::Relaxed))
    }

    /// The shard supervisors, once attached.
    pub fn shards(&self) -> &[Addr<Shard>] {
        self.inner.shards.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Sends `msg` to entity `id`, wherever its shard is served, and waits for its reply.
    pub async fn send<M: Routed>(&self, id: &str, msg: M) -> Result<M::Reply> {
        let shard = self.shard_of(id);
        let Some(dir) = self.inner.directory.get() else {
            return self.deliver(shard, id, msg, false).await;
        };
        let started = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            match dir.placement(shard) {
                Placement::Local => match self.deliver(shard, id, msg.clone(), false).await {
                    Err(Error::NotOwner(_)) => {}
                    other => return other,
                },
                Placement::Remote(peer) => {
                    let t = Instant::now();
                    let span = forward_span(M::NAME, &peer.node);
                    let out = peer
                        .call(id, msg.clone().into_command())
                        .instrument(span)
                        .await;
                    let outcome = match &out {
                        Ok(Ok(_)) => "ok",
                        Ok(Err(Error::NotOwner(_))) => "not_owner",
                        Ok(Err(_)) => "error",
                        Err(LinkError::Unreachable(_)) => "unreachable",
                        Err(LinkError::Lost(_)) => "lost",
                    };
                    metrics::FORWARD_SECONDS
                        .with_label_values(&[outcome])
                        .observe(t.elapsed().as_secs_f64());
                    match out {
                        Ok(Ok(v)) => {
                            return serde_json::from_value(v).map_err(|e| {
                                Error::Unavailable(format!("undecodable reply from the owner: {e}"))
                            })
                        }
                        Ok(Err(Error::NotOwner(_))) | Err(LinkError::Unreachable(_)) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(LinkError::Lost(why)) => {
                            if !M::RETRY_SAFE {
                                return Err(Error::Unavailable(format!(
                                    "the node owning shard {shard} went away while handling the \
                                     request ({why}); its outcome is unknown, check before retrying"
                                )));
                            }
                        }
                    }
                }
                Placement::Unknown => {}
            }
            dir.stale();
            if started.elapsed() >= dir.wait() {
                return Err(Error::Unavailable(format!(
                    "no node serves shard {shard} right now (the cluster is rebalancing or a \
                     node is down); retry"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Delivers `msg` to entity `id` only if its shard is served on this node; `NotOwner`
    /// otherwise. What a peer's forwarded message goes through, so a stale directory makes
    /// the sender look again instead of bouncing the message between nodes.
    pub async fn send_here<M: Routed>(&self, id: &str, msg: M) -> Result<M::Reply> {
        let shard = self.shard_of(id);
        if let Some(dir) = self.inner.directory.get() {
            if !matches!(dir.placement(shard), Placement::Local) {
                return Err(Error::NotOwner(shard));
            }
        }
        self.deliver(shard, id, msg, false).await
    }

    /// Sends without waiting for a reply (notifications between actors). Order is kept between
    /// notifications to one entity while its shard stays put.
    pub fn notify<M: Routed>(&self, id: &str, msg: M) {
        let shard = self.shard_of(id);
        let Some(dir) = self.inner.directory.get() else {
            self.deliver_later(shard, id, msg, false);
            return;
        };
        match dir.placement(shard) {
            Placement::Local => self.deliver_later(shard, id, msg, true),
            Placement::Remote(peer) => {
                if let Err(msg) = peer.tell(id, msg.into_command()) {
                    let router = self.clone();
                    let id = id.to_string();
                    dir.spawn(async move { router.send_command(id, *msg).await });
                }
            }
            Placement::Unknown => {
                let router = self.clone();
                let id = id.to_string();
                dir.spawn(async move {
                    let _ = router.send(&id, msg).await;
                });
            }
        }
    }

    /// A notification that came over a peer link: delivered here if this node serves the
    /// shard, else routed with calls (never told on, so two stale nodes cannot pass it back
    /// and forth).
    pub(crate) fn notify_from_peer(&self, id: String, cmd: super::wire::Command) {
        let shard = self.shard_of(&id);
        match self.inner.directory.get() {
            Some(dir) if !matches!(dir.placement(shard), Placement::Local) => {
                let router = self.clone();
                dir.spawn(async move { router.send_command(id, cmd).await });
            }
            _ => cmd.notify_here(self, &id),
        }
    }

    /// Hands a notification to the local shard (which routes it on if it stopped serving).
    pub(crate) fn notify_here<M: Routed>(&self, id: &str, msg: M) {
        let bounce = self.inner.directory.get().is_some();
        self.deliver_later(self.shard_of(id), id, msg, bounce);
    }

    /// Routes a message that arrived in wire form as a notification.
    pub(crate) async fn send_command(&self, id: String, cmd: super::wire::Command) {
        let name = cmd.name();
        if let Err(e) = cmd.route(self.clone(), id.clone()).await {
            tracing::debug!(entity = %id, message = name, error = %e, "notification not delivered");
        }
    }

    /// This node was fenced out of `shard` (a write under `epoch` was refused: another node
    /// claimed the shard since). Stop serving it at once; requests look for the new owner.
    pub fn give_up(&self, shard: u32, epoch: i64) {
        let Some(dir) = self.inner.directory.get() else {
            return;
        };
        if dir.local(shard) != super::directory::Local::Serving(epoch) {
            return;
        }
        dir.set_local(shard, super::directory::Local::No);
        if let Ok(addr) = self.local(shard) {
            addr.do_send(crate::actors::shard::Revoke {
                epoch: Some(epoch),
                grace: dir.wait(),
            });
        }
        metrics::CLUSTER_FENCED.inc();
        dir.stale();
    }

    /// Tells the shard that owns `id` on this node something about that entity (an actor
    /// going idle or terminal); entity actors hold no address of their own shard.
    pub fn tell_owner<M>(&self, id: &str, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Shard: Handler<M>,
    {
        if let Ok(shard) = self.local(self.shard_of(id)) {
            shard.do_send(msg);
        }
    }

    /// Hands `msg` to the local shard supervisor and waits for the entity's reply.
    async fn deliver<M: Routed>(
        &self,
        shard: u32,
        id: &str,
        msg: M,
        bounce: bool,
    ) -> Result<M::Reply> {
        let addr = self.local(shard)?;
        let kind = <M::Actor as Entity>::KIND;
        let gauge = metrics::mailbox_depth(kind);
        gauge.inc();
        // Counted down on drop, so a caller that gives up (a closed connection) still leaves.
        let _depth = self.inner.depths.get(shard as usize).map(InFlight::enter);
        let out = addr
            .send(Envelope {
                id: id.to_string(),
                msg,
                bounce,
                span: tracing::Span::current(),
            })
            .await;
        gauge.dec();
        out.map_err(Error::from).and_then(|r| r)
    }

    /// Hands `msg` to the local shard supervisor without waiting. With `bounce`, a shard that
    /// no longer serves routes it on instead of refusing it.
    fn deliver_later<M: Routed>(&self, shard: u32, id: &str, msg: M, bounce: bool) {
        if let Ok(addr) = self.local(shard) {
            addr.do_send(Envelope {
                id: id.to_string(),
                msg,
                bounce,
                span: tracing::Span::current(),
            });
        }
    }

    fn local(&self, shard: u32) -> Result<&Addr<Shard>> {
        let shards = self
            .inner
            .shards
            .get()
            .ok_or_else(|| Error::Unavailable("shards are not started".into()))?;
        shards
            .get(shard as usize)
            .ok_or_else(|| Error::Unavailable("shard missing".into()))
    }
}

/// The span of a call to the node owning the entity (its `traceparent` travels in the call
/// frame, so the owner's spans are its children). Outside any trace, none.
fn forward_span(msg: &'static str, peer: &str) -> tracing::Span {
    if tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: "waimai::cluster",
        "forward",
        otel.name = %format_args!("forward {msg}"),
        otel.kind = "client",
        peer.node = %peer,
    )
}

/// One request in a shard's depth count, for as long as it lives.
struct InFlight<'a>(&'a AtomicI64);

impl<'a> InFlight<'a> {
    fn enter(d: &'a AtomicI64) -> Self {
        d.fetch_add(1, Ordering::Relaxed);
        InFlight(d)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
