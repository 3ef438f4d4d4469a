//! What a simulation measured: the JSON report and its human table. Every field but
//! [`Report::compute`] follows from the seed and the settings alone.

use serde::Serialize;

use super::SimParams;

/// p50, p90 and mean of a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    /// How many values.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Mean.
    pub mean: f64,
}

impl Spread {
    /// The spread of `values` (nearest-rank percentiles); zeros when empty.
    pub fn of(values: &[f64]) -> Spread {
        if values.is_empty() {
            return Spread::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Spread {
            count: v.len(),
            p50: rank(0.5),
            p90: rank(0.9),
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// Order outcomes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcomes {
    /// Orders placed.
    pub placed: usize,
    /// Delivered before the simulation ended.
    pub delivered: usize,
    /// Never assigned: cancelled after waiting `cancel_after` for a rider, or still waiting at
    /// the end.
    pub unassigned: usize,
    /// Assigned but not delivered when the simulation ended (drain limit reached).
    pub in_flight_at_end: usize,
    /// Delivered after the promised time.
    pub late: usize,
    /// `late / delivered`.
    pub late_share: f64,
}

/// Offers made.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Offers {
    /// Offers made.
    pub made: usize,
    /// Declined by the rider.
    pub declined: usize,
    /// Accepted.
    pub accepted: usize,
    /// Accepted by a rider who had other orders on the route (stacked).
    pub stacked: usize,
    /// Offers the simulator refused because they broke the policy contract (an order or rider
    /// offered twice, a rider who had declined the order, an unknown id); should be 0.
    pub contract_violations: usize,
}

/// Rider productivity.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Productivity {
    /// Delivered orders per rider-hour, every rider online for the `hours` of demand.
    pub orders_per_rider_hour: f64,
    /// Delivered orders per hour riders spent with a non-empty route.
    pub orders_per_busy_rider_hour: f64,
    /// Kilometres ridden per delivered order.
    pub km_per_order: f64,
    /// Share of rider time with a non-empty route over the demand hours.
    pub utilisation: f64,
}

/// The busiest hour of demand.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Peak {
    /// Simulated hour of day it starts at.
    pub start_hour: f64,
    /// Orders placed in it.
    pub placed: usize,
    /// Orders delivered in it (whenever placed).
    pub delivered: usize,
    /// `delivered / riders`.
    pub orders_per_rider_hour: f64,
    /// Delivered in it per busy rider-hour in it.
    pub orders_per_busy_rider_hour: f64,
    /// Of the orders placed in it and delivered, the share delivered late.
    pub late_share: f64,
}

/// The policy's compute time per round, wall clock: the one part of the report that varies
/// from run to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Compute {
    /// Calls to `plan` with at least one waiting order.
    pub rounds: usize,
    /// Microseconds per round.
    pub micros: Spread,
    /// Slowest round, microseconds.
    pub max_micros: f64,
    /// Most waiting orders in one round.
    pub max_orders: usize,
    /// Most available riders in one round.
    pub max_riders: usize,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// What ran.
    pub params: SimParams,
    /// Order outcomes.
    pub orders: Outcomes,
    /// Placement to delivery, minutes, over delivered orders.
    pub click_to_door_min: Spread,
    /// Placement to the accepted offer, seconds, over assigned orders.
    pub time_to_assign_s: Spread,
    /// Great-circle distance from the rider to the pickup when offered, metres, over assigned
    /// orders.
    pub pickup_distance_m: Spread,
    /// Sum of those distances, km.
    pub pickup_distance_total_km: f64,
    /// Offers.
    pub offers: Offers,
    /// Riders' output.
    pub productivity: Productivity,
    /// The busiest hour.
    pub peak: Peak,
    /// Compute time of the policy (wall clock).
    pub compute: Compute,
}

impl Report {
    /// A human-readable summary.
    pub fn table(&self) -> String {
        let p = &self.params;
        let o = &self.orders;
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<34} {v}\n"));
        line(
            "policy",
            format!(
                "{} (riders {}, {} orders/h, {} h from {:02}:00, seed {})",
                p.policy.name(),
                p.riders,
                p.orders_per_hour,
                p.hours,
                p.start_hour,
                p.seed
            ),
        );
        line(
            "orders",
            format!(
                "placed {}, delivered {}, unassigned {}, in flight at end {}",
                o.placed, o.delivered, o.unassigned, o.in_flight_at_end
            ),
        );
        line(
            "late against promise",
            format!("{} ({:.1}%)", o.late, o.late_share * 100.0),
        );
        let sp = |x: &Spread, unit: &str| {
            format!(
                "p50 {:.1} {unit}, p90 {:.1} {unit}, mean {:.1} {unit}",
                x.p50, x.p90, x.mean
            )
        };
        line("click-to-door", sp(&self.click_to_door_min, "min"));
        line("time to assign", sp(&self.time_to_assign_s, "s"));
        line("pickup distance", sp(&self.pickup_distance_m, "m"));
        line(
            "pickup distance, total",
            format!("{:.1} km", self.pickup_distance_total_km),
        );
        let r = &self.productivity;
        line(
            "orders per rider-hour",
            format!(
                "{:.2} (per busy rider-hour {:.2}; utilisation {:.0}%)",
                r.orders_per_rider_hour,
                r.orders_per_busy_rider_hour,
                r.utilisation * 100.0
            ),
        );
        line("km per order", format!("{:.2}", r.km_per_order));
        let k = &self.peak;
        line(
            "peak hour",
            format!(
                "{:05.2}h: placed {}, delivered {}, {:.2} orders/rider-h ({:.2} per busy h), late {:.1}%",
                k.start_hour,
                k.placed,
                k.delivered,
                k.orders_per_rider_hour,
                k.orders_per_busy_rider_hour,
                k.late_share * 100.0
            ),
        );
        let f = &self.offers;
        line(
            "offers",
            format!(
                "made {}, declined {}, accepted {}, stacked {}",
                f.made, f.declined, f.accepted, f.stacked
            ),
        );
        let c = &self.compute;
        line(
            "compute per round",
            format!(
                "{} rounds: p50 {:.0} us, p90 {:.0} us, max {:.0} us (max {} orders x {} riders)",
                c.rounds, c.micros.p50, c.micros.p90, c.max_micros, c.max_orders, c.max_riders
            ),
        );
        s
    }
}
