//! The built-in simulated payment provider. It keeps its own records (the `sim_*` tables, as an
//! external provider keeps its own database), answers every request at once, and delivers signed
//! callbacks to `POST /v1/payments/callback` over HTTP, retrying with backoff until it gets a
//! 2xx, as real providers do.
//!
//! The payment `method` picks its behaviour, like a provider's test cards:
//!
//! | method | the payment | its callbacks (payment and refund) |
//! | --- | --- | --- |
//! | `card` | succeeds | at once |
//! | `card_declined` | is declined | `payment.failed` at once |
//! | `card_late` | succeeds | after `payments.sim_late_ms` |
//! | `card_twice` | succeeds | each event delivered twice |
//! | `card_out_of_order` | succeeds | `payment.succeeded`, then an older `payment.failed` of an earlier attempt |
//! | `card_silent` | succeeds | never (only asking the provider finds out) |

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;

use super::{
    signature, EventData, Intent, IntentStatus, PayError, Provider, ProviderEvent, RefundStatus,
};
use crate::domain::now_ms;
use crate::http1;
use crate::store::Store;

/// The methods the simulated provider knows.
pub const METHODS: [&str; 6] = [
    "card",
    "card_declined",
    "card_late",
    "card_twice",
    "card_out_of_order",
    "card_silent",
];

/// Which shards' callbacks this node delivers (`None`: all, a single node).
pub type Served = Arc<dyn Fn() -> Option<Vec<u32>> + Send + Sync>;

/// The simulated provider.
pub struct SimProvider {
    store: Store,
    /// Signs callbacks (the same secret the callback route checks).
    secret: String,
    /// How late `card_late` calls back.
    late: Duration,
    /// Where callbacks go (`http://host:port/v1/payments/callback`) and the kept-alive
    /// connections to it; set once the node listens.
    callback: RwLock<Option<Arc<Callback>>>,
    /// Whose callbacks this node delivers.
    served: Served,
}

impl SimProvider {
    /// A simulated provider keeping its records in `store`.
    pub fn new(store: Store, secret: String, late: Duration, served: Served) -> Self {
        SimProvider {
            store,
            secret,
            late,
            callback: RwLock::new(None),
            served,
        }
    }

    /// Sets where callbacks are delivered (until it is set, callbacks wait).
    /// Only plain `http://` URLs are delivered to (`PaymentsConfig::callback` refuses others).
    pub fn set_callback_url(&self, url: &url::Url) -> Result<(), String> {
        let origin = http1::Origin::parse(url.as_str())?;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        if let Ok(mut c) = self.callback.write() {
            *c = Some(Arc::new(Callback { origin, path }));
        }
        Ok(())
    }

    fn event(kind: &str, created: i64, data: EventData, id: String) -> (String, String) {
        let ev = ProviderEvent {
            id: id.clone(),
            kind: kind.into(),
            created,
            data,
        };
        (id, serde_json::to_string(&ev).unwrap_or_default())
    }

    /// The callbacks a payment or refund event of `method` produces: (event id, due, body).
    fn schedule(
        &self,
        method: &str,
        kind: &str,
        data: EventData,
        event_id: String,
        now: i64,
    ) -> Vec<(String, i64, String)> {
        let (id, body) = Self::event(kind, now, data.clone(), event_id);
        match method {
            "card_silent" => Vec::new(),
            "card_late" => vec![(id, now + self.late.as_millis() as i64, body)],
            "card_twice" => vec![(id.clone(), now, body.clone()), (id, now + 50, body)],
            "card_out_of_order" if kind == "payment.succeeded" => {
                // An earlier attempt's failure arrives after the success.
                let (old_id, old) =
                    Self::event("payment.failed", now - 1_000, data, format!("{id}_earlier"));
                vec![(id, now, body), (old_id, now + 50, old)]
            }
            _ => vec![(id, now, body)],
        }
    }

    /// Delivers due callbacks until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            match self.deliver_due().await {
                Ok(n) if n >= BATCH => continue, // more are waiting
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "simulated provider: delivery round failed"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Delivers what is due (many at once, as a provider's senders do); how many it tried.
    async fn deliver_due(&self) -> Result<usize, String> {
        use futures::StreamExt;
        let callback = match self.callback.read() {
            Ok(c) => c.clone(),
            Err(_) => None,
        };
        let Some(callback) = callback else {
            return Ok(0); // not listening yet
        };
        let shards = (self.served)();
        let due = self
            .store
            .sim_due_callbacks(shards.as_deref(), now_ms(), BATCH)
            .await
            .map_err(|e| e.to_string())?;
        let n = due.len();
        let results: Vec<Result<Option<i64>, String>> = futures::stream::iter(due)
            .map(|cb| self.deliver(&callback, cb))
            // The whole round at once, as a provider's senders do: a round lasts as long as its
            // slowest callback (a commit), so 64 at a time made four commits' worth of rounds.
            .buffer_unordered(BATCH)
            .collect()
            .await;
        let mut delivered = Vec::with_capacity(n);
        let mut failed = None;
        for r in results {
            match r {
                Ok(Some(seq)) => delivered.push(seq),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        // One statement for the round's deliveries. A crash before it delivers them again,
        // which the callback route ignores (event ids are stored).
        self.store
            .sim_callbacks_delivered(&delivered)
            .await
            .map_err(|e| e.to_string())?;
        match failed {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Sends one callback: `Some(seq)` once the node accepted it; a refused one is rescheduled
    /// with backoff (`None`).
    async fn deliver(
        &self,
        callback: &Callback,
        cb: crate::store::SimCallback,
    ) -> Result<Option<i64>, String> {
        let header = signature::sign(&self.secret, now_ms() / 1000, cb.body.as_bytes());
        let request = http1::request(
            "POST",
            &callback.path,
            callback.origin.authority(),
            &[(signature::HEADER, &header)],
            Some(("application/json", cb.body.as_bytes())),
        );
        let sent = match request {
            Ok(r) => tokio::time::timeout(DELIVERY_TIMEOUT, callback.origin.send(&r))
                .await
                .ok(),
            Err(_) => None,
        };
        if matches!(&sent, Some(Ok(a)) if (200..300).contains(&a.status)) {
            return Ok(Some(cb.seq));
        }
        tracing::debug!(event = %cb.event_id, attempts = cb.attempts + 1, "simulated provider: callback not accepted; will retry");
        let backoff = (200u64 << cb.attempts.clamp(0, 5)).min(5_000);
        self.store
            .sim_callback_retry(cb.seq, now_ms() + backoff as i64)
            .await
            .map_err(|e| e.to_string())?;
        Ok(None)
    }
}

/// Callbacks taken per delivery round.
const BATCH: usize = 256;

/// How long one callback's delivery may take (connecting, sending, the answer).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where callbacks are delivered: the URL's origin (with its kept-alive connections) and its
/// path. Through the lean HTTP/1.1 client (`crate::http1`), not reqwest: a provider delivers to
/// the URL it was given, follows no redirects, and here needs only the answer's status.
struct Callback {
    origin: http1::Origin,
    /// The path and query requests go to.
    path: String,
}

fn unavailable(e: crate::store::StoreError) -> PayError {
    PayError::Unavailable(e.to_string())
}

impl Provider for SimProvider {
    fn create_intent(
        &self,
        id: &str,
        order_id: &str,
        amount_cents: i64,
        method: &str,
    ) -> BoxFuture<'_, Result<Intent, PayError>> {
        let (id, order_id, method) = (id.to_string(), order_id.to_string(), method.to_string());
        Box::pin(async move {
            if !METHODS.contains(&method.as_str()) {
                return Err(PayError::Unknown(format!("payment method {method}")));
            }
            let declined = method == "card_declined";
            let status = if declined {
                IntentStatus::Failed
            } else {
                IntentStatus::Succeeded
            };
            let now = now_ms();
            let kind = if declined {
                "payment.failed"
            } else {
                "payment.succeeded"
            };
            let data = EventData {
                intent_id: id.clone(),
                order_id: order_id.clone(),
                amount_cents,
                refund_id: None,
            };
            let callbacks = self.schedule(&method, kind, data, format!("evt_{id}"), now);
            let created = self
                .store
                .sim_create_intent(
                    &id,
                    &order_id,
                    amount_cents,
                    &method,
                    status.as_str(),
                    now,
                    &callbacks,
                )
                .await
                .map_err(unavailable)?;
            if created {
                // Taken now: the provider holds exactly this (no read back).
                return Ok(Intent {
                    id,
                    order_id,
                    amount_cents,
                    method,
                    status,
                });
            }
            // Taken earlier (a retry): answer with what the provider holds.
            self.intent(&id).await
        })
    }

    fn intent(&self, id: &str) -> BoxFuture<'_, Result<Intent, PayError>> {
        let id = id.to_string();
        Box::pin(async move {
            let (order_id, amount_cents, method, status) = self
                .store
                .sim_intent(&id)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| PayError::Unknown(format!("intent {id}")))?;
            Ok(Intent {
                id,
                order_id,
                amount_cents,
                method,
                status: IntentStatus::parse(&status).unwrap_or(IntentStatus::Open),
            })
        })
    }

    fn refund(
        &self,
        refund_id: &str,
        intent_id: &str,
        amount_cents: i64,
    ) -> BoxFuture<'_, Result<RefundStatus, PayError>> {
        let (refund_id, intent_id) = (refund_id.to_string(), intent_id.to_string());
        Box::pin(async move {
            let (order_id, _, method, status) = self
                .store
                .sim_intent(&intent_id)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| PayError::Unknown(format!("intent {intent_id}")))?;
            if status != IntentStatus::Succeeded.as_str() {
                return Err(PayError::Unknown(format!(
                    "intent {intent_id} took no money to refund"
                )));
            }
            let now = now_ms();
            let data = EventData {
                intent_id: intent_id.clone(),
                order_id: order_id.clone(),
                amount_cents,
                refund_id: Some(refund_id.clone()),
            };
            let callbacks = self.schedule(
                &method,
                "refund.succeeded",
                data,
                format!("evt_{refund_id}"),
                now,
            );
            self.store
                .sim_create_refund(
                    &refund_id,
                    &intent_id,
                    &order_id,
                    amount_cents,
                    now,
                    &callbacks,
                )
                .await
                .map_err(unavailable)?;
            Ok(RefundStatus::Succeeded)
        })
    }

    fn refund_status(&self, refund_id: &str) -> BoxFuture<'_, Result<RefundStatus, PayError>> {
        let refund_id = refund_id.to_string();
        Box::pin(async move {
            match self
                .store
                .sim_refund(&refund_id)
                .await
                .map_err(unavailable)?
            {
                Some(s) if s == "succeeded" => Ok(RefundStatus::Succeeded),
                Some(_) => Ok(RefundStatus::Pending),
                None => Err(PayError::Unknown(format!("refund {refund_id}"))),
            }
        })
    }

    fn confirms_at_once(&self, method: &str) -> bool {
        !matches!(method, "card_late" | "card_silent")
    }

    fn supports(&self, method: &str) -> bool {
        METHODS.contains(&method)
    }
}
