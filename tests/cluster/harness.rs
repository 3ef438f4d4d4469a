//! A real cluster for tests: a Kafka-compatible broker process (`nisshi`, in memory, on a free
//! port; or the broker named by `WAIMAI_TEST_KAFKA`), and `waimai serve` processes sharing a
//! fresh PostgreSQL database and Redis, each with its own port. Nodes can be killed (`kill -9`),
//! paused (`SIGSTOP`) and resumed, and joined later.
//!
//! A missing broker binary, PostgreSQL or Redis makes the test panic with how to get it;
//! nothing is skipped.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::Connection;

/// A short unique suffix.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A broker for one test.
pub struct Broker {
    /// `host:port`.
    pub addr: String,
    child: Option<Child>,
}

impl Broker {
    /// `WAIMAI_TEST_KAFKA` if set (a running Kafka, Redpanda or nisshi), else a fresh nisshi
    /// process in memory on a free port.
    pub fn start() -> Broker {
        if let Ok(addr) = std::env::var("WAIMAI_TEST_KAFKA") {
            return Broker { addr, child: None };
        }
        let bin = std::env::var("WAIMAI_TEST_BROKER_BIN").unwrap_or_else(|_| "nisshi".into());
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec![
            "broker".to_string(),
            "--listener-url".into(),
            format!("tcp://{addr}"),
            "--advertised-listener-url".into(),
            format!("tcp://{addr}"),
            "--storage-engine".into(),
            "memory://broker/".into(),
        ];
        if !bin.ends_with("tansu") {
            // nisshi's flag (tansu 0.6, the stable-toolchain fallback, has none).
            args.extend(["--group-initial-rebalance-delay".into(), "500ms".into()]);
        }
        let child = Command::new(&bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "the Kafka-compatible broker `{bin}` is required ({e}): install it with \
                     `cargo +nightly install --locked nisshi` (bash .ci/run does), or point \
                     WAIMAI_TEST_KAFKA at a running broker"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "broker did not start on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            addr,
            child: Some(child),
        }
    }
}

impl Broker {
    /// Sends `sig` (`STOP`, `CONT`) to the broker process this test started.
    pub fn signal(&self, sig: &str) {
        let child = self
            .child
            .as_ref()
            .expect("a broker this test started (not WAIMAI_TEST_KAFKA)");
        let ok = Command::new("kill")
            .args([format!("-{sig}"), child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} the broker");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Settings every node of one test cluster shares.
#[derive(Clone)]
pub struct Shared {
    /// `WAIMAI__*` variables.
    pub env: Vec<(String, String)>,
    /// The database URL.
    pub db: String,
    /// The JWT secret.
    pub secret: String,
}

impl Shared {
    /// A fresh PostgreSQL database, a unique Redis prefix, group and topics, on `broker`.
    pub async fn new(broker: &Broker) -> Shared {
        let db = fresh_pg().await;
        let id = unique();
        let secret = format!("cluster-test-{id}");
        let env = vec![
            ("WAIMAI__STORE__URL", db.clone()),
            ("WAIMAI__STORE__MAX_CONNECTIONS", "6".into()),
            ("WAIMAI__LOCK__BACKEND", "redis".into()),
            (
                "WAIMAI__LOCK__REDIS_URL",
                std::env::var("WAIMAI_TEST_REDIS")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            ),
            ("WAIMAI__LOCK__KEY_PREFIX", format!("waimai-ct-{id}")),
            ("WAIMAI__AUTH__JWT_SECRET", secret.clone()),
            ("WAIMAI__SHARDS__COUNT", "16".into()),
            ("WAIMAI__SHARDS__ARBITERS", "1".into()),
            ("WAIMAI__CLUSTER__ENABLED", "true".into()),
            ("WAIMAI__CLUSTER__BROKERS", broker.addr.clone()),
            ("WAIMAI__CLUSTER__GROUP", format!("waimai-ct-{id}")),
            ("WAIMAI__CLUSTER__TOPIC_PREFIX", format!("waimai-ct-{id}")),
            ("WAIMAI__CLUSTER__SESSION_TIMEOUT_MS", "6000".into()),
            ("WAIMAI__CLUSTER__REFRESH_MS", "500".into()),
            ("WAIMAI__CLUSTER__FORWARD_WAIT_MS", "8000".into()),
            ("WAIMAI__DISPATCH__RETRY_MS", "200".into()),
            ("WAIMAI__REALTIME__LOCATION_INTERVAL_MS", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Shared { env, db, secret }
    }

    /// Adds or replaces a setting for nodes started from now on.
    pub fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// A token signed with the cluster's secret.
    pub fn token(&self, role: waimai::domain::Role, sub: &str) -> String {
        waimai::api::Auth::new(&self.secret)
            .mint(role, sub, 3600)
            .expect("token")
    }
}

/// Creates an empty PostgreSQL database; panics if the server is not there.
pub async fn fresh_pg() -> String {
    sqlx::any::install_default_drivers();
    let base = std::env::var("WAIMAI_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut conn = sqlx::AnyConnection::connect(&base)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required at {base} ({e}); start it with \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
            )
        });
    let name = format!("waimai_ct_{}", unique());
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let server = base.rsplit_once('/').map(|(a, _)| a).unwrap_or(&base);
    format!("{server}/{name}")
}

/// One `waimai serve` process.
pub struct NodeProc {
    /// `node-N`.
    pub id: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The process.
    child: Child,
    /// Where its log goes.
    pub log: std::path::PathBuf,
}

impl NodeProc {
    /// Starts `waimai serve` as node `id` with the shared settings.
    pub fn start(shared: &Shared, id: &str) -> NodeProc {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("waimai-ct-{}-{id}.log", unique()));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_waimai"))
            .args(["serve", "--listen", &listen])
            .envs(shared.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("WAIMAI__CLUSTER__NODE_ID", id)
            .env(
                "RUST_LOG",
                std::env::var("WAIMAI_TEST_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn waimai serve");
        NodeProc {
            id: id.to_string(),
            url: format!("http://{listen}"),
            child,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            if Instant::now() > deadline {
                self.kill9();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of its log (for failure messages).
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster of node processes and an HTTP client.
pub struct Cluster {
    /// The broker (kept alive for the cluster's life).
    pub broker: Broker,
    /// What nodes share.
    pub shared: Shared,
    /// The nodes, in start order.
    pub nodes: Vec<NodeProc>,
    /// HTTP client.
    pub http: reqwest::Client,
    /// An admin token.
    pub admin: String,
}

/// A response.
pub struct Resp {
    /// Status.
    pub status: u16,
    /// JSON body (Null if not JSON).
    pub body: Value,
}

impl Cluster {
    /// Starts a broker and `n` nodes (all at once) and waits until every node is ready.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {}).await
    }

    /// Like `start`, with settings adjusted by `tune` first.
    pub async fn start_with(n: usize, tune: impl FnOnce(&mut Shared)) -> Cluster {
        require_redis().await;
        let broker = Broker::start();
        let mut shared = Shared::new(&broker).await;
        tune(&mut shared);
        let nodes: Vec<NodeProc> = (1..=n)
            .map(|i| NodeProc::start(&shared, &format!("node-{i}")))
            .collect();
        let admin = shared.token(waimai::domain::Role::Admin, "ops");
        let c = Cluster {
            broker,
            shared,
            nodes,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(64)
                .build()
                .expect("client"),
            admin,
        };
        for i in 0..n {
            c.wait_ready(i, 90).await;
        }
        c.wait_settled(60).await;
        c
    }

    /// Starts one more node and waits until it is ready.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let node = NodeProc::start(&self.shared, &format!("node-{}", i + 1));
        self.nodes.push(node);
        self.wait_ready(i, 90).await;
        i
    }

    /// Waits until node `i` answers /readyz with 200.
    pub async fn wait_ready(&self, i: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/readyz", self.nodes[i].url))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {secs}s; its log:\n{}",
                self.nodes[i].id,
                self.nodes[i].tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the cluster view (through node 0 or any live node) shows every shard owned
    /// by a live member and every live member owning at least one shard.
    pub async fn wait_settled(&self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(view) = self.view_any().await {
                let alive: Vec<&str> = view["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["alive"] == true)
                    .filter_map(|m| m["node_id"].as_str())
                    .collect();
                let shards = view["shards"].as_array().cloned().unwrap_or_default();
                let owned_by_live = shards
                    .iter()
                    .all(|s| s["owner"].as_str().is_some_and(|o| alive.contains(&o)));
                let everyone_works = alive
                    .iter()
                    .all(|n| shards.iter().any(|s| s["owner"].as_str() == Some(n)));
                if owned_by_live && everyone_works && !alive.is_empty() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not settle within {secs}s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `GET /v1/cluster` through the first node that answers.
    pub async fn view_any(&self) -> Option<Value> {
        for n in &self.nodes {
            let r = self
                .http
                .get(format!("{}/v1/cluster", n.url))
                .bearer_auth(&self.admin)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().is_success() {
                    return r.json().await.ok();
                }
            }
        }
        None
    }

    /// The node id owning `shard` now.
    pub async fn owner_of_shard(&self, shard: u32) -> String {
        let view = self.view_any().await.expect("cluster view");
        view["shards"][shard as usize]["owner"]
            .as_str()
            .expect("owner")
            .to_string()
    }

    /// Sends a request to node `i`.
    pub async fn call(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Resp, String> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.nodes[i].url))
            .bearer_auth(token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok(Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        })
    }

    /// POST through node `i`; panics on a transport error.
    pub async fn post(&self, i: usize, path: &str, token: &str, body: Option<Value>) -> Resp {
        self.call(i, reqwest::Method::POST, path, token, &[], body)
            .await
            .unwrap_or_else(|e| panic!("POST {path} via {}: {e}", self.nodes[i].id))
    }

    /// GET through node `i`; panics on a transport error.
    pub async fn get(&self, i: usize, path: &str, token: &str) -> Resp {
        self.call(i, reqwest::Method::GET, path, token, &[], None)
            .await
            .unwrap_or_else(|e| panic!("GET {path} via {}: {e}", self.nodes[i].id))
    }

    /// PUT through node `i`.
    pub async fn put(&self, i: usize, path: &str, token: &str, body: Value) -> Resp {
        self.call(i, reqwest::Method::PUT, path, token, &[], Some(body))
            .await
            .unwrap_or_else(|e| panic!("PUT {path} via {}: {e}", self.nodes[i].id))
    }

    /// Creates a merchant (through node `via`) with one SKU of `stock` units; (id, token).
    pub async fn merchant(&self, via: usize, sku: &str, stock: i64) -> (String, String) {
        let r = self
            .post(
                via,
                "/v1/merchants",
                &self.admin,
                Some(json!({"name": "Kitchen", "location": {"lat": 31.23, "lng": 121.47}})),
            )
            .await;
        assert_eq!(r.status, 201, "create merchant: {}", r.body);
        let mid = r.body["id"].as_str().expect("id").to_string();
        let token = self.shared.token(waimai::domain::Role::Merchant, &mid);
        let r = self
            .put(
                (via + 1) % self.nodes.len(),
                &format!("/v1/merchants/{mid}/menu"),
                &token,
                json!({"items": [{"sku": sku, "name": "Dish", "price_cents": 1000, "stock": stock}]}),
            )
            .await;
        assert_eq!(r.status, 200, "menu: {}", r.body);
        (mid, token)
    }

    /// Places an order of one `sku` as `customer` through node `via`.
    pub async fn order(
        &self,
        via: usize,
        customer: &str,
        mid: &str,
        sku: &str,
        key: Option<&str>,
    ) -> Result<Resp, String> {
        let token = self.shared.token(waimai::domain::Role::Customer, customer);
        let headers: Vec<(&str, &str)> = key
            .map(|k| vec![("idempotency-key", k)])
            .unwrap_or_default();
        self.call(
            via,
            reqwest::Method::POST,
            "/v1/orders",
            &token,
            &headers,
            Some(
                json!({"merchant_id": mid, "items": [{"sku": sku, "qty": 1}],
                        "deliver_to": {"lat": 31.2, "lng": 121.5}}),
            ),
        )
        .await
    }

    /// A consumer outside the cluster (a group of its own) reading the events topic from its
    /// start, as an external system would.
    pub fn external_consumer(&self) -> rdkafka::consumer::StreamConsumer {
        use rdkafka::consumer::Consumer;
        let prefix = self
            .shared
            .env
            .iter()
            .find(|(k, _)| k == "WAIMAI__CLUSTER__TOPIC_PREFIX")
            .map(|(_, v)| v.clone())
            .expect("prefix");
        let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.broker.addr)
            .set("group.id", format!("external-{}", unique()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer
            .subscribe(&[&format!("{prefix}.events")])
            .expect("subscribe");
        consumer
    }

    /// A websocket to node `i`.
    pub async fn ws(&self, i: usize, path: &str, token: &str) -> Socket {
        let url = format!(
            "{}{}?token={}",
            self.nodes[i].url.replacen("http://", "ws://", 1),
            path,
            token
        );
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("websocket {path} on {}: {e}", self.nodes[i].id));
        Socket { ws }
    }

    /// The value of the sample `series` (name and labels, exactly) in node `i`'s `/metrics`.
    pub async fn metric(&self, i: usize, series: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.nodes[i].url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        waimai::metrics::sample(&text, series)
    }

    /// A connection to the cluster's database.
    pub async fn db(&self) -> sqlx::AnyConnection {
        sqlx::AnyConnection::connect(&self.shared.db)
            .await
            .expect("database")
    }
}

/// The orders whose `order_created` outbox row is marked shipped (the broker acknowledged it).
pub async fn shipped_orders(db: &mut sqlx::AnyConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT aggregate_id FROM outbox WHERE event_type = 'order_created' AND published = 1",
    )
    .fetch_all(db)
    .await
    .expect("outbox")
}

/// Panics unless Redis answers.
pub async fn require_redis() {
    let url =
        std::env::var("WAIMAI_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
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

/// A websocket client.
pub struct Socket {
    /// The connection.
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Socket {
    /// The next JSON message within `secs`; `None` on close or timeout.
    pub async fn next(&mut self, secs: f64) -> Option<Value> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg.ok()? {
                Message::Text(t) => return serde_json::from_str(&t).ok(),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }
}

impl Socket {
    /// Reads until a message satisfies `pred`, at most `secs`; panics naming `what` otherwise.
    pub async fn wait_for(
        &mut self,
        secs: f64,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64();
            assert!(left > 0.0, "timed out waiting for {what}");
            if let Some(m) = self.next(left).await {
                if pred(&m) {
                    return m;
                }
            } else {
                assert!(
                    Instant::now() < deadline,
                    "socket closed or timed out waiting for {what}"
                );
            }
        }
    }
}

/// Polls `f` until it returns `Some`, at most `secs`; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
