//! The REST front door end to end against a real node on port 0: a whole order lifecycle with
//! its ownership checks, stock release rules, idempotency, crash recovery and bad input.

mod common;

use common::{Resp, TestApp};
use serde_json::json;
use waimai::domain::{Caller, Role};
use waimai::messages::{CrashOrder, GetOrder};

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.body);
    assert_eq!(r.body["error"]["code"], code, "body: {}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "message missing: {}",
        r.body
    );
}

async fn stock_of(app: &TestApp, mid: &str) -> i64 {
    let r = app.get(&format!("/v1/merchants/{mid}"), &app.admin).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["menu"][0]["stock"].as_i64().expect("stock")
}

#[actix_rt::test]
async fn full_lifecycle_with_ownership_checks() {
    let app = TestApp::embedded().await;
    let (mid, mtoken) = app.merchant_with_stock("dumplings", 10).await;
    let (rid, rtoken) = app.online_rider().await;
    let (_other_rid, other_rtoken) = app.online_rider().await;
    let alice = app.token(Role::Customer, "alice");
    let bob = app.token(Role::Customer, "bob");

    let r = app.order("alice", &mid, "dumplings", 3, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "pending_payment");
    assert_eq!(r.body["total_cents"], 3000);
    assert_eq!(r.body["version"], 1);
    let oid = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(stock_of(&app, &mid).await, 7);

    // Only the owner (or the merchant, later the rider, or an admin) may read it.
    assert_eq!(
        app.get(&format!("/v1/orders/{oid}"), &alice).await.status,
        200
    );
    assert_error(
        &app.get(&format!("/v1/orders/{oid}"), &bob).await,
        404,
        "not_found",
    );
    assert_eq!(
        app.get(&format!("/v1/orders/{oid}"), &mtoken).await.status,
        200
    );
    assert_error(
        &app.call(
            reqwest::Method::GET,
            &format!("/v1/orders/{oid}"),
            None,
            &[],
            None,
        )
        .await,
        401,
        "unauthorized",
    );

    // Bob cannot pay Alice's order; the merchant cannot accept before payment.
    assert_error(
        &app.post(&format!("/v1/orders/{oid}/pay"), &bob, None).await,
        404,
        "not_found",
    );
    let r = app
        .post(
            &format!("/v1/merchants/{mid}/orders/{oid}/accept"),
            &mtoken,
            None,
        )
        .await;
    assert_error(&r, 409, "illegal_transition");
    assert_eq!(r.body["error"]["status"], "pending_payment");

    let r = app
        .post(&format!("/v1/orders/{oid}/pay"), &alice, None)
        .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("paid")),
        "{}",
        r.body
    );
    assert_error(
        &app.post(&format!("/v1/orders/{oid}/pay"), &alice, None)
            .await,
        409,
        "illegal_transition",
    );

    // Another merchant cannot accept it.
    let (other_mid, other_mtoken) = app.merchant_with_stock("noodles", 1).await;
    assert_error(
        &app.post(
            &format!("/v1/merchants/{other_mid}/orders/{oid}/accept"),
            &other_mtoken,
            None,
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &app.post(
            &format!("/v1/merchants/{mid}/orders/{oid}/accept"),
            &other_mtoken,
            None,
        )
        .await,
        404,
        "not_found",
    );
    let r = app
        .post(
            &format!("/v1/merchants/{mid}/orders/{oid}/accept"),
            &mtoken,
            None,
        )
        .await;
    assert_eq!(r.body["status"], "accepted", "{}", r.body);

    // Only dispatch (admin) assigns; the rider must exist.
    assert_error(
        &app.post(
            &format!("/v1/orders/{oid}/assign"),
            &alice,
            Some(json!({"rider_id": rid})),
        )
        .await,
        403,
        "forbidden",
    );
    assert_error(
        &app.post(
            &format!("/v1/orders/{oid}/assign"),
            &app.admin,
            Some(json!({"rider_id": "no-such-rider"})),
        )
        .await,
        404,
        "not_found",
    );
    let r = app
        .post(
            &format!("/v1/orders/{oid}/assign"),
            &app.admin,
            Some(json!({"rider_id": rid})),
        )
        .await;
    assert_eq!(r.body["status"], "rider_assigned", "{}", r.body);
    assert_eq!(r.body["rider_id"], rid.as_str());
    let rider = app.get(&format!("/v1/riders/{rid}"), &rtoken).await;
    assert_eq!(rider.body["current_order"], oid.as_str());

    // A rider who is not assigned cannot pick up or deliver it.
    let other_rid = _other_rid.clone();
    assert_error(
        &app.post(
            &format!("/v1/riders/{other_rid}/orders/{oid}/pickup"),
            &other_rtoken,
            None,
        )
        .await,
        403,
        "forbidden",
    );
    assert_error(
        &app.post(
            &format!("/v1/riders/{rid}/orders/{oid}/pickup"),
            &other_rtoken,
            None,
        )
        .await,
        403,
        "forbidden",
    );
    let r = app
        .post(
            &format!("/v1/riders/{rid}/orders/{oid}/pickup"),
            &rtoken,
            None,
        )
        .await;
    assert_eq!(r.body["status"], "picked_up", "{}", r.body);
    assert_error(
        &app.post(
            &format!("/v1/riders/{other_rid}/orders/{oid}/deliver"),
            &other_rtoken,
            None,
        )
        .await,
        403,
        "forbidden",
    );
    // A rider carrying an order cannot go offline.
    assert_error(
        &app.post(&format!("/v1/riders/{rid}/offline"), &rtoken, None)
            .await,
        409,
        "conflict",
    );
    let r = app
        .post(
            &format!("/v1/riders/{rid}/orders/{oid}/deliver"),
            &rtoken,
            None,
        )
        .await;
    assert_eq!(r.body["status"], "delivered", "{}", r.body);

    assert_error(
        &app.post(&format!("/v1/orders/{oid}/confirm"), &bob, None)
            .await,
        404,
        "not_found",
    );
    let r = app
        .post(&format!("/v1/orders/{oid}/confirm"), &alice, None)
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    assert_eq!(r.body["version"], 7);
    let r = app
        .post(&format!("/v1/orders/{oid}/cancel"), &alice, None)
        .await;
    assert_error(&r, 409, "illegal_transition");
    assert_eq!(r.body["error"]["status"], "completed");

    // The rider is free again and the stock stayed consumed.
    let rider = app.get(&format!("/v1/riders/{rid}"), &rtoken).await;
    assert_eq!(
        rider.body["current_order"],
        serde_json::Value::Null,
        "{}",
        rider.body
    );
    assert_eq!(stock_of(&app, &mid).await, 7);

    // Every change is in the outbox, in order.
    let events = app.node.store.outbox_for(&oid).await.expect("outbox");
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            e.event
                .payload
                .value()
                .get("to")
                .and_then(|t| t.as_str())
                .unwrap_or("created")
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "created",
            "paid",
            "accepted",
            "rider_assigned",
            "picked_up",
            "delivered",
            "completed"
        ]
    );

    // Metrics saw it.
    let m = app.metrics().await;
    assert!(
        m.contains("waimai_order_transitions_total{from=\"delivered\",to=\"completed\"}"),
        "{m}"
    );
    assert!(m.contains("waimai_http_request_duration_seconds_bucket{route=\"POST /v1/orders\""));
    // The standard process metrics (the load generator reads the node's CPU from the first).
    for name in [
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(m.contains(name), "no {name}in /metrics");
    }
}

#[actix_rt::test]
async fn stock_comes_back_only_before_the_merchant_accepts() {
    let app = TestApp::embedded().await;
    let (mid, mtoken) = app.merchant_with_stock("bao", 10).await;
    let alice = app.token(Role::Customer, "alice");

    // Cancelled before payment: stock released.
    let o1 = app.order("alice", &mid, "bao", 2, None).await.body["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(stock_of(&app, &mid).await, 8);
    let r = app
        .post(&format!("/v1/orders/{o1}/cancel"), &alice, None)
        .await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    assert_eq!(stock_of(&app, &mid).await, 10);

    // Paid then rejected: refunded, stock released.
    let o2 = app.order("alice", &mid, "bao", 3, None).await.body["id"]
        .as_str()
        .expect("id")
        .to_string();
    app.post(&format!("/v1/orders/{o2}/pay"), &alice, None)
        .await;
    let r = app
        .post(
            &format!("/v1/merchants/{mid}/orders/{o2}/reject"),
            &mtoken,
            None,
        )
        .await;
    // The refund goes through the payment provider: refunding now, refunded once it confirms.
    assert_eq!(r.body["status"], "refunding", "{}", r.body);
    app.wait_status(&o2, "refunded", 10).await;
    assert_eq!(stock_of(&app, &mid).await, 10);

    // Accepted then cancelled by the customer: refunded, the food is made, stock stays used.
    let o3 = app.order("alice", &mid, "bao", 4, None).await.body["id"]
        .as_str()
        .expect("id")
        .to_string();
    app.post(&format!("/v1/orders/{o3}/pay"), &alice, None)
        .await;
    app.post(
        &format!("/v1/merchants/{mid}/orders/{o3}/accept"),
        &mtoken,
        None,
    )
    .await;
    let r = app
        .post(&format!("/v1/orders/{o3}/cancel"), &alice, None)
        .await;
    assert_eq!(r.body["status"], "refunding", "{}", r.body);
    app.wait_status(&o3, "refunded", 10).await;
    assert_eq!(stock_of(&app, &mid).await, 6);
    let (stock, _fence) = app
        .node
        .store
        .sku_stock(&mid, "bao")
        .await
        .expect("db")
        .expect("sku");
    assert_eq!(stock, 6, "store agrees with the merchant actor");

    // A rider gives an order back: it returns to accepted and the rider is free.
    let (rid, rtoken) = app.online_rider().await;
    let o4 = app.order("alice", &mid, "bao", 1, None).await.body["id"]
        .as_str()
        .expect("id")
        .to_string();
    app.post(&format!("/v1/orders/{o4}/pay"), &alice, None)
        .await;
    app.post(
        &format!("/v1/merchants/{mid}/orders/{o4}/accept"),
        &mtoken,
        None,
    )
    .await;
    app.post(
        &format!("/v1/orders/{o4}/assign"),
        &app.admin,
        Some(json!({"rider_id": rid})),
    )
    .await;
    // A busy rider cannot take a second order.
    let o5 = app.order("alice", &mid, "bao", 1, None).await.body["id"]
        .as_str()
        .expect("id")
        .to_string();
    app.post(&format!("/v1/orders/{o5}/pay"), &alice, None)
        .await;
    app.post(
        &format!("/v1/merchants/{mid}/orders/{o5}/accept"),
        &mtoken,
        None,
    )
    .await;
    assert_error(
        &app.post(
            &format!("/v1/orders/{o5}/assign"),
            &app.admin,
            Some(json!({"rider_id": rid})),
        )
        .await,
        409,
        "conflict",
    );
    let r = app
        .post(
            &format!("/v1/riders/{rid}/orders/{o4}/release"),
            &rtoken,
            None,
        )
        .await;
    assert_eq!(r.body["status"], "accepted", "{}", r.body);
    assert_eq!(r.body["rider_id"], serde_json::Value::Null);
    let r = app
        .post(
            &format!("/v1/orders/{o5}/assign"),
            &app.admin,
            Some(json!({"rider_id": rid})),
        )
        .await;
    assert_eq!(r.body["status"], "rider_assigned", "{}", r.body);
}

#[actix_rt::test]
async fn fifty_parallel_posts_with_one_key_create_one_order() {
    let app = TestApp::embedded().await;
    let (mid, _) = app.merchant_with_stock("tea", 100).await;
    let app = std::sync::Arc::new(app);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let app = app.clone();
            let mid = mid.clone();
            tokio::spawn(async move { app.order("carol", &mid, "tea", 2, Some("key-42")).await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, 201, "{}", r.body);
        ids.insert(r.body["id"].as_str().expect("id").to_string());
    }
    assert_eq!(ids.len(), 1, "one order for one key");
    let counts = app.node.store.count_orders(&mid).await.expect("count");
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<i64>(), 1);
    assert_eq!(stock_of(&app, &mid).await, 98, "stock reserved once");

    // Same key, other body: 422. Same key, other customer: a different order.
    let r = app.order("carol", &mid, "tea", 3, Some("key-42")).await;
    assert_error(&r, 422, "idempotency_key_reused");
    let r = app.order("dave", &mid, "tea", 2, Some("key-42")).await;
    assert_eq!(r.status, 201);
    assert!(!ids.contains(r.body["id"].as_str().expect("id")));
}

#[actix_rt::test]
async fn a_crashed_order_actor_restarts_from_the_store() {
    let app = TestApp::embedded().await;
    let (mid, mtoken) = app.merchant_with_stock("rice", 5).await;
    let alice = app.token(Role::Customer, "alice");
    let oid = app.order("alice", &mid, "rice", 1, None).await.body["id"]
        .as_str()
        .expect("id")
        .to_string();
    let r = app
        .post(&format!("/v1/orders/{oid}/pay"), &alice, None)
        .await;
    assert_eq!(r.body["status"], "paid");

    let router = app.node.router.clone();
    let caller = Caller {
        role: Role::Customer,
        id: "alice".into(),
    };
    // The crash and a read queued right behind it in the same mailbox.
    let crash = router.send(&oid, CrashOrder);
    let read = router.send(
        &oid,
        GetOrder {
            caller: caller.clone(),
        },
    );
    let (crash, read) = futures::join!(crash, read);
    assert!(
        matches!(crash, Err(waimai::Error::Unavailable(_))),
        "{crash:?}"
    );
    let order = read.expect("queued message survives the restart");
    assert_eq!(order.status.as_str(), "paid", "acknowledged payment kept");
    assert_eq!(order.version, 2);

    // The flow goes on after the restart.
    let r = app
        .post(
            &format!("/v1/merchants/{mid}/orders/{oid}/accept"),
            &mtoken,
            None,
        )
        .await;
    assert_eq!(r.body["status"], "accepted", "{}", r.body);
    assert_eq!(r.body["version"], 3);
    let m = waimai::metrics::render();
    assert!(
        m.contains("waimai_actor_restarts_total{kind=\"order\"}"),
        "restart counted"
    );
}

#[actix_rt::test]
async fn bad_input_gets_a_clear_4xx_and_writes_nothing() {
    let app = TestApp::embedded().await;
    let (mid, mtoken) = app.merchant_with_stock("soup", 3).await;
    let alice = app.token(Role::Customer, "alice");
    let post_raw = |body: &'static str| {
        let req = app
            .client
            .post(format!("{}/v1/orders", app.base))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            let body = resp.json::<serde_json::Value>().await.unwrap_or_default();
            Resp { status, body }
        }
    };
    let order = |v: serde_json::Value| {
        app.call(
            reqwest::Method::POST,
            "/v1/orders",
            Some(&alice),
            &[],
            Some(v),
        )
    };
    let loc = json!({"lat": 31.2, "lng": 121.5});

    assert_error(&post_raw("{not json").await, 400, "malformed_json");
    assert_error(&post_raw("").await, 400, "malformed_json");
    assert_error(
        &post_raw(r#"{"merchant_id": 7, "items": [], "deliver_to": {"lat": 1, "lng": 2}}"#).await,
        422,
        "invalid_body",
    );
    assert_error(&order(json!({"merchant_id": mid, "items": [{"sku": "soup", "qty": "two"}], "deliver_to": loc})).await, 422, "invalid_body");
    assert_error(
        &order(
            json!({"merchant_id": mid, "items": [{"sku": "soup", "qty": -1}], "deliver_to": loc}),
        )
        .await,
        422,
        "invalid_body",
    );
    assert_error(
        &order(
            json!({"merchant_id": mid, "items": [{"sku": "soup", "qty": 0}], "deliver_to": loc}),
        )
        .await,
        422,
        "invalid_body",
    );
    assert_error(
        &order(json!({"merchant_id": mid, "items": [], "deliver_to": loc})).await,
        422,
        "invalid_body",
    );
    assert_error(
        &order(json!({"merchant_id": mid, "items": [{"sku": "soup", "qty": 1}]})).await,
        422,
        "invalid_body",
    );
    assert_error(&order(json!({"merchant_id": mid, "items": [{"sku": "soup", "qty": 1}], "deliver_to": loc, "coupon": "FREE"})).await, 422, "invalid_body");
    assert_error(&order(json!({"merchant_id": mid, "items": [{"sku": "soup", "qty": 1}], "deliver_to": {"lat": 91.0, "lng": 0.0}})).await, 422, "invalid_body");
    assert_error(&order(json!({"merchant_id": "no-such-merchant", "items": [{"sku": "soup", "qty": 1}], "deliver_to": loc})).await, 404, "not_found");
    assert_error(
        &order(
            json!({"merchant_id": mid, "items": [{"sku": "caviar", "qty": 1}], "deliver_to": loc}),
        )
        .await,
        422,
        "unknown_sku",
    );
    let r =
        order(json!({"merchant_id": mid, "items": [{"sku": "soup", "qty": 4}], "deliver_to": loc}))
            .await;
    assert_error(&r, 409, "out_of_stock");
    assert_eq!(r.body["error"]["sku"], "soup");

    // A huge body is refused before it is read.
    let huge = format!(
        r#"{{"merchant_id": "{mid}", "items": [{}], "deliver_to": {{"lat": 1, "lng": 1}}}}"#,
        vec![r#"{"sku":"soup","qty":1}"#; 5000].join(",")
    );
    let resp = app
        .client
        .post(format!("{}/v1/orders", app.base))
        .bearer_auth(&alice)
        .body(huge)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 413);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "payload_too_large");

    // Tokens.
    assert_error(
        &app.call(
            reqwest::Method::POST,
            "/v1/orders",
            None,
            &[],
            Some(json!({})),
        )
        .await,
        401,
        "unauthorized",
    );
    assert_error(
        &app.call(
            reqwest::Method::POST,
            "/v1/orders",
            Some("not-a-jwt"),
            &[],
            Some(json!({})),
        )
        .await,
        401,
        "unauthorized",
    );
    let forged = waimai::api::Auth::new("another-secret")
        .mint(Role::Admin, "mallory", 60)
        .expect("mint");
    assert_error(
        &app.post(
            "/v1/merchants",
            &forged,
            Some(json!({"name": "x", "location": loc})),
        )
        .await,
        401,
        "unauthorized",
    );
    assert_error(
        &app.post(
            "/v1/merchants",
            &alice,
            Some(json!({"name": "x", "location": loc})),
        )
        .await,
        403,
        "forbidden",
    );

    // Merchants and riders.
    assert_error(
        &app.post(
            "/v1/merchants",
            &app.admin,
            Some(json!({"name": "", "location": loc})),
        )
        .await,
        422,
        "invalid_body",
    );
    assert_error(
        &app.put(
            &format!("/v1/merchants/{mid}/menu"),
            &mtoken,
            json!({"items": [{"sku": "a", "name": "A", "price_cents": -5, "stock": 1}]}),
        )
        .await,
        422,
        "invalid_body",
    );
    assert_error(&app.put(&format!("/v1/merchants/{mid}/menu"), &mtoken, json!({"items": [{"sku": "a", "name": "A", "price_cents": 5, "stock": 1}, {"sku": "a", "name": "B", "price_cents": 5, "stock": 1}]})).await, 422, "invalid_body");
    assert_error(
        &app.put(
            &format!("/v1/merchants/{mid}/menu"),
            &alice,
            json!({"items": []}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_error(
        &app.post(
            "/v1/riders/nobody/online",
            &app.admin,
            Some(json!({"location": {"lat": "x"}})),
        )
        .await,
        422,
        "invalid_body",
    );
    assert_error(
        &app.post(
            "/v1/riders/nobody/online",
            &app.admin,
            Some(json!({"location": loc})),
        )
        .await,
        404,
        "not_found",
    );

    // Routes and methods.
    assert_error(&app.get("/v1/nothing-here", &alice).await, 404, "not_found");
    assert_error(
        &app.call(
            reqwest::Method::DELETE,
            "/v1/orders",
            Some(&alice),
            &[],
            None,
        )
        .await,
        405,
        "method_not_allowed",
    );
    assert_error(
        &app.post("/v1/orders/x/teleport", &alice, None).await,
        404,
        "not_found",
    );

    // A closed merchant takes no orders.
    let r = app
        .post(&format!("/v1/merchants/{mid}/close"), &mtoken, None)
        .await;
    assert_eq!(r.body["open"], false, "{}", r.body);
    assert_error(
        &order(
            json!({"merchant_id": mid, "items": [{"sku": "soup", "qty": 1}], "deliver_to": loc}),
        )
        .await,
        409,
        "merchant_closed",
    );

    // Nothing above left an order or touched the stock.
    let counts = app.node.store.count_orders(&mid).await.expect("count");
    assert!(counts.is_empty(), "no half-written orders: {counts:?}");
    let (stock, _) = app
        .node
        .store
        .sku_stock(&mid, "soup")
        .await
        .expect("db")
        .expect("sku");
    assert_eq!(stock, 3);
}
