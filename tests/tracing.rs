//! Tracing end to end, against the real binary and a real OTLP/HTTP receiver started here: a
//! request's W3C `traceparent` is continued and answered, the trace follows the command from
//! the HTTP span through the order and merchant actors to the store commit and the sockets, the
//! writer's batch links to the commits it carries, and the node's logs carry the trace id.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::otlp::{ancestry, hex, name, receiver, trace_of};
use serde_json::{json, Value};
use waimai::domain::Role;

/// The node as a child process, with its stdout (JSON logs) collected line by line.
struct NodeProcess {
    child: Child,
    base: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SECRET: &str = "trace-secret";

/// The `traceparent` a node answered with (every answer carries one).
fn answered_traceparent(r: &reqwest::Response) -> String {
    r.headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("a traceparent header on the answer")
        .to_string()
}

fn start_node(otlp: &str) -> NodeProcess {
    start_node_logging(otlp, "json")
}

/// A node whose log lines are in `format` (`json` or `text`).
fn start_node_logging(otlp: &str, format: &str) -> NodeProcess {
    let dir = std::env::temp_dir().join(format!("waimai-trace-{}", common::unique()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_waimai"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env(
            "WAIMAI__STORE__URL",
            format!("sqlite://{}/t.db", dir.display()),
        )
        .env("WAIMAI__AUTH__JWT_SECRET", SECRET)
        .env("WAIMAI__TELEMETRY__OTLP_ENDPOINT", otlp)
        .env("WAIMAI__TELEMETRY__SAMPLE_RATIO", "1.0")
        .env("WAIMAI__TELEMETRY__LOG_FORMAT", format)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        // warp's own request events are off by default; here they give a log line per request.
        .env("RUST_LOG", "info,warp::filters::trace=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start waimai serve");
    let stdout = child.stdout.take().expect("stdout");
    let logs: Arc<Mutex<Vec<String>>> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("waimai listening") {
                let _ = tx.send(line.clone());
            }
            kept.lock().expect("logs").push(line);
        }
    });
    // Held from here, so a node that fails a check below is still stopped.
    let mut node = NodeProcess {
        child,
        base: String::new(),
        logs,
    };
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the node logs its listening address");
    let addr = if format == "json" {
        let v: Value = serde_json::from_str(&line).expect("JSON log line");
        v["fields"]["addr"]
            .as_str()
            .expect("addr field")
            .to_string()
    } else {
        // Written to a pipe, a text line has no colour codes: `... waimai listening addr=...`.
        assert!(!line.contains('\u{1b}'), "escape codes in {line:?}");
        line.split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("addr field")
            .to_string()
    };
    node.base = format!("http://{addr}");
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_traced_from_http_through_actors_to_the_store_and_sockets() {
    let rx = receiver();
    let node = start_node(&rx.base);
    let auth = waimai::api::Auth::new(SECRET);
    let admin = auth.mint(Role::Admin, "ops", 3600).expect("token");
    let http = reqwest::Client::new();

    let r = http
        .post(format!("{}/v1/merchants", node.base))
        .bearer_auth(&admin)
        .json(&json!({"name": "Traced Kitchen", "location": {"lat": 31.23, "lng": 121.47}}))
        .send()
        .await
        .expect("create merchant");
    assert_eq!(r.status(), 201);
    // Every answer carries a trace id, even for a caller that sent none.
    let own = answered_traceparent(&r);
    assert_eq!(own.len(), 55, "W3C traceparent: {own}");
    let mid = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mtoken = auth.mint(Role::Merchant, &mid, 3600).expect("token");
    let r = http
        .put(format!("{}/v1/merchants/{mid}/menu", node.base))
        .bearer_auth(&mtoken)
        .json(&json!({"items": [{"sku": "bao", "name": "Bao", "price_cents": 500, "stock": 5}]}))
        .send()
        .await
        .expect("menu");
    assert_eq!(r.status(), 200);

    // The caller's trace: a random trace id, and the caller's own span as parent.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let tid = format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 64));
    let caller_span = "00f067aa0ba902b7";
    let ctok = auth.mint(Role::Customer, "c-trace", 3600).expect("token");
    let r = http
        .post(format!("{}/v1/orders", node.base))
        .bearer_auth(&ctok)
        .header("traceparent", format!("00-{tid}-{caller_span}-01"))
        .json(
            &json!({"merchant_id": mid, "items": [{"sku": "bao", "qty": 2}],
                      "deliver_to": {"lat": 31.2, "lng": 121.5}}),
        )
        .send()
        .await
        .expect("order");
    assert_eq!(r.status(), 201);
    let answered = answered_traceparent(&r);
    let parts: Vec<&str> = answered.split('-').collect();
    assert_eq!(
        parts.get(1),
        Some(&tid.as_str()),
        "the caller's trace is continued"
    );
    assert_ne!(
        parts.get(2),
        Some(&caller_span),
        "with the node's own span id"
    );

    // Wait for the whole path: http -> order actor -> merchant actor -> store commit, the
    // sockets' publish under the order actor, and a writer batch linked to the commit.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (trace, commit, publish, batch) = loop {
        let trace = trace_of(&rx, &tid);
        let commit = trace.values().find(|s| name(s) == "store commit").cloned();
        let publish = trace
            .values()
            .find(|s| name(s) == "publish to sockets")
            .cloned();
        let batch = commit.as_ref().and_then(|c| {
            rx.spans
                .lock()
                .expect("spans")
                .iter()
                .find(|s| {
                    name(s) == "store batch" && s.links.iter().any(|l| l.span_id == c.span_id)
                })
                .cloned()
        });
        if let (Some(c), Some(p), Some(b)) = (commit.clone(), publish.clone(), batch.clone()) {
            let http_span_done = ancestry(&trace, &c).len() >= 4;
            if http_span_done {
                break (trace, c, p, b);
            }
        }
        assert!(
            Instant::now() < deadline,
            "spans of trace {tid} did not all arrive: {:?}",
            trace.values().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let path = ancestry(&trace, &commit);
    assert_eq!(
        path,
        [
            "store commit",
            "ReserveAndPlace",
            "PlaceOrder",
            "POST /v1/orders"
        ],
        "the commit's parents, up to the request"
    );
    let root = trace
        .values()
        .find(|s| name(s) == "POST /v1/orders")
        .expect("request span");
    assert_eq!(
        hex(&root.parent_span_id),
        caller_span,
        "the request span's parent is the caller's span"
    );
    assert_eq!(
        hex(&root.span_id),
        parts[2],
        "the answered traceparent names the request span"
    );
    assert_eq!(
        ancestry(&trace, &publish),
        ["publish to sockets", "PlaceOrder", "POST /v1/orders"],
        "the sockets are told from inside the order actor's span"
    );
    assert_ne!(
        hex(&batch.trace_id),
        tid,
        "a batch serves many commands: it is the root of its own trace and links to each"
    );

    // The node's log lines for the request carry its trace id.
    logs_carry(&node, &tid).await;
}

/// Waits until one of the node's log lines was written inside a span of trace `tid`.
async fn logs_carry(node: &NodeProcess, tid: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = node.logs.lock().expect("logs").iter().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["span"]["trace_id"] == tid
                    || v["spans"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s["trace_id"] == tid))
            })
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no log line carries trace id {tid}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /healthz` sent with `traceparent`.
async fn healthz(node: &NodeProcess, traceparent: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/healthz", node.base))
        .header("traceparent", traceparent)
        .send()
        .await
        .expect("healthz")
}

/// With no endpoint configured nothing is exported, yet a caller still gets its trace back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_the_trace_id_is_still_answered() {
    let node = start_node("");
    let tid = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = healthz(&node, &format!("00-{tid}-00f067aa0ba902b7-01")).await;
    assert_eq!(r.status(), 200);
    let tp = answered_traceparent(&r);
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[1], tid, "the caller's trace is continued");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "under a span id of the node's own"
    );
    assert_eq!(parts[3], "01", "and the caller's sampled flag");
    logs_carry(&node, tid).await;
    // A malformed traceparent starts a new trace instead of failing the request.
    let r = healthz(&node, "00-not-a-trace-01").await;
    assert_eq!(r.status(), 200);
    let tp = answered_traceparent(&r);
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert!(
        parts[1].len() == 32 && parts[1] != tid && parts[1] != "0".repeat(32),
        "a new trace: {tp}"
    );
    assert_eq!(parts[3], "00", "which nothing records: {tp}");
    logs_carry(&node, parts[1]).await;
}

/// Text logs written to a pipe (a file, a collector) are plain: no terminal colour codes in any
/// line, and a request's line still names its trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_pipe_are_plain_and_carry_the_trace_id() {
    let node = start_node_logging("", "text");
    let tid = "0af7651916cd43dd8448eb211c80319c";
    let r = healthz(&node, &format!("00-{tid}-b7ad6b7169203331-01")).await;
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node
        .logs
        .lock()
        .expect("logs")
        .iter()
        .any(|l| l.contains(tid))
    {
        assert!(
            Instant::now() < deadline,
            "no log line carries trace id {tid}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = node.logs.lock().expect("logs");
    assert!(logs.len() > 2, "{logs:?}");
    for line in logs.iter() {
        assert!(!line.contains('\u{1b}'), "escape codes in {line:?}");
    }
}

/// The other commands' logs (the load generator's progress lines) are plain in a pipe too.
#[test]
fn the_load_generators_logs_to_a_pipe_are_plain() {
    // Nothing listens on port 9 here: setup fails at once, after its first log line.
    let out = Command::new(env!("CARGO_BIN_EXE_waimai"))
        .args([
            "loadgen",
            "create",
            "--target",
            "http://127.0.0.1:9",
            "--duration",
            "1",
        ])
        .env("RUST_LOG", "info")
        .output()
        .expect("run the load generator");
    assert!(!out.status.success(), "setup against nothing must fail");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("setting up"), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "escape codes in {stdout:?}");
}
