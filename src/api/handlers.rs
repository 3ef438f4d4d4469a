//! Request handlers: parse and validate input, authenticate, send one message through the router,
//! shape the reply. No handler touches an entity's state itself.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{ApiError, ApiState};
use crate::actors::lock::PingLocks;
use crate::actors::order_machine::OrderEvent;
use crate::actors::order_machine::OrderStatus;
use crate::domain::{new_id, now_ms, Caller, Location, Role};
use crate::error::Error;
use crate::messages::{
    AnswerOffer, ChangeOrder, GetMerchant, GetOrder, GetRider, GoOffline, GoOnline, PaymentNotice,
    PlaceOrder, RegisterMerchant, RegisterRider, SetMenu, SetOpen, StartPayment, UpdateLocation,
};
use crate::model::{MenuItem, Order};
use crate::payments::{Intent, IntentStatus, ProviderEvent};
use crate::realtime::Topic;

type Outcome = Result<Response, ApiError>;

/// Most items in one order or menu.
const MAX_ITEMS: usize = 200;
/// Most units of one SKU in one order.
const MAX_QTY: i64 = 10_000;
/// Longest id, SKU or idempotency key accepted.
const MAX_ID: usize = 64;

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

/// Parses a JSON body: bad syntax is 400, the wrong shape 422.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::InvalidBody(e.to_string()),
        _ => ApiError::MalformedJson(e.to_string()),
    })
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidBody(msg.into())
}

/// Ids in paths are at most 64 characters; anything longer cannot exist.
fn path_id(kind: &'static str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(Error::not_found(kind, id.chars().take(MAX_ID).collect::<String>()).into());
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(invalid("name must be 1..=200 characters"));
    }
    Ok(())
}

fn check_location(l: &Location) -> Result<(), ApiError> {
    l.validate().map_err(|e| invalid(e.to_string()))
}

fn caller(st: &ApiState, auth: &Option<String>) -> Result<Caller, ApiError> {
    st.auth.caller(auth.as_deref())
}

/// `GET /healthz`: the process is up.
#[derive(Serialize, ToSchema)]
pub(super) struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up", body = Health)))]
pub(super) fn healthz() -> Response {
    json(StatusCode::OK, &Health { status: "ok" })
}

/// `GET /readyz`: each dependency, `ok` (or `off`), or why not.
#[derive(Serialize, ToSchema)]
pub(super) struct Readiness {
    /// The store.
    store: String,
    /// The lock backend.
    lock: String,
    /// The cluster (`off` on a single node).
    cluster: String,
}

/// The store, the lock backend and (in a cluster) the group are reachable.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Readiness)))]
pub(super) async fn readyz(st: Arc<ApiState>) -> Outcome {
    let store = st.store.ping().await.map_err(|e| e.to_string());
    let lock = match st.lock.send(PingLocks).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    // A cluster node is ready once the group has given it its first assignment and it knows
    // an owner for every shard.
    let cluster = match &st.cluster {
        None => Ok(()),
        Some(c) if !c.joined.load(std::sync::atomic::Ordering::Acquire) => {
            Err("has not joined the group yet".to_string())
        }
        Some(c) if !c.dir.complete() => Err("does not know an owner for every shard".to_string()),
        Some(_) => Ok(()),
    };
    let body = Readiness {
        store: store.as_ref().err().cloned().unwrap_or("ok".into()),
        lock: lock.as_ref().err().cloned().unwrap_or("ok".into()),
        cluster: cluster
            .as_ref()
            .err()
            .cloned()
            .unwrap_or(if st.cluster.is_some() { "ok" } else { "off" }.into()),
    };
    if store.is_ok() && lock.is_ok() && cluster.is_ok() {
        Ok(json(StatusCode::OK, &body))
    } else {
        let reason = format!(
            "not ready: store={:?}, lock={:?}, cluster={:?}",
            body.store, body.lock, body.cluster
        );
        Err(Error::Unavailable(reason).into())
    }
}

/// `POST /v1/admin/reload` (admin): reads the config file again; answers what was applied and
/// what was refused (keys that cannot change live keep their old value).
#[utoipa::path(post, path = "/v1/admin/reload", tag = "operations",
    security(("bearer" = ["admin"])),
    responses((status = 200, description = "The keys applied and the keys refused (each with `key`, `from`, `to`)", body = Object)))]
pub(super) async fn reload(st: Arc<ApiState>, auth: Option<String>) -> Outcome {
    let caller = caller(&st, &auth)?;
    if !caller.is_admin() {
        return Err(Error::Forbidden("only an admin may reload the configuration".into()).into());
    }
    let live = st.live.clone();
    let report = tokio::task::spawn_blocking(move || live.reload())
        .await
        .map_err(|e| Error::Unavailable(format!("reload did not finish: {e}")))?
        .map_err(|e| Error::Invalid(format!("config not reloaded: {e}")))?;
    Ok(json(StatusCode::OK, &report))
}

/// `GET /v1/cluster`: the members, each shard's owner and epoch.
#[derive(Serialize, ToSchema)]
pub(super) struct ClusterView {
    /// Whether this node runs in a cluster.
    enabled: bool,
    /// This node's id.
    node_id: String,
    /// Cluster: whether the node has joined the group (absent on a single node).
    #[serde(skip_serializing_if = "Option::is_none")]
    joined: Option<bool>,
    /// Cluster: how many shards this node serves (absent on a single node).
    #[serde(skip_serializing_if = "Option::is_none")]
    serving: Option<usize>,
    /// The nodes seen lately.
    members: Vec<MemberView>,
    /// Every shard.
    shards: Vec<ShardView>,
}

/// A node of the cluster.
#[derive(Serialize, ToSchema)]
pub(super) struct MemberView {
    /// Its id.
    node_id: String,
    /// Where peers reach it (null on a single node).
    addr: Option<String>,
    /// Seen within `cluster.alive_ms`.
    alive: bool,
    /// Events behind, as it last reported.
    lag: i64,
    /// Last heartbeat, ms since the epoch (cluster only).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<i64>,
    /// When it started, ms since the epoch (cluster only).
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<i64>,
    /// How many shards it owns (cluster only).
    #[serde(skip_serializing_if = "Option::is_none")]
    shards: Option<usize>,
}

/// One shard and who serves it.
#[derive(Serialize, ToSchema)]
pub(super) struct ShardView {
    /// The shard number.
    shard: usize,
    /// The node serving it (null while it moves).
    owner: Option<String>,
    /// Where that node is reached (null on a single node or while it moves).
    addr: Option<String>,
    /// The owner's epoch for it (null on a single node).
    epoch: Option<i64>,
}

/// `GET /v1/cluster` (admin): the members, each shard's owner and epoch, each node's lag.
#[utoipa::path(get, path = "/v1/cluster", tag = "operations",
    security(("bearer" = ["admin"])),
    responses((status = 200, description = "The cluster as this node sees it", body = ClusterView)))]
pub(super) async fn cluster(st: Arc<ApiState>, auth: Option<String>) -> Outcome {
    let caller = caller(&st, &auth)?;
    if !caller.is_admin() {
        return Err(Error::Forbidden("only an admin may read the cluster's state".into()).into());
    }
    let Some(c) = &st.cluster else {
        let shards = (0..st.router.shard_count())
            .map(|s| ShardView {
                shard: s as usize,
                owner: Some(st.node_id.clone()),
                addr: None,
                epoch: None,
            })
            .collect();
        let me = MemberView {
            node_id: st.node_id.clone(),
            addr: None,
            alive: true,
            lag: 0,
            last_seen: None,
            started_at: None,
            shards: None,
        };
        return Ok(json(
            StatusCode::OK,
            &ClusterView {
                enabled: false,
                node_id: st.node_id.clone(),
                joined: None,
                serving: None,
                members: vec![me],
                shards,
            },
        ));
    };
    let nodes = st.store.nodes().await.map_err(Error::from)?;
    let owners = c.dir.owners();
    let now = now_ms();
    let members = nodes
        .iter()
        .filter(|n| now - n.last_seen <= 10 * c.alive_ms)
        .map(|n| {
            let owned = owners
                .iter()
                .flatten()
                .filter(|o| o.node_id == n.node_id)
                .count();
            MemberView {
                node_id: n.node_id.clone(),
                addr: Some(n.addr.clone()),
                alive: now - n.last_seen <= c.alive_ms,
                lag: n.lag,
                last_seen: Some(n.last_seen),
                started_at: Some(n.started_at),
                shards: Some(owned),
            }
        })
        .collect();
    let shards = owners
        .iter()
        .enumerate()
        .map(|(i, o)| ShardView {
            shard: i,
            owner: o.as_ref().map(|o| o.node_id.clone()),
            addr: o.as_ref().map(|o| o.addr.clone()),
            epoch: o.as_ref().map(|o| o.epoch),
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &ClusterView {
            enabled: true,
            node_id: st.node_id.clone(),
            joined: Some(c.joined.load(std::sync::atomic::Ordering::Acquire)),
            serving: Some(c.dir.serving().len()),
            members,
            shards,
        },
    ))
}

/// `GET /internal/v1/link` (websocket): another node of the cluster opens its peer link.
/// Another node of the cluster opens its peer link (websocket; a token of role `admin` whose
/// subject starts with `node:`). Not found on a single node.
#[utoipa::path(get, path = "/internal/v1/link", tag = "operations",
    security(("bearer" = ["admin"])),
    responses((status = 101, description = "Switching to the peer link's websocket")))]
pub(super) async fn peer_link(
    st: Arc<ApiState>,
    ws: warp::ws::Ws,
    auth: Option<String>,
) -> Outcome {
    let caller = caller(&st, &auth)?;
    if !(caller.role == Role::Admin && caller.id.starts_with("node:")) {
        return Err(Error::Forbidden("only cluster nodes may open a peer link".into()).into());
    }
    if st.cluster.is_none() {
        return Err(Error::not_found("route", "internal/v1/link").into());
    }
    let router = st.router.clone();
    Ok(ws
        .max_message_size(8 * 1024 * 1024)
        .on_upgrade(move |socket| crate::cluster::link::serve(socket, router))
        .into_response())
}

// ---- merchants ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
/// The body of `POST /v1/merchants`.
pub(super) struct NewMerchant {
    /// Display name, 1..=200 characters, not blank.
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// Pickup point.
    location: Location,
}

/// Creates a merchant (admin).
#[utoipa::path(post, path = "/v1/merchants", tag = "merchants",
    request_body = NewMerchant,
    security(("bearer" = ["admin"])),
    responses((status = 201, description = "The new merchant", body = crate::messages::MerchantView)))]
pub(super) async fn create_merchant(
    st: Arc<ApiState>,
    auth: Option<String>,
    body: Bytes,
) -> Outcome {
    let caller = caller(&st, &auth)?;
    let req: NewMerchant = parse(&body)?;
    check_name(&req.name)?;
    check_location(&req.location)?;
    let id = new_id();
    let view = st
        .router
        .send(
            &id,
            RegisterMerchant {
                caller,
                name: req.name,
                location: req.location,
            },
        )
        .await?;
    // Browsable through this node at once (other nodes hear of it from the events topic).
    st.gateway
        .catalog
        .apply(&view.merchant, crate::catalog::Source::Local);
    st.gateway.cache.invalidate(&id).await;
    Ok(json(StatusCode::CREATED, &view))
}

/// Reads a merchant with its menu and available stock (any role).
#[utoipa::path(get, path = "/v1/merchants/{id}", tag = "merchants",
    params(("id" = String, Path, description = "Merchant id")),
    security(("bearer" = ["customer", "merchant", "rider", "admin"])),
    responses((status = 200, description = "The merchant", body = crate::messages::MerchantView)))]
pub(super) async fn get_merchant(st: Arc<ApiState>, auth: Option<String>, id: String) -> Outcome {
    let caller = caller(&st, &auth)?;
    path_id("merchant", &id)?;
    let cache = &st.gateway.cache;
    if cache.serves(&caller, &id) {
        let body = cache.get(&id).await?;
        let mut resp = Response::new(body.into());
        resp.headers_mut().insert(
            "content-type",
            warp::http::HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    }
    let view = st.router.send(&id, GetMerchant).await?;
    cache.refresh(&id, &view).await;
    Ok(json(StatusCode::OK, &view))
}

/// `radius_m` when the query names none, and the most it may name.
const NEAR_RADIUS_M: (u32, u32) = (2_000, 50_000);
/// `limit` when the query names none, and the most it may name.
const NEAR_LIMIT: (usize, usize) = (20, 100);

/// What `GET /v1/merchants?near=` asks for.
struct NearQuery {
    at: Location,
    radius_m: u32,
    open: bool,
    limit: usize,
    cursor: Option<crate::catalog::Cursor>,
}

fn bad_query(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidQuery(msg.into())
}

fn near_query(raw: &str) -> Result<NearQuery, ApiError> {
    let mut q = NearQuery {
        at: Location { lat: 0.0, lng: 0.0 },
        radius_m: NEAR_RADIUS_M.0,
        open: false,
        limit: NEAR_LIMIT.0,
        cursor: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        if seen.iter().any(|s| *s == k) {
            return Err(bad_query(format!("query parameter {k} is given twice")));
        }
        seen.push(k.to_string());
        match k.as_ref() {
            "near" => {
                let mut parts = v.split(',').map(|p| p.trim().parse::<f64>());
                q.at = match (parts.next(), parts.next(), parts.next()) {
                    (Some(Ok(lat)), Some(Ok(lng)), None) => Location { lat, lng },
                    _ => {
                        return Err(bad_query(
                            "near must be lat,lng (for example near=31.23,121.47)",
                        ))
                    }
                };
                q.at.validate().map_err(|e| bad_query(e.to_string()))?;
            }
            "radius_m" => {
                q.radius_m = v
                    .parse::<u32>()
                    .ok()
                    .filter(|r| (1..=NEAR_RADIUS_M.1).contains(r))
                    .ok_or_else(|| {
                        bad_query(format!(
                            "radius_m must be a whole number of metres within 1..={}",
                            NEAR_RADIUS_M.1
                        ))
                    })?;
            }
            "open" => {
                q.open = match v.as_ref() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad_query("open must be true or false")),
                };
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=NEAR_LIMIT.1).contains(l))
                    .ok_or_else(|| {
                        bad_query(format!("limit must be within 1..={}", NEAR_LIMIT.1))
                    })?;
            }
            "cursor" => {
                q.cursor = Some(crate::catalog::Cursor::decode(&v).ok_or_else(|| {
                    bad_query("cursor is not one this API gave out (pass next_cursor as it came)")
                })?);
            }
            other => {
                return Err(bad_query(format!(
                    "unknown query parameter {other} (near, radius_m, open, limit, cursor)"
                )))
            }
        }
    }
    if !seen.iter().any(|k| k == "near") {
        return Err(bad_query("near=lat,lng is required"));
    }
    Ok(q)
}

/// Merchants near a point, nearest first, from this node's catalog (no actor is asked). A
/// change made through this node shows at once; one made through another node as soon as its
/// event arrives (milliseconds), at worst after `gateway.cache.catalog_refresh_ms`.
#[utoipa::path(get, path = "/v1/merchants", tag = "merchants",
    params(
        ("near" = String, Query, description = "lat,lng (for example 31.23,121.47)",
            pattern = r"^-?[0-9.]+,-?[0-9.]+$"),
        ("radius_m" = Option<u32>, Query, description = "Metres, 1..=50000 (default 2000)",
            minimum = 1, maximum = 50000),
        ("open" = Option<bool>, Query, description = "Only merchants taking orders (default false)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1..=100 (default 20)",
            minimum = 1, maximum = 100),
        ("cursor" = Option<String>, Query, description = "The previous page's next_cursor"),
    ),
    security(("bearer" = ["customer", "merchant", "rider", "admin"])),
    responses((status = 200, description = "One page, nearest first", body = crate::catalog::NearbyPage)))]
pub(super) async fn browse_merchants(
    st: Arc<ApiState>,
    auth: Option<String>,
    query: String,
) -> Outcome {
    caller(&st, &auth)?;
    let q = near_query(&query)?;
    let page = st.gateway.catalog.near(
        q.at,
        f64::from(q.radius_m),
        q.open,
        q.limit,
        q.cursor.as_ref(),
    );
    Ok(json(StatusCode::OK, &page))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
/// The body of `PUT /v1/merchants/{id}/menu`: the whole new menu.
pub(super) struct Menu {
    /// At most 200 items, SKUs unique.
    #[schema(max_items = 200)]
    items: Vec<MenuItem>,
}

/// Replaces the menu, stock included (the merchant itself, or an admin).
#[utoipa::path(put, path = "/v1/merchants/{id}/menu", tag = "merchants",
    params(("id" = String, Path, description = "Merchant id")),
    request_body = Menu,
    security(("bearer" = ["merchant", "admin"])),
    responses((status = 200, description = "The merchant", body = crate::messages::MerchantView)))]
pub(super) async fn set_menu(
    st: Arc<ApiState>,
    auth: Option<String>,
    id: String,
    body: Bytes,
) -> Outcome {
    let caller = caller(&st, &auth)?;
    path_id("merchant", &id)?;
    let menu: Menu = parse(&body)?;
    if menu.items.len() > MAX_ITEMS {
        return Err(invalid(format!("a menu has at most {MAX_ITEMS} items")));
    }
    let mut seen = std::collections::HashSet::new();
    for item in &menu.items {
        if item.sku.is_empty() || item.sku.len() > MAX_ID {
            return Err(invalid(format!("sku must be 1..={MAX_ID} characters")));
        }
        if !seen.insert(item.sku.as_str()) {
            return Err(invalid(format!("sku {} appears twice", item.sku)));
        }
        check_name(&item.name)?;
        if item.price_cents < 0 || item.price_cents > 100_000_000 {
            return Err(invalid(format!(
                "price_cents of {} must be within 0..=100000000",
                item.sku
            )));
        }
        if item.stock < 0 || item.stock > 1_000_000_000 {
            return Err(invalid(format!(
                "stock of {} must be within 0..=1000000000",
                item.sku
            )));
        }
    }
    let view = st
        .router
        .send(
            &id,
            SetMenu {
                caller,
                items: menu.items,
            },
        )
        .await?;
    // Every node's cache forgets it (this node's at once, before the answer).
    st.gateway
        .catalog
        .touched(&id, crate::catalog::Source::Local);
    st.gateway.cache.invalidate(&id).await;
    Ok(json(StatusCode::OK, &view))
}

pub(super) async fn open_close(
    st: Arc<ApiState>,
    auth: Option<String>,
    id: String,
    action: String,
) -> Outcome {
    let caller = caller(&st, &auth)?;
    path_id("merchant", &id)?;
    let open = match action.as_str() {
        "open" => true,
        "close" => false,
        _ => return Err(Error::not_found("route", action).into()),
    };
    let view = st.router.send(&id, SetOpen { caller, open }).await?;
    st.gateway
        .catalog
        .apply(&view.merchant, crate::catalog::Source::Local);
    st.gateway.cache.invalidate(&id).await;
    Ok(json(StatusCode::OK, &view))
}

pub(super) async fn merchant_decide(
    st: Arc<ApiState>,
    auth: Option<String>,
    mid: String,
    oid: String,
    action: String,
) -> Outcome {
    let caller = caller(&st, &auth)?;
    path_id("merchant", &mid)?;
    path_id("order", &oid)?;
    let event = match action.as_str() {
        "accept" => OrderEvent::Accept,
        "reject" => OrderEvent::Reject,
        _ => return Err(Error::not_found("route", action).into()),
    };
    let order = st
        .router
        .send(
            &oid,
            ChangeOrder {
                caller,
                event,
                party: Some(mid),
                expected_version: None,
            },
        )
        .await?;
    Ok(json(StatusCode::OK, &order))
}

// ---- riders ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
/// The body of `POST /v1/riders`.
pub(super) struct NewRider {
    /// Display name, 1..=200 characters, not blank.
    #[schema(min_length = 1, max_length = 200)]
    name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
/// The body of `POST /v1/riders/{id}/online`.
pub(super) struct Online {
    /// Where the rider is.
    location: Location,
}

/// Creates a rider (admin).
#[utoipa::path(post, path = "/v1/riders", tag = "riders",
    request_body = NewRider,
    security(("bearer" = ["admin"])),
    responses((status = 201, description = "The new rider", body = crate::model::Rider)))]
pub(super) async fn create_rider(st: Arc<ApiState>, auth: Option<String>, body: Bytes) -> Outcome {
    let caller = caller(&st, &auth)?;
    let req: NewRider = parse(&body)?;
    check_name(&req.name)?;
    let id = new_id();
    let rider = st
        .router
        .send(
            &id,
            RegisterRider {
                caller,
                name: req.name,
            },
        )
        .await?;
    Ok(json(StatusCode::CREATED, &rider))
}

/// Reads a rider (any role).
#[utoipa::path(get, path = "/v1/riders/{id}", tag = "riders",
    params(("id" = String, Path, description = "Rider id")),
    security(("bearer" = ["customer", "merchant", "rider", "admin"])),
    responses((status = 200, description = "The rider", body = crate::model::Rider)))]
pub(super) async fn get_rider(st: Arc<ApiState>, auth: Option<String>, id: String) -> Outcome {
    caller(&st, &auth)?;
    path_id("rider", &id)?;
    let rider = st.router.send(&id, GetRider).await?;
    Ok(json(StatusCode::OK, &rider))
}

pub(super) async fn rider_status(
    st: Arc<ApiState>,
    auth: Option<String>,
    id: String,
    action: String,
    body: Bytes,
) -> Outcome {
    let caller = caller(&st, &auth)?;
    path_id("rider", &id)?;
    let rider = match action.as_str() {
        "online" => {
            let req: Online = parse(&body)?;
            check_location(&req.location)?;
            st.router
                .send(
                    &id,
                    GoOnline {
                        caller,
                        location: req.location,
                    },
                )
                .await?
        }
        "offline" => st.router.send(&id, GoOffline { caller }).await?,
        _ => return Err(Error::not_found("route", action).into()),
    };
    Ok(json(StatusCode::OK, &rider))
}

/// The rider reports its position.
#[utoipa::path(put, path = "/v1/riders/{id}/location", tag = "riders",
    params(("id" = String, Path, description = "Rider id")),
    request_body = Location,
    security(("bearer" = ["rider", "admin"])),
    responses((status = 200, description = "The rider", body = crate::model::Rider)))]
pub(super) async fn rider_location(
    st: Arc<ApiState>,
    auth: Option<String>,
    id: String,
    body: Bytes,
) -> Outcome {
    let caller = caller(&st, &auth)?;
    path_id("rider", &id)?;
    let location: Location = parse(&body)?;
    check_location(&location)?;
    let rider = st
        .router
        .send(&id, UpdateLocation { caller, location })
        .await?;
    Ok(json(StatusCode::OK, &rider))
}

pub(super) async fn rider_order(
    st: Arc<ApiState>,
    auth: Option<String>,
    rid: String,
    oid: String,
    action: String,
) -> Outcome {
    let caller = caller(&st, &auth)?;
    path_id("rider", &rid)?;
    path_id("order", &oid)?;
    let event = match action.as_str() {
        "pickup" => OrderEvent::PickUp,
        "deliver" => OrderEvent::Deliver,
        "release" => OrderEvent::ReleaseRider,
        _ => return Err(Error::not_found("route", action).into()),
    };
    let order = st
        .router
        .send(
            &oid,
            ChangeOrder {
                caller,
                event,
                party: Some(rid),
                expected_version: None,
            },
        )
        .await?;
    Ok(json(StatusCode::OK, &order))
}

pub(super) async fn rider_offer(
    st: Arc<ApiState>,
    auth: Option<String>,
    rid: String,
    oid: String,
    action: String,
) -> Outcome {
    let caller = caller(&st, &auth)?;
    path_id("rider", &rid)?;
    path_id("order", &oid)?;
    let accept = match action.as_str() {
        "accept" => true,
        "decline" => false,
        _ => return Err(Error::not_found("route", action).into()),
    };
    let order = st
        .router
        .send(
            &rid.clone(),
            AnswerOffer {
                caller,
                rider_id: rid,
                order_id: oid,
                accept,
            },
        )
        .await?;
    Ok(json(StatusCode::OK, &order))
}

// ---- payments ----

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
/// The (optional) body of `POST /v1/orders/{id}/pay` and `/payment`.
pub(super) struct PayBody {
    /// The payment method, 1..=64 characters (default: `payments.default_method`).
    #[schema(min_length = 1, max_length = 64)]
    method: Option<String>,
}

/// `POST /v1/orders/{id}/payment`: the intent created (or the one already under way).
#[derive(Serialize, ToSchema)]
pub(super) struct PaymentCreated {
    /// The payment intent.
    payment: Intent,
    /// The order when the payment started.
    #[schema(value_type = Order)]
    order: std::sync::Arc<Order>,
}

/// `POST /v1/orders/{id}/pay`: the order with its payment intent.
#[derive(Serialize, ToSchema)]
pub(super) struct PaidOrder {
    /// The order (paid, or still `pending_payment` when the answer is 202).
    #[serde(flatten)]
    #[schema(value_type = Order)]
    order: std::sync::Arc<Order>,
    /// The payment intent.
    payment: Intent,
}

/// `POST /v1/payments/callback`: the event was taken.
#[derive(Serialize, ToSchema)]
pub(super) struct CallbackReceived {
    /// Always true.
    received: bool,
    /// False for an event already applied.
    applied: bool,
}

/// `POST /v1/orders/{id}/payment` (`wait` false): creates the payment intent and answers 201 with
/// it. `POST /v1/orders/{id}/pay` (`wait` true): the same, and with a provider that confirms at
/// once it answers only once the signed callback has marked the order paid (200); otherwise
/// (a late or real provider) 202 with the order still `pending_payment` and the intent. A
/// declined payment is 402.
async fn pay(st: Arc<ApiState>, caller: Caller, id: String, body: Bytes, wait: bool) -> Outcome {
    // No body, or `null`, takes the defaults.
    let req: PayBody = if body.iter().all(u8::is_ascii_whitespace) {
        PayBody::default()
    } else {
        parse::<Option<PayBody>>(&body)?.unwrap_or_default()
    };
    let method = req
        .method
        .unwrap_or_else(|| st.payments_cfg.default_method.clone());
    if method.is_empty() || method.len() > 64 {
        return Err(invalid("method must be 1..=64 characters"));
    }
    // Subscribed before the payment starts, so the callback's change cannot slip past.
    let mut changes = wait.then(|| st.hub.subscribe(Topic::Order(id.clone())));
    let started = st
        .router
        .send(
            &id,
            StartPayment {
                caller: caller.clone(),
                method,
            },
        )
        .await?;
    let intent = started.intent;
    if intent.status == IntentStatus::Failed {
        return Err(Error::PaymentDeclined(format!("intent {} was declined", intent.id)).into());
    }
    if !wait {
        let body = PaymentCreated {
            payment: intent,
            order: started.order,
        };
        return Ok(json(StatusCode::CREATED, &body));
    }
    let mut order = started.order;
    if order.status == OrderStatus::PendingPayment && st.payments.confirms_at_once(&intent.method) {
        if let Some(sub) = changes.as_mut() {
            let wait = std::time::Duration::from_millis(st.live.current().payments.pay_wait_ms);
            let _ = tokio::time::timeout(wait, async {
                while let Some(ev) = sub.rx.recv().await {
                    if ev.status.is_some_and(|s| s != OrderStatus::PendingPayment) {
                        return;
                    }
                }
            })
            .await;
        }
        order = st.router.send(&id, GetOrder { caller }).await?;
    }
    let status = if order.status == OrderStatus::PendingPayment {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let body = PaidOrder {
        order,
        payment: intent,
    };
    Ok(json(status, &body))
}

/// `POST /v1/payments/callback`: the provider's signed event. A bad or missing signature is
/// 401, a timestamp outside the tolerance 400; an event already applied changes nothing
/// (`"applied": false`).
#[utoipa::path(post, path = "/v1/payments/callback", tag = "payments",
    params(("Waimai-Signature" = Option<String>, Header,
        description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">` with `payments.hmac_secret`")),
    request_body = ProviderEvent,
    responses((status = 200, description = "Taken (`applied` false: already applied)", body = CallbackReceived)))]
pub(super) async fn payment_callback(
    st: Arc<ApiState>,
    signature: Option<String>,
    body: Bytes,
) -> Outcome {
    use crate::payments::signature::{verify, SignatureError};
    let now_s = now_ms() / 1000;
    match verify(
        &st.payments_cfg.hmac_secret,
        signature.as_deref(),
        &body,
        now_s,
        st.payments_cfg.tolerance_s,
    ) {
        Ok(()) => {}
        Err(e @ SignatureError::Stale(_)) => return Err(ApiError::BadHeader(e.to_string())),
        Err(e) => {
            crate::metrics::PAYMENTS
                .with_label_values(&["callback_rejected"])
                .inc();
            return Err(ApiError::Unauthorized(format!("payment callback: {e}")));
        }
    }
    let event: ProviderEvent = parse(&body)?;
    path_id("order", &event.data.order_id)?;
    let order = event.data.order_id.clone();
    let applied = st.router.send(&order, PaymentNotice { event }).await?;
    Ok(json(
        StatusCode::OK,
        &CallbackReceived {
            received: true,
            applied,
        },
    ))
}

// ---- orders ----

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
/// The body of `POST /v1/orders`.
pub(super) struct NewOrder {
    /// The merchant to order from.
    #[schema(min_length = 1, max_length = 64)]
    merchant_id: String,
    /// 1..=200 lines.
    #[schema(min_items = 1, max_items = 200)]
    items: Vec<NewOrderItem>,
    /// Where to deliver.
    deliver_to: Location,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
/// One line of a new order.
pub(super) struct NewOrderItem {
    /// The merchant's SKU.
    #[schema(min_length = 1, max_length = 64)]
    sku: String,
    /// How many, 1..=10000.
    #[schema(minimum = 1, maximum = 10000)]
    #[serde(deserialize_with = "crate::domain::whole_i64")]
    qty: i64,
}

/// Places an order (a customer). With an `Idempotency-Key`, a retry of the same request is
/// answered with the order it made (header `Idempotent-Replayed: true`); the key reused for
/// another body is refused (422 `idempotency_key_reused`).
#[utoipa::path(post, path = "/v1/orders", tag = "orders",
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
        description = "Makes the request safe to retry: 1..=255 characters, per customer")),
    request_body = NewOrder,
    security(("bearer" = ["customer"])),
    responses((status = 201, description = "The order, `pending_payment`", body = Order,
        headers(("Idempotent-Replayed" = String, description = "`true` when an earlier request with this key made it")))))]
pub(super) async fn create_order(
    st: Arc<ApiState>,
    auth: Option<String>,
    key: Option<String>,
    body: Bytes,
) -> Outcome {
    let caller = caller(&st, &auth)?;
    let req: NewOrder = parse(&body)?;
    if req.merchant_id.is_empty() || req.merchant_id.len() > MAX_ID {
        return Err(Error::not_found(
            "merchant",
            req.merchant_id.chars().take(MAX_ID).collect::<String>(),
        )
        .into());
    }
    if req.items.is_empty() || req.items.len() > MAX_ITEMS {
        return Err(invalid(format!("an order has 1..={MAX_ITEMS} items")));
    }
    for it in &req.items {
        if it.sku.is_empty() || it.sku.len() > MAX_ID {
            return Err(invalid(format!("sku must be 1..={MAX_ID} characters")));
        }
        if it.qty < 1 || it.qty > MAX_QTY {
            return Err(invalid(format!(
                "qty of {} must be within 1..={MAX_QTY}",
                it.sku
            )));
        }
    }
    check_location(&req.deliver_to)?;
    // The request hash is kept with the order: a retry of this very request (same id, same
    // hash) is answered with the order it made, even when the first answer was lost between
    // nodes; a key reused for another body is refused.
    let canonical = serde_json::to_vec(&req).map_err(|e| invalid(e.to_string()))?;
    let hash = Some(hex::encode(Sha256::digest(canonical)));
    let id = match &key {
        Some(k) => {
            if k.is_empty() || k.len() > 255 {
                return Err(ApiError::BadHeader(
                    "Idempotency-Key must be 1..=255 characters".into(),
                ));
            }
            let ns = format!("{}\n{}", caller.id, k);
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, ns.as_bytes()).to_string()
        }
        None => new_id(),
    };
    // Admission: the order's shard and the merchant's (which reserves and commits for it).
    st.gateway
        .admission
        .check_shards(&[&id, &req.merchant_id])
        .map_err(ApiError::Overloaded)?;
    // Then a turn inside the node, in arrival order, held until the answer.
    let _turn = st.gateway.door.enter().await;
    let placed = st
        .router
        .send(
            &id,
            PlaceOrder {
                caller,
                merchant_id: req.merchant_id,
                items: req.items.into_iter().map(|i| (i.sku, i.qty)).collect(),
                deliver_to: req.deliver_to,
                request_hash: hash,
                new_id: key.is_none(),
            },
        )
        .await?;
    let mut resp = json(StatusCode::CREATED, &placed.order);
    if placed.replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            warp::http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

/// Reads an order (its customer, merchant, rider, or an admin; 404 for anyone else).
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    security(("bearer" = ["customer", "merchant", "rider", "admin"])),
    responses((status = 200, description = "The order", body = Order)))]
pub(super) async fn get_order(st: Arc<ApiState>, auth: Option<String>, id: String) -> Outcome {
    let caller = caller(&st, &auth)?;
    path_id("order", &id)?;
    let order = st.router.send(&id, GetOrder { caller }).await?;
    Ok(json(StatusCode::OK, &order))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
/// The body of `POST /v1/orders/{id}/assign` (admin).
pub(super) struct Assign {
    /// The rider to assign.
    #[schema(min_length = 1, max_length = 64)]
    rider_id: String,
}

pub(super) async fn order_action(
    st: Arc<ApiState>,
    auth: Option<String>,
    id: String,
    action: String,
    body: Bytes,
) -> Outcome {
    let caller = caller(&st, &auth)?;
    path_id("order", &id)?;
    let (event, party) = match action.as_str() {
        "pay" => return pay(st, caller, id, body, true).await,
        "payment" => return pay(st, caller, id, body, false).await,
        "cancel" => (OrderEvent::Cancel, None),
        "confirm" => (OrderEvent::Confirm, None),
        "assign" => {
            let req: Assign = parse(&body)?;
            path_id("rider", &req.rider_id)?;
            (OrderEvent::AssignRider, Some(req.rider_id))
        }
        _ => return Err(Error::not_found("route", action).into()),
    };
    let order = st
        .router
        .send(
            &id,
            ChangeOrder {
                caller,
                event,
                party,
                expected_version: None,
            },
        )
        .await?;
    Ok(json(StatusCode::OK, &order))
}
