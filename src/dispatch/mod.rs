//! Dispatch policies: which order to offer to which rider. Pure code: no actors, no I/O, no
//! clock (the caller passes `now_ms`), so the live dispatcher and the simulator run the very
//! same functions.
//!
//! # Layout
//! - [`types`]: the policy's input ([`WaitingOrder`], [`AvailableRider`] with its route of
//!   [`Stop`]s) and output ([`Offer`]); all serde types.
//! - [`settings`]: [`DispatchSettings`], the `dispatch.*` configuration, with
//!   [`PolicyKind`], [`CostModel`] and [`Solver`].
//! - [`policy`]: the [`Policy`] trait and [`build`], which turns settings into a policy.
//! - [`eta`]: the [`Eta`] trait (travel time and distance between two points) and its
//!   great-circle implementation, [`Haversine`]; a routing engine would plug in here.
//! - [`greedy`]: today's behaviour, kept as the baseline: oldest order first, nearest idle rider.
//! - [`batch`]: one assignment per round over every waiting order and its nearest riders,
//!   solved exactly.
//! - [`stacked`]: like `batch`, but a rider already carrying or fetching orders may take one
//!   more when the detour and every promise allow it (insertion into the rider's route).
//! - [`route`]: the timing of a route of stops (arrivals, waits for food, lateness).
//! - [`solver`]: the exact assignment: maximum number of matched orders, then minimum total
//!   cost; a sparse shortest-augmenting-path solver and the `pathfinding` Kuhn–Munkres.
//! - `index`: the R-tree of riders the candidate searches walk.
//!
//! # Contract of [`Policy::plan`]
//! Each order gets at most one offer and each rider at most one offer per call. A rider in an
//! order's `declined` set is never offered that order. Entries with a location off the globe
//! (NaN, out of range) are skipped. The caller tracks offers that are out: it passes only
//! orders without an open offer and only riders without one, and it makes the offers.

pub(crate) mod index;

pub mod batch;
pub mod eta;
pub mod greedy;
pub mod policy;
pub mod route;
pub mod settings;
pub mod solver;
pub mod stacked;
pub mod types;

pub use eta::{haversine_m, Eta, Haversine, Leg};
pub use policy::{build, Policy};
pub use settings::{CostModel, DispatchSettings, PolicyKind, Solver};
pub use types::{AvailableRider, Offer, Stop, StopKind, WaitingOrder};

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DispatchError {
    /// A setting is out of its range; the message names it.
    #[error("invalid dispatch setting: {0}")]
    InvalidSetting(String),
}
