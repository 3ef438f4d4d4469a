//! Automatic dispatch against a real node: the nearest idle rider gets the offer, declines and
//! expiries move it on and are not asked again, every unanswered offer expires on time (and an
//! answered one never does), two orders never hold one rider, an order with no rider waits until
//! one comes online, and a released order goes back into dispatch.

mod common;

use common::{config, fresh_db, Db, Frame, Socket, TestApp};
use waimai::config::LockBackendKind;
use waimai::domain::Role;
use waimai::Config;

/// The merchant from `merchant_with_stock` stands at (31.23, 121.47).
const M_LAT: f64 = 31.23;
const M_LNG: f64 = 121.47;

async fn dispatch_config(offer_ttl_ms: u64) -> Config {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    cfg.dispatch.offer_ttl_ms = offer_ttl_ms;
    cfg.dispatch.retry_ms = 100;
    cfg.dispatch.settings.max_radius_m = 5_000.0;
    cfg
}

/// A rider `metres_north` of the merchant, online, with its feed open from before it went
/// online (so no offer can slip past it).
async fn rider(app: &TestApp, metres_north: f64) -> (String, String, Socket) {
    app.rider_with_feed(M_LAT + metres_north / 111_320.0, M_LNG)
        .await
}

/// True when `feed` receives nothing but pings for `ms`.
async fn quiet(feed: &mut Socket, ms: u64) -> bool {
    match tokio::time::timeout(std::time::Duration::from_millis(ms), feed.next(60)).await {
        Err(_) => true,
        Ok(Frame::Timeout) => true,
        Ok(other) => {
            println!("unexpected: {other:?}");
            false
        }
    }
}

#[actix_rt::test]
async fn the_nearest_idle_rider_is_offered_first_and_declines_and_expiry_move_on() {
    let app = TestApp::spawn(dispatch_config(400).await).await;
    let (mid, mtoken) = app.merchant_with_stock("bao", 100).await;
    let (_far, _far_t, mut far_feed) = rider(&app, 3_000.0).await;
    let (near, near_t, mut near_feed) = rider(&app, 500.0).await;
    let (_busy, busy_t, mut busy_feed) = rider(&app, 100.0).await;
    let (_outside, _, mut outside_feed) = rider(&app, 8_000.0).await;

    // The nearest rider takes a first order, so it is busy for the second.
    let first = app.accepted_order("c0", &mid, &mtoken, "bao").await;
    let offer = busy_feed.expect_type("offer", 5).await;
    assert_eq!(offer["order_id"], first.as_str());
    assert_eq!(offer["distance_m"], 100.0);
    let r = app
        .post(
            &format!("/v1/riders/{_busy}/offers/{first}/accept"),
            &busy_t,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let oid = app.accepted_order("c1", &mid, &mtoken, "bao").await;
    let offer = near_feed.expect_type("offer", 5).await;
    assert_eq!(offer["order_id"], oid.as_str(), "nearest idle rider first");
    assert!(offer["expires_at"].as_i64().is_some() && offer["pickup"]["lat"] == M_LAT);
    assert!(quiet(&mut far_feed, 100).await, "one offer at a time");

    // Declining over the socket moves the offer to the next nearest.
    near_feed
        .send(serde_json::json!({"type": "decline", "order_id": oid}))
        .await;
    // The ack and the withdrawal may come in either order.
    let mut got = std::collections::HashMap::new();
    while got.len() < 2 {
        let m = near_feed.json(5).await;
        got.insert(m["type"].as_str().expect("type").to_string(), m);
    }
    assert_eq!(got["offer_withdrawn"]["reason"], "declined");
    assert_eq!(got["ack"]["order_id"], oid.as_str());
    assert_eq!(
        far_feed.expect_type("offer", 5).await["order_id"],
        oid.as_str()
    );

    // The far rider lets it expire; the near rider declined already and is not asked again,
    // and the rider outside the radius never is.
    let w = far_feed.expect_type("offer_withdrawn", 5).await;
    assert_eq!(w["reason"], "expired");
    assert!(
        quiet(&mut near_feed, 600).await,
        "a rider who declined is not asked again"
    );
    assert!(quiet(&mut outside_feed, 10).await);
    assert_eq!(app.status_of(&oid).await, "accepted", "the order waits");
    let r = app
        .post(
            &format!("/v1/riders/{near}/offers/{oid}/accept"),
            &near_t,
            None,
        )
        .await;
    assert_eq!(r.status, 409, "no open offer: {}", r.body);

    // A new rider in range gets it.
    let (fresh, fresh_t, mut fresh_feed) = rider(&app, 2_000.0).await;
    assert_eq!(
        fresh_feed.expect_type("offer", 5).await["order_id"],
        oid.as_str()
    );
    fresh_feed
        .send(serde_json::json!({"type": "accept", "order_id": oid}))
        .await;
    assert_eq!(
        fresh_feed.expect_type("ack", 5).await["status"],
        "rider_assigned"
    );
    let o = app.get(&format!("/v1/orders/{oid}"), &app.admin).await;
    assert_eq!(o.body["rider_id"], fresh.as_str());
    drop(fresh_t);
}

/// A zone serves all its offers' expiries with one timer. An offer answered early leaves its
/// deadline queued: when it comes it must withdraw nothing, and the later expiries must still
/// come, each no earlier than the `expires_at` its rider was shown; two offers out at once
/// both expire.
#[actix_rt::test]
async fn every_unanswered_offer_expires_on_time_and_an_answered_one_never_does() {
    let app = TestApp::spawn(dispatch_config(400).await).await;
    let (mid, mtoken) = app.merchant_with_stock("bao", 100).await;
    let (a, a_t, mut a_feed) = rider(&app, 100.0).await;
    let (b, _b_t, mut b_feed) = rider(&app, 1_000.0).await;
    let (c, _c_t, mut c_feed) = rider(&app, 2_000.0).await;

    let first = app.accepted_order("c0", &mid, &mtoken, "bao").await;
    assert_eq!(
        a_feed.expect_type("offer", 5).await["order_id"],
        first.as_str()
    );
    let r = app
        .post(&format!("/v1/riders/{a}/offers/{first}/accept"), &a_t, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let second = app.accepted_order("c1", &mid, &mtoken, "bao").await;
    let third = app.accepted_order("c2", &mid, &mtoken, "bao").await;
    let b_offer = b_feed.expect_type("offer", 5).await;
    let c_offer = c_feed.expect_type("offer", 5).await;
    let mut offered = vec![
        b_offer["order_id"].as_str().expect("order id").to_string(),
        c_offer["order_id"].as_str().expect("order id").to_string(),
    ];
    offered.sort();
    let mut orders = vec![second.clone(), third.clone()];
    orders.sort();
    assert_eq!(offered, orders, "one offer each to {b} and {c}");

    for (feed, offer) in [(&mut b_feed, &b_offer), (&mut c_feed, &c_offer)] {
        let w = feed.expect_type("offer_withdrawn", 5).await;
        let seen = waimai::domain::now_ms();
        assert_eq!(w["reason"], "expired");
        assert_eq!(w["order_id"], offer["order_id"]);
        let expires_at = offer["expires_at"].as_i64().expect("expires_at");
        assert!(
            seen + 50 >= expires_at,
            "withdrawn at {seen}, before the offer's expires_at {expires_at}"
        );
    }
    // The accepted offer's deadline (400 ms after it was made) has passed by now; its rider
    // was told of the assignment and of nothing withdrawn.
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
    while let Ok(frame) = tokio::time::timeout_at(until, a_feed.next(60)).await {
        match frame {
            Frame::Json(v) => assert_ne!(v["type"], "offer_withdrawn", "{v}"),
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(app.status_of(&first).await, "rider_assigned");
}

#[actix_rt::test]
async fn two_orders_never_get_the_same_rider() {
    const RIDERS: usize = 5;
    const ORDERS: usize = 12;
    let app = std::sync::Arc::new(TestApp::spawn(dispatch_config(5_000).await).await);
    let (mid, mtoken) = app.merchant_with_stock("bao", 100).await;
    // Riders accept every offer they see, from their own tasks.
    let mut riders = Vec::new();
    for i in 0..RIDERS {
        let (rid, token, mut feed) = rider(&app, 200.0 * (i as f64 + 1.0)).await;
        riders.push(rid.clone());
        tokio::spawn(async move {
            loop {
                match feed.next(30).await {
                    Frame::Json(m) if m["type"] == "offer" => {
                        feed.send(serde_json::json!({"type": "accept", "order_id": m["order_id"]}))
                            .await
                    }
                    Frame::Json(_) => {}
                    _ => break,
                }
            }
            drop(token);
        });
    }
    let mut placing = Vec::new();
    for i in 0..ORDERS {
        let (app, mid, mtoken) = (app.clone(), mid.clone(), mtoken.clone());
        placing.push(tokio::spawn(async move {
            app.accepted_order(&format!("c{i}"), &mid, &mtoken, "bao")
                .await
        }));
    }
    let mut orders = Vec::new();
    for p in placing {
        orders.push(p.await.expect("order"));
    }
    // Wait until every rider is busy.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let assigned = loop {
        let mut assigned = Vec::new();
        for o in &orders {
            let r = app.get(&format!("/v1/orders/{o}"), &app.admin).await;
            if r.body["status"] == "rider_assigned" {
                assigned.push(r.body["rider_id"].as_str().expect("rider").to_string());
            }
        }
        if assigned.len() >= RIDERS || std::time::Instant::now() > deadline {
            break assigned;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut distinct = assigned.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(assigned.len(), RIDERS, "every rider got exactly one order");
    assert_eq!(
        distinct.len(),
        RIDERS,
        "no rider holds two orders: {assigned:?}"
    );
    for rid in &riders {
        let r = app.get(&format!("/v1/riders/{rid}"), &app.admin).await;
        assert!(r.body["current_order"].is_string(), "{}", r.body);
    }

    // One rider finishes; a waiting order goes to it.
    let mut found = None;
    for o in &orders {
        let r = app.get(&format!("/v1/orders/{o}"), &app.admin).await;
        if r.body["status"] == "rider_assigned" {
            found = Some((
                o.clone(),
                r.body["rider_id"].as_str().expect("r").to_string(),
            ));
            break;
        }
    }
    let (done, rid) = found.expect("an assigned order");
    let rt = app.token(Role::Rider, &rid);
    for step in ["pickup", "deliver"] {
        let r = app
            .post(&format!("/v1/riders/{rid}/orders/{done}/{step}"), &rt, None)
            .await;
        assert_eq!(r.status, 200, "{step}: {}", r.body);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = app.get(&format!("/v1/riders/{rid}"), &app.admin).await;
        if let Some(o) = r.body["current_order"].as_str() {
            assert_ne!(o, done);
            assert!(orders.contains(&o.to_string()));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "freed rider got no new order"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn an_order_with_no_rider_waits_and_a_release_puts_it_back() {
    let app = TestApp::spawn(dispatch_config(5_000).await).await;
    let (mid, mtoken) = app.merchant_with_stock("bao", 100).await;
    let oid = app.accepted_order("c1", &mid, &mtoken, "bao").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.status_of(&oid).await, "accepted");

    let (a, a_t, mut a_feed) = rider(&app, 1_000.0).await;
    let offer = a_feed.expect_type("offer", 5).await;
    assert_eq!(offer["order_id"], oid.as_str());
    let r = app
        .post(&format!("/v1/riders/{a}/offers/{oid}/accept"), &a_t, None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        a_feed.expect_type("assigned", 5).await["order_id"],
        oid.as_str()
    );

    // The rider gives it back: dispatch offers it to someone else, never to them again.
    let (b, _b_t, mut b_feed) = rider(&app, 1_500.0).await;
    let r = app
        .post(&format!("/v1/riders/{a}/orders/{oid}/release"), &a_t, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        b_feed.expect_type("offer", 5).await["order_id"],
        oid.as_str()
    );
    let r = app
        .post(&format!("/v1/riders/{a}/offers/{oid}/accept"), &a_t, None)
        .await;
    assert_eq!(r.status, 409, "the releasing rider holds no offer");
    let r = app
        .post(
            &format!("/v1/riders/{b}/offers/{oid}/decline"),
            &app.token(Role::Rider, "someone"),
            None,
        )
        .await;
    assert_eq!(r.status, 403, "only the offered rider answers");
    // A customer cancelling withdraws the offer.
    let ct = app.token(Role::Customer, "c1");
    assert_eq!(
        app.post(&format!("/v1/orders/{oid}/cancel"), &ct, None)
            .await
            .status,
        200
    );
    let w = b_feed.expect_type("offer_withdrawn", 5).await;
    assert_eq!(w["order_id"], oid.as_str());
}

#[actix_rt::test]
async fn the_index_follows_positions_streamed_on_the_rider_socket() {
    let app = TestApp::spawn(dispatch_config(5_000).await).await;
    let (mid, mtoken) = app.merchant_with_stock("bao", 100).await;
    let (rid, _t, mut feed) = rider(&app, 8_000.0).await;
    let oid = app.accepted_order("c1", &mid, &mtoken, "bao").await;
    assert!(
        quiet(&mut feed, 400).await,
        "8 km is outside the 5 km radius"
    );
    feed.send(serde_json::json!({"type": "location", "lat": M_LAT + 0.009, "lng": M_LNG}))
        .await;
    let offer = feed.expect_type("offer", 5).await;
    assert_eq!(offer["order_id"], oid.as_str());
    let d = offer["distance_m"].as_f64().expect("distance");
    assert!((990.0..=1010.0).contains(&d), "about 1 km now: {d}");
    let r = app.get(&format!("/v1/riders/{rid}"), &app.admin).await;
    assert_eq!(r.body["location"]["lat"], M_LAT + 0.009);
    feed.send(serde_json::json!({"type": "location", "lat": 123.0, "lng": 0.0}))
        .await;
    assert_eq!(feed.expect_type("error", 5).await["code"], "invalid_body");
}
