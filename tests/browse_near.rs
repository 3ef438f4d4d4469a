//! Browsing merchants on a real node: `GET /v1/merchants?near=` from the catalog's spatial
//! index (pages, the open filter, refusals), the catalog's merge of changes made behind the
//! node's back, and the browse cache's second level on Redis shared by two nodes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use waimai::config::LockBackendKind;
use waimai::domain::Role;

/// Metres per degree of latitude (the catalog measures on a sphere of radius 6,371 km).
const M_PER_DEG: f64 = 6_371_000.0 * std::f64::consts::PI / 180.0;

async fn merchant_at(app: &TestApp, name: &str, lat: f64, lng: f64) -> String {
    let r = app
        .post(
            "/v1/merchants",
            &app.admin,
            Some(json!({"name": name, "location": {"lat": lat, "lng": lng}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().expect("id").to_string()
}

/// Every page of `query` (cursor followed): the merchants in order, and each page's size.
async fn walk(app: &TestApp, token: &str, query: &str) -> (Vec<Value>, Vec<usize>) {
    let (mut all, mut sizes) = (Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/merchants?{query}&cursor={c}"),
            None => format!("/v1/merchants?{query}"),
        };
        let r = app.get(&path, token).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let page = r.body["merchants"].as_array().expect("merchants").clone();
        sizes.push(page.len());
        all.extend(page);
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (all, sizes),
        }
        assert!(sizes.len() < 100, "pages never end");
    }
}

#[actix_rt::test]
async fn nearby_merchants_come_nearest_first_in_pages_and_follow_their_open_state() {
    let url = fresh_db(Db::Sqlite).await;
    let app = TestApp::spawn(config(&url, LockBackendKind::Local)).await;
    let alice = app.token(Role::Customer, "alice");
    let (lat0, lng0) = (30.0, 120.0);
    // 20 merchants due north at 50 m steps (two at each step: ties across page boundaries),
    // and two beyond the radius.
    let mut ids = Vec::new();
    for step in 1..=10 {
        for k in 0..2 {
            let lat = lat0 + f64::from(step) * 50.0 / M_PER_DEG;
            ids.push((
                step * 50,
                merchant_at(&app, &format!("N{step}-{k}"), lat, lng0).await,
            ));
        }
    }
    for far in [1_500.0, 3_000.0] {
        merchant_at(&app, "far", lat0 + far / M_PER_DEG, lng0).await;
    }
    // Every third is closed, by the merchant itself.
    let closed: Vec<String> = ids.iter().step_by(3).map(|(_, id)| id.clone()).collect();
    for id in &closed {
        let token = app.token(Role::Merchant, id);
        let r = app
            .post(&format!("/v1/merchants/{id}/close"), &token, None)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    let (all, sizes) = walk(&app, &alice, "near=30.0,120.0&radius_m=1000&limit=3").await;
    assert_eq!(all.len(), 20, "every merchant within 1 km once: {sizes:?}");
    assert!(sizes.iter().all(|n| *n <= 3), "{sizes:?}");
    let listed: Vec<&str> = all.iter().filter_map(|m| m["id"].as_str()).collect();
    let mut unique = listed.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 20, "a merchant listed twice");
    let distances: Vec<u64> = all
        .iter()
        .filter_map(|m| m["distance_m"].as_u64())
        .collect();
    assert!(
        distances.windows(2).all(|w| w[0] <= w[1]),
        "not nearest first: {distances:?}"
    );
    for (m, (want, _)) in all.iter().zip(ids.iter()) {
        let d = m["distance_m"].as_u64().expect("distance") as i64;
        assert!(
            (d - i64::from(*want)).abs() <= 1,
            "{m}: want about {want} m"
        );
    }

    // Only open ones: the closed never appear, the rest all do.
    let (open, _) = walk(
        &app,
        &alice,
        "near=30.0,120.0&radius_m=1000&open=true&limit=4",
    )
    .await;
    assert_eq!(open.len(), 20 - closed.len());
    assert!(open
        .iter()
        .all(|m| m["open"] == true && !closed.iter().any(|c| m["id"] == c.as_str())));

    // Reopening one shows at once through this node.
    let back = &closed[0];
    let token = app.token(Role::Merchant, back);
    let r = app
        .post(&format!("/v1/merchants/{back}/open"), &token, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app
        .get(
            "/v1/merchants?near=30.0,120.0&radius_m=1000&open=true&limit=100",
            &alice,
        )
        .await;
    let page = r.body["merchants"].as_array().expect("merchants");
    assert!(page.iter().any(|m| m["id"] == back.as_str()), "{}", r.body);
    assert!(r.body.get("next_cursor").is_none(), "{}", r.body);

    // A wider radius takes in the far ones, nothing else.
    let r = app
        .get(
            "/v1/merchants?near=30.0,120.0&radius_m=5000&limit=100",
            &alice,
        )
        .await;
    assert_eq!(r.body["merchants"].as_array().map(Vec::len), Some(22));

    // Refusals: 400 with the error body, never a 5xx.
    for bad in [
        "",
        "radius_m=100",
        "near=30.0",
        "near=abc,120",
        "near=91,0",
        "near=30,120&radius_m=0",
        "near=30,120&radius_m=50001",
        "near=30,120&radius_m=1.5",
        "near=30,120&limit=0",
        "near=30,120&limit=101",
        "near=30,120&open=yes",
        "near=30,120&cursor=nonsense",
        "near=30,120&near=31,120",
        "near=30,120&colour=red",
    ] {
        let r = app.get(&format!("/v1/merchants?{bad}"), &alice).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_query", "{bad}");
        assert!(r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let r = app
        .call(
            reqwest::Method::GET,
            "/v1/merchants?near=30,120",
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    app.shutdown().await;
}

#[actix_rt::test]
async fn the_catalog_merges_merchants_created_behind_its_back_and_shares_reads_on_redis() {
    require_redis().await;
    let url = fresh_db(Db::Postgres).await;
    // Two single nodes on one database and one Redis, with no events between them: what one
    // learns of the other's changes comes from the catalog's merge with the store, and from
    // the cache's second level on Redis.
    let mut cfg = config(&url, LockBackendKind::Redis);
    cfg.gateway.cache.catalog_refresh_ms = 200;
    cfg.gateway.cache.ttl_ms = 60_000;
    let a = TestApp::spawn(cfg.clone()).await;
    let b = TestApp::spawn(cfg.clone()).await;
    assert!(a.node.gateway.cache.shared(), "Redis is the second level");
    let alice = a.token(Role::Customer, "alice");

    let (mid, _) = a.merchant_at("s", 5, 12.5, 77.5).await;
    // Node B has not heard of it: its filter says no, without asking the store.
    let r = b.get(&format!("/v1/merchants/{mid}"), &alice).await;
    assert_eq!(r.status, 404, "{}", r.body);
    // Within the merge period B lists it and reads it.
    let started = Instant::now();
    loop {
        let r = b
            .get("/v1/merchants?near=12.5,77.5&radius_m=100", &alice)
            .await;
        if r.body["merchants"]
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m["id"] == mid.as_str()))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node B never merged the merchant"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "merged into the other node's catalog after {:?}",
        started.elapsed()
    );

    // A's read loads from the actor and keeps it on Redis; B's read is then answered from
    // Redis, not from a merchant actor of its own.
    let r = a.get(&format!("/v1/merchants/{mid}"), &alice).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let key = format!("{}:browse:{mid}", cfg.lock.key_prefix);
    let client = redis::Client::open(redis_url().as_str()).expect("redis");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let started = Instant::now();
    loop {
        let held: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("GET");
        if let Some(json) = held {
            let v: Value = serde_json::from_str(&json).expect("JSON on Redis");
            assert_eq!(v["id"], mid.as_str());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never kept on Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let redis_hits = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("waimai_browse_cache_total{outcome=\"redis_hit\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = redis_hits(&b.metrics().await);
    let r = b.get(&format!("/v1/merchants/{mid}"), &alice).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["menu"][0]["stock"], 5);
    assert_eq!(redis_hits(&b.metrics().await) - before, 1.0);

    // A change through A drops the Redis entry at once.
    let token = a.token(Role::Merchant, &mid);
    let r = a
        .post(&format!("/v1/merchants/{mid}/close"), &token, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let held: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert!(held.is_none(), "the change left {held:?} on Redis");
    b.shutdown().await;
    a.shutdown().await;
}
