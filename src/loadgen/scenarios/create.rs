//! `create`: every iteration places one order (random customer, merchant and SKU, one unit);
//! nothing else happens to it, so every acknowledged order must end pending_payment.

use std::sync::Arc;
use std::time::Duration;

use super::super::invariants::Check;
use super::super::Ctx;
use super::{each_iteration, iteration_rng, pick, place};

/// Runs the scenario.
pub(super) async fn run(ctx: Arc<Ctx>) -> (Duration, Vec<Check>) {
    each_iteration(&ctx, |ctx, it| async move {
        let mut rng = iteration_rng(&ctx, it.seq);
        let (merchant, sku) = pick(&ctx, &mut rng);
        let customer = (it.seq as usize) % ctx.world.customers.len().max(1);
        place(&ctx, it, customer, merchant, &sku, 1, false).await;
    })
    .await
}
