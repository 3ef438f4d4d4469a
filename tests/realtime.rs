//! Websockets against a real node on port 0 with real websocket clients: tracking an order through
//! its whole life, reconnecting mid-flow, the merchant feed taking new orders and accepting them
//! from the socket, refusals at upgrade, heartbeats, and a thousand concurrent trackers.

mod common;

use common::{config, fresh_db, Db, Frame, TestApp};
use serde_json::{json, Value};
use waimai::actors::order_machine::OrderStatus;
use waimai::config::LockBackendKind;
use waimai::domain::{now_ms, Role};
use waimai::realtime::TopicRef;
use waimai::Config;

/// Embedded defaults on a fresh SQLite file, with every rider position forwarded.
async fn rt_config() -> Config {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    cfg.realtime.location_interval_ms = 0;
    cfg.dispatch.retry_ms = 100;
    cfg
}

/// Reads from `sock` until it closes; returns the messages and the close frame.
async fn drain(sock: &mut common::Socket, secs: u64) -> (Vec<Value>, (u16, String)) {
    let mut out = Vec::new();
    loop {
        match sock.next(secs).await {
            Frame::Json(v) => out.push(v),
            Frame::Closed(code, why) => return (out, (code, why)),
            Frame::Timeout => panic!("socket neither sent nor closed; got so far: {out:?}"),
        }
    }
}

/// A new order of one `sku` from a new merchant for `customer`, and the customer's tracking
/// socket on it (not yet read).
async fn order_and_track(app: &TestApp, customer: &str, sku: &str) -> (String, common::Socket) {
    let (mid, _) = app.merchant_with_stock(sku, 10).await;
    let r = app.order(customer, &mid, sku, 1, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let oid = r.body["id"].as_str().expect("id").to_string();
    let sock = track_as(app, customer, &oid).await;
    (oid, sock)
}

/// `customer`'s tracking socket on order `oid` (not yet read).
async fn track_as(app: &TestApp, customer: &str, oid: &str) -> common::Socket {
    app.ws(
        &format!("/v1/orders/{oid}/track"),
        &app.token(Role::Customer, customer),
    )
    .await
    .expect("track")
}

#[actix_rt::test]
async fn tracking_socket_follows_an_order_from_payment_to_completion() {
    let app = TestApp::spawn(rt_config().await).await;
    let (mid, mtoken) = app.merchant_with_stock("dumpling", 10).await;
    let (rid, rtoken) = app.rider_at(31.231, 121.471).await;
    let mut feed = app
        .ws(&format!("/v1/riders/{rid}/feed"), &rtoken)
        .await
        .expect("rider feed");
    assert_eq!(feed.json(5).await["type"], "snapshot");

    let r = app.order("alice", &mid, "dumpling", 2, None).await;
    assert_eq!(r.status, 201);
    let oid = r.body["id"].as_str().expect("id").to_string();
    let ctoken = app.token(Role::Customer, "alice");
    let mut track = app
        .ws(&format!("/v1/orders/{oid}/track"), &ctoken)
        .await
        .expect("track");
    let snap = track.json(5).await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["order"]["status"], "pending_payment");
    assert_eq!(snap["version"], 1);
    for key in ["seq", "ts", "order_id"] {
        assert!(!snap[key].is_null(), "snapshot has {key}: {snap}");
    }

    assert_eq!(
        app.post(&format!("/v1/orders/{oid}/pay"), &ctoken, None)
            .await
            .status,
        200
    );
    let r = app
        .post(
            &format!("/v1/merchants/{mid}/orders/{oid}/accept"),
            &mtoken,
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    // Dispatch offers the accepted order to the only rider, who accepts over REST.
    let offer = feed.expect_type("offer", 5).await;
    assert_eq!(offer["order_id"], oid.as_str());
    let r = app
        .post(
            &format!("/v1/riders/{rid}/offers/{oid}/accept"),
            &rtoken,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "rider_assigned");
    assert_eq!(
        feed.expect_type("assigned", 5).await["order_id"],
        oid.as_str()
    );

    let rpath = format!("/v1/riders/{rid}/orders/{oid}");
    assert_eq!(
        app.post(&format!("{rpath}/pickup"), &rtoken, None)
            .await
            .status,
        200
    );
    for i in 0..3 {
        let at = json!({"lat": 31.23 - 0.01 * f64::from(i), "lng": 121.48});
        assert_eq!(
            app.put(&format!("/v1/riders/{rid}/location"), &rtoken, at)
                .await
                .status,
            200
        );
    }
    assert_eq!(
        app.post(&format!("{rpath}/deliver"), &rtoken, None)
            .await
            .status,
        200
    );
    assert_eq!(
        app.post(&format!("/v1/orders/{oid}/confirm"), &ctoken, None)
            .await
            .status,
        200
    );

    let (msgs, (code, _)) = drain(&mut track, 5).await;
    assert_eq!(code, 1000, "normal close once the order is terminal");
    let statuses: Vec<&str> = msgs
        .iter()
        .filter(|m| m["type"] == "status")
        .map(|m| m["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        [
            "paid",
            "accepted",
            "rider_assigned",
            "picked_up",
            "delivered",
            "completed"
        ],
        "every change once, in order"
    );
    let versions: Vec<i64> = msgs
        .iter()
        .filter(|m| m["type"] == "status")
        .map(|m| m["version"].as_i64().expect("version"))
        .collect();
    assert_eq!(versions, (2..=7).collect::<Vec<_>>());
    let kinds: Vec<&str> = msgs
        .iter()
        .map(|m| m["type"].as_str().expect("type"))
        .collect();
    let picked = msgs
        .iter()
        .position(|m| m["status"] == "picked_up")
        .expect("picked_up");
    let delivered = msgs
        .iter()
        .position(|m| m["status"] == "delivered")
        .expect("delivered");
    let locations: Vec<usize> = kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| **k == "rider_location")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        locations.len(),
        3,
        "every position (no throttle in this test): {kinds:?}"
    );
    assert!(
        locations.iter().all(|i| *i > picked && *i < delivered),
        "{kinds:?}"
    );
    assert_eq!(msgs[locations[0]]["rider_id"], rid.as_str());
    let seqs: Vec<u64> = msgs
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence grows: {seqs:?}"
    );
}

/// A merchant, a rider near it who took the offer for `customer`'s order of `sku`, and the
/// customer's tracking socket on that order: (rider id, rider token, order id, socket).
async fn carried_and_tracked(
    app: &TestApp,
    customer: &str,
    sku: &str,
) -> (String, String, String, common::Socket) {
    let (mid, mtoken) = app.merchant_with_stock(sku, 10).await;
    let (rid, rtoken) = app.rider_at(31.231, 121.471).await;
    let oid = app.accepted_order(customer, &mid, &mtoken, sku).await;
    app.wait_offer(&rid, &rtoken, &oid).await;
    let r = app
        .post(
            &format!("/v1/riders/{rid}/offers/{oid}/accept"),
            &rtoken,
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let track = track_as(app, customer, &oid).await;
    (rid, rtoken, oid, track)
}

/// The rider reports five positions in quick succession: latitude 31.200, 31.201, .. 31.204.
async fn five_positions(app: &TestApp, rid: &str, rtoken: &str) {
    for i in 0..5 {
        let at = json!({"lat": 31.2 + 0.001 * f64::from(i), "lng": 121.48});
        assert_eq!(
            app.put(&format!("/v1/riders/{rid}/location"), rtoken, at)
                .await
                .status,
            200
        );
    }
}

/// The latitudes of the `rider_location` events `track` gets, up to the last of
/// `five_positions` (31.204).
async fn latitudes_until_the_last(track: &mut common::Socket) -> Vec<f64> {
    let mut lats = Vec::new();
    loop {
        let m = track.json(10).await;
        if m["type"] == "rider_location" {
            let lat = m["lat"].as_f64().expect("lat");
            lats.push(lat);
            if (lat - 31.204).abs() < 1e-9 {
                return lats;
            }
        }
    }
}

#[actix_rt::test]
async fn rider_positions_reach_trackers_at_the_configured_rate() {
    let mut cfg = rt_config().await;
    cfg.realtime.location_interval_ms = 60_000;
    let app = TestApp::spawn(cfg).await;
    let (rid, rtoken, oid, mut track) = carried_and_tracked(&app, "zed", "dumpling").await;
    let rpath = format!("/v1/riders/{rid}/orders/{oid}");
    assert_eq!(
        app.post(&format!("{rpath}/pickup"), &rtoken, None)
            .await
            .status,
        200
    );
    five_positions(&app, &rid, &rtoken).await;
    assert_eq!(
        app.post(&format!("{rpath}/deliver"), &rtoken, None)
            .await
            .status,
        200
    );
    let mut locations = 0;
    loop {
        let m = track.json(5).await;
        if m["type"] == "rider_location" {
            locations += 1;
        }
        if m["status"] == "delivered" {
            break;
        }
    }
    assert_eq!(
        locations, 1,
        "5 positions within one interval give one event"
    );
}

#[actix_rt::test]
async fn the_last_position_inside_a_throttle_interval_still_reaches_trackers() {
    let mut cfg = rt_config().await;
    cfg.realtime.location_interval_ms = 300;
    let app = TestApp::spawn(cfg).await;
    let (rid, rtoken, _oid, mut track) = carried_and_tracked(&app, "yan", "bao").await;
    assert_eq!(track.json(5).await["type"], "snapshot");
    five_positions(&app, &rid, &rtoken).await;
    // The first position goes out at once; the ones inside the interval are folded into one
    // push of the latest, when the interval ends. (On a slow machine the PUTs may span more
    // than one interval and an intermediate position may go out too; the last one must.)
    let lats = latitudes_until_the_last(&mut track).await;
    assert!((lats[0] - 31.2).abs() < 1e-9, "{lats:?}");
    // (Folding itself is asserted with a long interval in
    // rider_positions_reach_trackers_at_the_configured_rate.)
}

#[actix_rt::test]
async fn a_burst_of_positions_on_the_rider_socket_reaches_the_rider_as_its_first_and_its_newest() {
    // Trackers see every position the rider takes (interval 0), so they show what the socket
    // passed on.
    let mut cfg = rt_config().await;
    cfg.realtime.location_hold_ms = 2_000;
    let app = TestApp::spawn(cfg).await;
    let (rid, rtoken, _oid, mut track) = carried_and_tracked(&app, "wu", "bao").await;
    assert_eq!(track.json(5).await["type"], "snapshot");
    let mut feed = app
        .ws(&format!("/v1/riders/{rid}/feed"), &rtoken)
        .await
        .expect("rider feed");
    for i in 0..5 {
        feed.send(json!({"type": "location", "lat": 31.2 + 0.001 * f64::from(i), "lng": 121.48}))
            .await;
    }
    // The first goes on at once; the three after it are replaced by the newest, which goes
    // when the hold ends (five local sends take far less than its two seconds).
    let lats = latitudes_until_the_last(&mut track).await;
    assert_eq!(lats.len(), 2, "{lats:?}");
    assert!((lats[0] - 31.2).abs() < 1e-9, "{lats:?}");
    let r = app.get(&format!("/v1/riders/{rid}"), &app.admin).await;
    assert_eq!(r.body["location"]["lat"], 31.204);
    // An invalid position is refused at once, not held.
    feed.send(json!({"type": "location", "lat": 123.0, "lng": 0.0}))
        .await;
    assert_eq!(feed.expect_type("error", 5).await["code"], "invalid_body");
}

#[actix_rt::test]
async fn a_position_held_when_the_rider_socket_closes_still_reaches_the_rider() {
    let mut cfg = rt_config().await;
    cfg.realtime.location_hold_ms = 60_000;
    let app = TestApp::spawn(cfg).await;
    let (rid, rtoken) = app.rider_at(31.231, 121.471).await;
    let mut feed = app
        .ws(&format!("/v1/riders/{rid}/feed"), &rtoken)
        .await
        .expect("rider feed");
    for lat in [31.2, 31.21] {
        feed.send(json!({"type": "location", "lat": lat, "lng": 121.48}))
            .await;
    }
    let path = format!("/v1/riders/{rid}");
    let lat = || async { app.get(&path, &app.admin).await.body["location"]["lat"].clone() };
    // The first goes on at once; the second is held (for a minute).
    let mut last = Value::Null;
    for _ in 0..100 {
        last = lat().await;
        if last != json!(31.231) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        last,
        json!(31.2),
        "the first position, and only it, went on"
    );
    drop(feed);
    for _ in 0..100 {
        last = lat().await;
        if last == json!(31.21) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the held position never reached the rider (last seen: {last})");
}

#[actix_rt::test]
async fn a_reconnecting_tracker_misses_nothing_and_sees_nothing_twice() {
    let app = TestApp::spawn(rt_config().await).await;
    let (mid, mtoken) = app.merchant_with_stock("dumpling", 10).await;
    let r = app.order("bob", &mid, "dumpling", 1, None).await;
    let oid = r.body["id"].as_str().expect("id").to_string();
    let ctoken = app.token(Role::Customer, "bob");
    let path = format!("/v1/orders/{oid}/track");

    let mut first = app.ws(&path, &ctoken).await.expect("track");
    let mut seen = vec![first.json(5).await["version"].as_i64().expect("v")];
    assert_eq!(
        app.post(&format!("/v1/orders/{oid}/pay"), &ctoken, None)
            .await
            .status,
        200
    );
    seen.push(
        first.expect_type("status", 5).await["version"]
            .as_i64()
            .expect("v"),
    );
    drop(first);

    // Changes while nobody watches, and one racing the reconnection.
    let accept_path = format!("/v1/merchants/{mid}/orders/{oid}/accept");
    let accept = app.post(&accept_path, &mtoken, None);
    let (r, second) = tokio::join!(accept, app.ws(&path, &ctoken));
    assert_eq!(r.status, 200);
    let mut second = second.expect("track again");
    let snap = second.json(5).await;
    assert_eq!(snap["type"], "snapshot");
    let snap_v = snap["version"].as_i64().expect("v");
    assert!(snap_v >= 2);
    let (rid, rtoken) = app.rider_at(31.231, 121.471).await;
    app.wait_offer(&rid, &rtoken, &oid).await;
    let r = app
        .post(
            &format!("/v1/riders/{rid}/offers/{oid}/accept"),
            &rtoken,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut later = Vec::new();
    while later.last().copied() != Some(4) {
        let m = second.expect_type("status", 5).await;
        later.push(m["version"].as_i64().expect("v"));
    }
    // First socket: 1, 2. Second: its snapshot, then every later version exactly once.
    assert_eq!(seen, [1, 2]);
    let expected: Vec<i64> = (snap_v + 1..=4).collect();
    assert_eq!(later, expected, "after snapshot v{snap_v}");
}

#[actix_rt::test]
async fn the_merchant_feed_gets_paid_orders_and_accepts_them_from_the_socket() {
    let app = TestApp::spawn(rt_config().await).await;
    let (mid, mtoken) = app.merchant_with_stock("noodles", 10).await;
    let mut feed = app
        .ws(&format!("/v1/merchants/{mid}/feed"), &mtoken)
        .await
        .expect("merchant feed");
    let snap = feed.json(5).await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["orders"], json!([]));

    let r = app.order("carol", &mid, "noodles", 3, None).await;
    let oid = r.body["id"].as_str().expect("id").to_string();
    let ctoken = app.token(Role::Customer, "carol");
    assert_eq!(
        app.post(&format!("/v1/orders/{oid}/pay"), &ctoken, None)
            .await
            .status,
        200
    );
    let new = feed.json(5).await;
    assert_eq!(
        new["type"], "new_order",
        "unpaid orders are not announced: {new}"
    );
    assert_eq!(new["order_id"], oid.as_str());
    assert_eq!(new["order"]["items"][0]["qty"], 3);

    feed.send(json!({"type": "accept", "order_id": oid})).await;
    let mut got_ack = false;
    let mut got_update = false;
    while !(got_ack && got_update) {
        let m = feed.json(5).await;
        match m["type"].as_str() {
            Some("ack") => {
                assert_eq!(m["status"], "accepted");
                got_ack = true;
            }
            Some("order_updated") => {
                assert_eq!(m["status"], "accepted");
                got_update = true;
            }
            _ => panic!("unexpected {m}"),
        }
    }
    assert_eq!(app.status_of(&oid).await, "accepted");

    // A bad command gets an error on the socket, which stays open.
    feed.send(json!({"type": "accept", "order_id": "no-such-order"}))
        .await;
    let e = feed.json(5).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "not_found");
    feed.send(json!({"type": "teleport"})).await;
    assert_eq!(feed.json(5).await["code"], "invalid_body");

    // A customer cancelling shows up as order_cancelled; a late joiner's snapshot has the rest.
    let r2 = app.order("dave", &mid, "noodles", 1, None).await;
    let o2 = r2.body["id"].as_str().expect("id").to_string();
    let dtoken = app.token(Role::Customer, "dave");
    assert_eq!(
        app.post(&format!("/v1/orders/{o2}/pay"), &dtoken, None)
            .await
            .status,
        200
    );
    assert_eq!(
        feed.expect_type("new_order", 5).await["order_id"],
        o2.as_str()
    );
    assert_eq!(
        app.post(&format!("/v1/orders/{o2}/cancel"), &dtoken, None)
            .await
            .status,
        200
    );
    let c = feed.expect_type("order_cancelled", 5).await;
    assert_eq!(c["order_id"], o2.as_str());
    let mut late = app
        .ws(&format!("/v1/merchants/{mid}/feed"), &mtoken)
        .await
        .expect("late feed");
    let snap = late.json(5).await;
    let ids: Vec<&str> = snap["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [oid.as_str()], "only the open order");
}

#[actix_rt::test]
async fn a_burst_of_accepts_on_one_socket_is_answered_in_order_while_events_keep_flowing() {
    let app = TestApp::spawn(rt_config().await).await;
    let (mid, mtoken) = app.merchant_with_stock("dumplings", 100).await;
    let mut paid = Vec::new();
    for i in 0..30 {
        let customer = format!("burst-{i}");
        let r = app.order(&customer, &mid, "dumplings", 1, None).await;
        let oid = r.body["id"].as_str().expect("id").to_string();
        let token = app.token(Role::Customer, &customer);
        assert_eq!(
            app.post(&format!("/v1/orders/{oid}/pay"), &token, None)
                .await
                .status,
            200
        );
        paid.push(oid);
    }
    let mut feed = app
        .ws(&format!("/v1/merchants/{mid}/feed"), &mtoken)
        .await
        .expect("merchant feed");
    let snap = feed.json(5).await;
    assert_eq!(snap["orders"].as_array().map(Vec::len), Some(30));
    // Every accept is sent before any answer is read: the socket must take them all, run them
    // side by side, and answer each once, in the order they were sent.
    for oid in &paid {
        feed.send(json!({"type": "accept", "order_id": oid})).await;
    }
    let mut acks = Vec::new();
    let mut updates = 0;
    while acks.len() < paid.len() || updates < paid.len() {
        let m = feed.json(10).await;
        match m["type"].as_str() {
            Some("ack") => {
                assert_eq!(m["status"], "accepted", "{m}");
                acks.push(m["order_id"].as_str().expect("order_id").to_string());
            }
            Some("order_updated") => updates += 1,
            _ => panic!("unexpected {m}"),
        }
    }
    assert_eq!(acks, paid, "one ack per accept, in the order sent");
    for oid in &paid {
        assert_eq!(app.status_of(oid).await, "accepted");
    }
}

#[actix_rt::test]
async fn sockets_refuse_strangers_at_upgrade() {
    let app = TestApp::spawn(rt_config().await).await;
    let (mid, _mtoken) = app.merchant_with_stock("rice", 10).await;
    let r = app.order("erin", &mid, "rice", 1, None).await;
    let oid = r.body["id"].as_str().expect("id").to_string();
    let path = format!("/v1/orders/{oid}/track");
    let mallory = app.token(Role::Customer, "mallory");
    assert_eq!(
        app.ws(&path, &mallory).await.err(),
        Some(404),
        "another customer's order"
    );
    assert_eq!(app.ws(&path, "garbage").await.err(), Some(401));
    let other_merchant = app.token(Role::Merchant, "someone-else");
    assert_eq!(
        app.ws(&format!("/v1/merchants/{mid}/feed"), &other_merchant)
            .await
            .err(),
        Some(403)
    );
    let rider = app.token(Role::Rider, "r1");
    assert_eq!(app.ws("/v1/riders/r2/feed", &rider).await.err(), Some(403));
    assert_eq!(
        app.ws("/v1/orders/nope/track", &app.admin).await.err(),
        Some(404)
    );
    // The owner, its merchant and an admin get in.
    let erin = app.token(Role::Customer, "erin");
    assert!(app.ws(&path, &erin).await.is_ok());
    assert!(app
        .ws(&path, &app.token(Role::Merchant, &mid))
        .await
        .is_ok());
    assert!(app.ws(&path, &app.admin).await.is_ok());
}

#[actix_rt::test]
async fn a_silent_client_is_dropped_after_two_heartbeats() {
    let mut cfg = rt_config().await;
    cfg.realtime.heartbeat_ms = 100;
    let app = TestApp::spawn(cfg).await;
    let (_, mut sock) = order_and_track(&app, "fay", "tea").await;
    // Not reading means not answering pings.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let (_, (code, why)) = drain(&mut sock, 5).await;
    assert_eq!(code, 1013);
    assert!(why.contains("heartbeat"), "{why}");
}

/// A burst of events queued on one socket at once: the tracker gets each once and in order,
/// skips repeats and what its snapshot covered, and closes right after the terminal status
/// even with more events queued behind it.
#[actix_rt::test]
async fn a_burst_of_queued_events_reaches_a_tracker_once_each_and_in_order() {
    let app = TestApp::spawn(rt_config().await).await;
    let (oid, mut track) = order_and_track(&app, "bursty", "dumpling").await;
    let v0 = track.json(5).await["version"].as_i64().expect("version");
    // Published with no await in between, so the socket's task finds them all queued: each
    // version twice, then one older than the snapshot, the terminal one, and one after it.
    let publish = |v: i64, status: OrderStatus| {
        app.node.hub.publish(
            TopicRef::Order(&oid),
            "status",
            Some((oid.as_str(), Some(v), Some(status))),
            || json!({"order_id": oid, "version": v, "status": status}),
        )
    };
    for v in v0 + 1..=v0 + 100 {
        publish(v, OrderStatus::PendingPayment);
        publish(v, OrderStatus::PendingPayment);
    }
    publish(v0, OrderStatus::PendingPayment);
    publish(v0 + 101, OrderStatus::Cancelled);
    publish(v0 + 102, OrderStatus::PendingPayment);
    let (got, close) = drain(&mut track, 10).await;
    let versions: Vec<i64> = got
        .iter()
        .map(|m| m["version"].as_i64().expect("version"))
        .collect();
    assert_eq!(versions, (v0 + 1..=v0 + 101).collect::<Vec<_>>());
    assert_eq!(close, (1000, "order is cancelled".to_string()));
}

#[actix_rt::test]
async fn a_thousand_tracking_sockets_all_get_their_events() {
    const N: usize = 1000;
    let app = std::sync::Arc::new(TestApp::spawn(rt_config().await).await);
    let (mid, _) = app.merchant_with_stock("bun", 100_000).await;
    let mut creates = Vec::new();
    for i in 0..N {
        let app = app.clone();
        let mid = mid.clone();
        creates.push(tokio::spawn(async move {
            let c = format!("cust{i}");
            let r = app.order(&c, &mid, "bun", 1, None).await;
            assert_eq!(r.status, 201, "{}", r.body);
            (c, r.body["id"].as_str().expect("id").to_string())
        }));
    }
    let mut orders = Vec::new();
    for t in creates {
        orders.push(t.await.expect("create"));
    }
    let mut socks = Vec::new();
    for (c, oid) in &orders {
        let mut s = app
            .ws(
                &format!("/v1/orders/{oid}/track"),
                &app.token(Role::Customer, c),
            )
            .await
            .expect("track");
        assert_eq!(s.json(10).await["type"], "snapshot");
        socks.push(s);
    }
    let open = waimai::metrics::WS_OPEN.with_label_values(&["track"]).get();
    assert!(open >= N as i64, "{open} sockets open");
    // Every socket reads on its own task, so client-side latency is not serialised by the test.
    let readers: Vec<_> = socks
        .into_iter()
        .zip(orders.clone())
        .map(|(mut s, (_, oid))| {
            tokio::spawn(async move {
                let m = s.expect_type("status", 20).await;
                assert_eq!(m["order_id"], oid.as_str());
                assert_eq!(m["status"], "paid");
                now_ms() - m["ts"].as_i64().expect("ts")
            })
        })
        .collect();
    let mut pays = Vec::new();
    for (c, oid) in orders.clone() {
        let app = app.clone();
        pays.push(tokio::spawn(async move {
            let r = app
                .post(
                    &format!("/v1/orders/{oid}/pay"),
                    &app.token(Role::Customer, &c),
                    None,
                )
                .await;
            // 202: the provider's callback came after `pay_wait_ms` (a thousand at once on a
            // loaded machine); the order is paid all the same, and the sockets must see it.
            assert!(r.status == 200 || r.status == 202, "pay: {}", r.body);
        }));
    }
    for p in pays {
        p.await.expect("pay");
    }
    let mut lat_ms = Vec::with_capacity(N);
    for r in readers {
        lat_ms.push(r.await.expect("reader"));
    }
    lat_ms.sort_unstable();
    let h = &waimai::metrics::WS_EVENT_SECONDS;
    println!(
        "{N} tracking sockets, {N} payments at once: event -> client (ms) p50 {} p99 {} max {}; \
         server publish -> socket write mean {:.3} ms over {} events",
        lat_ms[N / 2],
        lat_ms[N * 99 / 100],
        lat_ms[N - 1],
        h.get_sample_sum() * 1000.0 / h.get_sample_count().max(1) as f64,
        h.get_sample_count()
    );
}
