//! The reconciler: what a lost or late callback would leave undone, it finishes by asking the
//! provider.
//!
//! Every `payments.reconcile_ms` it takes, for the shards this node serves:
//! - intents still `open` after `payments.reconcile_after_ms`: it asks the provider how they
//!   ended and hands the answer to the order as a `PaymentNotice` (an intent the provider never
//!   saw — our record was written but the request did not get through — counts as failed);
//! - refunds still `requested` whose retry time came: it asks the provider for the same refund
//!   again (same refund id: a refund is never made twice) and, once the provider says it is
//!   done, completes it on the order; the next try doubles its delay.
//!
//! Deliveries are idempotent at the order (event ids, statuses), so the reconciler racing a
//! late callback is harmless.

use std::sync::Arc;
use std::time::Duration;

use super::{
    refund_id_for, EventData, IntentStatus, PayError, Payments, ProviderEvent, RefundStatus,
};
use crate::cluster::Router;
use crate::domain::now_ms;
use crate::messages::PaymentNotice;
use crate::metrics;
use crate::store::Store;

/// Which shards this node reconciles (`None`: all, a single node).
pub type Served = super::sim::Served;

/// The reconciler's settings.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// Period.
    pub every: Duration,
    /// How long an intent may stay open before the provider is asked.
    pub open_after: Duration,
    /// First retry delay of a refund (doubles up to a minute).
    pub refund_retry: Duration,
}

/// Runs until the process ends.
pub async fn run(
    store: Store,
    router: Router,
    payments: Payments,
    served: Served,
    settings: ReconcileSettings,
) {
    let mut tick = tokio::time::interval(settings.every.max(Duration::from_millis(50)));
    loop {
        tick.tick().await;
        let shards = served();
        if let Err(e) = intents(&store, &router, &payments, shards.as_deref(), &settings).await {
            tracing::debug!(error = %e, "reconciling intents failed; next round");
        }
        if let Err(e) = refunds(&store, &router, &payments, shards.as_deref(), &settings).await {
            tracing::debug!(error = %e, "reconciling refunds failed; next round");
        }
    }
}

async fn notify(router: &Router, event: ProviderEvent) {
    let order = event.data.order_id.clone();
    match router.send(&order, PaymentNotice { event }).await {
        Ok(true) => metrics::PAYMENTS.with_label_values(&["reconciled"]).inc(),
        Ok(false) => {}
        Err(e) => tracing::debug!(%order, error = %e, "reconciled event not applied yet"),
    }
}

async fn intents(
    store: &Store,
    router: &Router,
    payments: &Payments,
    shards: Option<&[u32]>,
    s: &ReconcileSettings,
) -> Result<(), String> {
    let before = now_ms() - s.open_after.as_millis() as i64;
    let open = store
        .open_payments(shards, before, 100)
        .await
        .map_err(|e| e.to_string())?;
    for p in open {
        let kind = match payments.intent(&p.intent_id).await {
            Ok(i) if i.status == IntentStatus::Succeeded => "payment.succeeded",
            Ok(i) if i.status == IntentStatus::Failed => "payment.failed",
            Ok(_) => continue, // still open at the provider
            Err(PayError::Unknown(_)) => "payment.failed", // never reached the provider
            Err(PayError::Unavailable(_)) => continue,
        };
        let event = ProviderEvent {
            id: format!("recon_{}_{kind}", p.intent_id),
            kind: kind.into(),
            created: now_ms(),
            data: EventData {
                intent_id: p.intent_id.clone(),
                order_id: p.order_id.clone(),
                amount_cents: p.amount_cents,
                refund_id: None,
            },
        };
        notify(router, event).await;
    }
    Ok(())
}

async fn refunds(
    store: &Store,
    router: &Router,
    payments: &Payments,
    shards: Option<&[u32]>,
    s: &ReconcileSettings,
) -> Result<(), String> {
    let now = now_ms();
    let due = store
        .due_refunds(shards, now, 100)
        .await
        .map_err(|e| e.to_string())?;
    for r in due {
        let asked = payments
            .refund(&r.refund_id, &r.intent_id, r.amount_cents)
            .await;
        let delay = (s.refund_retry.as_millis() as i64)
            .saturating_mul(1 << r.attempts.clamp(0, 6))
            .min(60_000);
        store
            .refund_retried(&r.refund_id, r.attempts + 1, now + delay)
            .await
            .map_err(|e| e.to_string())?;
        match asked {
            Ok(RefundStatus::Succeeded) => {
                let event = ProviderEvent {
                    id: format!("recon_{}_refund.succeeded", r.refund_id),
                    kind: "refund.succeeded".into(),
                    created: now,
                    data: EventData {
                        intent_id: r.intent_id.clone(),
                        order_id: r.order_id.clone(),
                        amount_cents: r.amount_cents,
                        refund_id: Some(refund_id_for(&r.order_id)),
                    },
                };
                notify(router, event).await;
            }
            Ok(RefundStatus::Pending) => {}
            Err(e) => {
                tracing::warn!(refund = %r.refund_id, attempts = r.attempts + 1, error = %e, "refund not accepted by the provider yet");
            }
        }
    }
    Ok(())
}

/// A `Served` for every shard (a single node).
pub fn all_shards() -> Served {
    Arc::new(|| None)
}
