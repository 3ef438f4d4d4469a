//! One store conformance suite, run against every backend: a fresh SQLite file, a fresh
//! PostgreSQL database and a fresh MariaDB database (real servers, see `common`).
//!
//! Each check is an `async fn check_xxx(store: &Store)`; `conformance!` turns it into one
//! `#[tokio::test]` per backend (`sqlite_xxx`, `postgres_xxx`, `mysql_xxx`), so a failure names
//! the backend it happened on.

mod common;

use std::collections::HashSet;

use common::{fresh_db, unique, Db};
use futures::future::join_all;
use serde_json::json;
use waimai::actors::order_machine::OrderStatus;
use waimai::config::LockBackendKind;
use waimai::domain::Location;
use waimai::model::{MenuItem, Merchant, Order, OrderLine, OutboxEvent, Rider};
use waimai::store::{FastBatches, NodeRow, PaymentRow, ShardEpoch, Store, StoreError, Write};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A store on a fresh database of kind `db`, migrated twice (migrations must be idempotent).
async fn open(db: Db) -> Store {
    let url = fresh_db(db).await;
    let cfg = common::config(&url, LockBackendKind::Local);
    let store = Store::connect(&cfg.store, cfg.shards.count)
        .await
        .unwrap_or_else(|e| panic!("{db:?}: connect to {url}: {e}"));
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("{db:?}: first migrate: {e}"));
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("{db:?}: second migrate (must be idempotent): {e}"));
    store.ping().await.expect("ping");
    store
}

/// `conformance! { check_fn => sqlite_name, postgres_name, mysql_name; ... }`
macro_rules! conformance {
    ($($check:ident => $sqlite:ident, $postgres:ident, $mysql:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $sqlite() {
                let store = open(Db::Sqlite).await;
                $check(&store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $postgres() {
                let store = open(Db::Postgres).await;
                $check(&store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $mysql() {
                let store = open(Db::MySql).await;
                $check(&store).await;
            }
        )*
    };
}

conformance! {
    check_migrate_keeps_data => sqlite_migrate_keeps_data, postgres_migrate_keeps_data, mysql_migrate_keeps_data;
    check_order_round_trip => sqlite_order_round_trip, postgres_order_round_trip, mysql_order_round_trip;
    check_merchant_round_trip => sqlite_merchant_round_trip, postgres_merchant_round_trip, mysql_merchant_round_trip;
    check_rider_round_trip => sqlite_rider_round_trip, postgres_rider_round_trip, mysql_rider_round_trip;
    check_rider_location_null_then_set => sqlite_rider_location_null_then_set, postgres_rider_location_null_then_set, mysql_rider_location_null_then_set;
    check_versioned_update_order => sqlite_versioned_update_order, postgres_versioned_update_order, mysql_versioned_update_order;
    check_versioned_update_merchant => sqlite_versioned_update_merchant, postgres_versioned_update_merchant, mysql_versioned_update_merchant;
    check_versioned_update_rider => sqlite_versioned_update_rider, postgres_versioned_update_rider, mysql_versioned_update_rider;
    check_fencing => sqlite_fencing, postgres_fencing, mysql_fencing;
    check_stock_never_negative => sqlite_stock_never_negative, postgres_stock_never_negative, mysql_stock_never_negative;
    check_write_set_atomic => sqlite_write_set_atomic, postgres_write_set_atomic, mysql_write_set_atomic;
    check_group_commit_isolation => sqlite_group_commit_isolation, postgres_group_commit_isolation, mysql_group_commit_isolation;
    check_outbox_order => sqlite_outbox_order, postgres_outbox_order, mysql_outbox_order;
    check_duplicate_insert => sqlite_duplicate_insert, postgres_duplicate_insert, mysql_duplicate_insert;
    check_concurrent_duplicate_insert => sqlite_concurrent_duplicate_insert, postgres_concurrent_duplicate_insert, mysql_concurrent_duplicate_insert;
    check_concurrent_stock => sqlite_concurrent_stock, postgres_concurrent_stock, mysql_concurrent_stock;
    check_concurrent_multi_sku => sqlite_concurrent_multi_sku, postgres_concurrent_multi_sku, mysql_concurrent_multi_sku;
    check_closed_store_rejects_writes => sqlite_closed_store_rejects_writes, postgres_closed_store_rejects_writes, mysql_closed_store_rejects_writes;
    check_concurrent_loads => sqlite_concurrent_loads, postgres_concurrent_loads, mysql_concurrent_loads;
    check_shard_epochs => sqlite_shard_epochs, postgres_shard_epochs, mysql_shard_epochs;
    check_fenced_jobs_in_one_batch => sqlite_fenced_jobs_in_one_batch, postgres_fenced_jobs_in_one_batch, mysql_fenced_jobs_in_one_batch;
    check_outbox_shipping => sqlite_outbox_shipping, postgres_outbox_shipping, mysql_outbox_shipping;
    check_outbox_retention => sqlite_outbox_retention, postgres_outbox_retention, mysql_outbox_retention;
    check_payment_notice_context => sqlite_payment_notice_context, postgres_payment_notice_context, mysql_payment_notice_context;
    check_orders_of_shards => sqlite_orders_of_shards, postgres_orders_of_shards, mysql_orders_of_shards;
    check_cluster_nodes => sqlite_cluster_nodes, postgres_cluster_nodes, mysql_cluster_nodes;
    check_sim_provider_writes => sqlite_sim_provider_writes, postgres_sim_provider_writes, mysql_sim_provider_writes;
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// On SQLite with a file, batches are committed by the fast writer (`store/sqlite_writer.rs`);
/// a batch it rolls back goes change by change through sqlx, which names the change that
/// failed, and its neighbours still commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_batches_take_the_fast_writer_and_its_failures_the_per_change_path() {
    let fast = |outcome: &str| {
        waimai::metrics::STORE_FAST_BATCHES
            .with_label_values(&[outcome])
            .get()
    };
    let store = open(Db::Sqlite).await;
    let (committed, rolled_back) = (fast("committed"), fast("rolled_back"));
    let v1 = order(&id("o"), &id("m"));
    store
        .commit(vec![Write::InsertOrder(v1.clone().into())])
        .await
        .expect("insert");
    assert!(
        fast("committed") > committed,
        "the insert was committed by the fast writer"
    );
    // The same, counted for this store alone (other tests share the process's metric).
    assert_eq!(
        store.fast_batches(),
        Some(FastBatches {
            committed: 1,
            rolled_back: 0
        }),
        "this store's insert was committed by its fast writer"
    );

    let mut v2 = v1.clone();
    v2.status = OrderStatus::Paid;
    v2.version = 2;
    let mut stale = v1.clone();
    stale.status = OrderStatus::Cancelled;
    stale.version = 8;
    let (good, bad) = tokio::join!(
        store.commit(vec![Write::UpdateOrder {
            order: v2.clone().into(),
            expected_version: 1,
        }]),
        store.commit(vec![Write::UpdateOrder {
            order: stale.into(),
            expected_version: 7,
        }]),
    );
    good.expect("the current version applies, whatever batch it shared");
    assert!(
        matches!(bad, Err(StoreError::VersionConflict { kind: "order", .. })),
        "a stale version conflicts, got {bad:?}"
    );
    assert!(
        fast("rolled_back") > rolled_back,
        "the conflict rolled a fast batch back"
    );
    // Whether the two updates shared a batch or not, exactly one fast batch held the stale one.
    let counts = store
        .fast_batches()
        .expect("a SQLite file has a fast writer");
    assert_eq!(counts.rolled_back, 1, "{counts:?}");
    assert!((1..=2).contains(&counts.committed), "{counts:?}");
    assert_eq!(store.load_order(&v1.id).await.unwrap(), Some(v2));
}

/// On SQLite with a file, a thread of its own copies the WAL into the database file, long
/// before the fast writer's own automatic checkpoint (a backstop at 40,000 pages) would, and
/// outside the writer's transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_checkpointed_by_a_thread_of_its_own() {
    let url = fresh_db(Db::Sqlite).await;
    let file = std::path::PathBuf::from(url.trim_start_matches("sqlite://"));
    let cfg = common::config(&url, LockBackendKind::Local);
    let store = Store::connect(&cfg.store, cfg.shards.count)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let size = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let before = size();
    let merchant = id("m");
    let orders: Vec<Order> = (0..200).map(|_| order(&id("o"), &merchant)).collect();
    for chunk in orders.chunks(20) {
        let writes = chunk
            .iter()
            .cloned()
            .map(|o| Write::InsertOrder(o.into()))
            .collect();
        store.commit(writes).await.expect("insert");
    }
    // A few hundred pages: far below any automatic checkpoint, so only the thread copies them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let checkpoints = || {
        store
            .wal_checkpoints()
            .expect("a SQLite file has a checkpointer")
    };
    while checkpoints() == 0 || size() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint copied the WAL into {}: {} checkpoints, {} -> {} bytes",
            file.display(),
            checkpoints(),
            before,
            size()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for o in &orders {
        assert_eq!(store.load_order(&o.id).await.unwrap().as_ref(), Some(o));
    }
    assert!(waimai::metrics::STORE_WAL_CHECKPOINTS.get() >= 1);
}

fn id(kind: &str) -> String {
    format!("{kind}-{}", unique())
}

fn order(id: &str, merchant_id: &str) -> Order {
    let items = vec![
        OrderLine {
            sku: "xlb".into(),
            name: "小笼包 soup dumplings".into(),
            qty: 2,
            price_cents: 1250,
        },
        OrderLine {
            sku: "tea".into(),
            name: "Jasmine \"tea\"".into(),
            qty: 1,
            price_cents: 399,
        },
    ];
    Order {
        id: id.to_string(),
        customer_id: format!("cust-{}", unique()),
        merchant_id: merchant_id.to_string(),
        rider_id: None,
        status: OrderStatus::PendingPayment,
        total_cents: items.iter().map(|l| l.qty * l.price_cents).sum(),
        items,
        deliver_to: Location {
            lat: 31.230416,
            lng: 121.473701,
        },
        pickup: Some(Location {
            lat: 31.2291,
            lng: 121.4582,
        }),
        version: 1,
        created_at: 1_700_000_000_123,
        updated_at: 1_700_000_000_123,
        request_hash: Some(
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        ),
    }
}

fn merchant(id: &str) -> Merchant {
    Merchant {
        id: id.to_string(),
        name: "老王面馆 Wang's Noodles".into(),
        location: Location {
            lat: 31.2222,
            lng: 121.4581,
        },
        open: true,
        version: 1,
    }
}

fn item(sku: &str, stock: i64) -> MenuItem {
    MenuItem {
        sku: sku.to_string(),
        name: format!("item {sku}"),
        price_cents: 1000,
        stock,
    }
}

fn rider(id: &str) -> Rider {
    Rider {
        id: id.to_string(),
        name: "Rider Li".into(),
        online: true,
        location: Some(Location {
            lat: 31.2,
            lng: 121.5,
        }),
        current_order: Some(format!("order-{}", unique())),
        version: 1,
    }
}

fn event(aggregate_id: &str, event_type: &str, payload: serde_json::Value) -> OutboxEvent {
    OutboxEvent {
        aggregate_type: "order".into(),
        aggregate_id: aggregate_id.to_string(),
        event_type: event_type.to_string(),
        payload: payload.into(),
        created_at: 1_700_000_000_999,
        traceparent: None,
    }
}

/// Creates a merchant with the given SKUs (all at `fence`).
async fn seed_merchant(store: &Store, skus: &[(&str, i64)], fence: i64) -> String {
    let mid = id("m");
    let mut writes = vec![Write::InsertMerchant(merchant(&mid))];
    for (sku, stock) in skus {
        writes.push(Write::PutSku {
            merchant_id: mid.clone(),
            item: item(sku, *stock),
            fence,
        });
    }
    store.commit(writes).await.expect("seed merchant");
    mid
}

async fn stock(store: &Store, mid: &str, sku: &str) -> Option<(i64, i64)> {
    store.sku_stock(mid, sku).await.expect("sku_stock")
}

fn adjust(mid: &str, sku: &str, delta: i64, fence: i64) -> Write {
    Write::AdjustStock {
        merchant_id: mid.to_string(),
        sku: sku.to_string(),
        delta,
        fence,
    }
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Migrating a populated database again changes nothing.
async fn check_migrate_keeps_data(store: &Store) {
    let mid = seed_merchant(store, &[("a", 5)], 1).await;
    let o = order(&id("o"), &mid);
    store
        .commit(vec![
            Write::InsertOrder(o.clone().into()),
            Write::Event(event(&o.id, "order_created", json!({"n": 1}))),
        ])
        .await
        .expect("insert");
    store
        .migrate()
        .await
        .expect("migrate on a populated database");
    assert_eq!(store.load_order(&o.id).await.unwrap(), Some(o.clone()));
    assert_eq!(stock(store, &mid, "a").await, Some((5, 1)));
    assert_eq!(store.outbox_for(&o.id).await.unwrap().len(), 1);
    store.close().await;
}

async fn check_order_round_trip(store: &Store) {
    assert_eq!(store.load_order("no-such-order").await.unwrap(), None);

    let mid = id("m");
    // rider None, request hash Some.
    let a = order(&id("o"), &mid);
    // rider Some, request hash None, another status, other numbers.
    let mut b = order(&id("o"), &mid);
    b.rider_id = Some(id("r"));
    b.request_hash = None;
    b.status = OrderStatus::RiderAssigned;
    b.items = vec![OrderLine {
        sku: "solo".into(),
        name: String::new(),
        qty: 7,
        price_cents: 1,
    }];
    b.total_cents = 7;
    b.deliver_to = Location {
        lat: -33.868820,
        lng: 151.209296,
    };
    b.version = 5;
    b.created_at = 1;
    b.updated_at = i64::MAX / 2;

    store
        .commit(vec![Write::InsertOrder(a.clone().into())])
        .await
        .expect("insert a");
    store
        .commit(vec![Write::InsertOrder(b.clone().into())])
        .await
        .expect("insert b");

    assert_eq!(store.load_order(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.load_order(&b.id).await.unwrap(), Some(b.clone()));

    let mut counts = store.count_orders(&mid).await.unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    let mut expected = vec![
        (OrderStatus::PendingPayment, 1),
        (OrderStatus::RiderAssigned, 1),
    ];
    expected.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(counts, expected);
    assert!(store
        .count_orders("no-such-merchant")
        .await
        .unwrap()
        .is_empty());
    store.close().await;
}

async fn check_merchant_round_trip(store: &Store) {
    assert_eq!(store.load_merchant("no-such-merchant").await.unwrap(), None);

    let mid = id("m");
    let mut m = merchant(&mid);
    m.open = false;
    store
        .commit(vec![
            Write::InsertMerchant(m.clone()),
            Write::PutSku {
                merchant_id: mid.clone(),
                item: item("b-noodles", 12),
                fence: 3,
            },
            Write::PutSku {
                merchant_id: mid.clone(),
                item: item("a-rice", 0),
                fence: 7,
            },
        ])
        .await
        .expect("insert merchant with menu");

    let (loaded, menu) = store
        .load_merchant(&mid)
        .await
        .unwrap()
        .expect("merchant stored");
    assert_eq!(loaded, m);
    // Ordered by SKU, each with its own fence.
    assert_eq!(
        menu,
        vec![(item("a-rice", 0), 7), (item("b-noodles", 12), 3)]
    );

    // A merchant without a menu loads with an empty one.
    let bare = id("m");
    let mut bm = merchant(&bare);
    bm.open = true;
    store
        .commit(vec![Write::InsertMerchant(bm.clone())])
        .await
        .expect("insert bare merchant");
    assert_eq!(
        store.load_merchant(&bare).await.unwrap(),
        Some((bm, Vec::new()))
    );
    assert_eq!(stock(store, &mid, "b-noodles").await, Some((12, 3)));
    assert_eq!(stock(store, &mid, "nope").await, None);
    store.close().await;
}

async fn check_rider_round_trip(store: &Store) {
    assert_eq!(store.load_rider("no-such-rider").await.unwrap(), None);

    let with = rider(&id("r"));
    let mut without = rider(&id("r"));
    without.location = None;
    without.current_order = None;
    without.online = false;
    store
        .commit(vec![
            Write::InsertRider(with.clone()),
            Write::InsertRider(without.clone()),
        ])
        .await
        .expect("insert riders");
    assert_eq!(
        store.load_rider(&with.id).await.unwrap(),
        Some(with.clone())
    );
    assert_eq!(
        store.load_rider(&without.id).await.unwrap(),
        Some(without.clone())
    );

    // Updating can clear the location and the current order.
    let mut cleared = with.clone();
    cleared.location = None;
    cleared.current_order = None;
    cleared.version = 2;
    store
        .commit(vec![Write::UpdateRider {
            rider: cleared.clone(),
            expected_version: 1,
        }])
        .await
        .expect("clear rider");
    assert_eq!(store.load_rider(&with.id).await.unwrap(), Some(cleared));

    // ... and set them again.
    let mut moved = without.clone();
    moved.location = Some(Location {
        lat: 39.9042,
        lng: 116.4074,
    });
    moved.online = true;
    moved.current_order = Some(id("o"));
    moved.version = 2;
    store
        .commit(vec![Write::UpdateRider {
            rider: moved.clone(),
            expected_version: 1,
        }])
        .await
        .expect("move rider");
    assert_eq!(store.load_rider(&without.id).await.unwrap(), Some(moved));
    store.close().await;
}

/// Riders without a location written before riders with one, on one connection (one write set):
/// the statements are first prepared with NULL coordinates, then must still take real ones.
async fn check_rider_location_null_then_set(store: &Store) {
    let mut a = rider(&id("r"));
    a.location = None;
    let b = rider(&id("r"));
    let mut a2 = a.clone();
    a2.version = 2;
    let mut a3 = a.clone();
    a3.location = Some(Location {
        lat: -12.046374,
        lng: -77.042793,
    });
    a3.version = 3;
    let mut b2 = b.clone();
    b2.location = None;
    b2.version = 2;
    store
        .commit(vec![
            Write::InsertRider(a.clone()),
            Write::InsertRider(b.clone()),
            Write::UpdateRider {
                rider: a2,
                expected_version: 1,
            },
            Write::UpdateRider {
                rider: a3.clone(),
                expected_version: 2,
            },
            Write::UpdateRider {
                rider: b2.clone(),
                expected_version: 1,
            },
        ])
        .await
        .expect("riders with and without a location");
    assert_eq!(store.load_rider(&a.id).await.unwrap(), Some(a3));
    assert_eq!(store.load_rider(&b.id).await.unwrap(), Some(b2));
    store.close().await;
}

async fn check_versioned_update_order(store: &Store) {
    let mid = id("m");
    let v1 = order(&id("o"), &mid);
    store
        .commit(vec![Write::InsertOrder(v1.clone().into())])
        .await
        .expect("insert");

    // Right version: applied, version bumped.
    let mut v2 = v1.clone();
    v2.status = OrderStatus::Paid;
    v2.version = 2;
    v2.updated_at = v1.updated_at + 10;
    store
        .commit(vec![Write::UpdateOrder {
            order: v2.clone().into(),
            expected_version: 1,
        }])
        .await
        .expect("update with the current version");
    assert_eq!(store.load_order(&v1.id).await.unwrap(), Some(v2.clone()));

    // Stale version: conflict, nothing changes.
    let mut stale = v1.clone();
    stale.status = OrderStatus::Cancelled;
    stale.rider_id = Some("intruder".into());
    stale.version = 2;
    stale.updated_at = v1.updated_at + 99;
    match store
        .commit(vec![Write::UpdateOrder {
            order: stale.into(),
            expected_version: 1,
        }])
        .await
    {
        Err(StoreError::VersionConflict { kind, id }) => {
            assert_eq!(kind, "order");
            assert_eq!(id, v1.id);
        }
        other => panic!("stale order update must conflict, got {other:?}"),
    }
    assert_eq!(store.load_order(&v1.id).await.unwrap(), Some(v2.clone()));

    // A future version is just as wrong as a past one.
    let mut ahead = v2.clone();
    ahead.version = 10;
    assert!(matches!(
        store
            .commit(vec![Write::UpdateOrder {
                order: ahead.into(),
                expected_version: 9,
            }])
            .await,
        Err(StoreError::VersionConflict { .. })
    ));

    // The next update builds on version 2, assigning a rider.
    let mut v3 = v2.clone();
    v3.status = OrderStatus::RiderAssigned;
    v3.rider_id = Some(id("r"));
    v3.version = 3;
    store
        .commit(vec![Write::UpdateOrder {
            order: v3.clone().into(),
            expected_version: 2,
        }])
        .await
        .expect("update v2 -> v3");
    assert_eq!(store.load_order(&v1.id).await.unwrap(), Some(v3));

    // Updating a missing order is a conflict too, and creates nothing.
    let ghost = order(&id("o"), &mid);
    assert!(matches!(
        store
            .commit(vec![Write::UpdateOrder {
                order: ghost.clone().into(),
                expected_version: 1,
            }])
            .await,
        Err(StoreError::VersionConflict { kind: "order", .. })
    ));
    assert_eq!(store.load_order(&ghost.id).await.unwrap(), None);
    store.close().await;
}

async fn check_versioned_update_merchant(store: &Store) {
    let mid = seed_merchant(store, &[("a", 4)], 2).await;
    let (v1, menu) = store.load_merchant(&mid).await.unwrap().expect("merchant");

    let mut v2 = v1.clone();
    v2.name = "Renamed".into();
    v2.open = false;
    v2.location = Location {
        lat: 22.5431,
        lng: 114.0579,
    };
    v2.version = 2;
    store
        .commit(vec![Write::UpdateMerchant {
            merchant: v2.clone(),
            expected_version: 1,
        }])
        .await
        .expect("update with the current version");
    assert_eq!(
        store.load_merchant(&mid).await.unwrap(),
        Some((v2.clone(), menu.clone()))
    );

    let mut stale = v1.clone();
    stale.name = "Stale writer".into();
    stale.version = 2;
    match store
        .commit(vec![Write::UpdateMerchant {
            merchant: stale,
            expected_version: 1,
        }])
        .await
    {
        Err(StoreError::VersionConflict { kind, id }) => {
            assert_eq!(kind, "merchant");
            assert_eq!(id, mid);
        }
        other => panic!("stale merchant update must conflict, got {other:?}"),
    }
    assert_eq!(
        store.load_merchant(&mid).await.unwrap(),
        Some((v2.clone(), menu))
    );

    let ghost = merchant(&id("m"));
    assert!(matches!(
        store
            .commit(vec![Write::UpdateMerchant {
                merchant: ghost.clone(),
                expected_version: 1,
            }])
            .await,
        Err(StoreError::VersionConflict {
            kind: "merchant",
            ..
        })
    ));
    assert_eq!(store.load_merchant(&ghost.id).await.unwrap(), None);
    store.close().await;
}

async fn check_versioned_update_rider(store: &Store) {
    let v1 = rider(&id("r"));
    store
        .commit(vec![Write::InsertRider(v1.clone())])
        .await
        .expect("insert");

    let mut v2 = v1.clone();
    v2.online = false;
    v2.current_order = None;
    v2.version = 2;
    store
        .commit(vec![Write::UpdateRider {
            rider: v2.clone(),
            expected_version: 1,
        }])
        .await
        .expect("update with the current version");
    assert_eq!(store.load_rider(&v1.id).await.unwrap(), Some(v2.clone()));

    let mut stale = v1.clone();
    stale.name = "Stale writer".into();
    stale.location = None;
    stale.version = 2;
    match store
        .commit(vec![Write::UpdateRider {
            rider: stale,
            expected_version: 1,
        }])
        .await
    {
        Err(StoreError::VersionConflict { kind, id }) => {
            assert_eq!(kind, "rider");
            assert_eq!(id, v1.id);
        }
        other => panic!("stale rider update must conflict, got {other:?}"),
    }
    assert_eq!(store.load_rider(&v1.id).await.unwrap(), Some(v2));

    let ghost = rider(&id("r"));
    assert!(matches!(
        store
            .commit(vec![Write::UpdateRider {
                rider: ghost.clone(),
                expected_version: 1,
            }])
            .await,
        Err(StoreError::VersionConflict { kind: "rider", .. })
    ));
    assert_eq!(store.load_rider(&ghost.id).await.unwrap(), None);
    store.close().await;
}

fn assert_stale(res: Result<(), StoreError>, mid: &str, sku: &str, token: i64, what: &str) {
    match res {
        Err(StoreError::StaleFence {
            merchant_id,
            sku: s,
            token: t,
        }) => {
            assert_eq!(merchant_id, mid, "{what}");
            assert_eq!(s, sku, "{what}");
            assert_eq!(t, token, "{what}");
        }
        other => panic!("{what}: expected StaleFence, got {other:?}"),
    }
}

async fn check_fencing(store: &Store) {
    let mid = seed_merchant(store, &[("a", 10)], 5).await;
    assert_eq!(stock(store, &mid, "a").await, Some((10, 5)));

    // Lower fences are refused by every stock write, and change nothing.
    assert_stale(
        store.commit(vec![adjust(&mid, "a", -1, 4)]).await,
        &mid,
        "a",
        4,
        "AdjustStock with fence 4 < 5",
    );
    assert_stale(
        store
            .commit(vec![Write::PutSku {
                merchant_id: mid.clone(),
                item: item("a", 99),
                fence: 4,
            }])
            .await,
        &mid,
        "a",
        4,
        "PutSku with fence 4 < 5",
    );
    assert_stale(
        store
            .commit(vec![Write::DeleteSku {
                merchant_id: mid.clone(),
                sku: "a".into(),
                fence: 0,
            }])
            .await,
        &mid,
        "a",
        0,
        "DeleteSku with fence 0 < 5",
    );
    assert_eq!(stock(store, &mid, "a").await, Some((10, 5)));

    // A stale fence is refused even when the write would otherwise be impossible anyway.
    assert_stale(
        store.commit(vec![adjust(&mid, "a", -1000, 1)]).await,
        &mid,
        "a",
        1,
        "AdjustStock with fence 1 < 5 and too large a decrement",
    );

    // The same fence is accepted.
    store
        .commit(vec![adjust(&mid, "a", -1, 5)])
        .await
        .expect("AdjustStock with the stored fence");
    assert_eq!(stock(store, &mid, "a").await, Some((9, 5)));

    // A higher fence is accepted and stored.
    store
        .commit(vec![adjust(&mid, "a", -2, 8)])
        .await
        .expect("AdjustStock with a higher fence");
    assert_eq!(stock(store, &mid, "a").await, Some((7, 8)));

    // The fence never goes back down: the previous holder (5) is now stale.
    assert_stale(
        store.commit(vec![adjust(&mid, "a", 1, 5)]).await,
        &mid,
        "a",
        5,
        "AdjustStock with the superseded fence 5 < 8",
    );
    assert_stale(
        store
            .commit(vec![Write::PutSku {
                merchant_id: mid.clone(),
                item: item("a", 1),
                fence: 7,
            }])
            .await,
        &mid,
        "a",
        7,
        "PutSku with fence 7 < 8",
    );
    assert_eq!(stock(store, &mid, "a").await, Some((7, 8)));

    // PutSku with an equal fence replaces the row; a higher one replaces and raises the fence.
    let mut renamed = item("a", 3);
    renamed.name = "renamed".into();
    renamed.price_cents = 1234;
    store
        .commit(vec![Write::PutSku {
            merchant_id: mid.clone(),
            item: renamed.clone(),
            fence: 8,
        }])
        .await
        .expect("PutSku with the stored fence");
    assert_eq!(stock(store, &mid, "a").await, Some((3, 8)));
    // Rewriting identical values must not be mistaken for a stale fence.
    store
        .commit(vec![Write::PutSku {
            merchant_id: mid.clone(),
            item: renamed.clone(),
            fence: 8,
        }])
        .await
        .expect("PutSku rewriting identical values");
    store
        .commit(vec![Write::PutSku {
            merchant_id: mid.clone(),
            item: renamed.clone(),
            fence: 11,
        }])
        .await
        .expect("PutSku with a higher fence");
    let (_, menu) = store.load_merchant(&mid).await.unwrap().expect("merchant");
    assert_eq!(menu, vec![(renamed.clone(), 11)]);

    // A no-op adjustment with the stored fence succeeds (it matched, even if nothing changed).
    store
        .commit(vec![adjust(&mid, "a", 0, 11)])
        .await
        .expect("AdjustStock by 0 with the stored fence");
    assert_eq!(stock(store, &mid, "a").await, Some((3, 11)));

    // DeleteSku with a stale fence keeps the row; with the stored one removes it.
    assert_stale(
        store
            .commit(vec![Write::DeleteSku {
                merchant_id: mid.clone(),
                sku: "a".into(),
                fence: 10,
            }])
            .await,
        &mid,
        "a",
        10,
        "DeleteSku with fence 10 < 11",
    );
    assert_eq!(stock(store, &mid, "a").await, Some((3, 11)));
    store
        .commit(vec![Write::DeleteSku {
            merchant_id: mid.clone(),
            sku: "a".into(),
            fence: 11,
        }])
        .await
        .expect("DeleteSku with the stored fence");
    assert_eq!(stock(store, &mid, "a").await, None);

    // Fences are per SKU row: a new SKU starts at the fence it is written with.
    store
        .commit(vec![Write::PutSku {
            merchant_id: mid.clone(),
            item: item("b", 2),
            fence: 12,
        }])
        .await
        .expect("PutSku of a new SKU");
    assert_eq!(stock(store, &mid, "b").await, Some((2, 12)));
    store.close().await;
}

async fn check_stock_never_negative(store: &Store) {
    let mid = seed_merchant(store, &[("a", 3)], 1).await;

    match store.commit(vec![adjust(&mid, "a", -4, 1)]).await {
        Err(StoreError::InsufficientStock { merchant_id, sku }) => {
            assert_eq!(merchant_id, mid);
            assert_eq!(sku, "a");
        }
        other => panic!("taking 4 of 3 must fail with InsufficientStock, got {other:?}"),
    }
    assert_eq!(stock(store, &mid, "a").await, Some((3, 1)));

    // A higher fence does not help, and is not stored when the write fails.
    assert!(matches!(
        store.commit(vec![adjust(&mid, "a", -4, 9)]).await,
        Err(StoreError::InsufficientStock { .. })
    ));
    assert_eq!(stock(store, &mid, "a").await, Some((3, 1)));

    // Exactly to zero works.
    store
        .commit(vec![adjust(&mid, "a", -3, 1)])
        .await
        .expect("taking all 3 of 3");
    assert_eq!(stock(store, &mid, "a").await, Some((0, 1)));

    assert!(matches!(
        store.commit(vec![adjust(&mid, "a", -1, 1)]).await,
        Err(StoreError::InsufficientStock { .. })
    ));
    assert_eq!(stock(store, &mid, "a").await, Some((0, 1)));

    // Restocking works from zero.
    store
        .commit(vec![adjust(&mid, "a", 2, 1)])
        .await
        .expect("restock");
    assert_eq!(stock(store, &mid, "a").await, Some((2, 1)));

    // A SKU that does not exist has no stock, and is not created.
    assert!(matches!(
        store.commit(vec![adjust(&mid, "ghost", -1, 1)]).await,
        Err(StoreError::InsufficientStock { .. })
    ));
    assert_eq!(stock(store, &mid, "ghost").await, None);
    store.close().await;
}

async fn check_write_set_atomic(store: &Store) {
    let mid = seed_merchant(store, &[("a", 5), ("b", 1)], 1).await;
    let existing = order(&id("o"), &mid);
    store
        .commit(vec![Write::InsertOrder(existing.clone().into())])
        .await
        .expect("insert existing order");

    // InsertOrder + Event + stock reservation, then a stale UpdateOrder: all or nothing.
    let fresh = order(&id("o"), &mid);
    let mut stale = existing.clone();
    stale.version = 2;
    stale.status = OrderStatus::Cancelled;
    let res = store
        .commit(vec![
            Write::InsertOrder(fresh.clone().into()),
            Write::Event(event(&fresh.id, "order_created", json!({"id": fresh.id}))),
            adjust(&mid, "a", -2, 3),
            Write::UpdateOrder {
                order: stale.into(),
                expected_version: 7,
            },
        ])
        .await;
    assert!(
        matches!(res, Err(StoreError::VersionConflict { .. })),
        "got {res:?}"
    );
    assert_eq!(store.load_order(&fresh.id).await.unwrap(), None);
    assert!(store.outbox_for(&fresh.id).await.unwrap().is_empty());
    assert_eq!(stock(store, &mid, "a").await, Some((5, 1)));
    assert_eq!(
        store.load_order(&existing.id).await.unwrap(),
        Some(existing.clone())
    );

    // Same with the failure being a stock shortfall on the second SKU.
    let fresh2 = order(&id("o"), &mid);
    let res = store
        .commit(vec![
            Write::InsertOrder(fresh2.clone().into()),
            adjust(&mid, "a", -1, 1),
            adjust(&mid, "b", -2, 1),
            Write::Event(event(&fresh2.id, "order_created", json!({}))),
        ])
        .await;
    assert!(
        matches!(res, Err(StoreError::InsufficientStock { .. })),
        "got {res:?}"
    );
    assert_eq!(store.load_order(&fresh2.id).await.unwrap(), None);
    assert_eq!(stock(store, &mid, "a").await, Some((5, 1)));
    assert_eq!(stock(store, &mid, "b").await, Some((1, 1)));

    // ... and with a database-level failure (duplicate key) after an earlier write.
    let fresh3 = order(&id("o"), &mid);
    let res = store
        .commit(vec![
            Write::Event(event(&fresh3.id, "order_created", json!({}))),
            adjust(&mid, "a", -1, 1),
            Write::InsertOrder(fresh3.clone().into()),
            Write::InsertOrder(existing.clone().into()),
        ])
        .await;
    assert!(matches!(res, Err(StoreError::Duplicate(_))), "got {res:?}");
    assert_eq!(store.load_order(&fresh3.id).await.unwrap(), None);
    assert!(store.outbox_for(&fresh3.id).await.unwrap().is_empty());
    assert_eq!(stock(store, &mid, "a").await, Some((5, 1)));

    // The store is still usable, and the same change without the bad write goes through whole.
    store
        .commit(vec![
            Write::InsertOrder(fresh.clone().into()),
            Write::Event(event(&fresh.id, "order_created", json!({"id": fresh.id}))),
            adjust(&mid, "a", -2, 3),
        ])
        .await
        .expect("the good part alone");
    assert_eq!(
        store.load_order(&fresh.id).await.unwrap(),
        Some(fresh.clone())
    );
    assert_eq!(store.outbox_for(&fresh.id).await.unwrap().len(), 1);
    assert_eq!(stock(store, &mid, "a").await, Some((3, 3)));
    store.close().await;
}

/// What one concurrent commit in `check_group_commit_isolation` tried.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Inserts an order with two events: must succeed.
    Good,
    /// Inserts an order and an event, then fails on a stale update: must leave nothing.
    Doomed,
    /// Races the other racers to update one shared order from version 1: exactly one wins.
    Racer,
}

async fn check_group_commit_isolation(store: &Store) {
    const N: usize = 200;
    let mid = id("m");
    let shared = order(&id("o"), &mid);
    store
        .commit(vec![Write::InsertOrder(shared.clone().into())])
        .await
        .expect("insert shared order");

    let kind = |i: usize| match i % 4 {
        0 | 1 => Kind::Good,
        2 => Kind::Doomed,
        _ => Kind::Racer,
    };
    let orders: Vec<Order> = (0..N).map(|_| order(&id("o"), &mid)).collect();

    let tasks = (0..N).map(|i| {
        let store = store.clone();
        let o = orders[i].clone();
        let shared = shared.clone();
        let k = kind(i);
        tokio::spawn(async move {
            let writes = match k {
                Kind::Good => vec![
                    Write::InsertOrder(o.clone().into()),
                    Write::Event(event(&o.id, "order_created", json!({"i": i}))),
                    Write::Event(event(&o.id, "order_paid", json!({"i": i}))),
                ],
                Kind::Doomed => {
                    let mut stale = shared.clone();
                    stale.version = 99;
                    vec![
                        Write::InsertOrder(o.clone().into()),
                        Write::Event(event(&o.id, "order_created", json!({"i": i}))),
                        Write::UpdateOrder {
                            order: stale.into(),
                            expected_version: 98,
                        },
                    ]
                }
                Kind::Racer => {
                    let mut next = shared.clone();
                    next.version = 2;
                    next.status = OrderStatus::Paid;
                    next.rider_id = Some(format!("racer-{i}"));
                    vec![
                        Write::UpdateOrder {
                            order: next.into(),
                            expected_version: 1,
                        },
                        Write::Event(event(&shared.id, "order_paid", json!({"i": i}))),
                    ]
                }
            };
            store.commit(writes).await
        })
    });
    let outcomes: Vec<Result<(), StoreError>> = join_all(tasks)
        .await
        .into_iter()
        .map(|j| j.expect("commit task panicked"))
        .collect();

    let mut winners = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        match (kind(i), outcome) {
            (Kind::Good, Ok(())) => {}
            (Kind::Good, Err(e)) => panic!("independent commit {i} failed: {e:?}"),
            (Kind::Doomed, Err(StoreError::VersionConflict { .. })) => {}
            (Kind::Doomed, other) => {
                panic!("commit {i} must fail with VersionConflict, got {other:?}")
            }
            (Kind::Racer, Ok(())) => winners.push(i),
            (Kind::Racer, Err(StoreError::VersionConflict { .. })) => {}
            (Kind::Racer, Err(e)) => {
                panic!("racer {i} may only lose with VersionConflict, got {e:?}")
            }
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one racer must win, winners: {winners:?}"
    );
    let winner = winners[0];

    // Everything acknowledged is durable; everything refused left nothing.
    let mut seqs = HashSet::new();
    for (i, o) in orders.iter().enumerate() {
        let loaded = store.load_order(&o.id).await.unwrap();
        let outbox = store.outbox_for(&o.id).await.unwrap();
        match kind(i) {
            Kind::Good => {
                assert_eq!(loaded.as_ref(), Some(o), "order {i} must be durable");
                let types: Vec<&str> = outbox.iter().map(|r| r.event.event_type.as_str()).collect();
                assert_eq!(
                    types,
                    ["order_created", "order_paid"],
                    "outbox of order {i}"
                );
                assert!(outbox[0].seq < outbox[1].seq, "outbox seq order of {i}");
                for r in &outbox {
                    assert_eq!(r.event.payload, json!({"i": i}));
                    assert!(seqs.insert(r.seq), "seq {} used twice", r.seq);
                }
            }
            Kind::Doomed => {
                assert_eq!(loaded, None, "failed commit {i} left its order behind");
                assert!(
                    outbox.is_empty(),
                    "failed commit {i} left events: {outbox:?}"
                );
            }
            Kind::Racer => assert_eq!(loaded, None),
        }
    }
    let stored = store
        .load_order(&shared.id)
        .await
        .unwrap()
        .expect("shared order");
    assert_eq!(stored.version, 2);
    assert_eq!(stored.status, OrderStatus::Paid);
    assert_eq!(stored.rider_id, Some(format!("racer-{winner}")));
    let shared_events = store.outbox_for(&shared.id).await.unwrap();
    assert_eq!(
        shared_events.len(),
        1,
        "only the winning racer's event may exist: {shared_events:?}"
    );
    assert_eq!(shared_events[0].event.payload, json!({"i": winner}));
    store.close().await;
}

/// Events of one aggregate come back in commit order, with increasing sequence numbers.
async fn check_outbox_order(store: &Store) {
    let agg = id("o");
    let other = id("o");
    for n in 0..6 {
        store
            .commit(vec![
                Write::Event(event(
                    &agg,
                    &format!("e{n}"),
                    json!({"n": n, "s": "ünïcødé"}),
                )),
                Write::Event(event(&other, "noise", json!(null))),
            ])
            .await
            .expect("event");
    }
    // Several events in one write set keep their order too.
    store
        .commit(vec![
            Write::Event(event(&agg, "e6", json!({"n": 6, "s": "ünïcødé"}))),
            Write::Event(event(&agg, "e7", json!({"n": 7, "s": "ünïcødé"}))),
        ])
        .await
        .expect("two events");

    let rows = store.outbox_for(&agg).await.unwrap();
    assert_eq!(rows.len(), 8);
    for (n, r) in rows.iter().enumerate() {
        assert_eq!(
            r.event,
            event(&agg, &format!("e{n}"), json!({"n": n, "s": "ünïcødé"}))
        );
    }
    assert!(
        rows.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq must increase: {:?}",
        rows.iter().map(|r| r.seq).collect::<Vec<_>>()
    );
    assert_eq!(store.outbox_for(&other).await.unwrap().len(), 6);
    assert!(store.outbox_for(&id("o")).await.unwrap().is_empty());
    store.close().await;
}

async fn check_duplicate_insert(store: &Store) {
    let mid = id("m");
    let first = order(&id("o"), &mid);
    store
        .commit(vec![Write::InsertOrder(first.clone().into())])
        .await
        .expect("first insert");
    let mut again = first.clone();
    again.customer_id = "someone else".into();
    again.total_cents = 1;
    let res = store
        .commit(vec![
            Write::Event(event(&first.id, "order_created", json!({}))),
            Write::InsertOrder(again.into()),
        ])
        .await;
    assert!(matches!(res, Err(StoreError::Duplicate(_))), "got {res:?}");
    assert_eq!(
        store.load_order(&first.id).await.unwrap(),
        Some(first.clone())
    );
    assert!(store.outbox_for(&first.id).await.unwrap().is_empty());

    let m = merchant(&id("m"));
    store
        .commit(vec![Write::InsertMerchant(m.clone())])
        .await
        .expect("merchant");
    let mut m2 = m.clone();
    m2.name = "Impostor".into();
    let res = store.commit(vec![Write::InsertMerchant(m2)]).await;
    assert!(matches!(res, Err(StoreError::Duplicate(_))), "got {res:?}");
    assert_eq!(
        store.load_merchant(&m.id).await.unwrap(),
        Some((m, Vec::new()))
    );

    let r = rider(&id("r"));
    store
        .commit(vec![Write::InsertRider(r.clone())])
        .await
        .expect("rider");
    let mut r2 = r.clone();
    r2.name = "Impostor".into();
    let res = store.commit(vec![Write::InsertRider(r2)]).await;
    assert!(matches!(res, Err(StoreError::Duplicate(_))), "got {res:?}");
    assert_eq!(store.load_rider(&r.id).await.unwrap(), Some(r));
    store.close().await;
}

/// Many concurrent inserts of one id (batched together by the writer): exactly one wins, the
/// rest are `Duplicate`, and their neighbours in the same batch are unaffected.
async fn check_concurrent_duplicate_insert(store: &Store) {
    const N: usize = 40;
    let mid = id("m");
    let contested = id("o");
    let bystanders: Vec<Order> = (0..N).map(|_| order(&id("o"), &mid)).collect();
    let tasks = (0..N).map(|i| {
        let store = store.clone();
        let mut o = order(&contested, &mid);
        o.customer_id = format!("cust-{i}");
        let bystander = bystanders[i].clone();
        let contested = contested.clone();
        tokio::spawn(async move {
            let mine = store
                .commit(vec![
                    Write::InsertOrder(o.into()),
                    Write::Event(event(&contested, "order_created", json!({"i": i}))),
                ])
                .await;
            let theirs = store
                .commit(vec![Write::InsertOrder(bystander.into())])
                .await;
            (mine, theirs)
        })
    });
    let outcomes: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|j| j.expect("task panicked"))
        .collect();
    let mut winners = Vec::new();
    for (i, (mine, theirs)) in outcomes.into_iter().enumerate() {
        match mine {
            Ok(()) => winners.push(i),
            Err(StoreError::Duplicate(_)) => {}
            Err(e) => panic!("insert {i} may only lose with Duplicate, got {e:?}"),
        }
        theirs.unwrap_or_else(|e| panic!("unrelated insert {i} failed: {e:?}"));
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let stored = store
        .load_order(&contested)
        .await
        .unwrap()
        .expect("contested order");
    assert_eq!(stored.customer_id, format!("cust-{}", winners[0]));
    let events = store.outbox_for(&contested).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event.payload, json!({"i": winners[0]}));
    for b in &bystanders {
        assert_eq!(store.load_order(&b.id).await.unwrap().as_ref(), Some(b));
    }
    store.close().await;
}

async fn check_concurrent_stock(store: &Store) {
    const STOCK: i64 = 30;
    const BUYERS: usize = 100;
    let mid = seed_merchant(store, &[("hot", STOCK), ("cold", 5)], 1).await;
    let tasks = (0..BUYERS).map(|_| {
        let store = store.clone();
        let mid = mid.clone();
        tokio::spawn(async move { store.commit(vec![adjust(&mid, "hot", -1, 1)]).await })
    });
    let mut ok = 0;
    for (i, j) in join_all(tasks).await.into_iter().enumerate() {
        match j.expect("task panicked") {
            Ok(()) => ok += 1,
            Err(StoreError::InsufficientStock { .. }) => {}
            Err(e) => panic!("decrement {i} may only fail with InsufficientStock, got {e:?}"),
        }
    }
    assert_eq!(ok, STOCK, "exactly the stock may be sold");
    assert_eq!(stock(store, &mid, "hot").await, Some((0, 1)));
    assert_eq!(stock(store, &mid, "cold").await, Some((5, 1)));
    store.close().await;
}

/// Concurrent changes that each touch the same SKUs in opposite orders (two-SKU orders) must all
/// go through: parallel writer transactions may not deadlock each other into failing changes.
async fn check_concurrent_multi_sku(store: &Store) {
    const ROUNDS: usize = 3;
    const N: usize = 200;
    const SKUS: [&str; 3] = ["x", "y", "z"];
    // Change i takes 1 of one SKU and 2 of the next, listing them in either order.
    let pair = |i: usize| (SKUS[i % 3], SKUS[(i + 1) % 3]);
    let mid = seed_merchant(store, &[("x", 10_000), ("y", 10_000), ("z", 10_000)], 1).await;
    let mut taken = std::collections::HashMap::<&str, i64>::new();
    for round in 0..ROUNDS {
        let tasks = (0..N).map(|i| {
            let store = store.clone();
            let mid = mid.clone();
            let (a, b) = pair(i);
            tokio::spawn(async move {
                let o = order(&id("o"), &mid);
                let mut writes = if (i / 3) % 2 == 0 {
                    vec![adjust(&mid, a, -1, 1), adjust(&mid, b, -2, 1)]
                } else {
                    vec![adjust(&mid, b, -2, 1), adjust(&mid, a, -1, 1)]
                };
                writes.push(Write::InsertOrder(o.clone().into()));
                writes.push(Write::Event(event(&o.id, "order_created", json!({"i": i}))));
                (store.commit(writes).await, o)
            })
        });
        for (i, j) in join_all(tasks).await.into_iter().enumerate() {
            let (res, o) = j.expect("task panicked");
            res.unwrap_or_else(|e| panic!("round {round}: change {i} failed: {e:?}"));
            assert_eq!(store.load_order(&o.id).await.unwrap().as_ref(), Some(&o));
            assert_eq!(store.outbox_for(&o.id).await.unwrap().len(), 1);
            let (a, b) = pair(i);
            *taken.entry(a).or_default() += 1;
            *taken.entry(b).or_default() += 2;
        }
    }
    for sku in SKUS {
        assert_eq!(
            stock(store, &mid, sku).await,
            Some((10_000 - taken[sku], 1)),
            "stock of {sku}"
        );
    }
    store.close().await;
}

async fn check_closed_store_rejects_writes(store: &Store) {
    let mid = seed_merchant(store, &[("a", 1)], 1).await;
    store.close().await;
    let o = order(&id("o"), &mid);
    assert!(matches!(
        store
            .commit(vec![Write::InsertOrder(o.clone().into())])
            .await,
        Err(StoreError::Closed)
    ));
    // Reads still work, and nothing was written.
    assert_eq!(store.load_order(&o.id).await.unwrap(), None);
    assert_eq!(stock(store, &mid, "a").await, Some((1, 1)));
    // Closing twice is harmless.
    store.close().await;
}

/// Loads are coalesced into `WHERE id IN (..)` rounds: 600 concurrent loads of 200 stored
/// orders (each asked for twice), 100 missing ids and the same missing id 100 times must each
/// get exactly their own row or `None`.
async fn check_concurrent_loads(store: &Store) {
    let mid = id("m");
    let mut stored = Vec::new();
    for i in 0..200 {
        let mut o = order(&id("o"), &mid);
        o.total_cents = i;
        stored.push(o);
    }
    let writes: Vec<_> = stored
        .iter()
        .map(|o| store.commit(vec![Write::InsertOrder(o.clone().into())]))
        .collect();
    for w in join_all(writes).await {
        w.expect("insert");
    }
    let missing: Vec<String> = (0..100).map(|_| id("absent")).collect();
    let same_missing = id("absent");
    let mut asks: Vec<(String, Option<Order>)> = Vec::new();
    for o in stored.iter().chain(stored.iter()) {
        asks.push((o.id.clone(), Some(o.clone())));
    }
    for m in &missing {
        asks.push((m.clone(), None));
    }
    for _ in 0..100 {
        asks.push((same_missing.clone(), None));
    }
    let loads = asks.iter().map(|(id, _)| store.load_order(id));
    let got = join_all(loads).await;
    for ((id, want), got) in asks.iter().zip(got) {
        assert_eq!(&got.expect("load"), want, "load of {id}");
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster support: shard epochs, outbox shipping, node heartbeats
// ---------------------------------------------------------------------------------------------

/// A claim bumps the shard's epoch; a write fenced with an older epoch is refused whole, one
/// with the current epoch lands.
async fn check_shard_epochs(store: &Store) {
    assert_eq!(
        store.claim_shard(3, "node-a", "http://a:1").await.unwrap(),
        1
    );
    assert_eq!(
        store.claim_shard(3, "node-b", "http://b:2").await.unwrap(),
        2
    );
    assert_eq!(
        store.claim_shard(5, "node-a", "http://a:1").await.unwrap(),
        1
    );
    let owners = store.shard_owners().await.unwrap();
    let three = owners.iter().find(|o| o.shard == 3).expect("shard 3");
    assert_eq!(
        (three.epoch, three.node_id.as_str(), three.addr.as_str()),
        (2, "node-b", "http://b:2")
    );

    let stale = order(&id("o"), &id("m"));
    let res = store
        .commit_fenced(
            Some(ShardEpoch { shard: 3, epoch: 1 }),
            vec![
                Write::InsertOrder(stale.clone().into()),
                Write::Event(event(&stale.id, "order_created", json!({}))),
            ],
        )
        .await;
    assert!(
        matches!(res, Err(StoreError::Fenced { shard: 3, epoch: 1 })),
        "{res:?}"
    );
    assert_eq!(
        store.load_order(&stale.id).await.unwrap(),
        None,
        "nothing of it landed"
    );
    assert!(store.outbox_for(&stale.id).await.unwrap().is_empty());

    let current = order(&id("o"), &id("m"));
    store
        .commit_fenced(
            Some(ShardEpoch { shard: 3, epoch: 2 }),
            vec![Write::InsertOrder(current.clone().into())],
        )
        .await
        .expect("current epoch writes");
    assert!(store.load_order(&current.id).await.unwrap().is_some());
    // A shard nobody claimed refuses fenced writes too.
    let unclaimed = order(&id("o"), &id("m"));
    let res = store
        .commit_fenced(
            Some(ShardEpoch { shard: 9, epoch: 1 }),
            vec![Write::InsertOrder(unclaimed.into())],
        )
        .await;
    assert!(
        matches!(res, Err(StoreError::Fenced { shard: 9, .. })),
        "{res:?}"
    );
}

/// Fenced and current jobs committed together (one group-commit batch): the stale ones are
/// refused, their neighbours land, in the bulk path and the per-change path alike.
async fn check_fenced_jobs_in_one_batch(store: &Store) {
    store.claim_shard(1, "a", "http://a").await.unwrap();
    store.claim_shard(1, "b", "http://b").await.unwrap(); // epoch 2
    store.claim_shard(2, "a", "http://a").await.unwrap(); // epoch 1
    let mid = seed_merchant(store, &[("s", 1000)], 1).await;
    let existing = order(&id("o"), &mid);
    store
        .commit(vec![Write::InsertOrder(existing.clone().into())])
        .await
        .expect("existing");
    let mut jobs = Vec::new();
    let mut want = Vec::new();
    for i in 0..60 {
        let (fence, ok) = match i % 3 {
            0 => (ShardEpoch { shard: 1, epoch: 1 }, false),
            1 => (ShardEpoch { shard: 1, epoch: 2 }, true),
            _ => (ShardEpoch { shard: 2, epoch: 1 }, true),
        };
        if i == 31 {
            // A current job that conflicts (a duplicate id) forces the per-change path for
            // whatever batch it lands in; it fails alone.
            jobs.push(store.commit_fenced(
                Some(fence),
                vec![Write::InsertOrder(existing.clone().into())],
            ));
            want.push((existing.id.clone(), false));
            continue;
        }
        let o = order(&id("o"), &mid);
        let writes = vec![
            Write::InsertOrder(o.clone().into()),
            adjust(&mid, "s", -1, 1),
            Write::Event(event(&o.id, "order_created", json!({"i": i}))),
        ];
        want.push((o.id.clone(), ok));
        jobs.push(store.commit_fenced(Some(fence), writes));
    }
    let results = join_all(jobs).await;
    let mut landed = 0;
    for ((oid, ok), res) in want.iter().zip(results) {
        if *ok {
            res.unwrap_or_else(|e| panic!("{oid}: {e}"));
            assert!(store.load_order(oid).await.unwrap().is_some());
            landed += 1;
        } else if *oid == existing.id {
            assert!(
                matches!(res, Err(StoreError::Duplicate(_))),
                "{oid}: {res:?}"
            );
        } else {
            assert!(
                matches!(res, Err(StoreError::Fenced { shard: 1, epoch: 1 })),
                "{oid}: {res:?}"
            );
            assert_eq!(
                store.load_order(oid).await.unwrap(),
                None,
                "{oid} must not land"
            );
        }
    }
    assert_eq!(
        stock(store, &mid, "s").await,
        Some((1000 - landed, 1)),
        "only landed orders took stock"
    );
}

/// Outbox rows carry their entity's shard; `unshipped` returns a shard set's rows oldest
/// first, `mark_shipped` takes them out, `outbox_backlog` counts what is left.
async fn check_outbox_shipping(store: &Store) {
    let n = store.shard_count();
    let ids: Vec<String> = (0..40).map(|_| id("agg")).collect();
    for (i, a) in ids.iter().enumerate() {
        store
            .commit(vec![Write::Event(event(
                a,
                "order_created",
                json!({"i": i, "version": 1}),
            ))])
            .await
            .expect("event");
    }
    let shard = waimai::cluster::shard_of(&ids[0], n);
    let mine: Vec<&String> = ids
        .iter()
        .filter(|a| waimai::cluster::shard_of(a, n) == shard)
        .collect();
    let rows = store.unshipped(&[shard], 100).await.unwrap();
    assert_eq!(rows.len(), mine.len());
    assert!(rows.iter().all(|r| r.shard == shard));
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
    assert_eq!(rows[0].event.aggregate_id, *mine[0]);
    assert_eq!(rows[0].event.payload.value()["version"], 1);
    let all: Vec<u32> = (0..n).collect();
    let (pending, oldest) = store.outbox_backlog(&all).await.unwrap();
    assert_eq!((pending, oldest), (40, Some(1_700_000_000_999)));
    let limited = store.unshipped(&all, 7).await.unwrap();
    assert_eq!(limited.len(), 7, "at most the limit");
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    store.mark_shipped(&seqs).await.unwrap();
    assert!(store.unshipped(&[shard], 100).await.unwrap().is_empty());
    let (pending, _) = store.outbox_backlog(&all).await.unwrap();
    assert_eq!(pending, 40 - mine.len() as i64);
}

/// The retention pruner deletes old rows only: on a cluster only shipped ones, on a single node
/// all of them. Old rows that must stay at the front never stop a pass (it steps past them,
/// a small range at a time), and young rows are never touched.
async fn check_outbox_retention(store: &Store) {
    let old = 1_700_000_000_999;
    let young = old + 10_000_000;
    // 5 old rows, 30 old rows, 10 young rows, in seq order.
    let ids: Vec<String> = (0..45).map(|_| id("agg")).collect();
    for (i, a) in ids.iter().enumerate() {
        let mut e = event(a, "order_created", json!({"version": 1}));
        e.created_at = if i < 35 { old } else { young };
        store.commit(vec![Write::Event(e)]).await.expect("event");
    }
    let all: Vec<u32> = (0..store.shard_count()).collect();
    let mut unshipped = store.unshipped(&all, 100).await.unwrap();
    assert_eq!(unshipped.len(), 45);
    unshipped.sort_by_key(|r| r.seq);
    // The first 5 (old) stay unshipped; the other 30 old ones and the young ones are shipped.
    let shipped: Vec<i64> = unshipped[5..].iter().map(|r| r.seq).collect();
    store.mark_shipped(&shipped).await.unwrap();
    let left = |store: &Store| {
        let (store, ids) = (store.clone(), ids.clone());
        async move {
            let mut kept = Vec::new();
            for (i, a) in ids.iter().enumerate() {
                if !store.outbox_for(a).await.unwrap().is_empty() {
                    kept.push(i);
                }
            }
            kept
        }
    };

    // A cluster's pass: shipped old rows go, in ranges of 4 seqs past the 5 that stay.
    let steps = store.prune_outbox(young, true, 4).await.expect("prune");
    assert!(steps >= 8, "several small ranges: {steps}");
    let kept = left(store).await;
    let expect: Vec<usize> = (0..5).chain(35..45).collect();
    assert_eq!(kept, expect, "unshipped old rows and young rows stay");

    // Nothing older is left to delete: a second pass changes nothing.
    store
        .prune_outbox(young, true, 4)
        .await
        .expect("prune again");
    assert_eq!(left(store).await, expect);

    // A single node's pass: every old row goes, shipped or not; young rows stay.
    store
        .prune_outbox(young, false, 2_000)
        .await
        .expect("prune all");
    let expect: Vec<usize> = (35..45).collect();
    assert_eq!(left(store).await, expect);
    assert_eq!(store.unshipped(&all, 100).await.unwrap().len(), 0);
}

/// A provider event's one read: whether the event was applied already, and the order's
/// intents oldest first (none for an order never paid for).
async fn check_payment_notice_context(store: &Store) {
    let oid = id("o");
    let intent = |n: i64| PaymentRow {
        intent_id: format!("{oid}_pi{n}"),
        order_id: oid.clone(),
        amount_cents: 1200,
        method: "card".into(),
        status: "open".into(),
        created_at: 1_700_000_000_000 + n,
        updated_at: 1_700_000_000_000 + n,
    };
    assert_eq!(
        store.payment_notice_context("evt_x", &oid).await.unwrap(),
        (false, Vec::new())
    );
    store
        .commit(vec![Write::InsertPayment(intent(2))])
        .await
        .expect("second intent");
    store
        .commit(vec![Write::InsertPayment(intent(1))])
        .await
        .expect("first intent");
    let (seen, rows) = store.payment_notice_context("evt_a", &oid).await.unwrap();
    assert!(!seen);
    assert_eq!(rows, vec![intent(1), intent(2)], "oldest first");
    store
        .commit(vec![Write::PaymentEvent {
            event_id: "evt_a".into(),
            intent_id: intent(1).intent_id,
            kind: "payment.succeeded".into(),
            at: 1_700_000_000_100,
        }])
        .await
        .expect("event");
    let (seen, rows) = store.payment_notice_context("evt_a", &oid).await.unwrap();
    assert!(seen, "an applied event is seen");
    assert_eq!(rows.len(), 2);
    let (seen, _) = store.payment_notice_context("evt_b", &oid).await.unwrap();
    assert!(!seen, "another event is not");
}

/// Orders are stamped with their shard: a node taking a shard over finds its orders waiting
/// in timed statuses. An order without a recorded pickup point round-trips too.
async fn check_orders_of_shards(store: &Store) {
    let n = store.shard_count();
    let mid = id("m");
    let mut by_shard: std::collections::HashMap<u32, Vec<String>> = Default::default();
    for i in 0..30 {
        let mut o = order(&id("o"), &mid);
        if i % 2 == 0 {
            o.pickup = None;
        }
        if i % 5 == 0 {
            o.status = OrderStatus::Completed;
        }
        store
            .commit(vec![Write::InsertOrder(o.clone().into())])
            .await
            .expect("insert");
        assert_eq!(
            store.load_order(&o.id).await.unwrap().as_ref(),
            Some(&o),
            "round trip"
        );
        if o.status == OrderStatus::PendingPayment {
            by_shard
                .entry(waimai::cluster::shard_of(&o.id, n))
                .or_default()
                .push(o.id);
        }
    }
    let (shard, want) = by_shard.iter().next().expect("some shard");
    let got = store
        .orders_of_shards(&[*shard], &[OrderStatus::PendingPayment, OrderStatus::Paid])
        .await
        .unwrap();
    let got: HashSet<String> = got.into_iter().map(|o| o.id).collect();
    assert_eq!(got, want.iter().cloned().collect::<HashSet<_>>());
    assert!(store
        .orders_of_shards(&[], &[OrderStatus::Paid])
        .await
        .unwrap()
        .is_empty());
}

/// Heartbeats upsert one row per node.
async fn check_cluster_nodes(store: &Store) {
    let row = |seen: i64, lag: i64| NodeRow {
        node_id: "node-x".into(),
        addr: "http://x:1".into(),
        started_at: 1,
        last_seen: seen,
        lag,
    };
    store.heartbeat(&row(10, 0)).await.unwrap();
    store.heartbeat(&row(20, 7)).await.unwrap();
    let nodes = store.nodes().await.unwrap();
    assert_eq!(nodes, vec![row(20, 7)]);
}

/// Nodes starting together on an empty database take turns on the schema: every migration
/// applies once and no start fails (PostgreSQL raced on `pg_type` without the lock).
async fn concurrent_migrations(db: Db) {
    let url = fresh_db(db).await;
    let cfg = common::config(&url, LockBackendKind::Local);
    let stores = join_all((0..4).map(|_| Store::connect(&cfg.store, 16))).await;
    let stores: Vec<Store> = stores.into_iter().map(|s| s.expect("connect")).collect();
    let results = join_all(stores.iter().map(|s| s.migrate())).await;
    for r in results {
        r.expect("every concurrent migrate succeeds");
    }
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("db");
    let versions: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM waimai_schema ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .expect("versions");
    let want: Vec<(i64,)> = waimai::store::schema_versions()
        .into_iter()
        .map(|v| (v,))
        .collect();
    assert_eq!(versions, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_migrations_take_turns() {
    concurrent_migrations(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_concurrent_migrations_take_turns() {
    concurrent_migrations(Db::MySql).await;
}

/// Rows written before shards were recorded get them stamped when a cluster node starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backfill_stamps_older_rows() {
    let url = fresh_db(Db::Postgres).await;
    let cfg = common::config(&url, LockBackendKind::Local);
    let store = Store::connect(&cfg.store, 16).await.expect("connect");
    store.migrate().await.expect("migrate");
    let mut ids = Vec::new();
    for _ in 0..20 {
        let o = order(&id("o"), &id("m"));
        store
            .commit(vec![
                Write::InsertOrder(o.clone().into()),
                Write::Event(event(&o.id, "order_created", json!({}))),
            ])
            .await
            .expect("insert");
        ids.push(o.id);
    }
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("db");
    sqlx::Executor::execute(&mut conn, "UPDATE orders SET shard = NULL")
        .await
        .expect("null");
    sqlx::Executor::execute(&mut conn, "UPDATE outbox SET shard = NULL")
        .await
        .expect("null");
    assert_eq!(store.backfill_shards().await.expect("backfill"), 40);
    for oid in &ids {
        let want = i64::from(waimai::cluster::shard_of(oid, 16));
        let (o,): (i64,) = sqlx::query_as("SELECT shard::bigint FROM orders WHERE id = $1")
            .bind(oid)
            .fetch_one(&mut conn)
            .await
            .expect("order shard");
        let (e,): (i64,) =
            sqlx::query_as("SELECT shard::bigint FROM outbox WHERE aggregate_id = $1")
                .bind(oid)
                .fetch_one(&mut conn)
                .await
                .expect("outbox shard");
        assert_eq!((o, e), (want, want), "{oid}");
    }
    assert_eq!(store.backfill_shards().await.expect("again"), 0);
}

/// The simulated payment provider's writes go through the group-commit writer: an intent is
/// taken once (a second one with its id changes nothing and says so), its callbacks are
/// scheduled with it, concurrent duplicates leave one intent, a refused callback is
/// rescheduled, delivered callbacks are removed in one write, and a refund is taken once.
async fn check_sim_provider_writes(store: &Store) {
    let oid = id("o");
    let intent = id("pi");
    let cbs = |tag: &str| {
        vec![
            (
                format!("evt_{intent}_{tag}_1"),
                1_000,
                format!(r#"{{"n":1,"t":"{tag}"}}"#),
            ),
            (
                format!("evt_{intent}_{tag}_2"),
                2_000,
                format!(r#"{{"n":2,"t":"{tag}"}}"#),
            ),
        ]
    };
    let first = store
        .sim_create_intent(&intent, &oid, 1250, "card", "succeeded", 500, &cbs("a"))
        .await
        .expect("first intent");
    assert!(first, "a new intent is new");
    let again = store
        .sim_create_intent(
            &intent,
            &oid,
            9999,
            "card_declined",
            "failed",
            600,
            &cbs("b"),
        )
        .await
        .expect("second intent");
    assert!(!again, "the same intent id a second time is not new");
    assert_eq!(
        store.sim_intent(&intent).await.expect("read intent"),
        Some((
            oid.clone(),
            1250,
            "card".to_string(),
            "succeeded".to_string()
        )),
        "the first intent stands"
    );
    let now = sim_due(store, &intent, 1_500).await;
    assert_eq!(now.len(), 1, "only the first callback is due at 1,500");
    let all = sim_due(store, &intent, 5_000).await;
    assert_eq!(
        all.iter().map(|c| c.body.as_str()).collect::<Vec<_>>(),
        vec![r#"{"n":1,"t":"a"}"#, r#"{"n":2,"t":"a"}"#],
        "the first intent's callbacks, scheduled once, in due order"
    );

    // Eight concurrent takers of one new intent: exactly one is new.
    let raced = id("pi");
    let news = join_all((0..8).map(|i| {
        let raced = raced.clone();
        let oid = oid.clone();
        async move {
            store
                .sim_create_intent(&raced, &oid, 100 + i, "card", "succeeded", 700, &[])
                .await
                .expect("raced intent")
        }
    }))
    .await;
    assert_eq!(news.iter().filter(|n| **n).count(), 1, "{news:?}");

    // A refused callback is tried again later, its attempts counted.
    store
        .sim_callback_retry(all[0].seq, 3_000)
        .await
        .expect("retry");
    let later = sim_due(store, &intent, 2_500).await;
    assert_eq!(
        later.len(),
        1,
        "the retried callback is no longer due at 2,500"
    );
    let retried = sim_due(store, &intent, 5_000).await;
    assert_eq!(
        retried
            .iter()
            .map(|c| (c.seq, c.attempts))
            .collect::<Vec<_>>(),
        vec![(all[1].seq, 0), (all[0].seq, 1)],
        "due order follows the new due time"
    );

    store
        .sim_callbacks_delivered(&all.iter().map(|c| c.seq).collect::<Vec<_>>())
        .await
        .expect("delivered");
    assert!(
        sim_due(store, &intent, 5_000).await.is_empty(),
        "delivered callbacks are gone"
    );

    // A refund is taken once, its callbacks scheduled once.
    let refund = format!("re_{oid}");
    let rcb = vec![(
        format!("evt_{intent}_r"),
        4_000,
        r#"{"refund":1}"#.to_string(),
    )];
    for _ in 0..2 {
        let status = store
            .sim_create_refund(&refund, &intent, &oid, 1250, 800, &rcb)
            .await
            .expect("refund");
        assert_eq!(status, "succeeded");
    }
    assert_eq!(store.sim_refund_count(&oid).await.expect("count"), 1);
    assert_eq!(
        store
            .sim_refund(&refund)
            .await
            .expect("read refund")
            .as_deref(),
        Some("succeeded")
    );
    let rdue = sim_due(store, &intent, 5_000).await;
    assert_eq!(rdue.len(), 1, "the refund's callback, once");
    assert_eq!(rdue[0].body, r#"{"refund":1}"#);
    store
        .sim_callbacks_delivered(&[])
        .await
        .expect("nothing to remove");
}

/// The scheduled callbacks of `intent` due by `at`.
async fn sim_due(store: &Store, intent: &str, at: i64) -> Vec<waimai::store::SimCallback> {
    let prefix = format!("evt_{intent}_");
    store
        .sim_due_callbacks(None, at, 100)
        .await
        .expect("due")
        .into_iter()
        .filter(|c| c.event_id.starts_with(&prefix))
        .collect()
}
