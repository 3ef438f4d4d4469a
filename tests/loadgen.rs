//! `waimai loadgen` against a real node on port 0 (embedded SQLite, local locks): each
//! scenario runs for about two seconds with small numbers, and the invariant checks must pass
//! with counts that add up.

mod common;

use common::TestApp;
use waimai::loadgen::{parse_args, run_with_auth, LoadgenError, Report};

async fn run(app: &TestApp, words: &[&str]) -> Report {
    let mut all: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    all.extend(["--target".into(), app.base.clone(), "--quiet".into()]);
    let args = parse_args(all).expect("arguments parse");
    run_with_auth(args, app.node.auth.clone())
        .await
        .expect("run completes")
}

fn assert_clean(r: &Report) {
    assert!(
        r.violations().is_empty(),
        "invariants broken:\n{}",
        r.table()
    );
}

fn op<'a>(r: &'a Report, name: &str) -> &'a waimai::loadgen::report::OpReport {
    r.ops
        .iter()
        .find(|o| o.op == name)
        .unwrap_or_else(|| panic!("no {name} in\n{}", r.table()))
}

#[actix_rt::test]
async fn create_closed_model_keeps_every_order_and_all_stock() {
    let app = TestApp::embedded().await;
    let r = run(
        &app,
        &[
            "create",
            "--concurrency",
            "8",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--merchants",
            "2",
            "--skus",
            "3",
            "--customers",
            "20",
            "--seed",
            "7",
        ],
    )
    .await;
    assert_clean(&r);
    let c = op(&r, "create_order");
    assert!(c.ok > 0, "some orders were measured:\n{}", r.table());
    assert_eq!(c.errors, 0, "no errors:\n{}", r.table());
    assert_eq!(c.count, c.ok);
    // Warm-up orders are acknowledged but not measured.
    assert!(r.orders.acknowledged >= c.ok);
    assert_eq!(r.orders.finished, c.ok);
    assert!(c.latency.p50_ms <= c.latency.p99_ms && c.latency.p99_ms <= c.latency.max_ms);
    assert_eq!(r.invariants.len(), 5, "{}", r.table());
    // The node's CPU per order over the window, from its `process_cpu_seconds_total` (here the
    // node shares the test's process, so the figure includes the load generator).
    // The main operation the rate, `--min-rate` and the CPU figure are judged by.
    assert_eq!(r.main.ops, ["create_order"]);
    assert_eq!(r.main.ok, c.ok);
    assert!((r.primary_rate() - c.ok as f64 / r.measured_s).abs() < 1e-9);
    let us = r
        .node_cpu_us_per_op
        .unwrap_or_else(|| panic!("no node CPU figure:\n{}", r.table()));
    assert!(us > 0.0, "{}", r.table());
    assert!(r.table().contains("µs per create_order"), "{}", r.table());
}

#[actix_rt::test]
async fn a_run_past_the_door_reports_how_long_creates_waited_there() {
    // Sixteen users and room for two creates inside the node: most creates wait at the door.
    let url = common::fresh_db(common::Db::Sqlite).await;
    let mut cfg = common::config(&url, waimai::config::LockBackendKind::Local);
    cfg.gateway.door.creates_in_flight = 2;
    let app = TestApp::spawn(cfg).await;
    let words = "create --concurrency 16 --duration 2 --warmup 0.5 --merchants 2 --seed 11";
    let r = run(&app, &words.split(' ').collect::<Vec<_>>()).await;
    assert_clean(&r);
    let d = r
        .door_wait
        .unwrap_or_else(|| panic!("no door figure:\n{}", r.table()));
    // The door's histogram is process-wide (other tests' nodes share it), so only a floor.
    assert!(d.waited > 0 && d.mean_ms > 0.0, "{d:?}");
    assert!(
        r.table().contains("creates waited for a turn"),
        "{}",
        r.table()
    );
}

#[actix_rt::test]
async fn create_open_model_issues_the_scheduled_arrivals() {
    let app = TestApp::embedded().await;
    let json = std::env::temp_dir().join(format!("waimai-loadgen-{}.json", common::unique()));
    let r = run(
        &app,
        &[
            "create",
            "--rate",
            "100",
            "--duration",
            "2",
            "--warmup",
            "0",
            "--merchants",
            "2",
            "--json",
            json.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    assert_clean(&r);
    let c = op(&r, "create_order");
    // 100/s for 2 s: 200 arrivals are scheduled, all inside the window.
    assert_eq!(c.count, 200, "{}", r.table());
    assert_eq!(r.orders.acknowledged, 200);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid json");
    assert_eq!(written["scenario"], "create");
    assert_eq!(written["orders"]["acknowledged"], 200);
    assert!(written["ops"][0]["latency"]["p999_ms"].is_number());
    let _ = std::fs::remove_file(json);
}

#[actix_rt::test]
async fn hot_sku_sells_exactly_the_stock() {
    let app = TestApp::embedded().await;
    let r = run(
        &app,
        &[
            "hot-sku",
            "--customers",
            "400",
            "--stock",
            "25",
            "--concurrency",
            "100",
            "--duration",
            "10",
        ],
    )
    .await;
    assert_clean(&r);
    let h = r.hot_sku.as_ref().expect("hot-sku figures");
    assert_eq!(h.attempts, 400);
    assert_eq!(h.succeeded, 25);
    assert_eq!(h.out_of_stock, 375);
    assert_eq!(h.other, 0);
    assert_eq!(r.orders.acknowledged, 25);
    let c = op(&r, "create_order");
    assert_eq!((c.ok, c.rejected, c.errors), (25, 375, 0));
    // The rejects are also measured on their own.
    let sold_out = op(&r, "create_order:409");
    assert_eq!((sold_out.count, sold_out.rejected), (375, 375));
    assert!(sold_out.latency.max_ms <= c.latency.max_ms);
    // ... without being counted twice among the answers.
    let listed: u64 = r
        .answers
        .iter()
        .filter(|a| a.kind.contains("out_of_stock"))
        .map(|a| a.count)
        .sum();
    assert_eq!(listed, 375, "{}", r.table());
}

#[actix_rt::test]
async fn hot_sku_with_more_stock_than_customers_sells_to_everyone() {
    let app = TestApp::embedded().await;
    let r = run(
        &app,
        &[
            "hot-sku",
            "--customers",
            "30",
            "--stock",
            "50",
            "--rate",
            "200",
        ],
    )
    .await;
    assert_clean(&r);
    let h = r.hot_sku.as_ref().expect("hot-sku figures");
    assert_eq!((h.attempts, h.succeeded, h.out_of_stock), (30, 30, 0));
}

#[actix_rt::test]
async fn lifecycle_delivers_and_completes_every_order() {
    let app = TestApp::embedded().await;
    let r = run(
        &app,
        &[
            "lifecycle",
            "--concurrency",
            "4",
            "--riders",
            "6",
            "--merchants",
            "2",
            "--duration",
            "2",
            "--warmup",
            "0",
            "--rider-steps",
            "2",
            "--step-ms",
            "20",
        ],
    )
    .await;
    assert_clean(&r);
    let whole = op(&r, "whole_order");
    assert!(whole.ok > 0, "{}", r.table());
    assert_eq!(whole.errors, 0);
    let delivery = r
        .orders
        .creation_to_delivery
        .as_ref()
        .expect("creation to delivery measured");
    assert_eq!(delivery.count, whole.ok);
    assert_eq!(r.main.ops, ["whole_order"]);
    assert_eq!(r.main.ok, whole.ok);
    // An operation counts when it starts inside the window, so later steps of the last
    // orders fall outside it.
    assert!(op(&r, "pay").ok <= op(&r, "create_order").ok);
    assert!(op(&r, "deliver").ok <= op(&r, "pickup").ok);
    assert!(
        r.ws_events.iter().any(|e| e.event == "merchant:new_order"),
        "{}",
        r.table()
    );
    assert!(r.ws_events.iter().any(|e| e.event == "rider:offer"));
}

#[actix_rt::test]
async fn track_sees_every_status_and_a_normal_close() {
    let app = TestApp::embedded().await;
    let r = run(
        &app,
        &[
            "track",
            "--concurrency",
            "3",
            "--watchers",
            "3",
            "--riders",
            "5",
            "--merchants",
            "2",
            "--duration",
            "2",
            "--warmup",
            "0",
            "--rider-steps",
            "2",
            "--step-ms",
            "20",
        ],
    )
    .await;
    assert_clean(&r);
    let whole = op(&r, "whole_order");
    assert!(whole.ok > 0, "{}", r.table());
    // Every order's watchers connected. Connects are counted by when they start, so the
    // watchers of an order created just before the window closed (at most one order per
    // virtual user) may fall outside it.
    let connects = op(&r, "track_connect");
    let created = op(&r, "create_order").ok;
    assert_eq!(connects.errors, 0, "{}", r.table());
    assert!(
        connects.ok <= 3 * created && connects.ok + 3 * 3 >= 3 * created,
        "{} connects for {created} orders\n{}",
        connects.ok,
        r.table()
    );
    let status = r
        .ws_events
        .iter()
        .find(|e| e.event == "track:status")
        .expect("status events");
    // paid, accepted, rider_assigned, picked_up, delivered, completed: 6 per watcher, fewer
    // counted for the last orders, whose events arrive after the window closes.
    assert!(status.latency.count >= 3 * whole.ok, "{}", r.table());
}

#[actix_rt::test]
async fn a_wrong_secret_fails_setup_loudly() {
    let app = TestApp::embedded().await;
    let args = parse_args(["create", "--target", app.base.as_str(), "--quiet"]).expect("args");
    let err = run_with_auth(args, waimai::api::Auth::new("not-the-node-secret"))
        .await
        .expect_err("setup must fail");
    assert!(
        matches!(&err, LoadgenError::Setup(m) if m.contains("401")),
        "{err}"
    );
}

/// `--threads 1` runs the load generator on a current-thread runtime, as `waimai loadgen` does
/// with it: a whole open-model run there keeps every order, and the invariants hold.
#[actix_rt::test]
async fn a_one_thread_load_generator_runs_a_whole_open_model_run() {
    let app = TestApp::embedded().await;
    let base = app.base.clone();
    let args = parse_args([
        "create",
        "--threads",
        "1",
        "--rate",
        "200",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--merchants",
        "2",
        "--target",
        &base,
        "--quiet",
    ])
    .expect("args");
    let rt = args.runtime().expect("a runtime");
    assert_eq!(
        rt.handle().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::CurrentThread
    );
    let auth = app.node.auth.clone();
    // The load generator's runtime blocks its own thread, as in `main`.
    let r = tokio::task::spawn_blocking(move || rt.block_on(run_with_auth(args, auth)))
        .await
        .expect("the load generator's thread")
        .expect("run completes");
    assert_clean(&r);
    let c = op(&r, "create_order");
    assert!(c.ok > 0 && c.errors == 0, "{}", r.table());
    assert!(r.orders.acknowledged >= c.ok);
}

/// `--timeline 250` slices a one-second window in four: every measured create falls in exactly
/// one slice, and the table prints them.
#[actix_rt::test]
async fn the_timeline_accounts_for_every_measured_create_once() {
    let app = TestApp::embedded().await;
    let r = run(
        &app,
        &[
            "create",
            "--concurrency",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--merchants",
            "2",
            "--timeline",
            "250",
        ],
    )
    .await;
    assert_clean(&r);
    let c = op(&r, "create_order");
    assert!(c.ok > 0, "{}", r.table());
    assert!(
        (1..=4).contains(&r.timeline.len()),
        "a 1 s window in 250 ms slices: {:?}",
        r.timeline
    );
    let counted: u64 = r.timeline.iter().map(|s| s.count).sum();
    let errors: u64 = r.timeline.iter().map(|s| s.errors).sum();
    assert_eq!(counted, c.count, "{}", r.table());
    assert_eq!(errors, c.errors);
    for (i, s) in r.timeline.iter().enumerate() {
        assert_eq!(s.from_s, [0.0, 0.25, 0.5, 0.75][i], "{s:?}");
        assert!(s.p50_ms <= s.p99_ms && s.p99_ms <= s.max_ms, "{s:?}");
    }
    assert!(r.table().contains("timeline (from s)"), "{}", r.table());
    // The window opened after setup, a moment ago.
    let now = waimai::domain::now_ms();
    assert!(
        (now - 60_000..now).contains(&r.window_from_unix_ms),
        "{} against now {now}",
        r.window_from_unix_ms
    );
    assert!(parse_args(["create", "--timeline", "5"]).is_err());
    // An hour in 10 ms slices would be 360,000 histograms: refused before any request.
    let args = parse_args(["create", "--timeline", "10", "--duration", "3600"]).expect("args");
    let refused = run_with_auth(args, app.node.auth.clone()).await;
    assert!(
        matches!(&refused, Err(LoadgenError::Args(m)) if m.contains("at most 10000")),
        "{refused:?}"
    );
}

#[test]
fn thread_counts_pick_the_runtime() {
    let runtime = |n: &str| {
        parse_args(["create", "--threads", n])
            .expect("args")
            .runtime()
    };
    assert!(
        parse_args(["create", "--threads", "0"]).is_err(),
        "--threads 0 is refused"
    );
    let multi = runtime("2").expect("two workers");
    assert_eq!(
        multi.handle().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::MultiThread
    );
    let default = parse_args(["create"])
        .expect("args")
        .runtime()
        .expect("default");
    assert_eq!(
        default.handle().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::MultiThread
    );
}

#[test]
fn closed_and_open_models_exclude_each_other() {
    assert!(parse_args(["create", "--concurrency", "5", "--rate", "3"]).is_err());
    assert!(parse_args(["create", "--rate", "3"]).is_ok());
    assert!(parse_args(["nonsense"]).is_err());
}

/// A proxy in front of the real node that lies: it forwards everything, except that every
/// third `POST /v1/orders` is answered `201` with a made-up order id and never reaches the
/// node, as a node that acknowledged and then lost the order would look from outside.
async fn lying_proxy(node: String) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use warp::Filter;

    let client = reqwest::Client::new();
    let creates = Arc::new(AtomicU64::new(0));
    let route = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: warp::http::HeaderMap,
                  body: bytes::Bytes| {
                let client = client.clone();
                let creates = creates.clone();
                let node = node.clone();
                async move {
                    if method == warp::http::Method::POST
                        && path.as_str() == "/v1/orders"
                        && creates.fetch_add(1, Ordering::Relaxed) % 3 == 2
                    {
                        let fake = serde_json::json!({"id": uuid::Uuid::new_v4().to_string()});
                        return warp::http::Response::builder()
                            .status(201)
                            .header("content-type", "application/json")
                            .body(fake.to_string().into_bytes())
                            .expect("response");
                    }
                    let url = if query.is_empty() {
                        format!("{node}{}", path.as_str())
                    } else {
                        format!("{node}{}?{query}", path.as_str())
                    };
                    // warp speaks http 0.2, reqwest http 1: cross over as bytes.
                    let method =
                        reqwest::Method::from_bytes(method.as_str().as_bytes()).expect("method");
                    let mut req = client.request(method, url).body(body);
                    for (name, value) in &headers {
                        if name != "host" && name != "content-length" {
                            req = req.header(name.as_str(), value.as_bytes());
                        }
                    }
                    let answer = req.send().await.expect("node answers the proxy");
                    let mut out = warp::http::Response::builder().status(answer.status().as_u16());
                    if let Some(ct) = answer.headers().get("content-type") {
                        out = out.header("content-type", ct.as_bytes());
                    }
                    let bytes = answer.bytes().await.expect("node body");
                    out.body(bytes.to_vec()).expect("response")
                }
            },
        );
    let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    format!("http://{addr}")
}

#[actix_rt::test]
async fn the_checks_catch_a_node_that_loses_acknowledged_orders() {
    let app = TestApp::embedded().await;
    let proxy = lying_proxy(app.base.clone()).await;
    let args = parse_args([
        "create",
        "--target",
        proxy.as_str(),
        "--quiet",
        "--concurrency",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--merchants",
        "1",
        "--skus",
        "2",
        "--customers",
        "10",
    ])
    .expect("args");
    let r = run_with_auth(args, app.node.auth.clone())
        .await
        .expect("the run itself completes");
    let broken: Vec<&str> = r.violations().iter().map(|c| c.name.as_str()).collect();
    assert!(
        broken
            .iter()
            .any(|n| n.starts_with("every acknowledged order exists")),
        "lost orders not caught: {broken:?}\n{}",
        r.table()
    );
    assert!(
        broken.iter().any(|n| n.starts_with("no SKU oversold")),
        "stock imbalance not caught: {broken:?}\n{}",
        r.table()
    );
    // The honest parts still pass: the checks are not failing wholesale.
    assert!(
        !broken.iter().any(|n| n.starts_with("no duplicate orders")),
        "{broken:?}"
    );
}
