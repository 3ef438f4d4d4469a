//! `waimai loadgen`: drives a running node over real HTTP and websockets and reports throughput,
//! latency and whether the node kept its invariants.
//!
//! # Layout
//! - [`LoadgenArgs`] and [`run`]: the command line and the entry point (setup, warm-up, measured
//!   run, invariant checks, report).
//! - `http` / `ws`: the REST client (one pool sized to the load) and websocket helpers.
//! - `setup`: the merchants, menus, riders and customer tokens a run creates for itself.
//! - `model`: closed (virtual users) and open (arrival rate, latency from the intended start)
//!   load models.
//! - `ledger`: what the node acknowledged, the raw material of the invariant checks.
//! - [`report`]: HDR histograms, the human table and the JSON report.
//! - `invariants`: the checks run after every scenario.
//! - `scenarios`: `create`, `lifecycle`, `track` and `hot-sku`.

mod http;
mod invariants;
mod ledger;
mod model;
pub mod report;
mod scenarios;
mod setup;
mod ws;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::api::Auth;
use crate::domain::Role;

pub use report::Report;

/// What a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Order creation only: every iteration is one `POST /v1/orders`; orders stay
    /// pending_payment.
    Create,
    /// Whole orders: customers order and pay, simulated merchants accept from their feed
    /// socket, simulated riders take offers from theirs, move, pick up and deliver, customers
    /// confirm. Needs the websocket protocol (issue 3) on the node.
    Lifecycle,
    /// Like lifecycle, but every order is watched by `--watchers` tracking sockets that measure
    /// event-to-client latency. Needs the websocket protocol (issue 3) on the node.
    Track,
    /// `--customers` customers race for one SKU holding `--stock` units, one unit each; exactly
    /// min(stock, attempts) must succeed and every other attempt must be 409 out_of_stock.
    HotSku,
    /// Merchant browsing: three iterations in four are one `GET /v1/merchants/{id}` of a random
    /// merchant by a random customer (the node's browse cache answers), the fourth a
    /// `GET /v1/merchants?near=` page around a random spot (the node's catalog answers).
    Browse,
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Create => "create",
            Scenario::Lifecycle => "lifecycle",
            Scenario::Track => "track",
            Scenario::HotSku => "hot-sku",
            Scenario::Browse => "browse",
        }
    }
}

/// `waimai loadgen SCENARIO [flags]`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Base URL of the node under test. Repeat it for a cluster (`--target http://a:8080
    /// --target http://b:8080`): each simulated user (each token) talks to one of them, spread
    /// evenly, and tracking sockets take them in turn.
    #[arg(long = "target", default_value = "http://127.0.0.1:8080", num_args = 1)]
    pub target: Vec<String>,
    /// YAML file layered over the embedded defaults (and `WAIMAI__*` environment variables),
    /// as for `serve`; tokens are signed with its auth.jwt_secret, so use the node's config.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Closed model: this many virtual users, each looping request -> response (default: 64
    /// for create, 32 for lifecycle, 16 for track, 500 for hot-sku). Excludes --rate.
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open model: this many iteration arrivals per second, whatever the node's pace; latency
    /// is measured from each arrival's intended start, so queueing is not hidden
    /// (no coordinated omission). Excludes --concurrency.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open model: most iterations in flight; arrivals beyond it wait (and the wait counts in
    /// their latency). A `create` in flight holds a connection, so this also bounds the
    /// connections, as wrk2's and oha's fixed connections and k6's `maxVUs` do: with 10,000,
    /// a node briefly behind got thousands of new connections and creates at once, and with
    /// them it fell behind for good (open-model runs at 11,500/s collapsed to p99 over 1.2 s
    /// with 10,000 connections opened; with 512 they held). An iteration of `lifecycle` or
    /// `track` lasts a whole order: raise it for those at high rates.
    #[arg(long, default_value_t = 1_024)]
    pub max_in_flight: usize,
    /// Measured run length, seconds (hot-sku stops earlier once every customer has tried).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up before the measured run, seconds: same load, not measured (ignored by hot-sku).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Merchants to create (hot-sku always uses one).
    #[arg(long, default_value_t = 8)]
    pub merchants: usize,
    /// SKUs on every merchant's menu (hot-sku always uses one).
    #[arg(long, default_value_t = 4)]
    pub skus: usize,
    /// Units of stock per SKU (default: 1000000 so create never runs out; 100 for hot-sku).
    #[arg(long)]
    pub stock: Option<i64>,
    /// Simulated riders (lifecycle and track).
    #[arg(long, default_value_t = 32)]
    pub riders: usize,
    /// Distinct customers (tokens) iterations cycle through (default 1000; for hot-sku the
    /// number of attempts, default 2000, one per customer).
    #[arg(long)]
    pub customers: Option<usize>,
    /// Track: tracking sockets per order (the customer's, then admin observers).
    #[arg(long, default_value_t = 2)]
    pub watchers: usize,
    /// Lifecycle/track: location updates a rider sends on each leg (to the merchant, then to
    /// the customer).
    #[arg(long, default_value_t = 3)]
    pub rider_steps: u32,
    /// Lifecycle/track: pause between a rider's location updates, ms.
    #[arg(long, default_value_t = 50)]
    pub step_ms: u64,
    /// Lifecycle/track: an order not delivered this many seconds after payment counts as an
    /// error.
    #[arg(long, default_value_t = 30.0)]
    pub order_timeout: f64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// After the run, how long in-flight iterations may take to finish, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub drain: f64,
    /// Fail the run (non-zero exit) if more than this many answers in the measured window were
    /// errors (anything but success and the scenario's expected rejections). Default: errors
    /// are reported but do not fail the run; CI's smoke uses 0.
    #[arg(long)]
    pub max_errors: Option<u64>,
    /// Fail the run (non-zero exit) if the scenario's rate (created orders/s for `create` and
    /// `hot-sku`, whole orders/s for `lifecycle` and `track`) falls below this: a guard
    /// against a collapse, not a timing test (CI sets it far below what a node does).
    #[arg(long)]
    pub min_rate: Option<f64>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bar (it is also hidden when stdout is not a terminal).
    #[arg(long)]
    pub quiet: bool,
    /// Seed for positions and choices (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Threads of the load generator's own runtime (default: one per core). With 1 every task
    /// runs on one thread, so no answer wakes a parked thread of its own.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub threads: Option<usize>,
    /// Adds a timeline to the report: the scenario's main operation in slices of this many
    /// milliseconds, by (intended) start, each with its count, errors, p50, p99 and max. It
    /// tells a tail made in a few slices (a stall) from one spread over all of them (queueing).
    #[arg(long, value_name = "MS", value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(10..=60_000))]
    pub timeline: Option<u64>,
}

impl LoadgenArgs {
    /// The runtime `run` wants: `--threads 1` is a current-thread runtime, otherwise a
    /// multi-thread one with `--threads` workers (default: one per core).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        match self.threads {
            // `--threads 0` is refused when parsing; built by hand, it means one thread too.
            Some(0 | 1) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Some(n) => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .enable_all()
                .build(),
            None => tokio::runtime::Runtime::new(),
        }
    }
}

/// Most slices `--timeline` may cut the window into (each holds a small histogram, about
/// 10 KiB).
const MAX_TIMELINE_SLICES: u128 = 10_000;

/// Parses `LoadgenArgs` from words as they would follow `waimai loadgen` (for tests and
/// embedding): `["create", "--target", "http://..."]`.
pub fn parse_args<I, S>(words: I) -> Result<LoadgenArgs, LoadgenError>
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: LoadgenArgs,
    }
    let words = std::iter::once(std::ffi::OsString::from("loadgen"))
        .chain(words.into_iter().map(Into::into));
    Wrapper::try_parse_from(words)
        .map(|w| w.args)
        .map_err(|e| LoadgenError::Args(e.to_string()))
}

/// Why a run could not be carried out (broken invariants are in the [`Report`] instead).
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// Flags that do not make sense together.
    #[error("invalid arguments: {0}")]
    Args(String),
    /// The config could not be loaded.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A token could not be signed.
    #[error("signing a token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(String),
    /// Creating merchants, menus or riders failed.
    #[error("setup: {0}")]
    Setup(String),
    /// The JSON report could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The load model a run uses, resolved from the flags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Load {
    /// `n` virtual users.
    Closed(usize),
    /// `rate` arrivals per second, at most `max_in_flight` at once.
    Open {
        /// Arrivals per second.
        rate: f64,
        /// In-flight cap.
        max_in_flight: usize,
    },
}

impl Load {
    fn describe(&self) -> String {
        match self {
            Load::Closed(n) => format!("closed, {n} virtual users"),
            Load::Open {
                rate,
                max_in_flight,
            } => format!("open, {rate} arrivals/s (at most {max_in_flight} in flight)"),
        }
    }
}

/// Flags resolved against the scenario's defaults.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The raw flags.
    pub args: LoadgenArgs,
    /// Load model.
    pub load: Load,
    /// Warm-up (zero for hot-sku).
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// Merchants to create.
    pub merchants: usize,
    /// SKUs per merchant.
    pub skus: usize,
    /// Stock per SKU.
    pub stock: i64,
    /// Customers.
    pub customers: usize,
    /// Riders (zero unless lifecycle/track).
    pub riders: usize,
    /// Seed for every random choice (`--seed`, or random).
    pub seed: u64,
}

impl Plan {
    fn new(args: LoadgenArgs) -> Result<Plan, LoadgenError> {
        let hot = args.scenario == Scenario::HotSku;
        let load = match (args.concurrency, args.rate) {
            (Some(_), Some(_)) => {
                return Err(LoadgenError::Args(
                    "--concurrency and --rate exclude each other".into(),
                ))
            }
            (Some(0), None) => return Err(LoadgenError::Args("--concurrency must be > 0".into())),
            (Some(n), None) => Load::Closed(n),
            (None, Some(r)) if r.is_finite() && r > 0.0 && args.max_in_flight > 0 => Load::Open {
                rate: r,
                max_in_flight: args.max_in_flight,
            },
            (None, Some(_)) => {
                return Err(LoadgenError::Args(
                    "--rate must be > 0 and --max-in-flight > 0".into(),
                ))
            }
            (None, None) => Load::Closed(match args.scenario {
                Scenario::Create => 64,
                Scenario::Lifecycle => 32,
                Scenario::Track => 16,
                Scenario::HotSku => 500,
                Scenario::Browse => 256,
            }),
        };
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(LoadgenError::Args(format!("--{name} must be >= 0")))
            }
        };
        let duration = secs("duration", args.duration)?;
        if let Some(ms) = args.timeline {
            let slices = duration.as_millis() / u128::from(ms.max(1));
            if slices > MAX_TIMELINE_SLICES {
                return Err(LoadgenError::Args(format!(
                    "--timeline {ms} cuts --duration into {slices} slices; at most {MAX_TIMELINE_SLICES}"
                )));
            }
        }
        let warmup = if hot {
            Duration::ZERO
        } else {
            secs("warmup", args.warmup)?
        };
        secs("order-timeout", args.order_timeout)?;
        secs("request-timeout", args.request_timeout)?;
        secs("drain", args.drain)?;
        let stock = args.stock.unwrap_or(if hot { 100 } else { 1_000_000 });
        if !(0..=1_000_000_000).contains(&stock) {
            return Err(LoadgenError::Args(
                "--stock must be within 0..=1000000000".into(),
            ));
        }
        let customers = args.customers.unwrap_or(if hot { 2000 } else { 1000 });
        let (merchants, skus) = if hot {
            (1, 1)
        } else {
            (args.merchants, args.skus)
        };
        if merchants == 0 || skus == 0 || customers == 0 || skus > 200 {
            return Err(LoadgenError::Args(
                "--merchants, --customers must be > 0 and --skus within 1..=200".into(),
            ));
        }
        let riders = match args.scenario {
            Scenario::Lifecycle | Scenario::Track => args.riders,
            _ => 0,
        };
        if riders == 0 && matches!(args.scenario, Scenario::Lifecycle | Scenario::Track) {
            return Err(LoadgenError::Args(
                "lifecycle and track need --riders > 0".into(),
            ));
        }
        if args.scenario == Scenario::Track && args.watchers == 0 {
            return Err(LoadgenError::Args("track needs --watchers > 0".into()));
        }
        let args_seed = args.seed.unwrap_or_else(rand::random);
        Ok(Plan {
            args,
            load,
            warmup,
            duration,
            merchants,
            skus,
            stock,
            customers,
            riders,
            seed: args_seed,
        })
    }
}

/// Everything a scenario shares: the plan, the clients, the world it set up, the recorder and
/// the ledger.
pub(crate) struct Ctx {
    /// Resolved flags.
    pub plan: Plan,
    /// REST client.
    pub http: http::Http,
    /// An admin token.
    pub admin: String,
    /// Merchants, riders, customers.
    pub world: setup::World,
    /// Latency and error counts.
    pub rec: report::Recorder,
    /// What the node acknowledged.
    pub ledger: ledger::Ledger,
}

/// What the load generator reads from the nodes' `/metrics` when the measured window opens and
/// when it closes, summed over the targets.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct NodeSample {
    /// `process_cpu_seconds_total`.
    cpu: f64,
    /// `waimai_door_wait_seconds`' count and sum (creates that waited at the door, and how
    /// long). Zero on a node that does not export them.
    door_waited: f64,
    door_wait_s: f64,
}

impl std::ops::Sub for NodeSample {
    type Output = NodeSample;
    fn sub(self, before: NodeSample) -> NodeSample {
        NodeSample {
            cpu: (self.cpu - before.cpu).max(0.0),
            door_waited: (self.door_waited - before.door_waited).max(0.0),
            door_wait_s: (self.door_wait_s - before.door_wait_s).max(0.0),
        }
    }
}

/// The nodes' counters so far. `None` when a node does not answer or does not export its CPU
/// time.
async fn nodes_sample(http: &http::Http, token: &str) -> Option<NodeSample> {
    let mut sum = NodeSample::default();
    for text in http.get_each("/metrics", token).await {
        let text = text?;
        sum.cpu += crate::metrics::sample(&text, "process_cpu_seconds_total")?;
        sum.door_waited +=
            crate::metrics::sample(&text, "waimai_door_wait_seconds_count").unwrap_or(0.0);
        sum.door_wait_s +=
            crate::metrics::sample(&text, "waimai_door_wait_seconds_sum").unwrap_or(0.0);
    }
    Some(sum)
}

/// What the nodes spent and counted in the measured window: read when it opens and when it
/// closes. `None` if the window never opened or a read failed.
async fn nodes_in_window(ctx: Arc<Ctx>) -> Option<NodeSample> {
    let window = loop {
        if let Some(w) = ctx.rec.window() {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep_until(window.from.into()).await;
    let before = nodes_sample(&ctx.http, &ctx.admin).await?;
    tokio::time::sleep_until(window.until.into()).await;
    let after = nodes_sample(&ctx.http, &ctx.admin).await?;
    Some(after - before)
}

/// Token lifetime: long enough for any run.
const TOKEN_TTL_SECS: u64 = 24 * 3600;

/// Runs a scenario with tokens signed by the config's secret (`--config`, then `WAIMAI__*`).
pub async fn run(args: LoadgenArgs) -> Result<Report, LoadgenError> {
    let cfg = crate::Config::load(args.config.as_deref())?;
    run_with_auth(args, Auth::new(&cfg.auth.jwt_secret)).await
}

/// Runs a scenario with tokens signed by `auth`: sets up, warms up, measures, checks the
/// invariants, and returns the report (also written to `--json` if given). Broken invariants
/// do not make this an error: see [`Report::violations`].
pub async fn run_with_auth(args: LoadgenArgs, auth: Auth) -> Result<Report, LoadgenError> {
    let plan = Plan::new(args)?;
    let http = http::Http::new(
        &plan.args.target,
        Duration::from_secs_f64(plan.args.request_timeout),
    )?;
    let admin = auth.mint(Role::Admin, "loadgen", TOKEN_TTL_SECS)?;
    tracing::info!(
        scenario = plan.args.scenario.name(),
        target = %plan.args.target.join(","),
        load = %plan.load.describe(),
        "setting up"
    );
    let cpu_before = crate::metrics::process_cpu();
    let world = setup::build(&plan, &http, &auth, &admin).await?;
    let ctx = Arc::new(Ctx {
        rec: report::Recorder::new().with_timeline(
            plan.args.timeline.map(Duration::from_millis),
            report::primary_ops(plan.args.scenario),
        ),
        ledger: ledger::Ledger::default(),
        plan,
        http,
        admin,
        world,
    });
    let started = Instant::now();
    let node_cpu = tokio::spawn(nodes_in_window(ctx.clone()));
    let (measured, extra) = scenarios::run(ctx.clone()).await;
    // Done once the window has closed; a run that never opened it has no figure.
    let node_cpu = if node_cpu.is_finished() || ctx.rec.window().is_some() {
        tokio::time::timeout(Duration::from_secs(5), node_cpu)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    } else {
        node_cpu.abort();
        None
    };
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "checking invariants"
    );
    let cpu = crate::metrics::process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let requests = ctx.rec.requests();
    let checks = invariants::check(&ctx, extra).await;
    let mut report = Report::build(&ctx, measured, checks);
    report.client_cpu_us_per_request = cpu
        .filter(|_| requests > 0)
        .map(|d| d.as_secs_f64() * 1e6 / requests as f64);
    report.connections_opened = ctx.http.connections_opened();
    let main_ok = report.main.ok;
    report.node_cpu_us_per_op = node_cpu
        .filter(|_| main_ok > 0)
        .map(|n| n.cpu * 1e6 / main_ok as f64);
    report.door_wait = node_cpu
        .filter(|n| n.door_waited >= 1.0)
        .map(|n| report::DoorWait {
            waited: n.door_waited as u64,
            mean_ms: n.door_wait_s * 1e3 / n.door_waited,
        });
    if let Some(path) = &ctx.plan.args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| LoadgenError::Setup(format!("serializing the report: {e}")))?;
        std::fs::write(path, text).map_err(|source| LoadgenError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::NodeSample;

    #[test]
    fn node_counters_are_taken_over_the_window() {
        let before = NodeSample {
            cpu: 1.0,
            door_waited: 40.0,
            door_wait_s: 9.0,
        };
        let after = NodeSample {
            cpu: 3.5,
            door_waited: 100.0,
            door_wait_s: 29.0,
        };
        assert_eq!(
            after - before,
            NodeSample {
                cpu: 2.5,
                door_waited: 60.0,
                door_wait_s: 20.0,
            }
        );
    }
}
