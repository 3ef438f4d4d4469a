//! Peer links: one kept-alive websocket from this node to each other node it forwards to,
//! carrying many requests at once.
//!
//! A frame is JSON: `Call { id, to, cmd }` expects a `Reply { id, out }`, `Tell { to, cmd }`
//! does not. The caller's side keeps a table of calls waiting for their reply; a writer task
//! batches frames into the socket; a reader task completes the waiting calls. When the link
//! breaks, every call still waiting fails as `Lost` (the far node may or may not have acted on
//! it), and the next call dials again. The far side (`serve`) hands each call to its router's
//! `send_here`, so a node that does not own the shard says `NotOwner` instead of passing the
//! message on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::router::Router;
use super::wire::Command;
use crate::error::Error;

/// The path peers dial.
pub const LINK_PATH: &str = "/internal/v1/link";

/// One frame on a link.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "f")]
enum Frame {
    /// A message that wants its reply; `tp` is the sender's W3C trace context.
    Call {
        id: u64,
        to: String,
        cmd: Command,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tp: Option<String>,
    },
    /// A message whose reply nobody waits for.
    Tell { to: String, cmd: Command },
    /// The reply to call `id`, in wire form.
    Reply {
        id: u64,
        out: Result<serde_json::Value, Error>,
    },
}

/// Why a forwarded message got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The far node could not be reached: the message was not sent.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The link broke or timed out after the message was sent: its outcome is unknown.
    #[error("peer link lost: {0}")]
    Lost(String),
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<serde_json::Value, Error>>>>>;

/// One live connection to a peer.
struct Link {
    /// Frames to write.
    tx: mpsc::UnboundedSender<WsMessage>,
    /// Calls waiting for their reply, by id.
    waiting: Waiting,
    /// Call ids.
    next: AtomicU64,
    /// False once the reader or writer saw the connection end.
    alive: Arc<AtomicBool>,
}

/// Another node, as a forwarding target.
pub struct Peer {
    /// Its node id.
    pub node: String,
    /// Its advertised base URL (`http://host:port`).
    pub addr: String,
    /// The bearer token this node presents.
    token: String,
    /// Longest wait for a connection.
    connect_timeout: Duration,
    /// Longest wait for a reply once a call is sent.
    call_timeout: Duration,
    /// The current connection, if any.
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    /// The link as last seen, for `tell` (which cannot wait for the async lock).
    current: Mutex<Option<Arc<Link>>>,
    /// Where link tasks run (the node's main runtime, not a shard's thread).
    rt: tokio::runtime::Handle,
}

impl Peer {
    /// A peer at `addr`; nothing is dialled until the first call.
    pub fn new(
        node: String,
        addr: String,
        token: String,
        connect_timeout: Duration,
        call_timeout: Duration,
        rt: tokio::runtime::Handle,
    ) -> Self {
        Peer {
            node,
            addr,
            token,
            connect_timeout,
            call_timeout,
            link: tokio::sync::Mutex::new(None),
            current: Mutex::new(None),
            rt,
        }
    }

    /// Sends a message to entity `to` on this peer and waits for its reply.
    pub async fn call(
        &self,
        to: &str,
        cmd: Command,
    ) -> Result<Result<serde_json::Value, Error>, LinkError> {
        let link = self.connected().await?;
        let id = link.next.fetch_add(1, Ordering::Relaxed);
        let frame = encode(&Frame::Call {
            id,
            to: to.to_string(),
            cmd,
            tp: crate::telemetry::current_traceparent(),
        })
        .map_err(LinkError::Unreachable)?;
        let (reply, rx) = oneshot::channel();
        lock(&link.waiting).insert(id, reply);
        if link.tx.send(frame).is_err() || !link.alive.load(Ordering::Acquire) {
            lock(&link.waiting).remove(&id);
            return Err(LinkError::Unreachable("link closed".into()));
        }
        match tokio::time::timeout(self.call_timeout, rx).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(_)) => Err(LinkError::Lost(format!("link to {} broke", self.node))),
            Err(_) => {
                lock(&link.waiting).remove(&id);
                Err(LinkError::Lost(format!(
                    "no reply from {} within {:?}",
                    self.node, self.call_timeout
                )))
            }
        }
    }

    /// Queues a notification on the live link; gives the message back when there is none (the
    /// caller then routes it the slow way).
    pub fn tell(&self, to: &str, cmd: Command) -> Result<(), Box<Command>> {
        let link = lock(&self.current).clone();
        let Some(link) = link.filter(|l| l.alive.load(Ordering::Acquire)) else {
            return Err(Box::new(cmd));
        };
        let frame = Frame::Tell {
            to: to.to_string(),
            cmd,
        };
        let Ok(bytes) = serde_json::to_vec(&frame) else {
            return Ok(()); // cannot happen for plain data; nothing sensible to retry
        };
        if link.tx.send(WsMessage::Binary(bytes)).is_err() {
            let Frame::Tell { cmd, .. } = frame else {
                unreachable!("built above")
            };
            return Err(Box::new(cmd));
        }
        Ok(())
    }

    /// The live link, dialling a new one if needed.
    async fn connected(&self) -> Result<Arc<Link>, LinkError> {
        let mut slot = self.link.lock().await;
        if let Some(l) = slot.as_ref().filter(|l| l.alive.load(Ordering::Acquire)) {
            return Ok(l.clone());
        }
        let link = Arc::new(self.dial().await?);
        *slot = Some(link.clone());
        *lock(&self.current) = Some(link.clone());
        Ok(link)
    }

    async fn dial(&self) -> Result<Link, LinkError> {
        let url = format!(
            "{}{LINK_PATH}",
            self.addr
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        );
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| LinkError::Unreachable(format!("{url}: {e}")))?;
        let auth = format!("Bearer {}", self.token)
            .parse()
            .map_err(|e| LinkError::Unreachable(format!("token header: {e}")))?;
        req.headers_mut().insert("authorization", auth);
        let connect = tokio_tungstenite::connect_async_with_config(req, None, true);
        let (ws, _) = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(ok)) => ok,
            Ok(Err(e)) => return Err(LinkError::Unreachable(format!("{url}: {e}"))),
            Err(_) => return Err(LinkError::Unreachable(format!("{url}: connect timed out"))),
        };
        tracing::debug!(peer = %self.node, %url, "peer link up");
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<WsMessage>();
        let alive = Arc::new(AtomicBool::new(true));
        let waiting: Waiting = Arc::default();
        let writer_alive = alive.clone();
        self.rt.spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut ok = sink.feed(first).await.is_ok();
                while ok {
                    match rx.try_recv() {
                        Ok(m) => ok = sink.feed(m).await.is_ok(),
                        Err(_) => break,
                    }
                }
                if !ok || sink.flush().await.is_err() {
                    break;
                }
            }
            writer_alive.store(false, Ordering::Release);
            let _ = sink.close().await;
        });
        let (reader_alive, reader_waiting, peer) =
            (alive.clone(), waiting.clone(), self.node.clone());
        self.rt.spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let bytes = match msg {
                    WsMessage::Binary(b) => b,
                    WsMessage::Text(t) => t.into_bytes(),
                    WsMessage::Close(_) => break,
                    _ => continue,
                };
                match serde_json::from_slice::<Frame>(&bytes) {
                    Ok(Frame::Reply { id, out }) => {
                        if let Some(w) = lock(&reader_waiting).remove(&id) {
                            let _ = w.send(out);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%peer, error = %e, "bad frame on peer link"),
                }
            }
            reader_alive.store(false, Ordering::Release);
            // Dropping the senders fails every call still waiting: their outcome is unknown.
            lock(&reader_waiting).clear();
            tracing::debug!(%peer, "peer link down");
        });
        Ok(Link {
            tx,
            waiting,
            next: AtomicU64::new(1),
            alive,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn encode(frame: &Frame) -> Result<WsMessage, String> {
    serde_json::to_vec(frame)
        .map(WsMessage::Binary)
        .map_err(|e| format!("encoding a frame: {e}"))
}

/// Serves one incoming peer link until it closes: each call is delivered here (or refused
/// with `NotOwner`) and answered on the same socket, many at a time.
pub async fn serve(socket: warp::ws::WebSocket, router: Router) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<warp::ws::Message>();
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut ok = sink.feed(first).await.is_ok();
            while ok {
                match rx.try_recv() {
                    Ok(m) => ok = sink.feed(m).await.is_ok(),
                    Err(_) => break,
                }
            }
            if !ok || sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    while let Some(Ok(msg)) = stream.next().await {
        if msg.is_close() {
            break;
        }
        if !(msg.is_binary() || msg.is_text()) {
            continue;
        }
        let frame = match serde_json::from_slice::<Frame>(msg.as_bytes()) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "bad frame from a peer");
                continue;
            }
        };
        match frame {
            Frame::Call { id, to, cmd, tp } => {
                let (router, tx) = (router.clone(), tx.clone());
                let span = match tp.as_deref() {
                    Some(tp) => {
                        let span = tracing::info_span!(
                            target: "waimai::cluster",
                            "serve",
                            otel.name = %format_args!("serve {}", cmd.name()),
                            otel.kind = "server",
                        );
                        crate::telemetry::continue_trace(&span, Some(tp));
                        span
                    }
                    None => tracing::Span::none(),
                };
                tokio::spawn(async move {
                    let out = tracing::Instrument::instrument(cmd.deliver(router, to), span).await;
                    if let Ok(bytes) = serde_json::to_vec(&Frame::Reply { id, out }) {
                        let _ = tx.send(warp::ws::Message::binary(bytes));
                    }
                });
            }
            Frame::Tell { to, cmd } => router.notify_from_peer(to, cmd),
            Frame::Reply { .. } => {}
        }
    }
    drop(tx);
    let _ = writer.await;
}
