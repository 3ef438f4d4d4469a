//! Outbox retention: rows older than `store.outbox_keep_ms` are deleted, oldest first, in
//! ranges of the primary key that go through the group-commit writer like any other change.
//!
//! The outbox keeps every row it ever wrote until something deletes it: on a cluster the relay
//! only marks rows shipped, and a single node (no relay, no topic) never reads them at all. At a
//! million orders a day and about eight events an order, that is 8M rows a day. So:
//! - on a cluster, shipped rows older than the retention go (unshipped ones wait for their
//!   relay however old they are), and one node does it: the owner of shard 0;
//! - on a single node, every row older than the retention goes: nothing will ship it (a
//!   database moving from one node to a cluster ships what is younger than the retention).
//!
//! Each step deletes `from <= seq < to` (a range of `RANGE` seqs: bounded work on every backend,
//! none of which deletes with a LIMIT the same way) and then looks at the first row past the
//! range: if it is old too, the next step starts there (gaps in `seq` are skipped), otherwise
//! the pass is done. Rows at the front that must stay (unshipped, on a cluster) are passed over,
//! never waited on.

use std::time::Duration;

use sqlx::Row;

use super::{Store, StoreError, Write};
use crate::domain::now_ms;
use crate::metrics;

/// Seqs per step: one step is one statement in one group commit.
pub const RANGE: i64 = 2_000;

/// The pruner's settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Rows written longer ago than this are deleted (zero: never).
    pub keep: Duration,
    /// How often a pass runs.
    pub every: Duration,
    /// Only shipped rows (a cluster, where the relay ships them).
    pub shipped_only: bool,
}

impl Store {
    /// Deletes the outbox rows written before `before` (only shipped ones when
    /// `shipped_only`), `range` seqs per step. Returns the steps taken.
    pub async fn prune_outbox(
        &self,
        before: i64,
        shipped_only: bool,
        range: i64,
    ) -> Result<u64, StoreError> {
        let mut next = self.first_outbox_row(i64::MIN).await?;
        let mut steps = 0;
        while let Some((from, created_at)) = next {
            if created_at >= before {
                break;
            }
            let to = from.saturating_add(range.max(1));
            // What the step will delete, read first: the writer cannot say what a committed
            // statement deleted (a batch that fails in bulk runs it twice).
            let n = self.prunable_rows(from, to, before, shipped_only).await?;
            self.commit(vec![Write::PruneOutbox {
                from,
                to,
                before,
                shipped_only,
            }])
            .await?;
            metrics::OUTBOX_PRUNED.inc_by(n);
            steps += 1;
            next = self.first_outbox_row(to).await?;
        }
        Ok(steps)
    }

    /// How many rows a step over `from <= seq < to` deletes (on a cluster, a row the relay marks
    /// shipped in between is deleted and not counted).
    async fn prunable_rows(
        &self,
        from: i64,
        to: i64,
        before: i64,
        shipped_only: bool,
    ) -> Result<u64, StoreError> {
        let sql = self.sql(&format!(
            "SELECT COUNT(*) AS n FROM outbox WHERE {}",
            prunable(shipped_only)
        ));
        let n: i64 = sqlx::query(&sql)
            .bind(from)
            .bind(to)
            .bind(before)
            .fetch_one(&self.inner.pool)
            .await?
            .try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The first outbox row at or after `seq`: its seq and when it was written.
    async fn first_outbox_row(&self, seq: i64) -> Result<Option<(i64, i64)>, StoreError> {
        let sql =
            self.sql("SELECT seq, created_at FROM outbox WHERE seq >= ? ORDER BY seq LIMIT 1");
        let row = sqlx::query(&sql)
            .bind(seq)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.map(|r| Ok((r.try_get("seq")?, r.try_get("created_at")?)))
            .transpose()
    }
}

/// The rows one step deletes, binding `from`, `to` and `before`: the writer's `DELETE` and the
/// count before it share it.
pub(super) fn prunable(shipped_only: bool) -> &'static str {
    if shipped_only {
        "seq >= ? AND seq < ? AND created_at < ? AND published = 1"
    } else {
        "seq >= ? AND seq < ? AND created_at < ?"
    }
}

/// Runs a pass every `retention.every` while `mine()` says this node prunes; never returns.
/// A failed pass is logged and tried again at the next period.
pub async fn run(store: Store, retention: Retention, mine: impl Fn() -> bool) {
    if retention.keep.is_zero() {
        return;
    }
    let keep = i64::try_from(retention.keep.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(retention.every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !mine() {
            continue;
        }
        let before = now_ms().saturating_sub(keep);
        match store
            .prune_outbox(before, retention.shipped_only, RANGE)
            .await
        {
            Ok(0) => {}
            Ok(steps) => tracing::debug!(steps, before, "outbox pruned"),
            Err(e) => tracing::warn!(error = %e, "outbox prune failed; trying again next period"),
        }
    }
}
