//! The timing of a rider's route: leg by leg from the rider's position, waiting at a pickup
//! until the food is ready, `service_ms` at every stop. A drop-off's arrival is the delivery
//! time checked against the order's promise.

use serde::{Deserialize, Serialize};

use super::eta::Eta;
use super::types::{Stop, StopKind};
use crate::domain::Location;

/// When the rider reaches and leaves one stop, ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopTime {
    /// Arrival.
    pub arrive_ms: i64,
    /// Departure: after the food is ready (pickups) and the service time.
    pub depart_ms: i64,
}

/// A timed route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteTiming {
    /// One entry per stop, in route order.
    pub stops: Vec<StopTime>,
    /// Distance of all legs, metres.
    pub metres: f64,
    /// Time spent moving (no waits, no service), ms.
    pub travel_ms: i64,
    /// Departure from the last stop (`now` for an empty route), ms since the epoch.
    pub finish_ms: i64,
}

/// Times `stops` for a rider at `start` at `now_ms`.
pub fn time_route(
    eta: &dyn Eta,
    service_ms: i64,
    now_ms: i64,
    start: Location,
    stops: &[Stop],
) -> RouteTiming {
    let mut at = start;
    let mut t = now_ms;
    let mut metres = 0.0;
    let mut travel_ms = 0;
    let mut times = Vec::with_capacity(stops.len());
    for s in stops {
        let leg = eta.leg(at, s.location);
        metres += leg.metres;
        travel_ms += leg.ms;
        let arrive = t + leg.ms;
        let start_service = match s.kind {
            StopKind::Pickup => arrive.max(s.ready_at_ms),
            StopKind::Dropoff => arrive,
        };
        t = start_service + service_ms;
        times.push(StopTime {
            arrive_ms: arrive,
            depart_ms: t,
        });
        at = s.location;
    }
    RouteTiming {
        stops: times,
        metres,
        travel_ms,
        finish_ms: t,
    }
}

/// Total lateness of the drop-offs (arrival past the promise), ms.
pub fn lateness_ms(stops: &[Stop], timing: &RouteTiming) -> i64 {
    stops
        .iter()
        .zip(&timing.stops)
        .filter(|(s, _)| s.kind == StopKind::Dropoff)
        .map(|(s, t)| (t.arrive_ms - s.promised_at_ms).max(0))
        .sum()
}
