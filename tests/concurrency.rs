//! Many parallel clients over HTTP against real backends: no oversell, ever.

mod common;

use std::sync::Arc;

use common::{config, fresh_db, require_redis, Db, TestApp};
use waimai::config::LockBackendKind;

/// Fires `clients` parallel single-unit orders at one SKU with `stock` units and checks that
/// exactly `stock` succeed, the rest get 409 out_of_stock, and the stock ends at zero.
async fn race_for_stock(app: TestApp, clients: usize, stock: i64) {
    let (mid, _) = app.merchant_with_stock("hot-sku", stock).await;
    let app = Arc::new(app);
    let limit = Arc::new(tokio::sync::Semaphore::new(500));
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let app = app.clone();
            let mid = mid.clone();
            let limit = limit.clone();
            tokio::spawn(async move {
                let _permit = limit.acquire().await.expect("semaphore");
                let r = app
                    .order(&format!("customer-{i}"), &mid, "hot-sku", 1, None)
                    .await;
                (
                    r.status,
                    r.body["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
        })
        .collect();
    let (mut ok, mut sold_out, mut other) = (0, 0, Vec::new());
    for t in tasks {
        match t.await.expect("task") {
            (201, _) => ok += 1,
            (409, code) if code == "out_of_stock" => sold_out += 1,
            unexpected => other.push(unexpected),
        }
    }
    assert!(
        other.is_empty(),
        "unexpected responses: {:?}",
        &other[..other.len().min(10)]
    );
    assert_eq!(ok, stock as usize, "exactly the stock is sold");
    assert_eq!(sold_out, clients - stock as usize);
    let (db_stock, _) = app
        .node
        .store
        .sku_stock(&mid, "hot-sku")
        .await
        .expect("db")
        .expect("sku");
    assert_eq!(db_stock, 0, "stock ends at zero, never below");
    let orders: i64 = app
        .node
        .store
        .count_orders(&mid)
        .await
        .expect("count")
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(orders, stock, "one stored order per success");
}

#[actix_rt::test]
async fn two_thousand_clients_hundred_in_stock_local_locks_sqlite() {
    let url = fresh_db(Db::Sqlite).await;
    race_for_stock(
        TestApp::spawn(config(&url, LockBackendKind::Local)).await,
        2000,
        100,
    )
    .await;
}

#[actix_rt::test]
async fn two_thousand_clients_hundred_in_stock_redis_locks_postgres() {
    require_redis().await;
    let url = fresh_db(Db::Postgres).await;
    race_for_stock(
        TestApp::spawn(config(&url, LockBackendKind::Redis)).await,
        2000,
        100,
    )
    .await;
}

#[actix_rt::test]
async fn two_thousand_clients_hundred_in_stock_redis_locks_mariadb() {
    require_redis().await;
    let url = fresh_db(Db::MySql).await;
    race_for_stock(
        TestApp::spawn(config(&url, LockBackendKind::Redis)).await,
        2000,
        100,
    )
    .await;
}

/// Two nodes on one database and one Redis, both taking orders for the same merchant: only the
/// lease holder admits reservations, the other answers 503, and nothing is ever oversold.
#[actix_rt::test]
async fn two_nodes_sharing_redis_and_postgres_never_oversell() {
    require_redis().await;
    let url = fresh_db(Db::Postgres).await;
    let cfg = config(&url, LockBackendKind::Redis);
    let a = Arc::new(TestApp::spawn(cfg.clone()).await);
    let b = Arc::new(TestApp::spawn(cfg).await);
    let (mid, _) = a.merchant_with_stock("hot-sku", 50).await;
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            let mid = mid.clone();
            tokio::spawn(async move {
                node.order(&format!("c{i}"), &mid, "hot-sku", 1, None)
                    .await
                    .status
            })
        })
        .collect();
    let mut ok = 0i64;
    for t in tasks {
        match t.await.expect("task") {
            201 => ok += 1,
            409 | 503 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    let (stock, _) = a
        .node
        .store
        .sku_stock(&mid, "hot-sku")
        .await
        .expect("db")
        .expect("sku");
    let orders: i64 = a
        .node
        .store
        .count_orders(&mid)
        .await
        .expect("count")
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert!(stock >= 0);
    assert_eq!(ok, orders, "every acknowledged order is stored");
    assert_eq!(orders + stock, 50, "reserved + remaining = initial stock");
    assert!(ok > 0, "the lease holder sold something");
}
