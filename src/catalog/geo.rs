//! The spatial index behind `GET /v1/merchants?near=`: an R-tree of merchants on the sphere
//! (the dispatcher's projection), walked nearest first, and the opaque cursor of its pages.
//!
//! Pages are ordered by (distance, id), so a page boundary inside a run of equidistant
//! merchants is still exact: the cursor is the last answer's (chord distance, id), and the
//! next page starts strictly after it.

use std::collections::HashMap;
use std::sync::Arc;

use rstar::primitives::GeomWithData;
use rstar::RTree;
use serde::Serialize;
use utoipa::ToSchema;

use crate::dispatch::eta::{haversine_m, EARTH_RADIUS_M};
use crate::dispatch::index::{chord_m, project, Xyz};
use crate::domain::Location;
use crate::model::Merchant;

type Point = GeomWithData<Xyz, Arc<str>>;

/// One merchant as the browse route lists it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct NearbyMerchant {
    /// Merchant id (its menu: `GET /v1/merchants/{id}`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Where it is.
    pub location: Location,
    /// Whether it takes orders.
    pub open: bool,
    /// Great-circle distance from `near`, metres (rounded).
    pub distance_m: u64,
}

/// One page of `GET /v1/merchants?near=`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct NearbyPage {
    /// Nearest first (ties by id).
    pub merchants: Vec<NearbyMerchant>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Where a page starts: strictly after this (chord distance, id).
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    chord_m: f64,
    id: String,
}

impl Cursor {
    /// The wire form: the distance's bits in hex, then the id.
    pub fn encode(&self) -> String {
        format!("{:016x}{}", self.chord_m.to_bits(), self.id)
    }

    /// Reads a cursor this node (or another) gave out; `None` if it is not one.
    pub fn decode(s: &str) -> Option<Cursor> {
        let (bits, id) = (s.get(..16)?, s.get(16..)?);
        let chord_m = f64::from_bits(u64::from_str_radix(bits, 16).ok()?);
        (chord_m.is_finite() && chord_m >= 0.0 && !id.is_empty() && id.len() <= 64).then(|| {
            Cursor {
                chord_m,
                id: id.to_string(),
            }
        })
    }
}

/// Merchant profiles by id, and their points.
#[derive(Default)]
pub(super) struct Index {
    by_id: HashMap<Arc<str>, Merchant>,
    tree: RTree<Point>,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upsert {
    /// A merchant this index did not have.
    New,
    /// A newer version replaced the one held.
    Newer,
    /// The index already had this version or a later one.
    Stale,
}

impl Index {
    /// How many merchants.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Takes `m` unless a version at least as new is held.
    pub(super) fn upsert(&mut self, m: &Merchant) -> Upsert {
        if let Some((key, held)) = self.by_id.get_key_value(m.id.as_str()) {
            if held.version >= m.version {
                return Upsert::Stale;
            }
            if held.location != m.location {
                let key = key.clone();
                self.tree
                    .remove(&Point::new(project(held.location), key.clone()));
                self.tree.insert(Point::new(project(m.location), key));
            }
            if let Some(held) = self.by_id.get_mut(m.id.as_str()) {
                *held = m.clone();
            }
            return Upsert::Newer;
        }
        let key: Arc<str> = Arc::from(m.id.as_str());
        self.tree
            .insert(Point::new(project(m.location), key.clone()));
        self.by_id.insert(key, m.clone());
        Upsert::New
    }

    /// The open/closed state and name from an event that has no location (an event written
    /// before events carried one): only for a merchant already held.
    pub(super) fn update_profile(
        &mut self,
        id: &str,
        open: bool,
        name: &str,
        version: i64,
    ) -> Upsert {
        match self.by_id.get_mut(id) {
            Some(held) if held.version < version => {
                held.open = open;
                held.name = name.to_string();
                held.version = version;
                Upsert::Newer
            }
            _ => Upsert::Stale,
        }
    }

    /// Merchants within `radius_m` of `at`, nearest first, only open ones if `open_only`,
    /// at most `limit`, strictly after `after`.
    pub(super) fn near(
        &self,
        at: Location,
        radius_m: f64,
        open_only: bool,
        limit: usize,
        after: Option<&Cursor>,
    ) -> NearbyPage {
        let origin = project(at);
        // The chord of an arc of `radius_m`: chord distance ranks like surface distance.
        let max_chord = 2.0 * EARTH_RADIUS_M * (radius_m / (2.0 * EARTH_RADIUS_M)).min(1.0).sin();
        let limit = limit.max(1);
        let mut found: Vec<(f64, &Arc<str>)> = Vec::with_capacity(limit + 1);
        for p in self.tree.nearest_neighbor_iter(&origin) {
            let d = chord_m(*p.geom(), origin);
            if d > max_chord {
                break;
            }
            // Past `limit` answers, stop at the first point farther than all of them: ties
            // at the boundary distance are all in, so sorting by id below is exact.
            if found.len() > limit && found.last().is_some_and(|(last, _)| d > *last) {
                break;
            }
            if let Some(c) = after {
                if d < c.chord_m || (d == c.chord_m && p.data.as_ref() <= c.id.as_str()) {
                    continue;
                }
            }
            if open_only && !self.by_id.get(&p.data).is_some_and(|m| m.open) {
                continue;
            }
            found.push((d, &p.data));
        }
        found.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        let more = found.len() > limit;
        found.truncate(limit);
        let next_cursor = more.then(|| found.last()).flatten().map(|(d, id)| {
            Cursor {
                chord_m: *d,
                id: id.to_string(),
            }
            .encode()
        });
        let merchants = found
            .iter()
            .filter_map(|(_, id)| self.by_id.get(*id))
            .map(|m| NearbyMerchant {
                id: m.id.clone(),
                name: m.name.clone(),
                location: m.location,
                open: m.open,
                distance_m: haversine_m(at, m.location).round() as u64,
            })
            .collect();
        NearbyPage {
            merchants,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn merchant(i: usize, lat: f64, lng: f64, open: bool) -> Merchant {
        Merchant {
            id: format!("m{i:04}"),
            name: format!("M{i}"),
            location: Location { lat, lng },
            open,
            version: 1,
        }
    }

    /// Every page, followed by its cursor, against a brute force over all merchants.
    fn walk(idx: &Index, at: Location, radius: f64, open_only: bool, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor: Option<Cursor> = None;
        loop {
            let page = idx.near(at, radius, open_only, limit, cursor.as_ref());
            assert!(page.merchants.len() <= limit);
            out.extend(page.merchants.iter().map(|m| m.id.clone()));
            match page.next_cursor {
                Some(c) => cursor = Some(Cursor::decode(&c).expect("own cursor")),
                None => return out,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn pages_list_every_merchant_in_range_once_nearest_first(
            points in prop::collection::vec((0u8..6, 0u8..6, any::<bool>()), 0..60),
            limit in 1usize..7,
            radius in 100.0f64..3000.0,
            open_only in any::<bool>(),
        ) {
            // A coarse grid: many merchants share a distance, so ties cross page boundaries.
            let mut idx = Index::default();
            let ms: Vec<Merchant> = points
                .iter()
                .enumerate()
                .map(|(i, (a, b, open))| {
                    merchant(i, 31.2 + f64::from(*a) * 0.005, 121.4 + f64::from(*b) * 0.005, *open)
                })
                .collect();
            for m in &ms {
                idx.upsert(m);
            }
            let at = Location { lat: 31.21, lng: 121.41 };
            let got = walk(&idx, at, radius, open_only, limit);
            let origin = project(at);
            let max_chord = 2.0 * EARTH_RADIUS_M * (radius / (2.0 * EARTH_RADIUS_M)).sin();
            let mut want: Vec<(f64, String)> = ms
                .iter()
                .filter(|m| !open_only || m.open)
                .map(|m| (chord_m(project(m.location), origin), m.id.clone()))
                .filter(|(d, _)| *d <= max_chord)
                .collect();
            want.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            let want: Vec<String> = want.into_iter().map(|(_, id)| id).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let mut idx = Index::default();
        let mut m = merchant(1, 31.2, 121.4, true);
        m.version = 3;
        assert_eq!(idx.upsert(&m), Upsert::New);
        let mut old = m.clone();
        old.version = 2;
        old.open = false;
        assert_eq!(idx.upsert(&old), Upsert::Stale);
        let at = Location {
            lat: 31.2,
            lng: 121.4,
        };
        assert_eq!(idx.near(at, 100.0, true, 10, None).merchants.len(), 1);
        let mut moved = m.clone();
        moved.version = 4;
        moved.location = Location {
            lat: 31.3,
            lng: 121.4,
        };
        assert_eq!(idx.upsert(&moved), Upsert::Newer);
        assert!(idx.near(at, 100.0, false, 10, None).merchants.is_empty());
        assert_eq!(
            idx.near(moved.location, 100.0, false, 10, None)
                .merchants
                .len(),
            1
        );
    }

    #[test]
    fn cursors_that_are_not_ours_are_refused() {
        for bad in [
            "",
            "xyz",
            "0000000000000000",
            "zzzzzzzzzzzzzzzzabc",
            "fff8000000000000a",
        ] {
            assert!(Cursor::decode(bad).is_none(), "{bad}");
        }
        let c = Cursor {
            chord_m: 12.5,
            id: "abc".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
    }
}
