//! The scenarios and what they share: the progress bar, the measured window, and placing one
//! order (with an idempotency key, so an unanswered request can be resolved afterwards).

mod browse;
mod create;
mod hot_sku;
mod lifecycle;

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use warp::http::Method;

use super::invariants::Check;
use super::ledger::{Acked, Unknown};
use super::model::{Driven, Iteration};
use super::report::{Class, Window};
use super::{Ctx, Scenario};

/// `POST /v1/orders`.
pub(crate) const CREATE_ORDER: &str = "create_order";
/// The expected 409 out_of_stock answers among `create_order` (hot-sku), measured on their own.
pub(crate) const CREATE_ORDER_SOLD_OUT: &str = "create_order:409";
pub(crate) use browse::{BROWSE, BROWSE_NEAR};

/// Runs the plan's scenario; returns the measured duration and the scenario's own verdicts.
pub(crate) async fn run(ctx: Arc<Ctx>) -> (Duration, Vec<Check>) {
    match ctx.plan.args.scenario {
        Scenario::Create => create::run(ctx).await,
        Scenario::HotSku => hot_sku::run(ctx).await,
        Scenario::Lifecycle => lifecycle::run(ctx, false).await,
        Scenario::Track => lifecycle::run(ctx, true).await,
        Scenario::Browse => browse::run(ctx).await,
    }
}

/// Opens the measured window after the warm-up; returns (start of the load, end of the window).
/// The open model schedules its arrivals from that start, so the window holds exactly
/// rate x duration of them however long the caller takes to begin driving.
fn open_window(ctx: &Ctx) -> (Instant, Instant) {
    let start = Instant::now();
    let from = start + ctx.plan.warmup;
    let until = from + ctx.plan.duration;
    ctx.rec.open(Window { from, until });
    (start, until)
}

/// A progress bar over warm-up + run with live throughput and errors; hidden with `--quiet` or
/// when stdout is not a terminal. Dropping the returned guard stops it.
struct Progress {
    /// The ticker task.
    task: tokio::task::JoinHandle<()>,
    /// The bar.
    bar: indicatif::ProgressBar,
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

fn progress(ctx: &Arc<Ctx>, total: Duration) -> Progress {
    let visible = !ctx.plan.args.quiet && std::io::stdout().is_terminal();
    let bar = if visible {
        indicatif::ProgressBar::new(total.as_millis() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
    {
        bar.set_style(style);
    }
    let ticker = bar.clone();
    let ctx = ctx.clone();
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let mut last = (0u64, Instant::now());
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let (ok, errors) = ctx.rec.live();
            let now = Instant::now();
            let rate = (ok + errors).saturating_sub(last.0) as f64
                / now.duration_since(last.1).as_secs_f64().max(1e-3);
            last = (ok + errors, now);
            let phase = match ctx.rec.window() {
                Some(w) if now < w.from => "warm-up",
                Some(w) if now < w.until => "measuring",
                _ => "draining",
            };
            ticker.set_position(started.elapsed().as_millis() as u64);
            ticker.set_message(format!(
                "{phase} | {rate:.0} ops/s | ok {ok} | errors {errors} | orders {}",
                ctx.ledger.acked_count()
            ));
        }
    });
    Progress { task, bar }
}

/// A deterministic RNG for iteration `seq`.
fn iteration_rng(ctx: &Ctx, seq: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(
        ctx.plan
            .seed
            .wrapping_add(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    )
}

/// What placing an order gave.
#[derive(Debug)]
enum Placed {
    /// 201 with this id.
    Created(String),
    /// 409 out_of_stock.
    OutOfStock,
    /// Anything else (already recorded).
    Failed(String),
}

/// A create request's body (written straight to JSON; a `json!` value built a map first).
#[derive(serde::Serialize)]
struct NewOrder<'a> {
    merchant_id: &'a str,
    items: [Line<'a>; 1],
    deliver_to: crate::domain::Location,
}

/// One order line of `NewOrder`.
#[derive(serde::Serialize)]
struct Line<'a> {
    sku: &'a str,
    qty: i64,
}

/// Places one order for `it`: customer `customer`, `qty` of `sku` at merchant `merchant`
/// (indices into the world), delivered to a random spot. Records latency from the intended
/// start, the answer, and the acknowledgement (or the unknown outcome) in the ledger.
async fn place(
    ctx: &Ctx,
    it: Iteration,
    customer: usize,
    merchant: usize,
    sku: &str,
    qty: i64,
    out_of_stock_expected: bool,
) -> Placed {
    let mut rng = iteration_rng(ctx, it.seq);
    let (Some(c), Some(m)) = (
        ctx.world.customers.get(customer),
        ctx.world.merchants.get(merchant),
    ) else {
        return Placed::Failed("no such customer or merchant".into());
    };
    let to = super::setup::random_spot(&mut rng);
    let key = format!("lg-{}-{}", ctx.world.run_id, it.seq);
    let body = NewOrder {
        merchant_id: &m.id,
        items: [Line { sku, qty }],
        deliver_to: to,
    };
    let outcome = ctx
        .http
        .call(
            Method::POST,
            "/v1/orders",
            &c.token,
            Some(&key),
            Some(&body),
        )
        .await;
    let kind = super::http::kind(&outcome);
    ctx.ledger.answer(&kind);
    let lines = vec![(sku.to_string(), qty)];
    match outcome {
        Ok(r) if r.status == 201 => match r.str("id") {
            Some(id) => {
                ctx.rec.op(CREATE_ORDER, it.intended, Class::Ok);
                ctx.ledger.acked(
                    &id,
                    Acked {
                        merchant_id: m.id.clone(),
                        lines,
                        key,
                    },
                );
                Placed::Created(id)
            }
            None => {
                ctx.rec.op(
                    CREATE_ORDER,
                    it.intended,
                    Class::Error("201 without id".into()),
                );
                Placed::Failed("201 without id".into())
            }
        },
        Ok(r) if r.status == 409 && r.code() == "out_of_stock" => {
            let class = if out_of_stock_expected {
                // The rejects' own latency: hot-sku's promise is that they come back fast.
                ctx.rec.sub_op(
                    CREATE_ORDER_SOLD_OUT,
                    it.intended,
                    Class::Rejected(kind.clone()),
                );
                Class::Rejected(kind)
            } else {
                Class::Error(kind)
            };
            ctx.rec.op(CREATE_ORDER, it.intended, class);
            Placed::OutOfStock
        }
        Ok(r) if r.shed() => {
            // Refused before any work: the order does not exist. A well-behaved client waits
            // as long as `Retry-After` says before its next request (this virtual user too).
            ctx.rec
                .op(CREATE_ORDER, it.intended, Class::Shed(kind.clone()));
            let wait = r.body()["error"]["retry_after_s"]
                .as_u64()
                .unwrap_or(1)
                .min(60);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            Placed::Failed(kind)
        }
        other => {
            // No answer or a server error: the order may exist. Resolved after the run.
            if other.as_ref().map_or(true, |r| r.status >= 500) {
                ctx.ledger.unknown(Unknown {
                    customer,
                    key,
                    body: serde_json::to_value(&body).unwrap_or(serde_json::Value::Null),
                    merchant_id: m.id.clone(),
                    lines,
                });
            }
            ctx.rec
                .op(CREATE_ORDER, it.intended, Class::Error(kind.clone()));
            Placed::Failed(kind)
        }
    }
}

/// Picks a merchant index and one of its SKUs.
fn pick(ctx: &Ctx, rng: &mut impl Rng) -> (usize, String) {
    let n = ctx.world.merchants.len().max(1);
    let mi = rng.gen_range(0..n);
    let sku = ctx
        .world
        .merchants
        .get(mi)
        .and_then(|m| {
            if m.skus.is_empty() {
                None
            } else {
                m.skus.get(rng.gen_range(0..m.skus.len())).cloned()
            }
        })
        .unwrap_or_default();
    (mi, sku)
}

/// The whole run of a scenario whose iterations are independent of each other (`create`,
/// `browse`): every arrival of the warm-up and the measured window runs `iteration`; returns
/// the measured duration and the drain check.
async fn each_iteration<F, Fut>(ctx: &Arc<Ctx>, iteration: F) -> (Duration, Vec<Check>)
where
    F: Fn(Arc<Ctx>, Iteration) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (start, until) = open_window(ctx);
    let _bar = progress(ctx, ctx.plan.warmup + ctx.plan.duration);
    let c = ctx.clone();
    let driven = super::model::drive(
        ctx.plan.load,
        start,
        until,
        None,
        Duration::from_secs_f64(ctx.plan.args.drain),
        move |it| iteration(c.clone(), it),
    )
    .await;
    (ctx.plan.duration, vec![drained(&driven)])
}

/// A verdict on iterations the drain had to abort.
fn drained(d: &Driven) -> Check {
    Check::new(
        "every iteration finished within the drain time",
        d.abandoned == 0,
        format!("{} started, {} aborted", d.started, d.abandoned),
    )
}
