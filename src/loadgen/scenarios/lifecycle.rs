//! `lifecycle` and `track`: whole orders over the websocket protocol.
//!
//! Every merchant is simulated by a task holding its feed socket: it accepts each `new_order`
//! (and every paid order in its snapshot) with an `accept` message. Every rider is a task that
//! goes online at a random spot, holds its feed socket, accepts offers, and once `assigned`
//! moves toward the merchant in `--rider-steps` location updates, picks up, moves toward the
//! customer, and delivers. A virtual user places an order, pays, waits for delivery and
//! confirms. In `track`, every order is also watched by `--watchers` tracking sockets (the
//! customer's first, then admin observers) opened before payment; the customer learns of the
//! delivery from its own socket, and every socket must see `completed` and a normal close.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use super::super::invariants::Check;
use super::super::model::drive;
use super::super::report::Class;
use super::super::setup::{random_spot, rng, SimMerchant, SimRider};
use super::super::ws::{self, Incoming, Msg};
use super::super::Ctx;
use super::{drained, iteration_rng, open_window, pick, place, progress, Placed};
use crate::domain::Location;
use crate::realtime::messages::ClientCommand;

/// How long simulators may take to connect their feeds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before a simulator reconnects a dropped feed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// How long a tracking socket may take to close after the order completes.
const TRACK_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The messages each simulated client acts on; of the rest it reads only `type` and `ts`
/// ([`Msg::read`]).
const TRACK_ACTS_ON: &[&str] = &["snapshot", "status"];
/// See [`TRACK_ACTS_ON`].
const MERCHANT_ACTS_ON: &[&str] = &["snapshot", "new_order", "ack", "error"];
/// See [`TRACK_ACTS_ON`].
const RIDER_ACTS_ON: &[&str] = &[
    "snapshot",
    "offer",
    "ack",
    "error",
    "offer_withdrawn",
    "assigned",
];

/// Who is waiting for which order's delivery.
#[derive(Default)]
struct Waiters {
    /// Order id -> the customer's wake-up.
    map: Mutex<HashMap<String, oneshot::Sender<Result<Instant, String>>>>,
}

impl Waiters {
    fn wait(&self, order: &str) -> oneshot::Receiver<Result<Instant, String>> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(order.to_string(), tx);
        rx
    }

    fn wake(&self, order: &str, outcome: Result<Instant, String>) {
        if let Some(tx) = self.lock().remove(order) {
            let _ = tx.send(outcome);
        }
    }

    fn forget(&self, order: &str) {
        self.lock().remove(order);
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Result<Instant, String>>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Failure counts by reason, for the verdicts.
#[derive(Default)]
struct Failures {
    /// Reason -> count.
    map: Mutex<HashMap<String, u64>>,
    /// Total.
    total: AtomicU64,
}

impl Failures {
    fn add(&self, reason: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        *self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.to_string())
            .or_default() += 1;
    }

    fn summary(&self) -> String {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        v.sort();
        v.join(", ")
    }
}

/// Shared by the simulators and the virtual users.
struct Sim {
    /// The run.
    ctx: Arc<Ctx>,
    /// Customers waiting for delivery.
    waiters: Waiters,
    /// Orders that did not make it to completed.
    order_failures: Failures,
    /// Tracking sockets that did not see completion and a normal close.
    track_failures: Failures,
    /// Whether this is `track`.
    track: bool,
}

/// Runs lifecycle (`track` false) or track.
pub(super) async fn run(ctx: Arc<Ctx>, track: bool) -> (Duration, Vec<Check>) {
    let sim = Arc::new(Sim {
        ctx: ctx.clone(),
        waiters: Waiters::default(),
        order_failures: Failures::default(),
        track_failures: Failures::default(),
        track,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(64);
    let mut sims = Vec::new();
    for m in ctx.world.merchants.clone() {
        sims.push(tokio::spawn(merchant(
            sim.clone(),
            m,
            ready_tx.clone(),
            stop_rx.clone(),
        )));
    }
    for (i, r) in ctx.world.riders.clone().into_iter().enumerate() {
        sims.push(tokio::spawn(rider(
            sim.clone(),
            r,
            i as u64,
            ready_tx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(ready_tx);
    let expected = ctx.world.merchants.len() + ctx.world.riders.len();
    let mut connected = 0;
    let mut problems = Vec::new();
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    while connected + problems.len() < expected {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => connected += 1,
            Ok(Some(Err(e))) => problems.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    let feeds = Check::new(
        "simulated merchants and riders connected their feed sockets",
        connected == expected,
        format!(
            "{connected} of {expected} connected; first problems: {:?}",
            problems.iter().take(3).collect::<Vec<_>>()
        ),
    );
    if connected < expected {
        let _ = stop_tx.send(true);
        for s in sims {
            s.abort();
        }
        return (Duration::ZERO, vec![feeds]);
    }

    let (start, until) = open_window(&ctx);
    let bar = progress(&ctx, ctx.plan.warmup + ctx.plan.duration);
    let s = sim.clone();
    let driven = drive(
        ctx.plan.load,
        start,
        until,
        None,
        Duration::from_secs_f64(ctx.plan.args.drain),
        move |it| {
            let sim = s.clone();
            async move { customer(&sim, it).await }
        },
    )
    .await;
    drop(bar);
    let _ = stop_tx.send(true);
    for s in sims {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    let failed = sim.order_failures.total.load(Ordering::Relaxed);
    let mut checks = vec![
        feeds,
        drained(&driven),
        Check::new(
            "every order placed was delivered and confirmed",
            failed == 0,
            format!("{failed} did not: {}", sim.order_failures.summary()),
        ),
    ];
    if track {
        let bad = sim.track_failures.total.load(Ordering::Relaxed);
        checks.push(Check::new(
            "every tracking socket saw completed and a normal close",
            bad == 0,
            format!("{bad} did not: {}", sim.track_failures.summary()),
        ));
    }
    (ctx.plan.duration, checks)
}

/// One virtual user's iteration: order, pay, wait for delivery, confirm.
async fn customer(sim: &Arc<Sim>, it: super::super::model::Iteration) {
    let ctx = &sim.ctx;
    let mut rng = iteration_rng(ctx, it.seq);
    let (merchant, sku) = pick(ctx, &mut rng);
    let ci = (it.seq as usize) % ctx.world.customers.len().max(1);
    let Some(cust) = ctx.world.customers.get(ci) else {
        return;
    };
    let id = match place(ctx, it, ci, merchant, &sku, 1, false).await {
        Placed::Created(id) => id,
        Placed::OutOfStock => {
            sim.order_failures.add("create 409 out_of_stock");
            return;
        }
        Placed::Failed(k) => {
            sim.order_failures.add(&format!("create {k}"));
            return;
        }
    };
    let delivered = sim.waiters.wait(&id);
    let mut watchers = Vec::new();
    if sim.track {
        for w in 0..ctx.plan.args.watchers {
            let token = if w == 0 {
                cust.token.clone()
            } else {
                ctx.admin.clone()
            };
            let (sub_tx, sub_rx) = oneshot::channel();
            watchers.push(tokio::spawn(watch_order(
                sim.clone(),
                id.clone(),
                token,
                w == 0,
                sub_tx,
            )));
            // Pay only once every watcher has its snapshot, so no event is missed.
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, sub_rx).await;
        }
    }
    let t = Instant::now();
    let paid = ctx
        .http
        .post(&format!("/v1/orders/{id}/pay"), &cust.token, None)
        .await;
    if !record(ctx, "pay", t, &paid) {
        sim.waiters.forget(&id);
        sim.order_failures
            .add(&format!("pay {}", super::super::http::kind(&paid)));
        return;
    }
    let timeout = Duration::from_secs_f64(ctx.plan.args.order_timeout);
    let delivered_at = match tokio::time::timeout(timeout, delivered).await {
        Ok(Ok(Ok(at))) => at,
        Ok(Ok(Err(reason))) => {
            sim.order_failures.add(&reason);
            return;
        }
        Ok(Err(_)) | Err(_) => {
            sim.waiters.forget(&id);
            sim.order_failures
                .add("not delivered within --order-timeout");
            return;
        }
    };
    let t = Instant::now();
    let confirmed = ctx
        .http
        .post(&format!("/v1/orders/{id}/confirm"), &cust.token, None)
        .await;
    if !record(ctx, "confirm", t, &confirmed) {
        sim.order_failures
            .add(&format!("confirm {}", super::super::http::kind(&confirmed)));
        return;
    }
    ctx.rec.op("whole_order", it.intended, Class::Ok);
    ctx.rec.order_done(it.intended, delivered_at);
    for w in watchers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => sim.track_failures.add(&reason),
            Err(_) => sim.track_failures.add("watcher task failed"),
        }
    }
}

/// Records a REST operation; true when it was 2xx.
fn record(ctx: &Ctx, op: &'static str, started: Instant, o: &super::super::http::Outcome) -> bool {
    let ok = matches!(o, Ok(r) if r.ok());
    let class = match o {
        _ if ok => Class::Ok,
        Ok(r) if r.shed() => Class::Shed(super::super::http::kind(o)),
        _ => Class::Error(super::super::http::kind(o)),
    };
    ctx.rec.op(op, started, class);
    ok
}

/// One tracking socket on order `id`: signals `subscribed` after the snapshot, records event
/// latency, wakes the customer on `delivered` when it is the customer's, and must see
/// `completed` then a normal close.
async fn watch_order(
    sim: Arc<Sim>,
    id: String,
    token: String,
    customers: bool,
    subscribed: oneshot::Sender<()>,
) -> Result<(), String> {
    let ctx = &sim.ctx;
    let t = Instant::now();
    let mut sock = match ws::connect(
        ctx.http.next_base(),
        &format!("/v1/orders/{id}/track"),
        &token,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            ctx.rec
                .op("track_connect", t, Class::Error("ws connect".into()));
            if customers {
                sim.waiters.wake(&id, Err(format!("track socket: {e}")));
            }
            return Err("ws connect failed".into());
        }
    };
    let mut subscribed = Some(subscribed);
    let mut key = Key::default();
    let mut completed = false;
    let timeout = Duration::from_secs_f64(ctx.plan.args.order_timeout) + TRACK_CLOSE_TIMEOUT;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws::next(&mut sock)).await {
            Ok(m) => m,
            Err(_) => {
                return Err(if completed {
                    "no close after completed"
                } else {
                    "no completed"
                }
                .into())
            }
        };
        match msg {
            Incoming::Text(text) => {
                let Some(v) = Msg::read(&text, TRACK_ACTS_ON) else {
                    continue;
                };
                if let Some(ts) = v.ts {
                    ctx.rec.event(key.of("track:", v.kind.as_str()), ts);
                }
                // From the change itself (its `at`) rather than from the publish on the
                // socket's node: in a cluster this includes the outbox relay and the broker.
                if let Some(at) = v.at {
                    ctx.rec
                        .event(key.of2("track:", v.kind.as_str(), " since change"), at);
                }
                match v.kind.as_str() {
                    "snapshot" => {
                        if let Some(s) = subscribed.take() {
                            ctx.rec.op("track_connect", t, Class::Ok);
                            let _ = s.send(());
                        }
                    }
                    "status" => {
                        let status = v.status.as_deref().unwrap_or("");
                        if status == "delivered" && customers {
                            sim.waiters.wake(&id, Ok(Instant::now()));
                        }
                        if status == "completed" {
                            completed = true;
                        }
                    }
                    _ => {}
                }
            }
            Incoming::Closed(code) => {
                return if completed && code == Some(ws::normal_close()) {
                    Ok(())
                } else {
                    Err(format!("closed with {code:?}, completed={completed}"))
                };
            }
            Incoming::Broken(e) => return Err(format!("broken: {e}")),
        }
    }
}

/// A simulated merchant: accepts every paid order from its feed.
async fn merchant(
    sim: Arc<Sim>,
    m: SimMerchant,
    ready: mpsc::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) {
    let ctx = &sim.ctx;
    let path = format!("/v1/merchants/{}/feed", m.id);
    let mut ready = Some(ready);
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut key = Key::default();
    while !*stop.borrow() {
        let sock = match ws::connect(ctx.http.base_for(&m.token), &path, &m.token).await {
            Ok(s) => s,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(format!("merchant feed: {e}"))).await;
                    return;
                }
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(())).await;
        }
        let (tx, mut rx) = ws::split(sock);
        loop {
            let msg = tokio::select! {
                _ = stop.changed() => {
                    tx.close().await;
                    return;
                }
                m = ws::next(&mut rx) => m,
            };
            let text = match msg {
                Incoming::Text(t) => t,
                Incoming::Closed(_) | Incoming::Broken(_) => break,
            };
            let Some(v) = Msg::read(&text, MERCHANT_ACTS_ON) else {
                continue;
            };
            if let Some(ts) = v.ts {
                ctx.rec.event(key.of("merchant:", v.kind.as_str()), ts);
            }
            let oid = v.order();
            match v.kind.as_str() {
                "snapshot" => {
                    for o in &v.orders {
                        if o.status.as_str() == "paid" && !o.id.as_str().is_empty() {
                            accept(&tx, o.id.as_str(), &mut pending).await;
                        }
                    }
                }
                "new_order" => accept(&tx, oid, &mut pending).await,
                "ack" => {
                    if let Some(t) = pending.remove(oid) {
                        ctx.rec.op("merchant_accept_ws", t, Class::Ok);
                        ctx.ledger.accepted(oid);
                    }
                }
                "error" => {
                    if let Some(t) = pending.remove(oid) {
                        let code = v.code.as_deref().unwrap_or("");
                        ctx.rec
                            .op("merchant_accept_ws", t, Class::Error(format!("ws {code}")));
                    }
                }
                _ => {}
            }
        }
        // Accepts the lost socket never answered are not assumed done: the next snapshot lists
        // every order still paid, and those are accepted again (marking them done left orders
        // paid for good when the node cut the socket with accepts in flight).
        pending.clear();
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// A merchant accepts order `id` on its feed, once while the accept is unanswered.
async fn accept(tx: &ws::Writer, id: &str, pending: &mut HashMap<String, Instant>) {
    if pending.contains_key(id) {
        return;
    }
    let accept = ClientCommand::Accept {
        order_id: id.to_string(),
    };
    let t = Instant::now();
    if tx.send(ws::command(&accept)).await {
        pending.insert(id.to_string(), t);
    }
}

/// An offer the rider holds.
#[derive(Debug, Clone, Copy)]
struct Offer {
    /// The merchant.
    pickup: Location,
    /// The customer.
    dropoff: Location,
}

/// A reused buffer for the names events are recorded under (`merchant:new_order`, ...): one
/// `format!` per event was an allocation each.
#[derive(Default)]
struct Key(String);

impl Key {
    /// `prefix` + `kind`.
    fn of(&mut self, prefix: &str, kind: &str) -> &str {
        self.of2(prefix, kind, "")
    }

    /// `prefix` + `kind` + `suffix`.
    fn of2(&mut self, prefix: &str, kind: &str, suffix: &str) -> &str {
        self.0.clear();
        self.0.push_str(prefix);
        self.0.push_str(kind);
        self.0.push_str(suffix);
        &self.0
    }
}

/// A simulated rider: online at a random spot, accepts offers, rides them.
async fn rider(
    sim: Arc<Sim>,
    r: SimRider,
    index: u64,
    ready: mpsc::Sender<Result<(), String>>,
    stop: watch::Receiver<bool>,
) {
    let ctx = &sim.ctx;
    let mut rng = rng(Some(ctx.plan.seed), 1_000_000 + index);
    let here = Arc::new(Mutex::new(random_spot(&mut rng)));
    let start = *here.lock().unwrap_or_else(|p| p.into_inner());
    let t = Instant::now();
    let online = ctx
        .http
        .post(
            &format!("/v1/riders/{}/online", r.id),
            &r.token,
            Some(&json!({ "location": start })),
        )
        .await;
    if !record(ctx, "rider_online", t, &online) {
        let _ = ready
            .send(Err(format!(
                "rider online: {}",
                super::super::http::kind(&online)
            )))
            .await;
        return;
    }
    rider_feed(&sim, &r, &here, ready, stop).await;
    // Leave no idle rider behind: the dispatcher would offer later runs' orders to it.
    let t = Instant::now();
    let off = ctx
        .http
        .post(&format!("/v1/riders/{}/offline", r.id), &r.token, None)
        .await;
    record(ctx, "rider_offline", t, &off);
}

/// A rider's feed session(s) until `stop`: accepts offers and starts trips.
async fn rider_feed(
    sim: &Arc<Sim>,
    r: &SimRider,
    here: &Arc<Mutex<Location>>,
    ready: mpsc::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) {
    let ctx = &sim.ctx;
    let path = format!("/v1/riders/{}/feed", r.id);
    let mut ready = Some(ready);
    let mut offers: HashMap<String, Offer> = HashMap::new();
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut riding: HashSet<String> = HashSet::new();
    let mut key = Key::default();
    while !*stop.borrow() {
        let sock = match ws::connect(ctx.http.base_for(&r.token), &path, &r.token).await {
            Ok(s) => s,
            Err(e) => {
                if let Some(rd) = ready.take() {
                    let _ = rd.send(Err(format!("rider feed: {e}"))).await;
                    return;
                }
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        if let Some(rd) = ready.take() {
            let _ = rd.send(Ok(())).await;
        }
        let (tx, mut rx) = ws::split(sock);
        loop {
            let msg = tokio::select! {
                _ = stop.changed() => {
                    tx.close().await;
                    return;
                }
                m = ws::next(&mut rx) => m,
            };
            let text = match msg {
                Incoming::Text(t) => t,
                Incoming::Closed(_) | Incoming::Broken(_) => break,
            };
            let Some(v) = Msg::read(&text, RIDER_ACTS_ON) else {
                continue;
            };
            if let Some(ts) = v.ts {
                ctx.rec.event(key.of("rider:", v.kind.as_str()), ts);
            }
            let offer_msg = match v.kind.as_str() {
                "offer" => Some(&v),
                "snapshot" => v.offer.as_deref(),
                _ => None,
            };
            if let Some(o) = offer_msg {
                let (oid, Some(pickup), Some(dropoff)) = (o.order(), o.pickup, o.dropoff) else {
                    continue;
                };
                if oid.is_empty() {
                    continue;
                }
                offers.insert(oid.to_string(), Offer { pickup, dropoff });
                let accept = ClientCommand::Accept {
                    order_id: oid.to_string(),
                };
                let t = Instant::now();
                if tx.send(ws::command(&accept)).await {
                    pending.insert(oid.to_string(), t);
                }
                continue;
            }
            let oid = v.order();
            match v.kind.as_str() {
                "ack" => {
                    if let Some(t) = pending.remove(oid) {
                        ctx.rec.op("rider_accept_ws", t, Class::Ok);
                    }
                    if v.status.as_deref() == Some("rider_assigned") {
                        start_trip(sim, r, oid, &offers, &mut riding, here, &tx);
                    }
                }
                "error" => {
                    if let Some(t) = pending.remove(oid) {
                        let code = v.code.as_deref().unwrap_or("");
                        ctx.rec
                            .op("rider_accept_ws", t, Class::Error(format!("ws {code}")));
                    }
                }
                "offer_withdrawn" => {
                    offers.remove(oid);
                }
                "assigned" => start_trip(sim, r, oid, &offers, &mut riding, here, &tx),
                _ => {}
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Starts riding order `oid` once (it must have been offered).
fn start_trip(
    sim: &Arc<Sim>,
    r: &SimRider,
    oid: &str,
    offers: &HashMap<String, Offer>,
    riding: &mut HashSet<String>,
    here: &Arc<Mutex<Location>>,
    tx: &ws::Writer,
) {
    if oid.is_empty() || !riding.insert(oid.to_string()) {
        return;
    }
    let Some(offer) = offers.get(oid).copied() else {
        sim.waiters.wake(
            oid,
            Err("rider assigned an order it was not offered".into()),
        );
        return;
    };
    tokio::spawn(trip(
        sim.clone(),
        r.clone(),
        oid.to_string(),
        offer,
        here.clone(),
        tx.clone(),
    ));
}

/// Moves `steps` location updates from `from` to `to`; returns `to`.
async fn travel(sim: &Sim, from: Location, to: Location, tx: &ws::Writer) -> Location {
    let steps = sim.ctx.plan.args.rider_steps.max(1);
    for i in 1..=steps {
        tokio::time::sleep(Duration::from_millis(sim.ctx.plan.args.step_ms)).await;
        let f = f64::from(i) / f64::from(steps);
        let lat = from.lat + (to.lat - from.lat) * f;
        let lng = from.lng + (to.lng - from.lng) * f;
        let _ = tx
            .send(ws::command(&ClientCommand::Location { lat, lng }))
            .await;
    }
    to
}

/// Rides an assigned order: to the merchant, pick up, to the customer, deliver.
async fn trip(
    sim: Arc<Sim>,
    r: SimRider,
    oid: String,
    offer: Offer,
    here: Arc<Mutex<Location>>,
    tx: ws::Writer,
) {
    let ctx = &sim.ctx;
    let from = *here.lock().unwrap_or_else(|p| p.into_inner());
    let at = travel(&sim, from, offer.pickup, &tx).await;
    *here.lock().unwrap_or_else(|p| p.into_inner()) = at;
    let t = Instant::now();
    let o = ctx
        .http
        .post(
            &format!("/v1/riders/{}/orders/{oid}/pickup", r.id),
            &r.token,
            None,
        )
        .await;
    if !record(ctx, "pickup", t, &o) {
        sim.waiters.wake(
            &oid,
            Err(format!("pickup {}", super::super::http::kind(&o))),
        );
        return;
    }
    let at = travel(&sim, at, offer.dropoff, &tx).await;
    *here.lock().unwrap_or_else(|p| p.into_inner()) = at;
    let t = Instant::now();
    let o = ctx
        .http
        .post(
            &format!("/v1/riders/{}/orders/{oid}/deliver", r.id),
            &r.token,
            None,
        )
        .await;
    if !record(ctx, "deliver", t, &o) {
        sim.waiters.wake(
            &oid,
            Err(format!("deliver {}", super::super::http::kind(&o))),
        );
        return;
    }
    if !sim.track {
        sim.waiters.wake(&oid, Ok(Instant::now()));
    }
}
