//! Membership: which shards this node owns, as a Kafka consumer group decides.
//!
//! Every node subscribes to `<prefix>.shards` (one partition per shard) in group
//! `cluster.group`, with the cooperative-sticky assignor, so a rebalance moves only the shards
//! that must move. The assignment *is* the ownership: a partition assigned to a node is a shard
//! it must serve; a revoked one, a shard it must hand over. Kafka's protocol keeps a node that
//! stops heartbeating (crashed, paused, cut off) from keeping its shards past
//! `session_timeout_ms`; what it cannot do, fencing a node that does not know it was expelled,
//! the store's epochs do.
//!
//! librdkafka calls the rebalance callbacks from `poll`, which runs on a thread of its own
//! (never on a runtime worker). Each callback hands the change to the node's async side and
//! blocks until it is done, so a revoked shard is drained and flushed before the rebalance is
//! acknowledged, and an assigned one is claimed before its messages are served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use tokio::sync::mpsc;

use crate::bus::BusError;

/// An ownership change for the node to carry out.
#[derive(Debug)]
pub enum Change {
    /// These shards are now ours: claim and serve them.
    Assign(Vec<u32>),
    /// These shards are ours no more: hand them over.
    Revoke(Vec<u32>),
}

/// A change and who waits for it to be carried out (the rebalance callback, blocked).
pub type Request = (Change, std::sync::mpsc::Sender<()>);

struct Context {
    tx: mpsc::UnboundedSender<Request>,
    /// Longest a callback waits for its change to be carried out.
    timeout: Duration,
    /// Set once the first assignment (possibly empty) arrived.
    joined: Arc<AtomicBool>,
}

impl Context {
    fn carry_out(&self, change: Change) {
        let (done, wait) = std::sync::mpsc::channel();
        let what = format!("{change:?}");
        if self.tx.send((change, done)).is_err() {
            return;
        }
        if wait.recv_timeout(self.timeout).is_err() {
            tracing::warn!(change = %what, "ownership change not finished within its deadline; acknowledging anyway");
        }
    }
}

fn shards_of(tpl: &TopicPartitionList) -> Vec<u32> {
    let mut v: Vec<u32> = tpl
        .elements()
        .iter()
        .filter_map(|e| u32::try_from(e.partition()).ok())
        .collect();
    v.sort_unstable();
    v
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let shards = shards_of(tpl);
            if !shards.is_empty() {
                tracing::info!(?shards, "shards revoked");
                self.carry_out(Change::Revoke(shards));
            }
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let shards = shards_of(tpl);
                if !shards.is_empty() {
                    tracing::info!(?shards, "shards assigned");
                    self.carry_out(Change::Assign(shards));
                }
                self.joined.store(true, Ordering::Release);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// This node's membership in the group; leaving (dropping the consumer) hands every shard
/// over first.
pub struct Membership {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Group settings.
pub struct GroupSettings {
    /// The group.
    pub group: String,
    /// The shards topic.
    pub topic: String,
    /// Session timeout, ms.
    pub session_timeout_ms: u64,
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Longest a rebalance callback waits for its change.
    pub change_timeout: Duration,
}

impl Membership {
    /// Joins the group; ownership changes arrive on `tx`.
    pub fn join(
        mut config: ClientConfig,
        settings: GroupSettings,
        tx: mpsc::UnboundedSender<Request>,
        joined: Arc<AtomicBool>,
    ) -> Result<Membership, BusError> {
        config
            .set("group.id", &settings.group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                settings.session_timeout_ms.to_string(),
            )
            .set("heartbeat.interval.ms", settings.heartbeat_ms.to_string())
            .set(
                "max.poll.interval.ms",
                (settings.change_timeout.as_millis() as u64 * 3 + 30_000).to_string(),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest");
        let consumer: BaseConsumer<Context> = config.create_with_context(Context {
            tx,
            timeout: settings.change_timeout,
            joined: joined.clone(),
        })?;
        consumer.subscribe(&[&settings.topic])?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("waimai-membership".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Acquire) {
                    // Rebalance callbacks run inside poll; the topic carries no messages.
                    if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                        tracing::debug!(error = %e, "membership poll");
                    }
                }
                // Leaving: unsubscribe so the group reassigns our shards now rather than after
                // the session timeout; the revoke callback hands them over first.
                consumer.unsubscribe();
                for _ in 0..50 {
                    if consumer
                        .assignment()
                        .map(|a| a.count() == 0)
                        .unwrap_or(true)
                    {
                        break;
                    }
                    consumer.poll(Duration::from_millis(100));
                }
                drop(consumer);
            })
            .map_err(|e| BusError::Topic(format!("membership thread: {e}")))?;
        Ok(Membership {
            stop,
            thread: Some(thread),
        })
    }

    /// Leaves the group, handing every shard over; returns when done.
    pub async fn leave(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
