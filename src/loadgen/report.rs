//! Measurements and the report: a [`Recorder`] that scenarios feed (HDR histograms in
//! microseconds per operation and per websocket event type, error counts by HTTP status and
//! error code), and the [`Report`] built from it: a human table and the same data as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::invariants::Check;
use super::Ctx;

/// Largest latency the histograms hold, µs (an hour).
const MAX_US: u64 = 3_600_000_000;

/// Largest latency a timeline slice's histogram holds, µs (a minute; longer ones count as a
/// minute). Slices are many, so they keep 2 significant figures over a shorter range.
const SLICE_MAX_US: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    // 3 significant figures over 1 µs ..= 1 h: the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
    })
}

/// How an operation ended.
#[derive(Debug, Clone)]
pub(crate) enum Class {
    /// 2xx (or an acknowledged websocket command).
    Ok,
    /// An answer the scenario expects under contention (hot-sku's 409 out_of_stock).
    Rejected(String),
    /// Anything else: `"409 illegal_transition"`, `"transport timeout"`, ...
    Error(String),
    /// Refused by the node's gateway before any work: `"429 rate_limited"`,
    /// `"503 overloaded"`. Not an error of the node, but reported on its own.
    Shed(String),
}

#[derive(Debug)]
struct OpStats {
    hist: Histogram<u64>,
    /// Latency of the accepted (2xx) answers only.
    ok_hist: Histogram<u64>,
    ok: u64,
    rejected: u64,
    errors: u64,
    shed: u64,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            hist: histogram(),
            ok_hist: histogram(),
            ok: 0,
            rejected: 0,
            errors: 0,
            shed: 0,
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    /// Per operation.
    ops: BTreeMap<&'static str, OpStats>,
    /// (operation, kind) -> count; both errors and expected rejections.
    answers: BTreeMap<(&'static str, String), u64>,
    /// Websocket event type -> server-to-client latency.
    events: BTreeMap<String, Histogram<u64>>,
    /// Whole orders that reached their goal in the window.
    orders_done: u64,
    /// Creation (intended start) to delivery, per finished order.
    delivery: Option<Histogram<u64>>,
    /// The timeline: the main operation's answers by the slice their start falls in.
    slices: Vec<SliceStats>,
}

/// One slice of the timeline.
#[derive(Debug)]
struct SliceStats {
    hist: Histogram<u32>,
    errors: u64,
}

impl SliceStats {
    fn new() -> SliceStats {
        // 2 significant figures over 1 µs ..= 1 min: constant bounds, so this cannot fail.
        let hist = Histogram::new_with_bounds(1, SLICE_MAX_US, 2).unwrap_or_else(|_| {
            Histogram::new(2).unwrap_or_else(|_| unreachable!("2 significant figures is valid"))
        });
        SliceStats { hist, errors: 0 }
    }
}

/// What a timeline slices: the slice's length and the operations it follows.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    slice: Duration,
    ops: &'static [&'static str],
}

/// The measured window: operations whose (intended) start falls inside it count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// End of warm-up.
    pub from: Instant,
    /// End of the run.
    pub until: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.until
    }
}

/// Thread-safe sink for measurements.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    /// Set when the load starts, with its start's wall-clock time (ms since the Unix epoch).
    window: OnceLock<(Window, i64)>,
    /// Everything measured.
    stats: Mutex<Stats>,
    /// Live counters for the progress bar (warm-up included).
    live_ok: AtomicU64,
    /// Live error count for the progress bar.
    live_errors: AtomicU64,
    /// Set by `--timeline`.
    timeline: Option<Timeline>,
}

/// The operations that stand for a scenario: `create_order` (`create`, `hot-sku`),
/// `whole_order` (`lifecycle`, `track`), the reads (`browse`).
pub(crate) fn primary_ops(scenario: super::Scenario) -> &'static [&'static str] {
    use super::Scenario;
    match scenario {
        Scenario::Lifecycle | Scenario::Track => &["whole_order"],
        Scenario::Browse => &[super::scenarios::BROWSE, super::scenarios::BROWSE_NEAR],
        Scenario::Create | Scenario::HotSku => &[super::scenarios::CREATE_ORDER],
    }
}

impl Recorder {
    /// An empty recorder, not measuring yet.
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Also keeps a timeline of `ops` in slices of `slice` (none when `None`).
    pub fn with_timeline(
        mut self,
        slice: Option<Duration>,
        ops: &'static [&'static str],
    ) -> Recorder {
        self.timeline = slice
            .filter(|s| !s.is_zero())
            .map(|slice| Timeline { slice, ops });
        self
    }

    /// Starts measuring operations that start within `w`.
    pub fn open(&self, w: Window) {
        let from_now = w.from.saturating_duration_since(Instant::now());
        let from_unix_ms = crate::domain::now_ms() + from_now.as_millis() as i64;
        let _ = self.window.set((w, from_unix_ms));
    }

    /// The window, once opened.
    pub fn window(&self) -> Option<Window> {
        self.window.get().map(|(w, _)| *w)
    }

    /// When the window opened, ms since the Unix epoch (0 before it has).
    fn window_from_unix_ms(&self) -> i64 {
        self.window.get().map_or(0, |(_, ms)| *ms)
    }

    fn measured(&self, t: Instant) -> bool {
        self.window().is_some_and(|w| w.contains(t))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Operations recorded so far, warm-up included (the load generator's requests).
    pub fn requests(&self) -> u64 {
        let (ok, errors) = self.live();
        ok + errors
    }

    /// (ok, errors) so far, warm-up included.
    pub fn live(&self) -> (u64, u64) {
        (
            self.live_ok.load(Ordering::Relaxed),
            self.live_errors.load(Ordering::Relaxed),
        )
    }

    /// Records operation `op` that started (or was meant to start) at `started` and ended now.
    pub fn op(&self, op: &'static str, started: Instant, class: Class) {
        match class {
            Class::Error(_) => self.live_errors.fetch_add(1, Ordering::Relaxed),
            _ => self.live_ok.fetch_add(1, Ordering::Relaxed),
        };
        self.record(op, started, class, true);
    }

    /// Records a subset of answers already counted under another op (hot-sku's rejects
    /// among `create_order`) as a row of its own: latency and class only, not counted again in
    /// the live figures or the answers table.
    pub fn sub_op(&self, op: &'static str, started: Instant, class: Class) {
        self.record(op, started, class, false);
    }

    fn record(&self, op: &'static str, started: Instant, class: Class, answers: bool) {
        let elapsed = started.elapsed();
        let Some(w) = self.window().filter(|w| w.contains(started)) else {
            return;
        };
        let errored = matches!(class, Class::Error(_));
        let mut g = self.lock();
        let s = g.ops.entry(op).or_insert_with(OpStats::new);
        s.hist.saturating_record(micros(elapsed));
        let kind = match class {
            Class::Ok => {
                s.ok += 1;
                s.ok_hist.saturating_record(micros(elapsed));
                None
            }
            Class::Shed(k) => {
                s.shed += 1;
                Some(k)
            }
            Class::Rejected(k) => {
                s.rejected += 1;
                Some(k)
            }
            Class::Error(k) => {
                s.errors += 1;
                Some(k)
            }
        };
        if let (Some(k), true) = (kind, answers) {
            *g.answers.entry((op, k)).or_default() += 1;
        }
        if let (Some(t), true) = (self.timeline, answers) {
            if t.ops.contains(&op) {
                let i = (started.saturating_duration_since(w.from).as_nanos() / t.slice.as_nanos())
                    as usize;
                if g.slices.len() <= i {
                    g.slices.resize_with(i + 1, SliceStats::new);
                }
                let slice = &mut g.slices[i];
                slice
                    .hist
                    .saturating_record(micros(elapsed).min(SLICE_MAX_US));
                slice.errors += u64::from(errored);
            }
        }
    }

    /// Records a websocket event of type `kind` produced at server time `ts_ms` and received now.
    pub fn event(&self, kind: &str, ts_ms: i64) {
        if !self.measured(Instant::now()) {
            return;
        }
        let lag_ms = (crate::domain::now_ms() - ts_ms).max(0) as u64;
        let lag_us = lag_ms.saturating_mul(1000).max(1);
        let mut g = self.lock();
        // The name is new once per kind: no `String` for the others.
        match g.events.get_mut(kind) {
            Some(h) => h.saturating_record(lag_us),
            None => {
                let mut h = histogram();
                h.saturating_record(lag_us);
                g.events.insert(kind.to_string(), h);
            }
        }
    }

    /// Records a whole order finished: `started` is its creation's (intended) start,
    /// `delivered` when the rider's deliver was acknowledged.
    pub fn order_done(&self, started: Instant, delivered: Instant) {
        if !self.measured(started) {
            return;
        }
        let mut g = self.lock();
        g.orders_done += 1;
        g.delivery
            .get_or_insert_with(histogram)
            .saturating_record(micros(delivered.saturating_duration_since(started)));
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros().min(MAX_US as u128) as u64).max(1)
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One operation's figures over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// e.g. `create_order`, `pay`, `merchant_accept_ws`.
    pub op: String,
    /// Requests.
    pub count: u64,
    /// 2xx / acknowledged.
    pub ok: u64,
    /// Expected rejections (hot-sku's 409 out_of_stock).
    pub rejected: u64,
    /// Everything else.
    pub errors: u64,
    /// Refused by the gateway (429 rate limited, 503 overloaded): not errors of the node.
    pub shed: u64,
    /// count / measured seconds.
    pub per_sec: f64,
    /// Latency of all answers (open model: from the intended start).
    pub latency: Latency,
    /// Latency of the accepted (2xx) answers only.
    pub accepted_latency: Latency,
}

/// One slice of the timeline (`--timeline`): the scenario's main operation, by when it started
/// (the intended start in an open model).
#[derive(Debug, Clone, Serialize)]
pub struct Slice {
    /// Start of the slice, seconds after the measured window opened.
    pub from_s: f64,
    /// Answers to operations that started in it.
    pub count: u64,
    /// Of which errors.
    pub errors: u64,
    /// Median, ms (2 significant figures).
    pub p50_ms: f64,
    /// 99th percentile, ms (2 significant figures).
    pub p99_ms: f64,
    /// Largest, ms (2 significant figures; at most a minute).
    pub max_ms: f64,
}

/// Answers other than success, by operation and kind.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerCount {
    /// Operation.
    pub op: String,
    /// `"409 out_of_stock"`, `"transport timeout"`, ...
    pub kind: String,
    /// How many.
    pub count: u64,
    /// Whether the scenario expects it (not an error).
    pub expected: bool,
}

/// One websocket event type's server-to-client latency (ms resolution: `ts` is in ms).
#[derive(Debug, Clone, Serialize)]
pub struct EventReport {
    /// Message `type`.
    pub event: String,
    /// Latency from the event's `ts` to its arrival.
    pub latency: Latency,
}

/// Whole orders.
#[derive(Debug, Clone, Serialize)]
pub struct OrdersReport {
    /// Orders acknowledged (201) over the whole run, warm-up included.
    pub acknowledged: u64,
    /// Orders that reached the scenario's goal in the measured window (created for
    /// create/hot-sku, delivered and confirmed for lifecycle/track).
    pub finished: u64,
    /// finished / measured seconds.
    pub per_sec: f64,
    /// Lifecycle/track: creation to delivery.
    pub creation_to_delivery: Option<Latency>,
}

/// Hot-sku outcome over every attempt.
#[derive(Debug, Clone, Serialize)]
pub struct HotSkuReport {
    /// Units on offer.
    pub stock: i64,
    /// Attempts made.
    pub attempts: u64,
    /// 201s.
    pub succeeded: u64,
    /// 409 out_of_stock.
    pub out_of_stock: u64,
    /// Anything else.
    pub other: u64,
}

/// The operation(s) that stand for the scenario (see [`primary_ops`]) over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct MainReport {
    /// `create_order` (`create`, `hot-sku`), `whole_order` (`lifecycle`, `track`), or both
    /// browse reads (`browse`).
    pub ops: Vec<String>,
    /// How many of them succeeded.
    pub ok: u64,
    /// `ok` per second.
    pub per_sec: f64,
}

/// An invariant check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct InvariantReport {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// Evidence: counts, or the first offending ids.
    pub detail: String,
}

/// Creates that waited at the nodes' door in the measured window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DoorWait {
    /// How many finished waiting in the window (most with a turn; a client that gave up too).
    pub waited: u64,
    /// Their mean wait, milliseconds.
    pub mean_ms: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Node URL.
    pub target: String,
    /// Load model.
    pub load: String,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Measured window, seconds.
    pub measured_s: f64,
    /// The scenario's main operation: what `--min-rate` and `scripts/bench-compare` judge.
    pub main: MainReport,
    /// Merchants, SKUs per merchant, stock per SKU, riders, customers.
    pub world: BTreeMap<String, i64>,
    /// Per operation.
    pub ops: Vec<OpReport>,
    /// Whole orders.
    pub orders: OrdersReport,
    /// Non-success answers.
    pub answers: Vec<AnswerCount>,
    /// Websocket event latency by type.
    pub ws_events: Vec<EventReport>,
    /// Hot-sku only.
    pub hot_sku: Option<HotSkuReport>,
    /// Invariant verdicts.
    pub invariants: Vec<InvariantReport>,
    /// The load generator's own CPU (user + system) per request it made, microseconds, over the
    /// whole run (Linux; `None` elsewhere).
    pub client_cpu_us_per_request: Option<f64>,
    /// TCP connections the load generator opened to the node(s), setup and invariant checks
    /// included: a closed model opens about one per user; an open model one more each time
    /// every open one is busy, so a climb here means requests piled up.
    pub connections_opened: u64,
    /// The nodes' CPU (their `process_cpu_seconds_total` on `/metrics`, summed over the
    /// targets) over the measured window, microseconds per main operation answered OK in it
    /// (`whole_order`, `create_order`, ...). `None` when a node does not export it. The
    /// counter moves in 10 ms steps, so a short window reads coarsely.
    pub node_cpu_us_per_op: Option<f64>,
    /// The creates that waited at the nodes' door for a turn in the measured window, and how
    /// long on average (`waimai_door_wait_seconds`). `None` when none waited.
    pub door_wait: Option<DoorWait>,
    /// When the measured window opened, ms since the Unix epoch: for lining the timeline up
    /// with the node's logs, metrics or a profile.
    pub window_from_unix_ms: i64,
    /// `--timeline`'s slices (empty without it).
    pub timeline: Vec<Slice>,
}

impl Report {
    /// Builds the report from a finished run.
    pub(crate) fn build(ctx: &Ctx, measured: Duration, checks: Vec<Check>) -> Report {
        let plan = &ctx.plan;
        let secs = measured.as_secs_f64().max(1e-9);
        let g = ctx.rec.lock();
        let ops = g
            .ops
            .iter()
            .map(|(name, s)| OpReport {
                op: name.to_string(),
                count: s.ok + s.rejected + s.errors + s.shed,
                ok: s.ok,
                rejected: s.rejected,
                errors: s.errors,
                shed: s.shed,
                per_sec: (s.ok + s.rejected + s.errors + s.shed) as f64 / secs,
                latency: Latency::of(&s.hist),
                accepted_latency: Latency::of(&s.ok_hist),
            })
            .collect::<Vec<_>>();
        let main_ops = primary_ops(plan.args.scenario);
        let main_ok: u64 = ops
            .iter()
            .filter(|o| main_ops.contains(&o.op.as_str()))
            .map(|o| o.ok)
            .sum();
        let main = MainReport {
            ops: main_ops.iter().map(|o| o.to_string()).collect(),
            ok: main_ok,
            per_sec: main_ok as f64 / secs,
        };
        let expected_kinds = ["409 out_of_stock"];
        let hot = plan.args.scenario == super::Scenario::HotSku;
        let answers = g
            .answers
            .iter()
            .map(|((op, kind), n)| AnswerCount {
                op: op.to_string(),
                kind: kind.clone(),
                count: *n,
                expected: hot && expected_kinds.contains(&kind.as_str()),
            })
            .collect();
        let ws_events = g
            .events
            .iter()
            .map(|(k, h)| EventReport {
                event: k.clone(),
                latency: Latency::of(h),
            })
            .collect();
        let finished = match plan.args.scenario {
            super::Scenario::Create | super::Scenario::HotSku => g
                .ops
                .get(super::scenarios::CREATE_ORDER)
                .map(|s| s.ok)
                .unwrap_or(0),
            super::Scenario::Browse => 0,
            _ => g.orders_done,
        };
        let orders = OrdersReport {
            acknowledged: ctx.ledger.acked_count() as u64,
            finished,
            per_sec: finished as f64 / secs,
            creation_to_delivery: g.delivery.as_ref().map(Latency::of),
        };
        let hot_sku = hot.then(|| {
            let a = ctx.ledger.answers();
            let succeeded = a.get("201").copied().unwrap_or(0);
            let out_of_stock = a.get("409 out_of_stock").copied().unwrap_or(0);
            let attempts: u64 = a.values().sum();
            HotSkuReport {
                stock: plan.stock,
                attempts,
                succeeded,
                out_of_stock,
                other: attempts - succeeded - out_of_stock,
            }
        });
        let slice_ms = ctx.rec.timeline.map_or(0, |t| t.slice.as_millis() as u64);
        let ms = |us: u64| us as f64 / 1000.0;
        let timeline = g
            .slices
            .iter()
            .enumerate()
            .map(|(i, s)| Slice {
                // Whole milliseconds, then seconds: 0.3, not 0.30000000000000004.
                from_s: (i as u64 * slice_ms) as f64 / 1000.0,
                count: s.hist.len(),
                errors: s.errors,
                p50_ms: ms(s.hist.value_at_quantile(0.50)),
                p99_ms: ms(s.hist.value_at_quantile(0.99)),
                max_ms: ms(s.hist.max()),
            })
            .collect();
        let world = BTreeMap::from([
            ("merchants".to_string(), plan.merchants as i64),
            ("skus_per_merchant".to_string(), plan.skus as i64),
            ("stock_per_sku".to_string(), plan.stock),
            ("riders".to_string(), plan.riders as i64),
            ("customers".to_string(), plan.customers as i64),
        ]);
        Report {
            scenario: plan.args.scenario.name().to_string(),
            target: plan.args.target.join(","),
            load: plan.load.describe(),
            warmup_s: plan.warmup.as_secs_f64(),
            measured_s: measured.as_secs_f64(),
            main,
            world,
            ops,
            orders,
            answers,
            ws_events,
            hot_sku,
            client_cpu_us_per_request: None,
            connections_opened: 0,
            node_cpu_us_per_op: None,
            door_wait: None,
            window_from_unix_ms: ctx.rec.window_from_unix_ms(),
            timeline,
            invariants: checks
                .into_iter()
                .map(|c| InvariantReport {
                    name: c.name,
                    ok: c.ok,
                    detail: c.detail,
                })
                .collect(),
        }
    }

    /// The rate that stands for the scenario: created orders per second (`create`, `hot-sku`),
    /// whole orders per second (`lifecycle`, `track`), reads per second (`browse`, both kinds).
    pub fn primary_rate(&self) -> f64 {
        self.main.per_sec
    }

    /// Answers in the measured window that were errors (not success, not an expected
    /// rejection), over every operation.
    pub fn errors(&self) -> u64 {
        self.ops.iter().map(|o| o.errors).sum()
    }

    /// The invariants that broke (empty when the run is clean).
    pub fn violations(&self) -> Vec<&InvariantReport> {
        self.invariants.iter().filter(|c| !c.ok).collect()
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {} against {} | {} | warm-up {:.1}s, measured {:.1}s",
            self.scenario, self.target, self.load, self.warmup_s, self.measured_s
        );
        let world: Vec<String> = self.world.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "world: {}", world.join(" "));
        let _ = writeln!(out);
        let header = format!(
            "{:<22} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "operation",
            "count",
            "ok",
            "rejected",
            "errors",
            "shed",
            "per s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "ok p99"
        );
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "{}", "-".repeat(header.len()));
        for o in &self.ops {
            let l = &o.latency;
            let _ =
                writeln!(
                out,
                "{:<22} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                o.op, o.count, o.ok, o.rejected, o.errors, o.shed, o.per_sec, l.p50_ms, l.p90_ms,
                l.p99_ms, l.p999_ms, l.max_ms, o.accepted_latency.p99_ms
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "orders: {} acknowledged in all, {} finished in the window, {:.1} orders/s",
            self.orders.acknowledged, self.orders.finished, self.orders.per_sec
        );
        if let Some(us) = self.client_cpu_us_per_request {
            let _ = writeln!(
                out,
                "load generator CPU: {us:.1} µs per request (user + system, whole run); {} connections opened",
                self.connections_opened
            );
        }
        if let Some(us) = self.node_cpu_us_per_op {
            let _ = writeln!(
                out,
                "node CPU: {us:.1} µs per {} (process_cpu_seconds_total over the measured window, all targets)",
                self.main.ops.join(" or ")
            );
        }
        if let Some(d) = &self.door_wait {
            let _ = writeln!(
                out,
                "door: {} creates waited for a turn in the window, {:.1} ms on average (waimai_door_wait_seconds, all targets)",
                d.waited, d.mean_ms
            );
        }
        if !self.timeline.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{:<22} {:>8} {:>7} {:>9} {:>9} {:>9}",
                "timeline (from s)", "count", "errors", "p50 ms", "p99 ms", "max ms"
            );
            let _ = writeln!(
                out,
                "(0 s = {} ms since the Unix epoch)",
                self.window_from_unix_ms
            );
            for s in &self.timeline {
                let _ = writeln!(
                    out,
                    "{:<22.2} {:>8} {:>7} {:>9.1} {:>9.1} {:>9.1}",
                    s.from_s, s.count, s.errors, s.p50_ms, s.p99_ms, s.max_ms
                );
            }
        }
        if let Some(l) = &self.orders.creation_to_delivery {
            let _ = writeln!(
                out,
                "creation -> delivery ms: p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} (n={})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
            );
        }
        if let Some(h) = &self.hot_sku {
            let _ = writeln!(
                out,
                "hot-sku: stock {} | attempts {} | succeeded {} | out_of_stock {} | other {}",
                h.stock, h.attempts, h.succeeded, h.out_of_stock, h.other
            );
        }
        if !self.ws_events.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{:<22} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "ws event (ts->client)",
                "count",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms"
            );
            for e in &self.ws_events {
                let l = &e.latency;
                let _ = writeln!(
                    out,
                    "{:<22} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                    e.event, l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
        }
        if !self.answers.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "answers other than success (measured window):");
            for a in &self.answers {
                let _ = writeln!(
                    out,
                    "  {:<22} {:<36} {:>8}{}",
                    a.op,
                    a.kind,
                    a.count,
                    if a.expected { "  (expected)" } else { "" }
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "invariants:");
        for c in &self.invariants {
            let _ = writeln!(
                out,
                "  [{}] {}: {}",
                if c.ok { "ok" } else { "BROKEN" },
                c.name,
                c.detail
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_slices_the_main_operation_by_start() {
        let rec =
            Recorder::new().with_timeline(Some(Duration::from_millis(100)), &["create_order"]);
        let from = Instant::now() - Duration::from_secs(1);
        rec.open(Window {
            from,
            until: from + Duration::from_secs(10),
        });
        let at = |ms: u64| from + Duration::from_millis(ms);
        rec.op("create_order", at(50), Class::Ok);
        rec.op("create_order", at(150), Class::Ok);
        rec.op("create_order", at(160), Class::Error("500 internal".into()));
        rec.op(
            "create_order",
            at(450),
            Class::Shed("503 overloaded".into()),
        );
        // Not the main operation; a sub-row of one already counted; before the window.
        rec.op("get_order", at(20), Class::Ok);
        rec.sub_op("create_order", at(20), Class::Ok);
        rec.op("create_order", from - Duration::from_millis(1), Class::Ok);
        let g = rec.lock();
        let counts: Vec<u64> = g.slices.iter().map(|s| s.hist.len()).collect();
        assert_eq!(counts, [1, 2, 0, 0, 1]);
        let errors: Vec<u64> = g.slices.iter().map(|s| s.errors).collect();
        assert_eq!(errors, [0, 1, 0, 0, 0]);
        // Each answer took about as long as since its start: about 0.5-1 s, far under a minute.
        assert!(g.slices[1].hist.max() >= 800_000 && g.slices[1].hist.max() < SLICE_MAX_US);
    }

    #[test]
    fn the_window_and_its_wall_clock_start_are_set_once_together() {
        let rec = Recorder::new();
        assert_eq!(rec.window_from_unix_ms(), 0);
        let from = Instant::now() + Duration::from_secs(2);
        rec.open(Window {
            from,
            until: from + Duration::from_secs(10),
        });
        let first = rec.window_from_unix_ms();
        let now = crate::domain::now_ms();
        assert!(
            (now + 1_000..=now + 2_000).contains(&first),
            "{first} against {now}"
        );
        // A second open changes neither the window nor its wall-clock start.
        rec.open(Window {
            from: from + Duration::from_secs(60),
            until: from + Duration::from_secs(70),
        });
        assert_eq!(rec.window_from_unix_ms(), first);
        assert!(rec.window().is_some_and(|w| w.from == from));
    }

    #[test]
    fn without_a_timeline_nothing_is_sliced() {
        let rec = Recorder::new();
        let from = Instant::now();
        rec.open(Window {
            from,
            until: from + Duration::from_secs(10),
        });
        rec.op("create_order", from, Class::Ok);
        assert!(rec.lock().slices.is_empty());
    }
}
