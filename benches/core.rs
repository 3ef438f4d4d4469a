//! Single-node figures for the hot paths:
//!
//! - `state_transition`: the pure order state machine over a whole happy-path lifecycle, and one
//!   illegal move.
//! - `router_round_trip`: a `GetMerchant` round trip through the router, shard supervisor and
//!   merchant actor of a real node (temp SQLite store, local locks), one at a time and 1,000 in
//!   flight.
//! - `store_group_commit/{sqlite,postgres,mysql}`: 2,000 concurrent changes (order insert + its
//!   outbox event) through the group-commit writer on a fresh database per backend.
//!
//! PostgreSQL (`WAIMAI_TEST_PG`, default `postgres://postgres@127.0.0.1:5432/test`) and MariaDB
//! (`WAIMAI_TEST_MYSQL`, default `mysql://root@127.0.0.1:3306/test`) must be running; the bench
//! panics naming the missing service otherwise.
//!
//! - `lock_lease/{local,redis}`: one lease's grant, renewal and release on each backend (Redis
//!   at `WAIMAI_TEST_REDIS`, default `redis://127.0.0.1:6379`).
//! - `json`: encoding and decoding the hot wire types (an order, a status event).
//! - `request_trace/{ids_layer,opentelemetry_always_off}`: one request's trace context (its
//!   span, an actor span under it, the answer's `traceparent`) with the node's own layer and
//!   with the OpenTelemetry layer it replaced when nothing exports.
//! - `ws_fanout`: one hub event delivered to 1,000 subscribers' queues and drained.
//!
//! Run: `cargo bench --bench core`.

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use futures::future::join_all;
use serde_json::json;
use sqlx::Connection;
use waimai::actors::order_machine::{transition, OrderEvent, OrderStatus};
use waimai::cluster::Router;
use waimai::config::LockBackendKind;
use waimai::domain::{now_ms, Caller, Location};
use waimai::lock::LockBackend;
use waimai::messages::{GetMerchant, RegisterMerchant};
use waimai::model::{Order, OrderLine, OutboxEvent};
use waimai::realtime::{Hub, Topic};
use waimai::store::{Store, Write};
use waimai::{Config, Node};

/// Changes committed concurrently per group-commit iteration.
const COMMITS: usize = 2_000;
/// Router sends in flight per concurrent iteration.
const IN_FLIGHT: usize = 1_000;
/// Merchants the concurrent sends are spread over.
const MERCHANTS: usize = 16;

/// The happy path, event by event.
const HAPPY_PATH: [OrderEvent; 6] = [
    OrderEvent::Pay,
    OrderEvent::Accept,
    OrderEvent::AssignRider,
    OrderEvent::PickUp,
    OrderEvent::Deliver,
    OrderEvent::Confirm,
];

// ---- a small tally of our own, for the summary printed after criterion ----

/// (figure, total elapsed, total operations) accumulated over every measured iteration.
static TALLY: Mutex<Vec<(String, Duration, u64)>> = Mutex::new(Vec::new());

fn record(name: &str, elapsed: Duration, ops: u64) {
    let mut t = TALLY.lock().unwrap();
    match t.iter_mut().find(|(n, _, _)| n == name) {
        Some(row) => {
            row.1 += elapsed;
            row.2 += ops;
        }
        None => t.push((name.to_string(), elapsed, ops)),
    }
}

fn print_summary() {
    println!("\n==== waimai single-node summary (mean over all measured iterations) ====");
    for (name, elapsed, ops) in TALLY.lock().unwrap().iter() {
        if *ops == 0 {
            continue;
        }
        let per_op = elapsed.as_secs_f64() / *ops as f64;
        println!(
            "{name:<52} {:>12} per op {:>14.0} ops/s",
            fmt_time(per_op),
            1.0 / per_op
        );
    }
}

fn fmt_time(secs: f64) -> String {
    if secs < 1e-6 {
        format!("{:.2} ns", secs * 1e9)
    } else if secs < 1e-3 {
        format!("{:.2} µs", secs * 1e6)
    } else {
        format!("{:.2} ms", secs * 1e3)
    }
}

fn small<M: criterion::measurement::Measurement>(g: &mut BenchmarkGroup<'_, M>) {
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
}

// ---- 1. the state machine ----

fn bench_state_transition(c: &mut Criterion) {
    let mut g = c.benchmark_group("state_transition");
    small(&mut g);
    g.throughput(Throughput::Elements(HAPPY_PATH.len() as u64));
    g.bench_function("happy_path", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut s = black_box(OrderStatus::PendingPayment);
                for e in HAPPY_PATH {
                    s = transition(s, black_box(e)).expect("legal move");
                }
                assert_eq!(black_box(s), OrderStatus::Completed);
            }
            let elapsed = start.elapsed();
            record(
                "state_transition/happy_path (per move)",
                elapsed,
                iters * HAPPY_PATH.len() as u64,
            );
            elapsed
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("illegal", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let r = transition(
                    black_box(OrderStatus::Completed),
                    black_box(OrderEvent::Pay),
                );
                assert!(black_box(r).is_err());
            }
            let elapsed = start.elapsed();
            record("state_transition/illegal", elapsed, iters);
            elapsed
        })
    });
    g.finish();
}

// ---- 2. actor round trips through the router ----

fn sqlite_url() -> (String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("waimai-bench-{}", unique()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    (format!("sqlite://{}/waimai.db", dir.display()), dir)
}

fn node_config(store_url: &str) -> Config {
    let mut cfg = Config::defaults().expect("embedded config");
    cfg.store.url = store_url.to_string();
    cfg.lock.backend = LockBackendKind::Local;
    cfg.auth.jwt_secret = "bench-secret".into();
    cfg
}

async fn register_merchant(router: &Router, id: &str) {
    router
        .send(
            id,
            RegisterMerchant {
                caller: Caller::system(),
                name: "Bench Kitchen".into(),
                location: Location {
                    lat: 31.23,
                    lng: 121.47,
                },
            },
        )
        .await
        .expect("register merchant");
}

fn bench_router(c: &mut Criterion) {
    let system = actix_rt::System::new();
    let (url, dir) = sqlite_url();
    let ids: Vec<String> = (0..MERCHANTS)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let node = system.block_on(async {
        let node = Node::start(node_config(&url)).await.expect("node starts");
        for id in &ids {
            register_merchant(&node.router, id).await;
        }
        // Load every actor once so the figures are warm round trips, not store loads.
        for id in &ids {
            node.router
                .send(id, GetMerchant)
                .await
                .expect("get merchant");
        }
        node
    });
    let router = node.router.clone();

    let mut g = c.benchmark_group("router_round_trip");
    small(&mut g);
    g.throughput(Throughput::Elements(1));
    g.bench_function("single", |b| {
        b.iter_custom(|iters| {
            let elapsed = system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let v = router.send(&ids[0], GetMerchant).await.expect("round trip");
                    black_box(v);
                }
                start.elapsed()
            });
            record("router_round_trip/single", elapsed, iters);
            elapsed
        })
    });
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    g.bench_function(format!("concurrent_{IN_FLIGHT}_one_merchant"), |b| {
        b.iter_custom(|iters| {
            let elapsed = system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let all =
                        join_all((0..IN_FLIGHT).map(|_| router.send(&ids[0], GetMerchant))).await;
                    assert!(all.iter().all(|r| r.is_ok()), "a round trip failed");
                    black_box(all);
                }
                start.elapsed()
            });
            record(
                &format!("router_round_trip/concurrent_{IN_FLIGHT}_one_merchant"),
                elapsed,
                iters * IN_FLIGHT as u64,
            );
            elapsed
        })
    });
    g.bench_function(
        format!("concurrent_{IN_FLIGHT}_{MERCHANTS}_merchants"),
        |b| {
            b.iter_custom(|iters| {
                let elapsed = system.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let all = join_all(
                            (0..IN_FLIGHT).map(|i| router.send(&ids[i % MERCHANTS], GetMerchant)),
                        )
                        .await;
                        assert!(all.iter().all(|r| r.is_ok()), "a round trip failed");
                        black_box(all);
                    }
                    start.elapsed()
                });
                record(
                    &format!("router_round_trip/concurrent_{IN_FLIGHT}_{MERCHANTS}_merchants"),
                    elapsed,
                    iters * IN_FLIGHT as u64,
                );
                elapsed
            })
        },
    );
    g.finish();

    system.block_on(node.shutdown());
    let _ = std::fs::remove_dir_all(dir);
}

// ---- 3. group commit ----

/// A short unique suffix.
fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

#[derive(Debug, Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
    MySql,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
            Db::MySql => "mysql",
        }
    }
}

fn pg_base() -> String {
    std::env::var("WAIMAI_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn mysql_base() -> String {
    std::env::var("WAIMAI_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// `base` with its database name replaced by `name`.
fn with_db(base: &str, name: &str) -> String {
    let server = base.rsplit_once('/').map(|(a, _)| a).unwrap_or(base);
    format!("{server}/{name}")
}

/// A fresh, empty database on `db`: (URL, what to drop afterwards).
async fn fresh_db(db: Db) -> (String, Cleanup) {
    let name = format!("waimai_b_{}", unique());
    match db {
        Db::Sqlite => {
            let (url, dir) = sqlite_url();
            (url, Cleanup::Dir(dir))
        }
        Db::Postgres => {
            let base = pg_base();
            let mut conn = sqlx::postgres::PgConnection::connect(&base)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is required at {base} ({e}); start it with \
                         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
                    )
                });
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create PostgreSQL database");
            (
                with_db(&base, &name),
                Cleanup::Pg {
                    base: base.clone(),
                    name,
                },
            )
        }
        Db::MySql => {
            let base = mysql_base();
            let mut conn = sqlx::mysql::MySqlConnection::connect(&base)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "MariaDB is required at {base} ({e}); start it with \
                         `start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd`"
                    )
                });
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create MariaDB database");
            (
                with_db(&base, &name),
                Cleanup::MySql {
                    base: base.clone(),
                    name,
                },
            )
        }
    }
}

/// What a fresh database leaves behind.
enum Cleanup {
    Dir(std::path::PathBuf),
    Pg { base: String, name: String },
    MySql { base: String, name: String },
}

impl Cleanup {
    async fn run(self) {
        match self {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Pg { base, name } => {
                if let Ok(mut conn) = sqlx::postgres::PgConnection::connect(&base).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::Executor::execute(&mut conn, sql.as_str()).await;
                }
            }
            Cleanup::MySql { base, name } => {
                if let Ok(mut conn) = sqlx::mysql::MySqlConnection::connect(&base).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name}");
                    let _ = sqlx::Executor::execute(&mut conn, sql.as_str()).await;
                }
            }
        }
    }
}

/// One order-creation change: the order row and its outbox event.
fn order_change(merchant_id: &str) -> Vec<Write> {
    let now = now_ms();
    let id = uuid::Uuid::new_v4().to_string();
    let order = Order {
        id: id.clone(),
        customer_id: "bench-customer".into(),
        merchant_id: merchant_id.to_string(),
        rider_id: None,
        status: OrderStatus::PendingPayment,
        items: vec![OrderLine {
            sku: "dumplings".into(),
            name: "Dumplings".into(),
            qty: 2,
            price_cents: 1000,
        }],
        total_cents: 2000,
        deliver_to: Location {
            lat: 31.2,
            lng: 121.5,
        },
        pickup: Some(Location {
            lat: 31.23,
            lng: 121.47,
        }),
        version: 1,
        created_at: now,
        updated_at: now,
        request_hash: None,
    };
    let event = OutboxEvent {
        aggregate_type: "order".into(),
        aggregate_id: id.clone(),
        event_type: "order_created".into(),
        payload: json!({"id": id, "merchant_id": merchant_id, "total_cents": 2000}).into(),
        created_at: now,
        traceparent: None,
    };
    vec![Write::InsertOrder(order.into()), Write::Event(event)]
}

fn bench_group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("store_group_commit");
    small(&mut g);
    // One iteration is 2,000 commits (a few hundred ms): flat sampling keeps it to ~10 of them.
    g.sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(COMMITS as u64));
    for db in [Db::Sqlite, Db::Postgres, Db::MySql] {
        let (store, cleanup) = rt.block_on(async {
            let (url, cleanup) = fresh_db(db).await;
            let mut cfg = Config::defaults().expect("embedded config");
            cfg.store.url = url;
            let store = Store::connect(&cfg.store, cfg.shards.count)
                .await
                .unwrap_or_else(|e| panic!("connect to {}: {e}", db.name()));
            store
                .migrate()
                .await
                .unwrap_or_else(|e| panic!("migrate {}: {e}", db.name()));
            (store, cleanup)
        });
        let merchant_id = uuid::Uuid::new_v4().to_string();
        g.bench_function(db.name(), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let changes: Vec<Vec<Write>> =
                        (0..COMMITS).map(|_| order_change(&merchant_id)).collect();
                    total += rt.block_on(async {
                        let start = Instant::now();
                        let outcomes = join_all(changes.into_iter().map(|w| store.commit(w))).await;
                        let elapsed = start.elapsed();
                        if let Some(Err(e)) = outcomes.iter().find(|r| r.is_err()) {
                            panic!("commit on {} failed: {e}", db.name());
                        }
                        elapsed
                    });
                }
                record(
                    &format!("store_group_commit/{} (per change)", db.name()),
                    total,
                    iters * COMMITS as u64,
                );
                total
            })
        });
        rt.block_on(async {
            store.close().await;
            drop(store);
            cleanup.run().await;
        });
    }
    g.finish();
}

// ---- 4. lock leases ----

fn bench_locks(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("lock_lease");
    small(&mut g);
    for kind in [LockBackendKind::Local, LockBackendKind::Redis] {
        let mut cfg = Config::defaults().expect("embedded config").lock;
        cfg.backend = kind;
        cfg.redis_url =
            std::env::var("WAIMAI_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        cfg.key_prefix = format!("waimai-bench-{}", unique());
        let backend = rt
            .block_on(LockBackend::from_config(&cfg))
            .unwrap_or_else(|e| panic!("lock backend {kind:?} (is Redis running?): {e}"));
        let name = backend.name();
        g.bench_function(format!("{name}/grant_renew_release"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for i in 0..iters {
                        let key = format!("stock:{i}");
                        let lease = backend.acquire(&key, 10_000, 1).await.expect("grant");
                        backend.renew(&lease, 10_000).await.expect("renew");
                        backend.release(&lease).await.expect("release");
                    }
                    let elapsed = start.elapsed();
                    record(
                        &format!("lock_lease/{name} (grant+renew+release)"),
                        elapsed,
                        iters,
                    );
                    elapsed
                })
            })
        });
    }
    g.finish();
}

// ---- 5. JSON of the hot types ----

fn sample_order() -> Order {
    Order {
        id: uuid::Uuid::new_v4().to_string(),
        customer_id: "customer-42".into(),
        merchant_id: uuid::Uuid::new_v4().to_string(),
        rider_id: None,
        status: OrderStatus::PendingPayment,
        items: vec![
            OrderLine {
                sku: "beef-noodles".into(),
                name: "Beef noodles".into(),
                qty: 2,
                price_cents: 2800,
            },
            OrderLine {
                sku: "tea".into(),
                name: "Jasmine tea".into(),
                qty: 1,
                price_cents: 600,
            },
        ],
        total_cents: 6200,
        deliver_to: Location {
            lat: 31.2,
            lng: 121.5,
        },
        pickup: Some(Location {
            lat: 31.23,
            lng: 121.47,
        }),
        version: 1,
        created_at: now_ms(),
        updated_at: now_ms(),
        request_hash: None,
    }
}

fn bench_json(c: &mut Criterion) {
    let mut g = c.benchmark_group("json");
    small(&mut g);
    let order = sample_order();
    let text = serde_json::to_string(&order).expect("encode");
    let request = json!({"merchant_id": order.merchant_id, "items": [{"sku": "beef-noodles", "qty": 2}], "deliver_to": {"lat": 31.2, "lng": 121.5}}).to_string();
    g.bench_function("order_encode", |b| {
        b.iter(|| serde_json::to_vec(black_box(&order)).expect("encode"))
    });
    g.bench_function("order_decode", |b| {
        b.iter(|| serde_json::from_str::<Order>(black_box(&text)).expect("decode"))
    });
    g.bench_function("create_request_decode", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(&request)).expect("decode"))
    });
    g.bench_function("status_event_encode", |b| {
        b.iter(|| {
            json!({
                "type": "status", "order_id": black_box(&order.id), "version": 2,
                "status": OrderStatus::Paid, "from": OrderStatus::PendingPayment,
                "rider_id": null, "seq": 1, "ts": 0,
            })
            .to_string()
        })
    });
    g.finish();
}

// ---- 5b. the hot path's pure steps: token check, order planning ----

fn bench_hot_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("hot_path");
    small(&mut g);
    let auth = waimai::api::Auth::new("bench-secret");
    let header = format!(
        "Bearer {}",
        auth.mint(waimai::domain::Role::Customer, "customer-42", 3600)
            .expect("token")
    );
    g.bench_function("jwt_verify", |b| {
        b.iter(|| auth.caller(Some(black_box(&header))).expect("valid"))
    });
    let order = sample_order();
    let draft = waimai::messages::OrderDraft {
        id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        merchant_id: order.merchant_id.clone(),
        deliver_to: order.deliver_to,
        request_hash: Some(
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        ),
    };
    let reservation = waimai::messages::Reservation {
        lines: order.items.clone(),
        total_cents: order.total_cents,
        fence: 7,
        pickup: Location {
            lat: 31.23,
            lng: 121.47,
        },
    };
    g.bench_function("create_order_plan", |b| {
        b.iter(|| waimai::actors::order::creation(black_box(&draft), black_box(&reservation)))
    });
    g.finish();
}

// ---- 5c. a request's trace context ----

/// What tracing does for one request on a node without an exporter: the request span (a new
/// trace, its id recorded for the logs), the actor's span under it, entered and left, and the
/// answer's `traceparent`. Once with the node's own `Ids` layer, once with the OpenTelemetry
/// layer and an `AlwaysOff` sampler, which is what a node ran before (BENCHMARKS.md).
fn bench_request_trace(c: &mut Criterion) {
    use tracing_subscriber::layer::SubscriberExt;
    use waimai::telemetry;

    fn one_request() -> Option<String> {
        let span = tracing::info_span!(
            target: "waimai::http",
            "http",
            url.path = "/v1/orders",
            trace_id = tracing::field::Empty
        );
        telemetry::continue_trace(&span, None);
        if let Some(id) = telemetry::trace_id(&span) {
            span.record("trace_id", id);
        }
        let _in = span.enter();
        telemetry::rename(&span, "POST /v1/orders");
        let actor = tracing::info_span!(target: "waimai::actor", "actor");
        actor.in_scope(|| black_box(telemetry::is_sampled(&actor)));
        telemetry::traceparent(&span)
    }

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::AlwaysOff,
        )))
        .build();
    let arms = [
        (
            "ids_layer",
            tracing::Dispatch::new(
                tracing_subscriber::registry().with(telemetry::trace_ids_layer()),
            ),
        ),
        (
            "opentelemetry_always_off",
            tracing::Dispatch::new(
                tracing_subscriber::registry().with(telemetry::exporting_layer(&provider)),
            ),
        ),
    ];
    let mut g = c.benchmark_group("request_trace");
    small(&mut g);
    for (name, dispatch) in arms {
        tracing::dispatcher::with_default(&dispatch, || {
            assert!(one_request().is_some(), "{name}: no traceparent");
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(one_request());
                    }
                    let elapsed = start.elapsed();
                    record(&format!("request_trace/{name}"), elapsed, iters);
                    elapsed
                })
            });
        });
    }
    g.finish();
}

// ---- 6. websocket fan-out through the hub ----

fn bench_fanout(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 1_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("ws_fanout");
    small(&mut g);
    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    let hub = Hub::new(1024);
    let topic = Topic::Merchant("busy-merchant".into());
    let mut subs: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| hub.subscribe(topic.clone()))
        .collect();
    g.bench_function(format!("publish_to_{SUBSCRIBERS}_and_drain"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    hub.publish(
                        topic.key(),
                        "order_updated",
                        Some(("o1", Some(2), Some(OrderStatus::Accepted))),
                        || json!({"order_id": "o1", "version": 2, "status": "accepted"}),
                    );
                    for s in subs.iter_mut() {
                        black_box(s.rx.recv().await.expect("event"));
                    }
                }
                let elapsed = start.elapsed();
                record(
                    "ws_fanout (per subscriber delivery)",
                    elapsed,
                    iters * SUBSCRIBERS as u64,
                );
                elapsed
            })
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_state_transition(&mut c);
    bench_router(&mut c);
    bench_group_commit(&mut c);
    bench_locks(&mut c);
    bench_json(&mut c);
    bench_hot_path(&mut c);
    bench_request_trace(&mut c);
    bench_fanout(&mut c);
    c.final_summary();
    print_summary();
}
