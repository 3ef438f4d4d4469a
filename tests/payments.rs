//! Payments against a real node: the simulated provider's signed callbacks, their signature
//! checks, redeliveries and events out of order, declines, late and lost callbacks (the
//! reconciler), refunds through the provider (retried, never twice), money that arrives after
//! the payment deadline, and a node killed between the provider's confirmation and our commit.

mod common;

use std::time::Duration;

use common::{config, fresh_db, Db, TestApp};
use serde_json::{json, Value};
use waimai::config::LockBackendKind;
use waimai::domain::{now_ms, Role};
use waimai::payments::signature;
use waimai::Config;

async fn cfg(tune: impl FnOnce(&mut Config)) -> Config {
    let url = fresh_db(Db::Sqlite).await;
    let mut c = config(&url, LockBackendKind::Local);
    c.payments.hmac_secret = "test-payments-secret".into();
    c.payments.reconcile_ms = 100;
    tune(&mut c);
    c
}

/// An order of one unit placed by `customer`; (merchant id, merchant token, order id).
async fn order(app: &TestApp, customer: &str, stock: i64) -> (String, String, String) {
    let (mid, mtoken) = app.merchant_with_stock("noodles", stock).await;
    let r = app.order(customer, &mid, "noodles", 1, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let oid = r.body["id"].as_str().expect("id").to_string();
    (mid, mtoken, oid)
}

async fn pay(app: &TestApp, customer: &str, oid: &str, method: &str) -> common::Resp {
    let token = app.token(Role::Customer, customer);
    app.post(
        &format!("/v1/orders/{oid}/pay"),
        &token,
        Some(json!({ "method": method })),
    )
    .await
}

/// The order's outbox events that moved it to `to`.
async fn transitions_to(app: &TestApp, oid: &str, to: &str) -> usize {
    let events = app.node.store.outbox_for(oid).await.expect("outbox");
    events
        .iter()
        .filter(|e| e.event.payload.value()["to"] == to)
        .count()
}

async fn stock(app: &TestApp, mid: &str) -> i64 {
    let (stock, _) = app
        .node
        .store
        .sku_stock(mid, "noodles")
        .await
        .expect("db")
        .expect("sku");
    stock
}

/// Posts a callback body signed at `t` with `secret`.
async fn callback(app: &TestApp, body: &Value, secret: &str, t: i64) -> common::Resp {
    let raw = body.to_string();
    let sig = signature::sign(secret, t, raw.as_bytes());
    let resp = app
        .client
        .post(format!("{}/v1/payments/callback", app.base))
        .header(signature::HEADER, sig)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .expect("callback");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    common::Resp {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

#[actix_rt::test]
async fn pay_answers_once_the_signed_callback_marked_the_order_paid() {
    let app = TestApp::spawn(cfg(|_| {}).await).await;
    let (_, _, oid) = order(&app, "ann", 5).await;
    let r = pay(&app, "ann", &oid, "card").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "paid");
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.body["payment"]["status"], "succeeded");
    assert_eq!(r.body["payment"]["amount_cents"], 1000);
    // The intent is ours and the provider's; one payment transition in the outbox.
    let intents = app.node.store.payments_of(&oid).await.expect("payments");
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0].status, "succeeded");
    assert_eq!(transitions_to(&app, &oid, "paid").await, 1);
    // Paying a paid order is refused as before.
    let again = pay(&app, "ann", &oid, "card").await;
    assert_eq!(again.status, 409, "{}", again.body);
    // Only the customer pays, and only through the provider.
    let other = pay(&app, "bob", &oid, "card").await;
    assert_eq!(other.status, 404);
    let r = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/orders/{oid}/pay"),
            Some(&app.token(Role::Customer, "ann")),
            &[],
            Some(json!({"method": "bitcoin"})),
        )
        .await;
    assert_eq!(r.status, 422, "an unknown method: {}", r.body);
}

/// The first `pay` of an order this node just placed skips reading its payments (there can be
/// none); pays racing it still find the one intent it made: one charge, one `paid`, and while
/// the order is unpaid, the same intent for every pay.
#[actix_rt::test]
async fn parallel_pays_of_a_fresh_order_charge_once() {
    let app = TestApp::spawn(cfg(|_| {}).await).await;
    let (_, _, oid) = order(&app, "ann", 5).await;
    let answers = futures::future::join_all((0..8).map(|_| pay(&app, "ann", &oid, "card"))).await;
    for r in &answers {
        assert!(
            r.status == 200 || r.status == 409,
            "paid, or refused as paid already: {} {}",
            r.status,
            r.body
        );
    }
    assert!(answers.iter().any(|r| r.status == 200));
    let intents = app.node.store.payments_of(&oid).await.expect("payments");
    assert_eq!(intents.len(), 1, "one intent: {intents:?}");
    assert_eq!(intents[0].status, "succeeded");
    assert_eq!(transitions_to(&app, &oid, "paid").await, 1);

    // With a provider that never calls back the order stays unpaid, so every pay after the
    // first must find the open intent the first one made: all answer 202 with that intent (a
    // second attempt at the same intent would be refused as a duplicate, 409).
    let (_, _, oid) = order(&app, "ann", 5).await;
    let answers =
        futures::future::join_all((0..8).map(|_| pay(&app, "ann", &oid, "card_silent"))).await;
    for r in &answers {
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.body["payment"]["id"], answers[0].body["payment"]["id"]);
    }
    let intents = app.node.store.payments_of(&oid).await.expect("payments");
    assert_eq!(intents.len(), 1, "one intent: {intents:?}");
    assert_eq!(intents[0].status, "open");
}

#[actix_rt::test]
async fn the_payment_route_creates_an_intent_and_rejects_unknown_methods() {
    let app = TestApp::spawn(cfg(|c| c.payments.sim_late_ms = 60_000).await).await;
    let (_, _, oid) = order(&app, "cy", 5).await;
    let token = app.token(Role::Customer, "cy");
    let r = app
        .post(
            &format!("/v1/orders/{oid}/payment"),
            &token,
            Some(json!({"method": "bitcoin"})),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "invalid_request");
    let r = app
        .post(
            &format!("/v1/orders/{oid}/payment"),
            &token,
            Some(json!({"method": "card_late"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["payment"]["order_id"], oid.as_str());
    assert_eq!(r.body["payment"]["amount_cents"], 1000);
    // Asking again while it is under way returns the same intent: never a second charge.
    let again = app
        .post(&format!("/v1/orders/{oid}/payment"), &token, None)
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body["payment"]["id"], r.body["payment"]["id"]);
    assert_eq!(app.node.store.payments_of(&oid).await.expect("p").len(), 1);
}

#[actix_rt::test]
async fn callbacks_need_a_valid_recent_signature_and_apply_once() {
    let app = TestApp::spawn(cfg(|c| c.payments.sim_late_ms = 60_000).await).await;
    let (_, _, oid) = order(&app, "dee", 5).await;
    // A late provider: the payment is taken, its callback not sent yet; we send it ourselves.
    let r = pay(&app, "dee", &oid, "card_late").await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "pending_payment");
    let intent = r.body["payment"]["id"]
        .as_str()
        .expect("intent")
        .to_string();
    let event = json!({
        "id": "evt_manual_1", "type": "payment.succeeded", "created": now_ms(),
        "data": {"intent_id": intent, "order_id": oid, "amount_cents": 1000},
    });
    let now = now_ms() / 1000;
    let secret = "test-payments-secret";

    let no_sig = app
        .client
        .post(format!("{}/v1/payments/callback", app.base))
        .body(event.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(no_sig.status().as_u16(), 401);
    let forged = callback(&app, &event, "not-the-secret", now).await;
    assert_eq!(forged.status, 401, "{}", forged.body);
    assert_eq!(forged.body["error"]["code"], "unauthorized");
    let stale = callback(&app, &event, secret, now - 600).await;
    assert_eq!(stale.status, 400, "{}", stale.body);
    let garbage = app
        .client
        .post(format!("{}/v1/payments/callback", app.base))
        .header(signature::HEADER, signature::sign(secret, now, b"{oops"))
        .body("{oops")
        .send()
        .await
        .expect("post");
    assert_eq!(garbage.status().as_u16(), 400);
    assert_eq!(
        app.status_of(&oid).await,
        "pending_payment",
        "nothing applied yet"
    );

    let first = callback(&app, &event, secret, now).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["applied"], true);
    let second = callback(&app, &event, secret, now).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(
        second.body["applied"], false,
        "the same event twice changes nothing"
    );
    // An older failure arriving after the success changes nothing either.
    let stale_failure = json!({
        "id": "evt_manual_0", "type": "payment.failed", "created": now_ms() - 5_000,
        "data": {"intent_id": intent, "order_id": oid, "amount_cents": 1000},
    });
    let r = callback(&app, &stale_failure, secret, now).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.status_of(&oid).await, "paid");
    assert_eq!(transitions_to(&app, &oid, "paid").await, 1, "paid once");
    let intents = app.node.store.payments_of(&oid).await.expect("payments");
    assert_eq!(intents[0].status, "succeeded");
    // An event for an intent that is not the order's is refused.
    let alien = json!({
        "id": "evt_alien", "type": "payment.succeeded", "created": now_ms(),
        "data": {"intent_id": "pi_other", "order_id": oid, "amount_cents": 1000},
    });
    let r = callback(&app, &alien, secret, now).await;
    assert_eq!(r.status, 422, "{}", r.body);
}

#[actix_rt::test]
async fn redelivered_and_out_of_order_provider_events_pay_exactly_once() {
    let app = TestApp::spawn(cfg(|_| {}).await).await;
    for method in ["card_twice", "card_out_of_order"] {
        let (_, _, oid) = order(&app, "eli", 5).await;
        let r = pay(&app, "eli", &oid, method).await;
        assert_eq!(r.status, 200, "{method}: {}", r.body);
        assert_eq!(r.body["status"], "paid");
        // Give the second delivery time to arrive, then check it changed nothing.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(app.status_of(&oid).await, "paid", "{method}");
        let o = app.get(&format!("/v1/orders/{oid}"), &app.admin).await;
        assert_eq!(o.body["version"], 2, "{method}: one change");
        assert_eq!(transitions_to(&app, &oid, "paid").await, 1, "{method}");
        let intents = app.node.store.payments_of(&oid).await.expect("payments");
        assert_eq!(intents[0].status, "succeeded", "{method}");
    }
}

#[actix_rt::test]
async fn a_declined_payment_leaves_the_order_unpaid_and_a_new_attempt_can_pay() {
    let app = TestApp::spawn(cfg(|_| {}).await).await;
    let (mid, _, oid) = order(&app, "fay", 5).await;
    let r = pay(&app, "fay", &oid, "card_declined").await;
    assert_eq!(r.status, 402, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "payment_declined");
    // The decline callback is recorded on the intent; the order stays as it was.
    common_wait(|| async {
        let p = app.node.store.payments_of(&oid).await.ok()?;
        (p.first()?.status == "failed").then_some(())
    })
    .await;
    assert_eq!(app.status_of(&oid).await, "pending_payment");
    assert_eq!(stock(&app, &mid).await, 4, "the reservation stands");
    let r = pay(&app, "fay", &oid, "card").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "paid");
    let intents = app.node.store.payments_of(&oid).await.expect("payments");
    let statuses: Vec<&str> = intents.iter().map(|p| p.status.as_str()).collect();
    assert_eq!(statuses, ["failed", "succeeded"]);
}

#[actix_rt::test]
async fn a_late_callback_pays_later_and_a_lost_one_is_recovered_by_the_reconciler() {
    let app = TestApp::spawn(
        cfg(|c| {
            c.payments.sim_late_ms = 500;
            c.payments.reconcile_after_ms = 500;
        })
        .await,
    )
    .await;
    let (_, _, late) = order(&app, "gus", 5).await;
    let r = pay(&app, "gus", &late, "card_late").await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "pending_payment");
    assert_eq!(r.body["payment"]["status"], "succeeded");
    app.wait_status(&late, "paid", 10).await;

    let (_, _, lost) = order(&app, "gus", 5).await;
    let r = pay(&app, "gus", &lost, "card_silent").await;
    assert_eq!(r.status, 202, "{}", r.body);
    // No callback ever comes: the reconciler asks the provider and completes the payment.
    app.wait_status(&lost, "paid", 10).await;
    assert_eq!(transitions_to(&app, &lost, "paid").await, 1);
}

#[actix_rt::test]
async fn refunds_go_through_the_provider_once_and_are_retried_until_confirmed() {
    let app = TestApp::spawn(
        cfg(|c| {
            c.payments.refund_retry_ms = 200;
            c.payments.reconcile_after_ms = 300;
        })
        .await,
    )
    .await;
    // The provider calls back about the refund: refunded once, stock back.
    let (mid, mtoken, oid) = order(&app, "hal", 5).await;
    let r = pay(&app, "hal", &oid, "card").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app
        .post(
            &format!("/v1/merchants/{mid}/orders/{oid}/reject"),
            &mtoken,
            None,
        )
        .await;
    assert_eq!(r.body["status"], "refunding", "{}", r.body);
    app.wait_status(&oid, "refunded", 10).await;
    assert_eq!(app.node.store.sim_refund_count(&oid).await.expect("n"), 1);
    assert_eq!(stock(&app, &mid).await, 5, "stock back");

    // card_silent: the provider never calls back about the payment nor its refund, so only
    // the reconciler, asking again and again, completes them.
    let (mid, mtoken, silent) = order(&app, "hal", 5).await;
    let r = pay(&app, "hal", &silent, "card_silent").await;
    assert_eq!(r.status, 202);
    app.wait_status(&silent, "paid", 20).await;
    let r = app
        .post(
            &format!("/v1/merchants/{mid}/orders/{silent}/reject"),
            &mtoken,
            None,
        )
        .await;
    assert_eq!(r.body["status"], "refunding", "{}", r.body);
    app.wait_status(&silent, "refunded", 20).await;
    let refund = app
        .node
        .store
        .refund_of(&silent)
        .await
        .expect("refund")
        .expect("row");
    assert_eq!(refund.status, "succeeded");
    assert!(refund.attempts >= 2, "asked again: {refund:?}");
    assert_eq!(
        app.node.store.sim_refund_count(&silent).await.expect("n"),
        1,
        "asked more than once, refunded once"
    );
    assert_eq!(stock(&app, &mid).await, 5);
}

#[actix_rt::test]
async fn money_arriving_after_the_payment_deadline_is_given_back() {
    let app = TestApp::spawn(
        cfg(|c| {
            c.timers.payment_timeout_ms = 300;
            c.timers.tick_ms = 20;
            c.payments.sim_late_ms = 1_500;
            c.payments.refund_retry_ms = 200;
        })
        .await,
    )
    .await;
    let (mid, _, oid) = order(&app, "ivy", 5).await;
    let r = pay(&app, "ivy", &oid, "card_late").await;
    assert_eq!(r.status, 202, "{}", r.body);
    app.wait_status(&oid, "cancelled", 10).await;
    assert_eq!(
        stock(&app, &mid).await,
        5,
        "the cancelled order's unit is back"
    );
    // Then the provider's late success arrives: the order stays cancelled, the money goes back.
    common_wait(|| async {
        let r = app.node.store.refund_of(&oid).await.ok()??;
        (r.status == "succeeded").then_some(())
    })
    .await;
    assert_eq!(app.status_of(&oid).await, "cancelled");
    assert_eq!(app.node.store.sim_refund_count(&oid).await.expect("n"), 1);
    assert_eq!(transitions_to(&app, &oid, "paid").await, 0);
}

/// A node killed (`kill -9`) after the provider took the money but before our commit: the
/// provider calls back again when the node is back, and the order is paid exactly once.
#[test]
fn a_node_killed_between_the_providers_confirmation_and_our_commit_pays_once() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let url = fresh_db(Db::Sqlite).await;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
            l.local_addr().expect("addr").port()
        };
        let base = format!("http://127.0.0.1:{port}");
        let spawn = || {
            std::process::Command::new(env!("CARGO_BIN_EXE_waimai"))
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .env("WAIMAI__STORE__URL", &url)
                .env("WAIMAI__AUTH__JWT_SECRET", "crash-secret")
                .env("WAIMAI__PAYMENTS__HMAC_SECRET", "crash-payments")
                .env("WAIMAI__PAYMENTS__SIM_LATE_MS", "1500")
                .env("WAIMAI__PAYMENTS__RECONCILE_AFTER_MS", "600000")
                .env("RUST_LOG", "warn")
                .spawn()
                .expect("spawn waimai serve")
        };
        let http = reqwest::Client::new();
        let ready = |http: reqwest::Client, base: String| async move {
            for _ in 0..200 {
                if http
                    .get(format!("{base}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("node not ready");
        };
        let mut node = spawn();
        ready(http.clone(), base.clone()).await;
        let auth = waimai::api::Auth::new("crash-secret");
        let admin = auth.mint(Role::Admin, "ops", 600).expect("token");
        let r: Value = http
            .post(format!("{base}/v1/merchants"))
            .bearer_auth(&admin)
            .json(&json!({"name": "K", "location": {"lat": 31.2, "lng": 121.4}}))
            .send()
            .await
            .expect("merchant")
            .json()
            .await
            .expect("json");
        let mid = r["id"].as_str().expect("mid").to_string();
        let mtoken = auth.mint(Role::Merchant, &mid, 600).expect("token");
        let r = http
            .put(format!("{base}/v1/merchants/{mid}/menu"))
            .bearer_auth(&mtoken)
            .json(&json!({"items": [{"sku": "s", "name": "S", "price_cents": 700, "stock": 3}]}))
            .send()
            .await
            .expect("menu");
        assert_eq!(r.status().as_u16(), 200);
        let ctoken = auth.mint(Role::Customer, "kim", 600).expect("token");
        let o: Value = http
            .post(format!("{base}/v1/orders"))
            .bearer_auth(&ctoken)
            .json(
                &json!({"merchant_id": mid, "items": [{"sku": "s", "qty": 1}],
                          "deliver_to": {"lat": 31.2, "lng": 121.5}}),
            )
            .send()
            .await
            .expect("order")
            .json()
            .await
            .expect("json");
        let oid = o["id"].as_str().expect("oid").to_string();
        let r = http
            .post(format!("{base}/v1/orders/{oid}/pay"))
            .bearer_auth(&ctoken)
            .json(&json!({"method": "card_late"}))
            .send()
            .await
            .expect("pay");
        assert_eq!(
            r.status().as_u16(),
            202,
            "the provider took the money, no callback yet"
        );
        // The provider has confirmed; our commit waits for its callback. Kill the node now.
        let _ = node.kill();
        let _ = node.wait();
        let mut node = spawn();
        ready(http.clone(), base.clone()).await;
        let mut status = String::new();
        for _ in 0..200 {
            let o: Value = http
                .get(format!("{base}/v1/orders/{oid}"))
                .bearer_auth(&admin)
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            status = o["status"].as_str().unwrap_or_default().to_string();
            if status == "paid" {
                assert_eq!(o["version"], 2, "paid exactly once");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = node.kill();
        let _ = node.wait();
        assert_eq!(
            status, "paid",
            "the provider's retried callback paid the order"
        );
    });
}

/// Polls `f` until it returns `Some` (at most 20 s).
async fn common_wait<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A warp server on port 0 standing in for wherever `callback_url` points: it answers every
/// request `200 OK` and hands over the first one's method and path, signature header and body.
fn hook_receiver() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Receiver<(String, Option<String>, String)>,
) {
    use warp::Filter;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
    let route = warp::method()
        .and(warp::path::full())
        .and(warp::header::optional::<String>(signature::HEADER))
        .and(warp::body::bytes())
        .map(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  sig: Option<String>,
                  body: warp::hyper::body::Bytes| {
                if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                    let body = String::from_utf8_lossy(&body).to_string();
                    let _ = tx.send((format!("{method} {}", path.as_str()), sig, body));
                }
                warp::reply()
            },
        );
    let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    (addr, rx)
}

#[actix_rt::test]
async fn a_configured_callback_url_gets_the_signed_callbacks_instead_of_the_node() {
    let (elsewhere, received) = hook_receiver();
    let app = TestApp::spawn(
        cfg(|c| {
            c.payments.callback_url = format!("http://{elsewhere}/hooks/waimai");
            c.payments.pay_wait_ms = 200;
        })
        .await,
    )
    .await;
    let (_, _, oid) = order(&app, "gus", 5).await;
    let r = pay(&app, "gus", &oid, "card").await;
    assert!(r.status == 200 || r.status == 202, "{}", r.body);

    let (request, sig, body) = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .expect("the provider called the configured URL")
        .expect("receiver");
    assert_eq!(request, "POST /hooks/waimai");
    signature::verify(
        "test-payments-secret",
        sig.as_deref(),
        body.as_bytes(),
        now_ms() / 1000,
        300,
    )
    .expect("signed with the node's payments secret");
    let event: Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(event["type"], "payment.succeeded");
    assert_eq!(event["data"]["order_id"], oid.as_str());
    assert_eq!(
        app.status_of(&oid).await,
        "pending_payment",
        "the callback went to the configured URL, not to the node"
    );
}
