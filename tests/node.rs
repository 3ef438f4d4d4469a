//! A node's life: graceful shutdown keeps everything acknowledged, a restart serves it again,
//! idle actors are passivated and come back from the store, a lost database answers 503, and
//! the binary's `token` and `migrate` subcommands work.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, fresh_db, Db, TestApp};
use waimai::actors::shard::CountActors;
use waimai::config::LockBackendKind;
use waimai::domain::Role;

/// Live (orders, merchants) across all shards.
async fn live(app: &TestApp) -> (usize, usize) {
    let mut n = (0, 0);
    for s in app.node.router.shards() {
        let (o, m, _) = s.send(CountActors).await.expect("shard answers");
        n = (n.0 + o, n.1 + m);
    }
    n
}

async fn live_orders(app: &TestApp) -> usize {
    live(app).await.0
}

#[actix_rt::test]
async fn shutdown_loses_nothing_acknowledged_and_a_restart_serves_it() {
    let url = fresh_db(Db::Sqlite).await;
    let cfg = config(&url, LockBackendKind::Local);

    // First life: take orders, then stop while more are arriving.
    let listener = waimai::server::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = actix_rt::spawn(waimai::serve(cfg.clone(), listener, async move {
        let _ = stopped.await;
    }));
    let auth = waimai::api::Auth::new(&cfg.auth.jwt_secret);
    let admin = auth.mint(Role::Admin, "ops", 600).expect("token");
    let client = reqwest::Client::new();
    let m: serde_json::Value = client
        .post(format!("{base}/v1/merchants"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "K", "location": {"lat": 1.0, "lng": 1.0}}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let mid = m["id"].as_str().expect("id").to_string();
    let mtoken = auth.mint(Role::Merchant, &mid, 600).expect("token");
    let r = client
        .put(format!("{base}/v1/merchants/{mid}/menu"))
        .bearer_auth(&mtoken)
        .json(&serde_json::json!({"items": [{"sku": "s", "name": "S", "price_cents": 100, "stock": 1000}]}))
        .send()
        .await
        .expect("menu");
    assert_eq!(r.status(), 200);

    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (client, base, mid, acks) = (client.clone(), base.clone(), mid.clone(), acked.clone());
        let token = auth
            .mint(Role::Customer, &format!("c{i}"), 600)
            .expect("token");
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({"merchant_id": mid, "items": [{"sku": "s", "qty": 1}], "deliver_to": {"lat": 1.0, "lng": 1.0}});
            if let Ok(resp) = client.post(format!("{base}/v1/orders")).bearer_auth(&token).json(&body).send().await {
                if resp.status() == 201 {
                    if let Ok(v) = resp.json::<serde_json::Value>().await {
                        if let Some(id) = v["id"].as_str() {
                            acks.lock().expect("lock").push(id.to_string());
                        }
                    }
                }
            }
        }));
    }
    // Stop while requests are still arriving.
    stop_now(&acked).await;
    let _ = stop.send(());
    for t in tasks {
        let _ = t.await;
    }
    server.await.expect("server task").expect("clean shutdown");
    let acked = acked.lock().expect("lock").clone();
    assert!(
        !acked.is_empty(),
        "some orders were acknowledged before shutdown"
    );

    // Second life on the same database: every acknowledged order is there, stock agrees.
    let app = TestApp::spawn(cfg).await;
    let counts = app.node.store.count_orders(&mid).await.expect("count");
    let stored: i64 = counts.iter().map(|(_, n)| n).sum();
    assert_eq!(
        stored as usize,
        acked.len(),
        "exactly the acknowledged orders exist"
    );
    let (stock, _) = app
        .node
        .store
        .sku_stock(&mid, "s")
        .await
        .expect("db")
        .expect("sku");
    assert_eq!(stock, 1000 - acked.len() as i64);
    for id in acked.iter().take(20) {
        let r = app.get(&format!("/v1/orders/{id}"), &app.admin).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "pending_payment");
    }
    let r = app.get(&format!("/v1/merchants/{mid}"), &app.admin).await;
    assert_eq!(
        r.body["menu"][0]["stock"],
        1000 - acked.len() as i64,
        "merchant reloads its stock"
    );
}

/// Waits until a few orders are acknowledged (bounded), so shutdown happens mid-traffic.
async fn stop_now(acked: &Arc<std::sync::Mutex<Vec<String>>>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if acked.lock().map(|a| a.len()).unwrap_or(0) >= 20 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn idle_actors_are_passivated_and_reload_from_the_store() {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    cfg.shards.idle_ms = 300;
    cfg.shards.terminal_idle_ms = 100;
    let app = TestApp::spawn(cfg).await;
    let (mid, _) = app.merchant_with_stock("s", 5).await;
    let r = app.order("alice", &mid, "s", 2, None).await;
    let oid = r.body["id"].as_str().expect("id").to_string();
    let alice = app.token(Role::Customer, "alice");
    app.post(&format!("/v1/orders/{oid}/pay"), &alice, None)
        .await;
    assert!(live_orders(&app).await >= 1);

    let deadline = Instant::now() + Duration::from_secs(15);
    while live_orders(&app).await > 0 {
        assert!(
            Instant::now() < deadline,
            "order actor was never passivated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waimai::metrics::render().contains("waimai_actor_passivations_total{kind=\"order\"}"));
    // The idle merchant asks its shard (found through the router) to passivate it too.
    while !waimai::metrics::render().contains("waimai_actor_passivations_total{kind=\"merchant\"}")
    {
        assert!(
            Instant::now() < deadline,
            "merchant actor was never passivated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // It comes back on demand with its persisted state, and the merchant with its stock.
    let r = app.get(&format!("/v1/orders/{oid}"), &alice).await;
    assert_eq!(
        (r.body["status"].as_str(), r.body["version"].as_i64()),
        (Some("paid"), Some(2)),
        "{}",
        r.body
    );
    assert_eq!(live_orders(&app).await, 1);
    // An operator reads the actor (a customer's read may come from the browse cache).
    let r = app.get(&format!("/v1/merchants/{mid}"), &app.admin).await;
    assert_eq!(r.body["menu"][0]["stock"], 3);
    let r = app.order("bob", &mid, "s", 3, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app.order("bob", &mid, "s", 1, None).await;
    assert_eq!(r.status, 409, "{}", r.body);
}

/// A single node's outbox does not grow forever: rows older than `store.outbox_keep_ms` are
/// deleted by the pruner, and the orders they told of stay.
#[actix_rt::test]
async fn old_outbox_rows_are_pruned_and_their_orders_stay() {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    cfg.store.outbox_keep_ms = 1;
    cfg.store.prune_ms = 50;
    let app = TestApp::spawn(cfg).await;
    let (mid, _) = app.merchant_with_stock("s", 5).await;
    let r = app.order("alice", &mid, "s", 2, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let oid = r.body["id"].as_str().expect("id").to_string();

    let deadline = Instant::now() + Duration::from_secs(15);
    while !app
        .node
        .store
        .outbox_for(&oid)
        .await
        .expect("outbox")
        .is_empty()
        || !app
            .node
            .store
            .outbox_for(&mid)
            .await
            .expect("outbox")
            .is_empty()
    {
        assert!(Instant::now() < deadline, "the outbox was never pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(app.metrics().await.contains("waimai_outbox_pruned_total"));
    let alice = app.token(Role::Customer, "alice");
    let r = app.get(&format!("/v1/orders/{oid}"), &alice).await;
    assert_eq!(r.body["status"], "pending_payment", "{}", r.body);
    let r = app
        .post(&format!("/v1/orders/{oid}/pay"), &alice, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// An order actor started by a create does not read the store first; a retry of a create
/// whose answer was lost, arriving after the actor was passivated, must still be answered from
/// the stored order (not refused for stock, not created twice).
#[actix_rt::test]
async fn a_retried_create_after_passivation_is_answered_from_the_store() {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    cfg.shards.idle_ms = 200;
    let app = TestApp::spawn(cfg).await;
    let (mid, _) = app.merchant_with_stock("s", 2).await;
    let first = app.order("alice", &mid, "s", 2, Some("k-1")).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let deadline = Instant::now() + Duration::from_secs(15);
    while live_orders(&app).await > 0 {
        assert!(
            Instant::now() < deadline,
            "order actor was never passivated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stock is now 0: a fresh create would be refused, the replay is not.
    let again = app.order("alice", &mid, "s", 2, Some("k-1")).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.body["version"], first.body["version"]);
    let counts = app.node.store.count_orders(&mid).await.expect("count");
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<i64>(), 1);
    // Same key, other body, after another passivation: refused as a reused key.
    while live_orders(&app).await > 0 {
        assert!(
            Instant::now() < deadline,
            "order actor was never passivated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = app.order("alice", &mid, "s", 1, Some("k-1")).await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.body["error"]["code"], "idempotency_key_reused");
    let r = app.get(&format!("/v1/merchants/{mid}"), &app.admin).await;
    assert_eq!(
        r.body["menu"][0]["stock"], 0,
        "no stock moved by the retries"
    );
}

#[actix_rt::test]
async fn a_lost_database_answers_503_with_a_reason() {
    let url = fresh_db(Db::Postgres).await;
    let app = TestApp::spawn(config(&url, LockBackendKind::Local)).await;
    let (mid, _) = app.merchant_with_stock("s", 5).await;
    assert_eq!(
        app.call(reqwest::Method::GET, "/readyz", None, &[], None)
            .await
            .status,
        200
    );

    // Pull the database out from under the node.
    let name = url.rsplit('/').next().expect("db name").to_string();
    let mut admin = <sqlx::postgres::PgConnection as sqlx::Connection>::connect(&common::pg_base())
        .await
        .expect("pg");
    sqlx::Executor::execute(
        &mut admin,
        format!("DROP DATABASE {name} WITH (FORCE)").as_str(),
    )
    .await
    .expect("drop");

    let r = app.order("alice", &mid, "s", 1, None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "unavailable");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("store")),
        "{}",
        r.body
    );
    let r = app
        .call(reqwest::Method::GET, "/readyz", None, &[], None)
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
}

#[test]
fn token_and_migrate_subcommands() {
    let bin = env!("CARGO_BIN_EXE_waimai");
    let out = std::process::Command::new(bin)
        .args(["token", "--role", "merchant", "--sub", "m-1"])
        .env("WAIMAI__AUTH__JWT_SECRET", "cli-secret")
        .output()
        .expect("run waimai token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf8");
    let caller = waimai::api::Auth::new("cli-secret")
        .caller(Some(&format!("Bearer {}", token.trim())))
        .expect("valid token");
    assert_eq!((caller.role, caller.id.as_str()), (Role::Merchant, "m-1"));
    assert!(waimai::api::Auth::new("other")
        .caller(Some(&format!("Bearer {}", token.trim())))
        .is_err());

    let bad = std::process::Command::new(bin)
        .args(["token", "--role", "wizard", "--sub", "x"])
        .output()
        .expect("run");
    assert!(!bad.status.success());

    let dir = std::env::temp_dir().join(format!("waimai-cli-{}", common::unique()));
    let url = format!("sqlite://{}/cli.db", dir.display());
    let out = std::process::Command::new(bin)
        .arg("migrate")
        .env("WAIMAI__STORE__URL", &url)
        .output()
        .expect("run waimai migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dir.join("cli.db").exists(),
        "migrate created the database file"
    );
}

/// Another writer moves an order behind its actor's back: the actor's next change loses the
/// version check, is refused with 503, and the actor reloads instead of overwriting.
#[actix_rt::test]
async fn a_lost_version_check_reloads_instead_of_overwriting() {
    let app = TestApp::embedded().await;
    let (mid, _) = app.merchant_with_stock("s", 5).await;
    let alice = app.token(Role::Customer, "alice");
    let oid = app.order("alice", &mid, "s", 1, None).await.body["id"]
        .as_str()
        .expect("id")
        .to_string();
    let r = app
        .post(&format!("/v1/orders/{oid}/pay"), &alice, None)
        .await;
    assert_eq!(r.body["version"], 2);

    // The "other writer": accept the order directly in the store (version 2 -> 3).
    let mut other = app
        .node
        .store
        .load_order(&oid)
        .await
        .expect("db")
        .expect("order");
    other.status = waimai::actors::order_machine::OrderStatus::Accepted;
    other.version = 3;
    app.node
        .store
        .commit(vec![waimai::store::Write::UpdateOrder {
            order: other.into(),
            expected_version: 2,
        }])
        .await
        .expect("other writer commits");

    // The actor still believes "paid, version 2": its cancel must not overwrite the row.
    let r = app
        .post(&format!("/v1/orders/{oid}/cancel"), &alice, None)
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "unavailable");

    // After the reload it sees the other writer's state and acts on it.
    let r = app.get(&format!("/v1/orders/{oid}"), &alice).await;
    assert_eq!(
        (r.body["status"].as_str(), r.body["version"].as_i64()),
        (Some("accepted"), Some(3)),
        "{}",
        r.body
    );
    let stored = app
        .node
        .store
        .load_order(&oid)
        .await
        .expect("db")
        .expect("order");
    assert_eq!(
        stored.status.as_str(),
        "accepted",
        "the stale actor did not overwrite the row"
    );
}

/// Cluster mode refuses what cannot be shared between hosts, before touching a broker: a SQLite
/// file, and in-process stock locks.
#[test]
fn cluster_mode_refuses_sqlite_and_local_locks() {
    let bin = env!("CARGO_BIN_EXE_waimai");
    let dir = std::env::temp_dir().join(format!("waimai-cl-{}", common::unique()));
    let run = |store: &str, lock: &str| {
        std::process::Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("WAIMAI__CLUSTER__ENABLED", "true")
            .env("WAIMAI__CLUSTER__BROKERS", "127.0.0.1:1")
            .env("WAIMAI__STORE__URL", store)
            .env("WAIMAI__LOCK__BACKEND", lock)
            .output()
            .expect("run waimai serve")
    };
    let out = run(&format!("sqlite://{}/c.db", dir.display()), "redis");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("SQLite file is not shared between hosts"),
        "clear error for SQLite: {err}"
    );
    let out = run(&common::pg_base(), "local");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("lock.backend: redis"),
        "clear error for local locks: {err}"
    );
}
