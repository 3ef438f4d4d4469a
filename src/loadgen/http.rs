//! The REST client: one reqwest pool sized to the load, JSON in and out, and a compact outcome
//! (status, body, error code) that scenarios and the recorder classify.

use std::time::Duration;

use reqwest::Method;
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

    /// A string field of the body.
    pub fn str(&self, field: &str) -> Option<String> {
        self.body()[field].as_str().map(str::to_string)
    }
}

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
pub(crate) struct Http {
    /// Pooled client.
    client: reqwest::Client,
    /// `http://host:port` of each target, no trailing slash.
    bases: Vec<String>,
    /// Round-robin position for `next_base`.
    turn: std::sync::atomic::AtomicUsize,
}

impl Http {
    /// A client for `bases` keeping up to `conns` idle connections.
    pub fn new(bases: &[String], conns: usize, timeout: Duration) -> Result<Http, LoadgenError> {
        if bases.is_empty() {
            return Err(LoadgenError::Args("--target is required".into()));
        }
        for base in bases {
            let url = url::Url::parse(base)
                .map_err(|e| LoadgenError::Args(format!("--target {base}: {e}")))?;
            if url.scheme() != "http" && url.scheme() != "https" {
                return Err(LoadgenError::Args(format!(
                    "--target {base}: scheme must be http or https"
                )));
            }
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(conns.max(1))
            .timeout(timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| LoadgenError::Client(e.to_string()))?;
        Ok(Http {
            client,
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_string())
                .collect(),
            turn: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The node the holder of `token` talks to.
    pub fn base_for(&self, token: &str) -> &str {
        if self.bases.len() == 1 {
            return &self.bases[0];
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        token.hash(&mut h);
        &self.bases[h.finish() as usize % self.bases.len()]
    }

    /// The targets in turn (to spread connections that share a token, like many trackers of
    /// one order).
    pub fn next_base(&self) -> &str {
        let i = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    /// Sends `method path` with a bearer token, an optional idempotency key and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Outcome {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base_for(token)))
            .bearer_auth(token);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(transport)?;
        Ok(Resp {
            status,
            bytes,
            parsed: std::sync::OnceLock::new(),
        })
    }

    /// GET.
    pub async fn get(&self, path: &str, token: &str) -> Outcome {
        self.call(Method::GET, path, token, None, None).await
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

fn transport(e: reqwest::Error) -> TransportError {
    let what = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    };
    TransportError(format!("transport {what}"))
}
