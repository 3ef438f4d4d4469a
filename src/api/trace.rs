//! The request span: continues the caller's W3C `traceparent` (or starts a trace), names
//! itself after the route once a handler runs (`timed`), and answers with the node's own
//! `traceparent` header so a caller can find the trace.

use tracing::field::Empty;
use warp::http::HeaderValue;
use warp::reply::Response;

use crate::telemetry;

/// The span a request runs in (`warp::trace`).
pub fn request_span(info: warp::trace::Info) -> tracing::Span {
    let span = tracing::info_span!(
        target: "waimai::http",
        "http",
        otel.name = Empty,
        otel.kind = "server",
        http.request.method = %info.method(),
        url.path = %info.path(),
        http.response.status_code = Empty,
        trace_id = Empty,
    );
    let parent = info
        .request_headers()
        .get(telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    telemetry::continue_trace(&span, parent);
    if let Some(id) = telemetry::trace_id(&span) {
        span.record("trace_id", id);
    }
    span
}

/// Adds the current (request) span's `traceparent` to the response.
pub fn with_traceparent(mut resp: Response) -> Response {
    let span = tracing::Span::current();
    span.record("http.response.status_code", resp.status().as_u16());
    if let Some(v) = telemetry::traceparent(&span).and_then(|tp| HeaderValue::from_str(&tp).ok()) {
        resp.headers_mut().insert(telemetry::TRACEPARENT, v);
    }
    resp
}

/// Names the request span after its route.
pub fn name_request(route: &'static str) {
    telemetry::rename(&tracing::Span::current(), route);
}
