//! `hot-sku`: `--customers` customers (one attempt each) race for one unit of the single SKU
//! of one merchant holding `--stock` units. The run ends when every customer has tried (or after
//! `--duration`); there is no warm-up, since it would eat the stock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::invariants::Check;
use super::super::model::drive;
use super::super::Ctx;
use super::{drained, open_window, place, progress};

/// Runs the scenario.
pub(super) async fn run(ctx: Arc<Ctx>) -> (Duration, Vec<Check>) {
    let started = Instant::now();
    let (start, until) = open_window(&ctx);
    let _bar = progress(&ctx, ctx.plan.duration);
    let c = ctx.clone();
    let attempts = ctx.world.customers.len() as u64;
    let driven = drive(
        ctx.plan.load,
        start,
        until,
        Some(attempts),
        Duration::from_secs_f64(ctx.plan.args.drain),
        move |it| {
            let ctx = c.clone();
            async move {
                place(&ctx, it, it.seq as usize, 0, "hot-sku", 1, true).await;
            }
        },
    )
    .await;
    let measured = driven
        .finished_at
        .saturating_duration_since(started)
        .min(ctx.plan.duration.max(Duration::from_millis(1)));
    let tried = Check::new(
        "hot-sku: every customer tried within the duration",
        driven.started == attempts,
        format!("{} of {attempts} attempts made", driven.started),
    );
    (measured, vec![tried, drained(&driven)])
}
