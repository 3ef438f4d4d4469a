//! Websocket helpers: connect to a node's feed or tracking socket with a bearer token, and read
//! its JSON messages (`type`, `ts`, `seq`, ...).

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// An open socket.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What reading a socket gave.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A JSON message.
    Json(Value),
    /// The server closed with this code (1000 = normal).
    Closed(Option<u16>),
    /// The connection broke.
    Broken(String),
}

/// `http://host:port` + `path` as a ws URL.
fn ws_url(base: &str, path: &str) -> String {
    let rest = base
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .or_else(|| base.strip_prefix("http://").map(|r| format!("ws://{r}")))
        .unwrap_or_else(|| base.to_string());
    format!("{rest}{path}")
}

/// Opens `path` on the node at `base` with `Authorization: Bearer token`.
pub(crate) async fn connect(base: &str, path: &str, token: &str) -> Result<Socket, String> {
    let mut req = ws_url(base, path)
        .into_client_request()
        .map_err(|e| format!("ws request: {e}"))?;
    let auth = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| format!("ws auth header: {e}"))?;
    req.headers_mut().insert("authorization", auth);
    let (socket, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| format!("ws connect {path}: {e}"))?;
    Ok(socket)
}

/// The next JSON message, skipping pings and non-JSON frames. Works on a whole socket or its
/// read half.
pub(crate) async fn next<S>(socket: &mut S) -> Incoming
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match socket.next().await {
            None => return Incoming::Closed(None),
            Some(Err(e)) => return Incoming::Broken(e.to_string()),
            Some(Ok(Message::Text(t))) => {
                if let Ok(v) = serde_json::from_str::<Value>(&t) {
                    return Incoming::Json(v);
                }
            }
            Some(Ok(Message::Binary(b))) => {
                if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                    return Incoming::Json(v);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Incoming::Closed(frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Splits `socket` and spawns a writer: JSON values sent on the returned channel go out in
/// order; the writer closes the socket when the channel is dropped.
pub(crate) fn writer(
    socket: Socket,
) -> (
    tokio::sync::mpsc::UnboundedSender<Value>,
    futures::stream::SplitStream<Socket>,
) {
    let (mut sink, stream) = socket.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        while let Some(v) = rx.recv().await {
            if sink.send(Message::Text(v.to_string())).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    (tx, stream)
}

/// The normal-close code.
pub(crate) fn normal_close() -> u16 {
    u16::from(CloseCode::Normal)
}

/// A message's `type`.
pub(crate) fn kind(v: &Value) -> &str {
    v["type"].as_str().unwrap_or("")
}

/// A message's `ts` (server ms since the epoch), if present.
pub(crate) fn ts(v: &Value) -> Option<i64> {
    v["ts"].as_i64()
}

/// A string field.
pub(crate) fn field(v: &Value, name: &str) -> Option<String> {
    v[name].as_str().map(str::to_string)
}
