//! Logs and traces: the `tracing` subscriber, W3C trace context, and the optional OTLP exporter.
//!
//! Every request gets a span (`http`) whose trace continues the caller's `traceparent` header
//! or starts a new one; the response carries the node's own `traceparent`, and every log line
//! written inside the request shows its `trace_id`. The trace follows the command: the router
//! hands the span to the entity's actor (over the peer link too, as a `traceparent` in the call
//! frame), the actor's store commit joins a group-commit batch that links back to it, the
//! outbox rows keep the trace context and the relay puts it in the Kafka record's headers,
//! where the events feed picks it up to publish to websockets under it.
//!
//! Trace ids always exist (they are what the logs and responses show); spans leave the node
//! only when `telemetry.otlp_endpoint` is set, through a batch exporter speaking OTLP over
//! HTTP/protobuf on its own thread. Without an endpoint the OpenTelemetry layer is not
//! installed at all: a small layer of our own (`Ids`) keeps each span's trace id, span id and
//! sampled flag, which is all the logs, the answers and the hops between nodes need.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::num::{NonZeroU128, NonZeroU64};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing::span::{Attributes, Id};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The W3C header name.
pub const TRACEPARENT: &str = "traceparent";

/// Tracing settings (`telemetry:` in config.yaml).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector base URL (`http://collector:4318`); spans go to `{url}/v1/traces`.
    /// Empty: no spans leave the node (trace ids are still made, logged and returned).
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces exported, 0..=1; a caller's sampled flag is followed.
    pub sample_ratio: f64,
    /// Log line format: `text` or `json`.
    pub log_format: String,
    /// Log filter when `RUST_LOG` is unset (`info`, `waimai=debug,info`, ...).
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            service_name: "waimai".into(),
            sample_ratio: 1.0,
            log_format: "text".into(),
            log_level: "info".into(),
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter could not be built (bad endpoint).
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// A bad setting.
    #[error("telemetry config: {0}")]
    Config(String),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the exporter alive; `shutdown` (or drop) flushes the spans still buffered.
pub struct Telemetry {
    /// `None` when nothing is exported.
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(&self) {
        let Some(provider) = &self.provider else {
            return;
        };
        if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::debug!(error = %e, "tracer provider shutdown");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Text log lines to stdout, with terminal colour codes only when stdout is a terminal (a log
/// file or a collector got escape codes in every line). The node's text logs ([`init`]) and
/// every other command's ([`init_command_logs`]) are written by it.
fn text_lines<S>() -> tracing_subscriber::fmt::Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal())
}

/// Log lines for the commands other than `serve` (the load generator, the simulator): text to
/// stdout, filtered by `RUST_LOG` (default `info`); no trace context, nothing exported.
pub fn init_command_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Fails only when a subscriber is already installed, which then writes the lines.
    let _ = tracing_subscriber::registry()
        .with(text_lines().with_filter(filter))
        .try_init();
}

/// Installs the global subscriber: log lines to stdout (filtered by `RUST_LOG` or
/// `log_level`), and trace context on waimai's own spans (exported when an endpoint is set).
pub fn init(cfg: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let provider = provider(cfg)?;
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| cfg.log_level.clone());
    // The filter can be swapped later (a config reload changing `log_level`).
    let first = log_filter(&spec)?;
    let log_max = log_max_level(&first);
    let (filter, handle) = tracing_subscriber::reload::Layer::new(first);
    let _ = LOG_FILTER.set(Box::new(move |spec: &str| {
        let f = log_filter(spec)?;
        let max = log_max_level(&f);
        handle
            .reload(f)
            .map_err(|e| TelemetryError::Config(format!("log filter: {e}")))?;
        log::set_max_level(max);
        Ok(())
    }));
    let fmt = match cfg.log_format.as_str() {
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
        _ => text_lines().with_filter(filter).boxed(),
    };
    // Only waimai's spans carry trace context (a dependency's spans and events stay out): the
    // OpenTelemetry layer when spans are exported, else the `Ids` layer.
    let otel = provider.as_ref().map(exporting_layer);
    let ids = provider.is_none().then(trace_ids_layer);
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .with(ids)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    // `log` records (tungstenite logs every websocket frame at trace level, sqlx every
    // statement at debug) are events only the log lines take: below the log filter's own level
    // they now stop at `log`'s one-atomic check instead of passing through `tracing_log` and
    // every layer's filter (about 2% of a node's CPU in `lifecycle`).
    log::set_max_level(log_max);
    Ok(Telemetry { provider })
}

/// The filter of the layers that keep trace context: waimai's spans only.
///
/// It answers `sometimes` (never `always`) for the spans it takes, so no callsite caches
/// `Interest::always`: with per-layer filters, such a callsite skips `enabled()` and its span is
/// judged by whatever the previous `enabled()` call left behind (tokio-rs/tracing #2519; sqlx's
/// `log_enabled!` calls through tracing-log trigger it), which silently dropped request spans
/// from both layers on PostgreSQL.
fn waimai_spans<S>() -> impl tracing_subscriber::layer::Filter<S> {
    fn ours(m: &tracing::Metadata<'_>) -> bool {
        m.is_span() && m.target().starts_with("waimai")
    }
    tracing_subscriber::filter::dynamic_filter_fn(|m, _| ours(m))
        .with_callsite_filter(|m| {
            if ours(m) {
                tracing::subscriber::Interest::sometimes()
            } else {
                tracing::subscriber::Interest::never()
            }
        })
        // waimai's spans are all `info_span!`. Without a hint this layer wanted every level, so
        // the subscriber's max level was TRACE and so was `log`'s.
        .with_max_level_hint(tracing::level_filters::LevelFilter::INFO)
}

/// The layer `init` installs when spans are exported: OpenTelemetry's, on waimai's spans,
/// exporting through `provider` (public for the benches, which compare it with the `Ids` layer).
pub fn exporting_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("waimai"))
        .with_threads(false)
        .with_location(false)
        .with_tracked_inactivity(false)
        .with_filter(waimai_spans())
}

/// The layer `init` installs when nothing is exported: trace context on waimai's spans, kept by
/// `IdsLayer` (public for the benches and for embedders with a subscriber of their own).
pub fn trace_ids_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    IdsLayer.with_filter(waimai_spans())
}

/// The W3C trace context of one span when nothing is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ids {
    trace_id: NonZeroU128,
    span_id: NonZeroU64,
    /// The caller asked for the trace to be recorded (new traces are not: nothing exports).
    sampled: bool,
}

/// Gives every span it sees its `Ids`: the trace and sampled flag of its parent (or a new trace,
/// unsampled), and a span id of its own.
///
/// Without an exporter this is all the OpenTelemetry layer was used for, and it cost far more:
/// per span it built a span to export (attributes, name, events, timings) that the `AlwaysOff`
/// sampler then dropped, and every `enter` and `exit` went through it. With this layer in its
/// place a create costs the node about 6.5% less CPU (with no trace layer at all, 14% less, in
/// an experiment; BENCHMARKS.md).
struct IdsLayer;

impl<S> Layer<S> for IdsLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        // Under a per-layer filter the context shows only the spans this layer sees.
        let parent = if let Some(p) = attrs.parent() {
            ctx.span(p)
        } else if attrs.is_contextual() {
            ctx.lookup_current()
        } else {
            None
        };
        let inherited = parent.and_then(|p| p.extensions().get::<Ids>().copied());
        let ids = Ids {
            trace_id: inherited.map_or_else(rand::random, |p| p.trace_id),
            span_id: rand::random(),
            sampled: inherited.is_some_and(|p| p.sampled),
        };
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(ids);
        }
    }
}

/// Whether the `Ids` layer keeps the trace context of `span` (nothing is exported).
fn has_ids(span: &tracing::Span) -> bool {
    with_ids(span, |_| ()).is_some()
}

/// Runs `f` on the `Ids` of `span`, if the `Ids` layer gave it some.
fn with_ids<T>(span: &tracing::Span, f: impl FnOnce(&mut Ids) -> T) -> Option<T> {
    span.with_subscriber(|(id, dispatch)| with_ids_of(dispatch, id, f))
        .flatten()
}

/// Runs `f` on the `Ids` of the span `id` of `dispatch`, if the `Ids` layer gave it some.
fn with_ids_of<T>(
    dispatch: &tracing::Dispatch,
    id: &tracing::span::Id,
    f: impl FnOnce(&mut Ids) -> T,
) -> Option<T> {
    let span = dispatch.downcast_ref::<Registry>()?.span(id)?;
    let mut ext = span.extensions_mut();
    ext.get_mut::<Ids>().map(f)
}

/// The caller's span, as a W3C `traceparent` value names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Remote {
    trace_id: NonZeroU128,
    span_id: NonZeroU64,
    sampled: bool,
}

impl Remote {
    /// The same, for the OpenTelemetry layer (a parent to continue, or a link).
    fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id.get().to_be_bytes()),
            SpanId::from_bytes(self.span_id.get().to_be_bytes()),
            if self.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        )
    }
}

/// Reads a W3C `traceparent` value, for both layers; `None` when it is malformed, as the
/// standard says: ids of the wrong length or not lower-case hex, all-zero ids, version `ff`,
/// or a version-00 value with more than four fields. (OpenTelemetry's propagator, used for
/// this before, took short ids and a leading `+`.)
fn parse_traceparent(tp: &str) -> Option<Remote> {
    let parts: Vec<&str> = tp.trim().split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let [version, trace, parent, flags, ..] = parts[..] else {
        return None;
    };
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.len() != 4) {
        return None;
    }
    if !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    Some(Remote {
        trace_id: NonZeroU128::new(u128::from_str_radix(trace, 16).ok()?)?,
        span_id: NonZeroU64::new(u64::from_str_radix(parent, 16).ok()?)?,
        sampled: u8::from_str_radix(flags, 16).ok()? & 1 == 1,
    })
}

/// Swaps the installed subscriber's log filter; set once by `init`.
type SetFilter = Box<dyn Fn(&str) -> Result<(), TelemetryError> + Send + Sync>;
static LOG_FILTER: std::sync::OnceLock<SetFilter> = std::sync::OnceLock::new();

/// The log filter for `spec` (`RUST_LOG` syntax). warp's request-span filter logs two lines
/// per request (and a warning per 4xx): unless `spec` names warp, it is off, since the
/// request span and the metrics say it better.
fn log_filter(spec: &str) -> Result<EnvFilter, TelemetryError> {
    let mut filter = EnvFilter::try_new(spec)
        .map_err(|e| TelemetryError::Config(format!("log filter {spec:?}: {e}")))?;
    if !spec.contains("warp") {
        if let Ok(d) = "warp::filters::trace=off".parse() {
            filter = filter.add_directive(d);
        }
    }
    Ok(filter)
}

/// The most verbose `log` level `filter` can let through (every level when it cannot tell).
fn log_max_level(filter: &EnvFilter) -> log::LevelFilter {
    use tracing::level_filters::LevelFilter;
    match filter.max_level_hint() {
        Some(LevelFilter::OFF) => log::LevelFilter::Off,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// Changes the log filter of the subscriber `init` installed (a config reload). Without one
/// (a library user or a test with its own subscriber) the filter is only checked.
pub fn set_log_level(spec: &str) -> Result<(), TelemetryError> {
    match LOG_FILTER.get() {
        Some(set) => set(spec),
        None => log_filter(spec).map(|_| ()),
    }
}

/// The exporting tracer provider; `None` without an endpoint (the `Ids` layer then keeps the
/// trace context).
fn provider(cfg: &TelemetryConfig) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if !(0.0..=1.0).contains(&cfg.sample_ratio) {
        return Err(TelemetryError::Config(format!(
            "sample_ratio must be within 0..=1, not {}",
            cfg.sample_ratio
        )));
    }
    if cfg.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let url = traces_url(&cfg.otlp_endpoint);
    // The blocking HTTP client must not be built on an async runtime's thread.
    let exporter = std::thread::spawn(move || {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(5))
            .with_headers(HashMap::new())
            .build()
    })
    .join()
    .map_err(|_| TelemetryError::Exporter("exporter builder panicked".into()))?
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    Ok(Some(
        builder
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_batch_exporter(exporter)
            .build(),
    ))
}

/// `{base}/v1/traces`, unless the URL already names the traces path.
fn traces_url(base: &str) -> String {
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{}/v1/traces", base.trim_end_matches('/'))
    }
}

/// Makes `span` continue the trace in a W3C `traceparent` value (ignored when malformed, as
/// the standard asks: the span then starts a new trace).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(remote) = traceparent.and_then(parse_traceparent) else {
        return;
    };
    let continued = with_ids(span, |ids| {
        ids.trace_id = remote.trace_id;
        ids.sampled = remote.sampled;
    });
    if continued.is_none() {
        let cx = opentelemetry::Context::new().with_remote_span_context(remote.span_context());
        let _ = span.set_parent(cx);
    }
}

/// The W3C `traceparent` of `span` (`None` for a span without trace context, such as a
/// disabled one).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if let Some(ids) = with_ids(span, |ids| *ids) {
        return Some(format!(
            "00-{:032x}-{:016x}-{:02x}",
            ids.trace_id,
            ids.span_id,
            u8::from(ids.sampled)
        ));
    }
    let sc = otel_span_context(span)?;
    Some(format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    ))
}

/// Whether `span` belongs to a sampled trace (one whose spans are exported).
pub fn is_sampled(span: &tracing::Span) -> bool {
    if span.is_none() {
        return false;
    }
    with_ids(span, |ids| ids.sampled)
        .unwrap_or_else(|| span.context().span().span_context().is_sampled())
}

/// Whether the current span belongs to a sampled trace: `is_sampled(&Span::current())` without
/// taking a handle on the span, which is a clone and a close in the registry (~800
/// instructions; every commit and every announcement of a change asks).
pub fn current_is_sampled() -> bool {
    let kept = tracing::dispatcher::get_default(|dispatch| {
        let current = dispatch.current_span();
        current
            .id()
            .map(|id| with_ids_of(dispatch, id, |ids| ids.sampled))
    });
    match kept {
        None => false, // no current span
        Some(Some(sampled)) => sampled,
        // Trace context kept by the exporting layer (or a span without any): ask as before.
        Some(None) => is_sampled(&tracing::Span::current()),
    }
}

/// The `traceparent` of the current span.
pub fn current_traceparent() -> Option<String> {
    traceparent(&tracing::Span::current())
}

/// Renames `span` in its trace (a request span learns its route only once a handler runs; by
/// then its trace context exists, and recording `otel.name` alone would no longer reach it).
pub fn rename(span: &tracing::Span, name: &'static str) {
    span.record("otel.name", name);
    if span.is_none() || has_ids(span) {
        return;
    }
    span.context().span().update_name(name);
}

/// The trace id of `span` (32 hex digits), for its log lines; `None` as for `traceparent`.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if let Some(id) = with_ids(span, |ids| ids.trace_id) {
        return Some(format!("{id:032x}"));
    }
    otel_span_context(span).map(|sc| sc.trace_id().to_string())
}

/// The OpenTelemetry span context of `span`, when it has a valid one.
fn otel_span_context(span: &tracing::Span) -> Option<SpanContext> {
    let sc = span.context().span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Links `span` to the span a `traceparent` names (a batch serving many commands links to each).
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    if has_ids(span) {
        return; // nothing is exported, so there is nothing to link
    }
    if let Some(remote) = parse_traceparent(traceparent) {
        span.add_link(remote.span_context());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_signal_path_once() {
        assert_eq!(
            traces_url("http://c:4318"),
            "http://c:4318/v1/traces".to_string()
        );
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn a_traceparent_is_parsed_as_the_standard_says() {
        let tid = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128;
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let remote = parse_traceparent(ok).expect("valid");
        assert_eq!(
            (remote.trace_id, remote.sampled),
            (NonZeroU128::new(tid).unwrap(), true)
        );
        assert_eq!(remote.span_id.get(), 0x00f0_67aa_0ba9_02b7);
        let sc = remote.span_context();
        assert_eq!(
            (sc.trace_id().to_string(), sc.span_id().to_string()),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into()
            )
        );
        assert!(sc.is_sampled() && sc.is_remote() && sc.is_valid());
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(parse_traceparent(unsampled).map(|p| p.sampled), Some(false));
        assert!(!parse_traceparent(unsampled)
            .expect("valid")
            .span_context()
            .is_sampled());
        // A later version may add fields; version 00 may not.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(parse_traceparent(later).is_some());
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-not-a-trace-01",
            "",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    /// The parts of a `traceparent`: trace id, span id, flags.
    fn parts(tp: &str) -> (String, String, String) {
        let p: Vec<&str> = tp.split('-').collect();
        assert_eq!(p.len(), 4, "{tp}");
        assert_eq!(p[0], "00", "{tp}");
        (p[1].into(), p[2].into(), p[3].into())
    }

    #[test]
    fn without_an_exporter_spans_keep_their_trace_context() {
        let subscriber = tracing_subscriber::registry().with(trace_ids_layer());
        tracing::subscriber::with_default(subscriber, || {
            // A root span starts an unsampled trace of its own.
            let root = tracing::info_span!(target: "waimai::test", "root");
            let tp = traceparent(&root).expect("a root span has a traceparent");
            let (trace, span_id, flags) = parts(&tp);
            assert_eq!((trace.len(), span_id.len(), flags.as_str()), (32, 16, "00"));
            assert!(!is_sampled(&root));
            assert_eq!(trace_id(&root), Some(trace.clone()));
            let other = tracing::info_span!(target: "waimai::test", "other root");
            assert_ne!(parts(&traceparent(&other).expect("tp")).0, trace);

            // A child (entered parent, or named one) shares the trace, with its own span id.
            let child = root.in_scope(|| tracing::info_span!(target: "waimai::test", "child"));
            let (t, s, _) = parts(&traceparent(&child).expect("tp"));
            assert_eq!(t, trace);
            assert_ne!(s, span_id);
            let named = tracing::info_span!(target: "waimai::test", parent: &root, "named");
            assert_eq!(parts(&traceparent(&named).expect("tp")).0, trace);
            let detached =
                root.in_scope(|| tracing::info_span!(target: "waimai::test", parent: None, "d"));
            assert_ne!(parts(&traceparent(&detached).expect("tp")).0, trace);

            // A caller's context is continued, sampled flag included, and children follow it.
            let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let req = tracing::info_span!(target: "waimai::test", "request");
            continue_trace(&req, Some(caller));
            let (t, s, f) = parts(&traceparent(&req).expect("tp"));
            assert_eq!(
                (t.as_str(), f.as_str()),
                ("4bf92f3577b34da6a3ce929d0e0e4736", "01")
            );
            assert_ne!(s, "00f067aa0ba902b7", "the span keeps an id of its own");
            assert!(is_sampled(&req));
            let inner = req.in_scope(|| tracing::info_span!(target: "waimai::test", "inner"));
            assert!(is_sampled(&inner));
            // Asked of the current span without a handle on it, the answer is the same.
            assert!(req.in_scope(current_is_sampled));
            assert!(inner.in_scope(current_is_sampled));
            assert!(!root.in_scope(current_is_sampled));
            assert!(!child.in_scope(current_is_sampled));
            assert!(!current_is_sampled(), "outside any span");
            assert_eq!(parts(&traceparent(&inner).expect("tp")).0, t);
            assert_eq!(
                req.in_scope(current_traceparent).map(|tp| parts(&tp).0),
                Some(t.clone())
            );

            // A malformed one is ignored: the span keeps the trace it had.
            let before = traceparent(&other).expect("tp");
            continue_trace(&other, Some("00-not-a-trace-01"));
            assert_eq!(traceparent(&other), Some(before));

            // Spans of other crates, and disabled spans, carry no trace context.
            let theirs = tracing::info_span!(target: "hyper::proto", "theirs");
            assert_eq!(traceparent(&theirs), None);
            assert!(!theirs.in_scope(current_is_sampled));
            assert_eq!(
                req.in_scope(|| theirs.in_scope(current_is_sampled)),
                req.in_scope(|| theirs.in_scope(|| is_sampled(&tracing::Span::current())))
            );
            assert_eq!(traceparent(&tracing::Span::none()), None);
            assert!(!is_sampled(&tracing::Span::none()));
            // Renaming and linking are accepted (nothing is exported, so they change nothing).
            rename(&req, "POST /v1/orders");
            link_to(&req, caller);
            assert_eq!(parts(&traceparent(&req).expect("tp")).0, t);
        });
    }

    #[test]
    fn a_spans_trace_id_is_the_one_it_continues() {
        let subscriber = tracing_subscriber::registry().with(trace_ids_layer());
        tracing::subscriber::with_default(subscriber, || {
            let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let span = tracing::info_span!(target: "waimai::test", "request");
            continue_trace(&span, Some(tp));
            assert_eq!(
                trace_id(&span).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
            let garbage = tracing::info_span!(target: "garbage", "theirs");
            assert_eq!(trace_id(&garbage), None);
        });
    }
}
