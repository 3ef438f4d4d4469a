//! The API contract: the route list (`api::openapi::ROUTES`), the warp routes and the OpenAPI
//! document describe the same routes, both ways; the document is served and real answers match
//! it; the websocket messages the node sends on each socket match their JSON Schemas in
//! `docs/ws/` (which must be current: `WAIMAI_BLESS=1 cargo test --test openapi` rewrites them).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{config, fresh_db, Db, Frame, TestApp};
use serde_json::{json, Value};
use waimai::api::openapi::{document, ws_schemas, ROUTES};
use waimai::config::LockBackendKind;
use waimai::domain::Role;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// (METHOD, path) of every operation in the document.
fn documented() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in document()["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

fn listed() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect()
}

#[test]
fn the_document_describes_every_listed_route_and_no_other() {
    let doc = documented();
    let list = listed();
    assert_eq!(
        list.len(),
        ROUTES.len(),
        "a route is listed twice in ROUTES"
    );
    let mut problems = Vec::new();
    for (m, p) in list.difference(&doc) {
        problems.push(format!(
            "route `{m} {p}` is in api::openapi::ROUTES but the OpenAPI document does not \
             describe it: add a #[utoipa::path({}, path = \"{p}\", ...)] on its handler (or a \
             stub in src/api/openapi.rs) and name it in ApiDoc's `paths(...)`",
            m.to_lowercase()
        ));
    }
    for (m, p) in doc.difference(&list) {
        problems.push(format!(
            "the OpenAPI document describes `{m} {p}`, which is not in api::openapi::ROUTES: \
             add it there with the warp route that serves it, or drop its #[utoipa::path]"
        ));
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

/// The labels of the warp routes in `src/api/mod.rs`: every route is wrapped in
/// `timed("METHOD /path", ...)`, whose label names it in the latency metric.
fn warp_labels() -> BTreeSet<String> {
    labels_of("timed(")
}

/// The first string argument (a `"METHOD /path"` label) of every call of `call` in
/// `src/api/mod.rs`.
fn labels_of(call: &str) -> BTreeSet<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs"))
        .expect("read src/api/mod.rs");
    let mut out = BTreeSet::new();
    let mut rest = src.as_str();
    while let Some(i) = rest.find(call) {
        rest = &rest[i + call.len()..];
        let trimmed = rest.trim_start();
        if let Some(label) = trimmed.strip_prefix('"').and_then(|t| t.split('"').next()) {
            if label.contains(' ') && label.contains('/') {
                out.insert(label.to_string());
            }
        }
    }
    out
}

#[test]
fn every_warp_route_is_listed_and_every_listed_route_is_a_warp_route() {
    let labels = warp_labels();
    assert!(
        labels.len() >= 20,
        "found only {} timed(\"...\") labels in src/api/mod.rs: {labels:?}",
        labels.len()
    );
    let served: BTreeSet<String> = ROUTES.iter().map(|r| r.served_by.to_string()).collect();
    let mut problems = Vec::new();
    for l in labels.difference(&served) {
        problems.push(format!(
            "warp route `{l}` (src/api/mod.rs) is not in api::openapi::ROUTES, so the OpenAPI \
             document does not describe it: add `\"METHOD\" \"/path\" => \"{l}\";` to ROUTES in \
             src/api/openapi.rs (one line per concrete path when the route takes an {{action}}) \
             and a #[utoipa::path] for it"
        ));
    }
    for s in served.difference(&labels) {
        let paths: Vec<_> = ROUTES
            .iter()
            .filter(|r| r.served_by == s)
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        problems.push(format!(
            "api::openapi::ROUTES says {paths:?} are served by warp route `{s}`, but \
             src/api/mod.rs has no route labelled timed(\"{s}\", ...)"
        ));
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn every_warp_route_is_tried_under_its_own_label() {
    // `routed(label, route)` puts `route` in the dispatch table under `label`: requests whose
    // method and path fit `label` go to it (and the fallback tree tries it only for paths of
    // that shape); a label that names no route (or misses one) would make a route unreachable.
    assert_eq!(labels_of("routed("), warp_labels());
}

/// `path` with every `{param}` replaced by `with`.
fn concrete(path: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let j = rest[i..].find('}').expect("closing brace") + i;
        out.push_str(with);
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    out
}

/// Opens a websocket on `path` as an admin, expecting a refusal: (status, JSON body).
async fn ws_refusal(app: &TestApp, path: &str) -> (u16, Value) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}{path}", app.base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", app.admin).parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => (101, Value::Null),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(body).unwrap_or(Value::Null),
            )
        }
        Err(e) => panic!("websocket connect to {path}: {e}"),
    }
}

#[actix_rt::test]
async fn every_listed_route_reaches_its_handler_and_answers_as_documented() {
    let app = TestApp::embedded().await;
    let doc = document();
    let validator = |schema_ref: &str| {
        let mut root = doc.clone();
        root["$ref"] = json!(schema_ref);
        jsonschema::draft202012::new(&root).expect("schema compiles")
    };
    let error_body = validator("#/components/schemas/ErrorBody");

    for r in ROUTES {
        let path = concrete(r.path, "nope");
        let upgrade = doc["paths"][r.path][r.method.to_lowercase()]["responses"]
            .get("101")
            .is_some();
        let (status, body) = if upgrade {
            ws_refusal(&app, &path).await
        } else {
            let method = reqwest::Method::from_bytes(r.method.as_bytes()).expect("method");
            let resp = app
                .client
                .request(method, format!("{}{}", app.base, path))
                .bearer_auth(&app.admin)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        };
        let what = format!(
            "{} {path} (listed as {} {}): {status} {body}",
            r.method, r.method, r.path
        );
        // Unmatched requests answer 404 "no such route" (or 405); an {action} the handler
        // does not know answers 404 "route <action> not found".
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            status != 405 && !(status == 404 && message.contains("route")),
            "not served: {what}"
        );
        assert!(status < 500, "server error: {what}");
        let op = &doc["paths"][r.path][r.method.to_lowercase()];
        let documented = op["responses"].get(status.to_string()).is_some()
            || (status / 100 == 4 && op["responses"].get("4XX").is_some());
        assert!(documented, "status not documented: {what}");
        if status >= 400 {
            assert!(error_body.is_valid(&body), "error body: {what}");
        }
    }

    // The document itself is served, as OpenAPI 3.1 with the bearer scheme.
    let r = app.get("/openapi.json", &app.admin).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body, doc);
    assert_eq!(r.body["openapi"], "3.1.0");
    assert_eq!(
        r.body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let create = &r.body["paths"]["/v1/orders"]["post"];
    assert!(
        create["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
        "{create}"
    );
    assert_eq!(create["security"][0]["bearer"], json!(["customer"]));
    // Every link names an operation that exists and takes `{id}`.
    let ops: BTreeMap<&str, &str> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(p, item)| {
            METHODS
                .iter()
                .filter_map(move |m| item[*m]["operationId"].as_str().map(|id| (id, p.as_str())))
        })
        .collect();
    let mut links = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (name, link) in item["post"]["responses"]["201"]["links"]
            .as_object()
            .into_iter()
            .flatten()
        {
            let target = link["operationId"].as_str().expect("operationId");
            let to = ops
                .get(target)
                .unwrap_or_else(|| panic!("{path}: link {name} to nothing"));
            assert!(to.contains("{id}"), "{path}: link {name} to {to}");
            links += 1;
        }
    }
    assert!(links >= 10, "{links} links");

    // Real answers match their schemas: a merchant, an order (and its replay), an error.
    let (mid, _) = app.merchant_with_stock("bao", 5).await;
    let m = app.get(&format!("/v1/merchants/{mid}"), &app.admin).await;
    assert!(
        validator("#/components/schemas/MerchantView").is_valid(&m.body),
        "{}",
        m.body
    );
    let order = validator("#/components/schemas/Order");
    let first = app.order("carol", &mid, "bao", 2, Some("k-1")).await;
    assert_eq!(first.status, 201);
    assert!(order.is_valid(&first.body), "{}", first.body);
    let again = app.order("carol", &mid, "bao", 2, Some("k-1")).await;
    assert_eq!(again.body["id"], first.body["id"]);
    let out = app.order("carol", &mid, "bao", 99, None).await;
    assert_eq!(out.status, 409);
    assert!(error_body.is_valid(&out.body), "{}", out.body);
    assert_eq!(out.body["error"]["code"], "out_of_stock");
    let no = app
        .call(reqwest::Method::POST, "/v1/orders", None, &[], None)
        .await;
    assert_eq!(no.status, 401);
    assert!(error_body.is_valid(&no.body), "{}", no.body);
    // Found by scripts/api-fuzz: a `null` body where the document allows one takes the
    // defaults (it was 422), and a plain GET on a websocket route says what it needs (it was
    // 405, then 400 with warp's debug text).
    let oid = first.body["id"].as_str().expect("id");
    let ctoken = app.token(Role::Customer, "carol");
    let paid = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/orders/{oid}/pay"),
            Some(&ctoken),
            &[("content-type", "application/json")],
            Some(Value::Null),
        )
        .await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert!(
        validator("#/components/schemas/PaidOrder").is_valid(&paid.body),
        "{}",
        paid.body
    );
    let plain = app.get(&format!("/v1/orders/{oid}/track"), &ctoken).await;
    assert_eq!(plain.status, 426, "{}", plain.body);
    assert_eq!(plain.body["error"]["code"], "upgrade_required");
    assert!(error_body.is_valid(&plain.body));
    // Integers spelled as whole floats are integers, as JSON Schema has it; 1.5 is not.
    let spelled = |qty: Value| {
        app.call(
            reqwest::Method::POST,
            "/v1/orders",
            Some(&ctoken),
            &[],
            Some(
                json!({"merchant_id": mid, "items": [{"sku": "bao", "qty": qty}],
                "deliver_to": {"lat": 31.2, "lng": 121.5}}),
            ),
        )
    };
    let whole = spelled(json!(1.0)).await;
    assert_eq!(whole.status, 201, "{}", whole.body);
    assert_eq!(whole.body["items"][0]["qty"], 1);
    let half = spelled(json!(1.5)).await;
    assert_eq!(half.status, 422, "{}", half.body);
    assert_eq!(half.body["error"]["code"], "invalid_body");
    // A method a path does not serve: 405 with the ones it does.
    for (method, path, allow) in [
        (reqwest::Method::DELETE, format!("/v1/orders/{oid}"), "GET"),
        (
            reqwest::Method::PATCH,
            format!("/v1/merchants/{mid}/menu"),
            "PUT",
        ),
        (reqwest::Method::PUT, "/v1/orders".to_string(), "POST"),
    ] {
        let r = app
            .client
            .request(method.clone(), format!("{}{path}", app.base))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
    }
    // A body that is not what the schema says is refused, not served.
    assert!(!order.is_valid(&json!({"id": "x"})));
    app.shutdown().await;
}

#[test]
fn the_websocket_schemas_in_docs_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ws");
    let bless = std::env::var("WAIMAI_BLESS").is_ok_and(|v| v == "1");
    let schemas: BTreeMap<String, Value> = ws_schemas().into_iter().collect();
    if bless {
        std::fs::create_dir_all(&dir).expect("mkdir docs/ws");
        for entry in std::fs::read_dir(&dir).expect("read docs/ws").flatten() {
            if entry.path().extension().is_some_and(|e| e == "json") {
                std::fs::remove_file(entry.path()).expect("remove old schema");
            }
        }
        for (name, schema) in &schemas {
            let text = serde_json::to_string_pretty(schema).expect("json") + "\n";
            std::fs::write(dir.join(name), text).expect("write schema");
        }
    }
    let mut problems = Vec::new();
    for (name, schema) in &schemas {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(text) => {
                let on_disk: Value = serde_json::from_str(&text).expect("docs/ws file is JSON");
                if &on_disk != schema {
                    problems.push(format!("docs/ws/{name} is stale"));
                }
            }
            Err(_) => problems.push(format!("docs/ws/{name} is missing")),
        }
    }
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".json") && !schemas.contains_key(&name) {
                problems.push(format!(
                    "docs/ws/{name} describes no message the node sends"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nregenerate with: WAIMAI_BLESS=1 cargo test --test openapi the_websocket_schemas",
        problems.join("\n")
    );
}

/// A socket whose every message is kept, to be checked against the schemas at the end.
struct Recorded {
    socket: &'static str,
    sock: common::Socket,
    seen: Vec<Value>,
}

impl Recorded {
    async fn open(app: &TestApp, socket: &'static str, path: &str, token: &str) -> Recorded {
        let sock = app.ws(path, token).await.expect("socket opens");
        Recorded {
            socket,
            sock,
            seen: Vec::new(),
        }
    }

    /// The next message of `kind` (recording every message read on the way).
    async fn expect(&mut self, kind: &str) -> Value {
        loop {
            match self.sock.next(5).await {
                Frame::Json(v) => {
                    self.seen.push(v.clone());
                    if v["type"] == kind {
                        return v;
                    }
                }
                other => panic!("{}: waiting for {kind}, got {other:?}", self.socket),
            }
        }
    }

    /// Reads until a message of each of `kinds` arrived, in any order.
    async fn expect_all(&mut self, kinds: &[&str]) {
        let mut missing: BTreeSet<&str> = kinds.iter().copied().collect();
        while !missing.is_empty() {
            match self.sock.next(5).await {
                Frame::Json(v) => {
                    if let Some(k) = v["type"].as_str() {
                        missing.remove(k);
                    }
                    self.seen.push(v);
                }
                other => panic!("{}: waiting for {missing:?}, got {other:?}", self.socket),
            }
        }
    }

    /// Everything still buffered, until the socket is quiet or closes.
    async fn drain(&mut self) {
        while let Frame::Json(v) = self.sock.next(1).await {
            self.seen.push(v);
        }
    }
}

#[actix_rt::test]
async fn websocket_messages_match_their_schemas() {
    let url = fresh_db(Db::Sqlite).await;
    let mut cfg = config(&url, LockBackendKind::Local);
    cfg.realtime.location_interval_ms = 0;
    cfg.dispatch.retry_ms = 100;
    let app = TestApp::spawn(cfg).await;
    let (mid, mtoken) = app.merchant_with_stock("bao", 10).await;
    let (rid, rtoken) = app.rider_at(31.231, 121.471).await;
    let ctoken = app.token(Role::Customer, "dora");
    let mut merchant = Recorded::open(
        &app,
        "merchant_feed",
        &format!("/v1/merchants/{mid}/feed"),
        &mtoken,
    )
    .await;
    merchant.expect("snapshot").await;
    let mut rider = Recorded::open(
        &app,
        "rider_feed",
        &format!("/v1/riders/{rid}/feed"),
        &rtoken,
    )
    .await;
    rider.expect("snapshot").await;

    // The rider declines a first order over its socket: ack and offer_withdrawn.
    let first = app.accepted_order("dora", &mid, &mtoken, "bao").await;
    rider.expect("offer").await;
    rider
        .sock
        .send(json!({"type": "decline", "order_id": first}))
        .await;
    rider.expect_all(&["ack", "offer_withdrawn"]).await;
    // A command the rider's socket does not take: error.
    rider
        .sock
        .send(json!({"type": "reject", "order_id": first}))
        .await;
    rider.expect("error").await;

    // A second order, followed from placement: paid over REST, accepted from the merchant's
    // socket (ack), offered and accepted on the rider's socket, carried with positions.
    let r = app.order("dora", &mid, "bao", 1, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let oid = r.body["id"].as_str().expect("id").to_string();
    let mut track =
        Recorded::open(&app, "track", &format!("/v1/orders/{oid}/track"), &ctoken).await;
    track.expect("snapshot").await;
    let pay = app
        .post(&format!("/v1/orders/{oid}/pay"), &ctoken, None)
        .await;
    assert_eq!(pay.status, 200, "{}", pay.body);
    merchant.expect("new_order").await;
    merchant
        .sock
        .send(json!({"type": "accept", "order_id": oid}))
        .await;
    merchant.expect_all(&["ack"]).await;
    merchant
        .sock
        .send(json!({"type": "location", "lat": 1.0, "lng": 1.0}))
        .await;
    merchant.expect("error").await;
    let offer = rider.expect("offer").await;
    assert_eq!(offer["order_id"], oid.as_str());
    rider
        .sock
        .send(json!({"type": "accept", "order_id": oid}))
        .await;
    rider.expect_all(&["ack", "assigned"]).await;
    let rpath = format!("/v1/riders/{rid}/orders/{oid}");
    assert_eq!(
        app.post(&format!("{rpath}/pickup"), &rtoken, None)
            .await
            .status,
        200
    );
    rider.expect("order_updated").await;
    merchant.expect("order_updated").await;
    rider
        .sock
        .send(json!({"type": "location", "lat": 31.225, "lng": 121.475}))
        .await;
    track.expect("rider_location").await;
    assert_eq!(
        app.post(&format!("{rpath}/deliver"), &rtoken, None)
            .await
            .status,
        200
    );
    assert_eq!(
        app.post(&format!("/v1/orders/{oid}/confirm"), &ctoken, None)
            .await
            .status,
        200
    );
    track.expect("status").await;
    // The first order, still waiting for a rider, is cancelled: order_cancelled to its merchant.
    let c = app
        .post(&format!("/v1/orders/{first}/cancel"), &ctoken, None)
        .await;
    assert!(c.status == 200 || c.status == 409, "{}", c.body);
    if c.status == 200 {
        merchant.expect("order_cancelled").await;
    }
    let r = app.order("dora", &mid, "bao", 1, None).await;
    let third = r.body["id"].as_str().expect("id").to_string();
    let c = app
        .post(&format!("/v1/orders/{third}/cancel"), &ctoken, None)
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    merchant.expect("order_cancelled").await;
    for s in [&mut track, &mut merchant, &mut rider] {
        s.drain().await;
    }

    // Every message validates against the schema of its socket and type, and every message
    // type in the catalogue was seen.
    let schemas: BTreeMap<String, Value> = ws_schemas().into_iter().collect();
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for s in [&track, &merchant, &rider] {
        for msg in &s.seen {
            let kind = msg["type"].as_str().unwrap_or("?");
            let name = format!("{}.{kind}.json", s.socket);
            seen.insert(name.clone());
            let Some(schema) = schemas.get(&name) else {
                problems.push(format!(
                    "{} sent `{kind}`, which has no schema: {msg}",
                    s.socket
                ));
                continue;
            };
            let v = jsonschema::draft202012::new(schema).expect("schema compiles");
            for e in v.iter_errors(msg) {
                problems.push(format!("{name}: {e} at {} in {msg}", e.instance_path()));
            }
        }
    }
    for name in schemas.keys() {
        if !seen.contains(name) {
            problems.push(format!("no {name} message was captured"));
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
    app.shutdown().await;
}
