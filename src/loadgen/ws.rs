//! Websocket helpers: connect to a node's feed or tracking socket with a bearer token, and read
//! its JSON messages (`type`, `ts`, `seq`, ...).

use std::sync::Arc;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::domain::Location;
use crate::realtime::messages::ClientCommand;

/// An open socket.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What the simulated clients read of a node's socket message: its envelope (`type`, `ts`) and
/// the few fields they act on. The parser skips everything else without building it. A
/// `serde_json::Value` built every key and string of every message (a map node and a `String`
/// each): parsing was a third of the load generator's instructions in `lifecycle`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Msg {
    /// `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the node sent it, ms since the epoch.
    pub ts: Option<i64>,
    /// When the change it reports was made (order `status` events), ms since the epoch.
    pub at: Option<i64>,
    /// The order it is about.
    pub order_id: Option<String>,
    /// The order's status (`status`, `ack`).
    pub status: Option<String>,
    /// An `error`'s code.
    pub code: Option<String>,
    /// An offer's pickup.
    pub pickup: Option<Location>,
    /// An offer's drop-off.
    pub dropoff: Option<Location>,
    /// A rider snapshot's open offer.
    pub offer: Option<Box<Msg>>,
    /// A merchant snapshot's orders.
    pub orders: Vec<Listed>,
}

/// An order listed in a merchant's snapshot.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Listed {
    /// Its id.
    pub id: String,
    /// Its status.
    pub status: String,
}

/// What reading a socket gave.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A JSON message.
    Json(Msg),
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
    // Nagle off: small commands must not wait for the server's delayed ACK.
    let (socket, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
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
                if let Ok(v) = serde_json::from_str::<Msg>(&t) {
                    return Incoming::Json(v);
                }
            }
            Some(Ok(Message::Binary(b))) => {
                if let Ok(v) = serde_json::from_slice::<Msg>(&b) {
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

/// `cmd` as the text a feed socket takes.
pub(crate) fn command(cmd: &ClientCommand) -> String {
    serde_json::to_string(cmd).unwrap_or_default()
}

/// The write half of a socket, shared by the tasks that send on it (a feed's own loop and the
/// trips of its rider): each message is written by its sender, under a lock. A writer task fed
/// by a channel cost every message a channel hop and a task wake-up.
#[derive(Clone)]
pub(crate) struct Writer(Arc<tokio::sync::Mutex<SplitSink<Socket, Message>>>);

impl Writer {
    /// Sends one JSON text; false once the socket is broken or closed.
    pub async fn send(&self, text: String) -> bool {
        self.0.lock().await.send(Message::Text(text)).await.is_ok()
    }

    /// Closes the socket normally; later sends fail.
    pub async fn close(&self) {
        let _ = self.0.lock().await.close().await;
    }
}

/// Splits `socket` into a shared writer and its read half.
pub(crate) fn split(socket: Socket) -> (Writer, SplitStream<Socket>) {
    let (sink, stream) = socket.split();
    (Writer(Arc::new(tokio::sync::Mutex::new(sink))), stream)
}

/// The normal-close code.
pub(crate) fn normal_close() -> u16 {
    u16::from(CloseCode::Normal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::order_machine::OrderStatus;
    use crate::messages::Offer;
    use crate::model::{Order, OrderLine, Rider};
    use crate::realtime::messages::{
        text, CommandAck, CommandError, MerchantOrderEvent, MerchantSnapshot, OfferMade,
        RiderSnapshot, StatusChanged,
    };

    fn order(id: &str, status: OrderStatus) -> Order {
        Order {
            id: id.into(),
            customer_id: "c1".into(),
            merchant_id: "m1".into(),
            rider_id: None,
            status,
            items: vec![OrderLine {
                sku: "s\"1".into(),
                name: "noodles, \"hand-pulled\"".into(),
                qty: 2,
                price_cents: 1200,
            }],
            total_cents: 2400,
            deliver_to: Location {
                lat: 31.2,
                lng: 121.4,
            },
            pickup: Some(Location {
                lat: 31.3,
                lng: 121.5,
            }),
            version: 3,
            created_at: 1,
            updated_at: 2,
            request_hash: None,
        }
    }

    fn offer(id: &str) -> Offer {
        Offer {
            order_id: id.into(),
            pickup: Location {
                lat: 31.3,
                lng: 121.5,
            },
            dropoff: Location {
                lat: 31.2,
                lng: 121.4,
            },
            expires_at: 9,
            distance_m: 120.5,
            route: Vec::new(),
        }
    }

    fn parse(s: &str) -> Msg {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// The messages the simulated clients act on, written by the node's own types, read back
    /// with every field they use; the rest (whole orders, riders, routes) is skipped.
    #[test]
    fn reads_the_fields_the_clients_use_from_the_nodes_own_messages() {
        let paid = order("o1", OrderStatus::Paid);
        let m = parse(&text(
            "new_order",
            &MerchantOrderEvent {
                order_id: "o1".into(),
                merchant_id: "m1".into(),
                version: 3,
                status: OrderStatus::Paid,
                from: Some(OrderStatus::PendingPayment),
                rider_id: None,
                order: Some(paid.clone()),
            },
            Some((7, 1_000)),
        ));
        assert_eq!((m.kind.as_str(), m.ts), ("new_order", Some(1_000)));
        assert_eq!(m.order_id.as_deref(), Some("o1"));
        assert_eq!(m.status.as_deref(), Some("paid"));

        let m = parse(&text(
            "snapshot",
            &MerchantSnapshot {
                merchant_id: "m1".into(),
                seq: 1,
                ts: 5,
                orders: vec![paid, order("o2", OrderStatus::Accepted)],
            },
            None,
        ));
        let listed: Vec<_> = m
            .orders
            .iter()
            .map(|o| (o.id.as_str(), o.status.as_str()))
            .collect();
        assert_eq!(listed, [("o1", "paid"), ("o2", "accepted")]);

        let m = parse(&text(
            "offer",
            &OfferMade {
                rider_id: "r1".into(),
                offer: offer("o1"),
            },
            Some((2, 3)),
        ));
        assert_eq!(m.kind, "offer");
        assert_eq!(m.order_id.as_deref(), Some("o1"));
        let (p, d) = (m.pickup.expect("pickup"), m.dropoff.expect("dropoff"));
        assert_eq!((p.lat, p.lng, d.lat, d.lng), (31.3, 121.5, 31.2, 121.4));

        let rider = Rider {
            id: "r1".into(),
            name: "Li".into(),
            online: true,
            location: Some(Location {
                lat: 31.0,
                lng: 121.0,
            }),
            current_order: None,
            version: 1,
        };
        let with = parse(&text(
            "snapshot",
            &RiderSnapshot {
                rider_id: "r1".into(),
                seq: 1,
                ts: 5,
                rider: rider.clone(),
                offer: Some(offer("o9")),
            },
            None,
        ));
        let o = with.offer.expect("the snapshot's offer");
        assert_eq!(o.order_id.as_deref(), Some("o9"));
        assert!(o.pickup.is_some() && o.dropoff.is_some());
        let without = parse(&text(
            "snapshot",
            &RiderSnapshot {
                rider_id: "r1".into(),
                seq: 1,
                ts: 5,
                rider,
                offer: None,
            },
            None,
        ));
        assert!(without.offer.is_none());

        let m = parse(&text(
            "status",
            &StatusChanged {
                order_id: "o1".into(),
                version: 4,
                status: OrderStatus::Delivered,
                from: Some(OrderStatus::PickedUp),
                rider_id: Some("r1".into()),
                at: 77,
            },
            Some((9, 80)),
        ));
        assert_eq!(
            (m.status.as_deref(), m.at, m.ts),
            (Some("delivered"), Some(77), Some(80))
        );

        let m = parse(&text(
            "ack",
            &CommandAck {
                order_id: "o1".into(),
                status: Some(OrderStatus::RiderAssigned),
                version: Some(5),
                ts: 6,
            },
            None,
        ));
        assert_eq!(m.status.as_deref(), Some("rider_assigned"));
        let m = parse(&text(
            "error",
            &CommandError {
                order_id: Some("o1".into()),
                code: "conflict".into(),
                message: "taken".into(),
                ts: 6,
            },
            None,
        ));
        assert_eq!(
            (m.order_id.as_deref(), m.code.as_deref()),
            (Some("o1"), Some("conflict"))
        );
    }

    /// Commands go out as tagged objects that the node's parser reads back as sent.
    #[test]
    fn commands_are_written_as_tagged_objects() {
        let sent = [
            ClientCommand::Accept {
                order_id: "o1".into(),
            },
            ClientCommand::Location {
                lat: 1.5,
                lng: -2.25,
            },
        ];
        let texts: Vec<String> = sent.iter().map(command).collect();
        let accept: serde_json::Value = serde_json::from_str(&texts[0]).expect("json");
        assert_eq!(
            accept,
            serde_json::json!({"type": "accept", "order_id": "o1"})
        );
        let at: serde_json::Value = serde_json::from_str(&texts[1]).expect("json");
        assert_eq!(
            at,
            serde_json::json!({"type": "location", "lat": 1.5, "lng": -2.25})
        );
        for (text, cmd) in texts.iter().zip(&sent) {
            let back: ClientCommand = serde_json::from_str(text).expect("the node parses it");
            assert_eq!(&back, cmd);
        }
    }
}
