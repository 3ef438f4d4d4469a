//! `create`: every iteration places one order (random customer, merchant and SKU, one unit);
//! nothing else happens to it, so every acknowledged order must end pending_payment.

use std::sync::Arc;
use std::time::Duration;

use super::super::invariants::Check;
use super::super::model::drive;
use super::super::Ctx;
use super::{drained, iteration_rng, open_window, pick, place, progress};

/// Runs the scenario.
pub(super) async fn run(ctx: Arc<Ctx>) -> (Duration, Vec<Check>) {
    let (start, until) = open_window(&ctx);
    let _bar = progress(&ctx, ctx.plan.warmup + ctx.plan.duration);
    let c = ctx.clone();
    let driven = drive(
        ctx.plan.load,
        start,
        until,
        None,
        Duration::from_secs_f64(ctx.plan.args.drain),
        move |it| {
            let ctx = c.clone();
            async move {
                let mut rng = iteration_rng(&ctx, it.seq);
                let (merchant, sku) = pick(&ctx, &mut rng);
                let customer = (it.seq as usize) % ctx.world.customers.len().max(1);
                place(&ctx, it, customer, merchant, &sku, 1, false).await;
            }
        },
    )
    .await;
    (ctx.plan.duration, vec![drained(&driven)])
}
