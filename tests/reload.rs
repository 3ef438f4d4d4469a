//! Configuration that changes without a restart: `POST /v1/admin/reload` and SIGHUP read the
//! file again, apply the live keys (new deadlines take effect on the next order), refuse the
//! others with a log line and keep their old values, and a broken file changes nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fresh_db, Db, TestApp};
use waimai::domain::Role;
use waimai::Config;

fn yaml(store: &str, listen: &str, payment_timeout_ms: u64) -> String {
    format!(
        "server:\n  listen: \"{listen}\"\nstore:\n  url: \"{store}\"\nauth:\n  jwt_secret: \"reload-secret\"\n\
         shards:\n  count: 16\ntimers:\n  payment_timeout_ms: {payment_timeout_ms}\n"
    )
}

/// The keys a reload answer says it applied, in its order.
fn applied_keys(body: &serde_json::Value) -> Vec<&str> {
    body["applied"]
        .as_array()
        .expect("applied")
        .iter()
        .filter_map(|c| c["key"].as_str())
        .collect()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config file");
}

#[actix_rt::test]
async fn a_reload_applies_live_keys_refuses_the_rest_and_survives_a_broken_file() {
    let url = fresh_db(Db::Sqlite).await;
    let dir = std::env::temp_dir().join(format!("waimai-reload-{}", common::unique()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("waimai.yaml");
    write(&file, &yaml(&url, "127.0.0.1:8080", 600_000));
    let cfg = Config::load(Some(&file)).expect("config");
    let app = TestApp::spawn(cfg).await;
    let (mid, mtoken) = app.merchant_with_stock("noodles", 10).await;

    // Under the long deadline an unpaid order waits.
    let r = app.order("c-slow", &mid, "noodles", 1, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let slow = r.body["id"].as_str().expect("id").to_string();

    write(&file, &yaml(&url, "0.0.0.0:9", 300));
    let customer = app.token(Role::Customer, "c-1");
    let r = app.post("/v1/admin/reload", &customer, None).await;
    assert_eq!(r.status, 403, "only an admin reloads: {}", r.body);
    let r = app.post("/v1/admin/reload", &app.admin, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["applied"][0]["key"], "timers.payment_timeout_ms");
    assert_eq!(r.body["applied"][0]["from"], 600_000);
    assert_eq!(r.body["applied"][0]["to"], 300);
    assert_eq!(r.body["refused"][0]["key"], "server.listen");
    assert_eq!(
        app.node.live.current().server.listen,
        "127.0.0.1:8080",
        "a key that cannot change live keeps its old value"
    );

    // The next order gets the new deadline; the earlier one keeps the deadline it was given.
    let r = app.order("c-fast", &mid, "noodles", 1, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let fast = r.body["id"].as_str().expect("id").to_string();
    app.wait_status(&fast, "cancelled", 15).await;
    assert_eq!(app.status_of(&slow).await, "pending_payment");

    // The dispatcher takes a new policy at its next round and keeps offering under it.
    write(
        &file,
        &format!(
            "{}dispatch:\n  policy: batch\n  batch_ms: 50\n",
            yaml(&url, "127.0.0.1:8080", 600_000)
        ),
    );
    let r = app.post("/v1/admin/reload", &app.admin, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let applied = applied_keys(&r.body);
    assert_eq!(
        applied,
        [
            "dispatch.batch_ms",
            "dispatch.policy",
            "timers.payment_timeout_ms"
        ],
        "{}",
        r.body
    );
    let (rid, rtoken) = app.online_rider().await;
    let oid = app
        .accepted_order("c-dispatch", &mid, &mtoken, "noodles")
        .await;
    app.wait_offer(&rid, &rtoken, &oid).await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("waimai_dispatch_round_seconds_count{policy=\"batch\""),
        "the zone ran batch rounds after the reload"
    );

    // A file that does not parse changes nothing and says why.
    write(&file, "timers: [not, a, map]\n");
    let r = app.post("/v1/admin/reload", &app.admin, None).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("config not reloaded")));
    assert_eq!(app.node.live.current().timers.payment_timeout_ms, 600_000);

    // A log filter that does not parse is refused as a whole.
    write(
        &file,
        &format!(
            "{}telemetry:\n  log_level: \"waimai=[[\"\n",
            yaml(&url, "127.0.0.1:8080", 5_000)
        ),
    );
    let r = app.post("/v1/admin/reload", &app.admin, None).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        app.node.live.current().timers.payment_timeout_ms,
        600_000,
        "nothing of a refused reload is applied"
    );
    app.shutdown().await;
}

/// The binary reloads on SIGHUP and logs what it applied and what it refused.
#[test]
fn sighup_reloads_the_file() {
    let dir = std::env::temp_dir().join(format!("waimai-hup-{}", common::unique()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("waimai.yaml");
    let store = format!("sqlite://{}/hup.db", dir.display());
    write(&file, &yaml(&store, "127.0.0.1:0", 600_000));
    let mut child = Command::new(env!("CARGO_BIN_EXE_waimai"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start waimai");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |what: &str, secs: u64| -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {what:?} within {secs} s"),
            }
        }
    };
    wait_for("waimai listening", 60);
    write(&file, &yaml(&store, "127.0.0.1:1", 1_000));
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let applied = wait_for("config reload: applied", 20);
    assert!(applied.contains("timers.payment_timeout_ms"), "{applied}");
    let done = wait_for("config reloaded (SIGHUP)", 20);
    assert!(
        done.contains("applied=1") && done.contains("refused=1"),
        "{done}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Rate-limit quotas change live: a reload tightens the read quota of a running node.
#[actix_rt::test]
async fn a_reload_changes_the_rate_limit_quotas() {
    let url = fresh_db(Db::Sqlite).await;
    let dir = std::env::temp_dir().join(format!("waimai-reload-rl-{}", common::unique()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("waimai.yaml");
    let with_reads = |per_s: f64, burst: u32| {
        format!(
            "{}gateway:\n  limits:\n    enabled: true\n    backend: local\n    \
             read: {{ customer_per_s: {per_s}, customer_burst: {burst}, ip_per_s: 0, ip_burst: 1 }}\n",
            yaml(&url, "127.0.0.1:8080", 600_000)
        )
    };
    write(&file, &with_reads(1000.0, 1000));
    let app = TestApp::spawn(Config::load(Some(&file)).expect("config")).await;
    let (mid, _) = app.merchant_with_stock("rice", 5).await;
    let customer = app.token(Role::Customer, "reader");
    for _ in 0..5 {
        let r = app.get(&format!("/v1/merchants/{mid}"), &customer).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    write(&file, &with_reads(0.01, 2));
    let r = app.post("/v1/admin/reload", &app.admin, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let keys = applied_keys(&r.body);
    assert_eq!(
        keys,
        [
            "gateway.limits.read.customer_burst",
            "gateway.limits.read.customer_per_s"
        ]
    );
    let path = format!("/v1/merchants/{mid}");
    let statuses: Vec<u16> = futures::future::join_all((0..4).map(|_| app.get(&path, &customer)))
        .await
        .into_iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "the new burst of 2 holds: {statuses:?}"
    );
    app.shutdown().await;
}
