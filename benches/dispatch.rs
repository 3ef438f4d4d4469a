//! One dispatch round at city scale: 2,000 waiting orders and 10,000 riders, for each policy,
//! and for `batch` with each exact solver (the sparse shortest-augmenting-path solver and
//! `pathfinding::kuhn_munkres_min` per connected component).
//!
//! The instance comes from the simulator's city generator (seed 1): merchants in clusters,
//! customers spread, riders anywhere. For `greedy` and `batch` every rider is idle; for
//! `stacked` a third of the riders already carry one order, so insertion is exercised.
//!
//! `solver_dense_NxN` compares the exact solvers alone on dense square problems (every pair
//! allowed, random integer costs): `solver::assign` with `Solver::Sparse` and with
//! `Solver::KuhnMunkres`, and the `lapjv` crate (Jonker–Volgenant, dense, square matrices only,
//! f64 costs). The optimal totals are printed and must agree.
//!
//! Before criterion measures, each case is timed once and its offers are summarised (how many,
//! total pickup distance), so the quality side of the comparison is printed too. A case whose
//! single round takes longer than `WAIMAI_BENCH_MAX_ROUND_S` (default 20 s) is reported and not
//! measured further.
//!
//! Run: `cargo bench --bench dispatch`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use waimai::dispatch::solver::{assign, Edge};
use waimai::dispatch::{
    build, haversine_m, AvailableRider, DispatchSettings, Haversine, PolicyKind, Solver, Stop,
    StopKind, WaitingOrder,
};
use waimai::sim::city::{City, CityConfig};

const ORDERS: usize = 2_000;
const RIDERS: usize = 10_000;
const MINUTE: i64 = 60_000;

fn order(city: &City, i: usize, now: i64, rng: &mut ChaCha8Rng) -> WaitingOrder {
    let m = city.pick_merchant(rng);
    let pickup = city.merchants[m];
    let dropoff = city.customer_of(pickup, rng);
    let since = now - rng.gen_range(0..5 * MINUTE);
    let ready = since + rng.gen_range(5 * MINUTE..20 * MINUTE);
    let ride = (haversine_m(pickup, dropoff) / 4.5 * 1000.0) as i64;
    WaitingOrder {
        id: format!("o{i}"),
        pickup,
        dropoff,
        waiting_since_ms: since,
        ready_at_ms: ready,
        promised_at_ms: ready + 15 * MINUTE + ride,
        declined: Default::default(),
    }
}

/// (orders, idle riders, riders of whom a third carry an order).
fn instance() -> (Vec<WaitingOrder>, Vec<AvailableRider>, Vec<AvailableRider>) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let city = City::generate(CityConfig::default(), &mut rng);
    let now = 60 * MINUTE;
    let orders: Vec<WaitingOrder> = (0..ORDERS)
        .map(|i| order(&city, i, now, &mut rng))
        .collect();
    let idle: Vec<AvailableRider> = (0..RIDERS)
        .map(|i| AvailableRider {
            id: format!("r{i}"),
            position: city.random_point(&mut rng),
            route: Vec::new(),
        })
        .collect();
    let loaded = idle
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut r = r.clone();
            if i % 3 == 0 {
                let o = order(&city, ORDERS + i, now, &mut rng);
                let stop = |kind, location| Stop {
                    order_id: o.id.clone(),
                    kind,
                    location,
                    ready_at_ms: o.ready_at_ms,
                    promised_at_ms: o.promised_at_ms,
                };
                r.route = vec![
                    stop(StopKind::Pickup, o.pickup),
                    stop(StopKind::Dropoff, o.dropoff),
                ];
            }
            r
        })
        .collect();
    (orders, idle, loaded)
}

fn main() {
    let (orders, idle, loaded) = instance();
    let now = 60 * MINUTE;
    let max_round = std::env::var("WAIMAI_BENCH_MAX_ROUND_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    let cases: Vec<(&str, PolicyKind, Solver, &[AvailableRider])> = vec![
        ("greedy", PolicyKind::Greedy, Solver::Sparse, &idle),
        ("batch/sparse", PolicyKind::Batch, Solver::Sparse, &idle),
        (
            "batch/kuhn_munkres",
            PolicyKind::Batch,
            Solver::KuhnMunkres,
            &idle,
        ),
        (
            "stacked/sparse",
            PolicyKind::Stacked,
            Solver::Sparse,
            &loaded,
        ),
        (
            "stacked/kuhn_munkres",
            PolicyKind::Stacked,
            Solver::KuhnMunkres,
            &loaded,
        ),
    ];
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    let mut group = c.benchmark_group(format!("dispatch_round_{ORDERS}x{RIDERS}"));
    println!("\n==== one round, {ORDERS} orders x {RIDERS} riders ====");
    for (name, policy, solver, riders) in cases {
        let settings = DispatchSettings {
            policy,
            solver,
            ..DispatchSettings::default()
        };
        let eta = Arc::new(Haversine::new(settings.speed_mps).expect("speed"));
        let mut p = build(&settings, eta).expect("settings");
        let started = Instant::now();
        let offers = p.plan(now, &orders, riders);
        let took = started.elapsed().as_secs_f64();
        let km: f64 = offers.iter().map(|f| f.distance_m).sum::<f64>() / 1000.0;
        let stacked = offers.iter().filter(|f| f.route.len() > 2).count();
        println!(
            "{name:<22} first round {:>8.1} ms: {} offers ({stacked} stacked), pickup distance {km:.1} km",
            took * 1000.0,
            offers.len()
        );
        if took > max_round {
            println!("{name:<22} not measured further: one round took over {max_round} s");
            continue;
        }
        group.bench_function(name, |b| {
            b.iter(|| black_box(p.plan(now, black_box(&orders), black_box(riders))))
        });
    }
    group.finish();
    solvers(&mut c);
    c.final_summary();
}

/// The three exact solvers on dense square problems.
fn solvers(c: &mut Criterion) {
    for n in [200usize, 1000] {
        let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
        let costs: Vec<i64> = (0..n * n).map(|_| rng.gen_range(0..1_000_000)).collect();
        let edges: Vec<Edge> = (0..n * n)
            .map(|k| Edge {
                row: k / n,
                col: k % n,
                cost: costs[k],
            })
            .collect();
        let matrix =
            ndarray::Array2::from_shape_vec((n, n), costs.iter().map(|&x| x as f64).collect())
                .expect("n x n");
        let total =
            |pairs: &[(usize, usize)]| pairs.iter().map(|&(i, j)| costs[i * n + j]).sum::<i64>();
        let timed = |name: &str, f: &mut dyn FnMut() -> i64| {
            let started = Instant::now();
            let t = f();
            println!(
                "solver_dense_{n}x{n} {name:<13} first run {:>9.1} ms, optimum {t}",
                started.elapsed().as_secs_f64() * 1000.0
            );
        };
        timed("sparse", &mut || {
            total(&assign(n, n, &edges, Solver::Sparse))
        });
        timed("kuhn_munkres", &mut || {
            total(&assign(n, n, &edges, Solver::KuhnMunkres))
        });
        timed("lapjv", &mut || match lapjv::lapjv(&matrix) {
            Ok((rows, _)) => rows
                .iter()
                .enumerate()
                .map(|(i, &j)| costs[i * n + j])
                .sum(),
            Err(e) => panic!("lapjv failed: {e:?}"),
        });
        let mut group = c.benchmark_group(format!("solver_dense_{n}x{n}"));
        group.bench_function("sparse", |b| {
            b.iter(|| black_box(assign(n, n, black_box(&edges), Solver::Sparse)))
        });
        group.bench_function("kuhn_munkres", |b| {
            b.iter(|| black_box(assign(n, n, black_box(&edges), Solver::KuhnMunkres)))
        });
        group.bench_function("lapjv", |b| {
            b.iter(|| black_box(lapjv::lapjv(black_box(&matrix))))
        });
        group.finish();
    }
}
