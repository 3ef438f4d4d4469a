//! `browse`: the most frequent reads of a real platform. Three iterations in four are one
//! `GET /v1/merchants/{id}` (random customer, random merchant), answered from the node's browse
//! cache; the fourth is `GET /v1/merchants?near=` around a random spot of the city (open
//! merchants within 2 km, a page of 20), answered from the node's catalog. Nothing is written,
//! so the order checks have nothing to find.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::super::invariants::Check;
use super::super::report::Class;
use super::super::Ctx;
use super::{each_iteration, iteration_rng};

/// `GET /v1/merchants/{id}`.
pub(crate) const BROWSE: &str = "browse_merchant";
/// `GET /v1/merchants?near=`.
pub(crate) const BROWSE_NEAR: &str = "browse_near";

/// Runs the scenario.
pub(super) async fn run(ctx: Arc<Ctx>) -> (Duration, Vec<Check>) {
    each_iteration(&ctx, |ctx, it| async move {
        let mut rng = iteration_rng(&ctx, it.seq);
        let merchants = &ctx.world.merchants;
        let customers = &ctx.world.customers;
        let (Some(m), Some(cu)) = (
            merchants.get(rng.gen_range(0..merchants.len().max(1))),
            customers.get((it.seq as usize) % customers.len().max(1)),
        ) else {
            return;
        };
        let (op, path) = if it.seq % 4 == 3 {
            let at = super::super::setup::random_spot(&mut rng);
            (
                BROWSE_NEAR,
                format!(
                    "/v1/merchants?near={:.5},{:.5}&radius_m=2000&open=true&limit=20",
                    at.lat, at.lng
                ),
            )
        } else {
            (BROWSE, format!("/v1/merchants/{}", m.id))
        };
        let o = ctx.http.get(&path, &cu.token).await;
        let class = match &o {
            Ok(r) if r.ok() => Class::Ok,
            Ok(r) if r.shed() => Class::Shed(r.kind()),
            _ => Class::Error(super::super::http::kind(&o)),
        };
        ctx.rec.op(op, it.intended, class);
    })
    .await
}
