//! Payment rows: our record of intents, applied provider events and refunds (written through
//! `Write` in the order's transactions), the reconciler's reads, and the simulated provider's
//! own tables (`sim_*`), which stand for an external provider's database.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{marks, text, Store, StoreError};

/// Our record of a payment intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRow {
    /// Our id (the provider's idempotency key).
    pub intent_id: String,
    /// The order.
    pub order_id: String,
    /// Amount, cents.
    pub amount_cents: i64,
    /// Payment method.
    pub method: String,
    /// `open`, `succeeded` or `failed`.
    pub status: String,
    /// Created, ms since the epoch.
    pub created_at: i64,
    /// Last change, ms since the epoch.
    pub updated_at: i64,
}

/// A refund the saga sees through until the provider confirms it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRow {
    /// Our id (one per order; the provider's idempotency key).
    pub refund_id: String,
    /// The order.
    pub order_id: String,
    /// The intent refunded.
    pub intent_id: String,
    /// Amount, cents.
    pub amount_cents: i64,
    /// `requested` or `succeeded`.
    pub status: String,
    /// Requests sent so far.
    pub attempts: i64,
    /// When to ask the provider again, ms since the epoch.
    pub next_attempt_at: i64,
    /// Created, ms since the epoch.
    pub created_at: i64,
    /// Last change, ms since the epoch.
    pub updated_at: i64,
}

/// A callback the simulated provider still has to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimCallback {
    /// Row id.
    pub seq: i64,
    /// The event's id.
    pub event_id: String,
    /// Deliveries tried so far.
    pub attempts: i64,
    /// The event, JSON.
    pub body: String,
}

const PAYMENT_COLUMNS: &str =
    "intent_id, order_id, amount_cents, method, status, created_at, updated_at";
const REFUND_COLUMNS: &str = "refund_id, order_id, intent_id, amount_cents, status, attempts, \
     next_attempt_at, created_at, updated_at";

fn payment_from(r: &sqlx::any::AnyRow) -> Result<PaymentRow, StoreError> {
    Ok(PaymentRow {
        intent_id: text(r, "intent_id")?,
        order_id: text(r, "order_id")?,
        amount_cents: r.try_get("amount_cents")?,
        method: text(r, "method")?,
        status: text(r, "status")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn refund_from(r: &sqlx::any::AnyRow) -> Result<RefundRow, StoreError> {
    Ok(RefundRow {
        refund_id: text(r, "refund_id")?,
        order_id: text(r, "order_id")?,
        intent_id: text(r, "intent_id")?,
        amount_cents: r.try_get("amount_cents")?,
        status: text(r, "status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    /// Every intent of an order, oldest first.
    pub async fn payments_of(&self, order_id: &str) -> Result<Vec<PaymentRow>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = ? ORDER BY created_at"
        ));
        let rows = sqlx::query(&sql)
            .bind(order_id)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(payment_from).collect()
    }

    /// The refund of an order, if one was started.
    pub async fn refund_of(&self, order_id: &str) -> Result<Option<RefundRow>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE order_id = ?"
        ));
        let row = sqlx::query(&sql)
            .bind(order_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(refund_from).transpose()
    }

    /// What a provider event needs to be applied, in one read: whether it was applied already,
    /// and every intent of its order, oldest first.
    pub async fn payment_notice_context(
        &self,
        event_id: &str,
        order_id: &str,
    ) -> Result<(bool, Vec<PaymentRow>), StoreError> {
        let sql = self.sql(&format!(
            "SELECT {PAYMENT_COLUMNS}, \
             (SELECT COUNT(*) FROM payment_events WHERE event_id = ?) AS seen \
             FROM payments WHERE order_id = ? ORDER BY created_at"
        ));
        let rows = sqlx::query(&sql)
            .bind(event_id)
            .bind(order_id)
            .fetch_all(self.pool())
            .await?;
        let seen = match rows.first() {
            Some(r) => r.try_get::<i64, _>("seen")? > 0,
            // No intent, so no event of one was ever recorded (the caller refuses it).
            None => false,
        };
        Ok((
            seen,
            rows.iter().map(payment_from).collect::<Result<_, _>>()?,
        ))
    }

    /// Intents of `shards` (all shards when `None`) still open and created before `before`.
    pub async fn open_payments(
        &self,
        shards: Option<&[u32]>,
        before: i64,
        limit: usize,
    ) -> Result<Vec<PaymentRow>, StoreError> {
        let by_shard = shard_filter(shards);
        let sql = self.sql(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE status = 'open' AND created_at < ?{by_shard} \
             ORDER BY created_at LIMIT {}",
            limit.max(1)
        ));
        let mut q = sqlx::query(&sql).bind(before);
        for s in shards.unwrap_or(&[]) {
            q = q.bind(i64::from(*s));
        }
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter().map(payment_from).collect()
    }

    /// Refunds of `shards` (all when `None`) not confirmed yet and due for another request.
    pub async fn due_refunds(
        &self,
        shards: Option<&[u32]>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<RefundRow>, StoreError> {
        let by_shard = shard_filter(shards);
        let sql = self.sql(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE status = 'requested' \
             AND next_attempt_at <= ?{by_shard} ORDER BY next_attempt_at LIMIT {}",
            limit.max(1)
        ));
        let mut q = sqlx::query(&sql).bind(now);
        for s in shards.unwrap_or(&[]) {
            q = q.bind(i64::from(*s));
        }
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter().map(refund_from).collect()
    }

    /// Records another request of a refund and when to ask again.
    pub async fn refund_retried(
        &self,
        refund_id: &str,
        attempts: i64,
        next_attempt_at: i64,
    ) -> Result<(), StoreError> {
        let sql = self.sql(
            "UPDATE refunds SET attempts = ?, next_attempt_at = ? WHERE refund_id = ? \
             AND status = 'requested'",
        );
        sqlx::query(&sql)
            .bind(attempts)
            .bind(next_attempt_at)
            .bind(refund_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    // ---- the simulated provider's own tables ----

    /// The simulated provider's record of an intent: (order, amount, method, status).
    pub async fn sim_intent(
        &self,
        intent_id: &str,
    ) -> Result<Option<(String, i64, String, String)>, StoreError> {
        let sql = self.sql(
            "SELECT order_id, amount_cents, method, status FROM sim_intents WHERE intent_id = ?",
        );
        let row = sqlx::query(&sql)
            .bind(intent_id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            Ok((
                text(&r, "order_id")?,
                r.try_get("amount_cents")?,
                text(&r, "method")?,
                text(&r, "status")?,
            ))
        })
        .transpose()
    }

    /// The simulated provider takes an intent (once: a second call with the same id changes
    /// nothing) and schedules its callbacks: `(event_id, due_at, body)`. True if it was new.
    ///
    /// It goes through the group-commit writer like every other change (so do the provider's
    /// refunds, retries and delivered callbacks). On SQLite a
    /// transaction of its own waited for the writer's lock in the busy handler's growing
    /// sleeps, which held `lifecycle` at a few hundred payments per second.
    #[allow(clippy::too_many_arguments)]
    pub async fn sim_create_intent(
        &self,
        intent_id: &str,
        order_id: &str,
        amount_cents: i64,
        method: &str,
        status: &str,
        now: i64,
        callbacks: &[(String, i64, String)],
    ) -> Result<bool, StoreError> {
        let write = super::Write::SimIntent {
            intent_id: intent_id.to_string(),
            order_id: order_id.to_string(),
            amount_cents,
            method: method.to_string(),
            status: status.to_string(),
            created_at: now,
            callbacks: callbacks.to_vec(),
        };
        match self.commit(vec![write]).await {
            Ok(()) => Ok(true),
            Err(StoreError::Duplicate(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The simulated provider takes a refund (once per refund id) and schedules its callbacks.
    /// The refund's status afterwards.
    #[allow(clippy::too_many_arguments)]
    pub async fn sim_create_refund(
        &self,
        refund_id: &str,
        intent_id: &str,
        order_id: &str,
        amount_cents: i64,
        now: i64,
        callbacks: &[(String, i64, String)],
    ) -> Result<String, StoreError> {
        let write = super::Write::SimRefund {
            refund_id: refund_id.to_string(),
            intent_id: intent_id.to_string(),
            order_id: order_id.to_string(),
            amount_cents,
            created_at: now,
            callbacks: callbacks.to_vec(),
        };
        match self.commit(vec![write]).await {
            // A refund taken before stands (and so does its status).
            Ok(()) | Err(StoreError::Duplicate(_)) => {}
            Err(e) => return Err(e),
        }
        Ok("succeeded".into())
    }

    /// The simulated provider's record of a refund: its status.
    pub async fn sim_refund(&self, refund_id: &str) -> Result<Option<String>, StoreError> {
        let sql = self.sql("SELECT status FROM sim_refunds WHERE refund_id = ?");
        let row = sqlx::query(&sql)
            .bind(refund_id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| text(&r, "status")).transpose()
    }

    /// How many refunds the simulated provider made for an order (tests: never two).
    pub async fn sim_refund_count(&self, order_id: &str) -> Result<i64, StoreError> {
        let sql = self.sql("SELECT COUNT(*) AS n FROM sim_refunds WHERE order_id = ?");
        let r = sqlx::query(&sql)
            .bind(order_id)
            .fetch_one(self.pool())
            .await?;
        Ok(r.try_get("n")?)
    }

    /// Callbacks due by `now` for orders of `shards` (all when `None`).
    pub async fn sim_due_callbacks(
        &self,
        shards: Option<&[u32]>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<SimCallback>, StoreError> {
        let by_shard = shard_filter(shards);
        let sql = self.sql(&format!(
            "SELECT seq, event_id, attempts, body FROM sim_callbacks WHERE due_at <= ?{by_shard} \
             ORDER BY due_at, seq LIMIT {}",
            limit.max(1)
        ));
        let mut q = sqlx::query(&sql).bind(now);
        for s in shards.unwrap_or(&[]) {
            q = q.bind(i64::from(*s));
        }
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(SimCallback {
                    seq: r.try_get("seq")?,
                    event_id: text(r, "event_id")?,
                    attempts: r.try_get("attempts")?,
                    body: text(r, "body")?,
                })
            })
            .collect()
    }

    /// Callbacks that were delivered: removed, through the group-commit writer (on SQLite a
    /// statement of its own waits for the writer's lock in the busy handler's growing sleeps;
    /// one such DELETE per callback held `lifecycle` at a few hundred payments per second).
    pub async fn sim_callbacks_delivered(&self, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.commit(vec![super::Write::SimCallbacksDelivered(seqs.to_vec())])
            .await
    }

    /// A callback that was not accepted: tried again at `next_due` (through the writer, like
    /// every write of the simulated provider).
    pub async fn sim_callback_retry(&self, seq: i64, next_due: i64) -> Result<(), StoreError> {
        self.commit(vec![super::Write::SimCallbackRetry {
            seq,
            due_at: next_due,
        }])
        .await
    }
}

/// ` AND shard IN (?, ..)` for a shard set, or nothing for all shards.
fn shard_filter(shards: Option<&[u32]>) -> String {
    match shards {
        None => String::new(),
        Some([]) => " AND 1 = 0".into(),
        Some(s) => format!(" AND shard IN ({})", marks(s.len())),
    }
}
