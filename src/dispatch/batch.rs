//! `batch`: one exact assignment per round. The caller collects the waiting orders and idle
//! riders every `batch_ms`; each order gets its nearest candidate riders from the R-tree (see
//! `index::candidates`: `k_nearest`, more where orders crowd, never a rider who declined it,
//! never one beyond `max_radius_m`); each pair is priced by the [`CostModel`]; the solver then
//! assigns as many orders as the candidate graph allows at the least total cost (DiDi's batch
//! matching, KDD 2017/2018). Only idle riders (empty route) take part.

use std::sync::Arc;

use super::eta::{haversine_m, Eta};
use super::index::{match_orders, RiderIndex};
use super::policy::Policy;
use super::route::time_route;
use super::settings::{CostModel, DispatchSettings, PolicyKind};
use super::types::{on_globe, stops_of, AvailableRider, Offer, WaitingOrder};

/// Weight of a millisecond of food waiting for the rider under [`CostModel::ReadyLateness`].
pub const LATENESS_WEIGHT: i64 = 10;

/// The batch policy.
#[derive(Debug)]
pub struct Batch {
    /// Candidates, cost model, solver.
    settings: DispatchSettings,
    /// Travel estimates for the costs.
    eta: Arc<dyn Eta>,
}

impl Batch {
    /// A batch policy with these settings (validated by [`super::build`]).
    pub fn new(settings: DispatchSettings, eta: Arc<dyn Eta>) -> Self {
        Batch { settings, eta }
    }

    /// The cost of sending `rider` to `order` now: the cost model's figure plus the order's
    /// age term ([`DispatchSettings::age_cost`]).
    pub fn cost(&self, now_ms: i64, order: &WaitingOrder, rider: &AvailableRider) -> i64 {
        let leg = self.eta.leg(rider.position, order.pickup);
        let pair = match self.settings.cost {
            CostModel::PickupEta => leg.ms,
            CostModel::ReadyLateness => {
                let late = (now_ms + leg.ms - order.ready_at_ms).max(0);
                late.saturating_mul(LATENESS_WEIGHT).saturating_add(leg.ms)
            }
        };
        pair.saturating_add(self.settings.age_cost(now_ms, order.waiting_since_ms))
    }
}

impl Policy for Batch {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Batch
    }

    fn plan(
        &mut self,
        now_ms: i64,
        orders: &[WaitingOrder],
        riders: &[AvailableRider],
    ) -> Vec<Offer> {
        let index = RiderIndex::new(
            riders
                .iter()
                .enumerate()
                .filter(|(_, r)| r.route.is_empty() && on_globe(r.position))
                .map(|(i, r)| (r.position, i)),
        );
        let valid: Vec<Option<&WaitingOrder>> = orders
            .iter()
            .map(|o| (on_globe(o.pickup) && on_globe(o.dropoff)).then_some(o))
            .collect();
        let pairs = match_orders(&index, None, &valid, riders, &self.settings, |i, r| {
            Some((self.cost(now_ms, &orders[i], &riders[r]), ()))
        });
        pairs
            .into_iter()
            .map(|(i, r, ())| {
                let (o, rider) = (&orders[i], &riders[r]);
                let route = stops_of(o).to_vec();
                let timing = time_route(
                    self.eta.as_ref(),
                    self.settings.service_ms,
                    now_ms,
                    rider.position,
                    &route,
                );
                Offer {
                    order_id: o.id.clone(),
                    rider_id: rider.id.clone(),
                    cost: self.cost(now_ms, o, rider),
                    distance_m: haversine_m(rider.position, o.pickup),
                    pickup_eta_ms: timing.stops[0].arrive_ms,
                    dropoff_eta_ms: timing.stops[1].arrive_ms,
                    route,
                }
            })
            .collect()
    }
}
