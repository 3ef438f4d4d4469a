//! The merchant browse cache on a real node, each defence proved by the node's own metrics
//! (`waimai_browse_loads_total` counts the reads the cache sent to merchant actors). One test
//! in this binary: the metrics are process-wide.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use waimai::config::LockBackendKind;
use waimai::domain::Role;

/// A counter's value in `/metrics` (0 when absent).
fn metric(name: &str) -> f64 {
    waimai::metrics::sample(&waimai::metrics::render(), name).unwrap_or(0.0)
}

fn loads() -> f64 {
    metric("waimai_browse_loads_total")
}

#[actix_rt::test]
async fn the_browse_cache_defends_against_penetration_breakdown_and_staleness() {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    // Long enough that the hot entry does not expire while 1,000 requests are answered (an
    // expiry there is a second, legitimate load), short enough to wait out below.
    cfg.gateway.cache.ttl_ms = 5000;
    cfg.gateway.cache.jitter = 0.2;
    // Long enough that no negative entry expires during the 10,000 lookups.
    cfg.gateway.cache.negative_ttl_ms = 600_000;
    let app = Arc::new(TestApp::spawn(cfg).await);
    let alice = app.token(Role::Customer, "alice");
    let (mid, mtoken) = app.merchant_with_stock("s", 10).await;

    // Penetration: 10,000 lookups of unknown ids reach no actor and make no store query: ids
    // that cannot be merchant ids are refused at once, and well-formed unknown ids are stopped
    // by the catalog's bloom filter.
    let before = loads();
    let reads_before = metric("waimai_store_merchant_reads_total{scope=\"one\"}");
    for i in 0..10_000 {
        let id = if i % 2 == 0 {
            format!("no-such-merchant-{i}")
        } else {
            uuid::Uuid::new_v4().to_string()
        };
        let r = app.get(&format!("/v1/merchants/{id}"), &alice).await;
        assert_eq!(r.status, 404, "{id}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "not_found");
    }
    assert_eq!(loads() - before, 0.0, "no load for an unknown id");
    assert_eq!(
        metric("waimai_store_merchant_reads_total{scope=\"one\"}") - reads_before,
        0.0,
        "no store query for an unknown id"
    );
    assert!(metric("waimai_browse_cache_total{outcome=\"invalid_id\"}") >= 5000.0);
    assert!(metric("waimai_browse_cache_total{outcome=\"filtered\"}") >= 4999.0);

    // Breakdown: 1,000 concurrent misses on one key make one load.
    let (hot, _) = app.merchant_with_stock("h", 7).await;
    // Start from a miss.
    app.node.gateway.cache.invalidate(&hot).await;
    let before = loads();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let app = app.clone();
            let (hot, alice) = (hot.clone(), alice.clone());
            tokio::spawn(async move { app.get(&format!("/v1/merchants/{hot}"), &alice).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["menu"][0]["stock"], 7);
    }
    assert_eq!(
        loads() - before,
        1.0,
        "one load for 1,000 concurrent misses"
    );

    // A menu change through this node is visible at once.
    let r = app.get(&format!("/v1/merchants/{mid}"), &alice).await;
    assert_eq!(r.body["menu"][0]["name"], "Dumplings");
    let r = app
        .put(
            &format!("/v1/merchants/{mid}/menu"),
            &mtoken,
            json!({"items": [{"sku": "s", "name": "Noodles", "price_cents": 900, "stock": 10}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app.get(&format!("/v1/merchants/{mid}"), &alice).await;
    assert_eq!(r.body["menu"][0]["name"], "Noodles", "{}", r.body);
    // So is closing.
    let r = app
        .post(&format!("/v1/merchants/{mid}/close"), &mtoken, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app.get(&format!("/v1/merchants/{mid}"), &alice).await;
    assert_eq!(r.body["open"], false, "{}", r.body);
    let r = app
        .post(&format!("/v1/merchants/{mid}/open"), &mtoken, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Stock moves with every order: the cached count is bounded-stale (ttl_ms), while the
    // merchant itself and operators read the actor's exact state.
    let r = app.get(&format!("/v1/merchants/{mid}"), &alice).await;
    assert_eq!(r.body["menu"][0]["stock"], 10);
    let r = app.order("bob", &mid, "s", 3, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app.get(&format!("/v1/merchants/{mid}"), &mtoken).await;
    assert_eq!(
        r.body["menu"][0]["stock"], 7,
        "the merchant's own read is exact"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = app.get(&format!("/v1/merchants/{mid}"), &alice).await;
        if r.body["menu"][0]["stock"] == 7 {
            break;
        }
        assert_eq!(r.body["menu"][0]["stock"], 10, "{}", r.body);
        assert!(Instant::now() < deadline, "the stock never refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metric("waimai_browse_cache_total{outcome=\"hit\"}") > 0.0);
    assert!(metric("waimai_browse_cache_total{outcome=\"miss\"}") > 0.0);

    // A merchant created after its id was looked up is found: creation through this node
    // replaces a negative entry (ids are random, so this is about the entry, not the id).
    let r = app
        .post(
            "/v1/merchants",
            &app.admin,
            Some(json!({"name": "New", "location": {"lat": 31.2, "lng": 121.4}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let new = r.body["id"].as_str().expect("id").to_string();
    let r = app.get(&format!("/v1/merchants/{new}"), &alice).await;
    assert_eq!(r.status, 200, "{}", r.body);

    match Arc::try_unwrap(app) {
        Ok(app) => app.shutdown().await,
        Err(_) => panic!("app still shared"),
    }
}
