//! The directory: which node serves each shard, as this node knows it.
//!
//! Two sources feed it. This node's own shards come from the membership (Kafka's group
//! assignment, then the epoch bump in the store); they are `Serving` here only while the local
//! shard supervisor serves them, and `Moving` while they are handed over. Everyone else's come
//! from the store's `shard_owners` table, read every `cluster.refresh_ms` and whenever a
//! request finds the directory stale (a `NotOwner` answer, an unreachable owner).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use super::link::Peer;
use crate::store::{ShardOwner, Store};

/// Where a message for a shard should go now.
pub enum Placement {
    /// This node serves the shard.
    Local,
    /// Another node does, as far as this node knows.
    Remote(Arc<Peer>),
    /// Nobody known (moving, or not claimed yet): wait and ask again.
    Unknown,
}

/// This node's part in a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// Not ours.
    No,
    /// Ours, serving under this epoch.
    Serving(i64),
    /// Being taken over or handed off: hold messages back.
    Moving,
}

#[derive(Clone)]
struct Slot {
    local: Local,
    /// The owner as the store last said, with its link.
    owner: Option<(ShardOwner, Arc<Peer>)>,
}

/// Settings the directory and the peer links run with.
#[derive(Debug, Clone)]
pub struct DirectorySettings {
    /// This node's id.
    pub node_id: String,
    /// This node's advertised base URL.
    pub advertise: String,
    /// Token this node presents to peers.
    pub token: String,
    /// How long a message waits for its shard to be served somewhere.
    pub wait: Duration,
    /// Longest wait for a peer connection.
    pub connect_timeout: Duration,
    /// Longest wait for a forwarded message's reply.
    pub call_timeout: Duration,
    /// How often `shard_owners` is reread.
    pub refresh: Duration,
}

/// Shard → serving node, for one node of a cluster.
pub struct Directory {
    settings: DirectorySettings,
    slots: RwLock<Vec<Slot>>,
    /// Peers by node id (a peer keeps its link while its address stays the same).
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    /// Asks the refresher to reread now.
    wake: Notify,
    /// The node's main runtime (link tasks and retries run there, not on shard threads).
    rt: tokio::runtime::Handle,
}

impl Directory {
    /// A directory for `shards` shards, none of them known yet.
    pub fn new(shards: u32, settings: DirectorySettings, rt: tokio::runtime::Handle) -> Self {
        Directory {
            settings,
            slots: RwLock::new(vec![
                Slot {
                    local: Local::No,
                    owner: None
                };
                shards as usize
            ]),
            peers: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            rt,
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    /// This node's advertised address.
    pub fn advertise(&self) -> &str {
        &self.settings.advertise
    }

    /// How long a message may wait for its shard.
    pub fn wait(&self) -> Duration {
        self.settings.wait
    }

    /// Where a message for `shard` goes now.
    pub fn placement(&self, shard: u32) -> Placement {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = slots.get(shard as usize) else {
            return Placement::Unknown;
        };
        match slot.local {
            Local::Serving(_) => Placement::Local,
            Local::Moving => Placement::Unknown,
            Local::No => match &slot.owner {
                Some((o, peer)) if o.node_id != self.settings.node_id => {
                    Placement::Remote(peer.clone())
                }
                _ => Placement::Unknown,
            },
        }
    }

    /// Sets this node's part in `shard`.
    pub fn set_local(&self, shard: u32, local: Local) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get_mut(shard as usize) {
            s.local = local;
        }
    }

    /// This node's part in `shard`.
    pub fn local(&self, shard: u32) -> Local {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots.get(shard as usize).map_or(Local::No, |s| s.local)
    }

    /// Shards this node serves, with their epochs.
    pub fn serving(&self) -> Vec<(u32, i64)> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.local {
                Local::Serving(e) => Some((i as u32, e)),
                _ => None,
            })
            .collect()
    }

    /// Whether some node is known to own every shard.
    pub fn complete(&self) -> bool {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .all(|s| matches!(s.local, Local::Serving(_)) || s.owner.is_some())
    }

    /// The owners as last read from the store (`None` for a shard nobody claimed yet).
    pub fn owners(&self) -> Vec<Option<ShardOwner>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .map(|s| s.owner.as_ref().map(|(o, _)| o.clone()))
            .collect()
    }

    /// Asks for the owners to be reread soon (a request found the directory stale).
    pub fn stale(&self) {
        self.wake.notify_one();
    }

    /// Runs `fut` on the node's main runtime.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(fut);
    }

    /// Installs the owners read from the store.
    pub fn install(&self, owners: Vec<ShardOwner>) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        for o in owners {
            let Some(slot) = slots.get_mut(o.shard as usize) else {
                continue;
            };
            let peer = match peers.get(&o.node_id) {
                Some(p) if p.addr == o.addr => p.clone(),
                _ => {
                    let p = Arc::new(Peer::new(
                        o.node_id.clone(),
                        o.addr.clone(),
                        self.settings.token.clone(),
                        self.settings.connect_timeout,
                        self.settings.call_timeout,
                        self.rt.clone(),
                    ));
                    peers.insert(o.node_id.clone(), p.clone());
                    p
                }
            };
            slot.owner = Some((o, peer));
        }
    }

    /// Rereads `shard_owners` every `refresh` and whenever asked, until the store closes.
    pub async fn refresh_loop(self: Arc<Self>, store: Store) {
        loop {
            match store.shard_owners().await {
                Ok(owners) => self.install(owners),
                Err(crate::store::StoreError::Closed) => return,
                Err(e) => tracing::warn!(error = %e, "could not read shard owners"),
            }
            let _ = tokio::time::timeout(self.settings.refresh, self.wake.notified()).await;
            // Coalesce a burst of "stale" reports into one read.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
