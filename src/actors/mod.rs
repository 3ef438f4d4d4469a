//! The actors: one per order, merchant and rider, owned by shard supervisors, plus the lock actor.
//!
//! Every entity actor loads its state from the store when it starts (its mailbox waits meanwhile),
//! persists each change before it replies, and is restarted from the store if a handler panics.

pub mod lock;
pub mod merchant;
pub mod order;
pub mod order_machine;
pub mod rider;
pub mod shard;
pub mod timers;
pub mod zone;

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler, Message, Supervised};

use crate::cluster::Router;
use crate::config::{Config, ZoneConfig};
use crate::domain::Location;
use crate::realtime::Fanout;
use crate::store::{ShardEpoch, Store};

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
    /// Live events to websockets (this node's hub, or every node's through the events topic).
    pub events: Fanout,
    /// Order deadlines.
    pub timers: Addr<timers::TimerActor>,
    /// The payment provider.
    pub payments: crate::payments::Payments,
    /// Lifecycle settings.
    pub settings: Arc<Settings>,
    /// The configuration in effect: zones read their dispatch keys from it at each round.
    pub live: Arc<crate::reload::Live>,
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
    /// The dispatch zones.
    pub zones: Zones,
    /// Dispatch settings (zones use them).
    pub dispatch_cfg: crate::config::DispatchConfig,
    /// How long a merchant asked to stop waits for reservations still being written.
    pub stop_grace: Duration,
    /// How long a merchant waits for a stock lease held elsewhere (a cluster: the node that
    /// just lost the merchant's shard); zero on a single node.
    pub lease_wait: Duration,
    /// How long a refund request waits for the provider's confirmation before it is repeated.
    pub refund_retry: Duration,
}

/// The dispatch zones, in config order: a point belongs to the first that contains it.
#[derive(Debug, Clone)]
pub struct Zones(Vec<ZoneConfig>);

impl Zones {
    /// From the config; an empty list means one zone, `city`, covering everything.
    pub fn new(zones: &[ZoneConfig]) -> Self {
        if zones.is_empty() {
            return Zones(vec![ZoneConfig {
                id: "city".into(),
                bounds: None,
            }]);
        }
        Zones(zones.to_vec())
    }

    /// The zone a point is in: the first that contains it, else the last (the catch-all).
    pub fn of(&self, at: Location) -> &str {
        self.0
            .iter()
            .find(|z| match z.bounds {
                None => true,
                Some([min_lat, min_lng, max_lat, max_lng]) => {
                    (min_lat..=max_lat).contains(&at.lat) && (min_lng..=max_lng).contains(&at.lng)
                }
            })
            .or_else(|| self.0.last())
            .map_or("city", |z| z.id.as_str())
    }

    /// Whether `id` names a zone.
    pub fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|z| z.id == id)
    }

    /// Every zone id.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|z| z.id.as_str())
    }

    /// The catch-all zone (orders without a recorded pickup point go there).
    pub fn fallback(&self) -> &str {
        self.0.last().map_or("city", |z| z.id.as_str())
    }
}

impl Settings {
    /// From the config.
    pub fn from_config(cfg: &Config) -> Self {
        Settings {
            idle: Duration::from_millis(cfg.shards.idle_ms),
            terminal_idle: Duration::from_millis(cfg.shards.terminal_idle_ms),
            dispatch: cfg.dispatch.enabled,
            location_interval: Duration::from_millis(cfg.realtime.location_interval_ms),
            zones: Zones::new(&cfg.dispatch.zones),
            dispatch_cfg: cfg.dispatch.clone(),
            stop_grace: Duration::from_millis(cfg.lock.lease_ms / 3)
                .max(Duration::from_millis(100)),
            refund_retry: Duration::from_millis(cfg.payments.refund_retry_ms),
            lease_wait: if cfg.cluster.enabled {
                Duration::from_millis(cfg.lock.lease_ms + 500)
            } else {
                Duration::ZERO
            },
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
    /// `order`, `merchant`, `rider` or `zone`, for metrics and logs.
    const KIND: &'static str;
    /// A fresh, not yet loaded actor for `id`. In a cluster, `fence` is the shard and epoch
    /// its node holds the shard under; every write the actor makes carries it.
    fn fresh(id: String, deps: Deps, fence: Option<ShardEpoch>) -> Self;
    /// A fresh actor started by a message that creates its entity (`Routed::CREATES`): it may
    /// skip reading the store first (the create's insert finds out if the entity exists).
    fn fresh_for_create(id: String, deps: Deps, fence: Option<ShardEpoch>) -> Self {
        Self::fresh(id, deps, fence)
    }
    /// This kind's registry inside a shard.
    fn registry(
        shard: &mut shard::Shard,
    ) -> &mut std::collections::HashMap<String, shard::Slot<Self>>;
}

/// What an entity actor does when the store refuses its write because its shard moved to
/// another node (its node was fenced): the node gives the shard up at once, and the error
/// tells the router to look for the new owner.
pub(crate) fn on_fenced(deps: &Deps, e: &crate::store::StoreError) {
    if let crate::store::StoreError::Fenced { shard, epoch } = e {
        tracing::warn!(
            shard,
            epoch,
            "fenced: another node claimed this shard; giving it up"
        );
        deps.router.give_up(*shard, *epoch);
    }
}

/// Commits a change that moves `merchant_id`'s stock. On a single node (or when this node owns
/// the merchant) it goes straight to the store; otherwise to the merchant's node
/// (`CommitWrites`), so that one writer queue in the cluster updates a merchant's SKU rows and
/// nodes do not queue on one another's row locks. `fence` is the writing actor's shard epoch.
pub(crate) async fn commit_stock_change(
    deps: &Deps,
    merchant_id: &str,
    fence: Option<ShardEpoch>,
    writes: Vec<crate::store::Write>,
) -> Result<(), crate::store::StoreError> {
    let remote = deps.router.directory().is_some_and(|dir| {
        !matches!(
            dir.placement(deps.router.shard_of(merchant_id)),
            crate::cluster::Placement::Local
        )
    });
    if !remote {
        return deps.store.commit_fenced(fence, writes).await;
    }
    let msg = crate::messages::CommitWrites { fence, writes };
    match deps.router.send(merchant_id, msg).await {
        Ok(None) => Ok(()),
        Ok(Some(refused)) => Err(refused.into()),
        Err(e) => Err(crate::store::StoreError::Remote(e.to_string())),
    }
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
    /// Not read, started by a message that creates the entity: assumed absent until its insert
    /// says otherwise.
    Unchecked,
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
