//! waimai (外卖): an actor-based dispatch runtime for food delivery.
//!
//! # Layout
//! - [`actors`]: one actix actor per order, merchant and rider, the shard supervisors that own
//!   them, and the lock actor that grants stock leases. The order state machine is
//!   [`actors::order_machine`], a pure function.
//! - [`messages`]: every message an entity takes from outside itself, with its wire form.
//! - [`cluster`]: the [`cluster::Router`] every message goes through, and a node's part in a
//!   cluster: shard ownership from a Kafka consumer group, epochs that fence stale owners,
//!   peer links that forward requests to the owning node.
//! - [`bus`]: the events topic: the outbox relay, the feed into every node's websocket hub.
//! - [`store`]: sqlx over SQLite, PostgreSQL and MySQL; versioned writes, fenced stock writes, a
//!   transactional outbox, group commit.
//! - [`lock`]: lease backends (Redis and in-process) behind the lock actor.
//! - [`payments`]: the payment provider boundary (a simulated provider built in), signed
//!   callbacks, the reconciler that finishes what lost callbacks leave undone.
//! - [`gateway`]: the front door's defences: rate limits (per caller and client IP, GCRA in
//!   the node or on Redis), load shedding, the merchant browse cache; [`breaker`]: circuit
//!   breakers around Redis, the store and the payment provider.
//! - [`catalog`]: every node's merchant catalog for browsing: a bloom filter of merchant ids
//!   and a spatial index, kept current by changes made through the node, the events topic and
//!   a periodic merge with the store.
//! - [`api`]: the warp front door (REST, health, metrics) and its error mapping.
//! - [`server`]: starting and stopping a node; [`config`]: typed configuration; [`reload`]: the
//!   keys that change without a restart (SIGHUP, `POST /v1/admin/reload`).
//! - [`telemetry`]: logs and traces (W3C trace context, an optional OTLP exporter).
//! - [`dispatch`]: the dispatch policies (`greedy`, `batch`, `stacked`) as pure functions from
//!   waiting orders and available riders to offers; no actors, no I/O.
//! - [`sim`]: `waimai simulate`, a seeded city simulator that runs a policy in simulated time
//!   and measures it.
//! - [`loadgen`]: `waimai loadgen`, a load generator that drives a running node over HTTP and
//!   websockets and checks its invariants afterwards.
#![forbid(unsafe_code)]

pub mod actors;
pub mod api;
pub mod breaker;
pub mod bus;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod http1;
pub mod loadgen;
pub mod lock;
pub mod messages;
pub mod metrics;
pub mod model;
pub mod payments;
pub mod realtime;
pub mod reload;
pub mod server;
pub mod sim;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use error::Error;
pub use server::{serve, Node, StartError};
