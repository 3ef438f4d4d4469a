//! `greedy`: today's dispatcher, as a pure function and kept as the baseline. Orders are served
//! oldest first (by `waiting_since_ms`, then input order); each goes to the nearest idle rider
//! within `max_radius_m` who has not declined it and has not been picked earlier in this call.
//! Riders with stops on their route are not idle and are left out.

use std::sync::Arc;

use super::eta::{haversine_m, Eta};
use super::index::RiderIndex;
use super::policy::Policy;
use super::route::time_route;
use super::settings::{DispatchSettings, PolicyKind};
use super::types::{on_globe, stops_of, AvailableRider, Offer, WaitingOrder};

/// The greedy policy.
#[derive(Debug)]
pub struct Greedy {
    /// Radius, service time.
    settings: DispatchSettings,
    /// Travel estimates for the offer's ETAs.
    eta: Arc<dyn Eta>,
}

impl Greedy {
    /// A greedy policy with these settings (validated by [`super::build`]).
    pub fn new(settings: DispatchSettings, eta: Arc<dyn Eta>) -> Self {
        Greedy { settings, eta }
    }
}

impl Policy for Greedy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Greedy
    }

    fn plan(
        &mut self,
        now_ms: i64,
        orders: &[WaitingOrder],
        riders: &[AvailableRider],
    ) -> Vec<Offer> {
        let mut index = RiderIndex::new(
            riders
                .iter()
                .enumerate()
                .filter(|(_, r)| r.route.is_empty() && on_globe(r.position))
                .map(|(i, r)| (r.position, i)),
        );
        let mut queue: Vec<&WaitingOrder> = orders
            .iter()
            .filter(|o| on_globe(o.pickup) && on_globe(o.dropoff))
            .collect();
        queue.sort_by_key(|o| o.waiting_since_ms);
        let mut offers = Vec::new();
        for o in queue {
            let found = index.nearest(o.pickup, self.settings.max_radius_m, 1, |r| {
                !o.declined.contains(&riders[r].id)
            });
            let Some(&(r, _)) = found.first() else {
                continue;
            };
            let rider = &riders[r];
            index.remove(rider.position, r);
            let route = stops_of(o).to_vec();
            let timing = time_route(
                self.eta.as_ref(),
                self.settings.service_ms,
                now_ms,
                rider.position,
                &route,
            );
            let pickup_eta_ms = timing.stops[0].arrive_ms;
            offers.push(Offer {
                order_id: o.id.clone(),
                rider_id: rider.id.clone(),
                cost: pickup_eta_ms - now_ms,
                distance_m: haversine_m(rider.position, o.pickup),
                pickup_eta_ms,
                dropoff_eta_ms: timing.stops[1].arrive_ms,
                route,
            });
        }
        offers
    }
}
