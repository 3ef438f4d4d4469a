//! The live dispatch map against a real node on port 0: the page is served, its socket
//! (`/v1/ops/live`) refuses everyone but an admin at the upgrade, and its snapshot and deltas
//! follow a rider through idle, offered and carrying while it moves, and an order from waiting
//! to carried to gone.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{config, fresh_db, Db, Socket, TestApp};
use serde_json::Value;
use waimai::config::LockBackendKind;
use waimai::domain::Role;

/// Embedded defaults on a fresh SQLite file, with fast ticks and every rider position kept.
async fn ops_app() -> TestApp {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    cfg.realtime.ops_interval_ms = 50;
    cfg.realtime.location_interval_ms = 0;
    cfg.dispatch.retry_ms = 100;
    TestApp::spawn(cfg).await
}

/// What a client of the socket has put together: id -> (lat, lng, state).
#[derive(Default, Debug)]
struct Map {
    riders: HashMap<String, (f64, f64, u64)>,
    orders: HashMap<String, (f64, f64, u64)>,
    stats: Value,
    frames: u64,
}

fn entries(v: &Value) -> Vec<(String, (f64, f64, u64))> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let id = e[0].as_str().expect("id first").to_string();
                    let lat = e[1].as_f64().expect("lat second");
                    let lng = e[2].as_f64().expect("lng third");
                    let state = e[3].as_u64().expect("state fourth");
                    (id, (lat, lng, state))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Map {
    /// Applies one frame as the page does.
    fn apply(&mut self, f: &Value) {
        self.frames += 1;
        match f["type"].as_str() {
            Some("snapshot") => {
                self.riders = entries(&f["riders"]).into_iter().collect();
                self.orders = entries(&f["orders"]).into_iter().collect();
            }
            Some("delta") => {
                self.riders.extend(entries(&f["riders"]));
                self.orders.extend(entries(&f["orders"]));
                for id in f["gone"]["riders"].as_array().into_iter().flatten() {
                    self.riders.remove(id.as_str().unwrap_or_default());
                }
                for id in f["gone"]["orders"].as_array().into_iter().flatten() {
                    self.orders.remove(id.as_str().unwrap_or_default());
                }
            }
            other => panic!("unexpected frame type {other:?}: {f}"),
        }
        self.stats = f["stats"].clone();
    }

    /// Reads frames until `ok` holds (at most 10 s).
    async fn until(&mut self, sock: &mut Socket, what: &str, ok: impl Fn(&Map) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok(self) {
            assert!(Instant::now() < deadline, "never saw {what}; map: {self:?}");
            let f = sock.json(5).await;
            self.apply(&f);
        }
    }
}

fn at(e: Option<&(f64, f64, u64)>, lat: f64, lng: f64, state: u64) -> bool {
    e.is_some_and(|(a, b, s)| (a - lat).abs() < 1e-6 && (b - lng).abs() < 1e-6 && *s == state)
}

#[actix_rt::test]
async fn only_an_admin_may_open_the_ops_socket_and_the_page_is_served() {
    let app = ops_app().await;
    for (who, token) in [
        ("customer", app.token(Role::Customer, "alice")),
        ("merchant", app.token(Role::Merchant, "m1")),
        ("rider", app.token(Role::Rider, "r1")),
    ] {
        assert_eq!(
            app.ws("/v1/ops/live", &token).await.err(),
            Some(403),
            "a {who} token is refused at the upgrade"
        );
    }
    assert_eq!(app.ws("/v1/ops/live", "not-a-token").await.err(), Some(401));
    let admin = app.token(Role::Admin, "ops");
    let mut sock = app.ws("/v1/ops/live", &admin).await.expect("admin socket");
    let snap = sock.json(5).await;
    assert_eq!(snap["type"], "snapshot", "{snap}");
    assert_eq!(snap["legend"]["rider"][2], "carrying");
    assert!(snap["stats"]["status"].is_object(), "{snap}");

    let page = reqwest::get(format!("{}/ops", app.base))
        .await
        .expect("GET /ops");
    assert_eq!(page.status().as_u16(), 200);
    let ctype = page
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ctype.starts_with("text/html"), "{ctype}");
    let html = page.text().await.expect("page body");
    assert!(
        html.contains("/v1/ops/live"),
        "the page opens the ops socket"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from outside"
    );
}

#[actix_rt::test]
async fn snapshots_and_deltas_follow_riders_and_orders_as_they_move() {
    let app = ops_app().await;
    let admin = app.token(Role::Admin, "ops");
    let mut sock = app.ws("/v1/ops/live", &admin).await.expect("ops socket");
    let mut map = Map::default();
    map.apply(&sock.json(5).await);

    let (rid, rtoken) = app.rider_at(31.221, 121.461).await;
    map.until(&mut sock, "the idle rider", |m| {
        at(m.riders.get(&rid), 31.221, 121.461, 0)
    })
    .await;

    let (mid, mtoken) = app.merchant_with_stock("dumpling", 5).await;
    let oid = app.accepted_order("alice", &mid, &mtoken, "dumpling").await;
    map.until(&mut sock, "the offer and the waiting order", |m| {
        at(m.riders.get(&rid), 31.221, 121.461, 1) && at(m.orders.get(&oid), 31.23, 121.47, 0)
    })
    .await;

    let r = app
        .post(
            &format!("/v1/riders/{rid}/offers/{oid}/accept"),
            &rtoken,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "accept offer: {}", r.body);
    map.until(&mut sock, "the rider carrying, the order assigned", |m| {
        at(m.riders.get(&rid), 31.221, 121.461, 2) && at(m.orders.get(&oid), 31.23, 121.47, 1)
    })
    .await;
    assert!(
        map.stats["p99_assign_ms"].as_i64().is_some(),
        "an assignment gives a time-to-assign: {}",
        map.stats
    );
    assert_eq!(map.stats["status"]["rider_assigned"], 1, "{}", map.stats);

    let r = app
        .post(
            &format!("/v1/riders/{rid}/orders/{oid}/pickup"),
            &rtoken,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "pickup: {}", r.body);
    let r = app
        .put(
            &format!("/v1/riders/{rid}/location"),
            &rtoken,
            serde_json::json!({"lat": 31.2101, "lng": 121.4802}),
        )
        .await;
    assert_eq!(r.status, 200, "move: {}", r.body);
    map.until(&mut sock, "the rider moved, the order with it", |m| {
        at(m.riders.get(&rid), 31.2101, 121.4802, 2) && at(m.orders.get(&oid), 31.2101, 121.4802, 2)
    })
    .await;

    // A watcher joining now gets it all in its snapshot.
    let mut late = app.ws("/v1/ops/live", &admin).await.expect("second socket");
    let snap = late.json(5).await;
    assert_eq!(snap["type"], "snapshot");
    let mut fresh = Map::default();
    fresh.apply(&snap);
    assert!(at(fresh.riders.get(&rid), 31.2101, 121.4802, 2), "{snap}");
    assert!(at(fresh.orders.get(&oid), 31.2101, 121.4802, 2), "{snap}");

    let r = app
        .post(
            &format!("/v1/riders/{rid}/orders/{oid}/deliver"),
            &rtoken,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "deliver: {}", r.body);
    map.until(
        &mut sock,
        "the delivered order off the map, the rider idle",
        |m| !m.orders.contains_key(&oid) && at(m.riders.get(&rid), 31.2101, 121.4802, 0),
    )
    .await;
    assert_eq!(map.stats["status"]["delivered"], 1, "{}", map.stats);

    let r = app
        .post(&format!("/v1/riders/{rid}/offline"), &rtoken, None)
        .await;
    assert_eq!(r.status, 200, "offline: {}", r.body);
    map.until(&mut sock, "the offline rider gone", |m| {
        !m.riders.contains_key(&rid)
    })
    .await;
    assert!(map.frames > 3, "deltas, not one snapshot: {}", map.frames);
}

#[actix_rt::test]
async fn orders_opened_before_the_node_started_are_on_the_first_watchers_map() {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    cfg.realtime.ops_interval_ms = 50;
    let app = TestApp::spawn(cfg.clone()).await;
    let (mid, mtoken) = app.merchant_with_stock("dumpling", 5).await;
    let oid = app.accepted_order("bob", &mid, &mtoken, "dumpling").await;
    app.shutdown().await;

    // A new node on the same store: nothing has happened to the order since it started.
    let app = TestApp::spawn(cfg).await;
    let admin = app.token(Role::Admin, "ops");
    let mut sock = app.ws("/v1/ops/live", &admin).await.expect("ops socket");
    let snap = sock.json(5).await;
    let mut map = Map::default();
    map.apply(&snap);
    assert!(
        at(map.orders.get(&oid), 31.23, 121.47, 0),
        "the waiting order is on the map: {snap}"
    );
    assert_eq!(map.stats["status"]["accepted"], 1, "{}", map.stats);
}
