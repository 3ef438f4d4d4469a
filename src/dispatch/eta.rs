//! Travel estimates. Policies ask an [`Eta`] for the time and distance of a leg; today that is
//! [`Haversine`] (great-circle distance over a constant speed). A routing engine (OSRM,
//! Valhalla) would implement the same trait, answering from a table it fetched before the round:
//! a policy never waits on I/O.

use serde::{Deserialize, Serialize};

use super::DispatchError;
use crate::domain::Location;

/// Mean Earth radius, metres (the one the dispatcher's R-tree projection uses).
pub const EARTH_RADIUS_M: f64 = 6_371_000.0;

/// One leg's estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Leg {
    /// Distance travelled, metres.
    pub metres: f64,
    /// Travel time, ms.
    pub ms: i64,
}

/// Travel time and distance between two points.
pub trait Eta: Send + Sync + std::fmt::Debug {
    /// The leg from `from` to `to`.
    fn leg(&self, from: Location, to: Location) -> Leg;
}

/// Great-circle distance between two points, metres.
pub fn haversine_m(a: Location, b: Location) -> f64 {
    let (la, lb) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lb - la;
    let dlng = (b.lng - a.lng).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la.cos() * lb.cos() * (dlng / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Great-circle distance over a constant speed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Haversine {
    /// Metres per second.
    speed_mps: f64,
}

impl Haversine {
    /// An estimator for riders moving at `speed_mps` along the great circle.
    pub fn new(speed_mps: f64) -> Result<Self, DispatchError> {
        if !(speed_mps.is_finite() && speed_mps > 0.0) {
            return Err(DispatchError::InvalidSetting(
                "speed_mps must be a positive number".into(),
            ));
        }
        Ok(Haversine { speed_mps })
    }

    /// The speed it assumes, m/s.
    pub fn speed_mps(&self) -> f64 {
        self.speed_mps
    }
}

impl Eta for Haversine {
    fn leg(&self, from: Location, to: Location) -> Leg {
        let metres = haversine_m(from, to);
        Leg {
            metres,
            ms: (metres / self.speed_mps * 1000.0).round() as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_degree_of_latitude_is_about_111_km() {
        let a = Location {
            lat: 31.0,
            lng: 121.0,
        };
        let b = Location {
            lat: 32.0,
            lng: 121.0,
        };
        let d = haversine_m(a, b);
        assert!((d - 111_195.0).abs() < 5.0, "{d}");
    }

    #[test]
    fn time_is_distance_over_speed() {
        let eta = Haversine::new(5.0).expect("valid speed");
        let a = Location {
            lat: 31.0,
            lng: 121.0,
        };
        let b = Location {
            lat: 31.01,
            lng: 121.0,
        };
        let leg = eta.leg(a, b);
        assert_eq!(leg.ms, (leg.metres / 5.0 * 1000.0).round() as i64);
        assert!(Haversine::new(0.0).is_err());
        assert!(Haversine::new(f64::NAN).is_err());
    }
}
