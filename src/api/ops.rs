//! The live dispatch map: `GET /ops` (one self-contained page, built into the binary) and its
//! admin-only socket `GET /v1/ops/live`, which sends the node's operations view
//! (`realtime::ops`): a snapshot, then one delta per `realtime.ops_interval_ms`.
//!
//! The socket authenticates before the upgrade like the others (bearer header, or `?token=`
//! since a browser cannot set headers on a websocket) and refuses anyone but an admin with a
//! JSON error. The node's first watcher also reads the open orders from the store, so orders
//! opened before the node started are on the map before they next change. Once open it only listens for the close; a client that falls more than a few
//! frames behind gets a fresh snapshot rather than the deltas it missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use warp::reply::Response;
use warp::ws::{Message, WebSocket, Ws};
use warp::Reply;

use super::ws::bearer;
use super::{ApiError, ApiState};
use crate::actors::order_machine::OrderStatus;
use crate::error::Error;
use crate::metrics;
use crate::realtime::ops::Watch;

/// The page (HTML, CSS and script in one file; no external resources).
const PAGE: &str = include_str!("ops.html");

const KIND: &str = "ops_live";

/// `GET /ops`
pub(super) fn page() -> Response {
    let mut resp = warp::reply::html(PAGE).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        "content-security-policy",
        warp::http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self' ws: wss:; img-src data:",
        ),
    );
    headers.insert(
        "cache-control",
        warp::http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// `GET /v1/ops/live`
pub(super) async fn live(
    st: Arc<ApiState>,
    ws: Ws,
    auth: Option<String>,
    query: HashMap<String, String>,
) -> Result<Response, ApiError> {
    let caller = st.auth.caller(bearer(auth, &query).as_deref())?;
    if !caller.is_admin() {
        return Err(Error::Forbidden("only an admin may watch operations".into()).into());
    }
    if st.hub.ops().needs_seed() {
        let open = [
            OrderStatus::Accepted,
            OrderStatus::RiderAssigned,
            OrderStatus::PickedUp,
        ];
        match st.store.orders_in(&open, None).await {
            Ok(orders) => st.hub.ops().seed(orders),
            // The map still fills in from live events; the next watcher tries again.
            Err(e) => tracing::warn!(error = %e, "ops view: could not read the open orders"),
        }
    }
    let interval = Duration::from_millis(st.realtime.ops_interval_ms);
    let watch = st.hub.ops().watch(interval);
    Ok(ws
        .max_message_size(4 * 1024)
        .on_upgrade(move |socket| run(socket, st, watch))
        .into_response())
}

async fn run(socket: WebSocket, st: Arc<ApiState>, mut watch: Watch) {
    metrics::WS_OPEN.with_label_values(&[KIND]).inc();
    let heartbeat = Duration::from_millis(st.realtime.heartbeat_ms.max(10));
    let send_timeout = Duration::from_millis(st.realtime.send_timeout_ms.max(10));
    let (mut tx, mut rx) = socket.split();
    // Writes one frame; false when the client stalled or went away.
    macro_rules! send {
        ($msg:expr) => {
            match tokio::time::timeout(send_timeout, tx.send($msg)).await {
                Ok(Ok(())) => {
                    metrics::WS_SENT.with_label_values(&[KIND]).inc();
                    true
                }
                Ok(Err(_)) => false,
                Err(_) => {
                    metrics::WS_DROPS
                        .with_label_values(&[KIND, "stalled"])
                        .inc();
                    false
                }
            }
        };
    }
    let mut shown = watch.snapshot.version;
    let first = std::mem::take(&mut watch.snapshot.text);
    let mut open = send!(Message::text(first));
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    let mut last_heard = Instant::now();
    while open {
        tokio::select! {
            frame = watch.frames.recv() => match frame {
                Ok(f) if f.version <= shown => {}
                Ok(f) => {
                    shown = f.version;
                    open = send!(Message::text(f.text.clone()));
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "ops socket fell behind; sending a fresh snapshot");
                    let snap = watch.resync();
                    shown = snap.version;
                    open = send!(Message::text(snap.text));
                }
                Err(RecvError::Closed) => {
                    let _ = tx.send(Message::close_with(1001u16, "view closed")).await;
                    open = false;
                }
            },
            msg = rx.next() => match msg {
                Some(Ok(m)) if !m.is_close() => last_heard = Instant::now(),
                _ => open = false,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > heartbeat * 2 {
                    metrics::WS_DROPS.with_label_values(&[KIND, "heartbeat"]).inc();
                    let _ = tx.send(Message::close_with(1013u16, "heartbeat timeout")).await;
                    open = false;
                } else {
                    open = send!(Message::ping(Vec::new()));
                }
            }
        }
    }
    metrics::WS_OPEN.with_label_values(&[KIND]).dec();
}
