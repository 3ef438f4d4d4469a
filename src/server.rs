//! Startup and shutdown of one node: store, lock actor, shards on arbiters, the HTTP front door.
//! `main` and the tests both go through `Node::start` and `Node::serve`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::actors::dispatcher::{Dispatcher, OrderChanged};
use crate::actors::lock::LockActor;
use crate::actors::order_machine::OrderStatus;
use crate::actors::rider::GetRider;
use crate::actors::shard::{Drain, Shard};
use crate::actors::timers::{Arm, TimerActor};
use crate::actors::{Deps, Services, Settings};
use crate::api::{self, ApiState, Auth};
use crate::cluster::Router;
use crate::config::{Config, DEV_SECRET};
use crate::lock::{LockBackend, LockError};
use crate::realtime::Hub;
use crate::store::{Store, StoreError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be reached or migrated.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The lock backend could not be reached.
    #[error("lock backend: {0}")]
    Lock(#[from] LockError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A running node (without its HTTP listener until `serve`).
pub struct Node {
    /// The configuration it runs with.
    pub config: Config,
    /// Reaches every entity.
    pub router: Router,
    /// Persistence.
    pub store: Store,
    /// Stock leases.
    pub lock: Addr<LockActor>,
    /// Signs and checks tokens.
    pub auth: Auth,
    /// Live events.
    pub hub: Hub,
    /// Rider matching.
    pub dispatcher: Addr<Dispatcher>,
    /// Order deadlines.
    pub timers: Addr<TimerActor>,
    /// The threads the shards run on.
    arbiters: Vec<Arbiter>,
}

impl Node {
    /// Connects and migrates the store, starts the lock actor and the shards. Must run inside an
    /// actix `System`.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let store = Store::connect(&config.store).await?;
        store.migrate().await?;
        let backend = LockBackend::from_config(&config.lock).await?;
        tracing::info!(
            store = store.backend().name(),
            lock = backend.name(),
            shards = config.shards.count,
            "backends ready"
        );
        let lock = LockActor::new(backend, Duration::from_millis(config.lock.lease_ms)).start();
        let router = Router::new(config.shards.count);
        let settings = Arc::new(Settings::from_config(&config));
        let hub = Hub::new(config.realtime.buffer);
        let dispatcher =
            Dispatcher::new(router.clone(), hub.clone(), config.dispatch.clone()).start();
        let timers = TimerActor::new(router.clone(), config.timers.clone()).start();
        let deps: Deps = Arc::new(Services {
            store: store.clone(),
            router: router.clone(),
            lock: lock.clone(),
            hub: hub.clone(),
            dispatcher: dispatcher.clone(),
            timers: timers.clone(),
            settings,
        });
        let n_arbiters = match config.shards.arbiters {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let arbiters: Vec<Arbiter> = (0..n_arbiters).map(|_| Arbiter::new()).collect();
        let shards = (0..router.shard_count())
            .map(|i| {
                let deps = deps.clone();
                let arbiter = &arbiters[i as usize % arbiters.len()];
                Shard::start_in_arbiter(&arbiter.handle(), move |_| Shard::new(i, deps))
            })
            .collect();
        router.attach(shards);
        recover(
            &store,
            &router,
            &timers,
            &dispatcher,
            config.dispatch.enabled,
        )
        .await?;
        let auth = Auth::new(&config.auth.jwt_secret);
        if config.auth.jwt_secret == DEV_SECRET {
            tracing::warn!("auth.jwt_secret is the shipped dev secret: set WAIMAI__AUTH__JWT_SECRET before exposing this node");
        }
        Ok(Node {
            config,
            router,
            store,
            lock,
            auth,
            hub,
            dispatcher,
            timers,
            arbiters,
        })
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then finishes in-flight requests.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let state = Arc::new(ApiState {
            router: self.router.clone(),
            store: self.store.clone(),
            lock: self.lock.clone(),
            auth: self.auth.clone(),
            hub: self.hub.clone(),
            dispatcher: self.dispatcher.clone(),
            realtime: self.config.realtime.clone(),
        });
        let routes = api::routes(state, self.config.server.body_limit_bytes);
        // Nagle off: websocket events and small responses go out at once instead of waiting
        // for the peer's delayed ACK (it cost ~40 ms on an event following another message).
        let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |conn| {
            conn.inspect(|stream| {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
            })
        });
        warp::serve(routes)
            .serve_incoming_with_graceful_shutdown(incoming, shutdown)
            .await;
    }

    /// Drains every actor's mailbox, flushes the store and stops the shard threads.
    pub async fn shutdown(self) {
        let grace = Duration::from_millis(self.config.server.shutdown_grace_ms);
        let drains = futures::future::join_all(self.router.shards().iter().map(|s| s.send(Drain)));
        if tokio::time::timeout(grace, drains).await.is_err() {
            tracing::warn!("actors did not drain within the grace period");
        }
        self.store.close().await;
        for a in self.arbiters {
            a.stop();
        }
        tracing::info!("node stopped");
    }
}

/// Re-arms the deadlines of every order waiting in a timed status, puts accepted orders back into
/// dispatch and wakes the riders stored as online so the dispatcher's index is rebuilt.
async fn recover(
    store: &Store,
    router: &Router,
    timers: &Addr<TimerActor>,
    dispatcher: &Addr<Dispatcher>,
    dispatch: bool,
) -> Result<(), StoreError> {
    let timed = [
        OrderStatus::PendingPayment,
        OrderStatus::Paid,
        OrderStatus::Delivered,
    ];
    let waiting = store.orders_in(&timed, None).await?;
    let n_timed = waiting.len();
    for o in waiting {
        timers.do_send(Arm {
            order_id: o.id,
            version: o.version,
            status: o.status,
            since: o.updated_at,
        });
    }
    let mut n_dispatch = 0;
    if dispatch {
        // Loading a rider actor tells the dispatcher where it is; loading an accepted order
        // hands it to the dispatcher.
        for id in store.online_riders().await? {
            let _ = router.send(&id, GetRider).await;
        }
        for o in store.orders_in(&[OrderStatus::Accepted], None).await? {
            if o.rider_id.is_none() {
                n_dispatch += 1;
                dispatcher.do_send(OrderChanged {
                    order: o,
                    previous_rider: None,
                });
            }
        }
    }
    if n_timed + n_dispatch > 0 {
        tracing::info!(
            deadlines = n_timed,
            dispatch = n_dispatch,
            "recovered deadlines and dispatch"
        );
    }
    Ok(())
}

/// Starts a node, serves until `shutdown`, then shuts it down cleanly.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let node = Node::start(config).await?;
    tracing::info!(addr = %listener.local_addr()?, "waimai listening");
    node.serve(listener, shutdown).await;
    node.shutdown().await;
    Ok(())
}
