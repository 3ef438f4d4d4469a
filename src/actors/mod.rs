//! The actors: one per order, merchant and rider, owned by shard supervisors, plus the lock actor.
//!
//! Every entity actor loads its state from the store when it starts (its mailbox waits meanwhile),
//! persists each change before it replies, and is restarted from the store if a handler panics.

pub mod dispatcher;
pub mod lock;
pub mod merchant;
pub mod order;
pub mod order_machine;
pub mod rider;
pub mod shard;
pub mod timers;

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler, Message, Supervised};

use crate::cluster::Router;
use crate::config::Config;
use crate::store::Store;

/// What every entity actor needs from the node, shared: each of a million live actors holds one
/// pointer rather than its own clones (an actix `Addr` clone allocates twice).
pub type Deps = Arc<Services>;

/// The node services behind [`Deps`].
pub struct Services {
    /// Persistence.
    pub store: Store,
    /// To reach other entities.
    pub router: Router,
    /// Stock leases.
    pub lock: Addr<lock::LockActor>,
    /// Live events to websockets.
    pub hub: crate::realtime::Hub,
    /// Matches accepted orders with riders.
    pub dispatcher: Addr<dispatcher::Dispatcher>,
    /// Order deadlines.
    pub timers: Addr<timers::TimerActor>,
    /// Lifecycle settings.
    pub settings: Arc<Settings>,
}

/// Actor lifecycle settings taken from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Passivate after this much idleness.
    pub idle: Duration,
    /// Passivate a terminal order after this much idleness.
    pub terminal_idle: Duration,
    /// Whether accepted orders go to the dispatcher.
    pub dispatch: bool,
    /// At most one `rider_location` event per order per this interval.
    pub location_interval: Duration,
}

impl Settings {
    /// From the config.
    pub fn from_config(cfg: &Config) -> Self {
        Settings {
            idle: Duration::from_millis(cfg.shards.idle_ms),
            terminal_idle: Duration::from_millis(cfg.shards.terminal_idle_ms),
            dispatch: cfg.dispatch.enabled,
            location_interval: Duration::from_millis(cfg.realtime.location_interval_ms),
        }
    }

    /// How often actors check whether they are idle.
    pub fn idle_check(&self) -> Duration {
        (self.terminal_idle.min(self.idle) / 2).max(Duration::from_millis(50))
    }
}

/// Asks the shard that owns entity `id` to passivate it (it has been idle).
pub(crate) fn ask_passivation<A: Entity>(deps: &Deps, id: &str) {
    deps.router.tell_owner(
        id,
        shard::Idle {
            kind: A::KIND,
            id: id.to_string(),
        },
    );
}

/// An actor a shard owns: created on demand by id, supervised, passivated when idle.
pub trait Entity: Actor<Context = Context<Self>> + Supervised + Handler<Stop> {
    /// `order`, `merchant` or `rider`, for metrics and logs.
    const KIND: &'static str;
    /// A fresh, not yet loaded actor for `id`.
    fn fresh(id: String, deps: Deps) -> Self;
    /// This kind's registry inside a shard.
    fn registry(
        shard: &mut shard::Shard,
    ) -> &mut std::collections::HashMap<String, shard::Slot<Self>>;
}

/// Sent by the shard after it forgot the actor: finish what is queued, then stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Runs `f`, turning a panic into `Err` so one bad message cannot take the arbiter down.
pub(crate) fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into())
    })
}

/// An entity actor's view of its persisted state.
#[derive(Debug)]
pub(crate) enum Loaded<T> {
    /// Reading from the store; the mailbox waits.
    Loading,
    /// The store has no such entity.
    Absent,
    /// Loaded.
    Present(T),
    /// The store could not be read; the next message restarts the actor to retry.
    Failed(String),
}

/// Common bookkeeping for idle passivation.
#[derive(Debug)]
pub(crate) struct Idleness {
    /// Last message handled.
    pub last_active: std::time::Instant,
    /// Whether the shard was already asked to passivate this actor.
    pub requested: bool,
}

impl Idleness {
    pub(crate) fn new() -> Self {
        Idleness {
            last_active: std::time::Instant::now(),
            requested: false,
        }
    }

    /// Marks activity.
    pub(crate) fn touch(&mut self) {
        self.last_active = std::time::Instant::now();
        self.requested = false;
    }

    /// True once (until the next `touch`) when idle longer than `limit`.
    pub(crate) fn due(&mut self, limit: Duration) -> bool {
        if !self.requested && self.last_active.elapsed() >= limit {
            self.requested = true;
            return true;
        }
        false
    }
}
