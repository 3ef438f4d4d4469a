//! The REST client: kept-alive HTTP/1.1 connections on hyper, JSON in and out, and a compact
//! outcome (status, body, error code) that scenarios and the recorder classify.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{
    http1::{self, SendRequest},
    TrySendError,
};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::LoadgenError;

/// A response as the load generator sees it. The body is parsed when first asked for: most
/// answers are only classified by status, and parsing each into a `Value` was the largest
/// share of the load generator's own CPU in `browse`.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    /// HTTP status.
    pub status: u16,
    /// The body as received.
    bytes: bytes::Bytes,
    /// The body parsed (Null when not JSON), once asked for.
    parsed: std::sync::OnceLock<Value>,
}

impl Resp {
    /// The parsed JSON body (Null when not JSON).
    pub fn body(&self) -> &Value {
        self.parsed
            .get_or_init(|| serde_json::from_slice(&self.bytes).unwrap_or(Value::Null))
    }

    /// The `error.code` of an error body, if any (a success has none: its body is not parsed).
    pub fn code(&self) -> &str {
        if self.ok() {
            return "";
        }
        self.body()["error"]["code"].as_str().unwrap_or("")
    }

    /// 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `"409 out_of_stock"`, for error counts.
    pub fn kind(&self) -> String {
        let code = self.code();
        if code.is_empty() {
            self.status.to_string()
        } else {
            format!("{} {code}", self.status)
        }
    }

    /// Refused by the node's gateway before any work (429 rate limited, 503 overloaded).
    pub fn shed(&self) -> bool {
        self.status == 429 || (self.status == 503 && self.code() == "overloaded")
    }

    /// A string field of the body (a top-level one). Unless the body was parsed already, only
    /// that field is read: the rest is skipped without building a `Value` (a created order's
    /// answer is read only for its id, and building the whole order was a tenth of the load
    /// generator's CPU in `create`).
    pub fn str(&self, field: &str) -> Option<String> {
        if let Some(v) = self.parsed.get() {
            return v[field].as_str().map(str::to_string);
        }
        let mut de = serde_json::Deserializer::from_slice(&self.bytes);
        serde::de::DeserializeSeed::deserialize(FieldStr(field), &mut de)
            .ok()
            .flatten()
    }
}

/// Reads one top-level string field of a JSON object, skipping every other value.
struct FieldStr<'f>(&'f str);

impl<'de> serde::de::DeserializeSeed<'de> for FieldStr<'_> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldStr<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if found.is_none() && key == self.0 {
                // Not a string (a number, null): absent, as `body()[field].as_str()` says.
                found = Some(map.next_value::<Value>()?.as_str().map(str::to_string));
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found.flatten())
    }
}

/// No request body (for `Http::call`).
pub(crate) const NO_BODY: Option<&Value> = None;

/// A request that got no HTTP response: `"transport timeout"`, `"transport connect"`, ...
#[derive(Debug, Clone)]
pub(crate) struct TransportError(pub String);

/// The outcome of one request.
pub(crate) type Outcome = Result<Resp, TransportError>;

/// Kind of an outcome for error counts: `"201"`, `"409 out_of_stock"`, `"transport timeout"`.
pub(crate) fn kind(o: &Outcome) -> String {
    match o {
        Ok(r) => r.kind(),
        Err(e) => e.0.clone(),
    }
}

/// The node's REST front door: one node, or several nodes of a cluster. With several, each
/// user (each bearer token) sticks to one node, spread evenly by a hash of its token.
///
/// A lean HTTP/1.1 client on hyper's connection API: a request takes an idle kept-alive
/// connection to its node (or opens one), and gives it back once the answer's body is read, so
/// a closed-model user keeps reusing one connection. It replaced reqwest, whose per-request
/// work (a full URL parsed, its pool's and timeout's machinery) was the largest share of the
/// load generator's own CPU after JSON.
pub(crate) struct Http {
    /// The targets.
    targets: Vec<Target>,
    /// Round-robin position for `next_base`.
    turn: std::sync::atomic::AtomicUsize,
    /// A request's whole budget: connecting, sending, the answer's body.
    timeout: Duration,
    /// Connections opened so far, to every target.
    opened: std::sync::atomic::AtomicU64,
}

/// One node: its address and its idle connections.
struct Target {
    /// `http://host:port`, no trailing slash.
    base: String,
    /// `host:port`, for connecting and the `Host` header.
    authority: HeaderValue,
    /// Connections with no request in flight.
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Target {
    /// An idle connection that is still open.
    fn reuse(&self) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let next = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
            match next {
                Some(c) if c.is_closed() => continue,
                other => return other,
            }
        }
    }

    /// A new connection.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let addr = self.authority.to_str().unwrap_or_default();
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|_| TransportError("transport connect".into()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| TransportError("transport connect".into()))?;
        tokio::spawn(async move {
            let _ = conn.await; // ends when the node or the last sender closes it
        });
        Ok(sender)
    }

    fn checkin(&self, conn: SendRequest<Full<Bytes>>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }
}

impl Http {
    /// A client for `bases` (it keeps as many connections per node as requests were in flight).
    pub fn new(bases: &[String], timeout: Duration) -> Result<Http, LoadgenError> {
        if bases.is_empty() {
            return Err(LoadgenError::Args("--target is required".into()));
        }
        let mut targets = Vec::with_capacity(bases.len());
        for base in bases {
            let url = url::Url::parse(base)
                .map_err(|e| LoadgenError::Args(format!("--target {base}: {e}")))?;
            if url.scheme() != "http" {
                return Err(LoadgenError::Args(format!(
                    "--target {base}: scheme must be http (the load generator speaks plain HTTP/1.1)"
                )));
            }
            let host = url
                .host_str()
                .ok_or_else(|| LoadgenError::Args(format!("--target {base}: no host")))?;
            let port = url.port_or_known_default().unwrap_or(80);
            let authority = HeaderValue::from_str(&format!("{host}:{port}"))
                .map_err(|e| LoadgenError::Args(format!("--target {base}: {e}")))?;
            targets.push(Target {
                base: base.trim_end_matches('/').to_string(),
                authority,
                idle: Mutex::new(Vec::new()),
            });
        }
        Ok(Http {
            targets,
            turn: std::sync::atomic::AtomicUsize::new(0),
            timeout,
            opened: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn target_for(&self, token: &str) -> &Target {
        if self.targets.len() == 1 {
            return &self.targets[0];
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        token.hash(&mut h);
        &self.targets[h.finish() as usize % self.targets.len()]
    }

    /// The node the holder of `token` talks to.
    pub fn base_for(&self, token: &str) -> &str {
        &self.target_for(token).base
    }

    /// The targets in turn (to spread connections that share a token, like many trackers of
    /// one order).
    pub fn next_base(&self) -> &str {
        let i = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.targets[i % self.targets.len()].base
    }

    /// Sends `method path` with a bearer token, an optional idempotency key and JSON body
    /// (any serializable value: a scenario's own struct costs less to write than a `Value`).
    pub async fn call<B: serde::Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: Option<&B>,
    ) -> Outcome {
        self.call_on(self.target_for(token), method, path, token, key, body)
            .await
    }

    /// [`Http::call`] on one given target.
    async fn call_on<B: serde::Serialize + ?Sized>(
        &self,
        target: &Target,
        method: Method,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: Option<&B>,
    ) -> Outcome {
        let request = async {
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, target.authority.clone())
                .header(header::AUTHORIZATION, format!("Bearer {token}"));
            if let Some(k) = key {
                req = req.header("idempotency-key", k);
            }
            let body = match body {
                Some(b) => {
                    req = req.header(header::CONTENT_TYPE, "application/json");
                    let json = serde_json::to_vec(b)
                        .map_err(|_| TransportError("transport request".into()))?;
                    Full::new(Bytes::from(json))
                }
                None => Full::new(Bytes::new()),
            };
            let req = req
                .body(body)
                .map_err(|_| TransportError("transport request".into()))?;
            // A kept-alive connection the node has just closed gives the request back
            // unsent: it then goes once more, on a new connection.
            let req = match target.reuse() {
                Some(mut conn) => match send(&mut conn, req).await {
                    Ok(resp) => return read(target, conn, resp).await,
                    Err(mut e) => e.take_message().ok_or_else(|| unsent(e))?,
                },
                None => req,
            };
            let mut conn = target.connect().await?;
            self.opened
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let resp = send(&mut conn, req).await.map_err(unsent)?;
            read(target, conn, resp).await
        };
        match tokio::time::timeout(self.timeout, request).await {
            Ok(outcome) => outcome,
            Err(_) => Err(TransportError("transport timeout".into())),
        }
    }

    /// Connections opened so far (to every target).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// GET `path` from every target, in `--target` order: each body as text, or `None` where
    /// the answer was not a 200.
    pub async fn get_each(&self, path: &str, token: &str) -> Vec<Option<String>> {
        let mut out = Vec::with_capacity(self.targets.len());
        for target in &self.targets {
            let o = self
                .call_on(target, Method::GET, path, token, None, NO_BODY)
                .await;
            out.push(match o {
                Ok(r) if r.status == 200 => Some(String::from_utf8_lossy(&r.bytes).into_owned()),
                _ => None,
            });
        }
        out
    }

    /// GET.
    pub async fn get(&self, path: &str, token: &str) -> Outcome {
        self.call(Method::GET, path, token, None, NO_BODY).await
    }

    /// POST with an optional body.
    pub async fn post(&self, path: &str, token: &str, body: Option<&Value>) -> Outcome {
        self.call(Method::POST, path, token, None, body).await
    }

    /// PUT with a body.
    pub async fn put(&self, path: &str, token: &str, body: &Value) -> Outcome {
        self.call(Method::PUT, path, token, None, Some(body)).await
    }
}

type Sent = Result<hyper::Response<hyper::body::Incoming>, TrySendError<Request<Full<Bytes>>>>;

async fn send(conn: &mut SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Sent {
    // A connection is checked in only once its answer is read, so it is ready here unless it
    // closed; then the request comes back unsent.
    let _ = std::future::poll_fn(|cx| conn.poll_ready(cx)).await;
    conn.try_send_request(req).await
}

fn unsent(_: TrySendError<Request<Full<Bytes>>>) -> TransportError {
    TransportError("transport request".into())
}

/// Reads the answer's body, then gives the connection back for the next request.
async fn read(
    target: &Target,
    conn: SendRequest<Full<Bytes>>,
    resp: hyper::Response<hyper::body::Incoming>,
) -> Outcome {
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|_| TransportError("transport body".into()))?
        .to_bytes();
    if !conn.is_closed() {
        target.checkin(conn);
    }
    Ok(Resp {
        status,
        bytes,
        parsed: std::sync::OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(body: &str) -> Resp {
        Resp {
            status: 201,
            bytes: Bytes::from(body.to_string()),
            parsed: std::sync::OnceLock::new(),
        }
    }

    #[test]
    fn a_field_is_read_past_nested_values_without_parsing_the_rest() {
        let body =
            r#"{"lines":[{"sku":"id","qty":1}],"deliver_to":{"id":"inner"},"id":"ord-1","x":null}"#;
        let r = resp(body);
        assert_eq!(r.str("id").as_deref(), Some("ord-1"));
        assert!(
            r.parsed.get().is_none(),
            "str() must not build the whole Value"
        );
        assert_eq!(r.str("missing"), None);
        // Once parsed, the parsed body answers, the same way.
        assert_eq!(r.body()["x"], Value::Null);
        assert_eq!(r.str("id").as_deref(), Some("ord-1"));
    }

    #[test]
    fn a_field_that_is_not_a_string_or_a_body_that_is_not_an_object_gives_none() {
        assert_eq!(resp(r#"{"id":7}"#).str("id"), None);
        assert_eq!(resp(r#"{"id":null}"#).str("id"), None);
        assert_eq!(resp(r#"["id"]"#).str("id"), None);
        assert_eq!(resp("not json").str("id"), None);
        assert_eq!(resp("").str("id"), None);
        assert_eq!(
            resp(r#"{"i\u0064":"escaped key"}"#).str("id").as_deref(),
            Some("escaped key")
        );
    }
}
