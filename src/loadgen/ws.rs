//! Websocket helpers: connect to a node's feed or tracking socket with a bearer token, and read
//! its JSON messages (`type`, `ts`, `seq`, ...).

use std::borrow::Cow;
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

/// A string field of a socket message, borrowed from the message's text unless it has escapes
/// (the ids, statuses and codes the clients read never do). An owned `String` per field was an
/// allocation and a copy for every field of every message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Str<'a>(Cow<'a, str>);

impl<'a> Str<'a> {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(Visit).map(Str)
    }
}

/// What the simulated clients read of a node's socket message: its envelope (`type`, `ts`) and
/// the few fields they act on, borrowed from the message's text. The parser skips everything
/// else without building it. A `serde_json::Value` built every key and string of every message
/// (a map node and a `String` each): parsing was a third of the load generator's instructions
/// in `lifecycle`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Msg<'a> {
    /// `type`.
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    /// When the node sent it, ms since the epoch.
    pub ts: Option<i64>,
    /// When the change it reports was made (order `status` events), ms since the epoch.
    pub at: Option<i64>,
    /// The order it is about.
    #[serde(borrow)]
    pub order_id: Option<Str<'a>>,
    /// The order's status (`status`, `ack`).
    #[serde(borrow)]
    pub status: Option<Str<'a>>,
    /// An `error`'s code.
    #[serde(borrow)]
    pub code: Option<Str<'a>>,
    /// An offer's pickup.
    pub pickup: Option<Location>,
    /// An offer's drop-off.
    pub dropoff: Option<Location>,
    /// A rider snapshot's open offer.
    #[serde(borrow)]
    pub offer: Option<Box<Msg<'a>>>,
    /// A merchant snapshot's orders.
    #[serde(borrow)]
    pub orders: Vec<Listed<'a>>,
}

/// An order listed in a merchant's snapshot.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Listed<'a> {
    /// Its id.
    #[serde(borrow)]
    pub id: Str<'a>,
    /// Its status.
    #[serde(borrow)]
    pub status: Str<'a>,
}

impl<'a> Msg<'a> {
    /// Reads `text`; None when it is not a JSON object of this shape. A message the hub
    /// carries whose `type` is not in `acts_on` gives its envelope only (`type`, `ts`), read
    /// from its end: a client that acts on a message by its type alone, and only records when
    /// the rest arrived, need not parse it (most of a merchant's and a rider's messages are
    /// `order_updated` events it only times).
    pub fn read(text: &'a str, acts_on: &[&str]) -> Option<Msg<'a>> {
        if let Some((kind, ts)) = hub_envelope(text) {
            if !acts_on.contains(&kind) {
                return Some(Msg {
                    kind: Str(Cow::Borrowed(kind)),
                    ts: Some(ts),
                    ..Msg::default()
                });
            }
        }
        serde_json::from_str(text).ok()
    }

    /// The order id, or "" when there is none.
    pub fn order(&self) -> &str {
        self.order_id.as_ref().map_or("", Str::as_str)
    }
}

/// `(type, ts)` of a message the hub carries, whose text the node ends with
/// `"type":"K","seq":N,"ts":T}` (`realtime::messages::text`); None for any other ending (the
/// caller then parses the whole text). In valid JSON those are the top-level object's last
/// members: nothing can follow them but its closing brace.
fn hub_envelope(text: &str) -> Option<(&str, i64)> {
    /// The digits `s` ends with, as a number, and what comes before them.
    fn number(s: &[u8]) -> Option<(&[u8], i64)> {
        let digits = s.iter().rev().take_while(|b| b.is_ascii_digit()).count();
        // At most 18 digits: no i64 overflows.
        if digits == 0 || digits > 18 {
            return None;
        }
        let (before, n) = s.split_at(s.len() - digits);
        let n = n.iter().fold(0, |n, &d| n * 10 + i64::from(d - b'0'));
        Some((before, n))
    }
    // Byte by byte from the end: `rsplit_once` with a string pattern built a two-way searcher
    // each time, which cost more than the rest of this.
    let body = text.as_bytes().strip_suffix(b"}")?;
    let (body, ts) = number(body)?;
    let (body, _seq) = number(body.strip_suffix(b",\"ts\":")?)?;
    let body = body.strip_suffix(b",\"seq\":")?.strip_suffix(b"\"")?;
    let open = body.iter().rposition(|&b| b == b'"')?;
    let before = body[..open].strip_suffix(b"\"type\":")?;
    let member = before.ends_with(b",") || before.ends_with(b"{");
    // Both ends are next to ASCII quotes: character boundaries of `text`.
    let kind = text.get(open + 1..body.len())?;
    (member && !kind.contains('\\')).then_some((kind, ts))
}

/// What reading a socket gave.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A text message (the node sends JSON); read it with [`Msg::read`].
    Text(String),
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

/// The next text message, skipping pings and binary frames that are not UTF-8. Works on a
/// whole socket or its read half.
pub(crate) async fn next<S>(socket: &mut S) -> Incoming
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match socket.next().await {
            None => return Incoming::Closed(None),
            Some(Err(e)) => return Incoming::Broken(e.to_string()),
            Some(Ok(Message::Text(t))) => return Incoming::Text(t),
            Some(Ok(Message::Binary(b))) => {
                if let Ok(t) = String::from_utf8(b) {
                    return Incoming::Text(t);
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

    fn parse(s: &str) -> Msg<'_> {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// The messages the simulated clients act on, written by the node's own types, read back
    /// with every field they use; the rest (whole orders, riders, routes) is skipped.
    #[test]
    fn reads_the_fields_the_clients_use_from_the_nodes_own_messages() {
        let paid = order("o1", OrderStatus::Paid);
        let text_1 = text(
            "new_order",
            &MerchantOrderEvent {
                order_id: "o1",
                merchant_id: "m1",
                version: 3,
                status: OrderStatus::Paid,
                from: Some(OrderStatus::PendingPayment),
                rider_id: None,
                order: Some(&paid),
            },
            Some((7, 1_000)),
        );
        let m = parse(&text_1);
        assert_eq!((m.kind.as_str(), m.ts), ("new_order", Some(1_000)));
        assert_eq!(m.order_id.as_deref(), Some("o1"));
        assert_eq!(m.status.as_deref(), Some("paid"));

        let text_2 = text(
            "snapshot",
            &MerchantSnapshot {
                merchant_id: "m1".into(),
                seq: 1,
                ts: 5,
                orders: vec![paid, order("o2", OrderStatus::Accepted)],
            },
            None,
        );
        let m = parse(&text_2);
        let listed: Vec<_> = m
            .orders
            .iter()
            .map(|o| (o.id.as_str(), o.status.as_str()))
            .collect();
        assert_eq!(listed, [("o1", "paid"), ("o2", "accepted")]);

        let text_3 = text(
            "offer",
            &OfferMade {
                rider_id: "r1".into(),
                offer: offer("o1"),
            },
            Some((2, 3)),
        );
        let m = parse(&text_3);
        assert_eq!(m.kind.as_str(), "offer");
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
        let text_4 = text(
            "snapshot",
            &RiderSnapshot {
                rider_id: "r1".into(),
                seq: 1,
                ts: 5,
                rider: rider.clone(),
                offer: Some(offer("o9")),
            },
            None,
        );
        let with = parse(&text_4);
        let o = with.offer.expect("the snapshot's offer");
        assert_eq!(o.order_id.as_deref(), Some("o9"));
        assert!(o.pickup.is_some() && o.dropoff.is_some());
        let text_5 = text(
            "snapshot",
            &RiderSnapshot {
                rider_id: "r1".into(),
                seq: 1,
                ts: 5,
                rider,
                offer: None,
            },
            None,
        );
        let without = parse(&text_5);
        assert!(without.offer.is_none());

        let text_6 = text(
            "status",
            &StatusChanged {
                order_id: "o1",
                version: 4,
                status: OrderStatus::Delivered,
                from: Some(OrderStatus::PickedUp),
                rider_id: Some("r1"),
                at: 77,
            },
            Some((9, 80)),
        );
        let m = parse(&text_6);
        assert_eq!(
            (m.status.as_deref(), m.at, m.ts),
            (Some("delivered"), Some(77), Some(80))
        );

        let text_7 = text(
            "ack",
            &CommandAck {
                order_id: "o1".into(),
                status: Some(OrderStatus::RiderAssigned),
                version: Some(5),
                ts: 6,
            },
            None,
        );
        let m = parse(&text_7);
        assert_eq!(m.status.as_deref(), Some("rider_assigned"));
        let text_8 = text(
            "error",
            &CommandError {
                order_id: Some("o1".into()),
                code: "conflict".into(),
                message: "taken".into(),
                ts: 6,
            },
            None,
        );
        let m = parse(&text_8);
        assert_eq!(
            (m.order_id.as_deref(), m.code.as_deref()),
            (Some("o1"), Some("conflict"))
        );
    }

    /// A hub message the client does not act on is read from its end (type and ts only); one it
    /// acts on, and every message not ending in the hub's stamp, is parsed whole, and both
    /// readings agree on type and ts.
    #[test]
    fn reads_only_the_envelope_of_hub_messages_the_client_does_not_act_on() {
        let event = MerchantOrderEvent {
            order_id: "o1",
            merchant_id: "m1",
            version: 4,
            status: OrderStatus::Accepted,
            from: Some(OrderStatus::Paid),
            rider_id: None,
            order: None,
        };
        let updated = text("order_updated", &event, Some((12, 3_456)));
        let m = Msg::read(&updated, &["new_order"]).expect("read");
        assert_eq!((m.kind.as_str(), m.ts), ("order_updated", Some(3_456)));
        assert_eq!(m.order_id, None, "the rest is not parsed");
        let whole = Msg::read(&updated, &["order_updated"]).expect("read");
        assert_eq!(
            (whole.kind.as_str(), whole.ts),
            ("order_updated", Some(3_456))
        );
        assert_eq!(whole.order(), "o1");
        assert_eq!(whole.status.as_deref(), Some("accepted"));

        // Not the hub's ending: parsed whole whatever the client acts on.
        let ack = text(
            "ack",
            &CommandAck {
                order_id: "o1".into(),
                status: Some(OrderStatus::Accepted),
                version: Some(4),
                ts: 6,
            },
            None,
        );
        let m = Msg::read(&ack, &[]).expect("read");
        assert_eq!((m.kind.as_str(), m.order(), m.ts), ("ack", "o1", Some(6)));

        // The stamp's text inside a string value is not the envelope.
        let tricky =
            r#"{"note":"\"type\":\"x\",\"seq\":1,\"ts\":2","type":"order_updated","seq":3,"ts":4}"#;
        let m = Msg::read(tricky, &[]).expect("read");
        assert_eq!((m.kind.as_str(), m.ts), ("order_updated", Some(4)));
        // An escaped type is not read from the end; the whole parse unescapes it.
        let escaped = r#"{"order_id":"o\u0031","type":"a\"b","seq":1,"ts":2}"#;
        let m = Msg::read(escaped, &[]).expect("read");
        assert_eq!((m.kind.as_str(), m.order(), m.ts), ("a\"b", "o1", Some(2)));
        // Malformed endings are not messages.
        for bad in [
            r#"{"type":"x","seq":1,"ts":}"#,
            r#"{"type":"x","seq":,"ts":2}"#,
            r#"{"type":"x","seq":1,"ts":-2"#,
            "not json",
        ] {
            assert!(Msg::read(bad, &[]).is_none(), "{bad}");
        }
    }

    /// Strings without escapes are borrowed from the text; escaped ones are unescaped.
    #[test]
    fn borrows_plain_strings_and_unescapes_the_rest() {
        let t = r#"{"type":"ack","order_id":"o1","code":"a\nb"}"#;
        let m = parse(t);
        assert!(matches!(m.kind.0, Cow::Borrowed(_)));
        assert!(matches!(
            m.order_id.as_ref().map(|s| &s.0),
            Some(Cow::Borrowed("o1"))
        ));
        assert_eq!(m.code.as_deref(), Some("a\nb"));
        assert!(matches!(m.code.as_ref().map(|s| &s.0), Some(Cow::Owned(_))));
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
