//! An OTLP/HTTP trace receiver for tests: a real endpoint (protobuf over HTTP, what
//! `opentelemetry-otlp` sends) that keeps every span, and helpers to walk a trace's parents.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
pub use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use warp::Filter as _;

/// An OTLP/HTTP (protobuf) trace receiver on an ephemeral port: keeps every span it is sent.
pub struct Receiver {
    /// `http://127.0.0.1:PORT`: the node's `telemetry.otlp_endpoint`.
    pub base: String,
    /// Every span received.
    pub spans: Arc<Mutex<Vec<Span>>>,
}

/// Starts a receiver on the current tokio runtime.
pub fn receiver() -> Receiver {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let route = warp::post()
        .and(warp::path!("v1" / "traces"))
        .and(warp::body::bytes())
        .map(move |body: warp::hyper::body::Bytes| {
            match ExportTraceServiceRequest::decode(body.as_ref()) {
                Ok(req) => {
                    let mut kept = kept.lock().expect("spans");
                    for rs in req.resource_spans {
                        for ss in rs.scope_spans {
                            kept.extend(ss.spans);
                        }
                    }
                    warp::http::StatusCode::OK
                }
                Err(_) => warp::http::StatusCode::BAD_REQUEST,
            }
        });
    let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    Receiver {
        base: format!("http://{addr}"),
        spans,
    }
}

/// Lower-case hex of an id.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A span's name.
pub fn name(s: &Span) -> &str {
    &s.name
}

/// The spans of trace `tid` received so far, by span id.
pub fn trace_of(r: &Receiver, tid: &str) -> HashMap<String, Span> {
    r.spans
        .lock()
        .expect("spans")
        .iter()
        .filter(|s| hex(&s.trace_id) == tid)
        .map(|s| (hex(&s.span_id), s.clone()))
        .collect()
}

/// The names from `span` up to the root of its trace (as far as spans arrived).
pub fn ancestry(trace: &HashMap<String, Span>, span: &Span) -> Vec<String> {
    let mut names = vec![name(span).to_string()];
    let mut parent = hex(&span.parent_span_id);
    while let Some(p) = trace.get(&parent) {
        names.push(name(p).to_string());
        parent = hex(&p.parent_span_id);
    }
    names
}
