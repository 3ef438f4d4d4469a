//! Payments: the boundary to a payment provider, and the saga that keeps money and orders in
//! step.
//!
//! # Layout
//! - [`Provider`]: what waimai asks of a payment provider (create an intent, read it back,
//!   refund it, read a refund back). Every request carries our own id, which the provider uses
//!   as its idempotency key, so asking twice never charges or refunds twice.
//! - [`sim`]: the built-in simulated provider (the default, so an embedded node needs no
//!   server). It behaves like the real ones: it answers at once, then *calls back*
//!   `POST /v1/payments/callback` with a signed event; a payment `method` makes it decline, call
//!   back late, twice, out of order, or never. Its own state lives in its own tables, as an
//!   external provider's would, so a node that crashes finds it again.
//! - [`signature`]: the callback signature: HMAC-SHA256 over `"{timestamp}.{raw body}"`, sent
//!   as `Waimai-Signature: t=<unix s>,v1=<hex>`, like Stripe's webhooks.
//! - [`guarded`]: a circuit breaker (with a timeout per call) around whichever provider is in
//!   use.
//! - [`reconcile`]: the loop that asks the provider about intents still open past a deadline
//!   (a lost callback still completes or fails the payment) and re-sends refunds not yet
//!   confirmed, with backoff.
//!
//! The saga itself (what happens at each step and how each is undone) lives with the order
//! actor (`actors::order`) and is written down in ARCHITECTURE.md ("Payments and the saga").

pub mod guarded;
pub mod reconcile;
pub mod signature;
pub mod sim;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// A payment intent: money a customer is asked to pay for one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Intent {
    /// Our id for it (the provider's idempotency key).
    pub id: String,
    /// The order it pays for.
    pub order_id: String,
    /// How much, in cents.
    pub amount_cents: i64,
    /// The payment method (for the simulated provider, its test behaviour).
    pub method: String,
    /// Where it stands.
    pub status: IntentStatus,
}

/// Where an intent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    /// Created; the provider has not said yet.
    Open,
    /// The money was taken.
    Succeeded,
    /// The payment was declined.
    Failed,
}

impl IntentStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            IntentStatus::Open => "open",
            IntentStatus::Succeeded => "succeeded",
            IntentStatus::Failed => "failed",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(IntentStatus::Open),
            "succeeded" => Some(IntentStatus::Succeeded),
            "failed" => Some(IntentStatus::Failed),
            _ => None,
        }
    }
}

/// A refund as the provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Asked for, not confirmed yet.
    Pending,
    /// The money went back.
    Succeeded,
}

/// A provider's answer failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PayError {
    /// The provider could not be reached or failed: try again later.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    /// The provider does not know this intent or refund.
    #[error("payment provider does not know {0}")]
    Unknown(String),
}

/// What waimai asks of a payment provider. Each call is idempotent on our id.
pub trait Provider: Send + Sync {
    /// Creates (or returns, if it exists) intent `id` for `amount_cents` of `order_id`.
    fn create_intent(
        &self,
        id: &str,
        order_id: &str,
        amount_cents: i64,
        method: &str,
    ) -> BoxFuture<'_, Result<Intent, PayError>>;

    /// Reads an intent back.
    fn intent(&self, id: &str) -> BoxFuture<'_, Result<Intent, PayError>>;

    /// Asks for refund `refund_id` of intent `intent_id` (idempotent on `refund_id`).
    fn refund(
        &self,
        refund_id: &str,
        intent_id: &str,
        amount_cents: i64,
    ) -> BoxFuture<'_, Result<RefundStatus, PayError>>;

    /// Reads a refund back.
    fn refund_status(&self, refund_id: &str) -> BoxFuture<'_, Result<RefundStatus, PayError>>;

    /// Whether its intents usually settle at once (then `POST .../pay` waits for the outcome).
    fn confirms_at_once(&self, method: &str) -> bool;

    /// Whether it takes payments of `method`.
    fn supports(&self, method: &str) -> bool;
}

/// The provider a node uses.
pub type Payments = Arc<dyn Provider>;

/// A callback event, as the provider sends it (the body of `POST /v1/payments/callback`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderEvent {
    /// The provider's event id (delivered again on retries: the same id).
    pub id: String,
    /// `payment.succeeded`, `payment.failed` or `refund.succeeded`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the event happened, ms since the epoch.
    pub created: i64,
    /// What it is about.
    pub data: EventData,
}

/// The object an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventData {
    /// The intent.
    pub intent_id: String,
    /// Its order.
    pub order_id: String,
    /// The amount, cents.
    pub amount_cents: i64,
    /// The refund, for refund events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
}

/// Our id for an order's refund: one refund per order, so asking again is the same refund.
pub fn refund_id_for(order_id: &str) -> String {
    format!("re_{order_id}")
}

/// Our id for an order's `attempt`-th payment intent.
pub fn intent_id_for(order_id: &str, attempt: usize) -> String {
    format!("pi_{order_id}_{attempt}")
}
