//! Startup and shutdown of one node: store, lock actor, shards on arbiters, the HTTP front door.
//! `main` and the tests both go through `Node::start` and `Node::serve`.

use std::future::Future;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter};
use tokio::net::TcpListener;

use crate::actors::lock::LockActor;
use crate::actors::order_machine::OrderStatus;
use crate::actors::shard::{Drain, Shard};
use crate::actors::timers::{Arm, TimerActor};
use crate::actors::{Deps, Services, Settings};
use crate::api::{self, ApiState, Auth};
use crate::bus::{self, BusError};
use crate::cluster::{Cluster, Directory, DirectorySettings, Router};
use crate::config::{Config, LockBackendKind, DEV_SECRET};
use crate::domain::Role;
use crate::lock::{LockBackend, LockError};
use crate::messages::DispatchStats;
use crate::realtime::{Fanout, Hub};
use crate::store::{Backend, Store, StoreError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be reached or migrated.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The lock backend could not be reached.
    #[error("lock backend: {0}")]
    Lock(#[from] LockError),
    /// The broker could not be reached, or its topics do not fit.
    #[error("cluster: {0}")]
    Bus(#[from] BusError),
    /// The configuration cannot work.
    #[error("config: {0}")]
    Config(String),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A running node (without its HTTP listener until `serve`).
pub struct Node {
    /// The configuration it started with.
    pub config: Config,
    /// The configuration in effect (reloads change its live keys).
    pub live: Arc<crate::reload::Live>,
    /// Reaches every entity.
    pub router: Router,
    /// Persistence.
    pub store: Store,
    /// Stock leases.
    pub lock: Addr<LockActor>,
    /// Signs and checks tokens.
    pub auth: Auth,
    /// Live events (this node's hub).
    pub hub: Hub,
    /// Order deadlines.
    pub timers: Addr<TimerActor>,
    /// The payment provider.
    pub payments: crate::payments::Payments,
    /// Rate limits, load shedding, the browse cache.
    pub gateway: Arc<crate::gateway::Gateway>,
    /// The simulated provider, when it is the one in use (its callbacks need this node's address).
    sim: Option<Arc<crate::payments::sim::SimProvider>>,
    /// The node's part in a cluster, if it is in one.
    cluster: Option<Cluster>,
    /// In a cluster, the producer the outbox relay and live events share.
    producer: Option<Arc<bus::producer::Producer>>,
    /// Tasks to stop at shutdown (the events feed, samplers).
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The threads the shards run on.
    arbiters: Vec<Arbiter>,
}

/// What a cluster node sets up before its actors start.
struct ClusterParts {
    kafka: rdkafka::ClientConfig,
    dir: Arc<Directory>,
    relay: Arc<bus::relay::Relay>,
    producer: Arc<bus::producer::Producer>,
    lag: Arc<AtomicI64>,
}

impl Node {
    /// Connects and migrates the store, starts the lock actor and the shards; in a cluster,
    /// connects to the broker and joins the group. Must run inside an actix `System`.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let clustered = config.cluster.enabled;
        let count = config.shards.count.max(1);
        config
            .dispatch
            .settings
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let store = Store::connect(&config.store, count).await?;
        if clustered {
            check_cluster_config(&config, store.backend())?;
        }
        store.migrate().await?;
        let breaker = crate::breaker::BreakerSettings::from_config(&config.gateway.breaker);
        let backend = LockBackend::from_config_guarded(&config.lock, breaker).await?;
        store.guard(crate::breaker::Breaker::new(
            "store",
            crate::breaker::BreakerSettings {
                // A commit waits for its batch under load; the pool's acquire timeout bounds
                // the wait for a connection.
                timeout: None,
                ..breaker
            },
        ));
        tracing::info!(
            store = store.backend().name(),
            lock = backend.name(),
            shards = count,
            cluster = clustered,
            "backends ready"
        );
        let lock = LockActor::new(backend, Duration::from_millis(config.lock.lease_ms)).start();
        let router = Router::new(count);
        let settings = Arc::new(Settings::from_config(&config));
        let hub = Hub::new(config.realtime.buffer);
        let auth = Auth::new(&config.auth.jwt_secret);
        // Every merchant, before anything can change one: the events feed below applies
        // changes on top of this.
        let catalog = Arc::new(crate::catalog::Catalog::new(&config.gateway.cache));
        let merchants = catalog.refresh(&store).await?;
        tracing::info!(merchants, "merchant catalog loaded");
        let mut tasks = Vec::new();
        let (events, parts) = if clustered {
            let (events, parts, feed) = connect_bus(
                &config,
                &store,
                &router,
                &auth,
                hub.clone(),
                catalog.clone(),
            )
            .await?;
            tasks.push(feed);
            (events, Some(parts))
        } else {
            (Fanout::Local(hub.clone()), None)
        };
        let timers = TimerActor::new(router.clone(), config.timers.clone()).start();
        let served: crate::payments::sim::Served = {
            let router = router.clone();
            Arc::new(move || {
                router
                    .directory()
                    .map(|d| d.serving().into_iter().map(|(s, _)| s).collect())
            })
        };
        if config.payments.provider != "sim" {
            return Err(StartError::Config(format!(
                "payments.provider {:?} is not known (sim)",
                config.payments.provider
            )));
        }
        let sim = Arc::new(crate::payments::sim::SimProvider::new(
            store.clone(),
            config.payments.hmac_secret.clone(),
            Duration::from_millis(config.payments.sim_late_ms),
            served.clone(),
        ));
        if let Some(url) = config
            .payments
            .callback()
            .map_err(|e| StartError::Config(e.to_string()))?
        {
            sim.set_callback_url(&url).map_err(StartError::Config)?;
        }
        tasks.push(tokio::spawn(sim.clone().run()));
        let payments: crate::payments::Payments = Arc::new(crate::payments::guarded::Guarded::new(
            sim.clone(),
            crate::breaker::Breaker::new("payments", breaker),
        ));
        let live = Arc::new(crate::reload::Live::new(config.clone()));
        let deps: Deps = Arc::new(Services {
            store: store.clone(),
            router: router.clone(),
            lock: lock.clone(),
            events,
            timers: timers.clone(),
            payments: payments.clone(),
            settings: settings.clone(),
            live: live.clone(),
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
                Shard::start_in_arbiter(&arbiter.handle(), move |_| Shard::new(i, deps, !clustered))
            })
            .collect();
        router.attach(shards);
        let producer = parts.as_ref().map(|p| p.producer.clone());
        let cluster = match parts {
            Some(p) => Some(
                Cluster::start(
                    &config,
                    p.dir,
                    router.clone(),
                    store.clone(),
                    timers.clone(),
                    p.relay,
                    p.lag,
                    p.kafka,
                )
                .await?,
            ),
            None => {
                recover(&store, &timers).await?;
                if config.dispatch.enabled {
                    for zone in settings.zones.ids() {
                        let _ = router.send(zone, DispatchStats).await;
                    }
                }
                None
            }
        };
        tasks.push(tokio::spawn(sample_order_ages(store.clone())));
        tasks.push(tokio::spawn(crate::store::prune::run(
            store.clone(),
            crate::store::prune::Retention {
                keep: Duration::from_millis(config.store.outbox_keep_ms),
                every: Duration::from_millis(config.store.prune_ms),
                shipped_only: clustered,
            },
            {
                // One node of a cluster prunes: the owner of shard 0 (None: a single node).
                let served = served.clone();
                move || served().is_none_or(|s| s.contains(&0))
            },
        )));
        tasks.push(tokio::spawn(crate::payments::reconcile::run(
            store.clone(),
            router.clone(),
            payments.clone(),
            served,
            crate::payments::reconcile::ReconcileSettings {
                every: Duration::from_millis(config.payments.reconcile_ms),
                open_after: Duration::from_millis(config.payments.reconcile_after_ms),
                refund_retry: Duration::from_millis(config.payments.refund_retry_ms),
            },
        )));
        let gateway = Arc::new(build_gateway(&config, &router, &store, catalog.clone()).await?);
        tasks.push(gateway.cache.follow());
        tasks.push(tokio::spawn(merge_catalog(
            catalog,
            store.clone(),
            Duration::from_millis(config.gateway.cache.catalog_refresh_ms.max(100)),
        )));
        if let Some(limits) = &gateway.limits {
            let gw = gateway.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    if let Some(l) = &gw.limits {
                        l.retain_recent();
                    }
                }
            }));
            tracing::info!(cluster_wide = limits.cluster_wide(), "rate limits on");
        }
        if config.auth.jwt_secret == DEV_SECRET {
            tracing::warn!("auth.jwt_secret is the shipped dev secret: set WAIMAI__AUTH__JWT_SECRET before exposing this node");
        }
        tasks.push(tokio::spawn(reconfigure(
            live.subscribe(),
            timers.clone(),
            gateway.clone(),
        )));
        Ok(Node {
            config,
            live,
            router,
            store,
            lock,
            auth,
            hub,
            timers,
            payments,
            gateway,
            sim: Some(sim),
            cluster,
            producer,
            tasks,
            arbiters,
        })
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then finishes in-flight requests.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        if let (Some(sim), true) = (&self.sim, self.config.payments.callback_url.is_empty()) {
            // The simulated provider calls this node back where it actually listens.
            let own = listener
                .local_addr()
                .map(|addr| format!("http://{addr}/v1/payments/callback"));
            if let Some(url) = own.ok().and_then(|u| url::Url::parse(&u).ok()) {
                if let Err(e) = sim.set_callback_url(&url) {
                    tracing::error!(error = %e, "simulated provider: no callback address");
                }
            }
        }
        let state = Arc::new(ApiState {
            router: self.router.clone(),
            store: self.store.clone(),
            lock: self.lock.clone(),
            auth: self.auth.clone(),
            hub: self.hub.clone(),
            realtime: self.config.realtime.clone(),
            cluster: self.cluster.as_ref().map(Cluster::status),
            node_id: self.node_id(),
            payments: self.payments.clone(),
            payments_cfg: self.config.payments.clone(),
            gateway: self.gateway.clone(),
            live: self.live.clone(),
        });
        // SIGHUP is taken before the node says it listens, so a reload asked for once it
        // listens is never the signal's default action (exit).
        #[cfg(unix)]
        let hangups = tokio::spawn(reload_on_sighup(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
            self.live.clone(),
        ));
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(addr = %addr, "waimai listening");
        }
        // The access log (`RUST_LOG=waimai::access=debug`) has the path only, never the query:
        // websocket URLs carry the bearer token as `?token=`.
        let access_log = warp::log::custom(|info| {
            tracing::debug!(
                target: "waimai::access",
                method = %info.method(),
                path = info.path(),
                status = info.status().as_u16(),
                micros = info.elapsed().as_micros() as u64,
                "request"
            );
        });
        // Every request runs in a span continuing the caller's trace; the answer names it.
        let routes = api::routes(state, self.config.server.body_limit_bytes).wrap(|route| {
            let route = warp::Filter::map(route, api::trace::with_traceparent);
            let route = warp::Filter::with(route, access_log);
            warp::service(warp::Filter::with(
                route,
                warp::trace(api::trace::request_span),
            ))
        });
        let routes = Arc::new(routes);
        // hyper directly rather than `warp::serve(..).serve_incoming(..)`: warp forgets the
        // peer's address of connections it did not accept itself, and the rate limits key on
        // it. Each request carries its connection's address as an `api::ClientAddr`.
        let mut incoming = match warp::hyper::server::conn::AddrIncoming::from_listener(listener) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve on the listener");
                return;
            }
        };
        // Nagle off: websocket events and small responses go out at once instead of waiting
        // for the peer's delayed ACK (it cost ~40 ms on an event following another message).
        incoming.set_nodelay(true);
        let make = warp::hyper::service::make_service_fn(
            move |conn: &warp::hyper::server::conn::AddrStream| {
                let addr = conn.remote_addr();
                let routes = routes.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(warp::hyper::service::service_fn(
                        move |mut req: warp::http::Request<warp::hyper::Body>| {
                            req.extensions_mut().insert(api::ClientAddr(addr));
                            let mut svc = routes.pick(req.method(), req.uri().path()).clone();
                            warp::hyper::service::Service::call(&mut svc, req)
                        },
                    ))
                }
            },
        );
        if let Err(e) = warp::hyper::Server::builder(incoming)
            .serve(make)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "server error");
        }
        #[cfg(unix)]
        hangups.abort();
    }

    /// In a cluster, the Kafka producer this node ships events with.
    pub fn kafka_producer(&self) -> Option<Arc<bus::producer::Producer>> {
        self.producer.clone()
    }

    /// This node's id (in a cluster, as configured or derived from the listen address).
    pub fn node_id(&self) -> String {
        self.config.cluster.node_id(&self.config.server.listen)
    }

    /// Hands its shards to the rest of the cluster (if any), drains every actor's mailbox,
    /// flushes the store and stops the shard threads.
    pub async fn shutdown(self) {
        if let Some(c) = self.cluster {
            c.leave().await;
        }
        let grace = Duration::from_millis(self.config.server.shutdown_grace_ms);
        let drains = futures::future::join_all(self.router.shards().iter().map(|s| s.send(Drain)));
        if tokio::time::timeout(grace, drains).await.is_err() {
            tracing::warn!("actors did not drain within the grace period");
        }
        self.store.close().await;
        for t in self.tasks {
            t.abort();
        }
        for a in self.arbiters {
            a.stop();
        }
        tracing::info!("node stopped");
    }
}

/// The gateway's defences from `gateway:` (cluster-wide rate limits through the lock service's
/// Redis when it is configured and `gateway.limits.backend` is `auto`).
async fn build_gateway(
    config: &Config,
    router: &Router,
    store: &Store,
    catalog: Arc<crate::catalog::Catalog>,
) -> Result<crate::gateway::Gateway, StartError> {
    let g = &config.gateway;
    let redis_target = || crate::gateway::RedisTarget {
        url: config.lock.redis_url.clone(),
        prefix: config.lock.key_prefix.clone(),
    };
    let l2 = match g.cache.redis.as_str() {
        "auto" if g.cache.enabled && config.lock.backend == LockBackendKind::Redis => Some(
            crate::gateway::cache::L2::connect(
                &redis_target(),
                crate::breaker::BreakerSettings::from_config(&g.breaker),
            )
            .await
            .map_err(|e| StartError::Lock(LockError::Unavailable(e.to_string())))?,
        ),
        "auto" | "off" => None,
        other => {
            return Err(StartError::Config(format!(
                "gateway.cache.redis {other:?} is not known (auto, off)"
            )))
        }
    };
    let limits = if g.limits.enabled {
        let redis = match g.limits.backend.as_str() {
            "auto" if config.lock.backend == LockBackendKind::Redis => Some(redis_target()),
            "auto" | "local" => None,
            other => {
                return Err(StartError::Config(format!(
                    "gateway.limits.backend {other:?} is not known (auto, local)"
                )))
            }
        };
        let l = crate::gateway::Limits::new(
            g.limits.write,
            g.limits.read,
            g.limits.ws,
            redis,
            crate::breaker::BreakerSettings::from_config(&g.breaker),
        )
        .await
        .map_err(|e| StartError::Lock(LockError::Unavailable(e.to_string())))?;
        Some(l)
    } else {
        None
    };
    Ok(crate::gateway::Gateway {
        limits,
        admission: crate::gateway::Admission::new(g.shed.clone(), router.clone(), store.clone()),
        door: crate::gateway::Door::new(g.door.creates_in_flight),
        cache: crate::gateway::BrowseCache::new(
            g.cache.clone(),
            router.clone(),
            catalog.clone(),
            l2,
        ),
        catalog,
    })
}

/// Merges the store's merchants into the catalog every `every` (what the events feed missed).
async fn merge_catalog(catalog: Arc<crate::catalog::Catalog>, store: Store, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = catalog.refresh(&store).await {
            tracing::warn!(error = %e, "merchant catalog: merge with the store failed; retried next period");
        }
    }
}

/// Refuses cluster settings that cannot be safe.
fn check_cluster_config(config: &Config, backend: Backend) -> Result<(), StartError> {
    if backend == Backend::Sqlite {
        return Err(StartError::Config(
            "cluster mode needs a shared database: a SQLite file is not shared between hosts. \
             Set store.url (WAIMAI__STORE__URL) to postgres://... or mysql://..."
                .into(),
        ));
    }
    if config.lock.backend != LockBackendKind::Redis {
        return Err(StartError::Config(
            "cluster mode needs stock leases every node sees: set lock.backend: redis \
             (WAIMAI__LOCK__BACKEND=redis)"
                .into(),
        ));
    }
    if config.cluster.brokers.trim().is_empty() {
        return Err(StartError::Config(
            "cluster mode needs cluster.brokers (WAIMAI__CLUSTER__BROKERS=host:9092)".into(),
        ));
    }
    Ok(())
}

/// Connects a cluster node to the broker before any actor runs: topics, the events feed into
/// this node's hub, the producer for the outbox relay and live events, and the directory the
/// router will consult.
async fn connect_bus(
    config: &Config,
    store: &Store,
    router: &Router,
    auth: &Auth,
    hub: Hub,
    catalog: Arc<crate::catalog::Catalog>,
) -> Result<(Fanout, ClusterParts, tokio::task::JoinHandle<()>), StartError> {
    let c = &config.cluster;
    let listen = &config.server.listen;
    let node_id = c.node_id(listen);
    let count = router.shard_count();
    let kafka = bus::client_config(c, &node_id);
    let (shards_topic, events_topic) = (bus::shards_topic(c), bus::events_topic(c));
    bus::topics::ensure(
        &kafka,
        &[shards_topic, events_topic.clone()],
        count,
        c.replication_factor,
    )
    .await?;
    let mut producer = kafka.clone();
    producer
        .set("acks", "all")
        .set("linger.ms", "1")
        // A delivery the broker does not acknowledge in time fails (and counts against the
        // breaker) instead of waiting librdkafka's default five minutes.
        .set(
            "message.timeout.ms",
            c.produce_timeout_ms.max(1).to_string(),
        );
    if c.idempotent_producer {
        producer.set("enable.idempotence", "true");
    } else {
        // Without idempotence, one request in flight keeps each partition in order.
        producer.set("max.in.flight.requests.per.connection", "1");
    }
    let producer = bus::producer::Producer::new(producer).map_err(BusError::from)?;
    let lag = Arc::new(AtomicI64::new(0));
    let feed = {
        let (kafka, topic, wait, lag) = (
            kafka.clone(),
            events_topic.clone(),
            c.fetch_wait_ms,
            lag.clone(),
        );
        tokio::task::spawn_blocking(move || bus::feed::consumer(kafka, &topic, count, wait, lag))
            .await
            .map_err(|e| StartError::Config(format!("events feed: {e}")))??
    };
    let feed = tokio::spawn(bus::feed::run(feed, hub.clone(), catalog));
    let token = auth
        .mint(
            Role::Admin,
            &format!("node:{node_id}"),
            10 * 365 * 24 * 3600,
        )
        .map_err(|e| StartError::Config(format!("node token: {e}")))?;
    let dir = Arc::new(Directory::new(
        count,
        DirectorySettings {
            node_id: node_id.clone(),
            advertise: c.advertise(listen),
            token,
            wait: Duration::from_millis(c.forward_wait_ms),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            call_timeout: Duration::from_millis(c.forward_timeout_ms),
            refresh: Duration::from_millis(c.refresh_ms.max(50)),
        },
        tokio::runtime::Handle::current(),
    ));
    router.attach_directory(dir.clone());
    let breaker = crate::breaker::Breaker::new(
        "kafka",
        crate::breaker::BreakerSettings {
            // Deliveries are bounded by message.timeout.ms.
            timeout: None,
            ..crate::breaker::BreakerSettings::from_config(&config.gateway.breaker)
        },
    );
    let live = Arc::new(bus::live::KafkaLive::new(
        producer.clone(),
        events_topic.clone(),
        count,
        breaker.clone(),
    ));
    let relay = Arc::new(bus::relay::Relay::new(
        store.clone(),
        producer.clone(),
        events_topic,
        dir.clone(),
        breaker,
    ));
    tracing::info!(node = %node_id, advertise = %c.advertise(listen), brokers = %c.brokers, "joining the cluster");
    Ok((
        Fanout::Cluster { hub, live },
        ClusterParts {
            kafka,
            dir,
            relay,
            producer,
            lag,
        },
        feed,
    ))
}

/// Re-arms the deadlines of every order waiting in a timed status (a single node owns them
/// all; a cluster node re-arms those of each shard it is assigned).
async fn recover(store: &Store, timers: &Addr<TimerActor>) -> Result<(), StoreError> {
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
    if n_timed > 0 {
        tracing::info!(deadlines = n_timed, "recovered deadlines");
    }
    Ok(())
}

/// Samples the age of the oldest order in each non-terminal status every 15 s (the "orders
/// stuck in one status" alert reads it).
async fn sample_order_ages(store: Store) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        match store.oldest_by_status().await {
            Ok(rows) => {
                let now = crate::domain::now_ms();
                for s in crate::actors::order_machine::ALL_STATUSES {
                    if s.is_terminal() {
                        continue;
                    }
                    let age = rows
                        .iter()
                        .find(|(st, _)| *st == s)
                        .map_or(0.0, |(_, t)| (now - t).max(0) as f64 / 1000.0);
                    crate::metrics::ORDERS_OLDEST_IN_STATUS
                        .with_label_values(&[s.as_str()])
                        .set(age);
                }
            }
            Err(StoreError::Closed) => return,
            Err(e) => tracing::debug!(error = %e, "order age sample failed"),
        }
    }
}

/// Refuses to listen beyond loopback with a secret shipped in `config.yaml`: anyone who reads
/// the repository could mint admin tokens (`auth.jwt_secret`) or forge payment callbacks
/// (`payments.hmac_secret`).
pub fn check_secrets(config: &Config, addr: std::net::SocketAddr) -> Result<(), StartError> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    let mut shipped = Vec::new();
    if config.auth.jwt_secret == DEV_SECRET {
        shipped.push("auth.jwt_secret (set WAIMAI__AUTH__JWT_SECRET)");
    }
    if config.payments.hmac_secret == crate::config::DEV_PAYMENTS_SECRET {
        shipped.push("payments.hmac_secret (set WAIMAI__PAYMENTS__HMAC_SECRET)");
    }
    if shipped.is_empty() {
        return Ok(());
    }
    Err(StartError::Config(format!(
        "refusing to listen on {addr} (not loopback) with the development secret shipped in \
         config.yaml for {}: set a long random value (e.g. `openssl rand -hex 32`) in the \
         environment or a --config file, or listen on 127.0.0.1",
        shipped.join(" and ")
    )))
}

/// Connections the kernel completes and queues for the node before it accepts them (capped by
/// `net.core.somaxconn`, 4096 on current kernels).
///
/// `tokio::net::TcpListener::bind` listens with std's backlog of 128. A load burst that opens
/// more connections than that at once (the load generator's pool growing under the open model)
/// overflowed it: the kernel dropped the extra SYNs and each such client retried after TCP's
/// initial 1 s timeout. That was the ~1 s maximum seen in open-model runs (`nstat`:
/// `TcpExtListenOverflows`, `TcpExtTCPSynRetrans`; BENCHMARKS.md).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the node's HTTP listener on `addr` (`host:port`) with `LISTEN_BACKLOG`.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std's bind does on Unix: a restarted node rebinds at once.
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// Starts a node, serves until `shutdown`, then shuts it down cleanly.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let addr = listener.local_addr()?;
    check_secrets(&config, addr)?;
    let node = Node::start(config).await?;
    node.serve(listener, shutdown).await;
    node.shutdown().await;
    Ok(())
}

/// Tells the components that honour live keys about each applied reload.
async fn reconfigure(
    mut cfg: tokio::sync::watch::Receiver<Arc<Config>>,
    timers: Addr<TimerActor>,
    gateway: Arc<crate::gateway::Gateway>,
) {
    while cfg.changed().await.is_ok() {
        let now = cfg.borrow_and_update().clone();
        timers.do_send(crate::actors::timers::SetTimers(now.timers.clone()));
        if let Some(l) = &gateway.limits {
            let q = &now.gateway.limits;
            l.set_quotas(q.write, q.read, q.ws);
        }
    }
}

/// SIGHUP reloads the configuration (what cannot change live is refused with a log line).
#[cfg(unix)]
async fn reload_on_sighup(
    hup: std::io::Result<tokio::signal::unix::Signal>,
    live: Arc<crate::reload::Live>,
) {
    let Ok(mut hup) = hup else {
        tracing::warn!("cannot listen for SIGHUP: config reload only through the admin route");
        return;
    };
    while hup.recv().await.is_some() {
        match live.reload() {
            Ok(r) => tracing::info!(
                applied = r.applied.len(),
                refused = r.refused.len(),
                "config reloaded (SIGHUP)"
            ),
            Err(e) => tracing::error!(error = %e, "config reload (SIGHUP) failed; nothing changed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of connections larger than std's backlog of 128 is queued whole, not dropped:
    /// every connect completes although the listener accepts none of them yet.
    #[tokio::test]
    async fn the_listener_queues_a_burst_of_connections() {
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The kernel caps the backlog at `somaxconn` (4096 since Linux 5.4, 128 before).
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let burst = cap.min(400);
        let mut clients = Vec::new();
        for i in 0..burst {
            // A dropped SYN is retried after 1 s, then 3 s: 5 s means the queue was full.
            let c =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                    .await;
            match c {
                Ok(Ok(c)) => clients.push(c),
                other => panic!("connection {i} was not queued: {other:?}"),
            }
        }
        assert_eq!(clients.len(), burst);
        for _ in 0..burst {
            listener.accept().await.expect("accept");
        }
    }

    #[tokio::test]
    async fn an_address_that_cannot_be_bound_is_an_error() {
        assert!(bind("not an address").await.is_err());
        let taken = bind("127.0.0.1:0").await.expect("bind");
        let port = taken.local_addr().expect("addr").port();
        assert!(bind(&format!("127.0.0.1:{port}")).await.is_err());
    }
}
