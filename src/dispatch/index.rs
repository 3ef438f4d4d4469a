//! The spatial index candidate searches walk: an R-tree (`rstar`) of points projected onto the
//! sphere in Earth-centred metres, as the live dispatcher keeps it. Chord distance between two
//! such points ranks riders exactly like distance along the surface, anywhere on Earth.

use rstar::primitives::GeomWithData;
use rstar::RTree;

use super::eta::EARTH_RADIUS_M;
use super::settings::DispatchSettings;
use super::solver::{assign, Edge};
use super::types::{AvailableRider, WaitingOrder};
use crate::domain::Location;

/// Earth-centred coordinates, metres.
pub(crate) type Xyz = [f64; 3];
type Point = GeomWithData<Xyz, usize>;

/// The point on the sphere for a location.
pub(crate) fn project(l: Location) -> Xyz {
    let (lat, lng) = (l.lat.to_radians(), l.lng.to_radians());
    [
        EARTH_RADIUS_M * lat.cos() * lng.cos(),
        EARTH_RADIUS_M * lat.cos() * lng.sin(),
        EARTH_RADIUS_M * lat.sin(),
    ]
}

/// Straight-line (chord) distance between two projected points, metres.
pub(crate) fn chord_m(a: Xyz, b: Xyz) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Riders by position; a rider may have several points (`stacked` indexes the stops of its
/// route too), and each point carries the rider's index in the caller's slice.
pub(crate) struct RiderIndex {
    /// The points.
    tree: RTree<Point>,
}

impl RiderIndex {
    /// An index of `(location, rider index)` points.
    pub(crate) fn new(points: impl IntoIterator<Item = (Location, usize)>) -> Self {
        let points = points
            .into_iter()
            .map(|(l, i)| Point::new(project(l), i))
            .collect();
        RiderIndex {
            tree: RTree::bulk_load(points),
        }
    }

    /// Takes one rider point out (greedy removes a rider once it has an offer).
    pub(crate) fn remove(&mut self, at: Location, rider: usize) {
        self.tree.remove(&Point::new(project(at), rider));
    }

    /// Distinct riders nearest `at` first, within `radius_m`, accepted by `keep`, at most
    /// `limit`: (rider index, chord distance to its nearest point).
    pub(crate) fn nearest(
        &self,
        at: Location,
        radius_m: f64,
        limit: usize,
        mut keep: impl FnMut(usize) -> bool,
    ) -> Vec<(usize, f64)> {
        let origin = project(at);
        let mut out: Vec<(usize, f64)> = Vec::with_capacity(limit.min(64));
        for p in self.tree.nearest_neighbor_iter(&origin) {
            if out.len() >= limit {
                break;
            }
            let d = chord_m(*p.geom(), origin);
            if d > radius_m {
                break;
            }
            let r = p.data;
            if out.iter().any(|(seen, _)| *seen == r) || !keep(r) {
                continue;
            }
            out.push((r, d));
        }
        out
    }
}

/// Doubling steps of the candidate escalation (each multiplies an order's candidates by 4).
const ESCALATIONS: usize = 3;

/// The exact matching of `orders` (`None` = skip) to `riders` over candidate pairs that
/// `price` accepts: `price(order, rider)` gives the pair's cost and whatever the caller wants
/// back for it (`None`: the pair is not allowed). Returns (order, rider, payload), by order.
///
/// Candidates for an order are, from `primary` and from `secondary` (if any), its `k_nearest`
/// nearest riders within the radius who have not declined it, plus one more per other waiting
/// order whose pickup lies within the k-th candidate's distance (up to `max_candidates`):
/// orders crowding one merchant would otherwise all see the same k riders. After solving, an
/// order left unmatched that had at least one allowed pair and whose list was cut short
/// gets four times as many candidates (up to three times; at most `16 * max_candidates`
/// from `primary`, `2 * max_candidates` from `secondary`) and the round is solved again, so
/// crowds cannot strand orders while free riders wait a little farther out. (`stacked` passes
/// idle riders as `primary` and riders with a route as `secondary`: a loaded rider far out
/// rarely passes the detour bound, and pricing hundreds of them made overloaded rounds take up
/// to 0.66 s.) The result is the exact optimum (most
/// orders, then least cost) over the final candidate pairs.
pub(crate) fn match_orders<T>(
    primary: &RiderIndex,
    secondary: Option<&RiderIndex>,
    orders: &[Option<&WaitingOrder>],
    riders: &[AvailableRider],
    settings: &DispatchSettings,
    mut price: impl FnMut(usize, usize) -> Option<(i64, T)>,
) -> Vec<(usize, usize, T)> {
    let pickups: RTree<Point> = RTree::bulk_load(
        orders
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.map(|o| Point::new(project(o.pickup), i)))
            .collect(),
    );
    let k = settings.k_nearest;
    let radius = settings.max_radius_m;
    // The nearest `limit` riders of `primary` and `other` of `secondary`, nearest first, and
    // whether either had more (and may still grow).
    let search = |o: &WaitingOrder, limit: usize, other: usize| {
        let keep = |r: usize| !o.declined.contains(&riders[r].id);
        let mut all = primary.nearest(o.pickup, radius, limit, keep);
        let mut cut = all.len() == limit;
        if let Some(index) = secondary {
            let more = index.nearest(o.pickup, radius, other, keep);
            cut |= more.len() == other && other < 2 * settings.max_candidates;
            all.extend(more);
            all.sort_by(|a, b| a.1.total_cmp(&b.1));
        }
        (all, cut)
    };
    // Per order: how many candidates it may have (per index), whether its list was cut short,
    // and the priced candidates.
    let mut limits = vec![0usize; orders.len()];
    let mut cut = vec![false; orders.len()];
    let mut priced: Vec<Vec<(usize, i64, Option<T>)>> = Vec::with_capacity(orders.len());
    for (i, o) in orders.iter().enumerate() {
        let mut list = Vec::new();
        if let Some(o) = o {
            let (mut near, mut more) = search(o, k, k);
            limits[i] = k;
            if near.len() >= k {
                let reach = near[k - 1].1;
                let crowd = pickups
                    .locate_within_distance(project(o.pickup), reach * reach)
                    .take(settings.max_candidates)
                    .count()
                    .saturating_sub(1);
                limits[i] = (k + crowd).min(settings.max_candidates);
                if limits[i] > k {
                    (near, more) = search(o, limits[i], limits[i]);
                }
            }
            cut[i] = more;
            for (r, _) in near {
                if let Some((cost, t)) = price(i, r) {
                    list.push((r, cost, Some(t)));
                }
            }
        }
        priced.push(list);
    }
    let mut step = 0;
    let pairs = loop {
        let edges: Vec<Edge> = priced
            .iter()
            .enumerate()
            .flat_map(|(i, list)| {
                list.iter().map(move |&(r, cost, _)| Edge {
                    row: i,
                    col: r,
                    cost,
                })
            })
            .collect();
        let pairs = assign(orders.len(), riders.len(), &edges, settings.solver);
        if step == ESCALATIONS {
            break pairs;
        }
        step += 1;
        let mut matched = vec![false; orders.len()];
        for &(i, _) in &pairs {
            matched[i] = true;
        }
        let mut grew = false;
        for (i, o) in orders.iter().enumerate() {
            let Some(o) = o else { continue };
            // Only orders that lost a contest: with no allowed pair at all, more of the same
            // kind of rider rarely helps and costs the most.
            if matched[i] || !cut[i] || priced[i].is_empty() {
                continue;
            }
            limits[i] = (limits[i] * 4).min(settings.max_candidates * 16);
            let (near, more) = search(o, limits[i], limits[i].min(2 * settings.max_candidates));
            cut[i] = more;
            for (r, _) in near {
                if priced[i].iter().any(|(seen, _, _)| *seen == r) {
                    continue;
                }
                if let Some((cost, t)) = price(i, r) {
                    priced[i].push((r, cost, Some(t)));
                    grew = true;
                }
            }
        }
        if !grew {
            break pairs;
        }
    };
    pairs
        .into_iter()
        .filter_map(|(i, r)| {
            let slot = priced[i].iter_mut().find(|(seen, _, _)| *seen == r)?;
            Some((i, r, slot.2.take()?))
        })
        .collect()
}
