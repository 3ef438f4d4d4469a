//! The live dispatcher runs the configured policy (`dispatch.policy`) in rounds, against a real
//! node: `batch` pairs two orders and two riders optimally where `greedy` pairs them badly, a
//! rider who declined is never offered that order again, `stacked` offers a second order to a
//! rider already carrying one with the route of all four stops, and a whole order lifecycle
//! works under every policy.

mod common;

use common::{config, fresh_db, Db, Frame, Socket, TestApp};
use serde_json::{json, Value};
use waimai::config::LockBackendKind;
use waimai::dispatch::PolicyKind;
use waimai::Config;

/// Where the first merchant stands; everything else is placed relative to it.
const M_LAT: f64 = 31.23;
const M_LNG: f64 = 121.47;
/// Metres per degree of latitude (near enough for placing test points).
const M_PER_DEG: f64 = 111_320.0;

async fn policy_config(policy: PolicyKind, batch_ms: u64) -> Config {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    cfg.dispatch.settings.policy = policy;
    cfg.dispatch.settings.batch_ms = batch_ms;
    cfg.dispatch.offer_ttl_ms = 30_000;
    cfg.dispatch.retry_ms = 100;
    cfg.dispatch.settings.max_radius_m = 5_000.0;
    cfg.dispatch.prep_ms = 0;
    cfg
}

/// An open merchant `metres_north` of the first merchant's spot (and `lng_offset` degrees
/// east), with 100 units of `bao`; returns (merchant id, token).
async fn merchant_at(app: &TestApp, metres_north: f64, lng_offset: f64) -> (String, String) {
    let (lat, lng) = (M_LAT + metres_north / M_PER_DEG, M_LNG + lng_offset);
    app.merchant_at("bao", 100, lat, lng).await
}

/// A rider online `metres_north` of the first merchant's spot (and `lng_offset` degrees east),
/// with its feed open from before it went online.
async fn rider(app: &TestApp, metres_north: f64, lng_offset: f64) -> (String, String, Socket) {
    app.rider_with_feed(M_LAT + metres_north / M_PER_DEG, M_LNG + lng_offset)
        .await
}

/// Moves rider `rid` to `metres_north` of the first merchant's spot.
async fn move_to(app: &TestApp, rid: &str, token: &str, metres_north: f64) {
    let r = app
        .put(
            &format!("/v1/riders/{rid}/location"),
            token,
            json!({"lat": M_LAT + metres_north / M_PER_DEG, "lng": M_LNG}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// True when `feed` receives nothing but pings for `ms`.
async fn quiet(feed: &mut Socket, ms: u64) -> bool {
    match tokio::time::timeout(std::time::Duration::from_millis(ms), feed.next(60)).await {
        Err(_) | Ok(Frame::Timeout) => true,
        Ok(other) => {
            println!("unexpected: {other:?}");
            false
        }
    }
}

/// Two orders (A at the first merchant's spot, older; B 2 km north of it) and two riders
/// (R1 900 m north of A, R2 1.2 km south of it) who reach the zone one after the other,
/// within one `batch` round. Returns the order each rider was offered (R1's, R2's) and the
/// ids (A, B).
///
/// Oldest order first to its nearest rider gives A to R1 and B to R2 (4.1 km of pickup
/// rides); the optimum gives A to R2 and B to R1 (2.3 km).
async fn pairing(policy: PolicyKind) -> ((String, String), (String, String)) {
    let app = TestApp::spawn(policy_config(policy, 2_000).await).await;
    let (ma, ma_t) = merchant_at(&app, 0.0, 0.0).await;
    let (mb, mb_t) = merchant_at(&app, 2_000.0, 0.0).await;
    // A probe far east (about 95 km) shows when a round has just run.
    let (mp, mp_t) = merchant_at(&app, 0.0, 1.0).await;
    // R1 and R2 start far north, out of every order's reach.
    let (r1, r1_t, mut r1_feed) = rider(&app, 60_000.0, 0.0).await;
    let (r2, r2_t, mut r2_feed) = rider(&app, 60_000.0, 0.0).await;
    let a = app.accepted_order("ca", &ma, &ma_t, "bao").await;
    let b = app.accepted_order("cb", &mb, &mb_t, "bao").await;
    let probe = app.accepted_order("cp", &mp, &mp_t, "bao").await;
    let (_rp, _rp_t, mut rp_feed) = rider(&app, 0.0, 1.0).await;
    assert_eq!(rp_feed.expect_type("offer", 10).await["order_id"], probe);
    // A round just ran (the probe's offer came from it): the next is `batch_ms` away.
    move_to(&app, &r1, &r1_t, 900.0).await;
    move_to(&app, &r2, &r2_t, -1_200.0).await;
    let to_r1 = r1_feed.expect_type("offer", 10).await;
    let to_r2 = r2_feed.expect_type("offer", 10).await;
    let got = |v: &Value| v["order_id"].as_str().expect("order id").to_string();
    ((got(&to_r1), got(&to_r2)), (a, b))
}

#[actix_rt::test]
async fn batch_pairs_two_orders_optimally_where_greedy_pairs_them_badly() {
    let ((r1, r2), (a, b)) = pairing(PolicyKind::Greedy).await;
    assert_eq!(
        (r1, r2),
        (a, b),
        "greedy: the older order takes the nearest rider"
    );
    let ((r1, r2), (a, b)) = pairing(PolicyKind::Batch).await;
    assert_eq!((r1, r2), (b, a), "batch: the least total pickup distance");
}

#[actix_rt::test]
async fn under_batch_a_rider_who_declined_is_not_offered_the_order_again() {
    let app = TestApp::spawn(policy_config(PolicyKind::Batch, 300).await).await;
    let (mid, mt) = merchant_at(&app, 0.0, 0.0).await;
    let (near, near_t, mut near_feed) = rider(&app, 300.0, 0.0).await;
    let (far, far_t, mut far_feed) = rider(&app, 1_500.0, 0.0).await;
    let oid = app.accepted_order("c1", &mid, &mt, "bao").await;

    assert_eq!(near_feed.expect_type("offer", 10).await["order_id"], oid);
    let r = app
        .post(
            &format!("/v1/riders/{near}/offers/{oid}/decline"),
            &near_t,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        near_feed.expect_type("offer_withdrawn", 5).await["reason"],
        "declined"
    );
    // The next round offers it to the farther rider, who declines too.
    assert_eq!(far_feed.expect_type("offer", 10).await["order_id"], oid);
    let r = app
        .post(
            &format!("/v1/riders/{far}/offers/{oid}/decline"),
            &far_t,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Several rounds later neither has been asked again; the order waits.
    assert!(
        quiet(&mut near_feed, 1_500).await,
        "a rider who declined is not asked again"
    );
    far_feed.expect_type("offer_withdrawn", 5).await;
    assert!(quiet(&mut far_feed, 300).await);
    assert_eq!(app.status_of(&oid).await, "accepted");
    // A new rider gets it.
    let (_fresh, _t, mut fresh_feed) = rider(&app, 2_000.0, 0.0).await;
    assert_eq!(fresh_feed.expect_type("offer", 10).await["order_id"], oid);
}

#[actix_rt::test]
async fn stacked_offers_a_second_order_to_a_carrying_rider_with_the_whole_route() {
    let app = TestApp::spawn(policy_config(PolicyKind::Stacked, 300).await).await;
    let (mid, mt) = merchant_at(&app, 0.0, 0.0).await;
    let (rid, rt, mut feed) = rider(&app, 400.0, 0.0).await;

    let first = app.accepted_order("c1", &mid, &mt, "bao").await;
    let offer = feed.expect_type("offer", 10).await;
    assert_eq!(offer["order_id"], first);
    assert_eq!(offer["route"].as_array().map(Vec::len), Some(2));
    let r = app
        .post(
            &format!("/v1/riders/{rid}/offers/{first}/accept"),
            &rt,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "rider_assigned");

    // The rider is heading to the merchant: a second order there is stacked on the route.
    let second = app.accepted_order("c2", &mid, &mt, "bao").await;
    let offer = feed.expect_type("offer", 10).await;
    assert_eq!(offer["order_id"], second);
    let route = offer["route"].as_array().expect("route").clone();
    assert_eq!(
        route.len(),
        4,
        "both orders' pickups and drop-offs: {route:?}"
    );
    let stops = |id: &str| -> Vec<String> {
        route
            .iter()
            .filter(|s| s["order_id"] == id)
            .map(|s| s["kind"].as_str().expect("kind").to_string())
            .collect()
    };
    assert_eq!(stops(&first), ["pickup", "dropoff"]);
    assert_eq!(stops(&second), ["pickup", "dropoff"]);
    let r = app
        .post(
            &format!("/v1/riders/{rid}/offers/{second}/accept"),
            &rt,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let o = app.get(&format!("/v1/orders/{second}"), &app.admin).await;
    assert_eq!(o.body["rider_id"], rid.as_str());
    assert_eq!(app.status_of(&first).await, "rider_assigned");

    // Each order runs its own course; the rider is free once both are delivered.
    for (oid, step) in [(&first, "pickup"), (&second, "pickup"), (&first, "deliver")] {
        let r = app
            .post(&format!("/v1/riders/{rid}/orders/{oid}/{step}"), &rt, None)
            .await;
        assert_eq!(r.status, 200, "{step} {oid}: {}", r.body);
    }
    assert_eq!(app.status_of(&first).await, "delivered");
    assert_eq!(app.status_of(&second).await, "picked_up");
    let r = app.get(&format!("/v1/riders/{rid}"), &app.admin).await;
    assert_eq!(
        r.body["current_order"],
        second.as_str(),
        "the next order moves up"
    );
    let r = app
        .post(
            &format!("/v1/riders/{rid}/orders/{second}/deliver"),
            &rt,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = app.get(&format!("/v1/riders/{rid}"), &app.admin).await;
        if r.body["current_order"].is_null() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rider not freed: {}",
            r.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Free again, the rider takes a fresh order alone.
    let third = app.accepted_order("c3", &mid, &mt, "bao").await;
    let offer = feed.expect_type("offer", 10).await;
    assert_eq!(offer["order_id"], third);
    assert_eq!(offer["route"].as_array().map(Vec::len), Some(2));
}

/// pay -> merchant accepts -> offer -> rider accepts -> pickup -> deliver, under `policy`,
/// with rounds of `offload_at` or more orders plus riders computed off the zone's actor.
async fn lifecycle(policy: PolicyKind, offload_at: usize) {
    let mut cfg = policy_config(policy, 300).await;
    cfg.dispatch.offload_at = offload_at;
    let app = TestApp::spawn(cfg).await;
    let (mid, mt) = merchant_at(&app, 0.0, 0.0).await;
    let (rid, rt, mut feed) = rider(&app, 700.0, 0.0).await;
    let oid = app.accepted_order("c1", &mid, &mt, "bao").await;
    let offer = feed.expect_type("offer", 10).await;
    assert_eq!(offer["order_id"], oid, "{policy:?}");
    let d = offer["distance_m"].as_f64().expect("distance");
    assert!((690.0..=710.0).contains(&d), "{policy:?}: {d}");
    let r = app
        .post(&format!("/v1/riders/{rid}/offers/{oid}/accept"), &rt, None)
        .await;
    assert_eq!(r.status, 200, "{policy:?}: {}", r.body);
    for (step, status) in [("pickup", "picked_up"), ("deliver", "delivered")] {
        let r = app
            .post(&format!("/v1/riders/{rid}/orders/{oid}/{step}"), &rt, None)
            .await;
        assert_eq!(r.status, 200, "{policy:?} {step}: {}", r.body);
        assert_eq!(r.body["status"], status);
    }
    let r = app.get(&format!("/v1/riders/{rid}"), &app.admin).await;
    assert!(r.body["current_order"].is_null(), "{policy:?}: {}", r.body);
}

#[actix_rt::test]
async fn a_whole_lifecycle_works_under_greedy() {
    lifecycle(PolicyKind::Greedy, 256).await;
}

#[actix_rt::test]
async fn a_whole_lifecycle_works_under_batch_with_rounds_off_the_actor() {
    // Only this test offloads batch rounds, so the counter below is its own.
    let offloaded = || {
        waimai::metrics::DISPATCH_ROUND_SECONDS
            .with_label_values(&["batch", "offloaded"])
            .get_sample_count()
    };
    let before = offloaded();
    lifecycle(PolicyKind::Batch, 0).await;
    assert!(offloaded() > before, "the round ran on a blocking thread");
}

#[actix_rt::test]
async fn a_whole_lifecycle_works_under_stacked() {
    lifecycle(PolicyKind::Stacked, 256).await;
}
