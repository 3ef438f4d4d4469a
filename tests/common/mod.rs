//! Shared test helpers: real services (fresh databases per test, Redis), config builders, and a
//! `TestApp` that runs a real node on port 0 and talks to it over HTTP.
//!
//! A test that needs a service panics with a clear message when the service is missing; nothing
//! is skipped silently.
#![allow(dead_code)]

pub mod otlp;

use std::sync::Arc;

use serde_json::{json, Value};
use sqlx::Connection;
use waimai::config::LockBackendKind;
use waimai::domain::Role;
use waimai::{Config, Node};

/// PostgreSQL server URL (database `test`), overridable with `WAIMAI_TEST_PG`.
pub fn pg_base() -> String {
    std::env::var("WAIMAI_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// MariaDB/MySQL server URL (database `test`), overridable with `WAIMAI_TEST_MYSQL`.
pub fn mysql_base() -> String {
    std::env::var("WAIMAI_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// Redis URL, overridable with `WAIMAI_TEST_REDIS`.
pub fn redis_url() -> String {
    std::env::var("WAIMAI_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A short unique suffix.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// The database backends the conformance suites run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
    /// A fresh MariaDB database.
    MySql,
}

impl Db {
    /// All three.
    pub const ALL: [Db; 3] = [Db::Sqlite, Db::Postgres, Db::MySql];
}

/// Creates an empty database on `db` and returns its URL. Panics if the server is not there.
pub async fn fresh_db(db: Db) -> String {
    let name = format!("waimai_t_{}", unique());
    match db {
        Db::Sqlite => {
            let dir = std::env::temp_dir().join(format!("waimai-test-{name}"));
            std::fs::create_dir_all(&dir).expect("temp dir");
            format!("sqlite://{}/waimai.db", dir.display())
        }
        Db::Postgres => {
            create_database(
                &pg_base(),
                &name,
                "PostgreSQL",
                "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            )
            .await
        }
        Db::MySql => {
            create_database(
                &mysql_base(),
                &name,
                "MariaDB",
                "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
            )
            .await
        }
    }
}

/// Creates database `name` on the server at `base` and returns its URL; panics, naming the
/// service and how to start it, if the server is not there.
async fn create_database(base: &str, name: &str, service: &str, start: &str) -> String {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(base)
        .await
        .unwrap_or_else(|e| {
            panic!("{service} is required at {base} ({e}); start it with `{start}`")
        });
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let server = base.rsplit_once('/').map(|(a, _)| a).unwrap_or(base);
    format!("{server}/{name}")
}

/// Panics unless Redis answers at `redis_url()`.
pub async fn require_redis() {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis is required at {url} ({e}); start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no`"));
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("redis PING");
}

/// The embedded defaults pointed at `store_url` and `lock`, with a unique Redis key prefix.
pub fn config(store_url: &str, lock: LockBackendKind) -> Config {
    let mut cfg = Config::defaults().expect("embedded config");
    cfg.store.url = store_url.to_string();
    cfg.lock.backend = lock;
    cfg.lock.redis_url = redis_url();
    cfg.lock.key_prefix = format!("waimai-test-{}", unique());
    cfg.auth.jwt_secret = "test-secret".into();
    cfg.shards.count = 16;
    cfg
}

/// A node serving HTTP on an ephemeral port.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// HTTP client.
    pub client: reqwest::Client,
    /// The node (router, store, ...).
    pub node: Arc<Node>,
    /// An admin token.
    pub admin: String,
    /// Stops the HTTP server when dropped or sent.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The serving task.
    served: Option<tokio::task::JoinHandle<()>>,
}

/// A response: status and JSON body (Null when the body is not JSON).
pub struct Resp {
    /// HTTP status.
    pub status: u16,
    /// Parsed body.
    pub body: Value,
}

impl TestApp {
    /// Starts a node with `cfg` on 127.0.0.1:0.
    pub async fn spawn(cfg: Config) -> TestApp {
        let node = Arc::new(Node::start(cfg).await.expect("node starts"));
        let listener = waimai::server::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = node.clone();
        let served = tokio::spawn(async move {
            serving
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        let admin = node.auth.mint(Role::Admin, "ops", 3600).expect("token");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client");
        TestApp {
            base,
            client,
            node,
            admin,
            stop: Some(stop),
            served: Some(served),
        }
    }

    /// Stops serving, then shuts the node down cleanly (drains actors, closes the store).
    pub async fn shutdown(mut self) {
        self.stop_http();
        if let Some(s) = self.served.take() {
            let _ = s.await;
        }
        let node = self.node.clone();
        drop(self);
        match Arc::try_unwrap(node) {
            Ok(node) => node.shutdown().await,
            Err(_) => panic!("node still shared at shutdown"),
        }
    }

    /// Opens a websocket on `path` with `token` (as `?token=`); Err(HTTP status) if refused.
    pub async fn ws(&self, path: &str, token: &str) -> Result<Socket, u16> {
        let url = format!(
            "{}{}?token={}",
            self.base.replacen("http://", "ws://", 1),
            path,
            token
        );
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => Ok(Socket { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("websocket connect: {e}"),
        }
    }

    /// Starts a node on the embedded defaults with a fresh SQLite file and local locks.
    pub async fn embedded() -> TestApp {
        let url = fresh_db(Db::Sqlite).await;
        TestApp::spawn(config(&url, LockBackendKind::Local)).await
    }

    /// Stops serving HTTP.
    pub fn stop_http(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// A token for `role`/`sub`.
    pub fn token(&self, role: Role, sub: &str) -> String {
        self.node.auth.mint(role, sub, 3600).expect("token")
    }

    /// Sends a request with an optional bearer token, extra headers and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Resp {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// The node's `/metrics` page, fetched over HTTP like a Prometheus scrape.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// POST with a JSON body (or none).
    pub async fn post(&self, path: &str, token: &str, body: Option<Value>) -> Resp {
        self.call(reqwest::Method::POST, path, Some(token), &[], body)
            .await
    }

    /// GET.
    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(reqwest::Method::GET, path, Some(token), &[], None)
            .await
    }

    /// PUT with a JSON body.
    pub async fn put(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(reqwest::Method::PUT, path, Some(token), &[], Some(body))
            .await
    }

    /// Creates an open merchant with one SKU `sku` of `stock` units at 1000 cents; returns
    /// (merchant id, merchant token).
    pub async fn merchant_with_stock(&self, sku: &str, stock: i64) -> (String, String) {
        self.merchant_at(sku, stock, 31.23, 121.47).await
    }

    /// Like `merchant_with_stock`, standing at (`lat`, `lng`).
    pub async fn merchant_at(&self, sku: &str, stock: i64, lat: f64, lng: f64) -> (String, String) {
        let r = self
            .post(
                "/v1/merchants",
                &self.admin,
                Some(json!({"name": "Test Kitchen", "location": {"lat": lat, "lng": lng}})),
            )
            .await;
        assert_eq!(r.status, 201, "create merchant: {}", r.body);
        let mid = r.body["id"].as_str().expect("merchant id").to_string();
        let token = self.token(Role::Merchant, &mid);
        let r = self
            .put(
                &format!("/v1/merchants/{mid}/menu"),
                &token,
                json!({"items": [{"sku": sku, "name": "Dumplings", "price_cents": 1000, "stock": stock}]}),
            )
            .await;
        assert_eq!(r.status, 200, "set menu: {}", r.body);
        (mid, token)
    }

    /// Creates a rider and puts it online; returns (rider id, rider token).
    pub async fn online_rider(&self) -> (String, String) {
        self.rider_at(31.22, 121.46).await
    }

    /// Creates a rider and puts it online at (`lat`, `lng`); returns (rider id, rider token).
    pub async fn rider_at(&self, lat: f64, lng: f64) -> (String, String) {
        let (rid, token) = self.new_rider().await;
        self.go_online(&rid, &token, lat, lng).await;
        (rid, token)
    }

    /// Creates a rider, opens its feed (whose snapshot shows no offer) and only then puts it
    /// online at (`lat`, `lng`), so no offer can slip past the feed; returns (rider id, rider
    /// token, feed).
    pub async fn rider_with_feed(&self, lat: f64, lng: f64) -> (String, String, Socket) {
        let (rid, token) = self.new_rider().await;
        let mut feed = self
            .ws(&format!("/v1/riders/{rid}/feed"), &token)
            .await
            .expect("rider feed");
        let snap = feed.json(5).await;
        assert_eq!(snap["type"], "snapshot");
        assert!(snap["offer"].is_null());
        self.go_online(&rid, &token, lat, lng).await;
        (rid, token, feed)
    }

    /// Creates an offline rider; returns (rider id, rider token).
    async fn new_rider(&self) -> (String, String) {
        let r = self
            .post("/v1/riders", &self.admin, Some(json!({"name": "Rider"})))
            .await;
        assert_eq!(r.status, 201, "create rider: {}", r.body);
        let rid = r.body["id"].as_str().expect("rider id").to_string();
        let token = self.token(Role::Rider, &rid);
        (rid, token)
    }

    /// Puts rider `rid` online at (`lat`, `lng`).
    async fn go_online(&self, rid: &str, token: &str, lat: f64, lng: f64) {
        let r = self
            .post(
                &format!("/v1/riders/{rid}/online"),
                token,
                Some(json!({"location": {"lat": lat, "lng": lng}})),
            )
            .await;
        assert_eq!(r.status, 200, "rider online: {}", r.body);
    }

    /// Places and pays an order of one `sku` as `customer`, then lets merchant `mtoken`
    /// accept it; returns the order id.
    pub async fn accepted_order(
        &self,
        customer: &str,
        mid: &str,
        mtoken: &str,
        sku: &str,
    ) -> String {
        let r = self.order(customer, mid, sku, 1, None).await;
        assert_eq!(r.status, 201, "order: {}", r.body);
        let oid = r.body["id"].as_str().expect("order id").to_string();
        let ctoken = self.token(Role::Customer, customer);
        let r = self
            .post(&format!("/v1/orders/{oid}/pay"), &ctoken, None)
            .await;
        assert_eq!(r.status, 200, "pay: {}", r.body);
        let r = self
            .post(
                &format!("/v1/merchants/{mid}/orders/{oid}/accept"),
                mtoken,
                None,
            )
            .await;
        assert_eq!(r.status, 200, "accept: {}", r.body);
        oid
    }

    /// Waits until rider `rid` holds an offer for `oid` (read through its feed's snapshot).
    pub async fn wait_offer(&self, rid: &str, rtoken: &str, oid: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let mut s = self
                .ws(&format!("/v1/riders/{rid}/feed"), rtoken)
                .await
                .expect("rider feed");
            if s.json(5).await["offer"]["order_id"] == oid {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no offer of {oid} reached {rid}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The order's current status, read as an admin.
    pub async fn status_of(&self, oid: &str) -> String {
        let r = self.get(&format!("/v1/orders/{oid}"), &self.admin).await;
        assert_eq!(r.status, 200, "get order: {}", r.body);
        r.body["status"].as_str().expect("status").to_string()
    }

    /// Polls until order `oid` is in `status` (at most `secs`); panics with the last status.
    pub async fn wait_status(&self, oid: &str, status: &str, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let now = self.status_of(oid).await;
            if now == status {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "order {oid} is still {now}, expected {status}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Places an order of `qty` x `sku` as `customer`; returns the response.
    pub async fn order(
        &self,
        customer: &str,
        mid: &str,
        sku: &str,
        qty: i64,
        key: Option<&str>,
    ) -> Resp {
        let token = self.token(Role::Customer, customer);
        let headers: Vec<(&str, &str)> = key
            .map(|k| vec![("idempotency-key", k)])
            .unwrap_or_default();
        self.call(
            reqwest::Method::POST,
            "/v1/orders",
            Some(&token),
            &headers,
            Some(json!({"merchant_id": mid, "items": [{"sku": sku, "qty": qty}], "deliver_to": {"lat": 31.2, "lng": 121.5}})),
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop_http();
    }
}

/// A websocket client.
pub struct Socket {
    /// The connection.
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// What a socket read returned.
#[derive(Debug)]
pub enum Frame {
    /// A JSON text message.
    Json(Value),
    /// The server closed, with code and reason.
    Closed(u16, String),
    /// Nothing within the wait.
    Timeout,
}

impl Socket {
    /// The next text message or close, skipping pings and pongs, waiting at most `secs`.
    pub async fn next(&mut self, secs: u64) -> Frame {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Frame::Timeout,
                Ok(None) => return Frame::Closed(1006, "eof".into()),
                Ok(Some(Err(_))) => return Frame::Closed(1006, "error".into()),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    return Frame::Json(serde_json::from_str(&t).expect("server sends JSON"))
                }
                Message::Close(c) => {
                    return c
                        .map(|c| Frame::Closed(u16::from(c.code), c.reason.to_string()))
                        .unwrap_or(Frame::Closed(1005, String::new()))
                }
                _ => continue,
            }
        }
    }

    /// The next JSON message; panics on close or after `secs`.
    pub async fn json(&mut self, secs: u64) -> Value {
        match self.next(secs).await {
            Frame::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next message of type `kind`, skipping others; panics on close or after `secs`.
    pub async fn expect_type(&mut self, kind: &str, secs: u64) -> Value {
        loop {
            let v = self.json(secs).await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Sends a JSON text message.
    pub async fn send(&mut self, v: Value) {
        use futures::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(v.to_string()))
            .await
            .expect("websocket send");
    }
}
