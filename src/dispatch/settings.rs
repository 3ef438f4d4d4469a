//! The dispatch settings a policy is built from: the `dispatch.*` configuration keys.
//! `config.rs` embeds this type in `DispatchConfig` (flattened, so the keys sit directly under
//! `dispatch:`); the simulator builds it from its flags.

use serde::{Deserialize, Serialize};

use super::DispatchError;

/// Which policy makes the offers (`dispatch.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Oldest order first, to the nearest idle rider not yet asked (today's behaviour).
    Greedy,
    /// Every `batch_ms`, one exact assignment of waiting orders to idle riders.
    Batch,
    /// Like `batch`, but riders with orders on their route may take one more per round.
    Stacked,
}

impl PolicyKind {
    /// The name used in config, on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Greedy => "greedy",
            PolicyKind::Batch => "batch",
            PolicyKind::Stacked => "stacked",
        }
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = DispatchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "greedy" => Ok(PolicyKind::Greedy),
            "batch" => Ok(PolicyKind::Batch),
            "stacked" => Ok(PolicyKind::Stacked),
            other => Err(DispatchError::InvalidSetting(format!(
                "policy {other:?} (greedy|batch|stacked)"
            ))),
        }
    }
}

/// What `batch` minimises for one (order, rider) pair (`dispatch.cost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CostModel {
    /// The rider's travel time to the pickup, ms.
    PickupEta,
    /// How long the ready food waits for the rider (arrival after `ready_at_ms`), weighted
    /// ten times, plus the travel time so that among riders who are in time the nearest wins.
    ReadyLateness,
}

/// Which exact assignment solver `batch` and `stacked` use (`dispatch.solver`). Both return an
/// optimum; they differ in speed only (see BENCHMARKS.md, "Dispatch quality").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// Shortest augmenting paths (Dijkstra with potentials) over the sparse candidate graph.
    Sparse,
    /// `pathfinding::kuhn_munkres_min` on a dense matrix per connected component.
    KuhnMunkres,
}

/// Everything a policy needs to know; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchSettings {
    /// `dispatch.policy`: which policy runs.
    pub policy: PolicyKind,
    /// `dispatch.batch_ms`: how often the caller runs a round for `batch` and `stacked` (greedy
    /// runs on every event and every `batch_ms` as a retry). The policy itself never reads it.
    pub batch_ms: u64,
    /// `dispatch.max_radius_m`: riders farther than this from the pickup are never asked.
    pub max_radius_m: f64,
    /// `dispatch.k_nearest`: candidate riders per order in `batch` and `stacked`, before the
    /// crowding allowance below.
    pub k_nearest: usize,
    /// `dispatch.max_candidates`: cap on candidates per order. An order also gets one more
    /// candidate per other waiting order whose pickup lies within its k-th candidate's
    /// distance, so orders crowding one merchant do not all fight over the same k riders.
    pub max_candidates: usize,
    /// `dispatch.speed_mps`: rider speed over the great-circle distance, m/s, for ETAs.
    pub speed_mps: f64,
    /// `dispatch.service_ms`: time spent at each stop (handing over the food), ms.
    pub service_ms: i64,
    /// `dispatch.cost`: what `batch` minimises.
    pub cost: CostModel,
    /// `dispatch.solver`: the assignment solver for `batch` and `stacked`.
    pub solver: Solver,
    /// `dispatch.max_detour_m`: `stacked` only adds an order to a non-empty route when the
    /// route grows by at most this many metres.
    pub max_detour_m: f64,
    /// `dispatch.max_stack`: most orders on one rider's route under `stacked`.
    pub max_stack: usize,
    /// `dispatch.promise_margin_ms`: `stacked` only stacks when every promise on the route is
    /// kept by the ETA with this much to spare, ms.
    pub promise_margin_ms: i64,
    /// `dispatch.age_weight`: in `batch` and `stacked`, every ms an order has waited (up to
    /// [`AGE_CAP_MS`]) lowers the cost of all its pairs by this much. It never changes which
    /// rider is best for an order, only which orders win when riders are short, so an order far
    /// from everyone cannot lose every round to newer, nearer ones until it is cancelled.
    /// 0 turns it off.
    pub age_weight: f64,
}

/// Waiting longer than this earns no more priority (`age_weight`), ms.
pub const AGE_CAP_MS: i64 = 3_600_000;

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            policy: PolicyKind::Greedy,
            batch_ms: 2_000,
            max_radius_m: 10_000.0,
            k_nearest: 8,
            max_candidates: 48,
            speed_mps: 4.5,
            service_ms: 60_000,
            cost: CostModel::PickupEta,
            solver: Solver::Sparse,
            max_detour_m: 2_500.0,
            max_stack: 3,
            promise_margin_ms: 300_000,
            age_weight: 1.0,
        }
    }
}

impl DispatchSettings {
    /// What an order that has waited since `waiting_since_ms` adds to each of its pairs' cost
    /// at `now_ms`: `age_weight * (AGE_CAP_MS - min(wait, AGE_CAP_MS))`, so older is cheaper.
    pub fn age_cost(&self, now_ms: i64, waiting_since_ms: i64) -> i64 {
        let wait = (now_ms - waiting_since_ms).clamp(0, AGE_CAP_MS);
        (self.age_weight * (AGE_CAP_MS - wait) as f64).round() as i64
    }

    /// Checks every setting is in range.
    pub fn validate(&self) -> Result<(), DispatchError> {
        let bad = |what: &str| Err(DispatchError::InvalidSetting(what.to_string()));
        if !(self.speed_mps.is_finite() && self.speed_mps > 0.0) {
            return bad("speed_mps must be a positive number");
        }
        if !(self.max_radius_m.is_finite() && self.max_radius_m > 0.0) {
            return bad("max_radius_m must be a positive number");
        }
        if !(self.max_detour_m.is_finite() && self.max_detour_m >= 0.0) {
            return bad("max_detour_m must be a number >= 0");
        }
        if self.k_nearest == 0 {
            return bad("k_nearest must be at least 1");
        }
        if self.max_candidates < self.k_nearest {
            return bad("max_candidates must be at least k_nearest");
        }
        if self.max_stack == 0 {
            return bad("max_stack must be at least 1");
        }
        if self.service_ms < 0 || self.promise_margin_ms < 0 {
            return bad("service_ms and promise_margin_ms must be >= 0");
        }
        if !(self.age_weight.is_finite() && (0.0..=100.0).contains(&self.age_weight)) {
            return bad("age_weight must be in [0, 100]");
        }
        if self.batch_ms == 0 {
            return bad("batch_ms must be at least 1");
        }
        Ok(())
    }
}
