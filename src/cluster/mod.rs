//! Where an entity lives: the partitioner (Kafka's murmur2, so a shard can later be a Kafka
//! partition) and the `Router`, the one interface every message goes through. Today every shard is
//! local; a later router owns shards through Kafka consumer groups behind the same interface.

mod partition;
mod router;

pub use partition::{murmur2, shard_of};
pub use router::{Routed, Router};
