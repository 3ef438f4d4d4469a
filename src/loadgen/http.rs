//! The REST client: the lean HTTP/1.1 client (`crate::http1`) on kept-alive connections, JSON
//! in and out, bearer tokens and idempotency keys, and a compact outcome (status, body, error
//! code) that scenarios and the recorder classify.

use std::time::Duration;

use serde_json::Value;
use warp::http::Method;

use super::LoadgenError;
use crate::http1::{self, Origin, SendError};

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
/// Requests go through the lean HTTP/1.1 client (`crate::http1`): a closed-model user keeps
/// reusing one kept-alive connection, and a request is one write and its answer's reads in the
/// request's own task. It replaced hyper's connection API (which replaced reqwest): hyper drives
/// each connection from a task of its own, so every request crossed two channels and woke two
/// tasks each way, and built a `Request`, a `HeaderMap` and a `Response` that the load
/// generator only needed the status and body of.
pub(crate) struct Http {
    /// The targets.
    targets: Vec<Origin>,
    /// Round-robin position for `next_base`.
    turn: std::sync::atomic::AtomicUsize,
    /// A request's whole budget: connecting, sending, the answer's body.
    timeout: Duration,
}

impl From<SendError> for TransportError {
    fn from(e: SendError) -> Self {
        TransportError(format!("transport {e}"))
    }
}

impl Http {
    /// A client for `bases` (it keeps as many connections per node as requests were in flight).
    pub fn new(bases: &[String], timeout: Duration) -> Result<Http, LoadgenError> {
        if bases.is_empty() {
            return Err(LoadgenError::Args("--target is required".into()));
        }
        let targets = bases
            .iter()
            .map(|base| {
                Origin::parse(base).map_err(|e| LoadgenError::Args(format!("--target {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Http {
            targets,
            turn: std::sync::atomic::AtomicUsize::new(0),
            timeout,
        })
    }

    fn target_for(&self, token: &str) -> &Origin {
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
        self.target_for(token).base()
    }

    /// The targets in turn (to spread connections that share a token, like many trackers of
    /// one order).
    pub fn next_base(&self) -> &str {
        let i = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.targets[i % self.targets.len()].base()
    }

    /// Sends `method path` with a bearer token, an optional idempotency key and JSON body
    /// (any serializable value: a scenario's own struct costs less to write than a `Value`).
    /// For GET, POST, PUT and the like (see `crate::http1`).
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
        target: &Origin,
        method: Method,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: Option<&B>,
    ) -> Outcome {
        let json = match body {
            Some(b) => Some(
                serde_json::to_vec(b).map_err(|_| TransportError("transport request".into()))?,
            ),
            None => None,
        };
        let bearer = format!("Bearer {token}");
        let headers = [
            ("authorization", bearer.as_str()),
            ("idempotency-key", key.unwrap_or_default()),
        ];
        let headers = &headers[..if key.is_some() { 2 } else { 1 }];
        let request = http1::request(
            method.as_str(),
            path,
            target.authority(),
            headers,
            json.as_deref().map(|b| ("application/json", b)),
        )?;
        match tokio::time::timeout(self.timeout, target.send(&request)).await {
            Ok(Ok(answer)) => Ok(Resp {
                status: answer.status,
                bytes: answer.body,
                parsed: std::sync::OnceLock::new(),
            }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(TransportError("transport timeout".into())),
        }
    }

    /// Connections opened so far (to every target).
    pub fn connections_opened(&self) -> u64 {
        self.targets.iter().map(Origin::connections_opened).sum()
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn resp(body: &str) -> Resp {
        Resp {
            status: 201,
            bytes: Bytes::from(body.to_string()),
            parsed: std::sync::OnceLock::new(),
        }
    }

    /// Reads one request (head and `content-length` body) as text; empty once the client closed.
    async fn read_request(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap_or(0));
                if buf.len() >= end + 4 + len {
                    return String::from_utf8_lossy(&buf).into_owned();
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).into_owned(),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A peer on a real socket that answers each connection with `answer(connection number,
    /// socket)`; the client under test talks to it as to a node.
    async fn peer<F, Fut>(answer: F) -> String
    where
        F: Fn(usize, TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(answer(n, s));
                n += 1;
            }
        });
        format!("http://{addr}")
    }

    fn client(base: &str) -> Http {
        Http::new(&[base.to_string()], Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn answers_in_pieces_are_read_whole_and_the_connection_is_kept() {
        let base = peer(|_, mut s| async move {
            loop {
                let req = read_request(&mut s).await;
                if req.is_empty() {
                    return;
                }
                let body = if req.contains("\"n\":2") {
                    "second"
                } else {
                    "first!"
                };
                // Head and body in three writes, apart in time.
                s.write_all(b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-")
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                s.write_all(format!("Length: {}\r\n\r\n{}", body.len(), &body[..3]).as_bytes())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                s.write_all(&body.as_bytes()[3..]).await.unwrap();
            }
        })
        .await;
        let http = client(&base);
        for (n, want) in [(1, "first!"), (2, "second")] {
            let r = http
                .call(
                    Method::POST,
                    "/x",
                    "t",
                    None,
                    Some(&serde_json::json!({"n": n})),
                )
                .await
                .unwrap();
            assert_eq!((r.status, &r.bytes[..]), (201, want.as_bytes()));
        }
        assert_eq!(
            http.connections_opened(),
            1,
            "the kept-alive connection is reused"
        );
    }

    #[tokio::test]
    async fn a_chunked_answer_is_decoded() {
        let base = peer(|_, mut s| async move {
            read_request(&mut s).await;
            let answer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                          5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
            s.write_all(answer.as_bytes()).await.unwrap();
            read_request(&mut s).await;
        })
        .await;
        let r = client(&base).get("/x", "t").await.unwrap();
        assert_eq!((r.status, &r.bytes[..]), (200, &b"hello, world"[..]));
    }

    #[tokio::test]
    async fn the_request_carries_its_headers_and_body() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let base = peer(move |_, mut s| {
            let tx = tx.clone();
            async move {
                loop {
                    let req = read_request(&mut s).await;
                    if req.is_empty() {
                        return;
                    }
                    let _ = tx.send(req);
                    s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                        .await
                        .unwrap();
                }
            }
        })
        .await;
        let http = client(&base);
        let body = serde_json::json!({"a": 1});
        let r = http
            .call(
                Method::POST,
                "/v1/orders",
                "tok",
                Some("key-1"),
                Some(&body),
            )
            .await
            .unwrap();
        assert_eq!((r.status, r.bytes.len()), (204, 0));
        let host = base.trim_start_matches("http://");
        assert_eq!(
            rx.recv().await.unwrap(),
            format!(
                "POST /v1/orders HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer tok\r\n\
                 idempotency-key: key-1\r\ncontent-type: application/json\r\n\
                 content-length: 7\r\n\r\n{{\"a\":1}}"
            )
        );
        // A POST without a body says so; a GET has no length at all.
        http.post("/p", "tok", None).await.unwrap();
        assert!(rx
            .recv()
            .await
            .unwrap()
            .ends_with("content-length: 0\r\n\r\n"));
        http.get("/g", "tok").await.unwrap();
        assert!(rx.recv().await.unwrap().ends_with("Bearer tok\r\n\r\n"));
        // A line break would split the head: refused before anything is sent.
        let split = http
            .call(Method::POST, "/p", "tok", Some("k\r\nx: y"), NO_BODY)
            .await;
        assert_eq!(kind(&split), "transport request");
        assert_eq!(http.connections_opened(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_node_closed_while_idle_is_replaced() {
        let base = peer(|n, mut s| async move {
            read_request(&mut s).await;
            let body = format!("conn {n}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
            // The first connection is closed once idle; the next ones stay open.
            if n > 0 {
                read_request(&mut s).await;
            }
        })
        .await;
        let http = client(&base);
        let first = http.get("/x", "t").await.unwrap();
        assert_eq!(&first.bytes[..], b"conn 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = http.get("/x", "t").await.unwrap();
        assert_eq!(&second.bytes[..], b"conn 1");
        assert_eq!(http.connections_opened(), 2);
    }

    #[tokio::test]
    async fn a_connection_with_bytes_past_its_answer_is_not_reused() {
        let base = peer(|n, mut s| async move {
            read_request(&mut s).await;
            let answer: &[u8] = if n == 0 {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext"
            };
            s.write_all(answer).await.unwrap();
            read_request(&mut s).await;
        })
        .await;
        let http = client(&base);
        assert_eq!(&http.get("/x", "t").await.unwrap().bytes[..], b"ok");
        // The stray bytes are not read as the next request's answer.
        assert_eq!(&http.get("/x", "t").await.unwrap().bytes[..], b"next");
        assert_eq!(http.connections_opened(), 2);
    }

    #[tokio::test]
    async fn connection_close_is_honoured_and_broken_answers_are_errors() {
        let base = peer(|n, mut s| async move {
            read_request(&mut s).await;
            let answer: &[u8] = match n {
                0 => b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                1 => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
                2 => b"not http at all\r\n\r\n",
                // A node that reads the request and closes without an answer.
                _ => b"",
            };
            s.write_all(answer).await.unwrap();
        })
        .await;
        let http = client(&base);
        assert_eq!(&http.get("/x", "t").await.unwrap().bytes[..], b"ok");
        assert_eq!(kind(&http.get("/x", "t").await), "transport body");
        assert_eq!(kind(&http.get("/x", "t").await), "transport body");
        assert_eq!(kind(&http.get("/x", "t").await), "transport request");
        assert_eq!(http.connections_opened(), 4, "no connection was reused");
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
