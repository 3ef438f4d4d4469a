//! A node's part in a cluster, running: it carries out the ownership changes the membership
//! reports (claim and serve assigned shards; drain, flush and hand over revoked ones), keeps
//! the directory fresh, ships the outbox, and says it is alive.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::directory::{Directory, Local};
use super::membership::{Change, GroupSettings, Membership, Request};
use super::router::Router;
use crate::actors::order_machine::OrderStatus;
use crate::actors::shard::{Assign, Revoke};
use crate::actors::timers::{Arm, ForgetShards, TimerActor};
use crate::actors::Zones;
use crate::bus::relay::Relay;
use crate::bus::BusError;
use crate::config::Config;
use crate::domain::now_ms;
use crate::messages::DispatchStats;
use crate::metrics;
use crate::store::{NodeRow, Store};

/// What the rest of the node asks of the cluster.
pub struct ClusterStatus {
    /// The directory.
    pub dir: Arc<Directory>,
    /// Whether the group has given this node its first assignment.
    pub joined: Arc<AtomicBool>,
    /// This node's consumer lag on the events topic.
    pub lag: Arc<AtomicI64>,
    /// When this node started, ms since the epoch.
    pub started_at: i64,
    /// How long a node may go without a heartbeat before it counts as gone, ms.
    pub alive_ms: i64,
}

/// A running cluster membership.
pub struct Cluster {
    status: Arc<ClusterStatus>,
    membership: Option<Membership>,
    tasks: Vec<JoinHandle<()>>,
}

/// What carrying out ownership changes needs.
struct Handoff {
    dir: Arc<Directory>,
    router: Router,
    store: Store,
    timers: Addr<TimerActor>,
    relay: Arc<Relay>,
    zones: Zones,
    dispatch: bool,
    grace: Duration,
}

impl Cluster {
    /// Starts the cluster side of a node whose shards exist but serve nothing yet: directory
    /// refresh, outbox relay, heartbeat, then joins the group (assignments start arriving).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        config: &Config,
        dir: Arc<Directory>,
        router: Router,
        store: Store,
        timers: Addr<TimerActor>,
        relay: Arc<Relay>,
        lag: Arc<AtomicI64>,
        kafka: rdkafka::ClientConfig,
    ) -> Result<Cluster, BusError> {
        let c = &config.cluster;
        let stamped = store
            .backfill_shards()
            .await
            .map_err(|e| BusError::Topic(e.to_string()))?;
        if stamped > 0 {
            tracing::info!(rows = stamped, "stamped older rows with their shard");
        }
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(dir.clone().refresh_loop(store.clone())));
        tasks.push(tokio::spawn(relay.clone().run()));
        let status = Arc::new(ClusterStatus {
            dir: dir.clone(),
            joined: Arc::new(AtomicBool::new(false)),
            lag,
            started_at: now_ms(),
            alive_ms: (c.session_timeout_ms as i64).max(3000),
        });
        tasks.push(tokio::spawn(heartbeat(status.clone(), store.clone())));
        let (tx, rx) = mpsc::unbounded_channel::<Request>();
        let handoff = Handoff {
            dir: dir.clone(),
            router,
            store,
            timers,
            relay,
            zones: Zones::new(&config.dispatch.zones),
            dispatch: config.dispatch.enabled,
            grace: Duration::from_millis(c.handoff_timeout_ms / 2),
        };
        tasks.push(tokio::spawn(handoff.run(rx)));
        let membership = Membership::join(
            kafka,
            GroupSettings {
                group: c.group.clone(),
                topic: crate::bus::shards_topic(c),
                session_timeout_ms: c.session_timeout_ms,
                heartbeat_ms: c.heartbeat_ms,
                change_timeout: Duration::from_millis(c.handoff_timeout_ms),
            },
            tx,
            status.joined.clone(),
        )?;
        Ok(Cluster {
            status,
            membership: Some(membership),
            tasks,
        })
    }

    /// The node's view of the cluster.
    pub fn status(&self) -> Arc<ClusterStatus> {
        self.status.clone()
    }

    /// Leaves the group (handing every shard over, so the others take them at once rather
    /// than after the session timeout), then stops the background tasks.
    pub async fn leave(mut self) {
        if let Some(m) = self.membership.take() {
            m.leave().await;
        }
        for t in self.tasks {
            t.abort();
        }
    }
}

impl Handoff {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Request>) {
        while let Some((change, done)) = rx.recv().await {
            match change {
                Change::Assign(shards) => self.assign(shards).await,
                Change::Revoke(shards) => self.revoke(shards).await,
            }
            let _ = done.send(());
        }
    }

    /// Claims each shard (bumping its epoch), then serves it: deadlines re-armed from the
    /// store, its dispatch zones started.
    async fn assign(&self, shards: Vec<u32>) {
        for s in &shards {
            self.dir.set_local(*s, Local::Moving);
        }
        let mut claimed = Vec::new();
        for s in shards {
            match self.claim(s).await {
                Some(epoch) => claimed.push((s, epoch)),
                None => {
                    // Keep trying in the background while the shard is still ours to claim.
                    let (dir, store) = (self.dir.clone(), self.store.clone());
                    let router = self.router.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            if dir.local(s) != Local::Moving {
                                return;
                            }
                            if let Ok(epoch) =
                                store.claim_shard(s, dir.node_id(), dir.advertise()).await
                            {
                                serve(&dir, &router, s, epoch).await;
                                return;
                            }
                        }
                    });
                }
            }
        }
        for (s, epoch) in &claimed {
            serve(&self.dir, &self.router, *s, *epoch).await;
        }
        tracing::info!(shards = ?claimed, "serving claimed shards (shard, epoch)");
        let ids: Vec<u32> = claimed.iter().map(|(s, _)| *s).collect();
        let timed = [
            OrderStatus::PendingPayment,
            OrderStatus::Paid,
            OrderStatus::Delivered,
        ];
        match self.store.orders_of_shards(&ids, &timed).await {
            Ok(orders) => {
                for o in orders {
                    self.timers.do_send(Arm {
                        order_id: o.id,
                        version: o.version,
                        status: o.status,
                        since: o.updated_at,
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not re-arm deadlines of new shards"),
        }
        if self.dispatch {
            for zone in self.zones.ids() {
                if ids.contains(&self.router.shard_of(zone)) {
                    let _ = self.router.send(zone, DispatchStats).await;
                }
            }
        }
        self.dir.stale();
        metrics::CLUSTER_SHARDS_OWNED.set(self.dir.serving().len() as i64);
    }

    async fn claim(&self, shard: u32) -> Option<i64> {
        for attempt in 0..3 {
            match self
                .store
                .claim_shard(shard, self.dir.node_id(), self.dir.advertise())
                .await
            {
                Ok(epoch) => return Some(epoch),
                Err(e) => {
                    tracing::warn!(shard, attempt, error = %e, "could not claim shard");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        None
    }

    /// Stops serving the shards: messages for them wait; every actor answers what it has
    /// queued and stops (merchants release their stock leases); the outbox is flushed; the
    /// deadlines are dropped (the next owner re-arms them).
    async fn revoke(&self, shards: Vec<u32>) {
        for s in &shards {
            self.dir.set_local(*s, Local::Moving);
        }
        let addrs = self.router.shards();
        let stops = shards
            .iter()
            .filter_map(|s| addrs.get(*s as usize))
            .map(|a| {
                a.send(Revoke {
                    epoch: None,
                    grace: self.grace,
                })
            });
        futures::future::join_all(stops).await;
        self.relay.flush(&shards, self.grace).await;
        self.timers.do_send(ForgetShards {
            shards: shards.clone(),
        });
        for s in &shards {
            self.dir.set_local(*s, Local::No);
        }
        self.dir.stale();
        metrics::CLUSTER_SHARDS_OWNED.set(self.dir.serving().len() as i64);
        tracing::info!(?shards, "handed shards over");
    }
}

/// Starts serving a claimed shard.
async fn serve(dir: &Directory, router: &Router, shard: u32, epoch: i64) {
    if let Some(addr) = router.shards().get(shard as usize) {
        let _ = addr.send(Assign { epoch: Some(epoch) }).await;
    }
    dir.set_local(shard, Local::Serving(epoch));
    tracing::debug!(shard, epoch, "serving shard");
}

/// Records this node as alive every second, with its lag; keeps the cluster gauges current.
async fn heartbeat(status: Arc<ClusterStatus>, store: Store) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let row = NodeRow {
            node_id: status.dir.node_id().to_string(),
            addr: status.dir.advertise().to_string(),
            started_at: status.started_at,
            last_seen: now_ms(),
            lag: status.lag.load(Ordering::Relaxed),
        };
        if let Err(e) = store.heartbeat(&row).await {
            tracing::debug!(error = %e, "heartbeat not recorded");
        }
        n += 1;
        if n % 5 == 1 {
            if let Ok(nodes) = store.nodes().await {
                let now = now_ms();
                let alive = nodes
                    .iter()
                    .filter(|r| now - r.last_seen <= status.alive_ms)
                    .count();
                metrics::CLUSTER_MEMBERS.set(alive as i64);
            }
            let shards: Vec<u32> = status.dir.serving().into_iter().map(|(s, _)| s).collect();
            if let Ok((pending, oldest)) = store.outbox_backlog(&shards).await {
                metrics::OUTBOX_PENDING.set(pending);
                let age = oldest.map_or(0.0, |t| ((now_ms() - t).max(0)) as f64 / 1000.0);
                metrics::OUTBOX_OLDEST_SECONDS.set(age);
            }
        }
    }
}
