//! The synthetic city: merchants in clusters (food streets, malls) plus a few scattered ones,
//! customers spread over the city within delivery range of their merchant, riders starting
//! anywhere, and a day of demand with a lunch and a dinner peak. Everything is drawn from the
//! caller's seeded generator, so one seed is one city and one day.

use rand::Rng;
use serde::Serialize;

use crate::dispatch::haversine_m;
use crate::domain::Location;

/// Metres per degree of latitude.
const M_PER_DEG: f64 = 111_320.0;

/// The shape of the city.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CityConfig {
    /// The city's centre.
    pub center: Location,
    /// Side of the square the city covers, metres.
    pub size_m: f64,
    /// Merchants in all.
    pub merchants: usize,
    /// Merchant clusters; a tenth of the merchants are scattered instead.
    pub clusters: usize,
    /// Spread of a cluster (standard deviation), metres.
    pub cluster_sigma_m: f64,
    /// Farthest a customer orders from, metres.
    pub max_delivery_m: f64,
}

impl Default for CityConfig {
    fn default() -> Self {
        CityConfig {
            center: Location {
                lat: 31.2304,
                lng: 121.4737,
            },
            size_m: 10_000.0,
            merchants: 300,
            clusters: 10,
            cluster_sigma_m: 500.0,
            max_delivery_m: 5_000.0,
        }
    }
}

/// A generated city.
#[derive(Debug, Clone)]
pub struct City {
    /// Its shape.
    pub cfg: CityConfig,
    /// Merchant positions.
    pub merchants: Vec<Location>,
    /// Cumulative popularity of the merchants, ending at 1.
    popularity: Vec<f64>,
}

/// A standard normal draw (Box–Muller).
pub(crate) fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The point `east_m` east and `north_m` north of `at`.
pub(crate) fn offset(at: Location, east_m: f64, north_m: f64) -> Location {
    Location {
        lat: at.lat + north_m / M_PER_DEG,
        lng: at.lng + east_m / (M_PER_DEG * at.lat.to_radians().cos()),
    }
}

impl City {
    /// Draws a city.
    pub fn generate(cfg: CityConfig, rng: &mut impl Rng) -> City {
        let half = cfg.size_m / 2.0;
        let centres: Vec<Location> = (0..cfg.clusters.max(1))
            .map(|_| {
                offset(
                    cfg.center,
                    rng.gen_range(-0.7..0.7) * half,
                    rng.gen_range(-0.7..0.7) * half,
                )
            })
            .collect();
        let scattered = cfg.merchants / 10;
        let mut merchants = Vec::with_capacity(cfg.merchants);
        for i in 0..cfg.merchants {
            let p = if i < scattered {
                offset(
                    cfg.center,
                    rng.gen_range(-half..half),
                    rng.gen_range(-half..half),
                )
            } else {
                let c = centres[rng.gen_range(0..centres.len())];
                let (e, n) = (normal(rng), normal(rng));
                offset(c, e * cfg.cluster_sigma_m, n * cfg.cluster_sigma_m)
            };
            merchants.push(p);
        }
        // Popularity: log-normal, so a few merchants are busy and most are quiet.
        let weights: Vec<f64> = merchants
            .iter()
            .map(|_| (0.8 * normal(rng)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let popularity = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        City {
            cfg,
            merchants,
            popularity,
        }
    }

    /// A uniformly random point of the city.
    pub fn random_point(&self, rng: &mut impl Rng) -> Location {
        let half = self.cfg.size_m / 2.0;
        offset(
            self.cfg.center,
            rng.gen_range(-half..half),
            rng.gen_range(-half..half),
        )
    }

    /// A merchant, by popularity.
    pub fn pick_merchant(&self, rng: &mut impl Rng) -> usize {
        let x: f64 = rng.gen();
        self.popularity
            .partition_point(|&c| c < x)
            .min(self.merchants.len().saturating_sub(1))
    }

    /// A customer of `merchant`: anywhere in the city within delivery range (or, if the
    /// merchant sits where little of the city is in range, anywhere within range of it).
    pub fn customer_of(&self, merchant: Location, rng: &mut impl Rng) -> Location {
        for _ in 0..32 {
            let p = self.random_point(rng);
            if haversine_m(p, merchant) <= self.cfg.max_delivery_m {
                return p;
            }
        }
        let r = self.cfg.max_delivery_m * rng.gen::<f64>().sqrt();
        let a = rng.gen_range(0.0..std::f64::consts::TAU);
        offset(merchant, r * a.cos(), r * a.sin())
    }
}

/// Relative demand at `hour` of the day (0..24): a base, a lunch peak around 12:00 and a
/// dinner peak around 18:30.
pub fn demand_shape(hour: f64) -> f64 {
    let bump = |centre: f64, width: f64| (-((hour - centre) / width).powi(2) / 2.0).exp();
    0.35 + 1.0 * bump(12.0, 0.75) + 0.8 * bump(18.5, 1.0)
}
