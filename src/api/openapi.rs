//! The API contract: [`ROUTES`] (every method and path the front door serves, one list) and the
//! OpenAPI 3.1 document generated from the handlers' `#[utoipa::path]` annotations and the wire
//! types' `ToSchema` derives, served at `GET /openapi.json`. Routes whose warp filter takes an
//! `{action}` segment are documented per action by the stubs at the bottom of this file, since
//! each action has its own body and answer. `ws_schemas` gives the websocket messages' JSON
//! Schemas from `realtime::messages`. `tests/openapi.rs` holds the list, the warp routes, the
//! document and the messages the node sends to one another.

use once_cell::sync::Lazy;
use serde_json::{json, Value};
use utoipa::OpenApi;

use super::error::ErrorBody;
use super::handlers;
use super::ws;

/// One route of the front door.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The HTTP method.
    pub method: &'static str,
    /// The path template, as in the OpenAPI document (`{id}` for a segment).
    pub path: &'static str,
    /// The warp route that serves it: its label in `api::routes` (`timed("...")`).
    pub served_by: &'static str,
}

macro_rules! routes {
    ($($method:literal $path:literal => $served:literal;)*) => {
        /// Every route the front door serves. `tests/openapi.rs` checks it against the warp
        /// routes in `api::routes` and against the OpenAPI document, both ways.
        pub const ROUTES: &[Route] = &[
            $(Route { method: $method, path: $path, served_by: $served },)*
        ];
    };
}

routes! {
    "GET" "/healthz" => "GET /healthz";
    "GET" "/readyz" => "GET /readyz";
    "GET" "/metrics" => "GET /metrics";
    "GET" "/openapi.json" => "GET /openapi.json";
    "POST" "/v1/merchants" => "POST /v1/merchants";
    "GET" "/v1/merchants" => "GET /v1/merchants";
    "GET" "/v1/merchants/{id}" => "GET /v1/merchants/{id}";
    "PUT" "/v1/merchants/{id}/menu" => "PUT /v1/merchants/{id}/menu";
    "POST" "/v1/merchants/{id}/open" => "POST /v1/merchants/{id}/{action}";
    "POST" "/v1/merchants/{id}/close" => "POST /v1/merchants/{id}/{action}";
    "POST" "/v1/merchants/{mid}/orders/{oid}/accept" => "POST /v1/merchants/{mid}/orders/{oid}/{action}";
    "POST" "/v1/merchants/{mid}/orders/{oid}/reject" => "POST /v1/merchants/{mid}/orders/{oid}/{action}";
    "GET" "/v1/merchants/{id}/feed" => "GET /v1/merchants/{id}/feed";
    "POST" "/v1/riders" => "POST /v1/riders";
    "GET" "/v1/riders/{id}" => "GET /v1/riders/{id}";
    "POST" "/v1/riders/{id}/online" => "POST /v1/riders/{id}/{action}";
    "POST" "/v1/riders/{id}/offline" => "POST /v1/riders/{id}/{action}";
    "PUT" "/v1/riders/{id}/location" => "PUT /v1/riders/{id}/location";
    "POST" "/v1/riders/{rid}/orders/{oid}/pickup" => "POST /v1/riders/{rid}/orders/{oid}/{action}";
    "POST" "/v1/riders/{rid}/orders/{oid}/deliver" => "POST /v1/riders/{rid}/orders/{oid}/{action}";
    "POST" "/v1/riders/{rid}/orders/{oid}/release" => "POST /v1/riders/{rid}/orders/{oid}/{action}";
    "POST" "/v1/riders/{rid}/offers/{oid}/accept" => "POST /v1/riders/{rid}/offers/{oid}/{action}";
    "POST" "/v1/riders/{rid}/offers/{oid}/decline" => "POST /v1/riders/{rid}/offers/{oid}/{action}";
    "GET" "/v1/riders/{id}/feed" => "GET /v1/riders/{id}/feed";
    "POST" "/v1/orders" => "POST /v1/orders";
    "GET" "/v1/orders/{id}" => "GET /v1/orders/{id}";
    "POST" "/v1/orders/{id}/pay" => "POST /v1/orders/{id}/{action}";
    "POST" "/v1/orders/{id}/payment" => "POST /v1/orders/{id}/{action}";
    "POST" "/v1/orders/{id}/cancel" => "POST /v1/orders/{id}/{action}";
    "POST" "/v1/orders/{id}/confirm" => "POST /v1/orders/{id}/{action}";
    "POST" "/v1/orders/{id}/assign" => "POST /v1/orders/{id}/{action}";
    "GET" "/v1/orders/{id}/track" => "GET /v1/orders/{id}/track";
    "POST" "/v1/payments/callback" => "POST /v1/payments/callback";
    "GET" "/v1/cluster" => "GET /v1/cluster";
    "POST" "/v1/admin/reload" => "POST /v1/admin/reload";
    "GET" "/ops" => "GET /ops";
    "GET" "/v1/ops/live" => "GET /v1/ops/live";
    "GET" "/internal/v1/link" => "GET /internal/v1/link";
}

/// A route template taken apart once: the front door checks a request's path against the
/// shape of every route it passes (about 11 per request in `lifecycle`), and trimming, scanning
/// and splitting the template at each check was 1.7% of a node's instructions there.
#[derive(Debug, Clone)]
pub struct Shape<'a> {
    /// The template's literal start (up to its first `{`), without slashes at either end.
    literal: &'a str,
    /// Its segments: `Some(text)` stands for itself, `None` (a `{name}`) for one non-empty
    /// segment.
    segments: Box<[Option<&'a str>]>,
}

impl<'a> Shape<'a> {
    /// The shape of `template` (`/v1/orders/{id}`); slashes at either end do not count.
    pub fn new(template: &'a str) -> Self {
        let template = template.trim_matches('/');
        Shape {
            literal: template.find('{').map_or(template, |i| &template[..i]),
            segments: template
                .split('/')
                .map(|t| (!(t.starts_with('{') && t.ends_with('}'))).then_some(t))
                .collect(),
        }
    }

    /// Whether the concrete `path` has this shape. Allocates nothing.
    pub fn matches(&self, path: &str) -> bool {
        let path = path.trim_matches('/');
        // Most paths differ from a template in its literal start: one comparison of bytes
        // settles them before any splitting.
        if !path.starts_with(self.literal) {
            return false;
        }
        let mut got = path.split('/');
        self.segments.iter().all(|want| match (want, got.next()) {
            (Some(t), Some(s)) => *t == s,
            (None, Some(s)) => !s.is_empty(),
            (_, None) => false,
        }) && got.next().is_none()
    }
}

/// The methods `ROUTES` serves on the concrete `path` (for a 405's `Allow` header).
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    static SHAPES: Lazy<Vec<Shape<'static>>> =
        Lazy::new(|| ROUTES.iter().map(|r| Shape::new(r.path)).collect());
    let mut out: Vec<&'static str> = ROUTES
        .iter()
        .zip(SHAPES.iter())
        .filter(|(_, shape)| shape.matches(path))
        .map(|(r, _)| r.method)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "waimai",
        description = "A food-delivery dispatch runtime. Every 4xx and 5xx answer has the body \
            `{\"error\": {\"code\", \"message\"}}`; a 503 also carries `Retry-After`. Bearer \
            tokens are HS256 JWTs whose `sub` is the caller's id and `role` one of `customer`, \
            `merchant`, `rider`, `admin` (`waimai token --role R --sub S`); each operation's \
            security requirement names the roles it is meant for (others get 403 or 404). \
            Websocket messages are described by the JSON Schemas in `docs/ws/`."
    ),
    paths(
        handlers::healthz,
        handlers::readyz,
        metrics,
        openapi_json,
        handlers::create_merchant,
        handlers::browse_merchants,
        handlers::get_merchant,
        handlers::set_menu,
        open_merchant,
        close_merchant,
        accept_order,
        reject_order,
        ws::merchant_feed,
        handlers::create_rider,
        handlers::get_rider,
        rider_online,
        rider_offline,
        handlers::rider_location,
        pick_up,
        deliver,
        release,
        accept_offer,
        decline_offer,
        ws::rider_feed,
        handlers::create_order,
        handlers::get_order,
        pay,
        start_payment,
        cancel,
        confirm,
        assign,
        ws::track,
        handlers::payment_callback,
        handlers::cluster,
        handlers::reload,
        ops_page,
        ops_live,
        handlers::peer_link,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "orders", description = "Place, pay, follow and settle orders."),
        (name = "merchants", description = "Merchants, menus and their order decisions."),
        (name = "riders", description = "Riders, offers and deliveries."),
        (name = "payments", description = "The payment provider's callbacks."),
        (name = "operations", description = "Health, readiness, metrics, the cluster."),
    )
)]
struct ApiDoc;

/// The OpenAPI document as JSON.
pub fn document() -> &'static Value {
    static DOC: Lazy<Value> = Lazy::new(build);
    &DOC
}

/// The document's text, as `GET /openapi.json` serves it.
pub fn document_text() -> &'static str {
    static TEXT: Lazy<String> = Lazy::new(|| document().to_string());
    &TEXT
}

/// Creating operations (`POST <path>`, 201 with the new `id`) and the operations that take
/// that id as `{id}`.
const LINKS: [(&str, &[&str]); 3] = [
    (
        "/v1/merchants",
        &[
            "get_merchant",
            "set_menu",
            "open_merchant",
            "close_merchant",
        ],
    ),
    (
        "/v1/riders",
        &[
            "get_rider",
            "rider_online",
            "rider_offline",
            "rider_location",
        ],
    ),
    (
        "/v1/orders",
        &[
            "get_order",
            "pay",
            "start_payment",
            "cancel",
            "confirm",
            "assign",
        ],
    ),
];

/// Generates the document and adds what every operation shares: the bearer scheme, the error
/// body for 4xx and 503 (with `Retry-After`).
fn build() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "HS256 JWT: `sub` is the caller's id, `role` is customer, merchant, \
                rider or admin. Websockets also take it as `?token=`.",
        }
    });
    doc["components"]["responses"] = json!({
        "Error": {
            "description": "Refused: `{\"error\": {\"code\", \"message\"}}`.",
            "content": { "application/json": {
                "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
        },
        "Unavailable": {
            "description": "A service the node needs is unavailable (or a shard is moving): \
                try again after `Retry-After` seconds.",
            "headers": { "Retry-After": { "schema": { "type": "integer" },
                "description": "Seconds to wait." } },
            "content": { "application/json": {
                "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
        },
    });
    // Links from each creating operation to what takes the new id, so that clients (and
    // schemathesis' stateful phase) can follow a resource from its creation.
    for (path, follow) in LINKS {
        let links: serde_json::Map<String, Value> = follow
            .iter()
            .map(|op| {
                let link =
                    json!({ "operationId": op, "parameters": { "id": "$response.body#/id" } });
                (op.to_string(), link)
            })
            .collect();
        doc["paths"][path]["post"]["responses"]["201"]["links"] = Value::Object(links);
    }
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                    continue;
                };
                responses
                    .entry("4XX")
                    .or_insert_with(|| json!({ "$ref": "#/components/responses/Error" }));
                responses
                    .entry("503")
                    .or_insert_with(|| json!({ "$ref": "#/components/responses/Unavailable" }));
            }
        }
    }
    doc
}

/// The websocket messages' JSON Schemas (draft 2020-12), one per socket and message `type`:
/// `(file name, schema)`, as written to `docs/ws/`.
pub fn ws_schemas() -> Vec<(String, Value)> {
    use crate::realtime::messages::{schemas, MESSAGES};
    let mut defs = serde_json::Map::new();
    for (name, schema) in schemas() {
        defs.insert(name, serde_json::to_value(schema).unwrap_or_default());
    }
    // OpenAPI's component references become the file's own definitions.
    let defs = Value::Object(defs)
        .to_string()
        .replace("\"#/components/schemas/", "\"#/$defs/");
    let defs: Value = serde_json::from_str(&defs).unwrap_or_default();
    MESSAGES
        .iter()
        .map(|m| {
            let mut envelope = json!({
                "type": "object",
                "properties": {
                    "type": { "const": m.kind },
                    "ts": { "type": "integer", "description": "When it was sent, ms since the epoch." },
                },
                "required": ["type", "ts"],
            });
            if m.hub {
                envelope["properties"]["seq"] = json!({
                    "type": "integer", "minimum": 0,
                    "description": "The hub's sequence number: increasing on one node.",
                });
                envelope["required"] = json!(["type", "seq", "ts"]);
            }
            let schema = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": format!("https://waimai.invalid/ws/{}.{}.json", m.socket.as_str(), m.kind),
                "title": format!("{} `{}`", m.socket.as_str(), m.kind),
                "allOf": [ { "$ref": format!("#/$defs/{}", m.schema) }, envelope ],
                "$defs": reachable(&defs, m.schema),
            });
            (format!("{}.{}.json", m.socket.as_str(), m.kind), schema)
        })
        .collect()
}

/// The definitions in `defs` that `root` refers to, itself included, transitively.
fn reachable(defs: &Value, root: &str) -> Value {
    let mut out = serde_json::Map::new();
    let mut todo = vec![root.to_string()];
    while let Some(name) = todo.pop() {
        if out.contains_key(&name) {
            continue;
        }
        let Some(def) = defs.get(&name) else {
            continue;
        };
        let text = def.to_string();
        for part in text.split("\"#/$defs/").skip(1) {
            if let Some(r) = part.split('"').next() {
                todo.push(r.to_string());
            }
        }
        out.insert(name, def.clone());
    }
    Value::Object(out)
}

// ---- operations without a handler of their own ----

/// Prometheus metrics, text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
#[allow(dead_code)]
fn metrics() {}

/// The live dispatch map: one self-contained HTML page (it asks for an admin token and opens
/// `/v1/ops/live`).
#[utoipa::path(get, path = "/ops", tag = "operations",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
#[allow(dead_code)]
fn ops_page() {}

/// The live dispatch map's feed (admin): a snapshot of riders and orders, then deltas a few
/// times a second.
#[utoipa::path(get, path = "/v1/ops/live", tag = "operations",
    params(("token" = Option<String>, Query, description = "The bearer token, for browsers")),
    security(("bearer" = ["admin"])),
    responses((status = 101, description = "Switching to the websocket")))]
#[allow(dead_code)]
fn ops_live() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

/// Opens the merchant for orders (the merchant itself, or an admin).
#[utoipa::path(post, path = "/v1/merchants/{id}/open", tag = "merchants",
    params(("id" = String, Path, description = "Merchant id")),
    security(("bearer" = ["merchant", "admin"])),
    responses((status = 200, description = "The merchant", body = crate::messages::MerchantView)))]
#[allow(dead_code)]
fn open_merchant() {}

/// Closes the merchant (the merchant itself, or an admin).
#[utoipa::path(post, path = "/v1/merchants/{id}/close", tag = "merchants",
    params(("id" = String, Path, description = "Merchant id")),
    security(("bearer" = ["merchant", "admin"])),
    responses((status = 200, description = "The merchant", body = crate::messages::MerchantView)))]
#[allow(dead_code)]
fn close_merchant() {}

/// The merchant accepts a paid order.
#[utoipa::path(post, path = "/v1/merchants/{mid}/orders/{oid}/accept", tag = "merchants",
    params(("mid" = String, Path, description = "Merchant id"), ("oid" = String, Path, description = "Order id")),
    security(("bearer" = ["merchant", "admin"])),
    responses((status = 200, description = "The order", body = crate::model::Order)))]
#[allow(dead_code)]
fn accept_order() {}

/// The merchant rejects a paid order (it is refunded).
#[utoipa::path(post, path = "/v1/merchants/{mid}/orders/{oid}/reject", tag = "merchants",
    params(("mid" = String, Path, description = "Merchant id"), ("oid" = String, Path, description = "Order id")),
    security(("bearer" = ["merchant", "admin"])),
    responses((status = 200, description = "The order", body = crate::model::Order)))]
#[allow(dead_code)]
fn reject_order() {}

/// The rider starts taking work.
#[utoipa::path(post, path = "/v1/riders/{id}/online", tag = "riders",
    params(("id" = String, Path, description = "Rider id")),
    request_body = handlers::Online,
    security(("bearer" = ["rider", "admin"])),
    responses((status = 200, description = "The rider", body = crate::model::Rider)))]
#[allow(dead_code)]
fn rider_online() {}

/// The rider stops taking work (refused while carrying an order).
#[utoipa::path(post, path = "/v1/riders/{id}/offline", tag = "riders",
    params(("id" = String, Path, description = "Rider id")),
    security(("bearer" = ["rider", "admin"])),
    responses((status = 200, description = "The rider", body = crate::model::Rider)))]
#[allow(dead_code)]
fn rider_offline() {}

/// The rider has picked the order up.
#[utoipa::path(post, path = "/v1/riders/{rid}/orders/{oid}/pickup", tag = "riders",
    params(("rid" = String, Path, description = "Rider id"), ("oid" = String, Path, description = "Order id")),
    security(("bearer" = ["rider", "admin"])),
    responses((status = 200, description = "The order", body = crate::model::Order)))]
#[allow(dead_code)]
fn pick_up() {}

/// The rider has delivered the order.
#[utoipa::path(post, path = "/v1/riders/{rid}/orders/{oid}/deliver", tag = "riders",
    params(("rid" = String, Path, description = "Rider id"), ("oid" = String, Path, description = "Order id")),
    security(("bearer" = ["rider", "admin"])),
    responses((status = 200, description = "The order", body = crate::model::Order)))]
#[allow(dead_code)]
fn deliver() {}

/// The rider gives the order back to dispatch before picking it up.
#[utoipa::path(post, path = "/v1/riders/{rid}/orders/{oid}/release", tag = "riders",
    params(("rid" = String, Path, description = "Rider id"), ("oid" = String, Path, description = "Order id")),
    security(("bearer" = ["rider", "admin"])),
    responses((status = 200, description = "The order", body = crate::model::Order)))]
#[allow(dead_code)]
fn release() {}

/// The rider accepts the offer it holds for the order.
#[utoipa::path(post, path = "/v1/riders/{rid}/offers/{oid}/accept", tag = "riders",
    params(("rid" = String, Path, description = "Rider id"), ("oid" = String, Path, description = "Order id")),
    security(("bearer" = ["rider", "admin"])),
    responses((status = 200, description = "The order, assigned to the rider", body = crate::model::Order)))]
#[allow(dead_code)]
fn accept_offer() {}

/// The rider declines the offer it holds for the order.
#[utoipa::path(post, path = "/v1/riders/{rid}/offers/{oid}/decline", tag = "riders",
    params(("rid" = String, Path, description = "Rider id"), ("oid" = String, Path, description = "Order id")),
    security(("bearer" = ["rider", "admin"])),
    responses((status = 200, description = "The order", body = crate::model::Order)))]
#[allow(dead_code)]
fn decline_offer() {}

/// Pays for the order and waits (up to `payments.pay_wait_ms`) for the provider's callback.
#[utoipa::path(post, path = "/v1/orders/{id}/pay", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    request_body(content = Option<handlers::PayBody>, description = "Optional: the payment method"),
    security(("bearer" = ["customer", "admin"])),
    responses(
        (status = 200, description = "Paid", body = handlers::PaidOrder),
        (status = 202, description = "Still `pending_payment`: the provider answers later", body = handlers::PaidOrder),
        (status = 402, description = "Declined", body = ErrorBody)))]
#[allow(dead_code)]
fn pay() {}

/// Starts paying for the order: creates the payment intent (or returns the one under way).
#[utoipa::path(post, path = "/v1/orders/{id}/payment", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    request_body(content = Option<handlers::PayBody>, description = "Optional: the payment method"),
    security(("bearer" = ["customer", "admin"])),
    responses(
        (status = 201, description = "The intent and the order", body = handlers::PaymentCreated),
        (status = 402, description = "Declined", body = ErrorBody)))]
#[allow(dead_code)]
fn start_payment() {}

/// The customer cancels the order (refunded when it was paid).
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    security(("bearer" = ["customer", "admin"])),
    responses((status = 200, description = "The order", body = crate::model::Order)))]
#[allow(dead_code)]
fn cancel() {}

/// The customer confirms the delivered order.
#[utoipa::path(post, path = "/v1/orders/{id}/confirm", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    security(("bearer" = ["customer", "admin"])),
    responses((status = 200, description = "The order", body = crate::model::Order)))]
#[allow(dead_code)]
fn confirm() {}

/// Dispatch (an admin) assigns a rider to an accepted order.
#[utoipa::path(post, path = "/v1/orders/{id}/assign", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    request_body = handlers::Assign,
    security(("bearer" = ["admin"])),
    responses((status = 200, description = "The order", body = crate::model::Order)))]
#[allow(dead_code)]
fn assign() {}

#[cfg(test)]
mod tests {
    use super::{Shape, ROUTES};

    /// Whether some concrete path fits both shapes: as many segments, and at every position
    /// the same literal or a parameter on either side (a parameter fits any non-empty segment).
    fn overlap(a: &Shape, b: &Shape) -> bool {
        a.segments.len() == b.segments.len()
            && a.segments
                .iter()
                .zip(b.segments.iter())
                .all(|(x, y)| match (x, y) {
                    (Some(x), Some(y)) => x == y,
                    _ => true,
                })
    }

    /// `api::Dispatch` hands a request to the first route whose method and path shape fit and
    /// to no other: that is the route warp's `or` tree would reach only if no two routes of
    /// one method can take the same path.
    #[test]
    fn no_two_routes_of_one_method_share_a_path() {
        let mut labels: Vec<&str> = ROUTES.iter().map(|r| r.served_by).collect();
        labels.sort_unstable();
        labels.dedup();
        let split = |l: &'static str| l.split_once(' ').expect("a label is `METHOD /path`");
        for (i, a) in labels.iter().enumerate() {
            for b in &labels[i + 1..] {
                let ((ma, pa), (mb, pb)) = (split(a), split(b));
                assert!(
                    ma != mb || !overlap(&Shape::new(pa), &Shape::new(pb)),
                    "`{a}` and `{b}` can both take one path"
                );
            }
        }
        // The check itself tells overlapping shapes apart.
        assert!(overlap(
            &Shape::new("/v1/orders/{id}/{action}"),
            &Shape::new("/v1/orders/{id}/track")
        ));
        assert!(!overlap(
            &Shape::new("/v1/orders/{id}"),
            &Shape::new("/v1/orders/{id}/track")
        ));
    }

    fn template_matches(template: &str, path: &str) -> bool {
        Shape::new(template).matches(path)
    }

    #[test]
    fn a_path_fits_a_template_segment_by_segment() {
        assert!(template_matches("/v1/orders", "v1/orders"));
        assert!(template_matches("/v1/orders", "/v1/orders/"));
        assert!(template_matches(
            "/v1/orders/{id}/{action}",
            "v1/orders/o-1/pay"
        ));
        assert!(template_matches(
            "/v1/orders/{id}/track",
            "v1/orders/o-1/track"
        ));
        // A literal is itself, a `{name}` one non-empty segment, and the count must agree.
        assert!(!template_matches(
            "/v1/orders/{id}/track",
            "v1/orders/o-1/pay"
        ));
        assert!(!template_matches("/v1/orders/{id}", "v1/orders/"));
        assert!(!template_matches("/v1/orders/{id}", "v1/orders//x"));
        assert!(!template_matches("/v1/orders/{id}", "v1/orders/o-1/pay"));
        assert!(!template_matches("/v1/orders/{id}/pay", "v1/orders/o-1"));
        assert!(!template_matches("/v1/orders", "v1/riders"));
        assert!(!template_matches("/healthz", ""));
        assert!(template_matches("/", ""));
        assert!(!template_matches("/", "healthz"));
        // Only a whole `{name}` segment is a parameter; `x{y}` stands for itself.
        assert!(template_matches("/a/x{y}", "a/x{y}"));
        assert!(!template_matches("/a/x{y}", "a/xz"));
        // One shape, asked many times, answers as a fresh one.
        let shape = Shape::new("/v1/merchants/{mid}/orders/{oid}/{action}");
        for path in [
            "v1/merchants/m-1/orders/o-1/accept",
            "v1/merchants/m-1/orders/o-1",
            "v1/merchants//orders/o-1/accept",
            "v1/merchants/m-1/orders/o-1/accept/x",
            "v1/riders/r-1",
        ] {
            assert_eq!(
                shape.matches(path),
                template_matches("/v1/merchants/{mid}/orders/{oid}/{action}", path),
                "{path}"
            );
        }
        assert!(shape.matches("/v1/merchants/m-1/orders/o-1/accept/"));
    }
}
