//! The front door: warp routes for REST, health and metrics. Handlers live in `handlers.rs`;
//! errors map to HTTP in `error.rs`; bearer tokens are checked in `auth.rs`.

pub mod auth;
pub mod error;
mod handlers;
pub mod openapi;
mod ops;
pub mod trace;
mod ws;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use bytes::Bytes;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::actors::lock::LockActor;
use crate::cluster::Router;
use crate::store::Store;

pub use auth::Auth;
pub use error::ApiError;

/// What handlers need.
pub struct ApiState {
    /// Reaches the actors.
    pub router: Router,
    /// For readiness.
    pub store: Store,
    /// For readiness.
    pub lock: Addr<LockActor>,
    /// Token checks.
    pub auth: Auth,
    /// Live events for websockets.
    pub hub: crate::realtime::Hub,
    /// Websocket settings.
    pub realtime: crate::config::RealtimeConfig,
    /// The node's view of its cluster (`None` on a single node).
    pub cluster: Option<Arc<crate::cluster::ClusterStatus>>,
    /// This node's id.
    pub node_id: String,
    /// The payment provider.
    pub payments: crate::payments::Payments,
    /// Payment settings.
    pub payments_cfg: crate::config::PaymentsConfig,
    /// The configuration in effect (live keys change on reload).
    pub live: Arc<crate::reload::Live>,
    /// Rate limits, load shedding and the browse cache.
    pub gateway: Arc<crate::gateway::Gateway>,
}

/// The address of the connection a request came on (set by the server for every request).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// The gateway's check before any route runs: rate limits by route class (per caller and per
/// client IP) and, for writes, load shedding. Absent (a no-op filter) when both are off.
fn gate(state: Arc<ApiState>) -> BoxedFilter<()> {
    if !state.gateway.active() {
        return warp::any().boxed();
    }
    let st = warp::any().map(move || state.clone());
    warp::method()
        .and(warp::path::full())
        .and(warp::ext::optional::<ClientAddr>())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("upgrade"))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(st)
        .and_then(admit)
        .untuple_one()
        .boxed()
}

async fn admit(
    method: warp::http::Method,
    path: warp::path::FullPath,
    remote: Option<ClientAddr>,
    auth: Option<String>,
    upgrade: Option<String>,
    query: String,
    st: Arc<ApiState>,
) -> Result<(), warp::Rejection> {
    use crate::gateway::RouteClass;
    use warp::http::Method;
    // Health, metrics, peer links and the provider's callbacks are never limited.
    let Some(rest) = path.as_str().strip_prefix("/v1/") else {
        return Ok(());
    };
    if rest.starts_with("payments/") {
        return Ok(());
    }
    let class = match method {
        Method::GET if upgrade.is_some() => RouteClass::Ws,
        Method::GET | Method::HEAD => RouteClass::Read,
        _ => RouteClass::Write,
    };
    // A websocket may carry its token as `?token=` (browsers cannot set the header).
    let header = auth.or_else(|| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(|t| format!("Bearer {t}"))
    });
    let caller = st.auth.caller(header.as_deref()).ok();
    if caller.as_ref().is_some_and(|c| c.is_admin()) {
        return Ok(()); // operators and the cluster's own nodes
    }
    let key = caller.map(|c| format!("{:?}:{}", c.role, c.id));
    let entity = rest.split('/').nth(1).filter(|s| !s.is_empty());
    st.gateway
        .admit(class, key.as_deref(), remote.map(|a| a.0.ip()), entity)
        .await
        .map_err(|r| warp::reject::custom(error::Gate(r)))
}

/// `route`, tried only for paths of its shape: `label` is the route's own name, as in its
/// `timed` call and `openapi::ROUTES` (`"POST /v1/orders/{id}/{action}"`), and its path part
/// is the shape. Used by the fallback tree (`Dispatch`), which sees only requests that fit no
/// route: a route whose shape does not fit costs a few comparisons there instead of its boxed
/// future (its whole handler's state, kilobytes). The check only lets fewer requests in (never
/// by method, which would turn a 405 into a 404); the route's own `path!` still decides.
fn shaped<F>(label: &'static str, route: F) -> BoxedFilter<(Response,)>
where
    F: Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
{
    let shape = openapi::Shape::new(label_parts(label).1);
    warp::path::peek()
        .and_then(move |tail: warp::path::Peek| {
            std::future::ready(if shape.matches(tail.as_str()) {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            })
        })
        .untuple_one()
        .and(route.boxed())
        .boxed()
}

/// A route label's method and path template (`"POST /v1/orders/{id}/{action}"`). Labels are
/// constants of this file (`tests/openapi.rs` holds them to `openapi::ROUTES`): a malformed
/// one stops the node at its first start, before it serves anything.
fn label_parts(label: &'static str) -> (warp::http::Method, &'static str) {
    debug_assert!(
        openapi::ROUTES.iter().any(|r| r.served_by == label),
        "`{label}` is not a route label in api::openapi::ROUTES"
    );
    let (method, path) = label
        .split_once(' ')
        .unwrap_or_else(|| panic!("route label `{label}` is not `METHOD /path`"));
    let method = warp::http::Method::from_bytes(method.as_bytes())
        .unwrap_or_else(|_| panic!("route label `{label}` has no HTTP method"));
    (method, path)
}

/// A route's entry in `Dispatch`'s table: `label` as in its `timed` call and
/// `openapi::ROUTES` (`tests/openapi.rs` holds the three together).
fn routed<F>(label: &'static str, route: F) -> (&'static str, BoxedFilter<(Response,)>)
where
    F: Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
{
    (label, route.boxed())
}

/// The routes as a balanced tree of `or`s, tried in the same order as the list: a request
/// passes about six levels instead of 28 (the fallback of `Dispatch`).
fn balanced(mut routes: Vec<BoxedFilter<(Response,)>>) -> BoxedFilter<(Response,)> {
    while routes.len() > 1 {
        let mut pairs = Vec::with_capacity(routes.len().div_ceil(2));
        let mut it = routes.into_iter();
        while let Some(first) = it.next() {
            pairs.push(match it.next() {
                Some(second) => first.or(second).unify().boxed(),
                None => first,
            });
        }
        routes = pairs;
    }
    match routes.pop() {
        Some(r) => r,
        None => warp::any()
            .and_then(|| async { Err::<Response, _>(warp::reject::not_found()) })
            .boxed(),
    }
}

/// Runs a handler, turning its error into a response and recording latency by route and status.
async fn timed<F>(route: &'static str, f: F) -> Response
where
    F: Future<Output = Result<Response, ApiError>>,
{
    let started = Instant::now();
    trace::name_request(route);
    let resp = match f.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    crate::metrics::HTTP_SECONDS
        .with_label_values(&[route, resp.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// The request body, at most `limit` bytes whether or not a content-length is sent; an absent
/// body is empty.
fn limited_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |len: Option<u64>, stream| collect_body(len, stream, limit))
}

async fn collect_body<S, B>(
    len: Option<u64>,
    stream: S,
    limit: u64,
) -> Result<Bytes, warp::Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    use futures::StreamExt;
    if len.is_some_and(|n| n > limit) {
        return Err(warp::reject::custom(error::TooLarge));
    }
    let mut stream = Box::pin(stream);
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|_| warp::reject::custom(error::TooLarge))?;
        if buf.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(warp::reject::custom(error::TooLarge));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(buf))
}

/// All routes, with JSON errors for unmatched requests, as a table a request is dispatched
/// through (`Dispatch::pick`).
pub fn routes(
    state: Arc<ApiState>,
    body_limit: u64,
) -> Dispatch<impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static>
{
    let gate = gate(state.clone());
    let st = warp::any().map(move || state.clone());
    let bearer = warp::header::optional::<String>("authorization");
    let body = limited_body(body_limit);
    let idem = warp::header::optional::<String>("idempotency-key");

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .then(|| timed("GET /healthz", async { Ok(handlers::healthz()) }));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(st.clone())
        .then(|s| timed("GET /readyz", handlers::readyz(s)));
    let metrics = warp::path!("metrics").and(warp::get()).then(|| {
        timed("GET /metrics", async {
            Ok(warp::reply::with_header(
                crate::metrics::render(),
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response())
        })
    });
    let openapi = warp::path!("openapi.json").and(warp::get()).then(|| {
        timed("GET /openapi.json", async {
            Ok(warp::reply::with_header(
                openapi::document_text(),
                "content-type",
                "application/json",
            )
            .into_response())
        })
    });

    let create_merchant = warp::path!("v1" / "merchants")
        .and(warp::post())
        .and(st.clone())
        .and(bearer)
        .and(body.clone())
        .then(|s, a: Option<String>, b: Bytes| {
            timed("POST /v1/merchants", handlers::create_merchant(s, a, b))
        });
    let browse_merchants = warp::path!("v1" / "merchants")
        .and(warp::get())
        .and(st.clone())
        .and(bearer)
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(|s, a, q| timed("GET /v1/merchants", handlers::browse_merchants(s, a, q)));
    let get_merchant = warp::path!("v1" / "merchants" / String)
        .and(warp::get())
        .and(st.clone())
        .and(bearer)
        .then(|id, s, a| timed("GET /v1/merchants/{id}", handlers::get_merchant(s, a, id)));
    let set_menu = warp::path!("v1" / "merchants" / String / "menu")
        .and(warp::put())
        .and(st.clone())
        .and(bearer)
        .and(body.clone())
        .then(|id, s, a, b| {
            timed(
                "PUT /v1/merchants/{id}/menu",
                handlers::set_menu(s, a, id, b),
            )
        });
    let open_close = warp::path!("v1" / "merchants" / String / String)
        .and(warp::post())
        .and(st.clone())
        .and(bearer)
        .then(|id, action, s, a| {
            timed(
                "POST /v1/merchants/{id}/{action}",
                handlers::open_close(s, a, id, action),
            )
        });
    let merchant_decide = warp::path!("v1" / "merchants" / String / "orders" / String / String)
        .and(warp::post())
        .and(st.clone())
        .and(bearer)
        .then(|mid, oid, action, s, a| {
            timed(
                "POST /v1/merchants/{mid}/orders/{oid}/{action}",
                handlers::merchant_decide(s, a, mid, oid, action),
            )
        });

    let create_rider = warp::path!("v1" / "riders")
        .and(warp::post())
        .and(st.clone())
        .and(bearer)
        .and(body.clone())
        .then(|s, a, b| timed("POST /v1/riders", handlers::create_rider(s, a, b)));
    let get_rider = warp::path!("v1" / "riders" / String)
        .and(warp::get())
        .and(st.clone())
        .and(bearer)
        .then(|id, s, a| timed("GET /v1/riders/{id}", handlers::get_rider(s, a, id)));
    let rider_status = warp::path!("v1" / "riders" / String / String)
        .and(warp::post())
        .and(st.clone())
        .and(bearer)
        .and(body.clone())
        .then(|id, action, s, a, b| {
            timed(
                "POST /v1/riders/{id}/{action}",
                handlers::rider_status(s, a, id, action, b),
            )
        });
    let rider_location = warp::path!("v1" / "riders" / String / "location")
        .and(warp::put())
        .and(st.clone())
        .and(bearer)
        .and(body.clone())
        .then(|id, s, a, b| {
            timed(
                "PUT /v1/riders/{id}/location",
                handlers::rider_location(s, a, id, b),
            )
        });
    let rider_order = warp::path!("v1" / "riders" / String / "orders" / String / String)
        .and(warp::post())
        .and(st.clone())
        .and(bearer)
        .then(|rid, oid, action, s, a| {
            timed(
                "POST /v1/riders/{rid}/orders/{oid}/{action}",
                handlers::rider_order(s, a, rid, oid, action),
            )
        });

    let rider_offer = warp::path!("v1" / "riders" / String / "offers" / String / String)
        .and(warp::post())
        .and(st.clone())
        .and(bearer)
        .then(|rid, oid, action, s, a| {
            timed(
                "POST /v1/riders/{rid}/offers/{oid}/{action}",
                handlers::rider_offer(s, a, rid, oid, action),
            )
        });

    let payment_callback = warp::path!("v1" / "payments" / "callback")
        .and(warp::post())
        .and(st.clone())
        .and(warp::header::optional::<String>(
            crate::payments::signature::HEADER,
        ))
        .and(body.clone())
        .then(|s, sig, b| {
            timed(
                "POST /v1/payments/callback",
                handlers::payment_callback(s, sig, b),
            )
        });
    let cluster = warp::path!("v1" / "cluster")
        .and(warp::get())
        .and(st.clone())
        .and(bearer)
        .then(|s, a| timed("GET /v1/cluster", handlers::cluster(s, a)));
    let reload = warp::path!("v1" / "admin" / "reload")
        .and(warp::post())
        .and(st.clone())
        .and(bearer)
        .then(|s, a| timed("POST /v1/admin/reload", handlers::reload(s, a)));
    let link = warp::path!("internal" / "v1" / "link")
        .and(warp::get())
        .and(st.clone())
        .and(warp::ws())
        .and(bearer)
        .then(|s, w, a| timed("GET /internal/v1/link", handlers::peer_link(s, w, a)));

    let query = warp::query::<std::collections::HashMap<String, String>>();
    let track = warp::path!("v1" / "orders" / String / "track")
        .and(warp::get())
        .and(st.clone())
        .and(warp::ws())
        .and(bearer)
        .and(query)
        .then(|id, s, w, a, q| timed("GET /v1/orders/{id}/track", ws::track(s, w, a, q, id)));
    let merchant_feed = warp::path!("v1" / "merchants" / String / "feed")
        .and(warp::get())
        .and(st.clone())
        .and(warp::ws())
        .and(bearer)
        .and(query)
        .then(|id, s, w, a, q| {
            timed(
                "GET /v1/merchants/{id}/feed",
                ws::merchant_feed(s, w, a, q, id),
            )
        });
    let rider_feed = warp::path!("v1" / "riders" / String / "feed")
        .and(warp::get())
        .and(st.clone())
        .and(warp::ws())
        .and(bearer)
        .and(query)
        .then(|id, s, w, a, q| timed("GET /v1/riders/{id}/feed", ws::rider_feed(s, w, a, q, id)));
    let ops_page = warp::path!("ops")
        .and(warp::get())
        .then(|| timed("GET /ops", async { Ok(ops::page()) }));
    let ops_live = warp::path!("v1" / "ops" / "live")
        .and(warp::get())
        .and(st.clone())
        .and(warp::ws())
        .and(bearer)
        .and(query)
        .then(|s, w, a, q| timed("GET /v1/ops/live", ops::live(s, w, a, q)));

    let create_order = warp::path!("v1" / "orders")
        .and(warp::post())
        .and(st.clone())
        .and(bearer)
        .and(idem)
        .and(body.clone())
        .then(|s, a, k, b| timed("POST /v1/orders", handlers::create_order(s, a, k, b)));
    let get_order = warp::path!("v1" / "orders" / String)
        .and(warp::get())
        .and(st.clone())
        .and(bearer)
        .then(|id, s, a| timed("GET /v1/orders/{id}", handlers::get_order(s, a, id)));
    let order_action = warp::path!("v1" / "orders" / String / String)
        .and(warp::post())
        .and(st)
        .and(bearer)
        .and(body.clone())
        .then(|id, action, s, a, b| {
            timed(
                "POST /v1/orders/{id}/{action}",
                handlers::order_action(s, a, id, action, b),
            )
        });

    // Boxing each route keeps the types shallow (warp's nested filter types otherwise make
    // compile times explode) and gives every route the same type, so that one wrapper type
    // serves them all. The list's order is the order the fallback tree tries them in.
    let listed: Vec<(&'static str, BoxedFilter<(Response,)>)> = vec![
        routed("POST /v1/orders", create_order),
        routed("GET /v1/orders/{id}", get_order),
        routed("POST /v1/orders/{id}/{action}", order_action),
        routed("GET /healthz", healthz),
        routed("GET /readyz", readyz),
        routed("GET /metrics", metrics),
        routed("POST /v1/merchants", create_merchant),
        routed("GET /v1/merchants", browse_merchants),
        routed("GET /v1/merchants/{id}", get_merchant),
        routed("PUT /v1/merchants/{id}/menu", set_menu),
        routed(
            "POST /v1/merchants/{mid}/orders/{oid}/{action}",
            merchant_decide,
        ),
        routed("POST /v1/merchants/{id}/{action}", open_close),
        routed("POST /v1/riders", create_rider),
        routed("GET /v1/riders/{id}", get_rider),
        routed("PUT /v1/riders/{id}/location", rider_location),
        routed("POST /v1/riders/{rid}/orders/{oid}/{action}", rider_order),
        routed("POST /v1/riders/{id}/{action}", rider_status),
        routed("POST /v1/riders/{rid}/offers/{oid}/{action}", rider_offer),
        routed("GET /v1/orders/{id}/track", track),
        routed("GET /v1/merchants/{id}/feed", merchant_feed),
        routed("GET /v1/riders/{id}/feed", rider_feed),
        routed("GET /ops", ops_page),
        routed("GET /v1/ops/live", ops_live),
        routed("GET /v1/cluster", cluster),
        routed("POST /v1/admin/reload", reload),
        routed("GET /internal/v1/link", link),
        routed("POST /v1/payments/callback", payment_callback),
        routed("GET /openapi.json", openapi),
    ];
    // Every route is served behind the gateway's check, JSON errors and the 405's `Allow`.
    let finish = move |route: BoxedFilter<(Response,)>| {
        // A 405 names the methods the path does serve (RFC 9110 `Allow`).
        warp::path::full()
            .and(gate.clone().and(route).recover(error::recover).unify())
            .map(|path: warp::path::FullPath, mut resp: Response| {
                if resp.status() == warp::http::StatusCode::METHOD_NOT_ALLOWED {
                    let allow = openapi::allowed_methods(path.as_str()).join(", ");
                    if let Ok(v) = warp::http::HeaderValue::from_str(&allow) {
                        resp.headers_mut().insert("allow", v);
                    }
                }
                resp
            })
    };
    let fallback = finish(balanced(
        listed
            .iter()
            .map(|(label, route)| shaped(label, route.clone()))
            .collect(),
    ));
    let table = listed
        .into_iter()
        .map(|(label, route)| {
            let (method, path) = label_parts(label);
            (method, openapi::Shape::new(path), finish(route))
        })
        .collect();
    Dispatch { table, fallback }
}

/// The routes, picked by a request's method and path before warp runs anything: each route is
/// its own filter behind the same wrapper (`F`), and a request whose method and path fit a
/// route's label goes to that route alone. Any other request goes to `fallback`, all routes as
/// a tree of `or`s, which answers as warp would have (404, or 405 with `Allow`, or the
/// gateway's refusal). Routes of one method never share a path (`no_two_routes_of_one_method_
/// share_a_path`), so the route picked is the one the tree would have reached; the tree's
/// levels cost every request a boxed future and a poll each (~2.7% of the node's instructions
/// in `lifecycle`, BENCHMARKS.md 2026-11-29 night).
pub struct Dispatch<F> {
    table: Vec<(warp::http::Method, openapi::Shape<'static>, F)>,
    fallback: F,
}

impl<F> Dispatch<F> {
    /// The filter (or service) that serves `method` on `path`.
    pub fn pick(&self, method: &warp::http::Method, path: &str) -> &F {
        self.table
            .iter()
            .find(|(m, shape, _)| m == method && shape.matches(path))
            .map_or(&self.fallback, |(_, _, f)| f)
    }

    /// The same table with every entry (and the fallback) passed through `wrap`.
    pub fn wrap<G>(self, wrap: impl Fn(F) -> G) -> Dispatch<G> {
        Dispatch {
            table: self
                .table
                .into_iter()
                .map(|(m, shape, f)| (m, shape, wrap(f)))
                .collect(),
            fallback: wrap(self.fallback),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route that answers 200 with its name.
    fn named(
        name: &'static str,
    ) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
        warp::any().and_then(move || async move {
            Ok::<_, warp::Rejection>(
                warp::reply::with_status(name, warp::http::StatusCode::OK).into_response(),
            )
        })
    }

    #[tokio::test]
    async fn a_shaped_route_is_tried_only_for_paths_of_its_shape() {
        let routes = balanced(vec![
            shaped("GET /v1/orders/{id}", named("get")),
            shaped("POST /v1/orders/{id}/{action}", named("action")),
        ]);
        let answer = |path: &'static str| {
            let routes = routes.clone();
            async move {
                let r = warp::test::request().path(path).reply(&routes).await;
                (
                    r.status().as_u16(),
                    String::from_utf8_lossy(r.body()).into_owned(),
                )
            }
        };
        assert_eq!(answer("/v1/orders/o-1").await, (200, "get".into()));
        assert_eq!(answer("/v1/orders/o-1/pay").await, (200, "action".into()));
        // `named` takes any path: only the shape check keeps these out.
        assert_eq!(answer("/v1/orders").await.0, 404);
        assert_eq!(answer("/v1/orders/o-1/pay/now").await.0, 404);
        assert_eq!(answer("/v1/riders/r-1").await.0, 404);
    }
}
