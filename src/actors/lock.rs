//! The lock actor: grants stock leases from the configured backend, renews every held lease in
//! the background at a third of its length, and tells the holder the moment a lease is lost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient, ResponseActFuture,
    ResponseFuture, WeakRecipient, WrapFuture,
};

use crate::lock::{Lease, LockBackend, LockError};
use crate::metrics;

/// Asks for a lease on `key`; the fence will be at least `floor`.
#[derive(Message)]
#[rtype(result = "Result<Lease, LockError>")]
pub struct AcquireLease {
    /// What to lock, e.g. `stock:<merchant id>`.
    pub key: String,
    /// Lowest acceptable fencing token (one above the highest the store has seen).
    pub floor: i64,
    /// Told if the lease is lost.
    pub holder: Recipient<LeaseLost>,
}

/// Gives a lease back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseLease(pub Lease);

/// Told to a holder whose lease could not be renewed.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct LeaseLost {
    /// The lost lease.
    pub lease: Lease,
}

/// Checks the backend answers.
#[derive(Message)]
#[rtype(result = "Result<(), LockError>")]
pub struct PingLocks;

/// Renews all held leases now (the timer does this by itself; tests call it directly).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RenewNow;

/// The lock actor.
pub struct LockActor {
    /// Where leases live.
    backend: LockBackend,
    /// Lease length.
    ttl: Duration,
    /// Leases granted through this actor and not yet released, by key.
    /// The holder is weak so a lease never keeps a stopped holder's mailbox alive.
    held: HashMap<String, (Lease, WeakRecipient<LeaseLost>)>,
    /// When each held lease was last granted or renewed (the time the request was sent): a
    /// lease the backend could not renew for a whole TTL may be someone else's by now, so it
    /// is given up even while the backend cannot say so.
    confirmed: HashMap<String, Instant>,
}

impl LockActor {
    /// A lock actor over `backend` granting leases of `ttl`.
    pub fn new(backend: LockBackend, ttl: Duration) -> Self {
        LockActor {
            backend,
            ttl,
            held: HashMap::new(),
            confirmed: HashMap::new(),
        }
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    fn renew_all(&mut self, ctx: &mut Context<Self>) {
        let backend = self.backend.clone();
        let ttl = self.ttl_ms();
        let leases: Vec<Lease> = self.held.values().map(|(l, _)| l.clone()).collect();
        if leases.is_empty() {
            return;
        }
        let name = backend.name();
        let fut = async move {
            let mut lost = Vec::new();
            let mut renewed = Vec::new();
            let mut unconfirmed = Vec::new();
            for lease in leases {
                let asked = Instant::now();
                match backend.renew(&lease, ttl).await {
                    Ok(()) => {
                        metrics::LOCK_OPS
                            .with_label_values(&[name, "renew", "ok"])
                            .inc();
                        renewed.push((lease, asked));
                    }
                    Err(LockError::Unavailable(_)) => {
                        // Keep the lease for now: it stays valid until its TTL runs out, and the
                        // next tick retries. Once a whole TTL has passed since the last
                        // confirmation it is given up (below).
                        metrics::LOCK_OPS
                            .with_label_values(&[name, "renew", "error"])
                            .inc();
                        unconfirmed.push(lease);
                    }
                    Err(_) => {
                        metrics::LOCK_OPS
                            .with_label_values(&[name, "renew", "lost"])
                            .inc();
                        lost.push(lease);
                    }
                }
            }
            (lost, renewed, unconfirmed)
        };
        let ttl = self.ttl;
        ctx.spawn(fut.into_actor(self).map(move |(mut lost, renewed, unconfirmed), act, _| {
            for (lease, asked) in renewed {
                if matches!(act.held.get(&lease.key), Some((l, _)) if l.token == lease.token) {
                    act.confirmed.insert(lease.key, asked);
                }
            }
            for lease in unconfirmed {
                let expired = act
                    .confirmed
                    .get(&lease.key)
                    .is_none_or(|t| t.elapsed() >= ttl);
                if expired {
                    tracing::warn!(key = %lease.key, "stock lease not renewable for a whole lease period; giving it up");
                    lost.push(lease);
                }
            }
            for lease in lost {
                if let Some((held, holder)) = act.held.remove(&lease.key) {
                    if held.token == lease.token {
                        act.confirmed.remove(&lease.key);
                        tracing::warn!(key = %lease.key, "stock lease lost");
                        if let Some(holder) = holder.upgrade() {
                            holder.do_send(LeaseLost { lease });
                        }
                    } else {
                        act.held.insert(held.key.clone(), (held, holder));
                    }
                }
            }
        }));
    }
}

impl Actor for LockActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(usize::MAX >> 4);
        let every = (self.ttl / 3).max(Duration::from_millis(10));
        ctx.run_interval(every, |act, ctx| act.renew_all(ctx));
    }
}

impl Handler<AcquireLease> for LockActor {
    type Result = ResponseActFuture<Self, Result<Lease, LockError>>;

    fn handle(&mut self, msg: AcquireLease, _ctx: &mut Context<Self>) -> Self::Result {
        let backend = self.backend.clone();
        let ttl = self.ttl_ms();
        let key = msg.key.clone();
        let floor = msg.floor;
        let asked = Instant::now();
        let fut = async move { backend.acquire(&key, ttl, floor).await };
        Box::pin(fut.into_actor(self).map(move |res, act, _| {
            let name = act.backend.name();
            match &res {
                Ok(lease) => {
                    metrics::LOCK_OPS
                        .with_label_values(&[name, "grant", "ok"])
                        .inc();
                    act.held
                        .insert(lease.key.clone(), (lease.clone(), msg.holder.downgrade()));
                    act.confirmed.insert(lease.key.clone(), asked);
                }
                Err(LockError::Held(_)) => metrics::LOCK_OPS
                    .with_label_values(&[name, "grant", "held"])
                    .inc(),
                Err(_) => metrics::LOCK_OPS
                    .with_label_values(&[name, "grant", "error"])
                    .inc(),
            }
            res
        }))
    }
}

impl Handler<ReleaseLease> for LockActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: ReleaseLease, _ctx: &mut Context<Self>) -> Self::Result {
        let lease = msg.0;
        if matches!(self.held.get(&lease.key), Some((l, _)) if l.token == lease.token) {
            self.held.remove(&lease.key);
            self.confirmed.remove(&lease.key);
        }
        let backend = self.backend.clone();
        Box::pin(async move {
            let outcome = match backend.release(&lease).await {
                Ok(true) => "ok",
                Ok(false) => "stale",
                Err(_) => "error",
            };
            metrics::LOCK_OPS
                .with_label_values(&[backend.name(), "release", outcome])
                .inc();
        })
    }
}

impl Handler<PingLocks> for LockActor {
    type Result = ResponseFuture<Result<(), LockError>>;

    fn handle(&mut self, _: PingLocks, _ctx: &mut Context<Self>) -> Self::Result {
        let backend = self.backend.clone();
        Box::pin(async move { backend.ping().await })
    }
}

impl Handler<RenewNow> for LockActor {
    type Result = ();

    fn handle(&mut self, _: RenewNow, ctx: &mut Context<Self>) {
        self.renew_all(ctx);
    }
}
