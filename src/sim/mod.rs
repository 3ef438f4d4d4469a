//! `waimai simulate`: a seeded city simulator that runs a dispatch policy in simulated time and
//! measures what it does for customers and riders.
//!
//! The simulator drives the very [`crate::dispatch::Policy`] the live dispatcher would run. Its
//! clock is a queue of events (order placed, dispatch round, offer answered, stop finished,
//! order cancelled); nothing sleeps, so hours of a city run in seconds. One seed feeds three
//! ChaCha streams: the city and its orders (the same demand whatever the fleet or the policy),
//! the fleet, and the riders' answers (drawn in event order). A seed gives the same report
//! every time, except the policy's measured compute time.
//!
//! # Layout
//! - [`SimulateArgs`] / [`SimParams`]: the command line and the parameters it resolves to.
//! - [`city`]: merchants in clusters, customers, riders, the demand curve.
//! - `engine`: the event loop: orders, offers, riders moving along their routes.
//! - [`report`]: the figures, as JSON and as a table.
//!
//! # The model, briefly
//! Orders arrive as a Poisson process whose rate follows a lunch and a dinner peak, scaled so
//! the mean over the simulated hours is `--orders-per-hour`. Each order is accepted at once and
//! enters dispatch; its food is ready after a uniform 5–20 minutes of preparation; its promise
//! is ready time + `promise_slack_min` + the direct ride at the nominal speed. Riders answer an
//! offer after 2–10 s and decline with probability `--decline-prob`; a decliner is never asked
//! again for that order. Riders ride straight lines at the nominal speed times a personal factor
//! (±15%, unknown to the policy), wait at the merchant until the food is ready, and spend
//! `service_ms` at each stop. An order nobody takes within `cancel_after_min` is cancelled.
//! After the demand hours, no new orders arrive and the city drains for up to `drain_hours`.

pub mod city;
mod engine;
pub mod report;

use std::path::PathBuf;

use serde::Serialize;

use crate::dispatch::{CostModel, DispatchError, DispatchSettings, PolicyKind, Solver};

pub use city::CityConfig;
pub use report::Report;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A parameter is out of range; the message names it.
    #[error("invalid simulation parameter: {0}")]
    Invalid(String),
    /// The dispatch settings are invalid.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

/// Everything one simulation depends on (echoed in the report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimParams {
    /// The dispatch policy (also `dispatch.policy`).
    pub policy: PolicyKind,
    /// Riders online the whole time.
    pub riders: usize,
    /// Mean orders per hour over the simulated hours.
    pub orders_per_hour: f64,
    /// Hours of demand.
    pub hours: f64,
    /// Seed of the one random generator.
    pub seed: u64,
    /// Hour of day the simulation starts at (the demand curve peaks at 12:00 and 18:30).
    pub start_hour: f64,
    /// Chance a rider declines an offer.
    pub decline_prob: f64,
    /// Shortest and longest time a rider takes to answer an offer, ms.
    pub answer_ms: (i64, i64),
    /// Shortest and longest preparation time, minutes.
    pub prep_min: (f64, f64),
    /// Promise: ready time + this slack + the direct ride, minutes.
    pub promise_slack_min: f64,
    /// An order without a rider after this long is cancelled, minutes.
    pub cancel_after_min: f64,
    /// Longest the city may drain after the demand hours, hours.
    pub drain_hours: f64,
    /// Riders' speed factor is uniform in 1 ± this.
    pub speed_spread: f64,
    /// The dispatch settings the policy is built from.
    pub dispatch: DispatchSettings,
    /// The city.
    pub city: CityConfig,
}

impl SimParams {
    /// Defaults for a policy, a fleet, a demand and a seed.
    pub fn new(
        policy: PolicyKind,
        riders: usize,
        orders_per_hour: f64,
        hours: f64,
        seed: u64,
    ) -> Self {
        SimParams {
            policy,
            riders,
            orders_per_hour,
            hours,
            seed,
            start_hour: 10.0,
            decline_prob: 0.1,
            answer_ms: (2_000, 10_000),
            prep_min: (5.0, 20.0),
            promise_slack_min: 15.0,
            cancel_after_min: 30.0,
            drain_hours: 3.0,
            speed_spread: 0.15,
            dispatch: DispatchSettings {
                policy,
                ..DispatchSettings::default()
            },
            city: CityConfig::default(),
        }
    }

    /// Checks every parameter is in range.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |what: &str| Err(SimError::Invalid(what.to_string()));
        let pos = |x: f64| x.is_finite() && x > 0.0;
        if !pos(self.orders_per_hour) {
            return bad("orders-per-hour must be a positive number");
        }
        if !pos(self.hours) || self.hours > 24.0 {
            return bad("hours must be in (0, 24]");
        }
        if !(self.start_hour.is_finite() && (0.0..24.0).contains(&self.start_hour)) {
            return bad("start-hour must be in [0, 24)");
        }
        if !(0.0..=1.0).contains(&self.decline_prob) {
            return bad("decline-prob must be in [0, 1]");
        }
        if self.answer_ms.0 < 0 || self.answer_ms.1 < self.answer_ms.0 {
            return bad("answer_ms must be 0 <= min <= max");
        }
        if !(self.prep_min.0 >= 0.0 && self.prep_min.1 >= self.prep_min.0) {
            return bad("prep_min must be 0 <= min <= max");
        }
        if !(self.promise_slack_min >= 0.0 && pos(self.cancel_after_min)) {
            return bad("promise slack must be >= 0 and cancel-after > 0");
        }
        if !(self.drain_hours >= 0.0 && (0.0..1.0).contains(&self.speed_spread)) {
            return bad("drain hours must be >= 0 and speed spread in [0, 1)");
        }
        if self.city.merchants == 0 || !pos(self.city.size_m) || !pos(self.city.max_delivery_m) {
            return bad("the city needs merchants, a size and a delivery range");
        }
        let spread = self.city.cluster_sigma_m;
        if self.city.center.validate().is_err() || !(spread.is_finite() && spread >= 0.0) {
            return bad("the city's centre must be on the globe and its spread >= 0");
        }
        if self.dispatch.policy != self.policy {
            return bad("dispatch.policy must be the simulated policy");
        }
        self.dispatch.validate()?;
        Ok(())
    }
}

/// `waimai simulate [flags]`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Dispatch policy under test.
    #[arg(long, value_enum, default_value = "greedy")]
    pub policy: PolicyKind,
    /// Riders online for the whole simulation.
    #[arg(long, default_value_t = 400)]
    pub riders: usize,
    /// Mean orders per hour over the simulated hours (the rate follows a lunch peak at 12:00 and
    /// a dinner peak at 18:30 around that mean).
    #[arg(long, default_value_t = 1500.0)]
    pub orders_per_hour: f64,
    /// Hours of demand to simulate (then the city drains: no new orders, up to 3 more hours).
    #[arg(long, default_value_t = 4.0)]
    pub hours: f64,
    /// Seed of the random generator: the same seed and flags give the same report.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the report as JSON to this file as well.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Hour of day the simulation starts at, 0..24.
    #[arg(long, default_value_t = 10.0)]
    pub start_hour: f64,
    /// Dispatch round length for batch and stacked (greedy retries waiting orders this often
    /// and otherwise dispatches on every event), ms.
    #[arg(long, default_value_t = 2000)]
    pub batch_ms: u64,
    /// Candidate riders per order in batch and stacked (more where orders crowd).
    #[arg(long, default_value_t = 8)]
    pub k_nearest: usize,
    /// Most candidate riders per order.
    #[arg(long, default_value_t = 48)]
    pub max_candidates: usize,
    /// Riders farther than this from the pickup are never asked, metres.
    #[arg(long, default_value_t = 10_000.0)]
    pub max_radius_m: f64,
    /// Nominal rider speed over the great-circle distance, m/s (the policy's ETA speed).
    #[arg(long, default_value_t = 4.5)]
    pub speed_mps: f64,
    /// Stacked: most metres a route may grow by to take one more order.
    #[arg(long, default_value_t = 2500.0)]
    pub max_detour_m: f64,
    /// Stacked: stack only when every promise on the route holds by the ETA with this many
    /// minutes to spare.
    #[arg(long, default_value_t = 5.0)]
    pub promise_margin_min: f64,
    /// Stacked: most orders on one rider's route.
    #[arg(long, default_value_t = 3)]
    pub max_stack: usize,
    /// What batch minimises per pair.
    #[arg(long, value_enum, default_value = "pickup-eta")]
    pub cost: CostModel,
    /// Assignment solver for batch and stacked (both exact).
    #[arg(long, value_enum, default_value = "sparse")]
    pub solver: Solver,
    /// Batch and stacked: each ms an order has waited (up to an hour) makes its pairs this much
    /// cheaper, so far orders are not starved by nearer ones (0: pure distance).
    #[arg(long, default_value_t = 1.0)]
    pub age_weight: f64,
    /// Chance a rider declines an offer, 0..1.
    #[arg(long, default_value_t = 0.1)]
    pub decline_prob: f64,
    /// An order with no rider after this many minutes is cancelled (counted as unassigned).
    #[arg(long, default_value_t = 30.0)]
    pub cancel_after_min: f64,
    /// Promise = food ready + this many minutes + the direct ride.
    #[arg(long, default_value_t = 15.0)]
    pub promise_slack_min: f64,
    /// Merchants in the city (a tenth scattered, the rest in clusters).
    #[arg(long, default_value_t = 300)]
    pub merchants: usize,
    /// Merchant clusters.
    #[arg(long, default_value_t = 10)]
    pub clusters: usize,
    /// Side of the square city, km.
    #[arg(long, default_value_t = 10.0)]
    pub city_km: f64,
}

impl SimulateArgs {
    /// The parameters these flags stand for.
    pub fn params(&self) -> Result<SimParams, SimError> {
        let mut p = SimParams::new(
            self.policy,
            self.riders,
            self.orders_per_hour,
            self.hours,
            self.seed,
        );
        p.start_hour = self.start_hour;
        p.decline_prob = self.decline_prob;
        p.cancel_after_min = self.cancel_after_min;
        p.promise_slack_min = self.promise_slack_min;
        p.city.merchants = self.merchants;
        p.city.clusters = self.clusters;
        p.city.size_m = self.city_km * 1000.0;
        p.dispatch = DispatchSettings {
            policy: self.policy,
            batch_ms: self.batch_ms,
            max_radius_m: self.max_radius_m,
            k_nearest: self.k_nearest,
            max_candidates: self.max_candidates,
            speed_mps: self.speed_mps,
            cost: self.cost,
            solver: self.solver,
            max_detour_m: self.max_detour_m,
            max_stack: self.max_stack,
            age_weight: self.age_weight,
            promise_margin_ms: (self.promise_margin_min * 60_000.0) as i64,
            ..DispatchSettings::default()
        };
        p.validate()?;
        Ok(p)
    }
}

/// Runs one simulation.
pub fn run(params: &SimParams) -> Result<Report, SimError> {
    params.validate()?;
    engine::Engine::new(params)?.run()
}
