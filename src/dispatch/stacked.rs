//! `stacked`: a rider who is carrying orders or heading to a merchant may take one more order
//! per round, up to `max_stack` orders on the route (Meituan-style order pooling).
//!
//! For each waiting order, the candidates are the nearest idle riders, and the nearest riders
//! with a route by their position *or any stop still on it* (a rider riding to the same
//! merchant is a good candidate even when still far away), `k_nearest` of each kind. For each candidate, the cheapest insertion of the order's pickup and
//! drop-off into the route is searched exhaustively (pickup before drop-off, existing stops
//! kept in order). An insertion is allowed only if:
//! - for a non-empty route, the route grows by at most `max_detour_m`, and the new order's
//!   drop-off meets its promise with `promise_margin_ms` to spare;
//! - no order already on the route is delivered later than its promise less that margin,
//!   unless it is not delayed at all (it may already be late; then it stays as late).
//!
//! The margin absorbs what the ETA does not know (a slower rider, a wait at the counter).
//!
//! An insertion costs the travel time it adds plus the service time of its two stops, plus ten
//! times the lateness it adds over all drop-offs. For an idle rider that is the ride to the
//! pickup plus the delivery trip, so the choice between a fresh rider and a stacked one is
//! made on one scale. The order's age term (`age_weight`) is added as in `batch`, and the same
//! exact solver then picks one order per rider.

use std::sync::Arc;

use super::eta::{haversine_m, Eta, Leg};
use super::index::{match_orders, RiderIndex};
use super::policy::Policy;
use super::route::{lateness_ms, time_route, RouteTiming};
use super::settings::{DispatchSettings, PolicyKind};
use super::types::{on_globe, stops_of, AvailableRider, Offer, Stop, StopKind, WaitingOrder};

/// Weight of a millisecond of added lateness in an insertion's cost.
pub const LATENESS_WEIGHT: i64 = 10;

/// The best way to add one order to one rider's route.
#[derive(Debug, Clone, PartialEq)]
pub struct Insertion {
    /// The whole new route.
    pub route: Vec<Stop>,
    /// Its cost (see the module doc).
    pub cost: i64,
    /// Metres the route grew by.
    pub added_m: f64,
    /// Predicted arrival at the new order's pickup.
    pub pickup_eta_ms: i64,
    /// Predicted arrival at the new order's drop-off.
    pub dropoff_eta_ms: i64,
}

/// The stacked policy.
#[derive(Debug)]
pub struct Stacked {
    /// Candidates, detour bound, stack size, solver.
    settings: DispatchSettings,
    /// Travel estimates.
    eta: Arc<dyn Eta>,
}

impl Stacked {
    /// A stacked policy with these settings (validated by [`super::build`]).
    pub fn new(settings: DispatchSettings, eta: Arc<dyn Eta>) -> Self {
        Stacked { settings, eta }
    }

    /// The cheapest allowed insertion of `order` into `rider`'s route at `now_ms`, if any.
    pub fn best_insertion(
        &self,
        now_ms: i64,
        order: &WaitingOrder,
        rider: &AvailableRider,
    ) -> Option<Insertion> {
        let before = self.before(now_ms, rider);
        self.insert(now_ms, order, rider, &before)
    }

    /// The rider's route as it stands: its timing and lateness.
    fn before(&self, now_ms: i64, rider: &AvailableRider) -> (RouteTiming, i64) {
        let timing = time_route(
            self.eta.as_ref(),
            self.settings.service_ms,
            now_ms,
            rider.position,
            &rider.route,
        );
        let late = lateness_ms(&rider.route, &timing);
        (timing, late)
    }

    /// [`Stacked::best_insertion`] given the route's current timing. Every position pair is
    /// tried; legs are estimated once each (nodes: 0 the rider, 1..=n the stops, n+1 the new
    /// pickup, n+2 the new drop-off).
    fn insert(
        &self,
        now_ms: i64,
        order: &WaitingOrder,
        rider: &AvailableRider,
        before: &(RouteTiming, i64),
    ) -> Option<Insertion> {
        let (before, old_late) = (&before.0, before.1);
        let (eta, service) = (self.eta.as_ref(), self.settings.service_ms);
        let old = &rider.route;
        let n = old.len();
        let [pickup, dropoff] = stops_of(order);
        let (np, nd) = (n + 1, n + 2);
        let location = |node: usize| match node {
            0 => rider.position,
            k if k <= n => old[k - 1].location,
            k if k == np => pickup.location,
            _ => dropoff.location,
        };
        let stop = |node: usize| match node {
            k if k == np => &pickup,
            k if k == nd => &dropoff,
            k => &old[k - 1],
        };
        let mut legs: Vec<Option<Leg>> = vec![None; (n + 3) * (n + 3)];
        let mut leg = |a: usize, b: usize| {
            *legs[a * (n + 3) + b].get_or_insert_with(|| eta.leg(location(a), location(b)))
        };
        let stacking = n > 0;
        let mut best: Option<(i64, usize, usize, f64, i64, i64)> = None;
        let mut arrive = vec![0i64; n + 3];
        for p in 0..=n {
            for d in p..=n {
                let seq = (1..=p)
                    .chain(std::iter::once(np))
                    .chain(p + 1..=d)
                    .chain(std::iter::once(nd))
                    .chain(d + 1..=n);
                let (mut at, mut t, mut metres, mut travel, mut late) = (0, now_ms, 0.0, 0, 0);
                for node in seq {
                    let l = leg(at, node);
                    metres += l.metres;
                    travel += l.ms;
                    let s = stop(node);
                    arrive[node] = t + l.ms;
                    t = match s.kind {
                        StopKind::Pickup => arrive[node].max(s.ready_at_ms),
                        StopKind::Dropoff => {
                            late += (arrive[node] - s.promised_at_ms).max(0);
                            arrive[node]
                        }
                    } + service;
                    at = node;
                }
                let added_m = metres - before.metres;
                if stacking && added_m > self.settings.max_detour_m {
                    continue;
                }
                let margin = self.settings.promise_margin_ms;
                if stacking && arrive[nd] > order.promised_at_ms - margin {
                    continue;
                }
                let breaks_promise = old.iter().enumerate().any(|(k, s)| {
                    let (was, now) = (before.stops[k].arrive_ms, arrive[k + 1]);
                    s.kind == StopKind::Dropoff && now > was && now > s.promised_at_ms - margin
                });
                if breaks_promise {
                    continue;
                }
                let added_late = (late - old_late).max(0);
                let cost = (travel - before.travel_ms + 2 * service)
                    .max(0)
                    .saturating_add(added_late.saturating_mul(LATENESS_WEIGHT));
                if best.is_none_or(|b| cost < b.0) {
                    best = Some((cost, p, d, added_m, arrive[np], arrive[nd]));
                }
            }
        }
        let (cost, p, d, added_m, pickup_eta_ms, dropoff_eta_ms) = best?;
        let mut route = Vec::with_capacity(n + 2);
        route.extend_from_slice(&old[..p]);
        route.push(pickup);
        route.extend_from_slice(&old[p..d]);
        route.push(dropoff);
        route.extend_from_slice(&old[d..]);
        Some(Insertion {
            route,
            cost,
            added_m,
            pickup_eta_ms,
            dropoff_eta_ms,
        })
    }
}

impl Policy for Stacked {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Stacked
    }

    fn plan(
        &mut self,
        now_ms: i64,
        orders: &[WaitingOrder],
        riders: &[AvailableRider],
    ) -> Vec<Offer> {
        let max_stack = self.settings.max_stack;
        let eligible = |r: &AvailableRider| {
            on_globe(r.position)
                && r.load() < max_stack
                && r.route.iter().all(|s| on_globe(s.location))
        };
        // Idle riders by position; riders with a route by position and by every stop.
        let idle = RiderIndex::new(
            riders
                .iter()
                .enumerate()
                .filter(|(_, r)| r.route.is_empty() && eligible(r))
                .map(|(i, r)| (r.position, i)),
        );
        let busy = RiderIndex::new(
            riders
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.route.is_empty() && eligible(r))
                .flat_map(|(i, r)| {
                    std::iter::once((r.position, i))
                        .chain(r.route.iter().map(move |s| (s.location, i)))
                }),
        );
        let valid: Vec<Option<&WaitingOrder>> = orders
            .iter()
            .map(|o| {
                (on_globe(o.pickup) && on_globe(o.dropoff) && o.promised_at_ms >= o.ready_at_ms)
                    .then_some(o)
            })
            .collect();
        let mut before: Vec<Option<(RouteTiming, i64)>> = vec![None; riders.len()];
        let pairs = match_orders(
            &idle,
            Some(&busy),
            &valid,
            riders,
            &self.settings,
            |i, r| {
                let b = before[r].get_or_insert_with(|| self.before(now_ms, &riders[r]));
                let mut ins = self.insert(now_ms, &orders[i], &riders[r], b)?;
                let age = self.settings.age_cost(now_ms, orders[i].waiting_since_ms);
                ins.cost = ins.cost.saturating_add(age);
                Some((ins.cost, ins))
            },
        );
        pairs
            .into_iter()
            .map(|(i, r, ins)| {
                let (o, rider) = (&orders[i], &riders[r]);
                Offer {
                    order_id: o.id.clone(),
                    rider_id: rider.id.clone(),
                    cost: ins.cost,
                    distance_m: haversine_m(rider.position, o.pickup),
                    pickup_eta_ms: ins.pickup_eta_ms,
                    dropoff_eta_ms: ins.dropoff_eta_ms,
                    route: ins.route,
                }
            })
            .collect()
    }
}
