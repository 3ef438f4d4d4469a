//! Durable order deadlines against a real node, with deadlines shortened in the config (time is
//! driven by configuration, never by sleeping minutes): an unpaid order is cancelled and its
//! stock released at its deadline, also across a node restart; a paid order the merchant never
//! answers is refunded; a delivered order completes by itself; a deadline never fires on an
//! order that has moved on.

mod common;

use common::{config, fresh_db, Db, TestApp};
use waimai::config::LockBackendKind;
use waimai::domain::Role;
use waimai::Config;

fn timed(url: &str, pay_ms: u64, accept_ms: u64, complete_ms: u64) -> Config {
    let mut cfg = config(url, LockBackendKind::Local);
    cfg.timers.payment_timeout_ms = pay_ms;
    cfg.timers.accept_timeout_ms = accept_ms;
    cfg.timers.auto_complete_ms = complete_ms;
    cfg.timers.tick_ms = 20;
    cfg
}

const LONG: u64 = 3_600_000;

/// Stock of `sku` as the merchant's menu shows it.
async fn stock(app: &TestApp, mid: &str, sku: &str) -> i64 {
    let r = app.get(&format!("/v1/merchants/{mid}"), &app.admin).await;
    r.body["menu"]
        .as_array()
        .expect("menu")
        .iter()
        .find(|i| i["sku"] == sku)
        .and_then(|i| i["stock"].as_i64())
        .expect("sku on the menu")
}

#[actix_rt::test]
async fn an_unpaid_order_is_cancelled_at_its_deadline_and_its_stock_released() {
    let url = fresh_db(Db::Sqlite).await;
    let app = TestApp::spawn(timed(&url, 400, LONG, LONG)).await;
    let (mid, _) = app.merchant_with_stock("cake", 5).await;
    let r = app.order("gus", &mid, "cake", 2, None).await;
    let oid = r.body["id"].as_str().expect("id").to_string();
    let created = r.body["created_at"].as_i64().expect("created_at");
    assert_eq!(stock(&app, &mid, "cake").await, 3);
    // A paid order from the same moment is left alone.
    let r2 = app.order("hal", &mid, "cake", 1, None).await;
    let paid = r2.body["id"].as_str().expect("id").to_string();
    let ht = app.token(Role::Customer, "hal");
    assert_eq!(
        app.post(&format!("/v1/orders/{paid}/pay"), &ht, None)
            .await
            .status,
        200
    );

    app.wait_status(&oid, "cancelled", 10).await;
    let o = app.get(&format!("/v1/orders/{oid}"), &app.admin).await;
    assert!(
        o.body["updated_at"].as_i64().expect("updated_at") >= created + 400,
        "not before the deadline: {}",
        o.body
    );
    assert_eq!(o.body["version"], 2, "fired exactly once");
    assert_eq!(stock(&app, &mid, "cake").await, 4, "the 2 units are back");
    assert_eq!(
        app.status_of(&paid).await,
        "paid",
        "never fires on an order that moved on"
    );
    let (s, _) = app
        .node
        .store
        .sku_stock(&mid, "cake")
        .await
        .expect("store")
        .expect("sku");
    assert_eq!(s, 4, "and in the store");
}

#[actix_rt::test]
async fn a_deadline_survives_a_restart_of_the_node() {
    let url = fresh_db(Db::Sqlite).await;
    let cfg = timed(&url, 1_500, LONG, LONG);
    let app = TestApp::spawn(cfg.clone()).await;
    let (mid, _) = app.merchant_with_stock("pie", 5).await;
    let r = app.order("ivy", &mid, "pie", 1, None).await;
    let oid = r.body["id"].as_str().expect("id").to_string();
    let created = r.body["created_at"].as_i64().expect("created_at");
    app.shutdown().await;

    // The second life knows nothing of the first one's timers; the order row is enough.
    let app = TestApp::spawn(cfg).await;
    let early = app.status_of(&oid).await;
    assert_eq!(early, "pending_payment", "not yet due");
    app.wait_status(&oid, "cancelled", 10).await;
    let o = app.get(&format!("/v1/orders/{oid}"), &app.admin).await;
    assert!(o.body["updated_at"].as_i64().expect("updated_at") >= created + 1_500);
    assert_eq!(o.body["version"], 2);
    assert_eq!(stock(&app, &mid, "pie").await, 5);
    let events = app.node.store.outbox_for(&oid).await.expect("outbox");
    let cancels = events
        .iter()
        .filter(|e| e.event.payload.value()["event"] == "payment_timeout")
        .count();
    assert_eq!(cancels, 1, "one cancellation event");
}

#[actix_rt::test]
async fn a_paid_order_the_merchant_never_answers_is_refunded() {
    let url = fresh_db(Db::Sqlite).await;
    let app = TestApp::spawn(timed(&url, LONG, 400, LONG)).await;
    let (mid, mtoken) = app.merchant_with_stock("soup", 5).await;
    let r = app.order("jon", &mid, "soup", 1, None).await;
    let oid = r.body["id"].as_str().expect("id").to_string();
    let jt = app.token(Role::Customer, "jon");
    assert_eq!(
        app.post(&format!("/v1/orders/{oid}/pay"), &jt, None)
            .await
            .status,
        200
    );
    // Another paid order that the merchant accepts in time stays accepted.
    let r = app.order("kim", &mid, "soup", 1, None).await;
    let kept = r.body["id"].as_str().expect("id").to_string();
    let kt = app.token(Role::Customer, "kim");
    assert_eq!(
        app.post(&format!("/v1/orders/{kept}/pay"), &kt, None)
            .await
            .status,
        200
    );
    let r = app
        .post(
            &format!("/v1/merchants/{mid}/orders/{kept}/accept"),
            &mtoken,
            None,
        )
        .await;
    assert_eq!(r.status, 200);

    app.wait_status(&oid, "refunded", 10).await;
    assert_eq!(
        stock(&app, &mid, "soup").await,
        4,
        "the refunded unit is back"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(app.status_of(&kept).await, "accepted");
}

#[actix_rt::test]
async fn a_delivered_order_completes_by_itself() {
    let url = fresh_db(Db::Sqlite).await;
    let app = TestApp::spawn(timed(&url, LONG, LONG, 300)).await;
    let (mid, mtoken) = app.merchant_with_stock("taco", 5).await;
    let (rid, rt) = app.rider_at(31.231, 121.471).await;
    let oid = app.accepted_order("lea", &mid, &mtoken, "taco").await;
    app.wait_offer(&rid, &rt, &oid).await;
    let r = app
        .post(&format!("/v1/riders/{rid}/offers/{oid}/accept"), &rt, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for step in ["pickup", "deliver"] {
        let r = app
            .post(&format!("/v1/riders/{rid}/orders/{oid}/{step}"), &rt, None)
            .await;
        assert_eq!(r.status, 200);
    }
    app.wait_status(&oid, "completed", 10).await;
    let r = app.get(&format!("/v1/riders/{rid}"), &app.admin).await;
    assert!(r.body["current_order"].is_null(), "rider freed: {}", r.body);
}
