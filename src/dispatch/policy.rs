//! The one interface every policy implements, and [`build`], which picks one from settings.
//!
//! The live dispatcher would call [`Policy::plan`] every `batch_ms` (and, for `greedy`, on
//! every event: an order waiting, a rider freed, a decline) with the orders that have no offer
//! out and the riders that hold none, then send the offers it gets back.

use std::sync::Arc;

use super::batch::Batch;
use super::eta::Eta;
use super::greedy::Greedy;
use super::settings::{DispatchSettings, PolicyKind};
use super::stacked::Stacked;
use super::types::{AvailableRider, Offer, WaitingOrder};
use super::DispatchError;

/// A dispatch policy: pure, deterministic for its inputs.
pub trait Policy: Send {
    /// Which policy this is.
    fn kind(&self) -> PolicyKind;

    /// The offers to make now. At most one per order and one per rider; never to a rider in
    /// the order's `declined` set; never to a rider farther than `max_radius_m` from the pickup
    /// (for `stacked`: whose position and route stops are all farther than that).
    fn plan(
        &mut self,
        now_ms: i64,
        orders: &[WaitingOrder],
        riders: &[AvailableRider],
    ) -> Vec<Offer>;
}

/// The policy `settings.policy` names, estimating travel with `eta`.
pub fn build(
    settings: &DispatchSettings,
    eta: Arc<dyn Eta>,
) -> Result<Box<dyn Policy>, DispatchError> {
    settings.validate()?;
    Ok(match settings.policy {
        PolicyKind::Greedy => Box::new(Greedy::new(settings.clone(), eta)),
        PolicyKind::Batch => Box::new(Batch::new(settings.clone(), eta)),
        PolicyKind::Stacked => Box::new(Stacked::new(settings.clone(), eta)),
    })
}
