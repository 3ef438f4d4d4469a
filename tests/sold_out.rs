//! A sold-out SKU's refusals on a real node: answered from the merchant actor's memory, with a
//! store read only where an idempotent replay could be owed. One test in this binary: it counts
//! the node's process-wide `waimai_store_order_reads_total`.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use waimai::config::LockBackendKind;
use waimai::domain::Role;

fn order_reads() -> f64 {
    waimai::metrics::STORE_ORDER_READS.get() as f64
}

fn order_actors() -> i64 {
    waimai::metrics::ACTORS_ACTIVE
        .with_label_values(&["order"])
        .get()
}

fn body(mid: &str) -> Value {
    json!({
        "merchant_id": mid,
        "items": [{"sku": "hot", "qty": 1}],
        "deliver_to": {"lat": 31.23, "lng": 121.47}
    })
}

async fn create(app: &TestApp, token: &str, mid: &str, key: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    app.call(
        reqwest::Method::POST,
        "/v1/orders",
        Some(token),
        &headers,
        Some(body(mid)),
    )
    .await
}

#[actix_rt::test]
async fn sold_out_refusals_read_the_store_only_where_a_replay_could_be_owed() {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    cfg.shards.terminal_idle_ms = 200;
    let app = Arc::new(TestApp::spawn(cfg).await);
    let (mid, _) = app.merchant_with_stock("hot", 1).await;
    let alice = app.token(Role::Customer, "alice");

    let first = create(&app, &alice, &mid, Some("first")).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let first_id = first.body["id"].as_str().expect("order id").to_string();

    // 300 creates without a key, all at once: the id each gets is new, so a refusal owes no
    // replay and reads nothing, and its order actor is passivated as soon as a terminal
    // order's would be.
    let (reads, actors) = (order_reads(), order_actors());
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let (app, mid) = (app.clone(), mid.clone());
            let token = app.token(Role::Customer, &format!("c-{i}"));
            tokio::spawn(async move { create(&app, &token, &mid, None).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, 409, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "out_of_stock", "{}", r.body);
    }
    assert_eq!(
        order_reads() - reads,
        0.0,
        "no store read for a refused new id"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while order_actors() > actors && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        order_actors() <= actors,
        "refused new ids leave no actors: {actors} -> {}",
        order_actors()
    );

    // 100 creates with new keys: each refusal looks once (not twice) for an earlier attempt.
    let reads = order_reads();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (app, mid) = (app.clone(), mid.clone());
            let token = app.token(Role::Customer, &format!("k-{i}"));
            tokio::spawn(async move { create(&app, &token, &mid, Some("try")).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, 409, "{}", r.body);
    }
    assert_eq!(order_reads() - reads, 100.0, "one read per refused key");

    // The same keys again: their actors remember there is no such order.
    let reads = order_reads();
    for i in 0..20 {
        let token = app.token(Role::Customer, &format!("k-{i}"));
        let r = create(&app, &token, &mid, Some("try")).await;
        assert_eq!(r.status, 409, "{}", r.body);
    }
    assert_eq!(order_reads() - reads, 0.0, "a refused key is remembered");

    // The order that was made is still answered to its retry, and the stock balances.
    let again = create(&app, &alice, &mid, Some("first")).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.body["id"], first_id.as_str());
    let m = app.get(&format!("/v1/merchants/{mid}"), &app.admin).await;
    assert_eq!(m.body["menu"][0]["stock"], 0, "{}", m.body);
}
