//! The gateway's defences on a real node: rate limits (429 with `Retry-After` and
//! `RateLimit-*`, per caller, per IP, per route class; one quota for two nodes on one Redis),
//! load shedding (503 overloaded, nothing accepted lost), the circuit breaker around a real
//! Redis that the test stops and starts, and the refusal of shipped secrets off loopback.
//! The browse cache has its own file (`browse_cache.rs`): its proofs read process-wide
//! metrics, which other tests in this binary would disturb.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use waimai::config::{LockBackendKind, QuotaConfig};
use waimai::domain::Role;

/// No limit on anything (a class's quotas are set per test).
const OPEN: QuotaConfig = QuotaConfig {
    customer_per_s: 0.0,
    customer_burst: 0,
    ip_per_s: 0.0,
    ip_burst: 0,
};

/// One request per 100 s after the burst: nothing replenishes during a test.
fn quota(customer_burst: u32, ip_burst: u32) -> QuotaConfig {
    QuotaConfig {
        customer_per_s: if customer_burst > 0 { 0.01 } else { 0.0 },
        customer_burst,
        ip_per_s: if ip_burst > 0 { 0.01 } else { 0.0 },
        ip_burst,
    }
}

fn limited_config(url: &str, lock: LockBackendKind, backend: &str) -> waimai::Config {
    let mut cfg = config(url, lock);
    cfg.gateway.limits.enabled = true;
    cfg.gateway.limits.backend = backend.into();
    cfg.gateway.limits.write = OPEN;
    cfg.gateway.limits.read = OPEN;
    cfg.gateway.limits.ws = OPEN;
    cfg
}

/// A raw request, keeping the headers.
async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> reqwest::Response {
    app.client
        .request(method, format!("{}{}", app.base, path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

#[actix_rt::test]
async fn writes_past_a_callers_quota_get_429_with_retry_after_and_ratelimit_headers() {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = limited_config(&url, LockBackendKind::Local, "local");
    cfg.gateway.limits.write = quota(3, 0);
    let app = TestApp::spawn(cfg).await;
    let alice = app.token(Role::Customer, "alice");
    let bob = app.token(Role::Customer, "bob");
    let path = format!("/v1/orders/{}/cancel", uuid::Uuid::new_v4());

    // The first three reach the handler (the order does not exist: 404); the fourth does not.
    for i in 0..3 {
        let r = send(&app, reqwest::Method::POST, &path, &alice).await;
        assert_eq!(r.status(), 404, "request {i}");
    }
    let r = send(&app, reqwest::Method::POST, &path, &alice).await;
    assert_eq!(r.status(), 429);
    let retry = header(&r, "retry-after").expect("Retry-After");
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(header(&r, "ratelimit-limit"), Some(3));
    assert_eq!(header(&r, "ratelimit-remaining"), Some(0));
    let reset = header(&r, "ratelimit-reset").expect("RateLimit-Reset");
    assert!(reset >= retry, "reset {reset} < retry {retry}");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["error"]["scope"], "customer", "{body}");
    assert_eq!(body["error"]["class"], "write", "{body}");

    // Another caller has a quota of its own; reads are another class; operators are never
    // limited.
    let r = send(&app, reqwest::Method::POST, &path, &bob).await;
    assert_eq!(r.status(), 404);
    let r = send(
        &app,
        reqwest::Method::GET,
        &path.replace("/cancel", ""),
        &alice,
    )
    .await;
    assert_eq!(r.status(), 404);
    for _ in 0..5 {
        let r = send(&app, reqwest::Method::POST, &path, &app.admin).await;
        assert_eq!(r.status(), 404);
    }
    let metrics = waimai::metrics::render();
    assert!(
        metrics.contains("waimai_rate_limited_total{class=\"write\",scope=\"customer\"}"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[actix_rt::test]
async fn a_client_ip_is_limited_across_callers_and_websocket_connects_have_their_own_quota() {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = limited_config(&url, LockBackendKind::Local, "local");
    cfg.gateway.limits.read = quota(0, 4);
    cfg.gateway.limits.ws = quota(2, 0);
    let app = TestApp::spawn(cfg).await;
    let path = format!("/v1/orders/{}", uuid::Uuid::new_v4());
    // Four callers from one address share its burst of 4.
    for i in 0..4 {
        let t = app.token(Role::Customer, &format!("c{i}"));
        let r = send(&app, reqwest::Method::GET, &path, &t).await;
        assert_eq!(r.status(), 404, "caller {i}");
    }
    let t = app.token(Role::Customer, "c9");
    let r = send(&app, reqwest::Method::GET, &path, &t).await;
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["scope"], "ip", "{body}");

    // Websocket connects (token in the query, as browsers send it): two, then refused at the
    // upgrade with 429.
    let (mid, _) = app.merchant_with_stock("s", 5).await;
    let r = app.order("wendy", &mid, "s", 1, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let oid = r.body["id"].as_str().expect("id").to_string();
    let wendy = app.token(Role::Customer, "wendy");
    let track = format!("/v1/orders/{oid}/track");
    let _a = app.ws(&track, &wendy).await.expect("first socket");
    let _b = app.ws(&track, &wendy).await.expect("second socket");
    assert_eq!(app.ws(&track, &wendy).await.err(), Some(429));
    app.shutdown().await;
}

#[actix_rt::test]
async fn two_nodes_on_one_redis_grant_one_quota_not_two() {
    require_redis().await;
    let prefix = format!("waimai-test-{}", unique());
    let mut apps = Vec::new();
    for _ in 0..2 {
        let url = fresh_db(Db::Sqlite).await;
        let mut cfg = limited_config(&url, LockBackendKind::Redis, "auto");
        cfg.lock.key_prefix = prefix.clone();
        cfg.gateway.limits.write = quota(4, 0);
        apps.push(TestApp::spawn(cfg).await);
    }
    let (a, b) = (&apps[0], &apps[1]);
    // Both nodes sign with the same secret, so carol is one caller on either.
    let carol = a.token(Role::Customer, "carol");
    let path = format!("/v1/orders/{}/cancel", uuid::Uuid::new_v4());
    let mut admitted = [0; 2];
    for i in 0..8 {
        let app = if i % 2 == 0 { a } else { b };
        let r = send(app, reqwest::Method::POST, &path, &carol).await;
        match r.status().as_u16() {
            404 => admitted[i % 2] += 1,
            429 => {}
            s => panic!("unexpected {s}"),
        }
    }
    // Each node alone would have admitted 4 (8 in all).
    assert_eq!(
        admitted.iter().sum::<i32>(),
        4,
        "admitted per node {admitted:?}"
    );
    assert!(admitted[0] > 0 && admitted[1] > 0, "{admitted:?}");
    for app in apps {
        app.shutdown().await;
    }
}

#[actix_rt::test]
async fn writes_past_the_shard_depth_are_shed_fast_and_nothing_accepted_is_lost() {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    cfg.gateway.shed.shard_depth = 2;
    cfg.gateway.shed.retry_after_s = 2;
    let app = std::sync::Arc::new(TestApp::spawn(cfg).await);
    let stock = 100_000;
    let (mid, _) = app.merchant_with_stock("s", stock).await;
    // Every create goes through this merchant's shard: 400 at once overfill it.
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let app = app.clone();
            let mid = mid.clone();
            tokio::spawn(async move {
                let r = create_one(&app, &mid, &format!("u{i}")).await;
                let status = r.status().as_u16();
                let retry = header(&r, "retry-after");
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                (status, retry, body)
            })
        })
        .collect();
    let (mut created, mut shed) = (0i64, 0);
    for t in tasks {
        let (status, retry, body) = t.await.expect("task");
        match status {
            201 => created += 1,
            503 => {
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                assert_eq!(body["error"]["reason"], "shard", "{body}");
                assert_eq!(retry, Some(2));
                shed += 1;
            }
            s => panic!("unexpected {s}: {body}"),
        }
    }
    assert!(shed > 0, "nothing was shed ({created} created)");
    assert!(created > 0, "everything was shed");
    // Every acknowledged order exists and took its unit; the shed ones took nothing.
    let m = app.get(&format!("/v1/merchants/{mid}"), &app.admin).await;
    assert_eq!(m.body["menu"][0]["stock"], stock - created, "{}", m.body);
    assert_eq!(stored_orders(&app, &mid).await, created);
    assert!(waimai::metrics::render().contains("waimai_shed_total{reason=\"shard\"}"));
    match std::sync::Arc::try_unwrap(app) {
        Ok(app) => app.shutdown().await,
        Err(_) => panic!("app still shared"),
    }
}

#[actix_rt::test]
async fn creates_past_the_door_wait_their_turn_and_every_one_is_placed() {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    cfg.gateway.door.creates_in_flight = 2;
    let app = std::sync::Arc::new(TestApp::spawn(cfg).await);
    let stock = 1_000;
    let (mid, _) = app.merchant_with_stock("s", stock).await;
    let waited_before = waimai::metrics::DOOR_WAIT_SECONDS.get_sample_count();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let app = app.clone();
            let mid = mid.clone();
            tokio::spawn(async move {
                create_one(&app, &mid, &format!("d{i}"))
                    .await
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.expect("task"),
            201,
            "a create behind the door is placed"
        );
    }
    assert!(
        waimai::metrics::DOOR_WAIT_SECONDS.get_sample_count() > waited_before,
        "200 creates at once, 2 in at a time: some waited"
    );
    let m = app.get(&format!("/v1/merchants/{mid}"), &app.admin).await;
    assert_eq!(m.body["menu"][0]["stock"], stock - 200, "{}", m.body);
    assert_eq!(stored_orders(&app, &mid).await, 200);
    assert!(waimai::metrics::render().contains("waimai_door_waiting 0"));
    match std::sync::Arc::try_unwrap(app) {
        Ok(app) => app.shutdown().await,
        Err(_) => panic!("app still shared"),
    }
}

/// `POST /v1/orders` of one unit of `s` from `mid`, as `customer`.
async fn create_one(app: &TestApp, mid: &str, customer: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/orders", app.base))
        .bearer_auth(app.token(Role::Customer, customer))
        .json(&serde_json::json!({"merchant_id": mid,
            "items": [{"sku": "s", "qty": 1}], "deliver_to": {"lat": 31.2, "lng": 121.5}}))
        .send()
        .await
        .expect("request")
}

/// Orders of `mid` in the store, whatever their status.
async fn stored_orders(app: &TestApp, mid: &str) -> i64 {
    let counts = app.node.store.count_orders(mid).await.expect("count");
    counts.iter().map(|(_, n)| n).sum()
}

/// A Redis server of the test's own (the shared one must not be stopped under other tests).
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start_on(port: u16) -> Child {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server is required on PATH ({e})"))
    }

    async fn new() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut r = PrivateRedis {
            port,
            child: Some(Self::start_on(port)),
        };
        r.wait_up().await;
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "private redis did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn restart(&mut self) {
        self.stop();
        self.child = Some(Self::start_on(self.port));
        self.wait_up().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[actix_rt::test]
async fn with_redis_stopped_stock_operations_get_503_reads_work_and_all_recovers() {
    let mut redis = PrivateRedis::new().await;
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Redis);
    cfg.lock.redis_url = redis.url();
    cfg.lock.lease_ms = 600;
    cfg.gateway.breaker.failures = 2;
    cfg.gateway.breaker.cooldown_ms = 300;
    cfg.gateway.breaker.timeout_ms = 300;
    let app = TestApp::spawn(cfg).await;
    let stock = 50;
    let (mid, _) = app.merchant_with_stock("s", stock).await;
    let mut created = 0;
    let r = app.order("dave", &mid, "s", 1, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    created += 1;

    redis.stop();
    // Once the lease cannot be renewed for a lease period it is given up; creates then need a
    // new lease and are refused with the reason instead of waiting.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refusal = loop {
        assert!(
            Instant::now() < deadline,
            "creates never failed with Redis down"
        );
        let r = app.order("dave", &mid, "s", 1, None).await;
        match r.status {
            201 => created += 1,
            503 => break r.body,
            s => panic!("unexpected {s}: {}", r.body),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let msg = refusal["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(msg.contains("lock"), "{refusal}");
    // The breaker opens after its failures: refusals then name the open circuit.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = app.order("dave", &mid, "s", 1, None).await;
        assert_eq!(r.status, 503, "{}", r.body);
        if r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("circuit is open"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker never opened: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(waimai::metrics::render().contains("waimai_breaker_state{dependency=\"redis\"} "));
    // Reads need no lease.
    let eve = app.token(Role::Customer, "eve");
    let r = app.get(&format!("/v1/merchants/{mid}"), &eve).await;
    assert_eq!(r.status, 200, "{}", r.body);

    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = app.order("dave", &mid, "s", 1, None).await;
        if r.status == 201 {
            created += 1;
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(Instant::now() < deadline, "never recovered: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing oversold, nothing lost: the stock is exactly what the acknowledged orders left.
    let m = app.get(&format!("/v1/merchants/{mid}"), &app.admin).await;
    assert_eq!(m.body["menu"][0]["stock"], stock - created, "{}", m.body);
    assert_eq!(stored_orders(&app, &mid).await, created);
    app.shutdown().await;
}

#[test]
fn shipped_secrets_are_refused_off_loopback_with_a_way_out() {
    let cfg = waimai::Config::defaults().expect("defaults");
    let public: std::net::SocketAddr = "0.0.0.0:8080".parse().expect("addr");
    let local: std::net::SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    let err = waimai::server::check_secrets(&cfg, public)
        .expect_err("dev secrets on 0.0.0.0")
        .to_string();
    assert!(err.contains("WAIMAI__AUTH__JWT_SECRET"), "{err}");
    assert!(err.contains("WAIMAI__PAYMENTS__HMAC_SECRET"), "{err}");
    waimai::server::check_secrets(&cfg, local).expect("loopback is fine");

    let mut cfg = cfg;
    cfg.auth.jwt_secret = "a-real-secret".into();
    let err = waimai::server::check_secrets(&cfg, public)
        .expect_err("the payments key is still the shipped one")
        .to_string();
    assert!(!err.contains("JWT_SECRET"), "{err}");
    cfg.payments.hmac_secret = "another-real-secret".into();
    waimai::server::check_secrets(&cfg, public).expect("real secrets");
}

#[test]
fn serve_exits_with_the_reason_on_a_public_address_with_the_dev_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_waimai"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("WAIMAI__STORE__URL", "sqlite::memory:")
        .env_remove("WAIMAI__AUTH__JWT_SECRET")
        .env_remove("WAIMAI__PAYMENTS__HMAC_SECRET")
        .output()
        .expect("run waimai");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen"), "{err}");
}
