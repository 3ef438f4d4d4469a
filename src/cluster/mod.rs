//! Where an entity lives, and how nodes share the work.
//!
//! # Layout
//! - `partition`: Kafka's murmur2 partitioner; a shard is a partition.
//! - `wire`: the routing table (which message goes to which kind of entity) and the wire form
//!   of routed messages.
//! - `router`: the [`Router`], the one interface every message to an entity goes through.
//! - `directory`: which node serves each shard, as this node knows it.
//! - `link`: kept-alive websockets between nodes that carry forwarded messages.
//! - `membership`: the Kafka consumer group whose assignment says which node owns which shard.
//! - `runtime`: a node's part in a cluster: claiming, serving and handing over shards.
//!
//! On a single node only `partition`, `wire` and `router` are in play: every shard is local.

mod directory;
pub mod link;
mod membership;
mod partition;
mod router;
mod runtime;
mod wire;

pub use directory::{Directory, DirectorySettings, Local, Placement};
pub use partition::{murmur2, shard_of};
pub use router::{Routed, Router};
pub use runtime::{Cluster, ClusterStatus};
pub use wire::Command;
