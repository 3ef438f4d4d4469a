//! The pure dispatch policies (`waimai::dispatch`) and the simulator that measures them.
//!
//! - `batch` reaches the optimum of its round (most orders assigned, then least total cost),
//!   checked against brute force on small instances, with both solvers.
//! - `greedy` matches an independent scan of today's rule: oldest order first, nearest idle
//!   rider not asked, within the radius.
//! - `stacked` never plans a route that breaks a promise (less its margin) it could keep, or
//!   exceeds the detour bound or the stack size.
//! - No policy offers an order to a rider who declined it, or offers anything twice.
//! - The simulator is deterministic for a seed.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use waimai::dispatch::{
    build, haversine_m, AvailableRider, CostModel, DispatchSettings, Eta, Haversine, Offer,
    PolicyKind, Solver, Stop, StopKind, WaitingOrder,
};
use waimai::domain::Location;
use waimai::sim::{run, SimParams};

const SPEED: f64 = 4.5;
const SERVICE_MS: i64 = 60_000;
const BASE: Location = Location {
    lat: 31.2304,
    lng: 121.4737,
};

/// A point `east_m` east and `north_m` north of the base.
fn at(east_m: f64, north_m: f64) -> Location {
    Location {
        lat: BASE.lat + north_m / 111_320.0,
        lng: BASE.lng + east_m / (111_320.0 * BASE.lat.to_radians().cos()),
    }
}

fn settings(policy: PolicyKind) -> DispatchSettings {
    DispatchSettings {
        policy,
        speed_mps: SPEED,
        service_ms: SERVICE_MS,
        ..DispatchSettings::default()
    }
}

fn plan(
    s: &DispatchSettings,
    now: i64,
    orders: &[WaitingOrder],
    riders: &[AvailableRider],
) -> Vec<Offer> {
    let eta = Arc::new(Haversine::new(s.speed_mps).expect("speed"));
    let mut policy = build(s, eta).expect("valid settings");
    policy.plan(now, orders, riders)
}

fn order(id: usize, pickup: Location, dropoff: Location, since: i64) -> WaitingOrder {
    WaitingOrder {
        id: format!("o{id}"),
        pickup,
        dropoff,
        waiting_since_ms: since,
        ready_at_ms: since + 10 * 60_000,
        promised_at_ms: since + 45 * 60_000,
        declined: BTreeSet::new(),
    }
}

fn idle(id: usize, position: Location) -> AvailableRider {
    AvailableRider {
        id: format!("r{id}"),
        position,
        route: Vec::new(),
    }
}

/// Positions within a 6 km square, in metres from the base.
fn spot() -> impl Strategy<Value = (f64, f64)> {
    (-3000.0..3000.0f64, -3000.0..3000.0f64)
}

/// A random small instance: orders (pickup, drop-off, waiting since, ready in, declined
/// riders) and idle riders.
fn instance(
    max_orders: usize,
    max_riders: usize,
) -> impl Strategy<Value = (Vec<WaitingOrder>, Vec<AvailableRider>)> {
    (1..=max_riders).prop_flat_map(move |m| {
        let orders = prop::collection::vec(
            (
                spot(),
                spot(),
                0..600_000i64,
                0..1_800_000i64,
                prop::collection::btree_set(0..m, 0..=m / 2),
            ),
            1..=max_orders,
        );
        let riders = prop::collection::vec(spot(), m..=m);
        (orders, riders).prop_map(|(os, rs)| {
            let orders = os
                .into_iter()
                .enumerate()
                .map(|(i, (p, d, since, ready_in, declined))| WaitingOrder {
                    declined: declined.into_iter().map(|r| format!("r{r}")).collect(),
                    ready_at_ms: since + ready_in,
                    ..order(i, at(p.0, p.1), at(d.0, d.1), since)
                })
                .collect();
            let riders = rs
                .into_iter()
                .enumerate()
                .map(|(i, p)| idle(i, at(p.0, p.1)))
                .collect();
            (orders, riders)
        })
    })
}

/// The pair cost `batch` is specified to minimise, computed here from its definition: the
/// cost model's figure plus `age_weight` per ms the order has still to wait to reach an hour.
fn pair_cost(
    cost: CostModel,
    age_weight: f64,
    now: i64,
    o: &WaitingOrder,
    r: &AvailableRider,
) -> i64 {
    let eta = Haversine::new(SPEED).expect("speed");
    let ms = eta.leg(r.position, o.pickup).ms;
    let pair = match cost {
        CostModel::PickupEta => ms,
        CostModel::ReadyLateness => (now + ms - o.ready_at_ms).max(0) * 10 + ms,
    };
    let wait = (now - o.waiting_since_ms).clamp(0, 3_600_000);
    pair + (age_weight * (3_600_000 - wait) as f64).round() as i64
}

/// (most orders assignable, least total cost among those), by trying every matching.
fn brute_force(
    costs: &[Vec<Option<i64>>],
    row: usize,
    used: &mut Vec<bool>,
    acc: (usize, i64),
    best: &mut (usize, i64),
) {
    if row == costs.len() {
        if acc.0 > best.0 || (acc.0 == best.0 && acc.1 < best.1) {
            *best = acc;
        }
        return;
    }
    brute_force(costs, row + 1, used, acc, best);
    for (col, c) in costs[row].iter().enumerate() {
        if let (Some(c), false) = (c, used[col]) {
            used[col] = true;
            brute_force(costs, row + 1, used, (acc.0 + 1, acc.1 + c), best);
            used[col] = false;
        }
    }
}

/// Every policy's basic promises: one offer per order and per rider, known ids, no declined
/// rider, no rider beyond the radius (greedy and batch: from the rider's position).
fn check_contract(
    s: &DispatchSettings,
    orders: &[WaitingOrder],
    riders: &[AvailableRider],
    offers: &[Offer],
) -> Result<(), TestCaseError> {
    let mut seen_orders = BTreeSet::new();
    let mut seen_riders = BTreeSet::new();
    for f in offers {
        prop_assert!(
            seen_orders.insert(&f.order_id),
            "order offered twice: {f:?}"
        );
        prop_assert!(
            seen_riders.insert(&f.rider_id),
            "rider offered twice: {f:?}"
        );
        let o = orders.iter().find(|o| o.id == f.order_id);
        let r = riders.iter().find(|r| r.id == f.rider_id);
        let (Some(o), Some(r)) = (o, r) else {
            return Err(TestCaseError::fail(format!("unknown ids in {f:?}")));
        };
        prop_assert!(
            !o.declined.contains(&r.id),
            "{} declined {} but was offered it",
            r.id,
            o.id
        );
        let reach = std::iter::once(r.position)
            .chain(r.route.iter().map(|s| s.location))
            .map(|l| haversine_m(l, o.pickup))
            .fold(f64::INFINITY, f64::min);
        prop_assert!(reach <= s.max_radius_m + 1.0, "{f:?} beyond the radius");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn batch_reaches_the_brute_force_optimum(
        (orders, riders) in instance(6, 6),
        radius in 1500.0..9000.0f64,
        lateness in any::<bool>(),
        now in 0..900_000i64,
        age_weight in prop_oneof![Just(0.0), 0.0..3.0f64],
    ) {
        let cost = if lateness { CostModel::ReadyLateness } else { CostModel::PickupEta };
        // Every rider within the radius is a candidate (k covers them all).
        let costs: Vec<Vec<Option<i64>>> = orders
            .iter()
            .map(|o| {
                riders
                    .iter()
                    .map(|r| {
                        let ok = !o.declined.contains(&r.id)
                            && haversine_m(r.position, o.pickup) <= radius;
                        ok.then(|| pair_cost(cost, age_weight, now, o, r))
                    })
                    .collect()
            })
            .collect();
        let mut best = (0, 0);
        brute_force(&costs, 0, &mut vec![false; riders.len()], (0, 0), &mut best);
        for solver in [Solver::Sparse, Solver::KuhnMunkres] {
            let s = DispatchSettings {
                max_radius_m: radius,
                k_nearest: 6,
                max_candidates: 12,
                cost,
                solver,
                age_weight,
                ..settings(PolicyKind::Batch)
            };
            let offers = plan(&s, now, &orders, &riders);
            check_contract(&s, &orders, &riders, &offers)?;
            let total: i64 = offers
                .iter()
                .map(|f| {
                    let o = orders.iter().find(|o| o.id == f.order_id).expect("known order");
                    let r = riders.iter().find(|r| r.id == f.rider_id).expect("known rider");
                    assert_eq!(f.cost, pair_cost(cost, age_weight, now, o, r), "offer carries its pair cost");
                    f.cost
                })
                .sum();
            prop_assert_eq!((offers.len(), total), best, "{:?}", solver);
        }
        // Where greedy assigns as many orders, it cannot beat the optimum on pickup ETA.
        if cost == CostModel::PickupEta && age_weight == 0.0 {
            let g = plan(&DispatchSettings { max_radius_m: radius, ..settings(PolicyKind::Greedy) }, now, &orders, &riders);
            if g.len() == best.0 {
                let greedy_total: i64 = g.iter().map(|f| f.cost).sum();
                prop_assert!(best.1 <= greedy_total);
            }
        }
    }

    #[test]
    fn greedy_is_oldest_first_nearest_rider(
        (orders, mut riders) in instance(8, 10),
        radius in 1000.0..9000.0f64,
        busy in prop::collection::vec(any::<bool>(), 10),
    ) {
        // Some riders have a route: greedy must leave them alone.
        for (r, b) in riders.iter_mut().zip(&busy) {
            if *b {
                r.route = vec![Stop {
                    order_id: "elsewhere".into(),
                    kind: StopKind::Dropoff,
                    location: r.position,
                    ready_at_ms: 0,
                    promised_at_ms: i64::MAX,
                }];
            }
        }
        let s = DispatchSettings { max_radius_m: radius, ..settings(PolicyKind::Greedy) };
        let offers = plan(&s, 0, &orders, &riders);
        check_contract(&s, &orders, &riders, &offers)?;
        // The reference: today's rule, by a plain scan.
        let mut queue: Vec<&WaitingOrder> = orders.iter().collect();
        queue.sort_by_key(|o| o.waiting_since_ms);
        let mut taken = vec![false; riders.len()];
        let mut expected = Vec::new();
        for o in queue {
            let pick = riders
                .iter()
                .enumerate()
                .filter(|(i, r)| !taken[*i] && r.route.is_empty() && !o.declined.contains(&r.id))
                .map(|(i, r)| (i, haversine_m(r.position, o.pickup)))
                .filter(|&(_, d)| d <= radius)
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((i, _)) = pick {
                taken[i] = true;
                expected.push((o.id.clone(), riders[i].id.clone()));
            }
        }
        let got: Vec<(String, String)> =
            offers.iter().map(|f| (f.order_id.clone(), f.rider_id.clone())).collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn stacked_keeps_promises_detours_and_stack_size(
        (orders, riders) in instance(6, 6),
        routes in prop::collection::vec(
            prop::collection::vec((spot(), spot(), 0..1_200_000i64, 1_500_000..4_000_000i64, any::<bool>()), 0..3),
            6,
        ),
        detour in 300.0..4000.0f64,
        max_stack in 1..4usize,
        margin in prop_oneof![Just(0i64), 0..600_000i64],
        now in 0..600_000i64,
    ) {
        // Give riders routes: some orders still to collect, some carried (drop-off only).
        let riders: Vec<AvailableRider> = riders
            .into_iter()
            .zip(routes)
            .map(|(mut r, legs)| {
                for (k, (p, d, ready, promise, carried)) in legs.into_iter().enumerate() {
                    let id = format!("{}-{k}", r.id);
                    let stop = |kind, l: (f64, f64)| Stop {
                        order_id: id.clone(),
                        kind,
                        location: at(l.0, l.1),
                        ready_at_ms: ready,
                        promised_at_ms: promise,
                    };
                    if !carried {
                        r.route.push(stop(StopKind::Pickup, p));
                    }
                    r.route.push(stop(StopKind::Dropoff, d));
                }
                r
            })
            .collect();
        let s = DispatchSettings {
            max_detour_m: detour,
            max_stack,
            promise_margin_ms: margin,
            ..settings(PolicyKind::Stacked)
        };
        let offers = plan(&s, now, &orders, &riders);
        check_contract(&s, &orders, &riders, &offers)?;
        for f in &offers {
            let o = orders.iter().find(|o| o.id == f.order_id).expect("known order");
            let r = riders.iter().find(|r| r.id == f.rider_id).expect("known rider");
            // The old stops, in their order, plus the new pickup before the new drop-off.
            let old: Vec<&Stop> = f.route.iter().filter(|s| s.order_id != o.id).collect();
            prop_assert_eq!(old, r.route.iter().collect::<Vec<_>>());
            let kinds: Vec<StopKind> =
                f.route.iter().filter(|s| s.order_id == o.id).map(|s| s.kind).collect();
            prop_assert_eq!(kinds, vec![StopKind::Pickup, StopKind::Dropoff]);
            prop_assert!(r.load() < max_stack, "{} already had {} orders", r.id, r.load());
            let (before_m, before) = timing(now, r.position, &r.route);
            let (after_m, after) = timing(now, r.position, &f.route);
            let arrival = |times: &[i64], route: &[Stop], id: &str| {
                route
                    .iter()
                    .zip(times)
                    .find(|(s, _)| s.order_id == id && s.kind == StopKind::Dropoff)
                    .map(|(_, &t)| t)
            };
            if !r.route.is_empty() {
                prop_assert!(after_m - before_m <= detour + 1e-6, "detour {} > {detour}", after_m - before_m);
                let new = arrival(&after, &f.route, &o.id).expect("new drop-off");
                prop_assert!(new <= o.promised_at_ms - margin, "new order late: {new} > {} - {margin}", o.promised_at_ms);
            }
            for s in r.route.iter().filter(|s| s.kind == StopKind::Dropoff) {
                let was = arrival(&before, &r.route, &s.order_id).expect("old drop-off");
                let now_at = arrival(&after, &f.route, &s.order_id).expect("kept drop-off");
                prop_assert!(
                    now_at <= was.max(s.promised_at_ms - margin),
                    "{} delivered at {now_at}, was {was}, promised {}",
                    s.order_id,
                    s.promised_at_ms
                );
            }
        }
    }

    #[test]
    fn no_policy_offers_an_order_to_a_decliner(
        (orders, riders) in instance(8, 8),
        radius in 500.0..9000.0f64,
    ) {
        for policy in [PolicyKind::Greedy, PolicyKind::Batch, PolicyKind::Stacked] {
            for k in [1, 3, 8] {
                let s = DispatchSettings {
                    max_radius_m: radius,
                    k_nearest: k,
                    ..settings(policy)
                };
                let offers = plan(&s, 0, &orders, &riders);
                check_contract(&s, &orders, &riders, &offers)?;
            }
        }
    }
}

/// Independent route timing: (metres, arrival per stop), as the stacked module doc specifies.
fn timing(now: i64, start: Location, route: &[Stop]) -> (f64, Vec<i64>) {
    let mut t = now;
    let mut here = start;
    let mut metres = 0.0;
    let mut arrivals = Vec::new();
    for s in route {
        let d = haversine_m(here, s.location);
        metres += d;
        let arrive = t + (d / SPEED * 1000.0).round() as i64;
        arrivals.push(arrive);
        let begin = if s.kind == StopKind::Pickup {
            arrive.max(s.ready_at_ms)
        } else {
            arrive
        };
        t = begin + SERVICE_MS;
        here = s.location;
    }
    (metres, arrivals)
}

#[test]
fn greedy_gives_the_older_order_the_nearer_rider() {
    let merchant = at(0.0, 0.0);
    let orders = vec![
        order(1, merchant, at(1000.0, 0.0), 5_000),
        order(2, merchant, at(0.0, 1000.0), 1_000),
    ];
    let riders = vec![
        idle(1, at(900.0, 0.0)),
        idle(2, at(300.0, 0.0)),
        idle(3, at(0.0, 12_000.0)),
    ];
    let offers = plan(&settings(PolicyKind::Greedy), 0, &orders, &riders);
    let pairs: Vec<(&str, &str)> = offers
        .iter()
        .map(|f| (f.order_id.as_str(), f.rider_id.as_str()))
        .collect();
    // o2 waited longer, so it gets the nearest (r2); o1 the next (r1); r3 is out of range.
    assert_eq!(pairs, vec![("o2", "r2"), ("o1", "r1")]);
    assert!((offers[0].distance_m - 300.0).abs() < 1.0);
}

#[test]
fn batch_swaps_where_greedy_would_strand_a_far_order() {
    // Greedy serves o1 (older) with r1, the only rider o2 can reach in time; batch sends r2.
    let orders = vec![
        order(1, at(0.0, 0.0), at(500.0, 500.0), 0),
        order(2, at(2000.0, 0.0), at(2500.0, 500.0), 1_000),
    ];
    let riders = vec![idle(1, at(1000.0, 0.0)), idle(2, at(-1100.0, 0.0))];
    let greedy = plan(&settings(PolicyKind::Greedy), 0, &orders, &riders);
    let batch = plan(&settings(PolicyKind::Batch), 0, &orders, &riders);
    let total = |offers: &[Offer]| offers.iter().map(|f| f.distance_m).sum::<f64>();
    assert_eq!(greedy.len(), 2);
    assert_eq!(batch.len(), 2);
    assert!((total(&greedy) - 4100.0).abs() < 5.0, "{}", total(&greedy));
    assert!((total(&batch) - 2100.0).abs() < 5.0, "{}", total(&batch));
}

#[test]
fn stacked_adds_a_same_merchant_order_but_not_one_that_breaks_a_promise() {
    let merchant = at(0.0, 0.0);
    let s = settings(PolicyKind::Stacked);
    // The rider is 500 m from the merchant, fetching o1 for a customer 1.5 km east.
    let first = order(1, merchant, at(1500.0, 0.0), 0);
    let mut rider = idle(1, at(-500.0, 0.0));
    rider.route = vec![
        Stop {
            order_id: first.id.clone(),
            kind: StopKind::Pickup,
            location: merchant,
            ready_at_ms: first.ready_at_ms,
            promised_at_ms: first.promised_at_ms,
        },
        Stop {
            order_id: first.id.clone(),
            kind: StopKind::Dropoff,
            location: first.dropoff,
            ready_at_ms: first.ready_at_ms,
            promised_at_ms: first.promised_at_ms,
        },
    ];
    let far_idle = idle(2, at(0.0, 4000.0));
    let second = order(2, merchant, at(1700.0, 200.0), 0);
    let offers = plan(
        &s,
        0,
        std::slice::from_ref(&second),
        &[rider.clone(), far_idle.clone()],
    );
    assert_eq!(offers.len(), 1);
    assert_eq!(
        offers[0].rider_id, "r1",
        "the rider already going there takes it"
    );
    let ids: Vec<(&str, StopKind)> = offers[0]
        .route
        .iter()
        .map(|s| (s.order_id.as_str(), s.kind))
        .collect();
    assert_eq!(ids.len(), 4);
    assert!(ids.contains(&("o2", StopKind::Pickup)) && ids.contains(&("o2", StopKind::Dropoff)));

    // If o1's promise is so tight that any detour breaks it, the idle rider takes o2.
    let mut tight = rider.clone();
    let (_, arrivals) = timing(0, tight.position, &tight.route);
    for stop in &mut tight.route {
        stop.promised_at_ms = arrivals[1];
    }
    let offers = plan(&s, 0, std::slice::from_ref(&second), &[tight, far_idle]);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].rider_id, "r2");
}

#[test]
fn invalid_settings_and_locations_are_refused_not_panicked_on() {
    let eta = Arc::new(Haversine::new(SPEED).expect("speed"));
    let bad = DispatchSettings {
        k_nearest: 0,
        ..settings(PolicyKind::Batch)
    };
    assert!(build(&bad, eta.clone()).is_err());
    let nowhere = Location {
        lat: f64::NAN,
        lng: 0.0,
    };
    let orders = vec![
        order(1, nowhere, at(0.0, 0.0), 0),
        order(2, at(0.0, 0.0), at(1.0, 1.0), 0),
    ];
    let riders = vec![idle(1, nowhere), idle(2, at(10.0, 0.0))];
    for policy in [PolicyKind::Greedy, PolicyKind::Batch, PolicyKind::Stacked] {
        let offers = plan(&settings(policy), 0, &orders, &riders);
        let pairs: Vec<(&str, &str)> = offers
            .iter()
            .map(|f| (f.order_id.as_str(), f.rider_id.as_str()))
            .collect();
        assert_eq!(pairs, vec![("o2", "r2")], "{policy:?}");
    }
}

/// The simulator's report without its wall-clock part.
fn deterministic_part(p: &SimParams) -> serde_json::Value {
    let report = run(p).expect("simulation runs");
    assert_eq!(report.offers.contract_violations, 0);
    assert!(report.orders.delivered > 0, "{}", report.table());
    let mut v = serde_json::to_value(&report).expect("report encodes");
    v.as_object_mut().expect("an object").remove("compute");
    v
}

#[test]
fn the_simulator_is_deterministic_for_a_seed() {
    for policy in [PolicyKind::Greedy, PolicyKind::Batch, PolicyKind::Stacked] {
        let mut p = SimParams::new(policy, 40, 150.0, 1.0, 7);
        p.drain_hours = 1.0;
        let first = deterministic_part(&p);
        assert_eq!(first, deterministic_part(&p), "{policy:?}");
        p.seed = 8;
        assert_ne!(
            first,
            deterministic_part(&p),
            "{policy:?}: the seed must matter"
        );
    }
}

#[test]
fn the_simulator_refuses_bad_parameters() {
    let mut p = SimParams::new(PolicyKind::Batch, 10, 100.0, 1.0, 1);
    p.hours = 0.0;
    assert!(run(&p).is_err());
    let mut p = SimParams::new(PolicyKind::Batch, 10, 100.0, 1.0, 1);
    p.dispatch.speed_mps = -1.0;
    assert!(run(&p).is_err());
}

#[test]
fn batch_does_not_strand_orders_crowding_one_merchant() {
    // 40 orders at one merchant, riders strung out east of it: the first candidate lists (at
    // most 8 riders each, all the same 8) can serve 8 orders; escalation must find the rest.
    let merchant = at(0.0, 0.0);
    let orders: Vec<WaitingOrder> = (0..40)
        .map(|i| order(i, merchant, at(0.0, 1000.0), i as i64))
        .collect();
    let riders: Vec<AvailableRider> = (0..60)
        .map(|i| idle(i, at(100.0 * (i + 1) as f64, 0.0)))
        .collect();
    for policy in [PolicyKind::Batch, PolicyKind::Stacked] {
        let s = DispatchSettings {
            k_nearest: 4,
            max_candidates: 8,
            ..settings(policy)
        };
        let offers = plan(&s, 0, &orders, &riders);
        assert_eq!(offers.len(), 40, "{policy:?}");
        // The 40 nearest riders serve them.
        let far = offers.iter().map(|f| f.distance_m).fold(0.0f64, f64::max);
        assert!((far - 4000.0).abs() < 5.0, "{policy:?}: farthest {far}");
    }
}
