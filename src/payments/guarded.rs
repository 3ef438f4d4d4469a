//! A circuit breaker around a payment provider: every call gets the breaker's timeout, and
//! after a run of `Unavailable` answers calls are refused at once (as `Unavailable`, with the
//! breaker's reason) until a probe gets through. `Unknown` is the provider answering, not a
//! failure.

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{Intent, PayError, Payments, Provider, RefundStatus};
use crate::breaker::{Breaker, BreakerError};

/// `inner` behind `breaker`.
pub struct Guarded {
    inner: Payments,
    breaker: Breaker,
}

impl Guarded {
    /// Wraps a provider.
    pub fn new(inner: Payments, breaker: Breaker) -> Self {
        Guarded { inner, breaker }
    }

    fn run<'a, T: Send + 'a>(
        &'a self,
        call: BoxFuture<'a, Result<T, PayError>>,
    ) -> BoxFuture<'a, Result<T, PayError>> {
        async move {
            self.breaker
                .call(call, |e| matches!(e, PayError::Unavailable(_)))
                .await
                .map_err(|e| match e {
                    BreakerError::Inner(e) => e,
                    other => PayError::Unavailable(other.to_string()),
                })
        }
        .boxed()
    }
}

impl Provider for Guarded {
    fn create_intent(
        &self,
        id: &str,
        order_id: &str,
        amount_cents: i64,
        method: &str,
    ) -> BoxFuture<'_, Result<Intent, PayError>> {
        self.run(self.inner.create_intent(id, order_id, amount_cents, method))
    }

    fn intent(&self, id: &str) -> BoxFuture<'_, Result<Intent, PayError>> {
        self.run(self.inner.intent(id))
    }

    fn refund(
        &self,
        refund_id: &str,
        intent_id: &str,
        amount_cents: i64,
    ) -> BoxFuture<'_, Result<RefundStatus, PayError>> {
        self.run(self.inner.refund(refund_id, intent_id, amount_cents))
    }

    fn refund_status(&self, refund_id: &str) -> BoxFuture<'_, Result<RefundStatus, PayError>> {
        self.run(self.inner.refund_status(refund_id))
    }

    fn confirms_at_once(&self, method: &str) -> bool {
        self.inner.confirms_at_once(method)
    }

    fn supports(&self, method: &str) -> bool {
        self.inner.supports(method)
    }
}
