//! Cluster figures on this machine (`cargo bench --bench cluster`): what forwarding to the
//! owning node adds, how fast an event crosses nodes to a socket, how long a killed node's
//! shards take to serve again, and `create` throughput of three nodes against one.
//!
//! It starts real processes, as the cluster tests do: a broker (nisshi, or `WAIMAI_TEST_KAFKA`),
//! release `waimai serve` nodes on a fresh PostgreSQL database and Redis, and `waimai loadgen`
//! for throughput. Needs what the tests need. Prints figures; asserts nothing about time.

#[path = "../tests/cluster/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{unique, Cluster};
use serde_json::Value;
use waimai::domain::Role;

fn order_id_for(customer: &str, key: &str) -> String {
    let ns = format!("{customer}\n{key}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, ns.as_bytes()).to_string()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Shard owners by shard, from the cluster view.
async fn owners(c: &Cluster) -> Vec<String> {
    let view = c.view_any().await.expect("view");
    view["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["owner"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Keys whose orders fall in shards owned by `node`.
fn keys_for(owners: &[String], node: &str, customer: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n {
        let k = format!("b-{}-{i}", unique());
        let s = waimai::cluster::shard_of(&order_id_for(customer, &k), owners.len() as u32);
        if owners[s as usize] == node {
            out.push(k);
        }
        i += 1;
    }
    out
}

/// A merchant whose shard `node` owns (created until one lands there).
async fn merchant_on(c: &Cluster, owners: &[String], node: &str) -> String {
    loop {
        let (mid, _) = c.merchant(0, "dish", 10_000_000).await;
        let s = waimai::cluster::shard_of(&mid, owners.len() as u32);
        if owners[s as usize] == node {
            return mid;
        }
    }
}

/// Creates through the owner of each order (and its merchant) and through another node, in
/// turn, one at a time: the difference is the forward.
async fn forwarding(c: &Cluster) {
    let owners = owners(c).await;
    let a = c.nodes[0].id.clone();
    let mid = merchant_on(c, &owners, &a).await;
    let keys = keys_for(&owners, &a, "fwd", 1600);
    let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
    for (i, k) in keys.iter().enumerate() {
        let via = if i % 2 == 0 { 0 } else { 1 };
        let t = Instant::now();
        let r = c
            .order(via, "fwd", &mid, "dish", Some(k))
            .await
            .expect("order");
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(r.status, 201, "{}", r.body);
        if i >= 200 {
            if via == 0 {
                direct.push(ms)
            } else {
                forwarded.push(ms)
            }
        }
    }
    let (d50, d99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99));
    let (f50, f99) = (pct(&mut forwarded, 0.5), pct(&mut forwarded, 0.99));
    println!(
        "forwarding: create through the owner p50 {d50:.2} ms p99 {d99:.2} ms; through another \
         node p50 {f50:.2} ms p99 {f99:.2} ms; the forward adds {:.2} ms at p50 ({} each, one at a time)",
        f50 - d50,
        direct.len()
    );
}

/// A tracking socket on node 2 while orders are paid, accepted and cancelled through node 0:
/// from each change's time (`at`) to the socket.
async fn event_to_socket(c: &Cluster) {
    let (mid, mtoken) = c.merchant(0, "soup", 1_000_000).await;
    let customer = c.shared.token(Role::Customer, "ev");
    let mut lat = Vec::new();
    for _ in 0..150 {
        let r = c.order(0, "ev", &mid, "soup", None).await.expect("order");
        let oid = r.body["id"].as_str().expect("id").to_string();
        let mut sock = c.ws(2, &format!("/v1/orders/{oid}/track"), &customer).await;
        let _snapshot = sock.next(5.0).await;
        for (path, token) in [
            (format!("/v1/orders/{oid}/pay"), &customer),
            (format!("/v1/merchants/{mid}/orders/{oid}/accept"), &mtoken),
            (format!("/v1/orders/{oid}/cancel"), &customer),
        ] {
            let r = c.post(0, &path, token, None).await;
            assert_eq!(r.status, 200, "{path}: {}", r.body);
        }
        while let Some(m) = sock.next(5.0).await {
            if m["type"] == "status" {
                if let Some(at) = m["at"].as_i64() {
                    lat.push((waimai::domain::now_ms() - at) as f64);
                }
            }
        }
    }
    let (p50, p90, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.9), pct(&mut lat, 0.99));
    println!(
        "event to socket across nodes (change through node-1, socket on node-3, {} events, one \
         order at a time): p50 {p50:.0} ms p90 {p90:.0} ms p99 {p99:.0} ms",
        lat.len()
    );
}

/// `kill -9` a node, then create (through a live node) orders in shards it owned, every 20 ms,
/// until one succeeds.
async fn kill_recovery(c: &Cluster) {
    let owners = owners(c).await;
    let victim = c.nodes[2].id.clone();
    let mid = merchant_on(c, &owners, &c.nodes[0].id).await;
    let keys = keys_for(&owners, &victim, "kill", 2000);
    let pid = c.nodes[2].pid();
    let killed = Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    for k in keys {
        let r = c.order(0, "kill", &mid, "dish", Some(&k)).await;
        if r.is_ok_and(|r| r.status == 201) {
            println!(
                "kill -9 to the first successful create in a shard the dead node owned: {:.2} s \
                 (session timeout {} ms)",
                killed.elapsed().as_secs_f64(),
                6000
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("kill -9: no create succeeded in the dead node's shards");
}

/// `waimai loadgen create` against `targets`; the orders/s it reports.
fn loadgen(targets: &[String], secret: &str, users: usize) -> f64 {
    let json = std::env::temp_dir().join(format!("waimai-bench-{}.json", unique()));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_waimai"));
    cmd.args([
        "loadgen",
        "create",
        "--quiet",
        "--duration",
        "15",
        "--warmup",
        "3",
    ])
    .args([
        "--concurrency",
        &users.to_string(),
        "--merchants",
        "32",
        "--skus",
        "8",
    ])
    .arg("--json")
    .arg(&json)
    .env("WAIMAI__AUTH__JWT_SECRET", secret)
    .env("RUST_LOG", "warn");
    for t in targets {
        cmd.args(["--target", t]);
    }
    let out = cmd.output().expect("run loadgen");
    assert!(
        out.status.success(),
        "loadgen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
    report["ops"]
        .as_array()
        .and_then(|ops| ops.iter().find(|o| o["op"] == "create_order"))
        .and_then(|o| o["per_sec"].as_f64())
        .unwrap_or(f64::NAN)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Nodes as deployed: 64 shards, one arbiter per core.
    let tune = |s: &mut harness::Shared| {
        s.set("WAIMAI__SHARDS__COUNT", "64");
        s.set("WAIMAI__SHARDS__ARBITERS", "0");
    };
    rt.block_on(async {
        let c = Cluster::start_with(3, tune).await;
        forwarding(&c).await;
        event_to_socket(&c).await;
        let targets: Vec<String> = c.nodes.iter().map(|n| n.url.clone()).collect();
        let three: Vec<f64> = (0..2)
            .map(|_| loadgen(&targets, &c.shared.secret, 256))
            .collect();
        kill_recovery(&c).await;
        drop(c);
        let one = Cluster::start_with(1, tune).await;
        let one_node: Vec<f64> = (0..2)
            .map(|_| loadgen(&[one.nodes[0].url.clone()], &one.shared.secret, 256))
            .collect();
        drop(one);
        let plain = Cluster::start_with(1, |s| {
            tune(s);
            s.set("WAIMAI__CLUSTER__ENABLED", "false");
        })
        .await;
        let single: Vec<f64> = (0..2)
            .map(|_| loadgen(&[plain.nodes[0].url.clone()], &plain.shared.secret, 256))
            .collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "create throughput (loadgen, 256 users, PostgreSQL + Redis, all on this machine, two \
             runs each): 3-node cluster {three:.0?}/s; 1-node cluster {one_node:.0?}/s; one node \
             without cluster mode {single:.0?}/s. Three nodes against one plain node: {:+.0}%",
            (mean(&three) / mean(&single) - 1.0) * 100.0
        );
    });
}
