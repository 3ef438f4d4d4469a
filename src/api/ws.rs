//! Websockets: order tracking, the merchant feed and the rider feed.
//!
//! Each upgrade authenticates first (bearer header or `?token=`), subscribes to its hub topic,
//! then takes its snapshot through the owning actor (or the store for a merchant's open orders),
//! so nothing published in between is lost; buffered events the snapshot already covers are
//! dropped by order version. Refusals (bad token, not yours) are ordinary JSON errors before any
//! upgrade. Once open, a socket is dropped with a close reason when it falls `buffer` events
//! behind (slow), when one write stalls (`send_timeout_ms`), or when it stays silent for two
//! heartbeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use warp::reply::Response;
use warp::ws::{Message, WebSocket, Ws};
use warp::Reply;

use super::{ApiError, ApiState};
use crate::actors::order_machine::{OrderEvent, OrderStatus};
use crate::domain::{now_ms, Caller, Location, Role};
use crate::error::Error;
use crate::messages::{AnswerOffer, ChangeOrder, CurrentOffer, GetOrder, GetRider, UpdateLocation};
use crate::metrics;
use crate::realtime::messages::ClientCommand as Command;
use crate::realtime::{messages as wire, Event, Subscription, Topic};

type Outcome = Result<Response, ApiError>;

/// Close codes (RFC 6455 and the registered 1013).
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const POLICY: u16 = 1008;
const TRY_LATER: u16 = 1013;

/// The bearer token from the header, or from `?token=` for browsers.
pub(super) fn bearer(header: Option<String>, query: &HashMap<String, String>) -> Option<String> {
    header.or_else(|| query.get("token").map(|t| format!("Bearer {t}")))
}

fn check_id(kind: &'static str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 {
        return Err(Error::not_found(kind, id.chars().take(64).collect::<String>()).into());
    }
    Ok(())
}

/// What a socket's inbound commands act on.
#[derive(Clone)]
enum Commands {
    /// Tracking sockets only listen.
    None,
    /// A merchant accepts or rejects its orders.
    Merchant { caller: Caller, merchant_id: String },
    /// A rider answers offers and streams its position.
    Rider { caller: Caller, rider_id: String },
}

/// Most commands of one socket awaiting their answer; a client past it is closed (1008).
const MAX_INFLIGHT_COMMANDS: usize = 256;
/// Most frames (queued events, answers already made) gathered into one write: a few hundred
/// bytes each, well inside the websocket's 128 KiB write buffer, so they leave in one flush.
const MAX_FRAMES_PER_WRITE: usize = 64;

/// One open socket's state.
struct Session {
    kind: &'static str,
    st: Arc<ApiState>,
    sub: Subscription,
    snapshot: String,
    /// Latest version delivered per order (snapshot included).
    seen: HashMap<String, i64>,
    /// Unversioned events at or below this sequence are covered by the snapshot.
    min_seq: u64,
    /// Tracking: the snapshot is already terminal, close right after it.
    done: Option<OrderStatus>,
    close_on_terminal: bool,
    commands: Commands,
}

/// `GET /v1/orders/{id}/track`: follows an order (websocket; messages in `docs/ws/track.*`).
#[utoipa::path(get, path = "/v1/orders/{id}/track", tag = "orders",
    params(("id" = String, Path, description = "Order id"),
        ("token" = Option<String>, Query, description = "The bearer token, for browsers")),
    security(("bearer" = ["customer", "merchant", "rider", "admin"])),
    responses((status = 101, description = "Switching to the websocket")))]
pub(super) async fn track(
    st: Arc<ApiState>,
    ws: Ws,
    auth: Option<String>,
    query: HashMap<String, String>,
    id: String,
) -> Outcome {
    let caller = st.auth.caller(bearer(auth, &query).as_deref())?;
    check_id("order", &id)?;
    let sub = st.hub.subscribe(Topic::Order(id.clone()));
    let order = st.router.send(&id, GetOrder { caller }).await?;
    let snapshot = wire::with_type(
        "snapshot",
        &wire::TrackSnapshot {
            order_id: order.id.clone(),
            version: order.version,
            seq: st.hub.last_seq(),
            ts: now_ms(),
            order: order.clone(),
        },
    );
    let session = Session {
        kind: "track",
        st: st.clone(),
        sub,
        snapshot,
        seen: HashMap::from([(order.id.clone(), order.version)]),
        min_seq: 0,
        done: order.status.is_terminal().then_some(order.status),
        close_on_terminal: true,
        commands: Commands::None,
    };
    Ok(upgrade(ws, session))
}

/// `GET /v1/merchants/{id}/feed`: the merchant's orders, live (websocket; messages in
/// `docs/ws/merchant_feed.*`).
#[utoipa::path(get, path = "/v1/merchants/{id}/feed", tag = "merchants",
    params(("id" = String, Path, description = "Merchant id"),
        ("token" = Option<String>, Query, description = "The bearer token, for browsers")),
    security(("bearer" = ["merchant", "admin"])),
    responses((status = 101, description = "Switching to the websocket")))]
pub(super) async fn merchant_feed(
    st: Arc<ApiState>,
    ws: Ws,
    auth: Option<String>,
    query: HashMap<String, String>,
    id: String,
) -> Outcome {
    let caller = st.auth.caller(bearer(auth, &query).as_deref())?;
    check_id("merchant", &id)?;
    if !caller.is(Role::Merchant, &id) {
        return Err(Error::Forbidden("only this merchant may follow its feed".into()).into());
    }
    let sub = st.hub.subscribe(Topic::Merchant(id.clone()));
    let active = [
        OrderStatus::Paid,
        OrderStatus::Accepted,
        OrderStatus::RiderAssigned,
        OrderStatus::PickedUp,
    ];
    let orders = st
        .store
        .orders_in(&active, Some(&id))
        .await
        .map_err(Error::from)?;
    let seen = orders.iter().map(|o| (o.id.clone(), o.version)).collect();
    let snapshot = wire::with_type(
        "snapshot",
        &wire::MerchantSnapshot {
            merchant_id: id.clone(),
            seq: st.hub.last_seq(),
            ts: now_ms(),
            orders,
        },
    );
    let session = Session {
        kind: "merchant_feed",
        st: st.clone(),
        sub,
        snapshot,
        seen,
        min_seq: 0,
        done: None,
        close_on_terminal: false,
        commands: Commands::Merchant {
            caller,
            merchant_id: id,
        },
    };
    Ok(upgrade(ws, session))
}

/// `GET /v1/riders/{id}/feed`: the rider's offers and orders, live (websocket; messages in
/// `docs/ws/rider_feed.*`).
#[utoipa::path(get, path = "/v1/riders/{id}/feed", tag = "riders",
    params(("id" = String, Path, description = "Rider id"),
        ("token" = Option<String>, Query, description = "The bearer token, for browsers")),
    security(("bearer" = ["rider", "admin"])),
    responses((status = 101, description = "Switching to the websocket")))]
pub(super) async fn rider_feed(
    st: Arc<ApiState>,
    ws: Ws,
    auth: Option<String>,
    query: HashMap<String, String>,
    id: String,
) -> Outcome {
    let caller = st.auth.caller(bearer(auth, &query).as_deref())?;
    check_id("rider", &id)?;
    if !caller.is(Role::Rider, &id) {
        return Err(Error::Forbidden("only this rider may follow its feed".into()).into());
    }
    let sub = st.hub.subscribe(Topic::Rider(id.clone()));
    let min_seq = st.hub.last_seq();
    let rider = st.router.send(&id, GetRider).await?;
    let offer = st
        .router
        .send(
            &id,
            CurrentOffer {
                rider_id: id.clone(),
            },
        )
        .await?;
    let snapshot = wire::with_type(
        "snapshot",
        &wire::RiderSnapshot {
            rider_id: id.clone(),
            seq: min_seq,
            ts: now_ms(),
            rider,
            offer,
        },
    );
    let session = Session {
        kind: "rider_feed",
        st: st.clone(),
        sub,
        snapshot,
        seen: HashMap::new(),
        min_seq,
        done: None,
        close_on_terminal: false,
        commands: Commands::Rider {
            caller,
            rider_id: id,
        },
    };
    Ok(upgrade(ws, session))
}

fn upgrade(ws: Ws, session: Session) -> Response {
    ws.max_message_size(16 * 1024)
        .on_upgrade(move |socket| run(socket, session))
        .into_response()
}

/// True when the snapshot (or an earlier event) already covered `ev`.
fn covered(s: &mut Session, ev: &Event) -> bool {
    match (&ev.order_id, ev.version) {
        (Some(order), Some(v)) => {
            if s.seen.get(order).is_some_and(|seen| *seen >= v) {
                return true;
            }
            if ev.status.is_some_and(OrderStatus::is_terminal) && !s.close_on_terminal {
                s.seen.remove(order); // nothing follows a terminal status
            } else {
                s.seen.insert(order.clone(), v);
            }
            false
        }
        _ => ev.seq <= s.min_seq,
    }
}

async fn run(socket: WebSocket, mut s: Session) {
    let kind = s.kind;
    metrics::WS_OPEN.with_label_values(&[kind]).inc();
    let frames_sent = metrics::WS_SENT.with_label_values(&[kind]);
    let cfg = s.st.realtime.clone();
    let heartbeat = Duration::from_millis(cfg.heartbeat_ms.max(10));
    let send_timeout = Duration::from_millis(cfg.send_timeout_ms.max(10));
    let (mut tx, mut rx) = socket.split();

    // Runs one write to the socket (a frame's `tx.send(..)`, or a burst's `tx.send_all(..)`)
    // under one deadline; false when the client stalled or went away.
    macro_rules! io {
        ($write:expr) => {
            match tokio::time::timeout(send_timeout, $write).await {
                Ok(Ok(())) => true,
                Ok(Err(_)) => false,
                Err(_) => {
                    metrics::WS_DROPS
                        .with_label_values(&[kind, "stalled"])
                        .inc();
                    false
                }
            }
        };
    }
    // Writes one frame and flushes it.
    macro_rules! send {
        ($msg:expr) => {
            io!(tx.send($msg))
        };
    }
    // Sends a close frame, then lets the client answer it (the closing handshake) before the
    // connection is dropped, so the client reads the reason instead of a reset.
    macro_rules! close {
        ($code:expr, $why:expr) => {{
            let sent = tokio::time::timeout(
                send_timeout,
                tx.send(Message::close_with($code, $why.to_string())),
            )
            .await;
            if matches!(sent, Ok(Ok(()))) {
                let _ = tokio::time::timeout(send_timeout, async {
                    while let Some(Ok(m)) = rx.next().await {
                        if m.is_close() {
                            break;
                        }
                    }
                })
                .await;
            }
        }};
    }

    let snapshot = std::mem::take(&mut s.snapshot);
    if send!(Message::text(snapshot)) {
        frames_sent.inc();
        if let Some(status) = s.done {
            close!(NORMAL, format!("order is {status}"));
        } else {
            let mut ping = tokio::time::interval(heartbeat);
            ping.tick().await;
            let mut last_heard = Instant::now();
            let mut inflight = futures::stream::FuturesOrdered::new();
            let mut moves = Moves::new(Duration::from_millis(cfg.location_hold_ms));
            // Frames for the next write (kept for its capacity), and an event just taken off
            // the queue.
            let mut out: Vec<Message> = Vec::new();
            let mut first = None;
            loop {
                tokio::select! {
                    ev = s.sub.rx.recv() => {
                        let Some(ev) = ev else {
                            if s.sub.was_slow() {
                                metrics::WS_DROPS.with_label_values(&[kind, "slow"]).inc();
                                close!(POLICY, format!("slow consumer: more than {} events behind", cfg.buffer));
                            } else {
                                close!(GOING_AWAY, "event stream ended");
                            }
                            break;
                        };
                        first = Some(ev);
                    }
                    msg = rx.next() => {
                        let msg = match msg {
                            Some(Ok(m)) => m,
                            _ => break,
                        };
                        last_heard = Instant::now();
                        if msg.is_close() {
                            break;
                        }
                        let Ok(text) = msg.to_str() else {
                            continue; // pings and pongs
                        };
                        // Commands run side by side (a merchant accepting many orders waits
                        // on each one's commit): awaiting each here stalled the socket's
                        // events behind them until the hub cut it off as a slow consumer.
                        // They are started in arrival order, so one entity's mailbox still
                        // gets them in order; replies go out as they finish.
                        if inflight.len() >= MAX_INFLIGHT_COMMANDS {
                            close!(POLICY, format!("more than {MAX_INFLIGHT_COMMANDS} commands unanswered"));
                            break;
                        }
                        let cmd = serde_json::from_str::<Command>(text);
                        if let (Ok(Command::Location { lat, lng }), Commands::Rider { .. }) = (&cmd, &s.commands) {
                            if moves.hold(Location { lat: *lat, lng: *lng }) {
                                continue;
                            }
                        }
                        inflight.push_back(command(s.st.clone(), s.commands.clone(), kind, cmd));
                    }
                    () = &mut moves.timer, if moves.held.is_some() => {
                        if let Some(Location { lat, lng }) = moves.release() {
                            inflight.push_back(command(s.st.clone(), s.commands.clone(), kind, Ok(Command::Location { lat, lng })));
                        }
                    }
                    Some(reply) = inflight.next(), if !inflight.is_empty() => {
                        if let Some(reply) = reply {
                            out.push(Message::text(reply));
                        }
                    }
                    _ = ping.tick() => {
                        if last_heard.elapsed() > heartbeat * 2 {
                            metrics::WS_DROPS.with_label_values(&[kind, "heartbeat"]).inc();
                            close!(TRY_LATER, "heartbeat timeout");
                            break;
                        }
                        if !send!(Message::ping(Vec::new())) {
                            break;
                        }
                    }
                }
                if first.is_none() && out.is_empty() {
                    continue;
                }
                // Whatever else is ready goes out in the same write: the events queued behind
                // this one, and answers already made (a merchant's `accept` and the `accepted`
                // event of the same commit come together). Each write is a system call on both
                // ends of the socket.
                let mut ended = None;
                let mut next = first.take().or_else(|| s.sub.rx.try_recv().ok());
                while let Some(ev) = next.take() {
                    if !covered(&mut s, &ev) {
                        out.push(Message::text(ev.text.clone()));
                        metrics::WS_EVENT_SECONDS.observe(ev.published.elapsed().as_secs_f64());
                        if s.close_on_terminal {
                            ended = ev.status.filter(|st| st.is_terminal());
                            if ended.is_some() {
                                break;
                            }
                        }
                    }
                    if out.len() < MAX_FRAMES_PER_WRITE {
                        next = s.sub.rx.try_recv().ok();
                    }
                }
                while ended.is_none() && out.len() < MAX_FRAMES_PER_WRITE {
                    // Polled without waiting; the `select!` above polls it again at once, so
                    // an answer finishing later still wakes this task.
                    match inflight.next().now_or_never() {
                        Some(Some(Some(reply))) => out.push(Message::text(reply)),
                        Some(Some(None)) => {} // a command with no answer (a position)
                        Some(None) | None => break,
                    }
                }
                let frames = out.len() as u64;
                // Fed one by one, flushed once, under one deadline (as a single frame was).
                let wrote = frames == 0
                    || io!(tx.send_all(&mut futures::stream::iter(out.drain(..).map(Ok))));
                if !wrote {
                    break;
                }
                frames_sent.inc_by(frames);
                if let Some(status) = ended {
                    close!(NORMAL, format!("order is {status}"));
                    break;
                }
            }
            // A position still held when the socket ends is the rider's newest: it goes on.
            if let (Some(location), Commands::Rider { caller, rider_id }) =
                (moves.held.take(), &s.commands)
            {
                s.st.router.notify(
                    rider_id,
                    UpdateLocation {
                        caller: caller.clone(),
                        location,
                    },
                );
            }
        }
    }
    metrics::WS_OPEN.with_label_values(&[kind]).dec();
}

fn ack(order_id: &str, status: Option<OrderStatus>, version: Option<i64>) -> String {
    wire::with_type(
        "ack",
        &wire::CommandAck {
            order_id: order_id.to_string(),
            status,
            version,
            ts: now_ms(),
        },
    )
}

fn error(order_id: Option<&str>, e: ApiError) -> String {
    wire::with_type(
        "error",
        &wire::CommandError {
            order_id: order_id.map(str::to_string),
            code: e.code().to_string(),
            message: e.to_string(),
            ts: now_ms(),
        },
    )
}

/// A rider socket's positions on their way to its actor: at most one per `hold` goes on, and a
/// newer one replaces a held one, which goes when the interval ends. The rider's last known
/// position is all the node keeps (dispatch and trackers read it), so an app streaming several
/// fixes a second costs the node one position a second, not one actor round trip per fix.
struct Moves {
    hold: Duration,
    /// When the last position went on.
    last: Option<Instant>,
    /// The newest position not yet passed on.
    held: Option<Location>,
    /// Fires when `held` may go.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Moves {
    fn new(hold: Duration) -> Self {
        Moves {
            hold,
            last: None,
            held: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// True when `at` is held for later; false when it goes on now (a zero hold, the first
    /// position or one an interval after the last, and an invalid one, refused at once).
    fn hold(&mut self, at: Location) -> bool {
        if at.validate().is_err() {
            return false;
        }
        let now = Instant::now();
        match self.last {
            Some(last) if !self.hold.is_zero() && now < last + self.hold => {
                if self.held.replace(at).is_none() {
                    self.timer.as_mut().reset((last + self.hold).into());
                }
                true
            }
            _ => {
                self.held = None;
                self.last = Some(now);
                false
            }
        }
    }

    /// The held position, now that its interval ended.
    fn release(&mut self) -> Option<Location> {
        let at = self.held.take()?;
        self.last = Some(Instant::now());
        Some(at)
    }
}

/// Runs one inbound command; the reply to send back, if any.
async fn command(
    st: Arc<ApiState>,
    commands: Commands,
    kind: &'static str,
    cmd: serde_json::Result<Command>,
) -> Option<String> {
    let cmd = match cmd {
        Ok(c) => c,
        Err(e) => return Some(error(None, ApiError::InvalidBody(e.to_string()))),
    };
    let st = &st;
    match (&commands, cmd) {
        (
            Commands::Merchant {
                caller,
                merchant_id,
            },
            cmd @ (Command::Accept { .. } | Command::Reject { .. }),
        ) => {
            let (order_id, event) = match cmd {
                Command::Accept { order_id } => (order_id, OrderEvent::Accept),
                Command::Reject { order_id } => (order_id, OrderEvent::Reject),
                _ => return None,
            };
            if let Err(e) = check_id("order", &order_id) {
                return Some(error(Some(&order_id), e));
            }
            let res = st
                .router
                .send(
                    &order_id,
                    ChangeOrder {
                        caller: caller.clone(),
                        event,
                        party: Some(merchant_id.clone()),
                        expected_version: None,
                    },
                )
                .await;
            Some(match res {
                Ok(o) => ack(&o.id, Some(o.status), Some(o.version)),
                Err(e) => error(Some(&order_id), e.into()),
            })
        }
        (
            Commands::Rider { caller, rider_id },
            cmd @ (Command::Accept { .. } | Command::Decline { .. }),
        ) => {
            let (order_id, accept) = match cmd {
                Command::Accept { order_id } => (order_id, true),
                Command::Decline { order_id } => (order_id, false),
                _ => return None,
            };
            let res = st
                .router
                .send(
                    rider_id,
                    AnswerOffer {
                        caller: caller.clone(),
                        rider_id: rider_id.clone(),
                        order_id: order_id.clone(),
                        accept,
                    },
                )
                .await;
            Some(match res {
                Ok(o) => ack(&order_id, Some(o.status), Some(o.version)),
                Err(e) => error(Some(&order_id), e.into()),
            })
        }
        (Commands::Rider { caller, rider_id }, Command::Location { lat, lng }) => {
            let location = Location { lat, lng };
            if let Err(e) = location.validate() {
                return Some(error(None, ApiError::InvalidBody(e.to_string())));
            }
            let res = st
                .router
                .send(
                    rider_id,
                    UpdateLocation {
                        caller: caller.clone(),
                        location,
                    },
                )
                .await;
            res.err().map(|e| error(None, e.into()))
        }
        _ => Some(error(
            None,
            ApiError::InvalidBody(format!("this {kind} socket does not take that command")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lat: f64) -> Location {
        Location { lat, lng: 121.48 }
    }

    #[tokio::test]
    async fn the_first_position_goes_on_later_ones_wait_and_the_newest_wins() {
        let mut m = Moves::new(Duration::from_secs(60));
        assert!(!m.hold(at(31.0)), "the first goes on at once");
        assert!(m.hold(at(31.1)));
        assert!(m.hold(at(31.2)));
        assert!(
            !m.hold(at(123.0)),
            "an invalid one is not held (it is refused)"
        );
        assert_eq!(m.release(), Some(at(31.2)), "the newest replaced the older");
        assert_eq!(m.release(), None);
        assert!(m.hold(at(31.3)), "a release starts a new interval");
    }

    #[tokio::test]
    async fn a_zero_hold_passes_every_position_and_the_largest_one_holds() {
        let mut m = Moves::new(Duration::ZERO);
        assert!((0..5).all(|i| !m.hold(at(31.0 + f64::from(i) / 10.0))));
        let mut m = Moves::new(Duration::from_millis(u64::MAX));
        assert!(!m.hold(at(31.0)));
        assert!(
            m.hold(at(31.1)),
            "held (an interval of u64::MAX ms ahead fits an Instant)"
        );
    }
}
